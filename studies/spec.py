"""Read, validate and normalise a study folder (`study.yaml` plus its assets).

Pure Python: no Django models, no scikit-learn. `study_file_read` collects every mistake it can
find (YAML, schema, cross-references, files, translations) and raises them together, each with
the path in the file and its line, so a researcher fixes a file in one pass.
"""

from __future__ import annotations

import csv
import datetime
import difflib
import functools
import hashlib
import io
import itertools
import json
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

from jsonschema import Draft202012Validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, NodeEvent, SequenceStartEvent
from ruamel.yaml.nodes import MappingNode, SequenceNode
from ruamel.yaml.scanner import RoundTripScanner

from .heldout import ANY, HELD_OUT_FRACTION, cases_shown, held_out_rule, held_out_tests, same_question

LANGUAGES = ("en", "zh-hans")
ITEM_KINDS = ("single_choice", "multi_choice", "likert", "numeric", "text", "predict")
ARM_KINDS = ("static", "chat", "agentic", "tutor")
# What `arms[].options` may hold, by arm kind (docs/study-file.md).
ARM_OPTIONS = {
    "static": ("yoked_to", "yoked_screen"),
    "chat": (),
    "agentic": ("proactive", "learner_model", "show_meeting_note"),
    "tutor": ("show_meeting_note",),
}
LEARNER_MODEL_OPTIONS = ("mismatched", "frozen")  # or true / false
# A yoked arm's screen of the transcripts it shows (docs/study-file.md): `approve` (redacted, then approved by a
# researcher) unless the study says `redact` (the automatic redaction alone).
YOKED_SCREENS = ("approve", "redact")
YOKED_SCREEN_DEFAULT = "approve"
LLM_PROVIDERS = ("openai", "anthropic")
# The longest total an attempt may be given. The broker's visibility timeout and the task limits are
# sized from it (config/settings.py, docs/chat.md "The timing budget", tests/explainers/test_timing_budget.py).
LLM_TIMEOUT_MAX_S = 600
# The prompt window every call is fitted to unless the arm says otherwise: small local servers give 4,096
# tokens a request (docs/chat.md, "Prompt size").
LLM_CONTEXT_DEFAULT_TOKENS = 4096
# The kinds of LLM call an arm makes; `llm.timeouts` may give each its own limits.
LLM_CALL_KINDS = ("reply", "opening", "learner_update", "posttest_prediction", "meeting_note")
LLM_LIMITS = ("timeout_s", "ttft_s", "idle_s")
# Every default of the limits, declared once: `ttft_s` defaults to the total it belongs to.
LLM_TIMEOUT_DEFAULT_S = 120.0
LLM_IDLE_DEFAULT_S = 30.0
LLM_TOOL_CHOICES = ("auto", "required", "none")
LLM_STRUCTURED_OUTPUTS = ("json_schema", "json_object", "instructions")

# Which task each allowed estimator solves. `studies.targets.ESTIMATORS` maps the same names
# to classes; the names live here so that validating a file needs no scikit-learn import.
ESTIMATOR_TASKS = {
    "LogisticRegression": "classification",
    "DecisionTreeClassifier": "classification",
    "RandomForestClassifier": "classification",
    "GradientBoostingClassifier": "classification",
    "LinearRegression": "regression",
    "Ridge": "regression",
    "DecisionTreeRegressor": "regression",
}

# The analysis plan (docs/study-file.md, "`analysis`: the analysis plan"). Its measures are the columns of
# analysis.measures.participant_measures, and its recorded variables participant columns of the export that can
# be covariates; both are named here so that validating a file imports no other app
# (tests/analysis/test_prereg.py checks that those columns exist).
ANALYSIS_MEASURES = ("pre", "post", "gain", "normalized_gain", "forward_sim_accuracy", "brier", "ece",
                     "time_on_task_s", "turns", "tokens", "cost_usd", "lm_accuracy", "lm_brier")
ANALYSIS_RECORDED = ("form_order", "language", "stratum", "paste_count", "hidden_ms", "visibility_changes",
                     "first_input_ms_median", "pages_reloaded")
ANALYSIS_ROLES = ("primary", "secondary")
ANALYSIS_ALTERNATIVES = ("two-sided", "greater", "less")
ANALYSIS_CORRECTIONS = ("holm", "bonferroni", "none")
ANALYSIS_CONTRAST_SETS = ("vs_reference", "all_pairs")
ANALYSIS_SCORINGS = ("mean", "sum")
ANALYSIS_ROBUST = ("none", "HC3")
ANALYSIS_ALPHA_DEFAULT = 0.05
# Questionnaire items a scale (or an outcome) can be made of: those with a number for an answer.
ANALYSIS_NUMERIC_KINDS = ("likert", "numeric")

STUDY_FILE = "study.yaml"
# Limits on a study file (docs/study-file.md, "Limits on study files"). They bound the work of reading one, so no
# upload can hold a web process: the YAML is walked event by event first and refused at the first cap it passes,
# before anything is built from it. A node is one key, value or list entry; an alias counts as every node it
# repeats, so the expanded size is what is capped, not the text's.
MAX_STUDY_BYTES = 20 * 1024 * 1024  # a folder or upload: study.yaml and every file beside it, unpacked
MAX_STUDY_FILES = 2000              # files in a folder or entries in a zip
MAX_YAML_BYTES = 512 * 1024         # study.yaml itself
MAX_YAML_NODES = 10_000             # nodes once every alias is expanded
MAX_YAML_DEPTH = 50                 # nesting, aliases expanded
MAX_YAML_ANCHORS = 200              # &anchors defined
MAX_YAML_ALIASES = 1000             # *aliases used
MAX_DATA_ROWS = 100_000             # rows of an sklearn target's CSV
MAX_MATERIAL_BYTES = 1024 * 1024    # an arm's markdown material file
SCHEMA_VERSION = 1
FROM_TARGET = "from_target"
DEFAULT_COMPLETION_URL = "https://app.prolific.com/submissions/complete?cc={code}"
DEFAULT_MAX_LENGTH = 2000
DEFAULT_STRATA = (0.5,)
FOLD_SHOWN = 5  # the other places of one mistake listed in its error

SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{1,62}$"
# Words the researcher console uses in its own addresses (/console/<word>/): a study cannot take them.
RESERVED_SLUGS = ("login", "logout", "password", "upload")
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
OPTION_ID_PATTERN = r"^\S{1,64}$"
CODE_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
# recruitment.pid_pattern: the whole recruiter id must match (re.fullmatch). Prolific ids are 24 hex digits.
PID_PATTERNS = {"prolific": r"[0-9a-fA-F]{24}", "none": r"[A-Za-z0-9._~-]{1,128}"}


def pid_pattern_of(spec: dict) -> str:
    """Return the regular expression a recruiter id of this (normalised) spec must match in full."""
    recruitment = spec.get("recruitment") or {}
    return recruitment.get("pid_pattern") or PID_PATTERNS.get(recruitment.get("platform", "prolific"), PID_PATTERNS["none"])


_PATTERN_MESSAGES = {
    SLUG_PATTERN: "must be 2-63 lowercase letters, digits or hyphens, starting with a letter or digit",
    ID_PATTERN: "must be 1-64 letters, digits, '_' or '-', starting with a letter or digit",
    OPTION_ID_PATTERN: "must be 1-64 characters without spaces",
    CODE_PATTERN: "must be 1-64 letters, digits, '_' or '-'",
    r"\{code\}": "must contain {code}",
}

# Fields an item may have, by kind (besides id, kind, concept and prompt).
ITEM_FIELDS = {
    "single_choice": ("options", "key"),
    "multi_choice": ("options", "key"),
    "likert": ("scale",),
    "numeric": ("key", "tolerance", "unit"),
    "text": ("max_length",),
    "predict": ("input", "options", "key", "tolerance", "confidence"),
}
_ITEM_REQUIRED = {
    "single_choice": ["options"],
    "multi_choice": ["options"],
    "likert": ["scale"],
    "numeric": ["key", "tolerance"],
    "text": [],
    "predict": ["input"],
}
_COMMON_ITEM_FIELDS = ("id", "kind", "concept", "prompt", "required")


@dataclass(frozen=True)
class SpecError:
    """One mistake. `path` is the field as data (`items[25].prompt`, what the API returns); `named` the same path
    with the id of every list entry that has one (`items[25] (id post_b3).prompt`), which the text shows."""

    path: str
    message: str
    file: str = STUDY_FILE
    line: int | None = None
    named: str = field(default="", compare=False)

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}, line {self.line}"
        path = self.named or self.path
        head = f"{path}: " if path else ""
        return f"{head}{self.message} ({where})"


class StudyFileInvalid(Exception):
    """The study folder has mistakes; `errors` lists all of them."""

    def __init__(self, errors: list[SpecError]):
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


@dataclass(frozen=True)
class StudyFile:
    spec: dict
    assets: dict[str, bytes]
    sha256: str
    source: str


# --------------------------------------------------------------------------- public functions


