"""A streaming Kafka run's metrics reach the real Prometheus of scripts/services.sh.

The run (kafka_to_parquet on Prism, ``--metrics-port`` = the port Prometheus scrapes every
second) starts on an empty topic; once Prometheus has scraped it, N messages are produced. The
test then asks Prometheus's HTTP API, not the endpoint, for the per-step counts and the lag.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.integration.kafka_helpers import REPO, StreamingRun, produce, wait_for
from tests.services import HOST, KAFKA, port_open

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]
PROMETHEUS_URL = os.environ.get("BEAM_ETL_PROMETHEUS_URL") or f"http://{HOST}:59090"
METRICS_PORT = int(os.environ.get("BEAM_ETL_METRICS_PORT") or "59108")  # the port its config scrapes
N = 5000
PARTITIONS = 2
TIMEOUT_S = 180


def _api(path: str, **params: str) -> dict:
    url = f"{PROMETHEUS_URL}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=5) as answer:
        body = json.loads(answer.read())
    assert body["status"] == "success", body
    return body["data"]


def query(promql: str) -> list[tuple[dict, float]]:
    """An instant query: ``[(labels, value), ...]``."""
    return [(r["metric"], float(r["value"][1])) for r in _api("query", query=promql)["result"]]


def scalar(promql: str) -> float | None:
    """The value of a query that gives one sample (an aggregation), or None when it gives none."""
    result = query(promql)
    return result[0][1] if result else None


def _dashboard_queries_without_data(run_id: str) -> list[tuple[str, str]]:
    """The queries of deploy/grafana/beam_etl.json that return nothing for the run (a PromQL error raises)."""
    dashboard = json.loads((REPO / "deploy" / "grafana" / "beam_etl.json").read_text())
    values = {"$pipeline": ".*", "$run_id": run_id, "$step": ".*", "$__rate_interval": "1m"}
    empty = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in values.items():
                expr = expr.replace(variable, value)
            if not query(expr):
                empty.append((panel["title"], target["expr"]))
    return empty


@pytest.fixture
def prometheus() -> str:
    """Prometheus of scripts/services.sh, scraping 127.0.0.1:METRICS_PORT; fails the test when it is not."""
    host_port = PROMETHEUS_URL.split("://", 1)[-1].rstrip("/")
    host, port = host_port.rsplit(":", 1)
    if not port_open(host, int(port)):
        pytest.fail(f"prometheus is not running on {host_port}: start it with scripts/services.sh up prometheus",
                    pytrace=False)
    try:
        targets = _api("targets")["activeTargets"]
    except (urllib.error.URLError, OSError, AssertionError) as err:
        pytest.fail(f"prometheus at {PROMETHEUS_URL} does not answer its API ({err}): "
                    "restart it with scripts/services.sh down prometheus && scripts/services.sh up prometheus",
                    pytrace=False)
    urls = [t["scrapeUrl"] for t in targets]
    if f"http://{HOST}:{METRICS_PORT}/metrics" not in urls:
        pytest.fail(f"prometheus at {PROMETHEUS_URL} scrapes {urls}, not {HOST}:{METRICS_PORT}: run "
                    f"BEAM_ETL_METRICS_PORT={METRICS_PORT} scripts/services.sh up prometheus", pytrace=False)
    if port_open(HOST, METRICS_PORT):
        pytest.fail(f"port {METRICS_PORT} is taken (another run with --metrics-port {METRICS_PORT}?)", pytrace=False)
    return PROMETHEUS_URL


def test_streaming_kafka_run_counts_and_lag_reach_prometheus(kafka_bootstrap, prometheus, prism_binary,
                                                             tmp_path: Path):
    topic = f"prom_{uuid.uuid4().hex[:10]}"
    run_id = f"prom-test-{topic}"
    KAFKA.create_topic(topic, PARTITIONS)
    args = ["--template", "kafka_to_parquet", "--runner=PrismRunner", "--streaming", "--run-id", run_id,
            "--output-dir", str(tmp_path / "out"), "--metrics-port", str(METRICS_PORT),
            "--set", f"params.bootstrap={kafka_bootstrap}", "--set", f"params.topic={topic}",
            "--set", f"params.group={topic}",
            # small polls and bundles: the lag gauge is reported after every bundle
            "--set", "sources.read.config.batch_rows=500", "--set", "sources.read.config.max_bundle=200ms"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = StreamingRun(args, env, tmp_path / "run.log")
    of_run = f'run_id="{run_id}"'
    try:
        # the readers report lag 0 on the empty topic, and Prometheus has scraped that
        wait_for(lambda: len(query(f"beam_etl_kafka_consumer_lag{{{of_run}}}")) == PARTITIONS, TIMEOUT_S, run,
                 "Prometheus to scrape the lag of every partition", interval_s=0.5)
        assert scalar(f'sum(beam_etl_records_in_total{{step="read",{of_run}}})') == 0

        produce(kafka_bootstrap, topic, range(N))
        wait_for(lambda: scalar(f'sum(beam_etl_records_in_total{{step="read",{of_run}}})') == N, TIMEOUT_S, run,
                 f"Prometheus to report {N} records into step read", interval_s=0.5)
        wait_for(lambda: scalar(f'sum(beam_etl_records_out_total{{step="write",{of_run}}})') == N, TIMEOUT_S, run,
                 f"Prometheus to report {N} records out of step write", interval_s=0.5)
        wait_for(lambda: scalar(f"max(beam_etl_kafka_consumer_lag{{{of_run}}})") == 0, TIMEOUT_S, run,
                 "the consumer lag back at 0", interval_s=0.5)

        lag = query(f"beam_etl_kafka_consumer_lag{{{of_run}}}")
        assert sorted((m["topic"], m["partition"], m["step"]) for m, _ in lag) == [
            (topic, str(p), "read") for p in range(PARTITIONS)]
        for step in ("read", "time_partition", "write"):
            counts = {name: scalar(f'sum(beam_etl_{name}_total{{step="{step}",{of_run}}})')
                      for name in ("records_in", "records_out", "records_filtered", "records_grouped",
                                   "records_failed")}
            assert counts["records_in"] == N, (step, counts)
            assert counts["records_in"] == (counts["records_out"] + counts["records_filtered"]
                                            + counts["records_grouped"] + counts["records_failed"]), (step, counts)
        assert scalar(f'sum(beam_etl_batch_latency_ms_count{{step="time_partition",{of_run}}})') >= 1
        ages = query(f"beam_etl_watermark_age_seconds{{{of_run}}}")
        assert len(ages) == PARTITIONS and all(0 <= age < 3600 for _, age in ages), ages
        assert scalar(f'up{{job="beam_etl",instance="{HOST}:{METRICS_PORT}"}}') == 1
        # rate() needs two scrapes of a series: a series that appeared last (a latency) takes a second more
        try:
            wait_for(lambda: not _dashboard_queries_without_data(run_id), 30, run, "data in every dashboard panel",
                     interval_s=1.0)
        except AssertionError:
            raise AssertionError(f"dashboard queries without data: {_dashboard_queries_without_data(run_id)}") \
                from None
    finally:
        run.kill()
        KAFKA.delete_topic(topic)
