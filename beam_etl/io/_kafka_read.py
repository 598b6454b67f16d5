"""ReadFromKafka's machinery: partition planning, the offset restriction, the splittable DoFn.

One element per topic-partition carries ``(topic, partition, start, stop)``; its restriction is
the offset range ``[start, stop)`` (``stop`` = ``UNBOUNDED`` for a streaming read). The reading
DoFn claims every offset it emits, checkpoints itself after ``max_bundle_s`` or when the partition
is idle (so downstream stages run and offsets get committed), and registers a bundle finaliser
that commits ``last offset + 1`` to the consumer group: offsets move only after the runner has
durably processed the bundle's output.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from beam_etl.batch import batch_nbytes
from beam_etl.io import _kafka_ledger as ledger
from beam_etl.io._kafka_common import Decoded, DecodeOptions, RawMessage, Rejected, decode_messages, event_times_ms
from beam_etl.ops import beam_compat
from beam_etl.ops.context import get_run_context
from beam_etl.ops.dlq import DLQ_TAG, dead_letter
from beam_etl.ops.metrics import StepMetrics
from beam_etl.ops.secrets import redact
from beam_etl.transforms.base import tag_source

_LOG = logging.getLogger(__name__)
UNBOUNDED = 2**63 - 1
beam_compat.install()  # imported by every worker that runs the reader (see beam_compat)


class KafkaReadError(RuntimeError):
    """The broker cannot be reached, a topic is missing, or an offset cannot be resolved."""


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """Everything a reading worker needs (picklable; secrets stay inside ``settings``)."""

    bootstrap_servers: str
    topics: tuple[str, ...]
    group_id: str | None
    start: str
    start_timestamp_ms: int | None
    stop: str
    decode: DecodeOptions
    batch_rows: int
    poll_timeout_s: float
    max_bundle_s: float
    idle_resume_s: float
    watermark_lag_s: float
    commit_offsets: bool
    timeout_s: float
    settings: tuple[tuple[str, str], ...] = dataclasses.field(default=(), repr=False)  # may hold credentials

    def consumer_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": self.group_id or "beam_etl-unset",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            # offsets deleted by retention between planning and reading: read what is left, not the end
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "socket.timeout.ms": int(self.timeout_s * 1000),
            "session.timeout.ms": max(6000, int(self.timeout_s * 1000)),
            "queued.max.messages.kbytes": 16384,  # prefetch per partition consumer (librdkafka's default: 64 MB)
            "logger": _LOG,
        }
        config.update(dict(self.settings))
        return config


def _consumer(opts: ReadOptions) -> Any:
    from confluent_kafka import Consumer

    return Consumer(opts.consumer_config())


def _describe(err: Any) -> str:
    return redact(str(err))


def plan_partitions(opts: ReadOptions) -> list[tuple[str, int, int, int]]:
    """``(topic, partition, start, stop)`` for every partition of every topic, offsets resolved now."""
    from confluent_kafka import KafkaException, TopicPartition

    consumer = _consumer(opts)
    try:
        try:
            listing = consumer.list_topics(timeout=opts.timeout_s)
        except KafkaException as err:
            raise KafkaReadError(f"cannot reach Kafka at {opts.bootstrap_servers} within {opts.timeout_s:g} s: "
                                 f"{_describe(err)} (is the broker up? see scripts/services.sh)") from None
        plans = []
        for topic in opts.topics:
            meta = listing.topics.get(topic)
            if meta is None or meta.error is not None:
                known = sorted(t for t in listing.topics if not t.startswith("__"))[:20]
                raise KafkaReadError(f"topic {topic!r} does not exist on {opts.bootstrap_servers} "
                                     f"(topics there: {known}); create it first")
            tps = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
            starts = _start_offsets(consumer, opts, tps)
            for tp, start in zip(tps, starts, strict=True):
                low, high = consumer.get_watermark_offsets(tp, timeout=opts.timeout_s)
                stop = high if opts.stop == "latest" else UNBOUNDED
                plans.append((topic, tp.partition, max(start, low), max(stop, max(start, low))))
        return plans
    finally:
        consumer.close()


def _start_offsets(consumer: Any, opts: ReadOptions, tps: list[Any]) -> list[int]:
    from confluent_kafka import TopicPartition

    marks = [consumer.get_watermark_offsets(tp, timeout=opts.timeout_s) for tp in tps]
    if opts.start == "earliest":
        return [low for low, _ in marks]
    if opts.start == "latest":
        return [high for _, high in marks]
    if opts.start == "timestamp":
        found = consumer.offsets_for_times([TopicPartition(tp.topic, tp.partition, opts.start_timestamp_ms)
                                            for tp in tps], timeout=opts.timeout_s)
        return [f.offset if f.offset >= 0 else high for f, (_, high) in zip(found, marks, strict=True)]
    committed = consumer.committed(tps, timeout=opts.timeout_s)  # "committed": the group's offsets, else earliest
    return [c.offset if c.offset >= 0 else low for c, (low, _) in zip(committed, marks, strict=True)]


class _PlanFn(beam.DoFn):
    def __init__(self, opts: ReadOptions) -> None:
        self._opts = opts

    def process(self, _: Any) -> Iterator[tuple[str, int, int, int]]:
        plans = plan_partitions(self._opts)
        _LOG.info("ReadFromKafka: %d partitions of %s", len(plans), ", ".join(self._opts.topics))
        yield from plans


class PartitionOffsetTracker(OffsetRestrictionTracker):
    """Offset ranges; an unbounded range only splits at a checkpoint (never in the middle of the future)."""

    def try_split(self, fraction_of_remainder: float) -> Any:
        if self.stop_position() == UNBOUNDED and fraction_of_remainder != 0:
            return None
        return super().try_split(fraction_of_remainder)

    def is_bounded(self) -> bool:
        return self.stop_position() != UNBOUNDED


class PartitionRestrictions(beam.transforms.core.RestrictionProvider):
    """The offset range of one partition; its size is the number of offsets left (bounded reads)."""

    def initial_restriction(self, element: tuple[str, int, int, int]) -> OffsetRange:
        return OffsetRange(element[2], element[3])

    def create_tracker(self, restriction: OffsetRange) -> PartitionOffsetTracker:
        return PartitionOffsetTracker(restriction)

    def restriction_size(self, element: Any, restriction: OffsetRange) -> int:
        if restriction.stop == UNBOUNDED:
            return 1 << 20  # unknown backlog: a nominal size
        return max(0, restriction.stop - restriction.start)

    def split(self, element: Any, restriction: OffsetRange) -> Iterator[OffsetRange]:
        yield restriction  # one reader per partition: Kafka orders within a partition

    def truncate(self, element: Any, restriction: OffsetRange) -> OffsetRange | None:
        return None if restriction.stop == UNBOUNDED else restriction  # drain: stop an endless read


class _ConsumerCache:
    """One assigned consumer per partition, kept across bundles of the same DoFn instance."""

    def __init__(self, opts: ReadOptions) -> None:
        self._opts = opts
        self._by_partition: dict[tuple[str, int], tuple[Any, int]] = {}
        self._lock = threading.Lock()

    def take(self, topic: str, partition: int, offset: int) -> Any:
        """A consumer whose next message is at ``offset`` (re-positioned when it is not)."""
        from confluent_kafka import TopicPartition

        with self._lock:
            cached = self._by_partition.pop((topic, partition), None)
        if cached is not None:
            consumer, position = cached
            if position != offset:
                consumer.seek(TopicPartition(topic, partition, offset))
            return consumer
        consumer = _consumer(self._opts)
        consumer.assign([TopicPartition(topic, partition, offset)])
        return consumer

    def give_back(self, topic: str, partition: int, consumer: Any, position: int) -> None:
        with self._lock:
            old = self._by_partition.pop((topic, partition), None)
            self._by_partition[(topic, partition)] = (consumer, position)
        if old is not None:
            old[0].close()

    def close(self) -> None:
        with self._lock:
            consumers, self._by_partition = list(self._by_partition.values()), {}
        for consumer, _ in consumers:
            consumer.close()


class OffsetCommitter:
    """Commits offsets for the group with one long-lived consumer (created on first use)."""

    def __init__(self, opts: ReadOptions) -> None:
        self._opts = opts
        self._consumer: Any = None
        self._lock = threading.Lock()

    def commit(self, topic: str, partition: int, next_offset: int) -> None:
        """Commits ``next_offset`` (the finaliser: called after the bundle is durable); a failure is logged."""
        from confluent_kafka import KafkaException, TopicPartition

        with self._lock:
            try:
                if self._consumer is None:
                    self._consumer = _consumer(self._opts)
                self._consumer.commit(offsets=[TopicPartition(topic, partition, next_offset)], asynchronous=False)
            except KafkaException as err:  # the data is safe; a restart re-reads from the older offset
                _LOG.warning("ReadFromKafka: committing %s/%d offset %d failed: %s (those records will be read "
                             "again after a restart; idempotent sinks absorb them)", topic, partition, next_offset,
                             _describe(err))

    def close(self) -> None:
        with self._lock:
            consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()


def _nothing_to_commit() -> None:
    """The finaliser of a bundle that claimed no new offsets."""


class ReadPartitionFn(beam.DoFn):
    """Reads one topic-partition's offset range as timestamped RecordBatches (+ dead letters)."""

    def __init__(self, opts: ReadOptions, step: str) -> None:
        self._opts = opts
        self._step = step
        self._ctx = get_run_context()

    def setup(self) -> None:
        self._metrics = StepMetrics(self._step)
        self._cache = _ConsumerCache(self._opts)
        self._committer = OffsetCommitter(self._opts)
        self._eof_at: dict[tuple[str, int], int] = {}  # where each partition's end was last seen

    def teardown(self) -> None:
        for resource in (getattr(self, "_cache", None), getattr(self, "_committer", None)):
            if resource is not None:
                resource.close()

    def process(
        self,
        element: tuple[str, int, int, int],
        finalizer: Any = beam.DoFn.BundleFinalizerParam,  # before the SDF params: Beam fills it by position
        tracker: Any = beam.DoFn.RestrictionParam(PartitionRestrictions()),
        watermark: Any = beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider()),
    ) -> Iterator[Any]:
        """A bounded read (``stop: latest``): the output PCollection is bounded."""
        yield from self._read(element, tracker, watermark, finalizer)

    def _read(self, element: tuple[str, int, int, int], tracker: Any, watermark: Any,
              finalizer: Any) -> Iterator[Any]:
        topic, partition = element[0], element[1]
        start = tracker.current_restriction().start
        stop = tracker.current_restriction().stop
        consumer = self._cache.take(topic, partition, start)
        position, done = start, False
        deadline = time.monotonic() + self._opts.max_bundle_s
        try:
            while not done:
                polled = consumer.consume(num_messages=self._opts.batch_rows, timeout=self._opts.poll_timeout_s)
                messages, at_end = self._messages(polled, topic, partition)
                if at_end:
                    self._eof_at[(topic, partition)] = max([position, *(m.offset + 1 for m in messages)])
                elif not messages:  # an empty poll is "caught up" only when known to be at the end
                    at_end = self._caught_up(consumer, topic, partition, position)
                claimed: list[RawMessage] = []
                for m in messages:
                    if m.offset < position:
                        continue  # re-delivered after a seek
                    if not tracker.try_claim(m.offset):
                        done = True
                        break
                    claimed.append(m)
                    position = m.offset + 1
                if claimed:
                    yield from self._emit(claimed, watermark)
                if done:
                    break
                if stop != UNBOUNDED and position >= stop:  # a gap (transaction markers) up to the end
                    tracker.try_claim(stop)
                    break
                if at_end and stop != UNBOUNDED:
                    position = max(position, self._position(consumer, topic, partition, position))
                    if position >= stop:
                        tracker.try_claim(stop)
                        break
                if at_end and not claimed and stop == UNBOUNDED:  # caught up: let the watermark move
                    self._advance_idle(watermark)
                    tracker.defer_remainder(Duration(seconds=self._opts.idle_resume_s))
                    break
                if time.monotonic() > deadline:
                    tracker.defer_remainder()
                    break
            self._report_progress(consumer, topic, partition, position, watermark)
        finally:
            self._cache.give_back(topic, partition, consumer, position)
        # Always register: Prism finalises every bundle of a stage that asks for finalisation, and the
        # SDK keeps a bundle around for that only when it registered a callback.
        if position > start and self._opts.commit_offsets and self._opts.group_id:
            # ``position``: past the last record read and past any transaction markers after it
            next_offset, committer = position, self._committer
            ledger.record(self._opts.group_id, topic, partition, next_offset)
            finalizer.register(lambda: committer.commit(topic, partition, next_offset))
        else:
            finalizer.register(_nothing_to_commit)

    def _report_progress(self, consumer: Any, topic: str, partition: int, position: int, watermark: Any) -> None:
        """Gauges at the end of a bundle: lag = the last fetched high watermark - ``position``; the watermark."""
        from confluent_kafka import KafkaException, TopicPartition

        try:
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
        except KafkaException:
            high = -1
        mark = watermark.current_watermark()
        self._metrics.partition_progress(topic, partition, high - position if high >= 0 else None,
                                         mark.micros // 1000 if mark is not None and mark.micros > 0 else None)

    def _position(self, consumer: Any, topic: str, partition: int, fallback: int) -> int:
        from confluent_kafka import TopicPartition

        [tp] = consumer.position([TopicPartition(topic, partition)])
        return tp.offset if tp.offset >= 0 else fallback

    def _messages(self, polled: list[Any], topic: str, partition: int) -> tuple[list[RawMessage], bool]:
        from confluent_kafka import KafkaError

        messages, at_end = [], False
        for msg in polled:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_end = True
                    continue
                if err.retriable() or not err.fatal():
                    _LOG.warning("ReadFromKafka %s/%d: %s (retrying)", topic, partition, _describe(err.str()))
                    continue
                raise KafkaReadError(f"reading {topic}/{partition}: {_describe(err.str())}")
            kind, ts = msg.timestamp()
            messages.append(RawMessage(msg.topic(), msg.partition(), msg.offset(), ts if kind else None,
                                       msg.key(), msg.value(), msg.headers()))
        return messages, at_end

    def _caught_up(self, consumer: Any, topic: str, partition: int, position: int) -> bool:
        """After an empty poll: did this reader see the end at ``position``, or is the last fetched
        high watermark there? (A slow first fetch also gives an empty poll: that is not the end.)"""
        from confluent_kafka import TopicPartition

        if self._eof_at.get((topic, partition)) == position:
            return True
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
        return high >= 0 and position >= high

    def _emit(self, claimed: list[RawMessage], watermark: Any) -> Iterator[Any]:
        decoded: Decoded = decode_messages(claimed, self._opts.decode)
        m = self._metrics
        m.records_in.inc(len(claimed))
        for bad in decoded.rejected:
            yield beam.pvalue.TaggedOutput(DLQ_TAG, self._letter(bad))
        if decoded.rejected:
            m.records_failed.inc(len(decoded.rejected))
        if decoded.batch is None:
            return
        batch = tag_source(decoded.batch, f"kafka:{claimed[0].topic}/{claimed[0].partition}", claimed[0].offset)
        times = [t for t in event_times_ms(batch, decoded.messages, self._opts.decode.event_time) if t is not None]
        earliest = Timestamp(micros=min(times) * 1000) if times else Timestamp.now()
        current = watermark.current_watermark()
        mark = earliest - Duration(seconds=self._opts.watermark_lag_s)
        if current is None or mark > current:
            watermark.set_watermark(mark)
        m.records_out.inc(batch.num_rows)
        m.batches_in.inc()
        m.bytes_in.inc(batch_nbytes(batch))
        yield TimestampedValue(batch, max(earliest, current or earliest))

    def _advance_idle(self, watermark: Any) -> None:
        mark = Timestamp.now() - Duration(seconds=self._opts.watermark_lag_s)
        current = watermark.current_watermark()
        if current is None or mark > current:
            watermark.set_watermark(mark)

    def _letter(self, bad: Rejected) -> dict[str, Any]:
        return dead_letter(bad.record(), error_type=bad.error_type, error=bad.error, exception=bad.exception,
                           step=self._step, source=f"kafka:{bad.message.where}", ctx=self._ctx)


class ReadUnboundedPartitionFn(ReadPartitionFn):
    """The streaming read (``stop: never``): an unbounded output, resumed after every checkpoint."""

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        element: tuple[str, int, int, int],
        finalizer: Any = beam.DoFn.BundleFinalizerParam,  # before the SDF params: Beam fills it by position
        tracker: Any = beam.DoFn.RestrictionParam(PartitionRestrictions()),
        watermark: Any = beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider()),
    ) -> Iterator[Any]:
        yield from self._read(element, tracker, watermark, finalizer)
