"""Name -> factory for sources, steps and sinks: one decorator, one table.

A factory takes its validated pydantic config and a ``BuildContext`` and returns a
PTransform. Sources are applied to the pipeline root, steps and sinks to a PCollection of
RecordBatches; every one returns ``(output, dead_letters)``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable
from typing import Any

import apache_beam as beam
from pydantic import BaseModel, ConfigDict

from beam_etl.ops.context import RunContext

KINDS = ("source", "step", "sink")
# Where each built-in type is registered. ``lookup`` imports only the module of the type it is
# asked for, so a run imports the code its template names and nothing else (the fuzzy, anomaly
# and database modules pull in scipy, scikit-learn and drivers). tests/unit/test_registry_table.py
# checks this table against the decorators.
_TYPE_MODULES: dict[str, str] = {
    **dict.fromkeys(("ReadFromCsv", "ReadFromJson", "ReadFromJsonl", "ReadFromParquet", "ReadFromText",
                     "WriteToCsv", "WriteToJson", "WriteToJsonl", "WriteToParquet"), "beam_etl.io.files"),
    **dict.fromkeys(("ReadFromSqlite", "WriteToSqlite"), "beam_etl.io.sql"),
    "ReadFromDlq": "beam_etl.io.dlq_source",
    **dict.fromkeys(("Cast", "Filter", "MapBatches", "MapRecords", "Rename", "Select", "WithColumns"),
                    "beam_etl.transforms.mapping"),
    "NullRemover": "beam_etl.transforms.clean",
    "QualityScorer": "beam_etl.transforms.quality",
    "ExactDeduplicator": "beam_etl.transforms.dedup",
    "StreamingDeduplicate": "beam_etl.transforms.stream_dedup",
    "FuzzyDeduplicator": "beam_etl.transforms.fuzzy_dedup",
    "GroupByAggregate": "beam_etl.transforms.aggregate",
    "WindowAggregate": "beam_etl.transforms.window",
    "AnomalyDetector": "beam_etl.transforms.anomaly",
    "EnforceContract": "beam_etl.transforms.contract",
    "InferSchema": "beam_etl.transforms.schema",
    **dict.fromkeys(("ReadFromPostgres", "WriteToPostgres"), "beam_etl.io._sql_postgres"),
    **dict.fromkeys(("ReadFromMySql", "WriteToMySql"), "beam_etl.io._sql_mysql"),
    **dict.fromkeys(("ReadFromMongoDB", "WriteToMongoDB"), "beam_etl.io.mongodb"),
    **dict.fromkeys(("ReadFromKafka", "WriteToKafka"), "beam_etl.io.kafka"),
}
# Modules ``load_builtins`` leaves out: database and broker drivers, imported only when named.
_DRIVER_MODULES = frozenset({"beam_etl.io._sql_postgres", "beam_etl.io._sql_mysql", "beam_etl.io.mongodb",
                             "beam_etl.io.kafka"})
_BUILTIN_MODULES = tuple(dict.fromkeys(m for m in _TYPE_MODULES.values() if m not in _DRIVER_MODULES))


class StrictConfig(BaseModel):
    """Base for every config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


@dataclasses.dataclass(frozen=True)
class BuildContext:
    """What a factory may know about where its transform goes."""

    step_name: str
    run: RunContext


Factory = Callable[[Any, BuildContext], beam.PTransform]
Requirements = frozenset[str] | Callable[[Any], frozenset[str]]
StreamingSupport = bool | Callable[[Any], bool]
ConfigFlag = bool | Callable[[Any], bool]


@dataclasses.dataclass(frozen=True)
class ColumnUse:
    """The input columns a transform reads, for column pruning (``beam_etl.pruning``).

    ``columns`` are the fields the transform itself reads. ``passes_through`` says whether its
    output carries the other input columns on unchanged (a filter, a dedup) or holds only
    columns it computes from ``columns`` (an aggregation, a projection).
    """

    columns: frozenset[str]
    passes_through: bool


