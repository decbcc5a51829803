"""The study export: tidy tables in CSV, Parquet and JSONL, de-identified, documented, complete.

Data come through the real flow: participants enter with the test client, consent, answer and finish
(`step_through`); a chat participant gets a reply from `explainers.services.reply_generate` against the
fake LLM server.
"""
import hashlib
import json
import re
import zipfile
from io import BytesIO

import pandas as pd
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from analysis.codebook import TABLE_NAMES, TABLES, WIDE
from analysis.export import study_export
from conftest import chat_only, export_table_read, static_only
from explainers import services as explainer_services
from explainers.models import Turn
from participants.models import Participant, Step
from studies.services import study_launch, study_version_create
from studies.spec import study_file_read

pytestmark = pytest.mark.django_db

FORMATS = ("csv", "parquet", "jsonl")
ALL_STEPS = 1 + 5 + 1 + 5 + 3 + 1  # consent, pre-test, explanation, post-test, questionnaire, debrief
RESEARCHER_EMAIL = "dr.researcher@university.example.org"
EMAIL = re.compile(rb"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+\.[A-Za-z0-9.-]+")


@pytest.fixture(autouse=True)
def _in_process_replies(in_process):
    """Replies run inside the test's transaction (conftest's `in_process`)."""


def _token(client, version) -> str:
    return client.session[f"teachback:participant:{version.study.slug}"]


def _participant(client, version) -> Participant:
    return Participant.objects.get(token=_token(client, version))


def _static_with(withdrawal):
    def edit(data):
        static_only(data)
        data["withdrawal"] = {"data": withdrawal}

    return edit


@pytest.fixture
def world(launch, study_folder, enter, step_through, fake_llm):
    """Two versions of the example study: v1 static (two done, one withdrawn, one bot, one pilot), v2 chat."""
    get_user_model().objects.create_user("researcher", email=RESEARCHER_EMAIL, password="x")
    static = launch(_static_with("keep"))
    people = {}
    for name, pid in [("done", "PIDDONE000000000000000001"), ("done2", "PIDDONE000000000000000002"),
                      ("withdrawn", "PIDWITHDRAWN0000000000001"), ("bot", "PIDBOT0000000000000000001"),
                      ("pilot", "PIDPILOT00000000000000001")]:
        client, _ = enter(static, pid=pid)
        step_through(client, static, times=ALL_STEPS if name != "withdrawn" else 4)
        people[name] = (pid, _participant(client, static))
    Participant.objects.filter(pk=people["withdrawn"][1].pk).update(status=Participant.Status.WITHDRAWN)
    Participant.objects.filter(pk=people["bot"][1].pk).update(is_simulated=True)
    Participant.objects.filter(pk=people["pilot"][1].pk).update(is_pilot=True)

    draft, _ = study_version_create(study_file=study_file_read(study_folder(chat_only, name="chat")))
    chat = study_launch(slug=draft.study.slug, number=draft.number)  # v2: v1 closes
    client, _ = enter(chat, pid="PIDCHAT000000000000000001")
    step_through(client, chat, times=1 + 5)
    sent = client.post(f"/s/{chat.study.slug}/chat/send/", {"text": "Why was my neighbour refused?", "nonce": "n1"})
    assert sent.status_code == 202
    assert explainer_services.reply_generate(turn_id=sent.json()["turn"]).state == "answered"
    people["chat"] = ("PIDCHAT000000000000000001", _participant(client, chat))
    for pid, p in people.values():
        p.refresh_from_db()
    return {"static": static, "chat": chat, "people": people, "slug": static.study.slug}


