"""SQL connectors over a small dialect layer: SQLite here, PostgreSQL and MySQL/MariaDB beside it.

Everything that differs between databases lives in a ``Dialect`` (``_sql_common.py``): how to
connect, how to quote an identifier, which placeholder the driver wants (PEP 249
``paramstyle``), how an Arrow type maps to a column type and back, and how insert / upsert /
replace statements are spelled. This module holds the SQLite dialect and connectors; the
server databases share ``_sql_server_read.py`` / ``_sql_server_write.py`` and live in
``_sql_postgres.py`` (psycopg2) and ``_sql_mysql.py`` (PyMySQL), re-exported at the bottom.

``ReadFromSqlite`` plans the read once (columns, Arrow schema, key ranges), reshuffles the
ranges and reads each in its own DoFn with ``fetchmany``. ``WriteToSqlite`` writes one
transaction per batch with ``executemany`` and bound parameters; a batch that fails on a
constraint is split in halves until the offending rows are found, and only those rows go
to the dead-letter queue.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import difflib
import logging
import os
import random
import re
import sqlite3
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from beam_etl import registry
from beam_etl.batch import DEFAULT_BATCH_ROWS, batch_nbytes, row_as_record
from beam_etl.io._sql_common import (
    DIALECTS,
    WRITE_MODES,
    Dialect,
    _BatchRejected,
    _check_identifier,
    _check_name_list,
    _check_positive_int,
    _StructuralError,
    get_dialect,
    sql_sink_idempotent,
    sql_sink_streams,
)
from beam_etl.ops import progress
from beam_etl.ops.context import get_run_context
from beam_etl.ops.dlq import DLQ_TAG, dead_letter
from beam_etl.ops.metrics import StepMetrics, timed_process
from beam_etl.ops.secrets import redact
from beam_etl.ops.state import (
    CURSOR_TAG,
    IncrementalConfig,
    column_max,
    cursor_config,
    cursor_read_start,
    record_cursor,
)
from beam_etl.transforms.base import batch_attempt, tag_source

_LOG = logging.getLogger(__name__)

ROWID_COLUMN = "__beam_etl_rowid__"
_ROWID_ALIASES = ("rowid", "_rowid_", "oid")


# --------------------------------------------------------------------------------------
# Dialects
# --------------------------------------------------------------------------------------


class SqliteDialect(Dialect):
    """SQLite through the standard library's ``sqlite3`` (paramstyle qmark)."""

    name = "sqlite"
    paramstyle = sqlite3.paramstyle
    constraint_errors = (sqlite3.IntegrityError,)
    data_errors = (OverflowError, sqlite3.DataError, sqlite3.InterfaceError, sqlite3.ProgrammingError)
    _DECIMAL_RE = re.compile(r"^\s*(?:DECIMAL|NUMERIC)\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)", re.IGNORECASE)

    def connect(self, database: str, *, read_only: bool = False, timeout_s: float = 5.0, **params: Any) -> Any:
        path = os.path.abspath(os.path.expanduser(database))
        mode = "ro" if read_only else "rwc"
        uri = f"file:{urllib.parse.quote(path)}?mode={mode}"
        conn = sqlite3.connect(
            uri, uri=True, timeout=timeout_s, isolation_level=None, check_same_thread=False, **params
        )
        return conn

    def begin_write_sql(self) -> str:
        # Takes the write lock up front, so waiting happens here (under busy_timeout), not mid-batch.
        return "BEGIN IMMEDIATE"

    def upsert_sql(self, table: str, columns: Sequence[str], key: Sequence[str]) -> str:
        keys = {k.lower() for k in key}
        updates = [c for c in columns if c.lower() not in keys]
        action = (
            "DO UPDATE SET " + ", ".join(
                f"{self.quote_identifier(c)} = excluded.{self.quote_identifier(c)}" for c in updates
            )
            if updates else "DO NOTHING"
        )
        return f"{self.insert_sql(table, columns)} ON CONFLICT ({self.column_list(key)}) {action}"

    def replace_sql(self, table: str, columns: Sequence[str]) -> str:
        return "INSERT OR REPLACE" + self.insert_sql(table, columns)[len("INSERT"):]

    def table_columns(self, conn: Any, table: str) -> dict[str, tuple[str, str]] | None:
        rows = conn.execute("SELECT name, type FROM pragma_table_info(?)", (table,)).fetchall()
        if not rows:
            return None
        return {name.lower(): (name, decl or "") for name, decl in rows}

    def is_transient(self, exc: BaseException) -> bool:
        if not isinstance(exc, sqlite3.OperationalError):
            return False
        code = getattr(exc, "sqlite_errorname", "") or ""
        text = str(exc).lower()
        return code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text or "busy" in text

    def sql_type(self, arrow_type: pa.DataType) -> str:
        t = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
        if pa.types.is_boolean(t):
            return "BOOLEAN"
        if pa.types.is_integer(t) or pa.types.is_duration(t):
            return "INTEGER"
        if pa.types.is_floating(t):
            return "REAL"
        if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) \
                or pa.types.is_binary_view(t):
            return "BLOB"
        if pa.types.is_date(t):
            return "DATE"
        if pa.types.is_timestamp(t):
            return "TIMESTAMP WITH TIME ZONE" if t.tz is not None else "TIMESTAMP"
        if pa.types.is_time(t):
            return "TIME"
        if pa.types.is_decimal(t):
            return f"DECIMAL({t.precision},{t.scale})"
        if pa.types.is_nested(t):
            return "JSON"
        return "TEXT"

    def arrow_type(self, declared: str) -> pa.DataType | None:
        d = (declared or "").strip().upper()
        if not d:
            return None
        base = re.split(r"[\s(]", d, maxsplit=1)[0]
        if base in ("BOOLEAN", "BOOL"):
            return pa.bool_()
        if base == "DATE":
            return pa.date32()
        if base in ("DATETIME", "TIMESTAMP", "TIMESTAMPTZ"):
            zoned = base == "TIMESTAMPTZ" or "WITH TIME ZONE" in d
            return pa.timestamp("us", "UTC" if zoned else None)
        if base == "TIME":
            return pa.time64("us")
        if base in ("DECIMAL", "NUMERIC"):
            match = self._DECIMAL_RE.match(d)
            if match:
                precision, scale = int(match.group(1)), int(match.group(2) or 0)
                if 0 < precision <= 38 and scale <= precision:
                    return pa.decimal128(precision, scale)
                if 38 < precision <= 76 and scale <= precision:
                    return pa.decimal256(precision, scale)
            return pa.float64()
        if base == "JSON":
            return pa.string()
        # SQLite's own affinity rules, in their order (https://sqlite.org/datatype3.html, 3.1).
        if "INT" in d:
            return pa.int64()
        if "CHAR" in d or "CLOB" in d or "TEXT" in d:
            return pa.string()
        if "BLOB" in d:
            return pa.binary()
        if "REAL" in d or "FLOA" in d or "DOUB" in d:
            return pa.float64()
        return pa.float64()  # NUMERIC affinity


