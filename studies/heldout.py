"""The held-out rule: which cases count as one of a study's test cases (docs/study-file.md, "Held-out test cases").

A case is *near* a test case when it is near on every feature: a number within the feature's tolerance of the
test case's value, any other value equal (text compared without case and surrounding spaces). A feature's
tolerance is `target.held_out.tolerance[feature]` when the study file gives one (a number, or `any`: the
feature is not compared), else `target.held_out.fraction` (default HELD_OUT_FRACTION) of the feature's range:
its range in the target's training data, or, with no data (an `llm` target), across the inputs of the study's
`predict` items. A feature that never varies has tolerance 0: equality.

The test cases are the inputs of the pre- and post-test `predict` items, both forms. The agentic arm's target
tools refuse a call on a near case (explainers.tools), and the validator refuses a practice item whose input is
near one (studies.spec): the same function decides both. Pure Python, on plain data: the spec as written or
normalised.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

HELD_OUT_FRACTION = 0.05
ANY = "any"  # a tolerance that leaves the feature out of the comparison
TEST_INSTRUMENTS = ("pre_test", "post_test")


@dataclass(frozen=True)
class HeldOutRule:
    features: tuple[str, ...]
    tolerances: dict  # feature -> float, or None for `any`

    def near(self, case: dict, test: dict) -> bool:
        """Whether `case` is within the held-out distance of `test` (see the module's docstring)."""
        if not isinstance(case, dict) or not isinstance(test, dict):
            return False
        for feature in self.features:
            tolerance = self.tolerances.get(feature, 0.0)
            if tolerance is None:
                continue
            if feature not in case or feature not in test:
                return False
            a, b = number_of(case[feature]), number_of(test[feature])
            if a is not None and b is not None:
                if not abs(a - b) <= tolerance:
                    return False
            elif _category(case[feature]) != _category(test[feature]):
                return False
        return True

    def match(self, case: dict, tests: list[tuple[str, dict]]) -> str | None:
        """Return the id of the first test case `case` is near, or None."""
        for ident, test in tests:
            if self.near(case, test):
                return ident
        return None

    def describe(self) -> str:
        """The tolerances in words, for an error message."""
        parts = []
        for feature in self.features:
            tolerance = self.tolerances.get(feature, 0.0)
            parts.append(f"{feature} any" if tolerance is None else f"{feature} ±{tolerance:.4g}")
        return ", ".join(parts)


def held_out_rule(*, target: dict | None, items: list, rows: list[dict] | None = None) -> HeldOutRule:
    """The rule of a study: `target` and `items` as written or normalised; `rows` the target's training data
    (dicts of column -> value, e.g. csv.DictReader's), if it has any."""
    target = target if isinstance(target, dict) else {}
    features = target.get("features")
    if isinstance(features, list):
        features = tuple(f for f in features if isinstance(f, str))
    else:  # no target: whatever the test cases give
        features = tuple(dict.fromkeys(f for _, case in held_out_tests({"items": items}) for f in case))
    settings = target.get("held_out") if isinstance(target.get("held_out"), dict) else {}
    declared = settings.get("tolerance") if isinstance(settings.get("tolerance"), dict) else {}
    fraction = settings.get("fraction", HELD_OUT_FRACTION)
    fraction = float(fraction) if number_of(fraction) is not None else HELD_OUT_FRACTION
    inputs = [item.get("input") for item in items or [] if isinstance(item, dict) and item.get("kind") == "predict"]
    tolerances = {}
    for feature in features:
        given = declared.get(feature)
        if given == ANY:
            tolerances[feature] = None
            continue
        if number_of(given) is not None and not isinstance(given, str):
            tolerances[feature] = float(given)
            continue
        source = rows if rows else [case for case in inputs if isinstance(case, dict)]
        values = [v for v in (number_of(row.get(feature)) for row in source) if v is not None]
        tolerances[feature] = fraction * (max(values) - min(values)) if values else 0.0
    return HeldOutRule(features=features, tolerances=tolerances)


def held_out_tests(spec: dict) -> list[tuple[str, dict]]:
    """(item id, input) of every pre- and post-test `predict` item, both forms, in the order of the items."""
    instruments = spec.get("instruments") if isinstance(spec.get("instruments"), dict) else {}
    test_ids = set()
    for name in TEST_INSTRUMENTS:
        forms = (instruments.get(name) or {}).get("forms") if isinstance(instruments.get(name), dict) else None
        for ids in (forms.values() if isinstance(forms, dict) else []):
            test_ids.update(i for i in (ids if isinstance(ids, list) else []) if isinstance(i, str))
    if not instruments:  # called with the items alone: every predict item
        test_ids = None
    tests = []
    for item in spec.get("items") or []:
        if not isinstance(item, dict) or item.get("kind") != "predict" or not isinstance(item.get("input"), dict):
            continue
        if test_ids is None or item.get("id") in test_ids:
            tests.append((item.get("id"), item["input"]))
    return tests


def same_question(a, b) -> bool:
    """Whether two prompts (a string, or language -> string) ask the same thing in some language: equal once
    case, punctuation and spacing are set aside."""
    a, b = _texts(a), _texts(b)
    if "*" in a or "*" in b:  # one prompt is the same in every language
        return bool(set(a.values()) & set(b.values()) - {""})
    return any(lang in b and text and text == b[lang] for lang, text in a.items())


def number_of(value) -> float | None:
    """The value as a finite number (numbers, and text that reads as one), else None; true/false are not numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _category(value):
    return value.strip().casefold() if isinstance(value, str) else value


def _texts(prompt) -> dict:
    if isinstance(prompt, str):
        prompt = {"*": prompt}
    if not isinstance(prompt, dict):
        return {}
    return {lang: " ".join(re.sub(r"[\W_]+", " ", text).casefold().split())
            for lang, text in prompt.items() if isinstance(text, str)}