def study_file_read(path) -> StudyFile:
    """Read the study folder (or its study.yaml); raise StudyFileInvalid with every error found."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    yaml_path = folder / STUDY_FILE
    if not yaml_path.is_file():
        raise StudyFileInvalid([SpecError("", f"file not found: {yaml_path}", STUDY_FILE, None)])
    size = yaml_path.stat().st_size
    if size > MAX_YAML_BYTES:  # refused before it is read
        raise StudyFileInvalid([_yaml_too_big(size)])
    try:
        text = yaml_path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StudyFileInvalid([SpecError("", f"is not utf-8 text ({exc.reason})")]) from None
    assets = _assets_read(folder)
    spec = study_text_parse(text, assets)
    return StudyFile(spec=spec, assets=assets, sha256=canonical_hash(spec, assets), source=str(folder))


def study_text_parse(text: str, assets: dict[str, bytes]) -> dict:
    """Validate the text of a study.yaml against its assets; return the normalised spec."""
    yaml_caps_check(text)
    doc, errors = _yaml_load(text)
    if doc is None:
        raise StudyFileInvalid(errors)
    if not isinstance(doc, dict):
        raise StudyFileInvalid(errors + [SpecError("", "must be a mapping of keys to values", line=1)])
    data = _plain(doc)
    errors += _schema_errors(data, doc)
    checker = _Checker(data, doc, assets)
    try:
        checker.run()
    except (TypeError, KeyError, AttributeError, ValueError, IndexError):
        # The semantic checks read defensively; if a malformed part still trips them, the
        # schema has already reported it, so keep what was found.
        if not errors:
            raise
    errors += checker.errors
    if errors:
        raise StudyFileInvalid(_sorted_unique([_with_ids(e, data) for e in errors]))
    return _normalise(data)


def texts_held_out_errors(spec: dict, assets: dict[str, bytes]) -> list[SpecError]:
    """The held-out check of the material, system prompts and practice questions, run on a stored spec (a draft
    stored before that check existed is refused at launch as its upload would be now; no line numbers, as the
    YAML text is not kept)."""
    checker = _Checker(spec, None, assets)
    checker.check_target()  # reads the target's data rows, which set the held-out distance
    checker.errors.clear()
    checker.check_texts_held_out()
    return checker.errors


def analysis_plan_parse(text: str, *, columns: list[str], arms: list[str] | None = None,
                        file: str = "plan.yaml") -> dict:
    """Validate a standalone plan file (`data:` and `analysis:`) for a table with `columns`; return it normalised.

    Every name of the plan must be a column; the study file's checks run with each column standing in for
    a numeric questionnaire item (an attention column holds 1 for a pass). `data.arms` (else `arms`, the
    arm column's values) are the arms. Raises StudyFileInvalid, each error with its line in `file`.
    """
    yaml_caps_check(text)
    doc, errors = _yaml_load(text)
    if doc is not None and not isinstance(doc, dict):
        errors.append(SpecError("", "must be a mapping of keys to values", line=1))
    if errors:
        raise StudyFileInvalid([SpecError(e.path, e.message, file, e.line) for e in errors])
    data = _plain(doc)
    setting = _obj({"arm": _id("the column holding the arm"), "arms": {"type": "array", "items": _id("an arm"),
                    "minItems": 1, "uniqueItems": True},
                    "precision": {"type": "object", "additionalProperties": {"type": "number", "exclusiveMinimum": 0}}})
    schema = _obj({"data": setting, "analysis": _analysis_schema()}, required=("analysis",))
    errors = [e for error in Draft202012Validator(schema).iter_errors(data) for e in _schema_error(error, doc)]
    settings = data.get("data") if isinstance(data.get("data"), dict) else {}
    arm_column = settings.get("arm", "arm")
    arm_ids = settings.get("arms") or list(arms or [])
    fake = {"arms": [{"id": a} for a in arm_ids if isinstance(a, str)],
            "items": [{"id": c, "kind": "numeric", "key": 1} for c in columns if c != arm_column],
            "instruments": {"questionnaire": [c for c in columns if c != arm_column]},
            "analysis": data.get("analysis")}
    checker = _Checker(fake, doc, {})
    if not errors:
        checker.check_analysis()
        checker.folds_report()
    plan = _mapping(data.get("analysis"))
    named = [(("data", "arm"), arm_column)] + [(("data", "precision", k), k) for k in _mapping(settings.get("precision"))]
    named += [(("analysis", "outcomes", i, "measure"), o.get("measure")) for i, o in _dicts(plan.get("outcomes"))]
    named += [(("analysis", "covariates", j), c) for j, c in enumerate(plan.get("covariates") or [])]
    scale_ids = {s.get("id") for _, s in _dicts(plan.get("scales"))}
    for path, name in named:
        if isinstance(name, str) and name not in columns and name not in scale_ids:
            errors.append(SpecError(_path_str(path), f"'{name}' is not a column of the table", line=_line(doc, path)))
    errors += [e for e in checker.errors if e.path not in {e.path for e in errors}]  # one error per name
    if not errors and len(arm_ids) < 2:
        errors.append(SpecError("data.arms", "the table needs at least two arms", line=_line(doc, ("data",))))
    if errors:
        raise StudyFileInvalid([SpecError(e.path, e.message, file, e.line) for e in _sorted_unique(errors)])
    return {"data": {"arm": arm_column, "arms": list(arm_ids), "precision": dict(settings.get("precision") or {})},
            "analysis": _normalise_analysis(data["analysis"], fake["arms"])}


def study_json_schema() -> dict:
    """Return the JSON Schema (draft 2020-12) of study.yaml as written, before normalisation."""
    return json.loads(json.dumps(_SCHEMA))


def canonical_hash(spec: dict, assets: dict[str, bytes]) -> str:
    """Return the sha256 hex of the canonical JSON of the spec and the hashes of its assets."""
    payload = {"spec": spec, "assets": {p: hashlib.sha256(b).hexdigest() for p, b in assets.items()}}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def localize(value: dict, lang: str) -> str:
    """Return the text of a normalised localised value in `lang`, else English, else the first."""
    if not value:
        return ""
    if isinstance(value, str):
        return value
    if lang in value:
        return value[lang]
    if "en" in value:
        return value["en"]
    return next(iter(value.values()))


# --------------------------------------------------------------------------- the JSON Schema


def _text(description: str) -> dict:
    return {
        "description": description + " A string (the same in every language) or a mapping "
        "from language code to string that covers every declared language.",
        "type": ["string", "object"],
        "minLength": 1,
        "minProperties": 1,
        "propertyNames": {"enum": list(LANGUAGES)},
        "additionalProperties": {"type": "string", "minLength": 1},
    }


def _obj(properties: dict, required=(), description: str = "", **extra) -> dict:
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    if description:
        schema["description"] = description
    schema.update(extra)
    return schema


def _display_schema() -> dict:
    return _obj(
        {"model_links": {"type": "boolean",
                         "description": "render links the model writes as links (default false: as plain text)"}},
        description="how model output is shown, for the study or one arm; see docs/study-file.md",
    )


def _id(description: str) -> dict:
    return {"type": "string", "pattern": ID_PATTERN, "description": description}


def _item_id_list(description: str) -> dict:
    return {"type": "array", "items": _id("an item id"), "description": description}


def _forms(description: str) -> dict:
    forms = _obj(
        {"A": _item_id_list("items of form A, in order"), "B": _item_id_list("items of form B, in order")},
        required=("A", "B"),
    )
    return _obj({"forms": forms}, required=("forms",), description=description)


def _item_schema() -> dict:
    option = _obj(
        {
            "id": {"type": ["string", "integer"], "pattern": OPTION_ID_PATTERN,
                   "description": "the option's id, used by `key`"},
            "text": _text("What the participant reads."),
        },
        required=("id", "text"),
    )
    properties = {
        "id": _id("unique item id"),
        "kind": {"enum": list(ITEM_KINDS)},
        "concept": _id("the concept this item measures"),
        "prompt": _text("The question, in markdown."),
        "required": {"type": "boolean", "description": "whether an answer is needed to go on (default true)"},
        "options": {"type": "array", "items": option, "minItems": 2},
        "key": {
            "type": ["string", "integer", "number", "array"],
            "items": {"type": ["string", "integer"]},
            "description": "the correct answer: an option id (single_choice, predict on a "
            "classifier), a list of option ids (multi_choice), a number (numeric, predict on a "
            "regressor) or `from_target` (predict)",
        },
        "tolerance": {"type": "number", "minimum": 0},
        "unit": _text("The unit shown after the numeric input."),
        "scale": _obj(
            {
                "min": {"type": "integer"},
                "max": {"type": "integer"},
                "min_label": _text("Label of the lowest point."),
                "max_label": _text("Label of the highest point."),
            },
            required=("min", "max"),
        ),
        "max_length": {"type": "integer", "minimum": 1, "maximum": 100000},
        "input": {
            "type": "object",
            "additionalProperties": {"type": ["number", "string", "boolean"]},
            "description": "the case shown to the participant: feature -> value",
        },
        "confidence": {"type": "boolean"},
    }
    kinds = []
    for kind in ITEM_KINDS:
        then = {"propertyNames": {"enum": list(_COMMON_ITEM_FIELDS + ITEM_FIELDS[kind])}}
        if _ITEM_REQUIRED[kind]:
            then["required"] = _ITEM_REQUIRED[kind]
        if kind == "single_choice":
            then["properties"] = {"key": {"type": ["string", "integer"]}}
        elif kind == "multi_choice":
            then["properties"] = {"key": {"type": "array", "minItems": 1, "uniqueItems": True}}
        elif kind == "numeric":
            then["properties"] = {"key": {"type": "number"}}
        elif kind == "predict":
            then["properties"] = {"key": {"type": ["string", "integer", "number"]}}
        kinds.append({"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]}, "then": then})
    return _obj(properties, required=("id", "kind", "prompt"), allOf=kinds)


def _llm_limits_schema() -> dict:
    seconds = {"type": "number", "exclusiveMinimum": 0, "maximum": LLM_TIMEOUT_MAX_S}
    return {
        "timeout_s": {**seconds, "description": "total limit of one attempt, in seconds"},
        "ttft_s": {**seconds, "description": "limit to the first token (text or tool call); default: the total"},
        "idle_s": {**seconds, "description": "limit on a silence between two chunks once the first token came"},
    }


def _llm_schema() -> dict:
    """A language model: the one behind a chat or agentic arm, or an `llm` target."""
    return _obj(
        {
            "provider": {"enum": list(LLM_PROVIDERS)},
            "model": {"type": "string", "minLength": 1},
            "base_url": {"type": ["string", "null"], "pattern": r"^https?://"},
            "params": {
                "type": "object",
                "additionalProperties": {"type": ["number", "string", "boolean"]},
                "description": "passed to the provider: temperature, max_tokens, top_p, ...",
            },
            "prices": _obj(
                {
                    "input_per_mtok": {"type": "number", "minimum": 0},
                    "output_per_mtok": {"type": "number", "minimum": 0},
                },
                required=("input_per_mtok", "output_per_mtok"),
                description="US$ per million tokens; absent: the cost is unknown",
            ),
            **_llm_limits_schema(),
            "timeouts": _obj(
                {kind: _obj(_llm_limits_schema()) for kind in LLM_CALL_KINDS},
                description="the limits of one kind of call, over those above",
            ),
            "tool_choice": {"enum": list(LLM_TOOL_CHOICES)},
            "structured_output": {"enum": list(LLM_STRUCTURED_OUTPUTS)},
            "max_retries": {"type": "integer", "minimum": 0, "maximum": 5},
            "context_tokens": {"type": "integer", "minimum": 512},
        },
        required=("model",),
        description="a language model; keys come from the environment, never from the file",
    )


def _analysis_schema() -> dict:
    """The analysis plan; the names it uses are checked by `_Checker.check_analysis`."""
    outcome = _obj(
        {
            "id": _id("unique outcome id, e.g. learning"),
            "measure": {"type": "string", "minLength": 1,
                        "description": "a measure (post, gain, ...), a scale of analysis.scales or a likert or "
                                       "numeric questionnaire item"},
            "role": {"enum": list(ANALYSIS_ROLES)},
            "alternative": {"enum": list(ANALYSIS_ALTERNATIVES),
                            "description": "the hypothesis about a - b in every contrast [a, b] (default two-sided)"},
            "confirmatory": {"type": "boolean", "description": "default: true for a primary outcome, else false"},
        },
        required=("id", "measure", "role"),
    )
    scale = _obj(
        {
            "id": _id("unique scale id, usable as an outcome's measure or a covariate"),
            "items": {"type": "array", "items": _id("a likert or numeric questionnaire item"), "minItems": 2,
                      "uniqueItems": True},
            "scoring": {"enum": list(ANALYSIS_SCORINGS), "description": "the mean (default) or sum of the items"},
            "reverse": {"type": "array", "items": _id("a likert item of the scale"), "uniqueItems": True,
                        "description": "reverse-keyed items, scored min + max - answer"},
        },
        required=("id", "items"),
    )
    return _obj(
        {
            "outcomes": {"type": "array", "items": outcome, "minItems": 1},
            "scales": {"type": "array", "items": scale},
            "covariates": {"type": "array", "items": _id("a measure, scale, questionnaire item or recorded variable"),
                           "uniqueItems": True},
            "reference_arm": _id("the arm the others are compared with (default: the first arm)"),
            "contrasts": {
                "type": ["string", "array"], "minItems": 1,
                "items": {"type": "array", "items": _id("an arm id")},
                "if": {"type": "string"}, "then": {"enum": list(ANALYSIS_CONTRAST_SETS)},
                "description": "vs_reference (default), all_pairs, or a list of [arm, arm] pairs (a - b)",
            },
            "alpha": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.5},
            "correction": {"enum": list(ANALYSIS_CORRECTIONS)},
            "robust": {"enum": list(ANALYSIS_ROBUST),
                       "description": "HC3: heteroscedasticity-robust standard errors"},
            "exclusions": _obj(
                {
                    "attention_items": {"type": "array", "items": _id("a scored questionnaire item"),
                                        "uniqueItems": True},
                    "min_seconds": {"type": "integer", "minimum": 0},
                },
                description="who is left out of the analysis besides bots and pilots (always)",
            ),
        },
        required=("outcomes",),
        description="the analysis plan: outcomes, scales, covariates, contrasts, alpha, correction, exclusions",
    )


def _build_schema() -> dict:
    scalar = {"type": ["string", "number", "boolean", "null"]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://teachback.invalid/schema/study-1.json",
        "title": "Teachback study file (study.yaml)",
        "$defs": {"llm": _llm_schema()},
        "type": "object",
        "additionalProperties": False,
        "required": [
            "schema_version", "slug", "title", "languages", "consent", "recruitment",
            "items", "instruments", "arms", "debrief",
        ],
        "properties": {
            "schema_version": {"const": SCHEMA_VERSION},
            "slug": {"type": "string", "pattern": SLUG_PATTERN},
            "title": _text("The study's title."),
            "languages": {
                "type": "array", "items": {"enum": list(LANGUAGES)}, "minItems": 1, "uniqueItems": True,
                "description": "languages offered; the first is the default",
            },
            "consent": _obj(
                {"version": {"type": "string", "minLength": 1}, "text": _text("Consent text, markdown.")},
                required=("version", "text"),
            ),
            "recruitment": _obj(
                {
                    "platform": {"enum": ["prolific", "none"]},
                    "completion_code": {"type": "string", "pattern": CODE_PATTERN},
                    "no_consent_code": {"type": "string", "pattern": CODE_PATTERN},
                    "completion_url": {
                        "type": ["string", "null"], "pattern": r"\{code\}",
                        "description": "where a finished participant is sent; null: show the code on the last page",
                    },
                    "allow_without_pid": {"type": "boolean"},
                    "pid_pattern": {
                        "type": "string", "minLength": 1, "maxLength": 200,
                        "description": "a regular expression the whole recruiter id must match; default: 24 hex "
                                       "digits on Prolific, URL-safe characters (1-128) otherwise",
                    },
                },
                required=("completion_code", "no_consent_code"),
            ),
            "withdrawal": _obj({"data": {"enum": ["keep", "delete"]}}),
            "budget": _obj(
                {"max_cost_usd": {"type": "number", "exclusiveMinimum": 0,
                                  "description": "the study pauses when its LLM calls have cost this much (US$)"}},
                description="caps for the whole study; see docs/study-file.md",
            ),
            "concepts": {
                "type": "array",
                "items": _obj(
                    {"id": _id("unique concept id"), "label": _text("Short name."),
                     "description": _text("What the concept says about the target.")},
                    required=("id", "label"),
                ),
            },
            "target": {
                "type": ["object", "null"],
                "additionalProperties": False,
                "required": ["kind", "features"],
                "properties": {
                    "kind": {"enum": ["sklearn", "llm"]},
                    "estimator": {"enum": list(ESTIMATOR_TASKS)},
                    "params": {"type": "object", "additionalProperties": scalar},
                    "seed": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
                    "data": {"type": "string", "minLength": 1},
                    "features": {"type": "array", "items": {"type": "string", "minLength": 1},
                                 "minItems": 1, "uniqueItems": True},
                    "label": {"type": "string", "minLength": 1},
                    "feature_labels": {"type": "object", "additionalProperties": _text("Feature name.")},
                    "prompt_template": {
                        "type": "string", "minLength": 1,
                        "description": "llm: the question put to the model, with {feature} placeholders",
                    },
                    "llm": {"$ref": "#/$defs/llm"},
                    "held_out": _obj(
                        {
                            "fraction": {"type": "number", "minimum": 0, "maximum": 1,
                                         "description": "a feature's default tolerance, as a fraction of its "
                                                        f"range (default {HELD_OUT_FRACTION})"},
                            "tolerance": {
                                "type": "object",
                                "additionalProperties": {"type": ["number", "string"], "minimum": 0},
                                "description": "feature -> the largest difference still counted as the same "
                                               "value (a number), or `any` (the feature is not compared)",
                            },
                        },
                        description="how near a case must be to a test case to count as it (docs/study-file.md)",
                    ),
                },
                "allOf": [
                    {
                        "if": {"properties": {"kind": {"const": "sklearn"}}, "required": ["kind"]},
                        "then": {
                            "required": ["estimator", "data", "label"],
                            "propertyNames": {"not": {"enum": ["prompt_template", "llm"]}},
                        },
                    },
                    {
                        "if": {"properties": {"kind": {"const": "llm"}}, "required": ["kind"]},
                        "then": {
                            "required": ["prompt_template", "llm"],
                            "propertyNames": {"not": {"enum": ["estimator", "params", "seed", "data", "label"]}},
                        },
                    },
                ],
            },
            "items": {"type": "array", "items": _item_schema(), "minItems": 1},
            "instruments": _obj(
                {
                    "pre_test": _forms("the test before the explanation"),
                    "post_test": _forms("the test after the explanation"),
                    "questionnaire": _item_id_list("items asked after the post-test"),
                    "practice": _item_id_list(
                        "the tutor's bank of check questions: scored items with a concept, used in no test"
                    ),
                },
                required=("pre_test", "post_test"),
            ),
            "arms": {
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    {
                        "id": _id("unique arm id"),
                        "kind": {"enum": list(ARM_KINDS)},
                        "weight": {"type": "integer", "exclusiveMinimum": 0},
                        "label": _text("Shown to researchers only."),
                        "material": {
                            "type": ["string", "object"],
                            "minLength": 1,
                            "minProperties": 1,
                            "propertyNames": {"enum": list(LANGUAGES)},
                            "additionalProperties": {"type": "string", "minLength": 1},
                            "description": "markdown file: one path, or language -> path",
                        },
                        "limits": _obj(
                            {
                                "minutes": {"type": "number", "exclusiveMinimum": 0},
                                "turns": {"type": "integer", "exclusiveMinimum": 0},
                                "tokens": {"type": "integer", "exclusiveMinimum": 0},
                                "min_seconds": {"type": "integer", "minimum": 0},
                            }
                        ),
                        "options": {"type": "object", "description": "by arm kind: see docs/study-file.md"},
                        "budget": _obj(
                            {
                                "max_completers": {"type": "integer", "exclusiveMinimum": 0},
                                "max_cost_usd": {"type": "number", "exclusiveMinimum": 0},
                                "max_tokens_per_participant": {"type": "integer", "exclusiveMinimum": 0},
                            },
                            description="caps of this arm: allocation stops at them; see docs/study-file.md",
                        ),
                        "display": _display_schema(),
                        "page": _obj(
                            {
                                "heading": _text("The chat page's heading."),
                                "instructions": _text("What the participant is told to do on the chat page."),
                                "placeholder": _text("The hint shown in the empty message box."),
                            },
                            description="the chat page's texts for this arm (default: what fits its kind); "
                                        "see docs/study-file.md",
                        ),
                        "system_prompt": _text("The explainer's instructions (never shown to participants)."),
                        "llm": {"$ref": "#/$defs/llm"},
                    },
                    required=("id", "kind"),
                    allOf=[
                        {
                            "if": {"properties": {"kind": {"const": "static"}}, "required": ["kind"]},
                            "then": {"required": ["material"]},
                        },
                        {
                            "if": {"properties": {"kind": {"enum": ["chat", "agentic"]}}, "required": ["kind"]},
                            "then": {"required": ["llm"]},
                        },
                    ],
                ),
            },
            "allocation": _obj(
                {
                    "method": {"enum": ["blocked", "simple"]},
                    "block_size": {"type": "integer", "exclusiveMinimum": 0},
                    "when": {"enum": ["consent", "after_pretest"]},
                    "strata": {
                        "type": "array", "minItems": 1,
                        "items": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                    },
                }
            ),
            "debrief": _text("Shown at the end, markdown."),
            "display": _display_schema(),
            "analysis": _analysis_schema(),
        },
    }


_SCHEMA = _build_schema()
_VALIDATOR = Draft202012Validator(_SCHEMA)


# --------------------------------------------------------------------------- YAML and lines


def yaml_caps_check(text: str) -> None:
    """Raise StudyFileInvalid if the text passes a limit on study files; cheap and bounded by the limits.

    Walks the parser's events once, builds nothing, and stops at the first cap passed, with the path and
    line where it was passed: the size in bytes, the nodes once every alias is expanded, the nesting
    (aliases expanded), the anchors and aliases, and an alias inside the node it names (endless).
    """
    size = len(text.encode("utf-8"))
    if size > MAX_YAML_BYTES:
        raise StudyFileInvalid([_yaml_too_big(size)])
    error = _yaml_events_check(text)
    if error is not None:
        raise StudyFileInvalid([error])


class _FlowTooDeep(MarkedYAMLError):
    pass


class _GuardScanner(RoundTripScanner):
    """The round-trip scanner, refusing `[` and `{` nested past the limit as soon as it scans them: its look-ahead
    for a key after each one costs the square of the brackets open (a line of 1,000 took a second)."""

    def fetch_flow_collection_start(self, TokenClass, to_push) -> None:  # noqa: N803 (ruamel's name)
        if len(self.flow_context) >= MAX_YAML_DEPTH:
            raise _FlowTooDeep(None, None, f"is nested more than {MAX_YAML_DEPTH} levels deep", self.reader.get_mark())
        super().fetch_flow_collection_start(TokenClass, to_push)


class _Frame:
    """An open sequence or mapping while the events are walked."""

    __slots__ = ("anchor", "is_seq", "started_at", "children", "key", "height")

    def __init__(self, anchor, is_seq: bool, started_at: int):
        self.anchor, self.is_seq, self.started_at = anchor, is_seq, started_at
        self.children, self.key, self.height = 0, None, 0


@functools.lru_cache(maxsize=8)  # an upload is checked before its slug is read, then again when it is validated
def _yaml_events_check(text: str) -> SpecError | None:
    anchors: dict = {}  # anchor -> (nodes, height) of the node it names, once that node has ended
    stack: list[_Frame] = []
    nodes = n_anchors = n_aliases = 0

    def refuse(event, message: str) -> SpecError:
        return SpecError(_frames_path(stack), message, line=event.start_mark.line + 1)

    yaml = YAML(typ="rt")
    yaml.Scanner = _GuardScanner
    try:
        for event in yaml.parse(io.StringIO(text)):
            if isinstance(event, CollectionEndEvent):
                frame = stack.pop()
                height = frame.height + 1
                if frame.anchor is not None:
                    anchors[frame.anchor] = (nodes - frame.started_at, height)
                if stack:
                    stack[-1].height = max(stack[-1].height, height)
                continue
            if not isinstance(event, NodeEvent):
                continue
            parent = stack[-1] if stack else None
            if parent is not None:
                if not parent.is_seq and parent.children % 2 == 0:  # a key: the path goes on with it
                    parent.key = event.value if isinstance(getattr(event, "value", None), str) else None
                parent.children += 1
            if isinstance(event, AliasEvent):
                n_aliases += 1
                if n_aliases > MAX_YAML_ALIASES:
                    return refuse(event, f"uses more than {MAX_YAML_ALIASES} aliases (*name); the limit keeps a "
                                         "study file quick to read")
                if any(f.anchor == event.anchor for f in stack):
                    return refuse(event, f"the alias *{event.anchor} is inside the node it names, which never ends")
                count, height = anchors.get(event.anchor, (1, 1))  # an unknown alias is reported by the parser
            else:
                if event.anchor is not None:
                    n_anchors += 1
                    if n_anchors > MAX_YAML_ANCHORS:
                        return refuse(event, f"defines more than {MAX_YAML_ANCHORS} anchors (&name); the limit "
                                             "keeps a study file quick to read")
                count, height = 1, 1
            nodes += count
            if nodes > MAX_YAML_NODES:
                return refuse(event, f"the file grows past {MAX_YAML_NODES:,} nodes here (keys, values and list "
                                     "entries, each alias counted as all it repeats); write it shorter, or use "
                                     "fewer aliases")
            if len(stack) + height > MAX_YAML_DEPTH:
                return refuse(event, f"is nested more than {MAX_YAML_DEPTH} levels deep (aliases expanded)")
            if parent is not None:
                parent.height = max(parent.height, height)
            if isinstance(event, CollectionStartEvent):
                stack.append(_Frame(event.anchor, isinstance(event, SequenceStartEvent), nodes - 1))
            elif not isinstance(event, AliasEvent) and event.anchor is not None:  # an anchored scalar
                anchors[event.anchor] = (1, 1)
    except _FlowTooDeep as exc:  # the scanner is ahead of the events: the path is where they had got to
        return SpecError(_frames_path(stack), f"{exc.problem} (aliases expanded)", line=exc.problem_mark.line + 1)
    except MarkedYAMLError as exc:
        return _yaml_syntax_error(exc, text)
    except YAMLError as exc:  # e.g. a control character the reader refuses
        return _yaml_reader_error(exc, text)
    return None


def _frames_path(stack: list[_Frame]) -> str:
    path = [("?" if f.key is None else f.key) if not f.is_seq else max(f.children - 1, 0) for f in stack]
    if len(path) > 12:  # a path as deep as the nesting refused says nothing more
        path = path[:6] + ["…"] + path[-5:]
    return _path_str(path)


def _yaml_too_big(size: int) -> SpecError:
    return SpecError("", f"is {size:,} bytes; the limit for {STUDY_FILE} is {MAX_YAML_BYTES:,} bytes "
                         f"({_size_text(MAX_YAML_BYTES)}; long texts can go in material files)")


def _size_text(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB" if size >= 1024 * 1024 else f"{size / 1024:.0f} KB"


def _yaml_reader_error(exc: YAMLError, text: str) -> SpecError:
    position = getattr(exc, "position", None)
    line = text[:position].count("\n") + 1 if isinstance(position, int) else None
    character = getattr(exc, "character", None)
    if isinstance(character, str) and len(character) == 1:
        character = ord(character)
    shown = f" ({character:#06x})" if isinstance(character, int) else ""
    return SpecError("", f"invalid yaml: a character YAML does not allow{shown}", line=line)


def _yaml_load(text: str) -> tuple[object, list[SpecError]]:
    """Parse YAML; report every duplicate key (not just the first) and syntax errors.

    Call `yaml_caps_check` first: the walk over the composed nodes expands every alias.
    """
    errors: list[SpecError] = []
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = True  # each duplicate is reported below, with both lines
    try:
        root = yaml.compose(io.StringIO(text))
    except MarkedYAMLError as exc:
        return None, [_yaml_syntax_error(exc, text)]
    except YAMLError as exc:
        return None, [_yaml_reader_error(exc, text)]
    if root is None:
        return None, [SpecError("", "is empty")]
    _duplicate_keys(root, (), errors)
    try:  # from the nodes already composed: the text is parsed once
        doc = yaml.constructor.construct_document(root)
    except MarkedYAMLError as exc:
        return None, errors + [_yaml_syntax_error(exc, text)]
    return doc, errors


def _yaml_syntax_error(exc: MarkedYAMLError, text: str = "") -> SpecError:
    """The parser's error in plain words: the line, the line or key above it, and what is probably wrong."""
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "invalid yaml"
    line = mark.line + 1 if mark else None
    explained = _YamlLines(text).explain(exc, line) if text and line else None
    if explained is None:
        return SpecError("", f"invalid yaml: {problem}", line=line)
    line, message = explained
    return SpecError("", f"invalid yaml: line {line}: {message}", line=line)


_BLOCK_SCALAR = re.compile(r"(?:^|:\s|-\s)[|>][-+0-9]*\s*(?:#.*)?$")
_KEY = re.compile(r"^(\s*(?:-\s+)*)([^\s#'\"{}\[\],&*!|>%@`][^:#]*?|\"[^\"]*\"|'[^']*')\s*:(?:\s|$)")


class _YamlLines:
    """The lines of a YAML text that failed to parse, read just enough to say what is probably wrong."""

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.content = set()  # 1-based numbers of the lines YAML reads as structure (not blank, comment, text)
        block_indent = None
        for number, line in enumerate(self.lines, start=1):
            stripped = line.strip()
            indent = len(line) - len(line.lstrip(" "))
            if block_indent is not None:
                if not stripped or indent > block_indent:
                    continue
                block_indent = None
            if not stripped or stripped.startswith("#"):
                continue
            self.content.add(number)
            if _BLOCK_SCALAR.search(line.split(" #")[0].rstrip()):
                block_indent = indent

    def text(self, number: int) -> str:
        return self.lines[number - 1] if 0 < number <= len(self.lines) else ""

    def start(self, number: int) -> int:
        """The column the line starts at (a `- ` counts as where the dash is)."""
        line = self.text(number)
        return len(line) - len(line.lstrip(" "))

    def key_column(self, number: int) -> int:
        """The column of the line's first key or value, after any `- `."""
        line = self.text(number)
        match = re.match(r"^(\s*(?:-\s+)*)", line)
        return len(match.group(1))

    def above(self, number: int) -> int | None:
        return next((n for n in range(number - 1, 0, -1) if n in self.content), None)

    def container(self, number: int, column: int) -> int | None:
        """The nearest line above that starts left of `column`: the mapping or list the line is in."""
        return next((n for n in range(number - 1, 0, -1) if n in self.content and self.start(n) < column), None)

    def section(self, number: int) -> str:
        """" (in `arms:`)" for the top-level key the line is under, else ""."""
        top = next((n for n in range(number, 0, -1) if n in self.content and self.start(n) == 0), None)
        key = _KEY.match(self.text(top)) if top else None
        return f" (in `{key.group(2).strip()}:`)" if key and top != number else ""

    def shown(self, number: int) -> str:
        text = self.text(number).strip()
        return f"`{text if len(text) <= 40 else text[:37] + '...'}` (line {number})"

    def unclosed_quote(self, until: int) -> int | None:
        """The first line before `until` that opens a quoted value and does not close it."""
        for number in sorted(n for n in self.content if n <= until):
            line = self.text(number)
            key = _KEY.match(line)
            rest = line[key.end():] if key else re.sub(r"^\s*(?:-\s+)*", "", line)
            rest = rest.lstrip()
            if not rest or rest[0] not in "'\"":
                continue
            quote, i, closed = rest[0], 1, False
            while i < len(rest):
                if quote == '"' and rest[i] == "\\":
                    i += 2
                    continue
                if rest[i] == quote:
                    if quote == "'" and rest[i + 1:i + 2] == "'":
                        i += 2
                        continue
                    closed = True
                    break
                i += 1
            if not closed:
                return number
        return None

    def explain(self, exc: MarkedYAMLError, line: int) -> tuple[int, str] | None:
        problem, context = exc.problem or "", exc.context or ""
        column = exc.problem_mark.column if exc.problem_mark else 0
        quote = self.unclosed_quote(line)
        if quote is not None and quote != line or (quote == line and "mapping values" not in problem):
            mark = self.text(quote).lstrip().split(":", 1)[-1].lstrip()[:1] or '"'
            return quote, (f"the quote ({mark}) opened on this line{self.section(quote)} is not closed: close it "
                           f"with {mark} at the end of the value (YAML read on to line {line} looking for it)")
        if "'\\t'" in problem or "\\t" in problem:
            return line, (f"a tab character (column {column + 1}){self.section(line)}: YAML indents with spaces "
                          "only; replace the tab with spaces")
        if "flow sequence" in context or "flow mapping" in context:
            opened = exc.context_mark.line + 1 if exc.context_mark else line
            bracket, close = ("[", "]") if "sequence" in context else ("{", "}")
            return opened, (f"the `{bracket}` opened on this line{self.section(opened)} is not closed: close it with "
                            f"`{close}` (YAML reached {self.shown(line)} still inside it)")
        if "undefined alias" in problem:
            name = problem.split("'")[1] if "'" in problem else ""
            anchors = re.findall(r"&([\w-]+)", "\n".join(self.lines[:line - 1]))
            close = difflib.get_close_matches(name, anchors, n=1)
            hint = f"; did you mean *{close[0]}?" if close else ""
            return line, f"*{name} names no anchor (&{name}) defined above it{hint}"
        above = self.above(line)
        if "mapping values are not allowed" in problem and above is not None:
            this = self.text(line)
            if self.start(line) > self.key_column(above) and _KEY.match(self.text(above)) \
                    and self.text(above).split(":", 1)[-1].strip() not in ("", "|", ">") \
                    and not self.text(above).rstrip().endswith(":"):
                # the mapping the line belongs in: the entry above it, or the one the line above is in
                above_text = self.text(above).lstrip()
                parent = above if above_text.startswith("- ") else self.container(above, self.start(above))
                section = next((n for n in range(line, 0, -1) if n in self.content and self.start(n) == 0), None)
                expects = _KEY.match(self.text(section)).group(2).strip() if section and _KEY.match(
                    self.text(section)) else "the file"
                under = f" under {self.shown(parent)}" if parent and parent != section else ""
                return line, (f"this line is indented more than `{expects}:` expects{under}: check its spaces (it "
                              f"starts at column {self.start(line) + 1}, the line above at column "
                              f"{self.key_column(above) + 1}, so YAML reads it as the rest of that line's value)")
            key = _KEY.match(this)
            if key and ": " in this[key.end():]:
                return line, (f"the value of `{key.group(2).strip()}:` holds ': '{self.section(line)}; put the value "
                              "in quotes")
            word = this.strip().split(" ")[0]
            return line, (f"`{word}` is not followed by `:`{self.section(line)}; write `{word}: value` (or quote "
                          "the text if it is a value)")
        if "expected <block end>" in problem or "could not find expected ':'" in problem:
            start = self.start(line)
            parent = self.container(line, start)
            if parent is not None:
                child = next((n for n in range(parent + 1, line) if n in self.content), None)
                levels = f"{self.shown(parent)} starts at column {self.start(parent) + 1}"
                if child is not None:
                    levels += f" and the lines under it at column {self.start(child) + 1}"
                return line, (f"this line starts at column {start + 1}, which matches no level above it{self.section(line)}: "
                              f"{levels}; check its spaces")
        return None


def _duplicate_keys(node, path: tuple, errors: list[SpecError]) -> None:
    if isinstance(node, MappingNode):
        seen: dict = {}
        for key_node, value_node in node.value:
            key = getattr(key_node, "value", None)
            if isinstance(key, str):
                if key in seen:
                    errors.append(SpecError(
                        _path_str(path + (key,)),
                        f"duplicate key (first on line {seen[key] + 1})",
                        line=key_node.start_mark.line + 1,
                    ))
                else:
                    seen[key] = key_node.start_mark.line
            _duplicate_keys(value_node, path + (key,), errors)
    elif isinstance(node, SequenceNode):
        for i, child in enumerate(node.value):
            _duplicate_keys(child, path + (i,), errors)


def _plain(value):
    """Turn ruamel's round-trip types into plain JSON-like Python values."""
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, (int, float)) else k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def _path_str(path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _path_parts(path: str) -> list:
    """`items[3].input.x` -> ["items", 3, "input", "x"] (the inverse of `_path_str`, for keys without dots)."""
    return [int(index) if index else key for key, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path)]


