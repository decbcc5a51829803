"""The learner model: the explainer's belief about one participant, and the policy that reads it.

A learner model is a JSON document (schema below, versioned). It starts from the pre-test (per
concept: knowledge tracing over that concept's pre-test answers) and is stored as a new
snapshot after every participant turn. `next_move` chooses the explainer's next act from it; the
`tutor` arm updates it by Bayesian knowledge tracing (`rule_taught`, `rule_update`); the `agentic`
arm updates it by a structured LLM call (`update_schema`), with the rules as its fallback.
"""
import copy

from jsonschema import Draft202012Validator

SCHEMA_VERSION = 1
ACTS = ("explain", "example", "analogy", "check", "correction", "summary")
# Mastery is the probability that the learner knows the concept (Bayesian knowledge tracing).
MASTERED = 0.7       # a concept at or above this mastery is taught
EXPLAINED = 0.4      # below this, explain before checking
PRIOR = 0.3          # a concept no pre-test item measured
FLOOR, CEILING = 0.1, 0.9  # the pre-test never makes the model certain: later evidence must be able to move it
SLIP = 0.1           # P(wrong answer | knows)
LEARN = 0.3          # P(learns | the explainer just taught the concept and did not know it)

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://teachback.invalid/schema/learner-model-1.json",
    "title": "Teachback learner model",
    "type": "object",
    "additionalProperties": False,
    "required": ["schema_version", "concepts", "misconceptions", "background", "next_goal", "why"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "concepts": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["mastery", "evidence"],
                "properties": {
                    "mastery": {"type": "number", "minimum": 0, "maximum": 1},
                    "evidence": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
        "misconceptions": {"type": "array", "items": {"type": "string"}},
        "background": {"type": "string"},
        "next_goal": {
            "type": "object",
            "additionalProperties": False,
            "required": ["concept", "act"],
            "properties": {"concept": {"type": ["string", "null"]}, "act": {"enum": list(ACTS)}},
        },
        "why": {"type": "string", "description": "why the model changed at this turn"},
    },
}
_validator = Draft202012Validator(SCHEMA)


def learner_model_validate(state: dict) -> None:
    """Raise ValueError with every problem if `state` is not a learner model."""
    errors = [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in _validator.iter_errors(state)]
    if errors:
        raise ValueError("; ".join(errors))


def update_schema(concepts: list[str]) -> dict:
    """The learner model's schema for one study, in the subset that strict structured output accepts.

    Strict `json_schema` output (OpenAI, and servers that enforce it) wants every property listed and
    required, so the concepts are spelled out; bounds are checked afterwards by `learner_model_validate`.
    """
    entry = {
        "type": "object", "additionalProperties": False, "required": ["mastery", "evidence"],
        "properties": {"mastery": {"type": "number"}, "evidence": {"type": "array", "items": {"type": "string"}}},
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["schema_version", "concepts", "misconceptions", "background", "next_goal", "why"],
        "properties": {
            "schema_version": {"type": "integer", "enum": [SCHEMA_VERSION]},
            "concepts": {"type": "object", "additionalProperties": False, "required": list(concepts),
                         "properties": {concept: entry for concept in concepts}},
            "misconceptions": {"type": "array", "items": {"type": "string"}},
            "background": {"type": "string"},
            "next_goal": {
                "type": "object", "additionalProperties": False, "required": ["concept", "act"],
                "properties": {"concept": {"type": ["string", "null"]}, "act": {"type": "string", "enum": list(ACTS)}},
            },
            "why": {"type": "string"},
        },
    }


def guess_rate(item: dict) -> float:
    """P(right answer | does not know): one option in n, or little for an open number."""
    if item["kind"] == "multi_choice":
        return 1 / (2 ** len(item["options"]) - 1)
    return 1 / len(item["options"]) if item.get("options") else 0.05


