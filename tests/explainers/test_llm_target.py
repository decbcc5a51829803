"""An `llm` target: at launch its model answers every `from_target` item; answers and model id are frozen."""
import pytest
from django.core.management import call_command

from studies.models import StudyVersion
from studies.services import study_launch, study_version_create
from studies.spec import StudyFileInvalid, study_file_read

pytestmark = pytest.mark.django_db

TEMPLATE = ("A bank model sees an applicant with income {income} k$, debt ratio {debt_ratio} and {late_payments} "
            "late payments. Will it approve the loan? Answer yes or no.")


def llm_target(data) -> None:
    data["target"] = {
        "kind": "llm",
        "prompt_template": TEMPLATE,
        "features": list(data["target"]["features"]),
        "llm": {"model": "target-model", "params": {"max_tokens": 20}},
    }


def _launch(folder) -> StudyVersion:
    version, _ = study_version_create(study_file=study_file_read(folder))
    return study_launch(slug=version.study.slug)


def test_launch_freezes_the_models_answers_and_its_reported_id(study_folder, fake_llm):
    fake_llm.set_behaviour(json={"answer": "no"})
    version = _launch(study_folder(llm_target))
    keyed = [i for i in version.spec["items"] if i.get("key") == "from_target"]
    assert keyed and version.target_keys == {i["id"]: "no" for i in keyed}
    assert version.target_info["kind"] == "llm" and version.target_info["model"]
    assert version.target_info["scripted"] is True
    assert len(version.target_sha256) == 64
    requests = [r for r in fake_llm.requests() if r["path"].endswith("/chat/completions")]
    assert len(requests) == len(keyed)
    for request in requests:
        assert request["body"]["temperature"] == 0
        assert request["body"]["response_format"]["type"] == "json_schema"
    first = keyed[0]["input"]
    assert any(f"income {first['income']} k$" in r["body"]["messages"][0]["content"] for r in requests)


def test_an_answer_outside_the_options_stops_the_launch(study_folder, fake_llm):
    fake_llm.set_behaviour(json={"answer": "maybe"})
    version, _ = study_version_create(study_file=study_file_read(study_folder(llm_target)))
    with pytest.raises(StudyFileInvalid, match="not one of the options"):
        study_launch(slug=version.study.slug)
    version.refresh_from_db()
    assert version.state == StudyVersion.State.DRAFT


def test_a_template_placeholder_must_be_a_feature(study_folder):
    def broken(data):
        llm_target(data)
        data["target"]["prompt_template"] = "income {incme}"

    with pytest.raises(StudyFileInvalid, match=r"target.prompt_template: placeholder '\{incme\}'"):
        study_file_read(study_folder(broken))


def test_the_study_launch_command_reports_a_missing_model(study_folder, settings):
    settings.SCRIPTED_LLM_URL = settings.LLM_BASE_URL = settings.LLM_API_KEY = ""
    call_command("study_load", str(study_folder(llm_target)))
    with pytest.raises(Exception, match="no language model is configured"):
        call_command("study_launch", "loan-approval")
