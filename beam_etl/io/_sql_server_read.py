"""Partitioned reads from a server database (shared by PostgreSQL and MySQL/MariaDB).

The read is planned once at run time: the columns and their Arrow types, the key columns
that name a row in dead letters, and the partitions (key ranges on an integer, decimal, date
or timestamp column, or hash buckets of any column). The partitions are reshuffled and each
is read in its own DoFn on a server-side cursor, ``batch_rows`` rows per RecordBatch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import decimal
import gc
import logging
import math
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

from beam_etl.batch import DEFAULT_BATCH_ROWS, batch_nbytes, json_safe
from beam_etl.io._sql_common import _check_identifier, _check_name_list, _check_positive_int, _StructuralError
from beam_etl.io._sql_conn import ServerConnection
from beam_etl.io._sql_server import ServerDialect, SourceColumn, column_to_arrow
from beam_etl.ops import progress
from beam_etl.ops.context import get_run_context
from beam_etl.ops.dlq import DLQ_TAG, dead_letter
from beam_etl.ops.metrics import NAMESPACE_PREFIX, StepMetrics, timed_process
from beam_etl.ops.secrets import redact
from beam_etl.ops.state import (
    CURSOR_TAG,
    IncrementalConfig,
    column_max,
    cursor_config,
    cursor_read_start,
    record_cursor,
)
from beam_etl.transforms.base import tag_source

_LOG = logging.getLogger(__name__)

PARTITION_KEYS = ("column", "num_partitions", "lower", "upper", "strategy", "rows_per_partition", "max_partitions")
STRATEGIES = ("auto", "range", "hash")
QUERY_ALIAS = "__beam_etl_query__"


@dataclasses.dataclass(frozen=True)
class PartitionSpec:
    """How to split a read. ``num_partitions=None`` picks a count from the row estimate."""

    column: str | None = None
    num_partitions: int | None = None
    lower: Any = None
    upper: Any = None
    strategy: str = "auto"
    rows_per_partition: int = 250_000
    max_partitions: int = 64


def parse_partition(value: Any) -> PartitionSpec | None:
    """A ``PartitionSpec`` from the ``partition:`` mapping of a template (validated)."""
    if value is None or isinstance(value, PartitionSpec):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"partition: expected a mapping like {{column: id, num_partitions: 4}}, got {value!r}")
    unknown = sorted(set(value) - set(PARTITION_KEYS))
    if unknown:
        raise ValueError(f"partition: unknown keys {unknown}; allowed: {list(PARTITION_KEYS)}")
    spec = dict(value)
    if spec.get("column") is not None:
        _check_identifier("partition.column", spec["column"])
    count = spec.get("num_partitions", "auto")
    if count in (None, "auto"):
        spec["num_partitions"] = None
    else:
        _check_positive_int("partition.num_partitions", count)
    strategy = spec.get("strategy", "auto")
    if strategy not in STRATEGIES:
        raise ValueError(f"partition.strategy: {strategy!r} is not one of {list(STRATEGIES)}")
    for field in ("rows_per_partition", "max_partitions"):
        if field in spec:
            _check_positive_int(f"partition.{field}", spec[field])
    if strategy == "hash" and (spec.get("lower") is not None or spec.get("upper") is not None):
        raise ValueError("partition.lower / upper: only range partitions have bounds; drop them or use "
                         "strategy: range")
    return PartitionSpec(**spec)


@dataclasses.dataclass(frozen=True)
class ServerReadOptions:
    connection: ServerConnection
    schema: str | None
    table: str | None
    query: str | None
    columns: tuple[str, ...] | None
    partition: PartitionSpec | None
    batch_rows: int = DEFAULT_BATCH_ROWS
    max_retries: int = 3
    retry_backoff_s: float = 0.2
    cursor_field: str | None = None  # incremental: rows with cursor >= cursor_start (closed start)
    cursor_start: Any = None


def validate_read(dialect: ServerDialect, *, schema: Any, table: Any, query: Any, columns: Any, partition: Any,
                  batch_rows: Any, max_retries: Any) -> PartitionSpec | None:
    """Checks the read options (not the connection); returns the parsed partition spec."""
    if (table is None) == (query is None):
        raise ValueError(
            f"table / query: set exactly one of them (got table={table!r}, query={query!r}); "
            "table reads a whole table, query reads the rows of a SELECT")
    if table is not None:
        _check_identifier("table", table)
        dialect.check_identifier("table", table)
    if schema is not None:
        _check_identifier("schema", schema)
        if query is not None:
            raise ValueError("schema: only a table read takes a schema; qualify the names inside the query instead")
    if query is not None and (not isinstance(query, str) or not query.strip().rstrip(";").strip()):
        raise ValueError(f"query: expected a SELECT statement, got {query!r}")
    _check_name_list("columns", columns, case_sensitive=dialect.case_sensitive)
    spec = parse_partition(partition)
    if spec is not None and spec.column is None and query is not None:
        raise ValueError("partition.column: a query read needs the column to split on "
                         "(a column of the query's result); tables default to their primary key")
    _check_positive_int("batch_rows", batch_rows)
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries: expected a whole number >= 0, got {max_retries!r}")
    return spec


# --------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ServerReadTask:
    """One partition of a read: its SQL, parameters, columns and the key columns it carries."""

    sql: str
    params: tuple[Any, ...]
    columns: tuple[SourceColumn, ...]
    extra: tuple[str, ...]  # key columns selected only to name rows in dead letters (not output)
    key: tuple[str, ...]    # columns (output or extra) whose values name a row
    partition: int
    partitions: int


def source_sql(dialect: ServerDialect, opts: ServerReadOptions) -> str:
    """The FROM item of the read (``%`` doubled: every read statement takes parameters)."""
    if opts.table is not None:
        return dialect.table_ref(opts.table, opts.schema)
    query = opts.query.strip().rstrip(";").strip().replace("%", "%%")
    return f"({query}) AS {dialect.ident(QUERY_ALIAS)}"


def _pick(name: str, by_name: dict[str, SourceColumn], field: str) -> SourceColumn:
    """A column by exact name, else by a unique case-insensitive match."""
    if name in by_name:
        return by_name[name]
    folded = [c for n, c in by_name.items() if n.lower() == name.lower()]
    if len(folded) == 1:
        return folded[0]
    raise ValueError(f"{field}: {name!r} is not a column; available: {list(by_name)}")


def _range_kind(arrow_type: pa.DataType) -> str | None:
    if pa.types.is_integer(arrow_type):
        return "int"
    if pa.types.is_decimal(arrow_type):
        return "decimal"
    if pa.types.is_floating(arrow_type):
        return "float"
    if pa.types.is_date(arrow_type):
        return "date"
    if pa.types.is_timestamp(arrow_type):
        return "timestamp"
    return None


def coerce_bound(value: Any, kind: str, arrow_type: pa.DataType, field: str) -> Any:
    """A partition bound as the Python value the driver binds for a ``kind`` column."""
    if value is None:
        return None
    try:
        if kind == "int":
            return int(value)
        if kind == "decimal":
            return decimal.Decimal(str(value))
        if kind == "float":
            return float(value)
        if kind == "date":
            if isinstance(value, dt.datetime):
                return value.date()
            return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value).strip())
        stamp = value if isinstance(value, dt.datetime) else (
            dt.datetime.combine(value, dt.time()) if isinstance(value, dt.date)
            else dt.datetime.fromisoformat(str(value).strip()))
    except (ValueError, TypeError, decimal.InvalidOperation) as err:
        raise ValueError(f"{field}: {value!r} is not a {kind} bound for this column: {err}") from None
    if arrow_type.tz is not None:  # zoned column: compare in UTC
        return stamp.replace(tzinfo=dt.UTC) if stamp.tzinfo is None else stamp.astimezone(dt.UTC)
    return stamp.astimezone(dt.UTC).replace(tzinfo=None) if stamp.tzinfo is not None else stamp


def split_bounds(lo: Any, hi: Any, n: int, kind: str) -> list[Any]:
    """The ``n - 1`` inner bounds that cut [lo, hi] into ``n`` ranges of equal width (fewer when narrow)."""
    if n < 2 or lo is None or hi is None or not hi > lo:
        return []
    if kind == "int":
        step = max(1, -(-(hi - lo + 1) // n))
        bounds = [lo + step * i for i in range(1, n) if lo + step * i <= hi]
    elif kind == "date":
        days = (hi - lo).days
        bounds = [lo + dt.timedelta(days=-(-days * i // n)) for i in range(1, n)]
    elif kind == "timestamp":
        bounds = [lo + (hi - lo) * i / n for i in range(1, n)]
    elif kind == "decimal":
        width = (hi - lo) / n
        bounds = [lo + width * i for i in range(1, n)]
    else:
        width = (float(hi) - float(lo)) / n
        bounds = [float(lo) + width * i for i in range(1, n)]
    return sorted({b for b in bounds if lo < b <= hi})


def range_predicates(column_sql: str, bounds: Sequence[Any]) -> list[tuple[str, tuple[Any, ...]]]:
    """WHERE clauses that put every row (NULLs in the first, values beyond the bounds at the ends) in one range."""
    if not bounds:
        return [("", ())]
    preds = [(f"({column_sql} < %s OR {column_sql} IS NULL)", (bounds[0],))]
    preds += [(f"{column_sql} >= %s AND {column_sql} < %s", (a, b)) for a, b in zip(bounds, bounds[1:], strict=False)]
    preds.append((f"{column_sql} >= %s", (bounds[-1],)))
    return preds


def plan_server_read(conn: Any, opts: ServerReadOptions, dialect: ServerDialect) -> list[ServerReadTask]:
    """Resolves the columns and their Arrow types and splits the read into partitions."""
    d = dialect
    source = source_sql(d, opts)
    described = d.describe(conn, f"SELECT * FROM {source}")
    by_name: dict[str, SourceColumn] = {}
    for col in described:
        if d.name_key(col.name) in {d.name_key(n) for n in by_name}:
            raise ValueError(f"query: column name {col.name!r} appears twice; give the columns distinct aliases")
        by_name[col.name] = col
    chosen = [_pick(c, by_name, "columns") for c in opts.columns] if opts.columns else described
    chosen_names = [c.name for c in chosen]

    key: list[str] = []
    if opts.table is not None:
        key = d.primary_key(conn, opts.table, opts.schema)
    spec = opts.partition
    part_col: SourceColumn | None = None
    if spec is not None:
        if spec.column is not None:
            part_col = _pick(spec.column, by_name, "partition.column")
        elif len(key) == 1:
            part_col = by_name.get(key[0])
        if part_col is None:
            raise ValueError(
                f"partition.column: {opts.table!r} has no single-column primary key to split on; "
                f"name a column (available: {list(by_name)})")
    if not key and part_col is not None:
        key = [part_col.name]
    extra = tuple(k for k in key if k not in chosen_names)

    preds: list[tuple[str, tuple[Any, ...]]] = [("", ())]
    if part_col is not None:
        preds = _partition_predicates(conn, opts, d, source, part_col)
    if opts.cursor_field is not None:
        cursor_col = _pick(opts.cursor_field, by_name, "incremental.cursor_field")
        if cursor_col.name not in chosen_names:
            raise ValueError(f"incremental.cursor_field: {cursor_col.name!r} must be one of the columns read "
                             f"(columns: {chosen_names})")
        if opts.cursor_start is not None:  # closed start: rows equal to the saved cursor are read again
            cursor_pred = f"{d.ident(cursor_col.name)} >= %s"
            preds = [(f"({where}) AND {cursor_pred}" if where else cursor_pred, (*params, opts.cursor_start))
                     for where, params in preds]
    select = ", ".join(d.ident(n) for n in chosen_names + list(extra))
    tasks = []
    for i, (where, params) in enumerate(preds):
        sql = f"SELECT {select} FROM {source}" + (f" WHERE {where}" if where else "")
        tasks.append(ServerReadTask(sql, params, tuple(chosen), extra, tuple(key), i, len(preds)))
    return tasks


def _partition_predicates(conn: Any, opts: ServerReadOptions, d: ServerDialect, source: str,
                          col: SourceColumn) -> list[tuple[str, tuple[Any, ...]]]:
    spec = opts.partition
    assert spec is not None
    kind = _range_kind(col.arrow_type)
    strategy = spec.strategy
    if strategy == "range" and kind is None:
        raise ValueError(f"partition.strategy: range needs an integer, decimal, date or timestamp column; "
                         f"{col.name!r} is {col.declared}; use strategy: hash")
    if strategy == "auto":
        strategy = "range" if kind is not None else "hash"
    n = spec.num_partitions
    if n is None:
        estimate = d.estimate_rows(conn, f"SELECT * FROM {source}") or 0
        n = max(1, min(spec.max_partitions, math.ceil(estimate / spec.rows_per_partition)))
        _LOG.info("partition: about %d rows -> %d partitions", estimate, n)
    if n < 2:
        return [("", ())]
    column_sql = d.ident(col.name)
    if strategy == "hash":
        bucket = d.hash_bucket_sql(column_sql, n)
        return [(f"{bucket} = %s", (i,)) for i in range(n)]
    assert kind is not None
    lo = coerce_bound(spec.lower, kind, col.arrow_type, "partition.lower")
    hi = coerce_bound(spec.upper, kind, col.arrow_type, "partition.upper")
    if lo is None or hi is None:
        cursor = conn.cursor()
        try:
            cursor.execute(f"SELECT min({column_sql}), max({column_sql}) FROM {source}", ())
            found_lo, found_hi = cursor.fetchone()
        finally:
            cursor.close()
        d.rollback_quietly(conn)
        lo = lo if lo is not None else coerce_bound(found_lo, kind, col.arrow_type, "partition.lower")
        hi = hi if hi is not None else coerce_bound(found_hi, kind, col.arrow_type, "partition.upper")
    return range_predicates(column_sql, split_bounds(lo, hi, n, kind))


# --------------------------------------------------------------------------------------
# DoFns and the PTransform
# --------------------------------------------------------------------------------------


_GC_LOCK = threading.Lock()
_GC_PAUSES = [0]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pauses the cyclic garbage collector (all threads) while bulk rows are built.

    A fetched batch is made of tuples and atoms that reference counting frees; without
    the pause, CPython's collector scans them again and again (half the read time).
    """
    with _GC_LOCK:
        if _GC_PAUSES[0] == 0:
            _GC_PAUSES.append(gc.isenabled())
            gc.disable()
        _GC_PAUSES[0] += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_PAUSES[0] -= 1
            if _GC_PAUSES[0] == 0 and _GC_PAUSES.pop():
                gc.enable()


