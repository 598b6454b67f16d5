"""Multi-tenancy of the REST API: isolation, roles, keys, secrets, quotas and the audit trail.

Two tenants, real run subprocesses. Tenant B is given tenant A's real pipeline and run ids (the
"guessed ids") and must get exactly what an unknown id gets. Each isolation check in
beam_etl/api/app.py is a line marked ``# isolation:<rule>``; scripts/check_isolation_mutants.py
disables each one in turn and shows this module then fails (``make test-isolation-mutants``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from beam_etl.api.app import create_app
from beam_etl.api.store import KEYS, SECRETS
from tests.unit.test_api import make_tenant
from tests.unit.test_api import wait_for_status as wait

A_SECRET, B_SECRET = "acme-db-pass-7f3a91", "globex-db-pass-c02e44"
UNKNOWN_RUN = "20000101T000000Z-000000"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Tenants acme (admin, operator, viewer keys) and globex (admin); acme's quickstart run to the end."""
    out = tmp_path_factory.mktemp("tenancy")
    a, b = make_tenant(out, "acme"), make_tenant(out, "globex")
    app = create_app(str(out))
    plain = TestClient(app)
    clients = {"a": TestClient(app, headers={"X-API-Key": a["api_key"]}),
               "b": TestClient(app, headers={"X-API-Key": b["api_key"]})}
    for role in ("operator", "viewer"):
        made = clients["a"].post("/keys", json={"role": role, "label": f"acme {role}"})
        assert made.status_code == 201, made.text
        clients[f"a_{role}"] = TestClient(app, headers={"X-API-Key": made.json()["api_key"]})
    assert clients["a"].put("/secrets/DB_PASSWORD", json={"value": A_SECRET}).status_code == 204
    assert clients["b"].put("/secrets/DB_PASSWORD", json={"value": B_SECRET}).status_code == 204
    assert clients["b"].put("/secrets/GLOBEX_ONLY", json={"value": B_SECRET + "x"}).status_code == 204
    launched: list[dict[str, str]] = []  # the environment each run process was given
    start = app.state.supervisor.start

    def spy(args: list[str], log_path: Path, env: dict[str, str], run: dict[str, Any]) -> int:
        launched.append({"tenant_id": run["tenant_id"], **env})
        return start(args, log_path, env, run)

    app.state.supervisor.start = spy
    pipeline = clients["a"].post("/pipelines", json={"name": "qs", "template": "quickstart"})
    assert pipeline.status_code == 201, pipeline.text
    run = clients["a"].post(f"/pipelines/{pipeline.json()['id']}/start")
    assert run.status_code == 202, run.text
    status = wait(clients["a"], pipeline.json()["id"])
    assert status["status"] == "succeeded", clients["a"].get(f"/runs/{run.json()['run_id']}/logs").text
    b_pipeline = clients["b"].post("/pipelines", json={"name": "qs", "template": "quickstart"})
    assert b_pipeline.status_code == 201, b_pipeline.text  # names are unique per tenant only
    return {"out": out, "app": app, "plain": plain, "tenants": {"a": a, "b": b}, "launched": launched,
            "pipeline_id": pipeline.json()["id"], "run_id": run.json()["run_id"],
            "b_pipeline_id": b_pipeline.json()["id"], **clients}


def not_found_like_unknown(response: Any, kind: str, guessed: str) -> None:
    """404 with the same detail an unknown id gets: nothing says the id exists."""
    assert response.status_code == 404, response.text
    assert response.json() == {"detail": f"no {kind} {guessed!r}"}


# ---- isolation: pipelines ----------------------------------------------------------------------------
def test_pipeline_list_shows_only_the_callers(world: dict[str, Any]) -> None:
    assert [p["id"] for p in world["a"].get("/pipelines").json()] == [world["pipeline_id"]]
    assert [p["id"] for p in world["b"].get("/pipelines").json()] == [world["b_pipeline_id"]]


@pytest.mark.parametrize("method, suffix", [("get", ""), ("get", "/status"), ("get", "/runs"), ("post", "/start"),
                                            ("post", "/stop")])
def test_another_tenants_pipeline_id_is_404(world: dict[str, Any], method: str, suffix: str) -> None:
    guessed = world["pipeline_id"]
    runs_before = len(world["a"].get(f"/pipelines/{guessed}/runs").json())
    response = getattr(world["b"], method)(f"/pipelines/{guessed}{suffix}")
    not_found_like_unknown(response, "pipeline", guessed)
    not_found_like_unknown(getattr(world["b"], method)(f"/pipelines/000000000000{suffix}"), "pipeline", "000000000000")
    assert len(world["a"].get(f"/pipelines/{guessed}/runs").json()) == runs_before  # nothing started


# ---- isolation: runs and what hangs off them ----------------------------------------------------------
@pytest.mark.parametrize("method, suffix", [("get", ""), ("get", "/counters"), ("get", "/dlq"), ("get", "/lineage"),
                                            ("get", "/report"), ("get", "/logs"), ("post", "/dlq/replay")])
