"""A run's Beam metrics in the Prometheus text format: live ``/metrics``, ``metrics.prom``, Pushgateway.

``python -m beam_etl.run ... --metrics-port 9108`` serves ``http://127.0.0.1:9108/metrics`` while
the run lasts, rendered on every scrape from the running job's metrics (attempted values, which
Prism and the streaming DirectRunner report while the job runs; committed ones once it is done).
Every finished run writes the final snapshot to ``<run_dir>/metrics.prom`` and a ``metrics`` entry
to summary.json; ``--pushgateway URL`` also PUTs that snapshot to
``URL/metrics/job/beam_etl/run_id/<run id>``.

Families (labels ``pipeline``, ``run_id`` on every sample, plus ``step`` and, for Kafka,
``topic`` and ``partition``): ``beam_etl_records_{in,out,filtered,grouped,failed}_total``,
``beam_etl_batches_in_total``, ``beam_etl_bytes_in_total`` (and any other counter a step keeps in
its ``beam_etl.<step>`` namespace), ``beam_etl_batch_latency_ms`` (a summary: ``_count``,
``_sum``; with ``_min`` / ``_max`` gauges), ``beam_etl_kafka_consumer_lag``,
``beam_etl_watermark_age_seconds``, ``beam_etl_run_info`` and ``beam_etl_run_elapsed_seconds``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import http.server
import logging
import math
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from apache_beam.metrics.metric import MetricsFilter

from beam_etl.ops.metrics import (
    COUNTERS,
    KAFKA_LAG,
    KAFKA_WATERMARK,
    LATENCY,
    NAMESPACE_PREFIX,
    live_counts,
    reset_live_counts,
)
from beam_etl.ops.secrets import redact, register_secret

_LOG = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_HOST = "127.0.0.1"
PROM_FILE = "metrics.prom"
PUSH_JOB = "beam_etl"
PUSH_TIMEOUT_S = 10.0
METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
COUNTER_HELP = {
    "records_in": "Records that entered the step.",
    "records_out": "Records the step emitted.",
    "records_filtered": "Records the step dropped on purpose (filters, dedup), counted.",
    "records_grouped": "Records folded into an aggregate's groups.",
    "records_failed": "Records the step sent to the dead-letter queue.",
    "batches_in": "Arrow batches that entered the step.",
    "bytes_in": "Bytes of the Arrow batches that entered the step.",
}


@dataclasses.dataclass
class Latency:
    """A Beam distribution of per-batch times, in microseconds."""

    count: int
    sum_us: int
    min_us: int
    max_us: int

    def merge(self, other: Latency) -> Latency:
        return Latency(self.count + other.count, self.sum_us + other.sum_us, min(self.min_us, other.min_us),
                       max(self.max_us, other.max_us))

    def as_ms(self) -> dict[str, float]:
        """``count``, ``sum``, ``min``, ``max``, ``mean`` in milliseconds (for summary.json)."""
        return {"count": self.count, "sum": self.sum_us / 1000, "min": self.min_us / 1000,
                "max": self.max_us / 1000, "mean": round(self.sum_us / self.count / 1000, 3)}


@dataclasses.dataclass
class Snapshot:
    """The beam_etl metrics of a run at one moment."""

    counters: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)  # step -> name -> value
    latency: dict[str, Latency] = dataclasses.field(default_factory=dict)  # step -> distribution
    lag: dict[tuple[str, str, int], int] = dataclasses.field(default_factory=dict)  # (step, topic, partition)
    watermark_ms: dict[tuple[str, str, int], int] = dataclasses.field(default_factory=dict)


def _value(result: Any, live: bool, newer: Callable[[Any, Any], bool]) -> Any:
    """Final: committed, else attempted (as ``summarise``). Live: the more recent of the two, by ``newer(a, b)``.

    Runners differ while a job runs: batch Prism reports only attempted values, streaming Prism
    commits each finished bundle and reports the bundle in flight as attempted (zeros, often).
    """
    committed, attempted = result.committed, result.attempted
    if committed is None or attempted is None or not live:
        return committed if committed is not None else attempted
    return attempted if newer(attempted, committed) else committed


def _partition_key(step: str, name: str) -> tuple[str, str, int] | None:
    """``kafka_lag/<topic>/<partition>`` -> ``(step, topic, partition)`` (Kafka topics never hold '/')."""
    parts = name.split("/")
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    return step, parts[1], int(parts[2])


def collect(metric_results: Any, live: bool = False) -> Snapshot:
    """Reads the ``beam_etl.<step>`` metrics out of a ``MetricResults`` (``result.metrics()``)."""
    query = metric_results.query(MetricsFilter())
    snap = Snapshot()
    for counter in query.get("counters", []):
        namespace = counter.key.metric.namespace
        if not namespace.startswith(NAMESPACE_PREFIX):
            continue
        step = namespace[len(NAMESPACE_PREFIX):]
        per_step = snap.counters.setdefault(step, dict.fromkeys(COUNTERS, 0))
        name = counter.key.metric.name
        per_step[name] = per_step.get(name, 0) + int(_value(counter, live, lambda a, c: a > c) or 0)
    for dist in query.get("distributions", []):
        namespace, name = dist.key.metric.namespace, dist.key.metric.name
        data = _value(dist, live, lambda a, c: a.count > c.count)
        if name != LATENCY or not namespace.startswith(NAMESPACE_PREFIX) or data is None or not data.count:
            continue
        step = namespace[len(NAMESPACE_PREFIX):]
        one = Latency(int(data.count), int(data.sum), int(data.min), int(data.max))
        snap.latency[step] = snap.latency[step].merge(one) if step in snap.latency else one
    newest: dict[tuple[str, tuple[str, str, int]], float] = {}
    for gauge in query.get("gauges", []):
        namespace, name = gauge.key.metric.namespace, gauge.key.metric.name
        data = _value(gauge, live, lambda a, c: (a.timestamp or 0) > (c.timestamp or 0))
        kind = name.split("/", 1)[0]
        if kind not in (KAFKA_LAG, KAFKA_WATERMARK) or not namespace.startswith(NAMESPACE_PREFIX) or data is None:
            continue
        if not data.timestamp:
            continue  # never set (Prism reports an unset gauge as 0 at time 0)
        key = _partition_key(namespace[len(NAMESPACE_PREFIX):], name)
        stamp = float(data.timestamp or 0)
        if key is None or newest.get((kind, key), -math.inf) > stamp:
            continue  # the same gauge from several transforms or workers: the latest value wins
        newest[(kind, key)] = stamp
        (snap.lag if kind == KAFKA_LAG else snap.watermark_ms)[key] = int(data.value)
    return snap


# ------------------------------------------------------------------------------- exposition


def escape_label(value: str) -> str:
    """A label value for the text format: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 2**53):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _metric_name(raw: str) -> str:
    name = re.sub(r"[^a-zA-Z0-9_:]", "_", raw)
    return name if METRIC_NAME_RE.match(name) else f"_{name}"


