"""Seed data and environment for the bundled templates that talk to real services.

``prepared(template)`` is a context manager: it checks the services the template needs (a test
fails naming the start command when one is down), sets the environment variables the template
reads (PG*, MYSQL_*, AWS_*), creates uniquely named source tables/collections/buckets with
deterministic rows, yields the ``--set`` overrides that point the template at them, and drops
everything afterwards. Templates that need no service yield no overrides.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import uuid
from collections.abc import Callable, Iterator

from tests.services import MONGO, MYSQL, POSTGRES, S3_SERVER, require

ROWS = 300
COUNTRIES = ("DE", "FR", "GB", "IN", "US")


def _unique(prefix: str) -> str:
    return f"tpl_{prefix}_{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _pg_env() -> dict[str, str]:
    return {"PGHOST": POSTGRES.host, "PGPORT": str(POSTGRES.port), "PGUSER": POSTGRES.user,
            "PGPASSWORD": POSTGRES.password, "PGDATABASE": POSTGRES.database}


def _mysql_env() -> dict[str, str]:
    return {"MYSQL_HOST": MYSQL.host, "MYSQL_PORT": str(MYSQL.port), "MYSQL_USER": MYSQL.user,
            "MYSQL_PASSWORD": MYSQL.password, "MYSQL_DATABASE": MYSQL.database}


def _pg_execute(sql: str, rows: list[tuple] | None = None) -> None:
    import psycopg2

    with psycopg2.connect(POSTGRES.dsn()) as conn, conn.cursor() as cur:
        if rows is None:
            cur.execute(sql)
        else:
            cur.executemany(sql, rows)
    conn.close()


def _orders(n: int = ROWS) -> list[tuple]:
    start = dt.datetime(2024, 1, 1, 8, 0)
    return [(i, COUNTRIES[i % len(COUNTRIES)], round(10 + (i * 37) % 500 + i / 100, 2),
             start + dt.timedelta(minutes=7 * i)) for i in range(1, n + 1)]


@contextlib.contextmanager
def _csv_to_postgres() -> Iterator[list[str]]:
    require("postgres")
    table = _unique("orders")
    with _env(_pg_env()):
        try:
            yield [f"params.table={table}"]
        finally:
            _pg_execute(f'DROP TABLE IF EXISTS "{table}"')


@contextlib.contextmanager
def _postgres_to_parquet() -> Iterator[list[str]]:
    require("postgres")
    table = _unique("orders")
    _pg_execute(f'CREATE TABLE "{table}" (id integer PRIMARY KEY, country text, amount numeric(10,2), '
                "ordered_at timestamp)")
    _pg_execute(f'INSERT INTO "{table}" VALUES (%s, %s, %s, %s)', _orders())
    with _env(_pg_env()):
        try:
            yield [f"params.table={table}", "params.partition_column=id"]
        finally:
            _pg_execute(f'DROP TABLE IF EXISTS "{table}"')


@contextlib.contextmanager
def _mysql_to_postgres() -> Iterator[list[str]]:
    import pymysql

    require("mariadb")
    require("postgres")
    source, target = _unique("src"), _unique("dst")
    conn = pymysql.connect(**MYSQL.connect_kwargs(), autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"CREATE TABLE `{source}` (id INT PRIMARY KEY, country VARCHAR(8), amount DECIMAL(10,2), "
                    "updated_at DATETIME(6) NOT NULL)")
        cur.executemany(f"INSERT INTO `{source}` VALUES (%s, %s, %s, %s)", _orders())
    with _env({**_pg_env(), **_mysql_env()}):
        try:
            yield [f"params.source_table={source}", f"params.target_table={target}"]
        finally:
            with conn.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS `{source}`")
            conn.close()
            _pg_execute(f'DROP TABLE IF EXISTS "{target}"')


PREPARERS: dict[str, Callable[[], contextlib.AbstractContextManager[list[str]]]] = {
    "csv_to_postgres": _csv_to_postgres,
    "postgres_to_parquet": _postgres_to_parquet,
    "mysql_to_postgres": _mysql_to_postgres,
}
_ = (MONGO, S3_SERVER)  # used by the object-store templates' preparers


@contextlib.contextmanager
def prepared(template: str) -> Iterator[list[str]]:
    """Services, seed data and overrides for ``template`` (none for file-only templates)."""
    preparer = PREPARERS.get(template)
    if preparer is None:
        yield []
        return
    with preparer() as overrides:
        yield overrides
