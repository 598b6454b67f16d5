"""File connectors: CSV, JSON Lines, JSON, text and Parquet sources and sinks.

Every transform returns ``(output, dead_letters)``. Reads expand their paths into work items
(byte ranges of ~``split_size``, or Parquet row groups), reshuffle them and read each item, so
a large file is read in parallel; compressed files (and CSV with ``newlines_in_values``) are
read whole. Writes go to a hidden temporary folder and are renamed into place in one final
step. All file access goes through Beam's ``FileSystems``: local paths, ``s3://``, ``gs://``...

See ``docs/connectors-files.md`` for every option and YAML examples.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from apache_beam.transforms.window import GlobalWindows
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from beam_etl import registry
from beam_etl.batch import DEFAULT_BATCH_ROWS, batch_nbytes, concat_to_batch, row_as_record
from beam_etl.hashing import hash_columns, partition_of
from beam_etl.io import _file_common as common
from beam_etl.io._file_csv import CsvFormat, CsvReader, infer_types, read_header, read_sample
from beam_etl.io._file_json import JsonlReader, JsonReader
from beam_etl.io._file_text import CHUNK_MODES, ParquetReader, TextReader, check_regex
from beam_etl.io._file_write import (
    MODES,
    PARQUET_COMPRESSIONS,
    TEXT_COMPRESSIONS,
    FileFormat,
    JsonFormat,
    JsonlFormat,
    Layout,
    ParquetFormat,
    ShardWriter,
    commit_streamed,
    dicts_to_batch,
    finalize,
    new_token,
    shard_schema,
)
from beam_etl.io._file_write import CsvFormat as CsvWriteFormat
from beam_etl.ops.context import get_run_context
from beam_etl.ops.dlq import DLQ_TAG, dead_letter
from beam_etl.ops.metrics import StepMetrics, timed_process
from beam_etl.ops.progress import report_read
from beam_etl.ops.secrets import redact_mapping
from beam_etl.ops.state import IncrementalConfig, RecordPendingState, files_state, incremental_start

__all__ = [
    "ReadFromCsv", "ReadFromJson", "ReadFromJsonl", "ReadFromParquet", "ReadFromText",
    "WriteToCsv", "WriteToJson", "WriteToJsonl", "WriteToParquet",
    "CsvReadConfig", "JsonReadConfig", "JsonlReadConfig", "ParquetReadConfig", "TextReadConfig",
    "CsvWriteConfig", "JsonWriteConfig", "JsonlWriteConfig", "ParquetWriteConfig",
]


# ============================================================================ configs

def _single_char(value: str | None, field: str, allow_none: bool) -> str | None:
    if value is None or value == "" or value is False:
        if allow_none:
            return None
        raise ValueError(f"{field} must be one character, e.g. ',' or '|'")
    if not isinstance(value, str) or len(value) != 1 or value in "\r\n":
        raise ValueError(f"{field} must be one character other than a newline (got {value!r})")
    return value


class _PathConfig(registry.StrictConfig):
    model_config = ConfigDict(populate_by_name=True)

    path: str | list[str] = Field(description="A file, a glob, a folder, or a list of them (local or any Beam URI).")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | list[str]) -> str | list[str]:
        common.as_path_list(value)
        return value


class _ReadConfig(_PathConfig):
    batch_rows: int = Field(DEFAULT_BATCH_ROWS, gt=0, description="Maximum rows per emitted batch.")
    split_size: int = Field(common.DEFAULT_SPLIT_SIZE, gt=0,
                            description="Target bytes per parallel work item (uncompressed files).")
    incremental: IncrementalConfig | None = Field(
        None, description="{mode: new_files}: read only files not read by an earlier committed run "
                          "(a file whose size or modification time changed counts as new).")

    @field_validator("incremental")
    @classmethod
    def _incremental(cls, value: IncrementalConfig | None) -> IncrementalConfig | None:
        if value is not None and value.mode != "new_files":
            raise ValueError("file sources support incremental mode new_files only (a cursor_field needs a "
                             "database source)")
        return value


class _SchemaMixin(registry.StrictConfig):
    model_config = ConfigDict(populate_by_name=True)

    columns: list[str] | None = Field(None, description="Columns to keep, in this order (projection).")
    schema_: dict[str, str] | None = Field(
        None, alias="schema",
        description="Column -> type (string, int, float, bool, date, timestamp); others are inferred.")

    @field_validator("columns")
    @classmethod
    def _columns(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("columns must name at least one column (or be left out)")
            dupes = sorted({c for c in value if value.count(c) > 1})
            if dupes:
                raise ValueError(f"columns lists {dupes} more than once")
        return value

    @field_validator("schema_")
    @classmethod
    def _schema(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for column, name in (value or {}).items():
            common.type_from_name(name, f"schema.{column}")
        return value


def _check_encoding(value: str) -> str:
    common.check_encoding(value)
    return value


class _TextInputConfig(_ReadConfig):
    """Encoding and compression of text-based inputs (CSV, JSON, text)."""

    encoding: str = Field("utf-8", description="Any Python codec; a UTF-8 byte-order mark is dropped.")
    compression: str = Field("auto", description="auto (by extension), none, gzip, bz2 or xz.")

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, value: str) -> str:
        return _check_encoding(value)

    @field_validator("compression")
    @classmethod
    def _compression(cls, value: str) -> str:
        return common.check_compression(value)


class CsvReadConfig(_TextInputConfig, _SchemaMixin):
    """Reads CSV files into Arrow batches; malformed rows and values that do not cast go to the DLQ."""

    header: bool = Field(True, description="The first line holds the column names.")
    column_names: list[str] | None = Field(None, description="Column names (required to name columns without "
                                                             "a header; with a header, they replace it).")
    delimiter: str = Field(",", description="Field delimiter (one character).")
    quote_char: str | None = Field('"', description="Quote character; null or '' disables quoting.")
    escape_char: str | None = Field(None, description="Escape character (none by default).")
    newlines_in_values: bool = Field(False, description="Quoted values may hold newlines (files read whole).")
    null_values: list[str] = Field(list(common.DEFAULT_NULL_VALUES), description="Strings read as null.")

    @field_validator("delimiter")
    @classmethod
    def _delimiter(cls, value: str) -> str | None:
        return _single_char(value, "delimiter", False)

    @field_validator("quote_char", "escape_char", mode="before")
    @classmethod
    def _optional_char(cls, value: Any, info: Any) -> str | None:
        return _single_char(value, info.field_name, True)

    @field_validator("column_names")
    @classmethod
    def _names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("column_names must name at least one column")
            dupes = sorted({c for c in value if value.count(c) > 1})
            if dupes:
                raise ValueError(f"column_names lists {dupes} more than once")
        return value

    @model_validator(mode="after")
    def _chars(self) -> CsvReadConfig:
        if self.quote_char and self.quote_char == self.delimiter:
            raise ValueError(f"quote_char {self.quote_char!r} must differ from delimiter")
        if self.escape_char and self.escape_char in (self.delimiter, self.quote_char):
            raise ValueError(f"escape_char {self.escape_char!r} must differ from delimiter and quote_char")
        return self


class JsonlReadConfig(_TextInputConfig, _SchemaMixin):
    """Reads JSON Lines files (one object per line); malformed lines go to the DLQ."""

    encoding: str = Field("utf-8", description="Text encoding (JSON is normally UTF-8).")


class JsonReadConfig(JsonlReadConfig):
    """Reads JSON files holding an array of objects (or one object); each file is read whole."""


class TextReadConfig(_TextInputConfig):
    """Reads text files as lines (``line``), regex fields, or chunks (``text``)."""

    encoding: str = Field("utf-8", description="Any Python codec.")
    skip_blank_lines: bool = Field(True, description="Drop lines that are empty or only whitespace.")
    regex: str | None = Field(None, description="Named groups (?P<name>...) become string columns; lines that do "
                                                "not match go to the DLQ.")
    schema_: dict[str, str] | None = Field(None, alias="schema",
                                           description="With regex: group -> type to cast extracted fields to.")
    chunk_by: str | None = Field(None, description="lines, size or paragraph: emit a `text` column of chunks.")
    chunk_size: int = Field(4096, gt=0, description="Maximum chunk size in bytes (with chunk_by).")

    @field_validator("chunk_by")
    @classmethod
    def _chunk_by(cls, value: str | None) -> str | None:
        if value is not None and value not in CHUNK_MODES:
            raise ValueError(f"chunk_by {value!r} is not one of {list(CHUNK_MODES)}")
        return value

    @field_validator("regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            check_regex(value)
        return value

    @model_validator(mode="after")
    def _combination(self) -> TextReadConfig:
        if self.regex and self.chunk_by:
            raise ValueError("regex and chunk_by cannot be combined: regex works on lines, chunk_by on chunks")
        if self.schema_:
            if not self.regex:
                raise ValueError("schema needs regex: it types the fields the regex extracts")
            groups = check_regex(self.regex)
            unknown = [c for c in self.schema_ if c not in groups]
            if unknown:
                raise ValueError(f"schema names {unknown}, which are not groups of regex (groups: {groups})")
            for column, name in self.schema_.items():
                common.type_from_name(name, f"schema.{column}")
        return self


class ParquetReadConfig(_ReadConfig):
    """Reads Parquet files, split by row groups."""

    columns: list[str] | None = Field(None, description="Columns to read (projection).")


class _WriteConfig(_PathConfig):
    path: str = Field(description="A file prefix (out/orders -> out/orders-00000-of-00002.ext) or a folder "
                                  "ending in / (out/orders/ -> out/orders/part-00000-of-00002.ext).")
    mode: str = Field("overwrite", description="overwrite, append or error_if_exists.")
    num_shards: int = Field(0, ge=0, description="0: one file per bundle (no shuffle); N: exactly N files.")
    shard_by: list[str] | None = Field(
        None, description="With num_shards: rows with equal values of these columns go to the same shard "
                          "(stable 64-bit hash), so each key's rows sit in one file.")

    @model_validator(mode="after")
    def _shard_by_needs_shards(self) -> Any:
        if self.shard_by is not None:
            if not self.shard_by:
                raise ValueError("shard_by must name at least one column (or be left out)")
            if not self.num_shards:
                raise ValueError("shard_by needs num_shards (the number of files to hash the rows into)")
        return self
    schema_json_: bool = Field(False, alias="schema_json",
                               description="Also write <prefix>.schema.json (the Arrow schema as JSON).")

    @field_validator("path", mode="before")
    @classmethod
    def _one_path(cls, value: Any) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"path must be one output prefix or folder (got {value!r})")
        return value

    @field_validator("mode")
    @classmethod
    def _mode(cls, value: str) -> str:
        if value not in MODES:
            raise ValueError(f"mode {value!r} is not one of {list(MODES)}")
        return value


class _TextWriteConfig(_WriteConfig):
    compression: str = Field("none", description="none, gzip, bz2 or xz (adds .gz/.bz2/.xz to names).")

    @field_validator("compression")
    @classmethod
    def _compression(cls, value: str) -> str:
        return common.check_compression(value, TEXT_COMPRESSIONS)


class ParquetWriteConfig(_WriteConfig):
    """Writes batches to Parquet files, optionally Hive-partitioned."""

    compression: str = Field("snappy", description="snappy, zstd, gzip or none.")
    row_group_size: int | None = Field(None, gt=0, description="Rows per row group (default 1,048,576).")
    partition_by: list[str] | None = Field(None, description="Columns that become col=value/ folders.")

    @field_validator("compression")
    @classmethod
    def _compression(cls, value: str) -> str:
        value = (value or "").lower()
        if value == "uncompressed":
            value = "none"
        if value not in PARQUET_COMPRESSIONS:
            raise ValueError(f"compression {value!r} is not one of {list(PARQUET_COMPRESSIONS)}")
        return value

    @field_validator("partition_by", mode="before")
    @classmethod
    def _partition_by(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if value is not None and not value:
            raise ValueError("partition_by must name at least one column (or be left out)")
        return value


class CsvWriteConfig(_TextWriteConfig):
    """Writes batches to CSV files; nested values are written as JSON text."""

    header: bool = Field(True, description="Write a header line in each file.")
    delimiter: str = Field(",", description="Field delimiter (one character).")

    @field_validator("delimiter")
    @classmethod
    def _delimiter(cls, value: str) -> str | None:
        return _single_char(value, "delimiter", False)


class JsonlWriteConfig(_TextWriteConfig):
    """Writes batches to JSON Lines files (one object per row)."""

    json_fields: list[str] = Field(default_factory=list, description="String columns holding JSON text, written "
                                                                     "as nested JSON instead of quoted strings.")


class JsonWriteConfig(JsonlWriteConfig):
    """Writes batches to JSON files, each holding one array of objects."""

    pretty: bool = Field(False, description="Indent the JSON (2 spaces).")


def _validate(model: type[registry.StrictConfig], values: dict[str, Any], owner: str) -> Any:
    """Validates keyword config with ``model``; the ValueError names each bad field and value."""
    try:
        return model.model_validate(values)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            field = ".".join(str(p) for p in e["loc"]) or "(config)"
            field = re.sub(r"\bschema_(json_)?\b", lambda m: "schema_json" if m.group(1) else "schema", field)
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                allowed = sorted(f.alias or n for n, f in model.model_fields.items())
                lines.append(f"{field}: unknown option; allowed: {allowed}")
            elif e["type"] == "missing":
                lines.append(f"{field}: required")
            else:
                lines.append(f"{field}: {msg} (got {e.get('input')!r})")
        raise ValueError(f"{owner}: invalid config:\n  " + "\n  ".join(lines)) from None


def _display(config: registry.StrictConfig) -> dict[str, Any]:
    values = redact_mapping(config.model_dump(by_alias=True, exclude_none=True))
    return {k: v if isinstance(v, (str, int, float, bool)) else str(v) for k, v in values.items()}


# ============================================================================ reads

FILES_READ_TAG = "files_read"


class _Planner:
    """Expands the path patterns into work items at run time (callable, picklable)."""

    def __init__(self, kind: str, split_size: int, compression: str, splittable: bool) -> None:
        self.kind = kind
        self.split_size = split_size
        self.compression = compression
        self.splittable = splittable
        self.already_read: list[dict[str, Any]] | None = None  # incremental new_files: the committed set
        self.filesystems: common.WorkerFileSystems | None = None

    def __call__(self, patterns: tuple[str, ...]) -> Iterator[Any]:
        if self.filesystems is not None:
            self.filesystems.ensure()
        found = common.match_files(list(patterns))
        if self.already_read is not None:  # one listing decides both what is read and what is recorded
            listed = [_file_entry(m) for m in found]
            todo, processed = files_state(self.already_read, listed)
            wanted = {e["path"] for e in todo}
            found = [m for m in found if m.path in wanted]
            yield beam.pvalue.TaggedOutput(FILES_READ_TAG, processed)
        for meta in found:
            if self.kind == "parquet":
                yield from ParquetReader.plan(meta, self.split_size)
            else:
                codec = common.resolve_compression(meta.path, self.compression)
                yield from common.plan_ranges(meta, self.split_size, codec, self.splittable)


def _file_entry(meta: Any) -> dict[str, Any]:
    return {"path": meta.path, "size": int(meta.size_in_bytes or 0), "mtime": getattr(meta, "last_updated_in_seconds",
                                                                                       None)}


class _ReadDoFn(beam.DoFn):
    """Reads one work item; counts rows out, dead letters and bytes; reports progress."""

    def __init__(self, reader: Any, step: str, filesystems: common.WorkerFileSystems | None = None) -> None:
        self._reader = reader
        self._step = step
        self._filesystems = filesystems

    def setup(self) -> None:
        if self._filesystems is not None:
            self._filesystems.ensure()
        self._metrics = StepMetrics(self._step)

    @timed_process
    def process(self, item: common.WorkItem) -> Iterator[Any]:
        metrics = self._metrics
        for out in self._reader.read(item):
            if isinstance(out, dict):
                metrics.records_failed.inc()
                yield beam.pvalue.TaggedOutput(DLQ_TAG, out)
                continue
            batch, nbytes = out
            if nbytes:
                metrics.bytes_in.inc(nbytes)
            rows = batch.num_rows if batch is not None else 0
            if rows or nbytes:
                report_read(rows, nbytes, item.path)
            if rows:
                metrics.records_out.inc(rows)
                yield batch


class _ReadFiles(beam.PTransform):
    """Base of the file sources: validation, path matching, planning and the read DoFn."""

    config_model: ClassVar[type[_ReadConfig]]
    kind: ClassVar[str] = "lines"

    def __init__(self, path: str | list[str], *, step: str | None = None, **options: Any) -> None:
        super().__init__()
        name = type(self).__name__
        self.config = _validate(self.config_model, {"path": path, **options}, name)
        self.step = step or name
        self.patterns = tuple(common.as_path_list(self.config.path))
        self._ctx = get_run_context()
        self._files = self._match_at_construction()
        self._prepare()

    def _match_at_construction(self) -> list[Any]:
        """Local patterns must match now; remote ones are matched now when that works."""
        files = []
        for pattern in self.patterns:
            try:
                files.extend(common.match_files([pattern]))
            except ValueError as exc:
                if common.is_local(pattern) or "matches no file" in str(exc):
                    raise ValueError(f"{type(self).__name__}: {exc}") from None
        return files

    def _first_file(self) -> str:
        if not self._files:
            raise ValueError(f"{type(self).__name__}: path: cannot list {list(self.patterns)} while building the "
                             "pipeline; give `schema` (and `column_names`) so no sample has to be read")
        return self._files[0].path

    def _prepare(self) -> None:
        """Construction-time checks that need the files (header, schema sample)."""

    def _reader(self) -> Any:
        """Abstract: each format's reader (CSV, JSON, text, Parquet)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _reader()")

    def _splittable(self) -> bool:
        return True

    def display_data(self) -> dict[str, Any]:
        return _display(self.config)

    def expand(self, pbegin: beam.pvalue.PBegin) -> tuple[beam.PCollection, beam.PCollection]:
        planner = _Planner(self.kind, self.config.split_size, getattr(self.config, "compression", "none"),
                           self._splittable())
        filesystems = common.WorkerFileSystems(pbegin.pipeline.options)
        planner.filesystems = filesystems
        start = None
        if self.config.incremental is not None:
            start = incremental_start(self.step, self.config.incremental)
            planner.already_read = list(start.start or [])
        planned = (
            pbegin
            | "Paths" >> beam.Create([self.patterns])
            | "Plan" >> beam.FlatMap(planner).with_outputs(FILES_READ_TAG, main="items")
        )
        if start is not None:
            _ = planned[FILES_READ_TAG] | "RecordFilesRead" >> RecordPendingState(start)
        items = planned.items | "Distribute" >> beam.Reshuffle()
        results = items | "Read" >> beam.ParDo(_ReadDoFn(self._reader(), self.step, filesystems)).with_outputs(
            DLQ_TAG, main="output")
        return results.output, results[DLQ_TAG]