class _Writer:
    """Accumulates families: ``# HELP``, ``# TYPE`` and their samples."""

    def __init__(self, labels: dict[str, str]) -> None:
        self._labels = labels
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: list[tuple[str, dict[str, str], float]]) -> None:
        """``samples``: (suffix, extra labels, value); nothing is written for a family without samples."""
        if not samples:
            return
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")
        for suffix, extra, value in samples:
            labels = ",".join(f'{k}="{escape_label(str(v))}"' for k, v in {**self._labels, **extra}.items())
            self.lines.append(f"{name}{suffix}{{{labels}}} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n" if self.lines else ""


def render(snap: Snapshot, pipeline: str, run_id: str, runner: str | None = None,
           elapsed_s: float | None = None, now: float | None = None) -> str:
    """The snapshot in the Prometheus text exposition format (version 0.0.4)."""
    out = _Writer({"pipeline": pipeline, "run_id": run_id})
    if runner is not None:
        out.family("beam_etl_run_info", "gauge", "A beam_etl run (always 1); its runner is a label.",
                   [("", {"runner": runner}, 1)])
    if elapsed_s is not None:
        out.family("beam_etl_run_elapsed_seconds", "gauge", "Seconds since the run started (its length once done).",
                   [("", {}, round(elapsed_s, 3))])
    steps = sorted(snap.counters)
    names = list(COUNTERS) + sorted({n for c in snap.counters.values() for n in c} - set(COUNTERS))
    for counter in names:
        out.family(_metric_name(f"beam_etl_{counter}_total"), "counter",
                   COUNTER_HELP.get(counter, f"The step's Beam counter {counter}."),
                   [("", {"step": s}, snap.counters[s].get(counter, 0)) for s in steps if counter in snap.counters[s]])
    lat = sorted(snap.latency.items())
    out.family("beam_etl_batch_latency_ms", "summary",
               "Milliseconds a step's function spent per batch (count and sum over the run).",
               [x for s, d in lat for x in (("_sum", {"step": s}, d.sum_us / 1000), ("_count", {"step": s}, d.count))])
    out.family("beam_etl_batch_latency_ms_min", "gauge", "The fastest batch of the step, in milliseconds.",
               [("", {"step": s}, d.min_us / 1000) for s, d in lat])
    out.family("beam_etl_batch_latency_ms_max", "gauge", "The slowest batch of the step, in milliseconds.",
               [("", {"step": s}, d.max_us / 1000) for s, d in lat])

    def where(key: tuple[str, str, int]) -> dict[str, str]:
        return {"step": key[0], "topic": key[1], "partition": str(key[2])}

    out.family("beam_etl_kafka_consumer_lag", "gauge",
               "Offsets between the partition's high watermark and the reader's position (at its last bundle).",
               [("", where(k), v) for k, v in sorted(snap.lag.items())])
    now = time.time() if now is None else now
    out.family("beam_etl_watermark_age_seconds", "gauge", "Seconds between now and the partition reader's watermark.",
               [("", where(k), round(max(0.0, now - v / 1000), 3)) for k, v in sorted(snap.watermark_ms.items())])
    return out.text()


def summary_entry(snap: Snapshot) -> dict[str, Any]:
    """The metrics that summary.json has no other place for: latency per step, Kafka lag."""
    entry: dict[str, Any] = {"file": PROM_FILE,
                             "batch_latency_ms": {s: d.as_ms() for s, d in sorted(snap.latency.items())}}
    if snap.lag:
        entry["kafka_consumer_lag"] = {f"{s}:{t}/{p}": v for (s, t, p), v in sorted(snap.lag.items())}
    return entry


# ------------------------------------------------------------------------------- Pushgateway


def push(text: str, gateway: str, run_id: str, timeout_s: float = PUSH_TIMEOUT_S) -> str:
    """PUTs ``text`` to ``gateway/metrics/job/beam_etl/run_id/<run_id>``; returns the URL (no credentials).

    Credentials in the URL (``http://user:pass@host:9091``) go in a basic-auth header. Raises
    ``RuntimeError`` with the gateway's answer when the push fails.
    """
    parts = urllib.parse.urlsplit(gateway)
    headers = {"Content-Type": CONTENT_TYPE}
    if parts.username is not None:
        password = urllib.parse.unquote(parts.password or "")
        register_secret(password)
        token = f"{urllib.parse.unquote(parts.username)}:{password}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        parts = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))
    if "/" in run_id or not run_id:  # the Pushgateway's base64 form of a label value that a path cannot hold
        key = "run_id@base64/" + (base64.urlsafe_b64encode(run_id.encode()).decode() or "=")
    else:
        key = "run_id/" + urllib.parse.quote(run_id, safe="")
    url = urllib.parse.urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/metrics/job/{PUSH_JOB}/{key}"))
    request = urllib.request.Request(url, data=text.encode(), method="PUT", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            answer.read()
    except urllib.error.HTTPError as err:
        body = err.read().decode(errors="replace").strip()[:300]
        raise RuntimeError(redact(f"Pushgateway {url} answered {err.code} {err.reason}: {body}")) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise RuntimeError(redact(f"cannot reach the Pushgateway at {url}: {reason}")) from None
    return url


# ------------------------------------------------------------------------------- the run's exporter


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """Where a run's metrics go besides metrics.prom: a live endpoint and/or a Pushgateway."""

    port: int | None = None
    host: str = DEFAULT_HOST
    pushgateway: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ExportOptions:
        return cls(port=args.metrics_port, host=args.metrics_host, pushgateway=args.pushgateway)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0-65535; 0 picks a free one)")
    return port


def _http_url(text: str) -> str:
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{redact(text)!r} is not an http(s):// URL, e.g. http://127.0.0.1:9091")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The exporter's command-line options (docs/observability.md)."""
    parser.add_argument("--metrics-port", type=_port, default=None, metavar="PORT",
                        help="serve the run's metrics for Prometheus at http://HOST:PORT/metrics while it runs "
                             "(0: a free port, printed)")
    parser.add_argument("--metrics-host", default=DEFAULT_HOST, metavar="HOST",
                        help="address the metrics endpoint listens on (default: %(default)s)")
    parser.add_argument("--pushgateway", type=_http_url, default=None, metavar="URL",
                        help="push the final metrics to this Prometheus Pushgateway (job beam_etl, run_id label)")


def _fresh_metrics(result: Any) -> Any:
    """The job's metrics now. A portable result's ``metrics()`` keeps its first answer, so ask its job service."""
    job_service, job_id = getattr(result, "_job_service", None), getattr(result, "_job_id", None)
    if job_service is None or job_id is None:
        return result.metrics()
    from apache_beam.portability.api import beam_job_api_pb2
    from apache_beam.runners.portability.portable_runner import PortableMetrics

    return PortableMetrics(job_service.GetJobMetrics(beam_job_api_pb2.GetJobMetricsRequest(job_id=job_id)))


class RunExporter:
    """Renders one run's metrics: live from its ``PipelineResult``, then the final snapshot."""

    def __init__(self, pipeline: str, run_id: str, runner: str, options: ExportOptions | None = None,
                 steps: Iterable[str] = ()) -> None:
        self.pipeline, self.run_id, self.runner = pipeline, run_id, runner
        self.steps = tuple(steps)  # counted from the start (as 0), so rate() sees the first records
        self.options = options or ExportOptions()
        self.endpoint: str | None = None
        self._started = time.monotonic()
        reset_live_counts()  # a new run: the live tally starts from zero
        self._lock = threading.Lock()
        self._result: Any = None
        self._final: str | None = None
        self._last_live = ""
        self._warned = False

    def watch(self, result: Any) -> None:
        """From now on the endpoint reads this (running) job's metrics."""
        with self._lock:
            self._result = result

    def _render(self, snap: Snapshot) -> str:
        for step in self.steps:
            snap.counters.setdefault(step, dict.fromkeys(COUNTERS, 0))
        return render(snap, self.pipeline, self.run_id, self.runner, time.monotonic() - self._started)

    def exposition(self) -> str:
        """What ``/metrics`` serves now."""
        with self._lock:
            final, result = self._final, self._result
        if final is not None:
            return final
        if result is None:  # building, or an in-process runner whose run() returns only when done
            return self._render(Snapshot(counters=live_counts()))  # this process's live tally (DirectRunner)
        try:
            text = self._render(collect(_fresh_metrics(result), live=True))
        except Exception as err:  # noqa: BLE001 - a scrape must not fail the run; serve the last good one
            if not self._warned:
                self._warned = True
                _LOG.warning("metrics endpoint: cannot read the job's metrics (%s); serving the last snapshot",
                             redact(str(err)))
            return self._last_live or self._render(Snapshot())
        self._last_live = text
        return text

    def finish(self, result: Any, run_dir: Path) -> dict[str, Any]:
        """Writes ``metrics.prom``, pushes it when asked; returns summary.json's ``metrics`` entry."""
        snap = collect(result.metrics())
        text = self._render(snap)
        with self._lock:
            self._final = text
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / PROM_FILE).write_text(text, encoding="utf-8")
        entry = summary_entry(snap)
        if self.endpoint:
            entry["endpoint"] = self.endpoint
        if self.options.pushgateway:
            try:
                entry["pushgateway"] = {"url": push(text, self.options.pushgateway, self.run_id), "status": "pushed"}
            except RuntimeError as err:
                entry["pushgateway"] = {"status": "failed", "error": str(err)}
                print(f"beam_etl: metrics were not pushed: {err}", file=sys.stderr)
        return entry

    @contextlib.contextmanager
    def serving(self) -> Iterator[RunExporter]:
        """Serves ``/metrics`` on ``options.port`` (when set) until the block ends."""
        if self.options.port is None:
            yield self
            return
        server = _server(self, self.options.host, self.options.port)
        host, port = server.server_address[:2]
        self.endpoint = f"http://{host if ':' not in host else f'[{host}]'}:{port}/metrics"
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                  name="beam_etl-metrics", daemon=True)
        thread.start()
        print(f"beam_etl: metrics for Prometheus at {self.endpoint}", file=sys.stderr)
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)


def _server(exporter: RunExporter, host: str, port: int) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, status, kind = exporter.exposition().encode(), 200, CONTENT_TYPE
            elif path == "/":
                body, status, kind = b"beam_etl run metrics: /metrics\n", 200, "text/plain; charset=utf-8"
            else:
                body, status, kind = b"not found; try /metrics\n", 404, "text/plain; charset=utf-8"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # http.server names it format
            _LOG.debug("metrics endpoint: " + format, *args)

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    try:
        return Server((host, port), Handler)
    except OSError as err:
        raise RuntimeError(f"--metrics-port {port}: cannot listen on {host}:{port}: {err.strerror or err} "
                           "(another process has it? pick another port, or 0 for a free one)") from None


def exporting(pipeline: str, run_id: str, runner: str, options: ExportOptions | None,
              steps: Iterable[str] = ()) -> Any:
    """``with exporting(...) as exporter``: a ``RunExporter`` serving ``/metrics`` when a port is set."""
    return RunExporter(pipeline, run_id, runner, options, steps).serving()
