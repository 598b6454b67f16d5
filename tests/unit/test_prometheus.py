"""The Prometheus exposition of a run: format, counts, the live endpoint, the Pushgateway push, Grafana.

One quickstart run (module fixture) serves ``/metrics`` on a free port while a thread scrapes it,
and pushes its final snapshot to a local ``http.server`` standing in for the Pushgateway.
"""

from __future__ import annotations

import argparse
import base64
import http.server
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.metrics import monitoring_infos
from apache_beam.metrics.cells import DistributionData, GaugeData
from apache_beam.portability.api import beam_job_api_pb2, metrics_pb2
from apache_beam.testing.test_pipeline import TestPipeline

from beam_etl.ops import prometheus
from beam_etl.ops.metrics import COUNTERS, StepMetrics
from beam_etl.ops.prometheus import CONTENT_TYPE, ExportOptions, Latency, RunExporter, Snapshot, render
from beam_etl.run import main
from beam_etl.transforms.base import count_only

REPO = Path(__file__).resolve().parents[2]
RUN_ID = "prom-unit"
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"(?:,|$)')
SUFFIXES = {"summary": ("_sum", "_count"), "counter": ("",), "gauge": ("",)}


def parse(text: str) -> dict[str, dict[str, Any]]:
    """A strict reader of the text format: ``{family: {"type", "help", "samples": [(name, labels, value)]}}``."""
    families: dict[str, dict[str, Any]] = {}
    current: str | None = None
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name not in families, f"family {name} declared twice"
            families[name] = {"help": help_text, "type": None, "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name == current and families[name]["type"] is None, line
            assert kind in SUFFIXES, line
            families[name]["type"] = kind
        else:
            match = SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            assert current is not None and families[current]["type"], f"sample before its TYPE: {line!r}"
            suffixes = SUFFIXES[families[current]["type"]]
            assert match["name"] in {current + s for s in suffixes}, f"{match['name']} outside family {current}"
            labels, pos, raw = {}, 0, match["labels"] or ""
            while pos < len(raw):
                one = LABEL.match(raw, pos)
                assert one, f"bad labels at {raw[pos:]!r} in {line!r}"
                labels[one[1]] = re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], one[2])
                pos = one.end()
            families[current]["samples"].append((match["name"], labels, float(match["value"])))
    return families


def by_step(families: dict, family: str, name: str | None = None) -> dict[str, float]:
    return {labels["step"]: value for sample, labels, value in families[family]["samples"]
            if sample == (name or family)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Gateway(http.server.ThreadingHTTPServer):
    """A stand-in Pushgateway: records every request, answers with ``status``."""

    def __init__(self, status: int = 200, body: bytes = b"") -> None:
        self.received: list[tuple[str, str, dict[str, str], str]] = []
        self.status, self.body = status, body
        gateway = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                gateway.received.append(("PUT", self.path, dict(self.headers), data.decode()))
                self.send_response(gateway.status)
                self.send_header("Content-Length", str(len(gateway.body)))
                self.end_headers()
                self.wfile.write(gateway.body)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory) -> dict[str, Any]:
    """The quickstart with ``--metrics-port`` (scraped every 50 ms meanwhile) and ``--pushgateway``."""
    out = tmp_path_factory.mktemp("prom_runs")
    port, gateway, stop = free_port(), _Gateway(), threading.Event()
    url = f"http://127.0.0.1:{port}/metrics"
    scrapes: list[tuple[int, str, str]] = []
    after_finish: list[tuple[int, str, str]] = []

    def scrape() -> None:
        while not stop.is_set():
            try:
                scrapes.append(_get(url))
            except (urllib.error.URLError, OSError):
                pass  # not listening yet, or already closed
            time.sleep(0.05)

    finish = RunExporter.finish

    def finish_then_scrape(self: RunExporter, result: Any, run_dir: Path) -> dict:
        entry = finish(self, result, run_dir)
        after_finish.append(_get(url))  # the endpoint still serves, now the final snapshot
        after_finish.append(_get(url.replace("/metrics", "/other")))
        return entry

    poller = threading.Thread(target=scrape, daemon=True)
    poller.start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(RunExporter, "finish", finish_then_scrape)
            code = main(["--runner=DirectRunner", "--output-dir", str(out), "--run-id", RUN_ID, "--quiet",
                         "--metrics-port", str(port), "--pushgateway", gateway.url + "/base/"])
    finally:
        stop.set()
        poller.join(5)
        gateway.close()
    run_dir = out / RUN_ID
    return {"code": code, "run_dir": run_dir, "scrapes": scrapes, "after_finish": after_finish,
            "pushes": gateway.received, "summary": json.loads((run_dir / "summary.json").read_text()),
            "prom": (run_dir / "metrics.prom").read_text(), "url": url}


