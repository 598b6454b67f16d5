"""Seed data and environment for the bundled templates that talk to real services.

``prepared(template)`` is a context manager: it checks the services the template needs (a test
fails naming the start command when one is down), sets the environment variables the template
reads (PG*, MYSQL_*, AWS_*), creates uniquely named source tables/collections/buckets/topics with
deterministic rows, yields the ``--set`` overrides that point the template at them, and drops
everything afterwards. Templates that need no service yield no overrides.

``prepared(template, sinks_to=folder)`` also copies what the run wrote outside its run folder (a
PostgreSQL table, a Kafka topic, S3 objects) into ``folder`` before dropping it: JSON lines, or
the objects themselves, under names that do not depend on the run. The runner conformance suite
points it into the run folder, so those sinks are compared like any output file.

The Kafka templates read uniquely named 3-partition topics seeded from one idempotent producer,
in a fixed order, with explicit partitions and record timestamps: every run of a template sees
the same messages at the same partitions and offsets. A few malformed messages (invalid JSON, a
JSON array, invalid UTF-8, a tombstone, a value that does not cast) exercise the DLQ. They run
bounded (``params.stop=latest``) and read a fresh consumer group from the earliest offsets.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import decimal
import json
import os
import re
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from tests.services import KAFKA, MONGO, MYSQL, POSTGRES, S3_SERVER, require

ROWS = 300
COUNTRIES = ("DE", "FR", "GB", "IN", "US")
# a name _unique() made: tpl_<prefix>_<8 hex digits>; it shows in outputs (a DLQ source names its topic)
UNIQUE_NAME = re.compile(r"\btpl_([a-z_]+?)_[0-9a-f]{8}\b")
Preparer = Callable[[Path | None], contextlib.AbstractContextManager[list[str]]]


def _unique(prefix: str) -> str:
    return f"tpl_{prefix}_{uuid.uuid4().hex[:8]}"


def without_unique_names(text: str) -> str:
    """``text`` with every name _unique() made replaced by ``tpl_<prefix>_*`` (the same in every run)."""
    return UNIQUE_NAME.sub(r"tpl_\1_*", text)


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


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as JSON")


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, default=_json_default, sort_keys=True) + "\n")


def read_pg_table(table: str) -> list[dict[str, Any]]:
    """Every row of PostgreSQL table ``table`` as a dict; no rows when the table does not exist."""
    import psycopg2

    conn = psycopg2.connect(POSTGRES.dsn())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{table}"',))
            if not cur.fetchone()[0]:
                return []
            cur.execute(f'SELECT * FROM "{table}"')
            columns = [c.name for c in cur.description]
            return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
    finally:
        conn.close()


def _dump_pg_table(table: str, sinks: Path | None, name: str) -> None:
    if sinks is not None:
        _write_jsonl(sinks / f"{name}.jsonl", read_pg_table(table))


def _orders(n: int = ROWS) -> list[tuple]:
    start = dt.datetime(2024, 1, 1, 8, 0)
    return [(i, COUNTRIES[i % len(COUNTRIES)], round(10 + (i * 37) % 500 + i / 100, 2),
             start + dt.timedelta(minutes=7 * i)) for i in range(1, n + 1)]


@contextlib.contextmanager
def _csv_to_postgres(sinks: Path | None) -> Iterator[list[str]]:
    require("postgres")
    table = _unique("orders")
    with _env(_pg_env()):
        try:
            yield [f"params.table={table}"]
        finally:
            try:
                _dump_pg_table(table, sinks, "postgres_table")
            finally:
                _pg_execute(f'DROP TABLE IF EXISTS "{table}"')


@contextlib.contextmanager
def _postgres_to_parquet(sinks: Path | None) -> Iterator[list[str]]:
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
def _mysql_to_postgres(sinks: Path | None) -> Iterator[list[str]]:
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
            try:
                _dump_pg_table(target, sinks, "postgres_target_table")
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


def _s3_keys(client: Any, bucket: str) -> list[str]:
    return [obj["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for obj in page.get("Contents", [])]


def _drop_bucket(client: Any, bucket: str) -> None:
    for key in _s3_keys(client, bucket):
        client.delete_object(Bucket=bucket, Key=key)
    client.delete_bucket(Bucket=bucket)


def _dump_bucket(client: Any, bucket: str, sinks: Path | None, name: str) -> None:
    """Copies every object of ``bucket`` to ``sinks/name/<key>`` (the key's own folders kept)."""
    if sinks is None:
        return
    for key in _s3_keys(client, bucket):
        target = sinks / name / key
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(target))


