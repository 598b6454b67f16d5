"""Pure Arrow functions behind GroupByAggregate: partial aggregates and their merge.

A *partial* is an Arrow table with the group key columns (original names) and one column per
partial state: ``sum``, ``count`` (non-null values), ``min``, ``max`` of a field, and ``rows``
(``count_all``). Partials of any batches, windows or workers merge with one more ``group_by``
(sums and counts add, min of mins, max of maxes), so the same functions serve the batch
combiner and a streaming per-(key, window) state::

    partial = partial_aggregate(coerced_batch, keys, aggs)       # per batch, before the shuffle
    merged = merge_partials([p1, p2, ...], keys, aggs)           # any number of times
    result = finalize(merged, keys, aggs)                        # key columns + outputs

``coerce_numeric`` turns the inputs of ``sum``/``avg`` into numbers first and reports rows whose
value cannot be aggregated. Nothing here imports Beam.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

OPS = ("sum", "avg", "count", "min", "max", "count_all")
NUMERIC_OPS = frozenset({"sum", "avg"})
ROWS = "__rows"
_NUMBER_RE = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|infinity|nan)$"
_MERGE_FUNC = {"sum": "sum", "count": "sum", "min": "min", "max": "max", "rows": "sum"}


@dataclasses.dataclass(frozen=True)
class Aggregation:
    """One output column: ``name = op(field)``; ``field`` is None for row counts."""

    name: str
    op: str
    field: str | None = None

    @property
    def counts_rows(self) -> bool:
        return self.op == "count_all" or (self.op == "count" and self.field is None)


def partial_column(kind: str, field: str | None) -> str:
    """Name of the partial-state column ``kind`` (sum/count/min/max/rows) of ``field``."""
    return ROWS if kind == "rows" else f"__{kind}__{field}"


def partial_states(aggs: Sequence[Aggregation]) -> list[tuple[str, str | None]]:
    """The distinct (kind, field) partial states the aggregations need, in a stable order."""
    states: list[tuple[str, str | None]] = [("rows", None)]  # always kept: tells empty groups apart
    for agg in aggs:
        if agg.counts_rows:
            needed = [("rows", None)]
        elif agg.op == "avg":
            needed = [("sum", agg.field), ("count", agg.field)]
        else:
            needed = [(agg.op, agg.field)]
        for state in needed:
            if state not in states:
                states.append(state)
    return states


def numeric_fields(aggs: Sequence[Aggregation]) -> list[str]:
    """Fields whose values must be numbers (inputs of sum/avg), each once."""
    out: list[str] = []
    for agg in aggs:
        if agg.op in NUMERIC_OPS and agg.field not in out:
            out.append(agg.field)
    return out


# ---------------------------------------------------------------------------------------------
# Input types.
# ---------------------------------------------------------------------------------------------


def _base_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def check_numeric_type(t: pa.DataType) -> bool:
    """Types whose values sum/avg accept (strings are parsed value by value)."""
    t = _base_type(t)
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
            or pa.types.is_boolean(t) or pa.types.is_null(t) or _is_text(t))


def check_orderable_type(t: pa.DataType) -> bool:
    """Types whose values min/max accept."""
    t = _base_type(t)
    return not (pa.types.is_nested(t) or pa.types.is_union(t) or isinstance(t, pa.ExtensionType))


def check_key_type(t: pa.DataType) -> bool:
    """Types Arrow can group by."""
    return check_orderable_type(t)


def _parse_numbers(col: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Parses a string column as float64; returns (values, mask of unparseable non-null rows)."""
    col = col.cast(pa.string()) if not pa.types.is_string(col.type) else col
    try:
        return pc.cast(col, pa.float64()), np.zeros(len(col), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    trimmed = pc.utf8_trim_whitespace(col)
    blank = pc.fill_null(pc.equal(trimmed, ""), False)  # blank text counts as a missing value
    ok = pc.or_(pc.fill_null(pc.match_substring_regex(trimmed, _NUMBER_RE, ignore_case=True), True), blank)
    cleaned = pc.if_else(pc.and_(ok, pc.invert(blank)), trimmed, pa.scalar(None, pa.string()))
    try:
        values = pc.cast(cleaned, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # the regex let through a value Arrow refuses
        parsed = []
        for v in cleaned.to_pylist():
            try:
                parsed.append(None if v is None else float(v))
            except ValueError:
                parsed.append(None)
        values = pa.array(parsed, type=pa.float64())
        ok = pc.or_(pc.is_null(col), pc.is_valid(values))
    return values, ~np.asarray(ok, dtype=bool)


def coerce_numeric(col: pa.Array) -> tuple[pa.Array, np.ndarray | None]:
    """A column as an aggregatable number: int64, float64 or decimal.

    Integers and booleans become int64, floats float64, decimals stay decimal, strings are
    parsed as float64 (leading/trailing spaces allowed). Returns the values and a mask of rows
    whose non-null value is not a number (None when there are none).
    """
    t = col.type
    if pa.types.is_dictionary(t):
        col = col.cast(t.value_type)
        t = col.type
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        if pa.types.is_uint64(t):
            too_big = pc.fill_null(pc.greater(col, np.iinfo(np.int64).max), False)
            if pc.any(too_big).as_py():
                bad = np.asarray(too_big, dtype=bool)
                return pc.cast(pc.if_else(too_big, pa.scalar(None, t), col), pa.int64()), bad
        return col.cast(pa.int64()), None
    if pa.types.is_floating(t):
        return col.cast(pa.float64()), None
    if pa.types.is_decimal(t):
        return col, None
    if pa.types.is_null(t):
        return col.cast(pa.float64()), None
    if _is_text(t):
        values, bad = _parse_numbers(col)
        return values, (bad if bad.any() else None)
    raise TypeError(f"type {t} is not numeric")


# ---------------------------------------------------------------------------------------------
# Partials.
# ---------------------------------------------------------------------------------------------


def _column(data: pa.Table | pa.RecordBatch, name: str) -> Any:
    idx = data.schema.get_field_index(name)
    if idx < 0:
        return pa.nulls(data.num_rows)
    col = data.column(idx)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    return col


def _grouped(table: pa.Table, keys: Sequence[str], specs: list[tuple[str, str]],
             out_names: list[str]) -> pa.Table:
    """``group_by`` of ``table`` (key columns k0.., value columns v0..) renamed to out_names."""
    key_names = [f"k{i}" for i in range(len(keys))]
    result = table.group_by(key_names, use_threads=False).aggregate(specs)
    columns = [result.column(k) for k in key_names]
    columns += [result.column(f"{col}_{func}" if col else func) for col, func in specs]
    return pa.table(columns, names=[*keys, *out_names])


def partial_aggregate(data: pa.Table | pa.RecordBatch, keys: Sequence[str], aggs: Sequence[Aggregation],
                      numeric: Mapping[str, Any] | None = None) -> pa.Table:
    """Partial states of ``data`` per group; null key values form their own group (SQL ``GROUP BY``).

    ``numeric`` maps a sum/avg field to its values already made numeric (``coerce_numeric``);
    fields not in it are read from ``data`` as they are.
    """
    numeric = numeric or {}
    cols: dict[str, Any] = {f"k{i}": _column(data, k) for i, k in enumerate(keys)}
    specs: list[tuple[str, str]] = []
    names: list[str] = []
    for i, (kind, field) in enumerate(partial_states(aggs)):
        if kind == "rows":
            specs.append(([], "count_all"))
        else:
            value = numeric[field] if kind in ("sum", "count") and field in numeric else _column(data, field)
            if kind == "count":
                value = pc.is_valid(value).cast(pa.int64())
            cols[f"v{i}"] = value
            specs.append((f"v{i}", "sum" if kind == "count" else kind))
        names.append(partial_column(kind, field))
    if not cols:  # zero keys and only row counts
        cols["__dummy"] = pa.nulls(data.num_rows)
    return _fill_counts(_grouped(pa.table(cols), keys, specs, names))


def _fill_counts(table: pa.Table) -> pa.Table:
    """Counts of all-null groups come out of ``sum`` as null; make them 0."""
    for i, name in enumerate(table.schema.names):
        if name == ROWS or name.startswith("__count__"):
            col = table.column(i)
            if col.null_count or not pa.types.is_int64(col.type):
                table = table.set_column(i, name, pc.fill_null(col, 0).cast(pa.int64()))
    return table


def concat_partials(partials: Iterable[pa.Table]) -> pa.Table:
    """Concatenates partial tables (types unify: int32 + int64 -> int64, int + float -> float)."""
    tables = [p for p in partials if p is not None and p.num_columns]
    if not tables:
        return pa.table({})
    if len(tables) == 1:
        return tables[0]
    first = tables[0].schema
    if all(t.schema.equals(first) for t in tables):
        return pa.concat_tables(tables)
    return pa.concat_tables(tables, promote_options="permissive")


def merge_partials(partials: pa.Table | Iterable[pa.Table], keys: Sequence[str],
                   aggs: Sequence[Aggregation]) -> pa.Table:
    """Merges partial tables into one row per group."""
    table = partials if isinstance(partials, pa.Table) else concat_partials(partials)
    if not table.num_columns:
        return table
    cols: dict[str, Any] = {f"k{i}": table.column(k) for i, k in enumerate(keys)}
    specs: list[tuple[str, str]] = []
    names: list[str] = []
    for i, (kind, field) in enumerate(partial_states(aggs)):
        name = partial_column(kind, field)
        cols[f"v{i}"] = table.column(name)
        specs.append((f"v{i}", _MERGE_FUNC[kind]))
        names.append(name)
    return _fill_counts(_grouped(pa.table(cols), keys, specs, names))


def finalize(partials: pa.Table, keys: Sequence[str], aggs: Sequence[Aggregation]) -> pa.Table:
    """Output table of merged partials: the key columns, then one column per aggregation.

    count/count_all -> int64; sum -> int64 for integers (float64 for floats, decimal for
    decimals); avg -> float64 (null for a group without values); min/max keep the field type.
    """
    if not partials.num_columns:
        return empty_result(keys, aggs)
    columns = [partials.column(k) for k in keys]
    for agg in aggs:
        if agg.counts_rows:
            col = partials.column(ROWS)
        elif agg.op == "count":
            col = partials.column(partial_column("count", agg.field))
        elif agg.op == "avg":
            total = partials.column(partial_column("sum", agg.field)).cast(pa.float64())
            count = partials.column(partial_column("count", agg.field))
            safe = pc.if_else(pc.equal(count, 0), pa.scalar(None, pa.int64()), count)
            col = pc.divide(total, safe.cast(pa.float64()))
        else:
            col = partials.column(partial_column(agg.op, agg.field))
        columns.append(col)
    return pa.table(columns, names=[*keys, *(a.name for a in aggs)])


def empty_result(keys: Sequence[str], aggs: Sequence[Aggregation]) -> pa.Table:
    """The result over no rows: no groups when there are keys, else one row (counts 0, others null)."""
    if keys:
        return pa.table({})
    columns = {}
    for agg in aggs:
        if agg.op in ("count", "count_all"):
            columns[agg.name] = pa.array([0], pa.int64())
        elif agg.op == "avg":
            columns[agg.name] = pa.array([None], pa.float64())
        else:  # the field's type is unknown without a single row
            columns[agg.name] = pa.nulls(1)
    return pa.table(columns)


def describe(aggs: Sequence[Aggregation]) -> str:
    """Human summary such as ``total=sum(amount), n=count_all()``."""
    return ", ".join(f"{a.name}={a.op}({a.field or ''})" for a in aggs)


def is_internal_name(name: str) -> bool:
    """True for names the partial tables use internally."""
    return name == ROWS or bool(re.match(r"^__(sum|count|min|max)__", name))