# ------------------------------------------------------------------------------- format


def test_exposition_parses_back_with_valid_names_and_escaped_labels():
    weird = 'we"ird\\step\nname'
    snap = Snapshot(counters={weird: dict.fromkeys(COUNTERS, 0) | {"records_in": 5, "records_out": 5,
                                                                    "records_late": 2}},
                    latency={weird: Latency(count=4, sum_us=10_500, min_us=1_000, max_us=4_500)},
                    lag={("read", "orders.v1", 3): 17}, watermark_ms={("read", "orders.v1", 3): 1_000_000})
    text = render(snap, 'pipe "p"', "run\\1", runner="PrismRunner", elapsed_s=2.5, now=1_010.0)
    families = parse(text)

    assert all(re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", name) for name in families)
    assert {f"beam_etl_{c}_total" for c in COUNTERS} | {"beam_etl_records_late_total"} <= set(families)
    assert families["beam_etl_records_in_total"]["type"] == "counter"
    assert families["beam_etl_batch_latency_ms"]["type"] == "summary"
    samples = [labels for f in families.values() for _, labels, _ in f["samples"]]
    assert all(labels["pipeline"] == 'pipe "p"' and labels["run_id"] == "run\\1" for labels in samples)
    assert by_step(families, "beam_etl_records_in_total") == {weird: 5}
    assert by_step(families, "beam_etl_records_late_total") == {weird: 2}
    assert by_step(families, "beam_etl_batch_latency_ms", "beam_etl_batch_latency_ms_sum") == {weird: 10.5}
    assert by_step(families, "beam_etl_batch_latency_ms", "beam_etl_batch_latency_ms_count") == {weird: 4}
    assert by_step(families, "beam_etl_batch_latency_ms_max") == {weird: 4.5}
    [(_, lag_labels, lag)] = families["beam_etl_kafka_consumer_lag"]["samples"]
    assert (lag_labels["topic"], lag_labels["partition"], lag) == ("orders.v1", "3", 17)
    assert families["beam_etl_watermark_age_seconds"]["samples"][0][2] == 10.0
    assert families["beam_etl_run_info"]["samples"][0][1]["runner"] == "PrismRunner"
    assert "\n\n" not in text and "\\n" in text  # the newline in the step name is escaped


def test_empty_snapshot_renders_only_what_it_has():
    assert render(Snapshot(), "p", "r") == ""
    assert parse(render(Snapshot(), "p", "r", runner="DirectRunner", elapsed_s=0.0))["beam_etl_run_info"]


# ------------------------------------------------------------------------------- a real run


def test_run_writes_metrics_prom_whose_counts_equal_the_summary(batch_run):
    assert batch_run["code"] == 0
    families = parse(batch_run["prom"])
    steps = batch_run["summary"]["steps"]
    assert steps, "the summary has no step counts"
    for counter in COUNTERS:
        exported = by_step(families, f"beam_etl_{counter}_total")
        for step, counts in steps.items():
            assert exported[step] == counts[counter], (step, counter)
        assert all(value == 0 for step, value in exported.items() if step not in steps)  # declared, never counted
    for step, c in steps.items():
        if c["records_in"]:  # steps and sinks (file sources count out + failed only)
            assert c["records_in"] == c["records_out"] + c["records_filtered"] + c["records_grouped"] + \
                c["records_failed"], (step, c)
    assert {s for _, labels, _ in families["beam_etl_records_in_total"]["samples"] for s in [labels["run_id"]]} \
        == {RUN_ID}


def test_batch_latency_is_in_the_summary_and_the_exposition(batch_run):
    families = parse(batch_run["prom"])
    latency = batch_run["summary"]["metrics"]["batch_latency_ms"]
    assert {"parse_dates", "required_fields", "quality"} <= set(latency)  # steps on BatchFnDoFn
    counts = by_step(families, "beam_etl_batch_latency_ms", "beam_etl_batch_latency_ms_count")
    sums = by_step(families, "beam_etl_batch_latency_ms", "beam_etl_batch_latency_ms_sum")
    assert set(batch_run["summary"]["steps"]) <= set(latency)  # every step, source, sink and the DLQ sink
    for step, entry in latency.items():
        assert counts[step] == entry["count"] >= 1
        if step in ("parse_dates", "required_fields", "quality"):  # one sample per batch on BatchFnDoFn
            assert entry["count"] == batch_run["summary"]["steps"][step]["batches_in"]
        assert sums[step] == pytest.approx(entry["sum"]) and entry["min"] <= entry["mean"] <= entry["max"]
    assert batch_run["summary"]["metrics"]["file"] == "metrics.prom"
    assert batch_run["summary"]["metrics"]["endpoint"] == batch_run["url"]


def test_endpoint_serves_while_the_batch_run_runs(batch_run):
    scrapes = batch_run["scrapes"]
    assert scrapes, "the endpoint never answered during the run"
    assert all(status == 200 and kind == CONTENT_TYPE for status, kind, _ in scrapes)
    first = parse(scrapes[0][2])
    assert first["beam_etl_run_info"]["samples"][0][1] == {"pipeline": "quickstart", "run_id": RUN_ID,
                                                           "runner": "DirectRunner"}
    # every step of the template is there from the start (as 0), so rate() sees the first records
    assert set(batch_run["summary"]["steps"]) <= set(by_step(first, "beam_etl_records_in_total"))
    status, kind, text = batch_run["after_finish"][0]
    assert (status, kind, text) == (200, CONTENT_TYPE, batch_run["prom"])  # then the final snapshot
    assert batch_run["after_finish"][1][0] == 404


def test_final_snapshot_is_pushed_to_the_pushgateway(batch_run):
    [(method, path, headers, body)] = batch_run["pushes"]
    assert (method, path) == ("PUT", f"/base/metrics/job/beam_etl/run_id/{RUN_ID}")
    assert headers["Content-Type"] == CONTENT_TYPE
    assert body == batch_run["prom"]
    pushed = batch_run["summary"]["metrics"]["pushgateway"]
    assert pushed["status"] == "pushed" and pushed["url"].endswith(path)


# ------------------------------------------------------------------------------- Pushgateway


def test_push_sends_credentials_as_basic_auth_and_encodes_odd_run_ids():
    gateway = _Gateway()
    try:
        host = gateway.url.split("//", 1)[1]
        url = prometheus.push("x 1\n", f"http://ops:pa%40ss@{host}", "2024/01 run")
        [(_, path, headers, body)] = gateway.received
    finally:
        gateway.close()
    assert path == "/metrics/job/beam_etl/run_id@base64/" + base64.urlsafe_b64encode(b"2024/01 run").decode()
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"ops:pa@ss").decode()
    assert "pa%40ss" not in url and "ops" not in url and body == "x 1\n"


