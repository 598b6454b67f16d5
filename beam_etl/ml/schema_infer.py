"""Schema inference: storage types, column statistics and semantic types from Arrow batches.

Partial profiles merge exactly, so the work splits over batches and workers::

    part = profile(batch)                 # TableProfile: one ColumnProfile per field
    whole = merge(part_a, part_b)         # same result as profiling both batches at once
    schema = whole.finish()               # InferredSchema (FieldSchema per field)
    infer_schema(table).to_json()         # all in one

**Storage type.** Every non-null value counts in one *atom*: its Arrow type, or for strings what
the text parses as (``_infer_text``: bool words, integers, fixed-scale decimals, floats, dates in
several layouts, datetimes with or without a zone, times, JSON objects/arrays). The column's
type is the first of ``bool, int, decimal, float, date, datetime_tz, datetime, time, struct,
list, json, binary, duration, string`` that holds at least ``threshold`` (default 0.98) of the
non-null values, and ``confidence`` is that share. Integers fit ``decimal`` and ``float``; dates
and zoned datetimes fit ``datetime``. Whitespace-only strings count as nulls. Any leading-zero
number (``02139``) keeps a column off the numeric types: converting it would lose the zeros.

**Statistics.** Null share; distinct values (exact up to ``distinct_sketch`` values, then a KMV
estimate, ~1% error at the default 10,000); typed min/max of the values that fit the type
(lexicographic for strings); string lengths in characters. A bottom-k sample of distinct values
with their counts (``sample_size``), expanded back to a row-like sample, feeds the semantic type
detector (``beam_etl.ml.semantic``, imported lazily).
No Beam imports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beam_etl.ml import _infer_semantic
from beam_etl.ml._infer_atoms import (
    AtomStats,
    bounds,
    choose,
    decimal_scale,
    fitting,
    integer_digits,
    merge_atoms,
    typed_atoms,
)
from beam_etl.ml._infer_model import FieldSchema, InferredSchema, format_table, json_value, type_label
from beam_etl.ml._infer_sketch import KMVSketch, ValueSample, decode, text_values, value_hashes
from beam_etl.ml._infer_text import text_atoms

DEFAULT_THRESHOLD = 0.98
DEFAULT_DISTINCT_SKETCH = 10_000
DEFAULT_SAMPLE_SIZE = 1000
PROFILE_CHUNK_ROWS = 65_536
_TEMPORAL = ("date", "datetime", "datetime_tz")


@dataclasses.dataclass(frozen=True)
class InferOptions:
    """How to infer: type threshold, distinct-count sketch size, sample size, semantic types on/off."""

    threshold: float = DEFAULT_THRESHOLD
    distinct_sketch: int = DEFAULT_DISTINCT_SKETCH
    sample_size: int = DEFAULT_SAMPLE_SIZE
    semantic: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not 0.5 <= float(self.threshold) <= 1.0:
            raise ValueError(f"threshold: {self.threshold!r} must be a share between 0.5 and 1")
        if isinstance(self.distinct_sketch, bool) or int(self.distinct_sketch) < 16:
            raise ValueError(f"distinct_sketch: {self.distinct_sketch!r} must be an integer >= 16")
        if isinstance(self.sample_size, bool) or int(self.sample_size) < 0:
            raise ValueError(f"sample_size: {self.sample_size!r} must be an integer >= 0")


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _nested_or_opaque(t: pa.DataType) -> bool:
    return (pa.types.is_nested(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)
            or pa.types.is_fixed_size_binary(t) or pa.types.is_duration(t))


def _lo(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else min(a, b)


def _hi(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else max(a, b)


@dataclasses.dataclass
class ColumnProfile:
    """Mergeable partial statistics of one column (see the module docstring)."""

    name: str
    rows: int = 0
    nulls: int = 0
    blanks: int = 0
    atoms: dict[str, AtomStats] = dataclasses.field(default_factory=dict)
    arrow_types: dict[str, int] = dataclasses.field(default_factory=dict)
    observed_type: pa.DataType | None = None
    length_count: int = 0
    length_sum: int = 0
    length_min: int | None = None
    length_max: int | None = None
    text_min: str | None = None
    text_max: str | None = None
    sketch: KMVSketch = dataclasses.field(default_factory=KMVSketch)
    sample: ValueSample = dataclasses.field(default_factory=ValueSample)

    @classmethod
    def from_array(cls, name: str, arr: pa.Array | pa.ChunkedArray, options: InferOptions | None = None
                   ) -> ColumnProfile:
        """Profiles one column of a batch."""
        options = options or InferOptions()
        arr = decode(arr)
        prof = cls(name, rows=len(arr), sketch=KMVSketch(options.distinct_sketch),
                   sample=ValueSample(options.sample_size))
        prof.arrow_types[str(arr.type)] = len(arr)
        if pa.types.is_null(arr.type):
            prof.nulls = len(arr)
            return prof
        prof.nulls = arr.null_count
        valid = arr.drop_null() if arr.null_count else arr
        if _is_text(valid.type):
            raw = valid.cast(pa.string()) if not pa.types.is_string(valid.type) else valid
            trimmed = pc.utf8_trim_whitespace(raw)
            blank = np.asarray(pc.equal(trimmed, "").to_numpy(zero_copy_only=False), dtype=bool)
            if blank.any():
                prof.blanks = int(blank.sum())
                keep = pa.array(~blank)
                raw, trimmed = raw.filter(keep), trimmed.filter(keep)
            prof.atoms = text_atoms(trimmed)
            if len(raw):
                lengths = pc.utf8_length(raw)
                mm = pc.min_max(lengths)
                prof.length_count, prof.length_sum = len(raw), int(pc.sum(lengths).as_py())
                prof.length_min, prof.length_max = mm["min"].as_py(), mm["max"].as_py()
                text_mm = pc.min_max(raw)
                prof.text_min, prof.text_max = text_mm["min"].as_py(), text_mm["max"].as_py()
            text = trimmed
        else:
            if _nested_or_opaque(valid.type):
                prof.observed_type = valid.type
            prof.atoms = typed_atoms(valid)
            text = text_values(valid)
        if len(text):
            hashes = value_hashes(text)
            prof.sketch.add(hashes)
            if options.sample_size:
                prof.sample.add(hashes, text)
        return prof

    def merge(self, other: ColumnProfile) -> ColumnProfile:
        """A new profile of both inputs (exact: equal to profiling them together)."""
        types = dict(self.arrow_types)
        for key, value in other.arrow_types.items():
            types[key] = types.get(key, 0) + value
        return ColumnProfile(
            self.name, self.rows + other.rows, self.nulls + other.nulls, self.blanks + other.blanks,
            merge_atoms(self.atoms, other.atoms), types,
            self.observed_type if self.observed_type is not None else other.observed_type,
            self.length_count + other.length_count, self.length_sum + other.length_sum,
            _lo(self.length_min, other.length_min), _hi(self.length_max, other.length_max),
            _lo(self.text_min, other.text_min), _hi(self.text_max, other.text_max),
            self.sketch.merge(other.sketch), self.sample.merge(other.sample),
        )

    def finish(self, options: InferOptions | None = None, table_rows: int | None = None) -> FieldSchema:
        """The column's ``FieldSchema``; ``table_rows`` counts rows of batches that lacked the column as nulls."""
        options = options or InferOptions()
        rows = max(self.rows, table_rows or 0)
        nulls = self.nulls + self.blanks + (rows - self.rows)
        storage, confidence, shares = choose(self.atoms, options.threshold)
        details = self._details(storage, shares)
        month_first = details.get("day_first") is False
        lo, hi = self._bounds(storage, month_first)
        if storage == "decimal":
            details.update(self._precision(lo, hi))
        semantic, semantic_conf, semantic_details = (None, None, {})
        if options.semantic and self.sample.values:
            semantic, semantic_conf, semantic_details = _infer_semantic.detect(self.sample.rows(), self.name)
            if semantic_details:
                details["semantic"] = semantic_details
        return FieldSchema(
            name=self.name, storage_type=storage, confidence=round(confidence, 6), nullable=nulls > 0,
            null_share=nulls / rows if rows else 0.0, null_count=nulls, count=rows,
            cardinality=self.sketch.estimate(), cardinality_exact=self.sketch.exact, min=lo, max=hi,
            length_min=self.length_min, length_max=self.length_max,
            length_mean=self.length_sum / self.length_count if self.length_count else None,
            semantic_type=semantic, semantic_confidence=semantic_conf, details=details,
            observed_type=self.observed_type if storage in ("struct", "list", "binary", "duration") else None,
        )

    def _bounds(self, storage: str, month_first: bool) -> tuple[Any, Any]:
        if storage == "string":
            return self.text_min, self.text_max
        if storage == "bool":
            counts = self.atoms["bool"].counts
            return (counts.get("false", 0) == 0), counts.get("true", 0) > 0
        if storage in ("null", "struct", "list", "json", "binary"):
            return None, None
        return bounds(storage, self.atoms, month_first)

    def _precision(self, lo: Any, hi: Any) -> dict[str, int]:
        scale = decimal_scale(self.atoms) or 0
        digits = max(integer_digits(v) for v in (lo, hi) if v is not None) if lo is not None else 1
        declared = max((s.maxima.get("precision", 0) for s in self.atoms.values()), default=0)
        return {"precision": max(digits + scale, declared, 1), "scale": scale}

    def _details(self, storage: str, shares: dict[str, float]) -> dict[str, Any]:
        atoms = self.atoms
        held = fitting(storage, atoms) if storage != "null" else []
        details: dict[str, Any] = {"arrow_types": sorted(self.arrow_types)}
        if shares:
            details["candidates"] = {k: round(v, 4) for k, v in shares.items()}
        if self.blanks:
            details["blank_strings"] = self.blanks
        if "lz" in atoms:
            details["leading_zeros"] = atoms["lz"].count
        counts: dict[str, int] = {}
        for name in held:
            for key, value in atoms[name].counts.items():
                counts[key] = counts.get(key, 0) + value
        if any(name in _TEMPORAL for name in held):
            dmy, mdy = counts.get("dmy_only", 0), counts.get("mdy_only", 0)
            ambiguous = any("|" in k for k in counts)
            if dmy or mdy or ambiguous:
                details["day_first"] = not mdy > dmy
        formats: dict[str, int] = {}
        for key, value in counts.items():
            if key.startswith("format:"):
                fmt = key[7:]
                if "|" in fmt:
                    fmt = fmt.split("|")[0 if details.get("day_first", True) else 1]
                formats[fmt] = formats.get(fmt, 0) + value
        if formats:
            details["formats"] = dict(sorted(formats.items(), key=lambda kv: (-kv[1], kv[0])))
        offsets = {k[7:]: v for k, v in counts.items() if k.startswith("offset:")}
        zones = {k[3:]: v for k, v in counts.items() if k.startswith("tz:")}
        if offsets:
            details["offsets"] = offsets
        if zones:
            details["timezones"] = zones
        if storage == "datetime_tz":  # text offsets are normalised to UTC; one Arrow zone is kept
            details["timezone"] = next(iter(zones)) if len(zones) == 1 and not offsets else "UTC"
        if storage == "datetime" and "datetime_tz" in atoms:
            total = sum(atoms[a].count for a in held)
            details["zoned_share"] = round(atoms["datetime_tz"].count / total, 6)
        if storage == "bool":
            details["true_count"], details["false_count"] = counts.get("true", 0), counts.get("false", 0)
        if storage == "json":
            kinds = {k: counts[k] for k in ("object", "array") if counts.get(k)}
            details["json_kinds"] = kinds
        if counts.get("nan"):
            details["nan_count"] = counts["nan"]
        return details


