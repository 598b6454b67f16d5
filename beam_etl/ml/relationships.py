"""Key and relationship detection across tables: primary-key and foreign-key candidates.

**Primary keys**: a column whose values are all present and distinct (exact while the distinct
sketch holds every value; ``exact=False`` when the count is a KMV estimate), of a key-like
storage type (int, string, scale-0 decimal). Without a single-column key, pairs of columns are
tried (composite keys of 2, from the data). Ranked by a score favouring id-like names and
integer or short string values.

**Foreign keys**: child column ``c`` -> parent key ``k`` (a near-unique column of another table,
or of the same table) scored in [0, 1] from

* containment: share of ``c``'s distinct values found among ``k``'s (inclusion dependency),
  exact for columns with fewer distinct values than the sketch holds, else estimated from
  bottom-k hash sketches (``_infer_sketch.KMVSketch``);
* name similarity of ``c`` to the parent table and key names (``customer_id`` ~
  ``customers.id``, ``cust_id`` ~ ``customers.id``, ``customer_id`` ~ ``customer.customer_id``);
* type compatibility, parent-key uniqueness;
* range span (integers: the child's value range over the parent's) and evidence strength
  (how many distinct values the inclusion rests on), which keep small-integer look-alikes
  (``quantity`` 1..10 inside ids 1..1000) down.

``score = containment**3 * uniqueness * type * (0.5 * name + 0.2 * span + 0.3 * strength)``;
when a child column has a parent it is clearly named after, its other parents are halved.
Inclusion alone cannot tell surrogate keys 1..N of two dimensions apart, so a foreign key
needs some name evidence to pass the default threshold (0.5). No Beam imports.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beam_etl.hashing import hash_columns
from beam_etl.ml._infer_sketch import KMVSketch, decode, text_values, value_hashes
from beam_etl.ml.schema_infer import FieldSchema, InferOptions, InferredSchema, TableProfile, profile_all

DEFAULT_FK_THRESHOLD = 0.5
MIN_CONTAINMENT = 0.5
PARENT_MIN_UNIQUENESS = 0.95
COMPOSITE_MAX_COLUMNS = 12
ID_SUFFIXES = frozenset({"id", "key", "code", "no", "num", "nr", "number", "ref", "fk", "sk", "pk", "uuid", "guid"})
TABLE_AFFIXES = frozenset({"dim", "fact", "fct", "tbl", "table", "stg", "raw", "d", "f", "t"})
_WEIGHTS = {"name": 0.5, "span": 0.2, "strength": 0.3}


@dataclasses.dataclass
class KeyCandidate:
    """A primary-key candidate: one column, or two together."""

    table: str
    columns: tuple[str, ...]
    score: float
    unique_share: float
    exact: bool
    evidence: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "columns": list(self.columns)}


@dataclasses.dataclass
class ForeignKeyCandidate:
    """``child_table.child_column`` references ``parent_table.parent_column``, with its evidence."""

    child_table: str
    child_column: str
    parent_table: str
    parent_column: str
    score: float
    evidence: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return f"{self.child_table}.{self.child_column} -> {self.parent_table}.{self.parent_column}"


@dataclasses.dataclass
class RelationshipReport:
    """Key candidates per table and ranked foreign-key candidates (score >= threshold)."""

    tables: dict[str, int]
    primary_keys: list[KeyCandidate]
    foreign_keys: list[ForeignKeyCandidate]
    threshold: float = DEFAULT_FK_THRESHOLD

    def to_dict(self) -> dict[str, Any]:
        return {"tables": dict(self.tables), "threshold": self.threshold,
                "primary_keys": [k.to_dict() for k in self.primary_keys],
                "foreign_keys": [f.to_dict() for f in self.foreign_keys]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def format_text(self) -> str:
        """A readable summary: tables, key candidates, foreign keys with their main evidence."""
        lines = ["tables: " + ", ".join(f"{t} ({n:,} rows)" for t, n in self.tables.items()), "", "primary keys:"]
        for k in self.primary_keys:
            approx = "" if k.exact else " (estimated)"
            lines.append(f"  {k.table}.{'+'.join(k.columns)}  score {k.score:.2f}{approx}")
        if not self.primary_keys:
            lines.append("  (none)")
        lines += ["", f"foreign keys (score >= {self.threshold}):"]
        for f in self.foreign_keys:
            e = f.evidence
            lines.append(f"  {f}  score {f.score:.2f}  containment {e['containment']:.3f}  "
                         f"name {e['name_similarity']:.2f}  span {e['range_span']:.2f}  "
                         f"strength {e['strength']:.2f}")
        if not self.foreign_keys:
            lines.append("  (none)")
        return "\n".join(lines)


# ------------------------------------------------------------------ names


def tokens(name: str) -> list[str]:
    """Lower-case words of an identifier: ``CustomerID`` and ``customer_id`` -> ``["customer", "id"]``."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    return [t for t in re.split(r"[^a-z0-9]+", snake.lower()) if t]


