"""What ReadFromKafka and WriteToKafka share: option checks, client settings, decoding to Arrow.

No Beam here: these functions unit-test without a pipeline.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from beam_etl.io._file_common import cast_batch, type_from_name
from beam_etl.io._file_json import objects_to_table, project, read_json_block
from beam_etl.ops.secrets import register_secret

START_MODES = ("committed", "earliest", "latest", "timestamp")
STOP_MODES = ("never", "latest")
VALUE_FORMATS = ("json", "text", "bytes")
KEY_FORMATS = ("text", "bytes")
METADATA = ("topic", "partition", "offset", "timestamp", "key", "headers")
COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
METADATA_PREFIX = "kafka_"
# librdkafka settings whose values are credentials: registered as secrets, never displayed
_SECRET_SETTING = re.compile(r"password|secret|token|credential|private|key\.pem|sasl\.oauthbearer\.config", re.I)
# settings the connector owns; a user who sets them would break offsets or delivery guarantees
_RESERVED_CONSUMER = ("enable.auto.commit", "enable.auto.offset.store", "group.id", "bootstrap.servers")
_RESERVED_PRODUCER = ("enable.idempotence", "transactional.id", "bootstrap.servers")
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError,
                 ValueError)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_seconds(value: Any, field: str) -> float:
    """``"500ms"``, ``"10s"``, ``"5m"``, ``"1h"`` or a number of seconds -> seconds (>= 0)."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a duration like '10s' or '5m', got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{field}: expected a duration >= 0, got {value!r}")
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{field}: expected a duration like '500ms', '10s', '5m' or '1h', got {value!r}")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def check_choice(field: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{field}: {value!r} is not one of {', '.join(allowed)}")
    return value


def check_bootstrap(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"bootstrap_servers: expected 'host:port[,host:port...]', got {value!r}")
    for server in value.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"bootstrap_servers: {server.strip()!r} is not host:port (in {value!r})")
    return value.strip()


def check_topics(topics: Any) -> tuple[str, ...]:
    names = [topics] if isinstance(topics, str) else topics
    if not isinstance(names, (list, tuple)) or not names:
        raise ValueError(f"topics: expected a topic name or a non-empty list of names, got {topics!r}")
    for name in names:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", name):
            raise ValueError(f"topics: {name!r} is not a valid Kafka topic name (letters, digits, '.', '_', '-')")
    if len(set(names)) != len(names):
        raise ValueError(f"topics: {names} names a topic twice")
    return tuple(names)


def client_settings(extra: Mapping[str, Any] | None, reserved: Sequence[str], field: str) -> dict[str, str]:
    """User librdkafka settings as strings; credentials become secrets; reserved keys are refused."""
    settings: dict[str, str] = {}
    for key, value in (extra or {}).items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{field}: keys must be librdkafka setting names, got {key!r}")
        if key in reserved:
            raise ValueError(f"{field}.{key}: set by the connector (use the connector's own option instead)")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if _SECRET_SETTING.search(key) and text:
            register_secret(text)
        settings[key] = text
    return settings


def displayable_settings(settings: Mapping[str, str]) -> dict[str, str]:
    """Settings for display data: credential values replaced by ``***``."""
    return {k: ("***" if _SECRET_SETTING.search(k) else v) for k, v in settings.items()}


def check_metadata(columns: Any) -> tuple[str, ...]:
    if columns is None:
        return ()
    if not isinstance(columns, (list, tuple)):
        raise ValueError(f"metadata: expected a list drawn from {', '.join(METADATA)}, got {columns!r}")
    for name in columns:
        check_choice("metadata", name, METADATA)
    return tuple(dict.fromkeys(columns))


def check_types(schema: Mapping[str, str] | None) -> dict[str, pa.DataType]:
    return {name: type_from_name(t, f"schema.{name}") for name, t in (schema or {}).items()}


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """How message values (and keys) become Arrow columns."""

    value_format: str = "json"
    key_format: str = "text"
    metadata: tuple[str, ...] = ()
    columns: tuple[str, ...] | None = None
    types: Mapping[str, pa.DataType] = dataclasses.field(default_factory=dict)
    event_time: str | None = None  # a value field; None: the record timestamp


