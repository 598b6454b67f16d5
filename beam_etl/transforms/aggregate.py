"""GroupByAggregate: SQL-style GROUP BY over Arrow batches, pre-aggregated before the shuffle.

How it runs::

    batches --Partial--> (partition id, partial table) --CombinePerKey(MergePartials)--> results
                \\--> dead letters (values sum/avg cannot use)

*Partial* (per batch): makes the inputs of sum/avg numeric (rows whose value is not a number go
to the DLQ with ``error_type: type``), aggregates the batch with one Arrow ``group_by`` into
partial states (sum, count, min, max, rows; see ``_agg_partials``) and splits the partial rows
by a stable hash of the group key into ``partitions`` parts.

*MergePartials* is a ``CombineFn`` whose accumulator is an Arrow table of partials (coder
``ArrowTableCoder``). Runners lift it before the shuffle, so each worker merges its partials
per partition and only one row per group and partition crosses the shuffle. After the shuffle
the partials merge with one more ``group_by`` and ``finalize`` computes the outputs
(avg = merged sum / merged count). With no keys (a global aggregate) it is a
``CombineGlobally``, which also answers an empty input with one row (in the global window).

Accounting: ``records_in = records_out (groups) + records_grouped (rows folded into groups)
+ records_failed (dead letters)``; the partial stage counts every aggregated row as grouped and
the emit stage moves one per output group to ``records_out``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import apache_beam as beam
import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from beam_etl import registry
from beam_etl.batch import ArrowTableCoder, batch_nbytes, row_as_record
from beam_etl.ops.context import get_run_context
from beam_etl.ops.dlq import DLQ_TAG, dead_letter
from beam_etl.ops.metrics import StepMetrics
from beam_etl.transforms._agg_partials import (
    OPS,
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
from beam_etl.transforms.base import batch_source
from beam_etl.transforms.dedup import DEFAULT_PARTITIONS, MAX_PARTITIONS, emit_table, hash_columns, partition_of

_LOG = logging.getLogger(__name__)

FIELD_OPS = ("sum", "avg", "min", "max")
_COMPACTED = b"beam_etl.compacted_rows"
LAZY_MERGE_ROWS = 65_536


# ---------------------------------------------------------------------------------------------
# Configuration.
# ---------------------------------------------------------------------------------------------


def _agg_error(where: str, message: str) -> ValueError:
    return ValueError(f"GroupByAggregate: {where}: {message}")


def parse_aggregations(aggregations: Any) -> list[Aggregation]:
    """Accepts ``{out: {op, field}}``, ``[{field, op, as}]`` or ``Aggregation`` objects."""
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
    elif isinstance(aggregations, (list, tuple)):
        items = []
        for i, spec in enumerate(aggregations):
            if isinstance(spec, Aggregation):
                spec = {"op": spec.op, "field": spec.field, "as": spec.name}
            elif isinstance(spec, BaseModel):
                spec = spec.model_dump(by_alias=True, exclude_none=True)
            if not isinstance(spec, Mapping):
                raise _agg_error(f"aggregations[{i}]", f"{spec!r} is not a mapping; write {{field: amount, op: sum, "
                                 "as: total}")
            items.append((f"aggregations[{i}]", dict(spec)))
    else:
        raise _agg_error("aggregations", f"{aggregations!r} is not allowed; write a mapping "
                         "{total: {op: sum, field: amount}} or a list [{field: amount, op: sum, as: total}]")
    if not items:
        raise _agg_error("aggregations", "is empty; list at least one, e.g. {n: {op: count}}")
    result = []
    for where, spec in items:
        unknown = sorted(set(spec) - {"op", "field", "as"})
        if unknown:
            raise _agg_error(where, f"unknown keys {unknown}; allowed: op, field, as")
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
        name = spec.get("as")
        if name is None:
            name = "count" if field is None else f"{op}_{field}"
        if not isinstance(name, str) or not name:
            raise _agg_error(f"{where}.as", f"{name!r} is not a column name; allowed: a non-empty string")
        result.append(Aggregation(name=name, op=op, field=field))
    names = [a.name for a in result]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _agg_error("aggregations", f"output names {dupes} repeat; give each aggregation its own name")
    return result


# ---------------------------------------------------------------------------------------------
# Pipeline pieces.
# ---------------------------------------------------------------------------------------------


class _PartialFn(beam.DoFn):
    """Per batch: coerce sum/avg inputs, DLQ bad rows, aggregate, split partials by key hash."""

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
        for key in self._keys:
            if key in names and not check_key_type(schema.field(key).type):
                fail("group key", key, schema.field(key).type, "numbers, strings, booleans, dates/times, decimals")
        for agg in self._aggs:
            if agg.field is None or agg.field not in names:
                continue
            t = schema.field(agg.field).type
            if agg.op in ("sum", "avg") and not check_numeric_type(t):
                fail(f"{agg.op} ({agg.name})", agg.field, t,
                     "integers, floating point, decimals, booleans, or strings holding numbers")
            if agg.op in ("min", "max") and not check_orderable_type(t):
                fail(f"{agg.op} ({agg.name})", agg.field, t, "numbers, strings, booleans, dates/times, decimals")
        missing = [f for f in [*self._keys, *(a.field for a in self._aggs if a.field)]
                   if f not in names and f not in self._warned]
        for f in missing:
            self._warned.add(f)
            _LOG.warning("GroupByAggregate step %r: field %r is not in the batch (columns %s); its values count "
                         "as null", self._step, f, schema.names)

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
                              and a.op in ("sum", "avg"))
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
    """Turns result tables into batches and moves their groups from grouped to out."""

    def __init__(self, step: str, keyed: bool) -> None:
        self._step = step
        self._keyed = keyed

    def setup(self) -> None:
        self._metrics = StepMetrics(self._step)

    def process(self, element: Any) -> Iterator[pa.RecordBatch]:
        table: pa.Table = element[1] if self._keyed else element
        if table.num_rows == 0:
            return
        self._metrics.records_out.inc(table.num_rows)
        if self._keyed or _had_rows(table):
            self._metrics.records_grouped.dec(table.num_rows)
        yield from emit_table(table.replace_schema_metadata(None))


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
      aggregations: ``{out: {op, field}}`` or ``[{field, op, as}]``; ops: sum, avg, count
        (non-null values of ``field``, or rows without a field), min, max, count_all (rows).
      partitions: hash partitions of the shuffle (parallelism of the merge).
      step: step name for metrics and dead letters (default: the transform label).
    """

    def __init__(
        self,
        keys: Sequence[str] | str | None = None,
        aggregations: Any = None,
        *,
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
        clash = sorted({a.name for a in aggs} & set(keys))
        if clash:
            raise ValueError(f"GroupByAggregate: aggregation names {clash} are also group keys; rename them "
                             "(each output column needs its own name)")
        if isinstance(partitions, bool) or not isinstance(partitions, int) or not 1 <= partitions <= MAX_PARTITIONS:
            raise ValueError(f"GroupByAggregate: partitions={partitions!r} is not allowed; "
                             f"allowed: an integer from 1 to {MAX_PARTITIONS}")
        self._keys = keys
        self._aggs = aggs
        self._partitions = partitions
        self._step = step

    @property
    def aggregations(self) -> list[Aggregation]:
        return list(self._aggs)

    def step_name(self) -> str:
        return self._step or self.label

    def display_data(self) -> dict[str, Any]:
        return {"keys": ", ".join(self._keys) or "(global)", "aggregations": describe(self._aggs),
                "partitions": self._partitions}

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
            if not isinstance(pcoll.windowing.windowfn, beam.window.GlobalWindows):
                combine = combine.without_defaults()  # one record per non-empty window
            merged = partials.partials | "Merge" >> combine
        out = merged | "Emit" >> beam.ParDo(_EmitFn(step, bool(self._keys))).with_output_types(pa.RecordBatch)
        return out, partials[DLQ_TAG]


# ---------------------------------------------------------------------------------------------
# Registry.
# ---------------------------------------------------------------------------------------------


class AggregationSpec(registry.StrictConfig):
    """One aggregation of the mapping form: ``{op: sum, field: amount}``."""

    op: Literal["sum", "avg", "count", "min", "max", "count_all"] = Field(description="Aggregate function.")
    field: str | None = Field(None, description="Input field; omit for count/count_all (counts rows).")


class AggregationItem(AggregationSpec):
    """One aggregation of the list form: ``{field: amount, op: sum, as: total}``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    as_: str | None = Field(None, alias="as", description="Output column name (default: <op>_<field> or count).")


class GroupByAggregateConfig(registry.StrictConfig):
    """Groups records by keys and computes sum/avg/count/min/max/count_all per group."""

    keys: list[str] | str = Field(
        default_factory=list, description="Group key fields (a list, or one field name); empty for one global row.")
    aggregations: dict[str, AggregationSpec] | list[AggregationItem] = Field(
        description="{out_name: {op, field}} (or a list of {field, op, as}).")
    partitions: int = Field(DEFAULT_PARTITIONS, ge=1, le=MAX_PARTITIONS, description="Hash partitions of the shuffle.")


@registry.register("step", "GroupByAggregate", GroupByAggregateConfig)
def build_group_by_aggregate(config: GroupByAggregateConfig, ctx: registry.BuildContext) -> GroupByAggregate:
    """Groups records by keys and computes sum/avg/count/min/max/count_all per group."""
    return GroupByAggregate(config.keys, config.aggregations, partitions=config.partitions, step=ctx.step_name)
