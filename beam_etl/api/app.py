"""The REST API: tenants' pipelines, their runs, dead letters, lineage, logs, keys, secrets and audit.

``create_app(output_dir, state_url)`` returns a FastAPI app. Every endpoint but ``/health``, the
dashboard's static files and the OpenAPI pages needs an API key (``X-API-Key`` or ``Authorization:
Bearer``); the key names the tenant and its role. A tenant's objects are looked up by id and then
checked against the caller's tenant on a line marked ``# isolation:<rule>`` (another tenant's id
answers 404 exactly like an unknown one); ``scripts/check_isolation_mutants.py`` deletes each
marked line in turn and shows the tests fail. Runs are supervised subprocesses (supervisor.py)
writing under ``<output_dir>/tenants/<tenant_id>/``. See docs/api.md.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, Security
from fastapi import Path as PathParam
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from beam_etl.api import auth, run_data
from beam_etl.api.dashboard import mount_dashboard
from beam_etl.api.pipelines import BeamOption, PipelineIn, run_command, validate_pipeline
from beam_etl.api.store import ApiStore, now
from beam_etl.api.supervisor import ACTIVE, RUN_STATUSES, RunStatus, Supervisor, child_env, free_port
from beam_etl.api.vault import Vault, VaultError
from beam_etl.ops.state import STATE_FILE_NAME, STATE_URL_ENV

SECRET_NAME_PATTERN = r"^[A-Z][A-Z0-9_]{0,63}$"
#: names of the tenant's own environment variables (the API's and Python's are reserved)
EnvName = Annotated[str, StringConstraints(pattern=r"^(?!BEAM_ETL_|PYTHON)[A-Z][A-Z0-9_]{0,63}$")]
TEXT_200 = {200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Plain text."}}
HTML_200 = {200: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": "An HTML page."}}
AUDIT_PAGE = 200
SECRET_NAME = PathParam(..., pattern=SECRET_NAME_PATTERN, description="An environment-variable name, e.g. DB_PASSWORD.")
API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="A tenant's API key (python -m beam_etl.api tenants create / POST /keys); "
                                          "Authorization: Bearer <key> works too.")


class ErrorOut(BaseModel):
    """An error: ``detail`` is a message, or FastAPI's list of ``{loc, msg, type}`` for invalid input."""

    detail: Any = Field(..., description="What went wrong (names the field for validation errors).")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text} for code, text in (
        (400, "The body is not valid JSON."), (401, "Missing, unknown or revoked API key."),
        (403, "The key's role is too weak."),
        (404, "Unknown, or another tenant's."), (409, "Conflicts with the current state."),
        (429, "Over a tenant quota (Retry-After says when to try again)."))}


class Pipeline(PipelineIn):
    """A registered pipeline."""

    id: str = Field(..., description="Identifier assigned by the API.")
    tenant_id: str = Field(..., description="The tenant that owns it.")
    created_at: str = Field(..., description="UTC time of registration.")


class RunStarted(BaseModel):
    """A run the API started."""

    run_id: str = Field(..., description="The run id (also the run folder's name and the ledger key).")
    pipeline_id: str = Field(..., description="The pipeline it runs.")
    pid: int = Field(..., description="Process id of the run.")
    replay_of: str | None = Field(None, description="For a DLQ replay: the run whose dead letters it replays.")


class ReplayIn(BaseModel):
    """Which dead letters of a run to replay (all when both are null)."""

    step: str | None = Field(None, description="Only dead letters of this step.")
    error_type: str | None = Field(None, description="Only dead letters of this error type.")


class KeyIn(BaseModel):
    """A key to make for the caller's tenant."""

    role: str = Field(..., pattern="^(viewer|operator|admin)$", description="viewer, operator or admin.")
    label: str | None = Field(None, max_length=200, description="What the key is for.")


class SecretIn(BaseModel):
    """A secret value; write-only: it is never returned."""

    value: str = Field(..., min_length=1, max_length=65536)


class TenantConfig(BaseModel):
    """Per-tenant settings a tenant admin may change (quotas are the platform's: the CLI sets them)."""

    model_config = ConfigDict(regex_engine="python-re")  # patterns with a look-ahead

    default_options: list[BeamOption] = Field(default_factory=list,
                                              description="Beam options put before each pipeline's own options.")
    env: dict[EnvName, str] = Field(default_factory=dict, json_schema_extra={"additionalProperties": False},
                                    description="Non-secret environment variables for the tenant's runs (${NAME}).")


