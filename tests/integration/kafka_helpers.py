"""Kafka test helpers: keyed test data, a streaming run in its own process group, topic readers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

REPO = Path(__file__).resolve().parents[2]


def record(i: int) -> dict:
    """The test record with id ``i``: its values are a function of the id, so the sink can be checked."""
    return {"id": i, "name": f"name-{i}", "amount": round(i * 0.25, 2)}


def produce(bootstrap: str, topic: str, ids: range) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 20})
    for i in ids:
        while True:
            try:
                producer.produce(topic, key=str(i).encode(), value=json.dumps(record(i)).encode())
                break
            except BufferError:
                producer.poll(0.05)
        if i % 5000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        return [tp.offset for tp in consumer.committed([TopicPartition(topic, p) for p in range(partitions)],
                                                       timeout=10)]
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "beam_etl_tests_probe"})
    try:
        return [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)]
    finally:
        consumer.close()


def read_topic(bootstrap: str, topic: str, partitions: int, expect: int = 0, idle_s: float = 3.0,
               timeout_s: float = 120.0) -> list[tuple[bytes, bytes]]:
    """Every committed message of ``topic`` (read_committed), as (key, value).

    Reads until every partition is at its end and nothing came for ``idle_s``, and at least
    ``expect`` messages came (a killed producer's open transaction hides the messages after it
    until the broker aborts it), or until ``timeout_s``.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{time.time_ns()}",
                         "isolation.level": "read_committed", "enable.auto.commit": False,
                         "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[tuple[bytes, bytes]] = []
    at_end: set[int] = set()
    started = last = time.monotonic()
    try:
        while time.monotonic() - started < timeout_s:
            for msg in consumer.consume(10_000, timeout=0.5):
                if msg.error():
                    at_end.add(msg.partition())
                    continue
                at_end.discard(msg.partition())
                out.append((msg.key(), msg.value()))
                last = time.monotonic()
            if len(at_end) == partitions and len(out) >= expect and time.monotonic() - last > idle_s:
                break
    finally:
        consumer.close()
    return out


class StreamingRun:
    """``python -m beam_etl.run ...`` in its own process group (Prism and the workers die with it)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._file = log.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "beam_etl.run", *args], cwd=REPO, env=env,
                                     stdout=self._file, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.killpg(self.proc.pid, sig)
        self.proc.wait(60)
        self._file.close()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def wait_for(condition: Callable[[], bool], timeout_s: float, run: StreamingRun, what: str,
             interval_s: float = 0.05) -> None:
    """Polls ``condition``; fails with the run's log when it dies or the time is up."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if not run.alive():
            raise AssertionError(f"the run exited ({run.proc.returncode}) before {what}; its log:\n{run.tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; the run's log:\n{run.tail()}")
        time.sleep(interval_s)
