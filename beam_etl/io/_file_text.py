"""Text and Parquet reading for ``ReadFromText`` and ``ReadFromParquet``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import FileMetadata

from beam_etl.batch import row_as_record
from beam_etl.io._file_common import (
    BLOCK_BYTES,
    LineOffset,
    Rebatcher,
    WorkItem,
    cast_batch,
    cast_error_message,
    open_read,
    utf8_blocks,
)
from beam_etl.ops.context import RunContext
from beam_etl.ops.dlq import dead_letter
from beam_etl.transforms.base import tag_source

CHUNK_MODES = ("lines", "size", "paragraph")
_BLANK = r"^\s*$"


def check_regex(pattern: str) -> list[str]:
    """Validates a regex for ``pyarrow.compute.extract_regex``; returns its named groups."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"regex: {pattern!r} is not a valid regular expression: {exc}") from exc
    names = list(compiled.groupindex)
    if not names:
        raise ValueError(f"regex: {pattern!r} has no named group; use (?P<name>...) for each field to extract")
    if compiled.groups != len(names):
        raise ValueError(f"regex: {pattern!r} mixes named and unnamed groups; use (?:...) for groups you do "
                         "not want as columns")
    try:
        pc.extract_regex(pa.array(["x"], pa.string()), pattern)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"regex: {pattern!r} is not supported by RE2 (pyarrow): {exc}") from exc
    return names


def lines_of(block: bytes) -> pa.Array:
    """The lines of a UTF-8 block as a string array (no newline characters, trailing CR removed)."""
    if len(block) >= 2**31 - 1:
        text = pa.array([block.decode("utf-8")], pa.large_string())
    else:
        offsets = pa.array([0, len(block)], pa.int32()).buffers()[1]
        text = pa.StringArray.from_buffers(1, offsets, pa.py_buffer(block))
    lines = pc.split_pattern(text, "\n").flatten()
    if block.endswith(b"\n"):
        lines = lines.slice(0, len(lines) - 1)
    if b"\r" in block:
        lines = pc.utf8_rtrim(lines, characters="\r")
    return lines.cast(pa.string()) if lines.type != pa.string() else lines