@dataclasses.dataclass
class TableProfile:
    """Mergeable partial profile of a table: row count and one ``ColumnProfile`` per field."""

    rows: int = 0
    columns: dict[str, ColumnProfile] = dataclasses.field(default_factory=dict)
    options: InferOptions = dataclasses.field(default_factory=InferOptions)

    def merge(self, other: TableProfile) -> TableProfile:
        columns = dict(self.columns)
        for name, col in other.columns.items():
            columns[name] = columns[name].merge(col) if name in columns else col
        return TableProfile(self.rows + other.rows, columns, self.options)

    def finish(self) -> InferredSchema:
        fields = [col.finish(self.options, self.rows) for col in self.columns.values()]
        return InferredSchema(fields, self.rows, self.options.threshold)


def profile(batch: pa.RecordBatch | pa.Table, options: InferOptions | None = None) -> TableProfile:
    """Profiles every field of a batch (or table)."""
    options = options or InferOptions()
    columns = {name: ColumnProfile.from_array(name, batch.column(i), options)
               for i, name in enumerate(batch.schema.names)}
    return TableProfile(batch.num_rows, columns, options)


def merge(a: TableProfile, b: TableProfile) -> TableProfile:
    """Merges two partial profiles (columns present in only one count as null in the other's rows)."""
    return a.merge(b)


