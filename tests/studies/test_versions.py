"""Study versions: load makes a draft, launch freezes it, an edited file makes version n+1."""
import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from conftest import EXAMPLE
from participants.models import Participant
from studies.models import Study, StudyAsset, StudyVersion
from studies.services import StudyStateError, study_launch, study_state_set, study_version_create
from studies.spec import study_file_read
from studies.targets import target_train

pytestmark = pytest.mark.django_db


def _run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_load_creates_a_draft_with_its_hash_and_assets():
    out = _run("study_load", str(EXAMPLE))
    version = StudyVersion.objects.get()
    assert "loaded as v1" in out and version.state == StudyVersion.State.DRAFT
    assert version.sha256 == study_file_read(EXAMPLE).sha256
    assert set(StudyAsset.objects.values_list("path", flat=True)) >= {"data/loans.csv", "material/static.en.md"}


def test_loading_the_same_file_again_changes_nothing():
    _run("study_load", str(EXAMPLE))
    assert "unchanged" in _run("study_load", str(EXAMPLE))
    assert StudyVersion.objects.count() == 1


def test_launch_freezes_the_version_with_the_targets_keys(study_folder, fake_llm):  # the LLM arms need a model
    _run("study_load", str(EXAMPLE))
    out = _run("study_launch", "loan-approval")
    version = StudyVersion.objects.get()
    assert version.state == StudyVersion.State.LIVE and version.launched_at and "pilot link" in out
    trained = target_train(version.spec["target"], {a.path: bytes(a.content) for a in version.assets.all()})
    assert version.target_sha256 == trained.sha256
    from_target = [i for i in version.spec["items"] if i.get("key") == "from_target"]
    assert from_target and set(version.target_keys) == {i["id"] for i in from_target}
    for item in from_target:
        assert version.target_keys[item["id"]] == trained.predict([item["input"]])[0]
    assert study_launch(slug="loan-approval") == version  # launching again changes nothing


def test_an_edited_file_makes_version_two_and_the_live_version_never_changes(study_folder):
    first, _ = study_version_create(study_file=study_file_read(EXAMPLE))
    study_launch(slug="loan-approval")
    frozen = StudyVersion.objects.values().get(pk=first.pk)

    def reweigh(data):
        data["arms"][0]["weight"] = 2
        data["allocation"]["block_size"] = 10

    edited = study_folder(reweigh)
    second, created = study_version_create(study_file=study_file_read(edited))
    assert created and second.number == 2 and second.state == StudyVersion.State.DRAFT
    assert second.sha256 != first.sha256
    assert StudyVersion.objects.values().get(pk=first.pk) == frozen

    study_launch(slug="loan-approval")
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.state, second.state) == (StudyVersion.State.CLOSED, StudyVersion.State.LIVE)
    with pytest.raises(StudyStateError):
        study_launch(slug="loan-approval", number=1)


def test_a_bad_file_gets_every_error_and_saves_nothing(study_folder):
    def break_it(data):
        data["arms"][2]["weight"] = 0
        data["items"][0]["concept"] = "no-such-concept"
        data["recruitment"].pop("completion_code")

    folder = study_folder(break_it)
    lines = (folder / "study.yaml").read_text().splitlines()
    weight_line = next(n for n, line in enumerate(lines, 1) if "weight: 0" in line)
    with pytest.raises(CommandError) as error:
        _run("study_load", str(folder))
    message = str(error.value)
    # the text names list entries by their id, besides their index
    assert f"arms[2] (id agentic).weight: must be greater than 0 (study.yaml, line {weight_line})" in message
    assert "items[0] (id pre_a1).concept" in message and "recruitment.completion_code" in message
    assert "nothing saved" in message
    assert Study.objects.count() == 0 and StudyVersion.objects.count() == 0


def test_the_version_hash_is_stored_on_every_participant(live_study, enter):
    enter(live_study, pid="abcdefabcdefabcdefabcdef")
    assert Participant.objects.get().version_sha256 == live_study.sha256


def test_pause_and_close_follow_the_allowed_transitions(live_study):
    assert study_state_set(slug="loan-approval", state="paused").state == "paused"
    assert study_state_set(slug="loan-approval", state="live").state == "live"
    assert study_state_set(slug="loan-approval", state="closed").state == "closed"
    with pytest.raises(StudyStateError):
        study_state_set(slug="loan-approval", state="live")


def test_the_schema_command_prints_the_published_schema():
    import json

    from studies.spec import study_json_schema

    assert json.loads(_run("study_schema")) == study_json_schema()


def test_validate_reports_a_valid_file():
    assert "valid" in _run("study_validate", str(EXAMPLE))
