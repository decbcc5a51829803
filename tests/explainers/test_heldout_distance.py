"""The target tools refuse a case near a held-out test case, not only an equal one (issue 13, item 8): the near
misses that leaked are refused, a clearly different case is answered, and the provider never sees the refused
input."""
import csv
import json
import math

import pytest
from django.db import transaction

from agentic_support import agentic_arms, answer_last_check, conversation_calls, converse, pretest
from conftest import EXAMPLE
from explainers import services
from explainers.tools import REFUSED, target_tools

pytestmark = pytest.mark.django_db


def full_only(data) -> None:
    agentic_arms(data, arms={"agentic": {}})


@pytest.fixture
def tools_of(launch, fake_llm):
    """Return a function that launches the example (edited) and returns the agentic arm's target tools."""

    def make(edit=None):
        def both(data):
            full_only(data)
            if edit is not None:
                edit(data)

        version = launch(both)
        with transaction.atomic():
            conversation = services.conversation_start(version=version, arm_id="agentic", language="en",
                                                       pretest=pretest(version))
        return version, target_tools(conversation=conversation)

    return make


def case_of(version, item_id: str) -> dict:
    return dict(next(i["input"] for i in version.spec["items"] if i["id"] == item_id))


def predict(tools, case: dict):
    return tools.run({"name": "predict", "arguments": {"input": case}})


def test_the_near_misses_that_leaked_are_refused(tools_of):
    version, tools = tools_of()
    post_a4 = case_of(version, "post_a4")
    assert predict(tools, post_a4) == ({"refused": REFUSED}, True)  # the exact case, as before
    for near in ({"income": 41.0001}, {"employment_years": 22.0000001}, {"income": "41.0001"},
                 {"income": 44.5, "debt_ratio": 0.2, "employment_years": 23}):
        assert predict(tools, {**post_a4, **near}) == ({"refused": REFUSED}, True), near
    assert tools.held_out_match({**post_a4, "income": 41.0001}) == "post_a4"
    # what_if: the case asked about, or the one it lands on, near a test case
    moved = {"name": "what_if", "arguments": {"input": {**post_a4, "income": 80}, "feature": "income", "value": 41.01}}
    assert tools.run(moved) == ({"refused": REFUSED}, True)


def test_a_clearly_different_case_is_answered_with_the_targets_output(tools_of):
    version, tools = tools_of()
    post_a4 = case_of(version, "post_a4")
    for different in ({"income": 52}, {"debt_ratio": 0.3}, {"late_payments": 2}, {"credit_history_years": 5}):
        result, refused = predict(tools, {**post_a4, **different})
        assert not refused and result["output"] in ("yes", "no"), different
    result, refused = tools.run({"name": "what_if", "arguments": {"input": {**post_a4, "income": 90},
                                                                  "feature": "income", "value": 30}})
    assert not refused and set(result) == {"before", "after"}


def column_range(feature: str) -> float:
    with (EXAMPLE / "data" / "loans.csv").open(encoding="utf-8") as data:
        values = [float(row[feature]) for row in csv.DictReader(data)]
    return max(values) - min(values)


def test_the_default_tolerance_is_a_twentieth_of_the_features_range_in_the_training_data(tools_of):
    version, tools = tools_of()
    for feature in version.spec["target"]["features"]:
        assert math.isclose(tools.rule.tolerances[feature], 0.05 * column_range(feature)), feature
    post_a4 = case_of(version, "post_a4")
    income = tools.rule.tolerances["income"]  # about 7.1 k$ (20.8 to 162.7 k$ in data/loans.csv)
    assert predict(tools, {**post_a4, "income": 41 + income * 0.99})[1] is True
    assert predict(tools, {**post_a4, "income": 41 + income * 1.01})[1] is False


def test_the_study_file_sets_a_features_tolerance_or_leaves_it_out(tools_of):
    def held_out(data):
        data["target"]["held_out"] = {"fraction": 0.01, "tolerance": {"income": 0, "employment_years": "any"}}

    version, tools = tools_of(held_out)
    post_a4 = case_of(version, "post_a4")
    assert predict(tools, {**post_a4, "income": 41.0001})[1] is False  # tolerance 0: only the very value
    assert predict(tools, {**post_a4, "employment_years": 3})[1] is True  # `any`: not compared (it never matters)
    assert math.isclose(tools.rule.tolerances["debt_ratio"], 0.01 * column_range("debt_ratio"))
    assert version.spec["target"]["held_out"] == {"fraction": 0.01, "tolerance": {"income": 0.0, "employment_years": "any"}}


def test_a_value_that_is_not_a_finite_number_is_an_error_not_an_answer(tools_of):
    version, tools = tools_of()
    case = {**case_of(version, "post_b5"), "income": float("nan")}
    assert predict(tools, case) == ({"error": "every input value must be a finite number"}, False)


def test_a_near_miss_from_the_model_is_refused_recorded_and_never_shown_back(tools_of, fake_llm, in_process):
    version, _ = tools_of()
    near = {**case_of(version, "post_a4"), "income": 41.0001}
    fake_llm.match("which applicants", {"tool_calls": [{"name": "predict", "arguments": {"input": near}}]}, times=None)
    conversation = converse(version, "agentic", ["which applicants get approved?", answer_last_check(True)])
    record = [call for t in conversation.turns.all() for call in t.tool_calls]
    refused = [c for c in record if c["refused"]]
    assert refused and all(c["arguments"]["input"] == near for c in refused)
    assert all(c["result"] == {"refused": REFUSED} for c in refused)
    for call in conversation_calls(conversation):
        sent = json.dumps(call.request)
        assert "41.0001" not in sent, call.purpose  # the refused arguments went back as "withheld: a test case"
