"""Helpers for the agentic arm's tests: studies with agentic arms, and conversations run in-process.

In-process runs call `explainers.services.reply_generate` as the worker would, once per delivery, until
the turn is settled (an agentic turn takes several: the learner-model update, tool rounds, the reply).
"""
import json
import re

from django.db import transaction

from explainers import services
from explainers.models import Conversation, Turn

# The ablations of docs/agentic.md, as arms of one study (with the full arm and a yoked static arm).
ARMS = {
    "full": {},
    "passive": {"proactive": False},
    "no_model": {"learner_model": False},
    "mismatched": {"learner_model": "mismatched"},
    "frozen": {"learner_model": "frozen"},
}


def agentic_arms(data, arms=ARMS, yoked=False) -> None:
    """Replace the example's arms by agentic arms with these options (no minimum time, no turn limit)."""
    template = next(a for a in data["arms"] if a["kind"] == "agentic")
    static = next(a for a in data["arms"] if a["kind"] == "static")
    new = []
    for arm_id, options in arms.items():
        arm = json.loads(json.dumps(dict(template), default=dict))
        arm.update(id=arm_id, options={**options, "show_meeting_note": True})
        arm["limits"] = {"minutes": 15, "tokens": 500000, "min_seconds": 0}
        new.append(arm)
    if yoked:
        arm = json.loads(json.dumps(dict(static), default=dict))
        arm.update(id="yoked", options={"yoked_to": next(iter(arms))}, limits={"min_seconds": 0})
        new.append(arm)
    data["arms"] = new
    data["allocation"]["block_size"] = len(new)


def run(turn_id: int, limit: int = 12) -> str:
    """Deliver a turn's task until it settles; return the final state."""
    for _ in range(limit):
        outcome = services.reply_generate(turn_id=turn_id)
        if outcome.state != "continue":
            return outcome.state
    raise AssertionError(f"turn {turn_id} did not settle in {limit} deliveries")


def wrapup(conversation: Conversation) -> None:
    for _ in range(6):
        if services.conversation_wrapup(conversation_id=conversation.pk).state != "continue":
            return


def pretest(version, right: bool = False) -> list[tuple[str, float]]:
    """Every pre-test item of form A answered wrong (or right)."""
    return [(i, 1.0 if right else 0.0) for i in version.spec["instruments"]["pre_test"]["forms"]["A"]]


def converse(version, arm: str, messages, *, right: bool = False) -> Conversation:
    """Start a conversation in `arm` (its opening answered, if any) and send `messages`, each answered."""
    with transaction.atomic():
        conversation = services.conversation_start(version=version, arm_id=arm, language="en",
                                                   pretest=pretest(version, right))
    opening = conversation.turns.filter(author=Turn.Author.EXPLAINER, reply_to__isnull=True).first()
    if opening is not None:
        assert run(opening.id) == "answered"
    for text in messages:
        conversation.refresh_from_db()
        if conversation.ended_at:  # the explainer summarised: nothing more can be sent
            break
        if callable(text):
            text = text(conversation)
        with transaction.atomic():
            turn = services.turn_create(conversation=conversation, text=text)
        assert run(turn.id) == "answered", turn
    conversation.refresh_from_db()
    return conversation


def answer_last_check(right: bool):
    """A message that answers the explainer's last check question (right or wrong), or says 'ok'."""

    def message(conversation: Conversation) -> str:
        last = conversation.turns.filter(author=Turn.Author.EXPLAINER).order_by("-id").first()
        if not last.check_item:
            return "ok"
        item = next(i for i in conversation.version.spec["items"] if i["id"] == last.check_item)
        return item["key"] if right else next(o["id"] for o in item["options"] if o["id"] != item["key"])

    return message


_SECTION = re.compile(r"<(\w+)>\n(.*?)\n</\1>", re.S)


def sections(system: str) -> dict[str, str]:
    """A reply's system prompt by section: each <tag>...</tag>, and 'text' for everything outside them."""
    found = {name: body for name, body in _SECTION.findall(system)}
    found["text"] = _SECTION.sub("", system)
    return found


def reply_systems(conversation: Conversation) -> list[str]:
    """The system prompt of the reply of every turn of the conversation (its last round), in order."""
    return [c.request["messages"][0]["content"] for c in final_replies(conversation)]


def final_replies(conversation: Conversation) -> list:
    """Each turn's last reply call (after its tool rounds, if any), in order."""
    last = {}
    for call in conversation_calls(conversation, "reply"):
        last[call.turn_id] = call
    return sorted(last.values(), key=lambda c: c.id)


def conversation_calls(conversation: Conversation, purpose: str | None = None):
    from explainers.models import LLMCall

    calls = LLMCall.objects.filter(turn__conversation=conversation).order_by("id")
    return list(calls.filter(purpose=purpose) if purpose else calls)
