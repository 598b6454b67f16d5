"""``ReadFromDlq``: dead letters back into a pipeline, as RecordBatches of their records.

DLQ files are JSONL, one envelope per line (``beam_etl.ops.dlq``). The source reads a file,
a folder (every ``*.jsonl`` / ``*.ndjson`` below it, compressed or not; a run folder stands
for its ``dlq/``) or a glob, keeps the envelopes that match ``step`` / ``error_type``, and
emits their ``record`` objects. Records that are not JSON objects (the raw text of a parse failure) cannot be
replayed as rows: they are skipped and counted (``records_filtered`` and
``envelopes_skipped``). With ``bump_attempt`` the batches carry ``attempt + 1`` in their
metadata, so dead letters of the replay say which attempt failed.

The helpers here (``list_dlq_files``, ``read_envelopes``, ``envelope_matches``,
``replayable_record``) are shared with the ``python -m beam_etl.dlq`` command line.
"""

from __future__ import annotations

import glob as globlib
import json
import os
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from pydantic import Field, model_validator

from beam_etl import registry
from beam_etl.batch import DEFAULT_BATCH_ROWS, batch_nbytes
from beam_etl.io._file_common import cast_batch, cast_error_message, type_from_name
from beam_etl.ops import progress
from beam_etl.ops.context import get_run_context
from beam_etl.ops.dlq import DLQ_TAG, ERROR_TYPES, dead_letter, is_dead_letter
from beam_etl.ops.metrics import NAMESPACE_PREFIX, StepMetrics, timed_process
from beam_etl.transforms.base import tag_attempt, tag_source

DLQ_SUFFIXES = (".jsonl", ".ndjson")  # what a folder scan picks up; name a .json file or glob it explicitly
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".zst", ".deflate", ".xz", ".lzma")


def _is_dlq_name(path: str) -> bool:
    name = path.rsplit("/", 1)[-1].lower()
    if name.startswith((".", "_")):
        return False
    for suffix in COMPRESSED_SUFFIXES:
        name = name.removesuffix(suffix)
    return name.endswith(DLQ_SUFFIXES)


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def list_dlq_files(path: str) -> list[str]:
    """The DLQ files at ``path``: one file, every JSONL file below a folder, or a glob's matches.

    A run folder (one holding ``dlq/``) stands for its ``dlq/`` folder. Hidden or temporary
    entries (names starting with ``.`` or ``_``) below a folder are left out.
    """
    if _is_glob(path):
        return sorted(m.path for m in FileSystems.match([path])[0].metadata_list)
    if "://" not in path and os.path.isdir(path):
        if os.path.isdir(os.path.join(path, "dlq")):
            path = os.path.join(path, "dlq")
        found = []
        for folder, subfolders, names in os.walk(path):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith((".", "_")))
            found += [os.path.join(folder, n) for n in names if _is_dlq_name(n)]
        return sorted(found)
    if path.endswith("/"):
        matches = FileSystems.match([FileSystems.join(path.rstrip("/"), "**")])[0].metadata_list
        return sorted(
            m.path for m in matches
            if _is_dlq_name(m.path) and not any(p.startswith((".", "_")) for p in m.path[len(path):].split("/"))
        )
    if FileSystems.exists(path):
        return [path]
    return []


def read_lines(path: str) -> Iterator[tuple[int, str]]:
    """Yields ``(line number, text)`` for the non-blank lines of a (possibly compressed) file."""
    with FileSystems.open(path) as handle:
        for number, raw in enumerate(handle, start=1):
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if text.strip():
                yield number, text


