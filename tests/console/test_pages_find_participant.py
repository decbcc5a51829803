"""Find a participant by Prolific ID on the participants page: posted, hashed with the entry's key, shown as
their row with the transcript (and, for owners, erase); the PID is in no URL, log, page or table."""
import logging
import re

import pytest
from django.db import connection

from conftest import hex_pid
from pages_support import as_role, assert_strict_page, client_for, researcher  # noqa: F401
from participants.models import Participant
from participants.services import identifier_hash
from studies.models import AuditEvent, Study

pytestmark = pytest.mark.django_db

URL = "/console/loan-approval/participants/find/"


@pytest.fixture
def entered(live_study, enter):
    """Three participants entered with their PIDs; return (PID, participant) of the second."""
    for label in ("first", "second", "third"):
        enter(live_study, pid=label)
    pid = hex_pid("second")
    return pid, Participant.objects.get(pid_hash=identifier_hash(pid))


def test_an_analyst_finds_a_participant_by_pid_and_gets_their_row_and_transcript_link(entered, as_role, caplog):
    pid, participant = entered
    client = as_role(participant.study, "analyst")
    caplog.set_level(logging.DEBUG)
    response = client.post(URL, {"pid": f"  {pid}\n"})  # pasted with spaces around it
    html = assert_strict_page(response)
    assert response.status_code == 200 and "no-store" in response.headers["Cache-Control"]
    assert re.findall(r'data-found-pseudonym="([^"]+)"', html) == [participant.pseudonym]
    assert f'href="/console/loan-approval/participants/{participant.pseudonym}/"' in html
    assert "data-erase" not in html  # erasing is the owner's
    # the PID is in no answer, no log line, no URL, no audit row; the form is empty again
    assert pid not in html and pid.lower() not in html.lower()
    assert pid not in caplog.text
    assert not AuditEvent.objects.filter(after__icontains=pid).exists()
    assert client.get(f"{URL}?pid={pid}").status_code == 405  # a PID is never taken from a query string


def test_the_owner_also_gets_the_erase_button_and_it_erases_that_participant(entered, as_role):
    pid, participant = entered
    client = as_role(participant.study, "owner")
    html = client.post(URL, {"pid": pid}).content.decode()
    erase = f'action="/console/loan-approval/participants/{participant.pseudonym}/erase/"'
    assert erase in html and "data-erase" in html
    assert client.post(f"/console/loan-approval/participants/{participant.pseudonym}/erase/").status_code == 303
    assert not Participant.objects.filter(pk=participant.pk).exists()
    html = client.post(URL, {"pid": pid}).content.decode()
    assert "data-found-none" in html and "data-found-pseudonym" not in html


def test_a_pid_nobody_entered_with_or_of_another_study_finds_nobody(entered, as_role, launch, enter):
    pid, participant = entered
    client = as_role(participant.study, "analyst")
    html = client.post(URL, {"pid": hex_pid("nobody")}).content.decode()
    assert "data-found-none" in html and "No participant of this study entered with that Prolific ID" in html
    # the same PID in another study is that study's participant, not this one's
    other = Study.objects.create(slug="other-study", title="Other")
    Participant.objects.filter(pk=participant.pk).update(study=other)
    assert "data-found-none" in client.post(URL, {"pid": pid}).content.decode()


def test_an_empty_pid_is_refused_and_nothing_is_echoed(entered, as_role):
    _, participant = entered
    client = as_role(participant.study, "analyst")
    response = client.post(URL, {"pid": "   "})
    assert response.status_code == 400 and 'class="errors"' in response.content.decode()
    long_pid = "A" * 250
    response = client.post(URL, {"pid": long_pid})
    assert response.status_code == 400 and long_pid not in response.content.decode()


def test_only_roles_with_data_access_may_look_up_a_pid(entered, as_role):
    pid, participant = entered
    for role in ("viewer", "editor"):
        response = as_role(participant.study, role).post(URL, {"pid": pid})
        assert response.status_code == 403 and participant.pseudonym not in response.content.decode()
    assert client_for(researcher("outsider")).post(URL, {"pid": pid}).status_code == 404


def test_the_lookup_compares_hashes_in_one_query_and_stores_nothing(entered, as_role, django_assert_num_queries):
    from analysis.selectors import participant_find_by_pid

    pid, participant = entered
    study = participant.study
    with django_assert_num_queries(1) as ctx:
        assert participant_find_by_pid(study=study, pid=pid).pk == participant.pk
    assert pid not in ctx.captured_queries[0]["sql"] and identifier_hash(pid) in ctx.captured_queries[0]["sql"]
    with connection.cursor() as cursor:  # not a single column of any participant row holds the PID in clear
        cursor.execute("SELECT * FROM participants_participant")
        assert not any(pid in str(value) for row in cursor.fetchall() for value in row)
