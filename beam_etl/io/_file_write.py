"""File writing for ``WriteToParquet``, ``WriteToCsv``, ``WriteToJsonl`` and ``WriteToJson``.

Shards are written into a hidden temporary folder next to the target; one finalisation step
(after a global combine of the temporary paths) applies the write mode, renames the shards to
their final names, writes the schema file and removes the temporary folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from beam_etl.batch import batch_nbytes, json_safe, row_as_record
from beam_etl.io._file_common import COMPRESSION_SUFFIX, WriteStream, cast_with_mask, strip_source_metadata
from beam_etl.ops.context import RunContext
from beam_etl.ops.dlq import dead_letter
from beam_etl.transforms.base import batch_source

log = logging.getLogger(__name__)

TMP_PREFIX = ".beam_etl-tmp-"
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
MODES = ("overwrite", "append", "error_if_exists")
PARQUET_COMPRESSIONS = ("snappy", "zstd", "gzip", "none")
TEXT_COMPRESSIONS = ("none", "gzip", "bz2", "xz")
FLUSH_BYTES = 64 * 1024 * 1024
_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)


# ----------------------------------------------------------------------------- layout

@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a write's files go and how they are named.

    * ``path: out/orders`` (a prefix): ``out/orders-00000-of-00003.parquet``...
    * ``path: out/orders/`` (a folder): ``out/orders/part-00000-of-00003.parquet``...
    * with ``partition_by``, ``path`` is the dataset folder:
      ``out/orders/country=FR/part-00000-of-00001.parquet``.
    In ``append`` mode each name gets the write's token: ``orders-00000-of-00003-1a2b3c4d.parquet``.
    """

    path: str
    extension: str  # ".parquet", ".csv", ".jsonl", ".json"
    compression_suffix: str  # "", ".gz", ".bz2", ".xz"
    partitioned: bool
    mode: str
    token: str

    @property
    def _clean(self) -> str:
        return self.path.rstrip("/\\") or self.path

    @property
    def folder_style(self) -> bool:
        return self.partitioned or self.path.endswith(("/", "\\"))

    @property
    def directory(self) -> str:
        """The folder the data files (or partition folders) go in."""
        if self.folder_style:
            return _abs(self._clean)
        return FileSystems.split(_abs(self._clean))[0]

    @property
    def base(self) -> str:
        return "part" if self.folder_style else FileSystems.split(_abs(self._clean))[1]

    @property
    def tmp_dir(self) -> str:
        parent = FileSystems.split(_abs(self._clean))[0] if self.partitioned else self.directory
        return FileSystems.join(parent, TMP_PREFIX + self.token)

    @property
    def schema_path(self) -> str:
        if self.folder_style and not self.partitioned:
            return FileSystems.join(self.directory, "part.schema.json")
        return _abs(self._clean) + ".schema.json"

    @property
    def prefix(self) -> str:
        return FileSystems.join(self.directory, self.base)

    def final_name(self, rel: str, index: int, count: int) -> str:
        token = f"-{self.token}" if self.mode == "append" else ""
        name = f"{self.base}-{index:05d}-of-{count:05d}{token}{self.extension}{self.compression_suffix}"
        return FileSystems.join(self.directory, rel, name) if rel else FileSystems.join(self.directory, name)

    def _name_re(self) -> re.Pattern[str]:
        return re.compile(rf"^{re.escape(self.base)}-\d{{5}}-of-\d{{5}}(-[0-9a-f]{{8}})?"
                          rf"{re.escape(self.extension)}(\.(gz|bz2|xz))?$")

    def existing_files(self) -> list[str]:
        """Data files of this prefix (or dataset folder) that are already there."""
        name_re = self._name_re()
        pattern = FileSystems.join(self.directory, "**") if self.partitioned else self.prefix + "-*"
        try:
            found = FileSystems.match([pattern])[0].metadata_list
        except Exception:  # noqa: BLE001 - a missing folder means there is nothing yet
            return []
        out = []
        root = self.directory.rstrip("/\\")
        for meta in found:
            rel = meta.path[len(root):].lstrip("/\\")
            parts = re.split(r"[/\\]", rel)
            if self.partitioned and not all("=" in p and not p.startswith(".") for p in parts[:-1]):
                continue
            if not self.partitioned and len(parts) != 1:
                continue
            if name_re.match(parts[-1]):
                out.append(meta.path)
        return sorted(out)


