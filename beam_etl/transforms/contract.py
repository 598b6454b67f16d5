"""EnforceContract: dlt-style schema contracts on Arrow batches, against a registered or declared schema.

Three entities, each with a mode (``evolve``, ``freeze``, ``discard_row``, ``discard_value``):

* ``tables`` - a table with no registered schema (``schema: registry`` only). ``evolve`` accepts
  it and registers what the run saw; ``freeze`` fails at construction; ``discard_row`` and
  ``discard_value`` send every row to the DLQ (a row of a discarded table has nothing to keep).
* ``columns`` - a column the schema lacks. ``evolve`` keeps it (and registers it); ``freeze``
  fails the run on its first non-null value; ``discard_row`` sends rows with a non-null value
  to the DLQ; ``discard_value`` drops the column. A new column that is null in every row of a
  batch carries no data: outside ``evolve`` it is dropped silently.
* ``data_type`` - a column whose batch type differs from the schema's. Values are cast to the
  schema type (vectorised, safe casts: no overflow, truncation or unparsable text; strings are
  trimmed and blank means null). ``evolve`` instead adopts the common supertype when one exists
  (a widening: int32 -> int64, int -> float64, date -> timestamp...), else casts and fails the
  run on a value that does not fit; ``freeze`` fails the run on such a value; ``discard_row``
  sends its row to the DLQ; ``discard_value`` stores null.

Dead letters carry ``error_type: contract`` and an error naming the column, value and mode.
Output batches have the schema's columns in its order (missing ones filled with nulls unless
``fill_missing: false``), then the kept new columns. Rows in = rows out + dead letters.

With ``schema: registry`` the base is the latest version registered for ``(pipeline, table)``
in the run's state store (read once, at construction). What ``evolve`` accepted is merged over
the run and registered as a new version only after the run succeeded: the step writes
``<run_dir>/_state/schemas/<step>.json`` and ``python -m beam_etl.run`` commits it with the
incremental cursors (``register: immediately`` registers at the end of the step instead,
``never`` not at all). An explicit ``schema`` ({field: type}, a JSON/YAML file or a Parquet
file) is registered as declared (plus what ``evolve`` added) unless ``register: never``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.transforms.window import GlobalWindows
from pydantic import ConfigDict, Field, field_validator

from beam_etl import registry
from beam_etl.batch import batch_nbytes
from beam_etl.ops.context import RunContext, get_run_context
from beam_etl.ops.dlq import DLQ_TAG
from beam_etl.ops.metrics import StepMetrics, timed_process
from beam_etl.ops.schema_registry import (
    SchemaRegistry,
    common_supertype,
    load_schema,
    merge_schemas,
    normalize_schema,
    pending_schema_path,
    register_pending,
    schema_from_dict,
    schema_hash,
    schema_to_dict,
    type_to_string,
    write_pending_schema,
)
from beam_etl.transforms.base import classify_error
from beam_etl.transforms.mapping import CastType, as_array, cast_array, rows_to_dead_letters, with_metadata

MODES = ("evolve", "freeze", "discard_row", "discard_value")
Mode = Literal["evolve", "freeze", "discard_row", "discard_value"]
CONTRACT_ERROR_TYPE = "contract"
SCHEMA_TAG = "schema"
REGISTRY = "registry"
_LOG = logging.getLogger(__name__)


class ContractViolation(ValueError):
    """A ``freeze`` contract (or an ``evolve`` with no common type) met data it cannot accept."""


@dataclasses.dataclass(frozen=True)
class Contract:
    """Modes for new tables, new columns and type changes of existing columns."""

    tables: str = "evolve"
    columns: str = "evolve"
    data_type: str = "evolve"

    def __post_init__(self) -> None:
        for entity in ("tables", "columns", "data_type"):
            if getattr(self, entity) not in MODES:
                raise ValueError(f"contract.{entity}: {getattr(self, entity)!r} is not one of {list(MODES)}")

    @classmethod
    def of(cls, value: Contract | str | Mapping[str, str] | Any) -> Contract:
        """From a mode string (all three entities), a mapping or a config model."""
        if isinstance(value, Contract):
            return value
        if isinstance(value, str):
            return cls(value, value, value)
        if hasattr(value, "model_dump"):
            value = value.model_dump()
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {"tables", "columns", "data_type"})
            if unknown:
                raise ValueError(f"contract: unknown entities {unknown}; use tables, columns and data_type")
            return cls(**dict(value))
        raise ValueError(f"contract: {value!r} is not a mode ({list(MODES)}) or a mapping of tables/columns/data_type")

    def __str__(self) -> str:
        if self.tables == self.columns == self.data_type:
            return self.tables
        return f"tables={self.tables}, columns={self.columns}, data_type={self.data_type}"


# --------------------------------------------------------------------------------------
# The Beam-free core: a plan per input schema, applied per batch
# --------------------------------------------------------------------------------------


def _cast_type(target: pa.DataType) -> CastType:
    checks = (("string", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
              ("int", pa.types.is_integer), ("float", pa.types.is_floating), ("bool", pa.types.is_boolean),
              ("date", pa.types.is_date), ("timestamp", pa.types.is_timestamp), ("decimal", pa.types.is_decimal))
    kind = next((name for name, check in checks if check(target)), "other")
    return CastType(kind, target, type_to_string(target))


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclasses.dataclass(frozen=True)
class _Column:
    """One output column: where it comes from and what happens to it."""

    name: str
    source: int | None  # input column index; None: filled with nulls of ``target``
    target: pa.DataType | None = None  # cast to this type (None: keep as is)
    mode: str = "evolve"  # data_type mode for values that do not cast


@dataclasses.dataclass(frozen=True)
class _Plan:
    columns: tuple[_Column, ...]
    checked_new: tuple[tuple[str, int, str], ...]  # (name, input index, mode) of new columns not evolved
    evolved: pa.Schema | None  # what evolve accepted, to register (None: nothing new)
    discard_table: str | None = None  # tables mode that discards every row of a new table


class ContractEnforcer:
    """Applies a ``Contract`` to RecordBatches against ``base`` (None: a table with no schema yet)."""

    def __init__(self, base: pa.Schema | None, contract: Contract, *, table: str, label: str, step: str,
                 ctx: RunContext, fill_missing: bool = True) -> None:
        self.base = normalize_schema(base) if base is not None else None
        self.contract = contract
        self.table = table
        self.label = label
        self.step = step
        self.ctx = ctx
        self.fill_missing = fill_missing
        self._plans: dict[tuple, _Plan] = {}

    # -- planning (once per distinct input schema) --------------------------------------

    def plan(self, schema: pa.Schema) -> _Plan:
        key = tuple((f.name, type_to_string(f.type), f.nullable) for f in schema)
        if key not in self._plans:
            self._plans[key] = self._make_plan(schema)
        return self._plans[key]

    def _make_plan(self, schema: pa.Schema) -> _Plan:
        index = {name: i for i, name in enumerate(schema.names)}
        if self.base is None:
            columns = tuple(_Column(name, i) for i, name in enumerate(schema.names))
            if self.contract.tables == "evolve":
                return _Plan(columns, (), normalize_schema(schema))
            return _Plan(columns, (), None, discard_table=self.contract.tables)
        columns: list[_Column] = []
        evolved_fields: list[pa.Field] = []
        changed = False
        mode = self.contract.data_type
        for field in self.base:
            i = index.get(field.name)
            if i is None:
                evolved_fields.append(field)
                if self.fill_missing:
                    columns.append(_Column(field.name, None, field.type))
                continue
            batch_type = normalize_schema(pa.schema([schema.field(i)])).field(0).type
            if type_to_string(batch_type) == type_to_string(field.type):
                columns.append(_Column(field.name, i))
                evolved_fields.append(field)
                continue
            target = field.type
            if mode == "evolve":
                target = common_supertype(field.type, batch_type) or field.type
                changed = changed or type_to_string(target) != type_to_string(field.type)
            same = type_to_string(target) == type_to_string(batch_type)
            columns.append(_Column(field.name, i, None if same else target, mode))
            evolved_fields.append(pa.field(field.name, target, field.nullable))
        checked_new = []
        known = set(self.base.names)
        for i, field in enumerate(schema):
            if field.name in known:
                continue
            if self.contract.columns == "evolve":
                columns.append(_Column(field.name, i))
                evolved_fields.append(pa.field(field.name, field.type, True))
                changed = True
            else:
                checked_new.append((field.name, i, self.contract.columns))
        evolved = normalize_schema(pa.schema(evolved_fields)) if changed else None
        return _Plan(tuple(columns), tuple(checked_new), evolved)

    # -- applying ------------------------------------------------------------------------

    def apply(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch | None, list[dict[str, Any]], pa.Schema | None]:
        """``(kept rows, dead letters, evolved schema or None)``; raises ``ContractViolation`` on freeze."""
        plan = self.plan(batch.schema)
        n = batch.num_rows
        if plan.discard_table:
            message = (f"contract tables={plan.discard_table}: table {self.table!r} has no registered schema "
                       "(a new table)")
            return None, self._letters(batch, list(range(n)), [message] * n), None
        bad = np.zeros(n, dtype=bool)
        reasons: dict[int, list[str]] = {}
        arrays, names = [], []
        for column in plan.columns:
            names.append(column.name)
            if column.source is None:
                arrays.append(pa.nulls(n, column.target))
                continue
            values = as_array(batch.column(column.source))
            if column.target is None:
                arrays.append(values)
                continue
            result, failed = cast_array(values, _cast_type(column.target))
            if failed.any():
                self._type_failures(column, values, failed, bad, reasons)
            arrays.append(result)
        for name, i, mode in plan.checked_new:
            present = pc.is_valid(batch.column(i)).to_numpy(zero_copy_only=False)
            if not present.any() or mode == "discard_value":
                continue
            field = batch.schema.field(i)
            if mode == "freeze":
                raise ContractViolation(
                    f"contract columns=freeze: table {self.table!r} has a new column {name!r} "
                    f"({type_to_string(field.type)}) that {self.label} lacks; add it to the schema or use "
                    "columns: evolve, discard_row or discard_value")
            bad |= present
            for row in np.flatnonzero(present):
                reasons.setdefault(int(row), []).append(
                    f"new column {name!r} ({type_to_string(field.type)}) is not in {self.label} "
                    "(columns=discard_row)")
        out = with_metadata(pa.RecordBatch.from_arrays(arrays, names=names), batch) if names else None
        letters: list[dict[str, Any]] = []
        if bad.any():
            rows = np.flatnonzero(bad).tolist()
            letters = self._letters(batch, rows, ["contract: " + "; ".join(reasons[r]) for r in rows])
            out = out.filter(pa.array(~bad)) if out is not None else None
        return out, letters, plan.evolved

    def _type_failures(self, column: _Column, values: pa.Array, failed: np.ndarray, bad: np.ndarray,
                       reasons: dict[int, list[str]]) -> None:
        rows = np.flatnonzero(failed)
        target = type_to_string(column.target)
        if column.mode == "discard_value":
            return  # the cast left nulls where values did not fit
        if column.mode in ("freeze", "evolve"):
            value = values.take(pa.array(rows[:1])).to_pylist()[0]
            hint = ("no common type exists, so evolve cannot widen it" if column.mode == "evolve"
                    else "the type is frozen")
            raise ContractViolation(
                f"contract data_type={column.mode}: table {self.table!r} column {column.name!r} has "
                f"{len(rows)} value(s) of type {type_to_string(values.type)} that do not fit {target} "
                f"(first: {_short(value)}); {hint}: fix the data or use data_type: discard_row or discard_value")
        for row, value in zip(rows.tolist(), values.take(pa.array(rows)).to_pylist(), strict=True):
            reasons.setdefault(row, []).append(f"column {column.name!r} value {_short(value)} cannot be cast to "
                                               f"{target} (data_type=discard_row)")
        bad |= failed

    def _letters(self, batch: pa.RecordBatch, rows: list[int], messages: list[str]) -> list[dict[str, Any]]:
        return rows_to_dead_letters(batch, rows, error_type=CONTRACT_ERROR_TYPE, errors=messages, step=self.step,
                                    ctx=self.ctx, exception="ContractViolation")


def merge_evolved(partials: Iterable[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Combines the evolved schemas of every bundle (``schema_to_dict`` form); None when there are none."""
    merged: pa.Schema | None = None
    for doc in partials:
        if doc is None:
            continue
        schema = schema_from_dict(doc)
        merged = schema if merged is None else merge_schemas(merged, schema)
    return schema_to_dict(merged) if merged is not None else None


