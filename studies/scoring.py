"""Parse and score answers to items. Pure functions over the normalised item dicts."""
import math
from dataclasses import dataclass

from .protocol import Protocol


class AnswerInvalid(ValueError):
    """The submitted answer does not fit the item; the message is shown to the participant."""


@dataclass(frozen=True)
class Scored:
    value: object
    score: float | None
    correct: bool | None
    confidence: int | None


OBJECTIVE_KINDS = {"single_choice", "multi_choice", "numeric", "predict"}


def _number(raw: str) -> float:
    try:
        value = float(str(raw).strip().replace(",", "."))
    except ValueError:
        raise AnswerInvalid("number") from None
    if not math.isfinite(value):
        raise AnswerInvalid("number")
    return value


def answer_parse(item: dict, values: list[str], confidence: str | None = None) -> tuple[object, int | None]:
    """Turn submitted form values into the stored answer and confidence, or raise AnswerInvalid."""
    kind = item["kind"]
    values = [v for v in values if v.strip() != ""]
    if not values and not item.get("required", True):
        return None, None
    option_ids = [o["id"] for o in item.get("options") or []]
    if kind == "multi_choice":
        if not values or any(v not in option_ids for v in values):
            raise AnswerInvalid("choose")
        value: object = sorted(set(values), key=option_ids.index)
    elif not values:
        raise AnswerInvalid("required")
    elif kind == "single_choice" or (kind == "predict" and option_ids):
        if values[0] not in option_ids:
            raise AnswerInvalid("choose")
        value = values[0]
    elif kind == "likert":
        scale = item["scale"]
        try:
            value = int(values[0])
        except ValueError:
            raise AnswerInvalid("choose") from None
        if not scale["min"] <= value <= scale["max"]:
            raise AnswerInvalid("choose")
    elif kind in ("numeric", "predict"):
        value = _number(values[0])
    elif kind == "text":
        value = values[0].strip()
        if len(value) > item.get("max_length", 2000):
            raise AnswerInvalid("too_long")
        if not value:
            raise AnswerInvalid("required")
    else:
        raise AnswerInvalid("unknown")
    conf = None
    if kind == "predict" and item.get("confidence"):
        try:
            conf = int(_number(confidence or ""))
        except AnswerInvalid:
            raise AnswerInvalid("confidence") from None
        if not 0 <= conf <= 100:
            raise AnswerInvalid("confidence")
    return value, conf


def item_key(item: dict, target_keys: dict) -> object:
    key = item.get("key")
    return target_keys.get(item["id"]) if key == "from_target" else key


def answer_score(item: dict, value: object, key: object) -> tuple[float | None, bool | None]:
    """Return (score 0..1, correct) for objective items, (None, None) for the rest."""
    if item["kind"] not in OBJECTIVE_KINDS or key is None:
        return None, None
    if item["kind"] == "multi_choice":
        correct = set(value) == set(key)
    elif isinstance(key, (int, float)) and not isinstance(key, bool):
        correct = abs(float(value) - float(key)) <= float(item.get("tolerance") or 0)
    else:
        correct = str(value) == str(key)
    return (1.0 if correct else 0.0), correct


def answer_evaluate(protocol: Protocol, item_id: str, values: list[str], confidence: str | None,
                    target_keys: dict) -> Scored:
    item = protocol.items[item_id]
    value, conf = answer_parse(item, values, confidence)
    score, correct = answer_score(item, value, item_key(item, target_keys))
    return Scored(value=value, score=score, correct=correct, confidence=conf)