class ReadFromCsv(_ReadFiles):
    """Reads CSV files; see :class:`CsvReadConfig` for the options.

    Types come from ``schema`` or are inferred at construction from the first MiB of the first
    file. Rows with the wrong number of fields (``parse``) and values that do not cast
    (``type``) go to the dead-letter output with ``source`` = ``path:line``.
    """

    config_model = CsvReadConfig

    def _prepare(self) -> None:
        c = self.config
        name = type(self).__name__
        self.fmt = CsvFormat(
            header=c.header, column_names=tuple(c.column_names) if c.column_names else None,
            delimiter=c.delimiter, quote_char=c.quote_char, escape_char=c.escape_char, encoding=c.encoding,
            newlines_in_values=c.newlines_in_values, compression=c.compression, null_values=tuple(c.null_values),
        )
        schema = c.schema_ or {}
        sample_path = None
        if c.column_names:
            names = list(c.column_names)
            fixed = list(names)
        elif c.header:
            names, sample_path = self._first_header()
            fixed = None
        else:
            sample_path = self._first_file()
            names = self._autogenerate_names(sample_path)
            fixed = list(names)
        where = f"the header of {sample_path}" if sample_path and c.header and not c.column_names else "column_names"
        if not c.header and not c.column_names:
            where = f"the columns of {sample_path} (named f0, f1, ...)"
        for field, values in (("columns", c.columns or []), ("schema", list(schema))):
            unknown = [v for v in values if v not in names]
            if unknown:
                raise ValueError(f"{name}: {field}: {unknown} not found in {where}; columns are {names}")
        out_columns = list(c.columns or names)
        types: dict[str, pa.DataType] = {}
        to_infer = [col for col in out_columns if col not in schema]
        if to_infer:
            sample_path = sample_path or self._first_file()
            sample = read_sample(sample_path, self.fmt, names)
            types.update(infer_types(sample, to_infer))
        for col in out_columns:
            if col in schema:
                types[col] = common.type_from_name(schema[col], f"schema.{col}")
            types.setdefault(col, pa.string())
        self.names = fixed
        self.out_columns = out_columns
        self.types = {k: v for k, v in types.items() if v != pa.string()}
        self.output_schema = pa.schema([(col, types[col]) for col in out_columns])

    def _first_header(self) -> tuple[list[str], str]:
        path = self._first_file()
        for meta in self._files[:20]:
            header = read_header(meta.path, self.fmt)
            if header:
                return header, meta.path
        raise ValueError(f"{type(self).__name__}: path: {path} has no header line (the file is empty); give "
                         "column_names, or point path at a file with a header")

    def _autogenerate_names(self, path: str) -> list[str]:
        item = common.WorkItem(path, 0, None, common.resolve_compression(path, self.fmt.compression))
        for block in common.utf8_blocks(item, self.fmt.encoding, None, 64 * 1024):
            first = block.split(b"\n", 1)[0] + b"\n"
            reader = pa_csv.open_csv(pa.py_buffer(first), read_options=pa_csv.ReadOptions(
                use_threads=False, autogenerate_column_names=True), parse_options=self.fmt.parse_options())
            return list(reader.schema.names)
        raise ValueError(f"{type(self).__name__}: path: {path} is empty; give column_names and schema")

    def _splittable(self) -> bool:
        return self.fmt.splittable

    def _reader(self) -> CsvReader:
        return CsvReader(self.fmt, self.names, self.out_columns, self.types, self.config.batch_rows, self.step,
                         self._ctx)


