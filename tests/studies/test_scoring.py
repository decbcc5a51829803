"""Scoring of each item kind, on hand-made items."""
import pytest

from studies.scoring import AnswerInvalid, answer_parse, answer_score

CHOICE = {"id": "c", "kind": "single_choice", "options": [{"id": "a"}, {"id": "b"}], "key": "b"}
MULTI = {"id": "m", "kind": "multi_choice", "options": [{"id": "a"}, {"id": "b"}, {"id": "c"}], "key": ["a", "c"]}
NUMERIC = {"id": "n", "kind": "numeric", "key": 45.0, "tolerance": 2.5}
LIKERT = {"id": "l", "kind": "likert", "scale": {"min": 1, "max": 7}}
TEXT = {"id": "t", "kind": "text", "max_length": 10}
PREDICT = {"id": "p", "kind": "predict", "options": [{"id": "yes"}, {"id": "no"}], "key": "from_target", "confidence": True}
OPTIONAL = {"id": "o", "kind": "text", "max_length": 10, "required": False}


@pytest.mark.parametrize("item, values, key, expected", [
    (CHOICE, ["b"], "b", (1.0, True)),
    (CHOICE, ["a"], "b", (0.0, False)),
    (MULTI, ["c", "a"], ["a", "c"], (1.0, True)),
    (MULTI, ["a"], ["a", "c"], (0.0, False)),
    (MULTI, ["a", "b", "c"], ["a", "c"], (0.0, False)),
    (NUMERIC, ["47.5"], 45.0, (1.0, True)),
    (NUMERIC, ["42,5"], 45.0, (1.0, True)),
    (NUMERIC, ["47.6"], 45.0, (0.0, False)),
    (LIKERT, ["4"], None, (None, None)),
    (TEXT, ["hello"], None, (None, None)),
])
def test_objective_items_are_scored_and_the_rest_are_not(item, values, key, expected):
    value, _ = answer_parse(item, values)
    assert answer_score(item, value, key) == expected


def test_a_predict_item_is_scored_against_the_frozen_target_key_and_keeps_its_confidence():
    value, confidence = answer_parse(PREDICT, ["no"], "85")
    assert (value, confidence) == ("no", 85)
    assert answer_score(PREDICT, value, "no") == (1.0, True)
    assert answer_score(PREDICT, value, "yes") == (0.0, False)


@pytest.mark.parametrize("item, values, confidence, reason", [
    (CHOICE, [], None, "required"),
    (CHOICE, ["z"], None, "choose"),
    (MULTI, ["a", "z"], None, "choose"),
    (NUMERIC, ["forty"], None, "number"),
    (NUMERIC, ["nan"], None, "number"),
    (LIKERT, ["8"], None, "choose"),
    (TEXT, ["far too long text"], None, "too_long"),
    (PREDICT, ["yes"], "", "confidence"),
    (PREDICT, ["yes"], "101", "confidence"),
])
def test_answers_that_do_not_fit_are_refused_with_a_reason(item, values, confidence, reason):
    with pytest.raises(AnswerInvalid, match=reason):
        answer_parse(item, values, confidence)


def test_an_optional_item_may_be_left_empty():
    assert answer_parse(OPTIONAL, ["  "]) == (None, None)
    with pytest.raises(AnswerInvalid):
        answer_parse(TEXT, [""])
