"""NullRemover: drop rows with nulls, drop mostly-empty columns, fill nulls.

Actions run in a fixed order on every batch: ``drop_columns`` -> ``fill`` / ``fill_strategy``
-> ``drop_rows``. "Null" means an Arrow null, a NaN in a float column, or a blank
(empty or whitespace-only) string.

Dropping columns by null fraction and mean/median/mode fills need statistics over the
whole input. They come from one global ``CombineFn`` over per-batch partials (row and null
counts, sums, a mergeable quantile sketch for medians, bounded value counts for modes) and
reach the step as a side input (``AsSingleton``). That costs one extra pass over the input
(the input is read once for the statistics and once by the step); configurations that
need no global statistics (constant fills, ``drop_rows``) make a single pass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.transforms.window import GlobalWindows
from pydantic import Field, model_validator

from beam_etl import registry
from beam_etl.ops.dlq import DLQ_TAG
from beam_etl.transforms.base import BatchFn, BatchFnDoFn, BatchResult
from beam_etl.transforms.mapping import (
    NamedStep,
    as_array,
    missing_message,
    rows_to_dead_letters,
    to_numpy_bool,
    with_metadata,
)

ACTIONS = ("drop_columns", "fill", "drop_rows")
STRATEGIES = ("mean", "median", "mode", "constant")
MEDIAN_EXACT_LIMIT = 100_000
MODE_MAX_VALUES = 10_000
DEFAULT_MAX_NULL_FRACTION = 0.5


def null_mask(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """True where a value is null, NaN (floats) or a blank string."""
    values = as_array(values)
    typ = values.type
    if pa.types.is_floating(typ):
        return as_array(pc.is_null(values, nan_is_null=True))
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        blank = pc.or_(pc.equal(pc.binary_length(values), 0), pc.utf8_is_space(values))  # no string copies
        return as_array(pc.or_kleene(pc.is_null(values), pc.fill_null(blank, False)))
    if pa.types.is_dictionary(typ):
        return null_mask(values.dictionary_decode())
    return as_array(pc.is_null(values))


def _is_numeric(typ: pa.DataType) -> bool:
    return pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ)


# --------------------------------------------------------------------------------------
# Mergeable summaries
# --------------------------------------------------------------------------------------


class QuantileSketch:
    """A mergeable quantile summary: exact up to ``capacity`` values, then KLL-style compaction.

    Level ``i`` holds values of weight ``2**i``; a level over capacity is sorted and every
    other value moves up a level. The median's rank error stays near ``1 / capacity``.
    """

    def __init__(self, capacity: int = MEDIAN_EXACT_LIMIT) -> None:
        self.capacity = capacity
        self.levels: list[np.ndarray] = [np.empty(0, dtype=np.float64)]

    def add(self, values: np.ndarray) -> None:
        self.levels[0] = np.concatenate([self.levels[0], values.astype(np.float64, copy=False)])
        self._compact()

    def merge(self, other: QuantileSketch) -> None:
        for i, level in enumerate(other.levels):
            if i >= len(self.levels):
                self.levels.append(np.empty(0, dtype=np.float64))
            self.levels[i] = np.concatenate([self.levels[i], level])
        self._compact()

    def _compact(self) -> None:
        i = 0
        while i < len(self.levels):
            level = self.levels[i]
            if len(level) > self.capacity:
                level = np.sort(level)
                keep = level[-1:] if len(level) % 2 else level[:0]
                pairs = level[: len(level) - len(keep)]
                promoted = pairs[(i + len(pairs) // 2) % 2 :: 2]
                self.levels[i] = keep
                if i + 1 == len(self.levels):
                    self.levels.append(np.empty(0, dtype=np.float64))
                self.levels[i + 1] = np.concatenate([self.levels[i + 1], promoted])
            i += 1

    @property
    def count(self) -> int:
        return int(sum(len(level) << i for i, level in enumerate(self.levels)))

    def median(self) -> float | None:
        if self.count == 0:
            return None
        if all(len(level) == 0 for level in self.levels[1:]):
            return float(np.median(self.levels[0]))
        values = np.concatenate(self.levels)
        weights = np.concatenate([np.full(len(level), 1 << i, dtype=np.int64) for i, level in enumerate(self.levels)])
        order = np.argsort(values, kind="stable")
        cumulative = np.cumsum(weights[order])
        index = int(np.searchsorted(cumulative, cumulative[-1] / 2.0))
        return float(values[order][index])


class TopCounts:
    """Bounded value counts (Misra-Gries): exact when a column has at most ``capacity`` distinct values."""

    def __init__(self, capacity: int = MODE_MAX_VALUES) -> None:
        self.capacity = capacity
        self.counts: dict[Any, int] = {}

    def add_counts(self, counts: Mapping[Any, int]) -> None:
        for value, count in counts.items():
            self.counts[value] = self.counts.get(value, 0) + int(count)
        if len(self.counts) > self.capacity:
            cut = sorted(self.counts.values(), reverse=True)[self.capacity]
            self.counts = {v: c - cut for v, c in self.counts.items() if c > cut}

    def mode(self) -> Any:
        if not self.counts:
            return None
        try:  # ties: the smallest value
            return min(self.counts.items(), key=lambda item: (-item[1], item[0]))[0]
        except TypeError:
            return min(self.counts.items(), key=lambda item: (-item[1], str(item[0])))[0]


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DropRows:
    fields: tuple[str, ...] | None  # None = every column
    how: str  # any | all


@dataclasses.dataclass(frozen=True)
class DropColumns:
    max_null_fraction: float
    fields: tuple[str, ...] | None  # candidates; None = every column


def _parse_drop_rows(value: Any) -> DropRows:
    where = "NullRemover.drop_rows"
    if value is None or value is True:
        return DropRows(None, "any")
    if isinstance(value, str):
        if value not in ("any", "all"):
            raise ValueError(f"{where}: {value!r} is not allowed; use 'any', 'all', a list of fields or "
                             "{fields: [..] | any, how: any | all}")
        return DropRows(None, value)
    if isinstance(value, Sequence):
        return DropRows(_field_list(value, where), "any")
    if isinstance(value, Mapping):
        unknown = set(value) - {"fields", "how"}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: fields, how")
        fields = value.get("fields", "any")
        how = value.get("how", "any")
        if how not in ("any", "all"):
            raise ValueError(f"{where}.how: {how!r} is not allowed; use 'any' (a null in any field drops the row) "
                             "or 'all' (only rows null in every field are dropped)")
        if fields in ("any", "all"):
            return DropRows(None, how if fields == "any" else "all")
        return DropRows(_field_list(fields, f"{where}.fields"), how)
    raise ValueError(f"{where}: {value!r} is not allowed; use 'any', 'all', a list of fields or a mapping")


def _parse_drop_columns(value: Any) -> DropColumns:
    where = "NullRemover.drop_columns"
    if value is None or value is True:
        return DropColumns(DEFAULT_MAX_NULL_FRACTION, None)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = {"max_null_fraction": value}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: {value!r} is not allowed; use {{max_null_fraction: 0.5, fields: [..]}}")
    unknown = set(value) - {"max_null_fraction", "fields"}
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: max_null_fraction, fields")
    fraction = value.get("max_null_fraction", DEFAULT_MAX_NULL_FRACTION)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ValueError(f"{where}.max_null_fraction: {fraction!r} is not a number between 0 and 1")
    fields = value.get("fields")
    return DropColumns(float(fraction), None if fields is None else _field_list(fields, f"{where}.fields"))


def _field_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"{where}: {value!r} is not a non-empty list of column names")
    for name in value:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: {name!r} is not a column name")
    return tuple(value)


# --------------------------------------------------------------------------------------
# Global statistics
# --------------------------------------------------------------------------------------


class NullStatsCombineFn(beam.CombineFn):
    """Combines per-batch partials into the statistics NullRemover needs.

    The accumulator holds, per column: rows seen, null count; for mean fields the sum and
    count of non-null values; for median fields a ``QuantileSketch``; for mode fields
    ``TopCounts``. ``extract_output`` returns ``{"rows", "null_fraction", "drop_columns",
    "fill_values", "errors"}``.
    """

    def __init__(self, drop_columns: DropColumns | None, strategies: Mapping[str, str]) -> None:
        self._drop = drop_columns
        self._strategies = dict(strategies)

    def create_accumulator(self) -> dict[str, Any]:
        return {"rows": 0, "nulls": {}, "present": {}, "sum": {}, "count": {}, "median": {}, "mode": {},
                "errors": {}}

    def add_input(self, acc: dict[str, Any], batch: pa.RecordBatch) -> dict[str, Any]:
        return self.merge_accumulators([acc, self.partial(batch)])

    def partial(self, batch: pa.RecordBatch) -> dict[str, Any]:
        acc = self.create_accumulator()
        acc["rows"] = batch.num_rows
        names = batch.schema.names
        if self._drop is not None:
            for name in self._drop.fields or names:
                if name in names:
                    acc["nulls"][name] = int(pc.sum(null_mask(batch.column(name)).cast(pa.int64())).as_py() or 0)
                    acc["present"][name] = batch.num_rows
        for name, strategy in self._strategies.items():
            if name not in names or strategy == "constant":
                continue
            column = batch.column(name)
            if pa.types.is_dictionary(column.type):
                column = column.dictionary_decode()
            present = as_array(pc.filter(column, pc.invert(null_mask(column))))
            if strategy == "mode":
                counts = pc.value_counts(present)
                acc["mode"][name] = TopCounts()
                acc["mode"][name].add_counts(dict(zip(counts.field("values").to_pylist(),
                                                      counts.field("counts").to_pylist(), strict=True)))
                continue
            if not _is_numeric(column.type):
                acc["errors"][name] = (f"fill_strategy {strategy} needs a numeric column, but {name!r} is "
                                       f"{column.type}; use mode or constant")
                continue
            numbers = present.cast(pa.float64()).to_numpy(zero_copy_only=False)
            if strategy == "mean":
                acc["sum"][name] = float(numbers.sum())
                acc["count"][name] = len(numbers)
            else:
                acc["median"][name] = QuantileSketch()
                acc["median"][name].add(numbers)
        return acc

    def merge_accumulators(self, accumulators: Any) -> dict[str, Any]:
        out = self.create_accumulator()
        for acc in accumulators:
            out["rows"] += acc["rows"]
            for key in ("nulls", "present", "sum", "count"):
                for name, value in acc[key].items():
                    out[key][name] = out[key].get(name, 0) + value
            for name, sketch in acc["median"].items():
                out["median"].setdefault(name, QuantileSketch()).merge(sketch)
            for name, top in acc["mode"].items():
                out["mode"].setdefault(name, TopCounts()).add_counts(top.counts)
            out["errors"].update(acc["errors"])
        return out

    def extract_output(self, acc: dict[str, Any]) -> dict[str, Any]:
        rows = acc["rows"]
        fractions: dict[str, float] = {}
        drop: list[str] = []
        for name, nulls in acc["nulls"].items():
            # A column absent from some batches counts as null in their rows.
            fraction = (nulls + rows - acc["present"][name]) / rows if rows else 0.0
            fractions[name] = fraction
            if self._drop is not None and fraction > self._drop.max_null_fraction:
                drop.append(name)
        fills: dict[str, Any] = {}
        for name, strategy in self._strategies.items():
            if strategy == "mean" and acc["count"].get(name):
                fills[name] = acc["sum"][name] / acc["count"][name]
            elif strategy == "median" and name in acc["median"]:
                value = acc["median"][name].median()
                if value is not None:
                    fills[name] = value
            elif strategy == "mode" and name in acc["mode"]:
                value = acc["mode"][name].mode()
                if value is not None:
                    fills[name] = value
        return {"rows": rows, "null_fraction": fractions, "drop_columns": sorted(drop), "fill_values": fills,
                "errors": dict(acc["errors"])}


# --------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------


def _fill_scalar(value: Any, typ: pa.DataType) -> pa.Scalar:
    """The fill value as a scalar of the column's type (means are rounded for integer columns)."""
    if pa.types.is_integer(typ) and isinstance(value, float) and math.isfinite(value):
        value = round(value)
    return pa.scalar(value).cast(typ) if not isinstance(value, pa.Scalar) else value.cast(typ)