def decode_record(value: Any) -> Any:
    """The envelope's record; JSON text of an object (``{...}``) is decoded into the object."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        if isinstance(decoded, dict):
            return decoded
    return value


def read_envelopes(path: str) -> Iterator[tuple[int, str, dict[str, Any] | None, str]]:
    """Yields ``(line, text, envelope or None, problem)``; a record in JSON text is decoded."""
    for number, text in read_lines(path):
        try:
            envelope = json.loads(text)
        except ValueError as err:
            yield number, text, None, f"not JSON: {err}"
            continue
        if not is_dead_letter(envelope):
            yield number, text, None, "not a DLQ envelope (needs record, error_type, error, step, source, attempt, ...)"
            continue
        envelope["record"] = decode_record(envelope["record"])
        yield number, text, envelope, ""


def envelope_matches(envelope: dict[str, Any], step: str | None = None, error_type: str | None = None) -> bool:
    """True when the envelope passes the ``step`` and ``error_type`` filters (None matches all)."""
    if step is not None and envelope.get("step") != step:
        return False
    return error_type is None or envelope.get("error_type") == error_type


def replayable_record(envelope: dict[str, Any]) -> bool:
    """Only records that are JSON objects can become rows again."""
    return isinstance(envelope.get("record"), dict)


def envelope_attempt(envelope: dict[str, Any]) -> int:
    try:
        return max(1, int(envelope.get("attempt") or 1))
    except (TypeError, ValueError):
        return 1


def records_to_batch(records: list[dict[str, Any]]) -> pa.RecordBatch:
    """A RecordBatch of dicts whose keys may differ: missing fields become nulls.

    A field whose values mix types Arrow cannot unify (``1`` and ``"abc"``) becomes text
    (JSON for nested values), so one odd record does not stop the others.
    """
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record))
    rows = [{name: record.get(name) for name in names} for record in records]
    try:
        return pa.RecordBatch.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    arrays = []
    for name in names:
        values = [row[name] for row in rows]
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            arrays.append(pa.array([
                None if v is None else v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                for v in values
            ], type=pa.string()))
    return pa.RecordBatch.from_arrays(arrays, names=list(names))


class _ReadDlqFileDoFn(beam.DoFn):
    """Reads one DLQ file; emits batches grouped by attempt, dead-letters unreadable lines."""

    def __init__(self, step: str, only_step: str | None, error_type: str | None, bump_attempt: bool,
                 batch_rows: int, schema: dict[str, str] | None = None) -> None:
        self._step = step
        self._types = {name: type_from_name(kind, f"schema.{name}") for name, kind in (schema or {}).items()}
        self._only_step = only_step
        self._error_type = error_type
        self._bump = bump_attempt
        self._batch_rows = batch_rows
        self._ctx = get_run_context()

    def setup(self) -> None:
        self._metrics = StepMetrics(self._step)
        self._skipped = Metrics.counter(NAMESPACE_PREFIX + self._step, "envelopes_skipped")

    @timed_process
    def process(self, path: str) -> Iterator[Any]:
        pending: dict[int, list[tuple[int, dict[str, Any]]]] = {}
        for number, text, envelope, problem in read_envelopes(path):
            if envelope is None:
                self._metrics.records_in.inc()
                self._metrics.records_failed.inc()
                yield beam.pvalue.TaggedOutput(DLQ_TAG, dead_letter(
                    text, error_type="parse", error=problem, exception="ValueError",
                    step=self._step, source=f"{path}:{number}", ctx=self._ctx))
                continue
            if not envelope_matches(envelope, self._only_step, self._error_type):
                continue
            self._metrics.records_in.inc()
            if not replayable_record(envelope):
                self._metrics.records_filtered.inc()
                self._skipped.inc()
                continue
            attempt = envelope_attempt(envelope) + (1 if self._bump else 0)
            group = pending.setdefault(attempt, [])
            group.append((number, envelope["record"]))
            if len(group) >= self._batch_rows:
                yield from self._emit(path, attempt, pending.pop(attempt))
        for attempt, group in sorted(pending.items()):
            yield from self._emit(path, attempt, group)

    def _emit(self, path: str, attempt: int, group: list[tuple[int, dict[str, Any]]]) -> Iterator[Any]:
        batch = records_to_batch([record for _, record in group])
        if self._types:  # the replaced source's schema: values that still do not cast fail again
            outcome = cast_batch(batch, self._types)
            for index, column, value in outcome.bad_rows:
                self._metrics.records_failed.inc()
                yield beam.pvalue.TaggedOutput(DLQ_TAG, dead_letter(
                    group[index][1], error_type="type", error=cast_error_message(column, value, self._types[column]),
                    exception="ArrowInvalid", step=self._step, source=f"{path}:{group[index][0]}", attempt=attempt,
                    ctx=self._ctx))
            kept = [g for i, g in enumerate(group) if outcome.bad_mask is None or not outcome.bad_mask[i].as_py()]
            batch, group = outcome.batch, kept
            if not group:
                return
        batch = tag_attempt(tag_source(batch, f"dlq:{path}", group[0][0]), attempt)
        self._metrics.batches_in.inc()
        self._metrics.records_out.inc(batch.num_rows)
        nbytes = batch_nbytes(batch)
        self._metrics.bytes_in.inc(nbytes)
        progress.report_read(batch.num_rows, nbytes, where=f"dlq:{path}")
        yield batch


class ReadFromDlq(beam.PTransform):
    """Reads dead-letter records back as RecordBatches; returns ``(batches, dead_letters)``.

    ``p | ReadFromDlq(path="beam_etl_output/<run>/dlq", step="clean", error_type="validation")``
    """

    def __init__(
        self,
        path: str,
        step: str | None = None,
        error_type: str | None = None,
        bump_attempt: bool = True,
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        schema: dict[str, str] | None = None,
        step_name: str | None = None,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        validate_dlq_source_options(path, step, error_type, bump_attempt)
        if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
            raise ValueError(f"batch_rows: expected a whole number >= 1, got {batch_rows!r}")
        self._path = path
        self._only_step = step
        self._error_type = error_type
        self._bump = bump_attempt
        self._batch_rows = batch_rows
        self._schema = dict(schema or {})
        for name, kind in self._schema.items():
            type_from_name(kind, f"schema.{name}")
        self._step_name = step_name

    def display_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self._path, "bump_attempt": self._bump}
        if self._only_step:
            data["step"] = self._only_step
        if self._error_type:
            data["error_type"] = self._error_type
        return data

    def expand(self, pbegin: beam.pvalue.PBegin) -> tuple[beam.PCollection, beam.PCollection]:
        step = self._step_name or self.label
        files = (
            pbegin
            | "Path" >> beam.Create([self._path])
            | "ListFiles" >> beam.FlatMap(list_dlq_files)
            | "Spread" >> beam.Reshuffle()
        )
        results = files | "Read" >> beam.ParDo(
            _ReadDlqFileDoFn(step, self._only_step, self._error_type, self._bump, self._batch_rows, self._schema)
        ).with_outputs(DLQ_TAG, main="output")
        return results.output, results[DLQ_TAG]


def validate_dlq_source_options(path: Any, step: Any, error_type: Any, bump_attempt: Any) -> None:
    """Raises ValueError naming the field, the value and what is allowed."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"path: expected a DLQ file, folder or glob, got {path!r}")
    if "://" not in path and not _is_glob(path) and not os.path.exists(path):
        raise ValueError(f"path: {path!r} does not exist; give a DLQ JSONL file, a run's dlq/ folder or a glob")
    if "://" not in path and _is_glob(path) and not globlib.glob(path, recursive=True):
        raise ValueError(f"path: the glob {path!r} matches no files")
    if step is not None and (not isinstance(step, str) or not step):
        raise ValueError(f"step: expected a step name, got {step!r}")
    if error_type is not None and error_type not in ERROR_TYPES:
        raise ValueError(f"error_type: {error_type!r} is not one of {list(ERROR_TYPES)}")
    if not isinstance(bump_attempt, bool):
        raise ValueError(f"bump_attempt: expected true or false, got {bump_attempt!r}")


