"""BSON documents <-> Arrow batches for the MongoDB connectors (no Beam, no server).

Reading: documents are decoded one at a time (so one bad document cannot sink its batch),
then each field's values are scanned once to pick an Arrow type:

* ObjectId -> string (field metadata ``beam_etl.bson: objectId`` on top-level fields),
  datetime -> timestamp[us, UTC], Decimal128 -> decimal128(38, s) (text when a value is
  NaN/Infinity or does not fit), binary -> binary, UUID -> string, int + double -> double,
  other BSON types (Regex, Code, Timestamp, MinKey...) -> their string form.
* ``nested="struct"``: sub-documents become structs (keys unified across the batch),
  arrays become lists; ``nested="json"``: sub-documents and arrays become JSON text.
* Values of one field whose kinds conflict (e.g. int and string, or a scalar and a
  sub-document) become JSON text for that field only (metadata ``beam_etl.bson: json``).

Writing: Arrow rows become documents; decimals -> Decimal128, dates -> datetimes at midnight
UTC, times -> ISO text, structs/lists -> sub-documents/arrays, ``json_fields`` parsed back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import decimal
import gc
import json
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import bson
import pyarrow as pa
from bson import json_util
from bson.codec_options import CodecOptions, DatetimeConversion, TypeDecoder, TypeRegistry
from bson.decimal128 import Decimal128
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument

from beam_etl.batch import json_safe

NESTED_MODES = ("struct", "json")
BSON_META = b"beam_etl.bson"
OBJECT_ID = b"objectId"
JSON_TEXT = b"json"
_MAX_PRECISION = 38
_US_LIMIT = 2 ** 63 - 1


class ObjectIdStr(str):
    """An ObjectId decoded as its 24-hex-digit text (a ``str``, so Arrow takes it as one)."""

    __slots__ = ()


class _ObjectIdDecoder(TypeDecoder):
    bson_type = ObjectId

    def transform_bson(self, value: ObjectId) -> ObjectIdStr:
        return ObjectIdStr(str(value))


class _Decimal128Decoder(TypeDecoder):
    bson_type = Decimal128

    def transform_bson(self, value: Decimal128) -> decimal.Decimal:
        return value.to_decimal()


READ_CODEC = CodecOptions(
    tz_aware=True, tzinfo=dt.UTC, uuid_representation=4,  # 4 = standard: binary subtype 4 <-> uuid.UUID
    datetime_conversion=DatetimeConversion.DATETIME_AUTO,  # out-of-range dates arrive as DatetimeMS
    type_registry=TypeRegistry([_ObjectIdDecoder(), _Decimal128Decoder()]),
)
LENIENT_CODEC = CodecOptions(
    tz_aware=True, tzinfo=dt.UTC, uuid_representation=4, datetime_conversion=DatetimeConversion.DATETIME_MS,
    unicode_decode_error_handler="backslashreplace",
)
RAW_CODEC = CodecOptions(document_class=RawBSONDocument, uuid_representation=4)
WRITE_CODEC = CodecOptions(tz_aware=True, tzinfo=dt.UTC, uuid_representation=4)


class BadValue(ValueError):
    """A value that cannot become its field's Arrow type (the document goes to the DLQ)."""


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pauses Python's cyclic garbage collector while a batch becomes (or stops being) Python objects.

    Tens of thousands of fresh dicts trigger repeated full collections that find nothing (the
    documents hold no reference cycles): pausing them roughly halves decode time. Reference
    counting still frees everything; nested pauses (threads) re-enable on the last exit.
    """
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


# ----------------------------------------------------------------------------- reading


def decode(raw: bytes) -> dict[str, Any]:
    """Decodes one BSON document with the reading codec (raises on invalid BSON / UTF-8)."""
    return bson.decode(raw, codec_options=READ_CODEC)


def decode_lenient(raw: bytes) -> dict[str, Any]:
    """Best-effort decode for a dead letter: bad UTF-8 escaped, dates as milliseconds."""
    try:
        return bson.decode(raw, codec_options=LENIENT_CODEC)
    except Exception:  # noqa: BLE001 - the raw bytes are still worth keeping
        return {"_raw_bson": raw}


_KINDS: dict[type, str] = {
    bool: "bool", int: "int", bson.int64.Int64: "int", float: "float", str: "string", ObjectIdStr: "string",
    bytes: "binary", bson.binary.Binary: "binary", dt.datetime: "timestamp", bson.datetime_ms.DatetimeMS: "timestamp",
    decimal.Decimal: "decimal", uuid.UUID: "uuid", dict: "struct", bson.son.SON: "struct", list: "list",
    tuple: "list",
}


def _kind(t: type) -> str:
    kind = _KINDS.get(t)
    if kind is None:
        if issubclass(t, dict):
            return "struct"
        if issubclass(t, str):
            return "string"
        if issubclass(t, bytes):
            return "binary"
        return "other"
    return kind


Converter = Callable[[Any], Any]


@dataclasses.dataclass
class Node:
    """The Arrow type chosen for one field, and how to convert its Python values (None: as they are)."""

    type: pa.DataType
    convert: Converter | None = None
    hint: bytes | None = None  # BSON_META value for a top-level field


def _to_json_text(value: Any) -> str:
    return json.dumps(_json_value(value), ensure_ascii=False, separators=(",", ":"))


def _json_value(value: Any) -> Any:
    if isinstance(value, bson.datetime_ms.DatetimeMS):
        try:
            return value.as_datetime(CodecOptions(tz_aware=True)).isoformat()
        except (OverflowError, ValueError, OSError):
            return {"$date": {"$numberLong": str(int(value))}}
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if _kind(type(value)) == "other":
        return json.loads(_extended_json_text(value))
    return json_safe(value)


def _json_node() -> Node:
    def convert(value: Any) -> Any:
        return None if value is None else _to_json_text(value)

    return Node(pa.string(), convert, JSON_TEXT)


def _timestamp_us(value: Any) -> Any:
    if isinstance(value, bson.datetime_ms.DatetimeMS):
        us = int(value) * 1000
        if abs(us) > _US_LIMIT:
            raise BadValue(f"date {int(value)} ms since 1970 is outside the timestamp[us] range")
        return us
    return value


def _decimal_node(values: Sequence[decimal.Decimal]) -> Node:
    scale = 0
    digits = 0
    for v in values:
        if not v.is_finite():
            return Node(pa.string(), _str_or_none)
        _, ds, exp = v.as_tuple()
        scale = max(scale, -exp)
        digits = max(digits, len(ds) + exp)
    if digits + scale > _MAX_PRECISION:
        return Node(pa.string(), _str_or_none)
    return Node(pa.decimal128(_MAX_PRECISION, scale))


def _str_or_none(value: Any) -> Any:
    return None if value is None else str(value)


def _extended_json_text(value: Any) -> Any:
    """Regex, Code, Timestamp, MinKey... as relaxed Extended JSON text (``{"$regularExpression": ...}``)."""
    return None if value is None else json_util.dumps(value, json_options=json_util.RELAXED_JSON_OPTIONS)


def infer(values: Sequence[Any], nested: str, top: bool = False) -> Node:
    """Picks the Arrow type for the values of one field (None and missing are nulls)."""
    types = {type(v) for v in values}
    types.discard(type(None))
    if not types:
        return Node(pa.null())
    kinds = {_kind(t) for t in types}
    if kinds == {"int", "float"}:
        kinds = {"float"}
    if len(kinds) > 1:
        return _json_node()
    (kind,) = kinds
    if kind in ("struct", "list") and nested == "json":
        return _json_node()
    if kind == "bool":
        return Node(pa.bool_())
    if kind == "int":
        return Node(pa.int64())
    if kind == "float":
        return Node(pa.float64())
    if kind == "string":
        return Node(pa.string(), None, OBJECT_ID if top and types == {ObjectIdStr} else None)
    if kind == "binary":
        return Node(pa.binary())
    if kind == "timestamp":
        conv = _timestamp_us if bson.datetime_ms.DatetimeMS in types else None
        return Node(pa.timestamp("us", "UTC"), conv)
    if kind == "decimal":
        return _decimal_node([v for v in values if v is not None])
    if kind == "uuid":
        return Node(pa.string(), _str_or_none)
    if kind == "other":
        return Node(pa.string(), _extended_json_text)
    if kind == "list":
        return _list_node(values, nested)
    return _struct_node(values, nested)


def _list_node(values: Sequence[Any], nested: str) -> Node:
    items = [item for v in values if v is not None for item in v]
    child = infer(items, nested)
    if child.hint == JSON_TEXT and child.convert is not None and items:
        # items of mixed kinds: the whole array is one JSON text (keeps its shape readable)
        return _json_node()
    conv = child.convert
    if conv is None:
        return Node(pa.list_(child.type))

    def convert(value: Any) -> Any:
        return None if value is None else [conv(item) for item in value]

    return Node(pa.list_(child.type), convert)


def _struct_node(values: Sequence[Any], nested: str) -> Node:
    keys: dict[str, None] = {}
    for v in values:
        if v is not None:
            keys.update(dict.fromkeys(v))
    if not keys:
        return _json_node()  # only empty sub-documents: a struct without fields cannot be stored (Parquet)
    children = {k: infer([v.get(k) if v is not None else None for v in values], nested) for k in keys}
    fields = [pa.field(k, c.type) for k, c in children.items()]
    converters = {k: c.convert for k, c in children.items() if c.convert is not None}
    if not converters:
        return Node(pa.struct(fields))

    def convert(value: Any) -> Any:
        if value is None:
            return None
        out = dict(value)
        for k, fn in converters.items():
            if k in out:
                out[k] = fn(out[k])
        return out

    return Node(pa.struct(fields), convert)


@dataclasses.dataclass
class DocsBatch:
    """Arrow rows of the documents that converted, and why the others did not."""

    batch: pa.RecordBatch | None
    kept: list[int]  # indexes (into the input documents) of the batch's rows
    bad: dict[int, str]  # index -> reason


def documents_to_batch(docs: Sequence[dict[str, Any]], nested: str = "struct") -> DocsBatch:
    """Converts decoded documents to one RecordBatch; documents with a bad value are left out."""
    names: dict[str, None] = {}
    for doc in docs:
        names.update(dict.fromkeys(doc))
    bad: dict[int, str] = {}
    columns: list[list[Any]] = []
    fields: list[pa.Field] = []
    for name in names:
        values = [doc.get(name) for doc in docs]
        node = infer(values, nested, top=True)
        if node.convert is not None:
            converted = []
            for i, value in enumerate(values):
                try:
                    converted.append(node.convert(value))
                except (BadValue, OverflowError, ValueError, TypeError) as why:
                    bad.setdefault(i, f"field {name!r}: {why}")
                    converted.append(None)
            values = converted
        columns.append(values)
        meta = {BSON_META: node.hint} if node.hint else None
        fields.append(pa.field(name, node.type, metadata=meta))
    kept = [i for i in range(len(docs)) if i not in bad]
    if not docs:
        return DocsBatch(None, [], {})
    arrays = []
    for values, field in zip(columns, fields, strict=True):
        if bad:
            values = [values[i] for i in kept]
        arrays.append(_array(values, field, bad))
    if not kept:
        return DocsBatch(None, [], bad)
    batch = pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))
    return DocsBatch(batch, kept, bad)


def _array(values: list[Any], field: pa.Field, bad: dict[int, str]) -> pa.Array:
    try:
        return pa.array(values, type=field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as err:  # should not happen: inference saw them
        raise BadValue(f"field {field.name!r} ({field.type}): {err}") from err


# ----------------------------------------------------------------------------- writing


@dataclasses.dataclass(frozen=True)
class WriteHints:
    """Which columns need more than Arrow's own Python conversion."""

    object_id_fields: frozenset[str] = frozenset()
    json_fields: frozenset[str] = frozenset()
    omit_nulls: bool = False
    decimals: str = "decimal128"