def _named(data, path) -> str:
    """The path with every list entry that has an id named by it: `items[25] (id post_b3).prompt`."""
    out, node = "", data
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            ident = node.get("id") if isinstance(node, dict) else None
            if isinstance(ident, (str, int)) and not isinstance(ident, bool):
                out += f" (id {ident})"
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out


def _with_ids(error: SpecError, data) -> SpecError:
    if error.named or not error.path:
        return error
    named = _named(data, _path_parts(error.path))
    if named == error.path or _path_str(_path_parts(error.path)) != error.path:
        return error
    return SpecError(error.path, error.message, error.file, error.line, named)


def _line(doc, path) -> int | None:
    """Return the 1-based line of the deepest node of `path` that exists in the YAML."""
    line = None
    node = doc
    for part in path:
        if isinstance(node, CommentedMap) and part in node:
            line = node.lc.key(part)[0] + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            line = node.lc.item(part)[0] + 1
            node = node[part]
        else:
            break
    if line is None and isinstance(doc, (CommentedMap, CommentedSeq)) and path:
        line = doc.lc.line + 1
    return line


# --------------------------------------------------------------------------- schema errors


_TYPE_WORDS = {
    "string": "a string", "integer": "a whole number", "number": "a number",
    "boolean": "true or false", "object": "a mapping", "array": "a list", "null": "empty",
}


