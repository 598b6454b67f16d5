"""Per-step Beam metrics: records in/out/filtered/grouped/failed, batches and bytes.

Counters live in the namespace ``beam_etl.<step>``; ``summarise`` turns a finished
run's metrics into per-step counts for the run summary. Next to them, in the same
namespace: the distribution ``batch_latency_us`` (``StepMetrics.time_batch``) and, for
Kafka sources, the gauges ``kafka_lag/<topic>/<partition>`` and
``kafka_watermark_ms/<topic>/<partition>`` (``StepMetrics.partition_progress``);
``beam_etl.ops.prometheus`` exports all of them.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
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


_live_lock = threading.Lock()
_live: dict[str, dict[str, int]] = {}


def live_counts() -> dict[str, dict[str, int]]:
    """What the steps running in this process have counted so far (attempted, not committed).

    In-process runners (the DirectRunner) report Beam metrics only when the run ends; this tally
    lets the Prometheus endpoint show progress meanwhile. Work done in other processes is absent.
    """
    with _live_lock:
        return {step: dict(counts) for step, counts in _live.items()}


def reset_live_counts() -> None:
    """Forgets the tally (a new run starts in this process)."""
    with _live_lock:
        _live.clear()


class _Counter:
    """A Beam counter that also adds to this process's live tally."""

    def __init__(self, namespace: str, step: str, name: str) -> None:
        self._counter = Metrics.counter(namespace, name)
        self._step, self._name = step, name

    def inc(self, n: int = 1) -> None:
        self._counter.inc(n)
        with _live_lock:
            per_step = _live.setdefault(self._step, dict.fromkeys(COUNTERS, 0))
            per_step[self._name] = per_step.get(self._name, 0) + n

    def dec(self, n: int = 1) -> None:
        self.inc(-n)


class StepMetrics:
    """The counters of one step; create inside a DoFn (``setup`` or ``__init__``)."""

    def __init__(self, step: str) -> None:
        namespace = NAMESPACE_PREFIX + step
        self.records_in = _Counter(namespace, step, "records_in")
        self.records_out = _Counter(namespace, step, "records_out")
        self.records_filtered = _Counter(namespace, step, "records_filtered")
        # rows folded into an aggregate's groups: in = out + filtered + grouped + failed
        self.records_grouped = _Counter(namespace, step, "records_grouped")
        self.records_failed = _Counter(namespace, step, "records_failed")
        self.batches_in = _Counter(namespace, step, "batches_in")
        self.bytes_in = _Counter(namespace, step, "bytes_in")
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


def timed_process(process: Callable[..., Any]) -> Callable[..., Any]:
    """Decorates a DoFn's ``process`` so each call adds its own run time to ``batch_latency_us``.

    Only the time spent inside ``process`` counts: for a generator, the time of each step up to the
    next ``yield``, not the time downstream steps of the fused stage spend on what it yields. The
    DoFn's ``StepMetrics`` must be ``self._metrics``; the signature Beam inspects is unchanged. On
    its first call it also installs the correlation/redaction log filters from ``self._ctx`` (the
    pickled ``RunContext``) on SDK workers outside the launcher process.
    """

    @functools.wraps(process)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not getattr(self, "_worker_logging", False):  # once per DoFn instance: log fields on remote workers
            self._worker_logging = True
            ctx = getattr(self, "_ctx", None)
            if ctx is not None and hasattr(ctx, "run_id"):
                from beam_etl.ops.logging import install_worker_logging_for  # here: logging imports Beam's worker

                install_worker_logging_for(ctx)
        started = time.perf_counter_ns()
        result = process(self, *args, **kwargs)
        spent = time.perf_counter_ns() - started
        metrics = getattr(self, "_metrics", None)
        if not isinstance(metrics, StepMetrics):
            return result
        if result is None:
            metrics.batch_latency.update(spent // 1000)
            return None
        return _timed_outputs(result, metrics, spent)

    return wrapper


def _timed_outputs(outputs: Iterable[Any], metrics: StepMetrics, spent: int) -> Iterator[Any]:
    iterator = iter(outputs)
    try:
        while True:
            started = time.perf_counter_ns()
            try:
                item = next(iterator)
            except StopIteration:
                spent += time.perf_counter_ns() - started
                return
            spent += time.perf_counter_ns() - started
            yield item
    finally:
        metrics.batch_latency.update(spent // 1000)


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
