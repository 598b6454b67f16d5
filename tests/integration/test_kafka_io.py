"""ReadFromKafka / WriteToKafka against the real broker of scripts/services.sh (Kafka 4, PLAINTEXT).

Every pipeline here is a bounded batch run (``stop="latest"``) on the default runner; the
streaming, kill-and-restart behaviour lives in test_kafka_exactly_once.py.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import apache_beam as beam
import psycopg2
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline
from apache_beam.transforms.display import DisplayData
from confluent_kafka import Producer

from beam_etl.io.kafka import ReadFromKafka, WriteToKafka
from beam_etl.ops.metrics import summarise
from tests.collect import read_elements, write_element
from tests.integration.kafka_helpers import REPO, committed, end_offsets, produce, read_topic, record
from tests.services import KAFKA, POSTGRES

# a bounded read must never poll on forever: fail with a stack dump, not a hang
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
UTC = dt.UTC
# Record timestamps must stay inside the broker's retention (24 h, checked every minute): older records are
# deleted under the test. So they start an hour ago, on a whole second.
BASE_MS = (int(time.time()) - 3600) * 1000
FIELD_BASE_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z: event times in values are not the broker's business


@pytest.fixture
def new_topic(kafka_bootstrap) -> Callable[..., str]:
    """``new_topic(partitions=1)`` creates a uniquely named topic; every one is deleted afterwards."""
    created: list[str] = []

    def make(partitions: int = 1) -> str:
        name = f"beam_etl_kio_{uuid.uuid4().hex[:12]}"
        created.append(name)
        KAFKA.create_topic(name, partitions)
        return name

    try:
        yield make
    finally:
        for name in created:
            KAFKA.delete_topic(name)


def send(bootstrap: str, topic: str, messages: list[dict]) -> list[tuple[int, int]]:
    """Produces ``messages`` (Producer.produce keyword arguments), in order; returns their (partition, offset)."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    delivered: list = []
    for m in messages:
        producer.produce(topic, on_delivery=lambda err, msg: delivered.append((err, msg)), **m)
    assert producer.flush(30) == 0
    assert all(err is None for err, _ in delivered)
    return [(msg.partition(), msg.offset()) for _, msg in delivered]


def run(build, tmp_path: Path) -> tuple[pa.Table | None, list, dict]:
    """Runs ``build(p) -> (batches, others)``; returns the collected batches, other elements and counters."""
    out_dir, other_dir = tmp_path / f"out-{uuid.uuid4().hex[:6]}", tmp_path / f"other-{uuid.uuid4().hex[:6]}"
    out_dir.mkdir()
    other_dir.mkdir()
    p = BeamPipeline()
    batches, others = build(p)
    if batches is not None:
        _ = batches | "CollectBatches" >> beam.Map(write_element, str(out_dir))
    if others is not None:
        _ = others | "CollectOthers" >> beam.Map(write_element, str(other_dir))
    result = p.run()
    result.wait_until_finish()
    table, _ = read_elements(str(out_dir))
    _, elements = read_elements(str(other_dir))
    return table, elements, summarise(result)


def read(tmp_path: Path, bootstrap: str, topic: str, **options) -> tuple[pa.Table | None, list, dict]:
    """A bounded ReadFromKafka: ``(rows, dead letters, counters)``."""
    options.setdefault("stop", "latest")

    def build(p):
        return p | ReadFromKafka(bootstrap, topic, **options)
    return run(build, tmp_path)


def ids(table: pa.Table | None) -> list[int]:
    return sorted(table.column("id").to_pylist()) if table is not None else []


def write(tmp_path: Path, batches: list[pa.RecordBatch], bootstrap: str, topic: str,
          **options) -> tuple[list, list, dict]:
    """Runs ``Create(batches) | WriteToKafka``: ``(written elements, dead letters, counters)``."""
    results_dir = tmp_path / f"written-{uuid.uuid4().hex[:6]}"
    results_dir.mkdir()

    def build(p):
        written, letters = p | beam.Create(batches) | WriteToKafka(bootstrap, topic, **options)
        _ = written | "CollectWritten" >> beam.Map(write_element, str(results_dir))
        return None, letters
    _, letters, counters = run(build, tmp_path)
    return read_elements(str(results_dir))[1], letters, counters


# ----------------------------------------------------------------------------- ReadFromKafka


