"""FuzzyDeduplicator: near-duplicate records merged into clusters (bounded input, one worker).

How it runs (first increment)::

    batches --Gather (ToList)--> [all batches] --Match--> kept batches
                                                   \\--> dead letters

All batches are gathered into one list in the global window, put in a stable order (source,
then first row, when the batches carry that metadata; else arrival order) and concatenated
into one Arrow table. ``beam_etl.ml.fuzzy.find_duplicates`` then runs **once** over the whole
table: exact pass on ``exact_fields``, candidate pairs from blocking keys and a sorted
neighbourhood, pair scoring, EM (or a threshold), connected components, merge by strategy.

Output: the kept rows (every row for ``tag_only``) with two columns appended, ``cluster_id``
(the position of the cluster's first row in the gathered, ordered input) and
``duplicate_count`` (the cluster's size minus one). An input column of either name is
replaced. Each cluster keeps exactly one row, so ``rows out + sum(duplicate_count) == rows in``
for the merge strategies; the metrics say the same: ``records_in == records_out +
records_filtered + records_failed``.

Limits: the whole input is clustered in memory on one worker (fine up to a few million rows
of the compared fields); a block-sharded, distributed version and a streaming (stateful)
version are later increments. The step is registered as batch-only (``streaming=False``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

import apache_beam as beam
import pyarrow as pa
from pydantic import Field, model_validator

from beam_etl import registry
from beam_etl.batch import batch_nbytes, concat_batches, concat_to_batch, table_to_batches
from beam_etl.ml.fuzzy import BlockKey, Comparison, FuzzyConfig, find_duplicates
from beam_etl.ops.context import get_run_context
from beam_etl.ops.dlq import DLQ_TAG
from beam_etl.ops.metrics import StepMetrics
from beam_etl.transforms.base import FIRST_ROW_KEY, SOURCE_KEY, run_with_row_fallback

CLUSTER_COLUMN = "cluster_id"
COUNT_COLUMN = "duplicate_count"


def _order_key(batch: pa.RecordBatch) -> tuple[str, int]:
    """(source, first row) from the batch metadata; ("", -1) when absent (keeps arrival order)."""
    meta = batch.schema.metadata or {}
    try:
        first = int(meta.get(FIRST_ROW_KEY, b"-1").decode())
    except ValueError:
        first = -1
    return meta.get(SOURCE_KEY, b"").decode(), first


def gather_table(batches: Sequence[pa.RecordBatch]) -> pa.Table:
    """The batches in a stable order as one table (schemas unified, row-position metadata dropped)."""
    ordered = sorted((b for b in batches if b is not None and b.num_rows), key=_order_key)
    table = concat_batches(ordered)
    meta = table.schema.metadata
    if meta and FIRST_ROW_KEY in meta:
        table = table.replace_schema_metadata({k: v for k, v in meta.items() if k != FIRST_ROW_KEY})
    return table


def _matching_view(table: pa.Table, config: FuzzyConfig) -> pa.Table:
    """``table`` plus an all-null string column for each field the config reads but the data lacks."""
    needed = list(config.string_fields()) + [c.field for c in config.comparisons]
    if config.score_column:
        needed.append(config.score_column)
    for name in dict.fromkeys(needed):
        if table.schema.get_field_index(name) < 0:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
    return table


def fuzzy_dedup_table(table: pa.Table, config: FuzzyConfig) -> tuple[pa.Table, dict[str, int]]:
    """Runs the matching core once over ``table``; returns the output table and the core's stats."""
    for name in (CLUSTER_COLUMN, COUNT_COLUMN):
        if name in table.schema.names:
            table = table.drop_columns([name])
    if table.num_rows == 0:
        return table, {"rows": 0}
    result = find_duplicates(_matching_view(table, config), config)
    return result.apply(table), result.stats


