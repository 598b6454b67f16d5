"""OpenLineage run events with column-level lineage, and a local lineage store for impact analysis.

From a validated template (``PipelineSpec`` + configs) this module derives

- the input and output datasets, named per the OpenLineage naming conventions: files
  ``file`` + absolute path (``s3://bucket`` + key, ``gs://bucket`` + key), PostgreSQL
  ``postgres://host:port`` + ``database.schema.table``, MySQL ``mysql://host:port`` +
  ``database.table``, SQLite ``sqlite://<absolute path of the file>`` + ``table``, Kafka
  ``kafka://host:port`` + topic, MongoDB ``mongodb://host:port`` + ``database.collection``, and
  the DLQ sink like any other sink. Credentials never appear: names are built from host, port,
  database and table, never from a password or a URI's user part, and every string of an event
  passes ``beam_etl.ops.secrets.redact``;
- the columns of each source: its declared schema, else a cheap look at the file (CSV header
  and a 64 KiB sample, Parquet footer, JSONL first line, SQLite ``PRAGMA table_info``; local
  files only, at most 2 s for all sources), else the columns that steps downstream use
  (*inferred from usage*);
- column-level lineage through the step graph, one rule per step type
  (``beam_etl.ops._lineage_rules``).

``LineageRecorder`` writes START when the pipeline is built and COMPLETE or FAIL after the run
(row counts from ``summary.json``) to ``<run_dir>/lineage.jsonl``, to the lineage store (SQLite,
default ``beam_etl_lineage.sqlite`` beside the state store) and, with ``--lineage-url``, to an
OpenLineage HTTP endpoint. None of this can fail a run: problems are printed as warnings.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import functools
import glob
import gzip
import io
import json
import logging
import os
import re
import sqlite3
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from beam_etl import __version__
from beam_etl.ops import _lineage_rules as rules
from beam_etl.ops.secrets import redact

if TYPE_CHECKING:
    from pydantic import BaseModel

    from beam_etl.spec import PipelineSpec

log = logging.getLogger(__name__)

JOB_NAMESPACE = "beam_etl"
EVENTS_FILE = "lineage.jsonl"
LINEAGE_FILE_NAME = "beam_etl_lineage.sqlite"
DEFAULT_OUTPUT_DIR = "beam_etl_output"  # as beam_etl.run (not imported: it pulls in Beam)
PRODUCER = f"urn:beam_etl:{__version__}"
SCHEMA_URL = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"


def _spec_facet(version: str, name: str) -> str:
    return f"https://openlineage.io/spec/facets/{version}/{name}.json#/$defs/{name}"


FACET_URLS = {
    "schema": _spec_facet("1-2-0", "SchemaDatasetFacet"),
    "columnLineage": _spec_facet("1-2-0", "ColumnLineageDatasetFacet"),
    "outputStatistics": _spec_facet("1-0-2", "OutputStatisticsOutputDatasetFacet"),
    "inputStatistics": _spec_facet("1-0-0", "InputStatisticsInputDatasetFacet"),
    "jobType": _spec_facet("2-0-4", "JobTypeJobFacet"),
    "sourceCodeLocation": _spec_facet("1-1-0", "SourceCodeLocationJobFacet"),
    "documentation": _spec_facet("1-1-0", "DocumentationJobFacet"),
    "errorMessage": _spec_facet("1-0-1", "ErrorMessageRunFacet"),
    "processing_engine": _spec_facet("1-1-1", "ProcessingEngineRunFacet"),
    "beam_etl_run": f"{PRODUCER}:facets#/$defs/BeamEtlRunFacet",
    "beam_etl_dataset": f"{PRODUCER}:facets#/$defs/BeamEtlDatasetFacet",
}
_RUN_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:beam_etl:run")
SAMPLE_BYTES = 64 * 1024
SCHEMA_BUDGET_S = 2.0
USAGE_NOTE = "inferred from usage: a step or the config names it (no declared or readable schema)"
DLQ_NODE = "__dlq__"


# --------------------------------------------------------------------------------------
# Dataset names
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, order=True)
class DatasetRef:
    """An OpenLineage dataset identity."""

    namespace: str
    name: str

    @property
    def display(self) -> str:
        """``file:///abs/path``, ``postgres://host:5432/db.public.orders``, ``kafka://host:9092/topic``."""
        return display_name(self.namespace, self.name)


def display_name(namespace: str, name: str) -> str:
    """Namespace and name as one string (a file URI for local files)."""
    if namespace == "file":
        return "file://" + name
    return f"{namespace.rstrip('/')}/{name}"


def _host(netloc: str) -> str:
    """``user:password@host:port`` -> ``host:port``."""
    return netloc.rpartition("@")[2]


def file_dataset(path: str) -> DatasetRef:
    """A file, folder, prefix or glob: ``file`` + absolute path, or ``scheme://bucket`` + key."""
    parts = urllib.parse.urlsplit(path)
    if len(parts.scheme) > 1 and parts.scheme != "file":
        return DatasetRef(f"{parts.scheme}://{_host(parts.netloc)}", parts.path.strip("/") or "/")
    local = urllib.parse.unquote(parts.path) if parts.scheme == "file" else path
    return DatasetRef("file", os.path.abspath(os.path.expanduser(local)))


def _paths(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value or []]


_QUERY_TABLE_RE = re.compile(r"\b(?:from|join)\s+((?:\"[^\"]+\"|`[^`]+`|[A-Za-z_][\w$]*)"
                             r"(?:\s*\.\s*(?:\"[^\"]+\"|`[^`]+`|[A-Za-z_][\w$]*))*)", re.IGNORECASE)


def query_tables(query: str) -> list[list[str]]:
    """Tables a SELECT reads (``FROM``/``JOIN``), each as its dotted parts, quotes removed."""
    found = []
    for match in _QUERY_TABLE_RE.finditer(query or ""):
        parts = [p.strip().strip('"`') for p in match.group(1).split(".")]
        if parts not in found:
            found.append(parts)
    return found


def _sql_tables(config: Any, qualify: Callable[[list[str]], str]) -> list[str]:
    if getattr(config, "table", None):
        schema = getattr(config, "schema_", None)
        return [qualify([schema, config.table] if isinstance(schema, str) and schema else [config.table])]
    return [qualify(parts) for parts in query_tables(getattr(config, "query", None) or "")]


def _postgres(config: Any) -> list[DatasetRef]:
    def qualify(parts: list[str]) -> str:
        return ".".join([config.database, *(["public"] if len(parts) == 1 else []), *parts[-2:]])

    namespace = f"postgres://{_host(str(config.host))}:{config.port}"
    return [DatasetRef(namespace, t) for t in _sql_tables(config, qualify)]


