"""The `tutor` arm: the learner-model policy with no language model.

Rule-based updates (`learner.rule_update`), templated language from the study's concepts, and check
questions from the study's practice bank (disjoint from the tests). It runs in the request, offline:
the demo shows an adaptive explainer with no key and no network.
"""
import re

from django.db import transaction
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from studies.protocol import Protocol

from .learner import (
    MASTERED, SCHEMA_VERSION, guess_rate, learner_model_initial, learner_model_validate, next_move, predict_correct, rule_taught,
    rule_update,
)
from .models import Conversation, LearnerModelSnapshot, PostTestPrediction, Turn


def _protocol(conversation: Conversation) -> Protocol:
    return Protocol(conversation.version.spec)


def _latest(conversation: Conversation) -> LearnerModelSnapshot:
    return conversation.snapshots.order_by("-index").first()


def _snapshot(conversation: Conversation, state: dict, *, turn: Turn | None, source: str) -> LearnerModelSnapshot:
    learner_model_validate(state)
    latest = _latest(conversation)
    return LearnerModelSnapshot.objects.create(
        conversation=conversation, index=0 if latest is None else latest.index + 1, turn=turn,
        source=source, schema_version=SCHEMA_VERSION, state=state,
    )


def _state_of_play(conversation: Conversation) -> tuple[set[str], set[str], set[str]]:
    """Return (concepts with a check question left, concepts explained, practice items asked)."""
    protocol = _protocol(conversation)
    asked = set(conversation.turns.exclude(check_item="").values_list("check_item", flat=True))
    left = {protocol.items[i]["concept"] for i in protocol.spec["instruments"].get("practice", []) if i not in asked}
    explained = set(
        conversation.turns.filter(act__in=["explain", "example", "correction"]).values_list("concept", flat=True)
    )
    return left, explained, asked


def _text(protocol: Protocol, value, lang: str) -> str:
    return protocol.text(value, lang) if value else ""


def _move_text(conversation: Conversation, move: dict, asked: set[str]) -> tuple[str, str]:
    """Return (Markdown text, practice item id or '') for a move, in the conversation's language."""
    protocol = _protocol(conversation)
    lang = conversation.language
    concepts = {c["id"]: c for c in protocol.spec["concepts"]}
    act, concept_id = move["act"], move["concept"]
    if act == "summary":
        lines = [f"- **{_text(protocol, c['label'], lang)}**: {_text(protocol, c['description'], lang)}"
                 for c in protocol.spec["concepts"]]
        return _("That covers the model. In short:") + "\n\n" + "\n".join(lines) + "\n\n" + _(
            "You can continue when you are ready."), ""
    concept = concepts[concept_id]
    label, description = _text(protocol, concept["label"], lang), _text(protocol, concept["description"], lang)
    go_on = "\n\n" + _("Send any message (for example “ok”) when you are ready to go on.")
    if act == "explain":
        text = _("Let us look at **%(label)s**. %(description)s") % {"label": label, "description": description}
        return text + go_on, ""
    if act == "example":
        text = _("One more way to see **%(label)s**: %(description)s") % {"label": label, "description": description}
        return text + go_on, ""
    if act == "correction":
        text = _("Not quite. Remember **%(label)s**: %(description)s") % {"label": label, "description": description}
        return text + go_on, ""
    item_id = next(i for i in protocol.spec["instruments"]["practice"]
                   if protocol.items[i]["concept"] == concept_id and i not in asked)
    item = protocol.items[item_id]
    options = "\n".join(f"- **{o['id']}**: {_text(protocol, o['text'], lang)}" for o in item["options"])
    question = _text(protocol, item["prompt"], lang)
    return (_("A quick check on **%(label)s**.") % {"label": label} + f"\n\n{question}\n\n{options}\n\n"
            + _("Answer with the letter of your choice.")), item_id


def _say(conversation: Conversation, move: dict, *, reply_to: Turn | None, prefix: str = "") -> Turn:
    _left, _explained, asked = _state_of_play(conversation)
    with translation.override(conversation.language):
        text, item_id = _move_text(conversation, move, asked)
    now = timezone.now()
    turn = Turn.objects.create(
        conversation=conversation, author=Turn.Author.EXPLAINER, text=(prefix + text).strip(), reply_to=reply_to,
        status=Turn.Status.COMPLETE, act=move["act"], concept=move["concept"] or "", check_item=item_id,
        first_token_at=now, completed_at=now,
    )
    if move["act"] == "summary":
        conversation.ended_at = now
        conversation.end_reason = Conversation.EndReason.COMPLETE
        conversation.save(update_fields=["ended_at", "end_reason"])
    return turn