def _abs(path: str) -> str:
    if FileSystems.get_scheme(path) in (None, "file"):
        return os.path.abspath(path)
    return path


def new_token() -> str:
    return uuid.uuid4().hex[:8]


# ----------------------------------------------------------------------------- schemas

def unify(schemas: Iterable[pa.Schema]) -> pa.Schema:
    """Unifies schemas (permissive promotion); a conflicting field keeps its first type."""
    schemas = [strip_source_metadata(s) for s in schemas]
    if not schemas:
        return pa.schema([])
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except _CAST_ERRORS:
        pass
    fields: dict[str, pa.Field] = {}
    for schema in schemas:
        for field in schema:
            if field.name not in fields:
                fields[field.name] = field
                continue
            try:
                merged = pa.unify_schemas([pa.schema([fields[field.name]]), pa.schema([field])],
                                          promote_options="permissive")
                fields[field.name] = merged.field(0)
            except _CAST_ERRORS:
                if pa.types.is_null(fields[field.name].type):
                    fields[field.name] = field
    return pa.schema(list(fields.values()))


def schema_to_json(schema: pa.Schema) -> dict[str, Any]:
    """The Arrow schema as JSON: field names, types and nullability (nested fields included)."""

    def field_json(field: pa.Field) -> dict[str, Any]:
        out: dict[str, Any] = {"name": field.name, "type": str(field.type), "nullable": field.nullable}
        t = field.type
        if pa.types.is_struct(t):
            out["fields"] = [field_json(t.field(i)) for i in range(t.num_fields)]
        elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            out["item"] = field_json(t.value_field)
        elif pa.types.is_map(t):
            out["key"] = field_json(t.key_field)
            out["item"] = field_json(t.item_field)
        return out

    return {"fields": [field_json(f) for f in schema]}


# ----------------------------------------------------------------------------- formats

def _is_nested(t: pa.DataType) -> bool:
    return (pa.types.is_struct(t) or pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_map(t)
            or pa.types.is_fixed_size_list(t) or pa.types.is_union(t))


def _json_default(value: Any) -> Any:
    return json_safe(value)


