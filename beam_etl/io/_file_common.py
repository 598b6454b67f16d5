"""Shared plumbing of the file connectors: matching, compression, byte ranges, decoding, casting.

Everything goes through Beam's ``FileSystems`` so local paths and any Beam URI (``s3://``,
``gs://``) behave the same. Nothing here is a PTransform; ``files.py`` wires these helpers into
Beam graphs.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import dataclasses
import gzip
import io
import lzma
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystem import CompressionTypes, FileMetadata
from apache_beam.io.filesystems import FileSystems

from beam_etl.io import _file_s3

_file_s3.install()  # s3:// calls reuse one boto3 client per settings instead of building one per call

DEFAULT_SPLIT_SIZE = 64 * 1024 * 1024
SAMPLE_BYTES = 1024 * 1024
BLOCK_BYTES = 8 * 1024 * 1024
COMPRESSIONS = ("auto", "none", "gzip", "bz2", "xz")
_SUFFIXES = {".gz": "gzip", ".gzip": "gzip", ".bz2": "bz2", ".xz": "xz", ".lzma": "xz"}
COMPRESSION_SUFFIX = {"gzip": ".gz", "bz2": ".bz2", "xz": ".xz", "none": ""}
DEFAULT_NULL_VALUES = ("", "NA", "N/A", "null", "NULL", "None")

# ----------------------------------------------------------------------------- types

TYPE_NAMES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
_TYPE_ALIASES = {
    "str": "string", "text": "string", "integer": "int", "int64": "int", "long": "int",
    "double": "float", "float64": "float", "number": "float", "boolean": "bool",
    "datetime": "timestamp", "date32": "date",
}


def type_from_name(name: str, field: str = "schema") -> pa.DataType:
    """Maps a schema type name (string, int, float, bool, date, timestamp) to an Arrow type."""
    key = str(name).strip().lower()
    key = _TYPE_ALIASES.get(key, key)
    if key not in TYPE_NAMES:
        raise ValueError(f"{field}: type {name!r} is not one of {sorted(TYPE_NAMES)}")
    return TYPE_NAMES[key]


def type_label(arrow_type: pa.DataType) -> str:
    """The short name used in error messages (``int``, ``float``...)."""
    if pa.types.is_integer(arrow_type):
        return "int"
    if pa.types.is_floating(arrow_type):
        return "float"
    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_date(arrow_type):
        return "date"
    if pa.types.is_timestamp(arrow_type):
        return "timestamp"
    return str(arrow_type)


# ----------------------------------------------------------------------------- paths

def as_path_list(path: str | list[str] | tuple[str, ...], field: str = "path") -> list[str]:
    """Normalises ``path`` (a string or a list of strings) to a non-empty list."""
    paths = [path] if isinstance(path, str) else list(path or [])
    if not paths or any(not isinstance(p, str) or not p.strip() for p in paths):
        raise ValueError(f"{field}: expected a path, a glob or a list of them (got {path!r})")
    return [p.strip() for p in paths]


_GLOB_CHARS = re.compile(r"[*?\[]")


def is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) in (None, "file")


def _hidden(path: str, root: str) -> bool:
    rel = path[len(root):].lstrip("/\\")
    return any(part.startswith((".", "_")) for part in re.split(r"[/\\]", rel) if part)


def _folder_files(root: str) -> list[FileMetadata]:
    """Every visible file below ``root`` (hidden ``.``/``_`` names and folder markers left out)."""
    found = FileSystems.match([root + "/**"])[0].metadata_list
    return sorted((m for m in found if not _hidden(m.path, root) and not m.path.endswith("/")),
                  key=lambda m: m.path)


def expand_pattern(pattern: str) -> list[FileMetadata]:
    """Files a pattern names, sorted by path; a folder means every visible file below it.

    On object stores (``s3://``, ``gs://``) a path without glob characters that ends in ``/``,
    or that names no object, is read as a folder: every object under ``path/``.
    """
    import os

    if is_local(pattern):
        if os.path.isdir(pattern):
            return _folder_files(pattern.rstrip("/\\"))
    elif not _GLOB_CHARS.search(pattern):
        if not pattern.endswith("/"):
            found = FileSystems.match([pattern])[0].metadata_list
            if found:
                return found
        return _folder_files(pattern.rstrip("/"))
    found = FileSystems.match([pattern])[0].metadata_list
    return sorted(found, key=lambda m: m.path)


def object_store_problem(path: str) -> str:
    """For an ``s3://`` path: '' when its bucket answers, else a missing bucket, refused access or an
    unreachable endpoint, naming the bucket and the endpoint (settings as Beam's S3 filesystem uses:
    the pipeline's ``S3Options``, else boto3's standard chain and ``AWS_ENDPOINT_URL``)."""
    if FileSystems.get_scheme(path) != "s3":
        return ""
    return _file_s3.bucket_problem(path, FileSystems._pipeline_options)  # what FileSystems.get_filesystem uses


def _hint(path: str) -> str:
    problem = object_store_problem(path)
    return f"; {problem}" if problem else ""


def match_files(patterns: list[str], field: str = "path") -> list[FileMetadata]:
    """Matches every pattern; one that names no file is a ValueError naming the pattern."""
    files: list[FileMetadata] = []
    seen: set[str] = set()
    for pattern in patterns:
        problem = object_store_problem(pattern)
        if "does not exist" in problem:
            raise ValueError(f"{field}: {pattern!r} matches no file: {problem}")
        if problem:
            raise ValueError(f"{field}: cannot list {pattern!r}: {problem}")
        try:
            found = expand_pattern(pattern)
        except Exception as exc:
            raise ValueError(f"{field}: cannot list {pattern!r}: {exc}") from exc
        if not found:
            raise ValueError(f"{field}: {pattern!r} matches no file; check the path or the glob")
        for meta in found:
            if meta.path not in seen:
                seen.add(meta.path)
                files.append(meta)
    return files


# ----------------------------------------------------------------------------- compression

def check_compression(value: str, allowed: tuple[str, ...] = COMPRESSIONS, field: str = "compression") -> str:
    value = (value or "auto").lower()
    value = {"gz": "gzip", "bzip2": "bz2", "lzma": "xz", "uncompressed": "none"}.get(value, value)
    if value not in allowed:
        raise ValueError(f"{field}: {value!r} is not one of {list(allowed)}")
    return value


def resolve_compression(path: str, option: str) -> str:
    """``auto`` picks the codec from the file's extension."""
    if option != "auto":
        return option
    lowered = path.lower()
    for suffix, codec in _SUFFIXES.items():
        if lowered.endswith(suffix):
            return codec
    return "none"


@contextlib.contextmanager
def open_read(path: str, compression: str = "none") -> Iterator[BinaryIO]:
    """Opens a file for reading through Beam's filesystems, decompressing if asked."""
    raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    stream: Any = raw
    try:
        if compression == "gzip":
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
        elif compression == "bz2":
            stream = bz2.BZ2File(raw, mode="rb")
        elif compression == "xz":
            stream = lzma.LZMAFile(raw, mode="rb")  # noqa: SIM115 - closed in finally
        yield stream
    finally:
        if stream is not raw:
            stream.close()
        raw.close()


class WriteStream:
    """A writable file (optionally compressed) created through Beam's filesystems."""

    def __init__(self, path: str, compression: str = "none") -> None:
        self.path = path
        try:
            self._raw = FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)
        except Exception as exc:  # e.g. S3ClientError NoSuchBucket: name the file
            raise OSError(f"cannot create {path}: {exc}{_hint(path)}") from exc
        if compression == "gzip":
            self.stream: Any = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6)
        elif compression == "bz2":
            self.stream = bz2.BZ2File(self._raw, mode="wb")
        elif compression == "xz":
            self.stream = lzma.LZMAFile(self._raw, mode="wb")  # noqa: SIM115 - closed by close()
        else:
            self.stream = self._raw

    def write(self, data: bytes) -> None:
        self.stream.write(data)

    def close(self) -> None:
        if self.stream is not self._raw:
            self.stream.close()
        self._raw.close()