def test_bounded_read_sends_bad_messages_to_the_dlq_and_commits_every_offset(kafka_bootstrap, new_topic, tmp_path):
    topic = new_topic(3)
    produce(kafka_bootstrap, topic, range(1000))
    # the last message of two partitions does not decode: the commit must still cover it
    bad = send(kafka_bootstrap, topic, [{"value": b"{not json", "key": b"bad-1", "partition": 0},
                                        {"value": b'{"id": \xff}', "key": b"bad-2", "partition": 2}])
    ends = end_offsets(kafka_bootstrap, topic, 3)
    assert sum(ends) == 1002
    group = f"{topic}_group"

    table, letters, counters = read(tmp_path, kafka_bootstrap, topic, group_id=group, start="committed")

    assert ids(table) == list(range(1000))
    assert table.num_rows == 1000
    by_id = {r["id"]: r for r in table.to_pylist()}
    assert all({k: by_id[i][k] for k in ("id", "name", "amount")} == record(i) for i in range(1000))
    assert {by_id[i]["kafka_key"] for i in (0, 500, 999)} == {"0", "500", "999"}
    assert set(table.column("kafka_partition").to_pylist()) == {0, 1, 2}
    assert table.schema.field("kafka_timestamp").type == pa.timestamp("ms", tz="UTC")

    assert sorted(letter["source"] for letter in letters) == sorted(f"kafka:{topic}/{p}/{o}" for p, o in bad)
    by_key = {letter["record"]["key"]: letter for letter in letters}
    assert by_key["bad-1"]["record"]["value"] == "{not json"
    assert by_key["bad-1"]["error_type"] == "parse" and "not valid JSON" in by_key["bad-1"]["error"]
    assert by_key["bad-2"]["record"]["value"] == "hex:" + b'{"id": \xff}'.hex()
    assert by_key["bad-2"]["record"]["topic"] == topic and by_key["bad-2"]["step"] == "ReadFromKafka"
    assert counters["ReadFromKafka"]["records_in"] == 1002
    assert counters["ReadFromKafka"]["records_out"] == 1000
    assert counters["ReadFromKafka"]["records_failed"] == 2

    assert committed(kafka_bootstrap, group, topic, 3) == ends
    assert sum(committed(kafka_bootstrap, group, topic, 3)) == 1002


def test_start_earliest_and_latest(kafka_bootstrap, new_topic, tmp_path):
    topic = new_topic(2)
    produce(kafka_bootstrap, topic, range(20))
    table, letters, _ = read(tmp_path, kafka_bootstrap, topic, start="earliest")
    assert ids(table) == list(range(20)) and letters == []
    table, letters, _ = read(tmp_path, kafka_bootstrap, topic, start="latest")
    assert table is None and letters == []  # nothing arrived after the start


def test_start_committed_reads_only_what_is_new(kafka_bootstrap, new_topic, tmp_path):
    topic = new_topic(3)
    group = f"{topic}_group"
    produce(kafka_bootstrap, topic, range(30))
    first, _, _ = read(tmp_path, kafka_bootstrap, topic, group_id=group)  # no offsets yet: from the earliest
    assert ids(first) == list(range(30))
    again, _, _ = read(tmp_path, kafka_bootstrap, topic, group_id=group)
    assert again is None
    produce(kafka_bootstrap, topic, range(30, 40))
    new, _, _ = read(tmp_path, kafka_bootstrap, topic, group_id=group)
    assert ids(new) == list(range(30, 40))
    assert committed(kafka_bootstrap, group, topic, 3) == end_offsets(kafka_bootstrap, topic, 3)


def test_start_timestamp_reads_from_the_first_message_at_or_after_it(kafka_bootstrap, new_topic, tmp_path):
    topic = new_topic(2)
    send(kafka_bootstrap, topic, [{"value": json.dumps({"id": i}).encode(), "partition": i % 2,
                                   "timestamp": BASE_MS + i * 1000} for i in range(10)])
    table, _, _ = read(tmp_path, kafka_bootstrap, topic, start="timestamp", start_timestamp=BASE_MS + 5000)
    assert ids(table) == [5, 6, 7, 8, 9]
    iso = dt.datetime.fromtimestamp((BASE_MS + 7500) / 1000, UTC).isoformat().replace("+00:00", "Z")
    table, _, _ = read(tmp_path, kafka_bootstrap, topic, start="timestamp", start_timestamp=iso)
    assert ids(table) == [8, 9]
    table, _, _ = read(tmp_path, kafka_bootstrap, topic, start="timestamp", start_timestamp=BASE_MS + 60_000)
    assert table is None  # after the last message: nothing