def test_push_failures_name_the_gateway_and_its_answer():
    gateway = _Gateway(status=400, body=b"pushed metrics are invalid or inconsistent")
    try:
        with pytest.raises(RuntimeError, match="answered 400.*pushed metrics are invalid"):
            prometheus.push("x 1\n", gateway.url, "r1")
    finally:
        gateway.close()
    with pytest.raises(RuntimeError, match="cannot reach the Pushgateway"):
        prometheus.push("x 1\n", f"http://127.0.0.1:{free_port()}", "r1", timeout_s=2)


def test_a_failed_push_is_reported_in_the_summary_entry_not_raised(tmp_path, capsys):
    exporter = RunExporter("p", "r1", "DirectRunner", ExportOptions(pushgateway=f"http://127.0.0.1:{free_port()}"))

    class Done:
        def metrics(self) -> Any:
            return _FakeMetrics([])

    entry = exporter.finish(Done(), tmp_path)
    assert entry["pushgateway"]["status"] == "failed" and "cannot reach" in entry["pushgateway"]["error"]
    assert "metrics were not pushed" in capsys.readouterr().err
    assert (tmp_path / "metrics.prom").exists()


# ------------------------------------------------------------------------------- live metrics


class _FakeMetrics:
    def __init__(self, results: list) -> None:
        self._results = results

    def query(self, _filter: Any = None) -> dict:
        return {"counters": self._results, "distributions": [], "gauges": []}