# ----------------------------------------------------------------------------- work items

@dataclasses.dataclass(frozen=True)
class WorkItem:
    """One unit of read work: a byte range of a file (``end`` None = to the end, read whole)."""

    path: str
    start: int = 0
    end: int | None = None
    compression: str = "none"
    extra: tuple[int, ...] = ()  # parquet: the row groups of this item

    @property
    def label(self) -> str:
        return self.path if self.start == 0 else f"{self.path} (bytes from {self.start})"


def plan_ranges(meta: FileMetadata, split_size: int, compression: str, splittable: bool) -> list[WorkItem]:
    """Cuts an uncompressed, splittable file into byte ranges of about ``split_size``."""
    size = int(meta.size_in_bytes or 0)
    if not splittable or compression != "none" or size <= split_size:
        return [WorkItem(meta.path, 0, None, compression)]
    items = []
    for start in range(0, size, split_size):
        end = min(start + split_size, size)
        items.append(WorkItem(meta.path, start, None if end >= size else end, "none"))
    return items


# ----------------------------------------------------------------------------- line blocks

def iter_line_blocks(item: WorkItem, block_size: int = BLOCK_BYTES) -> Iterator[bytes]:
    """Yields the bytes of the lines an item owns, in blocks that end on a line boundary.

    The standard textio rule: a range owns every line that *starts* inside it. A range that
    does not start at 0 skips the partial line it starts in (up to the first newline at or
    after ``start - 1``); it reads past its end to finish the line that crosses it.
    """
    with open_read(item.path, item.compression) as f:
        buf = bytearray()
        offset = 0  # file offset of buf[0]
        if item.start > 0:
            f.seek(item.start - 1)
            pos = item.start - 1
            while True:
                chunk = f.read(64 * 1024)
                if not chunk:
                    return
                i = chunk.find(b"\n")
                if i >= 0:
                    offset = pos + i + 1
                    buf += chunk[i + 1:]
                    break
                pos += len(chunk)
        end = item.end
        eof = False

        def read_until_newline(search_from: int) -> int:
            nonlocal eof
            j = buf.find(b"\n", search_from)
            while j < 0 and not eof:
                chunk = f.read(max(block_size, 64 * 1024))
                if not chunk:
                    eof = True
                    break
                old = len(buf)
                buf.extend(chunk)
                j = buf.find(b"\n", old)
            return j

        while True:
            if end is not None and offset >= end:
                return
            while not eof and len(buf) < block_size:
                chunk = f.read(block_size - len(buf))
                if not chunk:
                    eof = True
                    break
                buf += chunk
            if not buf:
                return
            if end is not None and offset + len(buf) >= end:
                # the line holding byte ``end - 1`` is the last one this range owns
                j = read_until_newline(end - offset - 1)
                yield bytes(buf[: j + 1] if j >= 0 else buf)
                return
            if eof:
                yield bytes(buf)
                return
            j = buf.rfind(b"\n")
            if j < 0:
                j = read_until_newline(0)
                if j < 0:
                    yield bytes(buf)
                    return
                if end is not None and offset + j + 1 > end:
                    yield bytes(buf[: j + 1])
                    return
            block = bytes(buf[: j + 1])
            del buf[: j + 1]
            offset += len(block)
            yield block