def test_another_tenants_run_id_is_404(world: dict[str, Any], method: str, suffix: str) -> None:
    guessed = world["run_id"]
    assert getattr(world["a"], method)(f"/runs/{guessed}{suffix}").status_code in (200, 202)
    not_found_like_unknown(getattr(world["b"], method)(f"/runs/{guessed}{suffix}"), "run", guessed)
    not_found_like_unknown(getattr(world["b"], method)(f"/runs/{UNKNOWN_RUN}{suffix}"), "run", UNKNOWN_RUN)


def test_runs_write_under_their_tenants_folder(world: dict[str, Any]) -> None:
    a_root = world["out"] / "tenants" / world["tenants"]["a"]["tenant_id"]
    assert (a_root / world["run_id"] / "summary.json").is_file()
    assert (a_root / "_logs" / f"{world['run_id']}.log").is_file()
    assert not (world["out"] / world["run_id"]).exists()


def test_metrics_count_only_the_callers_runs(world: dict[str, Any]) -> None:
    assert 'beam_etl_api_runs_started_total{tenant="globex"} 0' in world["b"].get("/metrics").text
    assert 'beam_etl_api_runs_started_total{tenant="acme"} 0' not in world["a"].get("/metrics").text


# ---- isolation: keys, secrets, audit ------------------------------------------------------------------
def test_key_list_shows_only_the_callers_keys(world: dict[str, Any]) -> None:
    a_keys = {k["key_id"] for k in world["a"].get("/keys").json()}
    b_keys = {k["key_id"] for k in world["b"].get("/keys").json()}
    assert world["tenants"]["a"]["key_id"] in a_keys and len(a_keys) == 3
    assert b_keys == {world["tenants"]["b"]["key_id"]}


def test_another_tenants_key_cannot_be_revoked(world: dict[str, Any]) -> None:
    a_key = world["tenants"]["a"]["key_id"]
    assert world["b"].delete(f"/keys/{a_key}").json() == {"detail": f"no active key {a_key!r}"}
    assert world["a"].get("/whoami").status_code == 200


def test_secret_list_shows_only_the_callers_names(world: dict[str, Any]) -> None:
    assert [s["name"] for s in world["a"].get("/secrets").json()] == ["DB_PASSWORD"]
    assert [s["name"] for s in world["b"].get("/secrets").json()] == ["DB_PASSWORD", "GLOBEX_ONLY"]


def test_a_run_gets_only_its_tenants_secrets(world: dict[str, Any]) -> None:
    a_id = world["tenants"]["a"]["tenant_id"]
    env = next(e for e in world["launched"] if e["tenant_id"] == a_id)
    assert env["DB_PASSWORD"] == A_SECRET and "GLOBEX_ONLY" not in env
    assert B_SECRET not in env.values() and env["BEAM_ETL_TENANT"] == "acme"
    assert "BEAM_ETL_API_SECRET_KEY" not in env


def test_audit_shows_only_the_callers_calls(world: dict[str, Any]) -> None:
    a_id = world["tenants"]["a"]["tenant_id"]
    entries = world["b"].get("/audit?limit=10000").json()
    assert entries and {e["tenant_id"] for e in entries} == {world["tenants"]["b"]["tenant_id"]}
    assert all(world["pipeline_id"] not in e["path"] or e["status"] == 404 for e in entries)
    assert {e["tenant_id"] for e in world["a"].get("/audit?limit=10000").json()} == {a_id}


# ---- roles and keys ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, path, body", [
    ("post", "/pipelines", {"name": "v", "template": "quickstart"}), ("post", "/pipelines/{p}/start", None),
    ("post", "/pipelines/{p}/stop", None), ("post", "/runs/{r}/dlq/replay", {})])
def test_viewer_cannot_change_anything(world: dict[str, Any], method: str, path: str, body: Any) -> None:
    url = path.format(p=world["pipeline_id"], r=world["run_id"])
    response = getattr(world["a_viewer"], method)(url, **({"json": body} if body is not None else {}))
    assert response.status_code == 403 and "operator role" in response.json()["detail"]
    assert world["a_viewer"].get(f"/runs/{world['run_id']}/dlq").status_code == 200


@pytest.mark.parametrize("method, path", [("get", "/keys"), ("post", "/keys"), ("get", "/secrets"),
                                          ("put", "/secrets/X_TOKEN"), ("get", "/audit"), ("put", "/tenant/config")])
def test_operator_cannot_administer(world: dict[str, Any], method: str, path: str) -> None:
    kwargs = {"json": {"role": "admin", "value": "v"}} if method in ("post", "put") else {}
    response = getattr(world["a_operator"], method)(path, **kwargs)
    assert response.status_code == 403 and "admin role" in response.json()["detail"]


def test_missing_bad_and_revoked_keys_are_401(world: dict[str, Any]) -> None:
    assert world["plain"].get("/pipelines").status_code == 401
    assert world["plain"].get("/pipelines", headers={"X-API-Key": "bek_000000000000_" + "A" * 43}).status_code == 401
    key = world["tenants"]["a"]["api_key"]
    assert world["plain"].get("/whoami", headers={"Authorization": f"Bearer {key}"}).json()["tenant"] == "acme"
    made = world["a"].post("/keys", json={"role": "viewer"}).json()
    temp = {"X-API-Key": made["api_key"]}
    assert world["plain"].get("/whoami", headers=temp).status_code == 200
    assert world["a"].delete(f"/keys/{made['key_id']}").status_code == 204
    assert world["plain"].get("/whoami", headers=temp).status_code == 401
    assert world["plain"].get("/health").json() == {"status": "ok"}


