"""The `tutor` arm: the learner-model policy with no language model.

Rule-based updates (`learner.rule_update`), templated language from the study's concepts, and check
questions from the study's practice bank (disjoint from the tests). It runs in the request, offline:
the demo shows an adaptive explainer with no key and no network.
"""
from django.db import transaction
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from studies.protocol import Protocol

from .learner import guess_rate, next_move, rule_step
from .models import Conversation, LearnerModelSnapshot, Turn
from .policies import (
    TAUGHT_ACTS, check_item_next, conversation_end_complete, latest_snapshot, learner_model_from_pretest,
    meeting_note_by_template, move_text, option_chosen, predictions_by_rules, snapshot_store, state_of_play,
)


def _protocol(conversation: Conversation) -> Protocol:
    return Protocol(conversation.version.spec)


def _say(conversation: Conversation, move: dict, *, reply_to: Turn | None, prefix: str = "") -> Turn:
    _left, _explained, asked = state_of_play(conversation)
    item_id = check_item_next(_protocol(conversation), move["concept"], asked) if move["act"] == "check" else ""
    with translation.override(conversation.language):
        text = move_text(conversation, move, item_id)
    now = timezone.now()
    turn = Turn.objects.create(
        conversation=conversation, author=Turn.Author.EXPLAINER, text=(prefix + text).strip(), reply_to=reply_to,
        status=Turn.Status.COMPLETE, act=move["act"], concept=move["concept"] or "", check_item=item_id,
        first_token_at=now, completed_at=now,
    )
    if move["act"] == "summary":
        conversation_end_complete(conversation)
    return turn


def tutor_open(*, conversation: Conversation, pretest: list[tuple[str, float]]) -> Turn:
    """Initialise the learner model from the pre-test and speak first. Call inside a transaction."""
    state = learner_model_from_pretest(_protocol(conversation), pretest)
    snapshot_store(conversation, state, turn=None, source=LearnerModelSnapshot.Source.PRETEST)
    with translation.override(conversation.language):
        greeting = _("Hello! I am a scripted tutor (no language model). I will take you through the model step by step.")
    return _say(conversation, state["next_goal"], reply_to=None, prefix=greeting + "\n\n")


@transaction.atomic
def tutor_reply(*, conversation: Conversation, turn: Turn) -> Turn:
    """Answer a participant's turn at once: update the learner model by rule, then make the next move."""
    protocol = _protocol(conversation)
    concepts = [c["id"] for c in protocol.spec["concepts"]]
    state = latest_snapshot(conversation).state
    question = conversation.turns.filter(author=Turn.Author.EXPLAINER, pk__lt=turn.pk).order_by("-id").first()
    last_check, prefix = None, ""
    if question is not None and question.act in TAUGHT_ACTS and question.concept:
        state = rule_step(state, taught=(question.concept, question.act), check=None)
    with translation.override(conversation.language):
        if question is not None and question.check_item:
            item = protocol.items[question.check_item]
            chosen = option_chosen(turn.text, item, protocol, conversation.language)
            if chosen is None:
                state = {**state, "why": "the answer to the check was not one of its options"}
                snapshot_store(conversation, state, turn=turn, source=LearnerModelSnapshot.Source.RULES)
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
            state = rule_step(state, taught=None, check=(question.concept, correct, f"check {question.check_item}",
                                                         guess_rate(item)))
            last_check = (question.concept, correct)
            prefix = _("Right!") + " " if correct else ""
        else:
            state = {**state, "why": "a message that answers no check; the tutor moves on"}
            if "?" in turn.text or "？" in turn.text:
                prefix = _("I am a scripted tutor and cannot answer free questions, but here is what comes next.") + "\n\n"
    left, explained, _asked = state_of_play(conversation)
    move = next_move(state, concept_order=concepts, checks_left=left, explained=explained, last_check=last_check)
    state = {**state, "next_goal": move}
    snapshot_store(conversation, state, turn=turn, source=LearnerModelSnapshot.Source.RULES)
    return _answered(turn, _say(conversation, move, reply_to=turn, prefix=prefix), move)


def _answered(turn: Turn, reply: Turn, move: dict) -> Turn:
    turn.status = Turn.Status.ANSWERED
    turn.save(update_fields=["status"])
    return reply


def tutor_finish(*, conversation: Conversation, post_items: list[dict]) -> None:
    """Before the post-test: predict the participant's answer to each post-test item, and write the note."""
    state = latest_snapshot(conversation).state
    predictions_by_rules(conversation, post_items, state)
    conversation.meeting_note = meeting_note_by_template(conversation, state)
    conversation.save(update_fields=["meeting_note"])