def count_newlines(path: str, upto: int, compression: str = "none") -> int:
    """Counts the newlines in the first ``upto`` bytes of a file (used lazily for line numbers)."""
    if upto <= 0:
        return 0
    total = 0
    with open_read(path, compression) as f:
        left = upto
        while left > 0:
            chunk = f.read(min(BLOCK_BYTES, left))
            if not chunk:
                break
            total += chunk.count(b"\n")
            left -= len(chunk)
    return total


# ----------------------------------------------------------------------------- decoding

_UTF8_NAMES = {"utf_8", "utf_8_sig"}


def check_encoding(encoding: str, field: str = "encoding") -> str:
    try:
        return codecs.lookup(encoding).name
    except (LookupError, TypeError) as exc:
        raise ValueError(f"{field}: {encoding!r} is not a Python codec (e.g. utf-8, latin-1, cp1252)") from exc


def _codec_key(encoding: str) -> str:
    return codecs.lookup(encoding).name.replace("-", "_")


def is_utf8(encoding: str) -> bool:
    return _codec_key(encoding) in _UTF8_NAMES


def ascii_compatible(encoding: str) -> bool:
    """True when newlines and ASCII are single bytes (lines can be cut on ``b"\\n"``)."""
    try:
        return "\n,;|\"a0".encode(encoding) == b"\n,;|\"a0" and "\n".encode(encoding) == b"\n"
    except (UnicodeError, LookupError):
        return False


