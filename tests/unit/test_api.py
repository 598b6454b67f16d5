"""The REST API (beam_etl/api/app.py) through FastAPI's TestClient, with real run subprocesses."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from fastapi.testclient import TestClient

from beam_etl.api.__main__ import admin_main
from beam_etl.api.app import create_app

RUN_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api")


def make_tenant(output_dir: Path, name: str, *flags: str) -> dict[str, Any]:
    """``python -m beam_etl.api tenants create NAME`` in-process; its JSON (with the admin key)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert admin_main(["tenants", "create", name, "--output-dir", str(output_dir), *flags]) == 0
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def tenant(output_dir: Path) -> dict[str, Any]:
    return make_tenant(output_dir, "acme")


@pytest.fixture(scope="module")
def client(output_dir: Path, tenant: dict[str, Any]) -> TestClient:
    return TestClient(create_app(str(output_dir)), headers={"X-API-Key": tenant["api_key"]})


def run_folder(output_dir: Path, tenant: dict[str, Any], run_id: str) -> Path:
    return output_dir / "tenants" / tenant["tenant_id"] / run_id


def wait_for_status(client: TestClient, pipeline_id: str, timeout: float = RUN_TIMEOUT_S) -> dict[str, Any]:
    """Polls the pipeline's status until its latest run is neither starting nor running (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        status = client.get(f"/pipelines/{pipeline_id}/status").json()
        if status["status"] not in ("starting", "running") or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


@pytest.fixture(scope="module")
def finished(client: TestClient, output_dir: Path, tenant: dict[str, Any]) -> dict[str, Any]:
    """The quickstart registered, started and run to the end once for the module."""
    created = client.post("/pipelines", json={"name": "qs", "template": "quickstart"})
    assert created.status_code == 201, created.text
    pipeline_id = created.json()["id"]
    started = client.post(f"/pipelines/{pipeline_id}/start")
    assert started.status_code == 202, started.text
    status = wait_for_status(client, pipeline_id)
    log = client.get(f"/runs/{started.json()['run_id']}/logs").text
    assert status["status"] == "succeeded", log
    return {"pipeline_id": pipeline_id, "run_id": started.json()["run_id"]}


def test_validation_errors_name_the_field(client: TestClient) -> None:
    bad_template = client.post("/pipelines", json={"name": "a", "template": "no_such_template"})
    assert bad_template.status_code == 422
    assert bad_template.json()["detail"][0]["loc"] == ["body", "template"]
    bad_param = client.post("/pipelines", json={"name": "b", "template": "quickstart", "params": {"nope": 1}})
    assert bad_param.status_code == 422
    assert bad_param.json()["detail"][0]["loc"] == ["body", "params", "nope"]
    missing = client.post("/pipelines", json={"template": "quickstart"})
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "name"]
    assert "description" in client.get("/openapi.json").json()["components"]["schemas"]["PipelineIn"]["properties"][
        "params"]


def test_unknown_pipeline_and_run_are_404(client: TestClient) -> None:
    assert client.get("/pipelines/nope").status_code == 404
    assert client.post("/pipelines/nope/start").status_code == 404
    assert client.get("/pipelines/nope/status").status_code == 404
    assert client.get("/runs/20000101T000000Z-000000").status_code == 404
    assert client.get("/runs/..").status_code == 404


def test_quickstart_runs_and_reports(client: TestClient, output_dir: Path, tenant: dict[str, Any],
                                     finished: dict[str, Any]) -> None:
    run = client.get(f"/runs/{finished['run_id']}")
    assert run.status_code == 200
    body = run.json()
    summary = json.loads((run_folder(output_dir, tenant, finished["run_id"]) / "summary.json").read_text())
    assert body["status"] == "succeeded"
    assert body["steps"] == summary["steps"] and body["steps"]["orders"]["records_out"] > 0
    assert body["dead_letters"] == summary["totals"]["dead_letters"]
    assert body["ledger"]["status"] == "succeeded" and body["ledger"]["run_id"] == finished["run_id"]
    assert body["lineage_events"] >= 1
    assert [p["id"] for p in client.get("/pipelines").json()] == [finished["pipeline_id"]]
    assert client.get(f"/pipelines/{finished['pipeline_id']}").json()["name"] == "qs"
    metrics = client.get("/metrics").text
    assert 'beam_etl_api_pipelines_registered{tenant="acme"} 1' in metrics
    assert 'beam_etl_api_runs{tenant="acme",status="succeeded"} 1' in metrics


def test_stop_terminates_the_run(client: TestClient, finished: dict[str, Any]) -> None:
    pipeline_id = client.post("/pipelines", json={"name": "to_stop", "template": "quickstart"}).json()["id"]
    started = client.post(f"/pipelines/{pipeline_id}/start").json()
    process = psutil.Process(started["pid"])
    state_url = process.environ()["BEAM_ETL_STATE_URL"]  # may hold a password: in the environment, not in argv
    assert state_url.endswith("beam_etl_state.sqlite") and state_url not in " ".join(process.cmdline())
    assert client.post(f"/pipelines/{pipeline_id}/start").status_code == 409  # one run at a time
    stopped = client.post(f"/pipelines/{pipeline_id}/stop")
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["status"] == "stopped"
    assert not psutil.pid_exists(started["pid"])
    assert client.get(f"/pipelines/{pipeline_id}/status").json()["status"] == "stopped"
    assert client.post(f"/pipelines/{pipeline_id}/stop").status_code == 409


def test_restart_keeps_pipelines_and_runs(output_dir: Path, tenant: dict[str, Any], finished: dict[str, Any]) -> None:
    again = TestClient(create_app(str(output_dir)), headers={"X-API-Key": tenant["api_key"]})
    names = {p["name"]: p["id"] for p in again.get("/pipelines").json()}
    assert names["qs"] == finished["pipeline_id"]
    status = again.get(f"/pipelines/{finished['pipeline_id']}/status").json()
    assert status["status"] == "succeeded" and status["run_id"] == finished["run_id"]
    assert again.get(f"/pipelines/{names['to_stop']}/status").json()["status"] == "stopped"
    # a run whose process vanished without a ledger outcome shows as lost
    gone = subprocess.Popen(["true"])
    gone.wait()
    sup = again.app.state.supervisor
    sup.store.add_run({"run_id": "29991231T235959Z-lost00", "pipeline_id": names["qs"],
                       "tenant_id": tenant["tenant_id"], "pid": gone.pid})
    assert again.get(f"/pipelines/{names['qs']}/status").json()["status"] == "lost"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(output_dir: Path, port: int) -> subprocess.Popen:
    """``python -m beam_etl.api`` as its own process; returns once it answers."""
    import sys
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "beam_etl.api", "--port", str(port), "--output-dir",
                             str(output_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=Path(__file__).resolve().parents[2])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("the API did not start within 60 s")


def test_killing_and_restarting_the_api_during_a_run_loses_no_run_record(tmp_path: Path) -> None:
    import urllib.request

    key = make_tenant(tmp_path, "acme")["api_key"]

    def call(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json", "X-API-Key": key})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    port = _free_port()
    api = _serve(tmp_path, port)
    try:
        pipeline_id = call(port, "POST", "/pipelines", {"name": "qs", "template": "quickstart"})["id"]
        run_id = call(port, "POST", f"/pipelines/{pipeline_id}/start")["run_id"]
    finally:
        api.kill()  # SIGKILL while the run is going: no shutdown hook runs
        api.wait(timeout=30)
    port = _free_port()
    api = _serve(tmp_path, port)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        status = call(port, "GET", f"/pipelines/{pipeline_id}/status")
        assert status["run_id"] == run_id  # the restarted API knows the run at once
        while status["status"] in ("starting", "running") and time.monotonic() < deadline:
            time.sleep(0.5)
            status = call(port, "GET", f"/pipelines/{pipeline_id}/status")
        assert status["status"] == "succeeded", status
        run = call(port, "GET", f"/runs/{run_id}")
        assert run["totals"]["records_read"] == 3269 and run["ledger"]["status"] == "succeeded"
    finally:
        api.kill()
        api.wait(timeout=30)