def backoff(base_s: float, attempt: int, cap_s: float = 10.0) -> None:
    """Sleeps ``base * 2**attempt`` (capped) with jitter."""
    time.sleep(min(base_s * 2 ** attempt, cap_s) * (0.5 + random.random()))


def connect(dialect: ServerDialect, settings: ServerConnection, *, read_only: bool = False) -> Any:
    """Opens a connection; a failure raises ``_StructuralError`` with a redacted message, unchained."""
    try:
        return dialect.connect(settings, read_only=read_only)
    except Exception as err:  # noqa: BLE001 - re-raised with the password redacted
        transient = dialect.is_transient(err)
        message = redact(dialect.connection_error(settings, err))
    error = ConnectionError(message) if transient else _StructuralError(message)
    raise error from None


class _PlanServerReadDoFn(beam.DoFn):
    def __init__(self, opts: ServerReadOptions, dialect: ServerDialect) -> None:
        self._opts = opts
        self._dialect = dialect

    def process(self, _: Any) -> Iterator[ServerReadTask]:
        opts, d = self._opts, self._dialect
        for attempt in range(opts.max_retries + 1):
            try:
                conn = connect(d, opts.connection, read_only=True)
                break
            except ConnectionError:
                if attempt == opts.max_retries:
                    raise
                backoff(opts.retry_backoff_s, attempt)
        try:
            tasks = plan_server_read(conn, opts, d)
        except ValueError as err:
            raise ValueError(redact(str(err))) from None
        except Exception as err:  # the driver's: a missing table, a bad query, no privilege
            what = f"table {opts.table!r}" if opts.table is not None else "the query"
            raise _StructuralError(redact(f"planning the read of {what} failed: {str(err).strip()}")) from err
        finally:
            d.rollback_quietly(conn)
            d.close_quietly(conn)
        _LOG.info("%s: read planned as %d partition(s)", opts.table or "query", len(tasks))
        yield from tasks