BadLine = Callable[[int, str, str], None]  # (0-based line index in the stream, raw text, error)


def decode_blocks(
    blocks: Iterable[bytes], encoding: str, at_file_start: bool, on_bad_line: BadLine | None
) -> Iterator[bytes]:
    """Turns line-aligned blocks in ``encoding`` into UTF-8; undecodable lines become empty.

    A line that cannot be decoded is reported through ``on_bad_line`` and replaced by an
    empty line, so physical line numbers are kept. A UTF-8 byte-order mark at the start of
    the file is dropped.
    """
    utf8 = is_utf8(encoding)
    first = at_file_start
    line_index = 0
    for block in blocks:
        if first:
            first = False
            if block.startswith(codecs.BOM_UTF8) and utf8:
                block = block[len(codecs.BOM_UTF8):]
        if block.isascii():
            out = block
        else:
            try:
                if utf8:
                    block.decode("utf-8")
                    out = block
                else:
                    out = block.decode(encoding).encode("utf-8")
            except UnicodeDecodeError:
                lines = block.split(b"\n")
                for i, line in enumerate(lines):
                    try:
                        lines[i] = line.decode(encoding).encode("utf-8")
                    except UnicodeDecodeError as exc:
                        lines[i] = b""
                        if on_bad_line is not None:
                            text = line.rstrip(b"\r").decode(encoding, errors="backslashreplace")
                            on_bad_line(line_index + i, text, f"cannot decode line as {encoding}: {exc.reason} "
                                                              f"at byte {exc.start}")
                out = b"\n".join(lines)
        line_index += block.count(b"\n")
        yield out


def decode_whole(item: WorkItem, encoding: str) -> bytes:
    """Reads a whole file in an ASCII-incompatible codec (UTF-16...) and returns UTF-8 bytes."""
    with open_read(item.path, item.compression) as f:
        data = f.read()
    text = data.decode(encoding)
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.encode("utf-8")


def utf8_blocks(item: WorkItem, encoding: str, on_bad_line: BadLine | None,
                block_size: int = BLOCK_BYTES) -> Iterator[bytes]:
    """The item's bytes as UTF-8, line aligned; undecodable lines reported and blanked.

    ASCII-incompatible codecs (UTF-16, UTF-32) are decoded whole (their files are never split).
    """
    if not ascii_compatible(encoding):
        yield decode_whole(item, encoding)
        return
    yield from decode_blocks(iter_line_blocks(item, block_size), encoding, item.start == 0, on_bad_line)


class BlockStream(io.RawIOBase):
    """A read-only file over an iterator of byte blocks (what pyarrow's streaming readers take)."""

    def __init__(self, blocks: Iterable[bytes]) -> None:
        super().__init__()
        self._blocks = iter(blocks)
        self._buf = b""
        self._pos = 0
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        while self._pos >= len(self._buf):
            try:
                self._buf = next(self._blocks)
            except StopIteration:
                return b""
            self._pos = 0
        stop = len(self._buf) if size is None or size < 0 else self._pos + size
        out = self._buf[self._pos:stop]
        self._pos += len(out)
        self.consumed += len(out)
        return out

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class LineOffset:
    """Lazily counts the lines before an item's first byte (only when a line number is needed)."""

    def __init__(self, item: WorkItem) -> None:
        self._item = item
        self._value: int | None = None

    def get(self) -> int:
        if self._value is None:
            self._value = count_newlines(self._item.path, self._data_start(), self._item.compression)
        return self._value

    def _data_start(self) -> int:
        if self._item.start <= 0:
            return 0
        with open_read(self._item.path, self._item.compression) as f:
            f.seek(self._item.start - 1)
            pos = self._item.start - 1
            while True:
                chunk = f.read(64 * 1024)
                if not chunk:
                    return pos
                i = chunk.find(b"\n")
                if i >= 0:
                    return pos + i + 1
                pos += len(chunk)


# ----------------------------------------------------------------------------- casting

