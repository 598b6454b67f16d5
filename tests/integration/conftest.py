"""Fixtures for the real services of scripts/services.sh (settings in tests/services.py).

A fixture fails the test, naming the start command, when its service is not running.
"""

from __future__ import annotations

import pytest

from tests.services import KAFKA, MONGO, MYSQL, POSTGRES, S3_SERVER, require


@pytest.fixture
def postgres_dsn() -> str:
    """libpq URL of the beam_etl_test database: postgresql://beam_etl:...@127.0.0.1:55432/beam_etl_test."""
    require("postgres")
    return POSTGRES.dsn()


@pytest.fixture
def postgres_state_dsn() -> str:
    """libpq URL of the beam_etl_state database (same server and user)."""
    require("postgres")
    return POSTGRES.dsn(POSTGRES.state_database)


@pytest.fixture
def mysql_params() -> dict:
    """``pymysql.connect(**mysql_params)``: host, port, user, password, database."""
    require("mariadb")
    return MYSQL.connect_kwargs()


@pytest.fixture
def mongo_uri() -> str:
    """mongodb://127.0.0.1:57017/ (FerretDB, no auth)."""
    require("ferretdb")
    return MONGO.uri


@pytest.fixture
def s3_endpoint(monkeypatch) -> str:
    """http://127.0.0.1:55900 (moto); also sets the AWS_* test credentials for the test."""
    require("s3")
    for key, value in S3_SERVER.aws_env().items():
        monkeypatch.setenv(key, value)
    return S3_SERVER.endpoint


@pytest.fixture
def kafka_bootstrap() -> str:
    """127.0.0.1:59092 (Kafka 4.4.0, one KRaft node, PLAINTEXT, no auth); auto topic creation is off,
    so create topics first: ``tests.services.KAFKA.create_topic(name, partitions)``."""
    require("kafka")
    return KAFKA.bootstrap
