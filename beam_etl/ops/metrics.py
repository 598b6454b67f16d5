"""Per-step Beam metrics: records in/out/filtered/grouped/failed, batches and bytes.

Counters live in the namespace ``beam_etl.<step>``; ``summarise`` turns a finished
run's metrics into per-step counts for the run summary. Next to them, in the same
namespace: the distribution ``batch_latency_us`` (``StepMetrics.time_batch``) and, for
Kafka sources, the gauges ``kafka_lag/<topic>/<partition>`` and
``kafka_watermark_ms/<topic>/<partition>`` (``StepMetrics.partition_progress``);
``beam_etl.ops.prometheus`` exports all of them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

NAMESPACE_PREFIX = "beam_etl."
COUNTERS = (
    "records_in", "records_out", "records_filtered", "records_grouped", "records_failed", "batches_in", "bytes_in",
)
LATENCY = "batch_latency_us"  # distribution: microseconds a step's function spent on one batch
KAFKA_LAG = "kafka_lag"  # gauge, name kafka_lag/<topic>/<partition>: high watermark - next offset to read
KAFKA_WATERMARK = "kafka_watermark_ms"  # gauge, name kafka_watermark_ms/<topic>/<partition>: epoch ms


class StepMetrics:
    """The counters of one step; create inside a DoFn (``setup`` or ``__init__``)."""

    def __init__(self, step: str) -> None:
        namespace = NAMESPACE_PREFIX + step
        self.records_in = Metrics.counter(namespace, "records_in")
        self.records_out = Metrics.counter(namespace, "records_out")
        self.records_filtered = Metrics.counter(namespace, "records_filtered")
        # rows folded into an aggregate's groups: in = out + filtered + grouped + failed
        self.records_grouped = Metrics.counter(namespace, "records_grouped")
        self.records_failed = Metrics.counter(namespace, "records_failed")
        self.batches_in = Metrics.counter(namespace, "batches_in")
        self.bytes_in = Metrics.counter(namespace, "bytes_in")
        self.batch_latency = Metrics.distribution(namespace, LATENCY)
        self._namespace = namespace

    @contextmanager
    def time_batch(self) -> Iterator[None]:
        """Adds the wall time of the ``with`` body, in microseconds, to ``batch_latency_us``."""
        started = time.perf_counter_ns()
        try:
            yield
        finally:
            self.batch_latency.update((time.perf_counter_ns() - started) // 1000)

    def partition_progress(self, topic: str, partition: int, lag: int | None, watermark_ms: int | None) -> None:
        """Reports a Kafka partition's consumer lag (offsets) and its reader's watermark (epoch ms)."""
        if lag is not None:
            Metrics.gauge(self._namespace, f"{KAFKA_LAG}/{topic}/{partition}").set(max(0, int(lag)))
        if watermark_ms is not None:
            Metrics.gauge(self._namespace, f"{KAFKA_WATERMARK}/{topic}/{partition}").set(int(watermark_ms))


def summarise(result: Any) -> dict[str, dict[str, int]]:
    """Returns ``{step: {counter: value}}`` from a PipelineResult's committed metrics."""
    steps: dict[str, dict[str, int]] = {}
    query = result.metrics().query(MetricsFilter())
    for counter in query.get("counters", []):
        namespace = counter.key.metric.namespace
        if not namespace.startswith(NAMESPACE_PREFIX):
            continue
        step = namespace[len(NAMESPACE_PREFIX):]
        value = counter.committed if counter.committed is not None else counter.attempted
        per_step = steps.setdefault(step, {name: 0 for name in COUNTERS})
        per_step[counter.key.metric.name] = per_step.get(counter.key.metric.name, 0) + int(value or 0)
    return steps
