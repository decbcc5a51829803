"""The codebook: every exported table and column, its type, unit, allowed values and meaning.

This module is the single source of truth: the exporter writes exactly these columns in this order,
the Parquet schema is derived from the types here, and `codebook.json` / `codebook.md` are rendered
from it. A column that is not here is not exported.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from explainers.learner import ACTS
from explainers.models import LLMCall, Turn
from participants.models import Participant, Step
from studies.models import StudyVersion
from studies.protocol import PHASES
from studies.spec import ITEM_KINDS

TYPES = ("string", "integer", "number", "boolean", "datetime", "json")
CLIENT_COUNTERS = ("visibility_changes", "hidden_ms", "paste_count", "blur_count", "first_input_ms")


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    description: str
    unit: str = ""
    allowed: tuple = ()
    nullable: bool = True


@dataclass(frozen=True)
class Table:
    name: str
    description: str
    columns: tuple[Column, ...]
    row: str  # what one row is
    note: str = ""

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


def _c(name, type_, description, unit="", allowed=(), nullable=True) -> Column:
    assert type_ in TYPES, type_
    return Column(name, type_, description, unit, tuple(allowed), nullable)


VERSION = _c("version_sha256", "string", "sha256 of the study version (spec and assets) this row belongs to.",
             nullable=False)
PSEUDONYM = _c("pseudonym", "string",
               "Stable participant pseudonym: `p_` + 16 hex chars of HMAC-SHA256 of the participant's "
               "database id under a key derived from the platform's secret key. Not derivable from the "
               "recruiter's id or the participant's link token.", nullable=False)
TURN_ID = _c("turn_id", "integer", "Database id of the chat turn (unique within the platform).")
_TS = "UTC, ISO 8601 in CSV and JSONL"


def _tables() -> tuple[Table, ...]:
    return (
        Table("participants", "One row per participant of the study (see manifest.json for who is included).", (
            VERSION, PSEUDONYM,
            _c("arm", "string", "Arm the participant was allocated to; empty before allocation (declined, "
               "left before it)."),
            _c("form_order", "string", "Order of the parallel test forms: `AB` = form A in the pre-test, B in "
               "the post-test.", allowed=Participant.FormOrder.values),
            _c("stratum", "string", "Allocation stratum (e.g. `band1:AB` when allocating after the pre-test)."),
            _c("allocation_index", "integer", "Position in the stratum's allocation sequence (0-based)."),
            _c("step", "string", "Step the participant is at (or reached last).", allowed=Step.values,
               nullable=False),
            _c("status", "string", "Participant status.", allowed=Participant.Status.values, nullable=False),
            _c("is_simulated", "boolean", "True for bots entered with a signed simulation link: exclude from "
               "inference.", nullable=False),
            _c("is_pilot", "boolean", "True for pilot entries (only exported with --include-pilot).",
               nullable=False),
            _c("language", "string", "Language the participant used."),
            _c("created_at", "datetime", "When the participant first entered.", unit=_TS, nullable=False),
            _c("consented_at", "datetime", "When the participant gave consent.", unit=_TS),
            _c("started_at", "datetime", "Start of the session for time on task: equal to consented_at (the "
               "name analysis.measures reads).", unit=_TS),
            _c("allocated_at", "datetime", "When the arm was assigned.", unit=_TS),
            _c("completed_at", "datetime", "When the participant finished (debrief submitted).", unit=_TS),
            _c("consent_version", "string", "Version label of the consent text accepted."),
            _c("paste_count", "integer", "Integrity: pastes over all pages (browser-reported).", unit="count"),
            _c("hidden_ms", "integer", "Integrity: total time the page was hidden (other tab, app switch), "
               "over all pages.", unit="ms"),
            _c("visibility_changes", "integer", "Integrity: page visibility changes over all pages.",
               unit="count"),
            _c("first_input_ms_median", "number", "Integrity: median over pages of the time from page load "
               "to first input (very low values suggest scripted answering).", unit="ms"),
            _c("pages_reloaded", "integer", "Integrity: number of pages shown more than once (reloads, Back).",
               unit="count"),
            _c("learner_model_from", "string", "Ablation `learner_model: mismatched`: pseudonym of the participant "
               "whose learner-model snapshots the explainer was shown; empty otherwise."),
            _c("yoked_from", "string", "Yoked static arm: pseudonym of the participant whose agentic transcript "
               "was shown; empty when none was available (the arm's material was shown) or the arm is not yoked."),
            _c("yoked_screen", "string", "Yoked static arm: how the transcript shown passed its screen: `redact` (the "
               "automatic redaction of e-mails, phone numbers, links and names alone) or `approve` (redacted, then "
               "approved by a researcher); the participant read the redacted text. Empty when no transcript was shown.",
               allowed=("redact", "approve")),
        ), row="participant"),
        Table("responses", "One row per answered item per phase.", (
            VERSION, PSEUDONYM,
            _c("phase", "string", "Instrument.", allowed=PHASES, nullable=False),
            _c("item_id", "string", "Item id from the study file (see items).", nullable=False),
            _c("item_kind", "string", "Item kind.", allowed=ITEM_KINDS),
            _c("form", "string", "Parallel form (`A` or `B`); empty for the questionnaire.", allowed=("A", "B")),
            _c("concept", "string", "Concept the item measures (see concepts); empty if none."),
            _c("value", "string", "The answer: option id, number or text as given; a JSON array for "
               "multi_choice items."),
            _c("score", "number", "Score of objective items; empty for likert and text.", unit="0-1"),
            _c("correct", "boolean", "Whether the answer matches the key; empty for likert and text."),
            _c("confidence", "integer", "Confidence rating of predict items that ask for it.", unit="0-100"),
            _c("time_ms", "integer", "Server-side time from first showing the item to its submit.", unit="ms"),
            _c("created_at", "datetime", "When the answer was stored.", unit=_TS, nullable=False),
        ), row="item x phase x participant"),
        Table("turns", "One row per chat message (participant or explainer).", (
            VERSION, PSEUDONYM, TURN_ID,
            _c("author", "string", "Who wrote the message.", allowed=Turn.Author.values, nullable=False),
            _c("reply_to_turn_id", "integer", "For an explainer turn: the participant turn it answers."),
            _c("status", "string", "Turn status (`failed`: the reply could not be generated).",
               allowed=Turn.Status.values, nullable=False),
            _c("text", "string", "The message text as typed or generated (free text: may contain anything a "
               "participant typed)."),
            _c("created_at", "datetime", "When the turn was saved.", unit=_TS, nullable=False),
            _c("first_token_at", "datetime", "Explainer turns: when the first token streamed.", unit=_TS),
            _c("completed_at", "datetime", "Explainer turns: when the reply was complete.", unit=_TS),
            _c("scripted", "boolean", "True when the reply came from the scripted demo model, not a real LLM.",
               nullable=False),
            _c("error_kind", "string", "Why the reply failed (timeout, rate_limit, ...); empty if it did not."),
            _c("act", "string", "Explainer turns of the tutor and agentic arms: the pedagogical act.",
               allowed=ACTS),
            _c("concept", "string", "Explainer turns of the tutor and agentic arms: the concept the turn targets."),
            _c("check_item", "string", "A check question: the practice item it asks (never a test item)."),
            _c("answers_check_turn_id", "integer", "A participant turn that answers a check question: that "
               "question's turn_id."),
            _c("check_correct", "boolean", "A participant turn that answers a check question: whether the answer "
               "was right."),
            _c("tool_calls", "string", "Agentic explainer turns: JSON list of the target tools called (name, "
               "arguments, result, refused)."),
            _c("shown_text", "string", "A turn whose reply failed after part of it had streamed (the participant's "
               "turn, or an explainer's opening): the text the participant saw before it stopped; empty otherwise."),
            _c("cut_off", "boolean", "True when the reply failed after some of its text was shown (status `failed` "
               "and shown_text not empty): the participant kept that text, marked as cut off.", nullable=False),
        ), row="chat turn"),
        Table("llm_calls", "One row per provider request (each attempt, retry and purpose is its own row).", (
            VERSION, PSEUDONYM, TURN_ID,
            _c("purpose", "string", "What the call was for: `reply`; in agentic arms also `learner_update`, `posttest_prediction`, `meeting_note`.", nullable=False),
            _c("attempt", "integer", "Attempt number for this turn and purpose (1 = first).", nullable=False),
            _c("status", "string", "`started` = never finished (worker lost mid-call).",
               allowed=LLMCall.Status.values, nullable=False),
            _c("provider", "string", "Provider API (`openai`, `anthropic`)."),
            _c("model", "string", "Model requested."),
            _c("model_reported", "string", "Model the provider reported having used."),
            _c("scripted", "boolean", "True for the scripted demo model.", nullable=False),
            _c("error_kind", "string", "Error class of a failed attempt."),
            _c("error", "string", "Error text of a failed attempt as the provider or the client reported it, cut "
               "to its first 500 characters; empty when the attempt did not fail."),
            _c("http_status", "integer", "HTTP status of a failed attempt."),
            _c("retry_after_s", "number", "Retry-After the provider asked for.", unit="s"),
            _c("started_at", "datetime", "When the request was sent.", unit=_TS, nullable=False),
            _c("ttft_ms", "integer", "Time to first token.", unit="ms"),
            _c("latency_ms", "integer", "Time to the complete response.", unit="ms"),
            _c("input_tokens", "integer", "Prompt tokens.", unit="tokens"),
            _c("output_tokens", "integer", "Completion tokens.", unit="tokens"),
            _c("cost_usd", "number", "Cost from the arm's prices; empty when the price is unknown (the arm's "
               "model has none, and no default price is assumed) or the attempt did not succeed.", unit="USD"),
            _c("tool_choice", "string", "The tool choice sent with the request; empty when the call offered no "
               "tools.", allowed=("auto", "required", "none")),
            _c("structured_output", "string", "How structured output was asked for: `json_schema`, "
               "`json_object`, or `instructions` (asked in the prompt, parsed and validated); empty for free text.",
               allowed=("json_schema", "json_object", "instructions")),
            _c("fallback_reason", "string", "Why this call used a fallback (a `required` tool round after `auto` "
               "gave no tool call, a weaker output format, a repair attempt); empty when it used none."),
            _c("trimmed", "json", "What was left out of the prompt to fit the arm's context budget (turns, "
               "material characters) as JSON text; empty when nothing was."),
            _c("request", "json", "The full request: model, parameters and messages (JSON text)."),
            _c("response", "json", "The provider's response as logged (JSON text)."),
        ), row="LLM request attempt"),
        Table("learner_models", "The explainer's model of the learner: from the pre-test, then after each turn.", (
            VERSION, PSEUDONYM, TURN_ID,
            _c("snapshot_index", "integer", "0 = initialised from the pre-test, then one per participant turn.",
               nullable=False),
            _c("source", "string", "What produced the snapshot.", allowed=("pretest", "rules", "llm"), nullable=False),
            _c("schema_version", "integer", "Version of the learner-model JSON schema (explainers/learner/model.py).",
               nullable=False),
            _c("state", "json", "The snapshot: per-concept mastery and evidence, misconceptions, background, "
               "next goal, why it changed (JSON text).", nullable=False),
            _c("created_at", "datetime", "When the snapshot was stored.", unit=_TS, nullable=False),
        ), row="learner-model snapshot", note="Arms with a learner model only (tutor; agentic unless its learner_model option is false)."),
        Table("predictions", "The explainer's prediction of each post-test answer, made before the post-test.", (
            VERSION, PSEUDONYM,
            _c("item_id", "string", "The post-test item.", nullable=False),
            _c("p_correct", "number", "Predicted probability of a right answer.", unit="0-1", nullable=False),
            _c("predicted_answer", "json", "The predicted answer (JSON text), or null when a wrong answer is expected."),
            _c("source", "string", "What made the prediction.", allowed=("rules", "llm"), nullable=False),
        ), row="participant x post-test item"),
        Table("events", "One row per participant page (server timing plus the browser's counters).", (
            VERSION, PSEUDONYM,
            _c("page", "string", "Page key: `consent`, `pre_test:<item>`, `explanation`, `debrief`, ...",
               nullable=False),
            _c("first_shown_at", "datetime", "First time the page was shown.", unit=_TS, nullable=False),
            _c("last_shown_at", "datetime", "Last time the page was shown.", unit=_TS, nullable=False),
            _c("shown_count", "integer", "How often the page was shown (> 1: reloaded or came back).",
               unit="count", nullable=False),
            _c("submitted_at", "datetime", "When the page was submitted.", unit=_TS),
            _c("server_ms", "integer", "Server-side time from first showing to submit.", unit="ms"),
            _c("visibility_changes", "integer", "Browser: visibility changes on the page.", unit="count"),
            _c("hidden_ms", "integer", "Browser: time the page was hidden.", unit="ms"),
            _c("paste_count", "integer", "Browser: pastes on the page.", unit="count"),
            _c("blur_count", "integer", "Browser: times the window lost focus.", unit="count"),
            _c("first_input_ms", "integer", "Browser: time from page load to first input.", unit="ms"),
        ), row="participant x page"),
        Table("items", "The study's items as frozen in each version.", (
            VERSION,
            _c("item_id", "string", "Item id.", nullable=False),
            _c("item_kind", "string", "Item kind.", allowed=ITEM_KINDS, nullable=False),
            _c("concept", "string", "Concept the item measures."),
            _c("phase", "string", "Instrument the item belongs to; empty if it is in none.", allowed=PHASES),
            _c("form", "string", "Parallel form within the phase; empty for the questionnaire.",
               allowed=("A", "B")),
            _c("position", "integer", "Position of the item in its form (1-based)."),
            _c("key", "json", "Answer key (JSON); for `from_target` items the target's frozen output."),
            _c("key_from_target", "boolean", "True when the key was computed from the target at launch.",
               nullable=False),
            _c("tolerance", "number", "Accepted distance from the key for numeric answers."),
            _c("options", "json", "Options as JSON: [{id, text: {language: text}}]."),
            _c("prompt_en", "string", "The question in English (or the study's first language)."),
        ), row="item x placement (phase, form)"),
        Table("concepts", "The study's concepts, per version.", (
            VERSION,
            _c("concept_id", "string", "Concept id.", nullable=False),
            _c("label_en", "string", "Short label in English."),
            _c("description_en", "string", "Description in English."),
        ), row="concept"),
        Table("study_versions", "The exported versions of the study.", (
            VERSION,
            _c("slug", "string", "Study slug.", nullable=False),
            _c("number", "integer", "Version number.", nullable=False),
            _c("state", "string", "Version state at export time.", allowed=StudyVersion.State.values,
               nullable=False),
            _c("target_sha256", "string", "sha256 of the target (model) frozen with the version."),
            _c("target_info", "json", "What was frozen with the target's keys (JSON)."),
            _c("launched_at", "datetime", "When the version went live.", unit=_TS),
        ), row="study version"),
    )


TABLES: dict[str, Table] = {t.name: t for t in _tables()}


# --- the wide table: one row per participant, its columns depend on the study -----------------

WIDE = "participants_wide"
#: Every table an export writes: the long tables, then the wide one (built per study by `wide_table`).
TABLE_NAMES = (*TABLES, WIDE)

_MEASURE_COLUMNS = (
    _c("pre", "number", "Pre-test score: mean `score` over the participant's scored pre-test answers (responses).",
       unit="0-1"),
    _c("post", "number", "Post-test score: mean `score` over the scored post-test answers.", unit="0-1"),
    _c("gain", "number", "post − pre.", unit="-1 to 1"),
    _c("normalized_gain", "number", "Hake's normalized gain (post − pre) / (1 − pre); empty at pre = 1.",
       unit="(post − pre)/(1 − pre)"),
    _c("forward_sim_accuracy", "number", "Share of the post-test `predict` items answered right.", unit="0-1"),
    _c("brier", "number", "Mean of (confidence/100 − outcome)² over the post-test predict items with a "
       "confidence rating (lower is better).", unit="0-1"),
    _c("ece", "number", "Expected calibration error of those items, 10 equal-width confidence bins.", unit="0-1"),
    _c("time_on_task_s", "number", "completed_at − started_at; empty until the participant finished.", unit="s"),
    _c("turns", "number", "Chat messages the participant wrote (turns with author `participant`).",
       unit="count"),
    _c("tokens", "number", "Σ input + output tokens over the participant's LLM calls (every attempt).",
       unit="tokens"),
    _c("cost_usd", "number", "Σ cost_usd over those calls; empty when a call that used tokens has no price.",
       unit="USD"),
    _c("lm_accuracy", "number", "Share of post-test items where the explainer's prediction (p_correct ≥ 0.5 "
       "read as right) matched the real outcome; empty without predictions.", unit="0-1"),
    _c("lm_brier", "number", "Mean of (p_correct − outcome)² over those items.", unit="0-1"),
)
_WIDE_RECORDED = ("paste_count", "hidden_ms", "visibility_changes", "first_input_ms_median", "pages_reloaded")


def _wide_fixed() -> tuple[Column, ...]:
    base = {c.name: c for c in TABLES["participants"].columns}
    ids = ("version_sha256", "pseudonym", "arm", "form_order", "stratum", "step", "status", "is_simulated",
           "is_pilot", "language")
    return (*(base[name] for name in ids), *_MEASURE_COLUMNS, *(base[name] for name in _WIDE_RECORDED))


WIDE_FIXED: tuple[Column, ...] = _wide_fixed()
_ITEM_TYPES = {"likert": "integer", "numeric": "number", "multi_choice": "json"}


def wide_column_names(items: list[dict], scales: list[dict]) -> dict[tuple[str, str], str]:
    """Name the study's item and scale columns: {("item" | "scale", id): column}.

    A column is named by its id with `-` turned into `_` (a name SPSS, Stata and R formulas take);
    a name that starts with a digit, or is already taken (a fixed column, an earlier item), gets the
    prefix `item_` (items) or `scale_` (scales).
    """
    taken = {c.name for c in WIDE_FIXED}
    names = {}
    for what, ident in [("item", i["id"]) for i in items] + [("scale", s["id"]) for s in scales]:
        name = ident.replace("-", "_")
        if name[0].isdigit() or name in taken:
            name = f"{what}_{name}"
        while name in taken:
            name += "_"
        taken.add(name)
        names[(what, ident)] = name
    return names


def wide_table(*, items: list[dict] | None = None, scales: list[dict] | None = None) -> Table:
    """Return the `participants_wide` table of a study: the fixed columns, then one per item and scale.

    `items`: the questionnaire items of the exported versions, in order, as dicts with `id`, `kind`,
    `prompt` (English text) and, for likert items, `scale` ({min, max}); `scales`: the declared
    `analysis.scales` ({id, items, scoring, reverse}).
    """
    items, scales = list(items or ()), list(scales or ())
    names = wide_column_names(items, scales)
    columns = list(WIDE_FIXED)
    for item in items:
        kind = item.get("kind", "")
        span = item.get("scale") or {}
        unit = f"{span['min']}-{span['max']}" if "min" in span and "max" in span else ""
        what = {"likert": "the point chosen", "numeric": "the number given", "multi_choice": "a JSON array of the "
                "option ids chosen", "text": "the text as typed (free text: screen it before publishing)"}.get(
            kind, "the option id chosen" if kind in ("single_choice", "predict") else "the answer as given")
        prompt = f" ({item['prompt']})" if item.get("prompt") else ""
        columns.append(_c(names[("item", item["id"])], _ITEM_TYPES.get(kind, "string"),
                          f"Questionnaire item `{item['id']}`{prompt}: {what}; empty when not answered.", unit=unit))
    for scale in scales:
        scoring = scale.get("scoring") or "mean"
        reverse = scale.get("reverse") or []
        keyed = f", after reversing {', '.join(f'`{r}`' for r in reverse)} (min + max − answer)" if reverse else ""
        columns.append(_c(names[("scale", scale["id"])], "number",
                          f"Scale `{scale['id']}` (analysis.scales): the {scoring} of items "
                          f"{', '.join(f'`{i}`' for i in scale['items'])}{keyed}; empty unless every item of "
                          "the scale was answered."))
    return Table(WIDE, "One row per participant, the measures and questionnaire answers as columns (for SPSS, "
                 "Stata, R and spreadsheets): the same participants as `participants`, values computed from the "
                 "long tables by analysis.measures.", tuple(columns), row="participant",
                 note="The measures are computed for every participant who has the data, finished or not: "
                      "filter on status (and is_simulated, is_pilot) before analysing.")


def codebook_dict(*, arms: list[str] | None = None, concepts: list[str] | None = None,
                  extra_tables: tuple[Table, ...] = ()) -> dict:
    """Return the codebook as plain data; study-specific allowed values (arms, concepts) when given.

    `extra_tables`: tables built for this study (the wide table), listed after the long ones.
    """
    extra = {"arm": tuple(arms or ()), "concept": tuple(concepts or ())}
    tables = {}
    for table in (*TABLES.values(), *extra_tables):
        columns = []
        for column in table.columns:
            data = asdict(column)
            data["allowed"] = list(column.allowed or extra.get(column.name, ()))
            columns.append(data)
        tables[table.name] = {"description": table.description, "row": table.row, "note": table.note,
                              "columns": columns}
    return {
        "types": {
            "string": "text; empty cell / null when missing",
            "integer": "whole number",
            "number": "floating-point number",
            "boolean": "true / false",
            "datetime": "timestamp in UTC (ISO 8601 text in CSV and JSONL, timestamp[us, UTC] in Parquet)",
            "json": "JSON document stored as text (parse with json.loads / jsonlite::fromJSON)",
        },
        "tables": tables,
    }


def codebook_json(**kwargs) -> str:
    return json.dumps(codebook_dict(**kwargs), indent=2, ensure_ascii=False) + "\n"


def codebook_markdown(*, title: str = "", **kwargs) -> str:
    """Render the codebook as a readable Markdown page."""
    data = codebook_dict(**kwargs)
    lines = [f"# Codebook{': ' + title if title else ''}", "",
             "Every table is tidy (one row per thing) and every row carries `version_sha256`; all but "
             f"`{WIDE}` are long, and `{WIDE}` puts one participant on one row.", "",
             "| type | meaning |", "| --- | --- |"]
    lines += [f"| {name} | {meaning} |" for name, meaning in data["types"].items()]
    for name, table in data["tables"].items():
        lines += ["", f"## {name}", "", f"{table['description']} One row per {table['row']}."]
        if table["note"]:
            lines += ["", f"**{table['note']}**"]
        lines += ["", "| column | type | unit | allowed values | description |", "| --- | --- | --- | --- | --- |"]
        for c in table["columns"]:
            allowed = ", ".join(f"`{v}`" for v in c["allowed"])
            required = "" if c["nullable"] else " Never empty."
            lines.append(f"| `{c['name']}` | {c['type']} | {c['unit']} | {allowed} | "
                         f"{c['description'].replace('|', '/')}{required} |")
    return "\n".join(lines) + "\n"
