"""Writes to a server database (shared by PostgreSQL and MySQL/MariaDB).

Each batch is one transaction. The dialect's bulk path (PostgreSQL ``COPY``) writes the
whole batch; when a row breaks a constraint or carries a value the server refuses, the
batch is rolled back and written again with parameterised multi-row statements under
savepoints, split in halves until the offending rows are found: only those go to the DLQ,
the rest commit. Transient errors (lost connection, deadlock, serialization failure) are
retried with exponential backoff on a fresh connection; when the retries run out the
batch's rows go to the DLQ as ``transient_exhausted``.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa

from beam_etl.batch import batch_nbytes, json_safe, row_as_record
from beam_etl.io._sql_common import WRITE_MODES, _BatchRejected, _check_identifier, _check_name_list, _StructuralError
from beam_etl.io._sql_conn import ServerConnection
from beam_etl.io._sql_server import ServerDialect
from beam_etl.io._sql_server_read import backoff, connect
from beam_etl.ops.context import get_run_context
from beam_etl.ops.dlq import DLQ_TAG, dead_letter
from beam_etl.ops.metrics import StepMetrics, timed_process
from beam_etl.ops.secrets import redact
from beam_etl.transforms.base import batch_attempt

_LOG = logging.getLogger(__name__)

SCHEMA_EVOLUTION = ("fail", "add_columns", "ignore")


@dataclasses.dataclass(frozen=True)
class ServerWriteOptions:
    connection: ServerConnection
    schema: str | None
    table: str
    mode: str = "insert"
    key: tuple[str, ...] = ()
    create_table: bool = False
    schema_evolution: str = "fail"
    max_retries: int = 5
    retry_backoff_s: float = 0.1


def validate_write(dialect: ServerDialect, *, schema: Any, table: Any, mode: Any, key: Any, schema_evolution: Any,
                   max_retries: Any) -> None:
    """Raises ValueError naming the field, the value and what is allowed."""
    _check_identifier("table", table)
    dialect.check_identifier("table", table)
    if schema is not None:
        _check_identifier("schema", schema)
    if mode not in WRITE_MODES:
        hint = difflib.get_close_matches(str(mode), WRITE_MODES, n=1)
        raise ValueError(
            f"mode: {mode!r} is not one of {list(WRITE_MODES)}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
    _check_name_list("key", key, case_sensitive=dialect.case_sensitive)
    if mode == "upsert" and not key:
        raise ValueError("key: mode 'upsert' needs key: [columns] naming the primary or unique key to match on")
    if schema_evolution not in SCHEMA_EVOLUTION:
        raise ValueError(f"schema_evolution: {schema_evolution!r} is not one of {list(SCHEMA_EVOLUTION)}")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries: expected a whole number >= 0, got {max_retries!r}")


@dataclasses.dataclass(frozen=True)
class WritePlan:
    """The statements for one set of batch columns against one table layout."""

    columns: tuple[str, ...]
    targets: tuple[str, ...]   # declared type of the table column each batch column goes to
    rows_sql: str              # multi-row statement for ``execute_rows`` (bisecting, and dialects without bulk)
    bulk: Any = None           # the dialect's bulk-path payload (PostgreSQL: COPY statements)


class _TransientExhausted(Exception):
    def __init__(self, err: BaseException, attempts: int) -> None:
        super().__init__(f"{err} (gave up after {attempts} attempts)")
        self.cause_name = type(err).__name__


class _TruncateOnceDoFn(beam.DoFn):
    """Empties the table once, before the writers start (truncate_insert)."""

    def __init__(self, opts: ServerWriteOptions, dialect: ServerDialect, step: str) -> None:
        self._opts = opts
        self._dialect = dialect
        self._step = step

    def process(self, _: Any) -> Iterator[bool]:
        opts, d = self._opts, self._dialect
        for attempt in range(opts.max_retries + 1):
            conn = None
            try:
                conn = connect(d, opts.connection)
                if d.table_columns(conn, opts.table, opts.schema) is None:
                    d.rollback_quietly(conn)
                    if not opts.create_table:
                        raise _StructuralError(
                            f"{self._step}: table {opts.table!r} does not exist; create it first or set "
                            "create_table: true")
                    yield False
                    return
                cursor = conn.cursor()
                cursor.execute(d.truncate_sql(opts.table, opts.schema), ())
                cursor.close()
                conn.commit()
                _LOG.info("%s: truncate_insert emptied %s", self._step, opts.table)
                yield True
                return
            except _StructuralError:
                raise
            except Exception as err:  # noqa: BLE001 - transient errors retried, the rest stop the run
                if not (isinstance(err, ConnectionError) or d.is_transient(err)) or attempt == opts.max_retries:
                    raise _StructuralError(redact(f"{self._step}: could not empty table {opts.table!r}: {err}")) \
                        from None
                backoff(opts.retry_backoff_s, attempt)
            finally:
                d.close_quietly(conn)


class _WriteServerDoFn(beam.DoFn):
    """Writes each batch in one transaction; isolates the rows the server refuses."""

    def __init__(self, opts: ServerWriteOptions, dialect: ServerDialect, step: str) -> None:
        self._opts = opts
        self._dialect = dialect
        self._step = step
        self._ctx = get_run_context()
        self._source = f"{opts.schema}.{opts.table}" if opts.schema else opts.table

    def setup(self) -> None:
        self._metrics = StepMetrics(self._step)
        self._conn = None
        self._existing: dict[str, tuple[str, str]] | None = None  # name_key -> (name, declared type)
        self._plans: dict[tuple[str, ...], WritePlan] = {}
        self._ignored_warned: set[str] = set()

    def teardown(self) -> None:
        self._dialect.close_quietly(self._conn)
        self._conn = None

    # -- connection and table ----------------------------------------------------------

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = connect(self._dialect, self._opts.connection)
        return self._conn

    def _drop_connection(self) -> None:
        self._dialect.close_quietly(self._conn)
        self._conn = None
        self._existing = None
        self._plans.clear()

    def _ensure_table(self, conn: Any, schema: pa.Schema) -> None:
        """Creates the table or adds columns, in short transactions of their own before the batch's.

        Two workers may race to run the same DDL; the loser's error is forgiven when the table
        then has what was needed.
        """
        opts, d = self._opts, self._dialect
        if self._existing is not None and all(d.name_key(n) in self._existing for n in schema.names):
            return
        table = d.table_ref(opts.table, opts.schema)
        existing = d.table_columns(conn, opts.table, opts.schema)
        if existing is None:
            if not opts.create_table:
                d.rollback_quietly(conn)
                raise _StructuralError(f"{self._step}: table {self._source!r} does not exist; create it first or "
                                       "set create_table: true")
            self._ddl(conn, d.create_table_sql(table, schema, opts.key), lambda found: found is not None)
            _LOG.info("%s: created table %s", self._step, self._source)
            existing = d.table_columns(conn, opts.table, opts.schema) or {}
        new = [f for f in schema if d.name_key(f.name) not in existing]
        if new and opts.schema_evolution == "add_columns":
            for field in new:
                self._ddl(conn, d.add_column_sql(table, field.name, field.type),
                          lambda found, name=field.name: found is not None and d.name_key(name) in found)
            _LOG.info("%s: added columns %s to %s", self._step, [f.name for f in new], self._source)
            existing = d.table_columns(conn, opts.table, opts.schema) or {}
        elif new and opts.schema_evolution == "fail":
            d.rollback_quietly(conn)
            raise _StructuralError(
                f"{self._step}: columns {[f.name for f in new]} are not in table {self._source!r} "
                f"(its columns: {[n for n, _ in existing.values()]}); set schema_evolution: add_columns "
                "to add them, or ignore to drop them")
        d.rollback_quietly(conn)  # ends the catalog lookup's transaction
        self._existing = existing
        self._plans.clear()

    def _ddl(self, conn: Any, statement: str, done: Any) -> None:
        d = self._dialect
        cursor = conn.cursor()
        try:
            cursor.execute(statement, ())
            conn.commit()
        except Exception as err:
            d.rollback_quietly(conn)
            if d.is_transient(err) or d.is_disconnect(err):
                raise
            if not done(d.table_columns(conn, self._opts.table, self._opts.schema)):
                raise _StructuralError(redact(f"{self._step}: {statement!r} failed: {err}")) from err
            d.rollback_quietly(conn)  # another worker ran the same DDL first
        finally:
            try:
                cursor.close()
            except Exception:  # noqa: BLE001 - the connection may be gone
                pass

    def _fit_columns(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Drops the columns the table lacks (schema_evolution: ignore)."""
        assert self._existing is not None
        d = self._dialect
        keep = [n for n in batch.schema.names if d.name_key(n) in self._existing]
        dropped = [n for n in batch.schema.names if d.name_key(n) not in self._existing]
        if not dropped:
            return batch
        fresh = [n for n in dropped if n not in self._ignored_warned]
        if fresh:
            self._ignored_warned.update(fresh)
            _LOG.warning("%s: schema_evolution: ignore drops columns %s that %s lacks", self._step, fresh,
                         self._source)
        if not keep:
            raise _BatchRejected(f"none of the batch's columns {batch.schema.names} are in table {self._source!r}")
        return batch.select(keep)

    def _plan(self, names: Sequence[str]) -> WritePlan:
        key = tuple(names)
        if key not in self._plans:
            assert self._existing is not None
            d, opts = self._dialect, self._opts
            targets = tuple(self._existing[d.name_key(n)][1] for n in names)
            table_columns = [n for n, _ in self._existing.values()]
            self._plans[key] = d.write_plan(opts, names, targets, table_columns)
        return self._plans[key]

    # -- batches -------------------------------------------------------------------------

    def _check_batch(self, batch: pa.RecordBatch) -> None:
        d = self._dialect
        names = batch.schema.names
        if not names:
            raise _BatchRejected("the batch has no columns")
        keys = [d.name_key(n) for n in names]
        dupes = sorted({n for n in names if keys.count(d.name_key(n)) > 1})
        if dupes:
            raise _BatchRejected(f"columns {dupes} appear twice")
        for n in names:
            try:
                d.check_identifier("column", n)
            except ValueError as err:
                raise _BatchRejected(str(err)) from None
        missing = [k for k in self._opts.key if d.name_key(k) not in keys]
        if missing:
            raise _BatchRejected(f"key columns {missing} are not in the batch (its columns: {names})")

    def _where(self, batch: pa.RecordBatch, row: int) -> str:
        if not self._opts.key:
            return self._source
        record = batch.slice(row, 1).to_pylist()[0]
        lookup = {self._dialect.name_key(k): v for k, v in record.items()}
        return f"{self._source}:" + ",".join(
            f"{k}={json_safe(lookup.get(self._dialect.name_key(k)))}" for k in self._opts.key)

    @timed_process
    def process(self, batch: pa.RecordBatch, emptied: Any = None) -> Iterator[Any]:
        if batch.num_rows == 0:
            return
        m = self._metrics
        m.batches_in.inc()
        m.records_in.inc(batch.num_rows)
        m.bytes_in.inc(batch_nbytes(batch))
        attempt_no = batch_attempt(batch)
        committed = 0
        failures: list[tuple[int, str, str, str]] = []  # (row, error_type, error, exception)
        try:
            self._check_batch(batch)
            committed, failures = self._write_with_retries(batch)
        except _BatchRejected as why:
            failures = [(i, "validation", str(why), "ValueError") for i in range(batch.num_rows)]
        except _TransientExhausted as why:
            failures = [(i, "transient_exhausted", redact(str(why)), why.cause_name) for i in range(batch.num_rows)]
        for row, error_type, error, exception in failures:
            yield beam.pvalue.TaggedOutput(DLQ_TAG, dead_letter(
                row_as_record(batch, row), error_type=error_type, error=redact(error), exception=exception,
                step=self._step, source=self._where(batch, row), attempt=attempt_no, ctx=self._ctx))
        if failures:
            m.records_failed.inc(len(failures))
        if committed:
            m.records_out.inc(committed)
        yield {"table": self._source, "rows": committed}

    def _write_with_retries(self, batch: pa.RecordBatch) -> tuple[int, list[tuple[int, str, str, str]]]:
        opts, d = self._opts, self._dialect
        for attempt in range(opts.max_retries + 1):
            phase = "connect"
            try:
                conn = self._connection()
                phase = "prepare"
                self._ensure_table(conn, batch.schema)
                fitted = self._fit_columns(batch) if opts.schema_evolution == "ignore" else batch
                rejected = d.invalid_rows(fitted)
                phase = "write"
                _, committed, failures = self._write_batch(conn, fitted, rejected)
                return committed, failures
            except (_StructuralError, _BatchRejected):
                raise
            except Exception as err:  # classified: transient -> retry, else stop the run
                transient = isinstance(err, (ConnectionError, _CommitLost)) or d.is_transient(err)
                if not transient:
                    d.rollback_quietly(self._conn)
                    raise _StructuralError(redact(
                        f"{self._step}: writing to table {self._source!r} failed: {err}")) from err
                lost = isinstance(err, (ConnectionError, _CommitLost)) or d.is_disconnect(err)
                if lost:
                    self._drop_connection()
                else:
                    d.rollback_quietly(self._conn)
                if isinstance(err, _CommitLost) and self._committed_after_all(err.token):
                    return err.committed, err.failures
                if attempt == opts.max_retries:
                    raise _TransientExhausted(err, attempt + 1) from None
                _LOG.warning("%s: %s during %s (attempt %d of %d); retrying", self._step, redact(str(err)).strip(),
                             phase, attempt + 1, opts.max_retries + 1)
                backoff(opts.retry_backoff_s, attempt)
        raise AssertionError("unreachable")

    def _committed_after_all(self, token: Any) -> bool:
        """After a COMMIT whose answer was lost: asks a new connection whether it went through."""
        if token is None:
            return False
        try:
            conn = self._connection()
            done = self._dialect.committed(conn, token)
            self._dialect.rollback_quietly(conn)
        except Exception:  # noqa: BLE001 - cannot tell: the retry will write the batch again
            self._drop_connection()
            return False
        if done:
            _LOG.warning("%s: the connection dropped during COMMIT, but the transaction committed", self._step)
        return done

    def _write_batch(self, conn: Any, batch: pa.RecordBatch, rejected: dict[int, str]
                     ) -> tuple[Any, int, list[tuple[int, str, str, str]]]:
        d = self._dialect
        plan = self._plan(batch.schema.names)
        failures = [(i, "type", reason, "DataError") for i, reason in sorted(rejected.items())]
        keep = [i for i in range(batch.num_rows) if i not in rejected]
        sent = batch if not rejected else batch.take(pa.array(keep, pa.int64()))
        if sent.num_rows == 0:
            return None, 0, failures
        token = d.begin(conn)
        bulk_failed = False
        try:
            if d.bulk_write(conn, plan, sent):
                self._commit(conn, token, sent.num_rows, failures)
                return token, sent.num_rows, failures
        except Exception as err:
            d.rollback_quietly(conn)
            if isinstance(err, _CommitLost) or d.classify_row_error(err) is None:
                raise
            bulk_failed = True  # a row is at fault: find it with parameterised statements
            token = d.begin(conn)
        try:
            rows = d.batch_params(sent, plan.targets)
            found: list[tuple[int, str, str, str]] = []
            cursor = conn.cursor()
            try:
                if bulk_failed and len(rows) > 1:
                    mid = len(rows) // 2
                    committed = (self._insert_range(cursor, plan, rows, 0, mid, found)
                                 + self._insert_range(cursor, plan, rows, mid, len(rows), found))
                else:
                    committed = self._insert_range(cursor, plan, rows, 0, len(rows), found)
            finally:
                cursor.close()
            failures += [(keep[i], kind, error, exc) for i, kind, error, exc in found]
            self._commit(conn, token, committed, failures)
            return token, committed, sorted(failures)
        except Exception:
            d.rollback_quietly(conn)
            raise

    def _commit(self, conn: Any, token: Any, committed: int, failures: list) -> None:
        try:
            conn.commit()
        except Exception as err:
            if self._dialect.is_disconnect(err) or self._dialect.is_transient(err):
                raise _CommitLost(err, token, committed, failures) from err
            raise

    def _insert_range(self, cursor: Any, plan: WritePlan, rows: list[tuple], start: int, end: int,
                      failures: list[tuple[int, str, str, str]]) -> int:
        """Writes rows[start:end] under a savepoint; on a row error, halves and tries again."""
        d = self._dialect
        cursor.execute("SAVEPOINT beam_etl_rows", ())
        try:
            d.execute_rows(cursor, plan.rows_sql, rows[start:end])
        except Exception as err:  # classified below; anything not caused by a row is re-raised
            kind = d.classify_row_error(err)
            if kind is None:
                raise
            cursor.execute("ROLLBACK TO SAVEPOINT beam_etl_rows", ())
            cursor.execute("RELEASE SAVEPOINT beam_etl_rows", ())
            if end - start == 1:
                failures.append((start, kind, str(err).strip(), type(err).__name__))
                return 0
            mid = (start + end) // 2
            return (self._insert_range(cursor, plan, rows, start, mid, failures)
                    + self._insert_range(cursor, plan, rows, mid, end, failures))
        cursor.execute("RELEASE SAVEPOINT beam_etl_rows", ())
        return end - start


