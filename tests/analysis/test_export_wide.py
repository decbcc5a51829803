"""The export's wide table: one row per participant, its columns in the codebook, its values those of the long tables.

A static + tutor study comes through the real flow (participants enter with the test client, answer with
different policies, the tutor's participants chat); one leaves after the pre-test, one declines, one is a bot.
Every value of `participants_wide` is then recomputed from the long tables the same export wrote.
"""
import json

import numpy as np
import pandas as pd
import pytest

from analysis import frames as F
from analysis.codebook import TABLE_NAMES, TABLES, WIDE, WIDE_FIXED, wide_column_names, wide_table
from analysis.export import study_export
from conftest import export_table_read
from participants.models import Participant

FORMATS = ("csv", "parquet", "jsonl")
ALL_STEPS = 1 + 5 + 1 + 5 + 3 + 1  # consent, pre-test, explanation, post-test, questionnaire, debrief
SCALE = {"id": "attitude", "items": ["q_understand", "q_trust"], "scoring": "mean", "reverse": ["q_trust"]}


@pytest.fixture(autouse=True)
def _in_process_replies(in_process):
    """Replies run inside the test's transaction (conftest's `in_process`)."""


def static_and_tutor_with_a_scale(data) -> None:
    data["arms"] = [a for a in data["arms"] if a["kind"] in ("static", "tutor")]
    for arm in data["arms"]:
        arm.setdefault("limits", {})["min_seconds"] = 0
    data["allocation"]["block_size"] = 2
    if "analysis" in data:  # a study with an analysis plan can declare scales of its questionnaire
        data["analysis"]["scales"] = [dict(SCALE)]


def _same(a, b) -> bool:
    if pd.isna(a) and pd.isna(b):
        return True
    if pd.isna(a) or pd.isna(b):
        return False
    return abs(float(a) - float(b)) < 1e-9


@pytest.fixture
def study(launch, enter, step_through, settings):
    settings.SCRIPTED_LLM_URL = settings.LLM_BASE_URL = settings.LLM_API_KEY = ""
    version = launch(static_and_tutor_with_a_scale)
    slug = version.study.slug
    for n, policy in enumerate(["key", "accuracy:0.5", "accuracy:0", "random"]):
        client, _ = enter(version, pid=f"PIDWIDE00000000000000000{n}")
        step_through(client, version, times=1 + 5, policy=policy)
        token = client.session[f"teachback:participant:{slug}"]
        if Participant.objects.get(token=token).arm == "tutor":
            client.get(f"/s/{slug}/explanation/")
            for _ in range(2):
                assert client.post(f"/s/{slug}/chat/send/", {"text": "b"}).status_code == 202
        step_through(client, version, times=ALL_STEPS - 6, policy=policy)
    left, _ = enter(version, pid="PIDWIDELEFT00000000000001")
    step_through(left, version, times=1 + 5, policy="accuracy:0.5")  # leaves at the explanation
    declined, _ = enter(version, pid="PIDWIDEDECLINE00000000001")
    declined.post(f"/s/{slug}/consent/", {"choice": "decline"})
    bot, _ = enter(version, pid="PIDWIDEBOT000000000000001")
    step_through(bot, version, times=ALL_STEPS)
    Participant.objects.filter(token=bot.session[f"teachback:participant:{slug}"]).update(is_simulated=True)
    return version


