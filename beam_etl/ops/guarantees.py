"""Exactly-once checks: which sources ask for it, and whether the graph below them can give it.

A source with ``exactly_once: true`` commits its progress (Kafka offsets) only after the bundle
that read the records has finished. That gives exactly-once *results* when

* every sink fed by it writes idempotently (an upsert/replace by key, a Kafka transaction that
  carries the source offsets), so records read again after a restart change nothing, and
* no step between source and sink regroups records (a shuffle or keyed state): after a
  regrouping step, records are written in a later bundle than the one that read them, so the
  offsets could be committed before the sink has the data. Such graphs need a runner with
  durable checkpoints (``durable_checkpoints``), and the preflight refuses the others.

A graph that cannot give the guarantee is refused when the template is built: never a silent
downgrade to at-least-once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from beam_etl import registry
from beam_etl.spec import PipelineSpec

FEATURE = "durable_checkpoints"
_SINK_HINT = ("use mode: upsert (or replace) with key for SQL and MongoDB sinks, or transactional: true for "
              "WriteToKafka; file sinks cannot take the same records twice")


def _children(spec: PipelineSpec) -> dict[str, list[str]]:
    children: dict[str, list[str]] = {}
    for _section, _, t in spec.transforms():
        for ref in t.inputs():
            children.setdefault(ref.split(".", 1)[0], []).append(t.name)
    return children


def exactly_once_sources(spec: PipelineSpec, configs: Mapping[str, Any]) -> list[str]:
    return [t.name for section, _, t in spec.transforms()
            if section == "sources" and getattr(configs.get(t.name), "exactly_once", False)]


def _below(spec: PipelineSpec, source: str) -> list[str]:
    """Every transform downstream of ``source``, in template order."""
    children, seen, todo = _children(spec), set(), [source]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return [t.name for _, _, t in spec.transforms() if t.name in seen]


def check_exactly_once(spec: PipelineSpec, configs: Mapping[str, Any]) -> list[str]:
    """Problems that make an exactly-once source's guarantee impossible (empty when it holds)."""
    kinds = {t.name: (section, t) for section, _, t in spec.transforms()}
    problems = []
    for source in exactly_once_sources(spec, configs):
        sinks = 0
        for name in _below(spec, source):
            section, t = kinds[name]
            entry = registry.lookup(t.type)
            if entry is None or section != "sinks":
                continue
            sinks += 1
            if not entry.writes_idempotently(configs.get(name)):
                problems.append(f"source {source!r} asks for exactly_once, but sink {name!r} ({t.type}) would "
                                f"write records read again after a restart a second time: {_SINK_HINT}")
        if not sinks:
            problems.append(f"source {source!r} asks for exactly_once but feeds no sink")
    return problems


def regrouping_steps(spec: PipelineSpec, configs: Mapping[str, Any]) -> dict[str, list[str]]:
    """Exactly-once source -> the regrouping steps below it (they need durable checkpoints)."""
    kinds = {t.name: t for _, _, t in spec.transforms()}
    found: dict[str, list[str]] = {}
    for source in exactly_once_sources(spec, configs):
        for name in _below(spec, source):
            entry = registry.lookup(kinds[name].type)
            if entry is not None and entry.kind == "step" and entry.regroups_records(configs.get(name)):
                found.setdefault(source, []).append(f"{name} ({kinds[name].type})")
    return found
