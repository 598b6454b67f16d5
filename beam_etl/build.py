"""Spec -> Beam graph: registry lookup, wiring, dead-letter collection.

Each transform's factory returns a PTransform that yields ``(output, dead_letters)``.
Main outputs are wired by name; dead letters go to the pipeline's DLQ sink unless a
transform's ``error_handling.output`` exposes them as ``<name>.<output>`` to other steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam
from pydantic import BaseModel

from beam_etl import pruning, registry
from beam_etl.ops import guarantees
from beam_etl.ops.context import RunContext
from beam_etl.ops.dlq import dead_letters_to_batch
from beam_etl.spec import PipelineSpec, TemplateError, contract_step_name

DLQ_STEP = "__dlq__"


@dataclasses.dataclass
class BuiltPipeline:
    """Handles to what ``build_pipeline`` wired, for the run summary."""

    outputs: dict[str, beam.PCollection]
    dead_letter_streams: list[str]
    graph: list[str]


class _BufferDeadLetters(beam.DoFn):
    """Collects a bundle's envelopes into RecordBatches of at most ``max_rows`` rows."""

    def __init__(self, max_rows: int) -> None:
        self._max = max_rows

    def start_bundle(self) -> None:
        self._buffer: list[dict[str, Any]] = []

    def process(self, letter: dict[str, Any]) -> Iterator[Any]:
        self._buffer.append(letter)
        if len(self._buffer) >= self._max:
            yield dead_letters_to_batch(self._buffer)
            self._buffer = []

    def finish_bundle(self) -> Iterator[Any]:
        if self._buffer:
            yield beam.utils.windowed_value.WindowedValue(
                dead_letters_to_batch(self._buffer), beam.utils.timestamp.MIN_TIMESTAMP,
                [beam.transforms.window.GlobalWindow()],
            )
            self._buffer = []


class DeadLettersToBatches(beam.PTransform):
    """Groups DLQ envelopes into RecordBatches so any sink can store them."""

    def __init__(self, max_batch_size: int = 10_000) -> None:
        super().__init__()
        self._max = max_batch_size

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "ToArrow" >> beam.ParDo(_BufferDeadLetters(self._max))


class _FailOnLostDeadLetter(beam.DoFn):
    """The DLQ sink could not store a dead letter: fail the run rather than lose it."""

    def process(self, letter: dict[str, Any]) -> Iterator[Any]:
        raise RuntimeError(
            "the DLQ sink could not store a dead letter, so the run stops instead of losing it: "
            f"{letter.get('error')} (step {letter.get('step')!r})"
        )
        yield  # pragma: no cover - makes this a generator


def _unpack(result: Any, name: str) -> tuple[beam.PCollection, beam.PCollection | None]:
    if isinstance(result, tuple) and len(result) == 2:
        return result[0], result[1]
    if isinstance(result, beam.PCollection):
        return result, None
    raise TypeError(f"transform {name!r} must return (output, dead_letters), got {type(result).__name__}")


def describe_graph(spec: PipelineSpec, pruned: Mapping[str, tuple[str, ...]] | None = None) -> list[str]:
    """One line per transform: ``name (Type) <- inputs``; then the column pruning, when given."""
    lines = []
    for section, _, t in spec.transforms():
        arrow = f" <- {', '.join(t.inputs())}" if t.inputs() else ""
        routed = f"  [dead letters -> {t.name}.{t.error_handling.output}]" if t.error_handling else ""
        if t.contract is not None:
            lines.append(f"step   {contract_step_name(t.name)} (EnforceContract){arrow}  [sink contract]")
            arrow = f" <- {contract_step_name(t.name)}"
        lines.append(f"{section[:-1]:6} {t.name} ({t.type}){arrow}{routed}")
    lines.append(f"dlq    {spec.dlq.type} <- dead letters of every other transform")
    if pruned:
        lines.extend(pruning.describe(pruned))
    return lines


def _apply_contract(upstream: beam.PCollection, sink: str, configs: dict[str, BaseModel], run: RunContext,
                    dead_letters: list[beam.PCollection], dlq_names: list[str]) -> beam.PCollection:
    """Runs the sink's ``contract:`` (EnforceContract) on its input; its dead letters join the DLQ."""
    name = contract_step_name(sink)
    entry = registry.lookup("EnforceContract")
    assert entry is not None
    checked, dlq = _unpack(upstream | name >> entry.factory(configs[name], registry.BuildContext(name, run)), name)
    if dlq is not None:
        dead_letters.append(dlq)
        dlq_names.append(name)
    return checked


def build_pipeline(
    pipeline: beam.Pipeline, spec: PipelineSpec, configs: dict[str, BaseModel], run: RunContext
) -> BuiltPipeline:
    """Adds the template's transforms, and its DLQ sink, to ``pipeline``."""
    problems = guarantees.check_exactly_once(spec, configs)
    if problems:
        raise TemplateError("the exactly-once guarantee cannot hold:\n  - " + "\n  - ".join(problems))
    outputs: dict[str, beam.PCollection] = {}
    dead_letters: list[beam.PCollection] = []
    dlq_names: list[str] = []
    pruned = pruning.source_columns(spec, configs)
    for section, index, t in spec.transforms():
        entry = registry.lookup(t.type)
        assert entry is not None, t.type  # validated by spec.validate_configs
        try:
            transform = entry.factory(configs[t.name], registry.BuildContext(t.name, run))
            if section == "sources":
                result = pipeline | t.name >> transform
            else:
                inputs = [outputs[ref] for ref in t.inputs()]
                upstream = inputs[0] if len(inputs) == 1 else inputs | f"{t.name}/Merge" >> beam.Flatten()
                if t.contract is not None:  # the sink's contract: an EnforceContract step just before it
                    upstream = _apply_contract(upstream, t.name, configs, run, dead_letters, dlq_names)
                result = upstream | t.name >> transform
        except (ValueError, TypeError) as err:  # construction-time validation (paths, schemas, options)
            raise TemplateError(f"{section}[{index}] ({t.name}): {err}") from err
        main, dlq = _unpack(result, t.name)
        if t.name in pruned:  # only the columns later transforms read go on (beam_etl/pruning.py)
            main = main | f"{t.name}/PruneColumns" >> pruning.PruneColumns(pruned[t.name])
        outputs[t.name] = main
        if dlq is None:
            continue
        if t.error_handling is not None:
            routed = f"{t.name}.{t.error_handling.output}"
            outputs[routed] = dlq | f"{t.name}/DeadLettersAsBatches" >> DeadLettersToBatches()
        else:
            dead_letters.append(dlq)
            dlq_names.append(t.name)
    if dead_letters:
        merged = tuple(dead_letters) | "DeadLetters/Merge" >> beam.Flatten()
        dlq_entry = registry.lookup(spec.dlq.type)
        assert dlq_entry is not None
        dlq_sink = dlq_entry.factory(configs["__dlq__"], registry.BuildContext(DLQ_STEP, run))
        written, lost = _unpack(merged | "DeadLetters/ToBatches" >> DeadLettersToBatches() | DLQ_STEP >> dlq_sink,
                                DLQ_STEP)
        outputs[DLQ_STEP] = written
        if lost is not None:
            _ = lost | "DeadLetters/FailIfLost" >> beam.ParDo(_FailOnLostDeadLetter())
    return BuiltPipeline(outputs, dlq_names, describe_graph(spec, pruned))
