"""Per-participant measures against values worked out by hand on small frames.

Each expected value is written as the arithmetic that produces it, so a reader can check it
without running anything.
"""
import math

import numpy as np
import pandas as pd
import pytest

from analysis.measures import (
    arm_summary, concept_gains, ece, item_responses, normalized_gain, participant_measures,
)

T0 = pd.Timestamp("2025-03-01 10:00", tz="UTC")


def person(pseudonym, arm="static", status="completed", simulated=False, seconds=600, form_order="AB"):
    return {
        "pseudonym": pseudonym, "arm": arm, "form_order": form_order, "status": status,
        "is_simulated": simulated, "started_at": T0,
        "completed_at": T0 + pd.Timedelta(seconds=seconds) if status == "completed" else pd.NaT,
        "step": "done" if status == "completed" else "consent",
    }


def answer(pseudonym, phase, item_id, score, kind="choice", concept="", confidence=np.nan, correct=None):
    if correct is None:
        correct = pd.NA if (isinstance(score, float) and math.isnan(score)) else bool(score == 1)
    return {
        "pseudonym": pseudonym, "phase": phase, "item_id": item_id, "item_kind": kind, "concept": concept,
        "score": score, "correct": correct, "confidence": confidence, "time_ms": 1000,
    }


def frames():
    participants = pd.DataFrame([
        person("ann", "static", seconds=754),
        person("bob", "chat"),
        person("cat", "chat"),
        person("dan", "chat", status="withdrawn"),
        person("sim", "chat", simulated=True),
    ])
    nan = np.nan
    responses = pd.DataFrame([
        # ann: pre 1, 0, 1 (+ an unscored questionnaire answer) -> 2/3; post 1, 1, 1 -> 1.
        answer("ann", "pre_test", "a1", 1.0, concept="rates"),
        answer("ann", "pre_test", "a2", 0.0, concept="rates"),
        answer("ann", "pre_test", "a3", 1.0, concept="risk"),
        answer("ann", "questionnaire", "q1", nan, kind="likert"),
        answer("ann", "post_test", "b1", 1.0, concept="rates"),
        answer("ann", "post_test", "b2", 1.0, concept="risk"),
        answer("ann", "post_test", "b3", 1.0, concept=""),
        # bob: pre all correct -> 1 (normalized gain undefined); post 1, 0 -> 0.5.
        answer("bob", "pre_test", "a1", 1.0),
        answer("bob", "pre_test", "a2", 1.0),
        answer("bob", "post_test", "b1", 1.0),
        answer("bob", "post_test", "b2", 0.0),
        # cat: pre 0.5; post has four predict items (0.25 overall with one choice item).
        answer("cat", "pre_test", "a1", 1.0),
        answer("cat", "pre_test", "a2", 0.0),
        answer("cat", "post_test", "p1", 1.0, kind="predict", confidence=90),
        answer("cat", "post_test", "p2", 0.0, kind="predict", confidence=80),
        answer("cat", "post_test", "p3", 0.0, kind="predict", confidence=30),
        answer("cat", "post_test", "p4", 0.0, kind="predict"),  # no confidence: in accuracy, not in Brier
        answer("cat", "post_test", "b1", 0.0),
        answer("dan", "pre_test", "a1", 0.0),
        answer("sim", "pre_test", "a1", 0.0),
        answer("sim", "post_test", "b1", 1.0),
    ])
    responses["correct"] = responses["correct"].astype("boolean")
    return participants, responses


def by_name(table):
    return table.set_index("pseudonym")


def test_only_completed_real_participants_get_a_row_unless_simulated_are_asked_for():
    participants, responses = frames()
    assert list(participant_measures(participants, responses)["pseudonym"]) == ["ann", "bob", "cat"]
    with_sims = participant_measures(participants, responses, include_simulated=True)
    assert list(with_sims["pseudonym"]) == ["ann", "bob", "cat", "sim"]


