"""Entry through the study link: hashing of the PID, resume, concurrency, refusals."""
import hashlib
import hmac
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client

from conftest import static_only
from participants.models import Participant, Step
from participants.services import participant_enter
from studies.selectors import entry_link_token
from studies.services import study_state_set

pytestmark = pytest.mark.django_db

PID = "5f1a2b3c4d5e6f7a8b9c0d1e"


def test_pid_is_stored_only_as_a_keyed_hash(live_study, enter):
    enter(live_study, pid=PID)
    participant = Participant.objects.get()
    expected = hmac.new(settings.PID_HASH_KEY.encode(), PID.encode(), hashlib.sha256).hexdigest()
    assert participant.pid_hash == expected
    session_id = f"SESSION-{PID}"  # the `enter` fixture's recruiter session
    assert participant.session_hash and participant.session_hash != session_id
    row = " ".join(str(v) for v in Participant.objects.values().get().values())
    assert PID not in row and session_id not in row


def test_entry_redirects_to_the_current_step_without_the_pid_in_the_address(live_study, enter):
    _, response = enter(live_study, pid=PID)
    assert response.status_code == 302
    assert response["Location"] == f"/s/{live_study.study.slug}/consent/"


def test_the_same_pid_again_resumes_the_same_participant_at_the_same_step_and_arm(live_study, enter, step_through):
    client, _ = enter(live_study, pid=PID)
    step_through(client, live_study, times=3)  # consent and two pre-test items
    before = Participant.objects.get()
    _, response = enter(live_study, pid=PID, client=Client())  # another browser, tomorrow
    assert response["Location"] == f"/s/{live_study.study.slug}/pre-test/"
    after = Participant.objects.get()
    assert (after.pk, after.step, after.arm, after.form_order) == (before.pk, Step.PRE_TEST, before.arm, before.form_order)
    assert after.responses.count() == 2


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_entries_with_one_pid_make_one_participant(launch):
    version = launch(static_only)

    def arrive(_):  # a double click, a reload: one recruiter session
        try:
            return participant_enter(slug=version.study.slug, pid=PID, session_id="S").pk
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=20) as pool:
        ids = set(pool.map(arrive, range(20)))
    print(f"20 concurrent entries with one PID: {Participant.objects.count()} participant row(s), ids seen {len(ids)}")
    assert len(ids) == 1
    assert Participant.objects.count() == 1


def test_entry_without_a_pid_is_refused_unless_the_link_is_a_pilot_link(live_study):
    slug = live_study.study.slug
    refused = Client().get(f"/s/{slug}/")
    assert refused.status_code == 403
    assert b"Prolific" in refused.content
    pilot = Client().get(f"/s/{slug}/", {"pilot": entry_link_token(slug=slug, kind="pilot")})
    assert pilot.status_code == 302
    assert Participant.objects.get().is_pilot
    forged = Client().get(f"/s/{slug}/", {"pilot": "eyJzIjoibG9hbiJ9:forged:signature"})
    assert forged.status_code == 403


def test_a_study_may_allow_entry_without_a_pid(launch):
    def open_entry(data):
        static_only(data)
        data["recruitment"]["allow_without_pid"] = True

    version = launch(open_entry)
    assert Client().get(f"/s/{version.study.slug}/").status_code == 302
    assert Participant.objects.filter(pid_hash__isnull=True).count() == 1


def test_a_paused_study_turns_new_people_away_and_lets_people_inside_finish(live_study, enter, step_through):
    inside, _ = enter(live_study, pid=PID)
    step_through(inside, live_study)
    study_state_set(slug=live_study.study.slug, state="paused")
    _, response = enter(live_study, pid="another-person-000000000")
    assert response.status_code == 403
    assert b"closed" in response.content
    assert inside.get(f"/s/{live_study.study.slug}/pre-test/").status_code == 200


def test_a_study_without_a_live_version_is_not_open(db):
    response = Client().get("/s/no-such-study/", {"PROLIFIC_PID": PID})
    assert response.status_code == 404


def test_a_page_without_a_session_asks_for_the_study_link(live_study):
    response = Client().get(f"/s/{live_study.study.slug}/pre-test/")
    assert response.status_code == 403
    assert b"Prolific link" in response.content
