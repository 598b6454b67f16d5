"""Pure Arrow functions behind GroupByAggregate: partial aggregates and their merge.

A *partial* is an Arrow table with the group key columns (original names) and one column per
partial state (``State``). *Simple* states merge with one Arrow ``group_by``: ``sum``,
``count`` (non-null values), ``min``, ``max`` of a field and ``rows`` (``count_all``).
*Nested* states are computed per group id with Arrow/numpy: ``distinct`` (a list of the
distinct values, merged by union), ``first``/``last`` (a struct ``{o, v}``: the order value
and the value of the chosen row), ``moments`` (a struct ``{n, mean, m2}`` merged with the
exact parallel formulas) and ``sketch`` (a quantile sketch, ``_agg_sketch``). Partials of any
batches, windows or workers merge the same way, so the same functions serve the batch
combiner and a streaming per-(key, window) state::

    partial = partial_aggregate(coerced_batch, keys, aggs)       # per batch, before the shuffle
    merged = merge_partials([p1, p2, ...], keys, aggs)           # any number of times
    result = finalize(merged, keys, aggs)                        # key columns + outputs

``coerce_numeric`` turns the inputs of numeric ops into numbers first and reports rows whose
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

from beam_etl.transforms import _agg_sketch as sketch

OPS = ("sum", "avg", "count", "min", "max", "count_all", "count_distinct", "first", "last", "stddev",
       "variance", "quantile")
NUMERIC_OPS = frozenset({"sum", "avg", "stddev", "variance", "quantile"})
ORDERED_OPS = frozenset({"min", "max", "first", "last"})
ROWS = "__rows"
_NUMBER_RE = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|infinity|nan)$"
_MERGE_FUNC = {"sum": "sum", "count": "sum", "min": "min", "max": "max", "rows": "sum"}
_STATE_OF_OP = {"count_distinct": "distinct", "stddev": "moments", "variance": "moments", "quantile": "sketch"}
_INTERNAL_RE = re.compile(r"^__(sum|count|min|max|distinct|first|last|moments|sketch\d+)__")
_GROUP_ROWS = "__group_rows"


@dataclasses.dataclass(frozen=True)
class Aggregation:
    """One aggregation: ``name = op(field)``; ``field`` is None for row counts.

    ``order_by`` orders first/last; ``ddof`` is stddev/variance's delta degrees of freedom;
    ``q`` the quantile's fractions (one output column, or one per fraction when ``q_list``);
    ``sketch_size`` the quantile sketch's ``k``.
    """

    name: str
    op: str
    field: str | None = None
    order_by: str | None = None
    ddof: int = 1
    q: tuple[float, ...] = ()
    q_list: bool = False
    sketch_size: int = sketch.DEFAULT_SKETCH_SIZE

    @property
    def counts_rows(self) -> bool:
        return self.op == "count_all" or (self.op == "count" and self.field is None)

    @property
    def output_names(self) -> tuple[str, ...]:
        """Output columns: ``name``, or ``<name>_p<percent>`` per fraction of a quantile list."""
        if self.op == "quantile" and self.q_list:
            return tuple(f"{self.name}_p{percent_label(q)}" for q in self.q)
        return (self.name,)


def percent_label(q: float) -> str:
    """``0.95`` -> ``95``, ``0.999`` -> ``99_9`` (used in quantile column names)."""
    return np.format_float_positional(round(q * 100, 10), trim="-").replace(".", "_")


@dataclasses.dataclass(frozen=True)
class State:
    """One partial state: its kind, the field it reads and its parameter (order_by, sketch size)."""

    kind: str
    field: str | None = None
    param: str | int | None = None

    @property
    def column(self) -> str:
        if self.kind in ("first", "last"):
            return f"__{self.kind}__{self.field}__by__{self.param}"
        if self.kind == "sketch":
            return f"__sketch{self.param}__{self.field}"
        return partial_column(self.kind, self.field)

    @property
    def simple(self) -> bool:
        return self.kind in _MERGE_FUNC


def partial_column(kind: str, field: str | None) -> str:
    """Name of the partial-state column ``kind`` (sum/count/min/max/rows/distinct/moments) of ``field``."""
    return ROWS if kind == "rows" else f"__{kind}__{field}"


def states_of(agg: Aggregation) -> list[State]:
    """The partial states one aggregation reads."""
    if agg.counts_rows:
        return [State("rows")]
    if agg.op == "avg":
        return [State("sum", agg.field), State("count", agg.field)]
    if agg.op in ("first", "last"):
        return [State(agg.op, agg.field, agg.order_by)]
    if agg.op == "quantile":
        return [State("sketch", agg.field, agg.sketch_size)]
    return [State(_STATE_OF_OP.get(agg.op, agg.op), agg.field)]


def partial_states(aggs: Sequence[Aggregation]) -> list[State]:
    """The distinct partial states the aggregations need, in a stable order (``rows`` first)."""
    states = [State("rows")]  # always kept: tells empty groups apart
    for agg in aggs:
        states += [s for s in states_of(agg) if s not in states]
    return states


def numeric_fields(aggs: Sequence[Aggregation]) -> list[str]:
    """Fields whose values must be numbers (inputs of sum/avg/stddev/variance/quantile), each once."""
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


def _as_array(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _column(data: pa.Table | pa.RecordBatch, name: str) -> pa.Array:
    idx = data.schema.get_field_index(name)
    if idx < 0:
        return pa.nulls(data.num_rows)
    col = _as_array(data.column(idx))
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    return col


def _group_ids(lists: pa.Array, n_rows: int) -> np.ndarray:
    """Per input row, its group's index, from the ``hash_list`` of row numbers per group."""
    gid = np.empty(n_rows, dtype=np.int64)
    gid[np.asarray(pc.list_flatten(lists), dtype=np.int64)] = np.asarray(pc.list_parent_indices(lists))
    return gid


