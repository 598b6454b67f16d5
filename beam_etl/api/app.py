"""The REST API: register pipelines, start and stop their runs, read their outcome.

``create_app(output_dir, state_url)`` returns a FastAPI app. Registrations live in the table
``beam_etl_pipelines`` and the runs the API started in ``beam_etl_api_runs``, both in the state
store that also holds the run ledger (``beam_etl_runs``), so a restarted API finds them again.
A run is ``python -m beam_etl.run ... --output-dir <output_dir> --state <store> --run-id <id>
--quiet`` in its own process group; its status comes from the ledger row when the run wrote one,
else from the process. See docs/api.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from fastapi import FastAPI, HTTPException, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

import beam_etl
from beam_etl import registry
from beam_etl.ops.context import new_run_id
from beam_etl.ops.ledger import RunLedger, RunRecord
from beam_etl.ops.state import STATE_FILE_NAME, StateError, open_store
from beam_etl.spec import TemplateError, build_spec, load_document, resolve_template_path

PIPELINES = "beam_etl_pipelines"
RUNS = "beam_etl_api_runs"
STOP_GRACE_SECONDS = 10.0
#: statuses a run may show: the ledger's, plus the API's own
RUN_STATUSES = ("starting", "running", "succeeded", "failed", "budget_exceeded", "stopped", "lost")


class PipelineIn(BaseModel):
    """A pipeline to register."""

    name: str = Field(..., min_length=1, max_length=200, description="Unique name of this registration.")
    template: str = Field(..., min_length=1,
                          description="A bundled template name (e.g. quickstart) or the path of a YAML template.")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="Template params; each is passed as --set params.NAME=VALUE.")
    options: list[str] = Field(default_factory=list,
                               description="Beam pipeline options passed through, e.g. --runner=DirectRunner.")


class Pipeline(PipelineIn):
    """A registered pipeline."""

    id: str = Field(..., description="Identifier assigned by the API.")
    created_at: str = Field(..., description="UTC time of registration.")


class RunStarted(BaseModel):
    """A run the API started."""

    run_id: str = Field(..., description="The run id (also the folder under the output dir and the ledger key).")
    pipeline_id: str = Field(..., description="The pipeline it runs.")
    pid: int = Field(..., description="Process id of the run.")


class RunStatus(BaseModel):
    """Where a run stands."""

    run_id: str | None = Field(None, description="The latest run, or null when the pipeline never ran.")
    status: str = Field(..., description=f"One of: never_run, {', '.join(RUN_STATUSES)}.")
    pid: int | None = Field(None, description="Process id of the run.")
    exit_code: int | None = Field(None, description="Exit code, once the process ended under this API.")
    started_at: str | None = Field(None, description="UTC time the API started the run.")
    ended_at: str | None = Field(None, description="UTC time the run ended (ledger) or was stopped.")
    error: str | None = Field(None, description="The ledger's redacted error, if any.")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _set_args(params: dict[str, Any]) -> list[str]:
    """``--set params.k=v`` pairs; non-strings as JSON (a YAML scalar/flow value)."""
    out = []
    for key, value in params.items():
        text = value if isinstance(value, str) else json.dumps(value)
        out += ["--set", f"params.{key}={text}"]
    return out


def _child_env() -> dict[str, str]:
    """This environment, with the beam_etl the API runs first on PYTHONPATH (runs use the same code)."""
    package_root = str(Path(beam_etl.__file__).resolve().parents[1])
    paths = [package_root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def validate_pipeline(body: PipelineIn) -> None:
    """Resolves and validates the template with the params applied; raises HTTP 422 naming the field."""
    def fail(field: str, message: str) -> HTTPException:
        return HTTPException(422, detail=[{"loc": ["body", *field.split(".")], "msg": message,
                                           "type": "value_error"}])

    try:
        path = resolve_template_path(body.template)
        doc = load_document(path)
    except TemplateError as err:
        raise fail("template", str(err)) from None
    known = doc.get("params") or {}
    for key in body.params:
        if key not in known:
            raise fail(f"params.{key}", f"unknown param {key!r}; template {path.stem!r} has: {sorted(known)}")
    for option in body.options:
        if not option.startswith("--"):
            raise fail("options", f"{option!r}: Beam options are flags such as --runner=DirectRunner")
    registry.load_builtins()
    overrides = _set_args(body.params)[1::2]
    try:
        build_spec(doc, overrides, {"run_dir": "/validate", "run_id": "validate"})
    except TemplateError as err:
        raise fail("params" if body.params else "template", str(err)) from None


class ApiStore:
    """The API's two tables in the state store (SQLite or PostgreSQL)."""

    def __init__(self, url: str) -> None:
        self._store = open_store(url)
        self.p = self._store.placeholder
        with self.cursor() as cur:
            cur.execute(f"CREATE TABLE IF NOT EXISTS {PIPELINES} (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
                        "template TEXT NOT NULL, params TEXT NOT NULL, options TEXT NOT NULL, "
                        "created_at TEXT NOT NULL)")
            cur.execute(f"CREATE TABLE IF NOT EXISTS {RUNS} (run_id TEXT PRIMARY KEY, pipeline_id TEXT NOT NULL, "
                        "pid INTEGER NOT NULL, status TEXT NOT NULL, exit_code INTEGER, started_at TEXT NOT NULL, "
                        "ended_at TEXT)")

    @contextlib.contextmanager
    def cursor(self) -> Iterator[Any]:
        with self._store._conn() as conn:  # the store's transaction, as the run ledger uses it
            yield conn.cursor()

    def add_pipeline(self, p: Pipeline) -> None:
        with self.cursor() as cur:
            cur.execute(f"INSERT INTO {PIPELINES} VALUES ({', '.join([self.p] * 6)})",
                        (p.id, p.name, p.template, json.dumps(p.params), json.dumps(p.options), p.created_at))

    def pipelines(self, pipeline_id: str | None = None) -> list[Pipeline]:
        sql = f"SELECT id, name, template, params, options, created_at FROM {PIPELINES}"
        with self.cursor() as cur:
            cur.execute(sql + (f" WHERE id = {self.p}" if pipeline_id else "") + " ORDER BY created_at, id",
                        (pipeline_id,) if pipeline_id else ())
            rows = cur.fetchall()
        return [Pipeline(id=r[0], name=r[1], template=r[2], params=json.loads(r[3]), options=json.loads(r[4]),
                         created_at=r[5]) for r in rows]

    def add_run(self, run_id: str, pipeline_id: str, pid: int) -> None:
        with self.cursor() as cur:
            cur.execute(f"INSERT INTO {RUNS} (run_id, pipeline_id, pid, status, started_at) "
                        f"VALUES ({self.p}, {self.p}, {self.p}, 'started', {self.p})",
                        (run_id, pipeline_id, pid, _now()))

    def end_run(self, run_id: str, status: str, exit_code: int | None) -> None:
        with self.cursor() as cur:
            cur.execute(f"UPDATE {RUNS} SET status = {self.p}, exit_code = {self.p}, ended_at = {self.p} "
                        f"WHERE run_id = {self.p}", (status, exit_code, _now(), run_id))

    def runs(self, pipeline_id: str | None = None, run_id: str | None = None) -> list[dict[str, Any]]:
        """Newest first."""
        cols = ("run_id", "pipeline_id", "pid", "status", "exit_code", "started_at", "ended_at")
        where, args = "", ()
        if pipeline_id:
            where, args = f" WHERE pipeline_id = {self.p}", (pipeline_id,)
        elif run_id:
            where, args = f" WHERE run_id = {self.p}", (run_id,)
        with self.cursor() as cur:
            cur.execute(f"SELECT {', '.join(cols)} FROM {RUNS}{where} ORDER BY started_at DESC, run_id DESC", args)
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