DIALECTS["sqlite"] = SqliteDialect()


# --------------------------------------------------------------------------------------
# Validation shared by the PTransforms and their config models
# --------------------------------------------------------------------------------------


def _check_database(value: Any, must_exist: bool) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"database: expected the path of an SQLite file, got {value!r}")
    if value.strip() == ":memory:" or value.startswith("file::memory:"):
        raise ValueError(
            "database: ':memory:' is private to one connection, and each Beam worker opens its own; "
            "use a file path"
        )
    if must_exist and not os.path.isfile(os.path.expanduser(value)):
        raise ValueError(f"database: {value!r} does not exist or is not a file; give the path of an SQLite file")


def validate_read_options(
    database: Any, table: Any, query: Any, columns: Any, partition_column: Any, num_partitions: Any, batch_rows: Any
) -> None:
    """Raises ValueError naming the field, the value and what is allowed."""
    _check_database(database, must_exist=True)
    if (table is None) == (query is None):
        raise ValueError(
            f"table / query: set exactly one of them (got table={table!r}, query={query!r}); "
            "table reads a whole table, query reads the rows of a SELECT"
        )
    if table is not None:
        _check_identifier("table", table)
    if query is not None and (not isinstance(query, str) or not query.strip().rstrip(";").strip()):
        raise ValueError(f"query: expected a SELECT statement, got {query!r}")
    _check_name_list("columns", columns)
    if partition_column is not None:
        _check_identifier("partition_column", partition_column)
    _check_positive_int("num_partitions", num_partitions)
    _check_positive_int("batch_rows", batch_rows)
    if query is not None and num_partitions > 1 and partition_column is None:
        raise ValueError(
            f"num_partitions: {num_partitions} needs partition_column for a query read "
            "(a numeric column of the query's result); tables fall back to their rowid"
        )


def validate_write_options(
    database: Any, table: Any, mode: Any, key: Any, busy_timeout_s: Any, max_retries: Any
) -> None:
    """Raises ValueError naming the field, the value and what is allowed."""
    _check_database(database, must_exist=False)
    _check_identifier("table", table)
    if mode not in WRITE_MODES:
        hint = difflib.get_close_matches(str(mode), WRITE_MODES, n=1)
        raise ValueError(
            f"mode: {mode!r} is not one of {list(WRITE_MODES)}" + (f"; did you mean {hint[0]!r}?" if hint else "")
        )
    _check_name_list("key", key)
    if mode == "upsert" and not key:
        raise ValueError("key: mode 'upsert' needs key: [columns] naming the primary or unique key to match on")
    if isinstance(busy_timeout_s, bool) or not isinstance(busy_timeout_s, (int, float)) or busy_timeout_s <= 0:
        raise ValueError(f"busy_timeout_s: expected a number of seconds > 0, got {busy_timeout_s!r}")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries: expected a whole number >= 0, got {max_retries!r}")


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Column:
    name: str
    type: pa.DataType
    declared: str  # "" when the type was inferred from the stored values


@dataclasses.dataclass(frozen=True)
class _ReadTask:
    """One key range of a read: its SQL, parameters and the columns it yields."""

    sql: str
    params: tuple[Any, ...]
    columns: tuple[_Column, ...]
    has_rowid: bool
    partition: int


class _BadValue(Exception):
    pass


