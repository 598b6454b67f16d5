"""The data unit: ``pyarrow.RecordBatch`` elements, their Beam coder and helpers.

Every PCollection between beam_etl steps carries RecordBatches of a few thousand to
~64k rows. Helpers here convert between batches and plain records, slice batches and
turn Arrow values into JSON-safe Python values for the dead-letter queue.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa

DEFAULT_BATCH_ROWS = 65_536


class ArrowBatchCoder(beam.coders.Coder):
    """Encodes a ``pyarrow.RecordBatch`` (or ``Table``) as one Arrow IPC stream."""

    def encode(self, value: pa.RecordBatch | pa.Table) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, value.schema) as writer:
            if isinstance(value, pa.Table):
                writer.write_table(value)
            else:
                writer.write_batch(value)
        return sink.getvalue().to_pybytes()

    def decode(self, encoded: bytes) -> pa.RecordBatch:
        reader = pa.ipc.open_stream(pa.py_buffer(encoded))
        batches = list(reader)
        if len(batches) == 1:
            return batches[0]
        table = pa.Table.from_batches(batches, schema=reader.schema)
        return concat_to_batch(table)

    def is_deterministic(self) -> bool:
        return False

    def estimate_size(self, value: pa.RecordBatch | pa.Table) -> int:
        """In-memory size; Beam samples element sizes, and the default would IPC-encode the batch."""
        return int(value.nbytes) if isinstance(value, pa.Table) else batch_nbytes(value)

    def to_type_hint(self) -> type:
        return pa.RecordBatch


class ArrowTableCoder(ArrowBatchCoder):
    """Encodes a ``pyarrow.Table``; used for combiner accumulators."""

    def decode(self, encoded: bytes) -> pa.Table:
        return pa.ipc.open_stream(pa.py_buffer(encoded)).read_all()

    def to_type_hint(self) -> type:
        return pa.Table


beam.coders.registry.register_coder(pa.RecordBatch, ArrowBatchCoder)
beam.coders.registry.register_coder(pa.Table, ArrowTableCoder)


def with_metadata(new: pa.RecordBatch, like: pa.RecordBatch) -> pa.RecordBatch:
    """Copies ``like``'s schema metadata (source tags) onto ``new``."""
    if like.schema.metadata and new.schema.metadata != like.schema.metadata:
        meta = dict(new.schema.metadata or {})
        meta.update(like.schema.metadata)
        return new.replace_schema_metadata(meta)
    return new


def concat_to_batch(table: pa.Table) -> pa.RecordBatch:
    """Returns the table's rows as one RecordBatch (copies only when chunked)."""
    table = table.combine_chunks()
    batches = table.to_batches()
    if not batches:
        return pa.RecordBatch.from_pylist([], schema=table.schema)
    return batches[0]


def concat_batches(batches: Iterable[pa.RecordBatch]) -> pa.Table:
    """Concatenates batches whose schemas may differ in field order or nullability."""
    batch_list = [b for b in batches if b is not None]
    if not batch_list:
        return pa.table({})
    tables = [pa.Table.from_batches([b]) for b in batch_list]
    return pa.concat_tables(tables, promote_options="permissive")


def canonical_rows(table: pa.Table) -> pa.Table:
    """``table`` sorted by its flat columns in schema order: the same rows give the same order on every
    runner, whatever order the bundles arrived in (unsortable column types leave the table as it is)."""
    keys = [(f.name, "ascending") for f in table.schema if not pa.types.is_nested(f.type)]
    if not keys:
        return table
    try:
        return table.sort_by(keys)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        return table


def split_batch(batch: pa.RecordBatch, max_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Yields zero-copy slices of at most ``max_rows`` rows."""
    for start in range(0, batch.num_rows, max_rows):
        yield batch.slice(start, max_rows)


def table_to_batches(table: pa.Table, max_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Yields a table's rows as batches of at most ``max_rows`` rows."""
    for batch in table.to_batches(max_chunksize=max_rows):
        if batch.num_rows:
            yield batch


def records_to_batch(records: list[dict[str, Any]], schema: pa.Schema | None = None) -> pa.RecordBatch:
    """Builds a RecordBatch from dicts; missing keys become nulls."""
    return pa.RecordBatch.from_pylist(records, schema=schema)


def batch_to_records(batch: pa.RecordBatch | pa.Table) -> list[dict[str, Any]]:
    """Returns the rows of a batch as dicts."""
    return batch.to_pylist()


def json_safe(value: Any) -> Any:
    """Converts a Python value from Arrow into something ``json.dumps`` accepts."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(raw).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_safe(v) for v in value]
    return str(value)


def row_as_record(batch: pa.RecordBatch, index: int) -> dict[str, Any]:
    """Returns row ``index`` of ``batch`` as a JSON-safe dict."""
    return {k: json_safe(v) for k, v in batch.slice(index, 1).to_pylist()[0].items()}


def batch_nbytes(batch: pa.RecordBatch) -> int:
    """Approximate in-memory size of a batch in bytes."""
    try:
        return int(batch.nbytes)
    except Exception:  # noqa: BLE001 - sliced dictionaries can refuse nbytes
        return int(batch.get_total_buffer_size())
