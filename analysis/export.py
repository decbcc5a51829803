"""Export a study to tidy files (CSV, Parquet or JSON Lines) with a codebook and a manifest.

The long tables of `codebook.TABLES` and the wide table `participants_wide` (one row per participant,
its columns built for the study by `codebook.wide_table`).

Streaming: participants are read `chunk_size` at a time and each table's rows are written as they
come (CSV and JSONL line by line, Parquet one row group per chunk with the codebook's fixed schema),
so memory does not grow with the number of participants. Reads only; writes nothing to the database.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from datetime import UTC
from pathlib import Path

from django.utils import timezone

from . import frames
from .codebook import TABLE_NAMES, TABLES, WIDE, Table, codebook_json, codebook_markdown, wide_table

FORMATS = ("csv", "parquet", "jsonl")
PARQUET_MAX_ROWS = 20_000  # a row group holds at most this many rows (bounds memory for long chats)


# --- writers: one file per table ----------------------------------------------------------------


def _iso(value):
    return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Writer:
    """Rows arrive as tuples in codebook order, timestamps already ISO 8601 text in UTC (see frames)."""

    suffix = ""

    def __init__(self, directory: Path, table: Table):
        self.table, self.rows = table, 0
        self.path = directory / f"{table.name}.{self.suffix}"

    def write(self, rows) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class CsvWriter(_Writer):
    """RFC 4180 CSV, UTF-8, a header row; missing values are empty cells, booleans True/False."""

    suffix = "csv"

    def __init__(self, directory, table):
        super().__init__(directory, table)
        self.file = self.path.open("w", encoding="utf-8", newline="")
        self.csv = csv.writer(self.file)
        self.csv.writerow(table.names)

    def write(self, rows) -> None:
        writerow, n = self.csv.writerow, 0
        for row in rows:
            writerow(row)
            n += 1
        self.rows += n

    def close(self) -> None:
        self.file.close()


class JsonlWriter(_Writer):
    """One JSON object per line, every column present (null when missing)."""

    suffix = "jsonl"

    def __init__(self, directory, table):
        super().__init__(directory, table)
        self.file = self.path.open("w", encoding="utf-8")
        self.names = table.names

    def write(self, rows) -> None:
        dumps, names, write = json.dumps, self.names, self.file.write
        for row in rows:
            write(dumps(dict(zip(names, row)), ensure_ascii=False))
            write("\n")
            self.rows += 1

    def close(self) -> None:
        self.file.close()


def arrow_schema(table: Table):
    import pyarrow as pa

    types = {"string": pa.string(), "integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_(),
             "datetime": pa.timestamp("us", tz="UTC"), "json": pa.string()}
    return pa.schema([pa.field(c.name, types[c.type], nullable=c.nullable) for c in table.columns])


class ParquetWriter(_Writer):
    """Parquet with the codebook's schema; one row group per participant chunk (or PARQUET_MAX_ROWS)."""

    suffix = "parquet"

    def __init__(self, directory, table):
        import pyarrow.parquet as pq

        super().__init__(directory, table)
        self.schema = arrow_schema(table)
        self.writer = pq.ParquetWriter(self.path, self.schema, compression="zstd")
        self.buffer: list[tuple] = []

    def write(self, rows) -> None:
        for row in rows:
            self.buffer.append(row)
            if len(self.buffer) >= PARQUET_MAX_ROWS:
                self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if not self.buffer:
            return
        columns = list(zip(*self.buffer))
        # timestamps come as ISO 8601 text: Arrow parses them in C
        arrays = [pa.array(col, type=pa.string()).cast(field.type) if pa.types.is_timestamp(field.type)
                  else pa.array(col, type=field.type) for col, field in zip(columns, self.schema)]
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
        self.rows += len(self.buffer)
        self.buffer = []

    def close(self) -> None:
        self.flush()
        self.writer.close()


WRITERS = {"csv": CsvWriter, "parquet": ParquetWriter, "jsonl": JsonlWriter}


# --- the export ---------------------------------------------------------------------------------


