"""Incremental-load state: cursors and processed-file sets that advance only after the sink commits.

A source with ``incremental:`` reads the state saved for ``(pipeline, source)`` when the pipeline
is built, reads only what is newer (a *closed* start: rows equal to the saved cursor are read
again, the sink's primary-key upsert or a dedup step makes that harmless), and writes what it
read to a *pending* file in the run folder::

    <run_dir>/_state/pending/<source>.json

When, and only when, the whole pipeline finished (every sink committed, error budget kept),
``run.py`` moves the pending state into the store. A failed or killed run leaves the store
unchanged, so the next run starts again from the last committed position: the cursor never
runs ahead of the sink.

Stores: a SQLite file (default ``<output dir>/beam_etl_state.sqlite``) or a table in
PostgreSQL (``postgresql://user:${PASSWORD}@host:port/db``). Values keep their type
(int, float, decimal, string, date, datetime with or without zone) through JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import decimal
import json
import os
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, Protocol

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from beam_etl import registry
from beam_etl.ops.context import get_run_context
from beam_etl.ops.secrets import redact, register_secret

STATE_FILE_NAME = "beam_etl_state.sqlite"
STATE_URL_ENV = "BEAM_ETL_STATE_URL"  # the state store, for processes started with a secret-bearing URL
PENDING_DIR = "_state/pending"
_TABLE = "beam_etl_state"
_HISTORY = "beam_etl_state_history"

# --------------------------------------------------------------------------------------
# Typed values through JSON
# --------------------------------------------------------------------------------------


def encode_value(value: Any) -> dict[str, Any] | None:
    """A cursor value as ``{"type": ..., "value": ...}`` (JSON-safe, type kept)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return {"type": "bool", "value": value}
    if isinstance(value, int):
        return {"type": "int", "value": value}
    if isinstance(value, float):
        return {"type": "float", "value": value}
    if isinstance(value, decimal.Decimal):
        return {"type": "decimal", "value": str(value)}
    if isinstance(value, dt.datetime):
        return {"type": "datetime", "value": value.isoformat()}
    if isinstance(value, dt.date):
        return {"type": "date", "value": value.isoformat()}
    if isinstance(value, str):
        return {"type": "string", "value": value}
    if isinstance(value, list):
        return {"type": "files", "value": value}
    raise TypeError(f"cannot keep a cursor of type {type(value).__name__} ({value!r})")


def decode_value(encoded: dict[str, Any] | None) -> Any:
    """Inverse of ``encode_value``."""
    if encoded is None:
        return None
    kind, value = encoded["type"], encoded["value"]
    if kind == "decimal":
        return decimal.Decimal(value)
    if kind == "datetime":
        return dt.datetime.fromisoformat(value)
    if kind == "date":
        return dt.date.fromisoformat(value)
    return value