def _storage_class(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return "INTEGER"
    if isinstance(value, float):
        return "REAL"
    if isinstance(value, str):
        return "TEXT"
    return "BLOB"


_TRUE = {"1", "true", "t"}
_FALSE = {"0", "false", "f"}
_DECIMAL_CONTEXT = decimal.Context(prec=100)


def _parse_timestamp(value: Any, target: pa.TimestampType) -> dt.datetime:
    if isinstance(value, str):
        try:
            stamp = dt.datetime.fromisoformat(value.strip())
        except ValueError as err:
            raise _BadValue("not an ISO date-time") from err
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            stamp = dt.datetime.fromtimestamp(value, dt.UTC)  # SQLite's 'unixepoch' seconds
        except (OverflowError, OSError, ValueError) as err:
            raise _BadValue("out of range as Unix seconds") from err
    else:
        raise _BadValue("not an ISO date-time")
    if target.tz is not None:
        return stamp.replace(tzinfo=dt.UTC) if stamp.tzinfo is None else stamp.astimezone(dt.UTC)
    return stamp.astimezone(dt.UTC).replace(tzinfo=None) if stamp.tzinfo is not None else stamp


def _parse_date(value: Any) -> dt.date:
    if isinstance(value, str):
        text = value.strip()
        try:
            return dt.date.fromisoformat(text)
        except ValueError:
            pass
        try:
            stamp = dt.datetime.fromisoformat(text)
        except ValueError as err:
            raise _BadValue("not an ISO date (YYYY-MM-DD)") from err
        if stamp.time() == dt.time(0) and stamp.tzinfo is None:
            return stamp.date()
        raise _BadValue("a date-time with a time of day, not a date")
    raise _BadValue("not an ISO date (YYYY-MM-DD)")


def _parse_decimal(value: Any, target: pa.Decimal128Type) -> decimal.Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _BadValue("not a number")
    try:
        number = decimal.Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except decimal.InvalidOperation as err:
        raise _BadValue("not a number") from err
    if not number.is_finite():
        raise _BadValue("not a finite number")
    quantum = decimal.Decimal(1).scaleb(-target.scale)
    rounded = number.quantize(quantum, context=_DECIMAL_CONTEXT)
    if rounded != number:
        raise _BadValue(f"has more than {target.scale} decimal places")
    if abs(rounded) >= decimal.Decimal(10) ** (target.precision - target.scale):
        raise _BadValue(f"has more than {target.precision - target.scale} digits before the point")
    return rounded


def _coerce(value: Any, target: pa.DataType, strict: bool) -> Any:
    """Converts one stored value to ``target``; raises _BadValue when it does not fit."""
    if value is None:
        return None
    if pa.types.is_integer(target):
        if isinstance(value, int):
            return value
        if isinstance(value, float) and not strict and value.is_integer():
            return int(value)
        raise _BadValue("not an integer")
    if pa.types.is_floating(target):
        if isinstance(value, (int, float)):
            return float(value)
        raise _BadValue("not a number")
    if pa.types.is_string(target):
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)):
            return str(value)
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as err:
            raise _BadValue("a BLOB that is not UTF-8 text") from err
    if pa.types.is_binary(target):
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        if isinstance(value, str):
            return value.encode("utf-8")
        if not strict:
            return str(value).encode("utf-8")
        raise _BadValue("not a BLOB or text")
    if pa.types.is_boolean(target):
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _BadValue("not a boolean (0/1, true/false)")
    if pa.types.is_date(target):
        return _parse_date(value)
    if pa.types.is_timestamp(target):
        return _parse_timestamp(value, target)
    if pa.types.is_time(target):
        if isinstance(value, str):
            try:
                return dt.time.fromisoformat(value.strip())
            except ValueError as err:
                raise _BadValue("not an ISO time (HH:MM:SS)") from err
        raise _BadValue("not an ISO time (HH:MM:SS)")
    if pa.types.is_decimal(target):
        return _parse_decimal(value, target)
    return value


def _fast_array(values: Sequence[Any], col: _Column) -> pa.Array | None:
    """Converts a column with Arrow's C++ code when every value is of the expected kind."""
    target = col.type
    try:
        inferred = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return None
    kind = inferred.type
    if pa.types.is_null(kind):
        return pa.nulls(len(values), target)
    try:
        if pa.types.is_integer(target):
            return inferred if pa.types.is_int64(kind) else None
        if pa.types.is_floating(target):
            return inferred.cast(target) if kind in (pa.int64(), pa.float64()) else None
        if pa.types.is_string(target) or pa.types.is_binary(target):
            return inferred.cast(target) if kind == target or pa.types.is_string(kind) else None
        if pa.types.is_boolean(target):
            if not pa.types.is_int64(kind):
                return None
            bounds = pc.min_max(inferred)
            lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
            return inferred.cast(pa.bool_()) if lo is not None and lo >= 0 and hi <= 1 else None
        if pa.types.is_date(target) or pa.types.is_timestamp(target):
            return inferred.cast(target) if pa.types.is_string(kind) else None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    return None


def _convert_column(values: Sequence[Any], col: _Column) -> tuple[pa.Array, dict[int, str]]:
    """Arrow array for one column, plus ``{row: reason}`` for values that do not fit."""
    fast = _fast_array(values, col)
    if fast is not None:
        return fast, {}
    strict = bool(col.declared)
    out: list[Any] = []
    bad: dict[int, str] = {}
    for i, value in enumerate(values):
        try:
            out.append(_coerce(value, col.type, strict))
        except _BadValue as why:
            shown = repr(value)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            bad[i] = (
                f"column {col.name!r} is declared {col.declared or '(no type)'!r} ({col.type}); "
                f"{_storage_class(value)} value {shown} {why}"
            )
            out.append(None)
    return pa.array(out, type=col.type), bad


def _inferred_type(has_int: bool, has_real: bool, has_text: bool, has_blob: bool) -> pa.DataType:
    """Arrow type for a column without a declared type, from the storage classes it holds."""
    if has_blob:
        return pa.binary()
    if has_text:
        return pa.string()
    if has_real:
        return pa.float64()
    if has_int:
        return pa.int64()
    return pa.string()  # only NULLs: nothing says more


def _source_sql(table: str | None, query: str | None, dialect: Dialect) -> str:
    if table is not None:
        return dialect.quote_identifier(table)
    return f"({query.strip().rstrip(';').strip()}) AS {dialect.quote_identifier('__beam_etl_query__')}"


