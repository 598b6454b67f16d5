"""JSON reading for ``ReadFromJsonl`` (one document per line) and ``ReadFromJson`` (an array).

Fast path: ``pyarrow.json.read_json`` on a block of lines. When it fails, every line is parsed
with ``json.loads`` so malformed lines leave as dead letters and the good ones go on; a field
whose type conflicts within the block is kept as JSON text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.json as pa_json

from beam_etl.batch import row_as_record
from beam_etl.io._file_common import (
    LineOffset,
    WorkItem,
    cast_batch,
    cast_error_message,
    open_read,
    utf8_blocks,
)
from beam_etl.ops.context import RunContext
from beam_etl.ops.dlq import dead_letter
from beam_etl.transforms.base import tag_source

JSONL_BLOCK = 4 * 1024 * 1024
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError,
                 ValueError)


def read_json_block(data: bytes) -> pa.Table:
    """Parses newline-delimited JSON with pyarrow (raises on any malformed line or type conflict)."""
    return pa_json.read_json(
        pa.py_buffer(data),
        read_options=pa_json.ReadOptions(use_threads=False, block_size=max(len(data) + 1, 1 << 20)),
    )


def objects_to_table(objects: list[dict[str, Any]]) -> pa.Table:
    """Builds a table from dicts; a top-level field whose values conflict becomes JSON text.

    The objects go through ``pyarrow.json`` again so type inference matches the fast path.
    """
    if not objects:
        return pa.table({})
    keys: dict[str, None] = {}
    for obj in objects:
        for key in obj:
            keys.setdefault(key, None)
    conflicts = set()
    for key in keys:
        try:
            pa.array([obj.get(key) for obj in objects])
        except _ARROW_ERRORS:
            conflicts.add(key)
    if conflicts:
        objects = [
            {k: (json.dumps(v, ensure_ascii=False) if k in conflicts and v is not None else v) for k, v in o.items()}
            for o in objects
        ]
    data = "\n".join(json.dumps(o, ensure_ascii=False, allow_nan=True) for o in objects).encode("utf-8") + b"\n"
    try:
        table = read_json_block(data)
    except _ARROW_ERRORS:
        columns = {}
        for key in keys:
            values = [o.get(key) for o in objects]
            try:
                columns[key] = pa.array(values)
            except _ARROW_ERRORS:
                columns[key] = pa.array([None if v is None else json.dumps(v, ensure_ascii=False) for v in values],
                                        pa.string())
        return pa.table(columns)
    # keep the first-appearance column order of the objects
    return table.select([k for k in keys if k in table.column_names])


def project(table: pa.Table, columns: list[str] | None, types: dict[str, pa.DataType]) -> pa.Table:
    """Keeps ``columns`` in order; a column absent from this block becomes nulls."""
    if not columns:
        return table
    arrays = []
    for name in columns:
        if name in table.column_names:
            arrays.append(table.column(name))
        else:
            arrays.append(pa.nulls(table.num_rows, types.get(name, pa.null())))
    return pa.table(arrays, names=list(columns))


class _JsonBase:
    def __init__(self, columns: list[str] | None, types: dict[str, pa.DataType], batch_rows: int,
                 encoding: str, step: str, ctx: RunContext) -> None:
        self.columns = columns
        self.types = types
        self.batch_rows = batch_rows
        self.encoding = encoding
        self.step = step
        self.ctx = ctx

    def _emit(self, table: pa.Table, item: WorkItem, first_row: int, sources: Any, nbytes: int) -> Iterator[Any]:
        """Projects, casts to the schema, tags and slices a table; ``sources(i)`` names row ``i``."""
        table = project(table, self.columns, self.types)
        offset = 0
        for batch in table.to_batches(max_chunksize=self.batch_rows):
            if not batch.num_rows:
                continue
            outcome = cast_batch(batch, self.types)
            for index, column, value in outcome.bad_rows:
                yield dead_letter(row_as_record(batch, index), error_type="type",
                                  error=cast_error_message(column, value, self.types[column]),
                                  exception="ArrowInvalid", step=self.step, source=sources(offset + index),
                                  ctx=self.ctx)
            out = outcome.batch
            yield (tag_source(out, item.label, first_row + offset) if out.num_rows else None, nbytes)
            nbytes = 0
            offset += batch.num_rows
        if nbytes:
            yield (None, nbytes)


class JsonlReader(_JsonBase):
    """Reads the lines of one work item (a byte range, or a whole compressed file)."""

    def read(self, item: WorkItem) -> Iterator[Any]:
        path = item.path
        line_offset = LineOffset(item)
        letters: list[dict[str, Any]] = []

        def source(index: int) -> str:
            return f"{path}:{line_offset.get() + index + 1}"

        def on_bad_line(index: int, text: str, error: str) -> None:
            letters.append(dead_letter(text, error_type="parse", error=error, exception="UnicodeDecodeError",
                                       step=self.step, source=source(index), ctx=self.ctx))

        first_line = 0  # stream-relative index of the block's first line
        rows_out = 0
        for block in utf8_blocks(item, self.encoding, on_bad_line, JSONL_BLOCK):
            yield from letters
            letters.clear()
            base = first_line
            first_line += block.count(b"\n")
            if not block.strip():
                continue
            try:
                table = read_json_block(block)
                line_of: list[int] | None = None
            except _ARROW_ERRORS:
                table, line_of, bad = self._slow_path(block, base, source)
                yield from bad

            def row_source(i: int, _block: bytes = block, _base: int = base, _lines: Any = line_of) -> str:
                if _lines is None:
                    _lines = [n for n, line in enumerate(_block.split(b"\n")) if line.strip()]
                return source(_base + _lines[i])

            yield from self._emit(table, item, rows_out, row_source, len(block))
            rows_out += table.num_rows
        yield from letters

    def _slow_path(self, block: bytes, base: int, source: Any
                   ) -> tuple[pa.Table, list[int], list[dict[str, Any]]]:
        letters: list[dict[str, Any]] = []
        objects: list[dict[str, Any]] = []
        line_of: list[int] = []
        for n, line in enumerate(block.split(b"\n")):
            text = line.strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except ValueError as exc:
                letters.append(dead_letter(
                    line.rstrip(b"\r").decode("utf-8", errors="backslashreplace"), error_type="parse",
                    error=f"invalid JSON: {exc}", exception=exc, step=self.step, source=source(base + n),
                    ctx=self.ctx))
                continue
            if not isinstance(obj, dict):
                letters.append(dead_letter(
                    line.rstrip(b"\r").decode("utf-8", errors="backslashreplace"), error_type="parse",
                    error=f"expected a JSON object per line, got {type(obj).__name__}", exception="TypeError",
                    step=self.step, source=source(base + n), ctx=self.ctx))
                continue
            objects.append(obj)
            line_of.append(n)
        return objects_to_table(objects), line_of, letters


class JsonReader(_JsonBase):
    """Reads a whole file holding one JSON array of objects, or a single object."""

    MAX_RECORD_CHARS = 1 << 20

    def read(self, item: WorkItem) -> Iterator[Any]:
        path = item.path
        with open_read(item.path, item.compression) as f:
            data = f.read()
        nbytes = len(data)
        try:
            text = data.decode(self.encoding)
        except UnicodeDecodeError as exc:
            yield dead_letter(data[: self.MAX_RECORD_CHARS].decode(self.encoding, errors="backslashreplace"),
                              error_type="parse", error=f"cannot decode {path} as {self.encoding}: {exc}",
                              exception=exc, step=self.step, source=path, ctx=self.ctx)
            return
        text = text.removeprefix("\ufeff")
        if not text.strip():
            return
        try:
            doc = json.loads(text)
        except ValueError as exc:
            lineno = getattr(exc, "lineno", None)
            shown = text if len(text) <= self.MAX_RECORD_CHARS else text[: self.MAX_RECORD_CHARS]
            note = "" if len(text) <= self.MAX_RECORD_CHARS else f" (record holds the first {len(shown)} chars)"
            yield dead_letter(shown, error_type="parse", error=f"invalid JSON: {exc}{note}", exception=exc,
                              step=self.step, source=f"{path}:{lineno}" if lineno else path, ctx=self.ctx)
            return
        elements = doc if isinstance(doc, list) else [doc]
        objects: list[dict[str, Any]] = []
        index_of: list[int] = []
        for i, element in enumerate(elements):
            if isinstance(element, dict):
                objects.append(element)
                index_of.append(i)
            else:
                yield dead_letter(element, error_type="parse",
                                  error=f"expected a JSON object, got {type(element).__name__}",
                                  exception="TypeError", step=self.step, source=f"{path}[{i}]", ctx=self.ctx)
        for start in range(0, len(objects), self.batch_rows):
            chunk = objects[start:start + self.batch_rows]
            table = objects_to_table(chunk)

            def element_source(i: int, _start: int = start) -> str:
                return f"{path}[{index_of[_start + i]}]"

            yield from self._emit(table, item, start, element_source, nbytes)
            nbytes = 0
        if nbytes:
            yield (None, nbytes)
