"""The study-file reader: the example reads, mistakes are all reported with path and line."""

import copy
import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from ruamel.yaml import YAML

from studies.spec import (
    DEFAULT_COMPLETION_URL,
    LLM_CALL_KINDS,
    LLM_TIMEOUT_MAX_S,
    SpecError,
    StudyFileInvalid,
    canonical_hash,
    llm_limits,
    localize,
    study_file_read,
    study_json_schema,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "studies" / "examples" / "loan-approval"

MINIMAL = """\
schema_version: 1
slug: tiny
title: {en: Tiny, zh-hans: 小}
languages: [en, zh-hans]
consent: {version: v1, text: {en: Agree?, zh-hans: 同意吗？}}
recruitment: {completion_code: DONE1, no_consent_code: NOPE1}
concepts:
  - {id: bigger, label: {en: Bigger, zh-hans: 更大}}
target:
  kind: sklearn
  estimator: DecisionTreeClassifier
  params: {max_depth: 2}
  seed: 1
  data: data/d.csv
  features: [x, y]
  label: c
items:
  - id: p1
    kind: single_choice
    concept: bigger
    prompt: Pick one
    options: [{id: a, text: A}, {id: b, text: B}]
    key: a
  - id: p2
    kind: predict
    prompt: {en: Predict, zh-hans: 预测}
    input: {x: 3, y: 1}
    options: [{id: "0", text: zero}, {id: "1", text: one}]
    key: from_target
    confidence: true
  - id: q1
    kind: numeric
    prompt: How much?
    key: 2
    tolerance: 0.5
  - id: q2
    kind: multi_choice
    prompt: Which?
    options: [{id: a, text: A}, {id: b, text: B}, {id: c, text: C}]
    key: [a, c]
  - id: s1
    kind: likert
    prompt: Clear?
    scale: {min: 1, max: 5}
  - id: s2
    kind: text
    prompt: Comments?
instruments:
  pre_test: {forms: {A: [p1], B: [p2]}}
  post_test: {forms: {A: [q1], B: [q2]}}
  questionnaire: [s1, s2]
arms:
  - id: static
    kind: static
    weight: 1
    material: material/m.md
  - id: chat
    kind: chat
    weight: 1
    llm: {model: small-model}
  - id: tutor
    kind: tutor
    weight: 2
allocation: {method: blocked, block_size: 8}
debrief: Thanks
"""

CSV = "x,y,c\n" + "".join(f"{x},{y},{int(x > y)}\n" for x in range(6) for y in range(6))
MATERIAL = "# Read me\n\n![a figure](figures/f.svg)\n"


def write_study(tmp_path, text=MINIMAL, files=None) -> Path:
    folder = tmp_path / "study"
    files = {"data/d.csv": CSV, "material/m.md": MATERIAL, "material/figures/f.svg": "<svg/>"} | (files or {})
    for name, content in files.items():
        if content is None:
            continue
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(content, encoding="utf-8")
    (folder / "study.yaml").write_text(text, encoding="utf-8")
    return folder


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """Return the 1-based line of the n-th line that contains `needle`."""
    hits = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    return hits[occurrence - 1]


def errors_of(folder) -> list[SpecError]:
    with pytest.raises(StudyFileInvalid) as caught:
        study_file_read(folder)
    return caught.value.errors


def test_example_study_reads_without_errors():
    study = study_file_read(EXAMPLE)
    assert study.spec["slug"] == "loan-approval"
    assert study.source == str(EXAMPLE)
    assert "material/figures/tree.svg" in study.assets
    assert "study.yaml" not in study.assets
    json.dumps(study.spec)  # plain JSON types only


def test_example_study_has_the_required_shape():
    spec = study_file_read(EXAMPLE / "study.yaml").spec
    forms = {name: spec["instruments"][name]["forms"] for name in ("pre_test", "post_test")}
    assert all(len(ids) >= 5 for f in forms.values() for ids in f.values())
    kinds = {item["kind"] for item in spec["items"]}
    assert kinds == {"single_choice", "multi_choice", "numeric", "predict", "likert", "text"}
    assert [arm["id"] for arm in spec["arms"]] == ["static", "chat", "agentic", "tutor"]
    assert spec["allocation"] == {"method": "blocked", "block_size": 8, "when": "consent", "strata": []}


def test_example_study_hash_is_stable_and_follows_the_assets(tmp_path):
    first = study_file_read(EXAMPLE)
    assert study_file_read(EXAMPLE).sha256 == first.sha256
    assert first.sha256 == canonical_hash(first.spec, first.assets)

    copy_folder = tmp_path / "copy"
    for name, content in first.assets.items():
        (copy_folder / name).parent.mkdir(parents=True, exist_ok=True)
        (copy_folder / name).write_bytes(content)
    (copy_folder / "study.yaml").write_bytes((EXAMPLE / "study.yaml").read_bytes())
    assert study_file_read(copy_folder).sha256 == first.sha256

    figure = copy_folder / "material" / "figures" / "tree.svg"
    data = bytearray(figure.read_bytes())
    data[-2] = ord("X") if data[-2] != ord("X") else ord("Y")
    figure.write_bytes(bytes(data))
    assert study_file_read(copy_folder).sha256 != first.sha256


def test_hidden_files_are_not_assets(tmp_path):
    folder = write_study(tmp_path, files={".notes.txt": "private", "material/.draft.md": "x"})
    assets = study_file_read(folder).assets
    assert sorted(assets) == ["data/d.csv", "material/figures/f.svg", "material/m.md"]


def test_minimal_study_is_normalised_with_defaults(tmp_path):
    spec = study_file_read(write_study(tmp_path)).spec
    assert spec["title"] == {"en": "Tiny", "zh-hans": "小"}
    assert spec["debrief"] == {"en": "Thanks", "zh-hans": "Thanks"}
    assert spec["recruitment"]["completion_url"] == DEFAULT_COMPLETION_URL
    assert spec["recruitment"]["allow_without_pid"] is False
    assert spec["withdrawal"] == {"data": "keep"}
    items = {item["id"]: item for item in spec["items"]}
    assert items["s2"]["max_length"] == 2000
    assert items["p2"]["confidence"] is True
    assert items["q1"]["key"] == 2.0 and items["q1"]["unit"] is None
    assert items["s1"]["scale"]["min_label"] is None
    assert spec["arms"][0]["material"] == {"en": "material/m.md", "zh-hans": "material/m.md"}
    assert spec["arms"][1] == {
        "id": "chat", "kind": "chat", "weight": 1, "label": None, "material": None, "limits": {}, "options": {},
        "system_prompt": None,
        "llm": {
            "provider": "openai", "model": "small-model", "base_url": None, "params": {},
            "prices": None, "timeout_s": 120.0, "tool_choice": None, "structured_output": None,
            "timing": {kind: {"timeout_s": 120.0, "ttft_s": 120.0, "idle_s": 30.0} for kind in LLM_CALL_KINDS},
            "max_retries": 2, "context_tokens": 4096,
        },
    }
    assert spec["target"]["task"] == "classification"


def test_after_pretest_allocation_gets_default_strata(tmp_path):
    text = MINIMAL.replace("allocation: {method: blocked, block_size: 8}", "allocation: {when: after_pretest}")
    allocation = study_file_read(write_study(tmp_path, text)).spec["allocation"]
    assert allocation == {"method": "blocked", "block_size": 4, "when": "after_pretest", "strata": [0.5]}


def test_every_mistake_is_reported_at_once_with_path_and_line(tmp_path):
    text = (
        MINIMAL.replace("    concept: bigger", "    concept: bigr")
        .replace("  - id: tutor\n    kind: tutor\n    weight: 2", "  - id: tutor\n    kind: tutor\n    weight: 0")
        .replace("prompt: {en: Predict, zh-hans: 预测}", "prompt: {en: Predict}")
        .replace("material: material/m.md", "material: material/missing.md")
        .replace("post_test: {forms: {A: [q1], B: [q2]}}", "post_test: {forms: {A: [q1], B: [q2, p1]}}")
    )
    errors = errors_of(write_study(tmp_path, text))
    shown = {str(e) for e in errors}
    expected = {
        f"items[0] (id p1).concept: unknown concept 'bigr'; did you mean 'bigger'? "
        f"(study.yaml, line {line_of(text, 'concept: bigr')})",
        f"arms[2] (id tutor).weight: must be greater than 0 (study.yaml, line {line_of(text, 'weight: 0')})",
        f"items[1] (id p2).prompt: missing translation: zh-hans (study.yaml, line {line_of(text, 'prompt: {en: Predict}')})",
        f"arms[0] (id static).material: file not found: material/missing.md (study.yaml, line {line_of(text, 'missing.md')})",
        "instruments.post_test.forms.B[1]: item 'p1' is also used in the pre-test "
        f"(study.yaml, line {line_of(text, 'B: [q2, p1]')})",
        "instruments.post_test.forms.B: must have as many items as form A (1, not 2) "
        f"(study.yaml, line {line_of(text, 'B: [q2, p1]')})",
    }
    assert expected <= shown, "\n".join(sorted(shown))
    # The bad weight is not reported a second time through allocation.block_size.
    assert len(errors) == len(expected), "\n".join(sorted(shown))
    lines = [e.line for e in errors]
    assert lines == sorted(lines)


def test_str_of_the_exception_lists_every_error():
    exc = StudyFileInvalid([SpecError("a", "is required", "study.yaml", 3), SpecError("", "is empty", "study.yaml", None)])
    assert str(exc) == "a: is required (study.yaml, line 3)\nis empty (study.yaml)"


def test_duplicate_keys_are_reported_with_their_lines(tmp_path):
    text = MINIMAL.replace("  seed: 1\n", "  seed: 1\n  seed: 2\n").replace(
        "    key: 2\n", "    key: 2\n    key: 3\n"
    )
    errors = errors_of(write_study(tmp_path, text))
    assert SpecError("target.seed", f"duplicate key (first on line {line_of(text, 'seed: 1')})",
                     "study.yaml", line_of(text, "seed: 2")) in errors
    assert SpecError("items[2].key", f"duplicate key (first on line {line_of(text, 'key: 2')})",
                     "study.yaml", line_of(text, "key: 3")) in errors


def test_unknown_key_is_refused_with_a_suggestion(tmp_path):
    text = MINIMAL.replace("kind: chat\n    weight: 1", "kind: chat\n    wieght: 1")
    errors = errors_of(write_study(tmp_path, text))
    assert errors == [SpecError("arms[1].wieght", "unknown key; did you mean 'weight'?", "study.yaml",
                                line_of(text, "wieght"))]


def test_field_of_another_item_kind_is_refused(tmp_path):
    text = MINIMAL.replace("    scale: {min: 1, max: 5}", "    scale: {min: 1, max: 5}\n    tolerance: 1")
    errors = errors_of(write_study(tmp_path, text))
    assert [str(e) for e in errors] == [
        f"items[4] (id s1).tolerance: is not used by likert items (study.yaml, line {line_of(text, 'tolerance: 1')})"
    ]


def test_missing_required_field_points_at_its_parent(tmp_path):
    text = MINIMAL.replace("recruitment: {completion_code: DONE1, no_consent_code: NOPE1}",
                           "recruitment: {completion_code: DONE1}")
    errors = errors_of(write_study(tmp_path, text))
    assert errors == [SpecError("recruitment.no_consent_code", "is required", "study.yaml",
                                line_of(text, "recruitment:"))]


def test_missing_translation_is_reported_for_nested_texts(tmp_path):
    text = MINIMAL.replace("label: {en: Bigger, zh-hans: 更大}", "label: {en: Bigger}").replace(
        "languages: [en, zh-hans]", "languages: [zh-hans, en]")
    errors = errors_of(write_study(tmp_path, text))
    assert [str(e) for e in errors] == [
        f"concepts[0] (id bigger).label: missing translation: zh-hans "
        f"(study.yaml, line {line_of(text, 'label: {en: Bigger}')})"
    ]


def test_undeclared_language_is_refused(tmp_path):
    text = MINIMAL.replace("languages: [en, zh-hans]", "languages: [en]")
    # one mistake (the language left out of `languages`), one error listing every text that gives it
    [error] = errors_of(write_study(tmp_path, text))
    assert error.path == "title.zh-hans" and error.line == line_of(text, "title:")
    assert error.message == (
        "language 'zh-hans' is not declared in languages (also given in "
        f"consent.text.zh-hans (line {line_of(text, 'consent:')}); "
        f"concepts[0] (id bigger).label.zh-hans (line {line_of(text, 'label: {en: Bigger')}); "
        f"items[1] (id p2).prompt.zh-hans (line {line_of(text, 'prompt: {en: Predict')}))")


def test_bad_cross_references_are_reported(tmp_path):
    text = MINIMAL.replace("A: [p1], B: [p2]", "A: [p1], B: [p9]").replace(
        "questionnaire: [s1, s2]", "questionnaire: [s1, s3]").replace("    key: a\n", "    key: z\n")
    shown = {str(e) for e in errors_of(write_study(tmp_path, text))}
    assert shown == {
        f"items[0] (id p1).key: unknown option 'z' (study.yaml, line {line_of(text, 'key: z')})",
        f"instruments.pre_test.forms.B[0]: unknown item 'p9' (study.yaml, line {line_of(text, '[p9]')})",
        f"instruments.questionnaire[1]: unknown item 's3' (study.yaml, line {line_of(text, '[s1, s3]')})",
    }


def test_from_target_needs_a_predict_item_and_a_target(tmp_path):
    text = MINIMAL.replace("    key: a\n", "    key: from_target\n")
    errors = errors_of(write_study(tmp_path, text))
    assert [e.message for e in errors] == ["from_target is only allowed on predict items"]

    start, end = MINIMAL.index("target:"), MINIMAL.index("items:")
    text = MINIMAL[:start] + MINIMAL[end:]
    errors = errors_of(write_study(tmp_path, text))
    assert [(e.path, e.message) for e in errors] == [("items[1].key", "from_target needs a target")]


def test_target_columns_and_predict_inputs_are_checked(tmp_path):
    text = MINIMAL.replace("features: [x, y]", "features: [x, w]")
    errors = errors_of(write_study(tmp_path, text))
    # the inputs that no longer match target.features are consequences, folded into the one error
    line = line_of(text, "input: {x: 3, y: 1}")
    assert [(e.path, e.message) for e in errors] == [
        ("target.features[1]", "not a column of d.csv (so these do not match target.features either: "
                               f"items[1] (id p2).input (line {line}); items[1] (id p2).input.y (line {line}))"),
    ]
    text = MINIMAL.replace("input: {x: 3, y: 1}", "input: {x: 3, z: 1}")
    errors = errors_of(write_study(tmp_path, text))
    assert {(e.path, e.message) for e in errors} == {
        ("items[1].input", "missing feature 'y'"),
        ("items[1].input.z", "not a feature of the target"),
    }


def test_predict_options_must_cover_every_class(tmp_path):
    text = MINIMAL.replace('options: [{id: "0", text: zero}, {id: "1", text: one}]',
                           'options: [{id: "0", text: zero}, {id: "2", text: two}]')
    errors = errors_of(write_study(tmp_path, text))
    assert [(e.path, e.message) for e in errors] == [("items[1].options", "no option for class '1'")]


def test_missing_files_are_reported(tmp_path):
    folder = write_study(tmp_path, files={"data/d.csv": None, "material/figures/f.svg": None})
    errors = errors_of(folder)
    assert SpecError("target.data", "file not found: data/d.csv", "study.yaml", line_of(MINIMAL, "data: data/d.csv")) in errors
    assert SpecError("arms[0].material", "file not found: material/figures/f.svg (image in material/m.md, line 3)",
                     "m.md", 3) in errors


def test_paths_outside_the_folder_are_refused(tmp_path):
    text = MINIMAL.replace("material: material/m.md", "material: ../secret.md")
    errors = errors_of(write_study(tmp_path, text))
    assert [e.message for e in errors] == ["must be a relative path inside the study folder: ../secret.md"]


def test_block_size_must_be_a_multiple_of_the_total_weight(tmp_path):
    text = MINIMAL.replace("block_size: 8", "block_size: 6")
    errors = errors_of(write_study(tmp_path, text))
    assert [str(e) for e in errors] == [
        f"allocation.block_size: must be a multiple of the total arm weight (4) "
        f"(study.yaml, line {line_of(text, 'block_size: 6')})"
    ]


def test_a_study_needs_an_arm_and_unique_ids(tmp_path):
    text = MINIMAL.replace("  - id: q1\n", "  - id: p1\n")
    errors = errors_of(write_study(tmp_path, text))
    assert ("items[2].id", "duplicate id 'p1' (also items[0])") in {(e.path, e.message) for e in errors}

    start, end = MINIMAL.index("arms:"), MINIMAL.index("allocation:")
    text = MINIMAL[:start] + "arms: []\n" + MINIMAL[end:]
    errors = errors_of(write_study(tmp_path, text))
    assert [(e.path, e.message) for e in errors] == [("arms", "must not be empty")]


def test_yaml_syntax_error_has_a_line(tmp_path):
    text = MINIMAL.replace("slug: tiny", "slug: [tiny")
    errors = errors_of(write_study(tmp_path, text))
    assert len(errors) == 1 and errors[0].message.startswith("invalid yaml") and errors[0].line


def test_a_slug_the_console_uses_is_refused_with_its_line(tmp_path):
    errors = errors_of(write_study(tmp_path, MINIMAL.replace("slug: tiny", "slug: upload")))
    assert [(e.path, e.line) for e in errors] == [("slug", MINIMAL.splitlines().index("slug: tiny") + 1)]
    assert "reserved" in errors[0].message


def test_missing_folder_is_reported(tmp_path):
    assert errors_of(tmp_path / "nothing")[0].message.startswith("file not found")


def test_schema_is_valid_and_the_example_validates_against_it():
    schema = study_json_schema()
    Draft202012Validator.check_schema(schema)
    yaml = YAML(typ="safe")
    raw = yaml.load((EXAMPLE / "study.yaml").read_text(encoding="utf-8"))
    assert list(Draft202012Validator(schema).iter_errors(raw)) == []


def test_schema_is_a_fresh_copy():
    schema = study_json_schema()
    schema["properties"].clear()
    assert study_json_schema()["properties"]


def test_localize_falls_back_to_english_then_the_first():
    assert localize({"en": "Hi", "zh-hans": "你好"}, "zh-hans") == "你好"
    assert localize({"en": "Hi"}, "zh-hans") == "Hi"
    assert localize({"zh-hans": "你好"}, "en") == "你好"


def test_canonical_hash_ignores_key_order():
    spec = {"b": 1, "a": {"y": "é", "x": [1, 2]}}
    reordered = copy.deepcopy({"a": {"x": [1, 2], "y": "é"}, "b": 1})
    assert canonical_hash(spec, {"f": b"1"}) == canonical_hash(reordered, {"f": b"1"})
    assert canonical_hash(spec, {"f": b"1"}) != canonical_hash(spec, {"f": b"2"})


# ---------------------------------------------------------------- the llm mapping: limits, strategies, prices

LLM_FULL = """\
    llm:
      model: slow-model
      timeout_s: 300
      ttft_s: 90
      timeouts:
        opening: {timeout_s: 60}
        learner_update: {timeout_s: 45, ttft_s: 40, idle_s: 10}
        meeting_note: {idle_s: 5}
      tool_choice: required
      structured_output: json_object
      prices: {input_per_mtok: 0.5, output_per_mtok: 1.5}"""


def with_chat_llm(block: str) -> str:
    return MINIMAL.replace("    llm: {model: small-model}", block)


def test_llm_limits_per_call_kind_over_the_arms_over_the_defaults(tmp_path):
    llm = study_file_read(write_study(tmp_path, with_chat_llm(LLM_FULL))).spec["arms"][1]["llm"]
    assert llm["timing"] == {
        "reply": {"timeout_s": 300.0, "ttft_s": 90.0, "idle_s": 30.0},
        "opening": {"timeout_s": 60.0, "ttft_s": 60.0, "idle_s": 30.0},  # the arm's ttft, cut to the kind's total
        "learner_update": {"timeout_s": 45.0, "ttft_s": 40.0, "idle_s": 10.0},
        "posttest_prediction": {"timeout_s": 300.0, "ttft_s": 90.0, "idle_s": 30.0},
        "meeting_note": {"timeout_s": 300.0, "ttft_s": 90.0, "idle_s": 5.0},
    }
    assert llm["timeout_s"] == 300.0  # the reply's total, for callers that read one limit
    assert llm["tool_choice"] == "required" and llm["structured_output"] == "json_object"
    assert llm["prices"] == {"input_per_mtok": 0.5, "output_per_mtok": 1.5}
    assert llm_limits(llm=llm, kind="learner_update") == llm["timing"]["learner_update"]


def test_a_kinds_total_is_the_default_of_its_first_token_limit(tmp_path):
    block = "    llm:\n      model: m\n      timeouts: {opening: {timeout_s: 200}}"
    timing = study_file_read(write_study(tmp_path, with_chat_llm(block))).spec["arms"][1]["llm"]["timing"]
    assert timing["opening"] == {"timeout_s": 200.0, "ttft_s": 200.0, "idle_s": 30.0}
    assert timing["reply"] == {"timeout_s": 120.0, "ttft_s": 120.0, "idle_s": 30.0}


def test_an_idle_default_longer_than_a_short_total_is_cut_to_it(tmp_path):
    block = "    llm: {model: m, timeout_s: 15}"
    timing = study_file_read(write_study(tmp_path, with_chat_llm(block))).spec["arms"][1]["llm"]["timing"]
    assert timing["reply"] == {"timeout_s": 15.0, "ttft_s": 15.0, "idle_s": 15.0}


def test_a_spec_normalised_before_the_limits_existed_reads_its_one_timeout_for_every_kind():
    old = {"model": "m", "timeout_s": 15.0}
    assert llm_limits(llm=old, kind="meeting_note") == {"timeout_s": 15.0, "ttft_s": 15.0, "idle_s": 15.0}
    with pytest.raises(ValueError):
        llm_limits(llm=old, kind="lunch")


def test_timeouts_up_to_the_maximum_are_accepted_and_beyond_refused_with_their_lines(tmp_path):
    assert LLM_TIMEOUT_MAX_S >= 300  # the issue's floor: reasoning models take minutes
    ok = with_chat_llm(f"    llm: {{model: m, timeout_s: {LLM_TIMEOUT_MAX_S}}}")
    assert study_file_read(write_study(tmp_path / "ok", ok)).spec["arms"][1]["llm"]["timeout_s"] == LLM_TIMEOUT_MAX_S
    text = with_chat_llm(
        "    llm:\n      model: m\n      timeout_s: 601\n      timeouts:\n        reply: {idle_s: 0}\n"
        "        lunch: {timeout_s: 5}"
    )
    errors = errors_of(write_study(tmp_path / "bad", text))
    assert errors == [
        SpecError("arms[1].llm.timeout_s", f"must be at most {LLM_TIMEOUT_MAX_S}", "study.yaml", line_of(text, "timeout_s: 601")),
        SpecError("arms[1].llm.timeouts.reply.idle_s", "must be greater than 0", "study.yaml", line_of(text, "reply:")),
        SpecError("arms[1].llm.timeouts.lunch", "unknown key", "study.yaml", line_of(text, "lunch:")),
    ]


def test_a_first_token_or_idle_limit_past_its_total_is_refused_with_its_line(tmp_path):
    text = with_chat_llm(
        "    llm:\n      model: m\n      timeout_s: 60\n      ttft_s: 90\n"
        "      timeouts:\n        opening:\n          timeout_s: 20\n          idle_s: 25"
    )
    errors = errors_of(write_study(tmp_path, text))
    assert errors == [
        SpecError("arms[1].llm.ttft_s", "must be at most the total timeout_s (60 s)", "study.yaml",
                  line_of(text, "ttft_s: 90")),
        SpecError("arms[1].llm.timeouts.opening.idle_s", "must be at most the total timeout_s (20 s)", "study.yaml",
                  line_of(text, "idle_s: 25")),
    ]


def test_strategies_must_be_known_and_prices_need_both_keys(tmp_path):
    text = with_chat_llm(
        "    llm:\n      model: m\n      tool_choice: always\n      structured_output: xml\n"
        "      prices: {input_per_mtok: 1}"
    )
    errors = errors_of(write_study(tmp_path, text))
    assert errors == [
        SpecError("arms[1].llm.tool_choice", "must be one of: auto, required, none", "study.yaml",
                  line_of(text, "tool_choice:")),
        SpecError("arms[1].llm.structured_output", "must be one of: json_schema, json_object, instructions",
                  "study.yaml", line_of(text, "structured_output:")),
        SpecError("arms[1].llm.prices.output_per_mtok", "is required", "study.yaml", line_of(text, "prices:")),
    ]


def test_free_prices_are_zero_not_unknown(tmp_path):
    block = "    llm: {model: m, prices: {input_per_mtok: 0, output_per_mtok: 0}}"
    llm = study_file_read(write_study(tmp_path, with_chat_llm(block))).spec["arms"][1]["llm"]
    assert llm["prices"] == {"input_per_mtok": 0.0, "output_per_mtok": 0.0}