# --------------------------------------------------------------------------------------
# Beam
# --------------------------------------------------------------------------------------


class _EnforceFn(beam.DoFn):
    def __init__(self, enforcer: ContractEnforcer) -> None:
        self._enforcer = enforcer

    def setup(self) -> None:
        self._metrics = StepMetrics(self._enforcer.step)

    def start_bundle(self) -> None:
        self._sent: set[str] = set()

    @timed_process
    def process(self, batch: pa.RecordBatch) -> Iterator[Any]:
        self._metrics.batches_in.inc()
        self._metrics.records_in.inc(batch.num_rows)
        self._metrics.bytes_in.inc(batch_nbytes(batch))
        try:
            out, letters, evolved = self._enforcer.apply(batch)
        except ContractViolation:
            raise
        except Exception as err:  # noqa: BLE001 - an unexpected failure dead-letters the batch, as other steps do
            out, evolved = None, None
            letters = rows_to_dead_letters(batch, None, error_type=classify_error(err), errors=str(err),
                                           step=self._enforcer.step, ctx=self._enforcer.ctx, exception=err)
        if letters:
            self._metrics.records_failed.inc(len(letters))
            for letter in letters:
                yield beam.pvalue.TaggedOutput(DLQ_TAG, letter)
        if out is not None and out.num_rows:
            self._metrics.records_out.inc(out.num_rows)
            yield out
        if evolved is not None:
            key = schema_hash(evolved) + ",".join(evolved.names)
            if key not in self._sent:
                self._sent.add(key)
                yield beam.pvalue.TaggedOutput(SCHEMA_TAG, schema_to_dict(evolved))