class _Stamps(beam.DoFn):
    """One dict per batch: its element timestamp, its ids, and the record timestamps of its rows."""

    def process(self, batch: pa.RecordBatch, timestamp=beam.DoFn.TimestampParam):
        yield {"element_ms": timestamp.micros // 1000, "ids": batch.column("id").to_pylist(),
               "record_ms": batch.column("kafka_timestamp").cast(pa.int64()).to_pylist()}


def test_element_timestamps_follow_the_event_time_field_or_the_record_timestamp(kafka_bootstrap, new_topic,
                                                                                tmp_path):
    topic = new_topic(2)
    # the field runs one minute a message from 2024-01-01; the record timestamp one second a message from BASE_MS
    field_ms = {i: FIELD_BASE_MS + i * 60_000 for i in range(40)}
    record_ms = {i: BASE_MS + i * 1000 for i in range(40)}
    send(kafka_bootstrap, topic, [
        {"value": json.dumps({"id": i, "when": dt.datetime.fromtimestamp(field_ms[i] / 1000, UTC)
                              .isoformat().replace("+00:00", "Z")}).encode(),
         "partition": i % 2, "timestamp": record_ms[i]} for i in range(40)])

    def stamped(event_time):
        def build(p):
            rows, letters = p | ReadFromKafka(kafka_bootstrap, topic, start="earliest", stop="latest",
                                              event_time=event_time, metadata=["timestamp"], batch_rows=7)
            return None, rows | beam.ParDo(_Stamps())
        return run(build, tmp_path)[1]

    by_field = stamped("when")
    assert sorted(i for s in by_field for i in s["ids"]) == list(range(40))
    assert len(by_field) >= 6  # batch_rows=7: several batches per partition
    for s in by_field:
        assert s["element_ms"] == min(field_ms[i] for i in s["ids"]), s
    by_record = stamped(None)
    assert sorted(i for s in by_record for i in s["ids"]) == list(range(40))
    for s in by_record:
        assert s["record_ms"] == [record_ms[i] for i in s["ids"]]
        assert s["element_ms"] == min(s["record_ms"]), s


def test_text_and_bytes_values_with_key_and_headers(kafka_bootstrap, new_topic, tmp_path):
    topic = new_topic(1)
    send(kafka_bootstrap, topic, [
        {"value": b"first line", "key": b"k1", "headers": [("trace", b"t-1"), ("empty", None)]},
        {"value": b"\xff\xfe binary", "key": b"\xc3"},
        {"value": "héllo".encode(), "key": None},
    ])
    table, letters, _ = read(tmp_path, kafka_bootstrap, topic, start="earliest", value_format="text",
                             metadata=["topic", "offset", "key", "headers"])
    assert table.schema.field("value").type == pa.string()
    assert table.to_pylist() == [
        {"value": "first line", "kafka_topic": topic, "kafka_offset": 0, "kafka_key": "k1",
         "kafka_headers": [{"key": "trace", "value": b"t-1"}, {"key": "empty", "value": None}]},
        {"value": "héllo", "kafka_topic": topic, "kafka_offset": 2, "kafka_key": None, "kafka_headers": []},
    ]
    [letter] = letters
    assert letter["source"] == f"kafka:{topic}/0/1" and letter["error_type"] == "parse"
    assert "value is not valid UTF-8" in letter["error"]
    assert letter["record"]["value"] == "hex:" + b"\xff\xfe binary".hex()

    table, letters, _ = read(tmp_path, kafka_bootstrap, topic, start="earliest", value_format="bytes",
                             key_format="bytes", metadata=["key"])
    assert letters == []
    assert table.schema == pa.schema([("value", pa.binary()), ("kafka_key", pa.binary())])
    assert table.to_pylist() == [{"value": b"first line", "kafka_key": b"k1"},
                                 {"value": b"\xff\xfe binary", "kafka_key": b"\xc3"},
                                 {"value": "héllo".encode(), "kafka_key": None}]