def _described_columns(conn: Any, table: str | None, query: str | None, dialect: Dialect) -> list[tuple[str, str]]:
    """(name, declared type) of every column the table or query yields."""
    if table is not None:
        kind = conn.execute(
            "SELECT type FROM sqlite_master WHERE type IN ('table', 'view') AND name = ? COLLATE NOCASE", (table,)
        ).fetchone()
        if kind is None:
            names = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%'"
            )]
            hint = difflib.get_close_matches(table, names, n=1)
            raise ValueError(
                f"table: {table!r} does not exist" + (f"; did you mean {hint[0]!r}?" if hint else "")
                + f" Tables: {names}"
            )
        return list((dialect.table_columns(conn, table) or {}).values())
    # A temporary view gives the query's columns with the declared types SQLite carries through.
    view = f"beam_etl_query_{uuid.uuid4().hex}"
    try:
        conn.execute(f"CREATE TEMP VIEW {dialect.quote_identifier(view)} AS {query.strip().rstrip(';')}")
    except sqlite3.Error as err:
        raise ValueError(f"query: SQLite cannot read it as a SELECT: {err}") from err
    try:
        return [(name, decl or "") for name, decl in
                conn.execute("SELECT name, type FROM temp.pragma_table_info(?)", (view,))]
    finally:
        conn.execute(f"DROP VIEW temp.{dialect.quote_identifier(view)}")


def _rowid_alias(conn: Any, table: str, real_columns: set[str], dialect: Dialect) -> str | None:
    """The name that reads a table's rowid, or None (views, WITHOUT ROWID tables)."""
    kind = conn.execute("SELECT type FROM sqlite_master WHERE name = ? COLLATE NOCASE", (table,)).fetchone()
    if kind is None or kind[0] != "table":
        return None
    for alias in _ROWID_ALIASES:
        if alias in real_columns:
            continue
        try:
            conn.execute(f"SELECT {alias} FROM {dialect.quote_identifier(table)} LIMIT 0")
        except sqlite3.OperationalError:
            return None
        return alias
    return None


@dataclasses.dataclass(frozen=True)
class _ReadOptions:
    database: str
    table: str | None
    query: str | None
    columns: tuple[str, ...] | None
    partition_column: str | None
    num_partitions: int
    batch_rows: int
    cursor_field: str | None = None  # incremental: rows with cursor >= cursor_start (closed start)
    cursor_start: Any = None


def plan_sqlite_read(conn: Any, opts: _ReadOptions, dialect: Dialect) -> list[_ReadTask]:
    """Resolves columns and their Arrow types and splits the read into key ranges."""
    described = _described_columns(conn, opts.table, opts.query, dialect)
    by_lower: dict[str, tuple[str, str]] = {}
    for name, decl in described:
        if name.lower() in by_lower:
            raise ValueError(f"query: column name {name!r} appears twice; give the columns distinct aliases")
        by_lower[name.lower()] = (name, decl)
    available = [n for n, _ in described]
    if opts.columns:
        missing = [c for c in opts.columns if c.lower() not in by_lower]
        if missing:
            raise ValueError(f"columns: {missing} are not columns of the {'table' if opts.table else 'query'}; "
                             f"available: {available}")
        chosen = [by_lower[c.lower()] for c in opts.columns]
    else:
        chosen = described
    rowid = None
    if opts.table is not None:
        rowid = _rowid_alias(conn, opts.table, set(by_lower), dialect)
    source = _source_sql(opts.table, opts.query, dialect)

    # Columns without a declared type get one from the storage classes they hold (one scan).
    untyped = [name for name, decl in chosen if dialect.arrow_type(decl) is None]
    inferred: dict[str, pa.DataType] = {}
    if untyped:
        probes = []
        for name in untyped:
            q = dialect.quote_identifier(name)
            probes += [f"max(typeof({q}) = '{cls}')" for cls in ("integer", "real", "text", "blob")]
        flags = conn.execute(f"SELECT {', '.join(probes)} FROM {source}").fetchone()
        for i, name in enumerate(untyped):
            inferred[name] = _inferred_type(*(bool(f) for f in flags[4 * i: 4 * i + 4]))
    columns = tuple(
        _Column(name, dialect.arrow_type(decl) or inferred[name], decl if dialect.arrow_type(decl) else "")
        for name, decl in chosen
    )

    # Key ranges.
    part_col: str | None = None
    if opts.partition_column is not None:
        if opts.partition_column.lower() in by_lower:
            part_col = dialect.quote_identifier(by_lower[opts.partition_column.lower()][0])
        elif rowid is not None and opts.partition_column.lower() in _ROWID_ALIASES:
            part_col = rowid
        else:
            raise ValueError(f"partition_column: {opts.partition_column!r} is not a column; available: {available}")
    elif opts.num_partitions > 1:
        if rowid is None:
            _LOG.warning("ReadFromSqlite: %s has no rowid and no partition_column; reading it in one range",
                         opts.table)
        part_col = rowid
    ranges: list[tuple[str, tuple[Any, ...]]] = [("", ())]
    if part_col is not None and opts.num_partitions > 1:
        lo, hi = conn.execute(
            f"SELECT min({part_col}), max({part_col}) FROM {source} "
            f"WHERE typeof({part_col}) IN ('integer', 'real')"
        ).fetchone()
        if lo is not None and hi is not None and hi > lo:
            ranges = _key_ranges(part_col, lo, hi, opts.num_partitions)

    select = [f"{rowid} AS {dialect.quote_identifier(ROWID_COLUMN)}"] if rowid else []
    select += [dialect.quote_identifier(c.name) for c in columns]
    order = f" ORDER BY {rowid}" if rowid and (part_col is None or part_col == rowid) else ""
    tasks = []
    if opts.cursor_field is not None:
        if opts.cursor_field not in [c.name for c in columns]:
            raise ValueError(f"incremental.cursor_field: {opts.cursor_field!r} must be one of the columns read "
                             f"({[c.name for c in columns]})")
        if opts.cursor_start is not None:  # closed start: rows equal to the saved cursor are read again
            start = opts.cursor_start
            if isinstance(start, dt.datetime):  # stored as text by WriteToSqlite: compare in the same form
                start = start.isoformat(sep=" ")
            elif isinstance(start, dt.date | decimal.Decimal):
                start = str(start)
            pred = f"{dialect.quote_identifier(opts.cursor_field)} >= ?"
            ranges = [(f"({where}) AND {pred}" if where else pred, (*params, start)) for where, params in ranges]
    tasks = []
    for i, (where, params) in enumerate(ranges):
        sql = f"SELECT {', '.join(select)} FROM {source}{' WHERE ' + where if where else ''}{order}"
        tasks.append(_ReadTask(sql, params, columns, rowid is not None, i))
    return tasks