def _grouped(table: pa.Table, keys: Sequence[str], specs: list[tuple[Any, str]], out_names: list[str],
             with_ids: bool = False) -> tuple[pa.Table, np.ndarray | None]:
    """``group_by`` of ``table`` (key columns k0.., value columns v0..) renamed to out_names.

    With ``with_ids`` also returns each input row's group index (the output row it went to).
    """
    key_names = [f"k{i}" for i in range(len(keys))]
    n_rows = table.num_rows
    if with_ids and keys:
        table = table.append_column(_GROUP_ROWS, pa.array(np.arange(n_rows), pa.int64()))
        specs = [*specs, (_GROUP_ROWS, "list")]
    result = table.group_by(key_names, use_threads=False).aggregate(specs)
    columns = [result.column(k) for k in key_names]
    columns += [result.column(f"{col}_{func}" if col else func) for col, func in specs[:len(out_names)]]
    gid = None
    if with_ids:
        gid = _group_ids(_as_array(result.column(f"{_GROUP_ROWS}_list")), n_rows) if keys \
            else np.zeros(n_rows, dtype=np.int64)
    return pa.table(columns, names=[*keys, *out_names]), gid


def partial_aggregate(data: pa.Table | pa.RecordBatch, keys: Sequence[str], aggs: Sequence[Aggregation],
                      numeric: Mapping[str, Any] | None = None) -> pa.Table:
    """Partial states of ``data`` per group; null key values form their own group (SQL ``GROUP BY``).

    ``numeric`` maps the field of a numeric op to its values already made numeric
    (``coerce_numeric``); fields not in it are read from ``data`` as they are.
    """
    numeric = numeric or {}
    states = partial_states(aggs)
    cols: dict[str, Any] = {f"k{i}": _column(data, k) for i, k in enumerate(keys)}
    specs: list[tuple[Any, str]] = []
    names: list[str] = []
    for i, state in enumerate(s for s in states if s.simple):
        if state.kind == "rows":
            specs.append(([], "count_all"))
        else:
            value = _values(data, numeric, state.field) if state.kind in ("sum", "count") \
                else _column(data, state.field)
            if state.kind == "count":
                value = pc.is_valid(value).cast(pa.int64())
            cols[f"v{i}"] = value
            specs.append((f"v{i}", "sum" if state.kind == "count" else state.kind))
        names.append(state.column)
    if not cols:  # zero keys and only row counts
        cols["__dummy"] = pa.nulls(data.num_rows)
    nested = [s for s in states if not s.simple]
    table, gid = _grouped(pa.table(cols), keys, specs, names, with_ids=bool(nested))
    for state in nested:
        table = table.append_column(state.column, _partial_state(state, data, numeric, gid, table.num_rows))
    return _fill_counts(table)


def _values(data: pa.Table | pa.RecordBatch, numeric: Mapping[str, Any], field: str | None) -> pa.Array:
    return _as_array(numeric[field]) if field in numeric else _column(data, field)


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
    states = partial_states(aggs)
    cols: dict[str, Any] = {f"k{i}": table.column(k) for i, k in enumerate(keys)}
    specs: list[tuple[Any, str]] = []
    names: list[str] = []
    for i, state in enumerate(s for s in states if s.simple):
        cols[f"v{i}"] = table.column(state.column)
        specs.append((f"v{i}", _MERGE_FUNC[state.kind]))
        names.append(state.column)
    nested = [s for s in states if not s.simple]
    result, gid = _grouped(pa.table(cols), keys, specs, names, with_ids=bool(nested))
    for state in nested:
        merged = _merge_state(state, _as_array(table.column(state.column)), gid, result.num_rows)
        result = result.append_column(state.column, merged)
    return _fill_counts(result)