def hints_for(schema: pa.Schema, object_id_fields: Iterable[str] | None, json_fields: Iterable[str] | None,
              omit_nulls: bool, decimals: str = "decimal128") -> WriteHints:
    """Explicit lists win; otherwise the reader's field metadata says which columns are ObjectIds / JSON."""
    def tagged(value: bytes) -> set[str]:
        return {f.name for f in schema if (f.metadata or {}).get(BSON_META) == value and pa.types.is_string(f.type)}

    oids = set(object_id_fields) if object_id_fields is not None else tagged(OBJECT_ID)
    jsons = set(json_fields) if json_fields is not None else tagged(JSON_TEXT)
    return WriteHints(frozenset(oids), frozenset(jsons), omit_nulls, decimals)


def _needs_python(t: pa.DataType) -> bool:
    """True when Arrow's to_pylist values are not all BSON-encodable as they are."""
    if pa.types.is_decimal(t) or pa.types.is_time(t) or pa.types.is_map(t) or pa.types.is_date(t):
        return True
    if pa.types.is_timestamp(t) and t.unit == "ns":
        return True
    if pa.types.is_duration(t) or pa.types.is_interval(t) or pa.types.is_uint64(t):
        return True
    if pa.types.is_struct(t):
        return any(_needs_python(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) or \
            pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return _needs_python(t.value_type)
    return False


def _plain_column(arr: pa.Array) -> pa.Array:
    """Vectorised casts that make to_pylist give BSON-friendly values."""
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.dictionary_decode()
        t = arr.type
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return arr.cast(pa.string())
    if pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) or pa.types.is_binary_view(t):
        return arr.cast(pa.binary())
    if pa.types.is_float16(t):
        return arr.cast(pa.float64())
    if pa.types.is_timestamp(t) and t.unit == "ns":
        return arr.cast(pa.timestamp("us", t.tz), safe=False)  # BSON dates hold milliseconds anyway
    if pa.types.is_date(t):
        return arr.cast(pa.timestamp("ms", "UTC"))  # BSON has no date type: midnight UTC
    return arr