def _key_ranges(col: str, lo: float, hi: float, n: int) -> list[tuple[str, tuple[Any, ...]]]:
    """Splits [lo, hi] into ``n`` ranges that together cover every row.

    The first range also takes NULLs and the last everything above (SQLite sorts text
    and blobs after numbers), so no row of a column with stray values is lost.
    """
    if isinstance(lo, int) and isinstance(hi, int):
        step = max(1, -(-(hi - lo + 1) // n))
        bounds = [lo + step * i for i in range(1, n) if lo + step * i <= hi]
    else:
        width = (hi - lo) / n
        bounds = [lo + width * i for i in range(1, n)]
    bounds = sorted(set(bounds))
    if not bounds:
        return [("", ())]
    ranges = [(f"({col} < ? OR {col} IS NULL)", (bounds[0],))]
    ranges += [(f"{col} >= ? AND {col} < ?", (a, b)) for a, b in zip(bounds, bounds[1:], strict=False)]
    ranges.append((f"{col} >= ?", (bounds[-1],)))
    return ranges


class _PlanSqliteReadDoFn(beam.DoFn):
    def __init__(self, opts: _ReadOptions, dialect: Dialect) -> None:
        self._opts = opts
        self._dialect = dialect

    def process(self, _: Any) -> Iterator[_ReadTask]:
        conn = self._dialect.connect(self._opts.database, read_only=True)
        try:
            yield from plan_sqlite_read(conn, self._opts, self._dialect)
        finally:
            conn.close()


class _ReadSqliteRangeDoFn(beam.DoFn):
    """Reads one key range with ``fetchmany``; values that miss their type go to the DLQ."""

    def __init__(self, opts: _ReadOptions, dialect: Dialect, step: str) -> None:
        self._opts = opts
        self._dialect = dialect
        self._step = step
        self._ctx = get_run_context()
        name = opts.table if opts.table is not None else "query"
        self._label = f"sqlite:{opts.database}:{name}"
        self._name = name

    def setup(self) -> None:
        self._metrics = StepMetrics(self._step)
        self._conn = None

    def teardown(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @timed_process
    def process(self, task: _ReadTask) -> Iterator[Any]:
        if self._conn is None:
            self._conn = self._dialect.connect(self._opts.database, read_only=True)
        cursor = self._conn.execute(task.sql, task.params)
        names = [c.name for c in task.columns]
        offset = 0
        try:
            while True:
                rows = cursor.fetchmany(self._opts.batch_rows)
                if not rows:
                    break
                yield from self._to_batch(task, names, rows, offset)
                offset += len(rows)
        finally:
            cursor.close()

    def _to_batch(self, task: _ReadTask, names: list[str], rows: list[tuple], offset: int) -> Iterator[Any]:
        columns = list(zip(*rows, strict=True))
        rowids = columns.pop(0) if task.has_rowid else None
        arrays = []
        bad: dict[int, list[str]] = {}
        for values, col in zip(columns, task.columns, strict=True):
            arr, col_bad = _convert_column(values, col)
            arrays.append(arr)
            for i, reason in col_bad.items():
                bad.setdefault(i, []).append(reason)
        batch = pa.RecordBatch.from_arrays(arrays, schema=pa.schema([(c.name, c.type) for c in task.columns]))
        first = rowids[0] if rowids else offset + 1
        self._metrics.batches_in.inc()
        self._metrics.records_in.inc(len(rows))
        for i in sorted(bad):
            record = dict(zip(names, rows[i][1:] if task.has_rowid else rows[i], strict=True))
            where = f"{self._name}:{rowids[i]}" if rowids else f"{self._name}:row {offset + i + 1}"
            if not rowids and task.partition:
                where += f" of range {task.partition}"
            yield beam.pvalue.TaggedOutput(DLQ_TAG, dead_letter(
                record, error_type="type", error="; ".join(bad[i]), exception="TypeError",
                step=self._step, source=where, ctx=self._ctx))
        if bad:
            self._metrics.records_failed.inc(len(bad))
            mask = pa.array([i not in bad for i in range(len(rows))])
            batch = batch.filter(mask)
        nbytes = batch_nbytes(batch)
        self._metrics.bytes_in.inc(nbytes)
        progress.report_read(len(rows), nbytes, where=self._label)
        if batch.num_rows:
            self._metrics.records_out.inc(batch.num_rows)
            if self._opts.cursor_field is not None:
                yield beam.pvalue.TaggedOutput(CURSOR_TAG, column_max(batch, self._opts.cursor_field))
            yield tag_source(batch, self._label, first)


class ReadFromSqlite(beam.PTransform):
    """Reads an SQLite table or query as RecordBatches; returns ``(batches, dead_letters)``.

    ``p | ReadFromSqlite(database="shop.db", table="orders", num_partitions=4)``

    The read is planned once at run time (columns, Arrow types, key ranges), the ranges are
    reshuffled and each is read in its own DoFn, ``batch_rows`` rows at a time. Declared
    column types map to Arrow (INTEGER -> int64, REAL -> float64, TEXT -> string, BLOB ->
    binary, DATE -> date32, DATETIME/TIMESTAMP -> timestamp[us], BOOLEAN -> bool,
    DECIMAL(p,s) -> decimal128, NUMERIC -> float64); a stored value that does not fit its
    declared type goes to the DLQ as a ``type`` error with source ``table:rowid``.
    """

    def __init__(
        self,
        database: str,
        table: str | None = None,
        query: str | None = None,
        columns: Sequence[str] | None = None,
        partition_column: str | None = None,
        num_partitions: int = 1,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        *,
        step_name: str | None = None,
        dialect: Dialect | None = None,
        label: str | None = None,
        incremental: IncrementalConfig | dict[str, Any] | None = None,
    ) -> None:
        super().__init__(label)
        validate_read_options(database, table, query, columns, partition_column, num_partitions, batch_rows)
        self._incremental = cursor_config(incremental)
        self._opts = _ReadOptions(
            database=database, table=table, query=query, columns=tuple(columns) if columns else None,
            partition_column=partition_column, num_partitions=num_partitions, batch_rows=batch_rows,
        )
        self._dialect = dialect or get_dialect("sqlite")
        self._step_name = step_name

    def display_data(self) -> dict[str, Any]:
        o = self._opts
        data: dict[str, Any] = {"database": redact(o.database), "num_partitions": o.num_partitions,
                                "batch_rows": o.batch_rows}
        if o.table is not None:
            data["table"] = o.table
        if o.query is not None:
            data["query"] = redact(o.query)
        if o.columns:
            data["columns"] = ", ".join(o.columns)
        if o.partition_column:
            data["partition_column"] = o.partition_column
        return data

    def expand(self, pbegin: beam.pvalue.PBegin) -> tuple[beam.PCollection, beam.PCollection]:
        step = self._step_name or self.label
        opts, start = self._opts, cursor_read_start(step, self._incremental)  # committed cursor, read at build
        if start is not None:
            opts = dataclasses.replace(opts, cursor_field=self._incremental.cursor_field, cursor_start=start.start)
        tasks = (
            pbegin
            | "Start" >> beam.Create([None])
            | "Plan" >> beam.ParDo(_PlanSqliteReadDoFn(opts, self._dialect))
            | "Spread" >> beam.Reshuffle()
        )
        results = tasks | "Read" >> beam.ParDo(
            _ReadSqliteRangeDoFn(opts, self._dialect, step)
        ).with_outputs(DLQ_TAG, CURSOR_TAG, main="output")
        record_cursor(results, start)
        return results.output, results[DLQ_TAG]


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------

_DB_LOCKS: dict[str, threading.Lock] = {}
_DB_LOCKS_GUARD = threading.Lock()


def _database_lock(database: str) -> threading.Lock:
    """One lock per database file in this process: SQLite takes one writer at a time."""
    path = os.path.realpath(os.path.expanduser(database))
    with _DB_LOCKS_GUARD:
        return _DB_LOCKS.setdefault(path, threading.Lock())


@dataclasses.dataclass(frozen=True)
class _WriteOptions:
    database: str
    table: str
    mode: str
    key: tuple[str, ...]
    create_table: bool
    add_columns: bool
    busy_timeout_s: float
    max_retries: int
    retry_backoff_s: float = 0.05


def _retrying(opts: _WriteOptions, dialect: Dialect, fn: Any) -> Any:
    """Runs ``fn`` under the database lock, retrying transient errors with backoff.

    Returns ``fn``'s result, or raises the last transient error once retries are spent.
    """
    lock = _database_lock(opts.database)
    for attempt in range(opts.max_retries + 1):
        try:
            with lock:
                return fn()
        except sqlite3.Error as err:
            if not dialect.is_transient(err) or attempt == opts.max_retries:
                raise
            delay = min(opts.retry_backoff_s * 2 ** attempt, 5.0)
            time.sleep(delay * (0.5 + random.random()))  # jitter spreads competing writers
    raise AssertionError("unreachable")


def _rollback(conn: Any) -> None:
    if conn is not None and conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


class _TruncateOnceDoFn(beam.DoFn):
    """Deletes every row of the table once, before the writers start (truncate_insert)."""

    def __init__(self, opts: _WriteOptions, dialect: Dialect, step: str) -> None:
        self._opts = opts
        self._dialect = dialect
        self._step = step

    def process(self, _: Any) -> Iterator[int]:
        opts, dialect = self._opts, self._dialect
        conn = dialect.connect(opts.database, timeout_s=opts.busy_timeout_s)

        def truncate() -> int:
            try:
                conn.execute(dialect.begin_write_sql())
                if dialect.table_columns(conn, opts.table) is None:
                    if not opts.create_table:
                        raise _StructuralError(
                            f"{self._step}: table {opts.table!r} does not exist in {opts.database!r}; "
                            "create it first or set create_table: true")
                    conn.execute("COMMIT")
                    return 0
                deleted = conn.execute(dialect.delete_all_sql(opts.table)).rowcount
                conn.execute("COMMIT")
                return deleted
            except BaseException:
                _rollback(conn)
                raise

        try:
            deleted = _retrying(opts, dialect, truncate)
        except sqlite3.Error as err:
            raise _StructuralError(f"{self._step}: could not empty table {opts.table!r} "
                                   f"in {opts.database!r}: {err}") from err
        finally:
            conn.close()
        _LOG.info("%s: truncate_insert deleted %d rows from %s", self._step, deleted, opts.table)
        yield deleted


class _WriteSqliteDoFn(beam.DoFn):
    """Writes each batch in one transaction; isolates rows that break a constraint."""

    def __init__(self, opts: _WriteOptions, dialect: Dialect, step: str) -> None:
        self._opts = opts
        self._dialect = dialect
        self._step = step
        self._ctx = get_run_context()

    def setup(self) -> None:
        self._metrics = StepMetrics(self._step)
        self._conn = None
        self._known: set[str] | None = None  # lower-case column names of the table, once seen

    def teardown(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self._dialect.connect(self._opts.database, timeout_s=self._opts.busy_timeout_s)
        return self._conn

    @timed_process
    def process(self, batch: pa.RecordBatch, emptied: Any = None) -> Iterator[Any]:
        if batch.num_rows == 0:
            return
        m = self._metrics
        m.batches_in.inc()
        m.records_in.inc(batch.num_rows)
        m.bytes_in.inc(batch_nbytes(batch))
        attempt = batch_attempt(batch)
        committed = 0
        failures: list[tuple[int, str, str, str]] = []  # (row, error_type, error, exception)
        try:
            self._check_batch(batch)
            rows = self._dialect.batch_params(batch)
            committed, failures = _retrying(self._opts, self._dialect, lambda: self._write_once(batch, rows))
        except _BatchRejected as why:
            failures = [(i, "validation", str(why), "ValueError") for i in range(batch.num_rows)]
        except sqlite3.Error as err:
            if not self._dialect.is_transient(err):
                raise _StructuralError(
                    f"{self._step}: writing to table {self._opts.table!r} in {self._opts.database!r} failed: {err}"
                ) from err
            failures = [
                (i, "transient_exhausted",
                 f"{err} (gave up after {self._opts.max_retries + 1} attempts with busy_timeout_s="
                 f"{self._opts.busy_timeout_s})", type(err).__name__)
                for i in range(batch.num_rows)
            ]
        for row, error_type, error, exception in failures:
            yield beam.pvalue.TaggedOutput(DLQ_TAG, dead_letter(
                row_as_record(batch, row), error_type=error_type, error=error, exception=exception,
                step=self._step, source=self._opts.table, attempt=attempt, ctx=self._ctx))
        if failures:
            m.records_failed.inc(len(failures))
        if committed:
            m.records_out.inc(committed)
        yield {"table": self._opts.table, "rows": committed}

    def _check_batch(self, batch: pa.RecordBatch) -> None:
        names = batch.schema.names
        if not names:
            raise _BatchRejected("the batch has no columns")
        lowered = [n.lower() for n in names]
        dupes = sorted({n for n in names if lowered.count(n.lower()) > 1})
        if dupes:
            raise _BatchRejected(f"columns {dupes} appear twice (SQLite names are case-insensitive)")
        missing = [k for k in self._opts.key if k.lower() not in lowered]
        if missing:
            raise _BatchRejected(f"key columns {missing} are not in the batch (its columns: {names})")

    def _statement(self, columns: Sequence[str]) -> str:
        opts, d = self._opts, self._dialect
        if opts.mode == "upsert":
            return d.upsert_sql(opts.table, columns, opts.key)
        if opts.mode == "replace":
            return d.replace_sql(opts.table, columns)
        return d.insert_sql(opts.table, columns)

    def _write_once(self, batch: pa.RecordBatch, rows: list[tuple]) -> tuple[int, list]:
        conn = self._connection()
        try:
            conn.execute(self._dialect.begin_write_sql())
            self._prepare_table(conn, batch.schema)
            failures: list[tuple[int, str, str, str]] = []
            cursor = conn.cursor()
            committed = self._insert_range(conn, cursor, self._statement(batch.schema.names), rows, 0,
                                           len(rows), failures)
            conn.execute("COMMIT")
            return committed, failures
        except BaseException:
            self._known = None
            _rollback(conn)
            raise

    def _prepare_table(self, conn: Any, schema: pa.Schema) -> None:
        """Creates the table or adds columns when allowed; rejects the batch otherwise."""
        opts, d = self._opts, self._dialect
        if self._known is not None and all(n.lower() in self._known for n in schema.names):
            return
        existing = d.table_columns(conn, opts.table)
        if existing is None:
            if not opts.create_table:
                raise _StructuralError(
                    f"{self._step}: table {opts.table!r} does not exist in {opts.database!r}; "
                    "create it first or set create_table: true")
            conn.execute(d.create_table_sql(opts.table, schema, opts.key))
            existing = d.table_columns(conn, opts.table) or {}
        new = [f for f in schema if f.name.lower() not in existing]
        if new:
            if not opts.add_columns:
                raise _BatchRejected(
                    f"columns {[f.name for f in new]} are not in table {opts.table!r} "
                    f"(its columns: {[n for n, _ in existing.values()]}); set add_columns: true to add them")
            for field in new:
                conn.execute(d.add_column_sql(opts.table, field.name, field.type))
            _LOG.info("%s: added columns %s to %s", self._step, [f.name for f in new], opts.table)
            existing = d.table_columns(conn, opts.table) or {}
        self._known = set(existing)

    def _insert_range(self, conn: Any, cursor: Any, sql: str, rows: list[tuple], start: int, end: int,
                      failures: list[tuple[int, str, str, str]]) -> int:
        """Inserts rows[start:end] under a savepoint; on a row error, halves and retries."""
        conn.execute("SAVEPOINT beam_etl_rows")
        try:
            cursor.executemany(sql, rows[start:end])
        except Exception as err:  # classified below; structural errors are re-raised
            conn.execute("ROLLBACK TO beam_etl_rows")
            conn.execute("RELEASE beam_etl_rows")
            kind = self._dialect.classify_row_error(err)
            if kind is None:
                raise
            if end - start == 1:
                failures.append((start, kind, str(err), type(err).__name__))
                return 0
            mid = (start + end) // 2
            return (self._insert_range(conn, cursor, sql, rows, start, mid, failures)
                    + self._insert_range(conn, cursor, sql, rows, mid, end, failures))
        conn.execute("RELEASE beam_etl_rows")
        return end - start


class WriteToSqlite(beam.PTransform):
    """Writes RecordBatches to an SQLite table; returns ``(written, dead_letters)``.

    ``written`` holds one ``{"table": ..., "rows": <rows committed>}`` per batch. Modes:
    ``insert``, ``upsert`` (``INSERT ... ON CONFLICT (key) DO UPDATE``), ``replace``
    (``INSERT OR REPLACE``) and ``truncate_insert`` (all rows deleted once, before the first
    batch). Rows that break a constraint go to the DLQ as ``constraint`` errors; the rest of
    their batch commits.
    """

    def __init__(
        self,
        database: str,
        table: str,
        mode: str = "insert",
        key: Sequence[str] | None = None,
        create_table: bool = False,
        add_columns: bool = False,
        busy_timeout_s: float = 5.0,
        max_retries: int = 5,
        *,
        step_name: str | None = None,
        dialect: Dialect | None = None,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        validate_write_options(database, table, mode, key, busy_timeout_s, max_retries)
        self._opts = _WriteOptions(
            database=database, table=table, mode=mode, key=tuple(key or ()), create_table=bool(create_table),
            add_columns=bool(add_columns), busy_timeout_s=float(busy_timeout_s), max_retries=max_retries,
        )
        self._dialect = dialect or get_dialect("sqlite")
        self._step_name = step_name

    def display_data(self) -> dict[str, Any]:
        o = self._opts
        data: dict[str, Any] = {"database": redact(o.database), "table": o.table, "mode": o.mode,
                                "create_table": o.create_table, "add_columns": o.add_columns}
        if o.key:
            data["key"] = ", ".join(o.key)
        return data

    def expand(self, pcoll: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        step = self._step_name or self.label
        side: list[Any] = []
        if self._opts.mode == "truncate_insert":
            emptied = (
                pcoll.pipeline
                | "TruncateStart" >> beam.Create([None])
                | "TruncateOnce" >> beam.ParDo(_TruncateOnceDoFn(self._opts, self._dialect, step))
            )
            side = [beam.pvalue.AsSingleton(emptied)]
        results = pcoll | "Write" >> beam.ParDo(
            _WriteSqliteDoFn(self._opts, self._dialect, step), *side
        ).with_outputs(DLQ_TAG, main="output")
        return results.output, results[DLQ_TAG]


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


class ReadFromSqliteConfig(registry.StrictConfig):
    """Reads an SQLite table or SELECT query as Arrow batches (parallel by key range)."""

    database: str = Field(description="Path of the SQLite file (must exist).")
    table: str | None = Field(default=None, description="Table (or view) to read; set this or query.")
    query: str | None = Field(default=None, description="SELECT statement to read; set this or table.")
    columns: list[str] | None = Field(default=None, description="Columns to read (default: all).")
    partition_column: str | None = Field(
        default=None, description="Numeric column whose min..max range is split into num_partitions reads "
                                  "(default for tables: the rowid).")
    num_partitions: int = Field(default=1, description="How many key ranges to read in parallel.")
    batch_rows: int = Field(default=DEFAULT_BATCH_ROWS, description="Rows per fetch and per RecordBatch.")
    incremental: IncrementalConfig | None = Field(
        default=None, description="{cursor_field, primary_key, initial}: read rows with cursor_field >= the value "
                                  "saved by the last successful run (docs/incremental.md).")

    @model_validator(mode="after")
    def _validate(self) -> ReadFromSqliteConfig:
        validate_read_options(self.database, self.table, self.query, self.columns, self.partition_column,
                              self.num_partitions, self.batch_rows)
        return self


class WriteToSqliteConfig(registry.StrictConfig):
    """Writes Arrow batches to an SQLite table (insert, upsert, replace or truncate_insert)."""

    database: str = Field(description="Path of the SQLite file (created when missing).")
    table: str = Field(description="Table to write.")
    mode: str = Field(default="insert", description=f"One of {', '.join(WRITE_MODES)}.")
    key: list[str] | None = Field(
        default=None, description="Key columns: the ON CONFLICT target of upsert and the PRIMARY KEY "
                                  "of a table that create_table makes.")
    create_table: bool = Field(default=False, description="Create the table from the Arrow schema when missing.")
    add_columns: bool = Field(default=False, description="ALTER TABLE ADD COLUMN for new columns in the data.")
    busy_timeout_s: float = Field(default=5.0, description="How long one attempt waits for SQLite's write lock.")
    max_retries: int = Field(default=5, description="Retries (with backoff) when the database stays locked.")

    @model_validator(mode="after")
    def _validate(self) -> WriteToSqliteConfig:
        validate_write_options(self.database, self.table, self.mode, self.key, self.busy_timeout_s,
                               self.max_retries)
        return self


@registry.register("source", "ReadFromSqlite", ReadFromSqliteConfig, streaming=True)
def read_from_sqlite(config: ReadFromSqliteConfig, ctx: registry.BuildContext) -> beam.PTransform:
    """Reads an SQLite table or SELECT query as Arrow batches (parallel by key range)."""
    return ReadFromSqlite(**config.model_dump(), step_name=ctx.step_name)


@registry.register("sink", "WriteToSqlite", WriteToSqliteConfig, streaming=sql_sink_streams,
                   idempotent=sql_sink_idempotent)
def write_to_sqlite(config: WriteToSqliteConfig, ctx: registry.BuildContext) -> beam.PTransform:
    """Writes Arrow batches to an SQLite table (insert, upsert, replace or truncate_insert)."""
    return WriteToSqlite(**config.model_dump(), step_name=ctx.step_name)


# PostgreSQL and MySQL/MariaDB live in their own modules, imported on first use (their drivers and
# code cost every run ~0.1 s otherwise); the registry imports them when a template names their types.
_SERVER_TYPES = {
    "ReadFromPostgres": "beam_etl.io._sql_postgres", "WriteToPostgres": "beam_etl.io._sql_postgres",
    "ReadFromMySql": "beam_etl.io._sql_mysql", "WriteToMySql": "beam_etl.io._sql_mysql",
}


def __getattr__(name: str) -> Any:
    if name in _SERVER_TYPES:
        import importlib

        return getattr(importlib.import_module(_SERVER_TYPES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["DIALECTS", "Dialect", "ReadFromSqlite", "SqliteDialect", "WriteToSqlite", "get_dialect"]  # + _SERVER_TYPES
