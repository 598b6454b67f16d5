"""The API's tables in the state store (SQLite or PostgreSQL, the store the run ledger uses).

``beam_etl_api_tenants``, ``beam_etl_api_keys`` (hashed), ``beam_etl_api_pipelines`` (unique name
per tenant), ``beam_etl_api_runs`` (the runs the API started, with their tenant),
``beam_etl_api_secrets`` (encrypted values) and ``beam_etl_api_audit`` (one row per API call).
Every read that serves a tenant filters on ``tenant_id``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import Any

from beam_etl.ops.state import open_store

TENANTS = "beam_etl_api_tenants"
KEYS = "beam_etl_api_keys"
PIPELINES = "beam_etl_api_pipelines"
RUNS = "beam_etl_api_runs"
SECRETS = "beam_etl_api_secrets"
AUDIT = "beam_etl_api_audit"
RUN_COLUMNS = ("run_id", "pipeline_id", "tenant_id", "pid", "status", "exit_code", "started_at", "ended_at",
               "metrics_port", "kind", "replay_of")
PIPELINE_COLUMNS = ("id", "tenant_id", "name", "template", "params", "options", "created_at")
TENANT_COLUMNS = ("id", "name", "config", "max_concurrent_runs", "max_rows_per_day", "created_at")
AUDIT_COLUMNS = ("id", "ts", "request_id", "tenant_id", "key_id", "role", "method", "path", "status", "client",
                 "duration_ms")
_SCHEMA = {
    TENANTS: "id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, config TEXT NOT NULL, max_concurrent_runs INTEGER, "
             "max_rows_per_day INTEGER, created_at TEXT NOT NULL",
    KEYS: "key_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, role TEXT NOT NULL, salt TEXT NOT NULL, "
          "digest TEXT NOT NULL, label TEXT, created_at TEXT NOT NULL, revoked_at TEXT",
    PIPELINES: "id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, name TEXT NOT NULL, template TEXT NOT NULL, "
               "params TEXT NOT NULL, options TEXT NOT NULL, created_at TEXT NOT NULL, UNIQUE (tenant_id, name)",
    RUNS: "run_id TEXT PRIMARY KEY, pipeline_id TEXT NOT NULL, tenant_id TEXT NOT NULL, pid INTEGER NOT NULL, "
          "status TEXT NOT NULL, exit_code INTEGER, started_at TEXT NOT NULL, ended_at TEXT, metrics_port INTEGER, "
          "kind TEXT NOT NULL, replay_of TEXT",
    SECRETS: "tenant_id TEXT NOT NULL, name TEXT NOT NULL, token TEXT NOT NULL, updated_at TEXT NOT NULL, "
             "PRIMARY KEY (tenant_id, name)",
    AUDIT: "id TEXT PRIMARY KEY, ts TEXT NOT NULL, request_id TEXT NOT NULL, tenant_id TEXT, key_id TEXT, role TEXT, "
           "method TEXT NOT NULL, path TEXT NOT NULL, status INTEGER NOT NULL, client TEXT, duration_ms REAL",
}


def _only(**conditions: Any) -> dict[str, Any]:
    """The equality conditions that are set (None means: no condition on that column)."""
    return {k: v for k, v in conditions.items() if v is not None}


def now() -> str:
    """UTC now, ISO 8601 to the second."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiStore:
    """Reads and writes the API tables; one short transaction per call."""

    def __init__(self, url: str) -> None:
        self._store = open_store(url)
        self.p = self._store.placeholder
        with self.cursor() as cur:
            for table, columns in _SCHEMA.items():
                cur.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")
            cur.execute(f"SELECT * FROM {RUNS} WHERE 1 = 0")
            present = {d[0] for d in cur.description}
            for column in ("tenant_id", "metrics_port", "kind", "replay_of"):  # a store from the first API version
                if column not in present:
                    kind = "INTEGER" if column == "metrics_port" else "TEXT"
                    cur.execute(f"ALTER TABLE {RUNS} ADD COLUMN {column} {kind}")

    @contextlib.contextmanager
    def cursor(self) -> Iterator[Any]:
        with self._store._conn() as conn:  # the store's transaction, as the run ledger uses it
            yield conn.cursor()

    def _marks(self, n: int) -> str:
        return ", ".join([self.p] * n)

    def _select(self, table: str, columns: tuple[str, ...], where: dict[str, Any], order: str = "") -> list[dict]:
        clause = " AND ".join(f"{k} = {self.p}" for k in where)
        sql = f"SELECT {', '.join(columns)} FROM {table}" + (f" WHERE {clause}" if clause else "") + order
        with self.cursor() as cur:
            cur.execute(sql, tuple(where.values()))
            return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]

    # tenants and keys
    def add_tenant(self, name: str, config: dict[str, Any], max_concurrent_runs: int | None,
                   max_rows_per_day: int | None) -> dict[str, Any]:
        row = {"id": uuid.uuid4().hex[:12], "name": name, "config": json.dumps(config),
               "max_concurrent_runs": max_concurrent_runs, "max_rows_per_day": max_rows_per_day, "created_at": now()}
        with self.cursor() as cur:
            cur.execute(f"INSERT INTO {TENANTS} VALUES ({self._marks(6)})", tuple(row.values()))
        return self.tenant(row["id"]) or row

    def tenant(self, tenant_id: str | None = None, name: str | None = None) -> dict[str, Any] | None:
        where = {"id": tenant_id} if tenant_id else {"name": name}
        rows = self._select(TENANTS, TENANT_COLUMNS, where)
        if not rows:
            return None
        rows[0]["config"] = json.loads(rows[0]["config"])
        return rows[0]

    def tenants(self) -> list[dict[str, Any]]:
        rows = self._select(TENANTS, TENANT_COLUMNS, {}, " ORDER BY created_at, name")
        for row in rows:
            row["config"] = json.loads(row["config"])
        return rows

    def update_tenant(self, tenant_id: str, **fields: Any) -> None:
        if "config" in fields:
            fields["config"] = json.dumps(fields["config"])
        sets = ", ".join(f"{k} = {self.p}" for k in fields)
        with self.cursor() as cur:
            cur.execute(f"UPDATE {TENANTS} SET {sets} WHERE id = {self.p}", (*fields.values(), tenant_id))

    def add_key(self, key_id: str, tenant_id: str, role: str, salt: str, digest: str, label: str | None) -> None:
        with self.cursor() as cur:
            cur.execute(f"INSERT INTO {KEYS} (key_id, tenant_id, role, salt, digest, label, created_at) "
                        f"VALUES ({self._marks(7)})", (key_id, tenant_id, role, salt, digest, label, now()))

    def key(self, key_id: str) -> dict[str, Any] | None:
        rows = self._select(KEYS, ("key_id", "tenant_id", "role", "salt", "digest", "revoked_at"), {"key_id": key_id})
        return rows[0] if rows else None

    def keys(self, tenant_id: str | None) -> list[dict[str, Any]]:
        return self._select(KEYS, ("key_id", "role", "label", "created_at", "revoked_at"), _only(tenant_id=tenant_id),
                            " ORDER BY created_at, key_id")

    def revoke_key(self, tenant_id: str | None, key_id: str) -> bool:
        """Revokes an active key (of ``tenant_id`` unless None); False when there is none."""
        where = _only(key_id=key_id, tenant_id=tenant_id)
        clause = " AND ".join(f"{k} = {self.p}" for k in where)
        with self.cursor() as cur:
            cur.execute(f"UPDATE {KEYS} SET revoked_at = {self.p} WHERE {clause} AND revoked_at IS NULL",
                        (now(), *where.values()))
            return cur.rowcount > 0

    # pipelines
    def add_pipeline(self, row: dict[str, Any]) -> None:
        values = {**row, "params": json.dumps(row["params"]), "options": json.dumps(row["options"])}
        with self.cursor() as cur:
            cur.execute(f"INSERT INTO {PIPELINES} ({', '.join(PIPELINE_COLUMNS)}) VALUES ({self._marks(7)})",
                        tuple(values[c] for c in PIPELINE_COLUMNS))

    def pipelines(self, tenant_id: str | None, pipeline_id: str | None = None, name: str | None = None) -> list[dict]:
        """Registrations, oldest first (of every tenant when ``tenant_id`` is None)."""
        where = _only(tenant_id=tenant_id, id=pipeline_id, name=name)
        rows = self._select(PIPELINES, PIPELINE_COLUMNS, where, " ORDER BY created_at, id")
        for row in rows:
            row["params"], row["options"] = json.loads(row["params"]), json.loads(row["options"])
        return rows

    def count_pipelines(self) -> int:
        with self.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {PIPELINES}")
            return int(cur.fetchone()[0])

    # runs
    def add_run(self, run: dict[str, Any]) -> None:
        row = {"status": "started", "exit_code": None, "started_at": now(), "ended_at": None, "metrics_port": None,
               "kind": "run", "replay_of": None, **run}
        with self.cursor() as cur:
            cur.execute(f"INSERT INTO {RUNS} ({', '.join(RUN_COLUMNS)}) VALUES ({self._marks(len(RUN_COLUMNS))})",
                        tuple(row[c] for c in RUN_COLUMNS))

    def end_run(self, run_id: str, status: str, exit_code: int | None) -> None:
        with self.cursor() as cur:
            cur.execute(f"UPDATE {RUNS} SET status = {self.p}, exit_code = {self.p}, ended_at = {self.p} "
                        f"WHERE run_id = {self.p}", (status, exit_code, now(), run_id))

    def runs(self, tenant_id: str | None, pipeline_id: str | None = None, run_id: str | None = None) -> list[dict]:
        """Newest first (of every tenant when ``tenant_id`` is None)."""
        where = _only(tenant_id=tenant_id, pipeline_id=pipeline_id, run_id=run_id)
        return self._select(RUNS, RUN_COLUMNS, where, " ORDER BY started_at DESC, run_id DESC")

    # secrets
    def put_secret(self, tenant_id: str, name: str, token: str) -> None:
        with self.cursor() as cur:
            cur.execute(f"DELETE FROM {SECRETS} WHERE tenant_id = {self.p} AND name = {self.p}", (tenant_id, name))
            cur.execute(f"INSERT INTO {SECRETS} VALUES ({self._marks(4)})", (tenant_id, name, token, now()))

    def secrets(self, tenant_id: str | None) -> list[dict[str, Any]]:
        return self._select(SECRETS, ("tenant_id", "name", "token", "updated_at"), _only(tenant_id=tenant_id),
                            " ORDER BY name")

    def delete_secret(self, tenant_id: str, name: str) -> bool:
        with self.cursor() as cur:
            cur.execute(f"DELETE FROM {SECRETS} WHERE tenant_id = {self.p} AND name = {self.p}", (tenant_id, name))
            return cur.rowcount > 0

    # audit
    def audit(self, entry: dict[str, Any]) -> None:
        row = {"id": uuid.uuid4().hex, **entry}
        with self.cursor() as cur:
            cur.execute(f"INSERT INTO {AUDIT} ({', '.join(AUDIT_COLUMNS)}) VALUES ({self._marks(len(AUDIT_COLUMNS))})",
                        tuple(row.get(c) for c in AUDIT_COLUMNS))

    def audit_entries(self, tenant_id: str | None, limit: int) -> list[dict[str, Any]]:
        """Newest first (``ts`` has microseconds)."""
        return self._select(AUDIT, AUDIT_COLUMNS, _only(tenant_id=tenant_id), f" ORDER BY ts DESC LIMIT {int(limit)}")