def _export(world, tmp_path, fmt, name=None, **options):
    folder = tmp_path / (name or fmt)
    study_export(slug=world["slug"], out=folder, fmt=fmt, **options)
    return folder


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_table_reads_back_tidy_with_version_hash_on_every_row(world, tmp_path, fmt):
    folder = _export(world, tmp_path, fmt)
    hashes = {world["static"].sha256, world["chat"].sha256}
    frames = {table: export_table_read(folder, table, fmt) for table in TABLES}
    for table, frame in frames.items():
        assert list(frame.columns) == TABLES[table].names, table
        assert frame["version_sha256"].notna().all() and set(frame["version_sha256"]) <= hashes, table

    participants = frames["participants"]
    assert len(participants) == 5  # two done, the withdrawn (kept), the bot, the chat participant; no pilot
    assert participants["pseudonym"].is_unique
    assert set(participants["status"]) == {"completed", "withdrawn", "active"}
    assert participants["is_simulated"].astype(bool).sum() == 1  # the bot is in, flagged
    assert not participants["is_pilot"].astype(bool).any()
    assert (participants["started_at"].astype(str) == participants["consented_at"].astype(str)).all()
    assert set(participants["arm"]) == {"static", "chat"}

    responses = frames["responses"]
    assert not responses.duplicated(["pseudonym", "phase", "item_id"]).any()  # one row per item x phase
    done = participants.loc[participants["status"] == "completed", "pseudonym"]
    per_done = responses[responses["pseudonym"].isin(done)].groupby("pseudonym").size()
    assert len(per_done) == 3 and (per_done == 5 + 5 + 3).all()  # two done and the bot
    assert set(responses["phase"]) == {"pre_test", "post_test", "questionnaire"}
    multi = responses[responses["item_kind"] == "multi_choice"]
    assert all(isinstance(json.loads(v), list) for v in multi["value"])
    objective = responses[responses["phase"] != "questionnaire"]
    assert objective["score"].notna().all() and (objective["score"] == 1.0).all()  # answered from the key

    assert len(frames["turns"]) == 2
    assert set(frames["turns"]["author"]) == {"participant", "explainer"}
    reply = frames["turns"][frames["turns"]["author"] == "explainer"].iloc[0]
    question = frames["turns"][frames["turns"]["author"] == "participant"].iloc[0]
    assert reply["reply_to_turn_id"] == question["turn_id"] and bool(reply["scripted"])
    calls = frames["llm_calls"]
    assert len(calls) == 1 and calls.iloc[0]["status"] == "ok" and calls.iloc[0]["turn_id"] == question["turn_id"]  # logged on the turn it answers
    assert json.loads(calls.iloc[0]["request"])["messages"]
    assert calls.iloc[0]["output_tokens"] > 0

    assert len(frames["learner_models"]) == 0
    events = frames["events"]
    assert set(events["pseudonym"]) == set(participants["pseudonym"])
    assert (events["shown_count"] >= 1).all()
    assert len(frames["study_versions"]) == 2
    items = frames["items"]
    assert {"pre_test", "post_test", "questionnaire"} <= set(items["phase"])
    assert len(frames["concepts"]) == 2 * 5

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == fmt and manifest["study"] == world["slug"]
    assert [v["sha256"] for v in manifest["versions"]] == [world["static"].sha256, world["chat"].sha256]
    # the long tables, and the wide table with one row per participant (tests/analysis/test_export_wide.py)
    assert manifest["row_counts"] == {**{table: len(frame) for table, frame in frames.items()}, WIDE: len(participants)}


def test_parquet_keeps_types(world, tmp_path):
    folder = _export(world, tmp_path, "parquet")
    participants = pd.read_parquet(folder / "participants.parquet")
    assert str(participants["created_at"].dtype).startswith("datetime64") and participants["created_at"].dt.tz
    assert participants["is_simulated"].dtype == bool
    calls = pd.read_parquet(folder / "llm_calls.parquet")
    assert calls["cost_usd"].dtype == float and calls["cost_usd"].iloc[0] > 0


