"""AnomalyDetector: tags every row with an anomaly score, flag and reasons; never filters.

The model layer is ``beam_etl.ml.anomaly`` (statistical detectors, an isolation forest and
pattern checks, combined into one ensemble score). This module puts it on a PCollection of
RecordBatches:

* **fit mode** (default): one global pass draws a uniform sample of at most
  ``fit_sample_rows`` rows from the input (bottom-k over random priorities, merged in a
  ``CombineFn``, so only the sample crosses the shuffle), the sample is fitted **once** into an
  ``AnomalyModel`` and that model reaches the scoring DoFn as a singleton side input. The input
  is therefore read twice (once for the sample, once for scoring), like NullRemover's statistics.
* **model_path**: a model saved with ``AnomalyModel.save`` is loaded once per DoFn instance in
  ``setup``; there is no fit stage, the step is per-batch and works on unbounded input.
* **streaming**: per-key running statistics on keyed state (``_anomaly_stream``): each row is
  scored against the earlier rows of its key (z-score or robust z), then folded in; no fit, no
  model, works on unbounded input.

Each batch leaves with ``anomaly_score`` (float64 in [0, 1]), ``is_anomaly`` (bool) and
``anomaly_reasons`` (list<string>) appended. Rows are never dropped: a batch whose scoring
fails goes to the DLQ row by row (``error_type`` ``type`` for schema/type problems, else
``internal``). A fit that cannot work (a named field missing, nothing to score) fails the run
with the step name in the message.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import Any, Literal

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from pydantic import Field, model_validator

from beam_etl import registry
from beam_etl.batch import batch_nbytes, canonical_rows, row_as_record
from beam_etl.ml.anomaly import DETECTORS, AnomalyConfig, AnomalyConfigError, AnomalyModel
from beam_etl.ops.context import get_run_context
from beam_etl.ops.dlq import DLQ_TAG, dead_letter
from beam_etl.ops.metrics import StepMetrics, timed_process
from beam_etl.transforms._anomaly_stream import StreamingAnomalyConfig, StreamingAnomalyDetector
from beam_etl.transforms.base import batch_attempt, batch_source
from beam_etl.transforms.mapping import NamedStep

DEFAULT_FIT_SAMPLE_ROWS = 100_000
# Not under "beam_etl." so the run summary's per-step record counts stay as they are.
MODEL_METRICS_NAMESPACE = "beam_etl_anomaly"
FIT_OPTIONS = (
    "detectors", "weights", "combine", "field_combine", "contamination", "threshold", "numeric_fields",
    "text_fields", "date_fields", "n_estimators", "random_state", "norm_quantile", "rare_min_freq",
    "pattern_coverage", "future_tolerance_s",
)


# --------------------------------------------------------------------------------------
# Fit sample
# --------------------------------------------------------------------------------------


class FitSampleCombineFn(beam.CombineFn):
    """A uniform sample of at most ``max_rows`` rows over all batches (bottom-k of random priorities).

    The accumulator holds a list of (priorities, table) parts; it is compacted to the k lowest
    priorities whenever it holds more than 2k rows, so memory stays O(k).
    """

    def __init__(self, max_rows: int, seed: int | None = None) -> None:
        self._k = int(max_rows)
        self._seed = seed

    def setup(self) -> None:
        self._rng = np.random.default_rng(self._seed)

    def _rng_or_new(self) -> np.random.Generator:
        if not hasattr(self, "_rng"):
            self._rng = np.random.default_rng(self._seed)
        return self._rng

    def create_accumulator(self) -> list[tuple[np.ndarray, pa.Table]]:
        return []

    def add_input(self, acc: list[tuple[np.ndarray, pa.Table]], batch: pa.RecordBatch) -> Any:
        if batch.num_rows:
            prio = self._rng_or_new().random(batch.num_rows)
            acc.append((prio, pa.Table.from_batches([batch.replace_schema_metadata(None)])))
            if sum(len(p) for p, _ in acc) > 2 * self._k:
                acc = self._compact(acc)
        return acc

    def merge_accumulators(self, accumulators: Any) -> list[tuple[np.ndarray, pa.Table]]:
        merged = [part for acc in accumulators for part in acc]
        return self._compact(merged) if sum(len(p) for p, _ in merged) > self._k else merged

    def _compact(self, parts: list[tuple[np.ndarray, pa.Table]]) -> list[tuple[np.ndarray, pa.Table]]:
        if not parts:
            return []
        prio = np.concatenate([p for p, _ in parts])
        table = pa.concat_tables([t for _, t in parts], promote_options="permissive")
        if len(prio) > self._k:
            keep = np.sort(np.argpartition(prio, self._k - 1)[: self._k])
            prio, table = prio[keep], table.take(pa.array(keep))
        return [(prio, table.combine_chunks())]

    def extract_output(self, acc: list[tuple[np.ndarray, pa.Table]]) -> pa.Table | None:
        parts = self._compact(acc)
        return parts[0][1] if parts else None


def fit_model(sample: pa.Table | None, config: AnomalyConfig, step: str) -> AnomalyModel | None:
    """Fits the model on the sample (None for an empty input); a config that cannot fit fails the run."""
    if sample is None or sample.num_rows == 0:
        return None
    Metrics.counter(MODEL_METRICS_NAMESPACE, f"{step}.model_fits").inc()
    try:
        return AnomalyModel(config).fit(canonical_rows(sample))  # the forest depends on row order
    except AnomalyConfigError as exc:
        raise AnomalyConfigError(f"AnomalyDetector step {step!r}: {exc}") from exc


# --------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------


def _error_type(exc: BaseException) -> str:
    """Schema/type problems (a fitted field missing or not castable) -> 'type'; anything else 'internal'."""
    if isinstance(exc, (AnomalyConfigError, pa.ArrowInvalid, pa.ArrowTypeError, TypeError, KeyError)):
        return "type"
    return "internal"


def load_model(path: str) -> AnomalyModel:
    """Loads a saved AnomalyModel; remote paths (s3://, gs://) are copied locally through Beam's filesystems."""
    if "://" not in path:
        return AnomalyModel.load(path)
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as src, tempfile.NamedTemporaryFile(suffix=".joblib", delete=False) as dst:
        dst.write(src.read())
    try:
        return AnomalyModel.load(dst.name)
    finally:
        os.unlink(dst.name)


class ScoreBatchesDoFn(beam.DoFn):
    """Appends anomaly columns to each batch; the model comes from a side input or ``model_path``."""

    def __init__(self, step: str, model_path: str | None = None) -> None:
        self._step = step
        self._model_path = model_path
        self._ctx = get_run_context()
        self._model: AnomalyModel | None = None
        self._unreported_loads = 0

    def setup(self) -> None:
        self._metrics = StepMetrics(self._step)
        if self._model_path is not None:
            self._unreported_loads += 1  # counted in the first bundle: metrics set in setup() are not reported
            try:
                self._model = load_model(self._model_path)
            except Exception as exc:
                raise AnomalyConfigError(
                    f"AnomalyDetector step {self._step!r}: model_path {self._model_path!r} could not be loaded: "
                    f"{exc}") from exc

    @timed_process
    def process(self, batch: pa.RecordBatch, model: AnomalyModel | None = None) -> Iterator[Any]:
        model = model if model is not None else self._model
        if self._unreported_loads:
            Metrics.counter(MODEL_METRICS_NAMESPACE, f"{self._step}.model_loads").inc(self._unreported_loads)
            self._unreported_loads = 0
        self._metrics.batches_in.inc()
        self._metrics.records_in.inc(batch.num_rows)
        self._metrics.bytes_in.inc(batch_nbytes(batch))
        if batch.num_rows == 0:
            return
        try:
            if model is None:
                raise RuntimeError("no fitted anomaly model reached the step")
            tagged = model.to_columns(batch)
        except Exception as exc:  # noqa: BLE001 - a failed batch is routed to the DLQ, never dropped
            self._metrics.records_failed.inc(batch.num_rows)
            message = f"AnomalyDetector: scoring the batch failed: {exc}"
            for i in range(batch.num_rows):
                yield beam.pvalue.TaggedOutput(DLQ_TAG, dead_letter(
                    row_as_record(batch, i), error_type=_error_type(exc), error=message, exception=exc,
                    step=self._step, source=batch_source(batch, i), attempt=batch_attempt(batch), ctx=self._ctx))
            return
        if batch.schema.metadata:
            tagged = tagged.replace_schema_metadata(batch.schema.metadata)
        self._metrics.records_out.inc(tagged.num_rows)
        yield tagged


class AnomalyDetector(NamedStep):
    """Tags rows with ``anomaly_score``, ``is_anomaly`` and ``anomaly_reasons``; never filters.

    Options are those of ``beam_etl.ml.anomaly.AnomalyConfig`` (``detectors``, ``combine``,
    ``contamination`` or ``threshold``, ``numeric_fields`` / ``text_fields`` / ``date_fields``,
    ...). Without ``model_path`` the model is fitted once on a uniform sample of at most
    ``fit_sample_rows`` input rows and passed to the scoring DoFn as a side input; with
    ``model_path`` a saved model is loaded once per DoFn instance; with ``streaming`` (a
    ``StreamingAnomalyConfig`` or its dict) rows are scored against per-key running statistics.
    """

    type_name = "AnomalyDetector"

    def __init__(self, *, model_path: str | None = None, fit_sample_rows: int | None = None,
                 streaming: StreamingAnomalyConfig | dict[str, Any] | None = None, step: str | None = None,
                 **options: Any) -> None:
        super().__init__(step)
        if fit_sample_rows is not None and fit_sample_rows < 1:
            raise AnomalyConfigError(f"fit_sample_rows must be >= 1, got {fit_sample_rows!r}")
        if streaming is not None:
            conflicts = [*(["model_path"] if model_path is not None else []),
                         *(["fit_sample_rows"] if fit_sample_rows is not None else []), *sorted(options)]
            if conflicts:
                raise AnomalyConfigError(
                    f"streaming: the streaming detector keeps per-key running statistics and takes its settings "
                    f"inside streaming; remove {conflicts} or streaming")
        if model_path is not None and options:
            raise AnomalyConfigError(
                f"model_path: a saved model carries its own settings; remove {sorted(options)} or model_path")
        self.streaming = (streaming if streaming is None or isinstance(streaming, StreamingAnomalyConfig)
                          else StreamingAnomalyConfig(**streaming))
        self.model_path = model_path
        self.fit_sample_rows = int(fit_sample_rows if fit_sample_rows is not None else DEFAULT_FIT_SAMPLE_ROWS)
        self.config = None if model_path is not None or self.streaming is not None else AnomalyConfig(
            max_fit_rows=self.fit_sample_rows, **options)

    def display_data(self) -> dict[str, Any]:
        if self.streaming is not None:
            return StreamingAnomalyDetector(self.streaming).display_data()
        if self.config is None:
            return {"model_path": self.model_path}
        cfg = self.config
        decision = f"threshold {cfg.threshold}" if cfg.threshold is not None else f"contamination {cfg.contamination}"
        return {"detectors": ", ".join(cfg.detectors), "combine": cfg.combine, "decision": decision,
                "fit_sample_rows": self.fit_sample_rows}

    def expand(self, pcoll: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        step = self.step_name()
        if self.streaming is not None:
            return pcoll | "Streaming" >> StreamingAnomalyDetector(self.streaming, step)
        if self.config is None:
            results = pcoll | "Score" >> beam.ParDo(
                ScoreBatchesDoFn(step, self.model_path)).with_outputs(DLQ_TAG, main="output")
            return results.output, results[DLQ_TAG]
        config = self.config
        if not pcoll.is_bounded:
            raise AnomalyConfigError(
                f"AnomalyDetector step {step!r}: fit mode fits once on a sample of the whole input, so it needs "
                "bounded input; on a stream set streaming: {numeric_fields: [...], key_fields: [...]} (per-key "
                "running statistics) or model_path (a saved model)")
        fit_input = pcoll
        if not isinstance(pcoll.windowing.windowfn, GlobalWindows):
            fit_input = pcoll | "FitWindow" >> beam.WindowInto(GlobalWindows())
        model = (
            fit_input
            | "FitSample" >> beam.CombineGlobally(FitSampleCombineFn(self.fit_sample_rows, config.random_state))
            | "Fit" >> beam.Map(fit_model, config, step)
        )
        results = pcoll | "Score" >> beam.ParDo(
            ScoreBatchesDoFn(step), model=beam.pvalue.AsSingleton(model)).with_outputs(DLQ_TAG, main="output")
        return results.output, results[DLQ_TAG]


# --------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------


class AnomalyDetectorConfig(registry.StrictConfig):
    """Tag rows with an anomaly score, flag and reasons (fit once on a sample, a saved model, or streaming)."""

    detectors: list[Literal["zscore", "robust_z", "iqr", "isolation_forest", "mahalanobis", "pattern"]] = Field(
        default_factory=lambda: list(DETECTORS), min_length=1, description="Detectors in the ensemble.")
    weights: dict[str, float] = Field(
        default_factory=dict,
        description="Ensemble weight per detector (under mean: isolation_forest and mahalanobis 2, pattern 1; "
                    "zscore/robust_z/iqr 0 while a multivariate detector runs, else 1).")
    combine: Literal["mean", "max"] = Field("mean", description="How detector scores combine.")
    field_combine: Literal["mean", "max"] = Field("max", description="How per-field statistical scores combine.")
    contamination: float = Field(0.05, gt=0, le=0.5, description="Expected anomaly share; sets the threshold.")
    threshold: float | None = Field(None, ge=0, le=1, description="Explicit score cut; overrides contamination.")
    numeric_fields: list[str] | None = Field(None, description="Numeric fields to score (default: all numeric).")
    text_fields: list[str] | None = Field(None, description="Text fields for pattern checks (default: all strings).")
    date_fields: list[str] | None = Field(None, description="Date fields for impossible-date checks (default: all).")
    n_estimators: int = Field(100, ge=1, description="Trees in the isolation forest.")
    random_state: int = Field(0, description="Seed of the isolation forest.")
    norm_quantile: float = Field(0.99, ge=0.5, lt=1, description="Fit quantile at which a detector's score is 0.5.")
    rare_min_freq: float = Field(0.01, gt=0, lt=1, description="Categories rarer than this are flagged.")
    pattern_coverage: float = Field(0.95, gt=0, le=1, description="Share a text shape must cover to be dominant.")
    future_tolerance_s: float = Field(86400.0, ge=0, description="Dates further in the future are flagged.")
    model_path: str | None = Field(None, description="Load a saved AnomalyModel instead of fitting.")
    fit_sample_rows: int = Field(DEFAULT_FIT_SAMPLE_ROWS, ge=1, description="Rows sampled from the input to fit on.")
    streaming: StreamingAnomalyConfig | None = Field(
        None, description="Per-key running statistics instead of a fit (works on unbounded input); "
                          "see docs/anomaly.md#streaming.")

    def kwargs(self) -> dict[str, Any]:
        options = {name: getattr(self, name) for name in FIT_OPTIONS if name in self.model_fields_set}
        if "detectors" in options:
            options["detectors"] = tuple(options["detectors"])
        sample = self.fit_sample_rows if "fit_sample_rows" in self.model_fields_set else None
        return {"model_path": self.model_path, "fit_sample_rows": sample, "streaming": self.streaming, **options}

    @model_validator(mode="after")
    def _check(self) -> AnomalyDetectorConfig:
        AnomalyDetector(**self.kwargs(), step="check")
        return self


def _streams(config: AnomalyDetectorConfig | None) -> bool:
    """Correct on unbounded input: a saved model (per batch) or the streaming statistics (keyed state)."""
    return config is not None and (config.model_path is not None or config.streaming is not None)


def _regroups(config: AnomalyDetectorConfig | None) -> bool:
    """The fit (a global combine) and the streaming statistics (keyed state) regroup records."""
    return config is None or config.model_path is None


def _requires(config: AnomalyDetectorConfig | None) -> frozenset[str]:
    return frozenset({"state_and_timers"}) if config is not None and config.streaming is not None else frozenset()


@registry.register("step", "AnomalyDetector", AnomalyDetectorConfig,
                   streaming=_streams, regroups=_regroups, requires=_requires)
def build_anomaly_detector(config: AnomalyDetectorConfig, ctx: registry.BuildContext) -> AnomalyDetector:
    """Tag rows with anomaly_score, is_anomaly and anomaly_reasons (never filters)."""
    return AnomalyDetector(**config.kwargs(), step=ctx.step_name)


__all__ = ["AnomalyDetector", "AnomalyDetectorConfig", "FitSampleCombineFn", "ScoreBatchesDoFn",
           "StreamingAnomalyConfig", "fit_model"]
