"""Launch refuses a version with an arm that cannot run where it is launched, names the arm and the reason,
and launches it anyway only when told to (`--allow`), recording the waiver; `llm_check` stores the probe."""
import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from conftest import chat_only
from console.services import api_token_create
from explainers.arms import launch_problems
from studies.models import AuditEvent, Membership, StudyVersion

pytestmark = pytest.mark.django_db

SLUG = "loan-approval"


@pytest.fixture
def no_llm(settings):
    """Nothing answers for an LLM arm here: no base URL, no key, no scripted model."""
    settings.SCRIPTED_LLM_URL = settings.LLM_BASE_URL = settings.LLM_API_KEY = ""
    settings.ANTHROPIC_BASE_URL = settings.ANTHROPIC_API_KEY = ""


def load(study_folder, edit=None) -> StudyVersion:
    call_command("study_load", str(study_folder(edit)), stdout=io.StringIO())
    return StudyVersion.objects.get(study__slug=SLUG)


def editor(version) -> tuple:
    user = get_user_model().objects.create_user("eda")
    Membership.objects.create(study=version.study, user=user, role=Membership.Role.EDITOR)
    return user


def test_the_command_refuses_an_llm_arm_with_no_endpoint_and_names_it(study_folder, no_llm):
    version = load(study_folder)
    with pytest.raises(CommandError) as refused:  # manage.py exits 1 on a CommandError
        call_command("study_launch", SLUG, stdout=io.StringIO())
    message = str(refused.value)
    assert "arm chat: no language model is configured" in message and "arm agentic:" in message
    assert "arm static" not in message and "arm tutor" not in message and "--allow" in message
    version.refresh_from_db()
    assert version.state == StudyVersion.State.DRAFT and not AuditEvent.objects.filter(action="study_launch").exists()


def test_allow_launches_anyway_and_records_the_waiver(study_folder, no_llm):
    load(study_folder)
    out = io.StringIO()
    call_command("study_launch", SLUG, allow=["chat", "agentic"], stdout=out)
    version = StudyVersion.objects.get(study__slug=SLUG)
    assert version.state == StudyVersion.State.LIVE
    assert set(version.launch_waivers) == {"chat", "agentic"}
    assert "no language model" in version.launch_waivers["chat"][0]
    assert "launched anyway: arm chat" in out.getvalue()
    launch = AuditEvent.objects.get(action="study_launch")
    assert launch.actor == "system" and set(launch.after["waivers"]) == {"chat", "agentic"}


def test_allowing_one_arm_still_refuses_the_other(study_folder, no_llm):
    load(study_folder)
    with pytest.raises(CommandError, match="arm agentic") as refused:
        call_command("study_launch", SLUG, allow=["chat"], stdout=io.StringIO())
    assert "arm chat" not in str(refused.value)


def test_allow_naming_no_arm_of_the_version_is_refused(study_folder, no_llm):
    load(study_folder)
    with pytest.raises(CommandError, match="names no arm of loan-approval v1: chatt"):
        call_command("study_launch", SLUG, allow=["chatt", "chat", "agentic"], stdout=io.StringIO())


def test_a_study_whose_arms_all_run_launches_and_is_probed_first(study_folder, fake_llm):
    version = load(study_folder)
    assert version.llm_report is None
    call_command("study_launch", SLUG, stdout=io.StringIO())
    version.refresh_from_db()
    assert version.state == StudyVersion.State.LIVE and version.launch_waivers == {}
    assert set(version.llm_report["arms"]) == {"chat", "agentic"}  # no report was stored: launch probed
    assert version.llm_report["arms"]["chat"]["scripted"] and version.llm_report["host"]


def test_llm_check_stores_the_report_and_launch_refuses_a_missing_capability(study_folder, fake_llm):
    version = load(study_folder)
    fake_llm.set_behaviour(ignore_tools=True)  # tool calls come back as text, under auto and required alike
    out = io.StringIO()
    call_command("llm_check", SLUG, stdout=out)
    version.refresh_from_db()
    report = version.llm_report
    assert report["checked_at"] and report["host"] and set(report["arms"]) == {"chat", "agentic"}
    assert report["arms"]["agentic"]["tools_required"] is False
    assert "agentic" in out.getvalue() and "json_schema" in out.getvalue()
    fake_llm.reset()  # the endpoint now behaves, but the stored report is what launch reads
    with pytest.raises(CommandError, match="arm agentic: the endpoint gives no tool calls") as refused:
        call_command("study_launch", SLUG, stdout=io.StringIO())
    assert "arm chat" not in str(refused.value)  # the chat arm calls no tools
    call_command("llm_check", SLUG, "--version", "1", stdout=io.StringIO())  # checked again: it launches
    call_command("study_launch", SLUG, stdout=io.StringIO())
    assert StudyVersion.objects.get(study__slug=SLUG).state == StudyVersion.State.LIVE


