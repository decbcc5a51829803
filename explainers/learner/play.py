"""The state of play of a conversation, and the grading of an answer to a check question.

Pure: the caller passes the conversation's turns (anything with `check_item`, `act` and `concept`).
"""
import re

from studies.protocol import Protocol

from .model import guess_rate, learner_model_initial

TAUGHT_ACTS = ("explain", "example", "analogy", "correction")  # acts after which the learner may have learned


def learner_model_from_pretest(protocol: Protocol, pretest: list[tuple[str, float]]) -> dict:
    """The model before the conversation, from the participant's (item id, score) pre-test answers."""
    concepts = [c["id"] for c in protocol.spec["concepts"]]
    evidence = [(protocol.items[i].get("concept"), score, guess_rate(protocol.items[i])) for i, score in pretest]
    return learner_model_initial(concepts=concepts, pretest=evidence)


def state_of_play(protocol: Protocol, turns) -> tuple[set[str], set[str], set[str]]:
    """Return (concepts with a check question left, concepts taught, practice items asked) of the turns so far."""
    turns = list(turns)
    asked = {t.check_item for t in turns if t.check_item}
    left = {protocol.items[i]["concept"] for i in protocol.spec["instruments"].get("practice", []) if i not in asked}
    explained = {t.concept for t in turns if t.act in TAUGHT_ACTS}
    return left, explained, asked


def check_item_next(protocol: Protocol, concept: str, asked: set[str]) -> str:
    """The first practice item on `concept` not asked yet."""
    return next(i for i in protocol.spec["instruments"]["practice"]
                if protocol.items[i]["concept"] == concept and i not in asked)


def option_letters(item: dict) -> list[tuple[str, dict]]:
    """(letter, option) pairs as the participant reads a check question: the option ids when they are
    single letters, else A, B, C … in order."""
    options = item["options"]
    if all(len(o["id"]) == 1 and o["id"].isalpha() for o in options):
        return [(o["id"].upper(), o) for o in options]
    return [(chr(ord("A") + i), o) for i, o in enumerate(options)]


def option_chosen(text: str, item: dict, protocol: Protocol, lang: str) -> str | None:
    """The option a participant's message picks (by its letter, its id or its text), or None."""
    answer = re.sub(r"[\s).。:：]+$", "", text.strip()).strip()
    answer = re.sub(r"^[(（]", "", answer).strip().casefold()
    for letter, option in option_letters(item):
        label = protocol.text(option["text"], lang) if option["text"] else ""
        if answer in (letter.casefold(), option["id"].casefold(), label.casefold()):
            return option["id"]
    return None


def check_graded(text: str, item: dict, protocol: Protocol, lang: str) -> tuple[str | None, bool | None]:
    """Grade a participant's message as the answer to the check question `item`: (the option it picks, whether
    that is the key), or (None, None) when it picks none of the options. The tutor and the agentic arm both
    grade with this."""
    chosen = option_chosen(text, item, protocol, lang)
    return chosen, (None if chosen is None else chosen == item["key"])
