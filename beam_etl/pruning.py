"""Column pruning: a source passes on only the columns that some later transform reads.

A query engine does not carry a column that nothing reads; neither does beam_etl. Each step may
declare the columns it reads (``registry.register(..., reads=...)`` returning a ``ColumnUse``).
Walking the template backwards from the sinks gives, for every source, the set of columns any
path below it can read; when that set is known (every path ends in a step that does not pass
its input columns through, such as ``GroupByAggregate`` or ``Select``), the source's batches
are projected onto it right after the source.

What stays the same:

- The source still parses, casts and validates **every** column, so a row with a bad value in a
  column nobody reads still goes to the DLQ, and the source's own dead letters hold the whole
  row.
- Sinks write exactly the columns they wrote before: a sink reads all of its input, so pruning
  only removes columns that a later step would have dropped anyway.

What changes: a dead letter of a step *after* the source holds only the columns the rest of the
pipeline reads (its ``source`` still names the file and line of the whole row). Turn pruning off
with ``optimize: {prune_columns: false}`` in the template.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import apache_beam as beam
import pyarrow as pa

from beam_etl import registry
from beam_etl.batch import with_metadata
from beam_etl.spec import PipelineSpec

INTERNAL_PREFIX = "__beam_etl"  # internal columns (never user data) are always kept


def _union(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    return None if a is None or b is None else a | b


def source_columns(spec: PipelineSpec, configs: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """For each source whose readers are all known: the columns (sorted) later transforms read.

    Sources left out pass every column on: some path below them reads columns it does not
    declare (a sink, a user function, a whole-record step), or pruning is turned off.
    """
    if not spec.optimize.prune_columns:
        return {}
    wanted: dict[str, frozenset[str] | None] = {}  # main output of a transform -> columns read from it
    for section, _, t in reversed(spec.transforms()):
        if section == "sources":
            continue
        if section == "sinks":
            reads: frozenset[str] | None = None
        else:
            entry = registry.lookup(t.type)
            use = entry.column_use(configs[t.name]) if entry is not None else None
            below = wanted.get(t.name, frozenset())  # a step nobody reads from still reads its own columns
            if use is None:
                reads = None
            elif use.passes_through:
                reads = _union(use.columns, below)
            else:
                reads = use.columns
        for ref in t.inputs():
            if "." in ref:  # name.errors: the routed dead letters, not the main output
                continue
            wanted[ref] = _union(wanted[ref], reads) if ref in wanted else reads
    return {s.name: tuple(sorted(cols)) for s in spec.sources if (cols := wanted.get(s.name)) is not None}


def project(batch: pa.RecordBatch, keep: frozenset[str]) -> pa.RecordBatch:
    """``batch`` with only the columns in ``keep`` (and internal ones), in their order; metadata kept."""
    names = batch.schema.names
    indices = [i for i, name in enumerate(names) if name in keep or name.startswith(INTERNAL_PREFIX)]
    if not indices and names:  # nothing is read (a global count): one column keeps the rows countable
        indices = [0]
    if len(indices) == len(names):
        return batch
    return with_metadata(batch.select(indices), batch)


class PruneColumns(beam.PTransform):
    """Keeps only ``columns`` of every batch (columns a batch lacks are simply not there)."""

    def __init__(self, columns: Iterable[str]) -> None:
        super().__init__()
        self.columns = frozenset(columns)

    def display_data(self) -> dict[str, Any]:
        return {"columns": ", ".join(sorted(self.columns))}

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "Project" >> beam.Map(project, self.columns).with_output_types(pa.RecordBatch)


def describe(pruned: Mapping[str, tuple[str, ...]]) -> list[str]:
    """One line per pruned source (``source_columns``' result), for ``--validate``."""
    return [f"prune  {name} passes on only {list(cols)} (the columns later transforms read; "
            "optimize.prune_columns: false keeps all)" for name, cols in pruned.items()]
