"""GroupByAggregate: SQL-style GROUP BY over Arrow batches, pre-aggregated before the shuffle.

How it runs::

    batches --Partial--> (partition id, partial table) --CombinePerKey(MergePartials)--> results
                \\--> dead letters (values numeric ops cannot use)          --Emit--> batches
                                                             (having) \\--> dead letters

*Partial* (per batch): makes the inputs of numeric ops (sum, avg, stddev, variance, quantile)
numeric (rows whose value is not a number go to the DLQ with ``error_type: type``), aggregates
the batch into partial states (see ``_agg_partials``) and splits the partial rows by a stable
hash of the group key into ``partitions`` parts.

*MergePartials* is a ``CombineFn`` whose accumulator is an Arrow table of partials (coder
``ArrowTableCoder``). Runners lift it before the shuffle, so each worker merges its partials
per partition and only one row per group and partition crosses the shuffle. After the shuffle
the partials merge once more and ``finalize`` computes the outputs. With no keys (a global
aggregate) it is a ``CombineGlobally``, which also answers an empty input with one row (in
the default global windowing; other windowings get one row per non-empty window).

*Emit* splits results into batches and applies ``having`` (an expression of the beam_etl
expression language, ``mapping.compile_expression``, over the output columns).

Windowed and unbounded input: the combine runs per window, so every output batch lies in the
window of its inputs (timestamp: the end of the window).

Accounting: ``records_in = records_out (groups) + records_grouped (rows folded into groups)
+ records_filtered (groups removed by having) + records_failed (dead letters)``; the partial
stage counts every aggregated row as grouped and the emit stage moves one per output group to
``records_out`` (or ``records_filtered`` / ``records_failed``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from beam_etl import registry
from beam_etl.batch import ArrowTableCoder, batch_nbytes, concat_to_batch, row_as_record
from beam_etl.ops.context import get_run_context
from beam_etl.ops.dlq import DLQ_TAG, dead_letter
from beam_etl.ops.metrics import StepMetrics, timed_process
from beam_etl.transforms._agg_partials import (
    NUMERIC_OPS,
    OPS,
    ORDERED_OPS,
    ROWS,
    Aggregation,
    check_key_type,
    check_numeric_type,
    check_orderable_type,
    coerce_numeric,
    concat_partials,
    describe,
    finalize,
    is_internal_name,
    merge_partials,
    numeric_fields,
    partial_aggregate,
)
from beam_etl.transforms._agg_sketch import DEFAULT_SKETCH_SIZE, MAX_SKETCH_SIZE, MIN_SKETCH_SIZE
from beam_etl.transforms.base import batch_source, classify_error
from beam_etl.transforms.dedup import DEFAULT_PARTITIONS, MAX_PARTITIONS, emit_table, hash_columns, partition_of
from beam_etl.transforms.mapping import (
    CompiledExpression,
    apply_isolating,
    compile_expression,
    evaluate,
    rows_to_dead_letters,
)

_LOG = logging.getLogger(__name__)

FIELD_OPS = ("sum", "avg", "min", "max", "count_distinct", "first", "last", "stddev", "variance", "quantile")
_OP_OPTIONS = {"first": ("order_by",), "last": ("order_by",), "stddev": ("ddof",), "variance": ("ddof",),
               "quantile": ("q", "sketch_size")}
_SPEC_KEYS = ("op", "field", "as", "order_by", "ddof", "q", "sketch_size")
HAVING_OPS = ("==", "!=", "<", "<=", ">", ">=", "in", "not in", "is null", "is not null")
_COMPACTED = b"beam_etl.compacted_rows"
LAZY_MERGE_ROWS = 65_536


# ---------------------------------------------------------------------------------------------
# Configuration.
# ---------------------------------------------------------------------------------------------


def _agg_error(where: str, message: str) -> ValueError:
    return ValueError(f"GroupByAggregate: {where}: {message}")


def _spec_of(agg: Aggregation) -> dict[str, Any]:
    """An ``Aggregation`` back as a list-form spec (so it is validated like any other)."""
    spec: dict[str, Any] = {"op": agg.op, "field": agg.field, "as": agg.name}
    if agg.order_by is not None:
        spec["order_by"] = agg.order_by
    if agg.op in ("stddev", "variance"):
        spec["ddof"] = agg.ddof
    if agg.op == "quantile":
        spec["q"] = list(agg.q) if agg.q_list else (agg.q[0] if agg.q else None)
        spec["sketch_size"] = agg.sketch_size
    return spec


def _spec_items(aggregations: Any) -> list[tuple[str, dict[str, Any]]]:
    """The (where, spec) pairs of the mapping or list form."""
    if isinstance(aggregations, Mapping):
        items = []
        for out, spec in aggregations.items():
            if isinstance(spec, BaseModel):
                spec = spec.model_dump(by_alias=True, exclude_none=True)
            if isinstance(spec, str):
                spec = {"op": spec}
            if not isinstance(spec, Mapping):
                raise _agg_error(f"aggregations.{out}", f"{spec!r} is not a mapping; write {{op: sum, field: amount}}")
            if "as" in spec:
                raise _agg_error(f"aggregations.{out}", "'as' belongs to the list form; the mapping key is the name")
            items.append((f"aggregations.{out}", {**spec, "as": out}))
        return items
    if isinstance(aggregations, (list, tuple)):
        items = []
        for i, spec in enumerate(aggregations):
            if isinstance(spec, Aggregation):
                spec = _spec_of(spec)
            elif isinstance(spec, BaseModel):
                spec = spec.model_dump(by_alias=True, exclude_none=True)
            if not isinstance(spec, Mapping):
                raise _agg_error(f"aggregations[{i}]", f"{spec!r} is not a mapping; write {{field: amount, op: sum, "
                                 "as: total}")
            items.append((f"aggregations[{i}]", dict(spec)))
        return items
    raise _agg_error("aggregations", f"{aggregations!r} is not allowed; write a mapping "
                     "{total: {op: sum, field: amount}} or a list [{field: amount, op: sum, as: total}]")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_fraction(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and 0.0 <= float(value) <= 1.0


def _parse_q(where: str, q: Any) -> tuple[tuple[float, ...], bool]:
    """``q``: one fraction, or a non-empty list of distinct fractions; returns (fractions, is_list)."""
    allowed = "a number from 0 to 1 (0.5 = median, 0.95 = p95) or a list of them, e.g. [0.5, 0.95, 0.99]"
    if q is None:
        raise _agg_error(f"{where}.q", f"op 'quantile' needs q; allowed: {allowed}")
    if isinstance(q, (list, tuple)):
        bad = [v for v in q if not _is_fraction(v)]
        if not q or bad:
            raise _agg_error(f"{where}.q", f"{(bad[0] if bad else q)!r} is not allowed; allowed: {allowed}")
        values = tuple(float(v) for v in q)
        if len(set(values)) != len(values):
            raise _agg_error(f"{where}.q", f"{list(q)!r} repeats a value; list each fraction once")
        return values, True
    if not _is_fraction(q):
        raise _agg_error(f"{where}.q", f"{q!r} is not allowed; allowed: {allowed}")
    return (float(q),), False


def _parse_options(where: str, op: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The op-specific options (order_by, ddof, q, sketch_size) as ``Aggregation`` keyword arguments."""
    own = _OP_OPTIONS.get(op, ())
    for key in ("order_by", "ddof", "q", "sketch_size"):
        if key in spec and key not in own:
            users = ", ".join(o for o, keys in _OP_OPTIONS.items() if key in keys)
            raise _agg_error(f"{where}.{key}", f"applies to op {users} only, not to op {op!r}; remove it")
    options: dict[str, Any] = {}
    if op in ("first", "last"):
        order_by = spec.get("order_by")
        if not isinstance(order_by, str) or not order_by:
            picks = "largest" if op == "last" else "smallest"
            raise _agg_error(f"{where}.order_by", f"op {op!r} needs order_by, the field that orders the rows "
                             f"({op} = the value of the row with the {picks} order_by value), got {order_by!r}; "
                             "arrival order differs between runners and is never used (for the smallest or "
                             "largest value itself use min/max)")
        options["order_by"] = order_by
    if op in ("stddev", "variance"):
        ddof = spec.get("ddof", 1)
        if not _is_int(ddof) or ddof not in (0, 1):
            raise _agg_error(f"{where}.ddof", f"{ddof!r} is not allowed; allowed: 1 (sample, the default) or 0 "
                             "(population)")
        options["ddof"] = int(ddof)
    if op == "quantile":
        options["q"], options["q_list"] = _parse_q(where, spec.get("q"))
        size = spec.get("sketch_size", DEFAULT_SKETCH_SIZE)
        if not _is_int(size) or not MIN_SKETCH_SIZE <= size <= MAX_SKETCH_SIZE:
            raise _agg_error(f"{where}.sketch_size", f"{size!r} is not allowed; allowed: an integer from "
                             f"{MIN_SKETCH_SIZE} to {MAX_SKETCH_SIZE} (default {DEFAULT_SKETCH_SIZE})")
        options["sketch_size"] = int(size)
    return options


