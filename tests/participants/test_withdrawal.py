"""Withdrawal, erasure and retention: a participant withdraws from any page and gets the no-consent code, their
data kept or deleted as the study file says; a researcher erases one participant without a trace or an
identifier in the audit; PID hashes are dropped N days after the end; pseudonyms are stored at creation."""
import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.utils import timezone

from conftest import chat_only, static_only
from analysis.frames import pseudonym as export_pseudonym
from explainers.models import Conversation, LearnerModelSnapshot, LLMCall, Turn
from participants import services
from participants.models import ErasedSpend, PageVisit, Participant, Response, Step
from studies.models import AuditEvent, Membership

pytestmark = pytest.mark.django_db

PID = "withdrawing-0000000000000"
NO_CONSENT = "https://app.prolific.com/submissions/complete?cc=NC4K8Z2P"


def _participant(client, version) -> Participant:
    return Participant.objects.get(token=client.session[f"teachback:participant:{version.study.slug}"])


def _with(mode: str, base=static_only):
    def edit(data):
        base(data)
        data["withdrawal"] = {"data": mode}

    return edit


def test_every_participant_page_has_the_withdraw_link_and_it_is_translated(live_study, enter, step_through):
    client, _ = enter(live_study, pid=PID)
    slug = live_study.study.slug
    link = f'href="/s/{slug}/withdraw/"'
    assert link in client.get(f"/s/{slug}/consent/").content.decode()
    step_through(client, live_study)
    page = client.get(f"/s/{slug}/pre-test/").content.decode()
    assert link in page and "Withdraw from this study" in page
    assert "退出本研究" in client.get(f"/s/{slug}/pre-test/?lang=zh-hans").content.decode()
    confirm = client.get(f"/s/{slug}/withdraw/?lang=en").content.decode()
    assert "Withdraw from this study?" in confirm and "will be kept" in confirm and link not in confirm


def test_withdrawing_with_keep_keeps_the_data_and_gives_the_no_consent_code(live_study, enter, step_through):
    client, _ = enter(live_study, pid=PID)
    step_through(client, live_study, times=3)  # consent and two answers
    response = client.post(f"/s/{live_study.study.slug}/withdraw/")
    assert response.status_code == 303 and response["Location"] == NO_CONSENT
    participant = _participant(client, live_study)
    assert participant.status == Participant.Status.WITHDRAWN and participant.step == Step.DONE
    assert participant.completed_at is not None
    assert Response.objects.filter(participant=participant).count() == 2
    event = AuditEvent.objects.get(action="participant_withdraw")
    assert event.object_id == participant.pseudonym and event.after["data"] == "keep"
    assert live_study.spec["recruitment"]["completion_code"] not in json.dumps(event.after)
    assert client.post(f"/s/{live_study.study.slug}/withdraw/").status_code == 302  # once only
    assert AuditEvent.objects.filter(action="participant_withdraw").count() == 1


def test_withdrawing_with_delete_deletes_the_data_and_keeps_a_stub(launch, fake_llm, enter, step_through):
    version = launch(_with("delete", base=chat_only))
    client, _ = enter(version, pid=PID)
    step_through(client, version, times=1 + 5)
    participant = _participant(client, version)
    conversation = services.chat_conversation(participant_id=participant.pk)
    turn = Turn.objects.create(conversation=conversation, author=Turn.Author.PARTICIPANT, text="my name is Ann",
                               status=Turn.Status.ANSWERED)
    LLMCall.objects.create(turn=turn, purpose="reply", attempt=1, status="ok", provider="openai", model="m",
                           request={"messages": ["my name is Ann"]}, started_at=timezone.now(), input_tokens=30,
                           output_tokens=12, cost_usd=Decimal("0.004"), version_sha256=version.sha256)
    LearnerModelSnapshot.objects.create(conversation=conversation, index=0, source="rules", schema_version=1, state={})
    assert client.get(f"/s/{version.study.slug}/withdraw/").content.decode().count("will be deleted") == 1
    response = client.post(f"/s/{version.study.slug}/withdraw/")
    assert response.status_code == 303 and response["Location"] == NO_CONSENT
    stub = Participant.objects.get(pk=participant.pk)
    assert stub.status == Participant.Status.WITHDRAWN and stub.pid_hash and stub.conversation is None
    assert not Response.objects.exists() and not PageVisit.objects.exists()
    assert not Conversation.objects.exists() and not Turn.objects.exists() and not LLMCall.objects.exists()
    assert not LearnerModelSnapshot.objects.exists()
    spent = ErasedSpend.objects.get()
    assert (spent.arm, spent.participants, spent.cost_usd, spent.tokens) == ("chat", 1, Decimal("0.004"), 42)


def test_coming_back_after_withdrawing_lands_on_the_withdrawn_page(live_study, enter, step_through):
    client, _ = enter(live_study, pid=PID)
    step_through(client, live_study)
    client.post(f"/s/{live_study.study.slug}/withdraw/")
    again, response = enter(live_study, pid=PID)  # a new browser, the same Prolific ID
    page = again.get(response["Location"]).content.decode()
    assert response["Location"].endswith("/done/") and "You have withdrawn from this study" in page
    assert NO_CONSENT.replace("&", "&amp;") in page or NO_CONSENT in page
    assert Participant.objects.count() == 1
    assert again.get(f"/s/{live_study.study.slug}/pre-test/").status_code == 302