def test_llm_check_without_a_study_probes_the_default_endpoint(fake_llm, settings):
    settings.LLM_BASE_URL = fake_llm.openai_base_url
    out = io.StringIO()
    call_command("llm_check", stdout=out)
    text = out.getvalue()
    assert "the default endpoint" in text and fake_llm.openai_base_url in text
    assert any(r["body"]["model"] == "default" for r in fake_llm.requests() if r["path"].endswith("completions"))


def test_a_billed_provider_without_prices_cannot_launch(settings):
    settings.SCRIPTED_LLM_URL = settings.LLM_BASE_URL = ""
    settings.LLM_API_KEY = "sk-test"  # the official API, billed by the token
    arm = {"id": "chat", "kind": "chat", "llm": {"provider": "openai", "model": "gpt-4o-mini", "prices": None}}
    problems = launch_problems(spec={"arms": [arm]}, llm_report=None)
    assert "no price for 'gpt-4o-mini'" in problems["chat"][0]
    priced = {**arm, "llm": {**arm["llm"], "prices": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}}}
    assert launch_problems(spec={"arms": [priced]}, llm_report=None) == {}
    local = {**arm, "llm": {**arm["llm"], "base_url": "http://127.0.0.1:8090/v1"}}
    assert launch_problems(spec={"arms": [local]}, llm_report=None) == {}  # a local server bills nobody


def test_the_console_refuses_with_400_naming_the_arm_and_launches_anyway_with_a_waiver(study_folder, no_llm):
    version = load(study_folder)
    client = Client()
    client.force_login(editor(version))
    response = client.post(f"/console/{SLUG}/state/", {"action": "launch", "number": 1})
    assert response.status_code == 400
    html = response.content.decode()
    assert "arm chat: no language model is configured" in html and "data-launch-anyway" in html
    version.refresh_from_db()
    assert version.state == StudyVersion.State.DRAFT
    response = client.post(f"/console/{SLUG}/state/", {"action": "launch", "number": 1, "allow": ["chat", "agentic"]})
    assert response.status_code == 303
    version.refresh_from_db()
    assert version.state == StudyVersion.State.LIVE and set(version.launch_waivers) == {"chat", "agentic"}
    page = client.get(f"/console/{SLUG}/").content.decode()
    assert 'data-waiver="chat"' in page and 'data-waiver="agentic"' in page
    monitor = client.get(f"/console/{SLUG}/monitor/").content.decode()
    assert 'data-monitor-warning="waiver" data-arm="chat"' in monitor
    assert 'data-monitor-warning="arm_unavailable" data-arm="chat"' in monitor  # red: live, cannot run


def test_the_console_check_endpoints_action_stores_the_report_shown_in_the_checklist(study_folder, fake_llm):
    version = load(study_folder)
    client = Client()
    client.force_login(editor(version))
    assert 'data-llm-arm="chat"' in client.get(f"/console/{SLUG}/").content.decode()
    response = client.post(f"/console/{SLUG}/llm-check/")
    assert response.status_code == 303
    version.refresh_from_db()
    assert set(version.llm_report["arms"]) == {"chat", "agentic"}
    page = client.get(f"/console/{SLUG}/").content.decode()
    assert "scripted demo model" in page and "tools required, json_schema" in page


def test_the_api_refuses_with_400_naming_the_arm_and_allow_launches_with_the_waiver(study_folder, no_llm):
    version = load(study_folder)
    key = api_token_create(user=editor(version), name="t", scope="write")[1]
    client = Client()
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    response = client.post(f"/api/studies/{SLUG}/launch/", {}, content_type="application/json", **headers)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "arm_cannot_run" and "arm chat: no language model" in body["detail"]
    assert set(body["arms"]) == {"chat", "agentic"}
    response = client.post(f"/api/studies/{SLUG}/launch/", json.dumps({"allow": ["chat", "agentic"]}),
                           content_type="application/json", **headers)
    assert response.status_code == 200, response.content
    assert response.json()["state"] == "live" and set(response.json()["launch_waivers"]) == {"chat", "agentic"}


def test_a_chat_only_study_with_an_endpoint_has_no_problems(study_folder, fake_llm):
    version = load(study_folder, chat_only)
    call_command("study_launch", SLUG, stdout=io.StringIO())
    version.refresh_from_db()
    assert version.state == StudyVersion.State.LIVE and version.launch_waivers == {}