def _schema_errors(data, doc) -> list[SpecError]:
    errors = []
    for error in _VALIDATOR.iter_errors(data):
        errors += _schema_error(error, doc)
    return errors


def _schema_error(error, doc) -> list[SpecError]:
    path = tuple(error.absolute_path)
    validator, value, instance = error.validator, error.validator_value, error.instance

    def at(p, message):
        return SpecError(_path_str(p), message, line=_line(doc, p))

    if "propertyNames" in error.schema_path:
        return _property_name_error(path, error, doc)
    if validator == "required":
        return [at(path + (name,), "is required") for name in value if isinstance(instance, dict) and name not in instance]
    if validator == "additionalProperties":
        known = list(error.schema.get("properties", {}))
        out = []
        for key in instance:
            if key not in known:
                hint = difflib.get_close_matches(str(key), known, n=1)
                out.append(at(path + (key,), f"unknown key; did you mean '{hint[0]}'?" if hint else "unknown key"))
        return out
    if validator == "type":
        types = [value] if isinstance(value, str) else value
        message = "must be " + " or ".join(_TYPE_WORDS[t] for t in types)
        if isinstance(instance, (datetime.date, datetime.datetime)):
            message += " (put dates in quotes)"
        return [at(path, message)]
    if validator == "enum":
        close = difflib.get_close_matches(instance, [str(v) for v in value], n=1) if isinstance(instance, str) else []
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return [at(path, "must be one of: " + ", ".join(str(v) for v in value) + hint)]
    if validator == "const":
        return [at(path, f"must be {value}")]
    messages = {
        "minimum": f"must be at least {value}",
        "exclusiveMinimum": f"must be greater than {value}",
        "maximum": f"must be at most {value}",
        "exclusiveMaximum": f"must be less than {value}",
        "maxLength": f"must be at most {value} characters",
        "uniqueItems": "must not repeat an entry",
        "pattern": _PATTERN_MESSAGES.get(value, "has an invalid format"),
    }
    if validator in messages:
        return [at(path, messages[validator])]
    if validator in ("minLength", "minItems", "minProperties"):
        return [at(path, "must not be empty" if value == 1 else f"must have at least {value} entries")]
    return [at(path, error.message)]


def _property_name_error(path, error, doc) -> list[SpecError]:
    key = error.instance
    allowed = error.validator_value if error.validator == "enum" else []
    key_path = path + (key,)
    if set(allowed) <= set(LANGUAGES):
        return [SpecError(_path_str(key_path), f"unknown language '{key}'; use one of: {', '.join(LANGUAGES)}",
                          line=_line(doc, key_path))]
    item = _get(doc, path)
    if key not in _item_schema()["properties"]:
        return []  # reported as an unknown key by additionalProperties
    kind = item.get("kind") if isinstance(item, dict) else None
    return [SpecError(_path_str(key_path), f"is not used by {kind} items", line=_line(doc, key_path))]


def _get(doc, path):
    node = doc
    for part in path:
        node = node[part]
    return node


def _get_or_none(doc, path):
    try:
        return _get(doc, path)
    except (KeyError, IndexError, TypeError):
        return None


# --------------------------------------------------------------------------- semantic checks


def _dicts(value):
    """Yield (index, mapping) for the mappings of a list; skip anything malformed."""
    if isinstance(value, list):
        for i, entry in enumerate(value):
            if isinstance(entry, dict):
                yield i, entry


