"""InferSchema: batches in, one inferred schema per window out (a dict, see ``beam_etl.ml.schema_infer``).

* **whole input** (default): each batch is profiled in a DoFn (``profile``), the partial profiles
  merge in a ``CombineFn`` and the merged profile is finished once per window (semantic types
  are detected there, on each column's bounded value sample). Only profiles cross the shuffle.
* ``sample_fraction=f``: each batch keeps a Bernoulli(f) share of its rows before profiling;
  counts and distinct values then describe the sample.
* ``sample_rows=n``: a uniform sample of at most ``n`` rows per window (bottom-n of random
  priorities, pre-reduced per batch, so at most ~2n rows cross the shuffle) is profiled when
  the window closes.
* **streaming**: the combine runs per window, so a windowed input (``Window`` step) yields one
  schema per window (the dict gains ``window: {start, end}``). An unwindowed unbounded input
  never closes its global window and yields nothing.

Dead letters: a batch that cannot be profiled is retried row by row; failing rows go to the DLQ
(``error_type`` by exception class). Accounting: ``records_in = records_grouped +
records_failed`` (rows are folded into the schema; a schema is not a record).

The transform writes nothing. The registered step ``InferSchema`` adds ``output_path`` (the JSON
written with Beam FileSystems, one file per window) and ``emit: fields`` (one row per field
instead of the dict, for any sink).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from pydantic import Field, model_validator

from beam_etl import registry
from beam_etl.batch import batch_nbytes, concat_to_batch
from beam_etl.ml.schema_infer import (
    DEFAULT_DISTINCT_SKETCH,
    DEFAULT_SAMPLE_SIZE,
    DEFAULT_THRESHOLD,
    InferOptions,
    InferredSchema,
    TableProfile,
    empty_profile,
    profile,
)
from beam_etl.ops.context import get_run_context
from beam_etl.ops.dlq import DLQ_TAG
from beam_etl.ops.metrics import StepMetrics, timed_process
from beam_etl.transforms.base import run_with_row_fallback

EMIT_OPTIONS = ("schema", "fields")


def _profile_rows(batch: pa.RecordBatch, options: InferOptions, step: str, ctx: Any
                  ) -> tuple[TableProfile | None, list[dict[str, Any]]]:
    """Profiles a batch; if that fails, row by row, returning the rows that fail as dead letters."""
    parts: list[TableProfile] = []

    def fn(b: pa.RecordBatch) -> pa.RecordBatch:
        parts.append(profile(b, options))
        return b

    result = run_with_row_fallback(fn, batch, step, ctx)
    merged = None
    for part in parts:
        merged = part if merged is None else merged.merge(part)
    return merged, result.dead_letters


def _count_in(metrics: StepMetrics, batch: pa.RecordBatch) -> None:
    metrics.batches_in.inc()
    metrics.records_in.inc(batch.num_rows)
    metrics.bytes_in.inc(batch_nbytes(batch))


class _ProfileDoFn(beam.DoFn):
    """Batch -> partial TableProfile (optionally of a Bernoulli sample of its rows); failures -> DLQ."""

    def __init__(self, options: InferOptions, step: str, fraction: float | None, seed: int | None) -> None:
        self._options = options
        self._step = step
        self._fraction = fraction
        self._seed = seed
        self._ctx = get_run_context()

    def setup(self) -> None:
        self._metrics = StepMetrics(self._step)
        self._rng = np.random.default_rng(self._seed)

    @timed_process
    def process(self, batch: pa.RecordBatch) -> Iterator[Any]:
        _count_in(self._metrics, batch)
        rows = batch
        if self._fraction is not None and self._fraction < 1.0 and batch.num_rows:
            rows = batch.filter(pa.array(self._rng.random(batch.num_rows) < self._fraction))
        part, letters = _profile_rows(rows, self._options, self._step, self._ctx)
        self._metrics.records_grouped.inc(batch.num_rows - len(letters))
        if letters:
            self._metrics.records_failed.inc(len(letters))
            for letter in letters:
                yield beam.pvalue.TaggedOutput(DLQ_TAG, letter)
        if part is not None:
            yield part


class ProfileCombineFn(beam.CombineFn):
    """Merges partial TableProfiles; outputs ``{"schema": InferredSchema dict, "dead_letters": []}``."""

    def __init__(self, options: InferOptions) -> None:
        self._options = options

    def create_accumulator(self) -> TableProfile:
        return empty_profile(self._options)

    def add_input(self, acc: TableProfile, element: TableProfile) -> TableProfile:
        return acc.merge(element)

    def merge_accumulators(self, accumulators: Any) -> TableProfile:
        out = self.create_accumulator()
        for acc in accumulators:
            out = out.merge(acc)
        return out

    def extract_output(self, acc: TableProfile) -> dict[str, Any]:
        return {"schema": acc.finish().to_dict(), "dead_letters": []}


class _SampleRowsDoFn(beam.DoFn):
    """Batch -> (priorities, rows): the batch's ``k`` rows of lowest random priority."""

    def __init__(self, k: int, step: str, seed: int | None) -> None:
        self._k = k
        self._step = step
        self._seed = seed

    def setup(self) -> None:
        self._metrics = StepMetrics(self._step)
        self._rng = np.random.default_rng(self._seed)

    @timed_process
    def process(self, batch: pa.RecordBatch) -> Iterator[Any]:
        _count_in(self._metrics, batch)
        self._metrics.records_grouped.inc(batch.num_rows)
        if not batch.num_rows:
            return
        priorities = self._rng.random(batch.num_rows)
        if batch.num_rows > self._k:
            keep = np.sort(np.argpartition(priorities, self._k - 1)[: self._k])
            batch, priorities = batch.take(pa.array(keep)), priorities[keep]
        yield priorities, batch