class ReadFromDlqConfig(registry.StrictConfig):
    """Reads the records of dead letters back as Arrow batches (for replays)."""

    path: str = Field(description="A DLQ JSONL file, a folder of them (a run's dlq/) or a glob.")
    step: str | None = Field(default=None, description="Only dead letters of this step.")
    error_type: str | None = Field(default=None, description=f"Only this error type: {', '.join(ERROR_TYPES)}.")
    bump_attempt: bool = Field(default=True, description="Dead letters of the replay carry attempt + 1.")
    schema_: dict[str, str] | None = Field(default=None, alias="schema",
                                           description="Column -> type to cast records to (replay uses the replaced "
                                                       "source's schema); values that do not cast go to the DLQ.")

    @model_validator(mode="after")
    def _validate(self) -> ReadFromDlqConfig:
        validate_dlq_source_options(self.path, self.step, self.error_type, self.bump_attempt)
        return self


@registry.register("source", "ReadFromDlq", ReadFromDlqConfig, streaming=True)
def read_from_dlq(config: ReadFromDlqConfig, ctx: registry.BuildContext) -> beam.PTransform:
    """Reads the records of dead letters back as Arrow batches (for replays)."""
    return ReadFromDlq(**config.model_dump(by_alias=True), step_name=ctx.step_name)