class _JsonBaseRead(_ReadFiles):
    def _prepare(self) -> None:
        self.types = {col: common.type_from_name(t, f"schema.{col}") for col, t in (self.config.schema_ or {}).items()}
        self.columns = list(self.config.columns) if self.config.columns else None


class ReadFromJsonl(_JsonBaseRead):
    """Reads JSON Lines files; see :class:`JsonlReadConfig`. Nested objects become structs, arrays lists."""

    config_model = JsonlReadConfig

    def _splittable(self) -> bool:
        return common.ascii_compatible(self.config.encoding)

    def _reader(self) -> JsonlReader:
        return JsonlReader(self.columns, self.types, self.config.batch_rows, self.config.encoding, self.step,
                           self._ctx)


class ReadFromJson(_JsonBaseRead):
    """Reads JSON files holding an array of objects (or one object), each file whole."""

    config_model = JsonReadConfig

    def _splittable(self) -> bool:
        return False

    def _reader(self) -> JsonReader:
        return JsonReader(self.columns, self.types, self.config.batch_rows, self.config.encoding, self.step,
                          self._ctx)


class ReadFromText(_ReadFiles):
    """Reads text files as a ``line`` column, regex fields, or ``text`` chunks; see :class:`TextReadConfig`."""

    config_model = TextReadConfig

    def _prepare(self) -> None:
        c = self.config
        self.types = {col: common.type_from_name(t, f"schema.{col}") for col, t in (c.schema_ or {}).items()}

    def _splittable(self) -> bool:
        return self.config.chunk_by is None and common.ascii_compatible(self.config.encoding)

    def _reader(self) -> TextReader:
        c = self.config
        return TextReader(c.encoding, c.skip_blank_lines, c.regex, c.chunk_by, c.chunk_size, self.types,
                          c.batch_rows, self.step, self._ctx)