@contextlib.contextmanager
def _mongodb_to_s3_parquet(sinks: Path | None) -> Iterator[list[str]]:
    import pymongo

    require("ferretdb")
    require("s3")
    database, collection, bucket = "beam_etl_test", _unique("orders"), _unique("lake").replace("_", "-")
    from bson import ObjectId

    client = pymongo.MongoClient(MONGO.uri, serverSelectionTimeoutMS=5000)
    # explicit _ids: generated ones differ between runs, and the _id column reaches the compared Parquet
    docs = [{"_id": ObjectId(f"{i:024x}"), "order_id": i, "country": country, "amount": amount, "ordered_at": ts,
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
            try:
                _dump_bucket(s3, bucket, sinks, "s3_bucket")
            finally:
                client[database][collection].drop()
                client.close()
                _drop_bucket(s3, bucket)


@contextlib.contextmanager
def _s3_to_postgres(sinks: Path | None) -> Iterator[list[str]]:
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
            try:
                _dump_pg_table(table, sinks, "postgres_table")
            finally:
                _drop_bucket(s3, bucket)
                _pg_execute(f'DROP TABLE IF EXISTS "{table}"')


# --------------------------------------------------------------------------------------
# Kafka: seed messages, topics, expected results
# --------------------------------------------------------------------------------------

KAFKA_PARTITIONS = 3
KAFKA_RECORDS = 240  # valid records per seeded topic (plus a few malformed/filtered ones)
KAFKA_UPDATES = 12  # kafka_to_postgres_upsert/kafka_to_kafka: ids 0..11 are sent again with new values
KAFKA_T0 = dt.datetime(2024, 3, 9, 22, 10, tzinfo=dt.UTC)  # record timestamps cross midnight: 2 dates, 5 hours
EVENTS_T0 = dt.datetime(2024, 3, 9, 10, 0, tzinfo=dt.UTC)  # kafka_to_postgres event times: 8 minutes
PAGES = ("/", "/cart", "/checkout", "/product")
EVENT_DUPLICATE_EVERY = 9  # every 9th event is sent again (an exact copy) 3 messages later


@dataclasses.dataclass(frozen=True)
class Message:
    """One seed message; the partition is a function of the key, so every run puts it at the same offset."""

    key: bytes
    value: bytes | None
    timestamp_ms: int

    @property
    def partition(self) -> int:
        return self.partition_in(KAFKA_PARTITIONS)

    def partition_in(self, partitions: int) -> int:
        """Its partition in a topic of ``partitions`` partitions (CRC32 of the key, as librdkafka's default)."""
        return zlib.crc32(self.key) % partitions


def _ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def order_record(i: int, version: int = 0) -> dict[str, Any]:
    """Seed record ``i`` of the orders-like topics (``version`` 1: the later update of that id)."""
    amount = float(f"{i + 100 * version}.{(i * 7) % 89 + 10}")  # never a whole number: always a JSON float
    return {"id": i, "name": f"name-{i}" + ("-v2" if version else ""), "country": COUNTRIES[i % len(COUNTRIES)],
            "amount": amount}


def _order_timestamp(i: int) -> dt.datetime:
    return KAFKA_T0 + dt.timedelta(seconds=61 * i)


# messages that never become rows: (key, value); bad JSON, a JSON array, invalid UTF-8, a tombstone
_MALFORMED: tuple[tuple[bytes, bytes | None], ...] = (
    (b"bad-json", b'{"id": 9, "name": "unterminated'),
    (b"bad-array", b"[1, 2, 3]"),
    (b"bad-utf8", b'{"id": 7, "name": "\xff\xfe"}'),
    (b"bad-tombstone", None),
)


def order_messages(updates: bool = True) -> list[Message]:
    """KAFKA_RECORDS orders keyed by id, the malformed messages and two without an id spread among them,
    then (``updates``) ids 0..KAFKA_UPDATES-1 again with new values."""
    extras = {20 + 35 * n: m for n, m in enumerate(
        [*_MALFORMED, (b"no-id-1", _json({"name": "no id", "amount": 1.25})),
         (b"no-id-2", _json({"id": None, "name": "null id", "amount": 2.5}))])}
    messages = []
    for i in range(KAFKA_RECORDS):
        ts = _ms(_order_timestamp(i))
        messages.append(Message(str(i).encode(), _json(order_record(i)), ts))
        if i in extras:
            key, value = extras[i]
            messages.append(Message(key, value, ts + 500))
    if updates:
        last = _ms(_order_timestamp(KAFKA_RECORDS))
        messages += [Message(str(i).encode(), _json(order_record(i, 1)), last + i) for i in range(KAFKA_UPDATES)]
    return messages


def page_event(i: int) -> dict[str, Any]:
    """Seed event ``i`` of kafka_to_postgres: one every 2 s from EVENTS_T0, over 4 pages and 29 users."""
    ts = EVENTS_T0 + dt.timedelta(seconds=2 * i)
    return {"event_id": f"ev-{i:04d}", "page": PAGES[(i * 7 + i // 5) % len(PAGES)], "user": f"u{(i * 13) % 29}",
            "amount": float(f"{(i * 37) % 50}.{(i * 3) % 89 + 10}"), "ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ")}


def event_messages() -> list[Message]:
    """KAFKA_RECORDS events keyed by event_id; every EVENT_DUPLICATE_EVERY-th is sent again 3 messages
    later (a retrying producer: the same value, a later record timestamp); plus messages for the DLQ."""
    bad = {30: (b"ev-bad-amount", _json({**page_event(30), "event_id": "ev-bad-amount", "amount": "lots"})),
           90: (b"ev-bad-ts", _json({**page_event(90), "event_id": "ev-bad-ts", "ts": "yesterday"})),
           **{120 + 30 * n: m for n, m in enumerate(_MALFORMED)}}
    messages = []
    for i in range(KAFKA_RECORDS):
        event = page_event(i)
        ts = _ms(dt.datetime.fromisoformat(event["ts"]))
        messages.append(Message(event["event_id"].encode(), _json(event), ts))
        j = i - 3
        if j >= 0 and j % EVENT_DUPLICATE_EVERY == 0:
            again = page_event(j)
            messages.append(Message(again["event_id"].encode(), _json(again), ts + 1))
        if i in bad:
            key, value = bad[i]
            messages.append(Message(key, value, ts + 2))
    return messages


def expected_page_minutes() -> dict[tuple[str, dt.datetime], tuple[int, float, int]]:
    """kafka_to_postgres's result, by hand: (page, window_start) -> (events, revenue, distinct users)
    over the distinct events (each event_id once)."""
    groups: dict[tuple[str, dt.datetime], list[dict]] = collections.defaultdict(list)
    for i in range(KAFKA_RECORDS):
        event = page_event(i)
        start = dt.datetime.fromisoformat(event["ts"]).replace(second=0, tzinfo=None)
        groups[(event["page"], start)].append(event)
    return {key: (len(evs), sum(e["amount"] for e in evs), len({e["user"] for e in evs}))
            for key, evs in groups.items()}


def expected_orders(updates: bool = True) -> dict[int, dict[str, Any]]:
    """id -> the latest record of that id in order_messages()."""
    out = {i: order_record(i) for i in range(KAFKA_RECORDS)}
    if updates:
        out.update({i: order_record(i, 1) for i in range(KAFKA_UPDATES)})
    return out


def create_topics(*names: str, partitions: int = KAFKA_PARTITIONS) -> None:
    """Creates the topics with unlimited retention: the seed's record timestamps are in 2024, and the test
    broker's time retention (24 h, checked every minute) would otherwise delete them under a running test."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    require("kafka")
    admin = AdminClient(KAFKA.client_config())
    futures = admin.create_topics([NewTopic(name, partitions, 1, config={"retention.ms": "-1"}) for name in names],
                                  operation_timeout=30, request_timeout=35)
    for future in futures.values():
        try:
            future.result()
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    for name in names:
        KAFKA.create_topic(name, partitions)  # checks the partition count, waits until each has a leader


def drop_topics(*names: str) -> None:
    for name in names:
        KAFKA.delete_topic(name)


def produce(topic: str, messages: Iterable[Message], partitions: int = KAFKA_PARTITIONS) -> None:
    """Sends ``messages`` in order from one idempotent producer (so each partition gets them in that order)
    to a topic of ``partitions`` partitions."""
    from confluent_kafka import Producer

    failures: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(f"{msg.key()!r}: {err}")

    producer = Producer(KAFKA.client_config(**{"enable.idempotence": True, "linger.ms": 5}))
    for m in messages:
        producer.produce(topic, key=m.key, value=m.value, partition=m.partition_in(partitions),
                         timestamp=m.timestamp_ms, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(60) == 0, "seed messages still undelivered after 60 s"
    assert not failures, f"seed messages not delivered to {topic}: {failures[:5]}"


def read_topic_rows(topic: str, timeout_s: float = 60.0, partitions: int = KAFKA_PARTITIONS) -> list[dict[str, Any]]:
    """Every committed message of ``topic`` (read_committed) as {partition, key, value}, the value parsed as
    JSON; reads until each partition is at its end."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(KAFKA.client_config(**{"group.id": f"tpl-reader-{uuid.uuid4().hex[:8]}",
                                               "isolation.level": "read_committed",
                                               "enable.auto.commit": False, "enable.partition.eof": True}))
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    rows: list[dict[str, Any]] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while len(at_end) < partitions:
            assert time.monotonic() < deadline, f"reading topic {topic}: no end after {timeout_s} s"
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error():
                    at_end.add(msg.partition())
                    continue
                at_end.discard(msg.partition())
                value = msg.value()
                rows.append({"partition": msg.partition(), "key": msg.key().decode() if msg.key() else None,
                             "value": json.loads(value) if value is not None else None})
    finally:
        consumer.close()
    return rows


