"""Connection settings of the real test services started by ``scripts/services.sh``.

Each setting reads the same environment variable that ``scripts/services.sh env`` prints, with
the script's defaults, so tests and the script always agree. ``require(name)`` fails the calling
test (never skips it) when the service does not accept connections, naming the command that
starts it. The pytest fixtures built on this live in ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

import pytest

HOST = "127.0.0.1"


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


@dataclass(frozen=True)
class Postgres:
    """PostgreSQL 15, password (SCRAM) login over TCP; TLS is on, so ``sslmode=require`` works."""

    name: str = "postgres"
    host: str = field(default_factory=lambda: _env("BEAM_ETL_PG_HOST", HOST))
    port: int = field(default_factory=lambda: int(_env("BEAM_ETL_PG_PORT", "55432")))
    user: str = field(default_factory=lambda: _env("BEAM_ETL_PG_USER", "beam_etl"))
    password: str = field(default_factory=lambda: _env("BEAM_ETL_PG_PASSWORD", "beam_etl_test_pw"))
    database: str = field(default_factory=lambda: _env("BEAM_ETL_PG_DB", "beam_etl_test"))
    state_database: str = field(default_factory=lambda: _env("BEAM_ETL_PG_STATE_DB", "beam_etl_state"))

    def dsn(self, database: str | None = None) -> str:
        """A libpq URL (psycopg2.connect and SQLAlchemy-style clients accept it)."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{database or self.database}"

    def connect_kwargs(self, database: str | None = None) -> dict:
        return {"host": self.host, "port": self.port, "user": self.user, "password": self.password,
                "dbname": database or self.database}


@dataclass(frozen=True)
class MySQL:
    """MariaDB 10.11; the user has all privileges and may create databases."""

    name: str = "mariadb"
    host: str = field(default_factory=lambda: _env("BEAM_ETL_MYSQL_HOST", HOST))
    port: int = field(default_factory=lambda: int(_env("BEAM_ETL_MYSQL_PORT", "53306")))
    user: str = field(default_factory=lambda: _env("BEAM_ETL_MYSQL_USER", "beam_etl"))
    password: str = field(default_factory=lambda: _env("BEAM_ETL_MYSQL_PASSWORD", "beam_etl_test_pw"))
    database: str = field(default_factory=lambda: _env("BEAM_ETL_MYSQL_DB", "beam_etl_test"))

    def connect_kwargs(self) -> dict:
        """Keyword arguments for ``pymysql.connect(**kwargs)``."""
        return {"host": self.host, "port": self.port, "user": self.user, "password": self.password,
                "database": self.database}


@dataclass(frozen=True)
class Mongo:
    """FerretDB v1 (MongoDB wire protocol) on SQLite; no authentication."""

    name: str = "ferretdb"
    uri: str = field(default_factory=lambda: _env("BEAM_ETL_MONGO_URI", f"mongodb://{HOST}:57017/"))

    @property
    def host(self) -> str:
        return self.uri.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        hostport = self.uri.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
        return int(hostport.rsplit(":", 1)[1]) if ":" in hostport else 27017


