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
from typing import Any

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


def _s3_env() -> dict[str, str]:
    return {**S3_SERVER.aws_env(), "AWS_ENDPOINT_URL": S3_SERVER.endpoint}


def _s3_client() -> Any:
    import boto3

    env = S3_SERVER.aws_env()
    return boto3.client("s3", endpoint_url=S3_SERVER.endpoint, region_name="us-east-1",
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def _drop_bucket(client: Any, bucket: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
    client.delete_bucket(Bucket=bucket)


@contextlib.contextmanager
def _mongodb_to_s3_parquet() -> Iterator[list[str]]:
    import pymongo

    require("ferretdb")
    require("s3")
    database, collection, bucket = "beam_etl_test", _unique("orders"), _unique("lake").replace("_", "-")
    client = pymongo.MongoClient(MONGO.uri, serverSelectionTimeoutMS=5000)
    docs = [{"order_id": i, "country": country, "amount": amount, "ordered_at": ts,
             "status": ("paid", "shipped", "delivered")[i % 3],
             "customer": {"name": f"c{i % 17}", "tags": ["vip"] if i % 10 == 0 else []}}
            for i, country, amount, ts in _orders()]
    client[database][collection].insert_many(docs)
    s3 = _s3_client()
    s3.create_bucket(Bucket=bucket)
    with _env({**_s3_env(), "MONGO_URI": MONGO.uri}):
        try:
            yield [f"params.database={database}", f"params.collection={collection}", f"params.bucket={bucket}"]
        finally:
            client[database][collection].drop()
            client.close()
            _drop_bucket(s3, bucket)


@contextlib.contextmanager
def _s3_to_postgres() -> Iterator[list[str]]:
    from beam_etl.spec import PACKAGE_DATA_DIR

    require("s3")
    require("postgres")
    bucket, table = "beam-etl-tpl-landing", _unique("orders")  # fixed: the bucket name shows in dead letters
    s3 = _s3_client()
    s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(PACKAGE_DATA_DIR / "customers_orders.csv"), bucket, "orders/customers_orders.csv")
    with _env({**_s3_env(), **_pg_env()}):
        try:
            yield [f"params.input=s3://{bucket}/orders/*.csv", f"params.table={table}"]
        finally:
            _drop_bucket(s3, bucket)
            _pg_execute(f'DROP TABLE IF EXISTS "{table}"')


PREPARERS: dict[str, Callable[[], contextlib.AbstractContextManager[list[str]]]] = {
    "csv_to_postgres": _csv_to_postgres,
    "postgres_to_parquet": _postgres_to_parquet,
    "mysql_to_postgres": _mysql_to_postgres,
    "mongodb_to_s3_parquet": _mongodb_to_s3_parquet,
    "s3_to_postgres": _s3_to_postgres,
}


@contextlib.contextmanager
def prepared(template: str) -> Iterator[list[str]]:
    """Services, seed data and overrides for ``template`` (none for file-only templates)."""
    preparer = PREPARERS.get(template)
    if preparer is None:
        yield []
        return
    with preparer() as overrides:
        yield overrides
