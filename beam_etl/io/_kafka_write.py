"""WriteToKafka's DoFn: an idempotent producer, optionally transactional (one transaction per bundle).

Each batch's rows become JSON objects (or the text/bytes of one column); the key is the
text of the key fields. Without transactions, every batch is flushed before the next one and a
row whose delivery fails after the producer's own retries goes to the DLQ. With transactions,
the bundle's messages are committed together in ``finish_bundle`` (read_committed consumers see
all or none); a failed delivery aborts the transaction and fails the bundle, so the runner
retries it: nothing goes half-written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa

from beam_etl.batch import batch_nbytes, json_safe, row_as_record
from beam_etl.io import _kafka_ledger as ledger
from beam_etl.ops.context import get_run_context
from beam_etl.ops.dlq import DLQ_TAG, dead_letter
from beam_etl.ops.metrics import StepMetrics, timed_process
from beam_etl.ops.secrets import redact

_LOG = logging.getLogger(__name__)


class KafkaWriteError(RuntimeError):
    """The producer cannot reach the broker, or a transaction could not be committed."""


@dataclasses.dataclass(frozen=True)
class WriteOptions:
    bootstrap_servers: str
    topic: str
    key: tuple[str, ...]
    value_format: str  # json | text | bytes
    value_field: str | None  # text/bytes: the column sent as the value
    value_columns: tuple[str, ...] | None
    transactional: bool
    transactional_id_prefix: str
    compression: str
    flush_timeout_s: float
    timeout_s: float
    transaction_timeout_s: float = 15.0
    settings: tuple[tuple[str, str], ...] = dataclasses.field(default=(), repr=False)  # may hold credentials

    def settings_for_consumer(self) -> dict[str, str]:
        """The user's security settings, for the consumer that fetches group metadata."""
        return {k: v for k, v in self.settings if k.startswith(("security.", "sasl.", "ssl."))}

    def producer_config(self, transactional_id: str | None) -> dict[str, Any]:
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": self.compression,
            "linger.ms": 5,
            "message.timeout.ms": int(max(self.flush_timeout_s, 5) * 1000),
            "socket.timeout.ms": int(self.timeout_s * 1000),
            "logger": _LOG,
        }
        if transactional_id is not None:
            config["transactional.id"] = transactional_id
            # a job killed mid-transaction leaves it open until this timeout; until then the output's
            # read_committed consumers and the group's offsets wait for it
            config["transaction.timeout.ms"] = int(self.transaction_timeout_s * 1000)
        config.update(dict(self.settings))
        return config


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(json_safe(value), ensure_ascii=False)


def encode_rows(batch: pa.RecordBatch, opts: WriteOptions) -> tuple[list[bytes | None], list[bytes | None]]:
    """``(keys, values)`` for every row of ``batch``."""
    names = batch.schema.names
    if opts.key:
        key_columns = [batch.column(k).to_pylist() for k in opts.key]
        keys: list[bytes | None] = []
        for parts in zip(*key_columns, strict=True):
            keys.append(None if all(p is None for p in parts) else
                        "|".join("" if p is None else _text(p) for p in parts).encode("utf-8"))
    else:
        keys = [None] * batch.num_rows
    if opts.value_format == "json":
        columns = list(opts.value_columns) if opts.value_columns else names
        rows = batch.select(columns).to_pylist()
        values = [json.dumps(row, default=json_safe, ensure_ascii=False).encode("utf-8") for row in rows]
        return keys, values
    column = batch.column(opts.value_field or "value").to_pylist()
    if opts.value_format == "bytes":
        return keys, [None if v is None else bytes(v) for v in column]
    return keys, [None if v is None else _text(v).encode("utf-8") for v in column]