class RowSampleCombineFn(beam.CombineFn):
    """A uniform sample of at most ``k`` rows (bottom-k priorities), profiled in ``extract_output``.

    The accumulator is a list of ``(priorities, batch)`` parts, cut back to the k lowest priorities
    whenever it holds more than 2k rows. Parts are profiled one by one, so batches with different
    schemas never need concatenating; rows that fail profiling come back as dead letters.
    """

    def __init__(self, k: int, options: InferOptions, step: str) -> None:
        self._k = k
        self._options = options
        self._step = step
        self._ctx = get_run_context()

    def create_accumulator(self) -> list[tuple[np.ndarray, pa.RecordBatch]]:
        return []

    def _compact(self, parts: list[tuple[np.ndarray, pa.RecordBatch]], force: bool = False
                 ) -> list[tuple[np.ndarray, pa.RecordBatch]]:
        total = sum(len(p) for p, _ in parts)
        if total <= self._k or (total <= 2 * self._k and not force):
            return parts
        cut = np.partition(np.concatenate([p for p, _ in parts]), self._k - 1)[self._k - 1]
        out = []
        for prios, batch in parts:
            keep = prios <= cut
            if keep.any():
                out.append((prios[keep], batch.filter(pa.array(keep))))
        return out

    def add_input(self, acc: list[tuple[np.ndarray, pa.RecordBatch]], element: tuple[np.ndarray, pa.RecordBatch]
                  ) -> list[tuple[np.ndarray, pa.RecordBatch]]:
        return self._compact([*acc, element])

    def merge_accumulators(self, accumulators: Any) -> list[tuple[np.ndarray, pa.RecordBatch]]:
        return self._compact([part for acc in accumulators for part in acc])

    def extract_output(self, acc: list[tuple[np.ndarray, pa.RecordBatch]]) -> dict[str, Any]:
        merged, letters = empty_profile(self._options), []
        for _, batch in self._compact(acc, force=True):
            part, failed = _profile_rows(batch, self._options, self._step, self._ctx)
            letters.extend(failed)
            if part is not None:
                merged = merged.merge(part)
        return {"schema": merged.finish().to_dict(), "dead_letters": letters}


class _EmitDoFn(beam.DoFn):
    """Combine output -> the schema dict (with its window) and the sample's dead letters."""

    def __init__(self, step: str) -> None:
        self._step = step

    def setup(self) -> None:
        self._metrics = StepMetrics(self._step)

    def process(self, result: dict[str, Any], window: Any = beam.DoFn.WindowParam) -> Iterator[Any]:
        letters = result["dead_letters"]
        if letters:  # rows of a sample that failed when the window closed
            self._metrics.records_grouped.dec(len(letters))
            self._metrics.records_failed.inc(len(letters))
            for letter in letters:
                yield beam.pvalue.TaggedOutput(DLQ_TAG, letter)
        schema = dict(result["schema"])
        if not isinstance(window, GlobalWindow):
            schema["window"] = {"start": window.start.to_utc_datetime().isoformat() + "Z",
                                "end": window.end.to_utc_datetime().isoformat() + "Z"}
        yield schema


def _combine(pcoll: beam.PCollection, fn: beam.CombineFn) -> beam.PTransform:
    combine = beam.CombineGlobally(fn)
    if not isinstance(pcoll.windowing.windowfn, GlobalWindows):
        combine = combine.without_defaults()
    return combine


