"""A database server (PostgreSQL, MariaDB) restarted in the middle of a load (scripts/services.sh down + up).

The load either retries through the restart or fails loudly; either way nothing is lost (every
row is in the table or in the DLQ) and a rerun of the same upsert leaves each row exactly once.
"""

from __future__ import annotations

import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg2
import pyarrow as pa
import pytest

from beam_etl.io.sql import WriteToPostgres
from tests.integration.sql_helpers import write

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
ROWS, BATCH = 10_000, 2_000


def _params(dsn: str) -> dict:
    url = urllib.parse.urlsplit(dsn)
    return {"host": url.hostname, "port": url.port, "database": url.path.lstrip("/"), "user": url.username,
            "password": urllib.parse.unquote(url.password or "")}


def _sql(dsn: str, statement: str) -> list[tuple] | None:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(statement)
        rows = cur.fetchall() if cur.description else None
    conn.close()
    return rows


def _restart_when_loading(service: str, loader_sleeps: Callable[[], bool], speed_up: Callable[[], object],
                          done: list[str]) -> threading.Thread:
    """Waits until the loader sleeps inside the table's trigger, restarts ``service``, then lets the
    retried batches run at full speed."""
    def run() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not loader_sleeps():
            time.sleep(0.1)
        for action in ("down", "up"):
            result = subprocess.run(["bash", str(REPO / "scripts" / "services.sh"), action, service],
                                    capture_output=True, text=True, timeout=180)
            done.append(f"{action}:{result.returncode}")
        speed_up()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _sleeping(rows: list[tuple] | None) -> bool:
    return bool(rows and rows[0][0])


def test_server_restart_mid_load_loses_nothing_and_a_rerun_duplicates_nothing(postgres_dsn):
    table, flag, fn = (f"beam_etl_restart_{uuid.uuid4().hex[:8]}{s}" for s in ("", "_flag", "_slow"))
    _sql(postgres_dsn, f'CREATE TABLE "{table}" (id bigint PRIMARY KEY, name text)')
    _sql(postgres_dsn, f'CREATE TABLE "{flag}" (slow boolean); INSERT INTO "{flag}" VALUES (true)')
    _sql(postgres_dsn, f'''CREATE FUNCTION "{fn}"() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF (SELECT slow FROM "{flag}") THEN PERFORM pg_sleep(30); END IF; RETURN NULL; END $$''')
    _sql(postgres_dsn, f'CREATE TRIGGER slow BEFORE INSERT ON "{table}" FOR EACH STATEMENT EXECUTE FUNCTION "{fn}"()')
    batches = [pa.RecordBatch.from_pylist([{"id": i, "name": f"n{i}"} for i in range(s, s + BATCH)])
               for s in range(0, ROWS, BATCH)]
    sink = {**_params(postgres_dsn), "table": table, "mode": "upsert", "key": ["id"], "max_retries": 8}
    steps: list[str] = []
    try:
        thread = _restart_when_loading(
            "postgres",
            lambda: _sleeping(_sql(postgres_dsn, "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")),
            lambda: _sql(postgres_dsn, f'UPDATE "{flag}" SET slow = false'), steps)
        try:
            _, dead, _ = write(WriteToPostgres(**sink), batches)
            failed_loudly = False
        except Exception:  # noqa: BLE001 - a run that stops with an error is one of the two allowed outcomes
            dead, failed_loudly = [], True
        thread.join(240)
        print(f"restart outcome: failed_loudly={failed_loudly}, dead letters={len(dead)}")
        assert steps == ["down:0", "up:0"], steps  # the server really went down and came back
        count = _sql(postgres_dsn, f'SELECT count(*) FROM "{table}"')[0][0]
        if not failed_loudly:
            assert count + len(dead) == ROWS  # nothing lost: each row is in the table or in the DLQ

        _, dead, _ = write(WriteToPostgres(**sink), batches)  # the rerun
        assert dead == []
        assert _sql(postgres_dsn, f'SELECT count(*), count(DISTINCT id), min(id), max(id) FROM "{table}"') == [
            (ROWS, ROWS, 0, ROWS - 1)]
    finally:
        _sql(postgres_dsn, f'DROP TABLE IF EXISTS "{table}"; DROP TABLE IF EXISTS "{flag}"; '
                           f'DROP FUNCTION IF EXISTS "{fn}"()')


def _my_sql(params: dict, statement: str) -> list[tuple] | None:
    import pymysql

    conn = pymysql.connect(**params, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return list(cur.fetchall()) if cur.description else None
    finally:
        conn.close()


def test_mariadb_restart_mid_load_loses_nothing_and_a_rerun_duplicates_nothing(mysql_params):
    from beam_etl.io.sql import WriteToMySql

    table, flag = (f"beam_etl_restart_{uuid.uuid4().hex[:8]}{s}" for s in ("", "_flag"))
    _my_sql(mysql_params, f"CREATE TABLE `{table}` (id BIGINT PRIMARY KEY, name TEXT)")
    _my_sql(mysql_params, f"CREATE TABLE `{flag}` (slow TINYINT)")
    _my_sql(mysql_params, f"INSERT INTO `{flag}` VALUES (1)")
    _my_sql(mysql_params, f"CREATE TRIGGER `{table}_slow` BEFORE INSERT ON `{table}` FOR EACH ROW "
                          f"BEGIN IF (SELECT slow FROM `{flag}`) = 1 AND NEW.id % {BATCH} = 0 THEN "
                          "DO SLEEP(30); END IF; END")
    batches = [pa.RecordBatch.from_pylist([{"id": i, "name": f"n{i}"} for i in range(s, s + BATCH)])
               for s in range(0, ROWS, BATCH)]
    keys = ("host", "port", "database", "user", "password")
    sink = {**{k: mysql_params[k] for k in keys}, "table": table, "mode": "upsert", "key": ["id"],
            "max_retries": 8}
    steps: list[str] = []
    try:
        thread = _restart_when_loading(
            "mariadb",
            lambda: _sleeping(_my_sql(mysql_params, "SELECT count(*) FROM information_schema.processlist "
                                                    "WHERE state = 'User sleep'")),
            lambda: _my_sql(mysql_params, f"UPDATE `{flag}` SET slow = 0"), steps)
        try:
            _, dead, _ = write(WriteToMySql(**sink), batches)
            failed_loudly = False
        except Exception:  # noqa: BLE001 - a run that stops with an error is one of the two allowed outcomes
            dead, failed_loudly = [], True
        thread.join(240)
        print(f"restart outcome: failed_loudly={failed_loudly}, dead letters={len(dead)}")
        assert steps == ["down:0", "up:0"], steps  # the server really went down and came back
        count = _my_sql(mysql_params, f"SELECT count(*) FROM `{table}`")[0][0]
        if not failed_loudly:
            assert count + len(dead) == ROWS  # nothing lost: each row is in the table or in the DLQ

        _, dead, _ = write(WriteToMySql(**sink), batches)  # the rerun
        assert dead == []
        assert _my_sql(mysql_params, f"SELECT count(*), count(DISTINCT id), min(id), max(id) FROM `{table}`") == [
            (ROWS, ROWS, 0, ROWS - 1)]
    finally:
        _my_sql(mysql_params, f"DROP TABLE IF EXISTS `{table}`")
        _my_sql(mysql_params, f"DROP TABLE IF EXISTS `{flag}`")