class _JobService:
    """Answers GetJobMetrics like Prism: a new answer on every call."""

    def __init__(self, answers: list[tuple[list, list]]) -> None:
        self.answers, self.calls = answers, 0

    def GetJobMetrics(self, request: Any) -> Any:  # noqa: N802 - the gRPC method's name
        attempted, committed = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return beam_job_api_pb2.GetJobMetricsResponse(
            metrics=beam_job_api_pb2.MetricResults(attempted=attempted, committed=committed))


class _RunningJob:
    def __init__(self, service: _JobService) -> None:
        self._job_service, self._job_id = service, "job-1"

    def metrics(self) -> Any:
        raise AssertionError("a live scrape must not use (and freeze) PipelineResult.metrics()")


def _infos(records_in: int, lag: int | None = None, at: float = 0.0) -> list[metrics_pb2.MonitoringInfo]:
    infos = [monitoring_infos.int64_user_counter("beam_etl.read", "records_in", records_in, ptransform="t1")]
    if records_in:
        infos.append(monitoring_infos.int64_user_distribution(
            "beam_etl.read", "batch_latency_us", DistributionData(3000 * records_in, records_in, 1000, 5000),
            ptransform="t1"))
    if lag is not None:
        infos.append(monitoring_infos.int64_user_gauge("beam_etl.read", "kafka_lag/events/0",
                                                       GaugeData(lag, timestamp=at), ptransform="t1"))
    return infos


def test_live_scrapes_ask_the_job_service_every_time_and_take_the_newer_value():
    service = _JobService([
        (_infos(5), []),  # batch Prism: attempted only
        (_infos(9, lag=40, at=100.0), []),
        (_infos(0, lag=0, at=0.0), _infos(12, lag=3, at=101.0)),  # streaming Prism: committed + a bundle in flight
    ])
    exporter = RunExporter("p", "r", "PrismRunner", steps=["read", "write"])
    assert by_step(parse(exporter.exposition()), "beam_etl_records_in_total") == {"read": 0, "write": 0}
    exporter.watch(_RunningJob(service))
    seen = []
    for _ in range(3):
        families = parse(exporter.exposition())
        lag = families.get("beam_etl_kafka_consumer_lag", {"samples": []})["samples"]
        seen.append((by_step(families, "beam_etl_records_in_total")["read"], [v for *_, v in lag]))
    assert seen == [(5, []), (9, [40]), (12, [3])]
    assert service.calls == 3


def test_a_failing_live_query_serves_the_last_good_snapshot():
    class Broken:
        def __init__(self) -> None:
            self.fail = False

        def GetJobMetrics(self, request: Any) -> Any:  # noqa: N802
            if self.fail:
                raise ConnectionError("job service gone")
            return beam_job_api_pb2.GetJobMetricsResponse(metrics=beam_job_api_pb2.MetricResults(attempted=_infos(4)))

    service = Broken()
    exporter = RunExporter("p", "r", "PrismRunner")
    exporter.watch(_RunningJob(service))  # type: ignore[arg-type]
    good = exporter.exposition()
    service.fail = True
    assert exporter.exposition() == good


