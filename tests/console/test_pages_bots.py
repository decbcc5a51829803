"""The checklist's "Run 10 bots": the button queues a run against this site's own URL, a worker sends the bots
over HTTP (here: the worker's function against pytest-django's live server) and the page polls the results."""
import re

import pytest

from conftest import static_only
from console import tasks
from console.bots import bots_run
from pages_support import as_role, assert_strict_page  # noqa: F401
from participants.models import Participant
from studies.models import AuditEvent
from studies.services import study_state_set


@pytest.fixture
def queued(monkeypatch):
    """Capture the task instead of sending it to the broker."""
    sent = []
    monkeypatch.setattr(tasks.bots_run_task, "delay", lambda *args: sent.append(args))
    return sent


@pytest.mark.django_db(transaction=True)
def test_bots_run_through_the_live_site_and_the_page_shows_their_results(live_server, launch, as_role, queued):
    version = launch(static_only)
    client = as_role(version.study, "editor")
    html = assert_strict_page(client.get("/console/loan-approval/"))
    assert 'hx-post="/console/loan-approval/bots/"' in html and "data-run-bots" in html

    response = client.post("/console/loan-approval/bots/", headers={"HX-Request": "true"})
    fragment = assert_strict_page(response, fragment=True)
    run_id, slug, base_url, n = queued[0]
    assert (slug, base_url, n) == ("loan-approval", "http://testserver", 10)  # the site that was asked
    assert 'data-bots="queued"' in fragment and f'hx-get="/console/loan-approval/bots/{run_id}/"' in fragment
    assert AuditEvent.objects.filter(action="bots_run", object_id=run_id).exists()

    state = bots_run(run_id=run_id, slug=slug, base_url=live_server.url, n=3)  # the worker's side
    assert state["state"] == "done" and state["done"] == state["completed"] == state["with_code"] == 3
    assert Participant.objects.filter(is_simulated=True, status="completed").count() == 3
    assert bots_run(run_id=run_id, slug=slug, base_url=live_server.url, n=3)["done"] == 3  # never twice

    fragment = assert_strict_page(client.get(f"/console/loan-approval/bots/{run_id}/"), fragment=True)
    assert 'data-bots="done"' in fragment and "hx-trigger" not in fragment  # the polling stops
    assert re.search(r"<span data-bots-completed>3</span> completion redirects\s+\(3 with the completion code\)", fragment)
    assert "data-bots-run" not in fragment
    assert 'data-bots="done"' in client.get("/console/loan-approval/").content.decode()  # the last run stays shown


@pytest.mark.django_db
def test_bots_need_a_live_study_and_the_edit_role(launch, as_role, queued):
    version = launch(static_only)
    for role in ("viewer", "analyst"):
        assert as_role(version.study, role).post("/console/loan-approval/bots/").status_code == 403
    study_state_set(slug="loan-approval", state="paused")
    editor = as_role(version.study, "editor")
    fragment = editor.post("/console/loan-approval/bots/", headers={"HX-Request": "true"}).content.decode()
    assert "Bots need a live version" in fragment
    assert not queued
    assert editor.get("/console/loan-approval/bots/0123456789abcdef/").status_code == 404
