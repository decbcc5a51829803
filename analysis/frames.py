"""Querysets to rows and DataFrames: the thin edge between the database and the analysis.

Rows are tuples in the column order of `analysis.codebook.TABLES`. Everything per participant is read
in chunks of participants (keyset pagination on the id), so memory does not grow with the study.
`analysis.measures` and `analysis.stats` take the DataFrames built here (or read from an export) and
never touch the ORM.
"""
from __future__ import annotations

import json
import statistics
from datetime import UTC
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from django.db import connection, transaction
from django.db.models import BigIntegerField, F, FloatField, Func, Q, TextField
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Substr

from explainers.models import LearnerModelSnapshot, LLMCall, PostTestPrediction, Turn
from participants.models import PageVisit, Participant, Response
from participants.pseudonyms import pseudonym, pseudonym_key
from studies.models import Study, StudyVersion
from studies.protocol import Protocol
from studies.scoring import item_key
from studies.spec import FROM_TARGET, localize

from .codebook import CLIENT_COUNTERS, TABLES, Table, wide_column_names

if TYPE_CHECKING:  # pandas is imported where a frame is built, not by every process that loads the admin
    import pandas as pd

CHUNK_SIZE = 2000  # participants per chunk: each chunk is one pass over the turns and LLM calls
ERROR_MAX_CHARS = 500  # an LLM call's error text is cut here in the export (the database keeps more)


@contextmanager
def read_only_snapshot():
    """One consistent, read-only view of the database for everything read inside (PostgreSQL)."""
    outer = connection.in_atomic_block
    with transaction.atomic():
        if connection.vendor == "postgresql" and not outer:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield
ITER_CHUNK = 2000


# --- formatting in the database (parsing timestamps and JSON in Python is what costs) -------------


class IsoUTC(Func):
    """A timestamp as ISO 8601 text in UTC with microseconds (`2026-05-01T12:00:00.000000Z`)."""

    output_field = TextField()
    template = "to_char(%(expressions)s AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

    def as_sqlite(self, compiler, connection, **extra):
        return self.as_sql(compiler, connection, template="strftime('%%Y-%%m-%%dT%%H:%%M:%%fZ', %(expressions)s)")


class JsonText(Func):
    """A JSON value as text: a string unquoted, anything else (arrays, numbers) as JSON."""

    output_field = TextField()
    template = "(%(expressions)s #>> '{}')"

    def as_sqlite(self, compiler, connection, **extra):
        # json_extract gives numbers as numbers: cast, so the column is text as on PostgreSQL
        return self.as_sql(compiler, connection, template="CAST(json_extract(%(expressions)s, '$') AS TEXT)")


def _iso(*names: str) -> dict:
    return {f"{name}__iso": IsoUTC(F(name)) for name in names}


def _counter(key: str):
    return Cast(KeyTextTransform(key, "client"), BigIntegerField())


# --- who is exported ----------------------------------------------------------------------------


@dataclass
class Scope:
    """The study, its exported versions and who of its participants is in the export."""

    study: Study
    versions: list[StudyVersion]
    include_simulated: bool = True
    include_pilot: bool = False
    deleted_withdrawn_versions: list[int] = field(default_factory=list)

    def participants(self):
        qs = Participant.objects.filter(study=self.study)
        if not self.include_simulated:
            qs = qs.filter(is_simulated=False)
        if not self.include_pilot:
            qs = qs.filter(is_pilot=False)
        if self.deleted_withdrawn_versions:
            qs = qs.exclude(Q(status=Participant.Status.WITHDRAWN, version_id__in=self.deleted_withdrawn_versions))
        return qs

    def withdrawal(self) -> dict[int, str]:
        return {v.number: v.spec.get("withdrawal", {}).get("data", "keep") for v in self.versions}


def export_scope(*, slug: str, include_simulated: bool = True, include_pilot: bool = False) -> Scope:
    """Return what an export of the study holds: every launched version (or one with participants)."""
    study = Study.objects.get(slug=slug)
    versions = [
        v for v in StudyVersion.objects.filter(study=study).order_by("number")
        if v.state != StudyVersion.State.DRAFT or v.participants.exists()
    ]
    delete = [v.pk for v in versions if (v.spec.get("withdrawal") or {}).get("data") == "delete"]
    return Scope(study, versions, include_simulated, include_pilot, delete)