def test_time_batch_records_one_latency_per_batch():
    p = TestPipeline()
    batches = [pa.RecordBatch.from_pylist([{"x": i}] * (i + 1)) for i in range(3)]
    _ = p | beam.Create(batches) | beam.ParDo(count_only("timed"))
    result = p.run()
    result.wait_until_finish()
    snap = prometheus.collect(result.metrics())
    assert snap.latency["timed"].count == 3 and snap.latency["timed"].min_us >= 0
    assert snap.counters["timed"]["records_in"] == 6


def test_time_batch_measures_the_block():
    metrics = StepMetrics("s")
    recorded: list[int] = []
    metrics.batch_latency = type("D", (), {"update": lambda self, v: recorded.append(v)})()
    with metrics.time_batch():
        time.sleep(0.02)
    with pytest.raises(ValueError), metrics.time_batch():
        raise ValueError("still timed")
    assert recorded[0] >= 20_000 and len(recorded) == 2


# ------------------------------------------------------------------------------- CLI, endpoint


def test_options_are_validated_on_the_command_line(capsys):
    parser = argparse.ArgumentParser()
    prometheus.add_arguments(parser)
    args = parser.parse_args(["--metrics-port", "0", "--pushgateway", "https://gw.example:9091"])
    assert ExportOptions.from_args(args) == ExportOptions(0, "127.0.0.1", "https://gw.example:9091")
    for bad in (["--metrics-port", "70000"], ["--metrics-port", "x"], ["--pushgateway", "gw:9091"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    assert "not a TCP port" in capsys.readouterr().err


def test_a_taken_port_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        exporter = RunExporter("p", "r", "DirectRunner", ExportOptions(port=port))
        with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1:{port}"), exporter.serving():
            pass


def test_the_endpoint_stops_with_the_run():
    exporter = RunExporter("p", "r", "DirectRunner", ExportOptions(port=0))
    with exporter.serving():
        assert exporter.endpoint and _get(exporter.endpoint)[0] == 200
    with pytest.raises(urllib.error.URLError):
        _get(exporter.endpoint)


# ------------------------------------------------------------------------------- Grafana


def test_grafana_dashboard_is_valid_and_queries_exported_metrics():
    dashboard = json.loads((REPO / "deploy" / "grafana" / "beam_etl.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"pipeline", "run_id", "step"} <= set(variables)
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    titles = " | ".join(p["title"].lower() for p in panels)
    for word in ("throughput", "dlq", "kafka consumer lag", "batch latency", "funnel"):
        assert word in titles, word
    funnel = next(p for p in panels if "funnel" in p["title"].lower())
    assert funnel["type"] == "bargauge"
    assert {m for t in funnel["targets"] for m in re.findall(r"beam_etl_\w+", t["expr"])} == {
        f"beam_etl_records_{c}_total" for c in ("in", "out", "filtered", "failed")}
    full = Snapshot(counters={"s": dict.fromkeys(COUNTERS, 1)}, latency={"s": Latency(1, 1, 1, 1)},
                    lag={("s", "t", 0): 1}, watermark_ms={("s", "t", 0): 1})
    exported = {sample for f in parse(render(full, "p", "r")).values() for sample, _, _ in f["samples"]}
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            names = set(re.findall(r"beam_etl_\w+", target["expr"]))
            assert names and names <= exported, (panel["title"], names - exported)


def test_in_process_steps_show_live_counts_before_the_run_ends():
    """DirectRunner reports Beam metrics only at the end; the endpoint serves this process's tally meanwhile."""
    from beam_etl.ops.metrics import StepMetrics, live_counts
    from beam_etl.ops.prometheus import RunExporter

    exporter = RunExporter("p", "r1", "DirectRunner", steps=["clean"])  # a new run resets the tally
    assert live_counts() == {}
    metrics = StepMetrics("clean")
    metrics.records_in.inc(120)
    metrics.records_out.inc(100)
    metrics.records_filtered.inc(20)
    metrics.records_grouped.dec(0)
    text = exporter.exposition()
    assert re.search(r'beam_etl_records_in_total\{[^}]*step="clean"[^}]*\} 120\b', text), text
    assert re.search(r'beam_etl_records_out_total\{[^}]*step="clean"[^}]*\} 100\b', text)
    RunExporter("p", "r2", "DirectRunner")
    assert live_counts() == {}
