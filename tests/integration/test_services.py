"""Each service started by scripts/services.sh answers a real query with the documented settings."""

from __future__ import annotations

import dataclasses
import socket
import uuid

import pytest

from tests import services

pytestmark = pytest.mark.integration


def test_postgres_answers_select_1(postgres_dsn):
    import psycopg2

    with psycopg2.connect(postgres_dsn, connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1, current_user, current_database()")
        assert cur.fetchone() == (1, "beam_etl", "beam_etl_test")
    conn.close()


def test_postgres_state_database_and_tls(postgres_state_dsn):
    import psycopg2

    conn = psycopg2.connect(postgres_state_dsn, sslmode="require", connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_database(), ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert cur.fetchone() == ("beam_etl_state", True)
    finally:
        conn.close()


def test_mariadb_answers_select_1(mysql_params):
    import pymysql

    conn = pymysql.connect(**mysql_params, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1, DATABASE()")
            assert cur.fetchone() == (1, "beam_etl_test")
            table = f"svc_{uuid.uuid4().hex[:12]}"
            cur.execute(f"CREATE TEMPORARY TABLE {table} (id INT PRIMARY KEY, name VARCHAR(20))")
            cur.execute(f"INSERT INTO {table} VALUES (%s, %s)", (1, "Zoë"))
            cur.execute(f"SELECT name FROM {table} WHERE id = %s", (1,))
            assert cur.fetchone() == ("Zoë",)
    finally:
        conn.close()


def test_ferretdb_ping_insert_find(mongo_uri):
    import pymongo

    client = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        assert client.admin.command("ping")["ok"] == 1
        collection = client["beam_etl_test"][f"svc_{uuid.uuid4().hex[:12]}"]
        collection.insert_many([{"_id": 1, "name": "Ada"}, {"_id": 2, "name": "Linus"}])
        assert collection.find_one({"name": "Linus"}) == {"_id": 2, "name": "Linus"}
        assert collection.count_documents({}) == 2
        collection.drop()
    finally:
        client.close()


def test_s3_bucket_put_get(s3_endpoint):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"beam-etl-svc-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    try:
        s3.put_object(Bucket=bucket, Key="dir/hello.txt", Body=b"hello beam")
        assert s3.get_object(Bucket=bucket, Key="dir/hello.txt")["Body"].read() == b"hello beam"
        listed = s3.list_objects_v2(Bucket=bucket, Prefix="dir/")
        assert [o["Key"] for o in listed["Contents"]] == ["dir/hello.txt"]
    finally:
        s3.delete_object(Bucket=bucket, Key="dir/hello.txt")
        s3.delete_bucket(Bucket=bucket)


def test_require_fails_naming_the_start_command(monkeypatch):
    with socket.socket() as sock:  # a port nothing listens on once this socket closes
        sock.bind(("127.0.0.1", 0))
        free_port = sock.getsockname()[1]
    monkeypatch.setitem(services.SERVICES, "mariadb", dataclasses.replace(services.MYSQL, port=free_port))
    with pytest.raises(pytest.fail.Exception) as failure:
        services.require("mysql")
    assert str(failure.value) == (f"mariadb is not running on 127.0.0.1:{free_port}: "
                                  "start it with scripts/services.sh up mariadb")
