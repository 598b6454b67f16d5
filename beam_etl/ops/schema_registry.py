"""Schema registry: versioned Arrow schemas per ``(pipeline, table)``, their diff and widening rules.

Schemas are stored as canonical, metadata-free JSON::

    {"fields": [{"name": "id", "type": "int64", "nullable": false}, ...]}

Type strings are this module's own (``type_to_string`` / ``parse_type``), so hashes do not move
with pyarrow's ``str()``: ``float32``/``float64`` (never ``float``/``double``), ``date32``,
``timestamp[us, tz=UTC]``, ``decimal128(10, 2)``, ``list<int64>``, ``struct<a: int64 not null>``,
``map<string, int64>``; a dictionary-encoded column has its value type (an encoding, not a type).
The hash is the sha256 of the canonical JSON with the fields sorted by name: reordering columns
is not a new version.

Versions live in the incremental-state store of ``beam_etl.ops.state`` (SQLite file or
PostgreSQL), table ``beam_etl_schema_versions``. ``register`` returns the latest version when
its hash matches, else appends version n+1 (a schema that returns to an older shape gets a new
version: *latest* is always the current shape).

Widening lattice (``widens(old, new)``: every value of ``old`` fits ``new``):

- ``null`` -> any type (a column that was always empty gets a type)
- ints: ``int8 -> int16 -> int32 -> int64``; ``uint8 -> uint16 -> uint32 -> uint64``;
  ``uintN -> int(2N)``
- int -> float: 8-bit ints to any float, 16-bit to ``float32``/``float64``, wider to ``float64``
  (exact up to 2**53)
- int -> ``decimal(p, s)`` when ``p - s`` holds the int's digits (3/5/10/19, uint64: 20)
- ``float16 -> float32 -> float64``; ``decimal(p1, s1) -> decimal(p2, s2)`` when ``s2 >= s1`` and
  ``p2 - s2 >= p1 - s1``; decimal -> ``float64`` (precision may round, like int64 -> float64)
- ``date32 -> date64 -> timestamp[*]`` (naive); timestamp, time and duration units
  ``s -> ms -> us -> ns`` (same zone only; naive <-> zoned is a change)
- ``string -> large_string``, ``binary -> large_binary`` (Arrow strings carry no length)
- ``list<a> -> list<b> | large_list<b>`` when ``a`` fits ``b``; ``struct``: every old field fits
  the same-named new field, new fields may be added; ``map`` key- and item-wise

The reverse of a widening is a *narrowing* (float -> decimal, timestamp -> date, int64 ->
int32); anything else (int -> string, bool -> int) is a *change*.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from beam_etl.ops.state import StateError, open_store

TABLE = "beam_etl_schema_versions"
PENDING_SCHEMA_DIR = "_state/schemas"
RENAME_THRESHOLD = 0.8

# --------------------------------------------------------------------------------------
# Type strings
# --------------------------------------------------------------------------------------

_NAMED: dict[str, pa.DataType] = {
    "null": pa.null(), "bool": pa.bool_(),
    "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
    "uint8": pa.uint8(), "uint16": pa.uint16(), "uint32": pa.uint32(), "uint64": pa.uint64(),
    "float16": pa.float16(), "float32": pa.float32(), "float64": pa.float64(),
    "string": pa.string(), "large_string": pa.large_string(), "string_view": pa.string_view(),
    "binary": pa.binary(), "large_binary": pa.large_binary(), "binary_view": pa.binary_view(),
    "date32": pa.date32(), "date64": pa.date64(),
}
_NAME_OF = {t: name for name, t in _NAMED.items()}
# Friendly names accepted in ``schema: {field: type}`` (``float`` is float64, as in Cast).
_ALIASES: dict[str, pa.DataType] = {
    "int": pa.int64(), "integer": pa.int64(), "bigint": pa.int64(), "long": pa.int64(),
    "float": pa.float64(), "double": pa.float64(), "halffloat": pa.float16(),
    "str": pa.string(), "text": pa.string(), "utf8": pa.string(), "large_utf8": pa.large_string(),
    "boolean": pa.bool_(), "date": pa.date32(), "date32[day]": pa.date32(), "date64[ms]": pa.date64(),
    "timestamp": pa.timestamp("us"), "datetime": pa.timestamp("us"),
}
_UNIT_RANK = {"s": 0, "ms": 1, "us": 2, "ns": 3}
_UNIT_RE = r"(s|ms|us|ns)"


def type_to_string(t: pa.DataType) -> str:
    """The canonical type string of ``t`` (inverse of ``parse_type``)."""
    if pa.types.is_dictionary(t):
        return type_to_string(t.value_type)
    if t in _NAME_OF:
        return _NAME_OF[t]
    if pa.types.is_timestamp(t):
        return f"timestamp[{t.unit}, tz={t.tz}]" if t.tz else f"timestamp[{t.unit}]"
    if pa.types.is_fixed_size_list(t):
        return f"fixed_size_list<{_child(t.value_field)}>[{t.list_size}]"
    if pa.types.is_large_list(t):
        return f"large_list<{_child(t.value_field)}>"
    if pa.types.is_list(t):
        return f"list<{_child(t.value_field)}>"
    if pa.types.is_map(t):
        return f"map<{type_to_string(t.key_type)}, {_child(t.item_field)}>"
    if pa.types.is_struct(t):
        return "struct<" + ", ".join(f"{f.name}: {_child(f)}" for f in t) + ">"
    return str(t)  # decimal128(p, s), time32[ms], duration[s], fixed_size_binary[n]


def _child(f: pa.Field) -> str:
    return type_to_string(f.type) + ("" if f.nullable else " not null")


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Splits on ``sep`` outside <>, () and []."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "<([":
            depth += 1
        elif ch in ">)]":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _parse_field(text: str, name: str, where: str) -> pa.Field:
    nullable = not text.endswith(" not null")
    text = text.removesuffix(" not null").strip()
    if m := re.fullmatch(r"([A-Za-z_]\w*):\s+(.+)", text, re.S):  # Arrow's "item: int64"
        text = m.group(2)
    return pa.field(name, parse_type(text, where), nullable=nullable)


def parse_type(text: str, where: str = "type") -> pa.DataType:
    """Parses a canonical type string, Arrow's ``str(type)`` or a friendly alias (``int``, ``float``...)."""
    s = str(text).strip()
    low = s.lower()
    if low in _NAMED:
        return _NAMED[low]
    if low in _ALIASES:
        return _ALIASES[low]
    if m := re.fullmatch(rf"timestamp\[{_UNIT_RE}(?:,\s*tz=(.+))?\]", s):
        return pa.timestamp(m.group(1), m.group(2))
    if m := re.fullmatch(r"timestamp\((.+)\)", s):
        return pa.timestamp("us", m.group(1).strip())
    if m := re.fullmatch(rf"(time32|time64|duration)\[{_UNIT_RE}\]", s):
        return {"time32": pa.time32, "time64": pa.time64, "duration": pa.duration}[m.group(1)](m.group(2))
    if m := re.fullmatch(r"(decimal|decimal128|decimal256)\(\s*(\d+)\s*,\s*(\d+)\s*\)", low):
        precision, scale = int(m.group(2)), int(m.group(3))
        big = m.group(1) == "decimal256" or precision > 38
        return (pa.decimal256 if big else pa.decimal128)(precision, scale)
    if m := re.fullmatch(r"fixed_size_binary\[(\d+)\]", s):
        return pa.binary(int(m.group(1)))
    if m := re.fullmatch(r"(\w+)<(.*)>(?:\[(\d+)\])?", s, re.S):
        kind, inner, size = m.group(1).lower(), m.group(2), m.group(3)
        if kind in ("list", "large_list", "fixed_size_list"):
            item = _parse_field(inner, "item", where)
            if kind == "fixed_size_list":
                return pa.list_(item, int(size or 0))
            return pa.large_list(item) if kind == "large_list" else pa.list_(item)
        if kind == "struct":
            fields = []
            for part in _split_top(inner) if inner.strip() else []:
                name, _, rest = part.partition(": ")
                fields.append(_parse_field(rest, name, where))
            return pa.struct(fields)
        if kind == "map":
            key, item = _split_top(inner)
            return pa.map_(parse_type(key, where), _parse_field(item, "value", where))
        if kind == "dictionary":  # Arrow's form: values=..., indices=..., ordered=...
            values = next((p.split("=", 1)[1] for p in _split_top(inner) if p.startswith("values=")), None)
            if values:
                return parse_type(values, where)
    raise ValueError(f"{where}: {text!r} is not a type; use e.g. int64, float64, string, bool, date, "
                     "timestamp[us], timestamp[us, tz=UTC], decimal128(10, 2), list<int64>")


