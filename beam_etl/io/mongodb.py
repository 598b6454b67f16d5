"""MongoDB connectors (pymongo): ``ReadFromMongoDB`` and ``WriteToMongoDB``.

``ReadFromMongoDB`` plans the read once at run time (``_id`` ranges), reshuffles the ranges
and reads each in its own DoFn, ``batch_rows`` documents per RecordBatch. Documents are
decoded one by one, so a document that cannot be decoded or converted goes to the DLQ with
source ``db.collection _id=...`` and the rest of its batch goes on. Type mapping and nested
documents: see ``_mongo_arrow`` and ``docs/connectors-mongodb.md``.

``WriteToMongoDB`` writes each batch with one unordered ``bulk_write`` (insert, upsert with
``UpdateOne($set)`` or replace with ``ReplaceOne``, both ``upsert=True`` on ``key``). Per-document
write errors (``BulkWriteError`` details) go to the DLQ with the row and the server's message; the
other documents are written. Network errors, elections and server-labelled retryable errors are
retried with exponential backoff and jitter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import random
import time
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
from bson.objectid import ObjectId
from pydantic import Field, model_validator
from pymongo import InsertOne, ReplaceOne, UpdateOne
from pymongo import errors as mongo_errors

from beam_etl import registry
from beam_etl.batch import DEFAULT_BATCH_ROWS, batch_nbytes, row_as_record
from beam_etl.io import _mongo_arrow as conv
from beam_etl.io import _mongo_client as mc
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
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024

__all__ = ["ReadFromMongoDB", "WriteToMongoDB", "ReadFromMongoDBConfig", "WriteToMongoDBConfig"]


class MongoStructuralError(RuntimeError):
    """The server, collection or credentials are wrong, not a document: the run stops."""


def _backoff(base_s: float, attempt: int) -> None:
    delay = min(base_s * 2 ** attempt, 10.0)
    time.sleep(delay * (0.5 + random.random()))  # jitter spreads competing workers


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ReadOptions:
    uri: str
    database: str
    collection: str
    filter: dict[str, Any] | None
    projection: dict[str, Any] | None
    pipeline: list[dict[str, Any]] | None
    num_partitions: int
    partition_method: str
    nested: str
    batch_rows: int
    timeout_s: float
    max_retries: int = 3
    retry_backoff_s: float = 0.2
    cursor_field: str | None = None  # incremental: report the largest value read of this field


def validate_read_options(uri: Any, database: Any, collection: Any, filter: Any, projection: Any, pipeline: Any,
                          num_partitions: Any, partition_method: Any, nested: Any, batch_rows: Any,
                          timeout_s: Any) -> tuple[dict | None, dict | None, list | None]:
    """Checks the read options; returns filter, projection and pipeline parsed from Extended JSON."""
    mc.check_uri(uri)
    mc.check_names(database, collection)
    mc.check_positive("num_partitions", num_partitions)
    mc.check_positive("batch_rows", batch_rows)
    mc.check_choice("partition_method", partition_method, mc.PARTITION_METHODS)
    mc.check_choice("nested", nested, mc.NESTED_MODES)
    _check_timeout(timeout_s)
    if filter is not None and not isinstance(filter, dict):
        raise ValueError(f"filter: expected a query mapping like {{status: active}}, got {filter!r}")
    if pipeline is not None:
        if filter is not None or projection is not None:
            raise ValueError("pipeline: give either pipeline, or filter/projection; put them in the pipeline as "
                             "$match / $project stages")
        return None, None, mc.check_pipeline(pipeline, num_partitions)
    query = mc.extended_json("filter", filter) if filter else None
    return query, mc.projection_spec(projection), None


def _check_timeout(timeout_s: Any) -> None:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ValueError(f"timeout_s: expected a number of seconds > 0, got {timeout_s!r}")


def _range_query(query: dict[str, Any] | None, rng: mc.ReadRange) -> dict[str, Any]:
    bounds = rng.query()
    if not bounds:
        return query or {}
    if not query:
        return bounds
    if "_id" not in query:
        return {**query, **bounds}
    return {"$and": [query, bounds]}


def _leading_match(pipeline: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    if pipeline and "$match" in pipeline[0]:
        return pipeline[0]["$match"]
    return None


class _PlanMongoReadDoFn(beam.DoFn):
    def __init__(self, opts: _ReadOptions, step: str) -> None:
        self._opts = opts
        self._step = step

    def process(self, _: Any) -> Iterator[mc.ReadRange]:
        o = self._opts
        if o.num_partitions <= 1:
            yield mc.ReadRange(0, 1)
            return
        client = mc.connect(o.uri, o.timeout_s)
        try:
            coll = client[o.database][o.collection]
            query = o.filter if o.pipeline is None else _leading_match(o.pipeline)
            for attempt in range(o.max_retries + 1):
                try:
                    ranges = mc.plan_ranges(coll, query, o.num_partitions, o.partition_method, _LOG)
                    break
                except mongo_errors.PyMongoError as err:
                    if isinstance(err, mongo_errors.ServerSelectionTimeoutError) or not mc.is_transient(err) \
                            or attempt == o.max_retries:
                        raise MongoStructuralError(
                            f"{self._step}: cannot plan the read of {o.database}.{o.collection} at "
                            f"{mc.redact_uri(o.uri)}: {mc.describe(err)}") from None
                    _backoff(o.retry_backoff_s, attempt)
        finally:
            client.close()
        _LOG.info("%s: reading %s.%s in %d range(s)", self._step, o.database, o.collection, len(ranges))
        yield from ranges


class _ReadMongoRangeDoFn(beam.DoFn):
    """Reads one _id range; documents that cannot be decoded or converted go to the DLQ."""

    def __init__(self, opts: _ReadOptions, step: str) -> None:
        self._opts = opts
        self._step = step
        self._ctx = get_run_context()
        self._label = f"mongodb:{opts.database}.{opts.collection}"

    def setup(self) -> None:
        self._metrics = StepMetrics(self._step)
        self._client = mc.connect(self._opts.uri, self._opts.timeout_s)

    def teardown(self) -> None:
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            client.close()

    def _cursor(self, rng: mc.ReadRange) -> Any:
        o = self._opts
        coll = self._client[o.database].get_collection(o.collection, codec_options=conv.RAW_CODEC)
        if o.pipeline is not None:
            bounds = rng.query()
            stages = ([{"$match": bounds}] if bounds else []) + list(o.pipeline)
            return coll.aggregate(stages, batchSize=min(o.batch_rows, 100_000))
        return coll.find(_range_query(o.filter, rng), o.projection, batch_size=min(o.batch_rows, 100_000))

    @timed_process
    def process(self, rng: mc.ReadRange) -> Iterator[Any]:
        o = self._opts
        emitted = 0
        for attempt in range(o.max_retries + 1):
            try:
                pending: list[bytes] = []
                for raw in self._cursor(rng):
                    pending.append(raw.raw)
                    if len(pending) >= o.batch_rows:
                        yield from self._emit(rng, pending, emitted)
                        emitted += len(pending)
                        pending = []
                if pending:
                    yield from self._emit(rng, pending, emitted)
                return
            except mongo_errors.PyMongoError as err:
                where = f"{o.database}.{o.collection}{rng.label()} at {mc.redact_uri(o.uri)}"
                if emitted or not mc.is_transient(err) or attempt == o.max_retries or \
                        isinstance(err, mongo_errors.ServerSelectionTimeoutError):
                    raise MongoStructuralError(f"{self._step}: reading {where} failed: {mc.describe(err)}") from None
                _LOG.warning("%s: %s while reading %s; retrying", self._step, mc.describe(err), where)
                _backoff(o.retry_backoff_s, attempt)

    def _emit(self, rng: mc.ReadRange, raws: list[bytes], offset: int) -> Iterator[Any]:
        o, m = self._opts, self._metrics
        docs: list[dict[str, Any]] = []
        positions: list[int] = []
        letters = []
        with conv.gc_paused():
            for i, raw in enumerate(raws):
                try:
                    docs.append(conv.decode(raw))
                    positions.append(i)
                except Exception as err:  # noqa: BLE001 - invalid BSON / UTF-8: this document only
                    letters.append(self._letter(conv.decode_lenient(raw), "parse",
                                                f"cannot decode the document: {err}", err, rng, offset + i))
            result = conv.documents_to_batch(docs, o.nested)
        for i, reason in sorted(result.bad.items()):
            letters.append(self._letter(docs[i], "type", reason, "TypeError", rng, offset + positions[i]))
        m.batches_in.inc()
        m.records_in.inc(len(raws))
        for letter in letters:
            yield beam.pvalue.TaggedOutput(DLQ_TAG, letter)
        if letters:
            m.records_failed.inc(len(letters))
        batch = result.batch
        nbytes = sum(len(r) for r in raws)
        m.bytes_in.inc(nbytes)
        progress.report_read(len(raws), nbytes, where=self._label)
        if batch is not None and batch.num_rows:
            m.records_out.inc(batch.num_rows)
            if o.cursor_field is not None:
                if o.cursor_field not in batch.schema.names:
                    raise MongoStructuralError(f"{self._step}: incremental.cursor_field {o.cursor_field!r} is not in "
                                               f"the documents read (fields: {batch.schema.names})")
                yield beam.pvalue.TaggedOutput(CURSOR_TAG, column_max(batch, o.cursor_field))
            yield tag_source(batch, f"{self._label}{rng.label()}", offset + 1)

    def _letter(self, doc: dict[str, Any], error_type: str, error: str, exc: Any, rng: mc.ReadRange,
                position: int) -> dict[str, Any]:
        o = self._opts
        doc_id = doc.get("_id") if isinstance(doc, dict) else None
        source = mc.source_name(o.database, o.collection, doc_id)
        if doc_id is None:
            source += f" (document {position + 1}{rng.label()})"
        return dead_letter(doc, error_type=error_type, error=error, exception=exc, step=self._step, source=source,
                           ctx=self._ctx)


class ReadFromMongoDB(beam.PTransform):
    """Reads a MongoDB collection (find or aggregate) as RecordBatches; returns ``(batches, dead_letters)``.

    ``p | ReadFromMongoDB(uri="mongodb://localhost:27017", database="shop", collection="orders",
    filter={"status": "paid"}, num_partitions=4)``
    """

    def __init__(
        self,
        uri: str,
        database: str,
        collection: str,
        filter: dict[str, Any] | None = None,
        projection: dict[str, Any] | list[str] | None = None,
        pipeline: list[dict[str, Any]] | None = None,
        num_partitions: int = 1,
        partition_method: str = "paginate",
        nested: str = "struct",
        batch_rows: int = DEFAULT_BATCH_ROWS,
        timeout_s: float = 10.0,
        *,
        step_name: str | None = None,
        label: str | None = None,
        incremental: IncrementalConfig | dict[str, Any] | None = None,
    ) -> None:
        super().__init__(label)
        self._incremental = cursor_config(incremental)
        query, proj, stages = validate_read_options(uri, database, collection, filter, projection, pipeline,
                                                    num_partitions, partition_method, nested, batch_rows, timeout_s)
        self._opts = _ReadOptions(uri, database, collection, query, proj, stages, num_partitions, partition_method,
                                  nested, batch_rows, float(timeout_s))
        self._raw = {"filter": filter, "projection": projection, "pipeline": pipeline}
        self._step_name = step_name

    def display_data(self) -> dict[str, Any]:
        o = self._opts
        data: dict[str, Any] = {"uri": mc.redact_uri(o.uri), "database": o.database, "collection": o.collection,
                                "num_partitions": o.num_partitions, "partition_method": o.partition_method,
                                "nested": o.nested, "batch_rows": o.batch_rows}
        for key, value in self._raw.items():
            if value is not None:
                data[key] = redact(str(value))
        return data

    def expand(self, pbegin: beam.pvalue.PBegin) -> tuple[beam.PCollection, beam.PCollection]:
        step = self._step_name or self.label
        opts, start = self._opts, cursor_read_start(step, self._incremental)  # committed cursor, read at build
        if start is not None:
            opts = _with_cursor(opts, self._incremental.cursor_field or "", start.start)
        ranges = (
            pbegin
            | "Start" >> beam.Create([None])
            | "Plan" >> beam.ParDo(_PlanMongoReadDoFn(opts, step))
            | "Spread" >> beam.Reshuffle()
        )
        results = ranges | "Read" >> beam.ParDo(_ReadMongoRangeDoFn(opts, step)).with_outputs(
            DLQ_TAG, CURSOR_TAG, main="output")
        record_cursor(results, start)
        return results.output, results[DLQ_TAG]


def _with_cursor(opts: _ReadOptions, field: str, start: Any) -> _ReadOptions:
    """The read options restricted to ``field >= start`` (closed start), and told to report the cursor."""
    opts = dataclasses.replace(opts, cursor_field=field)
    if start is None:
        return opts
    if isinstance(start, str):  # a date given as text in the template: compare as a date
        with contextlib.suppress(ValueError):
            start = dt.datetime.fromisoformat(start)
    if isinstance(start, dt.date) and not isinstance(start, dt.datetime):
        start = dt.datetime(start.year, start.month, start.day)
    condition = {field: {"$gte": start}}
    if opts.pipeline is not None:
        return dataclasses.replace(opts, pipeline=[{"$match": condition}, *opts.pipeline])
    query = {"$and": [opts.filter, condition]} if opts.filter else condition
    return dataclasses.replace(opts, filter=query)


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _WriteOptions:
    uri: str
    database: str
    collection: str
    mode: str
    key: tuple[str, ...]
    object_id_fields: tuple[str, ...] | None
    json_fields: tuple[str, ...] | None
    omit_nulls: bool
    decimals: str
    create_index: bool
    max_retries: int
    retry_backoff_s: float
    timeout_s: float


def validate_write_options(uri: Any, database: Any, collection: Any, mode: Any, key: Any, object_id_fields: Any,
                           json_fields: Any, decimals: Any, max_retries: Any, retry_backoff_s: Any,
                           timeout_s: Any) -> tuple[str, ...]:
    """Checks the write options; returns the key fields (``_id`` when not given)."""
    mc.check_uri(uri)
    mc.check_names(database, collection)
    mc.check_choice("mode", mode, mc.WRITE_MODES)
    mc.check_choice("decimals", decimals, mc.DECIMAL_MODES)
    for field, names in (("key", key), ("object_id_fields", object_id_fields), ("json_fields", json_fields)):
        if names is not None and (not isinstance(names, (list, tuple)) or not names
                                  or not all(isinstance(n, str) and n for n in names)):
            raise ValueError(f"{field}: expected a non-empty list of field names, got {names!r}")
    if key is not None and mode == "insert":
        raise ValueError("key: mode 'insert' does not match on a key; use mode 'upsert' or 'replace' with key")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries: expected a whole number >= 0, got {max_retries!r}")
    if isinstance(retry_backoff_s, bool) or not isinstance(retry_backoff_s, (int, float)) or retry_backoff_s < 0:
        raise ValueError(f"retry_backoff_s: expected a number of seconds >= 0, got {retry_backoff_s!r}")
    _check_timeout(timeout_s)
    return tuple(key) if key else ("_id",)


def _write_error_type(code: Any) -> str:
    if code in mc.DUPLICATE_KEY_CODES:
        return "constraint"
    return "validation"


@dataclasses.dataclass
class _Failure:
    row: int
    error_type: str
    error: str
    exception: str


class _WriteMongoDoFn(beam.DoFn):
    """Writes each batch with one unordered bulk_write; per-document errors go to the DLQ."""

    def __init__(self, opts: _WriteOptions, step: str) -> None:
        self._opts = opts
        self._step = step
        self._ctx = get_run_context()

    def setup(self) -> None:
        self._metrics = StepMetrics(self._step)
        self._client = mc.connect(self._opts.uri, self._opts.timeout_s)
        self._reached = False
        self._indexed = not (self._opts.create_index and self._opts.mode != "insert")

    def teardown(self) -> None:
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            client.close()

    @property
    def _target(self) -> str:
        return f"{self._opts.database}.{self._opts.collection}"

    def _collection(self) -> Any:
        return self._client[self._opts.database][self._opts.collection]

    @timed_process
    def process(self, batch: pa.RecordBatch) -> Iterator[Any]:
        if batch.num_rows == 0:
            return
        m = self._metrics
        m.batches_in.inc()
        m.records_in.inc(batch.num_rows)
        m.bytes_in.inc(batch_nbytes(batch))
        with conv.gc_paused():
            ops, rows, failures = self._operations(batch)
        written = 0
        if ops:
            self._ensure_index()
            written, more = self._bulk_write(ops, rows)
            failures.extend(more)
        attempt = batch_attempt(batch)
        for f in sorted(failures, key=lambda f: f.row):
            record = row_as_record(batch, f.row)
            yield beam.pvalue.TaggedOutput(DLQ_TAG, dead_letter(
                record, error_type=f.error_type, error=f.error, exception=f.exception, step=self._step,
                source=self._source(record), attempt=attempt, ctx=self._ctx))
        if failures:
            m.records_failed.inc(len(failures))
        if written:
            m.records_out.inc(written)
        yield {"collection": self._target, "rows": written}

    def _source(self, record: dict[str, Any]) -> str:
        keys = [k for k in self._opts.key if k in record]
        if not keys:
            return self._target
        shown = ", ".join(f"{k}={record[k]!r}" for k in keys)
        return f"{self._target} {shown}"

    def _operations(self, batch: pa.RecordBatch) -> tuple[list[Any], list[int], list[_Failure]]:
        """One write operation per convertible row, the rows they came from, and the rows that failed."""
        o = self._opts
        hints = conv.hints_for(batch.schema, o.object_id_fields, o.json_fields, o.omit_nulls, o.decimals)
        docs, bad = conv.batch_to_documents(batch, hints)
        failures = [_Failure(i, "type", reason, "TypeError") for i, reason in bad.items()]
        ops: list[Any] = []
        rows: list[int] = []
        for i, doc in enumerate(docs):
            if doc is None:
                continue
            try:
                ops.append(self._operation(doc))
                rows.append(i)
            except conv.BadValue as why:
                failures.append(_Failure(i, "type", str(why), "InvalidDocument"))
            except ValueError as why:
                failures.append(_Failure(i, "validation", str(why), "ValueError"))
        return ops, rows, failures

    def _operation(self, doc: dict[str, Any]) -> Any:
        o = self._opts
        if o.mode == "insert":
            if "_id" not in doc or doc["_id"] is None:
                doc["_id"] = ObjectId()  # client-side _ids make a retried insert detectable
            return InsertOne(conv.encode(doc, MAX_DOCUMENT_BYTES))
        missing = [k for k in o.key if doc.get(k) is None]
        if missing:
            raise ValueError(f"key field(s) {missing} are missing or null; mode {o.mode!r} matches documents "
                             f"on {list(o.key)}")
        match = {k: doc[k] for k in o.key}
        if o.mode == "replace":
            return ReplaceOne(match, conv.encode(doc, MAX_DOCUMENT_BYTES), upsert=True)
        fields = {k: v for k, v in doc.items() if k not in match}
        update = {"$set": fields} if fields else {"$setOnInsert": match}
        return UpdateOne(match, conv.encode(update, MAX_DOCUMENT_BYTES), upsert=True)

    def _ensure_index(self) -> None:
        if self._indexed:
            return
        keys = [(k, 1) for k in self._opts.key]
        if self._opts.key != ("_id",):
            try:
                self._collection().create_index(keys, unique=True, name="beam_etl_" + "_".join(self._opts.key))
            except mongo_errors.PyMongoError as err:
                raise MongoStructuralError(
                    f"{self._step}: create_index: cannot create a unique index on {list(self._opts.key)} of "
                    f"{self._target}: {mc.describe(err)} (duplicates already stored? an index of another name?)"
                ) from None
        self._indexed = True

    def _written_before(self, op: Any) -> bool:
        """For an insert retried after a cut-off attempt: is the stored document the one we sent?"""
        if not isinstance(op, InsertOne):
            return False
        sent = op._doc  # the RawBSONDocument built by _operation
        stored = self._collection().with_options(codec_options=conv.RAW_CODEC).find_one({"_id": sent["_id"]})
        return stored is not None and conv.decode(stored.raw) == conv.decode(sent.raw)

    def _bulk_write(self, ops: list[Any], rows: list[int]) -> tuple[int, list[_Failure]]:
        """Writes ``ops`` (unordered); retries what failed transiently. Returns (written, failures)."""
        o = self._opts
        pending = list(range(len(ops)))
        uncertain: set[int] = set()  # ops an interrupted attempt may have written
        failures: list[_Failure] = []
        written = 0
        last: BaseException | None = None
        for attempt in range(o.max_retries + 1):
            if attempt:
                _backoff(o.retry_backoff_s, attempt - 1)
            try:
                self._collection().bulk_write([ops[i] for i in pending], ordered=False)
                self._reached = True
                return written + len(pending), failures
            except mongo_errors.BulkWriteError as bwe:
                self._reached = True
                details = bwe.details or {}
                if details.get("writeConcernErrors"):
                    raise MongoStructuralError(
                        f"{self._step}: the writes to {self._target} were not acknowledged by the write concern: "
                        f"{details['writeConcernErrors'][:3]}") from None
                retry: list[int] = []
                for error in details.get("writeErrors", []):
                    op = pending[error["index"]]
                    code = error.get("code")
                    if code in mc.TRANSIENT_CODES:
                        retry.append(op)
                    elif op in uncertain and code in mc.DUPLICATE_KEY_CODES and self._written_before(ops[op]):
                        written += 1  # written by the attempt that was cut off
                    else:
                        message = f"{error.get('errmsg', 'write error')} (code {code})"
                        failures.append(_Failure(rows[op], _write_error_type(code), redact(message),
                                                 "BulkWriteError"))
                written += len(pending) - len(details.get("writeErrors", []))
                pending = retry
                last = bwe
                if not pending:
                    return written, failures
            except mongo_errors.PyMongoError as err:
                if isinstance(err, mongo_errors.ServerSelectionTimeoutError) and not self._reached:
                    raise MongoStructuralError(
                        f"{self._step}: cannot reach MongoDB at {mc.redact_uri(o.uri)} to write {self._target}: "
                        f"{mc.describe(err)}") from None
                if not mc.is_transient(err):
                    raise MongoStructuralError(
                        f"{self._step}: writing to {self._target} at {mc.redact_uri(o.uri)} failed: "
                        f"{mc.describe(err)}") from None
                uncertain.update(pending)
                last = err
                _LOG.warning("%s: %s while writing %d documents to %s (attempt %d of %d)", self._step,
                             mc.describe(err), len(pending), self._target, attempt + 1, o.max_retries + 1)
        reason = (f"{mc.describe(last)} (gave up after {o.max_retries + 1} attempts; the document may or may not "
                  "have been written)")
        failures.extend(_Failure(rows[i], "transient_exhausted", reason, type(last).__name__) for i in pending)
        return written, failures


class WriteToMongoDB(beam.PTransform):
    """Writes RecordBatches to a MongoDB collection; returns ``(written, dead_letters)``.

    ``written`` holds one ``{"collection": "db.coll", "rows": n}`` per batch. Modes: ``insert``
    (``InsertOne``), ``upsert`` (``UpdateOne(key, {$set: row}, upsert=True)``: fields not in the row
    are kept) and ``replace`` (``ReplaceOne(key, row, upsert=True)``). ``key`` defaults to ``_id``.
    """

    def __init__(
        self,
        uri: str,
        database: str,
        collection: str,
        mode: str = "insert",
        key: Sequence[str] | None = None,
        object_id_fields: Sequence[str] | None = None,
        json_fields: Sequence[str] | None = None,
        omit_nulls: bool = False,
        decimals: str = "decimal128",
        create_index: bool = False,
        max_retries: int = 5,
        retry_backoff_s: float = 0.2,
        timeout_s: float = 10.0,
        *,
        step_name: str | None = None,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        keys = validate_write_options(uri, database, collection, mode, key, object_id_fields, json_fields, decimals,
                                      max_retries, retry_backoff_s, timeout_s)
        self._opts = _WriteOptions(
            uri, database, collection, mode, keys,
            tuple(object_id_fields) if object_id_fields is not None else None,
            tuple(json_fields) if json_fields is not None else None,
            bool(omit_nulls), decimals, bool(create_index), max_retries, float(retry_backoff_s), float(timeout_s))
        self._step_name = step_name

    def display_data(self) -> dict[str, Any]:
        o = self._opts
        data: dict[str, Any] = {"uri": mc.redact_uri(o.uri), "database": o.database, "collection": o.collection,
                                "mode": o.mode, "omit_nulls": o.omit_nulls, "max_retries": o.max_retries}
        if o.mode != "insert":
            data["key"] = ", ".join(o.key)
        return data

    def expand(self, pcoll: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        step = self._step_name or self.label
        results = pcoll | "Write" >> beam.ParDo(_WriteMongoDoFn(self._opts, step)).with_outputs(
            DLQ_TAG, main="output")
        return results.output, results[DLQ_TAG]


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


class ReadFromMongoDBConfig(registry.StrictConfig):
    """Reads a MongoDB collection (find or aggregate) as Arrow batches, in parallel by _id range."""

    uri: str = Field(description='Connection string, usually "${MONGO_URI}" (kept out of logs and display data).')
    database: str = Field(description="Database name.")
    collection: str = Field(description="Collection name.")
    filter: dict[str, Any] | None = Field(default=None, description="find() query (MongoDB Extended JSON for "
                                                                    "typed values: {$oid: ...}, {$date: ...}).")
    projection: dict[str, Any] | list[str] | None = Field(
        default=None, description="Fields to return: a list, or a mapping like {name: 1, _id: 0}.")
    pipeline: list[dict[str, Any]] | None = Field(
        default=None, description="Aggregation pipeline to run instead of find (no filter/projection with it).")
    num_partitions: int = Field(default=1, description="How many _id ranges to read in parallel.")
    partition_method: str = Field(
        default="paginate",
        description="paginate (even ranges by _id rank) or minmax (interpolated between the smallest and largest _id).")
    nested: str = Field(default="struct", description="struct: sub-documents/arrays become Arrow structs/lists; "
                                                      "json: they become JSON text columns.")
    batch_rows: int = Field(default=DEFAULT_BATCH_ROWS, description="Documents per RecordBatch.")
    timeout_s: float = Field(default=10.0, description="Server selection / connect timeout in seconds.")
    incremental: IncrementalConfig | None = Field(
        default=None, description="{cursor_field, primary_key, initial}: read documents with cursor_field >= the "
                                  "value saved by the last successful run (a date or number field).")

    @model_validator(mode="after")
    def _validate(self) -> ReadFromMongoDBConfig:
        validate_read_options(self.uri, self.database, self.collection, self.filter, self.projection, self.pipeline,
                              self.num_partitions, self.partition_method, self.nested, self.batch_rows,
                              self.timeout_s)
        return self


class WriteToMongoDBConfig(registry.StrictConfig):
    """Writes Arrow batches to a MongoDB collection (insert, upsert or replace; unordered bulk writes)."""

    uri: str = Field(description='Connection string, usually "${MONGO_URI}".')
    database: str = Field(description="Database name.")
    collection: str = Field(description="Collection name (created on first write).")
    mode: str = Field(default="insert", description=f"One of {', '.join(mc.WRITE_MODES)}.")
    key: list[str] | None = Field(default=None, description="Fields upsert/replace match on (default: _id).")
    object_id_fields: list[str] | None = Field(
        default=None, description="String fields written as ObjectId (default: fields ReadFromMongoDB read as "
                                  "ObjectIds, from the Arrow field metadata).")
    json_fields: list[str] | None = Field(
        default=None, description="String fields holding JSON text, written as sub-documents/arrays (default: "
                                  "fields ReadFromMongoDB turned into JSON text).")
    omit_nulls: bool = Field(default=False, description="Leave null fields out of the documents instead of "
                                                        "storing null.")
    decimals: str = Field(default="decimal128", description="How decimal columns are stored: decimal128, string "
                                                            "or double (for servers without Decimal128).")
    create_index: bool = Field(default=False, description="Create a unique index on key (upsert/replace) before "
                                                          "writing.")
    max_retries: int = Field(default=5, description="Retries (exponential backoff) after transient errors.")
    retry_backoff_s: float = Field(default=0.2, description="First retry delay in seconds (doubles each time).")
    timeout_s: float = Field(default=10.0, description="Server selection / connect timeout in seconds.")

    @model_validator(mode="after")
    def _validate(self) -> WriteToMongoDBConfig:
        validate_write_options(self.uri, self.database, self.collection, self.mode, self.key, self.object_id_fields,
                               self.json_fields, self.decimals, self.max_retries, self.retry_backoff_s, self.timeout_s)
        return self


@registry.register("source", "ReadFromMongoDB", ReadFromMongoDBConfig, streaming=True)
def read_from_mongodb(config: ReadFromMongoDBConfig, ctx: registry.BuildContext) -> beam.PTransform:
    """Reads a MongoDB collection (find or aggregate) as Arrow batches, in parallel by _id range."""
    return ReadFromMongoDB(**config.model_dump(), step_name=ctx.step_name)


@registry.register("sink", "WriteToMongoDB", WriteToMongoDBConfig, streaming=True,
                   idempotent=lambda c: c.mode in ("upsert", "replace"))
def write_to_mongodb(config: WriteToMongoDBConfig, ctx: registry.BuildContext) -> beam.PTransform:
    """Writes Arrow batches to a MongoDB collection (insert, upsert or replace; unordered bulk writes)."""
    return WriteToMongoDB(**config.model_dump(), step_name=ctx.step_name)