class ReadFromParquet(_ReadFiles):
    """Reads Parquet files, one work item per group of row groups; see :class:`ParquetReadConfig`."""

    config_model = ParquetReadConfig
    kind = "parquet"

    def _prepare(self) -> None:
        columns = self.config.columns
        if columns and self._files:
            path = self._files[0].path
            with common.open_read(path) as f:
                names = pq.ParquetFile(f).schema_arrow.names
            unknown = [c for c in columns if c not in names]
            if unknown:
                raise ValueError(f"{type(self).__name__}: columns: {unknown} are not in {path}; columns are {names}")

    def _reader(self) -> ParquetReader:
        return ParquetReader(list(self.config.columns) if self.config.columns else None, self.config.batch_rows,
                             self.step, self._ctx)


# ============================================================================ writes

class _ToBatchesDoFn(beam.DoFn):
    """Accepts RecordBatches, Tables and dicts (dead letters or plain records) and emits batches."""

    MAX_DICTS = 10_000

    def start_bundle(self) -> None:
        self._dicts: list[dict[str, Any]] = []

    def process(self, element: Any) -> Iterator[pa.RecordBatch]:
        if isinstance(element, pa.RecordBatch):
            yield element
        elif isinstance(element, pa.Table):
            yield concat_to_batch(element)
        elif isinstance(element, dict):
            self._dicts.append(element)
            if len(self._dicts) >= self.MAX_DICTS:
                yield dicts_to_batch(self._dicts)
                self._dicts = []
        else:
            raise TypeError(f"file writers take pyarrow RecordBatches (or dicts), not {type(element).__name__}")

    def finish_bundle(self) -> Iterator[Any]:
        if self._dicts:
            yield GlobalWindows.windowed_value(dicts_to_batch(self._dicts))
            self._dicts = []