# --- pseudonyms ---------------------------------------------------------------------------------


# Computed by participants (which stores it as Participant.pseudonym); the same function here keeps
# every export's values exactly as before.
_pseudonym_key = pseudonym_key


# --- per-participant tables, chunk by chunk -----------------------------------------------------

_PARTICIPANT_FIELDS = (
    "id", "version_sha256", "arm", "form_order", "stratum", "allocation_index", "step", "status", "is_simulated",
    "is_pilot", "language", "created_at__iso", "consented_at__iso", "allocated_at__iso", "completed_at__iso",
    "consent_version", "conversation_id", "conversation__learner_model_from__participant__pseudonym",
    "conversation__yoked_from__participant__pseudonym", "conversation__yoked_from__screening__mode",
)


@dataclass
class Chunk:
    """Up to CHUNK_SIZE participants: their raw fields and pseudonyms."""

    participants: list[dict]
    names: dict[int, str]           # participant id -> pseudonym
    conversations: dict[int, tuple]  # conversation id -> (pseudonym, version_sha256)

    @property
    def ids(self) -> list[int]:
        return list(self.names)


def participant_chunks(scope: Scope, size: int = CHUNK_SIZE) -> Iterator[Chunk]:
    """Yield the scope's participants in id order, `size` at a time (keyset pagination)."""
    key = _pseudonym_key()
    last = 0
    base = (scope.participants().order_by("id")
            .annotate(**_iso("created_at", "consented_at", "allocated_at", "completed_at"))
            .values(*_PARTICIPANT_FIELDS))
    while True:
        rows = list(base.filter(id__gt=last)[:size])
        if not rows:
            return
        last = rows[-1]["id"]
        names = {r["id"]: pseudonym(r["id"], key) for r in rows}
        conversations = {
            r["conversation_id"]: (names[r["id"]], r["version_sha256"]) for r in rows if r["conversation_id"]
        }
        yield Chunk(rows, names, conversations)


def event_rows(chunk: Chunk) -> tuple[list[tuple], dict[int, dict]]:
    """Return the chunk's page visits as `events` rows, and the integrity aggregates per participant."""
    rows = []
    visits = (
        PageVisit.objects.filter(participant_id__in=chunk.ids).order_by("participant_id", "first_shown_at", "id")
        .annotate(**_iso("first_shown_at", "last_shown_at", "submitted_at"),
                  **{f"c_{k}": _counter(k) for k in CLIENT_COUNTERS})
        .values_list("participant_id", "version_sha256", "page", "first_shown_at__iso", "last_shown_at__iso",
                     "shown_count", "submitted_at__iso", "server_ms", *(f"c_{k}" for k in CLIENT_COUNTERS))
    )
    totals: dict[int, dict] = defaultdict(lambda: {"paste_count": 0, "hidden_ms": 0, "visibility_changes": 0,
                                                   "first_input": [], "reloaded": 0})
    for pid, sha, page, first, last, shown, submitted, server_ms, *counters in visits.iterator(chunk_size=ITER_CHUNK):
        rows.append((sha, chunk.names[pid], page, first, last, shown, submitted, server_ms, *counters))
        client = dict(zip(CLIENT_COUNTERS, counters))
        total = totals[pid]
        for k in ("paste_count", "hidden_ms", "visibility_changes"):
            total[k] += client[k] or 0
        if client["first_input_ms"] is not None:
            total["first_input"].append(client["first_input_ms"])
        total["reloaded"] += shown > 1
    return rows, totals


