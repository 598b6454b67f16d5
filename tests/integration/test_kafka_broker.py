"""The Kafka broker of scripts/services.sh works as the Kafka connector's tests need it: topics
with several partitions, an idempotent producer, consumer groups, and transactions (commit and
abort, seen through a read_committed consumer)."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from tests.services import KAFKA


@pytest.fixture
def topic_name(kafka_bootstrap):
    """A unique topic name; the topic (if a test created it) is deleted afterwards."""
    name = f"beam_etl_test_{uuid.uuid4().hex[:12]}"
    yield name
    KAFKA.delete_topic(name)


def _consume(consumer: Consumer, count: int, timeout: float = 60.0) -> list:
    """Polls until ``count`` data messages arrived (or ``timeout`` seconds passed)."""
    messages, deadline = [], time.monotonic() + timeout
    while len(messages) < count and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=500, timeout=1.0):
            if msg.error() is None:
                messages.append(msg)
            elif msg.error().code() != KafkaError._PARTITION_EOF:
                raise AssertionError(f"consumer error: {msg.error()}")
    return messages


def test_topic_with_three_partitions_round_trips_1000_keyed_messages(kafka_bootstrap, topic_name):
    KAFKA.create_topic(topic_name, partitions=3)
    KAFKA.create_topic(topic_name, partitions=3)  # idempotent
    producer = Producer(KAFKA.client_config(**{"enable.idempotence": True, "acks": "all", "linger.ms": 5}))
    delivered, errors = [], []

    def on_delivery(err, msg):
        (errors if err is not None else delivered).append(err or msg)

    sent = {f"value-{i:04d}": f"key-{i % 37}" for i in range(1000)}
    for value, key in sent.items():
        producer.produce(topic_name, key=key.encode(), value=value.encode(), on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(30) == 0, "messages still queued after 30 s"
    assert errors == []
    assert len(delivered) == 1000
    assert {m.partition() for m in delivered} == {0, 1, 2}

    consumer = Consumer(KAFKA.client_config(**{
        "group.id": f"{topic_name}_group", "auto.offset.reset": "earliest", "enable.auto.commit": False}))
    try:
        consumer.subscribe([topic_name])
        received = _consume(consumer, 1000)
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()

    assert sorted(m.value().decode() for m in received) == sorted(sent)
    assert all(sent[m.value().decode()] == m.key().decode() for m in received)
    partitions_of_key, values_of_key = defaultdict(set), defaultdict(list)
    for m in received:
        partitions_of_key[m.key()].add(m.partition())
        values_of_key[m.key()].append(m.value().decode())
    assert all(len(p) == 1 for p in partitions_of_key.values()), "a key was spread over partitions"
    assert all(v == sorted(v) for v in values_of_key.values()), "a key's messages arrived out of order"


def test_transactions_read_committed_sees_only_committed(kafka_bootstrap, topic_name):
    KAFKA.create_topic(topic_name, partitions=1)
    producer = Producer(KAFKA.client_config(**{"transactional.id": f"{topic_name}_txn"}))
    producer.init_transactions(30)

    def transaction(prefix: str, n: int, commit: bool) -> None:
        producer.begin_transaction()
        for i in range(n):
            producer.produce(topic_name, key=b"k", value=f"{prefix}-{i}".encode())
        if commit:
            producer.commit_transaction(30)
        else:
            producer.flush(30)  # the aborted records really are in the log
            producer.abort_transaction(30)

    transaction("committed-a", 10, commit=True)
    transaction("aborted", 10, commit=False)
    transaction("committed-b", 5, commit=True)
    expected = [f"committed-a-{i}" for i in range(10)] + [f"committed-b-{i}" for i in range(5)]

    def read(isolation: str, count: int) -> list[str]:
        consumer = Consumer(KAFKA.client_config(**{
            "group.id": f"{topic_name}_{isolation}", "isolation.level": isolation,
            "enable.auto.commit": False, "enable.partition.eof": False}))
        try:
            consumer.assign([TopicPartition(topic_name, 0, OFFSET_BEGINNING)])
            return [m.value().decode() for m in _consume(consumer, count)]
        finally:
            consumer.close()

    # The last committed transaction comes after the aborted one, so reading all 15 committed
    # values means the consumer went past the aborted records.
    assert read("read_committed", len(expected)) == expected
    uncommitted = read("read_uncommitted", 25)
    assert len(uncommitted) == 25
    assert sum(v.startswith("aborted-") for v in uncommitted) == 10