def _count_in(metrics: StepMetrics, batch: pa.RecordBatch) -> None:
    metrics.batches_in.inc()
    metrics.records_in.inc(batch.num_rows)
    metrics.bytes_in.inc(batch_nbytes(batch))


class _WriteBundleDoFn(beam.DoFn):
    """num_shards = 0: each bundle writes its own temporary file(s)."""

    def __init__(self, fmt: FileFormat, layout: Layout, partition_by: list[str], step: str, ctx: Any) -> None:
        self._fmt, self._layout, self._partition_by, self._step, self._ctx = fmt, layout, partition_by, step, ctx

    filesystems: common.WorkerFileSystems | None = None  # set by _WriteFiles.expand

    def setup(self) -> None:
        if self.filesystems is not None:
            self.filesystems.ensure()
        self._metrics = StepMetrics(self._step)

    def start_bundle(self) -> None:
        self._writer = ShardWriter(self._fmt, self._layout, self._partition_by, self._step, self._ctx)

    @timed_process
    def process(self, batch: pa.RecordBatch) -> Iterator[Any]:
        _count_in(self._metrics, batch)
        for letter in self._writer.add(batch):
            self._metrics.records_failed.inc()
            yield beam.pvalue.TaggedOutput(DLQ_TAG, letter)

    def finish_bundle(self) -> Iterator[Any]:
        letters = list(self._writer.close())
        for letter in letters:
            self._metrics.records_failed.inc()
            yield beam.pvalue.TaggedOutput(DLQ_TAG, GlobalWindows.windowed_value(letter))
        self._metrics.records_out.inc(self._writer.rows_written)
        for record in self._writer.records:
            yield GlobalWindows.windowed_value(record)