def participant_rows(chunk: Chunk, totals: dict[int, dict]) -> list[tuple]:
    rows = []
    for p in chunk.participants:
        t = totals.get(p["id"])
        integrity = (None, None, None, None, 0) if t is None else (
            t["paste_count"], t["hidden_ms"], t["visibility_changes"],
            float(statistics.median(t["first_input"])) if t["first_input"] else None, t["reloaded"],
        )
        rows.append((
            p["version_sha256"], chunk.names[p["id"]], p["arm"], p["form_order"], p["stratum"], p["allocation_index"],
            p["step"], p["status"], p["is_simulated"], p["is_pilot"], p["language"], p["created_at__iso"],
            p["consented_at__iso"], p["consented_at__iso"], p["allocated_at__iso"], p["completed_at__iso"],
            p["consent_version"],
            *integrity,
            p["conversation__learner_model_from__participant__pseudonym"],
            p["conversation__yoked_from__participant__pseudonym"],
            p["conversation__yoked_from__screening__mode"],
        ))
    return rows


def response_rows(chunk: Chunk, item_kinds: dict[tuple[str, str], str]) -> Iterator[tuple]:
    responses = (
        Response.objects.filter(participant_id__in=chunk.ids).order_by("participant_id", "id")
        .annotate(value_text=JsonText(F("value")), **_iso("created_at"))
        .values_list("version_sha256", "participant_id", "phase", "item_id", "form", "concept", "value_text", "score",
                     "correct", "confidence", "time_ms", "created_at__iso")
    )
    for sha, pid, phase, item_id, form, concept, value, *rest in responses.iterator(chunk_size=ITER_CHUNK):
        yield (sha, chunk.names[pid], phase, item_id, item_kinds.get((sha, item_id)), form, concept, value, *rest)


def turn_rows(chunk: Chunk) -> Iterator[tuple]:
    if not chunk.conversations:
        return
    turns = (
        Turn.objects.filter(conversation_id__in=list(chunk.conversations)).order_by("conversation_id", "created_at", "id")
        .annotate(**_iso("created_at", "first_token_at", "completed_at"))
        .values_list("conversation_id", "id", "author", "reply_to_id", "status", "text", "created_at__iso",
                     "first_token_at__iso", "completed_at__iso", "scripted", "error_kind", "act", "concept",
                     "check_item", "answers_check_id", "check_correct", "tool_calls", "shown_text")
    )
    for conversation_id, turn_id, author, reply_to_id, status, *rest, tool_calls, shown_text in turns.iterator(
            chunk_size=ITER_CHUNK):
        name, sha = chunk.conversations[conversation_id]
        cut_off = status == Turn.Status.FAILED and bool(shown_text)  # as Turn.cut_off, without loading the model
        yield (sha, name, turn_id, author, reply_to_id, status, *rest, _json(tool_calls) if tool_calls else None,
               shown_text, cut_off)


def llm_call_rows(chunk: Chunk) -> Iterator[tuple]:
    if not chunk.conversations:
        return
    calls = (
        LLMCall.objects.filter(turn__conversation_id__in=list(chunk.conversations))
        .order_by("turn__conversation_id", "started_at", "id")
        # the JSON goes out as the database's own text: no decode and re-encode in Python
        .annotate(request_text=Cast("request", TextField()), response_text=Cast("response", TextField()),
                  trimmed_text=Cast("trimmed", TextField()), error_text=Substr("error", 1, ERROR_MAX_CHARS),
                  cost=Cast("cost_usd", FloatField()), **_iso("started_at"))
        .values_list("version_sha256", "turn__conversation_id", "turn_id", "purpose", "attempt", "status", "provider",
                     "model", "model_reported", "scripted", "error_kind", "error_text", "http_status", "retry_after_s",
                     "started_at__iso", "ttft_ms", "latency_ms", "input_tokens", "output_tokens", "cost",
                     "tool_choice", "structured_output", "fallback_reason", "trimmed_text",
                     "request_text", "response_text")
    )
    for sha, conversation_id, *rest in calls.iterator(chunk_size=ITER_CHUNK):
        yield (sha, chunk.conversations[conversation_id][0], *rest)


def learner_model_rows(chunk: Chunk) -> Iterator[tuple]:
    if not chunk.conversations:
        return
    snapshots = (
        LearnerModelSnapshot.objects.filter(conversation_id__in=list(chunk.conversations))
        .order_by("conversation_id", "index")
        .annotate(state_text=Cast("state", TextField()), **_iso("created_at"))
        .values_list("conversation_id", "turn_id", "index", "source", "schema_version", "state_text", "created_at__iso")
    )
    for conversation_id, *rest in snapshots.iterator(chunk_size=ITER_CHUNK):
        name, sha = chunk.conversations[conversation_id]
        yield (sha, name, *rest)