class _ReadServerPartitionDoFn(beam.DoFn):
    """Reads one partition on a server-side cursor; values that do not convert go to the DLQ."""

    def __init__(self, opts: ServerReadOptions, dialect: ServerDialect, step: str) -> None:
        self._opts = opts
        self._dialect = dialect
        self._step = step
        self._ctx = get_run_context()
        self._name = opts.table if opts.table is not None else "query"
        if opts.table is not None and opts.schema:
            self._name = f"{opts.schema}.{opts.table}"
        self._label = f"{opts.connection.describe(dialect.scheme)}/{self._name}"

    def setup(self) -> None:
        self._metrics = StepMetrics(self._step)
        self._partitions = Metrics.counter(NAMESPACE_PREFIX + self._step, "partitions")
        self._conn = None

    def teardown(self) -> None:
        self._dialect.close_quietly(self._conn)
        self._conn = None

    def _open(self, task: ServerReadTask) -> tuple[list[tuple] | None, Iterator[list[tuple]]]:
        """Connects, runs the partition's query and fetches its first rows, retrying transient errors."""
        opts, d = self._opts, self._dialect
        for attempt in range(opts.max_retries + 1):
            try:
                if self._conn is None:
                    self._conn = connect(d, opts.connection, read_only=True)
                rows = d.stream(self._conn, task.sql, task.params, opts.batch_rows, task.columns)
                return next(rows, None), rows
            except Exception as err:  # transient errors are retried, others re-raised
                transient = isinstance(err, ConnectionError) or d.is_transient(err)
                if not transient or attempt == opts.max_retries:
                    if isinstance(err, (_StructuralError, ConnectionError)):
                        raise
                    raise _StructuralError(redact(f"{self._step}: reading {self._name} failed: {err}")) from err
                _LOG.warning("%s: partition %d: %s; retrying", self._step, task.partition, redact(str(err)))
                if self._conn is not None and (d.is_disconnect(err) or isinstance(err, ConnectionError)):
                    d.close_quietly(self._conn)
                    self._conn = None
                else:
                    d.rollback_quietly(self._conn)
                backoff(opts.retry_backoff_s, attempt)
        raise AssertionError("unreachable")

    @timed_process
    def process(self, task: ServerReadTask) -> Iterator[Any]:
        self._partitions.inc()
        with gc_paused():
            rows, rest = self._open(task)
        offset = 0
        try:
            while rows:
                with gc_paused():  # fetching and converting a batch makes ~rows x columns objects, no cycles
                    outputs = list(self._to_batch(task, rows, offset))
                    offset += len(rows)
                    rows = next(rest, None)
                yield from outputs
        except Exception as err:
            if self._dialect.is_disconnect(err):
                self._dialect.close_quietly(self._conn)
                self._conn = None
            if isinstance(err, _StructuralError):
                raise
            # Rows of this partition were already emitted: the runner retries the whole bundle.
            raise _StructuralError(redact(
                f"{self._step}: reading partition {task.partition + 1}/{task.partitions} of {self._name} "
                f"failed after {offset} rows: {err}")) from err

    def _row_source(self, task: ServerReadTask, names: list[str], row: tuple, index: int) -> str:
        if task.key:
            values = dict(zip(names, row, strict=True))
            return f"{self._name}:" + ",".join(f"{k}={json_safe(values.get(k))}" for k in task.key)
        where = f"{self._name}:row {index}"
        return where + (f" of partition {task.partition + 1}/{task.partitions}" if task.partitions > 1 else "")

    def _to_batch(self, task: ServerReadTask, rows: list[tuple], offset: int) -> Iterator[Any]:
        columns = list(zip(*rows, strict=True))
        arrays: list[pa.Array] = []
        bad: dict[int, list[str]] = {}
        for values, col in zip(columns, task.columns, strict=False):
            arr, col_bad = column_to_arrow(values, col)
            arrays.append(arr)
            for i, reason in col_bad.items():
                bad.setdefault(i, []).append(reason)
        schema = pa.schema([(c.name, c.arrow_type) for c in task.columns])
        batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
        m = self._metrics
        m.batches_in.inc()
        m.records_in.inc(len(rows))
        if bad:
            names = [c.name for c in task.columns] + list(task.extra)
            width = len(task.columns)
            for i in sorted(bad):
                record = dict(zip(names[:width], rows[i][:width], strict=True))
                yield beam.pvalue.TaggedOutput(DLQ_TAG, dead_letter(
                    record, error_type="type", error="; ".join(bad[i]), exception="TypeError", step=self._step,
                    source=self._row_source(task, names, rows[i], offset + i + 1), ctx=self._ctx))
            m.records_failed.inc(len(bad))
            batch = batch.filter(pa.array([i not in bad for i in range(len(rows))]))
        nbytes = batch_nbytes(batch)
        m.bytes_in.inc(nbytes)
        progress.report_read(len(rows), nbytes, where=self._label)
        if batch.num_rows:
            m.records_out.inc(batch.num_rows)
            if self._opts.cursor_field is not None:
                yield beam.pvalue.TaggedOutput(CURSOR_TAG, column_max(batch, self._cursor_name(task)))
            yield tag_source(batch, f"{self._label}#{task.partition + 1}/{task.partitions}", offset + 1)

    def _cursor_name(self, task: ServerReadTask) -> str:
        wanted = self._opts.cursor_field or ""
        names = [c.name for c in task.columns]
        return wanted if wanted in names else next(n for n in names if n.lower() == wanted.lower())