def test_pseudonyms_are_stable_across_exports_and_formats_and_not_derived_from_identifiers(world, tmp_path):
    first = export_table_read(_export(world, tmp_path, "csv", "one"), "participants", "csv")
    second = export_table_read(_export(world, tmp_path, "parquet", "two"), "participants", "parquet")
    assert sorted(first["pseudonym"]) == sorted(second["pseudonym"])
    assert all(re.fullmatch(r"p_[0-9a-f]{16}", name) for name in first["pseudonym"])
    derived = set()
    for pid, p in world["people"].values():
        for secret in (pid, p.token, p.pid_hash or "", str(p.pk)):
            digest = hashlib.sha256(secret.encode()).hexdigest()
            derived |= {digest[:16], digest[-16:], secret[:16]}
    assert not {name[2:] for name in first["pseudonym"]} & derived


def test_pseudonyms_change_with_the_secret(world, tmp_path, settings):
    before = set(export_table_read(_export(world, tmp_path, "csv", "a"), "participants", "csv")["pseudonym"])
    settings.SECRET_KEY = "another-secret"
    after = set(export_table_read(_export(world, tmp_path, "csv", "b"), "participants", "csv")["pseudonym"])
    assert not before & after


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_identifier_is_in_any_file(world, tmp_path, fmt):
    folder = _export(world, tmp_path, fmt, include_pilot=True)
    needles = [RESEARCHER_EMAIL.encode()]
    for pid, p in world["people"].values():
        needles += [pid.encode(), p.token.encode(), p.pid_hash.encode()]
        if p.session_hash:
            needles.append(p.session_hash.encode())
    files = sorted(folder.iterdir())
    assert {f.name for f in files} >= {"codebook.json", "codebook.md", "manifest.json"}
    for path in files:
        data = path.read_bytes()
        if path.suffix == ".parquet":  # compressed: look at the decoded values too
            data += pd.read_parquet(path).to_csv().encode()
        for needle in needles:
            assert needle not in data, (path.name, needle)
        assert not EMAIL.search(data), (path.name, EMAIL.search(data))


def test_simulated_participants_can_be_left_out_and_pilots_kept(world, tmp_path):
    without = export_table_read(_export(world, tmp_path, "csv", "nobots", include_simulated=False), "participants", "csv")
    assert len(without) == 4 and not without["is_simulated"].astype(bool).any()
    with_pilot = export_table_read(_export(world, tmp_path, "csv", "pilot", include_pilot=True), "participants", "csv")
    assert len(with_pilot) == 6 and with_pilot["is_pilot"].astype(bool).sum() == 1


def test_withdrawn_participants_are_left_out_everywhere_when_the_study_says_delete(launch, enter, step_through,
                                                                                  tmp_path):
    version = launch(_static_with("delete"))
    kept, _ = enter(version, pid="PIDKEEP000000000000000001")
    gone, _ = enter(version, pid="PIDGONE000000000000000001")
    step_through(kept, version, times=ALL_STEPS)
    step_through(gone, version, times=ALL_STEPS)
    Participant.objects.filter(pk=_participant(gone, version).pk).update(status=Participant.Status.WITHDRAWN)
    for fmt in FORMATS:
        folder = tmp_path / fmt
        study_export(slug=version.study.slug, out=folder, fmt=fmt)
        participants = export_table_read(folder, "participants", fmt)
        assert list(participants["status"]) == ["completed"]
        for table in ("responses", "events"):
            assert set(export_table_read(folder, table, fmt)["pseudonym"]) == set(participants["pseudonym"]), (fmt, table)
        assert json.loads((folder / "manifest.json").read_text())["versions"][0]["withdrawal"] == "delete"