class _MatchFn(beam.DoFn):
    """Clusters the gathered batches once and emits the kept rows in batches."""

    def __init__(self, config: FuzzyConfig, step: str) -> None:
        self._config = config
        self._step = step
        self._ctx = get_run_context()

    def setup(self) -> None:
        self._metrics = StepMetrics(self._step)

    def process(self, batches: list[pa.RecordBatch]) -> Iterator[Any]:
        batches = [b for b in batches if b is not None and b.num_rows]
        if not batches:
            return
        rows_in = sum(b.num_rows for b in batches)
        self._metrics.batches_in.inc(len(batches))
        self._metrics.records_in.inc(rows_in)
        self._metrics.bytes_in.inc(sum(batch_nbytes(b) for b in batches))
        table = gather_table(batches)
        result = run_with_row_fallback(lambda b: fuzzy_dedup_table(pa.Table.from_batches([b]), self._config)[0],
                                       concat_to_batch(table), self._step, self._ctx, row_fallback=False)
        if result.dead_letters:  # the core failed on the whole input: every record is a dead letter
            self._metrics.records_failed.inc(len(result.dead_letters))
            for letter in result.dead_letters:
                yield beam.pvalue.TaggedOutput(DLQ_TAG, letter)
            return
        out = result.batch
        kept = 0 if out is None else out.num_rows
        if rows_in - kept:
            self._metrics.records_filtered.inc(rows_in - kept)
        if kept:
            self._metrics.records_out.inc(kept)
            yield from table_to_batches(pa.Table.from_batches([out]))