class ServerRead(beam.PTransform):
    """Plans a partitioned read once, reshuffles the partitions and reads each in its own DoFn."""

    dialect: ServerDialect

    def __init__(self, opts: ServerReadOptions, *, step_name: str | None = None, label: str | None = None,
                 incremental: IncrementalConfig | dict[str, Any] | None = None) -> None:
        super().__init__(label)
        self._opts = opts
        self._step_name = step_name
        self._incremental = cursor_config(incremental)

    def display_data(self) -> dict[str, Any]:
        o = self._opts
        data: dict[str, Any] = {**o.connection.display(self.dialect.scheme), "batch_rows": o.batch_rows}
        if o.table is not None:
            data["table"] = f"{o.schema}.{o.table}" if o.schema else o.table
        if o.query is not None:
            data["query"] = redact(o.query)
        if o.columns:
            data["columns"] = ", ".join(o.columns)
        if o.partition is not None:
            p = o.partition
            data["partition"] = (f"{p.column or '(primary key)'}, {p.num_partitions or 'auto'} partitions, "
                                 f"strategy {p.strategy}")
        return data

    def expand(self, pbegin: beam.pvalue.PBegin) -> tuple[beam.PCollection, beam.PCollection]:
        step = self._step_name or self.label
        opts, start = self._opts, cursor_read_start(step, self._incremental)  # committed cursor, read at build
        if start is not None:
            opts = dataclasses.replace(opts, cursor_field=self._incremental.cursor_field, cursor_start=start.start)
        tasks = (
            pbegin
            | "Start" >> beam.Create([None])
            | "Plan" >> beam.ParDo(_PlanServerReadDoFn(opts, self.dialect))
            | "Spread" >> beam.Reshuffle()
        )
        results = tasks | "Read" >> beam.ParDo(
            _ReadServerPartitionDoFn(opts, self.dialect, step)
        ).with_outputs(DLQ_TAG, CURSOR_TAG, main="output")
        record_cursor(results, start)
        return results.output, results[DLQ_TAG]