@pytest.fixture
def team(live_study):
    make = get_user_model().objects.create_user
    users = {role: make(username=role) for role in ("owner", "analyst", "outsider")}
    Membership.objects.create(study=live_study.study, user=users["owner"], role="owner")
    Membership.objects.create(study=live_study.study, user=users["analyst"], role="analyst")
    return users


def test_erasure_leaves_no_row_of_the_participant_and_an_audit_row_without_identifiers(
        live_study, enter, step_through, team):
    client, _ = enter(live_study, pid=PID)
    step_through(client, live_study, times=4)
    participant = _participant(client, live_study)
    other, _ = enter(live_study, pid="stays-000000000000000000")
    step_through(other, live_study, times=2)
    identifiers = [participant.pseudonym, participant.token, participant.pid_hash, participant.session_hash,
                   str(participant.pk)]
    with pytest.raises(PermissionDenied):
        services.participant_erase(actor=team["analyst"], study=live_study.study, pseudonym=participant.pseudonym)
    with pytest.raises(Http404):
        services.participant_erase(actor=team["outsider"], study=live_study.study, pseudonym=participant.pseudonym)
    with pytest.raises(Http404):
        services.participant_erase(actor=team["owner"], study=live_study.study, pseudonym="p_0000000000000000")
    summary = services.participant_erase(actor=team["owner"], study=live_study.study, pseudonym=participant.pseudonym)
    assert summary == {"erased": 1, "version": 1, "arm": participant.arm, "step": Step.PRE_TEST, "status": "active"}
    assert not Participant.objects.filter(pk=participant.pk).exists()
    assert not Participant.objects.filter(pid_hash=participant.pid_hash).exists()
    assert not Response.objects.filter(participant_id=participant.pk).exists()
    assert not PageVisit.objects.filter(participant_id=participant.pk).exists()
    assert Response.objects.exists()  # the other participant's answers stay
    event = AuditEvent.objects.get(action="participant_erase")
    stored = json.dumps([event.object_id, event.before, event.after])
    assert event.actor == "owner" and event.object_id == ""
    assert not [i for i in identifiers if i and i in stored]
    assert client.get(f"/s/{live_study.study.slug}/pre-test/").status_code == 403  # the session leads nowhere


def test_retention_clears_pid_hashes_of_those_who_finished_long_enough_ago(launch, enter, settings):
    settings.PID_HASH_RETENTION_DAYS = 90
    version = launch(static_only)
    people = {}
    for name in ("old_done", "recent_done", "old_active"):
        client, _ = enter(version, pid=f"{name:0<24}")
        people[name] = _participant(client, version)
    now = timezone.now()
    Participant.objects.filter(pk=people["old_done"].pk).update(
        status="completed", step="done", completed_at=now - timedelta(days=91))
    Participant.objects.filter(pk=people["recent_done"].pk).update(
        status="withdrawn", step="done", completed_at=now - timedelta(days=89))
    Participant.objects.filter(pk=people["old_active"].pk).update(created_at=now - timedelta(days=200))
    assert services.participant_identifiers_expire() == 1
    cleared = {p.pk: (p.pid_hash, p.session_hash) for p in Participant.objects.all()}
    assert cleared[people["old_done"].pk] == (None, "")
    assert all(cleared[people[n].pk][0] for n in ("recent_done", "old_active"))
    event = AuditEvent.objects.get(action="pid_hashes_expire")
    assert event.after["participants"] == 1 and event.after["days"] == 90
    assert services.participant_identifiers_expire() == 0  # nothing left to clear, no row
    # What the retention costs: the same PID is a new person now.
    enter(version, pid=f"{'old_done':0<24}")
    assert Participant.objects.count() == 4
    settings.PID_HASH_RETENTION_DAYS = 0
    Participant.objects.update(status="completed", completed_at=now - timedelta(days=1000))
    assert services.participant_identifiers_expire() == 0  # 0: keep them for ever


def test_pseudonyms_are_stored_at_creation_equal_to_the_export_and_filled_in_by_the_migration(live_study, enter):
    enter(live_study, pid=PID)
    participant = Participant.objects.get()
    assert participant.pseudonym == export_pseudonym(participant.pk)
    Participant.objects.update(pseudonym="")
    fill = __import__("participants.migrations.0003_pseudonym_erased_spend", fromlist=["pseudonyms_fill"])
    fill.pseudonyms_fill(apps, None)
    assert Participant.objects.get().pseudonym == export_pseudonym(participant.pk)


def test_without_a_completion_url_the_withdrawn_page_shows_the_no_consent_code(launch, enter, step_through):
    def edit(data):
        static_only(data)
        data["recruitment"]["completion_url"] = None

    version = launch(edit)
    client, _ = enter(version, pid=PID)
    step_through(client, version)
    response = client.post(f"/s/{version.study.slug}/withdraw/")
    assert response["Location"].endswith("/done/")
    page = client.get(response["Location"]).content.decode()
    assert "You have withdrawn from this study" in page and "NC4K8Z2P" in page
    assert version.spec["recruitment"]["completion_code"] not in page