def newest(a: Any, b: Any) -> Any:
    """The larger of two cursor values, None-safe (naive and aware datetimes compare in UTC)."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, dt.datetime) and isinstance(b, dt.datetime) and (a.tzinfo is None) != (b.tzinfo is None):
        a_utc = a if a.tzinfo else a.replace(tzinfo=dt.UTC)
        b_utc = b if b.tzinfo else b.replace(tzinfo=dt.UTC)
        return a if a_utc >= b_utc else b
    return a if a >= b else b


def column_max(batch: pa.RecordBatch, field: str) -> Any:
    """The largest non-null value of ``field`` in ``batch`` as a Python value, or None."""
    column = batch.column(field)
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return pc.max(column).as_py()


# --------------------------------------------------------------------------------------
# Stores
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SavedState:
    pipeline: str
    source: str
    kind: str  # cursor | new_files
    value: Any
    run_id: str
    updated_at: str


class StateStore(Protocol):
    def get(self, pipeline: str, source: str) -> SavedState | None: ...

    def put(self, state: SavedState) -> None: ...

    def delete(self, pipeline: str, source: str | None = None) -> int: ...

    def list(self, pipeline: str | None = None) -> list[SavedState]: ...


class _DbApiStore:
    """A state table over any DB-API connection; subclasses say how to connect and bind."""

    placeholder = "?"

    def _connect(self) -> Any:
        """Abstract hook: a new DB-API connection (SqliteStateStore and PostgresStateStore override it)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _connect()")

    @contextlib.contextmanager
    def _conn(self) -> Iterator[Any]:
        conn = self._connect()
        try:
            yield conn
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()

    def _ensure(self, conn: Any) -> None:
        cur = conn.cursor()
        cur.execute(f"CREATE TABLE IF NOT EXISTS {_TABLE} (pipeline TEXT NOT NULL, source TEXT NOT NULL, "
                    "kind TEXT NOT NULL, value TEXT, run_id TEXT NOT NULL, updated_at TEXT NOT NULL, "
                    "PRIMARY KEY (pipeline, source))")
        cur.execute(f"CREATE TABLE IF NOT EXISTS {_HISTORY} (pipeline TEXT NOT NULL, source TEXT NOT NULL, "
                    "kind TEXT NOT NULL, value TEXT, run_id TEXT NOT NULL, updated_at TEXT NOT NULL)")

    def _row(self, row: tuple) -> SavedState:
        pipeline, source, kind, value, run_id, updated_at = row
        return SavedState(pipeline, source, kind, decode_value(json.loads(value)) if value else None, run_id,
                          updated_at)

    def get(self, pipeline: str, source: str) -> SavedState | None:
        p = self.placeholder
        with self._conn() as conn:
            self._ensure(conn)
            cur = conn.cursor()
            cur.execute(f"SELECT pipeline, source, kind, value, run_id, updated_at FROM {_TABLE} "
                        f"WHERE pipeline = {p} AND source = {p}", (pipeline, source))
            row = cur.fetchone()
        return self._row(row) if row else None

    def put(self, state: SavedState) -> None:
        p = self.placeholder
        value = json.dumps(encode_value(state.value))
        params = (state.pipeline, state.source, state.kind, value, state.run_id, state.updated_at)
        with self._conn() as conn:
            self._ensure(conn)
            cur = conn.cursor()
            cur.execute(f"DELETE FROM {_TABLE} WHERE pipeline = {p} AND source = {p}", params[:2])
            cur.execute(f"INSERT INTO {_TABLE} VALUES ({p}, {p}, {p}, {p}, {p}, {p})", params)
            cur.execute(f"INSERT INTO {_HISTORY} VALUES ({p}, {p}, {p}, {p}, {p}, {p})", params)

    def delete(self, pipeline: str, source: str | None = None) -> int:
        p = self.placeholder
        with self._conn() as conn:
            self._ensure(conn)
            cur = conn.cursor()
            if source is None:
                cur.execute(f"DELETE FROM {_TABLE} WHERE pipeline = {p}", (pipeline,))
            else:
                cur.execute(f"DELETE FROM {_TABLE} WHERE pipeline = {p} AND source = {p}", (pipeline, source))
            return cur.rowcount

    def list(self, pipeline: str | None = None) -> list[SavedState]:
        p = self.placeholder
        with self._conn() as conn:
            self._ensure(conn)
            cur = conn.cursor()
            sql = f"SELECT pipeline, source, kind, value, run_id, updated_at FROM {_TABLE}"
            cur.execute(sql + (f" WHERE pipeline = {p}" if pipeline else "") + " ORDER BY pipeline, source",
                        (pipeline,) if pipeline else ())
            return [self._row(r) for r in cur.fetchall()]