class _AssignShardDoFn(beam.DoFn):
    """Round-robin batches to shards, or with ``shard_by`` split each batch by a hash of those columns."""

    def __init__(self, num_shards: int, shard_by: list[str] | None = None, step: str = "",
                 ctx: Any = None) -> None:
        self._n = num_shards
        self._shard_by = shard_by or []
        self._step, self._ctx = step, ctx

    def start_bundle(self) -> None:
        self._next = random.randrange(self._n)

    def process(self, batch: pa.RecordBatch) -> Iterator[Any]:
        if not batch.num_rows:
            return
        if not self._shard_by:
            yield self._next % self._n, batch
            self._next += 1
            return
        missing = [c for c in self._shard_by if c not in batch.schema.names]
        if missing:  # these rows cannot be placed: each goes to the DLQ, naming the column
            for i in range(batch.num_rows):
                yield beam.pvalue.TaggedOutput(DLQ_TAG, dead_letter(
                    row_as_record(batch, i), error_type="validation", step=self._step,
                    error=f"shard_by column(s) {missing} missing from the record (columns: {batch.schema.names})",
                    exception="KeyError", ctx=self._ctx))
            return
        shards = partition_of(hash_columns([batch.column(c) for c in self._shard_by], batch.num_rows), self._n)
        for shard in np.unique(shards):
            yield int(shard), batch.filter(pa.array(shards == shard))


class _WriteShardDoFn(_WriteBundleDoFn):
    """num_shards = N: one group per shard, written with the shard's unified schema."""

    def start_bundle(self) -> None:
        pass

    @timed_process
    def process(self, element: tuple[int, Iterable[pa.RecordBatch]]) -> Iterator[Any]:  # type: ignore[override]
        shard, batches = element  # a GroupByKey iterable may be walked twice: schema first, then rows
        schema = shard_schema(self._fmt, batches)
        writer = ShardWriter(self._fmt, self._layout, self._partition_by, self._step, self._ctx, shard, schema)
        for batch in batches:
            _count_in(self._metrics, batch)
            for letter in writer.add(batch):
                self._metrics.records_failed.inc()
                yield beam.pvalue.TaggedOutput(DLQ_TAG, letter)
        for letter in writer.close():
            self._metrics.records_failed.inc()
            yield beam.pvalue.TaggedOutput(DLQ_TAG, letter)
        self._metrics.records_out.inc(writer.rows_written)
        yield from writer.records

    def finish_bundle(self) -> Iterator[Any]:
        return iter(())