def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


def _repeats(values: list) -> list[bool]:
    """For each entry, whether an equal one came before it (in linear time: lists can be long)."""
    seen, out = set(), []
    for value in values:
        try:
            key = (0, value) if hash(value) is not None else None
        except TypeError:
            key = (1, repr(value))
        out.append(key in seen)
        seen.add(key)
    return out


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Checker:
    """The checks a JSON Schema cannot express; every problem is appended to `errors`."""

    def __init__(self, data: dict, doc, assets: dict[str, bytes]):
        self.data = data
        self.doc = doc
        self.assets = assets
        self.errors: list[SpecError] = []
        languages = data.get("languages")
        self.languages = [lang for lang in languages if lang in LANGUAGES] if isinstance(languages, list) else []
        self.languages = self.languages or ["en"]
        self.csv_header: list[str] | None = None
        self.csv_rows: list[list[str]] = []
        # One root cause, one error: the first place it shows, and every other place it shows folded into it.
        self.folds: dict[tuple, dict] = {}
        self.bad_features: dict[str, tuple] = {}  # target feature that is no column -> its path

    def error(self, path, message, *, file=STUDY_FILE, line=None):
        if file == STUDY_FILE and line is None:
            line = _line(self.doc, path)
        self.errors.append(SpecError(_path_str(path), message, file, line, _named(self.data, path)))

    def fold(self, key: tuple, path, message: str, *, also: str = "also at") -> None:
        """Report `message` at `path` the first time `key` is seen; later places are listed in that error."""
        if key in self.folds:
            self.folds[key]["places"].append(path)
        else:
            self.folds[key] = {"path": path, "message": message, "also": also, "places": []}

    def unknown(self, path, what: str, name, known) -> None:
        """An unknown name (concept, arm, item...): one error, with a close match, listing every place it is used."""
        self.fold(("unknown", what, name), path, f"unknown {what} '{name}'{self.hint(str(name), known)}")

    def folds_report(self) -> None:
        for fold in self.folds.values():
            places = fold["places"]
            message = fold["message"]
            if places:
                shown = [f"{_named(self.data, p)} (line {_line(self.doc, p)})" for p in places[:FOLD_SHOWN]]
                more = f" and {len(places) - FOLD_SHOWN} more" if len(places) > FOLD_SHOWN else ""
                message += f" ({fold['also']} {'; '.join(shown)}{more})"
            self.error(fold["path"], message)

    def run(self) -> None:
        if self.data.get("slug") in RESERVED_SLUGS:
            self.error(("slug",), f"'{self.data['slug']}' is reserved by the researcher console; choose another")
        self.check_texts()
        self.check_ids()
        self.check_target()
        self.check_llm_limits()
        self.check_items()
        self.check_instruments()
        self.check_held_out()
        self.check_arms()
        self.check_allocation()
        self.check_budgets()
        self.check_recruitment()
        self.check_analysis()
        self.check_texts_held_out()
        self.folds_report()

    def check_recruitment(self) -> None:
        pattern = _mapping(self.data.get("recruitment")).get("pid_pattern")
        if isinstance(pattern, str):
            try:
                re.compile(pattern)
            except re.error as error:
                self.error(("recruitment", "pid_pattern"), f"is not a valid regular expression: {error}")

    # -- localised text

    def check_texts(self) -> None:
        for path, value in _localised_fields(self.data):
            self.check_text(path, value)

    def check_text(self, path, value) -> None:
        if not isinstance(value, dict):
            return
        for lang in self.languages:
            if lang not in value:
                self.fold(("translation", lang), path, f"missing translation: {lang}", also="also missing in")
        for lang in value:
            if lang in LANGUAGES and lang not in self.languages:
                self.fold(("language", lang), path + (lang,), f"language '{lang}' is not declared in languages",
                          also="also given in")

    # -- ids

    def check_ids(self) -> None:
        for name in ("concepts", "items", "arms"):
            seen: dict = {}
            for i, entry in _dicts(self.data.get(name)):
                ident = entry.get("id")
                if not isinstance(ident, str):
                    continue
                if ident in seen:
                    self.error((name, i, "id"), f"duplicate id '{ident}' (also {name}[{seen[ident]}])")
                else:
                    seen[ident] = i

    # -- target

    @property
    def target(self) -> dict | None:
        target = self.data.get("target")
        return target if isinstance(target, dict) else None

    @property
    def task(self) -> str | None:
        return ESTIMATOR_TASKS.get(self.target.get("estimator")) if self.target else None

    def check_target(self) -> None:
        target = self.target
        if target is None:
            return
        if target.get("kind") == "llm":
            self.check_llm_target(target)
            return
        params = _mapping(target.get("params"))
        if "random_state" in params:
            self.error(("target", "params", "random_state"), "is set by seed; remove it")
        data = target.get("data")
        if not isinstance(data, str) or not self.check_file(("target", "data"), data):
            return
        try:
            text = self.assets[_clean(data)].decode("utf-8-sig")
        except UnicodeDecodeError:
            self.error(("target", "data"), f"is not utf-8 text: {data}")
            return
        try:
            rows = list(itertools.islice(csv.reader(io.StringIO(text)), MAX_DATA_ROWS + 2))
        except csv.Error as exc:
            self.error(("target", "data"), f"is not a readable CSV file: {data} ({exc})")
            return
        if len(rows) > MAX_DATA_ROWS + 1:
            self.error(("target", "data"), f"has more than {MAX_DATA_ROWS:,} data rows, the limit: {data}")
            return
        if not rows or not rows[0]:
            self.error(("target", "data"), f"has no header row: {data}")
            return
        self.csv_header, self.csv_rows = [c.strip() for c in rows[0]], [r for r in rows[1:] if r]
        if not self.csv_rows:
            self.error(("target", "data"), f"has no data rows: {data}")
        name = posixpath.basename(data)
        label = target.get("label")
        if isinstance(label, str) and label not in self.csv_header:
            self.error(("target", "label"), f"not a column of {name}{self.hint(label, self.csv_header)}")
        features = target.get("features")
        for i, feature in enumerate(features if isinstance(features, list) else []):
            if not isinstance(feature, str):
                continue
            if feature not in self.csv_header:
                # what the items' inputs and feature_labels then say about it is folded into this one error
                self.bad_features[feature] = ("target", "features", i)
                self.fold(("feature", feature), ("target", "features", i),
                          f"not a column of {name}{self.hint(feature, self.csv_header)}",
                          also="so these do not match target.features either:")
                continue
            if feature == label:
                self.error(("target", "features", i), "is the label; a feature cannot be the label")
            column = self.csv_header.index(feature)
            for row_number, row in enumerate(self.csv_rows, start=2):
                if not _is_float(row[column] if column < len(row) else ""):
                    self.error(("target", "features", i),
                               f"column '{feature}' is not numeric ({name}, row {row_number})")
                    break
        for feature in _mapping(target.get("feature_labels")):
            if isinstance(features, list) and feature not in features:
                self.feature_mismatch(("target", "feature_labels", feature), feature, "not one of target.features")

    def feature_mismatch(self, path, name: str, message: str) -> None:
        """A feature an item or label gives that target.features does not have (or the reverse): a consequence of
        a target feature that is no column of the data, when one is; else an error of its own."""
        if name in self.bad_features:
            root = name
        elif self.bad_features and self.csv_header and name in self.csv_header:
            close = difflib.get_close_matches(name, list(self.bad_features), n=1)
            root = close[0] if close else next(iter(self.bad_features))
        else:
            self.error(path, message)
            return
        self.folds[("feature", root)]["places"].append(path)

    def check_llm_limits(self) -> None:
        """A first-token or idle limit longer than the total it belongs to is a mistake, not a wish."""
        places = [(("target", "llm"), _mapping(self.target).get("llm"))] if self.target else []
        places += [(("arms", i, "llm"), arm.get("llm")) for i, arm in _dicts(self.data.get("arms"))]
        for path, llm in places:
            if not isinstance(llm, dict):
                continue
            levels = [(path, llm, llm.get("timeout_s", LLM_TIMEOUT_DEFAULT_S))]
            for kind, limits in _mapping(llm.get("timeouts")).items():
                if isinstance(limits, dict):
                    levels.append((path + ("timeouts", kind), limits, limits.get("timeout_s", levels[0][2])))
            for where, limits, total in levels:
                if not _is_number(total):
                    continue
                for name in ("ttft_s", "idle_s"):
                    value = limits.get(name)
                    if _is_number(value) and value > total:
                        self.error(where + (name,), f"must be at most the total timeout_s ({total:g} s)")

    def check_llm_target(self, target: dict) -> None:
        template, features = target.get("prompt_template"), target.get("features")
        if not isinstance(template, str) or not isinstance(features, list):
            return
        for name in re.findall(r"{(\w+)}", template):
            if name not in features:
                self.error(("target", "prompt_template"), f"placeholder '{{{name}}}' is not one of target.features")

    def label_classes(self) -> list[str]:
        label = self.target.get("label") if self.target else None
        if self.csv_header is None or label not in self.csv_header:
            return []
        column = self.csv_header.index(label)
        return sorted({row[column].strip() for row in self.csv_rows if column < len(row)})

    # -- items

    def check_items(self) -> None:
        concepts = [c.get("id") for _, c in _dicts(self.data.get("concepts"))]
        for i, item in _dicts(self.data.get("items")):
            concept = item.get("concept")
            if isinstance(concept, str) and concept not in concepts:
                self.unknown(("items", i, "concept"), "concept", concept, concepts)
            kind = item.get("kind")
            if kind not in ITEM_KINDS:
                continue  # the kind is reported (with a close match); what it would allow is not checked
            options = [o.get("id") for _, o in _dicts(item.get("options"))]
            options = [str(o) for o in options if isinstance(o, (str, int)) and not isinstance(o, bool)]
            for j, repeated in enumerate(_repeats(options)):
                if repeated:
                    option = options[j]
                    self.error(("items", i, "options", j, "id"), f"duplicate option id '{option}'")
            key = item.get("key")
            if key == FROM_TARGET and kind != "predict":
                self.error(("items", i, "key"), "from_target is only allowed on predict items")
            elif kind == "single_choice" and isinstance(key, (str, int)) and str(key) not in options:
                self.error(("items", i, "key"), f"unknown option '{key}'")
            elif kind == "multi_choice" and isinstance(key, list):
                for j, entry in enumerate(key):
                    if str(entry) not in options:
                        self.error(("items", i, "key", j), f"unknown option '{entry}'")
            elif kind == "likert":
                scale = _mapping(item.get("scale"))
                low, high = scale.get("min"), scale.get("max")
                if _is_number(low) and _is_number(high) and high <= low:
                    self.error(("items", i, "scale", "max"), f"must be greater than min ({low})")
            elif kind == "predict":
                self.check_predict(i, item, options)

    def check_predict(self, i: int, item: dict, options: list[str]) -> None:
        key, task = item.get("key"), self.task
        if key == FROM_TARGET and self.target is None:
            self.error(("items", i, "key"), "from_target needs a target")
        if item.get("options") is not None and item.get("tolerance") is not None:
            self.error(("items", i, "tolerance"), "is for numeric answers; this item has options")
        if task == "classification" or (task is None and item.get("options") is not None):
            if item.get("options") is None:
                self.error(("items", i, "options"), "is required")
            elif key not in (None, FROM_TARGET) and str(key) not in options:
                self.error(("items", i, "key"), f"unknown option '{key}'")
            elif key == FROM_TARGET:
                for label in self.label_classes():
                    if label not in options:
                        self.error(("items", i, "options"), f"no option for class '{label}'")
        else:
            if key is not None and key != FROM_TARGET and not _is_number(key):
                self.error(("items", i, "key"), "must be a number")
            if key is not None and item.get("tolerance") is None:
                self.error(("items", i, "tolerance"), "is required")
        if self.target is not None:
            features = self.target.get("features")
            features = [f for f in features if isinstance(f, str)] if isinstance(features, list) else []
            given = _mapping(item.get("input"))
            for feature in features:
                if feature not in given:
                    self.feature_mismatch(("items", i, "input"), feature, f"missing feature '{feature}'"
                                          f"{self.hint(feature, [g for g in given if g not in features])}")
            for feature, value in given.items():
                if feature not in features:
                    self.feature_mismatch(("items", i, "input", feature), feature, "not a feature of the target"
                                          f"{self.hint(feature, [f for f in features if f not in given])}")
                elif not _is_number(value) and self.target.get("kind") != "llm":
                    self.error(("items", i, "input", feature), "must be a number")

    # -- instruments

    def check_instruments(self) -> None:
        items = {item.get("id"): item for _, item in _dicts(self.data.get("items"))}
        known = [i for i in items if isinstance(i, str)]
        unknown_kind = {i for i, item in items.items() if item.get("kind") not in ITEM_KINDS}
        instruments = _mapping(self.data.get("instruments"))
        used_in: dict[str, dict] = {"pre_test": {}, "post_test": {}}
        for name in ("pre_test", "post_test"):
            forms = _mapping(_mapping(instruments.get(name)).get("forms"))
            for form in ("A", "B"):
                ids = forms.get(form)
                if not isinstance(ids, list):
                    continue
                for j, (ident, repeated) in enumerate(zip(ids, _repeats(ids))):
                    path = ("instruments", name, "forms", form, j)
                    if repeated:
                        self.error(path, f"item '{ident}' is already in this form")
                    if ident not in items:
                        self.unknown(path, "item", ident, known)
                        continue
                    used_in[name].setdefault(ident, path)
                    if name == "post_test" and ident in used_in["pre_test"]:
                        self.error(path, f"item '{ident}' is also used in the pre-test")
                    if items[ident].get("key") is None and ident not in unknown_kind:
                        self.error(path, f"item '{ident}' has no key; test items must be scored")
            a, b = forms.get("A"), forms.get("B")
            if isinstance(a, list) and isinstance(b, list) and len(a) != len(b):
                self.error(("instruments", name, "forms", "B"),
                           f"must have as many items as form A ({len(a)}, not {len(b)})")
        questionnaire = instruments.get("questionnaire")
        questionnaire = questionnaire if isinstance(questionnaire, list) else []
        for j, (ident, repeated) in enumerate(zip(questionnaire, _repeats(questionnaire))):
            path = ("instruments", "questionnaire", j)
            if ident not in items:
                self.unknown(path, "item", ident, known)
            elif repeated:
                self.error(path, f"item '{ident}' is already in the questionnaire")
        practice = instruments.get("practice")
        tests = set(used_in["pre_test"]) | set(used_in["post_test"])
        for j, ident in enumerate(practice if isinstance(practice, list) else []):
            path = ("instruments", "practice", j)
            if ident not in items:
                self.unknown(path, "item", ident, known)
            elif ident in unknown_kind:
                continue
            elif ident in tests:
                self.error(path, f"item '{ident}' is a test item; the practice bank must be disjoint from the tests")
            elif items[ident].get("key") is None or not items[ident].get("concept"):
                self.error(path, f"item '{ident}' needs a key and a concept to be a check question")
            elif items[ident].get("kind") not in ("single_choice", "predict") or not items[ident].get("options"):
                self.error(path, f"item '{ident}' must be a single_choice or predict item with options")

    # -- held-out test cases

    def check_held_out(self) -> None:
        """A practice item must not rehearse a test item: its input is not near a test case (the rule of
        studies.heldout, which the target tools apply too), and it does not ask a test item's question."""
        settings = _mapping(_mapping(self.target).get("held_out"))
        features = _mapping(self.target).get("features")
        for feature, value in _mapping(settings.get("tolerance")).items():
            path = ("target", "held_out", "tolerance", feature)
            if isinstance(features, list) and feature not in features:
                self.error(path, "not one of target.features")
            elif isinstance(value, str) and value != ANY:
                self.error(path, f"must be a number or {ANY}")
        practice = _mapping(self.data.get("instruments")).get("practice")
        if not isinstance(practice, list):
            return
        items = list(_dicts(self.data.get("items")))
        tests = held_out_tests(self.data)
        test_ids = {ident for ident, _ in tests}
        for name in ("pre_test", "post_test"):
            for ids in _mapping(_mapping(_mapping(self.data.get("instruments")).get(name)).get("forms")).values():
                test_ids.update(i for i in (ids if isinstance(ids, list) else []) if isinstance(i, str))
        wanted = {ident for ident in practice if isinstance(ident, str)} - test_ids
        rule = None
        for i, item in items:
            if item.get("id") not in wanted:
                continue
            if item.get("kind") == "predict" and isinstance(item.get("input"), dict):
                if rule is None:
                    rule = held_out_rule(target=self.target, items=[it for _, it in items], rows=self.data_rows())
                near = rule.match(item["input"], tests)
                if near is not None:
                    self.error(("items", i, "input"),
                               f"practice item '{item['id']}' is within the held-out distance of test item '{near}' "
                               f"({rule.describe()}); a practice case must differ from every test case "
                               "(or set target.held_out)")
                continue
            for _, test in items:
                if test.get("id") in test_ids and test.get("kind") != "predict" \
                        and same_question(item.get("prompt"), test.get("prompt")):
                    self.error(("items", i, "prompt"),
                               f"practice item '{item['id']}' asks the same question as test item '{test['id']}'; "
                               "the practice bank must not rehearse a test item")
                    break

    def check_texts_held_out(self) -> None:
        """No test case is written in what a participant or an explainer reads before the post-test: the arms'
        material and system prompts, and the practice questions (studies.heldout.cases_shown)."""
        items = list(_dicts(self.data.get("items")))
        tests = [(ident, case) for ident, case in held_out_tests(self.data) if isinstance(ident, str)]
        if not tests or not self.held_out_settings_valid():
            return  # a bad tolerance is reported already; what it would refuse is not
        rule = held_out_rule(target=self.target, items=[it for _, it in items], rows=self.data_rows())
        where = {item.get("id"): i for i, item in items}

        def report(path, found, place: str, *, file=STUDY_FILE, line_of=None):
            for line, ident, matched in found:
                at = where.get(ident)
                case = _mapping(items[at][1].get("input")) if at is not None else {}
                read = ", ".join(f"{feature} {value:g}" for feature, value in matched.items())
                its = ", ".join(f"{case.get(feature)} ±{rule.tolerances.get(feature) or 0:.3g}" for feature in matched)
                test = f"test item '{ident}'" + (f" (items[{at}], line {_line(self.doc, ('items', at))})"
                                                 if at is not None else "")
                self.error(path, f"{place} shows the case of {test}: {read} are within the held-out distance of its "
                                 f"{its}; change these numbers so that no test case can be recognised",
                           file=file, line=line_of(line) if line_of else line)

        files: dict[str, list] = {}
        for i, arm in _dicts(self.data.get("arms")):
            material = arm.get("material")
            paths = [(("arms", i, "material"), material)] if isinstance(material, str) else [
                (("arms", i, "material", lang), m) for lang, m in _mapping(material).items()]
            for path, file in paths:
                clean = _clean(file) if isinstance(file, str) else None
                if clean in self.assets and len(self.assets[clean]) <= MAX_MATERIAL_BYTES:
                    files.setdefault(clean, []).append((path, arm.get("id")))
            prompt = arm.get("system_prompt")
            texts = [(("arms", i, "system_prompt"), prompt)] if isinstance(prompt, str) else [
                (("arms", i, "system_prompt", lang), t) for lang, t in _mapping(prompt).items()]
            for path, text in texts:
                if isinstance(text, str):
                    report(path, cases_shown(text, rule, tests), "the system prompt",
                           line_of=functools.partial(self.text_line, path))
        for file, users in files.items():
            try:
                text = self.assets[file].decode("utf-8")
            except UnicodeDecodeError:
                continue  # reported by check_markdown
            arms = ", ".join(str(ident) for _, ident in users)
            report(users[0][0], cases_shown(text, rule, tests),
                   f"the material of arm{'s' if len(users) > 1 else ''} {arms}",
                   file=file)
        practice = _mapping(self.data.get("instruments")).get("practice")
        practice = {p for p in practice if isinstance(p, str)} if isinstance(practice, list) else set()
        for i, item in items:
            if item.get("id") not in practice or item.get("id") in {t for t, _ in tests}:
                continue
            texts = [(("items", i, "prompt"), item.get("prompt"))]
            texts += [(("items", i, "options", j, "text"), o.get("text")) for j, o in _dicts(item.get("options"))]
            whole = " ".join(t for _, value in texts for t in ([value] if isinstance(value, str) else
                                                               _mapping(value).values()) if isinstance(t, str))
            # a question and its options are one unit: "Income 44 k$, debt ratio 0.20..." / "Approves"
            for lang_text in ([whole] if whole else []):
                found = [(None, ident, matched) for _, ident, matched in cases_shown(
                    lang_text.replace("\n", " "), rule, tests)]
                report(("items", i, "prompt"), found[:1], f"practice item '{item['id']}'")

    def held_out_settings_valid(self) -> bool:
        settings = _mapping(self.target).get("held_out")
        if settings is None:
            return True
        if not isinstance(settings, dict):
            return False
        fraction = settings.get("fraction", HELD_OUT_FRACTION)
        tolerance = settings.get("tolerance") or {}
        features = _mapping(self.target).get("features") or []
        return _is_number(fraction) and 0 <= fraction <= 1 and isinstance(tolerance, dict) and all(
            name in features and (value == ANY or _is_number(value) and value >= 0) for name, value in tolerance.items())

    def text_line(self, path, offset: int) -> int | None:
        """The line in study.yaml of line `offset` (1-based) of the text at `path`: exact for a `|` block."""
        line = _line(self.doc, path)
        node = _get_or_none(self.doc, path)
        if line is not None and type(node).__name__ == "LiteralScalarString":
            return line + offset
        return line

    def data_rows(self) -> list[dict] | None:
        """The target's training data as rows of column -> text, if it has any."""
        if self.csv_header is None:
            return None
        return [dict(zip(self.csv_header, row)) for row in self.csv_rows]

    # -- arms and files

    def check_arms(self) -> None:
        checked: set[str] = set()
        for i, arm in _dicts(self.data.get("arms")):
            material = arm.get("material")
            if isinstance(material, str):
                paths = [((("arms", i, "material")), material)]
            elif isinstance(material, dict):
                self.check_text(("arms", i, "material"), material)
                paths = [(("arms", i, "material", lang), p) for lang, p in material.items()]
            else:
                paths = []
            for path, file in paths:
                if isinstance(file, str) and self.check_file(path, file) and _clean(file) not in checked:
                    checked.add(_clean(file))
                    self.check_markdown(path, _clean(file))
            self.check_arm_options(i, arm)

    def check_arm_options(self, i: int, arm: dict) -> None:
        """The options each arm kind understands (docs/study-file.md, `arms[].options`)."""
        options, kind = arm.get("options"), arm.get("kind")
        if not isinstance(options, dict) or kind not in ARM_OPTIONS:
            return
        kinds = {a.get("id"): a.get("kind") for _, a in _dicts(self.data.get("arms"))}
        for name, value in options.items():
            path = ("arms", i, "options", name)
            known = ARM_OPTIONS[kind]
            if name not in known:
                hint = difflib.get_close_matches(str(name), known, n=1)
                where = f"options of {kind} arms: {', '.join(known)}" if known else f"{kind} arms take no options"
                self.error(path, f"unknown option; did you mean '{hint[0]}'?" if hint else f"unknown option ({where})")
            elif name in ("proactive", "show_meeting_note") and not isinstance(value, bool):
                self.error(path, "must be true or false")
            elif name == "learner_model" and not (isinstance(value, bool) or value in LEARNER_MODEL_OPTIONS):
                self.error(path, "must be one of: true, false, mismatched, frozen")
            elif name == "yoked_screen" and value not in YOKED_SCREENS:
                self.error(path, f"must be one of: {', '.join(YOKED_SCREENS)}")
            elif name == "yoked_screen" and not options.get("yoked_to"):
                self.error(path, "applies only with yoked_to")
            elif name == "yoked_to":
                if value not in kinds:
                    self.unknown(path, "arm", value, [k for k in kinds if isinstance(k, str)])
                elif kinds[value] != "agentic":
                    self.error(path, f"arm '{value}' is a {kinds[value]} arm; a static arm is yoked to an agentic arm")

    def check_file(self, path, file: str) -> bool:
        clean = _clean(file)
        if clean is None:
            self.error(path, f"must be a relative path inside the study folder: {file}")
            return False
        if clean not in self.assets:
            self.error(path, f"file not found: {clean}")
            return False
        return True

    def check_markdown(self, path, file: str) -> None:
        if len(self.assets[file]) > MAX_MATERIAL_BYTES:
            self.error(path, f"{file} is {_size_text(len(self.assets[file]))}; the limit for a material file is "
                             f"{_size_text(MAX_MATERIAL_BYTES)} (images go in files of their own)")
            return
        try:
            text = self.assets[file].decode("utf-8")
        except UnicodeDecodeError:
            self.error(path, f"is not utf-8 text: {file}")
            return
        base = posixpath.dirname(file)
        for number, line in enumerate(text.splitlines(), start=1):
            for ref in _image_refs(line):
                if _EXTERNAL_REF.match(ref):
                    continue
                target = _clean(posixpath.join(base, ref.split("#")[0].split("?")[0]))
                if target is None or target not in self.assets:
                    shown = target or ref
                    self.error(path, f"file not found: {shown} (image in {file}, line {number})",
                               file=posixpath.basename(file), line=number)

    # -- allocation

    def check_allocation(self) -> None:
        allocation = _mapping(self.data.get("allocation"))
        weights = [a.get("weight", 1) for _, a in _dicts(self.data.get("arms"))]
        valid = all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in weights)
        total = sum(weights) if valid else 0  # a bad weight is reported already; don't cascade
        size = allocation.get("block_size")
        method = allocation.get("method", "blocked")
        if method == "blocked" and isinstance(size, int) and size > 0 and total and size % total:
            self.error(("allocation", "block_size"), f"must be a multiple of the total arm weight ({total})")
        if method == "simple" and size is not None:
            self.error(("allocation", "block_size"), "is only used when method is blocked")
        strata = allocation.get("strata")
        if strata is not None and allocation.get("when", "consent") != "after_pretest":
            self.error(("allocation", "strata"), "is only used when 'when' is after_pretest")
        if isinstance(strata, list):
            for j in range(1, len(strata)):
                if _is_number(strata[j]) and _is_number(strata[j - 1]) and strata[j] <= strata[j - 1]:
                    self.error(("allocation", "strata", j), "must be greater than the cut point before it")

    # -- budgets

    def check_budgets(self) -> None:
        """Cost and token caps only mean something for arms that call a language model."""
        for i, arm in _dicts(self.data.get("arms")):
            budget, kind = arm.get("budget"), arm.get("kind")
            if not isinstance(budget, dict) or kind not in ("static", "tutor"):
                continue
            for name in ("max_cost_usd", "max_tokens_per_participant"):
                if name in budget:
                    self.error(("arms", i, "budget", name),
                               f"{kind} arms call no language model; only chat and agentic arms take this cap")

    # -- the analysis plan

    def check_analysis(self) -> None:
        """Every name the plan uses exists: arms, items, scales and their items, measures, covariates."""
        plan = self.data.get("analysis")
        if not isinstance(plan, dict):
            return
        arms = [a.get("id") for _, a in _dicts(self.data.get("arms")) if isinstance(a.get("id"), str)]
        items = {item.get("id"): item for _, item in _dicts(self.data.get("items"))
                 if isinstance(item.get("id"), str)}
        questionnaire = _mapping(self.data.get("instruments")).get("questionnaire")
        questionnaire = {i for i in questionnaire if isinstance(i, str)} if isinstance(questionnaire, list) else set()
        scales = self.check_analysis_scales(plan, items, questionnaire)
        numeric = {i for i in questionnaire if items.get(i, {}).get("kind") in ANALYSIS_NUMERIC_KINDS}
        ids: dict[str, int] = {}
        measured: dict[str, int] = {}  # measure -> the first outcome on it
        for i, outcome in _dicts(plan.get("outcomes")):
            path = ("analysis", "outcomes", i)
            ident, measure = outcome.get("id"), outcome.get("measure")
            if isinstance(ident, str):
                if ident in ids:
                    self.error(path + ("id",), f"duplicate id '{ident}' (also analysis.outcomes[{ids[ident]}])")
                ids.setdefault(ident, i)
            if isinstance(measure, str):
                measured.setdefault(measure, i)
                if measure not in ANALYSIS_MEASURES and measure not in scales and measure not in numeric:
                    hint = self.hint(measure, ANALYSIS_MEASURES, scales, numeric)
                    self.error(path + ("measure",), f"unknown measure '{measure}'{hint} (a measure such as post or "
                                                    "gain, a scale of analysis.scales, or a likert or numeric "
                                                    "questionnaire item)")
            if outcome.get("role") == "primary" and outcome.get("confirmatory") is False:
                self.error(path + ("confirmatory",), "a primary outcome is confirmatory; make it secondary to "
                                                     "analyse it as exploratory")
        roles = [o.get("role") for _, o in _dicts(plan.get("outcomes"))]
        if roles and "primary" not in roles:
            self.error(("analysis", "outcomes"), "names no primary outcome (role: primary)")
        for j, name in enumerate(plan.get("covariates") if isinstance(plan.get("covariates"), list) else []):
            if not isinstance(name, str):
                continue
            path = ("analysis", "covariates", j)
            if name in measured:
                self.error(path, f"'{name}' is also an outcome (analysis.outcomes[{measured[name]}].measure); "
                                 "a covariate cannot be the outcome")
            elif name in ANALYSIS_MEASURES or name in scales or name in ANALYSIS_RECORDED:
                continue
            elif name in items and name not in questionnaire:
                self.error(path, f"item '{name}' is not in instruments.questionnaire; only questionnaire answers "
                                 "are covariates (the pre-test's score is pre)")
            elif name in items and items[name].get("kind") == "text":
                self.error(path, f"item '{name}' is a text item; a covariate is a number or a category")
            elif name not in items:
                self.error(path, f"unknown covariate '{name}'"
                                 f"{self.hint(name, ANALYSIS_MEASURES, ANALYSIS_RECORDED, scales, questionnaire)} "
                                 "(a measure such as pre, a scale, a questionnaire item, or one of: "
                                 f"{', '.join(ANALYSIS_RECORDED)})")
        self.check_analysis_contrasts(plan, arms)
        exclusions = _mapping(plan.get("exclusions"))
        attention = exclusions.get("attention_items")
        for j, ident in enumerate(attention if isinstance(attention, list) else []):
            path = ("analysis", "exclusions", "attention_items", j)
            if not isinstance(ident, str):
                continue
            if ident not in items:
                self.unknown(path, "item", ident, list(items))
            elif ident not in questionnaire:
                self.error(path, f"item '{ident}' is not in instruments.questionnaire; an attention check is asked "
                                 "there, never in a test (excluding on a test answer biases the outcome)")
            elif items[ident].get("key") is None:
                self.error(path, f"item '{ident}' has no key; an attention check needs the answer it expects")

    def check_analysis_scales(self, plan: dict, items: dict, questionnaire: set) -> set:
        """Check `analysis.scales`; return the ids of the scales."""
        scales: dict[str, int] = {}
        for i, scale in _dicts(plan.get("scales")):
            path = ("analysis", "scales", i)
            ident = scale.get("id")
            if isinstance(ident, str):
                if ident in scales:
                    self.error(path + ("id",), f"duplicate id '{ident}' (also analysis.scales[{scales[ident]}])")
                elif ident in ANALYSIS_MEASURES or ident in ANALYSIS_RECORDED:
                    self.error(path + ("id",), f"'{ident}' is the name of a measure; choose another id")
                elif ident in items:
                    self.error(path + ("id",), f"'{ident}' is an item id; choose another id")
                else:
                    scales[ident] = i
            members = scale.get("items") if isinstance(scale.get("items"), list) else []
            for j, item_id in enumerate(members):
                if not isinstance(item_id, str):
                    continue
                kind = items.get(item_id, {}).get("kind")
                if item_id not in items:
                    self.unknown(path + ("items", j), "item", item_id, list(items))
                elif item_id not in questionnaire:
                    self.error(path + ("items", j), f"item '{item_id}' is not in instruments.questionnaire")
                elif kind not in ANALYSIS_NUMERIC_KINDS:
                    self.error(path + ("items", j), f"item '{item_id}' is a {kind} item; a scale is made of likert "
                                                    "and numeric items")
            reverse = scale.get("reverse") if isinstance(scale.get("reverse"), list) else []
            for j, item_id in enumerate(reverse):
                if not isinstance(item_id, str):
                    continue
                if item_id not in members:
                    self.error(path + ("reverse", j), f"item '{item_id}' is not one of this scale's items")
                elif items.get(item_id, {}).get("kind") != "likert":
                    self.error(path + ("reverse", j), f"item '{item_id}' is not a likert item; reversing an answer "
                                                      "needs its scale's min and max")
        return set(scales)

    def check_analysis_contrasts(self, plan: dict, arms: list[str]) -> None:
        reference = plan.get("reference_arm")
        if isinstance(reference, str) and reference not in arms:
            self.unknown(("analysis", "reference_arm"), "arm", reference, arms)
        contrasts = plan.get("contrasts")
        if not isinstance(contrasts, list):
            return
        seen: dict[frozenset, int] = {}
        for j, pair in enumerate(contrasts):
            path = ("analysis", "contrasts", j)
            if not isinstance(pair, list):
                continue
            if len(pair) != 2:
                self.error(path, "must be a pair [arm, arm] (the contrast is the first minus the second)")
                continue
            unknown = [(k, a) for k, a in enumerate(pair) if isinstance(a, str) and a not in arms]
            for k, arm in unknown:
                self.unknown(path + (k,), "arm", arm, arms)
            if unknown or not all(isinstance(a, str) for a in pair):
                continue
            if pair[0] == pair[1]:
                self.error(path, f"compares arm '{pair[0]}' with itself")
            elif frozenset(pair) in seen:
                self.error(path, f"repeats the contrast of analysis.contrasts[{seen[frozenset(pair)]}]")
            else:
                seen[frozenset(pair)] = j

    @staticmethod
    def hint(name: str, *choices) -> str:
        """"; did you mean 'x'?" for a close match among the choices, else ""."""
        known = [c for group in choices for c in group if isinstance(c, str)]
        close = difflib.get_close_matches(name, known, n=1)
        return f"; did you mean '{close[0]}'?" if close else ""