ColumnReads = Callable[[Any], ColumnUse | None] | None


def name_list(value: str | Iterable[str] | None) -> list[str]:
    """A config field that takes one name or a list of names, as a list."""
    return [value] if isinstance(value, str) else list(value or [])


@dataclasses.dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    factory: Factory
    config_model: type[BaseModel]
    summary: str
    requires: Requirements = frozenset()
    streaming: StreamingSupport = False
    regroups: ConfigFlag = False
    idempotent: ConfigFlag = False
    reads: ColumnReads = None

    def column_use(self, config: Any) -> ColumnUse | None:
        """The columns this transform reads with ``config``; None when it may read any column."""
        return self.reads(config) if self.reads is not None else None

    def features(self, config: Any) -> frozenset[str]:
        """Runner features this transform needs with ``config`` (see ``beam_etl.runners.capabilities``)."""
        return frozenset(self.requires(config) if callable(self.requires) else self.requires)

    def supports_streaming(self, config: Any) -> bool:
        """Whether this transform with ``config`` is correct on unbounded input."""
        return bool(self.streaming(config) if callable(self.streaming) else self.streaming)

    def regroups_records(self, config: Any) -> bool:
        """Whether records pass a shuffle/state here (outputs no longer in the bundle that read them)."""
        return bool(self.regroups(config) if callable(self.regroups) else self.regroups)

    def writes_idempotently(self, config: Any) -> bool:
        """Whether this sink, with ``config``, can take the same records twice without duplicating them."""
        return bool(self.idempotent(config) if callable(self.idempotent) else self.idempotent)


_TABLE: dict[str, Entry] = {}


def register(kind: str, name: str, config_model: type[BaseModel], *, requires: Requirements = frozenset(),
             streaming: StreamingSupport = False, regroups: ConfigFlag = False,
             idempotent: ConfigFlag = False, reads: ColumnReads = None) -> Callable[[Factory], Factory]:
    """Registers ``factory`` as the builder for ``type: name`` templates.

    ``requires`` names the runner features the transform needs (a set, or a function of its
    config); ``streaming`` (a bool, or a function of its config) says whether it is correct on
    unbounded input. The runner preflight
    reads both before anything is submitted. ``regroups`` (steps: a shuffle or keyed state) and
    ``idempotent`` (sinks: a rewrite of the same records changes nothing) decide whether an
    exactly-once source may feed them (see ``beam_etl.ops.guarantees``). ``reads`` (steps: a
    function of the config giving a ``ColumnUse``, or None when any column may be read) lets a
    source drop the columns no later transform reads (see ``beam_etl.pruning``).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")

    def decorate(factory: Factory) -> Factory:
        if name in _TABLE and _TABLE[name].factory is not factory:
            raise ValueError(f"{kind} type {name!r} is registered twice")
        summary = (factory.__doc__ or config_model.__doc__ or "").strip().splitlines()
        _TABLE[name] = Entry(kind, name, factory, config_model, summary[0] if summary else "", requires, streaming,
                             regroups, idempotent, reads)
        return factory

    return decorate


def load_builtins() -> None:
    """Imports the modules whose decorators fill the table (the driver modules stay until asked for)."""
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def lookup(name: str) -> Entry | None:
    """Returns the entry for a ``type`` name, or None; imports only the module that registers it."""
    if name not in _TABLE and name in _TYPE_MODULES:
        importlib.import_module(_TYPE_MODULES[name])
    return _TABLE.get(name)


def entries(kind: str | None = None) -> list[Entry]:
    """All registered entries, optionally of one kind, sorted by name."""
    for module in dict.fromkeys(_TYPE_MODULES.values()):
        importlib.import_module(module)
    return sorted((e for e in _TABLE.values() if kind in (None, e.kind)), key=lambda e: e.name)