def test_reading_a_missing_topic_fails_naming_it(kafka_bootstrap, tmp_path):
    missing = f"beam_etl_kio_missing_{uuid.uuid4().hex[:8]}"
    with pytest.raises(Exception) as err:
        read(tmp_path, kafka_bootstrap, missing, start="earliest", timeout="5s")
    assert f"topic {missing!r} does not exist" in str(err.value) and "create it first" in str(err.value)


class _Finalizer:
    def __init__(self) -> None:
        self.callbacks: list = []

    def register(self, callback) -> None:
        self.callbacks.append(callback)


def test_a_read_whose_first_offsets_were_deleted_reads_what_is_left(kafka_bootstrap, new_topic):
    """Drives the SDF body once, as a runner would, so the current behaviour cannot hang the test."""
    from apache_beam.io.restriction_trackers import OffsetRange
    from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
    from apache_beam.runners.sdf_utils import ThreadsafeRestrictionTracker
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    from beam_etl.io._kafka_read import PartitionOffsetTracker, ReadPartitionFn, plan_partitions

    topic = new_topic(1)
    produce(kafka_bootstrap, topic, range(10))
    opts = ReadFromKafka(kafka_bootstrap, topic, start="earliest", stop="latest", max_bundle="2s").options
    [plan] = plan_partitions(opts)
    assert plan == (topic, 0, 0, 10)
    admin = AdminClient(KAFKA.client_config())  # keep a reference: its futures never resolve once it is gone
    for future in admin.delete_records([TopicPartition(topic, 0, 5)]).values():
        future.result(timeout=30)  # what retention does to old segments

    fn = ReadPartitionFn(opts, "read")
    fn.setup()
    try:
        tracker = ThreadsafeRestrictionTracker(PartitionOffsetTracker(OffsetRange(plan[2], plan[3])))
        outputs = list(fn._read(plan, tracker, ManualWatermarkEstimator(None), _Finalizer()))
    finally:
        fn.teardown()
    read_ids = [i for out in outputs for i in out.value.column("id").to_pylist()]
    assert read_ids == [5, 6, 7, 8, 9]
    assert tracker.deferred_status() is None  # nothing left to resume: the bounded read ends


# ----------------------------------------------------------------------------- WriteToKafka


