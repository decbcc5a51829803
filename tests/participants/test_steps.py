"""The server owns the sequence of steps: reload, back, stale posts and double submits."""
import json
from datetime import timedelta

import pytest

from participants.models import PageVisit, Participant, Response, Step
from participants.selectors import participant_current_item

pytestmark = pytest.mark.django_db

PID = "aaaaaaaaaaaaaaaaaaaaaaaa"


def _current_item_id(participant):
    return participant_current_item(participant=Participant.objects.get(pk=participant.pk)).item["id"]


def test_a_get_of_another_step_lands_on_the_current_one(live_study, enter):
    client, _ = enter(live_study, pid=PID)
    for page in ("pre-test", "explanation", "post-test", "questionnaire", "debrief", "done"):
        response = client.get(f"/s/{live_study.study.slug}/{page}/")
        assert response.status_code == 302 and response["Location"].endswith("/consent/")


def test_a_post_for_another_step_is_refused_and_stores_nothing(live_study, enter, step_through):
    client, _ = enter(live_study, pid=PID)
    step_through(client, live_study)  # consent
    slug = live_study.study.slug
    for page in ("explanation", "post-test", "debrief", "consent"):
        response = client.post(f"/s/{slug}/{page}/", {"item": "post_a1", "answer": "a", "choice": "decline"})
        assert response.status_code == 303 and response["Location"].endswith("/pre-test/")
    participant = Participant.objects.get()
    assert participant.step == Step.PRE_TEST and participant.status == Participant.Status.ACTIVE
    assert Response.objects.count() == 0


def test_reload_shows_the_same_item_and_saved_answers_stay(live_study, enter, step_through):
    client, _ = enter(live_study, pid=PID)
    step_through(client, live_study, times=3)
    participant = Participant.objects.get()
    item_id = _current_item_id(participant)
    for _ in range(2):  # reload, and Back (the browser asks for the page again)
        page = client.get(f"/s/{live_study.study.slug}/pre-test/").content.decode()
        assert f'data-item="{item_id}"' in page
    assert Response.objects.count() == 2
    assert PageVisit.objects.get(page=f"pre_test:{item_id}").shown_count == 2


def test_a_double_submit_stores_one_answer(live_study, enter, step_through):
    client, _ = enter(live_study, pid=PID)
    step_through(client, live_study)
    participant = Participant.objects.get()
    item_id = _current_item_id(participant)
    item = next(i for i in live_study.spec["items"] if i["id"] == item_id)
    answer = {"item": item_id, "answer": (item.get("options") or [{"id": "1"}])[0]["id"], "confidence": "50"}
    client.get(f"/s/{live_study.study.slug}/pre-test/")
    first = client.post(f"/s/{live_study.study.slug}/pre-test/", answer)
    second = client.post(f"/s/{live_study.study.slug}/pre-test/", answer)
    assert first.status_code == second.status_code == 303
    assert Response.objects.filter(item_id=item_id).count() == 1
    assert Response.objects.count() == 1


def test_an_answer_that_does_not_fit_is_refused_with_a_message_and_nothing_stored(live_study, enter, step_through):
    client, _ = enter(live_study, pid=PID)
    step_through(client, live_study)
    item_id = _current_item_id(Participant.objects.get())
    response = client.post(f"/s/{live_study.study.slug}/pre-test/", {"item": item_id, "answer": "no-such-option"})
    assert response.status_code == 400
    assert b'role="alert"' in response.content
    assert Response.objects.count() == 0


def test_each_page_records_server_time_and_the_client_events(live_study, enter, step_through):
    client, _ = enter(live_study, pid=PID)
    step_through(client, live_study)
    item_id = _current_item_id(Participant.objects.get())
    item = next(i for i in live_study.spec["items"] if i["id"] == item_id)
    client.get(f"/s/{live_study.study.slug}/pre-test/")
    events = {"visibility_changes": 2, "hidden_ms": 1500, "paste_count": 1, "first_input_ms": 800,
              "evil": "<script>", "blur_count": -3}
    client.post(f"/s/{live_study.study.slug}/pre-test/", {
        "item": item_id, "answer": (item.get("options") or [{"id": "1"}])[0]["id"], "confidence": "60",
        "client_events": json.dumps(events),
    })
    visit = PageVisit.objects.get(page=f"pre_test:{item_id}")
    assert visit.server_ms is not None and visit.submitted_at is not None
    assert visit.client == {"visibility_changes": 2, "hidden_ms": 1500, "paste_count": 1, "first_input_ms": 800}
    response = Response.objects.get()
    assert response.time_ms == visit.server_ms
    assert response.version_sha256 == live_study.sha256


def test_the_explanation_holds_the_participant_for_the_minimum_time(launch, enter, step_through):
    from conftest import static_only

    def slow(data):
        static_only(data)
        data["arms"][0]["limits"]["min_seconds"] = 120

    version = launch(slow)
    client, _ = enter(version, pid=PID)
    step_through(client, version, times=1 + 5)  # consent and the pre-test
    assert Participant.objects.get().step == Step.EXPLANATION
    unseen = client.post(f"/s/{version.study.slug}/explanation/")  # without ever loading the page
    assert unseen.status_code == 400 and Participant.objects.get().step == Step.EXPLANATION
    page = client.get(f"/s/{version.study.slug}/explanation/").content.decode()
    assert 'data-wait="120"' in page or 'data-wait="119"' in page
    response = client.post(f"/s/{version.study.slug}/explanation/")
    assert response.status_code == 400
    assert Participant.objects.get().step == Step.EXPLANATION
    visit = PageVisit.objects.get(page="explanation")
    PageVisit.objects.filter(pk=visit.pk).update(first_shown_at=visit.first_shown_at - timedelta(seconds=121))
    assert client.post(f"/s/{version.study.slug}/explanation/").status_code == 303
    assert Participant.objects.get().step == Step.POST_TEST


def test_pre_and_post_use_the_two_forms_in_the_participants_order(live_study, enter, step_through):
    client, _ = enter(live_study, pid=PID)
    step_through(client, live_study, times=1 + 5 + 1 + 5)
    participant = Participant.objects.get()
    assert participant.step == Step.QUESTIONNAIRE
    forms = dict(Response.objects.values_list("phase", "form").distinct())
    assert forms == {"pre_test": participant.form_order[0], "post_test": participant.form_order[1]}
    pre_ids = set(Response.objects.filter(phase="pre_test").values_list("item_id", flat=True))
    assert pre_ids == set(live_study.spec["instruments"]["pre_test"]["forms"][participant.form_order[0]])