def _mysql(config: Any) -> list[DatasetRef]:
    def qualify(parts: list[str]) -> str:
        return ".".join(parts[-2:] if len(parts) > 1 else [config.database, parts[0]])

    namespace = f"mysql://{_host(str(config.host))}:{config.port}"
    return [DatasetRef(namespace, t) for t in _sql_tables(config, qualify)]


def _sqlite(config: Any) -> list[DatasetRef]:
    database = str(config.database)
    where = database if database == ":memory:" else os.path.abspath(os.path.expanduser(database))
    return [DatasetRef(f"sqlite://{where}", t) for t in _sql_tables(config, lambda parts: ".".join(parts))]


def _kafka(config: Any) -> list[DatasetRef]:
    first = str(config.bootstrap_servers).split(",")[0].strip()
    server = _host(first.split("://", 1)[-1])
    topics = getattr(config, "topics", None) or getattr(config, "topic", None)
    return [DatasetRef(f"kafka://{server}", t) for t in _paths(topics)]


def _mongodb(config: Any) -> list[DatasetRef]:
    parts = urllib.parse.urlsplit(str(config.uri))
    host = _host(parts.netloc).split(",")[0]
    if parts.scheme == "mongodb" and ":" not in host:
        host += ":27017"
    return [DatasetRef(f"{parts.scheme or 'mongodb'}://{host}", f"{config.database}.{config.collection}")]


def _files(config: Any) -> list[DatasetRef]:
    return [file_dataset(p) for p in _paths(config.path)]


#: connector type -> its datasets; a connector without an entry is named ``beam_etl`` + pipeline.node
NAMERS: dict[str, Callable[[Any], list[DatasetRef]]] = {
    **dict.fromkeys(("ReadFromCsv", "ReadFromJson", "ReadFromJsonl", "ReadFromText", "ReadFromParquet", "ReadFromDlq",
                     "WriteToCsv", "WriteToJson", "WriteToJsonl", "WriteToParquet"), _files),
    **dict.fromkeys(("ReadFromPostgres", "WriteToPostgres"), _postgres),
    **dict.fromkeys(("ReadFromMySql", "WriteToMySql"), _mysql),
    **dict.fromkeys(("ReadFromSqlite", "WriteToSqlite"), _sqlite),
    **dict.fromkeys(("ReadFromKafka", "WriteToKafka"), _kafka),
    **dict.fromkeys(("ReadFromMongoDB", "WriteToMongoDB"), _mongodb),
}


def datasets_of(type_name: str, config: Any, pipeline: str, node: str) -> list[DatasetRef]:
    """The datasets a source or sink reads or writes."""
    namer = NAMERS.get(type_name)
    try:
        found = namer(config) if namer is not None else []
    except Exception as err:  # noqa: BLE001 - an odd config must not break lineage
        log.debug("lineage: cannot name the datasets of %s (%s): %s", node, type_name, err)
        found = []
    return found or [DatasetRef(JOB_NAMESPACE, f"{pipeline}.{node}")]


# --------------------------------------------------------------------------------------
# Source schemas
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class SourceSchema:
    """The columns a source is known to produce; ``complete`` when no other column can appear."""

    columns: dict[str, str | None]
    complete: bool
    origin: str  # file | database | config | unknown


_GLOB_RE = re.compile(r"[*?\[]")


def _first_local_file(value: Any, deadline: float, extension: str = "") -> str | None:
    """The first visible file a local path, folder or glob names, preferring names with ``extension``
    (None for object stores, and once the time budget is spent)."""
    def pick(files: list[str]) -> str | None:
        return next((f for f in files if extension in os.path.basename(f)), files[0] if files else None)

    for path in _paths(value):
        if time.monotonic() > deadline or len(urllib.parse.urlsplit(path).scheme) > 1:
            continue
        if os.path.isfile(path):
            return path
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
                chosen = pick(sorted(os.path.join(root, f) for f in files if not f.startswith((".", "_"))))
                if chosen:
                    return chosen
        elif _GLOB_RE.search(path):
            chosen = pick(sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p)))
            if chosen:
                return chosen
    return None


def _head(path: str, compression: str = "auto") -> bytes:
    """The first ``SAMPLE_BYTES`` of a file, cut after its last complete line when longer."""
    gz = compression in ("gzip", "gz") or (compression == "auto" and path.lower().endswith((".gz", ".gzip")))
    if compression not in ("auto", "none", "gzip", "gz") or (compression == "auto" and path.lower().endswith(
            (".bz2", ".xz", ".lzma"))):
        raise ValueError(f"no sample of {compression} files")
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as handle:
        data = handle.read(SAMPLE_BYTES + 1)
    if len(data) > SAMPLE_BYTES:
        data = data[: data.rfind(b"\n", 0, SAMPLE_BYTES) + 1] or data[:SAMPLE_BYTES]
    return data


def _declared(config: Any, found: SourceSchema | None) -> SourceSchema:
    """``found`` (or nothing) narrowed by a ``columns`` projection, typed by a declared ``schema``."""
    schema = found or SourceSchema({}, False, "unknown")
    projection = getattr(config, "columns", None)
    if isinstance(projection, list) and projection:
        schema = SourceSchema({n: schema.columns.get(n) for n in projection}, True,
                              "config" if schema.origin == "unknown" else schema.origin)
    declared = getattr(config, "schema_", None)
    if isinstance(declared, Mapping):
        for name, type_ in declared.items():
            if name in schema.columns or not schema.complete:
                schema.columns[name] = rules.type_label(type_)
        if schema.origin == "unknown" and declared:
            schema.origin = "config"
    return schema


def _csv_schema(config: Any, deadline: float) -> SourceSchema | None:
    path = _first_local_file(config.path, deadline, ".csv")
    if path is None or (not config.header and not config.column_names):
        return None
    sample = _head(path, config.compression)
    if config.encoding.lower().replace("_", "-") not in ("utf-8", "utf8", "ascii"):
        sample = sample.decode(config.encoding, errors="replace").encode("utf-8")
    import pyarrow.csv as pacsv

    read = pacsv.ReadOptions(column_names=config.column_names, skip_rows=1 if config.header and config.column_names
                             else 0)
    parse = pacsv.ParseOptions(delimiter=config.delimiter, quote_char=config.quote_char or False,
                               escape_char=config.escape_char or False,
                               newlines_in_values=config.newlines_in_values,
                               invalid_row_handler=lambda row: "skip")  # malformed lines go to the DLQ
    convert = pacsv.ConvertOptions(null_values=list(config.null_values), strings_can_be_null=True)
    try:
        table = pacsv.read_csv(io.BytesIO(sample), read, parse, convert)
        columns: dict[str, str | None] = {f.name: str(f.type) for f in table.schema}
    except Exception:  # noqa: BLE001 - a sample pyarrow cannot parse still has a header
        import csv

        header = next(csv.reader(io.StringIO(sample.decode("utf-8", errors="replace")),
                                 delimiter=config.delimiter), [])
        columns = dict.fromkeys(config.column_names or header)
    return _declared(config, SourceSchema(columns, True, "file"))


