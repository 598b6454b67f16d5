"""CSV reading for ``ReadFromCsv``: pyarrow parses every column as a string, then columns are
cast vectorised to the schema; malformed rows, undecodable lines and values that do not cast
leave as dead letters with ``path:line`` sources.
"""

from __future__ import annotations

import array
import bisect
import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv

from beam_etl.batch import row_as_record
from beam_etl.io._file_common import (
    SAMPLE_BYTES,
    BlockStream,
    LineOffset,
    Rebatcher,
    WorkItem,
    ascii_compatible,
    cast_batch,
    cast_error_message,
    infer_string_type,
    resolve_compression,
    utf8_blocks,
)
from beam_etl.ops.context import RunContext
from beam_etl.ops.dlq import dead_letter
from beam_etl.transforms.base import tag_source

PYARROW_BLOCK = 4 * 1024 * 1024
THREADED_MAX_BYTES = 256 * 1024 * 1024  # ranges up to this size are parsed whole on all cores


@dataclasses.dataclass(frozen=True)
class CsvFormat:
    """How a CSV file is written: the parsing options shared by every file of a read."""

    header: bool = True
    column_names: tuple[str, ...] | None = None
    delimiter: str = ","
    quote_char: str | None = '"'
    escape_char: str | None = None
    encoding: str = "utf-8"
    newlines_in_values: bool = False
    compression: str = "auto"
    null_values: tuple[str, ...] = ()

    def parse_options(self, handler: Callable[[Any], str] | None = None) -> pa_csv.ParseOptions:
        return pa_csv.ParseOptions(
            delimiter=self.delimiter,
            quote_char=self.quote_char if self.quote_char else False,
            escape_char=self.escape_char if self.escape_char else False,
            double_quote=True,
            newlines_in_values=self.newlines_in_values,
            ignore_empty_lines=True,
            invalid_row_handler=handler,
        )

    def convert_options(self, names: Iterable[str], include: list[str] | None = None) -> pa_csv.ConvertOptions:
        return pa_csv.ConvertOptions(
            column_types={n: pa.string() for n in names},
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
            null_values=list(self.null_values),
            include_columns=include or [],
        )

    @property
    def splittable(self) -> bool:
        return not self.newlines_in_values and ascii_compatible(self.encoding)


def _skip(_row: Any) -> str:
    return "skip"


def _first_block(item: WorkItem, fmt: CsvFormat, size: int) -> bytes:
    for block in utf8_blocks(item, fmt.encoding, None, size):
        return block[: max(size, 1)] if not ascii_compatible(fmt.encoding) else block
    return b""


def read_header(path: str, fmt: CsvFormat) -> list[str] | None:
    """The column names of a file's header row (None for an empty file)."""
    item = WorkItem(path, 0, None, resolve_compression(path, fmt.compression))
    block = _first_block(item, fmt, 64 * 1024)
    if not block.strip():
        return None
    opts = pa_csv.ReadOptions(use_threads=False, block_size=max(len(block) + 1, 1 << 16))
    try:
        reader = pa_csv.open_csv(pa.py_buffer(block), read_options=opts, parse_options=fmt.parse_options(_skip))
        return list(reader.schema.names)
    except pa.ArrowInvalid:
        first_line = block.split(b"\n", 1)[0] + b"\n"
        reader = pa_csv.open_csv(pa.py_buffer(first_line), read_options=opts,
                                 parse_options=fmt.parse_options(_skip))
        return list(reader.schema.names)