_PATTERNS = {
    "int": re.compile(r"^\s*[+-]?\d+\s*$"),
    "float": re.compile(
        r"^\s*[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|nan|NaN|NAN|inf|Inf|INF|infinity|Infinity|INFINITY)\s*$"),
    "bool": re.compile(r"^(?i:true|false|1|0)$"),
    "date": re.compile(r"^\d{4}-\d{2}-\d{2}$"),
}
_TZ_SUFFIX = r"(Z|z|[+-]\d{2}(:?\d{2})?)$"


def _bad_positions(arr: pa.Array, target: pa.DataType, cast: Callable[[pa.Array], pa.Array]) -> list[int]:
    """Positions whose value does not cast; bisects so a few bad values cost few casts."""
    bad: list[int] = []
    stack = [(0, len(arr))]
    while stack:
        lo, hi = stack.pop()
        if hi <= lo:
            continue
        try:
            cast(arr.slice(lo, hi - lo))
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OverflowError):
            pass
        if hi - lo == 1:
            bad.append(lo)
            continue
        mid = (lo + hi) // 2
        stack.append((mid, hi))
        stack.append((lo, mid))
    return sorted(bad)


def _strings_to_timestamp(arr: pa.Array, target: pa.DataType) -> pa.Array:
    if target.tz is None:
        return pc.cast(arr, target)
    try:
        return pc.cast(arr, target)
    except pa.ArrowInvalid:
        pass
    has_tz = pc.match_substring_regex(arr, _TZ_SUFFIX)
    naive_type = pa.timestamp(target.unit)
    aware = pc.cast(pc.if_else(has_tz, arr, pa.scalar(None, pa.string())), target)
    naive = pc.cast(pc.cast(pc.if_else(has_tz, pa.scalar(None, pa.string()), arr), naive_type), target)
    return pc.if_else(has_tz, aware, naive)


def cast_array(arr: pa.Array, target: pa.DataType) -> pa.Array:
    """Casts one array safely; strings to timestamps accept naive (UTC) and offset values."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type == target:
        return arr
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), target)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)) and pa.types.is_timestamp(target):
        return _strings_to_timestamp(arr, target)
    return pc.cast(arr, target, safe=True)


def cast_with_mask(arr: pa.Array, target: pa.DataType) -> tuple[pa.Array, pa.Array | None]:
    """Casts ``arr``; returns (result with nulls where a value failed, boolean mask of failures or None)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    try:
        return cast_array(arr, target), None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OverflowError):
        pass
    label = type_label(target)
    candidate = arr
    prefilter = None
    if (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)) and label in _PATTERNS:
        ok = pc.match_substring_regex(arr, _PATTERNS[label].pattern)
        prefilter = pc.and_(pc.is_valid(arr), pc.invert(pc.fill_null(ok, False)))
        candidate = pc.if_else(prefilter, pa.scalar(None, arr.type), arr)
    try:
        result = cast_array(candidate, target)
        bad_mask = prefilter
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OverflowError):
        positions = _bad_positions(candidate, target, lambda a: cast_array(a, target))
        mask_values = [False] * len(arr)
        for p in positions:
            mask_values[p] = True
        extra = pa.array(mask_values, pa.bool_())
        bad_mask = extra if prefilter is None else pc.or_(prefilter, extra)
        candidate = pc.if_else(bad_mask, pa.scalar(None, candidate.type), candidate)
        result = cast_array(candidate, target)
    if bad_mask is not None and not pc.any(bad_mask).as_py():
        bad_mask = None
    return result, bad_mask


@dataclasses.dataclass
class CastOutcome:
    """The rows that cast (``batch``) and, for the others, (row index, column, bad value)."""

    batch: pa.RecordBatch
    bad_rows: list[tuple[int, str, Any]]
    bad_mask: pa.Array | None


