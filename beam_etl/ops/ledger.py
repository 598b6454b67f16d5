"""The run ledger: one row per run in the state store (table ``beam_etl_runs``), the audit trail.

``start_run`` writes the row with status ``running`` when a run begins; ``finish_run`` (called
whenever ``run.py`` writes ``summary.json``) adds the summary's ``cost`` and updates the row with
the outcome (``succeeded``, ``failed`` or ``budget_exceeded``), counts and the error. A run that
crashed, or was killed, keeps ``running``.

A row holds: what ran (pipeline, template path and sha256, the resolved configuration with
secrets hidden, redacted overrides), who and where (user, host, pid, Python/Beam versions,
tenant), how (runner), when (start, end, seconds) and what happened (per-step counts, totals,
cost, outcome, redacted error). The store is the one of the incremental state
(``beam_etl.ops.state``): a SQLite file or PostgreSQL, same URL. Ledger failures never fail a run:
they are logged.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import hashlib
import json
import logging
import os
import platform
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from beam_etl.ops.cost import CostMeter
from beam_etl.ops.logging import TENANT_ENV, mask_secrets, settings
from beam_etl.ops.secrets import REDACTED, SECRET_KEY_RE
from beam_etl.ops.state import StateError, open_store

TABLE = "beam_etl_runs"
STATUSES = ("running", "succeeded", "failed", "budget_exceeded")
DLQ_STEP = "__dlq__"  # build.DLQ_STEP (ops/ must not import build)
#: names whose value is hidden whatever it is; plain ``key``/``keys`` only hide scalars (lists of
#: column names such as ``key: [order_id]`` stay readable)
SECRET_NAME_RE = re.compile(SECRET_KEY_RE.pattern + r"|pwd|credentials?|private|auth", re.IGNORECASE)
KEY_NAME_RE = re.compile(r"key", re.IGNORECASE)
_JSON_COLUMNS = ("config", "environment", "steps", "totals", "cost")
_COLUMNS = ("run_id", "pipeline", "status", "runner", "template", "template_sha256", "user_name", "host", "tenant",
            "started_at", "ended_at", "seconds", "error") + _JSON_COLUMNS

log = logging.getLogger("beam_etl.ledger")


@dataclasses.dataclass
class RunRecord:
    """One row of the ledger."""

    run_id: str
    pipeline: str
    status: str = "running"
    runner: str = ""
    template: str = ""
    template_sha256: str = ""
    user_name: str = ""
    host: str = ""
    tenant: str | None = None
    started_at: str = ""
    ended_at: str | None = None
    seconds: float | None = None
    error: str | None = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    environment: dict[str, Any] = dataclasses.field(default_factory=dict)
    steps: dict[str, Any] = dataclasses.field(default_factory=dict)
    totals: dict[str, Any] = dataclasses.field(default_factory=dict)
    cost: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------
# Redaction of what is stored
# --------------------------------------------------------------------------------------


def redact_config(value: Any, name: str = "") -> Any:
    """A config tree with secret-named values masked and registered secrets / URL passwords redacted."""
    if name and SECRET_NAME_RE.search(name) and value not in (None, "", [], {}):
        return REDACTED
    if name and KEY_NAME_RE.search(name) and isinstance(value, (str, bytes, int, float)) \
            and not isinstance(value, bool):
        return REDACTED
    if isinstance(value, Mapping):
        return {str(k): redact_config(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_config(v) for v in value]
    if isinstance(value, str):
        return mask_secrets(value)
    return value


def redact_override(text: str) -> str:
    """``dotted.key=value`` with the value hidden when the last key looks secret."""
    key, sep, value = text.partition("=")
    leaf = key.rsplit(".", 1)[-1]
    if sep and (SECRET_NAME_RE.search(leaf) or KEY_NAME_RE.search(leaf)):
        return f"{key}={REDACTED}"
    return mask_secrets(text)


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------


class RunLedger:
    """The ``beam_etl_runs`` table in the store at ``url`` (a SQLite path/URL or postgresql://...)."""

    def __init__(self, url: str) -> None:
        self._store = open_store(url)  # same parsing, connections and credential handling as the state

    def __repr__(self) -> str:
        return repr(self._store)

    def _connection(self) -> Any:
        return self._store._conn()  # the state store's transaction: commit on success, rollback on error

    def _ensure(self, cur: Any) -> None:
        text = [f"{c} TEXT" for c in _COLUMNS if c not in ("run_id", "seconds", "pipeline", "status", "started_at")]
        cur.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (run_id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, "
                    f"status TEXT NOT NULL, started_at TEXT NOT NULL, seconds DOUBLE PRECISION, {', '.join(text)})")

    def save(self, record: RunRecord) -> None:
        """Inserts the row, or replaces the row of the same run_id."""
        p = self._store.placeholder
        row = record.as_dict()
        values = [json.dumps(row[c], default=str) if c in _JSON_COLUMNS else row[c] for c in _COLUMNS]
        updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c != "run_id")
        try:
            with self._connection() as conn:
                cur = conn.cursor()
                self._ensure(cur)
                cur.execute(f"INSERT INTO {TABLE} ({', '.join(_COLUMNS)}) VALUES ({', '.join([p] * len(_COLUMNS))}) "
                            f"ON CONFLICT (run_id) DO UPDATE SET {updates}", values)
        except StateError:
            raise
        except Exception as err:  # noqa: BLE001 - any driver's error, as a redacted StateError
            raise StateError(f"run ledger {self!r}: {mask_secrets(str(err)).strip()}") from None

    def _select(self, where: str, params: tuple, limit: int | None) -> list[RunRecord]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM {TABLE}{where} ORDER BY started_at DESC, run_id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        try:
            with self._connection() as conn:
                cur = conn.cursor()
                self._ensure(cur)
                cur.execute(sql, params)
                rows = cur.fetchall()
        except StateError:
            raise
        except Exception as err:  # noqa: BLE001 - any driver's error, as a redacted StateError
            raise StateError(f"run ledger {self!r}: {mask_secrets(str(err)).strip()}") from None
        out = []
        for row in rows:
            values = dict(zip(_COLUMNS, row, strict=True))
            for c in _JSON_COLUMNS:
                values[c] = json.loads(values[c]) if values[c] else {}
            out.append(RunRecord(**values))
        return out

    def get(self, run_id: str) -> RunRecord | None:
        """The row of ``run_id`` (None when there is none)."""
        found = self._select(f" WHERE run_id = {self._store.placeholder}", (run_id,), 1)
        return found[0] if found else None

    def list(self, pipeline: str | None = None, limit: int | None = None) -> list[RunRecord]:
        """Newest first, optionally of one pipeline."""
        if pipeline:
            return self._select(f" WHERE pipeline = {self._store.placeholder}", (pipeline,), limit)
        return self._select("", (), limit)