def _kafka_overrides(group: str) -> list[str]:
    return [f"params.bootstrap={KAFKA.bootstrap}", f"params.group={group}", "params.stop=latest"]


@contextlib.contextmanager
def _kafka_into_postgres(sinks: Path | None, messages: list, topic_prefix: str,
                         table_prefix: str) -> Iterator[list[str]]:
    """A seeded topic and a PostgreSQL target table (copied to ``sinks`` before it is dropped)."""
    require("kafka")
    require("postgres")
    topic, table = _unique(topic_prefix), _unique(table_prefix)
    create_topics(topic)
    try:
        produce(topic, messages)
        with _env(_pg_env()):
            try:
                yield [*_kafka_overrides(_unique("group")), f"params.topic={topic}", f"params.table={table}"]
            finally:
                try:
                    _dump_pg_table(table, sinks, "postgres_table")
                finally:
                    _pg_execute(f'DROP TABLE IF EXISTS "{table}"')
    finally:
        drop_topics(topic)


def _kafka_to_postgres(sinks: Path | None) -> contextlib.AbstractContextManager[list[str]]:
    return _kafka_into_postgres(sinks, event_messages(), "events", "page_minutes")


def _kafka_to_postgres_upsert(sinks: Path | None) -> contextlib.AbstractContextManager[list[str]]:
    return _kafka_into_postgres(sinks, order_messages(), "orders", "orders")