# Image references are found by a scan in linear time: a regular expression like `<img\b[^>]*\bsrc...` tried at
# every `<img` of a long line is quadratic (a 40 KB line of `<img` took 5 s), a bomb of its own.
_MD_TOKEN = re.compile(r"!\[|\]\(|\]")
_MD_TARGET = re.compile(r"[ \t]*(?:<([^<>\n]{1,1000})>|([^)\s<>]+))")
_HTML_IMG = re.compile(r"<img\b", re.IGNORECASE)
_HTML_SRC = re.compile(r"\bsrc[ \t]*=[ \t]*[\"']([^\"'>]+)[\"']", re.IGNORECASE)


def _image_refs(line: str) -> list[str]:
    """The targets of the line's `![alt](target)` and `<img src="target">`, in order of kind."""
    refs, alt_open, resume = [], False, 0
    for token in _MD_TOKEN.finditer(line):
        if token.start() < resume:
            continue
        if token.group() == "![":
            alt_open = True
            continue
        if token.group() == "](" and alt_open:
            target = _MD_TARGET.match(line, token.end())
            if target:
                refs.append((target.group(1) or target.group(2)).strip())
                resume = target.end()
        alt_open = False
    resume = 0
    for tag in _HTML_IMG.finditer(line):
        if tag.start() < resume:
            continue
        end = line.find(">", tag.end())
        resume = len(line) if end < 0 else end
        src = _HTML_SRC.search(line, tag.end(), resume)
        if src:
            refs.append(src.group(1))
    return refs