# --------------------------------------------------------------------------------------
# Hooks for run.py
# --------------------------------------------------------------------------------------


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers) and no LOGNAME/USER
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"


def _environment() -> dict[str, Any]:
    import apache_beam

    from beam_etl import __version__

    return {"user": _user(), "host": socket.gethostname(), "pid": os.getpid(), "python": platform.python_version(),
            "beam": apache_beam.__version__, "beam_etl": __version__, "platform": platform.platform(),
            "cwd": mask_secrets(os.getcwd())}


def _sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass
class _OpenRun:
    ledger: RunLedger | None
    record: RunRecord
    meter: CostMeter
    sources: list[str]
    sinks: list[str]


_OPEN: dict[str, _OpenRun] = {}


def _save(ledger: RunLedger | None, record: RunRecord) -> None:
    if ledger is None:
        return
    try:
        ledger.save(record)
    except Exception as err:  # noqa: BLE001 - the audit trail must not fail the run it describes
        log.warning("run %s: could not write the run ledger in %r: %s", record.run_id, ledger,
                    mask_secrets(f"{type(err).__name__}: {err}"))


def start_run(summary: Mapping[str, Any], spec: Any, template_path: str | Path, state_url: str | None) -> None:
    """Records a run as ``running`` and starts measuring its cost; ``spec`` is the resolved PipelineSpec."""
    environment = _environment()
    resolved = json.loads(json.dumps(spec.model_dump(), default=str))  # any value: never fails the run
    config = {"spec": redact_config(resolved),
              "overrides": [redact_override(o) for o in summary.get("overrides", [])]}
    record = RunRecord(run_id=summary["run_id"], pipeline=summary["pipeline"], runner=str(summary.get("runner", "")),
                       template=str(template_path), template_sha256=_sha256(Path(template_path)),
                       user_name=environment["user"], host=environment["host"],
                       tenant=settings().tenant or os.environ.get(TENANT_ENV) or None,
                       started_at=str(summary.get("started_at") or _now()), config=config, environment=environment)
    ledger = None
    if state_url:
        try:
            ledger = RunLedger(state_url)
        except StateError as err:
            log.warning("run %s: no run ledger: %s", record.run_id, mask_secrets(str(err)))
    sources = [t.name for t in spec.sources]
    sinks = [t.name for t in spec.sinks] + [DLQ_STEP]
    _OPEN[record.run_id] = _OpenRun(ledger, record, CostMeter(), sources, sinks)
    _save(ledger, record)
    log.info("run %s of %s started on %s", record.run_id, record.pipeline, record.runner)


def finish_run(summary: dict[str, Any]) -> None:
    """Adds ``cost`` to ``summary`` and records the run's outcome; a no-op for a run not started here."""
    run = _OPEN.pop(str(summary.get("run_id")), None)
    if run is None:
        return
    latency = (summary.get("metrics") or {}).get("batch_latency_ms") or {}
    steps = {step: {**counts, "batch_latency_ms": latency[step]} if step in latency else counts
             for step, counts in (summary.get("steps") or {}).items()}  # busy time splits the CPU per step
    summary["cost"] = run.meter.finish(steps, run.sources, run.sinks)
    status = str(summary.get("outcome") or summary.get("status") or "failed")
    error = mask_secrets(str(summary["error"])) if summary.get("error") else None
    record = dataclasses.replace(
        run.record, status=status if status in STATUSES else "failed", ended_at=_now(),
        seconds=summary.get("seconds", summary["cost"]["wall_seconds"]), error=error,
        steps=dict(summary.get("steps") or {}), totals=dict(summary.get("totals") or {}), cost=summary["cost"])
    _save(run.ledger, record)
    log.info("run %s of %s %s after %.1f s", record.run_id, record.pipeline, record.status, record.seconds or 0.0)


def abort_run(run_id: str, error: str) -> None:
    """Records a run that stopped before ``summary.json`` was written (services, graph construction)."""
    finish_run({"run_id": run_id, "status": "failed", "error": error})