@dataclasses.dataclass
class RawMessage:
    """The parts of a consumed message the decoder needs (plain values: picklable, testable)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] | None = None

    @property
    def where(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclasses.dataclass
class Rejected:
    """A message that could not be decoded: why, and what it held (text, or hex for binary)."""

    message: RawMessage
    error_type: str
    error: str
    exception: str

    def record(self) -> dict[str, Any]:
        return {"topic": self.message.topic, "partition": self.message.partition, "offset": self.message.offset,
                "key": _printable(self.message.key), "value": _printable(self.message.value)}


def _printable(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "hex:" + data.hex()


def _decode_utf8(messages: list[RawMessage], part: str, rejected: list[Rejected]) -> list[str | None]:
    texts: list[str | None] = []
    for m in messages:
        raw = getattr(m, part)
        try:
            texts.append(None if raw is None else raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            rejected.append(Rejected(m, "parse", f"the {part} is not valid UTF-8 ({err.reason} at byte {err.start})",
                                     "UnicodeDecodeError"))
            texts.append(None)
    return texts


def _json_table(messages: list[RawMessage], rejected: list[Rejected]) -> tuple[pa.Table, list[RawMessage]]:
    """One pyarrow parse of all values (fast path), else one ``json.loads`` per value."""
    good = [m for m in messages if m.value is not None]
    for m in messages:
        if m.value is None:
            rejected.append(Rejected(m, "validation", "the message has no value (a tombstone); a JSON record "
                                                      "was expected", "ValueError"))
    if not good:
        return pa.table({}), []
    if all(b"\n" not in m.value and b"\r" not in m.value and m.value.lstrip()[:1] == b"{" for m in good):
        try:
            table = read_json_block(b"\n".join(m.value for m in good) + b"\n")
            if table.num_rows == len(good):  # else a value held two objects: find it one by one
                table.validate(full=True)  # invalid UTF-8 inside a string: found one by one too
                return table, good
        except _ARROW_ERRORS:
            pass
    objects, kept = [], []
    for m in good:
        try:
            obj = json.loads(m.value)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            rejected.append(Rejected(m, "parse", f"the value is not valid JSON: {err}", type(err).__name__))
            continue
        if not isinstance(obj, dict):
            rejected.append(Rejected(m, "parse", f"the value is JSON {type(obj).__name__}, not an object",
                                     "ValueError"))
            continue
        objects.append(obj)
        kept.append(m)
    return (objects_to_table(objects) if objects else pa.table({})), kept


def _metadata_columns(messages: list[RawMessage], opts: DecodeOptions,
                      rejected: list[Rejected]) -> dict[str, pa.Array]:
    cols: dict[str, pa.Array] = {}
    for name in opts.metadata:
        column = METADATA_PREFIX + name
        if name == "topic":
            cols[column] = pa.array([m.topic for m in messages], pa.string())
        elif name == "partition":
            cols[column] = pa.array([m.partition for m in messages], pa.int32())
        elif name == "offset":
            cols[column] = pa.array([m.offset for m in messages], pa.int64())
        elif name == "timestamp":
            cols[column] = pa.array([m.timestamp_ms for m in messages], pa.timestamp("ms", tz="UTC"))
        elif name == "key":
            if opts.key_format == "bytes":
                cols[column] = pa.array([m.key for m in messages], pa.binary())
            else:
                cols[column] = pa.array(_decode_utf8(messages, "key", rejected), pa.string())
        elif name == "headers":
            header_type = pa.list_(pa.struct([("key", pa.string()), ("value", pa.binary())]))
            cols[column] = pa.array([[{"key": k, "value": v} for k, v in (m.headers or [])] for m in messages],
                                    header_type)
    return cols


def _value_table(messages: list[RawMessage], opts: DecodeOptions,
                 rejected: list[Rejected]) -> tuple[pa.Table, list[RawMessage]]:
    if opts.value_format == "json":
        return _json_table(messages, rejected)
    if opts.value_format == "bytes":
        return pa.table({"value": pa.array([m.value for m in messages], pa.binary())}), messages
    before = len(rejected)
    texts = _decode_utf8(messages, "value", rejected)
    bad = {id(r.message) for r in rejected[before:]}
    kept = [(m, t) for m, t in zip(messages, texts, strict=True) if id(m) not in bad]
    return pa.table({"value": pa.array([t for _, t in kept], pa.string())}), [m for m, _ in kept]


@dataclasses.dataclass
class Decoded:
    """One decoded poll: the batch (None when nothing decoded), its messages row by row, the rejects."""

    batch: pa.RecordBatch | None
    messages: list[RawMessage]
    rejected: list[Rejected]


def decode_messages(messages: list[RawMessage], opts: DecodeOptions) -> Decoded:
    """Decodes messages into one RecordBatch; the ones that cannot be decoded come back as ``Rejected``."""
    rejected: list[Rejected] = []
    table, kept = _value_table(messages, opts, rejected)
    if opts.columns:
        table = project(table, list(opts.columns), dict(opts.types))
    meta = _metadata_columns(kept, opts, rejected)
    for name, column in meta.items():
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, column)
    bad_ids = {id(r.message) for r in rejected}
    if bad_ids.intersection(id(m) for m in kept):  # a bad key found after the value decoded
        table = table.filter(pa.array([id(m) not in bad_ids for m in kept]))
        kept = [m for m in kept if id(m) not in bad_ids]
    if not kept or not table.num_rows:
        return Decoded(None, [], rejected)
    batch = table.combine_chunks().to_batches()[0]
    if opts.types:
        outcome = cast_batch(batch, dict(opts.types))
        bad_rows = {}
        for row, column, value in outcome.bad_rows:
            bad_rows[row] = column
            rejected.append(Rejected(kept[row], "type", f"field {column!r}: {value!r} is not a valid "
                                                        f"{opts.types[column]}", "ArrowInvalid"))
        kept = [m for i, m in enumerate(kept) if i not in bad_rows]
        batch = outcome.batch
    return Decoded(batch if batch.num_rows else None, kept if batch.num_rows else [], rejected)


def event_times_ms(batch: pa.RecordBatch, messages: list[RawMessage], field: str | None) -> list[int | None]:
    """Event time of each row in epoch milliseconds: the record timestamp, or ``field`` of the value.

    ``field`` may hold an Arrow timestamp/date, epoch milliseconds (integers) or ISO-8601 text; a
    row whose field is missing or unreadable gets None.
    """
    if field is None:
        return [m.timestamp_ms for m in messages]
    if field not in batch.schema.names:
        return [None] * batch.num_rows
    column = batch.column(field)
    t = column.type
    if pa.types.is_integer(t):
        return column.cast(pa.int64()).to_pylist()
    if pa.types.is_floating(t):
        return [None if v is None else int(v) for v in column.to_pylist()]
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return column.cast(pa.timestamp("ms", tz="UTC") if pa.types.is_timestamp(t) else pa.timestamp("ms")).cast(
            pa.int64()).to_pylist()
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return [_iso_ms(v) for v in column.to_pylist()]
    return [None] * batch.num_rows


def _iso_ms(text: str | None) -> int | None:
    import datetime as dt

    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp() * 1000)