_EXTERNAL_REF = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*:|//|#)")


def _clean(path: str) -> str | None:
    """Return a normalised POSIX path inside the folder, or None if it leaves the folder."""
    if not path or path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", path):
        return None
    clean = posixpath.normpath(path.replace("\\", "/"))
    if clean == ".." or clean.startswith("../") or clean == ".":
        return None
    return clean


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _localised_fields(data: dict):
    """Yield (path, value) for every localised text of the file as written."""
    for name in ("title", "debrief"):
        yield (name,), data.get(name)
    yield ("consent", "text"), _mapping(data.get("consent")).get("text")
    for i, concept in _dicts(data.get("concepts")):
        yield ("concepts", i, "label"), concept.get("label")
        yield ("concepts", i, "description"), concept.get("description")
    target = data.get("target")
    for feature, label in _mapping(_mapping(target).get("feature_labels")).items():
        yield ("target", "feature_labels", feature), label
    for i, item in _dicts(data.get("items")):
        yield ("items", i, "prompt"), item.get("prompt")
        yield ("items", i, "unit"), item.get("unit")
        for j, option in _dicts(item.get("options")):
            yield ("items", i, "options", j, "text"), option.get("text")
        scale = _mapping(item.get("scale"))
        yield ("items", i, "scale", "min_label"), scale.get("min_label")
        yield ("items", i, "scale", "max_label"), scale.get("max_label")
    for i, arm in _dicts(data.get("arms")):
        yield ("arms", i, "label"), arm.get("label")
        yield ("arms", i, "system_prompt"), arm.get("system_prompt")


def _sorted_unique(errors: list[SpecError]) -> list[SpecError]:
    unique = list(dict.fromkeys(errors))
    in_yaml = [e for e in unique if e.file == STUDY_FILE]
    other = [e for e in unique if e.file != STUDY_FILE]
    return sorted(in_yaml, key=lambda e: (e.line is None, e.line or 0)) + other


