"""The REST API with its state in PostgreSQL (``--state postgresql://...``): tenants, keys, pipelines, runs,
audit and the run ledger all in the real server; a second API process on the same store sees the same."""

from __future__ import annotations

import uuid
from pathlib import Path

from fastapi.testclient import TestClient

from beam_etl.api.app import create_app
from tests.unit.test_api import make_tenant, wait_for_status


def test_api_state_lives_in_postgres(postgres_state_dsn: str, tmp_path: Path) -> None:
    name = f"pg-{uuid.uuid4().hex[:8]}"
    tenant = make_tenant(tmp_path, name, "--state", postgres_state_dsn)
    headers = {"X-API-Key": tenant["api_key"]}
    client = TestClient(create_app(str(tmp_path), postgres_state_dsn), headers=headers)
    pipeline_id = client.post("/pipelines", json={"name": "qs", "template": "quickstart"}).json()["id"]
    run_id = client.post(f"/pipelines/{pipeline_id}/start").json()["run_id"]
    assert wait_for_status(client, pipeline_id)["status"] == "succeeded", client.get(f"/runs/{run_id}/logs").text
    again = TestClient(create_app(str(tmp_path / "elsewhere"), postgres_state_dsn), headers=headers)  # a new API
    assert [p["id"] for p in again.get("/pipelines").json()] == [pipeline_id]
    run = again.get(f"/runs/{run_id}").json()
    assert run["ledger"]["status"] == "succeeded" and run["ledger"]["tenant"] == name
    assert run["totals"]["records_read"] == 3269
    assert any(e["path"] == f"/pipelines/{pipeline_id}/start" and e["status"] == 202
               for e in again.get("/audit?limit=100").json())
