"""Held-out means held out: the validator refuses material, a system prompt or a practice question that shows a
test case (studies.heldout.cases_shown), naming the test item and the file and line where the case is shown."""
import shutil

import pytest

from conftest import EXAMPLE
from studies.heldout import held_out_rule, text_units, text_values
from studies.spec import StudyFileInvalid, study_file_read

# The example's static material before issue 16: its examples table showed post_a4's case with its answer, and
# three pre-test cases (pre_a4, pre_a5, pre_b5).
OLD_EXAMPLES = """\
## Examples

| income | debt ratio | late payments | decision | why |
| --- | --- | --- | --- | --- |
| 72 k$ | 0.25 | 1 | approved | all three conditions hold |
| 95 k$ | 0.48 | 0 | refused | debt ratio above 0.39 |
| 41 k$ | 0.18 | 0 | refused | income not above 45.45 k$ |
| 88 k$ | 0.22 | 4 | refused | more than 2 late payments |
"""


def copy_of_example(tmp_path):
    folder = tmp_path / "study"
    shutil.copytree(EXAMPLE, folder)
    return folder


def errors_of(folder) -> list:
    with pytest.raises(StudyFileInvalid) as caught:
        study_file_read(folder)
    return caught.value.errors


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), start=1) if needle in line)


def test_the_unfixed_example_material_is_refused_naming_post_a4_and_its_line(tmp_path):
    folder = copy_of_example(tmp_path)
    material = folder / "material" / "static.en.md"
    text = material.read_text(encoding="utf-8")
    start, end = text.index("## Examples"), text.index("## How good is the model?")
    text = text[:start] + OLD_EXAMPLES + "\n" + text[end:]
    material.write_text(text, encoding="utf-8")
    errors = errors_of(folder)
    shown = {e.message.split("test item '")[1].split("'")[0]: e for e in errors}
    assert set(shown) == {"post_a4", "pre_a4", "pre_a5", "pre_b5"}, [str(e) for e in errors]
    error = shown["post_a4"]
    study = (folder / "study.yaml").read_text(encoding="utf-8")
    assert (error.file, error.line) == ("material/static.en.md", line_of(text, "| 41 k$ | 0.18 | 0 |"))
    assert error.path == "arms[0].material.en"
    assert str(error).startswith("arms[0] (id static).material.en: the material of arms static, chat shows the case of "
                                 f"test item 'post_a4' (items[13], line {line_of(study, 'id: post_a4')}): income 41, "
                                 "debt_ratio 0.18, late_payments 0 are within the held-out distance")


def test_the_fixed_example_shows_no_test_case():
    study_file_read(EXAMPLE)  # raises if any material, prompt or practice question showed one


def test_a_system_prompt_that_gives_a_test_case_is_refused_with_its_line(tmp_path):
    folder = copy_of_example(tmp_path)
    study = folder / "study.yaml"
    text = study.read_text(encoding="utf-8").replace(
        "        initiative: answer what is asked. The study material follows.\n",
        "        initiative: answer what is asked. The study material follows.\n"
        "        For instance, an applicant earning 110,000 a year with a debt ratio of 29% and 2 late payments is\n"
        "        approved.\n", 1)
    study.write_text(text, encoding="utf-8")
    [error] = errors_of(folder)
    # the unit is the prompt's paragraph: its first line
    assert error.path == "arms[1].system_prompt.en" and error.line == line_of(text, "You help a participant")
    assert "test item 'post_b4'" in error.message and "income 110, debt_ratio 0.29, late_payments 2" in error.message


def test_a_practice_question_that_gives_a_test_case_is_refused(tmp_path):
    folder = copy_of_example(tmp_path)
    study = folder / "study.yaml"
    text = study.read_text(encoding="utf-8").replace(
        'en: "Income 30 k$, debt ratio 0.20, no late payments. What does the model decide?"',
        'en: "Income 63 k$, debt ratio 0.36, no late payments, credit for 1 year. What does the model decide?"', 1)
    study.write_text(text, encoding="utf-8")
    [error] = errors_of(folder)
    assert error.path == "items[29].prompt" and "practice item 'prac_income2'" in error.message
    assert "test item 'post_a5'" in error.message


def test_thresholds_and_partial_cases_are_not_a_case():
    rule = held_out_rule(target={"features": ["income", "debt_ratio", "late_payments"]},
                         items=[], rows=[{"income": 20, "debt_ratio": 0.0, "late_payments": 0},
                                         {"income": 160, "debt_ratio": 0.9, "late_payments": 6}])
    test = {"income": 41, "debt_ratio": 0.38, "late_payments": 0}
    for text in ("Debt ratio at most 0.39, whatever the rest; 0.40 is refused.",
                 "An applicant earning 41 k$ is refused.",
                 "Income 41 k$ and 3 late payments."):
        assert rule.shown(text_values(text), test) is None, text
    assert rule.shown(text_values("Income 41,000, debt ratio 38%, no late payments."), test) is not None
    # 0.39 is no count of late payments: a whole-number feature is read from whole numbers only
    assert rule.shown(text_values("ratios of 0.1, 0.2 and 0.38"), test) is None


def test_numbers_are_read_in_units_and_thousands():
    assert text_values("income 41,000") == [(41.0, 41000.0)]
    assert text_values("41 k$") == [(41.0, 41000.0)]
    assert text_values("18%") == [(0.18, 18.0)]
    assert text_values("4.5 万美元") == [(4.5, 45.0, 45000.0)]
    assert text_values("0 late payments, no debt") == [(0.0,), (0.0,)]
    assert text_values("figures/tree2.svg, a depth-3 tree, 3 levels") == [(3.0,)]


def test_a_table_row_and_a_list_item_are_units_of_their_own():
    units = text_units("Para one\ncontinues 1.\n\n- item 2\n- item 3\n\n| a | b |\n| --- | --- |\n| 4 | 5 |\n")
    assert units == [(1, "Para one continues 1."), (4, " item 2"), (5, " item 3"), (7, "| a | b |"), (9, "| 4 | 5 |")]


@pytest.mark.django_db
def test_a_draft_stored_before_the_check_is_refused_at_launch_naming_the_case(study_folder):
    """The check runs again at launch on the stored spec and files, so a draft stored before it existed (here: its
    material file changed in the database afterwards) cannot go live showing a test case; the fixed one can."""
    from studies.models import StudyAsset
    from studies.services import study_launch, study_version_create

    version, _ = study_version_create(study_file=study_file_read(study_folder()))
    asset = StudyAsset.objects.get(version=version, path="material/static.en.md")
    fixed = bytes(asset.content)
    text = fixed.decode("utf-8")
    start, end = text.index("## Examples"), text.index("## How good is the model?")
    asset.content = (text[:start] + OLD_EXAMPLES + "\n" + text[end:]).encode("utf-8")
    asset.save(update_fields=["content"])
    with pytest.raises(StudyFileInvalid) as caught:
        study_launch(slug=version.study.slug)
    shown = {e.message.split("test item '")[1].split("'")[0] for e in caught.value.errors}
    assert shown == {"post_a4", "pre_a4", "pre_a5", "pre_b5"}, [str(e) for e in caught.value.errors]
    assert all(e.file == "material/static.en.md" for e in caught.value.errors)
    version.refresh_from_db()
    assert version.state == "draft"
    asset.content = fixed
    asset.save(update_fields=["content"])
    assert study_launch(slug=version.study.slug).state == "live"