# --------------------------------------------------------------------------- assets


def _assets_read(folder: Path) -> dict[str, bytes]:
    """Read every non-hidden file of the folder except study.yaml, keyed by POSIX path."""
    assets = {}
    total = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(files):
            if name.startswith("."):
                continue
            full = Path(root) / name
            relative = full.relative_to(folder).as_posix()
            if relative != STUDY_FILE:
                if len(assets) >= MAX_STUDY_FILES:
                    raise StudyFileInvalid([SpecError("", f"the folder holds more than {MAX_STUDY_FILES} files",
                                                      file=str(folder))])
                total += full.stat().st_size
                if total > MAX_STUDY_BYTES:  # the same limit as an upload's, so a folder loads as its zip would
                    raise StudyFileInvalid([SpecError(
                        "", f"the folder's files come to more than {_size_text(MAX_STUDY_BYTES)}, the limit",
                        file=str(folder))])
                assets[relative] = full.read_bytes()
    return dict(sorted(assets.items()))


# --------------------------------------------------------------------------- normalisation


def _normalise(data: dict) -> dict:
    """Return the validated file as plain data with every default filled in."""
    languages = list(data["languages"])

    def text(value):
        if value is None:
            return None
        if isinstance(value, str):
            return {lang: value for lang in languages}
        return {lang: value[lang] for lang in languages}

    recruitment = data["recruitment"]
    target = data.get("target")
    task = ESTIMATOR_TASKS[target["estimator"]] if target and target["kind"] == "sklearn" else None
    arms = data["arms"]
    weights = sum(arm.get("weight", 1) for arm in arms)
    allocation = data.get("allocation") or {}
    method = allocation.get("method", "blocked")
    when = allocation.get("when", "consent")
    instruments = data["instruments"]

    def forms(name):
        return {form: list(instruments[name]["forms"][form]) for form in ("A", "B")}

    return {
        "schema_version": data["schema_version"],
        "slug": data["slug"],
        "title": text(data["title"]),
        "languages": languages,
        "consent": {"version": data["consent"]["version"], "text": text(data["consent"]["text"])},
        "recruitment": {
            "platform": recruitment.get("platform", "prolific"),
            "completion_code": recruitment["completion_code"],
            "no_consent_code": recruitment["no_consent_code"],
            "completion_url": recruitment.get(
                "completion_url", DEFAULT_COMPLETION_URL if recruitment.get("platform", "prolific") == "prolific" else None
            ),
            "allow_without_pid": recruitment.get("allow_without_pid", False),
            # declared only when given, so files without one keep their sha256 (default: pid_pattern_of)
            **({"pid_pattern": recruitment["pid_pattern"]} if recruitment.get("pid_pattern") else {}),
        },
        "withdrawal": {"data": (data.get("withdrawal") or {}).get("data", "keep")},
        # budgets appear only when declared, so files without one keep their sha256
        **({"budget": dict(data["budget"])} if data.get("budget") is not None else {}),
        # like budgets, `display` appears only when declared
        **({"display": dict(data["display"])} if data.get("display") is not None else {}),
        # like budgets, the analysis plan appears only when declared
        **({"analysis": _normalise_analysis(data["analysis"], arms)} if data.get("analysis") is not None else {}),
        "concepts": [
            {"id": c["id"], "label": text(c["label"]), "description": text(c.get("description"))}
            for c in data.get("concepts") or []
        ],
        "target": None if not target else {
            "kind": "llm",
            "task": None,
            "prompt_template": target["prompt_template"],
            "features": list(target["features"]),
            "feature_labels": {f: text(v) for f, v in (target.get("feature_labels") or {}).items()},
            "llm": _normalise_llm(target["llm"]),
            **_normalise_held_out(target),
        } if target["kind"] == "llm" else {
            "kind": target["kind"],
            "estimator": target["estimator"],
            "task": task,
            "params": dict(target.get("params") or {}),
            "seed": target.get("seed", 0),
            "data": _clean(target["data"]),
            "features": list(target["features"]),
            "label": target["label"],
            "feature_labels": {f: text(v) for f, v in (target.get("feature_labels") or {}).items()},
            **_normalise_held_out(target),
        },
        "items": [_normalise_item(item, text, task) for item in data["items"]],
        "instruments": {
            "pre_test": {"forms": forms("pre_test")},
            "post_test": {"forms": forms("post_test")},
            "questionnaire": list(instruments.get("questionnaire") or []),
            "practice": list(instruments.get("practice") or []),
        },
        "arms": [
            {
                "id": arm["id"],
                "kind": arm["kind"],
                "weight": arm.get("weight", 1),
                "label": text(arm.get("label")),
                "material": _normalise_material(arm.get("material"), languages),
                "limits": dict(arm.get("limits") or {}),
                "options": dict(arm.get("options") or {}),
                **({"budget": dict(arm["budget"])} if arm.get("budget") is not None else {}),
                "system_prompt": text(arm.get("system_prompt")),
                "llm": _normalise_llm(arm.get("llm")),
                **({"display": dict(arm["display"])} if arm.get("display") is not None else {}),
                # like `display`, `page` appears only when declared, so files without it keep their sha256
                **({"page": {k: text(v) for k, v in arm["page"].items()}} if arm.get("page") else {}),
            }
            for arm in arms
        ],
        "allocation": {
            "method": method,
            "block_size": allocation.get("block_size", weights) if method == "blocked" else None,
            "when": when,
            "strata": list(allocation.get("strata", DEFAULT_STRATA)) if when == "after_pretest" else [],
        },
        "debrief": text(data["debrief"]),
    }


def _normalise_analysis(plan: dict, arms: list[dict]) -> dict:
    """The plan with every default filled in and its contrasts spelt out as [a, b] pairs (a - b)."""
    arm_ids = [arm["id"] for arm in arms]
    reference = plan.get("reference_arm", arm_ids[0])
    contrasts = plan.get("contrasts", "vs_reference")
    if contrasts == "vs_reference":
        pairs = [[arm, reference] for arm in arm_ids if arm != reference]
    elif contrasts == "all_pairs":
        pairs = [[a, b] for a, b in itertools.combinations(arm_ids, 2)]
    else:
        pairs = [list(pair) for pair in contrasts]
    exclusions = plan.get("exclusions") or {}
    robust = plan.get("robust", "none")
    return {
        "outcomes": [
            {
                "id": o["id"], "measure": o["measure"], "role": o["role"],
                "alternative": o.get("alternative", "two-sided"),
                "confirmatory": o.get("confirmatory", o["role"] == "primary"),
            }
            for o in plan["outcomes"]
        ],
        "scales": [
            {"id": s["id"], "items": list(s["items"]), "scoring": s.get("scoring", "mean"),
             "reverse": list(s.get("reverse") or [])}
            for s in plan.get("scales") or []
        ],
        "covariates": list(plan.get("covariates") or []),
        "reference_arm": reference,
        "contrasts": pairs,
        "contrast_set": contrasts if isinstance(contrasts, str) else "listed",
        "alpha": float(plan.get("alpha", ANALYSIS_ALPHA_DEFAULT)),
        "correction": plan.get("correction", "holm"),
        "robust": None if robust == "none" else robust,
        "exclusions": {
            "attention_items": list(exclusions.get("attention_items") or []),
            "min_seconds": exclusions.get("min_seconds", 0),
        },
    }


def _normalise_held_out(target: dict) -> dict:
    """`{"held_out": ...}` when the file sets it, else nothing (so files without it keep their sha256)."""
    held_out = target.get("held_out")
    if held_out is None:
        return {}
    tolerance = {f: v if v == ANY else float(v) for f, v in (held_out.get("tolerance") or {}).items()}
    return {"held_out": {"fraction": float(held_out.get("fraction", HELD_OUT_FRACTION)), "tolerance": tolerance}}


def _normalise_material(material, languages) -> dict | None:
    if material is None:
        return None
    if isinstance(material, str):
        return {lang: _clean(material) for lang in languages}
    return {lang: _clean(material[lang]) for lang in languages}


def _normalise_llm(llm: dict | None) -> dict | None:
    if llm is None:
        return None
    prices = llm.get("prices")
    timing = _llm_timing(llm)
    return {
        "provider": llm.get("provider", "openai"),
        "model": llm["model"],
        "base_url": llm.get("base_url"),
        "params": dict(llm.get("params") or {}),
        # no default price: a cost computed at a made-up price is worse than an unknown one
        "prices": None if prices is None else {
            "input_per_mtok": float(prices["input_per_mtok"]),
            "output_per_mtok": float(prices["output_per_mtok"]),
        },
        "timeout_s": timing["reply"]["timeout_s"],  # the reply's total, for callers that know one limit
        "timing": timing,
        "tool_choice": llm.get("tool_choice"),  # None: from the endpoint's probe, else auto
        "structured_output": llm.get("structured_output"),  # None: from the probe, else json_schema
        "max_retries": llm.get("max_retries", 2),
        "context_tokens": llm.get("context_tokens", LLM_CONTEXT_DEFAULT_TOKENS),
    }


def _llm_timing(llm: dict) -> dict:
    """Return {call kind: {"timeout_s", "ttft_s", "idle_s"}}: the kind's own limits over the llm's,
    over the defaults; the first-token and idle limits never exceed the total."""
    timing = {}
    for kind in LLM_CALL_KINDS:
        own = (llm.get("timeouts") or {}).get(kind) or {}
        total = float(own.get("timeout_s", llm.get("timeout_s", LLM_TIMEOUT_DEFAULT_S)))
        ttft = float(own.get("ttft_s", llm.get("ttft_s", total)))
        idle = float(own.get("idle_s", llm.get("idle_s", LLM_IDLE_DEFAULT_S)))
        timing[kind] = {"timeout_s": total, "ttft_s": min(ttft, total), "idle_s": min(idle, total)}
    return timing


def model_links_allowed(spec: dict, arm_id: str) -> bool:
    """Whether links in the model's replies are rendered as links for this arm (the arm's `display`, else the
    study's, else no)."""
    arm = next((a for a in spec.get("arms") or [] if a.get("id") == arm_id), {})
    for display in (arm.get("display"), spec.get("display")):
        if display and "model_links" in display:
            return bool(display["model_links"])
    return False


def yoked_screen(arm: dict) -> str:
    """The screen a yoked arm's transcripts pass: "approve" or "redact" (YOKED_SCREEN_DEFAULT when unsaid)."""
    return (arm.get("options") or {}).get("yoked_screen") or YOKED_SCREEN_DEFAULT


def llm_limits(*, llm: dict, kind: str) -> dict:
    """Return {"timeout_s", "ttft_s", "idle_s"} of one kind of call of a normalised `llm`.

    A spec normalised before the limits existed has only `timeout_s`: it applies to every kind.
    """
    if kind not in LLM_CALL_KINDS:
        raise ValueError(f"unknown LLM call kind {kind!r}")
    timing = llm.get("timing")
    if timing and kind in timing:
        return dict(timing[kind])
    total = float(llm.get("timeout_s", LLM_TIMEOUT_DEFAULT_S))
    return {"timeout_s": total, "ttft_s": total, "idle_s": min(LLM_IDLE_DEFAULT_S, total)}


def _normalise_item(item: dict, text, task: str | None) -> dict:
    kind = item["kind"]
    out = {
        "id": item["id"], "kind": kind, "concept": item.get("concept"), "prompt": text(item["prompt"]),
        "required": item.get("required", True),
    }
    options = [{"id": str(o["id"]), "text": text(o["text"])} for o in item.get("options") or []]
    key = item.get("key")
    if kind == "single_choice":
        out.update(options=options, key=None if key is None else str(key))
    elif kind == "multi_choice":
        out.update(options=options, key=None if key is None else [str(k) for k in key])
    elif kind == "likert":
        scale = item["scale"]
        out["scale"] = {
            "min": scale["min"], "max": scale["max"],
            "min_label": text(scale.get("min_label")), "max_label": text(scale.get("max_label")),
        }
    elif kind == "numeric":
        out.update(key=float(key), tolerance=float(item["tolerance"]), unit=text(item.get("unit")))
    elif kind == "text":
        out["max_length"] = item.get("max_length", DEFAULT_MAX_LENGTH)
    elif kind == "predict":
        answered_by_option = task == "classification" or (task is None and item.get("options") is not None)
        if key is not None and key != FROM_TARGET:
            key = str(key) if answered_by_option else float(key)
        tolerance = item.get("tolerance")
        out.update(
            input=dict(item["input"]),
            options=options if answered_by_option else None,
            key=key,
            tolerance=None if tolerance is None else float(tolerance),
            confidence=item.get("confidence", False),
        )
    return out