def empty_profile(options: InferOptions | None = None) -> TableProfile:
    """The profile of no rows (the identity of ``merge``)."""
    return TableProfile(0, {}, options or InferOptions())


def profile_all(data: pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch], options: InferOptions | None = None
                ) -> TableProfile:
    """Profiles a table, a batch or an iterable of batches, ``PROFILE_CHUNK_ROWS`` rows at a time."""
    options = options or InferOptions()
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        data = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
        batches: Iterable[pa.RecordBatch] = data.to_batches(max_chunksize=PROFILE_CHUNK_ROWS)
        result = empty_profile(options)
        result.columns = {name: ColumnProfile(name, sketch=KMVSketch(options.distinct_sketch),
                                              sample=ValueSample(options.sample_size)) for name in data.schema.names}
    else:
        batches, result = data, empty_profile(options)
    for batch in batches:
        result = result.merge(profile(batch, options))
    return result


def infer_schema(data: pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch], options: InferOptions | None = None,
                 **kwargs: Any) -> InferredSchema:
    """Infers the schema of a table, a batch or batches; ``kwargs`` are ``InferOptions`` fields."""
    if kwargs:
        options = dataclasses.replace(options or InferOptions(), **kwargs)
    return profile_all(data, options).finish()


__all__ = [
    "DEFAULT_THRESHOLD", "ColumnProfile", "FieldSchema", "InferOptions", "InferredSchema", "TableProfile",
    "empty_profile", "format_table", "infer_schema", "json_value", "merge", "profile", "profile_all", "type_label",
]