def test_pre_post_gain_and_normalized_gain_by_hand():
    m = by_name(participant_measures(*frames()))
    assert m.loc["ann", "pre"] == pytest.approx(2 / 3)
    assert m.loc["ann", "post"] == pytest.approx(1.0)
    assert m.loc["ann", "gain"] == pytest.approx(1 / 3)
    assert m.loc["ann", "normalized_gain"] == pytest.approx((1 - 2 / 3) / (1 - 2 / 3))  # = 1
    assert m.loc["bob", "gain"] == pytest.approx(-0.5)
    assert math.isnan(m.loc["bob", "normalized_gain"])  # pre = 1: undefined, not 0 or -inf
    assert m.loc["cat", "post"] == pytest.approx(1 / 5)
    assert m.loc["cat", "normalized_gain"] == pytest.approx((0.2 - 0.5) / (1 - 0.5))  # = -0.6


def test_normalized_gain_elementwise():
    got = normalized_gain([0.0, 0.5, 0.9, 1.0], [0.5, 0.75, 0.0, 1.0])
    assert got[:3] == pytest.approx([0.5, 0.5, -9.0])
    assert math.isnan(got[3])


def test_forward_simulation_accuracy_and_brier_by_hand():
    m = by_name(participant_measures(*frames()))
    assert m.loc["cat", "forward_sim_accuracy"] == pytest.approx(1 / 4)
    # Items with a confidence: (0.9 - 1)^2, (0.8 - 0)^2, (0.3 - 0)^2.
    assert m.loc["cat", "brier"] == pytest.approx((0.01 + 0.64 + 0.09) / 3)
    # One item per bin: (|1 - .9| + |0 - .8| + |0 - .3|) / 3.
    assert m.loc["cat", "ece"] == pytest.approx((0.1 + 0.8 + 0.3) / 3)
    assert math.isnan(m.loc["ann", "forward_sim_accuracy"])  # no predict items: NaN, not 0
    assert math.isnan(m.loc["ann", "brier"])


def test_ece_pools_items_sharing_a_bin():
    # Bin 7 holds 70, 75, 72 (accuracy 2/3, mean confidence 0.72333); bin 2 holds 20; bin 9 holds 100.
    got = ece([70, 75, 72, 20, 100], [1, 1, 0, 0, 1])
    expected = 3 / 5 * abs(2 / 3 - (0.70 + 0.75 + 0.72) / 3) + 1 / 5 * abs(0 - 0.2) + 1 / 5 * abs(1 - 1.0)
    assert got == pytest.approx(expected)
    assert got == pytest.approx(0.074)


def test_ece_puts_integer_confidence_on_a_bin_edge_into_the_upper_bin():
    # 30 and 39 share bin [0.3, 0.4): |0.5 - 0.345|. Were 30 put in bin 2 (0.3 * 10 rounding), ECE would be 0.545.
    assert ece([30, 39], [1, 0]) == pytest.approx(0.155)
    assert ece([0, 10], [0, 0]) == pytest.approx(0.5 * 0.0 + 0.5 * 0.1)


def test_time_on_task_turns_tokens_and_cost():
    participants, responses = frames()
    turns = pd.DataFrame({
        "pseudonym": ["bob", "bob", "bob", "bob", "cat"],
        "author": ["participant", "explainer", "participant", "explainer", "explainer"],
        "turn_id": [1, 2, 3, 4, 5], "created_at": [T0] * 5,
    })
    calls = pd.DataFrame({
        "pseudonym": ["bob", "bob", "cat"], "input_tokens": [100, 250, 40], "output_tokens": [20, 30, np.nan],
        "cost_usd": [0.001, 0.0025, 0.0004], "status": ["ok", "ok", "failed"],
    })
    m = by_name(participant_measures(participants, responses, turns=turns, llm_calls=calls))
    assert m.loc["ann", "time_on_task_s"] == 754.0
    assert m.loc["bob", "turns"] == 2 and m.loc["cat", "turns"] == 0 and m.loc["ann", "turns"] == 0
    assert m.loc["bob", "tokens"] == 100 + 20 + 250 + 30
    assert m.loc["cat", "tokens"] == 40
    assert m.loc["bob", "cost_usd"] == pytest.approx(0.0035)
    assert m.loc["ann", "cost_usd"] == 0.0
    unknown = by_name(participant_measures(participants, responses))
    assert math.isnan(unknown.loc["bob", "turns"]) and math.isnan(unknown.loc["bob", "tokens"])
    # a call that used tokens with no price makes the cost unknown, not smaller; a failed call without
    # tokens and without a cost changes nothing
    unpriced = calls.assign(cost_usd=[0.001, np.nan, np.nan], input_tokens=[100, 250, np.nan], output_tokens=[20, 30, np.nan])
    m = by_name(participant_measures(participants, responses, turns=turns, llm_calls=unpriced))
    assert math.isnan(m.loc["bob", "cost_usd"])
    assert m.loc["cat", "cost_usd"] == 0.0 and m.loc["ann", "cost_usd"] == 0.0


