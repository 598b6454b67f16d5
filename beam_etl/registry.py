"""Name -> factory for sources, steps and sinks: one decorator, one table.

A factory takes its validated pydantic config and a ``BuildContext`` and returns a
PTransform. Sources are applied to the pipeline root, steps and sinks to a PCollection of
RecordBatches; every one returns ``(output, dead_letters)``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from pydantic import BaseModel, ConfigDict

from beam_etl.ops.context import RunContext

KINDS = ("source", "step", "sink")
_BUILTIN_MODULES = (
    "beam_etl.io.files",
    "beam_etl.io.sql",
    "beam_etl.io.dlq_source",
    "beam_etl.transforms.mapping",
    "beam_etl.transforms.clean",
    "beam_etl.transforms.quality",
    "beam_etl.transforms.dedup",
    "beam_etl.transforms.stream_dedup",
    "beam_etl.transforms.fuzzy_dedup",
    "beam_etl.transforms.aggregate",
    "beam_etl.transforms.window",
    "beam_etl.transforms.anomaly",
    "beam_etl.transforms.contract",
    "beam_etl.transforms.schema",
)


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
             idempotent: ConfigFlag = False) -> Callable[[Factory], Factory]:
    """Registers ``factory`` as the builder for ``type: name`` templates.

    ``requires`` names the runner features the transform needs (a set, or a function of its
    config); ``streaming`` (a bool, or a function of its config) says whether it is correct on
    unbounded input. The runner preflight
    reads both before anything is submitted. ``regroups`` (steps: a shuffle or keyed state) and
    ``idempotent`` (sinks: a rewrite of the same records changes nothing) decide whether an
    exactly-once source may feed them (see ``beam_etl.ops.guarantees``).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")

    def decorate(factory: Factory) -> Factory:
        if name in _TABLE and _TABLE[name].factory is not factory:
            raise ValueError(f"{kind} type {name!r} is registered twice")
        summary = (factory.__doc__ or config_model.__doc__ or "").strip().splitlines()
        _TABLE[name] = Entry(kind, name, factory, config_model, summary[0] if summary else "", requires, streaming,
                             regroups, idempotent)
        return factory

    return decorate


# Types whose modules are imported only when a template names them (database drivers and their code).
_LAZY_TYPES = {
    "ReadFromPostgres": "beam_etl.io._sql_postgres", "WriteToPostgres": "beam_etl.io._sql_postgres",
    "ReadFromMySql": "beam_etl.io._sql_mysql", "WriteToMySql": "beam_etl.io._sql_mysql",
    "ReadFromMongoDB": "beam_etl.io.mongodb", "WriteToMongoDB": "beam_etl.io.mongodb",
    "ReadFromKafka": "beam_etl.io.kafka", "WriteToKafka": "beam_etl.io.kafka",
}


def load_builtins() -> None:
    """Imports the modules whose decorators fill the table (the lazy ones stay until asked for)."""
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def lookup(name: str) -> Entry | None:
    """Returns the entry for a ``type`` name, or None."""
    load_builtins()
    if name not in _TABLE and name in _LAZY_TYPES:
        importlib.import_module(_LAZY_TYPES[name])
    return _TABLE.get(name)


def entries(kind: str | None = None) -> list[Entry]:
    """All registered entries, optionally of one kind, sorted by name."""
    load_builtins()
    for module in sorted(set(_LAZY_TYPES.values())):
        importlib.import_module(module)
    return sorted((e for e in _TABLE.values() if kind in (None, e.kind)), key=lambda e: e.name)