class FileFormat:
    """One output format: file extension, schema mapping and the per-file writer."""

    extension = ""
    fixed_schema = True  # files need one schema (batches are cast to it)

    def __init__(self, compression: str) -> None:
        self.compression = compression

    @property
    def compression_suffix(self) -> str:
        return ""

    def file_schema(self, schema: pa.Schema) -> pa.Schema:
        return schema

    def prepare(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return batch

    def open(self, path: str, schema: pa.Schema) -> Any:
        """Abstract: opens a shard writer for this format."""
        raise NotImplementedError(f"{type(self).__name__} must implement open()")


class ParquetFormat(FileFormat):
    extension = ".parquet"

    def __init__(self, compression: str, row_group_size: int | None) -> None:
        super().__init__(compression)
        self.row_group_size = row_group_size

    def open(self, path: str, schema: pa.Schema) -> _ParquetFile:
        return _ParquetFile(path, schema, self.compression, self.row_group_size)


class _ParquetFile:
    def __init__(self, path: str, schema: pa.Schema, compression: str, row_group_size: int | None) -> None:
        self._stream = WriteStream(path)
        self._writer = pq.ParquetWriter(self._stream.stream, schema,
                                        compression="NONE" if compression == "none" else compression)
        self._row_group_size = row_group_size or 1024 * 1024
        self._pending: list[pa.RecordBatch] = []
        self._rows = 0
        self._bytes = 0

    def write(self, batch: pa.RecordBatch) -> None:
        self._pending.append(batch)
        self._rows += batch.num_rows
        self._bytes += batch_nbytes(batch)
        if self._rows >= self._row_group_size or self._bytes >= FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            table = pa.Table.from_batches(self._pending)
            self._writer.write_table(table, row_group_size=self._row_group_size)
            self._pending, self._rows, self._bytes = [], 0, 0

    def close(self) -> None:
        self._flush()
        self._writer.close()
        self._stream.close()


class CsvFormat(FileFormat):
    extension = ".csv"

    def __init__(self, compression: str, header: bool, delimiter: str) -> None:
        super().__init__(compression)
        self.header = header
        self.delimiter = delimiter

    @property
    def compression_suffix(self) -> str:
        return COMPRESSION_SUFFIX[self.compression]

    def file_schema(self, schema: pa.Schema) -> pa.Schema:
        fields = []
        for field in schema:
            t = field.type
            if pa.types.is_dictionary(t):
                t = t.value_type
            if _is_nested(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_null(t):
                t = pa.string()
            fields.append(pa.field(field.name, t, field.nullable))
        return pa.schema(fields, metadata=schema.metadata)

    def prepare(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        target = self.file_schema(batch.schema)
        if target.equals(batch.schema):
            return batch
        columns = []
        for column, field in zip(batch.columns, target, strict=True):
            if column.type == field.type:
                columns.append(column)
            elif pa.types.is_dictionary(column.type) and not _is_nested(field.type):
                columns.append(column.dictionary_decode())
            elif pa.types.is_null(column.type):
                columns.append(pa.nulls(len(column), pa.string()))
            else:
                values = [None if v is None else (v if isinstance(v, str) else json.dumps(
                    v, default=_json_default, ensure_ascii=False)) for v in column.to_pylist()]
                columns.append(pa.array(values, pa.string()))
        return pa.RecordBatch.from_arrays(columns, schema=target)

    def open(self, path: str, schema: pa.Schema) -> _CsvFile:
        return _CsvFile(path, schema, self.compression, self.header, self.delimiter)


class _CsvFile:
    def __init__(self, path: str, schema: pa.Schema, compression: str, header: bool, delimiter: str) -> None:
        self._stream = WriteStream(path, compression)
        self._writer = pa_csv.CSVWriter(self._stream.stream, schema,
                                        write_options=pa_csv.WriteOptions(include_header=header,
                                                                          delimiter=delimiter))

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def close(self) -> None:
        self._writer.close()
        self._stream.close()


def rows_to_json(batch: pa.RecordBatch, json_fields: frozenset[str], indent: int | None
                 ) -> tuple[list[str | None], list[tuple[int, BaseException]]]:
    """Serialises each row with Python's json (the ``pretty`` path); returns texts and failures."""
    names = batch.schema.names
    columns = []
    for name, column in zip(names, batch.columns, strict=True):
        if pa.types.is_floating(column.type):
            column = pc.if_else(pc.is_finite(column), column, pa.scalar(None, column.type))
        values = column.to_pylist()
        if name in json_fields:
            values = [_parse_json_text(v) for v in values]
        columns.append(values)
    texts: list[str | None] = []
    failures: list[tuple[int, BaseException]] = []
    for i, row in enumerate(zip(*columns, strict=True)):
        try:
            texts.append(json.dumps(dict(zip(names, row, strict=True)), default=_json_default, ensure_ascii=False,
                                    allow_nan=False, indent=indent))
        except (TypeError, ValueError, OverflowError) as exc:
            texts.append(None)
            failures.append((i, exc))
    if not names:
        texts = ["{}"] * batch.num_rows
    return texts, failures


def _parse_json_text(value: Any) -> Any:
    """A ``json_fields`` value: parsed when it is JSON text, kept as a string otherwise."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


_NEEDS_ESCAPE = '["\\\\\x00-\x1f]'
_OTHER_CONTROL = "[\x00-\x08\x0b\x0c\x0e-\x1f]"


def _json_string_column(column: pa.Array) -> pa.Array | None:
    """JSON string literals for a string column, vectorised (None when Python must do it)."""
    if column.null_count < len(column) and pc.any(pc.match_substring_regex(column, _NEEDS_ESCAPE)).as_py():
        column = pc.replace_substring(column, "\\", "\\\\")
        column = pc.replace_substring(column, '"', '\\"')
        column = pc.replace_substring(column, "\n", "\\n")
        column = pc.replace_substring(column, "\r", "\\r")
        column = pc.replace_substring(column, "\t", "\\t")
        if pc.any(pc.match_substring_regex(column, _OTHER_CONTROL)).as_py():
            return None
    return pc.binary_join_element_wise('"', column, '"', "")


def _json_value_column(column: pa.Array, as_json_text: bool) -> tuple[pa.Array, list[tuple[int, BaseException]]]:
    """The JSON text of each value (null for nulls) and the rows whose value cannot be serialised."""
    t = column.type
    if pa.types.is_dictionary(t):
        column, t = column.dictionary_decode(), t.value_type
    if not as_json_text:
        if pa.types.is_null(t):
            return pa.nulls(len(column), pa.string()), []
        if pa.types.is_integer(t) or pa.types.is_boolean(t):
            return pc.cast(column, pa.string()), []
        if pa.types.is_floating(t):
            finite = pc.if_else(pc.is_finite(column), column, pa.scalar(None, t))
            text = pc.cast(finite, pa.string())
            return pc.replace_substring_regex(text, r"^(-?\d+)$", r"\1.0"), []
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            if pa.types.is_large_string(t):
                column = column.cast(pa.string())
            quoted = _json_string_column(column)
            if quoted is not None:
                return quoted, []
    values: list[str | None] = []
    failures: list[tuple[int, BaseException]] = []
    for i, value in enumerate(column.to_pylist()):
        if value is None:
            values.append(None)
            continue
        if as_json_text:
            value = _parse_json_text(value)
        try:
            values.append(json.dumps(value, default=_json_default, ensure_ascii=False, allow_nan=False))
        except (TypeError, ValueError, OverflowError) as exc:
            values.append(None)
            failures.append((i, exc))
    return pa.array(values, pa.string()), failures


def json_rows_buffer(batch: pa.RecordBatch, json_fields: frozenset[str], prefix: str, suffix: str
                     ) -> tuple[bytes, int, list[tuple[int, BaseException]]]:
    """Serialises rows vectorised: ``prefix + {...} + suffix`` per row; returns (bytes, rows, failures)."""
    names = batch.schema.names
    if not names:
        return (prefix + "{}" + suffix).encode("utf-8") * batch.num_rows, batch.num_rows, []
    parts: list[Any] = []
    failures: dict[int, BaseException] = {}
    for n, (name, column) in enumerate(zip(names, batch.columns, strict=True)):
        text, failed = _json_value_column(column, name in json_fields)
        for i, exc in failed:
            failures.setdefault(i, exc)
        key = json.dumps(name, ensure_ascii=False)
        parts.append(f"{prefix}{{{key}: " if n == 0 else f", {key}: ")
        parts.append(pc.fill_null(text, "null"))
    parts.append("}" + suffix)
    rows = pc.binary_join_element_wise(*parts, "")
    if failures:
        keep = [True] * batch.num_rows
        for i in failures:
            keep[i] = False
        rows = rows.filter(pa.array(keep, pa.bool_()))
    if not len(rows):
        return b"", 0, sorted(failures.items())
    offsets = rows.buffers()[1]
    first = int.from_bytes(offsets.to_pybytes()[rows.offset * 4: rows.offset * 4 + 4], "little", signed=True)
    last = int.from_bytes(offsets.to_pybytes()[(rows.offset + len(rows)) * 4: (rows.offset + len(rows)) * 4 + 4],
                          "little", signed=True)
    return rows.buffers()[2].to_pybytes()[first:last], len(rows), sorted(failures.items())


class JsonlFormat(FileFormat):
    extension = ".jsonl"
    fixed_schema = False

    def __init__(self, compression: str, json_fields: list[str]) -> None:
        super().__init__(compression)
        self.json_fields = frozenset(json_fields)

    @property
    def compression_suffix(self) -> str:
        return COMPRESSION_SUFFIX[self.compression]

    def open(self, path: str, schema: pa.Schema) -> _JsonFile:
        return _JsonFile(path, self.compression, self.json_fields, array=False, pretty=False)


class JsonFormat(JsonlFormat):
    extension = ".json"

    def __init__(self, compression: str, json_fields: list[str], pretty: bool) -> None:
        super().__init__(compression, json_fields)
        self.pretty = pretty

    def open(self, path: str, schema: pa.Schema) -> _JsonFile:
        return _JsonFile(path, self.compression, self.json_fields, array=True, pretty=self.pretty)


class _JsonFile:
    def __init__(self, path: str, compression: str, json_fields: frozenset[str], array: bool, pretty: bool
                 ) -> None:
        self._stream = WriteStream(path, compression)
        self._json_fields = json_fields
        self._array = array
        self._pretty = pretty
        self._count = 0
        self.failures: list[tuple[pa.RecordBatch, int, BaseException]] = []
        if array:
            self._stream.write(b"[")

    def write(self, batch: pa.RecordBatch) -> None:
        if self._pretty:
            texts, failures = rows_to_json(batch, self._json_fields, 2)
            self.failures.extend((batch, i, exc) for i, exc in failures)
            good = ["  " + t.replace("\n", "\n  ") for t in texts if t is not None]
            if good:
                self._stream.write((("\n" if self._count == 0 else ",\n") + ",\n".join(good)).encode("utf-8"))
            self._count += len(good)
            return
        if self._array:
            data, rows, failures = json_rows_buffer(batch, self._json_fields, ",\n", "")
            if rows and self._count == 0:
                data = b"\n" + data[2:]
        else:
            data, rows, failures = json_rows_buffer(batch, self._json_fields, "", "\n")
        self.failures.extend((batch, i, exc) for i, exc in failures)
        if rows:
            self._stream.write(data)
        self._count += rows

    @property
    def rows_written(self) -> int:
        return self._count

    def close(self) -> None:
        if self._array:
            self._stream.write(b"\n]\n" if self._count else b"]\n")
        self._stream.close()


# ----------------------------------------------------------------------------- partitions

def partition_batches(batch: pa.RecordBatch, columns: list[str]) -> Iterator[tuple[str, pa.RecordBatch]]:
    """Splits a batch by the values of ``columns``: (``col=value/...`` folder, rows without them)."""
    rest = [n for n in batch.schema.names if n not in columns]
    keys = []
    for name in columns:
        col = batch.column(name)
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        keys.append(col if pa.types.is_string(col.type) else pc.cast(col, pa.string()))
    index = pa.array(range(batch.num_rows), pa.int64())
    table = pa.table([*keys, index], names=[*(f"k{i}" for i in range(len(keys))), "__row"])
    grouped = table.group_by([f"k{i}" for i in range(len(keys))], use_threads=False).aggregate([("__row", "list")])
    for row in grouped.to_pylist():
        parts = []
        for i, name in enumerate(columns):
            value = row[f"k{i}"]
            parts.append(f"{name}={HIVE_NULL if value is None else urllib.parse.quote(value, safe='')}")
        indices = row["__row_list"]
        sub = batch.select(rest)
        if len(indices) != batch.num_rows:
            sub = sub.take(pa.array(indices, pa.int64()))
        yield "/".join(parts), sub


# ----------------------------------------------------------------------------- shard writing

def conform(batch: pa.RecordBatch, schema: pa.Schema) -> tuple[pa.RecordBatch, list[tuple[int, str, Any]]]:
    """Casts a batch to the file schema; rows whose value does not convert are split off."""
    columns = []
    bad: dict[int, tuple[str, Any]] = {}
    any_bad = None
    names = batch.schema.names
    for field in schema:
        if field.name not in names:
            columns.append(pa.nulls(batch.num_rows, field.type))
            continue
        column = batch.column(field.name)
        if column.type == field.type:
            columns.append(column)
            continue
        result, mask = cast_with_mask(column, field.type)
        columns.append(result)
        if mask is not None:
            for i in pc.indices_nonzero(mask).to_pylist():
                bad.setdefault(i, (field.name, column[i].as_py()))
            any_bad = mask if any_bad is None else pc.or_(any_bad, mask)
    out = pa.RecordBatch.from_arrays(columns, schema=schema)
    if any_bad is not None:
        out = out.filter(pc.invert(any_bad))
    return out, [(i, *bad[i]) for i in sorted(bad)]


class _RollingFile:
    """The temporary files of one (shard, partition): buffers, unifies, casts, rolls over."""

    def __init__(self, owner: ShardWriter, rel: str, schema: pa.Schema | None) -> None:
        self.owner = owner
        self.rel = rel
        self.fixed = schema
        self.schema: pa.Schema | None = None
        self.file: Any = None
        self.path = ""
        self.rows = 0
        self.buffer: list[pa.RecordBatch] = []
        self.buffered = 0
        if schema is not None:
            self._open(schema)

    def add(self, batch: pa.RecordBatch) -> Iterator[dict[str, Any]]:
        if self.file is None:
            self.buffer.append(batch)
            self.buffered += batch_nbytes(batch)
            if self.buffered >= FLUSH_BYTES:
                yield from self._flush_buffer()
            return
        assert self.schema is not None
        new_columns = any(n not in self.schema.names for n in batch.schema.names)
        if new_columns and not self.owner.fmt.fixed_schema:
            self.schema = unify([self.schema, batch.schema])  # JSON rows carry their own keys
        elif self.fixed is None and new_columns:
            # a new column: this file's schema cannot take it, start another file
            self.owner.records.append(self._close())
            self.buffer, self.buffered = [batch], batch_nbytes(batch)
            return
        yield from self._write(batch)

    def _flush_buffer(self) -> Iterator[dict[str, Any]]:
        schema = unify(b.schema for b in self.buffer)
        self._open(schema)
        buffered, self.buffer, self.buffered = self.buffer, [], 0
        for batch in buffered:
            yield from self._write(batch)

    def _open(self, schema: pa.Schema) -> None:
        fmt = self.owner.fmt
        self.schema = strip_source_metadata(schema)
        parts = [self.owner.layout.tmp_dir] + ([self.rel] if self.rel else [])
        self.path = FileSystems.join(*parts, f"{uuid.uuid4().hex}{fmt.extension}{fmt.compression_suffix}")
        self.file = fmt.open(self.path, self.schema)
        self.rows = 0

    def _write(self, batch: pa.RecordBatch) -> Iterator[dict[str, Any]]:
        assert self.schema is not None
        original = batch
        if self.owner.fmt.fixed_schema:
            batch, bad = conform(batch, self.schema)
            for index, column, value in bad:
                yield self.owner.letter(original, index, "type",
                                        f"column {column!r}: {value!r} cannot be written as "
                                        f"{self.schema.field(column).type} (the file's type for this column)",
                                        rel=self.rel)
        if batch.num_rows:
            self.file.write(batch)
            failures = getattr(self.file, "failures", None)
            written = batch.num_rows
            if failures:
                for failed_batch, index, exc in failures:
                    yield self.owner.letter(failed_batch, index, "internal", f"cannot serialise row: {exc}", exc,
                                            rel=self.rel)
                written -= len(failures)
                failures.clear()
            self.rows += written
            self.owner.rows_written += written

    def _close(self) -> dict[str, Any]:
        self.file.close()
        record = {"tmp": self.path, "rel": self.rel, "shard": self.owner.shard, "rows": self.rows,
                  "schema": self.schema.serialize().to_pybytes() if self.schema is not None else b""}
        self.file = None
        return record

    def close(self) -> Iterator[dict[str, Any]]:
        if self.file is None and self.buffer:
            yield from self._flush_buffer()
        if self.file is not None:
            self.owner.records.append(self._close())


class ShardWriter:
    """Writes the batches of one shard (a bundle, or one key when ``num_shards`` is set)."""

    def __init__(self, fmt: FileFormat, layout: Layout, partition_by: list[str], step: str, ctx: RunContext,
                 shard: int | None = None, schema: pa.Schema | None = None) -> None:
        self.fmt = fmt
        self.layout = layout
        self.partition_by = partition_by
        self.step = step
        self.ctx = ctx
        self.shard = shard
        self.schema = schema  # the fixed full schema (num_shards mode), partition columns included
        self.files: dict[str, _RollingFile] = {}
        self.records: list[dict[str, Any]] = []
        self.rows_written = 0
        self._schemas: list[pa.Schema] = []  # the batches' full schemas (partition columns included)

    def letter(self, batch: pa.RecordBatch, index: int, error_type: str, error: str,
               exc: BaseException | str | None = None, rel: str = "") -> dict[str, Any]:
        record = row_as_record(batch, index)
        for part in rel.split("/") if rel else []:
            # a partitioned row left its partition values in the folder name: put them back
            name, _, value = part.partition("=")
            record.setdefault(name, None if value == HIVE_NULL else urllib.parse.unquote(value))
        return dead_letter(record, error_type=error_type, error=error,
                           exception=exc or "ArrowInvalid", step=self.step, source=batch_source(batch, index),
                           ctx=self.ctx)

    def _file_schema(self, rel_columns: list[str]) -> pa.Schema | None:
        if self.schema is None or not self.fmt.fixed_schema:
            return None
        fields = [f for f in self.schema if f.name in rel_columns]
        return self.fmt.file_schema(pa.schema(fields))

    def add(self, batch: pa.RecordBatch) -> Iterator[dict[str, Any]]:
        if not batch.num_rows:
            return
        if not self._schemas or not self._schemas[-1].equals(batch.schema):
            self._schemas.append(batch.schema)
            if len(self._schemas) > 64:
                self._schemas = [unify(self._schemas)]
        if self.partition_by:
            missing = [c for c in self.partition_by if c not in batch.schema.names]
            if missing:
                error = f"partition column(s) {missing} are missing from this batch (columns: {batch.schema.names})"
                for i in range(batch.num_rows):
                    yield self.letter(batch, i, "validation", error, "KeyError")
                return
            parts: Iterable[tuple[str, pa.RecordBatch]] = partition_batches(batch, self.partition_by)
        else:
            parts = [("", batch)]
        for rel, sub in parts:
            sub = self.fmt.prepare(sub)
            rolling = self.files.get(rel)
            if rolling is None:
                names = [n for n in (self.schema.names if self.schema is not None else sub.schema.names)
                         if n not in self.partition_by]
                rolling = self.files[rel] = _RollingFile(self, rel, self._file_schema(names))
            yield from rolling.add(sub)

    def close(self) -> Iterator[dict[str, Any]]:
        for rolling in self.files.values():
            yield from rolling.close()
        self.files = {}
        if self.records and self._schemas:
            logical = self.fmt.file_schema(unify(self._schemas)).serialize().to_pybytes()
            for record in self.records:
                record["logical"] = logical


def shard_schema(fmt: FileFormat, batches: Iterable[pa.RecordBatch]) -> pa.Schema:
    """The unified file-level schema of all batches of a shard."""
    return unify(fmt.file_schema(b.schema) for b in batches if b.num_rows)


# ----------------------------------------------------------------------------- finalisation

def _mkdirs(path: str) -> None:
    try:
        FileSystems.mkdirs(path)
    except Exception:  # noqa: BLE001 - it exists already (or the filesystem has no folders)
        pass


def _delete_quietly(paths: list[str]) -> None:
    if not paths:
        return
    try:
        FileSystems.delete(paths)
    except Exception as exc:  # noqa: BLE001 - best effort clean-up
        log.warning("could not delete %s: %s", paths, exc)


def remove_tmp_dir(layout: Layout) -> None:
    tmp = layout.tmp_dir
    if FileSystems.get_scheme(tmp) in (None, "file"):
        if os.path.isdir(tmp):
            _delete_quietly([tmp])
        return
    try:
        leftovers = [m.path for m in FileSystems.match([FileSystems.join(tmp, "**")])[0].metadata_list]
    except Exception:  # noqa: BLE001 - nothing was written
        leftovers = []
    _delete_quietly(leftovers)


def _remove_empty_partition_dirs(root: str) -> None:
    if FileSystems.get_scheme(root) not in (None, "file") or not os.path.isdir(root):
        return
    for dirpath, _dirs, _files in os.walk(root, topdown=False):
        if dirpath != root and "=" in os.path.basename(dirpath):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


def write_empty_file(fmt: FileFormat, path: str, schema: pa.Schema) -> None:
    handle = fmt.open(path, schema)
    handle.close()


def finalize(records: list[dict[str, Any]], fmt: FileFormat, layout: Layout, num_shards: int,
             schema_json: bool, step: str) -> list[str]:
    """Applies the mode, renames the temporary files into place and cleans up; returns final paths."""
    existing = layout.existing_files()
    if layout.mode == "error_if_exists" and existing:
        _delete_quietly([r["tmp"] for r in records])
        remove_tmp_dir(layout)
        shown = ", ".join(existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise FileExistsError(f"{step}: mode is error_if_exists and {len(existing)} file(s) already exist at "
                              f"{layout.prefix}: {shown}; delete them or use mode overwrite or append")
    records = list(records)
    schemas = [pa.ipc.read_schema(pa.py_buffer(r["schema"])) for r in records if r.get("schema")]
    logical = [pa.ipc.read_schema(pa.py_buffer(r["logical"])) for r in records if r.get("logical")]
    if num_shards and records and not layout.partitioned:
        present = {r["shard"] for r in records}
        empty_schema = unify(schemas)
        for shard in range(num_shards):
            if shard not in present:
                tmp = FileSystems.join(layout.tmp_dir, f"{uuid.uuid4().hex}{fmt.extension}{fmt.compression_suffix}")
                write_empty_file(fmt, tmp, empty_schema)
                records.append({"tmp": tmp, "rel": "", "shard": shard, "rows": 0, "schema": b""})
    by_rel: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_rel.setdefault(record["rel"], []).append(record)
    sources, targets = [], []
    for rel in sorted(by_rel):
        group = sorted(by_rel[rel], key=lambda r: (r["shard"] if r["shard"] is not None else -1, r["tmp"]))
        for i, record in enumerate(group):
            sources.append(record["tmp"])
            targets.append(layout.final_name(rel, i, len(group)))
    for folder in sorted({FileSystems.split(t)[0] for t in targets}):
        if FileSystems.get_scheme(folder) in (None, "file") and not os.path.isdir(folder):
            _mkdirs(folder)
    if sources:
        FileSystems.rename(sources, targets)
    if layout.mode == "overwrite":
        new = set(targets)
        _delete_quietly([p for p in existing if p not in new])
        if layout.partitioned:
            _remove_empty_partition_dirs(layout.directory)
    if schema_json and (logical or schemas):
        full = unify(logical or schemas)
        tmp = FileSystems.join(layout.tmp_dir, "schema.json")
        stream = FileSystems.create(tmp)
        stream.write(json.dumps(schema_to_json(full), indent=2).encode("utf-8") + b"\n")
        stream.close()
        FileSystems.rename([tmp], [layout.schema_path])
    elif layout.mode == "overwrite" and not records and FileSystems.exists(layout.schema_path):
        _delete_quietly([layout.schema_path])
    remove_tmp_dir(layout)
    return targets


def commit_streamed(record: dict[str, Any], layout: Layout) -> str:
    """Streaming writes: renames one bundle's temporary file to a final, unique name; returns it."""
    name = f"{layout.base}-{uuid.uuid4().hex[:16]}{layout.extension}{layout.compression_suffix}"
    target = (FileSystems.join(layout.directory, record["rel"], name) if record["rel"]
              else FileSystems.join(layout.directory, name))
    folder = FileSystems.split(target)[0]
    if FileSystems.get_scheme(folder) in (None, "file") and not os.path.isdir(folder):
        _mkdirs(folder)
    FileSystems.rename([record["tmp"]], [target])
    return target


def dicts_to_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    """Dead letters or plain dicts arriving at a writer, as one batch."""
    from beam_etl.io._file_json import objects_to_table
    from beam_etl.ops.dlq import dead_letters_to_batch, is_dead_letter

    if all(is_dead_letter(r) for r in rows):
        return dead_letters_to_batch(rows)
    table = objects_to_table([{k: json_safe(v) for k, v in r.items()} for r in rows])
    table = table.combine_chunks()
    batches = table.to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([])