class InferSchema(beam.PTransform):
    """RecordBatches -> ``(schemas, dead_letters)``: one InferredSchema dict per window.

    ``threshold``: share of non-null values a storage type must hold (default 0.98);
    ``sample_rows`` / ``sample_fraction`` (at most one): profile a uniform sample instead of every
    row; ``sample_size``: distinct values kept per column for semantic detection;
    ``distinct_sketch``: distinct counts are exact up to this many values, then estimated;
    ``semantic``: detect semantic types; ``seed``: seeds the row sampling.
    """

    def __init__(self, *, threshold: float = DEFAULT_THRESHOLD, sample_rows: int | None = None,
                 sample_fraction: float | None = None, sample_size: int = DEFAULT_SAMPLE_SIZE,
                 distinct_sketch: int = DEFAULT_DISTINCT_SKETCH, semantic: bool = True, seed: int | None = None,
                 step: str | None = None) -> None:
        super().__init__(label=step)
        if sample_rows is not None and sample_fraction is not None:
            raise ValueError("InferSchema: give sample_rows or sample_fraction, not both")
        if sample_rows is not None and (isinstance(sample_rows, bool) or not isinstance(sample_rows, int)
                                        or sample_rows < 1):
            raise ValueError(f"InferSchema.sample_rows: {sample_rows!r} is not a positive integer")
        if sample_fraction is not None and (isinstance(sample_fraction, bool)
                                            or not isinstance(sample_fraction, (int, float))
                                            or not 0 < sample_fraction <= 1):
            raise ValueError(f"InferSchema.sample_fraction: {sample_fraction!r} is not a number in (0, 1]")
        try:
            self.options = InferOptions(threshold=threshold, distinct_sketch=distinct_sketch,
                                        sample_size=sample_size, semantic=bool(semantic))
        except (TypeError, ValueError) as err:
            raise ValueError(f"InferSchema.{err}") from None
        self.sample_rows = sample_rows
        self.sample_fraction = None if sample_fraction is None else float(sample_fraction)
        self.seed = seed
        self._step = step

    def step_name(self) -> str:
        return self._step or self.label

    def display_data(self) -> dict[str, Any]:
        sampling = (f"{self.sample_rows} rows" if self.sample_rows else
                    f"{self.sample_fraction:.2%} of rows" if self.sample_fraction else "all rows")
        return {"threshold": self.options.threshold, "sampling": sampling,
                "sample_size": self.options.sample_size, "distinct_sketch": self.options.distinct_sketch,
                "semantic": self.options.semantic}

    def expand(self, pcoll: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        step = self.step_name()
        if self.sample_rows:
            parts = pcoll | "SampleRows" >> beam.ParDo(_SampleRowsDoFn(self.sample_rows, step, self.seed))
            combined = parts | "Combine" >> _combine(pcoll, RowSampleCombineFn(self.sample_rows, self.options, step))
            failed = []
        else:
            profiled = pcoll | "Profile" >> beam.ParDo(
                _ProfileDoFn(self.options, step, self.sample_fraction, self.seed)).with_outputs(DLQ_TAG, main="parts")
            combined = profiled.parts | "Combine" >> _combine(pcoll, ProfileCombineFn(self.options))
            failed = [profiled[DLQ_TAG]]
        emitted = combined | "Emit" >> beam.ParDo(_EmitDoFn(step)).with_outputs(DLQ_TAG, main="schemas")
        letters = emitted[DLQ_TAG]
        if failed:
            letters = (letters, *failed) | "DeadLetters" >> beam.Flatten()
        return emitted.schemas, letters


# --------------------------------------------------------------------------------------
# Writing and reshaping the schema (the registered step)
# --------------------------------------------------------------------------------------


def write_schema_json(schema: dict[str, Any], path: str) -> str:
    """Writes a schema dict as JSON with Beam's FileSystems (local, gs://, s3://); returns the path."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path, mime_type="application/json") as handle:
        handle.write(json.dumps(schema, indent=2, ensure_ascii=False).encode("utf-8"))
    return path


def window_path(path: str, window: Any) -> str:
    """``path`` for the global window; ``<stem>-<window end>.<ext>`` for any other."""
    if isinstance(window, GlobalWindow):
        return path
    root, dot, ext = path.rpartition(".")
    stamp = window.end.to_utc_datetime().strftime("%Y%m%dT%H%M%SZ")
    return f"{root}-{stamp}.{ext}" if dot and "/" not in ext else f"{path}-{stamp}"


class _WriteSchemaFn(beam.DoFn):
    def __init__(self, path: str) -> None:
        self._path = path

    def process(self, schema: dict[str, Any], window: Any = beam.DoFn.WindowParam) -> Iterator[dict[str, Any]]:
        write_schema_json(schema, window_path(self._path, window))
        yield schema


class WriteInferredSchema(beam.PTransform):
    """Writes each schema dict to ``path`` as JSON (one file per window) and passes it on."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "Write" >> beam.ParDo(_WriteSchemaFn(self.path))


def schema_fields_batch(schema: dict[str, Any]) -> pa.RecordBatch:
    """A schema dict as one row per field (``FIELDS_SCHEMA``, plus window bounds when windowed)."""
    table = InferredSchema.from_dict(schema).to_fields_table()
    window = schema.get("window")
    if window:
        n = table.num_rows
        table = table.append_column("window_start", pa.array([window["start"]] * n, pa.string()))
        table = table.append_column("window_end", pa.array([window["end"]] * n, pa.string()))
    return concat_to_batch(table)


class InferSchemaStep(beam.PTransform):
    """``InferSchema`` plus the step options: ``output_path`` (JSON file) and ``emit`` (schema | fields)."""

    def __init__(self, infer: InferSchema, output_path: str | None = None, emit: str = "schema") -> None:
        super().__init__(label=infer.label)
        if emit not in EMIT_OPTIONS:
            raise ValueError(f"InferSchema.emit: {emit!r} is not one of {list(EMIT_OPTIONS)}")
        if output_path is not None and (not isinstance(output_path, str) or not output_path.strip()):
            raise ValueError(f"InferSchema.output_path: {output_path!r} is not a file path")
        self.infer = infer
        self.output_path = output_path
        self.emit = emit

    def display_data(self) -> dict[str, Any]:
        return {**self.infer.display_data(), "output_path": self.output_path or "", "emit": self.emit}

    def expand(self, pcoll: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        schemas, letters = pcoll | "Infer" >> self.infer
        if self.output_path:
            schemas = schemas | "WriteJson" >> WriteInferredSchema(self.output_path)
        if self.emit == "fields":
            schemas = schemas | "AsFields" >> beam.Map(schema_fields_batch)
        return schemas, letters


# --------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------


class InferSchemaConfig(registry.StrictConfig):
    """Infer storage types, statistics and semantic types of the input; one schema per window."""

    threshold: float = Field(DEFAULT_THRESHOLD, ge=0.5, le=1.0,
                             description="Share of non-null values a storage type must hold.")
    sample_rows: int | None = Field(None, gt=0, description="Profile a uniform sample of at most this many rows.")
    sample_fraction: float | None = Field(None, gt=0, le=1, description="Profile this share of rows (Bernoulli).")
    sample_size: int = Field(DEFAULT_SAMPLE_SIZE, ge=0,
                             description="Distinct values kept per column for semantic type detection.")
    distinct_sketch: int = Field(DEFAULT_DISTINCT_SKETCH, ge=16,
                                 description="Distinct counts are exact up to this many values, then estimated.")
    semantic: bool = Field(True, description="Detect semantic types (email, phone, ...).")
    seed: int | None = Field(None, description="Seed of the row sampling.")
    output_path: str | None = Field(None, description="Write each schema as JSON here (one file per window).")
    emit: Literal["schema", "fields"] = Field(
        "schema", description="schema: one dict per window; fields: one row per field (for any sink).")

    def build(self, step: str) -> InferSchemaStep:
        infer = InferSchema(threshold=self.threshold, sample_rows=self.sample_rows,
                            sample_fraction=self.sample_fraction, sample_size=self.sample_size,
                            distinct_sketch=self.distinct_sketch, semantic=self.semantic, seed=self.seed, step=step)
        return InferSchemaStep(infer, self.output_path, self.emit)

    @model_validator(mode="after")
    def _check(self) -> InferSchemaConfig:
        self.build("check")
        return self


@registry.register("step", "InferSchema", InferSchemaConfig, streaming=True, regroups=True)
def build_infer_schema(config: InferSchemaConfig, ctx: registry.BuildContext) -> InferSchemaStep:
    """Infer storage types, statistics and semantic types; one schema dict (or field rows) per window."""
    return config.build(ctx.step_name)


__all__ = [
    "InferSchema", "InferSchemaConfig", "InferSchemaStep", "ProfileCombineFn", "RowSampleCombineFn",
    "WriteInferredSchema", "schema_fields_batch", "window_path", "write_schema_json",
]
