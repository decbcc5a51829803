"""Study-file messages a researcher can act on: YAML errors in plain words with the line and the key above,
list entries named by id, "did you mean" for unknown names, and one error for one mistake."""
import shutil

import pytest

from conftest import EXAMPLE
from studies.spec import StudyFileInvalid, study_file_read


def errors_for(tmp_path, old: str, new: str, count: int = 1) -> tuple[str, list]:
    folder = tmp_path / "study"
    shutil.copytree(EXAMPLE, folder)
    text = (EXAMPLE / "study.yaml").read_text(encoding="utf-8")
    assert old in text
    text = text.replace(old, new, count)
    (folder / "study.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(StudyFileInvalid) as caught:
        study_file_read(folder)
    return text, caught.value.errors


def line_of(text: str, needle: str, after: int = 0) -> int:
    return next(n for n, line in enumerate(text.splitlines(), start=1) if n > after and needle in line)


def test_a_line_indented_too_far_names_the_entry_above_and_says_to_check_its_spaces(tmp_path):
    text, [error] = errors_for(tmp_path, "  - id: chat\n    kind: chat", "  - id: chat\n     kind: chat")
    line, entry = line_of(text, "     kind: chat"), line_of(text, "  - id: chat")
    assert error.line == line
    assert error.message.startswith(f"invalid yaml: line {line}: this line is indented more than `arms:` expects "
                                    f"under `- id: chat` (line {entry}): check its spaces")


def test_a_line_between_two_levels_names_both(tmp_path):
    old = "    weight: 1\n    label: {en: Chat"
    text, [error] = errors_for(tmp_path, old, "    weight: 1\n   label: {en: Chat")
    line = line_of(text, "   label: {en: Chat")
    assert error.line == line and "matches no level above it (in `arms:`)" in error.message
    assert f"`- id: chat` (line {line_of(text, '  - id: chat')}) starts at column 3" in error.message


def test_a_tab_is_named_as_a_tab(tmp_path):
    text, [error] = errors_for(tmp_path, "    weight: 1\n    label: {en: Chat", "    weight: 1\n\tlabel: {en: Chat")
    assert error.line == line_of(text, "\tlabel")
    assert "a tab character" in error.message and "spaces only" in error.message


def test_an_unclosed_quote_is_reported_where_it_opens(tmp_path):
    text, [error] = errors_for(tmp_path, 'version: "2026-11-v1"', 'version: "2026-11-v1')
    assert error.line == line_of(text, 'version: "2026-11-v1')
    assert "the quote (\") opened on this line (in `consent:`) is not closed" in error.message


def test_an_unclosed_bracket_is_reported_where_it_opens(tmp_path):
    old = "A: [pre_a1, pre_a2, pre_a3, pre_a4, pre_a5]"
    text, [error] = errors_for(tmp_path, old, old[:-1])
    assert error.line == line_of(text, old[:-1])
    assert "the `[` opened on this line (in `instruments:`) is not closed: close it with `]`" in error.message


def test_a_colon_in_a_value_says_to_quote_it(tmp_path):
    text, [error] = errors_for(tmp_path, "  completion_code: C7Q2LM1X", "  completion_code: C7Q2LM1X: x")
    assert "the value of `completion_code:` holds ': '" in error.message and "quotes" in error.message


def test_list_entries_are_named_by_id_in_the_text_and_not_in_the_path(tmp_path):
    text, [error] = errors_for(tmp_path, "    key: 45.45\n    tolerance: 2.5\n  - id: post_b4",
                               "    key: 45.45\n    tolerance: -1\n  - id: post_b4")
    assert error.path == "items[17].tolerance"
    assert str(error).startswith("items[17] (id post_b3).tolerance: must be at least 0")


def test_an_unknown_kind_is_one_error_with_a_close_match(tmp_path):
    text, errors = errors_for(tmp_path, "  - id: post_a4\n    kind: predict", "  - id: post_a4\n    kind: predcit")
    assert [str(e) for e in errors] == [
        "items[13] (id post_a4).kind: must be one of: single_choice, multi_choice, likert, numeric, text, predict; "
        f"did you mean 'predict'? (study.yaml, line {line_of(text, 'kind: predcit')})"]


def test_an_unknown_concept_used_in_several_places_is_one_error_listing_them(tmp_path):
    text, errors = errors_for(tmp_path, "concept: income", "concept: incme", count=-1)
    [error] = errors
    assert error.path == "items[7].concept" and error.line == line_of(text, "concept: incme")
    assert error.message.startswith("unknown concept 'incme'; did you mean 'income'? (also at items[13] (id post_a4)"
                                    f".concept (line {line_of(text, 'concept: incme', error.line)});")


def test_an_unknown_arm_used_in_several_places_is_one_error_listing_them(tmp_path):
    plan = "  contrasts: vs_reference   # every arm minus the reference arm, by default the first: static\n"
    text, errors = errors_for(tmp_path, plan, "  reference_arm: statik\n  contrasts: [[chat, statik], [agentic, statik]]\n")
    [error] = errors
    assert error.path == "analysis.reference_arm"
    line = line_of(text, "[[chat, statik]")
    assert error.message == ("unknown arm 'statik'; did you mean 'static'? (also at analysis.contrasts[0][1] "
                             f"(line {line}); analysis.contrasts[1][1] (line {line}))")


def test_an_unknown_item_and_an_unknown_column_get_a_close_match(tmp_path):
    _, errors = errors_for(tmp_path, "A: [post_a1, post_a2", "A: [post_a1, post_a22")
    assert [e.message for e in errors] == ["unknown item 'post_a22'; did you mean 'post_a2'?"]
    _, errors = errors_for(tmp_path / "column", "  label: approved\n", "  label: aproved\n")
    assert [e.message for e in errors] == ["not a column of loans.csv; did you mean 'approved'?"]


def test_a_feature_that_is_no_column_is_one_error_with_its_consequences_folded(tmp_path):
    _, errors = errors_for(tmp_path, "features: [income,", "features: [incme,")
    [error] = errors
    assert error.path == "target.features[0]"
    assert error.message.startswith("not a column of loans.csv; did you mean 'income'? (so these do not match "
                                    "target.features either: target.feature_labels.income")
    assert "items[3] (id pre_a4).input" in error.message and "more)" in error.message
