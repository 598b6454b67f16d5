"""Shared machinery for batch steps: metrics, DLQ routing and per-row fallback.

A step is a pure function ``fn(batch) -> RecordBatch | BatchResult``. ``BatchStep``
wraps it in a DoFn that counts records, and when ``fn`` raises on a batch, re-runs it
row by row so only the failing rows leave for the DLQ; the rest of the batch goes on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa

from beam_etl.batch import batch_nbytes, concat_batches, concat_to_batch, row_as_record
from beam_etl.ops.context import RunContext, get_run_context
from beam_etl.ops.dlq import DLQ_TAG, dead_letter
from beam_etl.ops.logging import install_worker_logging_for
from beam_etl.ops.metrics import StepMetrics

SOURCE_KEY = b"beam_etl.source"
FIRST_ROW_KEY = b"beam_etl.first_row"
ATTEMPT_KEY = b"beam_etl.attempt"


class RecordError(Exception):
    """Raised by step code for a bad record; ``error_type`` picks the DLQ category."""

    def __init__(self, message: str, error_type: str = "validation") -> None:
        super().__init__(message)
        self.error_type = error_type


@dataclasses.dataclass
class BatchResult:
    """What a batch function returns: kept rows, a filtered count and dead letters."""

    batch: pa.RecordBatch | None
    filtered: int = 0
    dead_letters: list[dict[str, Any]] = dataclasses.field(default_factory=list)


BatchFn = Callable[[pa.RecordBatch], "pa.RecordBatch | BatchResult | None"]


def classify_error(exc: BaseException) -> str:
    """Maps an exception to a DLQ ``error_type``."""
    if isinstance(exc, RecordError):
        return exc.error_type
    if isinstance(exc, (pa.ArrowTypeError, TypeError)):
        return "type"
    if isinstance(exc, (pa.ArrowInvalid, ValueError, KeyError)):
        return "validation"
    return "internal"


def tag_source(batch: pa.RecordBatch, source: str, first_row: int) -> pa.RecordBatch:
    """Records where a batch came from in its schema metadata (used by dead letters)."""
    meta = dict(batch.schema.metadata or {})
    meta[SOURCE_KEY] = source.encode()
    meta[FIRST_ROW_KEY] = str(first_row).encode()
    return batch.replace_schema_metadata(meta)


def tag_attempt(batch: pa.RecordBatch, attempt: int) -> pa.RecordBatch:
    """Marks a batch of replayed records: dead letters from its rows carry ``attempt``."""
    meta = dict(batch.schema.metadata or {})
    meta[ATTEMPT_KEY] = str(int(attempt)).encode()
    return batch.replace_schema_metadata(meta)


def batch_attempt(batch: pa.RecordBatch) -> int:
    """The attempt number a batch carries (1 unless replayed from the DLQ)."""
    raw = (batch.schema.metadata or {}).get(ATTEMPT_KEY, b"")
    try:
        return max(1, int(raw.decode())) if raw else 1
    except ValueError:
        return 1


def batch_source(batch: pa.RecordBatch, row: int | None = None) -> str:
    """Describes where a batch (or one of its rows) came from, for dead letters."""
    meta = batch.schema.metadata or {}
    source = meta.get(SOURCE_KEY, b"").decode()
    if not source:
        return ""
    first = meta.get(FIRST_ROW_KEY, b"").decode()
    if row is None or not first:
        return f"{source} (batch from row {first})" if first else source
    return f"{source} (batch from row {first}, row {row} after earlier steps)"


def normalise_result(value: pa.RecordBatch | pa.Table | BatchResult | None) -> BatchResult:
    """Accepts the loose return types of a batch function."""
    if value is None:
        return BatchResult(None)
    if isinstance(value, BatchResult):
        return value
    if isinstance(value, pa.Table):
        return BatchResult(concat_to_batch(value))
    if isinstance(value, pa.RecordBatch):
        return BatchResult(value)
    raise TypeError(f"a batch function must return a RecordBatch, Table or BatchResult, not {type(value).__name__}")


def run_with_row_fallback(
    fn: BatchFn, batch: pa.RecordBatch, step: str, ctx: RunContext, row_fallback: bool = True
) -> BatchResult:
    """Runs ``fn`` on the batch; on failure, isolates failing rows one by one."""
    try:
        return normalise_result(fn(batch))
    except Exception as batch_error:  # noqa: BLE001 - any failure is routed, not raised
        if not row_fallback or batch.num_rows <= 1:
            return BatchResult(None, 0, [
                dead_letter(row_as_record(batch, i), error_type=classify_error(batch_error),
                            error=str(batch_error), exception=batch_error, step=step,
                            source=batch_source(batch, i), attempt=batch_attempt(batch), ctx=ctx)
                for i in range(batch.num_rows)
            ])
    kept: list[pa.RecordBatch] = []
    result = BatchResult(None)
    for i in range(batch.num_rows):
        row = batch.slice(i, 1)
        try:
            one = normalise_result(fn(row))
        except Exception as row_error:  # noqa: BLE001
            result.dead_letters.append(dead_letter(
                row_as_record(batch, i), error_type=classify_error(row_error), error=str(row_error),
                exception=row_error, step=step, source=batch_source(batch, i), attempt=batch_attempt(batch),
                ctx=ctx))
            continue
        result.filtered += one.filtered
        result.dead_letters.extend(one.dead_letters)
        if one.batch is not None and one.batch.num_rows:
            kept.append(one.batch)
    if kept:
        result.batch = concat_to_batch(concat_batches(kept))
    return result


class StepDoFn(beam.DoFn):
    """A DoFn of one step: its name, the run context, and its ``StepMetrics`` (made in ``setup``)."""

    def __init__(self, step: str) -> None:
        self._step = step
        self._ctx = get_run_context()

    def setup(self) -> None:
        self._metrics = StepMetrics(self._step)
        install_worker_logging_for(self._ctx)  # run_id/pipeline/tenant on remote workers' log lines

    def count_input(self, batch: pa.RecordBatch) -> None:
        """Counts one input batch: batches, records and bytes in."""
        self._metrics.batches_in.inc()
        self._metrics.records_in.inc(batch.num_rows)
        self._metrics.bytes_in.inc(batch_nbytes(batch))


class BatchFnDoFn(StepDoFn):
    """Applies a batch function, counting records and routing failures to the DLQ."""

    def __init__(self, fn: BatchFn, step: str, row_fallback: bool = True) -> None:
        super().__init__(step)
        self._fn = fn
        self._row_fallback = row_fallback

    def process(self, batch: pa.RecordBatch) -> Iterator[Any]:
        self.count_input(batch)
        with self._metrics.time_batch():
            result = run_with_row_fallback(self._fn, batch, self._step, self._ctx, self._row_fallback)
        if result.filtered:
            self._metrics.records_filtered.inc(result.filtered)
        if result.dead_letters:
            self._metrics.records_failed.inc(len(result.dead_letters))
            for letter in result.dead_letters:
                yield beam.pvalue.TaggedOutput(DLQ_TAG, letter)
        if result.batch is not None and result.batch.num_rows:
            self._metrics.records_out.inc(result.batch.num_rows)
            yield result.batch


class BatchStep(beam.PTransform):
    """Base class: subclasses implement ``batch_fn`` and get ``(output, dead_letters)``."""

    row_fallback = True

    def batch_fn(self) -> BatchFn:
        """Abstract: subclasses return the function applied to each batch."""
        raise NotImplementedError(f"{type(self).__name__} must implement batch_fn()")

    def step_name(self) -> str:
        return self.label

    def expand(self, pcoll: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        results = pcoll | "Apply" >> beam.ParDo(
            BatchFnDoFn(self.batch_fn(), self.step_name(), self.row_fallback)
        ).with_outputs(DLQ_TAG, main="output")
        return results.output, results[DLQ_TAG]


def count_only(step: str) -> beam.DoFn:
    """A pass-through DoFn that counts records in and out (for shuffle stages)."""
    return BatchFnDoFn(lambda b: b, step, row_fallback=False)