class FuzzyDeduplicator(beam.PTransform):
    """Merges near-duplicate records; returns ``(batches, dead_letters)``.

    Args:
      config: the matching configuration (``beam_etl.ml.fuzzy.FuzzyConfig``).
      step: step name for metrics and dead letters (default: the transform label).
    """

    def __init__(self, config: FuzzyConfig, *, step: str | None = None) -> None:
        super().__init__()
        if not isinstance(config, FuzzyConfig):
            raise TypeError(f"FuzzyDeduplicator: config must be a FuzzyConfig, not {type(config).__name__}")
        self._config = config
        self._step = step

    def step_name(self) -> str:
        return self._step or self.label

    def display_data(self) -> dict[str, Any]:
        c = self._config
        return {
            "comparisons": ", ".join(f"{x.field}:{x.method}" for x in c.comparisons),
            "blocking": "; ".join(f"{x.transform}({', '.join(x.fields)})" for x in c.blocking) or "none",
            "sorted_keys": "; ".join(f"{x.transform}({', '.join(x.fields)})" for x in c.sorted_keys) or "none",
            "classifier": c.classifier,
            "threshold": c.threshold,
            "strategy": c.strategy,
        }

    def expand(self, pcoll: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        step = self.step_name()
        results = (
            pcoll
            | "Gather" >> beam.combiners.ToList()
            | "Match" >> beam.ParDo(_MatchFn(self._config, step)).with_outputs(DLQ_TAG, main="output")
        )
        return results.output, results[DLQ_TAG]


# --- config ---------------------------------------------------------------------------------------


class ComparisonConfig(registry.StrictConfig):
    """One compared field."""

    field: str = Field(..., min_length=1, description="Field to compare.")
    method: Literal["jaro_winkler", "levenshtein", "exact", "numeric", "date"] = Field(
        "jaro_winkler", description="Similarity: jaro_winkler | levenshtein | exact | numeric | date.")
    weight: float = Field(1.0, gt=0, description="Weight in the threshold classifier's weighted mean.")
    scale: float = Field(1.0, gt=0, description="numeric/date: difference at which similarity reaches 0 "
                                                "(days for date).")
    thresholds: list[float] | None = Field(
        None, description="Similarity cut points that bin this field into levels for EM (default per method).")

    def build(self) -> Comparison:
        return Comparison(self.field, self.method, tuple(self.thresholds or ()), self.weight, self.scale)


class BlockKeyConfig(registry.StrictConfig):
    """One candidate key: records sharing it (or near it, for sorted_keys) are compared."""

    fields: list[str] | str = Field(..., description="Field(s) making the key.")
    transform: Literal["exact", "prefix", "soundex", "first_token", "sorted_tokens"] = Field(
        "exact", description="Applied to each normalised field value before keying.")
    length: int = Field(3, ge=1, description="Characters kept by transform 'prefix'.")

    @model_validator(mode="after")
    def _fields_named(self) -> BlockKeyConfig:
        names = [self.fields] if isinstance(self.fields, str) else self.fields
        if not names or any(not isinstance(n, str) or not n for n in names):
            raise ValueError(f"fields={self.fields!r}: give one or more non-empty field names")
        return self

    def build(self) -> BlockKey:
        return BlockKey(tuple([self.fields] if isinstance(self.fields, str) else self.fields),
                        self.transform, self.length)


class FuzzyDeduplicatorConfig(registry.StrictConfig):
    """Merges near-duplicate records (typos, case, spacing) into clusters; batch only, one worker."""

    comparisons: list[ComparisonConfig] = Field(..., min_length=1, description="Fields compared per candidate pair.")
    blocking: list[BlockKeyConfig] = Field(
        default_factory=list, description="Keys: records sharing one are compared (standard blocking).")
    sorted_keys: list[BlockKeyConfig] = Field(
        default_factory=list, description="Keys for a sorted neighbourhood: records within `window` are compared.")
    window: int = Field(5, ge=2, description="Sorted-neighbourhood window size.")
    max_block_size: int = Field(500, ge=2, description="Blocks larger than this are skipped (too common a key).")
    classifier: Literal["em", "threshold"] = Field(
        "em", description="em: unsupervised Fellegi-Sunter; threshold: weighted mean similarity.")
    threshold: float = Field(0.5, ge=0, le=1, description="Pairs scoring at least this are duplicates.")
    exact_fields: list[str] | None = Field(
        None, description="Fields whose identical normalised values collapse records before matching "
                          "(default: the compared fields).")
    strategy: Literal["keep_first", "keep_last", "keep_best", "tag_only"] = Field(
        "keep_first", description="Which record of a cluster survives; tag_only keeps all and only tags them.")
    score_column: str | None = Field(None, description="Numeric field ranking records for keep_best (highest wins).")

    @model_validator(mode="after")
    def _consistent(self) -> FuzzyDeduplicatorConfig:
        if not self.blocking and not self.sorted_keys:
            raise ValueError("blocking / sorted_keys: give at least one blocking key or sorted key "
                             "(all-pairs comparison is not offered)")
        if self.strategy == "keep_best" and not self.score_column:
            raise ValueError("score_column: strategy 'keep_best' needs score_column (a numeric field)")
        if self.exact_fields is not None and not self.exact_fields:
            raise ValueError("exact_fields: [] is empty; list fields or omit it")
        return self

    def to_fuzzy_config(self) -> FuzzyConfig:
        return FuzzyConfig(
            comparisons=tuple(c.build() for c in self.comparisons),
            blocking=tuple(k.build() for k in self.blocking),
            sorted_keys=tuple(k.build() for k in self.sorted_keys),
            window=self.window, max_block_size=self.max_block_size, classifier=self.classifier,
            threshold=self.threshold, exact_fields=tuple(self.exact_fields) if self.exact_fields else None,
            strategy=self.strategy, score_column=self.score_column,
        )


@registry.register("step", "FuzzyDeduplicator", FuzzyDeduplicatorConfig, regroups=True, streaming=False)
def build_fuzzy_deduplicator(config: FuzzyDeduplicatorConfig, ctx: registry.BuildContext) -> FuzzyDeduplicator:
    """Merges near-duplicate records (typos, case, spacing) into clusters; batch only, one worker."""
    return FuzzyDeduplicator(config.to_fuzzy_config(), step=ctx.step_name)