def test_keys_and_secrets_are_stored_hashed_and_encrypted(world: dict[str, Any]) -> None:
    store = world["app"].state.store
    with store.cursor() as cur:
        cur.execute(f"SELECT * FROM {KEYS}")
        keys = repr(cur.fetchall())
        cur.execute(f"SELECT * FROM {SECRETS}")
        secrets = repr(cur.fetchall())
    assert world["tenants"]["a"]["api_key"].rsplit("_", 1)[1] not in keys
    assert world["tenants"]["a"]["key_id"] in keys
    assert A_SECRET not in secrets and B_SECRET not in secrets
    listed = world["a"].get("/secrets").text
    assert A_SECRET not in listed
    audit = world["a"].get("/audit?limit=10000").text
    assert A_SECRET not in audit and world["tenants"]["a"]["api_key"] not in audit


def test_secret_names_are_validated(world: dict[str, Any]) -> None:
    response = world["a"].put("/secrets/db-password", json={"value": "x"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["path", "name"]
    response = world["a"].put("/secrets/DB_TOKEN", json={})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "value"]


def test_registration_refuses_paths_and_reserved_options(world: dict[str, Any]) -> None:
    path = world["a"].post("/pipelines", json={"name": "p", "template": "/etc/passwd.yaml"})
    assert path.status_code == 422 and path.json()["detail"][0]["loc"] == ["body", "template"]
    option = world["a"].post("/pipelines", json={"name": "p", "template": "quickstart",
                                                 "options": ["--runner=DirectRunner", "--output-dir=/tmp/x"]})
    assert option.status_code == 422 and option.json()["detail"][0]["loc"] == ["body", "options", 1]


def test_every_call_is_audited(world: dict[str, Any]) -> None:
    marker = "/pipelines/audit-probe-404"
    world["a"].get(marker)
    world["plain"].get(marker)  # no key: recorded without a tenant
    entries = world["a"].get("/audit?limit=50").json()
    probe = next(e for e in entries if e["path"] == marker)
    assert probe["status"] == 404 and probe["key_id"] == world["tenants"]["a"]["key_id"]
    assert probe["method"] == "GET" and probe["role"] == "admin" and probe["request_id"]
    store = world["app"].state.store
    assert any(e["path"] == marker and e["status"] == 401 for e in store.audit_entries(None, 50))


def test_tenant_config_reaches_the_runs(world: dict[str, Any]) -> None:
    config = {"default_options": ["--runner=DirectRunner"], "env": {"REGION": "eu"}}
    assert world["a"].put("/tenant/config", json=config).status_code == 200
    assert world["a"].get("/tenant").json()["config"] == config
    assert world["b"].get("/tenant").json()["config"] == {}


# ---- quotas ---------------------------------------------------------------------------------------------
def test_concurrent_run_quota_answers_429(world: dict[str, Any]) -> None:
    c = make_tenant(world["out"], "initech", "--max-concurrent-runs", "1")
    client = TestClient(world["app"], headers={"X-API-Key": c["api_key"]})
    first = client.post("/pipelines", json={"name": "one", "template": "quickstart"}).json()["id"]
    second = client.post("/pipelines", json={"name": "two", "template": "quickstart"}).json()["id"]
    assert client.post(f"/pipelines/{first}/start").status_code == 202
    refused = client.post(f"/pipelines/{second}/start")
    assert refused.status_code == 429 and refused.headers["Retry-After"]
    assert "max_concurrent_runs is 1" in refused.json()["detail"]
    assert client.get(f"/pipelines/{second}/status").json()["status"] == "never_run"
    assert wait(client, first)["status"] == "succeeded"
    assert client.get("/tenant").json()["usage"] == {"active_runs": 0, "rows_today": 3269}


def test_rows_per_day_quota_answers_429(world: dict[str, Any]) -> None:
    d = make_tenant(world["out"], "umbrella", "--max-rows-per-day", "1000")
    client = TestClient(world["app"], headers={"X-API-Key": d["api_key"]})
    pipeline = client.post("/pipelines", json={"name": "qs", "template": "quickstart"}).json()["id"]
    assert client.post(f"/pipelines/{pipeline}/start").status_code == 202
    assert wait(client, pipeline)["status"] == "succeeded"
    refused = client.post(f"/pipelines/{pipeline}/start")
    assert refused.status_code == 429
    assert "read 3269 rows today" in refused.json()["detail"] and "max_rows_per_day is 1000" in refused.json()["detail"]
    other = world["b"].post(f"/pipelines/{world['b_pipeline_id']}/start")  # another tenant is not affected
    assert other.status_code == 202
    assert wait(world["b"], world["b_pipeline_id"])["status"] == "succeeded"