def orders(start: int, n: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([
        {"id": i, "name": f"name-{i}", "amount": i * 0.5,
         "at": dt.datetime(2024, 1, 1, tzinfo=UTC) + dt.timedelta(minutes=i), "tags": [f"t{i % 3}"]}
        for i in range(start, start + n)])


def test_write_json_rows_with_key_from_fields(kafka_bootstrap, new_topic, tmp_path):
    topic = new_topic(3)
    written, letters, counters = write(tmp_path, [orders(0, 50), orders(50, 50)], kafka_bootstrap, topic,
                                       key=["id", "name"])
    assert letters == []
    assert sorted(w["rows"] for w in written) == [50, 50] and {w["topic"] for w in written} == {topic}
    assert counters["WriteToKafka"]["records_out"] == 100
    messages = read_topic(kafka_bootstrap, topic, 3, idle_s=1.0)
    assert len(messages) == 100
    for key, value in messages:
        row = json.loads(value)
        i = row["id"]
        assert key == f"{i}|name-{i}".encode()
        assert row == {"id": i, "name": f"name-{i}", "amount": i * 0.5,
                       "at": (dt.datetime(2024, 1, 1, tzinfo=UTC) + dt.timedelta(minutes=i)).isoformat(),
                       "tags": [f"t{i % 3}"]}
    assert sorted(json.loads(v)["id"] for _, v in messages) == list(range(100))


def test_write_value_columns_and_text_and_bytes_values(kafka_bootstrap, new_topic, tmp_path):
    json_topic, text_topic, bytes_topic = new_topic(1), new_topic(1), new_topic(1)
    batch = pa.RecordBatch.from_pylist([{"id": 1, "name": "Ada", "blob": b"\x00\xff"},
                                        {"id": 2, "name": None, "blob": None}])
    write(tmp_path, [batch], kafka_bootstrap, json_topic, value_columns=["name", "id"])
    assert [(k, json.loads(v)) for k, v in read_topic(kafka_bootstrap, json_topic, 1, idle_s=1.0)] == [
        (None, {"name": "Ada", "id": 1}), (None, {"name": None, "id": 2})]

    write(tmp_path, [batch], kafka_bootstrap, text_topic, key=["id"], value_format="text", value_field="name")
    assert read_topic(kafka_bootstrap, text_topic, 1, idle_s=1.0) == [(b"1", b"Ada"), (b"2", None)]  # null: tombstone

    write(tmp_path, [batch], kafka_bootstrap, bytes_topic, value_format="bytes", value_field="blob")
    assert read_topic(kafka_bootstrap, bytes_topic, 1, idle_s=1.0) == [(None, b"\x00\xff"), (None, None)]


def test_transactional_write_is_seen_by_read_committed_consumers(kafka_bootstrap, new_topic, tmp_path):
    topic = new_topic(2)
    written, letters, _ = write(tmp_path, [orders(0, 40), orders(40, 60)], kafka_bootstrap, topic, key=["id"],
                                transactional=True, transactional_id_prefix=f"{topic}_tx")
    assert letters == [] and sum(w["rows"] for w in written) == 100
    messages = read_topic(kafka_bootstrap, topic, 2, idle_s=1.0)  # isolation.level read_committed
    assert sorted(json.loads(v)["id"] for _, v in messages) == list(range(100))
    assert all(k == str(json.loads(v)["id"]).encode() for k, v in messages)

    # ReadFromKafka reads read_committed too, and the commit markers at the end do not stall a bounded read
    group = f"{topic}_group"
    table, letters, _ = read(tmp_path, kafka_bootstrap, topic, group_id=group)
    assert ids(table) == list(range(100)) and letters == []
    again, _, _ = read(tmp_path, kafka_bootstrap, topic, group_id=group)
    assert again is None


def test_bounded_read_of_a_transactional_topic_commits_up_to_its_end(kafka_bootstrap, new_topic, tmp_path):
    topic = new_topic(2)
    write(tmp_path, [orders(0, 10)], kafka_bootstrap, topic, key=["id"], transactional=True)
    group = f"{topic}_group"
    table, _, _ = read(tmp_path, kafka_bootstrap, topic, group_id=group)
    assert ids(table) == list(range(10))
    assert committed(kafka_bootstrap, group, topic, 2) == end_offsets(kafka_bootstrap, topic, 2)


def test_write_to_a_missing_topic_fails_naming_the_topic(kafka_bootstrap, tmp_path):
    missing = f"beam_etl_kio_missing_{uuid.uuid4().hex[:8]}"
    try:
        _, letters, _ = write(tmp_path, [orders(0, 3)], kafka_bootstrap, missing, flush_timeout="5s",
                              timeout="5s")
    except Exception as err:  # noqa: BLE001 - a clear failure is one of the accepted outcomes
        message = str(err)
    else:
        message = " | ".join(letter["error"] for letter in letters)
    assert missing in message and "does not exist" in message


# ----------------------------------------------------------------------------- templates and secrets


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "beam_etl.run", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def _pg_env() -> dict[str, str]:
    pg = POSTGRES
    return {**os.environ, "PGHOST": pg.host, "PGPORT": str(pg.port), "PGUSER": pg.user, "PGPASSWORD": pg.password,
            "PGDATABASE": pg.database, "HF_HUB_OFFLINE": "1"}


def test_kafka_to_postgres_upsert_template_in_batch_mode(kafka_bootstrap, postgres_dsn, new_topic, tmp_path):
    topic = new_topic(3)
    table = f"kio_{uuid.uuid4().hex[:10]}"
    produce(kafka_bootstrap, topic, range(200))
    produce(kafka_bootstrap, topic, range(50))  # the same records again: the upsert absorbs them
    send(kafka_bootstrap, topic, [{"value": b'{"id": null, "name": "no key", "amount": 1}'}])
    args = ["--template", "kafka_to_postgres_upsert", "--output-dir", str(tmp_path / "out"),
            "--set", "params.stop=latest", "--set", f"params.bootstrap={kafka_bootstrap}",
            "--set", f"params.topic={topic}", "--set", f"params.table={table}", "--set", f"params.group={topic}"]

    def contents() -> list[tuple]:
        with psycopg2.connect(postgres_dsn) as conn, conn.cursor() as cur:
            cur.execute(f'SELECT id, name, amount, kafka_partition FROM "{table}" ORDER BY id')
            return cur.fetchall()

    try:
        first = _cli(args, _pg_env())
        assert first.returncode == 0, first.stderr[-3000:]
        assert "records read 251 | written 250 | filtered 1 | dead letters 0" in first.stdout
        rows = contents()
        assert [r[0] for r in rows] == list(range(200))
        assert all({"id": i, "name": n, "amount": float(a)} == record(i) for i, n, a, _ in rows)
        assert committed(kafka_bootstrap, topic, topic, 3) == end_offsets(kafka_bootstrap, topic, 3)

        second = _cli(args, _pg_env())  # start: committed -> nothing new
        assert second.returncode == 0, second.stderr[-3000:]
        assert "records read 0 |" in second.stdout
        assert contents() == rows

        again = _cli([*args, "--set", "params.start=earliest"], _pg_env())  # everything again: upserted, unchanged
        assert again.returncode == 0, again.stderr[-3000:]
        assert "records read 251 | written 250 | filtered 1" in again.stdout
        assert contents() == rows
    finally:
        with psycopg2.connect(postgres_dsn) as conn, conn.cursor() as cur:
            cur.execute(f'DROP TABLE IF EXISTS "{table}"')


def test_kafka_to_kafka_template_in_batch_mode(kafka_bootstrap, new_topic, tmp_path):
    source, sink = new_topic(2), new_topic(2)
    produce(kafka_bootstrap, source, range(100))
    args = ["--template", "kafka_to_kafka", "--output-dir", str(tmp_path / "out"), "--set", "params.stop=latest",
            "--set", f"params.bootstrap={kafka_bootstrap}", "--set", f"params.input_topic={source}",
            "--set", f"params.output_topic={sink}", "--set", f"params.group={source}"]
    result = _cli(args, {**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    messages = read_topic(kafka_bootstrap, sink, 2, idle_s=1.0)
    values = [json.loads(v) for _, v in messages]
    assert sorted(v["id"] for v in values) == list(range(100))
    assert all({k: v[k] for k in ("id", "name", "amount")} == record(v["id"]) for v in values)
    assert all(v["source_partition"] in (0, 1) and v["source_offset"] >= 0 for v in values)
    assert committed(kafka_bootstrap, source, source, 2) == end_offsets(kafka_bootstrap, source, 2)


CANARY = "kafka-canary-Secret-7f3e91"
SECRET_TEMPLATE = """
name: kafka_secret_canary
sources:
  - name: read
    type: ReadFromKafka
    config:
      bootstrap_servers: "{bootstrap}"
      topics: {topic}
      start: earliest
      stop: latest
      consumer_config: {{"sasl.username": "etl", "sasl.password": "{canary}"}}
sinks:
  - name: out
    type: WriteToJsonl
    input: read
    config: {{path: "{{{{ run_dir }}}}/rows", num_shards: 1}}
"""


def test_a_consumer_password_never_reaches_display_data_or_the_run_output(kafka_bootstrap, new_topic, tmp_path):
    """The PLAINTEXT broker ignores SASL settings (librdkafka accepts them), so the canary rides along a real run."""
    topic = new_topic(1)
    send(kafka_bootstrap, topic, [{"value": b'{"id": 1}'}, {"value": b"broken"}])

    transform = ReadFromKafka(kafka_bootstrap, topic, start="earliest", stop="latest",
                              consumer_config={"sasl.username": "etl", "sasl.password": CANARY})
    assert CANARY not in repr(transform.display_data())
    assert all(CANARY not in repr(item.value) for item in DisplayData.create_from(transform).items)
    p = beam.Pipeline()
    _ = p | transform
    shown = b"".join(d.SerializeToString() for t in p.to_runner_api().components.transforms.values()
                     for d in t.display_data)
    assert b"{'sasl.username': 'etl', 'sasl.password': '***'}" in shown and CANARY.encode() not in shown

    template = tmp_path / "secret.yaml"
    template.write_text(SECRET_TEMPLATE.format(bootstrap=kafka_bootstrap, topic=topic, canary=CANARY))
    out = tmp_path / "out"
    result = _cli(["--template", str(template), "--output-dir", str(out), "--log-level", "DEBUG"],
                  {**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]  # no error_budget: one dead letter does not fail it
    assert "records read 2 | written 1 | filtered 0 | dead letters 1" in result.stdout
    assert CANARY not in result.stdout and CANARY not in result.stderr
    files = [f for f in out.rglob("*") if f.is_file()]
    assert any(f.name == "summary.json" for f in files) and any("dlq" in f.parts for f in files)
    for f in files:
        assert CANARY.encode() not in f.read_bytes(), f