def test_the_codebook_covers_every_written_column_and_nothing_else(world, tmp_path):
    for fmt in FORMATS:
        folder = _export(world, tmp_path, fmt)
        codebook = json.loads((folder / "codebook.json").read_text())
        written = {p.stem for p in folder.glob(f"*.{fmt}")}
        assert written == set(codebook["tables"]) == set(TABLE_NAMES) == set(TABLES) | {WIDE}
        for table in written:
            columns = list(export_table_read(folder, table, fmt).columns)
            assert columns == [c["name"] for c in codebook["tables"][table]["columns"]], (fmt, table)
        for table in codebook["tables"].values():
            for column in table["columns"]:
                assert column["type"] in codebook["types"] and column["description"]
    status = next(c for c in codebook["tables"]["participants"]["columns"] if c["name"] == "status")
    assert set(status["allowed"]) == {"active", "completed", "declined", "withdrawn"}
    arm = next(c for c in codebook["tables"]["participants"]["columns"] if c["name"] == "arm")
    assert {"static", "chat"} <= set(arm["allowed"])
    assert "learner model" in codebook["tables"]["learner_models"]["note"].lower()
    page = (folder / "codebook.md").read_text()
    assert all(f"## {table}" in page for table in TABLES) and "`pseudonym`" in page


def test_the_command_writes_the_export(world, tmp_path):
    out = tmp_path / "cmd"
    call_command("study_export", world["slug"], "--format", "jsonl", "--out", str(out), "--exclude-simulated")
    assert len(export_table_read(out, "participants", "jsonl")) == 4
    assert json.loads((out / "manifest.json").read_text())["options"]["include_simulated"] is False


def test_the_admin_action_downloads_a_csv_zip(world, client):
    admin_user = get_user_model().objects.create_superuser("boss", email="boss@university.example.org", password="x")
    client.force_login(admin_user)
    study = world["static"].study
    response = client.post("/admin/studies/study/", {"action": "download_export", "_selected_action": [study.pk]})
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(BytesIO(b"".join(response.streaming_content)))
    names = set(archive.namelist())
    assert {f"{study.slug}/{table}.csv" for table in TABLES} <= names
    assert f"{study.slug}/manifest.json" in names
    assert not any(b"boss@" in archive.read(name) for name in names)


def test_the_frames_hold_the_names_measures_read(world):
    from analysis.frames import export_scope, participants_frame, responses_frame

    scope = export_scope(slug=world["slug"])
    participants = participants_frame(scope)
    assert {"pseudonym", "arm", "form_order", "status", "is_simulated", "started_at", "completed_at",
            "step"} <= set(participants.columns)
    responses = responses_frame(scope)
    assert {"pseudonym", "phase", "item_id", "item_kind", "concept", "score", "correct", "confidence",
            "time_ms"} <= set(responses.columns)
    assert set(responses["pseudonym"]) <= set(participants["pseudonym"])
    assert (participants["step"] == Step.DONE).sum() == 3


def test_learner_model_snapshots_and_predictions_are_exported(launch, enter, step_through, tmp_path, settings):
    settings.SCRIPTED_LLM_URL = settings.LLM_BASE_URL = settings.LLM_API_KEY = ""

    def tutor_only(data):
        data["arms"] = [a for a in data["arms"] if a["kind"] == "tutor"]
        data["arms"][0]["limits"]["min_seconds"] = 0
        data["allocation"]["block_size"] = 1

    version = launch(tutor_only)
    client, _ = enter(version, pid="tutor-export-000000000000")
    step_through(client, version, times=1 + 5, policy="accuracy:0")  # a pre-test all wrong: the tutor teaches
    client.get(f"/s/{version.study.slug}/explanation/")
    for _ in range(12):  # until a check question has been answered (the tutor asks one after teaching)
        assert client.post(f"/s/{version.study.slug}/chat/send/", {"text": "b"}).status_code == 202
        if Turn.objects.filter(answers_check__isnull=False).exists():
            break
    sent = Turn.objects.filter(author=Turn.Author.PARTICIPANT).count()
    step_through(client, version)  # leave the explanation: the tutor predicts the post-test
    study_export(slug=version.study.slug, out=tmp_path, fmt="jsonl")
    snapshots = export_table_read(tmp_path, "learner_models", "jsonl")
    assert list(snapshots["snapshot_index"]) == list(range(sent + 1))
    assert list(snapshots["source"]) == ["pretest"] + ["rules"] * sent
    assert all("concepts" in json.loads(state) for state in snapshots["state"])
    predictions = export_table_read(tmp_path, "predictions", "jsonl")
    assert len(predictions) == len(version.spec["instruments"]["post_test"]["forms"]["A"])
    assert predictions["p_correct"].between(0, 1).all()
    turns = export_table_read(tmp_path, "turns", "jsonl")
    explainer = turns[turns["author"] == "explainer"]
    assert explainer["act"].notna().all() and explainer["concept"].notna().any()  # what the tutor did, per turn
    checks = explainer[explainer["act"] == "check"]
    assert checks["check_item"].notna().all()
    answers = turns[turns["answers_check_turn_id"].notna()]
    assert len(answers) == 1  # the loop above stopped at the first answered check
    assert set(answers["answers_check_turn_id"]) <= set(checks["turn_id"])
    assert answers["check_correct"].notna().all()


