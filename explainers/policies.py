"""Arm policies: what the explainer is asked, given the arm, the material and the conversation.

The `chat` arm's prompt is built here, and so is everything the `tutor` and `agentic` arms share:
the learner-model snapshots, the state of play (what was taught, which check questions are left),
reading a participant's answer to a check question, the templated text of a move (the tutor's
language, and the agentic arm's fallback when a model writes nothing usable), and the predictions
and note written by rule at the end of the step.
"""
import re

from django.utils import timezone, translation
from django.utils.translation import gettext as _

from studies.protocol import Protocol
from studies.selectors import study_asset_get

from .learner import (
    MASTERED, SCHEMA_VERSION, guess_rate, learner_model_initial, learner_model_validate, predict_correct,
)
from .models import Conversation, LearnerModelSnapshot, PostTestPrediction, Turn
from .providers import estimate_tokens

REPLY_RESERVE_TOKENS = 1024
TAUGHT_ACTS = ("explain", "example", "analogy", "correction")  # acts after which the learner may have learned


def arm_material(*, conversation: Conversation) -> str:
    """Return the arm's Markdown material in the conversation's language ('' when it has none)."""
    protocol = Protocol(conversation.version.spec)
    arm = protocol.arms[conversation.arm]
    if not arm.get("material"):
        return ""
    asset = study_asset_get(version_id=conversation.version_id, path=protocol.text(arm["material"], conversation.language))
    return bytes(asset.content).decode("utf-8") if asset else ""


def conversation_history(*, conversation: Conversation, upto: Turn) -> list[dict]:
    """The conversation up to `upto` as chat messages: failed messages (other than `upto`) and explainer
    turns still being written are left out."""
    history = []
    for turn in conversation.turns.filter(pk__lte=upto.pk).order_by("id"):
        if turn.author == Turn.Author.PARTICIPANT and turn.status == Turn.Status.FAILED and turn.pk != upto.pk:
            continue
        if turn.author == Turn.Author.EXPLAINER and turn.status != Turn.Status.COMPLETE:
            continue
        role = "user" if turn.author == Turn.Author.PARTICIPANT else "assistant"
        history.append({"role": role, "content": turn.text})
    return history


def fit_to_budget(system_messages: list[dict], history: list[dict], llm: dict, extra: list[dict] = ()) -> list[dict]:
    """Leave out the oldest turns until the prompt fits the arm's context budget; never the system prompt."""
    budget = llm["context_tokens"] - int(llm["params"].get("max_tokens") or REPLY_RESERVE_TOKENS)
    history = list(history)
    while len(history) > 1 and estimate_tokens(system_messages + history + list(extra)) > budget:
        history.pop(0)
    return system_messages + history


def chat_messages(*, conversation: Conversation, upto: Turn) -> list[dict]:
    """Build the `chat` arm's prompt: system prompt and material, then the conversation up to `upto`.

    The oldest turns are left out to keep within the arm's context budget; the system prompt never is.
    No participant identifier is in any message.
    """
    protocol = Protocol(conversation.version.spec)
    arm = protocol.arms[conversation.arm]
    system = protocol.text(arm.get("system_prompt"), conversation.language)
    material = arm_material(conversation=conversation)
    if material:
        system = f"{system}\n\n---\n\n{material}" if system else material
    system_messages = [{"role": "system", "content": system}] if system else []
    return fit_to_budget(system_messages, conversation_history(conversation=conversation, upto=upto), arm["llm"])


# --------------------------------------------------------------------------- the learner-model policy


def learner_model_from_pretest(protocol: Protocol, pretest: list[tuple[str, float]]) -> dict:
    """The model before the conversation, from the participant's (item id, score) pre-test answers."""
    concepts = [c["id"] for c in protocol.spec["concepts"]]
    evidence = [(protocol.items[i].get("concept"), score, guess_rate(protocol.items[i])) for i, score in pretest]
    return learner_model_initial(concepts=concepts, pretest=evidence)


def latest_snapshot(conversation: Conversation) -> LearnerModelSnapshot | None:
    return conversation.snapshots.order_by("-index").first()


def snapshot_store(conversation: Conversation, state: dict, *, turn: Turn | None, source: str) -> LearnerModelSnapshot:
    """Store a new snapshot (never overwrite one). Call inside the transaction that saves the turn."""
    learner_model_validate(state)
    latest = latest_snapshot(conversation)
    return LearnerModelSnapshot.objects.create(
        conversation=conversation, index=0 if latest is None else latest.index + 1, turn=turn,
        source=source, schema_version=SCHEMA_VERSION, state=state,
    )


def state_of_play(conversation: Conversation) -> tuple[set[str], set[str], set[str]]:
    """Return (concepts with a check question left, concepts taught, practice items asked)."""
    protocol = Protocol(conversation.version.spec)
    asked = set(conversation.turns.exclude(check_item="").values_list("check_item", flat=True))
    left = {protocol.items[i]["concept"] for i in protocol.spec["instruments"].get("practice", []) if i not in asked}
    explained = set(conversation.turns.filter(act__in=TAUGHT_ACTS).values_list("concept", flat=True))
    return left, explained, asked