def learner_model_initial(*, concepts: list[str], pretest: list[tuple[str | None, float, float]]) -> dict:
    """The model before the conversation, from the pre-test: per concept, knowledge tracing from an
    even prior over its items' answers, each (concept, score, guess rate); `PRIOR` with no item."""
    evidence: dict[str, list[tuple[float, float]]] = {}
    for concept, score, guess in pretest:
        if concept:
            evidence.setdefault(concept, []).append((score, guess))
    state = {
        "schema_version": SCHEMA_VERSION,
        "concepts": {},
        "misconceptions": [],
        "background": "",
        "next_goal": {"concept": None, "act": "explain"},
        "why": "initialised from the pre-test",
    }
    for concept in concepts:
        answers = evidence.get(concept, [])
        mastery = 0.5 if answers else PRIOR
        for score, guess in answers:
            mastery = _posterior(mastery, correct=score >= 1, guess=guess)
        mastery = min(CEILING, max(FLOOR, mastery)) if answers else mastery
        right = sum(1 for score, _ in answers if score >= 1)
        note = f"pre-test: {right} of {len(answers)} correct" if answers else "pre-test: no item on this concept"
        state["concepts"][concept] = {"mastery": round(mastery, 3), "evidence": [note]}
    state["next_goal"] = next_move(state, concept_order=concepts, checks_left=set(concepts), explained=set())
    return state


def _posterior(mastery: float, *, correct: bool, guess: float) -> float:
    if correct:
        return mastery * (1 - SLIP) / (mastery * (1 - SLIP) + (1 - mastery) * guess)
    return mastery * SLIP / (mastery * SLIP + (1 - mastery) * (1 - guess))


def next_move(state: dict, *, concept_order: list[str], checks_left: set[str], explained: set[str],
              last_check: tuple[str, bool] | None = None) -> dict:
    """Choose the next act: the least mastered concept not yet mastered, and what to do about it.

    A wrong answer to a check is corrected first. A weak concept is explained before it is checked;
    a concept with no check question left is shown by example instead. With everything mastered
    (or nothing left to do), summarise.
    """
    if last_check is not None and not last_check[1]:
        return {"concept": last_check[0], "act": "correction"}
    concepts = state["concepts"]
    open_concepts = [c for c in concept_order if c in concepts and concepts[c]["mastery"] < MASTERED
                     and (c in checks_left or c not in explained)]
    if not open_concepts:
        return {"concept": None, "act": "summary"}
    target = min(open_concepts, key=lambda c: (concepts[c]["mastery"], concept_order.index(c)))
    mastery = concepts[target]["mastery"]
    if target not in explained and (mastery < EXPLAINED or target not in checks_left):
        return {"concept": target, "act": "explain"}
    if target in checks_left:
        return {"concept": target, "act": "check"}
    return {"concept": target, "act": "example"}


def rule_taught(state: dict, *, concept: str, act: str) -> dict:
    """Return a new model after the explainer taught `concept` (the learning step of knowledge tracing)."""
    new = copy.deepcopy(state)
    entry = new["concepts"][concept]
    before = entry["mastery"]
    entry["mastery"] = round(before + (1 - before) * LEARN, 3)
    entry["evidence"].append(f"taught ({act})")
    new["why"] = f"{concept} was taught ({act}): mastery {before:g} → {entry['mastery']:g}"
    return new


def rule_update(state: dict, *, concept: str, correct: bool, label: str, guess: float) -> dict:
    """Return a new model after a check on `concept` was answered (Bayes' rule with slip and guess).

    The old model is left as it was: every snapshot is kept.
    """
    new = copy.deepcopy(state)
    entry = new["concepts"][concept]
    before = entry["mastery"]
    entry["mastery"] = round(_posterior(before, correct=correct, guess=guess), 3)
    entry["evidence"].append(f"{label}: {'right' if correct else 'wrong'}")
    new["why"] = f"check on {concept} answered {'right' if correct else 'wrong'}: mastery {before:g} → {entry['mastery']:g}"
    return new


def rule_step(state: dict, *, taught: tuple[str, str] | None, check: tuple[str, bool, str, float] | None) -> dict:
    """The rule update for one exchange: the learning step for what was taught, then Bayes on a check answer.

    `taught` is (concept, act) of the explainer's last turn when it taught; `check` is (concept, correct,
    label, guess rate) when the participant answered a check question.
    """
    if taught is not None:
        state = rule_taught(state, concept=taught[0], act=taught[1])
    if check is not None:
        concept, correct, label, guess = check
        state = rule_update(state, concept=concept, correct=correct, label=label, guess=guess)
    return state


def predict_correct(state: dict, concept: str | None, *, guess: float = 0.25) -> float:
    """The model's probability that the participant answers an item on `concept` correctly."""
    if concept and concept in state["concepts"]:
        mastery = float(state["concepts"][concept]["mastery"])
    else:
        masteries = [c["mastery"] for c in state["concepts"].values()]
        mastery = float(sum(masteries) / len(masteries)) if masteries else 0.5
    return mastery * (1 - SLIP) + (1 - mastery) * guess
