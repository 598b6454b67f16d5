"""Run processes: start them in their own process group, tell where they stand, stop them.

A run's status comes from the run ledger when the run wrote a final row, else from the process
(psutil for runs an earlier API process started). The child environment is built from an
allow-list plus the tenant's own variables and secrets, so a run never inherits the API's
secrets or another tenant's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from pydantic import BaseModel, Field

import beam_etl
from beam_etl.api.store import ApiStore
from beam_etl.ops.ledger import RunLedger, RunRecord
from beam_etl.ops.state import StateError

STOP_GRACE_SECONDS = 10.0
#: statuses a run may show: the ledger's, plus the API's own
RUN_STATUSES = ("starting", "running", "succeeded", "failed", "budget_exceeded", "stopped", "lost")
ACTIVE = ("starting", "running")
#: environment variables a run inherits from the API process; everything else is dropped
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "JAVA_HOME", "GOPATH",
                 "HF_HUB_OFFLINE", "HF_HOME", "TRANSFORMERS_OFFLINE", "VIRTUAL_ENV", "PYTHONHASHSEED",
                 "BEAM_ETL_RUNNER_CACHE")


class RunStatus(BaseModel):
    """Where a run stands."""

    run_id: str | None = Field(None, description="The latest run, or null when the pipeline never ran.")
    pipeline_id: str | None = Field(None, description="The pipeline the run belongs to.")
    status: str = Field(..., description=f"One of: never_run, {', '.join(RUN_STATUSES)}.")
    kind: str | None = Field(None, description="run, or replay (a DLQ replay).")
    replay_of: str | None = Field(None, description="For a replay: the run whose dead letters it replays.")
    pid: int | None = Field(None, description="Process id of the run.")
    exit_code: int | None = Field(None, description="Exit code, once the process ended under this API.")
    started_at: str | None = Field(None, description="UTC time the API started the run.")
    ended_at: str | None = Field(None, description="UTC time the run ended (ledger) or was stopped.")
    error: str | None = Field(None, description="The ledger's redacted error, if any.")


def free_port() -> int:
    """A free loopback TCP port (for the run's live metrics endpoint)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The allow-listed environment, this beam_etl first on PYTHONPATH, then ``extra`` (tenant vars, secrets)."""
    env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
    env.update({k: v for k, v in os.environ.items() if k.startswith("LC_")})
    package_root = str(Path(beam_etl.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, os.environ.get("PYTHONPATH", "").split(
        os.pathsep))])
    env.update(extra)
    return env


class Supervisor:
    """Starts, watches and stops run processes."""

    def __init__(self, state_url: str, store: ApiStore) -> None:
        self.state_url, self.store = state_url, store
        self.ledger = RunLedger(state_url)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}  # runs started by this API process

    def start(self, args: list[str], log_path: Path, env: dict[str, str], run: dict[str, Any]) -> int:
        """Starts ``python <args>`` in its own process group; records ``run``; returns the pid."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self.procs[run["run_id"]] = proc
        self.store.add_run({**run, "pid": proc.pid})
        return proc.pid

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
        record = self.ledger_row(row["run_id"])
        out = RunStatus(run_id=row["run_id"], pipeline_id=row["pipeline_id"], status="running", kind=row.get("kind"),
                        replay_of=row.get("replay_of"), pid=row["pid"], exit_code=row["exit_code"],
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

    def ledger_row(self, run_id: str) -> RunRecord | None:
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