def _json_type(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "struct"
    if isinstance(value, list):
        return "list"
    return None


def _json_schema(config: Any, deadline: float) -> SourceSchema | None:
    path = _first_local_file(config.path, deadline, ".json")
    if path is None:
        return None
    text = _head(path, config.compression).decode(config.encoding, errors="replace")
    first: Any = None
    for line in text.splitlines():
        if line.strip():
            first = json.loads(line)
            break
    if isinstance(first, list):  # a JSON array file whose first line holds it all
        first = first[0] if first else None
    if not isinstance(first, dict):
        return None
    return _declared(config, SourceSchema({k: _json_type(v) for k, v in first.items()}, False, "file"))


def _whole_json_schema(config: Any, deadline: float) -> SourceSchema | None:
    path = _first_local_file(config.path, deadline, ".json")
    if path is None or os.path.getsize(path) > SAMPLE_BYTES:
        return _json_schema(config, deadline)
    document = json.loads(_head(path, config.compression).decode(config.encoding, errors="replace"))
    first = document[0] if isinstance(document, list) and document else document
    if not isinstance(first, dict):
        return None
    return _declared(config, SourceSchema({k: _json_type(v) for k, v in first.items()}, False, "file"))


def _parquet_schema(config: Any, deadline: float) -> SourceSchema | None:
    path = _first_local_file(config.path, deadline, ".parquet")
    if path is None:
        return None
    import pyarrow.parquet as pq

    columns: dict[str, str | None] = {f.name: str(f.type) for f in pq.read_schema(path)}
    for root in _paths(config.path):  # hive partition folders (col=value/) are columns too
        relative = os.path.relpath(os.path.dirname(path), root) if os.path.isdir(root) else ".."
        if not relative.startswith(".."):
            for part in relative.split(os.sep):
                if "=" in part:
                    columns.setdefault(part.split("=", 1)[0], None)
    return _declared(config, SourceSchema(columns, True, "file"))


def _text_schema(config: Any, deadline: float) -> SourceSchema:
    if config.regex:
        names = sorted(re.compile(config.regex).groupindex.items(), key=lambda kv: kv[1])
        declared = config.schema_ or {}
        return SourceSchema({n: rules.type_label(declared.get(n, "string")) for n, _ in names}, True, "config")
    return SourceSchema({"text" if config.chunk_by else "line": "string"}, True, "config")


def _sqlite_schema(config: Any, deadline: float) -> SourceSchema | None:
    if not config.table or not os.path.isfile(config.database):
        return _declared(config, None)
    uri = f"file:{urllib.parse.quote(os.path.abspath(config.database))}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1.0)) as con:
        quoted = '"' + str(config.table).replace('"', '""') + '"'
        rows = con.execute(f"PRAGMA table_info({quoted})").fetchall()
    if not rows:
        return _declared(config, None)
    return _declared(config, SourceSchema({r[1]: (r[2] or "").lower() or None for r in rows}, True, "database"))


_KAFKA_METADATA_TYPES = {"topic": "string", "partition": "int32", "offset": "int64", "timestamp": "timestamp[ms]",
                         "key": "string", "headers": "list<struct<key: string, value: binary>>"}


def _kafka_schema(config: Any, deadline: float) -> SourceSchema:
    if config.value_format in ("text", "bytes"):
        schema = SourceSchema({"value": "string" if config.value_format == "text" else "binary"}, True, "config")
    else:
        schema = _declared(config, None)
    for name in config.metadata or []:
        schema.columns[f"kafka_{name}"] = _KAFKA_METADATA_TYPES.get(name)
    return schema


def _mongodb_schema(config: Any, deadline: float) -> SourceSchema:
    projection = config.projection
    if isinstance(projection, list) and projection:
        names = ["_id", *projection]
    elif isinstance(projection, Mapping) and any(v for k, v in projection.items() if k != "_id"):
        names = ["_id", *[k for k, v in projection.items() if v and k != "_id"]]
    else:
        return SourceSchema({}, False, "unknown")
    if isinstance(projection, Mapping) and not projection.get("_id", 1):
        names.remove("_id")
    return SourceSchema(dict.fromkeys(dict.fromkeys(names)), True, "config")


def _written_file(path: str, extension: str) -> str | None:
    """The first file a file sink wrote under its prefix (``out/orders-00000-of-00001.parquet``) or
    folder (``out/orders/part-...``, partition folders included)."""
    if len(urllib.parse.urlsplit(path).scheme) > 1:
        return None
    pattern = [path + "**/*" + extension + "*"] if path.endswith("/") else \
        [path + "-*" + extension + "*", path + "/**/*" + extension + "*"]
    found = sorted(p for g in pattern for p in glob.glob(g, recursive=True)
                   if os.path.isfile(p) and not os.path.basename(p).startswith((".", "_"))
                   and not p.endswith(".schema.json"))
    return found[0] if found else None


def _written_parquet(config: Any) -> dict[str, str | None] | None:
    path = _written_file(config.path, ".parquet")
    if path is None:
        return None
    import pyarrow.parquet as pq

    columns: dict[str, str | None] = {f.name: str(f.type) for f in pq.read_schema(path)}
    return {**columns, **{n: None for n in config.partition_by or [] if n not in columns}}


def _written_csv(config: Any) -> dict[str, str | None] | None:
    path = _written_file(config.path, ".csv")
    if path is None or not config.header:
        return None
    import csv

    line = _head(path).decode("utf-8", errors="replace")
    return dict.fromkeys(next(csv.reader(io.StringIO(line), delimiter=config.delimiter), []))


def _written_jsonl(config: Any) -> dict[str, str | None] | None:
    path = _written_file(config.path, ".jsonl")
    if path is None:
        return None
    line = next((x for x in _head(path).decode("utf-8", errors="replace").splitlines() if x.strip()), "")
    record = json.loads(line) if line else None
    return {k: _json_type(v) for k, v in record.items()} if isinstance(record, dict) else None


def _written_sqlite(config: Any) -> dict[str, str | None] | None:
    schema = _sqlite_schema(config, time.monotonic() + 1)
    return schema.columns if schema is not None and schema.origin == "database" else None


WRITTEN_READERS: dict[str, Callable[[Any], dict[str, str | None] | None]] = {
    "WriteToParquet": _written_parquet, "WriteToCsv": _written_csv, "WriteToJsonl": _written_jsonl,
    "WriteToSqlite": _written_sqlite,
}


def written_schema(type_name: str, config: Any, deadline: float) -> dict[str, str | None] | None:
    """The columns a sink wrote, where that is cheap to see (local files, SQLite); else None."""
    reader = WRITTEN_READERS.get(type_name)
    if reader is None or time.monotonic() > deadline:
        return None
    try:
        return reader(config)
    except Exception as err:  # noqa: BLE001 - best effort
        log.debug("lineage: cannot read what %s wrote: %s", type_name, err)
        return None


SCHEMA_READERS: dict[str, Callable[[Any, float], SourceSchema | None]] = {
    "ReadFromCsv": _csv_schema, "ReadFromJsonl": _json_schema, "ReadFromJson": _whole_json_schema,
    "ReadFromParquet": _parquet_schema, "ReadFromText": _text_schema, "ReadFromSqlite": _sqlite_schema,
    "ReadFromKafka": _kafka_schema, "ReadFromMongoDB": _mongodb_schema,
}


def source_schema(type_name: str, config: Any, deadline: float) -> SourceSchema:
    """What a source's columns are known to be before it runs (declared, sampled or unknown)."""
    reader = SCHEMA_READERS.get(type_name)
    try:
        found = reader(config, deadline) if reader is not None else None
    except Exception as err:  # noqa: BLE001 - unreadable or odd input: fall back to the config
        log.debug("lineage: no schema sample for %s: %s", type_name, err)
        found = None
    return found if found is not None else _declared(config, None)


# --------------------------------------------------------------------------------------
# Column lineage through the step graph
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class DatasetLineage:
    """One input or output dataset of a run: its fields and (outputs) where each comes from."""

    ref: DatasetRef
    nodes: list[str]  # the sources/sinks that read or write it (row counts come from their metrics)
    connector: str
    fields: dict[str, str | None]
    notes: dict[str, str] = dataclasses.field(default_factory=dict)
    schema_origin: str = ""
    columns: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)  # field -> inputFields
    dataset: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # INDIRECT, whole dataset
    counted: bool = True  # False when a node's row count spans several datasets (a list of paths)

    def merge(self, other: DatasetLineage) -> None:
        """Another source/sink reading or writing the same dataset."""
        self.nodes += [n for n in other.nodes if n not in self.nodes]
        self.counted = self.counted and other.counted
        for name, type_ in other.fields.items():
            self.fields.setdefault(name, type_)
        self.notes = {**other.notes, **self.notes}
        for name, inputs in other.columns.items():
            self.columns[name] = _unique(self.columns.get(name, []) + inputs)
        self.dataset = _unique(self.dataset + other.dataset)