def _parse_one(where: str, spec: Mapping[str, Any]) -> Aggregation:
    unknown = sorted(set(spec) - set(_SPEC_KEYS))
    if unknown:
        raise _agg_error(where, f"unknown keys {unknown}; allowed: op, field, as, order_by (first/last), "
                         "ddof (stddev/variance), q and sketch_size (quantile)")
    op = spec.get("op")
    field = spec.get("field")
    if op not in OPS:
        raise _agg_error(f"{where}.op", f"{op!r} is not allowed; allowed: {', '.join(OPS)}")
    if field is not None and (not isinstance(field, str) or not field):
        raise _agg_error(f"{where}.field", f"{field!r} is not a field name; allowed: a non-empty string")
    if op in FIELD_OPS and field is None:
        raise _agg_error(f"{where}.field", f"op {op!r} needs a field; add field: <column>")
    if op == "count_all" and field is not None:
        raise _agg_error(f"{where}.field", f"op 'count_all' counts rows and takes no field (got {field!r}); "
                         "use op: count with a field to count non-null values")
    options = _parse_options(where, op, spec)
    name = spec.get("as")
    if name is None:
        name = "count" if field is None else f"{op}_{field}"
    if not isinstance(name, str) or not name:
        raise _agg_error(f"{where}.as", f"{name!r} is not a column name; allowed: a non-empty string")
    return Aggregation(name=name, op=op, field=field, **options)