class TextReader:
    """Reads lines (``line`` column), regex fields, or chunks (``text`` column) of one work item."""

    def __init__(self, encoding: str, skip_blank_lines: bool, regex: str | None, chunk_by: str | None,
                 chunk_size: int, types: dict[str, pa.DataType], batch_rows: int, step: str,
                 ctx: RunContext) -> None:
        self.encoding = encoding
        self.skip_blank_lines = skip_blank_lines
        self.regex = regex
        self.chunk_by = chunk_by
        self.chunk_size = chunk_size
        self.types = types
        self.batch_rows = batch_rows
        self.step = step
        self.ctx = ctx

    def read(self, item: WorkItem) -> Iterator[Any]:
        if self.chunk_by:
            yield from self._read_chunks(item)
            return
        path = item.path
        line_offset = LineOffset(item)
        letters: list[dict[str, Any]] = []

        def source(index: int) -> str:
            return f"{path}:{line_offset.get() + index + 1}"

        bad_indices: list[int] = []

        def on_bad_line(index: int, text: str, error: str) -> None:
            bad_indices.append(index)
            letters.append(dead_letter(text, error_type="parse", error=error, exception="UnicodeDecodeError",
                                       step=self.step, source=source(index), ctx=self.ctx))

        rebatcher = Rebatcher(self.batch_rows)
        base = 0
        rows_out = 0
        for block in utf8_blocks(item, self.encoding, on_bad_line, BLOCK_BYTES):
            lines = lines_of(block)
            yield from letters
            letters.clear()
            keep = None
            if self.skip_blank_lines:
                keep = pc.invert(pc.match_substring_regex(lines, _BLANK))
            elif bad_indices:
                # lines the decoder blanked are dead letters already: never count them twice
                marks = [True] * len(lines)
                for index in bad_indices:
                    if 0 <= index - base < len(lines):
                        marks[index - base] = False
                keep = pa.array(marks, pa.bool_())
            bad_indices.clear()
            if self.regex:
                fields = pc.extract_regex(lines, self.regex)
                matched = fields.is_valid()
                miss = pc.invert(matched) if keep is None else pc.and_(keep, pc.invert(matched))
                for i in pc.indices_nonzero(miss).to_pylist():
                    yield dead_letter(lines[i].as_py(), error_type="parse",
                                      error=f"line does not match regex {self.regex!r}", exception="NoMatch",
                                      step=self.step, source=source(base + i), ctx=self.ctx)
                good = matched if keep is None else pc.and_(keep, matched)
                positions = pc.indices_nonzero(good)
                struct = fields.filter(good)
                batch = pa.RecordBatch.from_arrays(struct.flatten(), names=[f.name for f in struct.type])
                if self.types:
                    outcome = cast_batch(batch, self.types)
                    for index, column, value in outcome.bad_rows:
                        line_no = positions[index].as_py()
                        yield dead_letter(row_as_record(batch, index), error_type="type",
                                          error=cast_error_message(column, value, self.types[column]),
                                          exception="ArrowInvalid", step=self.step, source=source(base + line_no),
                                          ctx=self.ctx)
                    batch = outcome.batch
            else:
                kept = lines if keep is None else lines.filter(keep)
                batch = pa.RecordBatch.from_arrays([kept], names=["line"])
            base += len(lines)
            first_out = True
            for out in rebatcher.add(batch):
                yield (tag_source(out, item.label, rows_out), len(block) if first_out else 0)
                rows_out += out.num_rows
                first_out = False
            if first_out:
                yield (None, len(block))
        yield from letters
        for out in rebatcher.flush():
            yield (tag_source(out, item.label, rows_out), 0)
            rows_out += out.num_rows

    # -- chunking: whole files, streamed
    def _read_chunks(self, item: WorkItem) -> Iterator[Any]:
        path = item.path
        letters: list[dict[str, Any]] = []

        def on_bad_line(index: int, text: str, error: str) -> None:
            letters.append(dead_letter(text, error_type="parse", error=error, exception="UnicodeDecodeError",
                                       step=self.step, source=f"{path}:{index + 1}", ctx=self.ctx))

        blocks = utf8_blocks(item, self.encoding, on_bad_line, BLOCK_BYTES)
        chunks = self._chunks(blocks)
        rebatcher = Rebatcher(self.batch_rows)
        pending: list[str] = []
        rows_out = 0
        nbytes = 0
        for chunk in chunks:
            yield from letters
            letters.clear()
            pending.append(chunk)
            nbytes += len(chunk)
            if len(pending) >= 1024:
                batch = pa.RecordBatch.from_arrays([pa.array(pending, pa.string())], names=["text"])
                pending = []
                for out in rebatcher.add(batch):
                    yield (tag_source(out, item.label, rows_out), nbytes)
                    rows_out += out.num_rows
                    nbytes = 0
        yield from letters
        if pending:
            for out in rebatcher.add(pa.RecordBatch.from_arrays([pa.array(pending, pa.string())], names=["text"])):
                yield (tag_source(out, item.label, rows_out), nbytes)
                rows_out += out.num_rows
                nbytes = 0
        for out in rebatcher.flush():
            yield (tag_source(out, item.label, rows_out), nbytes)
            rows_out += out.num_rows
            nbytes = 0

    def _chunks(self, blocks: Iterator[bytes]) -> Iterator[str]:
        limit = self.chunk_size
        if self.chunk_by == "size":
            carry = b""
            for block in blocks:
                data = carry + block
                start = 0
                while len(data) - start >= limit:
                    end = start + limit
                    while end > start and (data[end] & 0xC0) == 0x80:  # never cut a UTF-8 character
                        end -= 1
                    if end == start:
                        end = start + limit
                    yield data[start:end].decode("utf-8", errors="replace")
                    start = end
                carry = data[start:]
            if carry:
                yield carry.decode("utf-8", errors="replace")
            return
        paragraphs = self.chunk_by == "paragraph"
        joiner = "\n\n" if paragraphs else "\n"
        units = self._paragraphs(blocks) if paragraphs else self._lines(blocks)
        current: list[str] = []
        size = 0
        for unit in units:
            unit_size = len(unit.encode("utf-8"))
            if current and size + len(joiner) + unit_size > limit:
                yield joiner.join(current)
                current, size = [], 0
            size += unit_size + (len(joiner) if current else 0)
            current.append(unit)
        if current:
            yield joiner.join(current)

    def _lines(self, blocks: Iterator[bytes]) -> Iterator[str]:
        for block in blocks:
            for line in block.decode("utf-8").split("\n")[: -1 if block.endswith(b"\n") else None]:
                line = line.rstrip("\r")
                if self.skip_blank_lines and not line.strip():
                    continue
                yield line

    def _paragraphs(self, blocks: Iterator[bytes]) -> Iterator[str]:
        current: list[str] = []
        for block in blocks:
            for line in block.decode("utf-8").split("\n")[: -1 if block.endswith(b"\n") else None]:
                line = line.rstrip("\r")
                if line.strip():
                    current.append(line)
                elif current:
                    yield "\n".join(current)
                    current = []
        if current:
            yield "\n".join(current)


class ParquetReader:
    """Reads the row groups of one work item from a Parquet file."""

    def __init__(self, columns: list[str] | None, batch_rows: int, step: str, ctx: RunContext) -> None:
        self.columns = columns
        self.batch_rows = batch_rows
        self.step = step
        self.ctx = ctx

    @staticmethod
    def plan(meta: FileMetadata, split_size: int) -> list[WorkItem]:
        with open_read(meta.path) as f:
            md = pq.ParquetFile(f).metadata
        items: list[WorkItem] = []
        group: list[int] = []
        size = 0
        for rg in range(md.num_row_groups):
            group.append(rg)
            size += md.row_group(rg).total_byte_size
            if size >= split_size:
                items.append(WorkItem(meta.path, 0, None, "none", tuple(group)))
                group, size = [], 0
        if group:
            items.append(WorkItem(meta.path, 0, None, "none", tuple(group)))
        return items

    def read(self, item: WorkItem) -> Iterator[Any]:
        with open_read(item.path) as f:
            pf = pq.ParquetFile(f)
            md = pf.metadata
            first_row = sum(md.row_group(rg).num_rows for rg in range(item.extra[0])) if item.extra else 0
            missing = [c for c in (self.columns or []) if c not in pf.schema_arrow.names]
            if missing:
                yield dead_letter({"path": item.path, "row_groups": list(item.extra)}, error_type="validation",
                                  error=f"column(s) {missing} are not in {item.path} "
                                        f"(columns: {pf.schema_arrow.names}); its rows were not read",
                                  exception="SchemaMismatch", step=self.step, source=item.path, ctx=self.ctx)
                return
            for batch in pf.iter_batches(batch_size=self.batch_rows, row_groups=list(item.extra),
                                         columns=self.columns, use_threads=False):
                if not batch.num_rows:
                    continue
                yield (tag_source(batch, item.path, first_row), batch.nbytes)
                first_row += batch.num_rows
