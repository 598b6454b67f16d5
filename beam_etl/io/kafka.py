"""Kafka IO in Python (confluent-kafka): ``ReadFromKafka`` and ``WriteToKafka``.

Beam's own Python Kafka IO is a Java cross-language transform (an expansion service and a
runner that runs Java). These are plain Python transforms that run on every runner:

* ``ReadFromKafka``: a splittable DoFn per topic-partition with the offset range as its
  restriction. Start at the group's committed offsets, the earliest or latest offsets, or the
  first offsets at a timestamp; stop never (streaming) or at the offsets that were the latest at
  start (a bounded read for batch runs). Values decode as JSON objects (one column per field),
  text or bytes; messages that do not decode go to the DLQ naming topic/partition/offset. Event
  time is the record timestamp or a value field; the watermark follows the earliest event time
  of each poll (minus ``watermark_lag``) and wall-clock time when a partition is idle. Offsets are
  committed to the consumer group in the bundle finaliser, i.e. only after the runner has
  durably processed the bundle's output.
* ``WriteToKafka``: an idempotent producer (acks=all); with ``transactional: true`` one
  transaction per bundle.

See docs/connectors-kafka.md.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import apache_beam as beam
from pydantic import Field, model_validator

from beam_etl import registry
from beam_etl.io import _kafka_common as kc
from beam_etl.io._kafka_read import (
    PartitionRestrictions,
    ReadOptions,
    ReadPartitionFn,
    ReadUnboundedPartitionFn,
    _PlanFn,
)
from beam_etl.io._kafka_write import WriteKafkaFn, WriteOptions
from beam_etl.ops.dlq import DLQ_TAG

DEFAULT_BATCH_ROWS = 10_000
__all__ = ["ReadFromKafka", "WriteToKafka", "PartitionRestrictions"]


def _start_timestamp_ms(start: str, start_timestamp: Any) -> int | None:
    if start != "timestamp":
        if start_timestamp is not None:
            raise ValueError("start_timestamp: only used with start: timestamp")
        return None
    if start_timestamp is None:
        raise ValueError("start_timestamp: required with start: timestamp (ISO-8601 text or epoch milliseconds)")
    if isinstance(start_timestamp, (int, float)) and not isinstance(start_timestamp, bool):
        return int(start_timestamp)
    if isinstance(start_timestamp, dt.datetime):
        value = start_timestamp
    else:
        try:
            value = dt.datetime.fromisoformat(str(start_timestamp).replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"start_timestamp: {start_timestamp!r} is neither ISO-8601 text nor epoch "
                             "milliseconds") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp() * 1000)


def _positive(field: str, value: Any, whole: bool = False) -> None:
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        raise ValueError(f"{field}: expected a {'whole ' if whole else ''}number > 0, got {value!r}")


class ReadFromKafka(beam.PTransform):
    """Reads Kafka topics as timestamped RecordBatches; returns ``(batches, dead_letters)``.

    ``p | ReadFromKafka(bootstrap_servers="localhost:9092", topics=["orders"], group_id="etl",
    start="committed", stop="never")``
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topics: str | Sequence[str],
        group_id: str | None = None,
        start: str = "committed",
        start_timestamp: Any = None,
        stop: str = "never",
        value_format: str = "json",
        key_format: str = "text",
        metadata: Sequence[str] | None = ("key", "partition", "offset", "timestamp"),
        columns: Sequence[str] | None = None,
        schema: Mapping[str, str] | None = None,
        event_time: str | None = None,
        watermark_lag: Any = "0s",
        batch_rows: int = DEFAULT_BATCH_ROWS,
        poll_timeout: Any = "100ms",
        max_bundle: Any = "2s",
        idle_resume: Any = "200ms",
        commit_offsets: bool = True,
        exactly_once: bool = False,
        timeout: Any = "10s",
        consumer_config: Mapping[str, Any] | None = None,
        *,
        step_name: str | None = None,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        kc.check_choice("start", start, kc.START_MODES)
        kc.check_choice("stop", stop, kc.STOP_MODES)
        kc.check_choice("value_format", value_format, kc.VALUE_FORMATS)
        kc.check_choice("key_format", key_format, kc.KEY_FORMATS)
        if start == "committed" and not group_id:
            raise ValueError("group_id: start 'committed' reads the group's committed offsets; name the group "
                             "(or use start: earliest/latest)")
        if exactly_once and not (group_id and commit_offsets):
            raise ValueError("exactly_once: needs group_id and commit_offsets: true (the restart point is the "
                             "group's committed offsets)")
        if commit_offsets and not group_id:
            commit_offsets = False  # nothing to commit to; said in display data
        self.exactly_once = bool(exactly_once)
        if event_time is not None and value_format != "json":
            raise ValueError("event_time: a value field needs value_format json (leave it out to use the record "
                             "timestamp)")
        if columns is not None and (not columns or not all(isinstance(c, str) and c for c in columns)):
            raise ValueError(f"columns: expected a non-empty list of field names, got {columns!r}")
        _positive("batch_rows", batch_rows, whole=True)
        self._settings = kc.client_settings(consumer_config, kc._RESERVED_CONSUMER, "consumer_config")
        decode = kc.DecodeOptions(value_format, key_format, kc.check_metadata(metadata),
                                  tuple(columns) if columns else None, kc.check_types(schema), event_time)
        self._opts = ReadOptions(
            bootstrap_servers=kc.check_bootstrap(bootstrap_servers), topics=kc.check_topics(topics),
            group_id=group_id, start=start, start_timestamp_ms=_start_timestamp_ms(start, start_timestamp),
            stop=stop, decode=decode, batch_rows=batch_rows,
            poll_timeout_s=kc.parse_seconds(poll_timeout, "poll_timeout"),
            max_bundle_s=kc.parse_seconds(max_bundle, "max_bundle"),
            idle_resume_s=kc.parse_seconds(idle_resume, "idle_resume"),
            watermark_lag_s=kc.parse_seconds(watermark_lag, "watermark_lag"), commit_offsets=bool(commit_offsets),
            timeout_s=kc.parse_seconds(timeout, "timeout"), settings=tuple(sorted(self._settings.items())))
        self._step_name = step_name

    @property
    def bounded(self) -> bool:
        return self._opts.stop != "never"

    @property
    def options(self) -> ReadOptions:
        return self._opts

    def display_data(self) -> dict[str, Any]:
        o = self._opts
        data: dict[str, Any] = {
            "bootstrap_servers": o.bootstrap_servers, "topics": ", ".join(o.topics), "group_id": o.group_id or "",
            "start": o.start, "stop": o.stop, "value_format": o.decode.value_format,
            "commit_offsets": o.commit_offsets, "exactly_once": self.exactly_once, "batch_rows": o.batch_rows}
        if self._settings:
            data["consumer_config"] = str(kc.displayable_settings(self._settings))
        return data

    def expand(self, pbegin: beam.pvalue.PBegin) -> tuple[beam.PCollection, beam.PCollection]:
        step = self._step_name or self.label
        partitions = (pbegin | "Start" >> beam.Impulse() | "Partitions" >> beam.ParDo(_PlanFn(self._opts))
                      | "Spread" >> beam.Reshuffle())
        reader = ReadPartitionFn if self.bounded else ReadUnboundedPartitionFn
        results = partitions | "Read" >> beam.ParDo(reader(self._opts, step)).with_outputs(
            DLQ_TAG, main="output")
        return results.output, results[DLQ_TAG]


