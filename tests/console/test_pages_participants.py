"""The participant list (filters, pages, flags) and the transcript viewer with the learner model beside
each turn; both need the "data" role (owner, analyst)."""
import re

import pytest

from bench.monitor import study_populate
from conftest import static_only
from explainers.models import LearnerModelSnapshot, LLMCall, Turn
from pages_support import as_role, assert_strict_page  # noqa: F401
from participants.models import Participant
from test_monitor_queries import three_arms

pytestmark = pytest.mark.django_db


@pytest.fixture
def populated(launch):
    version = launch(three_arms)
    study_populate(version, 70, turns=600, seed=5)
    return version


def test_the_list_shows_pseudonyms_arms_steps_statuses_and_flags_with_pages(populated, as_role):
    client = as_role(populated.study, "analyst")
    html = assert_strict_page(client.get("/console/loan-approval/participants/"))
    first = Participant.objects.filter(study=populated.study).order_by("id")[:50]
    shown = re.findall(r'<tr data-pseudonym="(p_[0-9a-f]{16})">', html)
    assert shown == [p.pseudonym for p in first]
    assert "page 1 of 2" in html and "70 participants" in html
    assert 'class="flag flag-bot"' in html  # populate makes about one in ten simulated
    second = client.get("/console/loan-approval/participants/?page=2").content.decode()
    assert len(re.findall(r'<tr data-pseudonym=', second)) == 20


def test_filters_narrow_the_list_and_survive_paging(populated, as_role):
    client = as_role(populated.study, "owner")
    html = client.get("/console/loan-approval/participants/?arm=chat&status=completed").content.decode()
    expected = Participant.objects.filter(study=populated.study, arm="chat", status="completed")
    assert set(re.findall(r'<tr data-pseudonym="(p_[0-9a-f]{16})">', html)) == {p.pseudonym for p in expected}
    assert '<option value="chat" selected>' in html
    html = client.get("/console/loan-approval/participants/?step=explanation").content.decode()
    assert all(p.step == "explanation" for p in Participant.objects.filter(
        pseudonym__in=re.findall(r'<tr data-pseudonym="(p_[0-9a-f]{16})">', html)))
    assert client.get("/console/loan-approval/participants/?status=bogus").status_code == 200  # ignored


def test_viewers_and_editors_cannot_read_participants(populated, as_role):
    someone = Participant.objects.filter(study=populated.study).first()
    for role in ("viewer", "editor"):
        client = as_role(populated.study, role)
        assert client.get("/console/loan-approval/participants/").status_code == 403
        assert client.get(f"/console/loan-approval/participants/{someone.pseudonym}/").status_code == 403


def test_the_transcript_shows_each_turn_with_its_act_llm_calls_and_the_learner_model_beside_it(populated, as_role):
    client = as_role(populated.study, "analyst")
    chat = Participant.objects.filter(arm="chat", conversation__turns__llm_calls__isnull=False).first()
    html = assert_strict_page(client.get(f"/console/loan-approval/participants/{chat.pseudonym}/"))
    turns = list(Turn.objects.filter(conversation=chat.conversation))
    assert len(re.findall(r'<li class="turn-row" data-turn=', html)) == len(turns)
    assert 'class="tag act">act: ' in html and "data-llm-calls" in html
    call = LLMCall.objects.filter(turn__conversation=chat.conversation, status="ok").first()
    assert f"{call.input_tokens:,} / {call.output_tokens:,}" in html

    tutor = Participant.objects.filter(arm="tutor", conversation__snapshots__index__gte=2).first()
    html = assert_strict_page(client.get(f"/console/loan-approval/participants/{tutor.pseudonym}/"))
    snapshots = LearnerModelSnapshot.objects.filter(conversation=tutor.conversation)
    assert len(re.findall(r'<div class="snapshot" data-snapshot=', html)) == snapshots.count()
    assert "initialised from the pre-test" in html
    assert re.search(r'<span class="(up|down)">[+-]?\d\.\d\d</span>', html)  # a mastery change since the last one


def test_a_static_arm_participant_shows_pages_and_answers_instead_of_a_conversation(launch, as_role, enter, step_through):
    version = launch(static_only)
    participant_client, _ = enter(version)
    step_through(participant_client, version, times=8)
    participant = Participant.objects.get()
    client = as_role(version.study, "analyst")
    html = assert_strict_page(client.get(f"/console/loan-approval/participants/{participant.pseudonym}/"))
    assert "data-no-conversation" in html and "static-arm participant" in html
    assert "pre_test" in html and 'data-answers="pre_test"' in html and "data-pages" in html


def test_an_unknown_pseudonym_is_not_found(populated, as_role):
    client = as_role(populated.study, "analyst")
    assert client.get("/console/loan-approval/participants/p_0000000000000000/").status_code == 404


def test_only_the_owner_erases_a_participant_from_the_transcript_page(populated, as_role):
    from studies.models import AuditEvent

    someone = Participant.objects.filter(study=populated.study, conversation__isnull=False).first()
    url = f"/console/loan-approval/participants/{someone.pseudonym}/"
    analyst = as_role(populated.study, "analyst")
    assert "data-erase" not in analyst.get(url).content.decode()
    assert analyst.post(url + "erase/").status_code == 403
    owner = as_role(populated.study, "owner")
    assert "data-erase" in assert_strict_page(owner.get(url))
    response = owner.post(url + "erase/")
    assert response.status_code == 303 and response.headers["Location"] == "/console/loan-approval/participants/"
    assert not Participant.objects.filter(pk=someone.pk).exists()
    assert owner.get(url).status_code == 404
    event = AuditEvent.objects.get(action="participant_erase")
    assert someone.pseudonym not in str(event.after) and event.object_id == ""
    assert "Erased one participant" in owner.get("/console/loan-approval/participants/").content.decode()