# --------------------------------------------------------------------------------------
# Canonical JSON and hash
# --------------------------------------------------------------------------------------


def normalize_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` without metadata and with dictionary columns as their value type."""
    return pa.schema([pa.field(f.name, parse_type(type_to_string(f.type)), f.nullable) for f in schema])


def schema_to_dict(schema: pa.Schema) -> dict[str, Any]:
    """``{"fields": [{"name", "type", "nullable"}, ...]}`` in column order."""
    return {"fields": [{"name": f.name, "type": type_to_string(f.type), "nullable": bool(f.nullable)}
                       for f in schema]}


def schema_from_dict(doc: Mapping[str, Any], where: str = "schema") -> pa.Schema:
    """Inverse of ``schema_to_dict``; also takes a plain ``{field: type}`` mapping (all nullable)."""
    if not isinstance(doc, Mapping):
        raise ValueError(f"{where}: expected a mapping, not {type(doc).__name__}")
    if isinstance(doc.get("fields"), list):
        fields = []
        for i, f in enumerate(doc["fields"]):
            if not isinstance(f, Mapping) or "name" not in f or "type" not in f:
                raise ValueError(f"{where}.fields[{i}]: {f!r} needs a name and a type")
            fields.append(pa.field(str(f["name"]), parse_type(f["type"], f"{where}.{f['name']}"),
                                   bool(f.get("nullable", True))))
    else:
        fields = [pa.field(str(name), parse_type(text, f"{where}.{name}")) for name, text in doc.items()]
    names = [f.name for f in fields]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{where}: column(s) {dupes} listed more than once")
    return pa.schema(fields)


def load_schema(source: pa.Schema | Mapping[str, Any] | str | Path, where: str = "schema") -> pa.Schema:
    """A schema from an Arrow schema, a mapping, or a file: ``.json`` (canonical or ``{field: type}``),
    ``.yaml``/``.yml`` (same shapes) or ``.parquet`` (its schema)."""
    if isinstance(source, pa.Schema):
        return normalize_schema(source)
    if isinstance(source, Mapping):
        return schema_from_dict(source, where)
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"{where}: schema file {str(path)!r} does not exist")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return normalize_schema(pq.read_schema(path))
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            doc = yaml.safe_load(text)
        else:
            doc = json.loads(text)
    except ValueError as err:  # json.JSONDecodeError and yaml.YAMLError's parse errors
        raise ValueError(f"{where}: cannot parse schema file {str(path)!r}: {err}") from None
    return schema_from_dict(doc, f"{where} ({path.name})")


def canonical_json(schema: pa.Schema) -> str:
    """Compact, key-sorted JSON of the schema with its fields sorted by name (what is hashed)."""
    fields = sorted(schema_to_dict(schema)["fields"], key=lambda f: f["name"])
    return json.dumps({"fields": fields}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def schema_hash(schema: pa.Schema) -> str:
    """sha256 (hex) of ``canonical_json(schema)``."""
    return hashlib.sha256(canonical_json(schema).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------
# The widening lattice
# --------------------------------------------------------------------------------------

_INT_DIGITS = {8: 3, 16: 5, 32: 10, 64: 19}


def _int_digits(t: pa.DataType) -> int:
    return 20 if t == pa.uint64() else _INT_DIGITS[t.bit_width]


def _same(a: pa.DataType, b: pa.DataType) -> bool:
    return type_to_string(a) == type_to_string(b)


def _field_fits(old: pa.Field, new: pa.Field) -> bool:
    return fits(old.type, new.type) and (new.nullable or not old.nullable)


def _int_fits(old: pa.DataType, new: pa.DataType) -> bool:
    old_signed, new_signed = pa.types.is_signed_integer(old), pa.types.is_signed_integer(new)
    if old_signed == new_signed:
        return new.bit_width >= old.bit_width
    return new_signed and new.bit_width > old.bit_width


def _nested_fits(old: pa.DataType, new: pa.DataType) -> bool:
    if pa.types.is_list(old) or pa.types.is_large_list(old) or pa.types.is_fixed_size_list(old):
        if pa.types.is_large_list(new) or (pa.types.is_list(new) and not pa.types.is_large_list(old)):
            return _field_fits(old.value_field, new.value_field)
        return False
    if pa.types.is_map(old) and pa.types.is_map(new):
        return fits(old.key_type, new.key_type) and _field_fits(old.item_field, new.item_field)
    if pa.types.is_struct(old) and pa.types.is_struct(new):
        by_name = {f.name: f for f in new}
        return all(f.name in by_name and _field_fits(f, by_name[f.name]) for f in old)
    return False


def fits(old: pa.DataType, new: pa.DataType) -> bool:
    """True when every value of ``old`` can be stored as ``new`` (equal types included)."""
    if _same(old, new) or pa.types.is_null(old):
        return True
    old = old.value_type if pa.types.is_dictionary(old) else old
    new = new.value_type if pa.types.is_dictionary(new) else new
    if pa.types.is_integer(old):
        if pa.types.is_integer(new):
            return _int_fits(old, new)
        if pa.types.is_floating(new):
            return old.bit_width <= 8 or new.bit_width >= 64 or (old.bit_width <= 16 and new.bit_width >= 32)
        if pa.types.is_decimal(new):
            return new.precision - new.scale >= _int_digits(old)
        return False
    if pa.types.is_floating(old):
        return pa.types.is_floating(new) and new.bit_width >= old.bit_width
    if pa.types.is_decimal(old):
        if pa.types.is_decimal(new):
            return new.scale >= old.scale and new.precision - new.scale >= old.precision - old.scale
        return new == pa.float64()
    if pa.types.is_date(old):
        return (pa.types.is_date64(new) and pa.types.is_date32(old)) or (pa.types.is_timestamp(new) and not new.tz)
    if pa.types.is_timestamp(old):
        return pa.types.is_timestamp(new) and new.tz == old.tz and _UNIT_RANK[new.unit] >= _UNIT_RANK[old.unit]
    if pa.types.is_time(old) or pa.types.is_duration(old):
        same_kind = pa.types.is_time(new) if pa.types.is_time(old) else pa.types.is_duration(new)
        return same_kind and _UNIT_RANK[new.unit] >= _UNIT_RANK[old.unit]
    if old == pa.string():
        return new == pa.large_string()
    if old == pa.binary():
        return new == pa.large_binary()
    return _nested_fits(old, new)


def widens(old: pa.DataType, new: pa.DataType) -> bool:
    """True when ``new`` is a strictly wider type than ``old`` (a widening, see the module doc)."""
    return not _same(old, new) and fits(old, new)


def _decimal_join(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    def shape(t: pa.DataType) -> tuple[int, int] | None:
        if pa.types.is_decimal(t):
            return t.precision - t.scale, t.scale
        return (_int_digits(t), 0) if pa.types.is_integer(t) else None

    sa, sb = shape(a), shape(b)
    if sa is None or sb is None:
        return None
    digits, scale = max(sa[0], sb[0]), max(sa[1], sb[1])
    if digits + scale > 76:
        return None
    return (pa.decimal128 if digits + scale <= 38 else pa.decimal256)(digits + scale, scale)


def common_supertype(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """The narrowest type both ``a`` and ``b`` fit into, or None (e.g. int64 and string)."""
    if fits(a, b):
        return b
    if fits(b, a):
        return a
    candidates = [pa.int16(), pa.int32(), pa.int64(), _decimal_join(a, b), pa.float64(), pa.large_string(),
                  pa.large_binary()]
    if pa.types.is_timestamp(a) and pa.types.is_timestamp(b) and a.tz == b.tz:
        candidates.append(pa.timestamp(max(a.unit, b.unit, key=_UNIT_RANK.get), a.tz))
    return next((c for c in candidates if c is not None and fits(a, c) and fits(b, c)), None)


def merge_schemas(base: pa.Schema, other: pa.Schema) -> pa.Schema:
    """``base`` evolved by ``other``: shared columns take their common supertype (the base type when
    none exists), new columns are appended, nullable wins; columns are never removed."""
    fields = []
    theirs = {f.name: f for f in other}
    for f in base:
        o = theirs.get(f.name)
        if o is None:
            fields.append(f)
            continue
        merged = common_supertype(f.type, o.type) or f.type
        fields.append(pa.field(f.name, merged, f.nullable or o.nullable))
    ours = set(base.names)
    fields.extend(f for f in other if f.name not in ours)
    return normalize_schema(pa.schema(fields))


# --------------------------------------------------------------------------------------
# Diff
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool


@dataclasses.dataclass(frozen=True)
class RenameCandidate:
    old: str
    new: str
    type: str
    score: float


@dataclasses.dataclass(frozen=True)
class TypeChange:
    column: str
    old_type: str
    new_type: str


@dataclasses.dataclass(frozen=True)
class NullabilityChange:
    column: str
    old_nullable: bool
    new_nullable: bool


@dataclasses.dataclass(frozen=True)
class SchemaDiff:
    """What changed from ``old`` to ``new``; renames are candidates, so their columns also stay in
    ``added``/``removed``. ``changed`` holds type changes that are neither widening nor narrowing."""

    added: tuple[Column, ...] = ()
    removed: tuple[Column, ...] = ()
    rename_candidates: tuple[RenameCandidate, ...] = ()
    widened: tuple[TypeChange, ...] = ()
    narrowed: tuple[TypeChange, ...] = ()
    changed: tuple[TypeChange, ...] = ()
    nullability: tuple[NullabilityChange, ...] = ()
    reordered: bool = False

    @property
    def is_empty(self) -> bool:
        """No change at all, column order included."""
        return not (self.added or self.removed or self.widened or self.narrowed or self.changed
                    or self.nullability or self.reordered)

    @property
    def is_backward_compatible(self) -> bool:
        """Readers of ``old`` data can read ``new`` data: nothing removed, narrowed, changed or made non-null."""
        tightened = any(c.old_nullable and not c.new_nullable for c in self.nullability)
        return not (self.removed or self.narrowed or self.changed or tightened)

    def to_dict(self) -> dict[str, Any]:
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        out["is_empty"], out["is_backward_compatible"] = self.is_empty, self.is_backward_compatible
        return out

    def render(self) -> str:
        """One line per change; ``no changes`` when empty."""
        lines = [f"+ added    {c.name}: {c.type}{'' if c.nullable else ' not null'}" for c in self.added]
        lines += [f"- removed  {c.name}: {c.type}" for c in self.removed]
        lines += [f"~ renamed? {r.old} -> {r.new} ({r.type}, similarity {r.score:.2f})"
                  for r in self.rename_candidates]
        lines += [f"^ widened  {c.column}: {c.old_type} -> {c.new_type}" for c in self.widened]
        lines += [f"v narrowed {c.column}: {c.old_type} -> {c.new_type}" for c in self.narrowed]
        lines += [f"! changed  {c.column}: {c.old_type} -> {c.new_type}" for c in self.changed]
        lines += [f"? nullable {c.column}: {_nullable_word(c.old_nullable)} -> {_nullable_word(c.new_nullable)}"
                  for c in self.nullability]
        if self.reordered:
            lines.append("  column order changed")
        return "\n".join(lines) if lines else "no changes"

    def __str__(self) -> str:
        return self.render()


def _nullable_word(nullable: bool) -> str:
    return "nullable" if nullable else "not null"


def _name_key(name: str) -> str:
    return re.sub(r"[\W_]+", " ", name.lower()).strip()


def _abbreviation_score(a: str, b: str) -> float:
    """0.8..1 when the shorter name (3+ letters, same first letter) is an in-order subsequence of the
    longer one (``qty``/``quantity``, ``cust_id``/``customer_id``), else 0."""
    short, long_ = sorted((a.replace(" ", ""), b.replace(" ", "")), key=len)
    if len(short) < 3 or not long_ or short[0] != long_[0] or len(short) / len(long_) < 0.3:
        return 0.0
    rest = iter(long_)
    if not all(ch in rest for ch in short):
        return 0.0
    return 0.8 + 0.2 * len(short) / len(long_)


def name_similarity(a: str, b: str) -> float:
    """0..1 similarity of two column names on lower-cased names with ``_``/``-``/spaces as separators:
    the best of Jaro-Winkler, the token-sorted Indel ratio and an abbreviation match."""
    from rapidfuzz import fuzz
    from rapidfuzz.distance import JaroWinkler

    ka, kb = _name_key(a), _name_key(b)
    return max(JaroWinkler.normalized_similarity(ka, kb), fuzz.token_sort_ratio(ka, kb) / 100.0,
               _abbreviation_score(ka, kb))


def _rename_candidates(removed: list[pa.Field], added: list[pa.Field], threshold: float) -> list[RenameCandidate]:
    scored = sorted(((name_similarity(r.name, a.name), r, a) for r in removed for a in added
                     if _same(r.type, a.type)), key=lambda t: -t[0])
    used_old: set[str] = set()
    used_new: set[str] = set()
    out = []
    for score, r, a in scored:
        if score >= threshold and r.name not in used_old and a.name not in used_new:
            used_old.add(r.name)
            used_new.add(a.name)
            out.append(RenameCandidate(r.name, a.name, type_to_string(r.type), round(score, 4)))
    return out


def diff(old: pa.Schema, new: pa.Schema, *, rename_threshold: float = RENAME_THRESHOLD) -> SchemaDiff:
    """Compares two schemas column by column (by name)."""
    old_by, new_by = {f.name: f for f in old}, {f.name: f for f in new}
    added = [f for f in new if f.name not in old_by]
    removed = [f for f in old if f.name not in new_by]
    widened, narrowed, changed, nullability = [], [], [], []
    for f in old:
        n = new_by.get(f.name)
        if n is None:
            continue
        if not _same(f.type, n.type):
            change = TypeChange(f.name, type_to_string(f.type), type_to_string(n.type))
            if widens(f.type, n.type):
                widened.append(change)
            elif widens(n.type, f.type):
                narrowed.append(change)
            else:
                changed.append(change)
        if f.nullable != n.nullable:
            nullability.append(NullabilityChange(f.name, f.nullable, n.nullable))
    shared_old = [n for n in old.names if n in new_by]
    shared_new = [n for n in new.names if n in old_by]

    def col(f: pa.Field) -> Column:
        return Column(f.name, type_to_string(f.type), bool(f.nullable))

    return SchemaDiff(tuple(col(f) for f in added), tuple(col(f) for f in removed),
                      tuple(_rename_candidates(removed, added, rename_threshold)), tuple(widened),
                      tuple(narrowed), tuple(changed), tuple(nullability), shared_old != shared_new)


# --------------------------------------------------------------------------------------
# The registry (same stores as beam_etl.ops.state)
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SchemaVersion:
    pipeline: str
    table: str
    version: int
    hash: str
    schema: pa.Schema
    created_at: str
    run_id: str = ""
    created: bool = dataclasses.field(default=False, compare=False)  # set by register(): a new version

    def to_dict(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "table": self.table, "version": self.version, "hash": self.hash,
                "created_at": self.created_at, "run_id": self.run_id, "schema": schema_to_dict(self.schema)}


def _is_integrity_error(err: BaseException) -> bool:
    return any(cls.__name__ == "IntegrityError" for cls in type(err).__mro__)


class SchemaRegistry:
    """Schema versions per ``(pipeline, table)`` in a SQLite file or PostgreSQL database.

    ``store`` is a state URL (``sqlite:///path``, a path, ``postgresql://...``) or a store from
    ``beam_etl.ops.state.open_store``; the registry shares its connection handling.
    """

    def __init__(self, store: Any) -> None:
        self._store = open_store(store) if isinstance(store, (str, Path)) else store
        self._p = getattr(self._store, "placeholder", "?")

    def __repr__(self) -> str:
        return f"SchemaRegistry({self._store!r})"

    @property
    def location(self) -> str:
        return repr(self._store)

    def _conn(self) -> Any:
        return self._store._conn()  # commit on success, rollback on error, always close

    def _ensure(self, cur: Any) -> None:
        cur.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (pipeline TEXT NOT NULL, table_name TEXT NOT NULL, "
                    "version INTEGER NOT NULL, hash TEXT NOT NULL, schema_json TEXT NOT NULL, "
                    "created_at TEXT NOT NULL, run_id TEXT NOT NULL, PRIMARY KEY (pipeline, table_name, version))")

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._conn() as conn:
            cur = conn.cursor()
            self._ensure(cur)
            cur.execute(sql, params)
            return list(cur.fetchall())

    @staticmethod
    def _row(row: tuple) -> SchemaVersion:
        pipeline, table, version, digest, schema_json, created_at, run_id = row
        return SchemaVersion(pipeline, table, int(version), digest, schema_from_dict(json.loads(schema_json)),
                             created_at, run_id)

    _COLUMNS = "pipeline, table_name, version, hash, schema_json, created_at, run_id"

    def get(self, pipeline: str, table: str, version: int | str | None = None) -> SchemaVersion | None:
        """One version (``None`` or ``"latest"``: the newest), or None when absent."""
        p = self._p
        if version in (None, "latest"):
            rows = self._query(f"SELECT {self._COLUMNS} FROM {TABLE} WHERE pipeline = {p} AND table_name = {p} "
                               "ORDER BY version DESC LIMIT 1", (pipeline, table))
        else:
            rows = self._query(f"SELECT {self._COLUMNS} FROM {TABLE} WHERE pipeline = {p} AND table_name = {p} "
                               f"AND version = {p}", (pipeline, table, int(version)))
        return self._row(rows[0]) if rows else None

    def latest(self, pipeline: str, table: str) -> SchemaVersion | None:
        return self.get(pipeline, table)

    def versions(self, pipeline: str, table: str) -> list[SchemaVersion]:
        """Every version of a table, oldest first."""
        p = self._p
        rows = self._query(f"SELECT {self._COLUMNS} FROM {TABLE} WHERE pipeline = {p} AND table_name = {p} "
                           "ORDER BY version", (pipeline, table))
        return [self._row(r) for r in rows]

    def tables(self, pipeline: str | None = None) -> list[SchemaVersion]:
        """The latest version of every table (of one pipeline, or all), by pipeline and table."""
        p = self._p
        latest = (f"version = (SELECT MAX(m.version) FROM {TABLE} m "
                  "WHERE m.pipeline = s.pipeline AND m.table_name = s.table_name)")
        where = f"s.pipeline = {p} AND {latest}" if pipeline else latest
        rows = self._query(f"SELECT {self._COLUMNS} FROM {TABLE} s WHERE {where} ORDER BY pipeline, table_name",
                           (pipeline,) if pipeline else ())
        return [self._row(r) for r in rows]

    def register(self, pipeline: str, table: str, schema: pa.Schema, run_id: str = "") -> SchemaVersion:
        """The latest version when its hash matches ``schema``'s, else a new version n+1 (``created``)."""
        schema = normalize_schema(schema)
        digest, doc = schema_hash(schema), json.dumps(schema_to_dict(schema), ensure_ascii=False)
        p = self._p
        for _ in range(5):  # another writer may take version n+1 first: read again and retry
            try:
                with self._conn() as conn:
                    cur = conn.cursor()
                    self._ensure(cur)
                    cur.execute(f"SELECT {self._COLUMNS} FROM {TABLE} WHERE pipeline = {p} AND table_name = {p} "
                                "ORDER BY version DESC LIMIT 1", (pipeline, table))
                    row = cur.fetchone()
                    if row is not None and row[3] == digest:
                        return self._row(row)
                    version = (int(row[2]) if row else 0) + 1
                    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
                    cur.execute(f"INSERT INTO {TABLE} ({self._COLUMNS}) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p})",
                                (pipeline, table, version, digest, doc, now, run_id))
                    return SchemaVersion(pipeline, table, version, digest, schema, now, run_id, created=True)
            except Exception as err:
                if not _is_integrity_error(err):
                    raise
        raise StateError(f"could not register a schema version for {pipeline}/{table}: concurrent writers kept "
                         "taking the next version number")

    def delete(self, pipeline: str, table: str | None = None) -> int:
        """Forgets every version of a table (or of every table of a pipeline); returns the row count."""
        p = self._p
        with self._conn() as conn:
            cur = conn.cursor()
            self._ensure(cur)
            if table is None:
                cur.execute(f"DELETE FROM {TABLE} WHERE pipeline = {p}", (pipeline,))
            else:
                cur.execute(f"DELETE FROM {TABLE} WHERE pipeline = {p} AND table_name = {p}", (pipeline, table))
            return cur.rowcount


# --------------------------------------------------------------------------------------
# Registration after the run (pending files, like incremental cursors)
# --------------------------------------------------------------------------------------


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


def pending_schema_path(run_dir: str | Path, step: str) -> Path:
    """``<run_dir>/_state/schemas/<step>.json``: what a step asks to register once the run succeeded."""
    return Path(run_dir) / PENDING_SCHEMA_DIR / f"{_safe_name(step)}.json"


def write_pending_schema(path: str | Path, *, pipeline: str, table: str, schema: pa.Schema,
                         base_version: int | None, merge_with_latest: bool) -> Path:
    """Writes a pending registration atomically; ``merge_with_latest`` merges into the then-latest
    version at commit (a run that evolved from the registry), else ``schema`` is registered as is."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"pipeline": pipeline, "table": table, "schema": schema_to_dict(schema), "base_version": base_version,
           "merge_with_latest": merge_with_latest}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, sort_keys=True), encoding="utf-8")
    tmp.replace(path)
    return path


def register_pending(registry: SchemaRegistry, doc: Mapping[str, Any], run_id: str,
                     pipeline: str | None = None) -> dict[str, Any]:
    """Registers one pending document; returns the change (version, created, diff from the previous)."""
    pipeline = doc.get("pipeline") or pipeline or "adhoc"
    table = doc["table"]
    schema = schema_from_dict(doc["schema"])
    before = registry.get(pipeline, table)
    if doc.get("merge_with_latest") and before is not None:
        schema = merge_schemas(before.schema, schema)
    saved = registry.register(pipeline, table, schema, run_id)
    change: dict[str, Any] = {"pipeline": pipeline, "table": table, "version": saved.version,
                              "created": saved.created, "previous": before.version if before else None}
    if saved.created and before is not None:
        change["diff"] = diff(before.schema, saved.schema).to_dict()
    return change


def commit_pending_schemas(run_dir: str | Path, state_url: str, pipeline: str, run_id: str) -> list[dict[str, Any]]:
    """Registers every pending schema of a finished run (call after the sinks committed)."""
    folder = Path(run_dir) / PENDING_SCHEMA_DIR
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not paths:
        return []
    registry = SchemaRegistry(state_url)
    return [register_pending(registry, json.loads(p.read_text(encoding="utf-8")), run_id, pipeline) for p in paths]


def describe_schema_change(change: Mapping[str, Any]) -> str:
    """One line for the run summary."""
    where = f"{change['pipeline']}/{change['table']}"
    if not change["created"]:
        return f"{where}: schema unchanged (version {change['version']})"
    if change.get("previous") is None:
        return f"{where}: schema version {change['version']} registered (new table)"
    d = change.get("diff") or {}
    parts = [f"{len(d.get(k) or [])} {k}" for k in ("added", "widened", "changed") if d.get(k)]
    return f"{where}: schema version {change['previous']} -> {change['version']} ({', '.join(parts) or 'changed'})"


__all__ = [
    "PENDING_SCHEMA_DIR", "TABLE", "Column", "NullabilityChange", "RenameCandidate", "SchemaDiff", "SchemaRegistry",
    "SchemaVersion", "TypeChange", "canonical_json", "commit_pending_schemas", "common_supertype",
    "describe_schema_change", "diff", "fits", "load_schema", "merge_schemas", "name_similarity",
    "normalize_schema", "parse_type", "pending_schema_path", "register_pending", "schema_from_dict", "schema_hash",
    "schema_to_dict", "type_to_string", "widens", "write_pending_schema",
]
