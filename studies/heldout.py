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

Text (an arm's material, a system prompt, a practice question) *shows* a test case when one of its units (a
paragraph, a list item, a heading or a table row: `text_units`) holds numbers near the case's values for more than
half of the case's compared features (all of them when it has one or two), each feature read from a number of
its own (`HeldOutRule.shown`). Numbers are read from digits ("41", "0.18", "41,000", "41 k$", "18%", "4.5 万")
and from the words no, none, zero (and 没有, 零) as 0 (`text_values`); a feature whose values are all whole
numbers is read only from a whole number. Material rarely gives every feature of a case (the example's gave the
three that decide and left out the two the model ignores), so "more than half" rather than "all": a unit of
threshold values ("at most 0.39", "above 45 k$") names one feature each and stays clear.
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
    whole: frozenset = frozenset()  # features whose values are all whole numbers (read only from whole numbers)

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

    def shown(self, values: list[tuple[float, ...]], test: dict) -> dict | None:
        """Whether a text unit whose numbers are `values` (each the readings of one number, `text_values`) shows
        the test case: {feature: the number read for it} when it does (see the module's docstring), else None."""
        if not isinstance(test, dict):
            return None
        compared = [f for f in self.features if self.tolerances.get(f, 0.0) is not None
                    and f in test and number_of(test[f]) is not None]
        if not compared:
            return None
        needed = len(compared) if len(compared) <= 2 else len(compared) // 2 + 1
        if len(values) < needed:
            return None
        candidates = {}
        for feature in compared:
            wanted, tolerance = number_of(test[feature]), self.tolerances.get(feature, 0.0)
            candidates[feature] = [
                (j, reading) for j, readings in enumerate(values) for reading in readings
                if abs(reading - wanted) <= tolerance + 1e-9 and (feature not in self.whole or reading.is_integer())
            ]
        matched = _matching(candidates)
        return matched if len(matched) >= needed else None

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
    tolerances, whole = {}, set()
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
    for feature in features:
        source = rows if rows else [case for case in inputs if isinstance(case, dict)]
        values = [v for v in (number_of(row.get(feature)) for row in source) if v is not None]
        if values and all(v.is_integer() for v in values):
            whole.add(feature)
    return HeldOutRule(features=features, tolerances=tolerances, whole=frozenset(whole))


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


# --------------------------------------------------------------------------- test cases written in text

_TABLE_RULE = re.compile(r"^\s*\|?[\s:|-]*-[\s:|-]*$")  # | --- | :-: |
_ITEM_START = re.compile(r"^\s*(?:[-*+]\s|\d{1,3}[.)]\s|#{1,6}\s|>)")
_ITEM_MARK = re.compile(r"^\s*(?:[-*+]|\d{1,3}[.)]|#{1,6}|>)\s")
# A number: 41 / 0.18 / .5 / 41,000 / 41 000 is two numbers; then an optional unit that scales it.
_NUMBER = re.compile(
    r"(?<![\w.])(?<![A-Za-z]-)(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?!(?![kK](?![A-Za-z]))[\w.]*[A-Za-z_/])"
    r"\s?(%|[kK](?![a-zA-Z])|千|万)?"
)
_ZERO_WORDS = re.compile(r"(?:(?<=\s)|^)(?:no|none|zero)(?=\s+\w)|没有|零", re.IGNORECASE)


def text_units(text: str) -> list[tuple[int, str]]:
    """Split markdown into the units a case is looked for in: (first line, text) of every paragraph, list item,
    heading and table row (a row's text is its cells)."""
    units: list[tuple[int, list[str]]] = []
    open_unit = False
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            open_unit = False
            continue
        if stripped.startswith("|") or stripped.endswith("|") and "|" in stripped[:-1]:
            if not _TABLE_RULE.match(stripped):
                units.append((number, [stripped]))
            open_unit = False
            continue
        if not open_unit or _ITEM_START.match(line) or stripped.startswith("!["):
            units.append((number, []))
            open_unit = not stripped.startswith("#")
        units[-1][1].append(_ITEM_MARK.sub(" ", line, count=1))
    return [(number, " ".join(lines)) for number, lines in units]


def text_values(text: str) -> list[tuple[float, ...]]:
    """The numbers written in a text unit, each as the values it may stand for: 41 k$ is 41 (in k$) or 41,000;
    41,000 is 41,000 or 41 (in thousands); 18% is 0.18 or 18; 4.5 万 is 45,000 or 45 (in thousands)."""
    values = []
    for match in _NUMBER.finditer(text):
        written, unit = match.group(1), match.group(2)
        number = float(written.replace(",", ""))
        readings = {number}
        if "," in written or number >= 1000:
            readings.add(number / 1000)
        if unit in ("k", "K", "千"):
            readings.add(number * 1000)
        elif unit == "万":
            readings.update({number * 10_000, number * 10})
        elif unit == "%":
            readings.add(number / 100)
        values.append(tuple(sorted(readings)))
    values += [(0.0,)] * len(_ZERO_WORDS.findall(text))
    return values


def cases_shown(text: str, rule: HeldOutRule, tests: list[tuple[str, dict]]) -> list[tuple[int, str, dict]]:
    """(line, test item id, {feature: number read}) for every unit of the text that shows a test case."""
    found = []
    for line, unit in text_units(text):
        values = text_values(unit)
        if not values:
            continue
        for ident, test in tests:
            matched = rule.shown(values, test)
            if matched is not None:
                found.append((line, ident, matched))
    return found


def _matching(candidates: dict) -> dict:
    """The largest assignment of features to distinct numbers ({feature: (number index, reading)}), by
    augmenting paths: a unit holds a handful of numbers, a case a handful of features."""
    owner: dict = {}  # number index -> feature

    def assign(feature, seen) -> bool:
        for j, _ in candidates[feature]:
            if j in seen:
                continue
            seen.add(j)
            if j not in owner or assign(owner[j], seen):
                owner[j] = feature
                return True
        return False

    for feature in candidates:
        assign(feature, set())
    return {feature: next(r for k, r in candidates[feature] if k == j) for j, feature in owner.items()}
