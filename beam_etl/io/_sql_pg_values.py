"""Arrow columns -> PostgreSQL input: ``COPY ... FROM STDIN (FORMAT csv)`` text and bound parameters.

Both take the declared type of the target column, because an Arrow list becomes a
PostgreSQL array literal for an array column and JSON text for a ``json``/``jsonb`` (or text)
column. Scalars are converted column-wise with Arrow casts; only binary, durations and
nested values are formatted per value.
"""

from __future__ import annotations

import collections
import concurrent.futures
import io
import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from beam_etl.batch import json_safe

_CSV_OPTIONS = pacsv.WriteOptions(include_header=False, quoting_style="all_valid", batch_size=8192)
_DURATION_UNITS = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "microseconds"}


def is_array_type(declared: str) -> bool:
    return declared.rstrip().endswith("]")


def _plain(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Combines chunks, decodes dictionaries and unwraps extension types (uuid -> 16 bytes)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if isinstance(arr.type, pa.ExtensionType):
        is_uuid = getattr(arr.type, "extension_name", "") == "arrow.uuid"
        arr = arr.storage
        if is_uuid:
            return pa.array([None if v is None else _uuid_text(v) for v in arr.to_pylist()], pa.string())
    return arr


def _uuid_text(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _json_texts(arr: pa.Array) -> list[str | None]:
    return [None if v is None else json.dumps(json_safe(v), ensure_ascii=False) for v in arr.to_pylist()]


def _array_element(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, (list, tuple)):
        return _array_literal(value)
    if isinstance(value, bytes):
        value = "\\x" + value.hex()
    elif hasattr(value, "isoformat"):
        value = value.isoformat(sep=" ") if hasattr(value, "date") and hasattr(value, "hour") else value.isoformat()
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _array_literal(values: Sequence[Any]) -> str:
    """A PostgreSQL array literal ``{"a","b",NULL}`` (elements quoted and escaped)."""
    return "{" + ",".join(_array_element(v) for v in values) + "}"


def _utc_wall_time(arr: pa.Array) -> pa.Array:
    """A zoned timestamp as its UTC wall time, without a zone.

    Sessions run with ``TimeZone=UTC``, so ``timestamptz`` reads this as UTC. (Arrow formats
    zoned timestamps through the time-zone database, about 15 times slower.)
    """
    return arr.cast(pa.timestamp(arr.type.unit))


def _durations(arr: pa.Array) -> pa.Array:
    unit = arr.type.unit
    counts = arr.cast(pa.int64())
    if unit == "ns":  # PostgreSQL keeps microseconds
        counts = pc.divide(counts, 1000)
    return pc.binary_join_element_wise(counts.cast(pa.string()), pa.scalar(" " + _DURATION_UNITS[unit]), "")


def copy_column(arr: pa.Array | pa.ChunkedArray, declared: str) -> pa.Array:
    """One column as an array ``pyarrow.csv`` writes in the form ``COPY ... (FORMAT csv)`` reads."""
    arr = _plain(arr)
    t = arr.type
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.string())
    if pa.types.is_float16(t):
        return arr.cast(pa.float32())
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return arr.cast(pa.string())
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) \
            or pa.types.is_binary_view(t):
        return pa.array([None if v is None else "\\x" + v.hex() for v in arr.cast(pa.binary()).to_pylist()],
                        pa.string())
    if pa.types.is_duration(t):
        return _durations(arr)
    if pa.types.is_timestamp(t) and t.tz is not None:
        return _utc_wall_time(arr)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) \
            or pa.types.is_list_view(t):
        if is_array_type(declared):
            return pa.array([None if v is None else _array_literal(v) for v in arr.to_pylist()], pa.string())
        return pa.array(_json_texts(arr), pa.string())
    if pa.types.is_nested(t):
        return pa.array(_json_texts(arr), pa.string())
    return arr


def copy_csv(batch: pa.RecordBatch, targets: Sequence[str]) -> bytes:
    """The batch as CSV for ``COPY ... FROM STDIN WITH (FORMAT csv)``.

    Every non-null value is quoted, so an empty string stays an empty string while an
    unquoted empty field is NULL, and a value ``\\.`` is never read as end-of-data.
    """
    arrays = [copy_column(col, declared) for col, declared in zip(batch.columns, targets, strict=True)]
    table = pa.Table.from_arrays(arrays, names=[f"c{i}" for i in range(len(arrays))])
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table, sink, _CSV_OPTIONS)
    return sink.getvalue().to_pybytes()


class CsvStream(io.RawIOBase):
    """A readable file of a batch's COPY CSV, encoded slice by slice on a helper thread.

    ``copy_expert`` reads it: while libpq sends one slice (the GIL released), the next is
    encoded (``pyarrow.csv`` releases the GIL too), so encoding overlaps the server's work.
    """

    def __init__(self, batch: pa.RecordBatch, targets: Sequence[str], slice_rows: int = 8192) -> None:
        super().__init__()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="beam_etl_copy")
        self._pending = collections.deque(
            self._pool.submit(copy_csv, batch.slice(start, slice_rows), targets)
            for start in range(0, batch.num_rows, slice_rows))
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while self._pending and (size < 0 or len(self._buffer) < size):
            self._buffer += self._pending.popleft().result()
        if size < 0 or size >= len(self._buffer):
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        super().close()


def param_column(arr: pa.Array | pa.ChunkedArray, declared: str) -> list[Any]:
    """Python values for one column, bound by psycopg2 (multi-row INSERTs while bisecting)."""
    arr = _plain(arr)
    t = arr.type
    if pa.types.is_null(t):
        return [None] * len(arr)
    if pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_duration(t):
        if pa.types.is_float16(t):
            arr = arr.cast(pa.float32())
        return arr.to_pylist()  # bool -> boolean; timedelta -> interval
    if pa.types.is_timestamp(t):
        return (_utc_wall_time(arr) if t.tz is not None else arr).cast(pa.string()).to_pylist()
    if pa.types.is_date(t) or pa.types.is_time(t) or pa.types.is_decimal(t):
        return arr.cast(pa.string()).to_pylist()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) \
            or pa.types.is_binary_view(t):
        return arr.cast(pa.binary()).to_pylist()
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) \
            or pa.types.is_list_view(t):
        if is_array_type(declared):
            return [None if v is None else _array_literal(v) for v in arr.to_pylist()]
        return _json_texts(arr)
    if pa.types.is_nested(t):
        return _json_texts(arr)
    if not pa.types.is_string(t):
        arr = arr.cast(pa.string())
    return arr.to_pylist()


def batch_params(batch: pa.RecordBatch, targets: Sequence[str]) -> list[tuple[Any, ...]]:
    columns = [param_column(col, declared) for col, declared in zip(batch.columns, targets, strict=True)]
    return list(zip(*columns, strict=True)) if columns else [()] * batch.num_rows


def nul_rows(batch: pa.RecordBatch) -> dict[int, str]:
    """Rows with a NUL character in a text column: PostgreSQL text cannot hold one."""
    bad: dict[int, str] = {}
    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        arr = _plain(col)
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            continue
        hits = pc.fill_null(pc.match_substring(arr, "\x00"), False)
        if pc.any(hits).as_py():
            for i in pc.indices_nonzero(hits).to_pylist():
                bad.setdefault(i, f"column {name!r}: PostgreSQL text cannot contain a NUL (\\x00) character")
    return bad