class WriteKafkaFn(beam.DoFn):
    """Produces every row; returns ``{"topic", "rows"}`` per batch and dead letters for failed rows."""

    def __init__(self, opts: WriteOptions, step: str) -> None:
        self._opts = opts
        self._step = step
        self._ctx = get_run_context()

    def setup(self) -> None:
        from confluent_kafka import KafkaException, Producer

        self._metrics = StepMetrics(self._step)
        transactional_id = (f"{self._opts.transactional_id_prefix}-{uuid.uuid4().hex[:12]}"
                            if self._opts.transactional else None)
        self._producer = Producer(self._opts.producer_config(transactional_id))
        self._in_transaction = False
        self._check_topic()
        if transactional_id is not None:
            try:
                self._producer.init_transactions(self._opts.timeout_s)
            except KafkaException as err:
                raise KafkaWriteError(f"{self._step}: cannot start transactions on {self._opts.bootstrap_servers}: "
                                      f"{redact(str(err))}") from None

    def _check_topic(self) -> None:
        """Fails at start-up, naming the topic, when it does not exist (rather than timing out per row)."""
        from confluent_kafka import KafkaException

        topic, servers = self._opts.topic, self._opts.bootstrap_servers
        try:
            meta = self._producer.list_topics(topic, timeout=self._opts.timeout_s).topics.get(topic)
        except KafkaException as err:
            raise KafkaWriteError(f"{self._step}: cannot reach Kafka at {servers} within {self._opts.timeout_s:g} s: "
                                  f"{redact(str(err))} (is the broker up?)") from None
        if meta is None or meta.error is not None:
            raise KafkaWriteError(f"{self._step}: topic {topic!r} does not exist on {servers}; create it first "
                                  "(automatic topic creation is not relied on)")

    def teardown(self) -> None:
        for consumer in self.__dict__.pop("_group_consumers", {}).values():
            consumer.close()
        producer, self._producer = getattr(self, "_producer", None), None
        if producer is not None:
            if self._in_transaction:
                producer.abort_transaction(self._opts.timeout_s)
            producer.flush(self._opts.flush_timeout_s)

    def start_bundle(self) -> None:
        if self._opts.transactional:
            ledger.clear()  # offsets recorded from here on were read in this bundle
        if getattr(self, "_in_transaction", False):  # a bundle that failed half-way: its messages are dropped
            self._producer.abort_transaction(self._opts.timeout_s)
            self._in_transaction = False

    @timed_process
    def process(self, batch: pa.RecordBatch) -> Iterator[Any]:
        if batch.num_rows == 0:
            return
        m = self._metrics
        m.batches_in.inc()
        m.records_in.inc(batch.num_rows)
        m.bytes_in.inc(batch_nbytes(batch))
        keys, values = encode_rows(batch, self._opts)
        if self._opts.transactional and not self._in_transaction:
            self._producer.begin_transaction()
            self._in_transaction = True
        failures: dict[int, str] = {}
        self._produce_all(keys, values, failures)
        remaining = self._producer.flush(self._opts.flush_timeout_s)
        if remaining:
            raise KafkaWriteError(f"{self._step}: {remaining} messages to {self._opts.topic} were not delivered "
                                  f"within {self._opts.flush_timeout_s:g} s (is the broker at "
                                  f"{self._opts.bootstrap_servers} up?)")
        if failures and self._opts.transactional:
            first = next(iter(failures.values()))
            raise KafkaWriteError(f"{self._step}: {len(failures)} messages to {self._opts.topic} failed in a "
                                  f"transaction ({first}); the transaction is aborted and the bundle retried")
        for row in sorted(failures):
            record = row_as_record(batch, row)
            yield beam.pvalue.TaggedOutput(DLQ_TAG, dead_letter(
                record, error_type="transient_exhausted", error=failures[row], exception="KafkaException",
                step=self._step, source=f"kafka:{self._opts.topic}", ctx=self._ctx))
        if failures:
            m.records_failed.inc(len(failures))
        written = batch.num_rows - len(failures)
        m.records_out.inc(written)
        yield {"topic": self._opts.topic, "rows": written}

    def _produce_all(self, keys: list[bytes | None], values: list[bytes | None], failures: dict[int, str]) -> None:
        from confluent_kafka import KafkaException

        producer, topic = self._producer, self._opts.topic
        for row, (key, value) in enumerate(zip(keys, values, strict=True)):
            def report(err: Any, _msg: Any, row: int = row) -> None:
                if err is not None:
                    failures[row] = redact(str(err))
            while True:
                try:
                    producer.produce(topic, value=value, key=key, on_delivery=report)
                    break
                except BufferError:
                    producer.poll(0.05)  # the local queue is full: let deliveries drain
                except KafkaException as err:
                    failures[row] = redact(str(err))
                    break
            if row % 1000 == 999:
                producer.poll(0)

    def _group_metadata(self, group: str) -> Any:
        from confluent_kafka import Consumer

        cache = self.__dict__.setdefault("_group_consumers", {})
        if group not in cache:
            cache[group] = Consumer({"bootstrap.servers": self._opts.bootstrap_servers, "group.id": group,
                                     "enable.auto.commit": False, **dict(self._opts.settings_for_consumer())})
        return cache[group].consumer_group_metadata()

    def finish_bundle(self) -> None:
        if not self._opts.transactional:
            return
        from confluent_kafka import KafkaException, TopicPartition

        read = ledger.take()  # the source offsets of this bundle commit inside the transaction
        if not self._in_transaction and not read:
            return
        try:
            if not self._in_transaction:
                self._producer.begin_transaction()
                self._in_transaction = True
            for group, offsets in read.items():
                self._producer.send_offsets_to_transaction(
                    [TopicPartition(t, p, o) for t, p, o in offsets], self._group_metadata(group),
                    self._opts.timeout_s)
            self._producer.commit_transaction(self._opts.timeout_s)
        except KafkaException as err:
            self._producer.abort_transaction(self._opts.timeout_s)
            raise KafkaWriteError(f"{self._step}: committing the transaction to {self._opts.topic} failed: "
                                  f"{redact(str(err))}; it was aborted and the bundle will be retried") from None
        finally:
            self._in_transaction = False