class _RecordSchema(beam.DoFn):
    """Writes the pending registration (or registers at once) from the merged evolved schema."""

    def __init__(self, *, base: pa.Schema | None, explicit: bool, doc: dict[str, Any], mode: str,
                 pending: str, ctx: RunContext) -> None:
        self._base = base
        self._explicit = explicit
        self._doc = doc
        self._mode = mode
        self._pending = pending
        self._ctx = ctx

    def process(self, merged: dict[str, Any] | None) -> Iterator[str]:
        if merged is None and self._explicit and self._base is not None:
            merged = schema_to_dict(self._base)  # nothing evolved: the declared schema as it is
        if merged is None:  # nothing evolved: the registry already holds this schema
            return
        doc = {**self._doc, "schema": merged}
        if self._mode == "immediately" and not self._ctx.state_url:
            _LOG.warning("EnforceContract %s: no state store, so the schema is not registered", doc["table"])
        elif self._mode == "immediately":
            change = register_pending(SchemaRegistry(self._ctx.state_url), doc, self._ctx.run_id)
            yield f"{doc['table']} v{change['version']}"
        elif self._pending:
            yield str(write_pending_schema(self._pending, pipeline=doc["pipeline"], table=doc["table"],
                                           schema=schema_from_dict(merged), base_version=doc["base_version"],
                                           merge_with_latest=doc["merge_with_latest"]))