class _FinalizeDoFn(beam.DoFn):
    """Runs once (on an impulse) with every written file's record as a side input: renames into place."""

    def __init__(self, fmt: FileFormat, layout: Layout, num_shards: int, schema_json: bool, step: str) -> None:
        self._fmt, self._layout, self._num_shards, self._schema_json, self._step = (
            fmt, layout, num_shards, schema_json, step)

    filesystems: common.WorkerFileSystems | None = None  # set by _WriteFiles.expand

    def setup(self) -> None:
        if self.filesystems is not None:
            self.filesystems.ensure()

    def process(self, _impulse: bytes, records: Iterable[dict[str, Any]]) -> Iterator[str]:
        yield from finalize(list(records), self._fmt, self._layout, self._num_shards, self._schema_json, self._step)


class _CommitStreamedDoFn(beam.DoFn):
    """Streaming: each bundle's files are moved into place as soon as the bundle has written them."""

    def __init__(self, layout: Layout) -> None:
        self._layout = layout

    filesystems: common.WorkerFileSystems | None = None  # set by _WriteFiles.expand

    def setup(self) -> None:
        if self.filesystems is not None:
            self.filesystems.ensure()

    def process(self, record: dict[str, Any]) -> Iterator[str]:
        yield commit_streamed(record, self._layout)