def parse_aggregations(aggregations: Any) -> list[Aggregation]:
    """Accepts ``{out: {op, field, ...}}``, ``[{field, op, as, ...}]`` or ``Aggregation`` objects."""
    items = _spec_items(aggregations)
    if not items:
        raise _agg_error("aggregations", "is empty; list at least one, e.g. {n: {op: count}}")
    result = [_parse_one(where, spec) for where, spec in items]
    names = [n for a in result for n in a.output_names]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _agg_error("aggregations", f"output names {dupes} repeat; give each aggregation its own name")
    return result


def _literal_ok(value: Any) -> bool:
    if isinstance(value, float):
        return bool(np.isfinite(value))
    return isinstance(value, (str, int, bool))


def _condition_text(where: str, spec: Mapping[str, Any]) -> str:
    """``{field, op, value}`` as expression text, e.g. ``col('orders') >= 2``."""
    unknown = sorted(set(spec) - {"field", "op", "value"})
    if unknown:
        raise _agg_error(where, f"unknown keys {unknown}; allowed: field, op, value")
    field, op = spec.get("field"), spec.get("op")
    if not isinstance(field, str) or not field:
        raise _agg_error(f"{where}.field", f"{field!r} is not a column name; allowed: an output column")
    if op not in HAVING_OPS:
        raise _agg_error(f"{where}.op", f"{op!r} is not allowed; allowed: {', '.join(HAVING_OPS)}")
    value = spec.get("value")
    if op in ("is null", "is not null"):
        if value is not None:
            raise _agg_error(f"{where}.value", f"op {op!r} takes no value (got {value!r}); remove it")
        return f"col({field!r}) {'is' if op == 'is null' else 'is not'} None"
    if op in ("in", "not in"):
        if not isinstance(value, (list, tuple)) or not value or not all(_literal_ok(v) for v in value):
            raise _agg_error(f"{where}.value", f"{value!r} is not allowed; op {op!r} needs a non-empty list of "
                             "numbers, strings or booleans")
        return f"col({field!r}) {op} {list(value)!r}"
    if not _literal_ok(value):
        raise _agg_error(f"{where}.value", f"{value!r} is not allowed; allowed: a number, string or boolean "
                         "(for null use op: is null)")
    return f"col({field!r}) {op} {value!r}"