class SqliteStateStore(_DbApiStore):
    """State in a SQLite file (created on first use)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _connect(self) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return sqlite3.connect(self.path, timeout=30)

    def __repr__(self) -> str:
        return f"sqlite://{self.path}" if self.path.is_absolute() else str(self.path)


class PostgresStateStore(_DbApiStore):
    """State in a table of a PostgreSQL database (``postgresql://user:pw@host:port/db``)."""

    placeholder = "%s"

    def __init__(self, url: str) -> None:
        self.url = url
        password = urllib.parse.urlsplit(url).password
        if password:  # a --state URL typed on the command line never went through ${ENV}
            register_secret(urllib.parse.unquote(password))
            register_secret(password)

    def _connect(self) -> Any:
        import psycopg2

        try:
            return psycopg2.connect(self.url, connect_timeout=10)
        except psycopg2.Error as err:
            raise StateError(f"cannot open the state store {redact(repr(self))}: {redact(str(err)).strip()}") from None

    def __repr__(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        host = parts.hostname or ""
        return f"postgresql://{parts.username or ''}@{host}:{parts.port or 5432}{parts.path}"


class StateError(RuntimeError):
    """The state store cannot be opened or holds something unexpected."""


def open_store(url: str) -> StateStore:
    """``sqlite:///path`` (or a plain path) or ``postgresql://...``."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStateStore(url)
    if url.startswith("sqlite:///"):
        return SqliteStateStore(url.removeprefix("sqlite://"))  # sqlite:///abs/path -> /abs/path
    if "://" in url:
        raise StateError(f"state store {redact(url)!r}: use sqlite:///PATH, a file path, or postgresql://...")
    return SqliteStateStore(url)


# --------------------------------------------------------------------------------------
# What a source asks for, and what it leaves behind
# --------------------------------------------------------------------------------------


class IncrementalConfig(registry.StrictConfig):
    """``incremental:`` on a source: read only what is new since the last committed run."""

    cursor_field: str | None = Field(None, description="Column whose largest value read is saved (e.g. updated_at).")
    primary_key: list[str] = Field(default_factory=list,
                                   description="Key the sink upserts on; rows equal to the cursor are read again.")
    initial: Any = Field(None, description="Start value for the first run (default: read everything).")
    mode: Literal["cursor", "new_files"] = Field(
        "cursor", description="cursor: a column's largest value; new_files: the set of files already read.")

    @model_validator(mode="after")
    def _check(self) -> IncrementalConfig:
        if self.mode == "cursor" and not self.cursor_field:
            raise ValueError("cursor_field is required with mode: cursor (or use mode: new_files for file sources)")
        if self.mode == "new_files" and self.cursor_field:
            raise ValueError("cursor_field does not apply to mode: new_files")
        return self


CURSOR_TAG = "cursor"  # the tagged output on which a database read reports its batches' cursor maxima


def cursor_config(value: IncrementalConfig | dict[str, Any] | None) -> IncrementalConfig | None:
    """Validates a database source's ``incremental``: it keeps a cursor column (mode cursor)."""
    if value is None:
        return None
    config = value if isinstance(value, IncrementalConfig) else IncrementalConfig.model_validate(value)
    if config.mode != "cursor":
        raise ValueError("incremental.mode: database reads keep a cursor_field (mode: cursor); new_files is for "
                         "file sources")
    return config


@dataclasses.dataclass(frozen=True)
class IncrementalStart:
    """Where a source starts: the committed value (None = from the beginning) and where pending goes."""

    source: str
    mode: str
    cursor_field: str | None
    start: Any
    pending_path: str
    full_refresh: bool


def cursor_read_start(step: str, config: IncrementalConfig | None) -> IncrementalStart | None:
    """For a database read: the committed cursor of ``step`` (None when the read is not incremental)."""
    return incremental_start(step, config) if config is not None else None


def record_cursor(results: Any, start: IncrementalStart | None) -> None:
    """Wires a read's ``CURSOR_TAG`` output (per-batch maxima) to the run's pending state."""
    if start is not None:
        _ = results[CURSOR_TAG] | "RecordCursor" >> RecordPendingState(start)


def incremental_start(source: str, config: IncrementalConfig) -> IncrementalStart:
    """Reads the committed state for ``source`` of the pipeline being built (at construction time)."""
    run = get_run_context()
    saved = None
    if run.state_url and not run.full_refresh:
        saved = open_store(run.state_url).get(run.pipeline, source)
    if saved is not None and saved.kind != config.mode:
        raise StateError(f"state for {run.pipeline}/{source} is a {saved.kind!r} but the source now uses "
                         f"{config.mode!r}: reset it with python -m beam_etl.state reset {run.pipeline} {source}")
    start = saved.value if saved is not None else (None if config.mode == "new_files" else config.initial)
    pending = os.path.join(run.run_dir, PENDING_DIR, f"{source}.json") if run.run_dir else ""
    return IncrementalStart(source, config.mode, config.cursor_field, start, pending, run.full_refresh)


class _WritePending(beam.DoFn):
    def __init__(self, start: IncrementalStart) -> None:
        self._start = start

    def process(self, value: Any) -> Iterator[str]:
        if not self._start.pending_path:
            return
        if value is None and self._start.mode == "cursor":
            value = self._start.start  # nothing new: the cursor stays where it was
        path = Path(self._start.pending_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"source": self._start.source, "kind": self._start.mode, "value": encode_value(value),
               "previous": encode_value(self._start.start if self._start.mode == "cursor" else None)}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, sort_keys=True))
        tmp.replace(path)
        yield str(path)