class _WriteFiles(beam.PTransform):
    """Base of the file sinks: validation, layout, sharding, atomic finalisation."""

    config_model: ClassVar[type[_WriteConfig]]

    def __init__(self, path: str, *, step: str | None = None, **options: Any) -> None:
        super().__init__()
        name = type(self).__name__
        self.config = _validate(self.config_model, {"path": path, **options}, name)
        self.step = step or name
        self._ctx = get_run_context()
        self.fmt = self._format()
        self.partition_by = list(getattr(self.config, "partition_by", None) or [])
        self.layout = Layout(self.config.path, self.fmt.extension, self.fmt.compression_suffix,
                             bool(self.partition_by), self.config.mode, new_token())
        if not common.is_local(self.config.path):
            problem = common.object_store_problem(self.config.path)
            if "does not exist" in problem:  # found out now rather than after the shards are written
                raise ValueError(f"{name}: path: cannot write {self.config.path!r}: {problem}")
        if self.config.mode == "error_if_exists" and common.is_local(self.config.path):
            existing = self.layout.existing_files()
            if existing:
                raise ValueError(f"{name}: mode: error_if_exists, but {len(existing)} file(s) already exist at "
                                 f"{self.layout.prefix} (e.g. {existing[0]}); delete them or use overwrite/append")

    def _format(self) -> FileFormat:
        """Abstract: each writer's file format."""
        raise NotImplementedError(f"{type(self).__name__} must implement _format()")

    def display_data(self) -> dict[str, Any]:
        return _display(self.config)

    def expand(self, pcoll: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        c = self.config
        filesystems = common.WorkerFileSystems(pcoll.pipeline.options)
        batches = pcoll | "ToBatches" >> beam.ParDo(_ToBatchesDoFn())
        if not pcoll.is_bounded:
            return self._expand_unbounded(batches, filesystems)
        if c.num_shards:
            writer: _WriteBundleDoFn = _WriteShardDoFn(self.fmt, self.layout, self.partition_by, self.step, self._ctx)
            writer.filesystems = filesystems
            assigned = batches | "AssignShards" >> beam.ParDo(
                _AssignShardDoFn(c.num_shards, c.shard_by, self.step, self._ctx)).with_outputs(DLQ_TAG, main="shards")
            written = (
                assigned.shards
                | "GroupShards" >> beam.GroupByKey()
                | "WriteShards" >> beam.ParDo(writer).with_outputs(DLQ_TAG, main="files")
            )
            unplaced = assigned[DLQ_TAG]
        else:
            writer = _WriteBundleDoFn(self.fmt, self.layout, self.partition_by, self.step, self._ctx)
            writer.filesystems = filesystems
            written = batches | "WriteBundles" >> beam.ParDo(writer).with_outputs(DLQ_TAG, main="files")
            unplaced = None
        finalizer = _FinalizeDoFn(self.fmt, self.layout, c.num_shards, c.schema_json_, self.step)
        finalizer.filesystems = filesystems
        # One finalize after every file is written: an impulse with the files as a side input (a
        # CombineGlobally/ToList would add two stages and a dozen transforms to every run).
        final = (
            pcoll.pipeline
            | "FinalizeOnce" >> beam.Impulse()
            | "Finalize" >> beam.ParDo(finalizer, beam.pvalue.AsList(written.files))
        )
        if unplaced is not None:
            return final, (written[DLQ_TAG], unplaced) | "DeadLetters" >> beam.Flatten()
        return final, written[DLQ_TAG]

    def _expand_unbounded(self, batches: beam.PCollection,
                          filesystems: common.WorkerFileSystems) -> tuple[beam.PCollection, beam.PCollection]:
        """Unbounded input: every bundle commits its own uniquely named files (no end-of-run rename)."""
        c, name = self.config, type(self).__name__
        if c.mode != "append":
            raise ValueError(f"{name}: mode: {c.mode!r} replaces files when a bounded run ends; a streaming run "
                             "adds files as it goes: use mode: append")
        if c.num_shards or getattr(c, "schema_json_", False):
            raise ValueError(f"{name}: num_shards and schema_json need a bounded input (they act when the run "
                             "ends); leave them out for a streaming run (partition_by works)")
        writer = _WriteBundleDoFn(self.fmt, self.layout, self.partition_by, self.step, self._ctx)
        writer.filesystems = filesystems
        written = batches | "WriteBundles" >> beam.ParDo(writer).with_outputs(DLQ_TAG, main="files")
        committer = _CommitStreamedDoFn(self.layout)
        committer.filesystems = filesystems
        return written.files | "Commit" >> beam.ParDo(committer), written[DLQ_TAG]


class WriteToParquet(_WriteFiles):
    """Writes Parquet files; see :class:`ParquetWriteConfig`."""

    config_model = ParquetWriteConfig

    def _format(self) -> FileFormat:
        return ParquetFormat(self.config.compression, self.config.row_group_size)


class WriteToCsv(_WriteFiles):
    """Writes CSV files; see :class:`CsvWriteConfig`."""

    config_model = CsvWriteConfig

    def _format(self) -> FileFormat:
        return CsvWriteFormat(self.config.compression, self.config.header, self.config.delimiter)


class WriteToJsonl(_WriteFiles):
    """Writes JSON Lines files; see :class:`JsonlWriteConfig`."""

    config_model = JsonlWriteConfig

    def _format(self) -> FileFormat:
        return JsonlFormat(self.config.compression, list(self.config.json_fields))


class WriteToJson(_WriteFiles):
    """Writes JSON files (one array per file); see :class:`JsonWriteConfig`."""

    config_model = JsonWriteConfig

    def _format(self) -> FileFormat:
        return JsonFormat(self.config.compression, list(self.config.json_fields), self.config.pretty)


# ============================================================================ registry

def _build(cls: type[_ReadFiles] | type[_WriteFiles], config: registry.StrictConfig,
           ctx: registry.BuildContext) -> beam.PTransform:
    values = config.model_dump(by_alias=True)
    path = values.pop("path")
    return cls(path, step=ctx.step_name, **values)


_REGISTRATIONS: tuple[tuple[str, str, type, type[registry.StrictConfig], str], ...] = (
    ("source", "ReadFromCsv", ReadFromCsv, CsvReadConfig,
     "Reads CSV files (globs, gzip/bz2/xz, split for parallel reads); bad rows go to the DLQ."),
    ("source", "ReadFromJsonl", ReadFromJsonl, JsonlReadConfig,
     "Reads JSON Lines files (one object per line); malformed lines go to the DLQ."),
    ("source", "ReadFromJson", ReadFromJson, JsonReadConfig,
     "Reads JSON files holding an array of objects (or one object)."),
    ("source", "ReadFromText", ReadFromText, TextReadConfig,
     "Reads text files as lines, regex-extracted fields or chunks."),
    ("source", "ReadFromParquet", ReadFromParquet, ParquetReadConfig,
     "Reads Parquet files, split by row groups."),
    ("sink", "WriteToParquet", WriteToParquet, ParquetWriteConfig,
     "Writes Parquet files (sharded, optionally Hive-partitioned), renamed into place atomically."),
    ("sink", "WriteToCsv", WriteToCsv, CsvWriteConfig,
     "Writes CSV files (sharded, optionally compressed), renamed into place atomically."),
    ("sink", "WriteToJsonl", WriteToJsonl, JsonlWriteConfig,
     "Writes JSON Lines files (sharded, optionally compressed), renamed into place atomically."),
    ("sink", "WriteToJson", WriteToJson, JsonWriteConfig,
     "Writes JSON files (an array of objects per file), renamed into place atomically."),
)


def _register(kind: str, name: str, cls: type, config_model: type[registry.StrictConfig], summary: str) -> None:
    def factory(config: registry.StrictConfig, ctx: registry.BuildContext) -> beam.PTransform:
        return _build(cls, config, ctx)

    factory.__doc__ = summary
    factory.__name__ = f"build_{name}"
    registry.register(kind, name, config_model, streaming=True if kind == "source" else _sink_streams)(factory)


def _sink_streams(config: Any) -> bool:
    """Writers stream in append mode (each bundle commits its own files); the other modes act at the end."""
    return (getattr(config, "mode", "") == "append" and not getattr(config, "num_shards", 0)
            and not getattr(config, "schema_json_", False))


for _registration in _REGISTRATIONS:
    _register(*_registration)