def test_a_failed_call_is_exported_with_its_error_text_and_strategy_and_a_cut_off_reply(
        launch, enter, step_through, fake_llm, tmp_path):
    from explainers.models import LLMCall

    version = launch(chat_only)
    pid = "PIDFAILED0000000000000001"
    client, _ = enter(version, pid=pid)
    step_through(client, version, times=1 + 5)
    fake_llm.queue({"fail": "context"})  # final: no retry
    sent = client.post(f"/s/{version.study.slug}/chat/send/", {"text": "What does income do?", "nonce": "f1"})
    assert sent.status_code == 202
    assert explainer_services.reply_generate(turn_id=sent.json()["turn"]).state == "failed"
    call = LLMCall.objects.get(turn_id=sent.json()["turn"])
    assert call.status == LLMCall.Status.ERROR and "maximum context length" in call.error
    # what the worker records on a cut-off reply and on a call with a strategy (explainers/services.py fills
    # these in): set here so that the export's plumbing is tested whatever the worker does today
    Turn.objects.filter(pk=call.turn_id).update(shown_text="Income matters when the debt ratio")
    LLMCall.objects.filter(pk=call.pk).update(
        tool_choice="required", structured_output="json_schema", fallback_reason="auto gave no tool call",
        trimmed={"turns": 3, "material_chars": 1200}, cost_usd=None,
    )
    long_error = "E" * 600
    second = LLMCall.objects.create(
        turn_id=call.turn_id, purpose="reply", attempt=2, status=LLMCall.Status.ERROR, provider="openai",
        model="gpt-4o-mini", request={}, error=long_error, started_at=call.started_at,
        version_sha256=call.version_sha256,
    )
    participant = _participant(client, version)
    for fmt in FORMATS:
        folder = _export({"slug": version.study.slug}, tmp_path, fmt)
        calls = export_table_read(folder, "llm_calls", fmt).set_index("attempt")
        assert {"error", "tool_choice", "structured_output", "fallback_reason", "trimmed"} <= set(calls.columns)
        assert calls.loc[1, "error"] == call.error[:500] and "maximum context length" in calls.loc[1, "error"]
        assert calls.loc[2, "error"] == long_error[:500]  # truncated to 500 characters
        assert calls.loc[1, "tool_choice"] == "required" and calls.loc[1, "structured_output"] == "json_schema"
        assert calls.loc[1, "fallback_reason"] == "auto gave no tool call"
        assert json.loads(calls.loc[1, "trimmed"]) == {"turns": 3, "material_chars": 1200}
        assert pd.isna(calls.loc[1, "cost_usd"]) and pd.isna(calls.loc[2, "trimmed"])  # unknown price: empty
        turns = export_table_read(folder, "turns", fmt)
        failed = turns[turns["turn_id"] == call.turn_id].iloc[0]
        assert failed["status"] == "failed" and bool(failed["cut_off"])
        assert failed["shown_text"] == "Income matters when the debt ratio"
        for path in folder.iterdir():
            data = path.read_bytes()
            if path.suffix == ".parquet":
                data += pd.read_parquet(path).to_csv().encode()
            for needle in (pid, participant.token, participant.pid_hash):
                assert needle.encode() not in data, (fmt, path.name)