def study_export(*, slug: str, out: str | Path, fmt: str = "csv", include_simulated: bool = True,
                 include_pilot: bool = False, chunk_size: int = frames.CHUNK_SIZE) -> dict:
    """Write every table of the study into `out`, plus codebook.json, codebook.md and manifest.json.

    Return the manifest. Raises Study.DoesNotExist for an unknown slug, ValueError for an unknown format.
    """
    if fmt not in WRITERS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with frames.read_only_snapshot():  # one consistent snapshot for every table; the export writes nothing
        exported_at = timezone.now()
        scope = frames.export_scope(slug=slug, include_simulated=include_simulated, include_pilot=include_pilot)
        items, scales = frames.questionnaire_items(scope.versions), frames.analysis_scales(scope.versions)
        wide = wide_table(items=items, scales=scales)
        counts = _write_tables(scope, out, WRITERS[fmt], chunk_size, (wide, items, scales))
    arms = sorted({a["id"] for v in scope.versions for a in v.spec["arms"]})
    concepts = sorted({c["id"] for v in scope.versions for c in v.spec.get("concepts") or []})
    book = {"arms": arms, "concepts": concepts, "extra_tables": (wide,)}
    (out / "codebook.json").write_text(codebook_json(**book), encoding="utf-8")
    (out / "codebook.md").write_text(codebook_markdown(title=slug, **book), encoding="utf-8")
    manifest = {
        "study": slug,
        "format": fmt,
        "exported_at": _iso(exported_at),
        "platform_commit": git_commit(),
        "versions": [
            {"number": v.number, "state": v.state, "sha256": v.sha256, "target_sha256": v.target_sha256,
             "withdrawal": scope.withdrawal()[v.number]}
            for v in scope.versions
        ],
        "options": {"include_simulated": include_simulated, "include_pilot": include_pilot,
                    "withdrawn": "left out where the version's withdrawal.data is `delete`, kept otherwise"},
        "row_counts": counts,
        "files": {
            path.name: {"bytes": path.stat().st_size, "sha256": _sha256(path)}
            for path in sorted(out.iterdir())
            if path.is_file() and path.name != "manifest.json"
            and (path.stem in TABLE_NAMES or path.name in ("codebook.json", "codebook.md"))
        },
        "pseudonym": "p_ + 16 hex of HMAC-SHA256(participant id) under a key derived from the platform secret",
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _write_tables(scope, out: Path, writer_class, chunk_size: int, wide: tuple) -> dict[str, int]:
    """Write every table; `wide` is (the wide Table, its questionnaire items, its scales)."""
    wide, items, scales = wide
    writers = {name: writer_class(out, table) for name, table in TABLES.items()}
    writers[WIDE] = writer_class(out, wide)
    try:
        writers["study_versions"].write(frames.version_rows(scope.study, scope.versions))
        writers["items"].write(frames.item_rows(scope.versions))
        writers["concepts"].write(frames.concept_rows(scope.versions))
        kinds = frames.item_kinds(scope.versions)
        per_participant = ("participants", "responses", "turns", "llm_calls", "learner_models", "predictions", "events",
                           WIDE)
        for chunk in frames.participant_chunks(scope, chunk_size):
            events, totals = frames.event_rows(chunk)
            people = frames.participant_rows(chunk, totals)
            writers["participants"].write(people)
            writers["events"].write(events)
            del events
            responses = list(frames.response_rows(chunk, kinds))
            writers["responses"].write(responses)
            # the wide table's measures need only a few columns of the turns and calls: kept as they stream by
            turns, calls, predictions = [], [], []
            writers["turns"].write(_keep(frames.turn_rows(chunk), turns, "turns", ("pseudonym", "author")))
            writers["llm_calls"].write(_keep(frames.llm_call_rows(chunk), calls, "llm_calls",
                                             ("pseudonym", "input_tokens", "output_tokens", "cost_usd")))
            writers["learner_models"].write(frames.learner_model_rows(chunk))
            writers["predictions"].write(_keep(frames.prediction_rows(chunk), predictions, "predictions",
                                               ("pseudonym", "item_id", "p_correct")))
            writers[WIDE].write(frames.wide_rows(
                wide, items, scales, frames.frame("participants", people), frames.frame("responses", responses),
                frames.frame("turns", turns), frames.frame("llm_calls", calls),
                frames.frame("predictions", predictions),
            ))
            del responses, turns, calls, predictions
            for name in per_participant:
                if isinstance(writers[name], ParquetWriter):
                    writers[name].flush()  # one row group per chunk
    finally:
        for writer in writers.values():
            writer.close()
    return {name: writer.rows for name, writer in writers.items()}


def _keep(rows, kept: list, table: str, columns: tuple[str, ...]):
    """Yield `rows` unchanged, appending to `kept` a copy with only `columns` filled (the others None)."""
    names = TABLES[table].names
    keep = [i for i, name in enumerate(names) if name in columns]
    blank = [None] * len(names)
    for row in rows:
        slim = list(blank)
        for i in keep:
            slim[i] = row[i]
        kept.append(tuple(slim))
        yield row


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> str | None:
    """Return the platform's commit: $GIT_COMMIT (containers) or read from .git without running git."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    git = Path(__file__).resolve().parent.parent / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: <path>"
            git = Path(git.read_text().split(":", 1)[1].strip())
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        common = git / "commondir"
        roots = [git] + ([(git / common.read_text().strip()).resolve()] if common.exists() else [])
        for root in roots:
            if (root / ref).exists():
                return (root / ref).read_text().strip()
            packed = root / "packed-refs"
            if packed.exists():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split(" ", 1)[0]
    except OSError:
        return None
    return None