class Supervisor:
    """Starts, watches and stops run processes; reads their status from the ledger and the OS."""

    def __init__(self, output_dir: Path, state_url: str, store: ApiStore) -> None:
        self.output_dir, self.state_url, self.store = output_dir, state_url, store
        self.ledger = RunLedger(state_url)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}  # runs started by this API process

    def start(self, p: Pipeline) -> RunStarted:
        run_id = new_run_id()
        log_dir = self.output_dir / "_api"
        log_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "beam_etl.run", "--template", p.template, *_set_args(p.params),
               "--output-dir", str(self.output_dir), "--state", self.state_url, "--run-id", run_id, "--quiet",
               *p.options]
        with open(log_dir / f"{run_id}.log", "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=_child_env(), start_new_session=True)  # own group: stop reaches children
        self.procs[run_id] = proc
        self.store.add_run(run_id, p.id, proc.pid)
        return RunStarted(run_id=run_id, pipeline_id=p.id, pid=proc.pid)

    def _alive(self, row: dict[str, Any]) -> bool:
        proc = self.procs.get(row["run_id"])
        if proc is not None:
            code = proc.poll()
            if code is not None:
                self.procs.pop(row["run_id"])
                self.store.end_run(row["run_id"], "exited", code)
                row.update(status="exited", exit_code=code)
            return code is None
        if row["status"] != "started":
            return False
        try:  # a run started before this API process: alive if its pid is (and is not a zombie)
            return psutil.Process(row["pid"]).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def status(self, row: dict[str, Any]) -> RunStatus:
        alive = self._alive(row)
        record: RunRecord | None = self._ledger_row(row["run_id"])
        out = RunStatus(run_id=row["run_id"], status="running", pid=row["pid"], exit_code=row["exit_code"],
                        started_at=row["started_at"], ended_at=row["ended_at"])
        if row["status"] == "stopped":
            out.status = "stopped"
        elif record is not None and record.status != "running":
            out.status, out.ended_at, out.error = record.status, record.ended_at, record.error
        elif alive:
            out.status = "running" if record is not None else "starting"
        elif row["status"] == "exited" and record is None:
            out.status = "failed" if row["exit_code"] else "succeeded"  # e.g. a config error: no ledger row
        else:
            out.status = "lost"  # the process is gone and the ledger still says running (or has no row)
        return out

    def _ledger_row(self, run_id: str) -> RunRecord | None:
        try:
            return self.ledger.get(run_id)
        except StateError:
            return None

    def stop(self, row: dict[str, Any], grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM to the run's process group, SIGKILL after ``grace`` seconds; marks the run stopped."""
        pid = row["pid"]
        proc = self.procs.pop(row["run_id"], None)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (proc.poll() is None if proc else psutil.pid_exists(pid)):
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        code = proc.wait() if proc is not None else None
        self.store.end_run(row["run_id"], "stopped", code)


def _prom(lines: list[str], name: str, kind: str, help_text: str, samples: dict[str, float]) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{labels} {value:g}" for labels, value in samples.items()]


def create_app(output_dir: str, state_url: str | None = None) -> FastAPI:
    """The API over ``output_dir`` (run folders) and ``state_url`` (default: its beam_etl_state.sqlite)."""
    root = Path(output_dir).resolve()
    state = state_url or str(root / STATE_FILE_NAME)
    store = ApiStore(state)
    sup = Supervisor(root, state, store)
    app = FastAPI(title="beam_etl", description="Register, run and watch beam_etl pipelines.", version="1")
    app.state.supervisor = sup

    def pipeline_or_404(pipeline_id: str) -> Pipeline:
        found = store.pipelines(pipeline_id)
        if not found:
            raise HTTPException(404, detail=f"no pipeline {pipeline_id!r}")
        return found[0]

    @app.post("/pipelines", status_code=201, response_model=Pipeline)
    def register(body: PipelineIn) -> Pipeline:
        """Validates the template with its params and stores the registration."""
        if any(p.name == body.name for p in store.pipelines()):
            raise HTTPException(409, detail=f"a pipeline named {body.name!r} is already registered")
        validate_pipeline(body)
        pipeline = Pipeline(id=uuid.uuid4().hex[:12], created_at=_now(), **body.model_dump())
        store.add_pipeline(pipeline)
        return pipeline

    @app.get("/pipelines", response_model=list[Pipeline])
    def list_pipelines() -> list[Pipeline]:
        """Every registration, oldest first."""
        return store.pipelines()

    @app.get("/pipelines/{pipeline_id}", response_model=Pipeline)
    def get_pipeline(pipeline_id: str) -> Pipeline:
        """One registration."""
        return pipeline_or_404(pipeline_id)

    @app.post("/pipelines/{pipeline_id}/start", status_code=202, response_model=RunStarted)
    def start(pipeline_id: str) -> RunStarted:
        """Starts a run in a supervised subprocess; 409 while one is running."""
        pipeline = pipeline_or_404(pipeline_id)
        latest = store.runs(pipeline_id)
        if latest and sup.status(latest[0]).status in ("starting", "running"):
            raise HTTPException(409, detail=f"run {latest[0]['run_id']} of this pipeline is still running")
        return sup.start(pipeline)

    @app.post("/pipelines/{pipeline_id}/stop", response_model=RunStatus)
    def stop(pipeline_id: str) -> RunStatus:
        """Terminates the latest run (SIGTERM, then SIGKILL after a grace period); 409 when none runs."""
        pipeline_or_404(pipeline_id)
        latest = store.runs(pipeline_id)
        if not latest or sup.status(latest[0]).status not in ("starting", "running"):
            raise HTTPException(409, detail="no run of this pipeline is running")
        sup.stop(latest[0])
        return sup.status(store.runs(pipeline_id)[0])

    @app.get("/pipelines/{pipeline_id}/status", response_model=RunStatus)
    def status(pipeline_id: str) -> RunStatus:
        """The latest run's status: the ledger's when it finished, else the process state."""
        pipeline_or_404(pipeline_id)
        latest = store.runs(pipeline_id)
        return sup.status(latest[0]) if latest else RunStatus(status="never_run")

    @app.get("/runs/{run_id}")
    def get_run(run_id: str) -> dict[str, Any]:
        """summary.json (per-step counts, totals, dead letters), the ledger row and the lineage event count."""
        if not run_id.replace("-", "").replace("_", "").isalnum():
            raise HTTPException(404, detail=f"no run {run_id!r}")
        run_dir = root / run_id
        summary_path, lineage_path = run_dir / "summary.json", run_dir / "lineage.jsonl"
        summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else None
        record = sup._ledger_row(run_id)
        rows = store.runs(run_id=run_id)
        if summary is None and record is None and not rows:
            raise HTTPException(404, detail=f"no run {run_id!r}")
        events = 0
        if lineage_path.is_file():
            with lineage_path.open(encoding="utf-8") as f:
                events = sum(1 for line in f if line.strip())
        totals = (summary or {}).get("totals") or (record.totals if record else {})
        return {"run_id": run_id, "status": sup.status(rows[0]).status if rows else (record.status if record else None),
                "summary": summary, "steps": (summary or {}).get("steps") or (record.steps if record else {}),
                "totals": totals, "dead_letters": totals.get("dead_letters", 0),
                "ledger": record.as_dict() if record else None, "lineage_events": events}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> Response:
        """API-level counters in the Prometheus text format (per-run metrics: each run's metrics.prom)."""
        runs = store.runs()
        counts = dict.fromkeys(RUN_STATUSES, 0)
        for row in runs:
            counts[sup.status(row).status] += 1
        lines: list[str] = []
        _prom(lines, "beam_etl_api_pipelines_registered", "gauge", "Pipelines registered.",
              {"": len(store.pipelines())})
        _prom(lines, "beam_etl_api_runs_started_total", "counter", "Runs started through the API.", {"": len(runs)})
        _prom(lines, "beam_etl_api_runs", "gauge", "Runs started through the API, by current status.",
              {f'{{status="{s}"}}': n for s, n in counts.items()})
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    return app
