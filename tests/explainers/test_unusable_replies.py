"""A reply a small model botched (its prompt echoed back, a repetition) is never shown: asked once more, then
the move's template, and every call says why."""
import pytest

from agentic_support import agentic_arms, converse, wrapup
from explainers import services
from explainers.models import Conversation
from explainers.arms.agentic import OPENING_CUE, RETRY_TEMPERATURE
from explainers.models import LLMCall, Turn
from explainers.streaming import _backlog, _sync_client

pytestmark = pytest.mark.django_db

ECHO = 'Sure.\n\n<learner_model>\n{"concepts": {"debt": {"mastery": 0.1}}}\n</learner_model>'


@pytest.fixture
def study(launch, fake_llm, in_process):
    return launch(lambda d: agentic_arms(d, arms={"full": {}}))


def _streamed(turn_id: int) -> str:
    import json

    events = [json.loads(e) for e in _sync_client().lrange(_backlog(turn_id), 0, -1)]
    return "".join(e.get("text", "") for e in events if e["kind"] == "delta")


def test_an_echo_of_the_prompt_is_asked_again_and_the_participant_never_sees_it(study, fake_llm):
    fake_llm.match("A note for your reply", {"reply": ECHO}, times=1)  # the opening's first attempt
    conversation = converse(study, "full", [])
    opening = conversation.turns.get(author=Turn.Author.EXPLAINER)
    first, second = LLMCall.objects.filter(turn=opening, purpose="reply").order_by("attempt")
    assert first.response["unusable"] == "the reply echoed the prompt's instructions"
    assert first.fallback_reason == "the reply echoed the prompt's instructions: asked once more"
    assert "could not be used" in second.request["messages"][-1]["content"]  # told why
    assert second.request["params"]["temperature"] == 0.9 > first.request["params"].get("temperature", 0)
    assert not second.fallback_reason and opening.text == second.response["text"] and "<learner_model" not in opening.text
    assert "<learner_model" not in _streamed(opening.id) and "Sure." in _streamed(opening.id)


def test_a_second_botched_reply_gives_the_moves_template_and_says_so(study, fake_llm):
    fake_llm.match(OPENING_CUE, {"reply": OPENING_CUE}, times=2)  # the greeting repeated back, twice
    conversation = converse(study, "full", [])
    opening = conversation.turns.get(author=Turn.Author.EXPLAINER)
    calls = list(LLMCall.objects.filter(turn=opening, purpose="reply").order_by("attempt"))
    assert [c.fallback_reason for c in calls] == [
        "the reply repeated the participant's message: asked once more",
        "the reply repeated the participant's message again: the move's templated text was sent instead",
    ]
    assert opening.status == Turn.Status.COMPLETE and opening.text != OPENING_CUE and opening.act == "explain"


def test_a_botched_meeting_note_is_asked_for_once_more_and_then_kept(study, fake_llm):
    conversation = converse(study, "full", ["ok"])
    fake_llm.match("Write the note now", {"reply": ECHO}, times=1)
    services.conversation_finish(conversation=conversation, post_items=[])
    wrapup(conversation)
    first, second = LLMCall.objects.filter(turn__conversation=conversation, purpose="meeting_note").order_by("attempt")
    assert first.fallback_reason.startswith("the reply echoed the prompt's instructions: the templated note stays")
    assert "could not be used" in second.request["messages"][-1]["content"] and not second.fallback_reason
    assert second.request["params"]["temperature"] >= RETRY_TEMPERATURE > first.request["params"].get("temperature", 0)
    note = Conversation.objects.get(pk=conversation.pk).meeting_note
    assert note == second.response["text"] and "<learner_model" not in note
