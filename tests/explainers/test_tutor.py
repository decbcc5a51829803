"""The tutor arm: offline, adaptive, with a learner-model snapshot per turn."""
import pytest

from explainers.learner import learner_model_validate
from explainers.models import Conversation, LearnerModelSnapshot, PostTestPrediction, Turn
from participants.chat_views import _final_event_text
from participants.models import Participant, Step

pytestmark = pytest.mark.django_db

PID = "7u7o7u7o7u7o7u7o7u7o7u7o"


def tutor_only(data) -> None:
    data["arms"] = [a for a in data["arms"] if a["kind"] == "tutor"]
    data["arms"][0]["limits"]["min_seconds"] = 0
    data["arms"][0]["limits"].pop("turns", None)
    data["allocation"]["block_size"] = 1


@pytest.fixture
def tutor_study(launch, settings):
    settings.SCRIPTED_LLM_URL = settings.LLM_BASE_URL = settings.LLM_API_KEY = ""  # no model anywhere: offline
    return launch(tutor_only)


def _chat(client, version, text):
    response = client.post(f"/s/{version.study.slug}/chat/send/", {"text": text})
    assert response.status_code == 202, response.content
    return response


def test_the_tutor_speaks_first_from_a_learner_model_initialised_by_the_pretest(tutor_study, enter, step_through):
    client, _ = enter(tutor_study, pid=PID)
    step_through(client, tutor_study, times=1 + 5, policy="accuracy:0")  # every pre-test answer wrong
    page = client.get(f"/s/{tutor_study.study.slug}/explanation/").content.decode()
    assert "scripted tutor" in page
    conversation = Conversation.objects.get()
    opening = conversation.turns.get()
    assert opening.author == Turn.Author.EXPLAINER and opening.reply_to is None and opening.act == "explain"
    snapshot = LearnerModelSnapshot.objects.get()
    assert snapshot.index == 0 and snapshot.source == "pretest" and snapshot.turn is None
    learner_model_validate(snapshot.state)
    scored = [c for c, v in snapshot.state["concepts"].items() if v["evidence"][0].startswith("pre-test: 0 of")]
    assert scored and all(snapshot.state["concepts"][c]["mastery"] < 0.3 for c in scored)


def test_the_tutor_checks_corrects_and_summarises_with_a_snapshot_per_turn(tutor_study, enter, step_through):
    client, _ = enter(tutor_study, pid=PID)
    step_through(client, tutor_study, times=1 + 5, policy="accuracy:0")
    client.get(f"/s/{tutor_study.study.slug}/explanation/")
    conversation = Conversation.objects.get()
    practice = tutor_study.spec["instruments"]["practice"]
    items = {i["id"]: i for i in tutor_study.spec["items"]}
    wrong_once = set()
    for _ in range(40):
        last = conversation.turns.filter(author=Turn.Author.EXPLAINER).order_by("-id").first()
        if last.act == "summary":
            break
        if last.check_item:
            item = items[last.check_item]
            wrong = next(o["id"] for o in item["options"] if o["id"] != item["key"])
            answer = item["key"] if last.check_item in wrong_once else wrong
            wrong_once.add(last.check_item)
            _chat(client, tutor_study, answer)
        else:
            _chat(client, tutor_study, "ok")
    turns = list(conversation.turns.order_by("id"))
    acts = [t.act for t in turns if t.author == Turn.Author.EXPLAINER]
    assert acts[-1] == "summary" and "check" in acts and "correction" in acts
    participant_turns = [t for t in turns if t.author == Turn.Author.PARTICIPANT]
    assert all(t.status == Turn.Status.ANSWERED and t.reply.pk for t in participant_turns)
    assert LearnerModelSnapshot.objects.filter(conversation=conversation).count() == 1 + len(participant_turns)
    answered = [t for t in participant_turns if t.check_correct is not None]
    assert {t.answers_check.check_item for t in answered} <= set(practice)
    assert not set(practice) & set(tutor_study.spec["instruments"]["post_test"]["forms"]["A"])
    conversation.refresh_from_db()
    assert conversation.end_reason == "complete"
    page = client.get(f"/s/{tutor_study.study.slug}/explanation/").content.decode()
    assert 'data-ended="1"' in page

    assert client.post(f"/s/{tutor_study.study.slug}/explanation/").status_code == 303
    participant = Participant.objects.get()
    assert participant.step == Step.POST_TEST
    post_ids = tutor_study.spec["instruments"]["post_test"]["forms"][participant.form_order[1]]
    predictions = PostTestPrediction.objects.filter(conversation=conversation)
    assert sorted(predictions.values_list("item_id", flat=True)) == sorted(post_ids)
    assert all(0 <= p.p_correct <= 1 for p in predictions)
    conversation.refresh_from_db()
    assert "check questions" in conversation.meeting_note


def test_the_tutor_runs_with_no_language_model_configured(tutor_study, enter, step_through, settings):
    assert not (settings.SCRIPTED_LLM_URL or settings.LLM_BASE_URL or settings.LLM_API_KEY)
    client, _ = enter(tutor_study, pid=PID)
    step_through(client, tutor_study, times=1 + 5)
    assert Participant.objects.get().arm == "tutor"
    _chat(client, tutor_study, "what matters most?")
    assert Turn.objects.filter(author=Turn.Author.EXPLAINER).count() == 2


def test_the_tutor_page_says_what_it_does_and_offers_buttons_for_its_answers(tutor_study, enter, step_through):
    client, _ = enter(tutor_study, pid=PID)
    step_through(client, tutor_study, times=1 + 5, policy="accuracy:0")
    page = client.get(f"/s/{tutor_study.study.slug}/explanation/").content.decode()
    assert "one idea at a time" in page and "Ask the assistant anything" not in page
    assert 'data-send="ok">Go on</button>' in page  # the opening explains: the button moves on
    conversation = Conversation.objects.get()
    for _ in range(10):  # go on until the tutor asks a check question
        last = conversation.turns.filter(author=Turn.Author.EXPLAINER).order_by("-id").first()
        if last.check_item:
            break
        _chat(client, tutor_study, "ok")
    item = next(i for i in tutor_study.spec["items"] if i["id"] == last.check_item)
    page = client.get(f"/s/{tutor_study.study.slug}/explanation/").content.decode()
    buttons = [f'data-send="{o["id"].upper() if len(o["id"]) == 1 else chr(65 + n)}"' for n, o in enumerate(item["options"])]
    assert all(b in page for b in buttons) and ">Go on</button>" not in page
    turn = Turn.objects.get(pk=_chat(client, tutor_study, "A").json()["turn"])
    done = _final_event_text(turn.pk)  # what the stream of an answered turn sends, at once
    assert "event: done" in done and '"choices": [{"send"' in done  # the next turn's buttons come with it


def test_a_free_question_to_the_tutor_gets_the_idea_again_never_a_refusal(tutor_study, enter, step_through):
    client, _ = enter(tutor_study, pid=PID)
    step_through(client, tutor_study, times=1 + 5, policy="accuracy:0")
    client.get(f"/s/{tutor_study.study.slug}/explanation/")
    opening = Conversation.objects.get().turns.get()
    assert opening.act == "explain" and opening.concept
    label = next(c["label"]["en"] for c in tutor_study.spec["concepts"] if c["id"] == opening.concept)
    reply = Turn.objects.get(reply_to_id=_chat(client, tutor_study, "Why does that matter?").json()["turn"])
    assert reply.text.startswith(f"Good question. The idea behind it, once more: **{label}**")
    assert "cannot answer" not in reply.text and "scripted tutor" not in reply.text
