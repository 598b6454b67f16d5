"""Incremental MySQL -> PostgreSQL loads (templates/mysql_to_postgres.yaml) against the real servers.

The cursor picks up only new and updated rows, rows equal to the saved cursor are not lost,
a failed run leaves the cursor where it was, and --full-refresh reads everything again.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid

import psycopg2
import pymysql
import pytest

from beam_etl.ops.state import open_store
from beam_etl.run import EXIT_FAILED, EXIT_OK, run_template

pytestmark = pytest.mark.integration
T0 = dt.datetime(2024, 5, 1, 12, 0, 0)


@pytest.fixture
def tables(mysql_params, postgres_dsn, monkeypatch):
    """A MySQL source table with three rows, a target table name, and the template's env."""
    source, target = f"src_{uuid.uuid4().hex[:8]}", f"dst_{uuid.uuid4().hex[:8]}"
    pg = psycopg2.extensions.parse_dsn(postgres_dsn)
    for key, value in {"MYSQL_HOST": mysql_params["host"], "MYSQL_PORT": str(mysql_params["port"]),
                       "MYSQL_USER": mysql_params["user"], "MYSQL_PASSWORD": mysql_params["password"],
                       "MYSQL_DATABASE": mysql_params["database"], "PGHOST": pg["host"], "PGPORT": pg["port"],
                       "PGUSER": pg["user"], "PGPASSWORD": pg["password"], "PGDATABASE": pg["dbname"]}.items():
        monkeypatch.setenv(key, str(value))
    conn = pymysql.connect(**mysql_params, autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"CREATE TABLE `{source}` (id INT PRIMARY KEY, name VARCHAR(40), amount DECIMAL(10,2), "
                    "updated_at DATETIME(6) NOT NULL)")
        cur.executemany(f"INSERT INTO `{source}` VALUES (%s, %s, %s, %s)",
                        [(1, "ada", "10.00", T0), (2, "bob", "20.00", T0 + dt.timedelta(minutes=1)),
                         (3, "cy", "30.00", T0 + dt.timedelta(minutes=2))])
    yield conn, source, target
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS `{source}`")
    conn.close()
    with psycopg2.connect(postgres_dsn) as pg_conn, pg_conn.cursor() as cur:
        cur.execute(f'DROP TABLE IF EXISTS "{target}"')


def _run(source: str, target: str, out, run_id: str, *extra: str, full_refresh: bool = False) -> int:
    overrides = [f"params.source_table={source}", f"params.target_table={target}", *extra]
    return run_template("mysql_to_postgres", overrides, ["--runner=DirectRunner"], output_dir=str(out),
                        run_id=run_id, quiet=True, full_refresh=full_refresh)


def _target(postgres_dsn: str, target: str) -> dict[int, tuple]:
    with psycopg2.connect(postgres_dsn) as conn, conn.cursor() as cur:
        cur.execute(f'SELECT id, name, amount FROM "{target}" ORDER BY id')
        return {r[0]: (r[1], str(r[2])) for r in cur.fetchall()}


def _read_count(out, run_id: str) -> int:
    summary = json.loads((out / run_id / "summary.json").read_text())
    return summary["steps"]["source"]["records_out"]


def test_incremental_runs_pick_up_only_new_and_updated_rows(tables, postgres_dsn, tmp_path):
    conn, source, target = tables
    out = tmp_path / "out"
    assert _run(source, target, out, "r1") == EXIT_OK
    assert _target(postgres_dsn, target) == {1: ("ada", "10.00"), 2: ("bob", "20.00"), 3: ("cy", "30.00")}
    saved = open_store(str(out / "beam_etl_state.sqlite")).get("mysql_to_postgres", "source")
    assert saved.value == T0 + dt.timedelta(minutes=2)

    assert _run(source, target, out, "r2") == EXIT_OK
    assert _read_count(out, "r2") == 1  # closed start: only the row equal to the cursor is read again

    with conn.cursor() as cur:
        cur.execute(f"UPDATE `{source}` SET name = 'ADA', updated_at = %s WHERE id = 1", (T0 + dt.timedelta(hours=1),))
        cur.execute(f"INSERT INTO `{source}` VALUES (4, 'dee', 40.00, %s)", (T0 + dt.timedelta(hours=1),))
        cur.execute(f"INSERT INTO `{source}` VALUES (5, 'late', 50.00, %s)", (T0 + dt.timedelta(minutes=2),))
    assert _run(source, target, out, "r3") == EXIT_OK
    assert _read_count(out, "r3") == 4  # ids 1 and 4 (new cursor), 3 and the late 5 (equal to the old cursor)
    assert _target(postgres_dsn, target) == {1: ("ADA", "10.00"), 2: ("bob", "20.00"), 3: ("cy", "30.00"),
                                            4: ("dee", "40.00"), 5: ("late", "50.00")}

    assert _run(source, target, out, "r4", full_refresh=True) == EXIT_OK
    assert _read_count(out, "r4") == 5 and len(_target(postgres_dsn, target)) == 5


def test_a_failed_load_leaves_the_cursor_where_it_was(tables, postgres_dsn, tmp_path):
    conn, source, target = tables
    out = tmp_path / "out"
    assert _run(source, target, out, "first") == EXIT_OK
    store = open_store(str(out / "beam_etl_state.sqlite"))
    before = store.get("mysql_to_postgres", "source")

    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO `{source}` VALUES (9, 'new', 90.00, %s)", (T0 + dt.timedelta(days=1),))
    code = _run(source, target, out, "broken", "sinks.target.config.table=missing_table_x",
                "sinks.target.config.create_table=false")
    assert code == EXIT_FAILED
    after = store.get("mysql_to_postgres", "source")
    assert after.value == before.value and after.run_id == "first"

    assert _run(source, target, out, "retry") == EXIT_OK  # the row the failed run did not load arrives now
    assert _target(postgres_dsn, target)[9] == ("new", "90.00")