def read_sample(path: str, fmt: CsvFormat, names: list[str], sample_bytes: int = SAMPLE_BYTES) -> pa.Table:
    """The first ``sample_bytes`` of a file parsed with every column as a string."""
    item = WorkItem(path, 0, None, resolve_compression(path, fmt.compression))
    block = _first_block(item, fmt, sample_bytes)
    if not ascii_compatible(fmt.encoding) and len(block) >= sample_bytes:
        cut = block.rfind(b"\n")
        block = block[: cut + 1] if cut > 0 else block
    for _ in range(8):
        if not block.strip():
            return pa.table({n: pa.array([], pa.string()) for n in names})
        try:
            return pa_csv.read_csv(
                pa.py_buffer(block),
                read_options=pa_csv.ReadOptions(use_threads=False, column_names=names,
                                                skip_rows=1 if fmt.header else 0,
                                                block_size=max(len(block) + 1, 1 << 16)),
                parse_options=fmt.parse_options(_skip),
                convert_options=fmt.convert_options(names),
            )
        except pa.ArrowInvalid:
            # a sample cut inside a quoted value: retry on a shorter prefix
            cut = block.rfind(b"\n", 0, max(len(block) // 2, 1))
            block = block[: cut + 1] if cut > 0 else b""
    return pa.table({n: pa.array([], pa.string()) for n in names})


def infer_types(sample: pa.Table, columns: list[str]) -> dict[str, pa.DataType]:
    return {c: infer_string_type(sample.column(c)) for c in columns}


class LineLocator:
    """Maps pyarrow's logical row numbers (blank lines excluded) to physical lines, lazily.

    Only built when a dead letter needs a line number: it re-reads the item's UTF-8 stream
    once, walking its lines (quote-aware when values may hold newlines) and remembering
    where each logical row starts, so queries may come in any order.
    """

    def __init__(self, make_blocks: Callable[[], Iterable[bytes]], fmt: CsvFormat) -> None:
        self._multiline = fmt.newlines_in_values and bool(fmt.quote_char)
        self._quote = (fmt.quote_char or '"').encode()
        self._escape = re.compile(re.escape(fmt.escape_char.encode()) + b".", re.S) if fmt.escape_char else None
        self._lines = self._iter_lines(make_blocks)
        self._starts = array.array("q")
        self._phys = -1

    @staticmethod
    def _iter_lines(make_blocks: Callable[[], Iterable[bytes]]) -> Iterator[bytes]:
        for block in make_blocks():
            parts = block.split(b"\n")
            if block.endswith(b"\n"):
                parts.pop()
            yield from parts

    def _quotes(self, line: bytes) -> int:
        if self._escape is not None:
            line = self._escape.sub(b"", line)
        return line.count(self._quote)

    def physical(self, logical: int) -> int:
        """0-based physical line index (in the stream) where 1-based logical row ``logical`` starts."""
        starts = self._starts
        while len(starts) < logical:
            line = next(self._lines, None)
            if line is None:
                return starts[-1] if starts else 0
            self._phys += 1
            if line in (b"", b"\r"):
                continue
            starts.append(self._phys)
            if self._multiline and self._quotes(line) % 2:
                for more in self._lines:
                    self._phys += 1
                    if self._quotes(more) % 2:
                        break
        return starts[logical - 1]


class CsvReader:
    """Reads the rows of one work item (a byte range or a whole file)."""

    def __init__(self, fmt: CsvFormat, names: list[str] | None, columns: list[str],
                 types: dict[str, pa.DataType], batch_rows: int, step: str, ctx: RunContext) -> None:
        self.fmt = fmt
        self.names = names  # fixed names (no header, or column_names given)
        self.columns = columns
        self.types = types
        self.batch_rows = batch_rows
        self.step = step
        self.ctx = ctx

    # The read DoFn calls this; it yields (batch, nbytes) tuples and dead-letter dicts.
    def read(self, item: WorkItem) -> Iterator[Any]:
        fmt = self.fmt
        path = item.path
        line_offset = LineOffset(item)
        letters: list[dict[str, Any]] = []
        invalid_numbers: list[int] = []

        def source(stream_index: int) -> str:
            return f"{path}:{line_offset.get() + stream_index + 1}"

        def on_bad_line(index: int, text: str, error: str) -> None:
            letters.append(dead_letter(text, error_type="parse", error=error, exception="UnicodeDecodeError",
                                       step=self.step, source=source(index), ctx=self.ctx))

        try:
            file_names = self._file_names(path)
        except UnicodeDecodeError as exc:
            yield dead_letter({"path": path}, error_type="parse", error=f"cannot decode {path} as "
                              f"{fmt.encoding}: {exc}", exception=exc, step=self.step, source=path, ctx=self.ctx)
            return
        if file_names is None:
            return
        header_in_stream = fmt.header and item.start == 0
        locator: list[LineLocator] = []

        def locate(logical: int) -> str:
            if not locator:
                locator.append(LineLocator(lambda: utf8_blocks(item, fmt.encoding, None, PYARROW_BLOCK * 2), fmt))
            return source(locator[0].physical(logical))

        def handler(row: Any) -> str:
            invalid_numbers.append(row.number)
            letters.append(dead_letter(
                row.text, error_type="parse",
                error=f"expected {row.expected_columns} columns, got {row.actual_columns}",
                exception="InvalidRow", step=self.step, source=locate(row.number) if row.number else path,
                ctx=self.ctx))
            return "skip"

        def logical_of(valid_index: int) -> int:
            base = (1 if header_in_stream else 0) + valid_index + 1
            count = 0
            while True:
                candidate = base + count
                new_count = bisect.bisect_right(invalid_numbers, candidate)
                if new_count == count:
                    return candidate
                count = new_count

        missing = [c for c in self.columns if c not in file_names]
        include = None if missing else self.columns
        if not missing:
            whole = self._read_threaded(item, file_names, include, header_in_stream)
            if whole is not None:  # a clean range, parsed on all cores; otherwise re-read row by row below
                table, nbytes = whole
                valid_seen = 0
                for batch in table.to_batches(max_chunksize=self.batch_rows):
                    share = nbytes * batch.num_rows // max(table.num_rows, 1)
                    yield from self._finish(batch, item, valid_seen, missing, file_names, logical_of, locate, share)
                    valid_seen += batch.num_rows
                return
        stream = BlockStream(utf8_blocks(item, fmt.encoding, on_bad_line, PYARROW_BLOCK * 2))
        try:
            reader = pa_csv.open_csv(
                stream,
                read_options=pa_csv.ReadOptions(use_threads=False, block_size=PYARROW_BLOCK,
                                                column_names=file_names, skip_rows=1 if header_in_stream else 0),
                parse_options=fmt.parse_options(handler),
                convert_options=fmt.convert_options(file_names, include),
            )
        except pa.ArrowInvalid as exc:
            yield from letters
            if "Empty CSV" not in str(exc):
                yield self._range_failure(item, exc)
            return
        except UnicodeDecodeError as exc:
            yield self._range_failure(item, exc)
            return

        rebatcher = Rebatcher(self.batch_rows)
        valid_seen = 0
        consumed = 0
        while True:
            try:
                chunk = reader.read_next_batch()
            except StopIteration:
                break
            except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
                yield from letters
                letters.clear()
                yield self._range_failure(item, exc)
                break
            yield from letters
            letters.clear()
            for batch in rebatcher.add(chunk):
                nbytes, consumed = stream.consumed - consumed, stream.consumed
                yield from self._finish(batch, item, valid_seen, missing, file_names, logical_of, locate, nbytes)
                valid_seen += batch.num_rows
        yield from letters
        letters.clear()
        for batch in rebatcher.flush():
            nbytes, consumed = stream.consumed - consumed, stream.consumed
            yield from self._finish(batch, item, valid_seen, missing, file_names, logical_of, locate, nbytes)
            valid_seen += batch.num_rows

    def _read_threaded(self, item: WorkItem, file_names: list[str], include: list[str] | None,
                       header_in_stream: bool) -> tuple[pa.Table, int] | None:
        """Parses a whole range with pyarrow's multi-threaded reader.

        Returns None when the range has a malformed or undecodable line: the threaded reader
        cannot say which line it was, so the caller re-reads the range serially to name it.
        """
        if item.end is None or item.end - item.start > THREADED_MAX_BYTES:
            return None  # compressed or unsized input: stream it
        problems: list[bool] = []

        def flag_line(*_: Any) -> None:
            problems.append(True)

        def flag_row(_: Any) -> str:
            problems.append(True)
            return "skip"

        stream = BlockStream(utf8_blocks(item, self.fmt.encoding, flag_line, PYARROW_BLOCK * 2))
        try:
            table = pa_csv.read_csv(
                stream,
                read_options=pa_csv.ReadOptions(use_threads=True, block_size=PYARROW_BLOCK,
                                                column_names=file_names, skip_rows=1 if header_in_stream else 0),
                parse_options=self.fmt.parse_options(flag_row),
                convert_options=self.fmt.convert_options(file_names, include),
            )
        except (pa.ArrowInvalid, UnicodeDecodeError):
            return None
        if problems:
            return None
        return table, stream.consumed

    def _file_names(self, path: str) -> list[str] | None:
        if self.names is not None:
            return list(self.names)
        return read_header(path, self.fmt)

    def _finish(self, batch: pa.RecordBatch, item: WorkItem, first_valid: int, missing: list[str],
                file_names: list[str], logical_of: Callable[[int], int], locate: Callable[[int], str],
                nbytes: int) -> Iterator[Any]:
        if missing:
            error = (f"column(s) {missing} of the schema are missing from the header of {item.path} "
                     f"(header: {file_names}); every row of this file goes to the dead-letter queue")
            for i in range(batch.num_rows):
                yield dead_letter(row_as_record(batch, i), error_type="validation", error=error,
                                  exception="SchemaMismatch", step=self.step,
                                  source=locate(logical_of(first_valid + i)), ctx=self.ctx)
            yield (None, nbytes)
            return
        outcome = cast_batch(batch, self.types)
        for index, column, value in outcome.bad_rows:
            yield dead_letter(row_as_record(batch, index), error_type="type",
                              error=cast_error_message(column, value, self.types[column]),
                              exception="ArrowInvalid", step=self.step,
                              source=locate(logical_of(first_valid + index)), ctx=self.ctx)
        out = outcome.batch
        yield (tag_source(out, item.label, first_valid) if out.num_rows else None, nbytes)

    def _range_failure(self, item: WorkItem, exc: BaseException) -> dict[str, Any]:
        return dead_letter({"path": item.path, "start": item.start, "end": item.end}, error_type="parse",
                           error=f"CSV parse error; the rest of this file range was not read: {exc}",
                           exception=exc, step=self.step, source=item.label, ctx=self.ctx)