@contextlib.contextmanager
def _kafka_to_parquet(sinks: Path | None) -> Iterator[list[str]]:
    require("kafka")
    topic = _unique("events")
    create_topics(topic)
    try:
        produce(topic, order_messages(updates=False))
        yield [*_kafka_overrides(_unique("group")), f"params.topic={topic}"]
    finally:
        drop_topics(topic)


@contextlib.contextmanager
def _kafka_to_kafka(sinks: Path | None) -> Iterator[list[str]]:
    require("kafka")
    source, sink = _unique("raw"), _unique("clean")
    create_topics(source, sink)
    try:
        produce(source, order_messages())
        try:
            yield [*_kafka_overrides(_unique("group")), f"params.input_topic={source}",
                   f"params.output_topic={sink}"]
        finally:
            if sinks is not None:
                _write_jsonl(sinks / "kafka_output_topic.jsonl", read_topic_rows(sink))
    finally:
        drop_topics(source, sink)


PREPARERS: dict[str, Preparer] = {
    "csv_to_postgres": _csv_to_postgres,
    "postgres_to_parquet": _postgres_to_parquet,
    "mysql_to_postgres": _mysql_to_postgres,
    "mongodb_to_s3_parquet": _mongodb_to_s3_parquet,
    "s3_to_postgres": _s3_to_postgres,
    "kafka_to_postgres": _kafka_to_postgres,
    "kafka_to_postgres_upsert": _kafka_to_postgres_upsert,
    "kafka_to_parquet": _kafka_to_parquet,
    "kafka_to_kafka": _kafka_to_kafka,
}


@contextlib.contextmanager
def prepared(template: str, sinks_to: Path | None = None) -> Iterator[list[str]]:
    """Services, seed data and overrides for ``template`` (none for file-only templates).

    With ``sinks_to``, what the run wrote to a database, topic or bucket is copied there on exit
    (before it is dropped)."""
    preparer = PREPARERS.get(template)
    if preparer is None:
        yield []
        return
    with preparer(sinks_to) as overrides:
        yield overrides
