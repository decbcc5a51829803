"""What the explainer leaves at the end of the step, by rule: its predictions of the post-test answers and a
short meeting note. Pure; explainers.services stores them (and the agentic arm's model may replace them)."""
from django.utils import translation
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from studies.protocol import Protocol

from .model import MASTERED, guess_rate, predict_correct


def predicted_answer(item: dict, keys: dict, p_correct: float):
    """The answer the model expects: the key when it thinks the participant is more likely right than not."""
    key = keys.get(item["id"]) if item.get("key") == "from_target" else item.get("key")
    return key if p_correct >= 0.5 else None


def predictions_by_rules(post_items: list[dict], state: dict, keys: dict) -> list[dict]:
    """Each post-test answer predicted from the learner model: P(right) = mastery × (1 − slip) + (1 − mastery) ×
    guess. Returns [{item_id, p_correct, predicted_answer, source}]."""
    out = []
    for item in post_items:
        p = predict_correct(state, item.get("concept"), guess=guess_rate(item))
        out.append({"item_id": item["id"], "p_correct": p, "predicted_answer": predicted_answer(item, keys, p),
                    "source": "rules"})
    return out


def meeting_note_by_template(protocol: Protocol, lang: str, state: dict | None, *, checks: int, right: int) -> str:
    """A short note of what was covered, from the check answers (`checks` asked, `right` of them answered
    correctly) and, when there is one, the learner model."""
    labels = {c["id"]: protocol.text(c["label"], lang) if c["label"] else "" for c in protocol.spec["concepts"]}
    concepts = state["concepts"] if state else {}
    grasped = [labels[c] for c, v in concepts.items() if v["mastery"] >= MASTERED]
    review = [labels[c] for c, v in concepts.items() if v["mastery"] < MASTERED]
    with translation.override(lang):
        if not checks:
            note = _("We did not get to any check questions.")
        elif right == checks:
            note = ngettext("We went through %(n)s check question, and you answered it correctly.",
                            "We went through %(n)s check questions, and you answered all of them correctly.",
                            checks) % {"n": checks}
        elif right == 0:
            note = ngettext("We went through %(n)s check question; it is worth another look.",
                            "We went through %(n)s check questions; none was answered correctly yet.",
                            checks) % {"n": checks}
        else:
            note = _("We went through %(n)s check questions; you answered %(right)s correctly.") % {"n": checks, "right": right}
        if grasped:
            note += " " + _("Seemed clear: %(list)s.") % {"list": ", ".join(grasped)}
        if review:
            note += " " + _("Worth another look: %(list)s.") % {"list": ", ".join(review)}
    return note