SchemaSource = pa.Schema | Mapping[str, str] | str | Path


class EnforceContract(beam.PTransform):
    """Checks batches against a registered or declared schema with a dlt-style contract.

    ``contract``: a mode for all three entities or ``{tables, columns, data_type}``; ``schema``:
    ``"registry"`` (latest version for ``(pipeline, table)``), an Arrow schema, a ``{field: type}``
    mapping or a schema file; ``register``: ``after_run`` | ``immediately`` | ``never``.
    Returns ``(output, dead_letters)``.
    """

    def __init__(self, contract: Contract | str | Mapping[str, str] = "evolve", schema: SchemaSource = REGISTRY, *,
                 table: str | None = None, register: str = "after_run", fill_missing: bool = True,
                 pipeline: str | None = None, step: str | None = None) -> None:
        super().__init__(label=step)
        if register not in ("after_run", "immediately", "never"):
            raise ValueError(f"EnforceContract.register: {register!r} is not after_run, immediately or never")
        self.contract = Contract.of(contract)
        self._ctx = get_run_context()
        self._step = step
        self.table = table or step or "table"
        self.pipeline = pipeline or self._ctx.pipeline
        self.register = register
        self.fill_missing = bool(fill_missing)
        self.explicit = not (isinstance(schema, str) and schema == REGISTRY)
        self.version: int | None = None
        if self.explicit:
            self.base: pa.Schema | None = load_schema(schema, "EnforceContract.schema")
            self.schema_label = "the declared schema"
        else:
            self.base, self.schema_label = self._from_registry()

    def _from_registry(self) -> tuple[pa.Schema | None, str]:
        saved = SchemaRegistry(self._ctx.state_url).get(self.pipeline, self.table) if self._ctx.state_url else None
        if saved is None:
            if self.contract.tables == "freeze":
                where = (f"the schema registry ({SchemaRegistry(self._ctx.state_url).location})"
                         if self._ctx.state_url else "the schema registry (no state store is configured)")
                raise ContractViolation(
                    f"contract tables=freeze: table {self.table!r} of pipeline {self.pipeline!r} has no schema in "
                    f"{where}; register one (python -m beam_etl.schema_cli register {self.pipeline} {self.table} "
                    "FILE) or use tables: evolve")
            return None, "the registry"
        self.version = saved.version
        return saved.schema, f"schema version {saved.version} of {self.table!r}"

    def step_name(self) -> str:
        return self._step or self.label

    def display_data(self) -> dict[str, Any]:
        return {"table": self.table, "contract": str(self.contract),
                "schema": "declared" if self.explicit else f"registry v{self.version or '-'}",
                "register": self.register}

    def expand(self, pcoll: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        step = self.step_name()
        enforcer = ContractEnforcer(self.base, self.contract, table=self.table, label=self.schema_label, step=step,
                                    ctx=self._ctx, fill_missing=self.fill_missing)
        results = pcoll | "Enforce" >> beam.ParDo(_EnforceFn(enforcer)).with_outputs(DLQ_TAG, SCHEMA_TAG,
                                                                                      main="output")
        if self.register != "never":
            pending = str(pending_schema_path(self._ctx.run_dir, step)) if self._ctx.run_dir else ""
            doc = {"pipeline": self.pipeline, "table": self.table, "base_version": self.version,
                   "merge_with_latest": not self.explicit}
            _ = (results[SCHEMA_TAG]
                 | "GlobalWindow" >> beam.WindowInto(GlobalWindows())
                 | "MergeSchemas" >> beam.CombineGlobally(merge_evolved)
                 | "RecordSchema" >> beam.ParDo(_RecordSchema(base=self.base, explicit=self.explicit, doc=doc,
                                                              mode=self.register, pending=pending, ctx=self._ctx)))
        return results.output, results[DLQ_TAG]


# --------------------------------------------------------------------------------------
# Registration (YAML ``type: EnforceContract``)
# --------------------------------------------------------------------------------------


class ContractModes(registry.StrictConfig):
    """Per-entity modes; an entity left out evolves (as in dlt)."""

    tables: Mode = Field("evolve", description="A table with no registered schema.")
    columns: Mode = Field("evolve", description="A column the schema lacks.")
    data_type: Mode = Field("evolve", description="A value that does not fit its column's type.")


class EnforceContractConfig(registry.StrictConfig):
    """Check batches against a registered or declared schema with a dlt-style contract."""

    model_config = ConfigDict(populate_by_name=True)

    table: str | None = Field(None, description="Registry table name (default: the step name).")
    contract: Mode | ContractModes = Field(
        "evolve", description="One mode for all entities, or {tables, columns, data_type}.")
    schema_: str | dict[str, str] = Field(
        REGISTRY, alias="schema",
        description="registry (latest registered version), {field: type}, or a .json/.yaml/.parquet file path.")
    register_: Literal["after_run", "immediately", "never"] = Field(
        "after_run", alias="register",
        description="When the evolved/declared schema is registered: after the run succeeded, at the end of the step, "
                    "or never.")
    fill_missing: bool = Field(True, description="Add schema columns the batch lacks, as nulls.")
    pipeline: str | None = Field(None, description="Registry pipeline name (default: the template's name).")

    @field_validator("schema_")
    @classmethod
    def _schema(cls, value: str | dict[str, str]) -> str | dict[str, str]:
        if value != REGISTRY:
            load_schema(value, "schema")
        return value


@registry.register("step", "EnforceContract", EnforceContractConfig,
                   streaming=lambda c: c.register_ == "never")
def build_enforce_contract(config: EnforceContractConfig, ctx: registry.BuildContext) -> EnforceContract:
    """Enforce a schema contract (evolve/freeze/discard_row/discard_value) per table, column and type."""
    return EnforceContract(config.contract, config.schema_, table=config.table or ctx.step_name,
                           register=config.register_, fill_missing=config.fill_missing, pipeline=config.pipeline,
                           step=ctx.step_name)


__all__ = ["CONTRACT_ERROR_TYPE", "MODES", "Contract", "ContractEnforcer", "ContractViolation", "EnforceContract",
           "EnforceContractConfig", "merge_evolved"]