def singular(word: str) -> str:
    """A rough English singular: ``categories`` -> ``category``, ``addresses`` -> ``address``."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("sses", "xes", "ches", "shes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def entity(table: str) -> list[str]:
    """The entity a table holds: ``dim_customers`` -> ``["customer"]``."""
    words = tokens(table)
    core = [w for w in words if w not in TABLE_AFFIXES] or words
    return [singular(w) for w in core]


def _stem(words: list[str]) -> tuple[list[str], bool]:
    if words and words[-1] in ID_SUFFIXES:
        return [singular(w) for w in words[:-1]], True
    return [singular(w) for w in words], False


def _stem_match(a: list[str], b: list[str]) -> float:
    if not a or not b:
        return 0.0
    if a == b:
        return 1.0
    if len(a) > len(b) and a[-len(b):] == b:  # a role prefix: billing_customer ~ customer
        return 0.9
    ja, jb = "".join(a), "".join(b)
    if ja == jb:
        return 1.0
    if len(ja) >= 3 and jb.startswith(ja):  # an abbreviation: cust ~ customer
        return 0.8
    ratio = difflib.SequenceMatcher(None, ja, jb).ratio()
    return 0.7 * ratio if ratio >= 0.8 else 0.0


def name_similarity(child_column: str, parent_table: str, parent_column: str) -> float:
    """How much ``child_column`` is named after ``parent_table.parent_column`` (0..1)."""
    child_stem, child_id = _stem(tokens(child_column))
    parent_stem, _ = _stem(tokens(parent_column))
    if tokens(child_column) == tokens(parent_column) and parent_stem:
        return 1.0  # customer_id ~ customer.customer_id, date_key ~ dates.date_key
    by_entity = _stem_match(child_stem, entity(parent_table))
    if not (is_own_key(parent_table, parent_column) or _stem(tokens(parent_column))[1]):
        by_entity *= 0.3  # stores.size_rank is not what store_id names
    best = max(by_entity, _stem_match(child_stem, parent_stem))
    return best if child_id else 0.5 * best


def is_own_key(table: str, column: str) -> bool:
    """Whether ``column`` names ``table``'s own key (``id``, ``customer_id`` in ``customers``)."""
    stem, has_id = _stem(tokens(column))
    return has_id and (not stem or stem == entity(table))


# ------------------------------------------------------------------ keys


def _key_like(f: FieldSchema) -> bool:
    return f.storage_type in ("int", "string") or (f.storage_type == "decimal" and f.details.get("scale") == 0)


def _uniqueness(f: FieldSchema) -> float:
    present = f.count - f.null_count
    return min(1.0, f.cardinality / present) if present else 0.0


def _is_unique(f: FieldSchema) -> bool:
    present = f.count - f.null_count
    if not present or f.null_count:
        return False
    return f.cardinality == present if f.cardinality_exact else _uniqueness(f) >= 0.98


def _key_score(table: str, columns: list[FieldSchema], exact: bool) -> float:
    hint = np.mean([1.0 if _stem(tokens(f.name))[1] or is_own_key(table, f.name) else 0.0 for f in columns])
    kinds = []
    for f in columns:
        if f.storage_type == "int":
            kinds.append(1.0)
        elif f.storage_type == "string":
            kinds.append(0.8 if (f.length_max or 0) <= 64 else 0.4)
        else:
            kinds.append(0.6)
    score = 0.5 + 0.3 * float(hint) + 0.2 * float(np.mean(kinds))
    return round(score * (1.0 if exact else 0.9) * (1.0 if len(columns) == 1 else 0.9), 4)


def primary_key_candidates(table: str, schema: InferredSchema, data: pa.Table | None = None,
                           composite: bool = True) -> list[KeyCandidate]:
    """Single-column key candidates, else (with ``data``) unique pairs of columns; best first."""
    found = []
    for f in schema.fields:
        if _key_like(f) and _is_unique(f):
            found.append(KeyCandidate(table, (f.name,), _key_score(table, [f], f.cardinality_exact), 1.0,
                                      f.cardinality_exact, {"storage_type": f.storage_type,
                                                            "cardinality": f.cardinality}))
    if not found and composite and data is not None and data.num_rows:
        found = _composite_keys(table, schema, data)
    return sorted(found, key=lambda k: -k.score)