@dataclasses.dataclass
class PipelineLineage:
    """Everything lineage knows about a pipeline before it runs."""

    inputs: list[DatasetLineage]
    outputs: list[DatasetLineage]


def _unique(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for item in items:
        seen.setdefault(json.dumps(item, sort_keys=True), item)
    return list(seen.values())


def _source_frame(node: str, schema: SourceSchema, used: list[str]) -> rules.Frame:
    def column(name: str, type_: str | None = None) -> rules.Column:
        return rules.Column(type_, {((node, name), rules.DIRECT): rules.Derivation()})

    columns = {n: column(n, t) for n, t in schema.columns.items()}
    columns.update({n: column(n) for n in used if n not in columns})
    if schema.complete:
        return rules.Frame(columns, {})

    def fallback(name: str) -> rules.Column:
        if name not in used:
            used.append(name)
        return column(name)

    return rules.Frame(columns, {}, fallback)


def _apply(type_name: str, config: Any, frame: rules.Frame, step: str) -> rules.Frame:
    try:
        return rules.rule_for(type_name)(config, frame, step)
    except Exception as err:  # noqa: BLE001 - a rule that trips degrades to opaque, never fails a run
        log.debug("lineage: rule for %s (%s) failed, treating it as opaque: %s", step, type_name, err)
        return rules.opaque(config, frame, step)


def referenced_columns(config: Any) -> list[str]:
    """Columns a source or sink config names: incremental cursor and key, partition column, event
    time, upsert keys, partition/shard columns (they exist even when no schema says so)."""
    names: list[str] = []
    incremental = getattr(config, "incremental", None)
    if incremental is not None and getattr(incremental, "mode", "cursor") == "cursor":
        names += rules.as_names(getattr(incremental, "cursor_field", None))
        names += rules.as_names(getattr(incremental, "primary_key", None))
    partition = getattr(config, "partition", None)
    if isinstance(partition, Mapping):
        names += rules.as_names(partition.get("column"))
    for attribute in ("partition_column", "event_time", "key", "partition_by", "shard_by", "value_columns"):
        value = getattr(config, attribute, None)
        if isinstance(value, (str, list, tuple)):
            names += rules.as_names(value)
    return list(dict.fromkeys(names))


def _walk(spec: PipelineSpec, configs: Mapping[str, Any], schemas: dict[str, SourceSchema],
          used: dict[str, list[str]], observed: Mapping[str, Mapping[str, str | None]]
          ) -> tuple[dict[str, rules.Frame], rules.Frame]:
    """Frames reaching each sink (after its contract), and the DLQ's frame."""
    from beam_etl.spec import contract_step_name

    frames: dict[str, rules.Frame] = {}
    received: dict[str, rules.Frame] = {}  # what each transform got: its dead letters carry those rows
    sinks: dict[str, rules.Frame] = {}
    for section, _, t in spec.transforms():
        if section == "sources":
            frames[t.name] = received[t.name] = _source_frame(t.name, schemas[t.name], used[t.name])
            frames[t.name].refs(referenced_columns(configs.get(t.name)))
            continue
        parts = []
        for ref in t.inputs():
            if ref in frames:
                parts.append(frames[ref])
            else:  # <step>.<output>: that step's dead letters
                base = ref.split(".", 1)[0]
                parts.append(rules.dead_letter_frame([received.get(base, rules.Frame())], base))
        frame = rules.union(parts) if parts else rules.Frame()
        if section == "steps":
            received[t.name] = frame
            frames[t.name] = _apply(t.type, configs.get(t.name), frame, t.name)
            continue
        if t.contract is not None:
            name = contract_step_name(t.name)
            received[name] = frame
            frame = _apply("EnforceContract", configs.get(name), frame, name)
        received[t.name] = sinks[t.name] = frame
        frame.refs([*referenced_columns(configs.get(t.name)), *observed.get(t.name, {})])
    return sinks, rules.dead_letter_frame(list(received.values()), "dead letters")


def _describe(derivation: rules.Derivation) -> str:
    steps = ", ".join(derivation.steps)
    if derivation.opaque:
        return f"opaque: user code in {steps} (every output column may derive from every input column)"
    return f"via {steps}" if steps else ""


def _transformation(derivation: rules.Derivation) -> dict[str, Any]:
    out: dict[str, Any] = {"type": derivation.kind, "subtype": derivation.subtype}
    if description := _describe(derivation):
        out["description"] = description
    out["masking"] = False
    return out


def _input_fields(inputs: Mapping[rules.Key, rules.Derivation],
                  refs: Mapping[str, list[DatasetRef]]) -> list[dict[str, Any]]:
    """A column's inputs as OpenLineage ``inputFields`` (one per source dataset and column)."""
    grouped: dict[rules.Origin, list[rules.Derivation]] = collections.defaultdict(list)
    for (origin, _), derivation in inputs.items():
        grouped[origin].append(derivation)
    out = []
    for (node, field), derivations in grouped.items():
        transformations = [_transformation(d) for d in sorted(derivations, key=lambda d: d.kind)]
        for ref in refs.get(node, []):
            out.append({"namespace": ref.namespace, "name": ref.name, "field": field,
                        "transformations": transformations})
    return out


def _dataset_fields(indirect: Mapping[tuple[rules.Origin, str], tuple[str, ...]],
                    refs: Mapping[str, list[DatasetRef]]) -> list[dict[str, Any]]:
    inputs = {(origin, f"{rules.INDIRECT}:{subtype}"): rules.Derivation(rules.INDIRECT, subtype, steps)
              for (origin, subtype), steps in indirect.items()}
    return _input_fields(inputs, refs)  # type: ignore[arg-type]


def _sink_columns(config: Any, frame: rules.Frame) -> dict[str, rules.Column]:
    """The columns a sink writes: all of them, or a Kafka sink's value columns."""
    chosen = getattr(config, "value_columns", None)
    if getattr(config, "value_format", "json") in ("text", "bytes"):
        chosen = [getattr(config, "value_field", None) or "value"]
    if chosen:
        return {n: c for n in chosen if (c := frame.get(n)) is not None}
    return dict(frame.columns)


def _add_dataset(found: dict[DatasetRef, DatasetLineage], item: DatasetLineage) -> None:
    if item.ref in found:
        found[item.ref].merge(item)
    else:
        found[item.ref] = item


def derive_lineage(spec: PipelineSpec, configs: Mapping[str, BaseModel | Any], budget_s: float = SCHEMA_BUDGET_S,
                   observe_outputs: bool = False) -> PipelineLineage:
    """Input and output datasets of ``spec`` with their fields and column-level lineage.

    ``observe_outputs`` (after a run): the columns the file and SQLite sinks actually wrote are
    resolved through the step graph too, so sources without a schema still get their lineage.
    """
    deadline = time.monotonic() + budget_s
    schemas = {t.name: source_schema(t.type, configs.get(t.name), deadline) for t in spec.sources}
    observed = {t.name: written_schema(t.type, configs.get(t.name), deadline) for t in spec.sinks} \
        if observe_outputs else {}
    observed = {name: columns for name, columns in observed.items() if columns}
    refs = {t.name: datasets_of(t.type, configs.get(t.name), spec.name, t.name)
            for t in [*spec.sources, *spec.sinks]}
    refs[DLQ_NODE] = datasets_of(spec.dlq.type, configs.get(DLQ_NODE), spec.name, "dlq")
    used: dict[str, list[str]] = {t.name: [] for t in spec.sources}
    _walk(spec, configs, schemas, used, observed)  # first pass: which columns of open sources are used downstream
    sinks, dlq = _walk(spec, configs, schemas, used, observed)  # second: with those columns known at the sources

    inputs: dict[DatasetRef, DatasetLineage] = {}
    for t in spec.sources:
        schema = schemas[t.name]
        fields = {**schema.columns, **{n: None for n in used[t.name] if n not in schema.columns}}
        notes = {n: USAGE_NOTE for n in used[t.name] if n not in schema.columns}
        origin = schema.origin if not notes else ("inferred-from-usage" if schema.origin == "unknown"
                                                  else f"{schema.origin}+inferred-from-usage")
        for ref in refs[t.name]:
            _add_dataset(inputs, DatasetLineage(ref, [t.name], t.type, dict(fields), dict(notes), origin,
                                                counted=len(refs[t.name]) == 1))
    outputs: dict[DatasetRef, DatasetLineage] = {}
    writes = [(t.name, t.type, configs.get(t.name), sinks[t.name]) for t in spec.sinks]
    writes.append((DLQ_NODE, spec.dlq.type, configs.get(DLQ_NODE), dlq))
    for node, type_name, config, frame in writes:
        columns = _sink_columns(config, frame)
        for name, type_ in observed.get(node, {}).items():
            column = columns.get(name) or frame.get(name)
            if column is not None:
                columns[name] = rules.Column(column.type or type_, column.inputs)
        lineage = {n: _input_fields(c.inputs, refs) for n, c in columns.items()}
        indirect = _dataset_fields(frame.indirect, refs)
        for ref in refs[node]:
            _add_dataset(outputs, DatasetLineage(ref, [node], type_name, {n: c.type for n, c in columns.items()},
                                                 columns=dict(lineage), dataset=list(indirect),
                                                 counted=len(refs[node]) == 1))
    return PipelineLineage(list(inputs.values()), list(outputs.values()))


# --------------------------------------------------------------------------------------
# OpenLineage run events
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """The run an event is about."""

    pipeline: str
    run_id: str
    template: str = ""
    runner: str = ""
    streaming: bool = False
    description: str = ""


def run_uuid(run_id: str) -> str:
    """The OpenLineage runId of a beam_etl run id: a UUID derived from it (the same every time)."""
    return str(uuid.uuid5(_RUN_UUID_NAMESPACE, f"beam_etl:{run_id}"))


def _facet(kind: str, **fields: Any) -> dict[str, Any]:
    return {"_producer": PRODUCER, "_schemaURL": FACET_URLS[kind], **fields}


@functools.cache
def _version(package: str) -> str:
    """The installed version (looked up once: a lookup scans site-packages, ~50 ms)."""
    if package == "apache-beam":  # already imported by every run: no scan needed
        from apache_beam.version import __version__ as beam_version

        return beam_version
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _schema_facet(dataset: DatasetLineage) -> dict[str, Any]:
    fields = []
    for name, type_ in dataset.fields.items():
        field: dict[str, Any] = {"name": name}
        if type_:
            field["type"] = type_
        if name in dataset.notes:
            field["description"] = dataset.notes[name]
        fields.append(field)
    return _facet("schema", fields=fields)


def _count(steps: Mapping[str, Any], nodes: list[str], input_side: bool) -> int | None:
    counts = [steps[n] for n in nodes if isinstance(steps.get(n), Mapping)]
    if not counts:
        return None
    return sum(int(c.get("records_out", 0)) + (int(c.get("records_failed", 0)) if input_side else 0) for c in counts)


def run_event(event_type: str, lineage: PipelineLineage, info: RunInfo, summary: Mapping[str, Any] | None = None,
              event_time: str | None = None) -> dict[str, Any]:
    """An OpenLineage 2-0-2 RunEvent (START, COMPLETE or FAIL) as a JSON-ready dict."""
    steps = (summary or {}).get("steps") or {}
    run_facets: dict[str, Any] = {
        "processing_engine": _facet("processing_engine", version=_version("apache-beam"), name="Apache Beam",
                                    openlineageAdapterVersion=__version__),
        "beam_etl_run": _facet("beam_etl_run", runId=info.run_id, runner=info.runner, template=info.template),
    }
    if event_type == "FAIL":
        message = str((summary or {}).get("error") or "the run failed")
        run_facets["errorMessage"] = _facet("errorMessage", message=message, programmingLanguage="python")
    job_facets: dict[str, Any] = {
        "jobType": _facet("jobType", processingType="STREAMING" if info.streaming else "BATCH",
                          integration="BEAM_ETL", jobType="JOB"),
    }
    if info.template:
        template = Path(info.template).resolve()
        job_facets["sourceCodeLocation"] = _facet("sourceCodeLocation", type="file", url=template.as_uri(),
                                                  path=str(template))
    if info.description:
        job_facets["documentation"] = _facet("documentation", description=info.description)
    inputs = []
    for dataset in lineage.inputs:
        item: dict[str, Any] = {"namespace": dataset.ref.namespace, "name": dataset.ref.name, "facets": {
            "schema": _schema_facet(dataset),
            "beam_etl_dataset": _facet("beam_etl_dataset", nodes=dataset.nodes, connector=dataset.connector,
                                       schemaOrigin=dataset.schema_origin)}}
        rows = _count(steps, dataset.nodes, input_side=True) if dataset.counted else None
        if rows is not None:
            item["inputFacets"] = {"inputStatistics": _facet("inputStatistics", rowCount=rows)}
        inputs.append(item)
    outputs = []
    for dataset in lineage.outputs:
        fields = {name: {"inputFields": inputs_} for name, inputs_ in dataset.columns.items()}
        item = {"namespace": dataset.ref.namespace, "name": dataset.ref.name, "facets": {
            "schema": _schema_facet(dataset),
            "columnLineage": _facet("columnLineage", fields=fields, dataset=dataset.dataset),
            "beam_etl_dataset": _facet("beam_etl_dataset", nodes=dataset.nodes, connector=dataset.connector)}}
        rows = _count(steps, dataset.nodes, input_side=False) if dataset.counted else None
        if rows is not None:
            item["outputFacets"] = {"outputStatistics": _facet("outputStatistics", rowCount=rows)}
        outputs.append(item)
    return {
        "eventType": event_type,
        "eventTime": event_time or dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "producer": PRODUCER,
        "schemaURL": SCHEMA_URL,
        "run": {"runId": run_uuid(info.run_id), "facets": run_facets},
        "job": {"namespace": JOB_NAMESPACE, "name": info.pipeline, "facets": job_facets},
        "inputs": inputs,
        "outputs": outputs,
    }


def redacted(value: Any) -> Any:
    """``value`` with every registered secret replaced in every string (keys included)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {redact(str(k)): redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted(v) for v in value]
    return value


# --------------------------------------------------------------------------------------
# The lineage store (SQLite): every run's datasets and column edges, for impact analysis
# --------------------------------------------------------------------------------------

_STORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS lineage_runs (
    run_uuid TEXT PRIMARY KEY, run_id TEXT NOT NULL, job TEXT NOT NULL, event_type TEXT NOT NULL,
    event_time TEXT NOT NULL, template TEXT, event TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lineage_datasets (
    run_uuid TEXT NOT NULL, role TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    fields TEXT NOT NULL, row_count INTEGER);
CREATE TABLE IF NOT EXISTS lineage_edges (
    run_uuid TEXT NOT NULL, in_namespace TEXT NOT NULL, in_name TEXT NOT NULL, in_field TEXT NOT NULL,
    out_namespace TEXT NOT NULL, out_name TEXT NOT NULL, out_field TEXT, type TEXT NOT NULL,
    subtype TEXT, description TEXT);
CREATE INDEX IF NOT EXISTS lineage_edges_in ON lineage_edges (in_namespace, in_name);
CREATE INDEX IF NOT EXISTS lineage_edges_out ON lineage_edges (out_namespace, out_name);
"""


def default_store_path(state_url: str | None = None, output_dir: str | os.PathLike[str] | None = None) -> Path:
    """``$BEAM_ETL_LINEAGE_STORE``, else beside a SQLite state store, else ``<output dir>/beam_etl_lineage.sqlite``."""
    if os.environ.get("BEAM_ETL_LINEAGE_STORE"):
        return Path(os.environ["BEAM_ETL_LINEAGE_STORE"])
    if state_url and state_url.startswith("sqlite:///"):
        return Path(state_url[len("sqlite:///"):]).parent / LINEAGE_FILE_NAME
    if state_url and "://" not in state_url:
        return Path(state_url).parent / LINEAGE_FILE_NAME
    return Path(output_dir or os.environ.get("BEAM_ETL_OUTPUT_DIR") or DEFAULT_OUTPUT_DIR) / LINEAGE_FILE_NAME


def _has_glob(name: str) -> bool:
    return bool(_GLOB_RE.search(name))


def same_files(read: str, written: str) -> bool:
    """Whether a dataset read as ``read`` (a path, folder or glob) takes in what ``written`` (a file
    prefix or folder that a sink wrote) holds: ``out/orders`` is read by ``out/orders/``,
    ``out/orders-00000-of-00001.parquet``, ``out/orders-*.parquet``, ``out/*.parquet`` or ``out``."""
    if read == written:
        return True
    if not _has_glob(read):
        return read.startswith((written + "/", written + "-")) or written.startswith(read.rstrip("/") + "/")
    literal = _GLOB_RE.split(read, maxsplit=1)[0]
    return written.startswith(literal) or written == literal.rstrip("-_./")


@dataclasses.dataclass
class Hit:
    """A dataset column reached by an impact/upstream walk."""

    namespace: str
    name: str
    field: str | None  # None: the whole dataset (every row depends on it)
    relation: str  # DIRECT when every hop is DIRECT, else INDIRECT
    subtypes: set[str]
    runs: set[str]
    jobs: set[str]
    depth: int

    def as_dict(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "dataset": display_name(self.namespace, self.name),
                "field": self.field, "relation": self.relation, "subtypes": sorted(self.subtypes),
                "runs": sorted(self.runs), "jobs": sorted(self.jobs), "depth": self.depth}


class LineageStore:
    """Runs, datasets and column edges in one SQLite file; the last event of a run replaces the earlier."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return str(self.path)

    @contextlib.contextmanager
    def _connect(self, write: bool = False) -> Any:
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.exists():
            raise FileNotFoundError(f"no lineage store at {self.path}; runs record one there "
                                    "(see --store, BEAM_ETL_LINEAGE_STORE)")
        con = sqlite3.connect(self.path, timeout=30)
        try:
            con.executescript(_STORE_SCHEMA)
            with con:
                yield con
        finally:
            con.close()

    def record(self, event: Mapping[str, Any]) -> None:
        """Keeps a run event: the run, its datasets and the column edges of its outputs."""
        run_id = event["run"]["runId"]
        facet = event["run"].get("facets", {}).get("beam_etl_run", {})
        datasets = []
        for role, key, stats in (("input", "inputs", "inputFacets"), ("output", "outputs", "outputFacets")):
            for ds in event.get(key) or []:
                fields = [f.get("name") for f in ds.get("facets", {}).get("schema", {}).get("fields", [])]
                facet_stats = next(iter((ds.get(stats) or {}).values()), {})
                datasets.append((run_id, role, ds["namespace"], ds["name"], json.dumps(fields),
                                 facet_stats.get("rowCount")))
        edges = []
        for ds in event.get("outputs") or []:
            lineage = ds.get("facets", {}).get("columnLineage", {})
            items = [(field, spec.get("inputFields", [])) for field, spec in lineage.get("fields", {}).items()]
            items.append((None, lineage.get("dataset") or []))
            for out_field, inputs in items:
                for source in inputs:
                    for t in source.get("transformations") or [{"type": "DIRECT"}]:
                        edges.append((run_id, source["namespace"], source["name"], source["field"], ds["namespace"],
                                      ds["name"], out_field, t.get("type", "DIRECT"), t.get("subtype"),
                                      t.get("description")))
        with self._connect(write=True) as con:
            for table in ("lineage_runs", "lineage_datasets", "lineage_edges"):
                con.execute(f"DELETE FROM {table} WHERE run_uuid = ?", (run_id,))
            con.execute("INSERT INTO lineage_runs VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (run_id, facet.get("runId", run_id), event["job"]["name"], event["eventType"],
                         event["eventTime"], facet.get("template"), json.dumps(event)))
            con.executemany("INSERT INTO lineage_datasets VALUES (?, ?, ?, ?, ?, ?)", datasets)
            con.executemany("INSERT INTO lineage_edges VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", edges)

    def runs(self) -> list[dict[str, Any]]:
        """Every recorded run, oldest first."""
        with self._connect() as con:
            rows = con.execute("SELECT run_id, run_uuid, job, event_type, event_time, template FROM lineage_runs "
                               "ORDER BY event_time").fetchall()
        keys = ("run_id", "run_uuid", "job", "status", "event_time", "template")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def event(self, run: str) -> dict[str, Any] | None:
        """The last event of a run, by beam_etl run id or OpenLineage runId."""
        with self._connect() as con:
            row = con.execute("SELECT event FROM lineage_runs WHERE run_id = ? OR run_uuid = ? "
                              "ORDER BY event_time DESC LIMIT 1", (run, run)).fetchone()
        return json.loads(row[0]) if row else None

    def datasets(self) -> list[DatasetRef]:
        """Every dataset any run read or wrote."""
        with self._connect() as con:
            rows = con.execute("SELECT DISTINCT namespace, name FROM lineage_datasets").fetchall()
        return sorted(DatasetRef(*row) for row in rows)

    def resolve(self, text: str) -> tuple[list[DatasetRef], str | None]:
        """``DATASET[.COLUMN]`` -> (datasets, column). A dataset is written as ``show`` prints it
        (``file:///abs/path``, ``postgres://host:5432/db.public.t``), as its name, as a file path, or
        as the end of a name (``orders``, ``customers_orders.csv``) when that is unambiguous."""
        known = self.datasets()

        def exact(candidate: str) -> list[DatasetRef]:
            path = os.path.abspath(os.path.expanduser(candidate)) if "://" not in candidate else None
            return [d for d in known if candidate in (d.display, d.name) or (d.namespace == "file" and d.name == path)]

        def suffix(candidate: str) -> list[DatasetRef]:
            def ends(text: str) -> bool:
                cut = len(text) - len(candidate)
                return cut > 0 and text.endswith(candidate) and (text[cut - 1] in "/.:" or candidate[0] == "/")

            return [d for d in known if ends(d.name) or ends(d.display)]

        for match in (exact, suffix):
            found = match(text)
            if found:
                return found, None
            if "." in text:
                base, column = text.rsplit(".", 1)
                found = match(base)
                if found:
                    return found, column
        return [], None

    def _aliases(self, con: sqlite3.Connection, ref: DatasetRef, downstream: bool) -> list[DatasetRef]:
        """``ref`` and the datasets of other runs that read what it holds (downstream) or wrote what it
        reads (upstream): file datasets match by path prefix or glob, others by namespace and name."""
        found = [ref]
        if ref.namespace != "file" and not ref.namespace.startswith(("s3://", "gs://")):
            return found
        role = "input" if downstream else "output"
        rows = con.execute("SELECT DISTINCT name FROM lineage_datasets WHERE role = ? AND namespace = ?",
                           (role, ref.namespace)).fetchall()
        for (name,) in rows:
            matches = same_files(name, ref.name) if downstream else same_files(ref.name, name)
            if name != ref.name and matches:
                found.append(DatasetRef(ref.namespace, name))
        return found

    def walk(self, start: list[DatasetRef], field: str | None, downstream: bool = True,
             direct_only: bool = False) -> list[Hit]:
        """Every dataset column that depends on (downstream) or feeds (upstream) ``start``'s ``field``
        (every column when None), transitively across recorded runs."""
        hits: dict[tuple[str, str, str | None], Hit] = {}
        queue = collections.deque((ref, field, True, 0) for ref in start)
        seen: set[tuple[DatasetRef, str | None, bool]] = set()
        with self._connect() as con:
            jobs = dict(con.execute("SELECT run_uuid, job FROM lineage_runs").fetchall())
            run_ids = dict(con.execute("SELECT run_uuid, run_id FROM lineage_runs").fetchall())
            while queue:
                ref, column, direct, depth = queue.popleft()
                if (ref, column, direct) in seen:
                    continue
                seen.add((ref, column, direct))
                for alias in self._aliases(con, ref, downstream):
                    for row in self._edges(con, alias, column, downstream):
                        run, ns, name, next_field, kind, subtype = row
                        if direct_only and kind != "DIRECT":
                            continue
                        still_direct = direct and kind == "DIRECT" and next_field is not None
                        key = (ns, name, next_field)
                        hit = hits.get(key)
                        if hit is None:
                            hit = hits[key] = Hit(ns, name, next_field, "INDIRECT", set(), set(), set(), depth + 1)
                        if still_direct:
                            hit.relation = "DIRECT"
                        hit.subtypes.add(f"{kind} {subtype}" if subtype else kind)
                        hit.runs.add(run_ids.get(run, run))
                        hit.jobs.add(jobs.get(run, "?"))
                        hit.depth = min(hit.depth, depth + 1)
                        queue.append((DatasetRef(ns, name), next_field, still_direct, depth + 1))
        return sorted(hits.values(), key=lambda h: (h.depth, h.namespace, h.name, h.field or ""))

    @staticmethod
    def _edges(con: sqlite3.Connection, ref: DatasetRef, column: str | None, downstream: bool) -> list[tuple]:
        if downstream:
            sql = ("SELECT run_uuid, out_namespace, out_name, out_field, type, subtype FROM lineage_edges "
                   "WHERE in_namespace = ? AND in_name = ?")
            args: tuple[Any, ...] = (ref.namespace, ref.name)
            if column is not None:
                sql += " AND in_field = ?"
                args += (column,)
        else:
            sql = ("SELECT run_uuid, in_namespace, in_name, in_field, type, subtype FROM lineage_edges "
                   "WHERE out_namespace = ? AND out_name = ?")
            args = (ref.namespace, ref.name)
            if column is not None:
                sql += " AND (out_field = ? OR out_field IS NULL)"
                args += (column,)
        return con.execute(sql + " ORDER BY rowid", args).fetchall()


# --------------------------------------------------------------------------------------
# Emitting: the run's lineage.jsonl, the store, an OpenLineage HTTP endpoint
# --------------------------------------------------------------------------------------


def _hide_userinfo(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return parts._replace(netloc=_host(parts.netloc)).geturl() if "@" in parts.netloc else url


def post_event(url: str, event: Mapping[str, Any], timeout_s: float = 5.0) -> None:
    """POSTs one event to ``<url>/api/v1/lineage``: with the openlineage-python client's HTTP transport
    when it is installed (``OPENLINEAGE_API_KEY`` becomes a bearer token), else with urllib."""
    try:
        from openlineage.client.transport.http import ApiKeyTokenProvider, HttpConfig, HttpTransport, TokenProvider
    except ImportError:
        HttpTransport = None  # noqa: N806
    if HttpTransport is not None:
        key = os.environ.get("OPENLINEAGE_API_KEY")
        auth = ApiKeyTokenProvider({"api_key": key}) if key else TokenProvider({})
        retry = {"total": 2, "read": 2, "connect": 2, "backoff_factor": 0.3,
                 "status_forcelist": [500, 502, 503, 504], "allowed_methods": ["POST"]}
        transport = HttpTransport(HttpConfig(url=url, timeout=timeout_s, auth=auth, retry=retry))
        try:
            transport.emit(dict(event))  # the transport serialises plain dicts as they are
        finally:
            transport.close()
        return
    import urllib.request

    endpoint = url.rstrip("/") + "/api/v1/lineage"
    request = urllib.request.Request(endpoint, data=json.dumps(event).encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        response.read()


def _streaming(beam_args: list[str] | None, options: Mapping[str, Any]) -> bool:
    flags = [a.lower() for a in beam_args or []]
    return "--streaming" in flags or "--streaming=true" in flags or str(options.get("streaming")).lower() == "true"


class LineageRecorder:
    """Emits a run's START and COMPLETE/FAIL events; never raises (problems become warnings)."""

    def __init__(self, lineage: PipelineLineage | None, info: RunInfo, run_dir: str | os.PathLike[str],
                 store: str | os.PathLike[str] | None = None, url: str | None = None) -> None:
        self.lineage = lineage
        self.info = info
        self.run_dir = Path(run_dir)
        self.store = LineageStore(store) if store else None
        self.url = url
        self.events: list[dict[str, Any]] = []
        self._spec: PipelineSpec | None = None
        self._configs: Mapping[str, Any] = {}

    @classmethod
    def start(cls, spec: PipelineSpec, configs: Mapping[str, Any], *, run_id: str, run_dir: str | os.PathLike[str],
              template: str | os.PathLike[str] = "", runner: str = "", beam_args: list[str] | None = None,
              store: str | os.PathLike[str] | None = None, url: str | None = None) -> LineageRecorder:
        """Derives the pipeline's lineage and emits START."""
        info = RunInfo(spec.name, run_id, str(template), runner, _streaming(beam_args, spec.options),
                       " ".join(spec.description.split()))
        try:
            lineage: PipelineLineage | None = derive_lineage(spec, configs)
        except Exception as err:  # noqa: BLE001 - lineage must never stop a run
            _warn(f"cannot derive the lineage of {spec.name!r}: {type(err).__name__}: {err}")
            lineage = None
        recorder = cls(lineage, info, run_dir, store, url)
        recorder._spec, recorder._configs = spec, configs
        recorder.emit("START")
        return recorder

    def finish(self, summary: Mapping[str, Any]) -> None:
        """COMPLETE when the run succeeded, else FAIL; row counts from the summary. After a success the
        lineage is derived again with the columns the sinks actually wrote (see ``derive_lineage``)."""
        succeeded = summary.get("status") == "succeeded"
        if succeeded and self.lineage is not None and self._spec is not None:
            try:
                self.lineage = derive_lineage(self._spec, self._configs, observe_outputs=True)
            except Exception as err:  # noqa: BLE001 - keep the lineage START had
                log.debug("lineage: cannot observe the outputs: %s", err)
        self.emit("COMPLETE" if succeeded else "FAIL", summary)

    def emit(self, event_type: str, summary: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """Builds one event and sends it to the file, the store and the URL (each on its own)."""
        if self.lineage is None:
            return None
        try:
            event = redacted(run_event(event_type, self.lineage, self.info, summary))
        except Exception as err:  # noqa: BLE001
            _warn(f"cannot build the {event_type} event: {type(err).__name__}: {err}")
            return None
        self.events.append(event)
        targets: list[tuple[str, Callable[[dict[str, Any]], None]]] = [(str(self.run_dir / EVENTS_FILE), self._file)]
        if self.store is not None:
            targets.append((f"the lineage store {self.store}", self.store.record))
        if self.url:
            targets.append((_hide_userinfo(self.url), lambda e: post_event(self.url or "", e)))
        for where, send in targets:
            try:
                send(event)
            except Exception as err:  # noqa: BLE001 - a lineage sink that fails never fails the run
                _warn(f"could not write the {event_type} event to {where}: {type(err).__name__}: {err}")
        return event

    def _file(self, event: Mapping[str, Any]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / EVENTS_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(event, separators=(",", ":"), default=str) + "\n")


def _warn(message: str) -> None:
    print(f"beam_etl: lineage: {redact(message)} (the run goes on)", file=sys.stderr)