def _to_python(arr: pa.Array) -> list[Any]:
    """``arr.to_pylist()``, about twice as fast for timestamps, structs and lists.

    Zoned timestamps become naive UTC datetimes (BSON dates are UTC; pymongo reads naive as
    UTC), which skips a time-zone conversion per value; structs and lists are assembled from
    their children's values instead of value by value.
    """
    t = arr.type
    if pa.types.is_timestamp(t):
        return arr.cast(pa.timestamp(t.unit)).to_pylist() if t.tz is not None else arr.to_pylist()
    if pa.types.is_struct(t) and t.num_fields:
        names = [t.field(i).name for i in range(t.num_fields)]
        children = [_to_python(_plain_column(arr.field(i))) for i in range(t.num_fields)]
        rows: list[Any] = [dict(zip(names, values, strict=True)) for values in zip(*children, strict=True)]
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        offsets = arr.offsets.to_pylist()
        start = offsets[0]
        items = _to_python(_plain_column(arr.values.slice(start, offsets[-1] - start)))
        rows = [items[a - start:b - start] for a, b in zip(offsets, offsets[1:], strict=False)]
    else:
        return arr.to_pylist()
    if arr.null_count:
        for i, null in enumerate(arr.is_null().to_pylist()):
            if null:
                rows[i] = None
    return rows