def cast_batch(batch: pa.RecordBatch, types: dict[str, pa.DataType]) -> CastOutcome:
    """Casts the named columns vectorised; rows with a value that does not cast are split off."""
    columns = []
    any_bad: pa.Array | None = None
    first_error: dict[int, tuple[str, Any]] = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        target = types.get(name)
        if target is None or column.type == target:
            columns.append(column)
            continue
        result, mask = cast_with_mask(column, target)
        columns.append(result)
        if mask is not None:
            for i in pc.indices_nonzero(mask).to_pylist():
                first_error.setdefault(i, (name, column[i].as_py()))
            any_bad = mask if any_bad is None else pc.or_(any_bad, mask)
    fields = [pa.field(n, c.type) for n, c in zip(batch.schema.names, columns, strict=True)]
    out = pa.RecordBatch.from_arrays(columns, schema=pa.schema(fields, metadata=batch.schema.metadata))
    bad_rows = [(i, *first_error[i]) for i in sorted(first_error)]
    if any_bad is not None:
        out = out.filter(pc.invert(any_bad))
    return CastOutcome(out, bad_rows, any_bad)


def cast_error_message(column: str, value: Any, target: pa.DataType) -> str:
    return f"column {column!r}: {value!r} is not a valid {type_label(target)}"


# ----------------------------------------------------------------------------- inference

def infer_string_type(arr: pa.Array) -> pa.DataType:
    """The narrowest type every non-null value of a string column casts to cleanly."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    values = arr.drop_null()
    if len(values) == 0:
        return pa.string()
    for target, pattern in ((pa.int64(), "int"), (pa.float64(), "float"), (pa.bool_(), "bool"),
                            (pa.date32(), "date")):
        if not pc.all(pc.match_substring_regex(values, _PATTERNS[pattern].pattern)).as_py():
            continue
        try:
            cast_array(values, target)
            return target
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    iso = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?"
    if pc.all(pc.match_substring_regex(values, iso + "$")).as_py():
        try:
            cast_array(values, pa.timestamp("us"))
            return pa.timestamp("us")
        except pa.ArrowInvalid:
            pass
    if pc.all(pc.match_substring_regex(values, iso + _TZ_SUFFIX)).as_py():
        try:
            cast_array(values, pa.timestamp("us", tz="UTC"))
            return pa.timestamp("us", tz="UTC")
        except pa.ArrowInvalid:
            pass
    return pa.string()


# ----------------------------------------------------------------------------- misc

class Rebatcher:
    """Collects Arrow batches and hands them out in batches of at most ``max_rows`` rows."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self._pending: list[pa.RecordBatch] = []
        self._rows = 0

    def add(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        if batch.num_rows == 0:
            return
        self._pending.append(batch)
        self._rows += batch.num_rows
        while self._rows >= self.max_rows:
            yield from self._take(self.max_rows)

    def flush(self) -> Iterator[pa.RecordBatch]:
        while self._rows:
            yield from self._take(min(self._rows, self.max_rows))

    def _take(self, n: int) -> Iterator[pa.RecordBatch]:
        if len(self._pending) == 1 and self._pending[0].num_rows == n:
            out = self._pending.pop()
        else:
            table = pa.Table.from_batches(self._pending)
            head = table.slice(0, n).combine_chunks()
            out = head.to_batches()[0] if head.num_rows else None
            rest = table.slice(n)
            self._pending = [b for b in rest.to_batches() if b.num_rows]
        self._rows -= n
        if out is not None:
            yield out


def strip_source_metadata(schema: pa.Schema) -> pa.Schema:
    """Drops beam_etl's own schema metadata (source tags) before a schema is written out."""
    meta = {k: v for k, v in (schema.metadata or {}).items() if not k.startswith(b"beam_etl.")}
    return schema.with_metadata(meta or None) if meta else schema.remove_metadata()


class WorkerFileSystems:
    """The pipeline's options for Beam ``FileSystems``, carried to workers that were started without them.

    Beam's Python worker pool (``worker_pool_main``, the EXTERNAL environment) starts SDK
    harnesses without calling ``FileSystems.set_options``, so ``s3://`` paths fail there with
    "Must provide one of client or options". Transforms keep the options they were built with
    and call ``ensure()`` where their workers touch files.
    """

    def __init__(self, options: Any) -> None:
        self._flags = options.get_all_options(drop_default=True) if options is not None else None

    def ensure(self) -> None:
        if self._flags and getattr(FileSystems, "_pipeline_options", None) is None:
            from apache_beam.options.pipeline_options import PipelineOptions

            FileSystems.set_options(PipelineOptions.from_dictionary(self._flags))