def tutor_open(*, conversation: Conversation, pretest: list[tuple[str, float]]) -> Turn:
    """Initialise the learner model from the pre-test and speak first. Call inside a transaction."""
    protocol = _protocol(conversation)
    concepts = [c["id"] for c in protocol.spec["concepts"]]
    evidence = [(protocol.items[i].get("concept"), score, guess_rate(protocol.items[i])) for i, score in pretest]
    state = learner_model_initial(concepts=concepts, pretest=evidence)
    _snapshot(conversation, state, turn=None, source=LearnerModelSnapshot.Source.PRETEST)
    with translation.override(conversation.language):
        greeting = _("Hello! I am a scripted tutor (no language model). I will take you through the model step by step.")
    return _say(conversation, state["next_goal"], reply_to=None, prefix=greeting + "\n\n")


def _option_chosen(text: str, item: dict, protocol: Protocol, lang: str) -> str | None:
    answer = re.sub(r"[\s).。:：]+$", "", text.strip()).strip().casefold()
    for option in item["options"]:
        if answer in (option["id"].casefold(), _text(protocol, option["text"], lang).casefold()):
            return option["id"]
    return None


@transaction.atomic
def tutor_reply(*, conversation: Conversation, turn: Turn) -> Turn:
    """Answer a participant's turn at once: update the learner model by rule, then make the next move."""
    protocol = _protocol(conversation)
    concepts = [c["id"] for c in protocol.spec["concepts"]]
    state = _latest(conversation).state
    question = conversation.turns.filter(author=Turn.Author.EXPLAINER, pk__lt=turn.pk).order_by("-id").first()
    last_check, prefix = None, ""
    if question is not None and question.act in ("explain", "example", "correction") and question.concept:
        state = rule_taught(state, concept=question.concept, act=question.act)
    with translation.override(conversation.language):
        if question is not None and question.check_item:
            item = protocol.items[question.check_item]
            chosen = _option_chosen(turn.text, item, protocol, conversation.language)
            if chosen is None:
                state = {**state, "why": "the answer to the check was not one of its options"}
                _snapshot(conversation, state, turn=turn, source=LearnerModelSnapshot.Source.RULES)
                repeat = {"concept": question.concept, "act": "check"}
                reply = Turn.objects.create(
                    conversation=conversation, author=Turn.Author.EXPLAINER, reply_to=turn,
                    status=Turn.Status.COMPLETE, act="check", concept=question.concept, check_item=question.check_item,
                    text=_("Please answer with one of the letters.") + "\n\n" + question.text.split("\n\n", 1)[-1],
                    first_token_at=timezone.now(), completed_at=timezone.now(),
                )
                return _answered(turn, reply, repeat)
            correct = chosen == item["key"]
            turn.answers_check, turn.check_correct = question, correct
            turn.save(update_fields=["answers_check", "check_correct"])
            state = rule_update(state, concept=question.concept, correct=correct, label=f"check {question.check_item}",
                                guess=guess_rate(item))
            last_check = (question.concept, correct)
            prefix = _("Right!") + " " if correct else ""
        else:
            state = {**state, "why": "a message that answers no check; the tutor moves on"}
            if "?" in turn.text or "？" in turn.text:
                prefix = _("I am a scripted tutor and cannot answer free questions, but here is what comes next.") + "\n\n"
    left, explained, _asked = _state_of_play(conversation)
    move = next_move(state, concept_order=concepts, checks_left=left, explained=explained, last_check=last_check)
    state = {**state, "next_goal": move}
    _snapshot(conversation, state, turn=turn, source=LearnerModelSnapshot.Source.RULES)
    return _answered(turn, _say(conversation, move, reply_to=turn, prefix=prefix), move)


def _answered(turn: Turn, reply: Turn, move: dict) -> Turn:
    turn.status = Turn.Status.ANSWERED
    turn.save(update_fields=["status"])
    return reply


def tutor_finish(*, conversation: Conversation, post_items: list[dict]) -> None:
    """Before the post-test: predict the participant's answer to each post-test item, and write the note."""
    state = _latest(conversation).state
    protocol = _protocol(conversation)
    keys = conversation.version.target_keys
    for item in post_items:
        p = predict_correct(state, item.get("concept"), guess=guess_rate(item))
        key = keys.get(item["id"]) if item.get("key") == "from_target" else item.get("key")
        PostTestPrediction.objects.get_or_create(
            conversation=conversation, item_id=item["id"],
            defaults={"p_correct": p, "predicted_answer": key if p >= 0.5 else None, "source": "rules"},
        )
    lang = conversation.language
    labels = {c["id"]: _text(protocol, c["label"], lang) for c in protocol.spec["concepts"]}
    grasped = [labels[c] for c, v in state["concepts"].items() if v["mastery"] >= MASTERED]
    review = [labels[c] for c, v in state["concepts"].items() if v["mastery"] < MASTERED]
    checks = conversation.turns.filter(check_correct__isnull=False)
    with translation.override(lang):
        note = _("We went through %(n)s check questions; you answered %(right)s correctly.") % {
            "n": checks.count(), "right": checks.filter(check_correct=True).count()}
        if grasped:
            note += " " + _("Seemed clear: %(list)s.") % {"list": ", ".join(grasped)}
        if review:
            note += " " + _("Worth another look: %(list)s.") % {"list": ", ".join(review)}
    conversation.meeting_note = note
    conversation.save(update_fields=["meeting_note"])
