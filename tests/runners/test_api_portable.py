"""The REST API hands a run to a portable job endpoint: the quickstart submitted to a standalone Prism job
service (what PortableRunner would submit to on a Flink or Spark job server), started and watched over the API."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient

from beam_etl.api.app import create_app
from tests.unit.test_api import make_tenant

RUN_TIMEOUT_S = 300


def test_api_run_submitted_to_a_portable_job_endpoint(prism_job_service: str, worker_pool: str,
                                                      tmp_path: Path) -> None:
    tenant = make_tenant(tmp_path, "portable")
    client = TestClient(create_app(str(tmp_path)), headers={"X-API-Key": tenant["api_key"]})
    options = ["--runner=PortableRunner", f"--job_endpoint={prism_job_service}", "--environment_type=EXTERNAL",
               f"--environment_config={worker_pool}"]
    created = client.post("/pipelines", json={"name": "qs_portable", "template": "quickstart", "options": options})
    assert created.status_code == 201, created.text
    pipeline_id = created.json()["id"]
    run_id = client.post(f"/pipelines/{pipeline_id}/start").json()["run_id"]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    status = client.get(f"/pipelines/{pipeline_id}/status").json()
    while status["status"] in ("starting", "running") and time.monotonic() < deadline:
        time.sleep(1)
        status = client.get(f"/pipelines/{pipeline_id}/status").json()
    assert status["status"] == "succeeded", client.get(f"/runs/{run_id}/logs").text
    run = client.get(f"/runs/{run_id}").json()
    assert run["ledger"]["runner"] == "PortableRunner"
    assert run["totals"]["records_read"] == 3269 and run["dead_letters"] == 29