def prediction_rows(chunk: Chunk) -> Iterator[tuple]:
    if not chunk.conversations:
        return
    predictions = (
        PostTestPrediction.objects.filter(conversation_id__in=list(chunk.conversations))
        .order_by("conversation_id", "item_id")
        .annotate(answer_text=Cast("predicted_answer", TextField()))
        .values_list("conversation_id", "item_id", "p_correct", "answer_text", "source")
    )
    for conversation_id, *rest in predictions.iterator(chunk_size=ITER_CHUNK):
        name, sha = chunk.conversations[conversation_id]
        yield (sha, name, *rest)


# --- per-version tables -------------------------------------------------------------------------


def item_kinds(versions: Iterable[StudyVersion]) -> dict[tuple[str, str], str]:
    return {(v.sha256, item["id"]): item["kind"] for v in versions for item in v.spec["items"]}


def _json(value) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


def _english(version: StudyVersion, value) -> str:
    languages = version.spec.get("languages") or ["en"]
    return localize(value, "en" if "en" in languages else languages[0])


def item_rows(versions: Iterable[StudyVersion]) -> list[tuple]:
    rows = []
    for version in versions:
        protocol = Protocol(version.spec)
        instruments = version.spec["instruments"]
        placements: dict[str, list[tuple]] = defaultdict(list)
        for phase in ("pre_test", "post_test"):
            for form, ids in instruments[phase]["forms"].items():
                for n, item_id in enumerate(ids, 1):
                    placements[item_id].append((phase, form, n))
        for n, item_id in enumerate(instruments.get("questionnaire") or [], 1):
            placements[item_id].append(("questionnaire", "", n))
        for item_id, item in protocol.items.items():
            key = item_key(item, version.target_keys or {})
            for phase, form, position in placements.get(item_id) or [(None, None, None)]:
                rows.append((
                    version.sha256, item_id, item["kind"], item.get("concept"), phase, form, position, _json(key),
                    item.get("key") == FROM_TARGET, item.get("tolerance"), _json(item.get("options")),
                    _english(version, item.get("prompt")),
                ))
    return rows


def questionnaire_items(versions: Iterable[StudyVersion]) -> list[dict]:
    """The questionnaire items of the versions, in order of first appearance; the latest version's wording.

    Each is {id, kind, prompt (English), scale ({min, max} for likert items)}: what `codebook.wide_table`
    and `wide_rows` need.
    """
    found: dict[str, dict] = {}
    for version in versions:
        items = {item["id"]: item for item in version.spec["items"]}
        for item_id in version.spec["instruments"].get("questionnaire") or []:
            item = items.get(item_id)
            if item is None:
                continue
            scale = item.get("scale") or {}
            found[item_id] = {"id": item_id, "kind": item["kind"], "prompt": _english(version, item.get("prompt")),
                              "scale": {k: scale[k] for k in ("min", "max") if k in scale}}
    return list(found.values())


def analysis_scales(versions: Iterable[StudyVersion]) -> list[dict]:
    """The `analysis.scales` the versions declare (the latest version's definition of each id)."""
    found: dict[str, dict] = {}
    for version in versions:
        for scale in (version.spec.get("analysis") or {}).get("scales") or []:
            found[scale["id"]] = {"id": scale["id"], "items": list(scale["items"]), "scoring": scale.get("scoring")
                                  or "mean", "reverse": list(scale.get("reverse") or [])}
    return list(found.values())


def _answer(value, kind: str):
    """A questionnaire answer (JSON text as exported in responses.value) as the wide column's value."""
    if value is None:
        return None
    if kind in ("likert", "numeric"):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        return int(number) if kind == "likert" and number.is_integer() else number
    return str(value)


def _cell(value, type_: str):
    """A DataFrame value as a writer expects it: None for missing, plain Python types."""
    import pandas as pd

    if value is None or (not isinstance(value, (str, list, dict)) and pd.isna(value)):
        return None
    if type_ == "integer":
        return int(value)
    if type_ == "number":
        return float(value)
    if type_ == "boolean":
        return bool(value)
    return str(value)


