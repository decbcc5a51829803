"""The `tutor` arm: the learner-model policy with no language model.

Rule-based updates (explainers.learner: Bayesian knowledge tracing), templated language from the study's
concepts, and check questions from the study's practice bank (disjoint from the tests). It answers in the
request, offline: the demo shows an adaptive explainer with no key and no network.
"""
from django.utils import translation
from django.utils.translation import gettext as _

from studies.protocol import Protocol

from ..learner import guess_rate, next_move, rule_step
from ..learner.moves import ANSWER_AGAIN, NEXT_STEP, ONCE_MORE, RIGHT, concept_text, move_text
from ..learner.play import TAUGHT_ACTS, check_graded, check_item_next, learner_model_from_pretest, state_of_play
from ..learner.wrapup import meeting_note_by_template, predictions_by_rules
from ..models import LearnerModelSnapshot, Turn
from ..selectors import latest_snapshot
from .base import Arm, Finish, Opening, Reply

RULES, PRETEST = LearnerModelSnapshot.Source.RULES, LearnerModelSnapshot.Source.PRETEST


def say(protocol: Protocol, conversation, move: dict, *, prefix: str = "", **recorded) -> Reply:
    """The templated move as a reply; a check asks the next practice item of its concept."""
    _left, _explained, asked = state_of_play(protocol, conversation.turns.all())
    item_id = check_item_next(protocol, move["concept"], asked) if move["act"] == "check" else ""
    with translation.override(conversation.language):
        text = move_text(protocol, conversation.language, move, item_id)
    return Reply(text=(prefix + text).strip(), act=move["act"], concept=move["concept"] or "", check_item=item_id,
                 completes=move["act"] == "summary", **recorded)


def checks_so_far(conversation) -> tuple[int, int]:
    """(check questions answered, answered right) in the conversation."""
    checks = conversation.turns.filter(check_correct__isnull=False)
    return checks.count(), checks.filter(check_correct=True).count()


class TutorArm(Arm):
    kind = "tutor"
    converses = True

    def open(self, *, conversation, arm: dict, pretest) -> Opening:
        protocol = Protocol(conversation.version.spec)
        state = learner_model_from_pretest(protocol, pretest)
        with translation.override(conversation.language):
            greeting = _("Hello! I am a scripted tutor (no language model). I will take you through the model step by step.")
        return Opening(snapshot=(state, PRETEST), reply=say(protocol, conversation, state["next_goal"], prefix=greeting + "\n\n"))

    def answer(self, *, conversation, arm: dict, turn) -> Reply:
        """Update the learner model by rule from the participant's message, then make the next move."""
        protocol = Protocol(conversation.version.spec)
        lang = conversation.language
        concepts = [c["id"] for c in protocol.spec["concepts"]]
        state = latest_snapshot(conversation).state
        question = conversation.turns.filter(author=Turn.Author.EXPLAINER, pk__lt=turn.pk).order_by("-id").first()
        last_check, prefix, graded = None, "", None
        if question is not None and question.act in TAUGHT_ACTS and question.concept:
            state = rule_step(state, taught=(question.concept, question.act), check=None)
        with translation.override(lang):
            if question is not None and question.check_item:
                item = protocol.items[question.check_item]
                chosen, correct = check_graded(turn.text, item, protocol, lang)
                if chosen is None:
                    state = {**state, "why": "the answer to the check was not one of its options"}
                    return Reply(text=_(ANSWER_AGAIN) + "\n\n" + question.text.split("\n\n", 1)[-1],
                                 act="check", concept=question.concept, check_item=question.check_item,
                                 snapshot=(state, RULES))
                graded = (question.pk, correct)
                state = rule_step(state, taught=None, check=(question.concept, correct, f"check {question.check_item}",
                                                             guess_rate(item)))
                last_check = (question.concept, correct)
                prefix = _(RIGHT) + " " if correct else ""
            else:
                state = {**state, "why": "a message that answers no check; the tutor moves on"}
                if "?" in turn.text or "？" in turn.text:  # a question: the idea it is about once more, then on
                    if question is not None and question.concept:
                        label, description = concept_text(protocol, question.concept, lang)
                        prefix = _(ONCE_MORE) % {"label": label, "description": description} + "\n\n"
                    else:
                        prefix = _(NEXT_STEP) + "\n\n"
        left, explained, _asked = state_of_play(protocol, conversation.turns.all())
        move = next_move(state, concept_order=concepts, checks_left=left, explained=explained, last_check=last_check)
        return say(protocol, conversation, move, prefix=prefix, graded=graded, snapshot=({**state, "next_goal": move}, RULES))

    def finish(self, *, conversation, arm: dict, post_items: list[dict]) -> Finish:
        """Predict the participant's answer to each post-test item, and write the note."""
        protocol = Protocol(conversation.version.spec)
        state = latest_snapshot(conversation).state
        checks, right = checks_so_far(conversation)
        return Finish(predictions=predictions_by_rules(post_items, state, conversation.version.target_keys),
                      note=meeting_note_by_template(protocol, conversation.language, state, checks=checks, right=right))