def _bsonable(value: Any, decimals: str = "decimal128") -> Any:
    """Converts one Python value from Arrow into something BSON encodes (recursively)."""
    if value is None or isinstance(value, (bool, int, float, str, bytes, dt.datetime)):
        if isinstance(value, int) and not isinstance(value, bool) and not -2 ** 63 <= value < 2 ** 63:
            raise BadValue(f"integer {value} does not fit BSON's 64-bit integers")
        return value
    if isinstance(value, decimal.Decimal):
        if decimals == "string":
            return str(value)
        if decimals == "double":
            return float(value)
        try:
            return Decimal128(value)
        except (decimal.InvalidOperation, ValueError) as err:
            raise BadValue(f"decimal {value} does not fit Decimal128 (34 digits)") from err
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if isinstance(value, dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value // dt.timedelta(microseconds=1)
    if isinstance(value, dict):
        return {str(k): _bsonable(v, decimals) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_bsonable(v, decimals) for v in value]
    return str(value)


def _column_values(arr: pa.Array, name: str, hints: WriteHints, bad: dict[int, str]) -> list[Any]:
    arr = _plain_column(arr)
    t = arr.type
    has_map = pa.types.is_map(t) or _has_map(t)
    values = [_maps_to_dicts(v, t) for v in arr.to_pylist()] if has_map else _to_python(arr)
    if name in hints.json_fields and (pa.types.is_string(t) or pa.types.is_large_string(t)):
        for i, v in enumerate(values):
            if v is not None:
                try:
                    values[i] = json.loads(v)
                except ValueError as err:
                    bad.setdefault(i, f"field {name!r} is in json_fields but {v[:60]!r} is not JSON: {err}")
    elif name in hints.object_id_fields:
        for i, v in enumerate(values):
            if v is not None:
                if isinstance(v, str) and ObjectId.is_valid(v):
                    values[i] = ObjectId(v)
                else:
                    bad.setdefault(i, f"field {name!r} is an ObjectId field but {v!r} is not 24 hex digits")
    elif _needs_python(t):
        for i, v in enumerate(values):
            try:
                values[i] = _bsonable(v, hints.decimals)
            except BadValue as why:
                bad.setdefault(i, f"field {name!r}: {why}")
                values[i] = None
    return values


def _has_map(t: pa.DataType) -> bool:
    if pa.types.is_map(t):
        return True
    if pa.types.is_struct(t):
        return any(_has_map(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _has_map(t.value_type)
    return False


def _maps_to_dicts(value: Any, t: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_map(t):
        return {str(k): _maps_to_dicts(v, t.item_type) for k, v in value}
    if pa.types.is_struct(t):
        return {t.field(i).name: _maps_to_dicts(value.get(t.field(i).name), t.field(i).type)
                for i in range(t.num_fields)}
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return [_maps_to_dicts(v, t.value_type) for v in value]
    return value


def batch_to_documents(batch: pa.RecordBatch, hints: WriteHints) -> tuple[list[dict[str, Any] | None], dict[int, str]]:
    """Rows as BSON-ready documents (None where a row cannot be written) and ``{row: reason}``."""
    bad: dict[int, str] = {}
    names = batch.schema.names
    columns = [_column_values(col, name, hints, bad) for name, col in zip(names, batch.columns, strict=True)]
    docs: list[dict[str, Any] | None] = []
    for i in range(batch.num_rows):
        if i in bad:
            docs.append(None)
            continue
        if hints.omit_nulls:
            docs.append({n: c[i] for n, c in zip(names, columns, strict=True) if c[i] is not None})
        else:
            docs.append({n: c[i] for n, c in zip(names, columns, strict=True)})
    return docs, bad


def encode(doc: dict[str, Any], max_size: int) -> RawBSONDocument:
    """Encodes one document (raising BadValue when BSON cannot hold it)."""
    try:
        raw = bson.encode(doc, codec_options=WRITE_CODEC)
    except (bson.errors.InvalidDocument, OverflowError, TypeError, ValueError) as err:
        raise BadValue(f"cannot encode the document as BSON: {err}") from err
    if len(raw) > max_size:
        raise BadValue(f"the document is {len(raw):,} bytes as BSON; the server's limit is {max_size:,}")
    return RawBSONDocument(raw, RAW_CODEC)