def wide_rows(table: Table, items: list[dict], scales: list[dict], participants: pd.DataFrame,
              responses: pd.DataFrame, turns: pd.DataFrame, llm_calls: pd.DataFrame,
              predictions: pd.DataFrame) -> list[tuple]:
    """Return one `participants_wide` row per row of `participants`, in its order.

    The measures are `analysis.measures.participant_measures(..., everyone=True)` of the same frames the
    long tables hold (`predictions` with its codebook name `p_correct`); the item columns are the
    participant's questionnaire answers; a scale is the mean (or sum) of its items, a reverse-keyed likert
    item scored min + max − answer, and empty unless every item was answered.
    """
    from . import measures

    if participants.empty:
        return []
    computed = measures.participant_measures(
        participants, responses, turns, llm_calls, predictions.rename(columns={"p_correct": "predicted_correct"}),
        everyone=True,
    )
    out = participants.merge(computed.drop(columns=["arm", "form_order"]), on="pseudonym", how="left")
    names = wide_column_names(items, scales)
    asked = responses[responses["phase"] == "questionnaire"]
    answers = {(p, i): v for p, i, v in zip(asked["pseudonym"], asked["item_id"], asked["value"])}
    kinds = {item["id"]: item for item in items}
    values: dict[str, list] = {}
    for item in items:
        values[item["id"]] = [_answer(answers.get((p, item["id"])), item["kind"]) for p in out["pseudonym"]]
        out[names[("item", item["id"])]] = _objects(values[item["id"]])
    for scale in scales:
        scored = []
        for row in zip(*(values.get(i, [None] * len(out)) for i in scale["items"])):
            if any(v is None for v in row):
                scored.append(None)
                continue
            points = []
            for item_id, v in zip(scale["items"], row):
                span = kinds.get(item_id, {}).get("scale") or {}
                reverse = item_id in scale["reverse"] and "min" in span and "max" in span
                points.append(span["min"] + span["max"] - v if reverse else v)
            scored.append(float(sum(points) / len(points) if scale["scoring"] == "mean" else sum(points)))
        out[names[("scale", scale["id"])]] = _objects(scored)
    columns = [(c.name, c.type) for c in table.columns]
    return [tuple(_cell(value, type_) for value, (_, type_) in zip(row, columns))
            for row in out[[name for name, _ in columns]].itertuples(index=False, name=None)]


def _objects(values: list):
    """A list as an object Series (keeps None and ints as they are)."""
    import pandas as pd

    return pd.Series(values, dtype=object)


def concept_rows(versions: Iterable[StudyVersion]) -> list[tuple]:
    return [
        (v.sha256, c["id"], _english(v, c.get("label")), _english(v, c.get("description")))
        for v in versions for c in v.spec.get("concepts") or []
    ]


def version_rows(study: Study, versions: Iterable[StudyVersion]) -> list[tuple]:
    return [
        (v.sha256, study.slug, v.number, v.state, v.target_sha256, _json(v.target_info or {}),
         v.launched_at and v.launched_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        for v in versions
    ]


# --- DataFrames ---------------------------------------------------------------------------------


def frame(table: str, rows: Iterable[tuple]) -> pd.DataFrame:
    """Return rows of a codebook table as a DataFrame with the codebook's columns (timestamps as UTC)."""
    import pandas as pd

    df = pd.DataFrame.from_records(list(rows), columns=TABLES[table].names)
    for column in TABLES[table].columns:
        if column.type == "datetime":
            df[column.name] = pd.to_datetime(df[column.name], utc=True, format="ISO8601")
    return df


def participants_frame(scope: Scope) -> pd.DataFrame:
    """All participants of the scope (for measures and the monitor: holds the whole table in memory)."""
    rows = []
    for chunk in participant_chunks(scope):
        _, totals = event_rows(chunk)
        rows += participant_rows(chunk, totals)
    return frame("participants", rows)


def responses_frame(scope: Scope) -> pd.DataFrame:
    kinds = item_kinds(scope.versions)
    rows = []
    for chunk in participant_chunks(scope):
        rows += response_rows(chunk, kinds)
    return frame("responses", rows)