# ---------------------------------------------------------------------------------------------
# Nested states: distinct, first/last, moments, sketch.
# ---------------------------------------------------------------------------------------------


def _partial_state(state: State, data: pa.Table | pa.RecordBatch, numeric: Mapping[str, Any],
                   gid: np.ndarray, n_groups: int) -> pa.Array:
    if state.kind == "distinct":
        return _distinct_lists(gid, n_groups, _column(data, state.field))
    if state.kind in ("first", "last"):
        return _pick(gid, n_groups, _column(data, state.param), _column(data, state.field), state.kind == "last")
    if state.kind == "moments":
        return _moments_partial(gid, n_groups, _values(data, numeric, state.field))
    return sketch.sketch_partial(gid, n_groups, _values(data, numeric, state.field), int(state.param))


def _merge_state(state: State, col: pa.Array, gid: np.ndarray, n_groups: int) -> pa.Array:
    if state.kind == "distinct":
        parents = np.asarray(pc.list_parent_indices(col), dtype=np.int64)
        return _distinct_lists(gid[parents], n_groups, pc.list_flatten(col))
    if state.kind in ("first", "last"):
        return _pick(gid, n_groups, col.field("o"), col.field("v"), state.kind == "last")
    if state.kind == "moments":
        return _moments_merge(gid, n_groups, col)
    return sketch.sketch_merge(gid, n_groups, col, int(state.param))


def _distinct_lists(gid: np.ndarray, n_groups: int, values: pa.Array) -> pa.ListArray:
    """Per group, the list of its distinct non-null values."""
    values = _as_array(values)
    valid = np.asarray(pc.is_valid(values), dtype=bool)
    if pa.types.is_null(values.type) or not valid.any():
        return pa.ListArray.from_arrays(pa.array(np.zeros(n_groups + 1), pa.int32()), values.slice(0, 0))
    pairs = pa.table({"g": gid[valid], "v": values.filter(pa.array(valid))}).group_by(
        ["g", "v"], use_threads=False).aggregate([])
    g = np.asarray(pairs.column("g"), dtype=np.int64)
    order = np.argsort(g, kind="stable")
    offsets = np.concatenate(([0], np.cumsum(np.bincount(g, minlength=n_groups))))
    distinct = _as_array(pairs.column("v").take(pa.array(order, pa.int64())))
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), distinct)


def _pick(gid: np.ndarray, n_groups: int, order: pa.Array, values: pa.Array, last: bool) -> pa.StructArray:
    """Per group, the row with the smallest (first) / largest (last) ``(order, value)``; nulls lose.

    Rows with a null value are skipped; a null order value loses to any order value; equal
    order values are decided by the value itself, so the pick never depends on row order.
    """
    order, values = _as_array(order), _as_array(values)
    valid = np.flatnonzero(np.asarray(pc.is_valid(values), dtype=bool))
    chosen = np.full(n_groups, -1, dtype=np.int64)
    if valid.size:
        rows = pa.array(valid, pa.int64())
        direction = "descending" if last else "ascending"
        columns = {"g": pa.array(gid[valid]), "o": order.take(rows), "v": values.take(rows)}
        sort_keys = [(name, "ascending" if name == "g" else direction) for name, col in columns.items()
                     if not pa.types.is_null(col.type)]
        ranked = np.asarray(pc.sort_indices(pa.table(columns), sort_keys=sort_keys, null_placement="at_end"))
        groups = gid[valid][ranked]
        heads = np.flatnonzero(np.diff(groups, prepend=-1))
        chosen[groups[heads]] = valid[ranked[heads]]
    idx = pa.array(chosen, pa.int64(), mask=chosen < 0)
    return pa.StructArray.from_arrays([order.take(idx), values.take(idx)], names=["o", "v"])


def _floats(col: pa.Array, null: float = np.nan) -> np.ndarray:
    return np.asarray(pc.fill_null(_as_array(col).cast(pa.float64()), null), dtype=np.float64)