def _prom(lines: list[str], name: str, kind: str, help_text: str, samples: dict[str, float]) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{labels} {value:g}" for labels, value in samples.items()]


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("x-api-key")
    if header:
        return header
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


def reject_unknown_query(request: Request) -> None:
    """422 naming a query parameter the operation does not take (a typo like ?limt=5 is not ignored)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    allowed, pending = set(), [route.dependant]
    while pending:  # the operation's own query parameters and those of its dependencies
        dependant = pending.pop()
        allowed |= {p.alias for p in dependant.query_params}
        pending += dependant.dependencies
    for name in request.query_params:
        if name not in allowed:
            raise HTTPException(422, detail=[{"loc": ["query", name], "type": "extra_forbidden",
                                              "msg": f"unknown query parameter; this operation takes: "
                                                     f"{sorted(allowed) or 'none'}"}])


def create_app(output_dir: str, state_url: str | None = None, allow_template_paths: bool = False) -> FastAPI:
    """The API over ``output_dir`` (tenant run folders) and ``state_url`` (default: its beam_etl_state.sqlite)."""
    root = Path(output_dir).resolve()
    state = state_url or str(root / STATE_FILE_NAME)
    store = ApiStore(state)
    sup = Supervisor(state, store)
    vault = Vault(root / "_api" / "secret.key")
    app = FastAPI(title="beam_etl", version="2", responses=ERROR_RESPONSES,
                  dependencies=[Depends(reject_unknown_query)],
                  description="Register, run and watch beam_etl pipelines, per tenant. Authenticate with an API key "
                              "in the X-API-Key header (or Authorization: Bearer).")
    app.state.supervisor, app.state.store = sup, store

    # ---- authentication, roles, audit -------------------------------------------------------------
    def principal(request: Request, _header: str | None = Security(API_KEY_HEADER)) -> auth.Principal:
        raw = _presented_key(request)
        parsed = auth.parse_key(raw) if raw else None
        row = store.key(parsed[0]) if parsed else None
        if parsed is None or row is None or row["revoked_at"] or not auth.verify(parsed[1], row["salt"], row["digest"]):
            raise HTTPException(401, detail="missing, unknown or revoked API key (header X-API-Key)",
                                headers={"WWW-Authenticate": "Bearer"})
        tenant = store.tenant(row["tenant_id"]) or {"name": "?"}
        who = auth.Principal(tenant_id=row["tenant_id"], tenant=tenant["name"], role=row["role"], key_id=row["key_id"])
        request.state.principal = who
        return who

    def role(minimum: str) -> Any:
        def check(who: auth.Principal = Depends(principal)) -> auth.Principal:
            if not who.may(minimum):  # role:check
                raise HTTPException(403, detail=f"this needs the {minimum} role; the key's role is {who.role}")
            return who
        return check

    viewer, operator, admin = role("viewer"), role("operator"), role("admin")

    @app.middleware("http")
    async def audit_trail(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        request_id = uuid.uuid4().hex[:16]
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            response.headers["X-Request-Id"] = request_id
            return response
        finally:
            if not request.url.path.startswith("/ui/static"):
                who: auth.Principal | None = getattr(request.state, "principal", None)
                store.audit({"ts": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
                             "request_id": request_id, "tenant_id": who.tenant_id if who else None,
                             "key_id": who.key_id if who else None, "role": who.role if who else None,
                             "method": request.method, "path": request.url.path, "status": status,
                             "client": request.client.host if request.client else None,
                             "duration_ms": round((time.perf_counter() - started) * 1000, 3)})

    # ---- ownership checks (each marked line is one isolation rule) --------------------------------
    def own_pipeline(who: auth.Principal, pipeline_id: str) -> Pipeline:
        found = store.pipelines(who.tenant_id, pipeline_id)  # isolation:pipeline
        if not found:
            raise HTTPException(404, detail=f"no pipeline {pipeline_id!r}")
        return Pipeline(**found[0])

    def own_run(who: auth.Principal, run_id: str) -> dict[str, Any]:
        rows = store.runs(who.tenant_id, run_id=run_id)  # isolation:run
        if not rows:
            raise HTTPException(404, detail=f"no run {run_id!r}")
        return rows[0]

    def tenant_root(tenant_id: str) -> Path:
        return root / "tenants" / tenant_id

    def run_dir(row: dict[str, Any]) -> Path:
        return tenant_root(row["tenant_id"]) / row["run_id"]

    def log_path(row: dict[str, Any]) -> Path:
        return tenant_root(row["tenant_id"]) / "_logs" / f"{row['run_id']}.log"

    def tenant_secrets(who: auth.Principal) -> dict[str, str]:
        rows = store.secrets(who.tenant_id)  # isolation:secrets
        return {r["name"]: vault.open(r["token"]) for r in rows}

    # ---- quotas -----------------------------------------------------------------------------------
    def enforce_quotas(who: auth.Principal) -> None:
        tenant = store.tenant(who.tenant_id) or {}
        runs = store.runs(who.tenant_id)
        limit = tenant.get("max_concurrent_runs")
        if limit is not None:
            active = sum(1 for r in runs if sup.status(r).status in ACTIVE)
            if active >= limit:
                raise HTTPException(429, headers={"Retry-After": "30"},
                                    detail=f"quota: tenant {who.tenant!r} has {active} run(s) going; "
                                           f"max_concurrent_runs is {limit}")
        limit = tenant.get("max_rows_per_day")
        if limit is not None:
            used = rows_today(runs)
            if used >= limit:
                raise HTTPException(429, headers={"Retry-After": str(seconds_to_midnight())},
                                    detail=f"quota: tenant {who.tenant!r} read {used} rows today (UTC); "
                                           f"max_rows_per_day is {limit}")

    def rows_today(runs: list[dict[str, Any]]) -> int:
        today = now()[:10]
        total = 0
        for r in runs:
            if r["started_at"][:10] == today:
                record = sup.ledger_row(r["run_id"])
                total += int((record.totals or {}).get("records_read", 0)) if record else 0
        return total

    def seconds_to_midnight() -> int:
        current = dt.datetime.now(dt.UTC)
        midnight = (current + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        return int((midnight - current).total_seconds()) + 1

    def launch(who: auth.Principal, pipeline: Pipeline, replay: tuple[str, ReplayIn] | None = None) -> RunStarted:
        enforce_quotas(who)
        tenant = store.tenant(who.tenant_id) or {"config": {}, "name": who.tenant}
        config = TenantConfig(**tenant["config"])
        run_id, port = new_run_id(), free_port()
        args = run_command(pipeline, run_id=run_id, output_dir=tenant_root(who.tenant_id), metrics_port=port,
                           default_options=config.default_options,
                           replay=(str(tenant_root(who.tenant_id) / replay[0]), replay[1].step, replay[1].error_type)
                           if replay else None)
        env = child_env({**config.env, **tenant_secrets(who), "BEAM_ETL_TENANT": tenant["name"],
                         STATE_URL_ENV: state})  # last: a tenant's env cannot move the state store
        row = {"run_id": run_id, "pipeline_id": pipeline.id, "tenant_id": who.tenant_id, "metrics_port": port,
               "kind": "replay" if replay else "run", "replay_of": replay[0] if replay else None}
        pid = sup.start(args, log_path(row), env, row)
        return RunStarted(run_id=run_id, pipeline_id=pipeline.id, pid=pid, replay_of=row["replay_of"])

    # ---- endpoints ----------------------------------------------------------------------------------
    @app.get("/health")
    def health() -> dict[str, str]:
        """Liveness: answers without a key."""
        return {"status": "ok"}

    @app.get("/whoami")
    def whoami(who: auth.Principal = Depends(viewer)) -> dict[str, str]:
        """The tenant and role of the presented key."""
        return {"tenant_id": who.tenant_id, "tenant": who.tenant, "role": who.role, "key_id": who.key_id}

    @app.post("/pipelines", status_code=201, response_model=Pipeline)
    def register(body: PipelineIn, who: auth.Principal = Depends(operator)) -> Pipeline:
        """Validates the template with its params and stores the registration (names are unique per tenant)."""
        if store.pipelines(who.tenant_id, name=body.name):
            raise HTTPException(409, detail=f"a pipeline named {body.name!r} is already registered")
        validate_pipeline(body, allow_paths=allow_template_paths)
        row = {"id": uuid.uuid4().hex[:12], "tenant_id": who.tenant_id, "created_at": now(), **body.model_dump()}
        store.add_pipeline(row)
        return Pipeline(**row)

    @app.get("/pipelines", response_model=list[Pipeline])
    def list_pipelines(who: auth.Principal = Depends(viewer)) -> list[Pipeline]:
        """The tenant's registrations, oldest first."""
        rows = store.pipelines(who.tenant_id)  # isolation:pipeline-list
        return [Pipeline(**r) for r in rows]

    @app.get("/pipelines/{pipeline_id}", response_model=Pipeline)
    def get_pipeline(pipeline_id: str, who: auth.Principal = Depends(viewer)) -> Pipeline:
        """One registration; 404 when unknown or another tenant's."""
        return own_pipeline(who, pipeline_id)

    @app.post("/pipelines/{pipeline_id}/start", status_code=202, response_model=RunStarted)
    def start(pipeline_id: str, who: auth.Principal = Depends(operator)) -> RunStarted:
        """Starts a run in a supervised subprocess; 409 while one is running; 429 over a quota."""
        pipeline = own_pipeline(who, pipeline_id)
        latest = store.runs(who.tenant_id, pipeline_id)
        if latest and sup.status(latest[0]).status in ACTIVE:
            raise HTTPException(409, detail=f"run {latest[0]['run_id']} of this pipeline is still running")
        return launch(who, pipeline)

    @app.post("/pipelines/{pipeline_id}/stop", response_model=RunStatus)
    def stop(pipeline_id: str, who: auth.Principal = Depends(operator)) -> RunStatus:
        """Terminates the latest run (SIGTERM, then SIGKILL after a grace period); 409 when none runs."""
        own_pipeline(who, pipeline_id)
        latest = store.runs(who.tenant_id, pipeline_id)
        if not latest or sup.status(latest[0]).status not in ACTIVE:
            raise HTTPException(409, detail="no run of this pipeline is running")
        sup.stop(latest[0])
        return sup.status(store.runs(who.tenant_id, pipeline_id)[0])

    @app.get("/pipelines/{pipeline_id}/status", response_model=RunStatus)
    def status(pipeline_id: str, who: auth.Principal = Depends(viewer)) -> RunStatus:
        """The latest run's status: the ledger's when it finished, else the process state."""
        own_pipeline(who, pipeline_id)
        latest = store.runs(who.tenant_id, pipeline_id)
        return sup.status(latest[0]) if latest else RunStatus(pipeline_id=pipeline_id, status="never_run")

    @app.get("/pipelines/{pipeline_id}/runs", response_model=list[RunStatus])
    def pipeline_runs(pipeline_id: str, who: auth.Principal = Depends(viewer)) -> list[RunStatus]:
        """Every run of the pipeline (replays included), newest first."""
        own_pipeline(who, pipeline_id)
        return [sup.status(r) for r in store.runs(who.tenant_id, pipeline_id)]

    @app.get("/runs/{run_id}")
    def get_run(run_id: str, who: auth.Principal = Depends(viewer)) -> dict[str, Any]:
        """summary.json (per-step counts, totals, dead letters), the ledger row and the lineage event count."""
        row = own_run(who, run_id)
        folder = run_dir(row)
        summary_path = folder / "summary.json"
        summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else None
        record = sup.ledger_row(run_id)
        totals = (summary or {}).get("totals") or (record.totals if record else {}) or {}
        return {"run_id": run_id, "pipeline_id": row["pipeline_id"], "status": sup.status(row).status,
                "kind": row["kind"], "replay_of": row["replay_of"], "summary": summary,
                "steps": (summary or {}).get("steps") or (record.steps if record else {}),
                "totals": totals, "dead_letters": totals.get("dead_letters", 0),
                "ledger": record.as_dict() if record else None,
                "lineage_events": run_data.lineage_graph(folder)["events"]}

    @app.get("/runs/{run_id}/counters")
    def run_counters(run_id: str, who: auth.Principal = Depends(viewer)) -> dict[str, Any]:
        """Per-step records in/out/filtered/failed: live while the run goes, final after."""
        row = own_run(who, run_id)
        current = sup.status(row).status
        return {"run_id": run_id, "status": current,
                **run_data.counters(run_dir(row), row["metrics_port"], current in ACTIVE)}

    @app.get("/runs/{run_id}/dlq")
    def run_dlq(run_id: str, step: str | None = None, error_type: str | None = None,
                limit: int = Query(50, ge=1, le=1000), offset: int = Query(0, ge=0),
                who: auth.Principal = Depends(viewer)) -> dict[str, Any]:
        """A page of the run's dead letters (envelopes), filtered by step / error type."""
        row = own_run(who, run_id)
        return run_data.dead_letters(run_dir(row), step, error_type, limit, offset)

    @app.post("/runs/{run_id}/dlq/replay", status_code=202, response_model=RunStarted)
    def replay(run_id: str, body: ReplayIn | None = None, who: auth.Principal = Depends(operator)) -> RunStarted:
        """Runs the pipeline again on the run's dead letters (python -m beam_etl.dlq replay): a new run."""
        row = own_run(who, run_id)
        selection = body or ReplayIn()
        if run_data.dead_letters(run_dir(row), selection.step, selection.error_type, 1, 0)["total"] == 0:
            raise HTTPException(409, detail=f"run {run_id} has no dead letters matching {selection.model_dump()}")
        return launch(who, own_pipeline(who, row["pipeline_id"]), replay=(run_id, selection))

    @app.get("/runs/{run_id}/lineage")
    def run_lineage(run_id: str, who: auth.Principal = Depends(viewer)) -> dict[str, Any]:
        """Datasets and jobs of the run's OpenLineage events, as nodes and edges."""
        return run_data.lineage_graph(run_dir(own_run(who, run_id)))

    @app.get("/runs/{run_id}/report", responses=HTML_200)
    def run_report(run_id: str, who: auth.Principal = Depends(viewer)) -> HTMLResponse:
        """The run's HTML report (built on first request, once the run has a summary)."""
        folder = run_dir(own_run(who, run_id))
        if not (folder / "summary.json").is_file():
            raise HTTPException(409, detail=f"run {run_id} has no summary yet: the report exists once it ends")
        from beam_etl.ops.report import write_report

        path = folder / "report.html"
        if not path.is_file():
            write_report(folder, path)
        return HTMLResponse(path.read_text(encoding="utf-8"))

    @app.get("/runs/{run_id}/logs", responses=TEXT_200)
    def run_logs(run_id: str, tail: int = Query(200, ge=1, le=run_data.MAX_LOG_TAIL),
                 who: auth.Principal = Depends(viewer)) -> PlainTextResponse:
        """The last lines of the run's output, with the tenant's secret values redacted."""
        row = own_run(who, run_id)
        text = run_data.log_tail(log_path(row), tail, list(tenant_secrets(who).values()))
        return PlainTextResponse(text)

    @app.get("/tenant")
    def get_tenant(who: auth.Principal = Depends(viewer)) -> dict[str, Any]:
        """The caller's tenant: configuration, quotas and today's usage."""
        tenant = store.tenant(who.tenant_id) or {}
        runs = store.runs(who.tenant_id)
        return {"id": who.tenant_id, "name": who.tenant, "config": tenant.get("config", {}),
                "quotas": {"max_concurrent_runs": tenant.get("max_concurrent_runs"),
                           "max_rows_per_day": tenant.get("max_rows_per_day")},
                "usage": {"active_runs": sum(1 for r in runs if sup.status(r).status in ACTIVE),
                          "rows_today": rows_today(runs)}}

    @app.put("/tenant/config", response_model=TenantConfig)
    def put_tenant_config(body: TenantConfig, who: auth.Principal = Depends(admin)) -> TenantConfig:
        """Replaces the tenant's configuration (admin)."""
        store.update_tenant(who.tenant_id, config=body.model_dump())
        return body

    @app.get("/keys")
    def list_keys(who: auth.Principal = Depends(admin)) -> list[dict[str, Any]]:
        """The tenant's keys (ids, roles, labels; never the secret)."""
        return store.keys(who.tenant_id)  # isolation:keys

    @app.post("/keys", status_code=201)
    def create_key(body: KeyIn, who: auth.Principal = Depends(admin)) -> dict[str, str]:
        """Makes a key for the tenant; the response is the only time ``api_key`` is shown."""
        made = auth.new_key()
        store.add_key(made.key_id, who.tenant_id, body.role, made.salt, made.digest, body.label)
        return {"key_id": made.key_id, "api_key": made.api_key, "role": body.role, "tenant_id": who.tenant_id}

    @app.delete("/keys/{key_id}", status_code=204)
    def revoke_key(key_id: str, who: auth.Principal = Depends(admin)) -> Response:
        """Revokes one of the tenant's keys at once (404 for another tenant's)."""
        if not store.revoke_key(who.tenant_id, key_id):  # isolation:key-revoke
            raise HTTPException(404, detail=f"no active key {key_id!r}")
        return Response(status_code=204)

    @app.get("/secrets")
    def list_secrets(who: auth.Principal = Depends(admin)) -> list[dict[str, str]]:
        """Names and update times of the tenant's secrets (values are write-only)."""
        rows = store.secrets(who.tenant_id)  # isolation:secret-list
        return [{"name": r["name"], "updated_at": r["updated_at"]} for r in rows]

    @app.put("/secrets/{name}", status_code=204)
    def put_secret(body: SecretIn, name: str = SECRET_NAME, who: auth.Principal = Depends(admin)) -> Response:
        """Stores a secret (encrypted) in the tenant's namespace; runs see it as ``${NAME}``."""
        store.put_secret(who.tenant_id, name, vault.seal(body.value))
        return Response(status_code=204)

    @app.delete("/secrets/{name}", status_code=204)
    def delete_secret(name: str = SECRET_NAME, who: auth.Principal = Depends(admin)) -> Response:
        """Deletes a secret of the tenant."""
        if not store.delete_secret(who.tenant_id, name):
            raise HTTPException(404, detail=f"no secret {name!r}")
        return Response(status_code=204)

    @app.get("/audit")
    def audit(limit: int = Query(AUDIT_PAGE, ge=1, le=10000), who: auth.Principal = Depends(admin)) -> list[dict]:
        """The tenant's API calls, newest first (who, what, when, outcome)."""
        return store.audit_entries(who.tenant_id, limit)  # isolation:audit

    @app.get("/metrics", responses=TEXT_200)
    def metrics(who: auth.Principal = Depends(viewer)) -> Response:
        """The tenant's API-level counters in the Prometheus text format (per-run: each run's metrics.prom)."""
        runs = store.runs(who.tenant_id)  # isolation:metrics
        counts = dict.fromkeys(RUN_STATUSES, 0)
        for row in runs:
            counts[sup.status(row).status] += 1
        label = f'tenant="{who.tenant}"'
        lines: list[str] = []
        _prom(lines, "beam_etl_api_pipelines_registered", "gauge", "Pipelines registered.",
              {f"{{{label}}}": len(store.pipelines(who.tenant_id))})
        _prom(lines, "beam_etl_api_runs_started_total", "counter", "Runs started through the API.",
              {f"{{{label}}}": len(runs)})
        _prom(lines, "beam_etl_api_runs", "gauge", "Runs started through the API, by current status.",
              {f'{{{label},status="{s}"}}': n for s, n in counts.items()})
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> Response:
        """FastAPI's handler, except that a 405 lists every method of every route matching the path."""
        if err.status_code == 405:
            methods = sorted({m for route in app.routes if isinstance(route, APIRoute)
                              and route.matches(request.scope)[0] != Match.NONE for m in route.methods})
            return JSONResponse({"detail": err.detail}, status_code=405, headers={"Allow": ", ".join(methods)})
        return await http_exception_handler(request, err)

    @app.exception_handler(VaultError)
    async def vault_error(_request: Request, err: Exception) -> JSONResponse:
        return JSONResponse(status_code=500, content={"detail": str(err)})

    mount_dashboard(app)  # GET /ui and /ui/static/* (dashboard.py): no key needed for the page itself
    return app


def new_run_id() -> str:
    """A run id (``YYYYmmddTHHMMSSZ-<hex>``) as the runs use."""
    from beam_etl.ops.context import new_run_id as make

    return make()
