"""The templated Markdown of a move and of a check question, in the participant's language.

The tutor speaks only these; the agentic arm falls back on them when its model writes nothing usable, and
the demo's scripted model writes its moves from them. Call with the conversation's language active
(`translation.override`).
"""
from django.utils.translation import gettext as _


from studies.protocol import Protocol

from .play import option_letters



def gettext_noop(message: str) -> str:
    """Mark a message for translation (makemessages reads the name) without asking Django's settings: the demo's
    scripted model imports these templates in a process with no settings."""
    return message


# The templates, in English (the message ids of locale/); `move_text` translates them. The demo's scripted model
# (explainers.scripted) writes its moves from the same templates.
EXPLAIN = gettext_noop("Let us look at **%(label)s**. %(description)s")
ANOTHER_WAY = gettext_noop("One more way to see **%(label)s**: %(description)s")
CORRECTION = gettext_noop("Not quite. Remember **%(label)s**: %(description)s")
CHECK = gettext_noop("A quick check on **%(label)s**.")
SUMMARY = gettext_noop("That covers the model. In short:")
READY = gettext_noop("You can continue when you are ready.")
GO_ON = gettext_noop("Send any message (for example “ok”) when you are ready to go on.")
ANSWER_WITH_LETTER = gettext_noop("Answer with the letter of your choice.")
RIGHT = gettext_noop("Right!")
ONCE_MORE = gettext_noop("Good question. The idea behind it, once more: **%(label)s**: %(description)s")
NEXT_STEP = gettext_noop("Good question. The next step may answer it.")
ANSWER_AGAIN = gettext_noop("Please answer with one of the letters.")
TEMPLATES = {"explain": EXPLAIN, "example": ANOTHER_WAY, "analogy": ANOTHER_WAY, "correction": CORRECTION}


def _text(protocol: Protocol, value, lang: str) -> str:
    return protocol.text(value, lang) if value else ""


def case_rows(protocol: Protocol, item: dict, lang: str) -> list[tuple[str, object]]:
    """A `predict` item's input as (feature label, value) rows, as the item's page shows it."""
    labels = (protocol.spec.get("target") or {}).get("feature_labels") or {}
    return [(_text(protocol, labels.get(name), lang) or name, value) for name, value in (item.get("input") or {}).items()]


def check_question_text(protocol: Protocol, item_id: str, lang: str) -> str:
    """The question (with its case, for a `predict` item) and its lettered options, as the participant reads them."""
    item = protocol.items[item_id]
    parts = [_text(protocol, item["prompt"], lang)]
    rows = case_rows(protocol, item, lang)
    if rows:
        parts.append("\n".join(f"- {label}: **{value}**" for label, value in rows))
    parts.append("\n".join(f"- **{letter}**: {_text(protocol, o['text'], lang)}" for letter, o in option_letters(item)))
    parts.append(_(ANSWER_WITH_LETTER))
    return "\n\n".join(parts)


def concept_text(protocol: Protocol, concept_id: str, lang: str) -> tuple[str, str]:
    """(label, description) of a concept in `lang`."""
    concept = next(c for c in protocol.spec["concepts"] if c["id"] == concept_id)
    return _text(protocol, concept["label"], lang), _text(protocol, concept["description"], lang)


def summary_text(lines: list[str], translate=_) -> str:
    return translate(SUMMARY) + "\n\n" + "\n".join(lines) + "\n\n" + translate(READY)


def taught_text(act: str, label: str, description: str, translate=_, extra: str = "") -> str:
    """The text of a teaching move (explain, example, analogy, correction), `extra`, then the cue to go on.
    `translate` is gettext (the default) or, outside Django (the demo's scripted model), `str`."""
    return (translate(TEMPLATES[act]) % {"label": label, "description": description} + extra + "\n\n"
            + translate(GO_ON))


def move_text(protocol: Protocol, lang: str, move: dict, check_item: str = "") -> str:
    """The templated Markdown of a move."""
    act, concept_id = move["act"], move["concept"]
    if act == "summary":
        return summary_text([f"- **{_text(protocol, c['label'], lang)}**: {_text(protocol, c['description'], lang)}"
                             for c in protocol.spec["concepts"]])
    label, description = concept_text(protocol, concept_id, lang)
    if act in TEMPLATES:
        return taught_text(act, label, description)
    return _(CHECK) % {"label": label} + "\n\n" + check_question_text(protocol, check_item, lang)