def _moments(n: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> pa.StructArray:
    return pa.StructArray.from_arrays([pa.array(n.astype(np.int64)), pa.array(mean), pa.array(m2)],
                                      names=["n", "mean", "m2"])


def _moments_partial(gid: np.ndarray, n_groups: int, values: pa.Array) -> pa.StructArray:
    """Count, mean and sum of squared deviations (M2) per group, in two passes."""
    values = _as_array(values)
    valid = np.asarray(pc.is_valid(values), dtype=bool)
    x, g = _floats(values)[valid], gid[valid]
    n = np.bincount(g, minlength=n_groups).astype(np.float64)
    mean = np.divide(np.bincount(g, weights=x, minlength=n_groups), n, out=np.zeros(n_groups), where=n > 0)
    m2 = np.bincount(g, weights=(x - mean[g]) ** 2, minlength=n_groups)
    return _moments(n, mean, m2)


def _moments_merge(gid: np.ndarray, n_groups: int, col: pa.StructArray) -> pa.StructArray:
    """Exact parallel merge: n = sum n_i, mean = sum n_i mean_i / n, M2 = sum M2_i + n_i (mean_i - mean)^2."""
    n_i, mean_i, m2_i = _floats(col.field("n"), 0), _floats(col.field("mean"), 0), _floats(col.field("m2"), 0)
    n = np.bincount(gid, weights=n_i, minlength=n_groups)
    mean = np.divide(np.bincount(gid, weights=n_i * mean_i, minlength=n_groups), n, out=np.zeros(n_groups),
                     where=n > 0)
    spread = np.where(n_i > 0, n_i * (mean_i - mean[gid]) ** 2, 0.0)
    m2 = np.bincount(gid, weights=m2_i, minlength=n_groups) + np.bincount(gid, weights=spread, minlength=n_groups)
    return _moments(n, mean, m2)


def _moments_final(col: pa.StructArray, op: str, ddof: int) -> pa.Array:
    n, m2 = _floats(col.field("n"), 0), _floats(col.field("m2"), 0)
    dof = n - ddof
    ok = dof > 0
    variance = np.divide(m2, dof, out=np.zeros(len(n)), where=ok)
    result = np.sqrt(variance) if op == "stddev" else variance
    return pa.array(result, pa.float64(), mask=~ok)


# ---------------------------------------------------------------------------------------------
# Outputs.
# ---------------------------------------------------------------------------------------------


def _output(partials: pa.Table, agg: Aggregation) -> list[Any]:
    """The output column(s) of one aggregation from merged partials."""
    if agg.counts_rows:
        return [partials.column(ROWS)]
    state = states_of(agg)[0]
    if agg.op == "avg":
        total = partials.column(partial_column("sum", agg.field)).cast(pa.float64())
        count = partials.column(partial_column("count", agg.field))
        safe = pc.if_else(pc.equal(count, 0), pa.scalar(None, pa.int64()), count)
        return [pc.divide(total, safe.cast(pa.float64()))]
    if state.simple:
        return [partials.column(state.column)]
    col = _as_array(partials.column(state.column))
    if agg.op == "count_distinct":
        return [pc.fill_null(pc.list_value_length(col), 0).cast(pa.int64())]
    if agg.op in ("first", "last"):
        return [col.field("v")]
    if agg.op in ("stddev", "variance"):
        return [_moments_final(col, agg.op, agg.ddof)]
    return sketch.sketch_quantiles(col, agg.q)


def finalize(partials: pa.Table, keys: Sequence[str], aggs: Sequence[Aggregation]) -> pa.Table:
    """Output table of merged partials: the key columns, then the column(s) of each aggregation.

    count/count_all/count_distinct -> int64; sum -> int64 for integers (float64 for floats,
    decimal for decimals); avg/stddev/variance/quantile -> float64 (null for a group without
    values); min/max/first/last keep the field type.
    """
    if not partials.num_columns:
        return empty_result(keys, aggs)
    columns = [partials.column(k) for k in keys]
    names = list(keys)
    for agg in aggs:
        columns += _output(partials, agg)
        names += agg.output_names
    return pa.table(columns, names=names)


def empty_result(keys: Sequence[str], aggs: Sequence[Aggregation]) -> pa.Table:
    """The result over no rows: no groups when there are keys, else one row (counts 0, others null)."""
    if keys:
        return pa.table({})
    columns = {}
    for agg in aggs:
        for name in agg.output_names:
            if agg.op in ("count", "count_all", "count_distinct"):
                columns[name] = pa.array([0], pa.int64())
            elif agg.op in ("avg", "stddev", "variance", "quantile"):
                columns[name] = pa.array([None], pa.float64())
            else:  # the field's type is unknown without a single row
                columns[name] = pa.nulls(1)
    return pa.table(columns)


def describe(aggs: Sequence[Aggregation]) -> str:
    """Human summary such as ``total=sum(amount), n=count_all(), p=quantile(ms, q=[0.5, 0.9])``."""
    parts = []
    for a in aggs:
        extra = ""
        if a.order_by:
            extra = f", order_by={a.order_by}"
        elif a.op in ("stddev", "variance"):
            extra = f", ddof={a.ddof}"
        elif a.op == "quantile":
            extra = f", q={list(a.q) if a.q_list else a.q[0]}"
        parts.append(f"{a.name}={a.op}({a.field or ''}{extra})")
    return ", ".join(parts)


def is_internal_name(name: str) -> bool:
    """True for names the partial tables use internally."""
    return name == ROWS or bool(_INTERNAL_RE.match(name))