def having_text(having: Any, where: str = "having") -> str:
    """The having condition as expression text: a string as it is, ``{field, op, value}`` rewritten,
    a list joined with ``and``."""
    if isinstance(having, BaseModel):
        having = having.model_dump(exclude_unset=True)
    if isinstance(having, str):
        return having
    if isinstance(having, Mapping):
        return _condition_text(where, having)
    if isinstance(having, (list, tuple)) and having:
        return " and ".join(f"({having_text(h, f'{where}[{i}]')})" for i, h in enumerate(having))
    raise _agg_error(where, f"{having!r} is not allowed; write an expression such as \"orders >= 2\", "
                     "a condition {field: orders, op: '>=', value: 2}, or a list of them (all must hold)")


def compile_having(having: Any, columns: Sequence[str]) -> CompiledExpression:
    """Compiles ``having`` with the expression language of Filter; it may read only ``columns``."""
    compiled = compile_expression(having_text(having), "GroupByAggregate.having")
    if compiled.boolean is False:
        raise _agg_error("having", f"{compiled.text!r} is not a condition; it must give true/false, "
                         "e.g. 'orders >= 2 and revenue > 100'")
    unknown = [f for f in compiled.fields if f not in columns]
    if unknown:
        raise _agg_error("having", f"{compiled.text!r} reads {unknown}, which are not output columns; "
                         f"allowed: {', '.join(columns)}")
    return compiled


# ---------------------------------------------------------------------------------------------
# Pipeline pieces.
# ---------------------------------------------------------------------------------------------