class _StatsDoFn(BatchFnDoFn):
    """BatchFnDoFn whose batch function is built from the side-input statistics."""

    def __init__(self, remover: NullRemover, step: str) -> None:
        super().__init__(remover.make_fn(None), step, row_fallback=False)
        self._remover = remover

    def process(self, batch: pa.RecordBatch, stats: dict[str, Any] | None = None) -> Any:
        self._fn = self._remover.make_fn(stats)
        yield from super().process(batch)


class NullRemover(NamedStep):
    """Removes or fills nulls. Actions (run in this order):

    - ``drop_columns={max_null_fraction: 0.5, fields: [..]}``: drop columns whose share of
      nulls over the whole input is above ``max_null_fraction`` (global statistic).
    - ``fill={field: value}``: replace nulls with a constant; ``fill_strategy={field:
      mean|median|mode|constant}``: replace with a global statistic (``constant`` takes
      the value from ``fill``).
    - ``drop_rows``: ``"any"`` (a null in any column), ``"all"`` (every column null),
      ``[fields]`` (a null in any of them) or ``{fields: [..] | "any", how: any|all}``.

    ``mode`` (``drop_rows``, ``drop_columns``, ``fill`` or a list) picks actions with their
    defaults; without ``mode`` the configured actions run, and with nothing configured
    rows with any null are dropped. Dropped rows are counted as filtered, not dead letters.
    """

    row_fallback = False
    type_name = "NullRemover"

    def __init__(
        self,
        *,
        mode: str | Sequence[str] | None = None,
        drop_rows: Any = None,
        drop_columns: Any = None,
        fill: Mapping[str, Any] | None = None,
        fill_strategy: Mapping[str, str] | None = None,
        ignore_missing: bool = False,
        step: str | None = None,
    ) -> None:
        super().__init__(step)
        configured = {
            "drop_rows": drop_rows is not None,
            "drop_columns": drop_columns is not None,
            "fill": bool(fill) or bool(fill_strategy),
        }
        if mode is None:
            actions = [a for a in ACTIONS if configured[a]] or ["drop_rows"]
        else:
            modes = [mode] if isinstance(mode, str) else list(mode) if isinstance(mode, Sequence) else None
            if not modes or any(m not in ACTIONS for m in modes):
                raise ValueError(f"NullRemover.mode: {mode!r} is not allowed; use one or a list of "
                                 "drop_rows, drop_columns, fill")
            for action, is_set in configured.items():
                if is_set and action not in modes:
                    raise ValueError(f"NullRemover.{action} is configured but mode {modes!r} does not include "
                                     f"{action!r}; add it to mode or remove mode")
            if "fill" in modes and not configured["fill"]:
                raise ValueError("NullRemover.mode: 'fill' needs values: set fill: {field: value} "
                                 "or fill_strategy: {field: mean|median|mode|constant}")
            actions = [a for a in ACTIONS if a in modes]
        self.mode = actions
        self.drop_rows = _parse_drop_rows(drop_rows) if "drop_rows" in actions else None
        self.drop_columns = _parse_drop_columns(drop_columns) if "drop_columns" in actions else None
        if fill is not None and not isinstance(fill, Mapping):
            raise ValueError(f"NullRemover.fill: {fill!r} is not a mapping of field -> value")
        if fill_strategy is not None and not isinstance(fill_strategy, Mapping):
            raise ValueError(f"NullRemover.fill_strategy: {fill_strategy!r} is not a mapping of field -> strategy")
        self.fill = dict(fill or {})
        self.strategies: dict[str, str] = {}
        for name, strategy in (fill_strategy or {}).items():
            if strategy not in STRATEGIES:
                raise ValueError(f"NullRemover.fill_strategy.{name}: {strategy!r} is not allowed; use one of "
                                 f"{', '.join(STRATEGIES)}")
            if strategy == "constant" and name not in self.fill:
                raise ValueError(f"NullRemover.fill_strategy.{name}: 'constant' needs a value in fill.{name}")
            if strategy != "constant" and name in self.fill:
                raise ValueError(f"NullRemover.fill.{name}: {name!r} also has fill_strategy {strategy!r}; "
                                 "keep one of them")
            self.strategies[name] = strategy
        for name, value in self.fill.items():
            if value is None:
                raise ValueError(f"NullRemover.fill.{name}: None is not a fill value; give a constant")
            self.strategies.setdefault(name, "constant")
        self.ignore_missing = bool(ignore_missing)

    @property
    def needs_stats(self) -> bool:
        """True when a global statistics pass is needed (drop_columns or mean/median/mode fills)."""
        return self.drop_columns is not None or any(s != "constant" for s in self.strategies.values())

    def display_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"mode": ", ".join(self.mode)}
        if self.drop_rows:
            data["drop_rows"] = f"{self.drop_rows.how} of {list(self.drop_rows.fields or ['every column'])}"
        if self.drop_columns:
            data["max_null_fraction"] = self.drop_columns.max_null_fraction
        if self.strategies:
            data["fill"] = ", ".join(f"{k}:{v}" for k, v in self.strategies.items())
        return data

    def expand(self, pcoll: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        step = self.step_name()
        if not self.needs_stats:
            results = pcoll | "Apply" >> beam.ParDo(
                BatchFnDoFn(self.make_fn(None), step, row_fallback=False)).with_outputs(DLQ_TAG, main="output")
            return results.output, results[DLQ_TAG]
        combine = beam.CombineGlobally(NullStatsCombineFn(self.drop_columns, {
            k: v for k, v in self.strategies.items() if v != "constant"}))
        if not isinstance(pcoll.windowing.windowfn, GlobalWindows):
            combine = combine.without_defaults()
        stats = pcoll | "GlobalNullStats" >> combine
        results = pcoll | "Apply" >> beam.ParDo(
            _StatsDoFn(self, step), stats=beam.pvalue.AsSingleton(stats)).with_outputs(DLQ_TAG, main="output")
        return results.output, results[DLQ_TAG]

    def batch_fn(self) -> BatchFn:
        return self.make_fn(None)

    def make_fn(self, stats: Mapping[str, Any] | None) -> BatchFn:
        """The batch function for given global statistics (None when none are needed)."""
        drop_rows, strategies, constants = self.drop_rows, self.strategies, self.fill
        ignore, step, ctx = self.ignore_missing, self.step_name(), self._ctx
        dropped = set(stats["drop_columns"]) if stats else set()
        fill_values = dict(stats["fill_values"]) if stats else {}
        errors = dict(stats["errors"]) if stats else {}
        fill_values.update(constants)
        wanted = list(strategies) + list(drop_rows.fields or ()) if drop_rows else list(strategies)

        def remove_nulls(batch: pa.RecordBatch) -> BatchResult:
            missing = [f for f in dict.fromkeys(wanted) if f not in batch.schema.names and f not in dropped]
            if missing and not ignore:
                return BatchResult(None, 0, rows_to_dead_letters(
                    batch, None, error_type="validation", errors=missing_message("NullRemover", missing, batch),
                    exception="KeyError", step=step, ctx=ctx))
            original = batch
            out = batch
            if dropped:
                out = with_metadata(out.select([n for n in out.schema.names if n not in dropped]), batch)
            bad = np.zeros(batch.num_rows, dtype=bool)
            bad_messages: dict[int, list[str]] = {}
            for name, strategy in strategies.items():
                if name not in out.schema.names:
                    continue
                column = out.column(name)
                nulls = null_mask(column)
                if not to_numpy_bool(nulls).any():
                    continue
                problem = errors.get(name)
                scalar = None
                if problem is None and name in fill_values:
                    try:
                        scalar = _fill_scalar(fill_values[name], column.type)
                    except (pa.ArrowException, ValueError, TypeError, OverflowError) as err:
                        problem = (f"fill value {fill_values[name]!r} ({strategy}) cannot be stored in {column.type} "
                                   f"column {name!r}: {err}")
                if problem is not None:
                    rows = to_numpy_bool(nulls)
                    bad |= rows
                    for row in rows.nonzero()[0]:
                        bad_messages.setdefault(int(row), []).append(
                            f"field {name!r} value None could not be filled: {problem}")
                    continue
                if scalar is None:
                    continue  # an all-null column: no statistic to fill with
                filled = pc.if_else(nulls, scalar, column)
                out = with_metadata(out.set_column(out.schema.get_field_index(name), name, as_array(filled)), out)
            letters = []
            if bad.any():
                rows = bad.nonzero()[0].tolist()
                letters = rows_to_dead_letters(
                    original, rows, error_type="type", step=step, ctx=ctx,
                    errors=["NullRemover: " + "; ".join(bad_messages[r]) for r in rows])
                out = out.filter(pa.array(~bad))
            filtered = 0
            if drop_rows is not None and out.num_rows:
                names = [n for n in (drop_rows.fields or out.schema.names) if n in out.schema.names]
                if names:
                    masks = [null_mask(out.column(n)) for n in names]
                    combined = masks[0]
                    for mask in masks[1:]:
                        combined = pc.or_(combined, mask) if drop_rows.how == "any" else pc.and_(combined, mask)
                    keep = pc.invert(combined)
                    kept = out.filter(keep)
                    filtered = out.num_rows - kept.num_rows
                    out = kept
            return BatchResult(out, filtered, letters)

        return remove_nulls


# --------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------


class DropRowsConfig(registry.StrictConfig):
    """Which rows ``drop_rows`` removes."""

    fields: list[str] | Literal["any", "all"] = Field(
        "any", description="Columns to look at; 'any' = every column, 'all' = drop only rows null everywhere.")
    how: Literal["any", "all"] = Field("any", description="any: a null in one field drops the row; all: every field.")


class DropColumnsConfig(registry.StrictConfig):
    """Which columns ``drop_columns`` removes."""

    max_null_fraction: float = Field(
        DEFAULT_MAX_NULL_FRACTION, ge=0, le=1,
        description="Drop a column whose share of nulls over the whole input is above this.")
    fields: list[str] | None = Field(None, description="Columns that may be dropped (default: every column).")


class NullRemoverConfig(registry.StrictConfig):
    """Drop rows with nulls, drop mostly-null columns, or fill nulls (constant/mean/median/mode)."""

    mode: Literal["drop_rows", "drop_columns", "fill"] | list[Literal["drop_rows", "drop_columns", "fill"]] | None = \
        Field(None, description="Actions to run with their defaults; default: the configured actions.")
    drop_rows: DropRowsConfig | list[str] | Literal["any", "all"] | None = Field(
        None, description="'any', 'all', a list of fields, or {fields, how}.")
    drop_columns: DropColumnsConfig | None = Field(None, description="{max_null_fraction, fields}.")
    fill: dict[str, Any] = Field(default_factory=dict, description="Constant fill value per field.")
    fill_strategy: dict[str, Literal["mean", "median", "mode", "constant"]] = Field(
        default_factory=dict, description="Per field: mean, median, mode (global statistics) or constant.")
    ignore_missing: bool = Field(False, description="Skip named fields the input lacks instead of dead-lettering.")

    def kwargs(self) -> dict[str, Any]:
        drop_rows = self.drop_rows.model_dump() if isinstance(self.drop_rows, DropRowsConfig) else self.drop_rows
        drop_columns = self.drop_columns.model_dump() if self.drop_columns is not None else None
        return {"mode": self.mode, "drop_rows": drop_rows, "drop_columns": drop_columns, "fill": self.fill,
                "fill_strategy": self.fill_strategy, "ignore_missing": self.ignore_missing}

    @model_validator(mode="after")
    def _check(self) -> NullRemoverConfig:
        NullRemover(**self.kwargs(), step="check")
        return self


def _per_batch_only(config: NullRemoverConfig) -> bool:
    """Streaming-safe when no action needs whole-input statistics (drop_columns, mean/median/mode)."""
    modes = [config.mode] if isinstance(config.mode, str) else list(config.mode or [])
    global_fill = any(v in ("mean", "median", "mode") for v in config.fill_strategy.values())
    return config.drop_columns is None and "drop_columns" not in modes and not global_fill


def _columns_read(config: NullRemoverConfig) -> registry.ColumnUse | None:
    """Only ``drop_rows`` over named fields reads a known set of columns; other actions read them all."""
    modes = [config.mode] if isinstance(config.mode, str) else list(config.mode or [])
    if modes not in ([], ["drop_rows"]) or config.drop_columns is not None or config.fill or config.fill_strategy:
        return None
    rows = config.drop_rows
    fields = rows.fields if isinstance(rows, DropRowsConfig) else rows
    if not isinstance(fields, list):
        return None
    return registry.ColumnUse(frozenset(fields), passes_through=True)


@registry.register("step", "NullRemover", NullRemoverConfig, streaming=_per_batch_only,
                   regroups=lambda c: not _per_batch_only(c), reads=_columns_read)
def build_null_remover(config: NullRemoverConfig, ctx: registry.BuildContext) -> NullRemover:
    """Drop or fill nulls; drop mostly-null columns (global statistics, one extra pass)."""
    return NullRemover(**config.kwargs(), step=ctx.step_name)


__all__ = ["NullRemover", "NullStatsCombineFn", "QuantileSketch", "TopCounts", "null_mask"]