@pytest.mark.django_db
@pytest.mark.parametrize("fmt", FORMATS)
def test_the_wide_table_has_one_row_per_participant_with_the_values_of_the_long_tables(study, tmp_path, fmt):
    manifest = study_export(slug=study.study.slug, out=tmp_path, fmt=fmt)
    wide = export_table_read(tmp_path, WIDE, fmt)
    people = export_table_read(tmp_path, "participants", fmt)
    responses = export_table_read(tmp_path, "responses", fmt)
    turns = export_table_read(tmp_path, "turns", fmt)
    calls = export_table_read(tmp_path, "llm_calls", fmt)
    codebook = json.loads((tmp_path / "codebook.json").read_text())

    # one row per participant, the same people in the same order, the codebook's columns in its order
    assert len(wide) == len(people) == 7 and list(wide["pseudonym"]) == list(people["pseudonym"])
    assert list(wide.columns) == [c["name"] for c in codebook["tables"][WIDE]["columns"]]
    assert set(codebook["tables"]) == set(TABLE_NAMES)
    assert manifest["row_counts"][WIDE] == 7 and f"{WIDE}.{fmt}" in manifest["files"]
    questionnaire = study.spec["instruments"]["questionnaire"]
    assert set(questionnaire) <= set(wide.columns)
    assert ("attitude" in wide.columns) == ("analysis" in study.spec)

    assert set(wide["status"]) == {"completed", "active", "declined"}
    assert wide["is_simulated"].astype(bool).sum() == 1
    assert {"static", "tutor"} <= set(wide["arm"].dropna())
    assert (wide.loc[wide["arm"] == "tutor", "turns"] > 0).any()  # the tutor's participants chatted
    for column in ("arm", "form_order", "stratum", "status", "step", "is_simulated", "is_pilot", "language",
                   "paste_count", "pages_reloaded"):
        for a, b in zip(wide[column], people[column]):
            assert (pd.isna(a) and pd.isna(b)) or a == b or str(a) == str(b), column

    scored = responses[responses["score"].notna()]
    for row in wide.to_dict("records"):
        mine = scored[scored["pseudonym"] == row["pseudonym"]]
        pre = mine.loc[mine["phase"] == "pre_test", "score"]
        post = mine.loc[mine["phase"] == "post_test", "score"]
        assert _same(row["pre"], pre.mean() if len(pre) else np.nan), row["pseudonym"]
        assert _same(row["post"], post.mean() if len(post) else np.nan), row["pseudonym"]
        assert _same(row["gain"], row["post"] - row["pre"])
        said = turns[(turns["pseudonym"] == row["pseudonym"]) & (turns["author"] == "participant")]
        assert row["turns"] == len(said)
        spent = calls[calls["pseudonym"] == row["pseudonym"]]
        assert row["tokens"] == spent["input_tokens"].fillna(0).sum() + spent["output_tokens"].fillna(0).sum()
        person = people[people["pseudonym"] == row["pseudonym"]].iloc[0]
        if row["status"] == "completed":
            took = pd.to_datetime(person["completed_at"], utc=True) - pd.to_datetime(person["started_at"], utc=True)
            assert _same(row["time_on_task_s"], took.total_seconds())
        else:
            assert pd.isna(row["time_on_task_s"])
        answers = responses[(responses["pseudonym"] == row["pseudonym"]) & (responses["phase"] == "questionnaire")]
        given = dict(zip(answers["item_id"], answers["value"]))
        for item_id in questionnaire:
            if item_id not in given:
                assert pd.isna(row[item_id]), (row["pseudonym"], item_id)
            else:
                kind = next(i["kind"] for i in study.spec["items"] if i["id"] == item_id)
                if kind == "likert":
                    assert int(row[item_id]) == int(float(given[item_id])), (row["pseudonym"], item_id)
                else:
                    assert str(row[item_id]) == str(given[item_id])
        if "attitude" in wide.columns:
            if all(i in given for i in SCALE["items"]):
                understand, trust = (int(float(given[i])) for i in SCALE["items"])
                assert _same(row["attitude"], (understand + (1 + 7 - trust)) / 2)  # q_trust reversed on 1-7
            else:
                assert pd.isna(row["attitude"])

    # the participants who finished have all their measures; the one who left has a pre-test score only
    finished = wide[(wide["status"] == "completed") & ~wide["is_simulated"].astype(bool)]
    assert len(finished) == 4 and finished[["pre", "post", "time_on_task_s"]].notna().all().all()
    left = wide[wide["status"] == "active"].iloc[0]
    assert pd.notna(left["pre"]) and pd.isna(left["post"]) and pd.isna(left["q_understand"])

    # no identifier in the wide file
    data = (tmp_path / f"{WIDE}.{fmt}").read_bytes()
    if fmt == "parquet":
        data += pd.read_parquet(tmp_path / f"{WIDE}.{fmt}").to_csv().encode()
    for p in Participant.objects.filter(study=study.study):
        for needle in (p.token, p.pid_hash or "-", p.session_hash or "-"):
            assert needle.encode() not in data


@pytest.mark.django_db
def test_the_codebook_markdown_describes_the_wide_table(study, tmp_path):
    study_export(slug=study.study.slug, out=tmp_path, fmt="csv")
    page = (tmp_path / "codebook.md").read_text()
    assert f"## {WIDE}" in page and "`q_understand`" in page and "One row per participant" in page