class _PartialFn(beam.DoFn):
    """Per batch: coerce numeric inputs, DLQ bad rows, aggregate, split partials by key hash."""

    def __init__(self, keys: list[str], aggs: list[Aggregation], partitions: int, step: str) -> None:
        self._keys = keys
        self._aggs = aggs
        self._partitions = partitions
        self._step = step
        self._numeric = numeric_fields(aggs)
        self._ctx = get_run_context()
        self._checked: pa.Schema | None = None
        self._warned: set[str] = set()

    def setup(self) -> None:
        self._metrics = StepMetrics(self._step)

    def _check_schema(self, schema: pa.Schema) -> None:
        """Fails loudly when a field's type can never be aggregated as configured."""
        def fail(what: str, field: str, t: pa.DataType, allowed: str) -> None:
            raise TypeError(f"GroupByAggregate step {self._step!r}: {what} field {field!r} has type {t}; "
                            f"allowed: {allowed}")

        names = set(schema.names)
        orderable = "numbers, strings, booleans, dates/times, decimals"
        for key in self._keys:
            if key in names and not check_key_type(schema.field(key).type):
                fail("group key", key, schema.field(key).type, orderable)
        for agg in self._aggs:
            what = f"{agg.op} ({agg.name})"
            if agg.order_by in names and not check_orderable_type(schema.field(agg.order_by).type):
                fail(f"{what} order_by", agg.order_by, schema.field(agg.order_by).type, orderable)
            if agg.field is None or agg.field not in names:
                continue
            t = schema.field(agg.field).type
            if agg.op in NUMERIC_OPS and not check_numeric_type(t):
                fail(what, agg.field, t, "integers, floating point, decimals, booleans, or strings holding numbers")
            if agg.op in ORDERED_OPS and not check_orderable_type(t):
                fail(what, agg.field, t, orderable)
            if agg.op == "count_distinct" and not check_key_type(t):
                fail(what, agg.field, t, orderable)
        wanted = [*self._keys, *(a.field for a in self._aggs if a.field), *(a.order_by for a in self._aggs
                                                                               if a.order_by)]
        missing = [f for f in dict.fromkeys(wanted) if f not in names and f not in self._warned]
        for f in missing:
            self._warned.add(f)
            _LOG.warning("GroupByAggregate step %r: field %r is not in the batch (columns %s); its values count "
                         "as null", self._step, f, schema.names)

    @timed_process
    def process(self, batch: pa.RecordBatch) -> Iterator[Any]:
        m = self._metrics
        m.batches_in.inc()
        m.records_in.inc(batch.num_rows)
        m.bytes_in.inc(batch_nbytes(batch))
        if batch.num_rows == 0:
            return
        if self._checked is None or not batch.schema.equals(self._checked):
            self._check_schema(batch.schema)
            self._checked = batch.schema
        numeric: dict[str, Any] = {}
        bad: np.ndarray | None = None
        reasons: dict[str, np.ndarray] = {}
        for field in self._numeric:
            idx = batch.schema.get_field_index(field)
            if idx < 0:
                continue
            values, field_bad = coerce_numeric(batch.column(idx))
            numeric[field] = values
            if field_bad is not None:
                reasons[field] = field_bad
                bad = field_bad.copy() if bad is None else bad | field_bad
        data: pa.RecordBatch | pa.Table = batch
        if bad is not None:
            yield from self._dead_letters(batch, bad, reasons)
            keep = pa.array(~bad)
            data = batch.filter(keep)
            numeric = {f: v.filter(keep) for f, v in numeric.items()}
        if data.num_rows == 0:
            return
        m.records_grouped.inc(data.num_rows)  # folded into groups; the emit stage moves groups to out
        partial = partial_aggregate(data, self._keys, self._aggs, numeric)
        if not self._keys:
            yield partial
            return
        key_cols = [partial.column(k) for k in self._keys]
        part = partition_of(hash_columns(key_cols, partial.num_rows), self._partitions)
        if self._partitions == 1 or np.all(part == part[0]):
            yield int(part[0]), partial
            return
        order = np.argsort(part, kind="stable")
        partial = partial.take(pa.array(order, type=pa.int64()))
        part = part[order]
        bounds = np.flatnonzero(np.diff(part)) + 1
        for start, stop in zip(np.concatenate(([0], bounds)).tolist(),
                               np.concatenate((bounds, [len(part)])).tolist(), strict=True):
            yield int(part[start]), partial.slice(start, stop - start)

    def _dead_letters(self, batch: pa.RecordBatch, bad: np.ndarray,
                      reasons: dict[str, np.ndarray]) -> Iterator[beam.pvalue.TaggedOutput]:
        rows = np.flatnonzero(bad)
        self._metrics.records_failed.inc(len(rows))
        for i in rows.tolist():
            field = next(f for f, mask in reasons.items() if mask[i])
            value = batch.column(field)[i].as_py()
            users = ", ".join(f"{a.name}={a.op}({field})" for a in self._aggs if a.field == field
                              and a.op in NUMERIC_OPS)
            yield beam.pvalue.TaggedOutput(DLQ_TAG, dead_letter(
                row_as_record(batch, i), error_type="type",
                error=f"field {field!r}: value {value!r} is not a number (needed by {users})",
                exception="TypeError", step=self._step, source=batch_source(batch, i), ctx=self._ctx))


def _compacted_rows(table: pa.Table) -> int:
    meta = table.schema.metadata or {}
    return int(meta.get(_COMPACTED, b"0"))


