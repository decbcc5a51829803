"""The held-out rule in the study file: the validator refuses a practice item that rehearses a test item (its
input near a test case by the tools' own rule, or the same question), names it and its line, and checks
`target.held_out`."""
import shutil

import pytest

from conftest import EXAMPLE
from studies.heldout import held_out_rule, held_out_tests, same_question
from studies.spec import StudyFileInvalid, study_file_read

NEAR_PRACTICE = """\
  - id: prac_case
    kind: predict
    concept: income
    prompt: {en: Will the model approve this applicant?, zh-hans: 模型会批准这位申请人吗？}
    input: {income: INCOME, debt_ratio: 0.18, credit_history_years: 15, late_payments: 0, employment_years: 22}
    options: *decision
    key: from_target
"""


def folder_with(tmp_path, text: str):
    folder = tmp_path / "study"
    shutil.copytree(EXAMPLE, folder)
    (folder / "study.yaml").write_text(text, encoding="utf-8")
    return folder


def example_text() -> str:
    return (EXAMPLE / "study.yaml").read_text(encoding="utf-8")


def with_practice_case(income: str, held_out: str = "") -> str:
    text = example_text().replace("  # -- practice bank", NEAR_PRACTICE.replace("INCOME", income) + "  # -- practice bank", 1)
    text = text.replace("  practice: [prac_debt,", "  practice: [prac_case, prac_debt,", 1)
    if held_out:
        text = text.replace("  label: approved\n", "  label: approved\n" + held_out, 1)
    return text


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), start=1) if needle in line)


def errors_of(folder) -> list:
    with pytest.raises(StudyFileInvalid) as caught:
        study_file_read(folder)
    return caught.value.errors


def test_a_practice_case_near_a_test_case_is_refused_naming_both_and_its_line(tmp_path):
    text = with_practice_case("41.0001")
    [error] = errors_of(folder_with(tmp_path, text))
    assert error.path.endswith(".input") and error.line == line_of(text, "income: 41.0001")
    assert error.message.startswith("practice item 'prac_case' is within the held-out distance of test item 'post_a4' "
                                    "(income ±7.095, debt_ratio ±0.0445,")
    assert "or set target.held_out" in error.message


def test_a_clearly_different_practice_case_is_accepted(tmp_path):
    study_file_read(folder_with(tmp_path, with_practice_case("60")))  # 19 k$ away: no error


def test_the_study_files_tolerance_decides_for_the_validator_too(tmp_path):
    text = with_practice_case("41.5", held_out="  held_out: {tolerance: {income: 0.1}}\n")
    study_file_read(folder_with(tmp_path, text))  # 0.5 k$ away, and 0.1 is the tolerance: a different case


def test_a_practice_item_that_asks_a_test_items_question_is_refused(tmp_path):
    text = example_text().replace(
        'en: "An applicant with a good income and a low debt ratio has 2 late payments. After one more late payment, '
        'what does the model decide?"', 'en: "How many late payments can an applicant have and still be approved?"', 1)
    [error] = errors_of(folder_with(tmp_path, text))
    assert str(error) == ("items[25] (id prac_late).prompt: practice item 'prac_late' asks the same question as test item 'post_a1'; "
                          "the practice bank must not rehearse a test item "
                          f"(study.yaml, line {line_of(text, 'id: prac_late') + 3})")


def test_held_out_tolerances_must_name_features_and_be_numbers_or_any(tmp_path):
    text = example_text().replace("  label: approved\n", "  label: approved\n  held_out:\n    fraction: 2\n"
                                  "    tolerance: {incme: 1, income: lots, debt_ratio: -1, late_payments: any}\n", 1)
    errors = {(e.path, e.message, e.line) for e in errors_of(folder_with(tmp_path, text))}
    line = line_of(text, "tolerance: {incme")
    assert errors == {
        ("target.held_out.fraction", "must be at most 1", line - 1),
        ("target.held_out.tolerance.incme", "not one of target.features", line),
        ("target.held_out.tolerance.income", "must be a number or any", line),
        ("target.held_out.tolerance.debt_ratio", "must be at least 0", line),
    }


def test_the_rule_without_training_data_takes_the_range_of_the_items_and_compares_text_as_text():
    items = [
        {"id": "t1", "kind": "predict", "input": {"age": 20, "tone": "Polite"}},
        {"id": "t2", "kind": "predict", "input": {"age": 60, "tone": "rude"}},
    ]
    spec = {"items": items, "instruments": {"pre_test": {"forms": {"A": ["t1"], "B": ["t2"]}}}}
    rule = held_out_rule(target={"kind": "llm", "features": ["age", "tone"]}, items=items)
    assert rule.tolerances == {"age": 0.05 * 40, "tone": 0.0}
    tests = held_out_tests(spec)
    assert [ident for ident, _ in tests] == ["t1", "t2"]
    assert rule.match({"age": 21.9, "tone": " polite "}, tests) == "t1"
    assert rule.match({"age": 22.1, "tone": "polite"}, tests) is None
    assert rule.match({"age": 20, "tone": "curt"}, tests) is None
    assert rule.match({"age": True, "tone": "polite"}, tests) is None  # true is not the number 1, nor 20


def test_same_question_ignores_case_spacing_and_punctuation_but_not_words():
    assert same_question({"en": "How many late payments?", "zh-hans": "x"}, {"en": "how many  late payments", "zh-hans": "y"})
    assert same_question("How many late payments?", {"en": "How many late payments", "zh-hans": "y"})
    assert not same_question({"en": "How many late payments?"}, {"en": "How few late payments?"})