class _CommitLost(Exception):
    """The connection failed while committing: the transaction may or may not have committed."""

    def __init__(self, err: BaseException, token: Any, committed: int, failures: list) -> None:
        super().__init__(f"{type(err).__name__} during COMMIT: {err}")
        self.token = token
        self.committed = committed
        self.failures = failures


class ServerWrite(beam.PTransform):
    """Writes RecordBatches to a table; returns ``(written, dead_letters)``."""

    dialect: ServerDialect

    def __init__(self, opts: ServerWriteOptions, *, step_name: str | None = None, label: str | None = None) -> None:
        super().__init__(label)
        self._opts = opts
        self._step_name = step_name

    def display_data(self) -> dict[str, Any]:
        o = self._opts
        data: dict[str, Any] = {**o.connection.display(self.dialect.scheme), "mode": o.mode,
                                "table": f"{o.schema}.{o.table}" if o.schema else o.table,
                                "create_table": o.create_table, "schema_evolution": o.schema_evolution,
                                "max_retries": o.max_retries}
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
                | "TruncateOnce" >> beam.ParDo(_TruncateOnceDoFn(self._opts, self.dialect, step))
            )
            side = [beam.pvalue.AsSingleton(emptied)]
        results = pcoll | "Write" >> beam.ParDo(
            _WriteServerDoFn(self._opts, self.dialect, step), *side
        ).with_outputs(DLQ_TAG, main="output")
        return results.output, results[DLQ_TAG]