class MergePartialsFn(beam.CombineFn):
    """Combines partial tables; the accumulator is itself a table of partials.

    ``add_input`` only appends (zero-copy); the partials are merged (one Arrow ``group_by``)
    when they have doubled since the last merge, in ``compact`` (before the shuffle) and in
    ``merge_accumulators``/``extract_output`` (after it). An empty accumulator is a table
    without columns.
    """

    def __init__(self, keys: Sequence[str], aggs: Sequence[Aggregation]) -> None:
        self._keys = list(keys)
        self._aggs = list(aggs)

    def create_accumulator(self) -> pa.Table:
        return pa.table({})

    def _merge(self, table: pa.Table) -> pa.Table:
        if not table.num_columns:
            return table
        merged = merge_partials(table, self._keys, self._aggs)
        return merged.replace_schema_metadata({_COMPACTED: str(merged.num_rows).encode()})

    def _append(self, acc: pa.Table, partials: Iterable[pa.Table]) -> pa.Table:
        tables = [t for t in (acc, *partials) if t is not None and t.num_columns]
        if not tables:
            return acc
        compacted = _compacted_rows(acc) if acc.num_columns else 0
        table = concat_partials(tables)
        if table.num_rows > max(LAZY_MERGE_ROWS, 2 * compacted):
            return self._merge(table)
        return table.replace_schema_metadata({_COMPACTED: str(compacted).encode()})

    def add_input(self, acc: pa.Table, partial: pa.Table) -> pa.Table:
        return self._append(acc, [partial])

    def add_inputs(self, acc: pa.Table, partials: Iterable[pa.Table]) -> pa.Table:
        return self._append(acc, list(partials))

    def merge_accumulators(self, accumulators: Iterable[pa.Table]) -> pa.Table:
        return self._merge(concat_partials(accumulators))

    def compact(self, acc: pa.Table) -> pa.Table:
        return self._merge(acc)

    def extract_output(self, acc: pa.Table) -> pa.Table:
        return finalize(self._merge(acc), self._keys, self._aggs)

    def get_accumulator_coder(self) -> beam.coders.Coder:
        return ArrowTableCoder()


class _EmitFn(beam.DoFn):
    """Turns result tables into batches, applies ``having`` and moves each group from grouped to
    out, filtered or failed."""

    def __init__(self, step: str, keyed: bool, having: CompiledExpression | None = None) -> None:
        self._step = step
        self._keyed = keyed
        self._having = having
        self._ctx = get_run_context()

    def setup(self) -> None:
        self._metrics = StepMetrics(self._step)

    def process(self, element: Any) -> Iterator[Any]:
        m = self._metrics
        table: pa.Table = element[1] if self._keyed else element
        if table.num_rows == 0:
            return
        counted = self._keyed or _had_rows(table)  # a global result over no rows came from no record
        if counted:
            m.records_grouped.dec(table.num_rows)
        for batch in emit_table(table.replace_schema_metadata(None)):
            if self._having is not None:
                batch, filtered, letters = self._apply_having(batch)
                if counted and filtered:
                    m.records_filtered.inc(filtered)
                if letters:
                    m.records_failed.inc(len(letters))
                    yield from (beam.pvalue.TaggedOutput(DLQ_TAG, letter) for letter in letters)
            if batch.num_rows:
                m.records_out.inc(batch.num_rows)
                yield batch

    def _apply_having(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, int, list[dict[str, Any]]]:
        """Keeps the groups where ``having`` is true; returns (kept, filtered count, dead letters for the
        groups whose evaluation raises)."""
        compiled = self._having

        def keep(piece: pa.RecordBatch) -> pa.RecordBatch:
            (mask,) = evaluate(piece, [compiled.expression])
            if not pa.types.is_boolean(mask.type):
                raise pa.ArrowTypeError(f"the condition gives {mask.type}, not true/false")
            return piece.filter(pc.fill_null(mask, False))

        isolated = apply_isolating(batch, keep)
        kept = [part for _, part in sorted(isolated.parts, key=lambda p: p[0]) if part.num_rows]
        out = concat_to_batch(pa.Table.from_batches(kept)) if kept else batch.slice(0, 0)
        letters = []
        for row, err in isolated.failures:
            error_type = "type" if isinstance(err, (pa.ArrowNotImplementedError, pa.ArrowTypeError)) \
                else classify_error(err)
            letters += rows_to_dead_letters(batch, [row], error_type=error_type, step=self._step, ctx=self._ctx,
                                            errors=f"having {compiled.text!r} failed on this group: {err}",
                                            exception=err)
        return out, batch.num_rows - out.num_rows - len(letters), letters

def _had_rows(table: pa.Table) -> bool:
    """For a global result: whether it came from at least one input row."""
    return bool(table.schema.metadata and table.schema.metadata.get(b"beam_etl.rows", b"0") != b"0")