@dataclass(frozen=True)
class S3:
    """moto in server mode: any bucket name, state in memory (empty after every restart)."""

    name: str = "s3"
    endpoint: str = field(default_factory=lambda: _env("BEAM_ETL_S3_ENDPOINT", f"http://{HOST}:55900"))
    access_key_id: str = "testing"
    secret_access_key: str = "testing"
    region: str = "us-east-1"

    @property
    def host(self) -> str:
        return self.endpoint.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        hostport = self.endpoint.split("://", 1)[-1].split("/", 1)[0]
        return int(hostport.rsplit(":", 1)[1]) if ":" in hostport else 80

    def aws_env(self) -> dict[str, str]:
        """The AWS variables that point boto3 (and Beam's S3 filesystem) at the right credentials."""
        return {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
                "AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region}

    def client_kwargs(self) -> dict:
        """Keyword arguments for ``boto3.client("s3", **kwargs)``."""
        return {"endpoint_url": self.endpoint, "aws_access_key_id": self.access_key_id,
                "aws_secret_access_key": self.secret_access_key, "region_name": self.region}


@dataclass(frozen=True)
class Kafka:
    """Apache Kafka 4.4.0, one KRaft node (broker + controller); PLAINTEXT, no auth.

    Automatic topic creation is off: create topics with ``create_topic`` (or ``scripts/services.sh
    kafka-topic NAME [PARTITIONS]``). Internal topics have replication 1, so idempotent and
    transactional producers and consumer groups work.
    """

    name: str = "kafka"
    bootstrap: str = field(default_factory=lambda: _env("BEAM_ETL_KAFKA_BOOTSTRAP", f"{HOST}:59092"))

    @property
    def host(self) -> str:
        return self.bootstrap.split(",", 1)[0].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.bootstrap.split(",", 1)[0].rsplit(":", 1)[1])

    def client_config(self, **extra) -> dict:
        """A confluent_kafka config: ``{"bootstrap.servers": ..., **extra}`` (keys with dots: pass a dict)."""
        return {"bootstrap.servers": self.bootstrap, **extra}

    def _admin(self):
        from confluent_kafka.admin import AdminClient

        return AdminClient(self.client_config())

    def create_topic(self, topic: str, partitions: int = 1, timeout: float = 30.0) -> str:
        """Creates ``topic`` (replication 1) unless it exists, waits until every partition has a leader.

        Returns the name. An existing topic with a different partition count is an error.
        """
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import NewTopic

        admin = self._admin()
        future = admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=timeout,
                                     request_timeout=timeout + 5)[topic]
        try:
            future.result()
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
        deadline = time.monotonic() + timeout
        while True:
            meta = admin.list_topics(timeout=timeout).topics.get(topic)
            if meta is not None and meta.error is None and meta.partitions:
                if len(meta.partitions) != partitions:
                    raise ValueError(f"Kafka topic {topic!r} exists with {len(meta.partitions)} partitions, "
                                     f"not {partitions}")
                if all(p.leader >= 0 for p in meta.partitions.values()):
                    return topic
            if time.monotonic() > deadline:
                raise TimeoutError(f"Kafka topic {topic!r}: partitions without a leader after {timeout}s: {meta}")
            time.sleep(0.1)

    def delete_topic(self, topic: str, timeout: float = 30.0) -> None:
        """Deletes ``topic``; a topic that does not exist is fine."""
        from confluent_kafka import KafkaError, KafkaException

        admin = self._admin()  # keep a reference: the future fails once the client is gone
        future = admin.delete_topics([topic], operation_timeout=timeout, request_timeout=timeout + 5)[topic]
        try:
            future.result()
        except KafkaException as e:
            if e.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise


POSTGRES = Postgres()
MYSQL = MySQL()
MONGO = Mongo()
S3_SERVER = S3()
KAFKA = Kafka()

SERVICES = {"postgres": POSTGRES, "mariadb": MYSQL, "ferretdb": MONGO, "s3": S3_SERVER, "kafka": KAFKA}
ALIASES = {"postgresql": "postgres", "pg": "postgres", "mysql": "mariadb", "mongo": "ferretdb",
           "mongodb": "ferretdb", "moto": "s3"}


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require(name: str):
    """Returns the settings of service ``name``; fails the test if nothing listens on its port."""
    key = ALIASES.get(name, name)
    if key not in SERVICES:
        raise ValueError(f"unknown service {name!r}; known: {', '.join(SERVICES)}")
    service = SERVICES[key]
    if not port_open(service.host, service.port):
        pytest.fail(f"{key} is not running on {service.host}:{service.port}: "
                    f"start it with scripts/services.sh up {key}", pytrace=False)
    return service