def test_learner_model_fidelity_by_hand():
    participants, responses = frames()
    predictions = pd.DataFrame({
        "pseudonym": ["cat", "cat", "cat", "cat", "cat", "ann"],
        "item_id": ["p1", "p2", "p3", "b1", "zz", "b1"],
        # Real outcomes:       1,    0,    0,     0,  (no answer), 1
        "predicted_correct": [0.8, 0.4, True, 0.5, 0.9, False],
    })
    m = by_name(participant_measures(participants, responses, predictions=predictions))
    # cat: 0.8 -> hit; 0.4 -> predicts wrong, was wrong -> hit; True vs 0 -> miss; 0.5 -> predicts right -> miss.
    assert m.loc["cat", "lm_accuracy"] == pytest.approx(2 / 4)
    assert m.loc["cat", "lm_brier"] == pytest.approx((0.2**2 + 0.4**2 + 1.0 + 0.5**2) / 4)
    assert m.loc["ann", "lm_accuracy"] == 0.0 and m.loc["ann", "lm_brier"] == 1.0
    assert math.isnan(m.loc["bob", "lm_accuracy"])


def test_concept_gains_by_hand():
    table = concept_gains(*frames())
    ann = table[table["pseudonym"] == "ann"].set_index("concept")
    assert list(ann.index) == ["rates", "risk"]  # empty concept left out
    assert ann.loc["rates", "pre"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert ann.loc["rates", "post"] == 1.0
    assert ann.loc["rates", "gain"] == pytest.approx(0.5)
    assert ann.loc["risk", "gain"] == 0.0
    assert set(table["pseudonym"]) == {"ann"}  # nobody else has concepts
    assert list(table.columns) == ["pseudonym", "arm", "concept", "pre", "post", "gain"]


def test_arm_summary_by_hand():
    measures = pd.DataFrame({
        "pseudonym": ["a", "b", "c", "d"], "arm": ["chat", "chat", "chat", "static"],
        "gain": [0.2, 0.4, 0.9, 0.1], "normalized_gain": [0.5, np.nan, 1.0, 0.2],
    })
    table = arm_summary(measures).set_index(["arm", "measure"])
    chat = table.loc[("chat", "gain")]
    assert chat["n"] == 3
    assert chat["mean"] == pytest.approx(0.5)
    assert chat["sd"] == pytest.approx(math.sqrt((0.3**2 + 0.1**2 + 0.4**2) / 2))
    assert chat["median"] == pytest.approx(0.4)
    assert table.loc[("chat", "normalized_gain"), "n"] == 2
    assert math.isnan(table.loc[("static", "gain"), "sd"])


def test_inputs_are_not_modified():
    participants, responses = frames()
    before_p, before_r = participants.copy(deep=True), responses.copy(deep=True)
    participant_measures(participants, responses)
    concept_gains(participants, responses)
    item_responses(participants, responses)
    pd.testing.assert_frame_equal(participants, before_p)
    pd.testing.assert_frame_equal(responses, before_r)


def test_item_responses_keeps_scored_test_answers_with_arm():
    long = item_responses(*frames())
    assert set(long["pseudonym"]) == {"ann", "bob", "cat"}
    assert set(long["phase"]) == {"pre_test", "post_test"}
    assert long["correct"].dtype == float
    assert len(long[long["pseudonym"] == "ann"]) == 6  # questionnaire answer dropped
    assert (long.loc[long["pseudonym"] == "cat", "arm"] == "chat").all()
