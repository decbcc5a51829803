"""Completion: the code exists nowhere before the participant completes, and is given once."""
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client

from participants.models import Participant

pytestmark = pytest.mark.django_db

PID = "c0ffee00c0ffee00c0ffee00"
STEPS = 1 + 5 + 1 + 5 + 3  # consent, pre-test, explanation, post-test, questionnaire


def _static_files_text() -> str:
    """Every static file as text (a binary one, such as the favicon, read as Latin-1: every byte is kept)."""
    return "".join(p.read_bytes().decode("latin-1") for p in Path(settings.BASE_DIR, "static").rglob("*") if p.is_file())


def test_the_code_appears_in_no_page_script_or_response_before_completion(live_study, enter, step_through):
    code = live_study.spec["recruitment"]["completion_code"]
    client, entry = enter(live_study, pid=PID)
    seen = [entry]
    slug = live_study.study.slug
    pages = ["", "consent/", "pre-test/", "explanation/", "post-test/", "questionnaire/", "debrief/", "done/", "asset/material/figures/tree.svg"]
    for _ in range(STEPS):
        seen += [client.get(f"/s/{slug}/{page}", follow=True) for page in pages]
        seen.append(step_through(client, live_study))
    assert Participant.objects.get().step == "debrief"
    seen += [client.get(f"/s/{slug}/{page}", follow=True) for page in pages]
    for response in seen:
        text = response.content.decode(errors="replace") + str(response.headers)
        assert code not in text, response.request["PATH_INFO"]
    assert code not in _static_files_text()

    finish = client.post(f"/s/{slug}/debrief/")
    assert finish.status_code == 303
    assert finish["Location"] == f"https://app.prolific.com/submissions/complete?cc={code}"
    participant = Participant.objects.get()
    assert participant.status == Participant.Status.COMPLETED and participant.completed_at


def test_a_double_finish_goes_to_the_recruiter_again(live_study, enter, step_through):
    client, _ = enter(live_study, pid=PID)
    step_through(client, live_study, times=STEPS)
    slug = live_study.study.slug
    first = client.post(f"/s/{slug}/debrief/")
    second = client.post(f"/s/{slug}/debrief/")  # the browser dropped the first redirect
    assert first.status_code == second.status_code == 303
    assert second["Location"] == f"/s/{slug}/done/"
    assert client.get(second["Location"])["Location"] == first["Location"]
    assert first["Location"].endswith(live_study.spec["recruitment"]["completion_code"])


def test_a_completer_who_returns_sees_already_completed_and_no_code(live_study, enter, step_through):
    client, _ = enter(live_study, pid=PID)
    step_through(client, live_study, times=STEPS)
    client.post(f"/s/{live_study.study.slug}/debrief/")
    code = live_study.spec["recruitment"]["completion_code"]
    returning, response = enter(live_study, pid=PID, client=Client())
    page = returning.get(response["Location"])
    assert b"already completed" in page.content
    assert code not in page.content.decode()
    again = returning.post(f"/s/{live_study.study.slug}/debrief/")
    assert again.status_code == 303 and code not in again["Location"]
    assert Participant.objects.count() == 1


def test_without_a_completion_url_the_code_is_shown_once(launch, enter, step_through):
    from conftest import static_only

    def no_url(data):
        static_only(data)
        data["recruitment"]["platform"] = "none"
        data["recruitment"]["completion_url"] = None

    version = launch(no_url)
    if version.spec["recruitment"].get("completion_url"):
        pytest.skip("the study file always fills a completion URL")
    client, _ = enter(version, pid=PID)
    step_through(client, version, times=STEPS)
    finish = client.post(f"/s/{version.study.slug}/debrief/", follow=True)
    code = version.spec["recruitment"]["completion_code"]
    assert code in finish.content.decode()
    later, response = enter(version, pid=PID, client=Client())
    assert code not in later.get(response["Location"]).content.decode()


def test_scores_are_stored_with_each_response(live_study, enter, step_through):
    client, _ = enter(live_study, pid=PID)
    step_through(client, live_study, times=1 + 5, policy="key")
    participant = Participant.objects.get()
    scored = participant.responses.filter(phase="pre_test")
    assert scored.count() == 5 and all(r.correct for r in scored)
    assert all(re.fullmatch(r"[0-9a-f]{64}", r.version_sha256) for r in scored)