def _composite_keys(table: str, schema: InferredSchema, data: pa.Table) -> list[KeyCandidate]:
    eligible = [f for f in schema.fields if not f.null_count and f.cardinality > 1
                and f.storage_type in ("int", "string", "decimal", "date", "datetime", "datetime_tz", "bool")]
    eligible = eligible[:COMPOSITE_MAX_COLUMNS]
    found = []
    for i, a in enumerate(eligible):
        for b in eligible[i + 1:]:
            if a.cardinality * b.cardinality < data.num_rows:
                continue
            hashes = hash_columns([data.column(a.name), data.column(b.name)], data.num_rows)
            if np.unique(hashes).size == data.num_rows:
                found.append(KeyCandidate(table, (a.name, b.name), _key_score(table, [a, b], True), 1.0, True,
                                          {"storage_types": [a.storage_type, b.storage_type]}))
    return found


# ------------------------------------------------------------------ foreign keys


def _family(f: FieldSchema) -> str:
    return "int" if f.storage_type == "decimal" and f.details.get("scale") == 0 else f.storage_type


def _type_compatibility(child: FieldSchema, parent: FieldSchema) -> float:
    kinds = {_family(child), _family(parent)}
    if len(kinds) == 1:
        return 1.0
    return 0.8 if kinds == {"int", "string"} else 0.0


def _span(child: FieldSchema, parent: FieldSchema) -> float:
    numbers = (int, float)
    if child.storage_type != "int" or parent.storage_type != "int" \
            or not all(isinstance(v, numbers) for v in (child.min, child.max, parent.min, parent.max)):
        return 1.0
    width = float(parent.max) - float(parent.min)
    return 1.0 if width <= 0 else max(0.0, min(1.0, (float(child.max) - float(child.min)) / width))


def _strength(child_distinct: int, parent_distinct: int) -> float:
    relative = math.log1p(child_distinct) / math.log1p(max(1, min(parent_distinct, 1000)))
    absolute = math.log1p(child_distinct) / math.log1p(100)
    return min(1.0, relative) * min(1.0, absolute)


@dataclasses.dataclass
class _Table:
    name: str
    schema: InferredSchema
    sketches: dict[str, KMVSketch]
    data: pa.Table | None
    _distinct: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def distinct_hashes(self, column: str) -> np.ndarray:
        """The sorted distinct value hashes of a column, hashed as its sketch hashes them (needs the data)."""
        if column not in self._distinct:
            assert self.data is not None
            arr = decode(self.data.column(column)).drop_null()
            if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type):
                arr = pc.utf8_trim_whitespace(arr.cast(pa.string()))
                arr = arr.filter(pc.not_equal(arr, ""))
            else:
                arr = text_values(arr)
            self._distinct[column] = np.unique(value_hashes(arr))
        return self._distinct[column]


def _containment(child: _Table, column: str, parent: _Table, key: str) -> tuple[float, int]:
    """Share of the child column's distinct values among the parent key's: exact with both tables' data."""
    sketch, other = child.sketches[column], parent.sketches[key]
    if (sketch.exact and other.exact) or child.data is None or parent.data is None:
        return sketch.containment(other)
    mine = child.distinct_hashes(column)
    if not mine.size:
        return 0.0, 0
    return float(np.isin(mine, parent.distinct_hashes(key), assume_unique=True).mean()), int(mine.size)


def _prepare(name: str, value: pa.Table | pa.RecordBatch | TableProfile, options: InferOptions) -> _Table:
    data = None
    if isinstance(value, TableProfile):
        prof = value
    elif isinstance(value, (pa.Table, pa.RecordBatch)):
        data = value if isinstance(value, pa.Table) else pa.Table.from_batches([value])
        prof = profile_all(data, options)
    else:
        raise TypeError(f"table {name!r}: expected a pyarrow Table or a TableProfile, not {type(value).__name__}")
    table = _Table(name, prof.finish(), {c: p.sketch for c, p in prof.columns.items()}, data)
    if data is not None:  # an estimated distinct count of a possible key is recounted exactly
        for f in table.schema.fields:
            if not f.cardinality_exact and _key_like(f):
                f.cardinality, f.cardinality_exact = int(table.distinct_hashes(f.name).size), True
    return table