def _merge_cursor(values: Iterable[Any]) -> Any:
    best = None
    for v in values:
        best = newest(best, v)
    return best


def _merge_files(values: Iterable[Any]) -> list[dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for group in values:
        for entry in group or []:
            merged[entry["path"]] = entry
    return [merged[k] for k in sorted(merged)]


class RecordPendingState(beam.PTransform):
    """Per-bundle partial states (cursor maxima, or lists of file entries) -> one pending file."""

    def __init__(self, start: IncrementalStart) -> None:
        super().__init__()
        self._start = start

    def expand(self, partials: beam.PCollection) -> beam.PCollection:
        merge = _merge_cursor if self._start.mode == "cursor" else _merge_files
        return (partials
                | "Merge" >> beam.CombineGlobally(merge)
                | "WritePending" >> beam.ParDo(_WritePending(self._start)))


def files_state(previous: Any, listed: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(files to read, the new processed set) for mode new_files; a file whose size or mtime changed is new."""
    seen = {e["path"]: (e.get("size"), e.get("mtime")) for e in previous or []}
    todo = [e for e in listed if seen.get(e["path"]) != (e.get("size"), e.get("mtime"))]
    return todo, _merge_files([previous or [], listed])


# --------------------------------------------------------------------------------------
# Commit after the run
# --------------------------------------------------------------------------------------


def commit_pending(run_dir: str | Path, state_url: str, pipeline: str, run_id: str) -> list[dict[str, Any]]:
    """Moves every pending state of a finished run into the store; returns what changed."""
    folder = Path(run_dir) / PENDING_DIR
    if not folder.is_dir():
        return []
    store = open_store(state_url)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    changes = []
    for path in sorted(folder.glob("*.json")):
        doc = json.loads(path.read_text())
        value = decode_value(doc["value"])
        store.put(SavedState(pipeline, doc["source"], doc["kind"], value, run_id, now))
        changes.append({"source": doc["source"], "kind": doc["kind"],
                        "from": doc.get("previous"), "to": doc["value"]})
    return changes


def describe_change(change: dict[str, Any]) -> str:
    """One line for the run summary."""
    if change["kind"] == "new_files":
        return f"{change['source']}: {len(change['to']['value'])} file(s) recorded as read"
    before = change["from"]["value"] if change["from"] else "(start)"
    after = change["to"]["value"] if change["to"] else "(nothing read)"
    return f"{change['source']}: cursor {before} -> {after}"