class WriteToKafka(beam.PTransform):
    """Writes RecordBatches to a Kafka topic; returns ``(written, dead_letters)``.

    ``batches | WriteToKafka(bootstrap_servers="localhost:9092", topic="clean", key=["id"])``
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        key: Sequence[str] | None = None,
        value_format: str = "json",
        value_field: str | None = None,
        value_columns: Sequence[str] | None = None,
        transactional: bool = False,
        transactional_id_prefix: str = "beam_etl",
        compression: str = "lz4",
        flush_timeout: Any = "10s",
        timeout: Any = "10s",
        transaction_timeout: Any = "15s",
        producer_config: Mapping[str, Any] | None = None,
        *,
        step_name: str | None = None,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        kc.check_choice("value_format", value_format, kc.VALUE_FORMATS)
        kc.check_choice("compression", compression, kc.COMPRESSIONS)
        if value_format != "json" and value_columns is not None:
            raise ValueError("value_columns: only for value_format json (text/bytes send one value_field)")
        if value_format == "json" and value_field is not None:
            raise ValueError("value_field: only for value_format text or bytes (json sends whole rows)")
        for field, names in (("key", key), ("value_columns", value_columns)):
            if names is not None and (isinstance(names, str) or not names
                                      or not all(isinstance(n, str) and n for n in names)):
                raise ValueError(f"{field}: expected a non-empty list of field names, got {names!r}")
        self._settings = kc.client_settings(producer_config, kc._RESERVED_PRODUCER, "producer_config")
        self._opts = WriteOptions(
            bootstrap_servers=kc.check_bootstrap(bootstrap_servers), topic=kc.check_topics(topic)[0],
            key=tuple(key or ()), value_format=value_format, value_field=value_field,
            value_columns=tuple(value_columns) if value_columns else None, transactional=bool(transactional),
            transactional_id_prefix=transactional_id_prefix, compression=compression,
            flush_timeout_s=kc.parse_seconds(flush_timeout, "flush_timeout"),
            timeout_s=kc.parse_seconds(timeout, "timeout"),
            transaction_timeout_s=kc.parse_seconds(transaction_timeout, "transaction_timeout"),
            settings=tuple(sorted(self._settings.items())))
        if self._opts.transactional and self._opts.transaction_timeout_s < self._opts.flush_timeout_s:
            raise ValueError(f"transaction_timeout ({transaction_timeout}) must be at least flush_timeout "
                             f"({flush_timeout}): a transaction has to outlive the delivery of its batch")
        self._step_name = step_name

    @property
    def options(self) -> WriteOptions:
        return self._opts

    def display_data(self) -> dict[str, Any]:
        o = self._opts
        data: dict[str, Any] = {"bootstrap_servers": o.bootstrap_servers, "topic": o.topic,
                                "key": ", ".join(o.key), "value_format": o.value_format,
                                "transactional": o.transactional, "compression": o.compression}
        if self._settings:
            data["producer_config"] = str(kc.displayable_settings(self._settings))
        return data

    def expand(self, pcoll: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        step = self._step_name or self.label
        results = pcoll | "Write" >> beam.ParDo(WriteKafkaFn(self._opts, step)).with_outputs(DLQ_TAG, main="output")
        return results.output, results[DLQ_TAG]


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


class ReadFromKafkaConfig(registry.StrictConfig):
    """Reads Kafka topics (JSON, text or bytes values) as Arrow batches, one reader per partition."""

    bootstrap_servers: str = Field(description='Brokers, "host:port[,host:port]", e.g. "${KAFKA_BOOTSTRAP}".')
    topics: str | list[str] = Field(description="Topic name or names.")
    group_id: str | None = Field(default=None, description="Consumer group: where offsets are committed "
                                                           "(after the sink has the data) and read from.")
    start: str = Field(default="committed", description="committed (the group's offsets, else earliest), "
                                                        "earliest, latest or timestamp.")
    start_timestamp: str | int | None = Field(default=None, description="With start: timestamp: ISO-8601 text "
                                                                        "or epoch milliseconds.")
    stop: str = Field(default="never", description="never (streaming: needs a streaming runner such as Prism) "
                                                   "or latest (a bounded read up to the offsets at start).")
    value_format: str = Field(default="json", description="json (objects -> columns), text or bytes "
                                                          "(a 'value' column).")
    key_format: str = Field(default="text", description="text or bytes (the kafka_key column).")
    metadata: list[str] | None = Field(default=["key", "partition", "offset", "timestamp"],
                                       description="Columns kafka_<name> to add: topic, partition, offset, "
                                                   "timestamp, key, headers.")
    columns: list[str] | None = Field(default=None, description="JSON fields to keep, in this order.")
    schema_: dict[str, str] | None = Field(default=None, alias="schema",
                                           description="Field -> type (string, int, float, bool, date, "
                                                       "timestamp); rows that do not cast go to the DLQ.")
    event_time: str | None = Field(default=None, description="JSON field holding the event time (else the "
                                                             "record timestamp).")
    watermark_lag: str | float = Field(default="0s", description="How far the watermark stays behind the "
                                                                 "earliest event time seen.")
    batch_rows: int = Field(default=DEFAULT_BATCH_ROWS, description="Most messages per poll/batch.")
    poll_timeout: str | float = Field(default="100ms", description="How long one poll waits for messages (the "
                                                                   "latency floor at low rates).")
    max_bundle: str | float = Field(default="2s", description="A reader checkpoints after this long, so "
                                                              "downstream steps run and offsets commit.")
    idle_resume: str | float = Field(default="200ms", description="When a partition is caught up: pause "
                                                                  "before polling it again.")
    commit_offsets: bool = Field(default=True, description="Commit offsets to group_id after each bundle is "
                                                           "durably processed.")
    exactly_once: bool = Field(default=False, description="Refuse to build unless every sink below writes "
                                                           "idempotently and the runner can keep the guarantee "
                                                           "(see docs/connectors-kafka.md).")
    timeout: str | float = Field(default="10s", description="Broker connect/metadata timeout.")
    consumer_config: dict[str, Any] | None = Field(default=None, description="Extra librdkafka consumer settings "
                                                                             "(security.protocol, sasl.*).")

    model_config = {**registry.StrictConfig.model_config, "populate_by_name": True}

    @model_validator(mode="after")
    def _validate(self) -> ReadFromKafkaConfig:
        ReadFromKafka(**self.kwargs())
        return self

    def kwargs(self) -> dict[str, Any]:
        values = self.model_dump(by_alias=False)
        values["schema"] = values.pop("schema_")
        return values


class WriteToKafkaConfig(registry.StrictConfig):
    """Writes Arrow batches to a Kafka topic: idempotent producer, optionally transactional."""

    bootstrap_servers: str = Field(description='Brokers, "host:port[,host:port]".')
    topic: str = Field(description="Topic to write (it must exist).")
    key: list[str] | None = Field(default=None, description="Fields whose values form the message key "
                                                            "(joined with '|').")
    value_format: str = Field(default="json", description="json (the row as an object), text or bytes.")
    value_field: str | None = Field(default=None, description="text/bytes: the column sent as the value.")
    value_columns: list[str] | None = Field(default=None, description="json: the columns to send (default all).")
    transactional: bool = Field(default=False, description="One Kafka transaction per bundle (read_committed "
                                                           "consumers see whole bundles only).")
    transactional_id_prefix: str = Field(default="beam_etl", description="Prefix of the transactional.id.")
    compression: str = Field(default="lz4", description="none, gzip, snappy, lz4 or zstd.")
    flush_timeout: str | float = Field(default="10s", description="How long a batch may take to be delivered.")
    timeout: str | float = Field(default="10s", description="Broker connect/transaction timeout.")
    transaction_timeout: str | float = Field(default="15s", description="How long the broker keeps an "
                                                                        "unfinished transaction (a killed job's) "
                                                                        "open before aborting it.")
    producer_config: dict[str, Any] | None = Field(default=None, description="Extra librdkafka producer settings.")

    @model_validator(mode="after")
    def _validate(self) -> WriteToKafkaConfig:
        WriteToKafka(**self.model_dump())
        return self


def _read_requires(config: ReadFromKafkaConfig) -> frozenset[str]:
    features = {"bundle_finalization"} if config.commit_offsets and config.group_id else set()
    if config.stop == "never":
        features |= {"streaming", "unbounded_sdf"}
    return frozenset(features)


@registry.register("source", "ReadFromKafka", ReadFromKafkaConfig, requires=_read_requires, streaming=True)
def read_from_kafka(config: ReadFromKafkaConfig, ctx: registry.BuildContext) -> beam.PTransform:
    """Reads Kafka topics (JSON, text or bytes values) as Arrow batches, one reader per partition."""
    return ReadFromKafka(**config.kwargs(), step_name=ctx.step_name)


@registry.register("sink", "WriteToKafka", WriteToKafkaConfig, streaming=True,
                   idempotent=lambda c: c.transactional)
def write_to_kafka(config: WriteToKafkaConfig, ctx: registry.BuildContext) -> beam.PTransform:
    """Writes Arrow batches to a Kafka topic: idempotent producer, optionally transactional."""
    return WriteToKafka(**config.model_dump(), step_name=ctx.step_name)