def test_wide_rows_compute_measures_answers_and_reverse_keyed_scales_from_hand_made_frames():
    items = [{"id": "q_a", "kind": "likert", "prompt": "A?", "scale": {"min": 1, "max": 5}},
             {"id": "q_b", "kind": "likert", "prompt": "B?", "scale": {"min": 1, "max": 5}},
             {"id": "q_text", "kind": "text", "prompt": "Anything?", "scale": {}}]
    scales = [{"id": "s_ab", "items": ["q_a", "q_b"], "scoring": "sum", "reverse": ["q_b"]}]
    table = wide_table(items=items, scales=scales)
    names = [c.name for c in table.columns]
    assert names[:len(WIDE_FIXED)] == [c.name for c in WIDE_FIXED]
    assert names[len(WIDE_FIXED):] == ["q_a", "q_b", "q_text", "s_ab"]
    types = {c.name: c.type for c in table.columns}
    assert types["q_a"] == "integer" and types["q_text"] == "string" and types["s_ab"] == "number"

    def person(name, status, arm, completed):
        row = dict.fromkeys(TABLES["participants"].names)
        row.update(version_sha256="v", pseudonym=name, arm=arm, form_order="AB", step="done", status=status,
                   is_simulated=False, is_pilot=False, started_at="2026-01-01T10:00:00.000000Z",
                   completed_at=completed, created_at="2026-01-01T10:00:00.000000Z", pages_reloaded=0)
        return tuple(row[n] for n in TABLES["participants"].names)

    def answer(name, phase, item_id, value, score=None):
        row = dict.fromkeys(TABLES["responses"].names)
        row.update(version_sha256="v", pseudonym=name, phase=phase, item_id=item_id, item_kind="single_choice",
                   value=value, score=score, correct=None if score is None else score == 1.0,
                   created_at="2026-01-01T10:01:00.000000Z")
        return tuple(row[n] for n in TABLES["responses"].names)

    people = F.frame("participants", [person("p_1", "completed", "static", "2026-01-01T10:10:00.000000Z"),
                                      person("p_2", "active", "static", None)])
    responses = F.frame("responses", [
        answer("p_1", "pre_test", "t1", "a", 0.0), answer("p_1", "pre_test", "t2", "a", 1.0),
        answer("p_1", "post_test", "t3", "a", 1.0), answer("p_1", "post_test", "t4", "a", 1.0),
        answer("p_1", "questionnaire", "q_a", "4"), answer("p_1", "questionnaire", "q_b", "2"),
        answer("p_1", "questionnaire", "q_text", "It was clear."),
        answer("p_2", "pre_test", "t1", "a", 1.0), answer("p_2", "questionnaire", "q_a", "5"),
    ])
    empty = {name: F.frame(name, []) for name in ("turns", "llm_calls", "predictions")}
    rows = F.wide_rows(table, items, scales, people, responses, empty["turns"], empty["llm_calls"],
                       empty["predictions"])
    first, second = (dict(zip(names, row)) for row in rows)
    assert (first["pre"], first["post"], first["gain"], first["time_on_task_s"]) == (0.5, 1.0, 0.5, 600.0)
    assert (first["q_a"], first["q_b"], first["q_text"]) == (4, 2, "It was clear.")
    assert first["s_ab"] == 4 + (1 + 5 - 2)  # the sum, q_b reversed
    assert first["turns"] == 0 and first["is_simulated"] is False
    assert second["pre"] == 1.0 and second["post"] is None and second["time_on_task_s"] is None
    assert second["q_a"] == 5 and second["q_b"] is None and second["s_ab"] is None  # an item missing: no score


def test_item_and_scale_columns_never_clash_with_the_fixed_columns_or_each_other():
    items = [{"id": "pre", "kind": "likert"}, {"id": "q-one", "kind": "likert"}, {"id": "9lives", "kind": "text"},
             {"id": "q_one", "kind": "numeric"}]
    names = wide_column_names(items, [{"id": "arm", "items": []}])
    assert names == {("item", "pre"): "item_pre", ("item", "q-one"): "q_one", ("item", "9lives"): "item_9lives",
                     ("item", "q_one"): "item_q_one", ("scale", "arm"): "scale_arm"}