def foreign_key_candidates(tables: list[_Table], parents: dict[str, list[FieldSchema]],
                           min_containment: float = MIN_CONTAINMENT) -> list[ForeignKeyCandidate]:
    """Every child column -> parent key pair with containment >= ``min_containment``, scored."""
    found: list[ForeignKeyCandidate] = []
    by_name = {t.name: t for t in tables}
    for child in tables:
        for f in child.schema.fields:
            if not _key_like(f) or f.cardinality < 1:
                continue
            if _is_unique(f) and is_own_key(child.name, f.name):
                continue
            for parent_name, keys in parents.items():
                parent = by_name[parent_name]
                for k in keys:
                    if parent_name == child.name and k.name == f.name:
                        continue
                    candidate = _score(child, f, parent, k, min_containment)
                    if candidate is not None:
                        found.append(candidate)
    _penalise_unnamed(found)
    return sorted(found, key=lambda c: (-c.score, str(c)))


def _score(child: _Table, f: FieldSchema, parent: _Table, k: FieldSchema, min_containment: float
           ) -> ForeignKeyCandidate | None:
    types = _type_compatibility(f, k)
    if not types:
        return None
    containment, sample = _containment(child, f.name, parent, k.name)
    if containment < min_containment:
        return None
    name = name_similarity(f.name, parent.name, k.name)
    span = _span(f, k)
    strength = _strength(f.cardinality, k.cardinality)
    uniqueness = _uniqueness(k)
    evidence_sum = _WEIGHTS["name"] * name + _WEIGHTS["span"] * span + _WEIGHTS["strength"] * strength
    score = containment ** 3 * uniqueness * types * evidence_sum
    evidence = {
        "containment": round(containment, 4), "containment_sample": sample, "name_similarity": round(name, 4),
        "type_compatibility": types, "parent_uniqueness": round(uniqueness, 4), "range_span": round(span, 4),
        "strength": round(strength, 4), "child_distinct": f.cardinality, "parent_distinct": k.cardinality,
        "coverage": round(min(1.0, containment * f.cardinality / k.cardinality), 4) if k.cardinality else 0.0,
        "child_type": f.storage_type, "parent_type": k.storage_type,
    }
    return ForeignKeyCandidate(child.name, f.name, parent.name, k.name, round(score, 4), evidence)


def _penalise_unnamed(found: list[ForeignKeyCandidate]) -> None:
    """A child column clearly named after one parent (name >= 0.9) loses half its score to the others."""
    named: dict[tuple[str, str], str] = {}
    for c in found:
        if c.evidence["name_similarity"] >= 0.9:
            named[(c.child_table, c.child_column)] = f"{c.parent_table}.{c.parent_column}"
    for c in found:
        owner = named.get((c.child_table, c.child_column))
        if owner and c.evidence["name_similarity"] < 0.9:
            c.score = round(c.score * 0.5, 4)
            c.evidence["named_after"] = owner


def detect_relationships(tables: Mapping[str, pa.Table | pa.RecordBatch | TableProfile], *,
                         threshold: float = DEFAULT_FK_THRESHOLD, composite: bool = True,
                         min_containment: float = MIN_CONTAINMENT, distinct_sketch: int = 10_000
                         ) -> RelationshipReport:
    """Primary-key candidates of each table and foreign keys between them scoring >= ``threshold``.

    ``tables`` maps a table name (used for name similarity) to its data or its profile
    (``schema_infer.profile_all``); composite keys need the data.
    """
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold: {threshold!r} must be between 0 and 1")
    options = InferOptions(semantic=False, sample_size=0, distinct_sketch=distinct_sketch)
    prepared = [_prepare(name, value, options) for name, value in tables.items()]
    keys: list[KeyCandidate] = []
    parents: dict[str, list[FieldSchema]] = {}
    for t in prepared:
        keys.extend(primary_key_candidates(t.name, t.schema, t.data, composite))
        parents[t.name] = [f for f in t.schema.fields if _key_like(f) and not f.null_count and f.cardinality > 0
                           and _uniqueness(f) >= PARENT_MIN_UNIQUENESS - (0.0 if f.cardinality_exact else 0.1)]
    fks = [c for c in foreign_key_candidates(prepared, parents, min_containment) if c.score >= threshold]
    return RelationshipReport({t.name: t.schema.rows for t in prepared}, keys, fks, threshold)


__all__ = [
    "DEFAULT_FK_THRESHOLD", "ForeignKeyCandidate", "KeyCandidate", "RelationshipReport", "detect_relationships",
    "entity", "foreign_key_candidates", "is_own_key", "name_similarity", "primary_key_candidates", "singular",
    "tokens",
]
