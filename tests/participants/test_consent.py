"""Consent: shown with its version, stored with hash and time, a refusal ends on the no-consent code,
and nothing is stored for a participant without consent."""
import pytest

from participants import services
from participants.models import PageVisit, Participant, Response, Step

pytestmark = pytest.mark.django_db

PID = "0123456789abcdef01234567"


def test_consent_page_shows_the_text_and_its_version(live_study, enter):
    client, _ = enter(live_study, pid=PID)
    page = client.get(f"/s/{live_study.study.slug}/consent/").content.decode()
    assert live_study.spec["consent"]["version"] in page
    assert "Consent to take part" in page


def test_accepting_stores_version_hash_and_time_and_cycles_the_session(live_study, enter):
    client, _ = enter(live_study, pid=PID)
    key_before = client.session.session_key
    response = client.post(f"/s/{live_study.study.slug}/consent/", {"choice": "accept"})
    assert response.status_code == 303 and response["Location"].endswith("/pre-test/")
    participant = Participant.objects.get()
    assert participant.consent_version == live_study.spec["consent"]["version"]
    assert len(participant.consent_sha256) == 64
    assert participant.consented_at is not None
    assert participant.step == Step.PRE_TEST and participant.arm and participant.form_order in ("AB", "BA")
    assert client.session.session_key != key_before
    assert client.get(f"/s/{live_study.study.slug}/pre-test/").status_code == 200  # the new key still works


def test_declining_ends_on_the_no_consent_code(live_study, enter):
    client, _ = enter(live_study, pid=PID)
    response = client.post(f"/s/{live_study.study.slug}/consent/", {"choice": "decline"})
    code = live_study.spec["recruitment"]["no_consent_code"]
    assert response.status_code == 303
    assert response["Location"] == f"https://app.prolific.com/submissions/complete?cc={code}"
    participant = Participant.objects.get()
    assert participant.status == Participant.Status.DECLINED and participant.arm == ""
    assert live_study.spec["recruitment"]["completion_code"] not in client.get(f"/s/{live_study.study.slug}/done/").content.decode()


def test_no_answer_or_event_can_be_stored_without_consent(live_study, enter):
    enter(live_study, pid=PID)
    participant = Participant.objects.get()
    participant.step = Step.PRE_TEST  # even if the step were somehow past consent
    participant.form_order = "AB"
    participant.save()
    first_item = live_study.spec["instruments"]["pre_test"]["forms"]["A"][0]
    with pytest.raises(services.ConsentRequired):
        services.response_submit(participant_id=participant.pk, phase=Step.PRE_TEST, item_id=first_item, values=["a"])
    with pytest.raises(services.ConsentRequired):
        services.page_visit_shown(participant=participant, page="pre_test:x")
    assert Response.objects.count() == 0 and PageVisit.objects.count() == 0


def test_a_declined_participant_cannot_store_answers(live_study, enter):
    client, _ = enter(live_study, pid=PID)
    client.post(f"/s/{live_study.study.slug}/consent/", {"choice": "decline"})
    participant = Participant.objects.get()
    with pytest.raises(services.ConsentRequired):
        services.page_visit_shown(participant=participant, page="explanation")