class _FinalizeGlobalFn(MergePartialsFn):
    """The global (no keys) variant: remembers whether any row was seen, for the metrics."""

    def extract_output(self, acc: pa.Table) -> pa.Table:
        merged = self._merge(acc)
        rows = int(merged.column(ROWS)[0].as_py() or 0) if merged.num_columns and merged.num_rows else 0
        result = finalize(merged, self._keys, self._aggs)
        return result.replace_schema_metadata({b"beam_etl.rows": str(rows).encode()})


class GroupByAggregate(beam.PTransform):
    """GROUP BY ``keys`` with ``aggregations``; returns ``(batches, dead_letters)``.

    Args:
      keys: group key fields (null values form their own group); empty = one global row.
      aggregations: ``{out: {op, field, ...}}`` or ``[{field, op, as, ...}]``; ops: sum, avg,
        count (non-null values of ``field``, or rows without a field), min, max, count_all
        (rows), count_distinct, first/last (``order_by``), stddev/variance (``ddof``),
        quantile (``q``, ``sketch_size``).
      having: condition on the output columns (expression text, ``{field, op, value}`` or a
        list of them); groups where it is not true are counted as filtered.
      partitions: hash partitions of the shuffle (parallelism of the merge).
      step: step name for metrics and dead letters (default: the transform label).
    """

    def __init__(
        self,
        keys: Sequence[str] | str | None = None,
        aggregations: Any = None,
        *,
        having: Any = None,
        partitions: int = DEFAULT_PARTITIONS,
        step: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(keys, str):
            keys = [keys]
        keys = list(keys or [])
        for k in keys:
            if not isinstance(k, str) or not k:
                raise ValueError(f"GroupByAggregate: keys entry {k!r} is not a field name; allowed: non-empty strings")
            if is_internal_name(k):
                raise ValueError(f"GroupByAggregate: keys entry {k!r} is a reserved internal name; rename the field")
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"GroupByAggregate: keys {keys!r} repeat {dupes}; list each field once")
        if aggregations is None:
            raise ValueError("GroupByAggregate: aggregations is missing; e.g. {total: {op: sum, field: amount}}")
        aggs = parse_aggregations(aggregations)
        outputs = [n for a in aggs for n in a.output_names]
        clash = sorted(set(outputs) & set(keys))
        if clash:
            raise ValueError(f"GroupByAggregate: aggregation names {clash} are also group keys; rename them "
                             "(each output column needs its own name)")
        if isinstance(partitions, bool) or not isinstance(partitions, int) or not 1 <= partitions <= MAX_PARTITIONS:
            raise ValueError(f"GroupByAggregate: partitions={partitions!r} is not allowed; "
                             f"allowed: an integer from 1 to {MAX_PARTITIONS}")
        self._keys = keys
        self._aggs = aggs
        self._having = None if having is None else compile_having(having, [*keys, *outputs])
        self._partitions = partitions
        self._step = step

    @property
    def aggregations(self) -> list[Aggregation]:
        return list(self._aggs)

    @property
    def having(self) -> str | None:
        """The having condition as expression text (None without one)."""
        return self._having.text if self._having else None

    def step_name(self) -> str:
        return self._step or self.label

    def display_data(self) -> dict[str, Any]:
        data = {"keys": ", ".join(self._keys) or "(global)", "aggregations": describe(self._aggs),
                "partitions": self._partitions}
        if self._having:
            data["having"] = self._having.text
        return data

    def expand(self, pcoll: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        step = self.step_name()
        partial_fn = _PartialFn(self._keys, self._aggs, self._partitions, step)
        if self._keys:
            partials = pcoll | "Partial" >> beam.ParDo(partial_fn).with_output_types(
                tuple[int, pa.Table]).with_outputs(DLQ_TAG, main="partials")
            merged = partials.partials | "Merge" >> beam.CombinePerKey(MergePartialsFn(self._keys, self._aggs))
        else:
            partials = pcoll | "Partial" >> beam.ParDo(partial_fn).with_output_types(
                pa.Table).with_outputs(DLQ_TAG, main="partials")
            combine = beam.CombineGlobally(_FinalizeGlobalFn([], self._aggs))
            if not pcoll.windowing.is_default():
                combine = combine.without_defaults()  # windows, triggers: one record per non-empty pane
            merged = partials.partials | "Merge" >> combine
        emitted = merged | "Emit" >> beam.ParDo(_EmitFn(step, bool(self._keys), self._having)).with_output_types(
            pa.RecordBatch).with_outputs(DLQ_TAG, main="out")
        if self._having is None:
            return emitted.out, partials[DLQ_TAG]
        dead = (partials[DLQ_TAG], emitted[DLQ_TAG]) | "DeadLetters" >> beam.Flatten()
        return emitted.out, dead


# ---------------------------------------------------------------------------------------------
# Registry.
# ---------------------------------------------------------------------------------------------


class AggregationSpec(registry.StrictConfig):
    """One aggregation of the mapping form: ``{op: sum, field: amount}``."""

    op: Literal["sum", "avg", "count", "min", "max", "count_all", "count_distinct", "first", "last", "stddev",
                "variance", "quantile"] = Field(description="Aggregate function.")
    field: str | None = Field(None, description="Input field; omit for count/count_all (counts rows).")
    order_by: str | None = Field(
        None, description="first/last (required): the field whose smallest/largest value picks the row.")
    ddof: int | None = Field(None, description="stddev/variance: 1 = sample (default), 0 = population.")
    q: float | list[float] | None = Field(
        None, description="quantile (required): a fraction in [0, 1], or a list (one column <name>_p<percent> each).")
    sketch_size: int | None = Field(
        None, description=f"quantile: values kept per level of the sketch (default {DEFAULT_SKETCH_SIZE}); "
        "exact up to this many values per group.")


class AggregationItem(AggregationSpec):
    """One aggregation of the list form: ``{field: amount, op: sum, as: total}``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    as_: str | None = Field(None, alias="as", description="Output column name (default: <op>_<field> or count).")


class HavingCondition(registry.StrictConfig):
    """One structured having condition: ``{field: orders, op: '>=', value: 2}``."""

    field: str = Field(description="Output column (a key or an aggregation name).")
    op: Literal["==", "!=", "<", "<=", ">", ">=", "in", "not in", "is null", "is not null"] = Field(
        description="Comparison.")
    value: Any = Field(None, description="Number, string or boolean (a list for in / not in; none for is null).")


class GroupByAggregateConfig(registry.StrictConfig):
    """Groups records by keys and computes aggregations per group (sum, avg, count, quantiles, ...)."""

    keys: list[str] | str = Field(
        default_factory=list, description="Group key fields (a list, or one field name); empty for one global row.")
    aggregations: dict[str, AggregationSpec] | list[AggregationItem] = Field(
        description="{out_name: {op, field, ...}} (or a list of {field, op, as, ...}).")
    having: str | HavingCondition | list[str | HavingCondition] | None = Field(
        None, description="Keep only groups where this holds: an expression on the output columns such as "
        "\"orders >= 2\", a condition {field, op, value}, or a list of them (all must hold).")
    partitions: int = Field(DEFAULT_PARTITIONS, ge=1, le=MAX_PARTITIONS, description="Hash partitions of the shuffle.")

    @model_validator(mode="after")
    def _check(self) -> GroupByAggregateConfig:
        GroupByAggregate(self.keys, self.aggregations, having=self.having, partitions=self.partitions, step="check")
        return self


def _columns_read(config: GroupByAggregateConfig) -> registry.ColumnUse:
    """The keys and every aggregation's field and order_by; the output holds only groups."""
    specs = config.aggregations.values() if isinstance(config.aggregations, dict) else config.aggregations
    fields = [f for spec in specs for f in (spec.field, spec.order_by) if f]
    return registry.ColumnUse(frozenset([*registry.name_list(config.keys), *fields]), passes_through=False)


@registry.register("step", "GroupByAggregate", GroupByAggregateConfig, streaming=True, regroups=True,
                   reads=_columns_read)
def build_group_by_aggregate(config: GroupByAggregateConfig, ctx: registry.BuildContext) -> GroupByAggregate:
    """Groups records by keys and computes aggregations per group (sum, avg, count, quantiles, ...)."""
    return GroupByAggregate(config.keys, config.aggregations, having=config.having, partitions=config.partitions,
                            step=ctx.step_name)