def previous_explainer_turn(conversation: Conversation, before: Turn) -> Turn | None:
    """The explainer's last written turn before `before`: the one a participant's message answers."""
    return (conversation.turns.filter(author=Turn.Author.EXPLAINER, status=Turn.Status.COMPLETE, pk__lt=before.pk)
            .order_by("-id").first())


def check_item_next(protocol: Protocol, concept: str, asked: set[str]) -> str:
    """The first practice item on `concept` not asked yet."""
    return next(i for i in protocol.spec["instruments"]["practice"]
                if protocol.items[i]["concept"] == concept and i not in asked)


def _text(protocol: Protocol, value, lang: str) -> str:
    return protocol.text(value, lang) if value else ""


def option_chosen(text: str, item: dict, protocol: Protocol, lang: str) -> str | None:
    """The option a participant's message picks (by id or by its text), or None."""
    answer = re.sub(r"[\s).。:：]+$", "", text.strip()).strip().casefold()
    for option in item["options"]:
        if answer in (option["id"].casefold(), _text(protocol, option["text"], lang).casefold()):
            return option["id"]
    return None


def check_question_text(protocol: Protocol, item_id: str, lang: str) -> str:
    """The question and its options, as the participant reads them. Call with the language active."""
    item = protocol.items[item_id]
    options = "\n".join(f"- **{o['id']}**: {_text(protocol, o['text'], lang)}" for o in item["options"])
    return f"{_text(protocol, item['prompt'], lang)}\n\n{options}\n\n" + _("Answer with the letter of your choice.")


def move_text(conversation: Conversation, move: dict, check_item: str = "") -> str:
    """The templated Markdown of a move, in the conversation's language. Call with that language active."""
    protocol = Protocol(conversation.version.spec)
    lang = conversation.language
    concepts = {c["id"]: c for c in protocol.spec["concepts"]}
    act, concept_id = move["act"], move["concept"]
    if act == "summary":
        lines = [f"- **{_text(protocol, c['label'], lang)}**: {_text(protocol, c['description'], lang)}"
                 for c in protocol.spec["concepts"]]
        return _("That covers the model. In short:") + "\n\n" + "\n".join(lines) + "\n\n" + _(
            "You can continue when you are ready.")
    concept = concepts[concept_id]
    label, description = _text(protocol, concept["label"], lang), _text(protocol, concept["description"], lang)
    go_on = "\n\n" + _("Send any message (for example “ok”) when you are ready to go on.")
    if act == "explain":
        return _("Let us look at **%(label)s**. %(description)s") % {"label": label, "description": description} + go_on
    if act in ("example", "analogy"):
        return _("One more way to see **%(label)s**: %(description)s") % {"label": label, "description": description} + go_on
    if act == "correction":
        return _("Not quite. Remember **%(label)s**: %(description)s") % {"label": label, "description": description} + go_on
    return _("A quick check on **%(label)s**.") % {"label": label} + "\n\n" + check_question_text(protocol, check_item, lang)


def conversation_end_complete(conversation: Conversation) -> None:
    """The explainer summarised: nothing is left to teach. Call inside the transaction that saves the summary."""
    conversation.ended_at = timezone.now()
    conversation.end_reason = Conversation.EndReason.COMPLETE
    conversation.save(update_fields=["ended_at", "end_reason"])


def predicted_answer(item: dict, keys: dict, p_correct: float):
    """The answer the model expects: the key when it thinks the participant is more likely right than not."""
    key = keys.get(item["id"]) if item.get("key") == "from_target" else item.get("key")
    return key if p_correct >= 0.5 else None


def predictions_by_rules(conversation: Conversation, post_items: list[dict], state: dict) -> None:
    """Predict each post-test answer from the learner model: P(right) = mastery × (1 − slip) + (1 − mastery) × guess."""
    keys = conversation.version.target_keys
    for item in post_items:
        p = predict_correct(state, item.get("concept"), guess=guess_rate(item))
        PostTestPrediction.objects.get_or_create(
            conversation=conversation, item_id=item["id"],
            defaults={"p_correct": p, "predicted_answer": predicted_answer(item, keys, p), "source": "rules"},
        )


def meeting_note_by_template(conversation: Conversation, state: dict | None) -> str:
    """A short note of what was covered, from the check answers and (when there is one) the learner model."""
    protocol = Protocol(conversation.version.spec)
    lang = conversation.language
    labels = {c["id"]: _text(protocol, c["label"], lang) for c in protocol.spec["concepts"]}
    concepts = state["concepts"] if state else {}
    grasped = [labels[c] for c, v in concepts.items() if v["mastery"] >= MASTERED]
    review = [labels[c] for c, v in concepts.items() if v["mastery"] < MASTERED]
    checks = conversation.turns.filter(check_correct__isnull=False)
    with translation.override(lang):
        note = _("We went through %(n)s check questions; you answered %(right)s correctly.") % {
            "n": checks.count(), "right": checks.filter(check_correct=True).count()}
        if grasped:
            note += " " + _("Seemed clear: %(list)s.") % {"list": ", ".join(grasped)}
        if review:
            note += " " + _("Worth another look: %(list)s.") % {"list": ", ".join(review)}
    return note
