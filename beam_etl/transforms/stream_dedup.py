"""StreamingDeduplicate: per-key dedup with a time-to-live, on keyed state and timers.

How it runs::

    batches --KeyRows--> (key bytes, sub-batch) --Dedup (state + TTL timer)--> small batches
               |  \\--> rows without a key (pass through) -----------------\\
               \\--> dead letters                                  Flatten --> Coalesce --> batches

*KeyRows* (per input batch, vectorised): normalises the key fields (the options of
ExactDeduplicator), encodes every row's key as canonical bytes (type tag + length + value per
field, so different keys never share bytes), reads the event time, drops rows that repeat a
(key, event time) pair inside the batch (keeping the first or last by row order), sorts by (key,
event time) and emits one zero-copy slice per key. Only where the semantics need per-key state
does a batch become keyed rows.

*Dedup* (per key and window, Python per key): one state cell holds the open group (its deadline,
timer time, and for ``keep: last`` the best row so far, as Arrow IPC bytes). A record opens a new
group when there is none or its time is at or past the deadline (``time + ttl`` of the record that
opened the group); otherwise it is a duplicate (counted as filtered). The TTL timer (event time or
processing time) closes the group: ``keep: first`` then forgets the key, ``keep: last`` emits its
buffered row. Because expiry is also checked when a record arrives, bounded input (where
event-time timers fire only at the end) gives the same answer as a stream. Beam's Python SDK
harness weighs every state-cache update (a deep-size pass, about 0.5 ms here), so the step reads
the cell once and writes it at most once per key and batch.

*Coalesce* (per bundle and window): joins the small outputs back into batches of up to 64k rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.coders import BytesCoder, TupleCoder, VarIntCoder
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue
from pydantic import Field, field_validator, model_validator

from beam_etl import registry
from beam_etl.batch import DEFAULT_BATCH_ROWS, ArrowBatchCoder
from beam_etl.ops.dlq import DLQ_TAG
from beam_etl.ops.metrics import StepMetrics, timed_process
from beam_etl.transforms.base import FIRST_ROW_KEY, StepDoFn, run_with_row_fallback
from beam_etl.transforms.dedup import emit_table, key_views, keyed_rows
from beam_etl.transforms.mapping import (
    as_array,
    cast_array,
    missing_fields,
    missing_message,
    parse_cast_type,
    rows_to_dead_letters,
)

STEP_TYPE = "StreamingDeduplicate"
PASS_TAG = "no_key"
KEY_COL = "__beam_etl_sd_key"  # canonical key bytes (null: the row has no key)
TIME_COL = "__beam_etl_sd_time"  # event time in microseconds (0 in processing time)
_INTERNAL = frozenset({KEY_COL, TIME_COL})
_UNITS_US = {"ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_NULL_PART = pa.scalar(b"\x00", pa.binary())
_TIMESTAMP = parse_cast_type("timestamp")


def parse_ttl(text: Any) -> int:
    """``"10m"``, ``"1h30m"``, ``"500ms"``, ``"2d"`` -> microseconds (> 0); ValueError says the fix."""
    fix = "write a number with a unit: ms, s, m, h or d, e.g. '90s', '10m', '1h30m'"
    if isinstance(text, bool) or not isinstance(text, str):
        raise ValueError(f"ttl={text!r} is not a duration; {fix}")
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION_RE.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"ttl={text!r} is not a duration; {fix}")
    micros = round(sum(float(n) * _UNITS_US[u] for n, u in parts))
    if micros <= 0:
        raise ValueError(f"ttl={text!r} must be longer than zero; {fix}")
    return micros


# ---------------------------------------------------------------------------------------------
# Config.
# ---------------------------------------------------------------------------------------------


class StreamingDeduplicateConfig(registry.StrictConfig):
    """Drops duplicates of a key within a time-to-live, on keyed state and timers."""

    keys: list[str] | str = Field(description="Fields that identify a record (a list, or one field name).")
    ttl: str = Field(description="How long a key is remembered: '30s', '10m', '1h', '1h30m', '2d'.")
    time_domain: Literal["event", "processing"] = Field(
        "event", description="event: TTL on event time (event-time timer); processing: on the worker clock.")
    event_time: str | None = Field(
        None, description="Field holding the event time (time_domain: event); omit to use the element timestamp.")
    keep: Literal["first", "last"] = Field(
        "first", description="first: emit at once, drop later duplicates; last: emit the latest when the TTL ends.")
    trim: bool = Field(False, description="Strip leading/trailing whitespace from string key values.")
    case_fold: bool = Field(False, description="Compare string key values lower-cased (Unicode).")
    collapse_whitespace: bool = Field(
        False, description="Turn runs of whitespace in string key values into one space (and trim).")

    @field_validator("keys")
    @classmethod
    def _check_keys(cls, keys: list[str] | str) -> list[str]:
        keys = [keys] if isinstance(keys, str) else list(keys)
        if not keys:
            raise ValueError("keys=[] is empty; list at least one field")
        bad = [k for k in keys if not k]
        if bad:
            raise ValueError(f"keys entry {bad[0]!r} is not a field name; allowed: non-empty strings")
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"keys {keys!r} repeat {dupes}; list each field once")
        reserved = [k for k in keys if k in _INTERNAL]
        if reserved:
            raise ValueError(f"keys {reserved!r} are reserved internal column names")
        return keys

    @field_validator("ttl")
    @classmethod
    def _check_ttl(cls, ttl: str) -> str:
        parse_ttl(ttl)
        return ttl

    @model_validator(mode="after")
    def _check_event_time(self) -> StreamingDeduplicateConfig:
        if self.event_time is not None and not self.event_time:
            raise ValueError("event_time='' is not a field name; give a field, or omit it to use element timestamps")
        if self.event_time is not None and self.time_domain == "processing":
            raise ValueError(f"event_time={self.event_time!r} applies to time_domain: event only; "
                             "remove event_time, or set time_domain: event")
        return self


@dataclasses.dataclass(frozen=True)
class _Settings:
    """What the three stages need, picklable."""

    keys: tuple[str, ...]
    ttl_us: int
    time_domain: str
    event_time: str | None
    keep: str
    trim: bool
    case_fold: bool
    collapse_whitespace: bool

    @classmethod
    def of(cls, config: StreamingDeduplicateConfig) -> _Settings:
        return cls(tuple(config.keys), parse_ttl(config.ttl), config.time_domain, config.event_time, config.keep,
                   config.trim, config.case_fold, config.collapse_whitespace)

    @property
    def needed(self) -> list[str]:
        return [*self.keys, *([self.event_time] if self.event_time else [])]


# ---------------------------------------------------------------------------------------------
# Keys and event times (vectorised).
# ---------------------------------------------------------------------------------------------


def _family(t: pa.DataType) -> str:
    """The tag of a key value's type: equal values of one family encode equally."""
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "s"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "b"
    if pa.types.is_integer(t):
        return "i"
    if pa.types.is_floating(t):
        return "f"
    return str(t)


def _key_part(view: pa.Array) -> pa.Array:
    """One key field as self-delimiting bytes: ``<tag>\\x01<length>:<value>``, or ``\\x00`` for null."""
    n = len(view)
    if pa.types.is_null(view.type) or view.null_count == n:
        return pa.repeat(_NULL_PART, n)
    tag = _family(view.type)
    if tag == "f":
        view = pc.add(pc.cast(view, pa.float64()), 0.0)  # -0.0 and 0.0 are one key
    data = pc.cast(view if tag in ("s", "b") else pc.cast(view, pa.string()), pa.binary())
    length = pc.cast(pc.cast(pc.binary_length(data), pa.string()), pa.binary())
    part = pc.binary_join_element_wise(pa.scalar(tag.encode() + b"\x01"), length, pa.scalar(b":"), data,
                                       pa.scalar(b""))
    return pc.fill_null(part, _NULL_PART) if view.null_count else part


def key_bytes(views: Sequence[pa.Array], num_rows: int) -> pa.Array:
    """Canonical key bytes per row (exact: equal bytes iff equal normalised key); null without a key."""
    parts = [_key_part(as_array(v)) for v in views]
    joined = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, pa.scalar(b""))
    mask = keyed_rows(views, num_rows)
    return joined if mask is None else pc.if_else(pa.array(mask), joined, pa.scalar(None, pa.binary()))


def event_micros(values: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Event times in microseconds since the epoch, a mask of nulls and a mask of unreadable values.

    Timestamps (any unit or zone) and dates are read as they are; text as ISO 8601 or the formats of
    ``Cast`` (offsets converted to UTC, naive times taken as UTC); numbers as epoch seconds.
    """
    values = as_array(values)
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    t = values.type
    if pa.types.is_timestamp(t):
        result = pc.cast(values, pa.timestamp("us", t.tz), safe=False)
    elif pa.types.is_date(t):
        result = pc.cast(values, pa.timestamp("us"))
    else:
        result, _ = cast_array(values, _TIMESTAMP)
    valid = np.asarray(result.is_valid(), dtype=bool)
    nulls = ~np.asarray(values.is_valid(), dtype=bool)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        nulls |= ~np.asarray(pc.fill_null(pc.not_equal(pc.utf8_trim_whitespace(values), ""), False), dtype=bool)
    micros = result.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    return micros, nulls, ~valid & ~nulls


def _drop_internal(batch: pa.RecordBatch) -> pa.RecordBatch:
    drop = [n for n in batch.schema.names if n in _INTERNAL]
    return batch.drop_columns(drop) if drop else batch


def _drop_row_offset(batch: pa.RecordBatch) -> pa.RecordBatch:
    meta = batch.schema.metadata
    if meta and FIRST_ROW_KEY in meta:
        return batch.replace_schema_metadata({k: v for k, v in meta.items() if k != FIRST_ROW_KEY})
    return batch


def reduce_and_split(batch: pa.RecordBatch, keep: str) -> tuple[list[tuple[bytes, pa.RecordBatch]], int]:
    """Groups keyed rows by key: ``[(key, rows sorted by time)]`` and the count of in-batch repeats.

    A row whose (key, time) pair appeared earlier in the batch is dropped (``keep: first``), or
    one that appears again later (``keep: last``); the survivors of a key keep their time order.
    """
    encoded = pc.dictionary_encode(batch.column(KEY_COL))
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    times = batch.column(TIME_COL).to_numpy(zero_copy_only=False)
    order = np.lexsort((times, codes))  # stable: ties stay in row order
    c, t = codes[order], times[order]
    same = (c[1:] == c[:-1]) & (t[1:] == t[:-1])
    kept = np.ones(len(order), dtype=bool)
    if keep == "first":
        kept[1:] = ~same
    else:
        kept[:-1] = ~same
    rows = order[kept]
    c = c[kept]
    reduced = batch.drop_columns([KEY_COL]).take(pa.array(rows, type=pa.int64()))  # the key travels as the key
    bounds = np.flatnonzero(np.diff(c)) + 1
    starts = np.concatenate(([0], bounds)).tolist()
    stops = np.concatenate((bounds, [len(c)])).tolist()
    keys = encoded.dictionary.to_pylist()
    pairs = [(keys[int(c[a])], reduced.slice(a, b - a)) for a, b in zip(starts, stops, strict=True)]
    return pairs, len(order) - len(rows)


# ---------------------------------------------------------------------------------------------
# Stage 1: keyed rows.
# ---------------------------------------------------------------------------------------------


class _KeyRowsFn(StepDoFn):
    """Per batch: key bytes and event time per row, in-batch repeats dropped, one slice per key."""

    def __init__(self, settings: _Settings, step: str) -> None:
        super().__init__(step)
        self._s = settings

    def _with_keys(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        s = self._s
        views = key_views(batch, s.keys, trim=s.trim, case_fold=s.case_fold,
                          collapse_whitespace=s.collapse_whitespace)
        return batch.append_column(KEY_COL, key_bytes(views, batch.num_rows))

    @timed_process
    def process(self, batch: pa.RecordBatch, timestamp: Any = beam.DoFn.TimestampParam) -> Iterator[Any]:
        m = self._metrics
        self.count_input(batch)
        if batch.num_rows == 0:
            return
        missing = missing_fields(batch, self._s.needed)
        if missing:
            yield from self._fail(batch, None, "validation", missing_message(STEP_TYPE, missing, batch), "KeyError")
            return
        result = run_with_row_fallback(self._with_keys, batch, self._step, self._ctx)
        if result.dead_letters:
            m.records_failed.inc(len(result.dead_letters))
            yield from (beam.pvalue.TaggedOutput(DLQ_TAG, letter) for letter in result.dead_letters)
        if result.batch is None or result.batch.num_rows == 0:
            return
        keyed = result.batch
        has_key = pc.is_valid(keyed.column(KEY_COL))
        if not pc.all(has_key).as_py():
            no_key = keyed.filter(pc.invert(has_key))
            yield beam.pvalue.TaggedOutput(PASS_TAG, _drop_row_offset(_drop_internal(no_key)))
            keyed = keyed.filter(has_key)
        keyed = yield from self._with_times(keyed, timestamp)
        if keyed is None or keyed.num_rows == 0:
            return
        pairs, repeats = reduce_and_split(_drop_row_offset(keyed), self._s.keep)
        if repeats:
            m.records_filtered.inc(repeats)
        yield from pairs

    def _with_times(self, batch: pa.RecordBatch, timestamp: Timestamp) -> Iterator[Any]:
        """Appends TIME_COL; rows whose event time is null or unreadable leave for the DLQ."""
        s = self._s
        n = batch.num_rows
        if s.time_domain == "processing" or s.event_time is None:
            value = 0 if s.time_domain == "processing" else timestamp.micros
            return batch.append_column(TIME_COL, pa.array(np.full(n, value, dtype=np.int64)))
        micros, nulls, bad = event_micros(batch.column(s.event_time))
        if nulls.any():
            message = f"{STEP_TYPE}: event_time field {s.event_time!r} is null or blank"
            yield from self._fail(batch, np.flatnonzero(nulls), "validation", message, "ValueError")
        if bad.any():
            rows = np.flatnonzero(bad)
            values = batch.column(s.event_time).take(pa.array(rows)).to_pylist()
            messages = [f"{STEP_TYPE}: event_time field {s.event_time!r} value {v!r} is not a timestamp; "
                        "allowed: timestamps, dates, ISO 8601 text or epoch seconds" for v in values]
            yield from self._fail(batch, rows, "type", messages, "TypeError")
        batch = batch.append_column(TIME_COL, pa.array(micros, type=pa.int64()))
        ok = ~(nulls | bad)
        return batch if ok.all() else batch.filter(pa.array(ok))

    def _fail(self, batch: pa.RecordBatch, rows: Sequence[int] | None, error_type: str,
              errors: str | Sequence[str], exception: str) -> Iterator[beam.pvalue.TaggedOutput]:
        letters = rows_to_dead_letters(_drop_internal(batch), None if rows is None else [int(r) for r in rows],
                                       error_type=error_type, errors=errors, step=self._step, ctx=self._ctx,
                                       exception=exception)
        self._metrics.records_failed.inc(len(letters))
        for letter in letters:
            yield beam.pvalue.TaggedOutput(DLQ_TAG, letter)


# ---------------------------------------------------------------------------------------------
# Stage 2: keyed state and the TTL timer.
# ---------------------------------------------------------------------------------------------

# The state of a key: one tuple (deadline, timer time, element timestamp of the best row, time of
# the best row, best row as Arrow IPC bytes or b"" for keep: first), all times in microseconds.
_Group = tuple[int, int, int, int, bytes]
_GROUP_CODER = TupleCoder([VarIntCoder(), VarIntCoder(), VarIntCoder(), VarIntCoder(), BytesCoder()])
_ROW_CODER = ArrowBatchCoder()


def _out(batch: pa.RecordBatch, micros: int, window: Any) -> WindowedValue:
    return WindowedValue(batch, Timestamp(micros=micros), [window])


def _read(cell: Any) -> _Group | None:
    values = list(cell.read())
    return values[-1] if values else None


def _write(cell: Any, old: _Group | None, new: _Group) -> None:
    """Replaces the cell's value. The cell is a bag: a first write is one blind append.

    Each state update costs the Python SDK harness a deep-size pass over the cached value
    (its state cache weighs every put), so the step reads once and writes at most once per
    element and never touches state it does not change.
    """
    if old is not None:
        cell.clear()
    cell.add(new)


class _GroupLogic:
    """The TTL rules, on the state and timers the runner passes in (one key, one window)."""

    def __init__(self, settings: _Settings, step: str) -> None:
        self._s = settings
        self._step = step

    def setup(self) -> None:
        self._metrics = StepMetrics(self._step)

    def _open(self, time: int, element_us: int, window: Any, timer: Any, flush: Any) -> tuple[int, int]:
        """Deadline and timer time of a group opened by a record at ``time``; sets the timer(s)."""
        s = self._s
        if s.time_domain == "processing":
            deadline = time + s.ttl_us
            timer.set(Timestamp(micros=deadline))
            if s.keep == "last":
                flush.set(window.max_timestamp())  # bounded input: emit at the end even without a clock
            return deadline, deadline
        fire = min(max(time, element_us) + s.ttl_us, window.max_timestamp().micros)
        timer.set(Timestamp(micros=fire))
        return time + s.ttl_us, fire

    def process(self, sub: pa.RecordBatch, element_us: int, window: Any, cell: Any, timer: Any,
                flush: Any) -> Iterator[WindowedValue]:
        processing = self._s.time_domain == "processing"
        now = Timestamp.now().micros if processing else 0
        times = [now] * sub.num_rows if processing else sub.column(TIME_COL).to_pylist()
        old = _read(cell)
        if self._s.keep == "first":
            new = yield from self._keep_first(sub, times, element_us, window, old, timer, flush)
        else:
            new = yield from self._keep_last(sub, times, element_us, window, old, timer, flush)
        if new is not old:
            _write(cell, old, new)

    def _keep_first(self, sub: pa.RecordBatch, times: list[int], element_us: int, window: Any,
                    state: _Group | None, timer: Any, flush: Any) -> Iterator[WindowedValue]:
        emit: list[int] = []
        for i, time in enumerate(times):
            if state is None or time >= state[0]:
                emit.append(i)
                state = (*self._open(time, element_us, window, timer, flush), element_us, time, b"")
        if len(emit) < len(times):
            self._metrics.records_filtered.inc(len(times) - len(emit))
        if emit:
            rows = sub if len(emit) == sub.num_rows else sub.take(pa.array(emit, type=pa.int64()))
            yield _out(rows, element_us, window)
        return state

    def _keep_last(self, sub: pa.RecordBatch, times: list[int], element_us: int, window: Any,
                   state: _Group | None, timer: Any, flush: Any) -> Iterator[WindowedValue]:
        held = -1  # the row of ``sub`` that is the group's best (-1: the one in state, if any)
        superseded = 0
        for i, time in enumerate(times):
            if state is not None and time >= state[0]:
                yield from self._close(sub.slice(held, 1) if held >= 0 else None, state, window)
                state, held = None, -1
            if state is None:
                state = (*self._open(time, element_us, window, timer, flush), element_us, time, b"")
                held = i
                continue
            superseded += 1  # one of the two records loses
            if time >= state[3]:  # the latest event time wins; a tie goes to the later arrival
                state, held = (state[0], state[1], element_us, time, b""), i
        if superseded:
            self._metrics.records_filtered.inc(superseded)
        if held >= 0:
            state = (*state[:4], _ROW_CODER.encode(sub.slice(held, 1)))
        return state

    def _close(self, row: pa.RecordBatch | None, state: _Group, window: Any) -> Iterator[WindowedValue]:
        """Emits a closed group's best row: at the timer time (event), or its own timestamp (processing)."""
        if row is None and state[4]:
            row = _ROW_CODER.decode(state[4])
        if row is not None and row.num_rows:
            yield _out(row, state[2] if self._s.time_domain == "processing" else state[1], window)

    def expire(self, window: Any, cell: Any) -> Iterator[WindowedValue]:
        """The TTL timer (or the end-of-window flush) fired: emit the held row (keep last), forget the key."""
        state = _read(cell)
        if state is None:
            return
        if self._s.keep == "last":
            yield from self._close(None, state, window)
        cell.clear()


def _dedup_fn(settings: _Settings, step: str) -> beam.DoFn:
    """The stateful DoFn; its timer domain follows ``time_domain`` (specs are class attributes)."""
    domain = TimeDomain.REAL_TIME if settings.time_domain == "processing" else TimeDomain.WATERMARK
    # Timer ids are unique per step (and stable across runs): the FnApiRunner buffers the timers of
    # different transforms in one stage together when their ids match (apache/beam#21995).
    suffix = hashlib.sha1(step.encode()).hexdigest()[:12]
    ttl_timer = userstate.TimerSpec(f"ttl_{suffix}", domain)
    flush_timer = userstate.TimerSpec(f"flush_{suffix}", TimeDomain.WATERMARK)
    group_spec = userstate.BagStateSpec("group", _GROUP_CODER)

    class _StreamingDedupFn(beam.DoFn):
        def __init__(self) -> None:
            self._logic = _GroupLogic(settings, step)

        def setup(self) -> None:
            self._logic.setup()

        def process(self, element: tuple[bytes, pa.RecordBatch], timestamp: Any = beam.DoFn.TimestampParam,
                    window: Any = beam.DoFn.WindowParam, cell: Any = beam.DoFn.StateParam(group_spec),
                    timer: Any = beam.DoFn.TimerParam(ttl_timer),
                    flush: Any = beam.DoFn.TimerParam(flush_timer)) -> Iterator[WindowedValue]:
            yield from self._logic.process(element[1], timestamp.micros, window, cell, timer, flush)

        @userstate.on_timer(ttl_timer)
        def on_ttl(self, window: Any = beam.DoFn.WindowParam,
                   cell: Any = beam.DoFn.StateParam(group_spec)) -> Iterator[WindowedValue]:
            yield from self._logic.expire(window, cell)

        @userstate.on_timer(flush_timer)
        def on_flush(self, window: Any = beam.DoFn.WindowParam, cell: Any = beam.DoFn.StateParam(group_spec),
                     timer: Any = beam.DoFn.TimerParam(ttl_timer)) -> Iterator[WindowedValue]:
            timer.clear()  # the window is over: nothing is left for the TTL timer to do
            yield from self._logic.expire(window, cell)

    return _StreamingDedupFn()


# ---------------------------------------------------------------------------------------------
# Stage 3: coalesce.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Bucket:
    batches: list[pa.RecordBatch]
    rows: int
    micros: int


class _CoalesceFn(beam.DoFn):
    """Joins small batches of one window and schema (per bundle) into batches of up to ``max_rows``.

    A joined batch carries the earliest timestamp of its parts; internal columns are dropped here.
    """

    def __init__(self, step: str, max_rows: int = DEFAULT_BATCH_ROWS) -> None:
        self._step = step
        self._max_rows = max_rows

    def setup(self) -> None:
        self._metrics = StepMetrics(self._step)

    def start_bundle(self) -> None:
        self._buckets: dict[tuple[Any, pa.Schema, tuple], _Bucket] = {}

    def process(self, batch: pa.RecordBatch, timestamp: Any = beam.DoFn.TimestampParam,
                window: Any = beam.DoFn.WindowParam) -> Iterator[WindowedValue]:
        batch = _drop_internal(batch)
        if batch.num_rows == 0:
            return
        key = (window, batch.schema, tuple(sorted((batch.schema.metadata or {}).items())))
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket([], 0, timestamp.micros)
        bucket.batches.append(batch)
        bucket.rows += batch.num_rows
        bucket.micros = min(bucket.micros, timestamp.micros)
        if bucket.rows >= self._max_rows:
            del self._buckets[key]
            yield from self._emit(bucket, window)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        buckets, self._buckets = self._buckets, {}
        for (window, _, _), bucket in buckets.items():
            yield from self._emit(bucket, window)

    def _emit(self, bucket: _Bucket, window: Any) -> Iterator[WindowedValue]:
        self._metrics.records_out.inc(bucket.rows)
        if len(bucket.batches) == 1:
            yield _out(bucket.batches[0], bucket.micros, window)
            return
        for batch in emit_table(pa.Table.from_batches(bucket.batches).combine_chunks(), self._max_rows):
            yield _out(batch, bucket.micros, window)


# ---------------------------------------------------------------------------------------------
# The transform.
# ---------------------------------------------------------------------------------------------


class StreamingDeduplicate(beam.PTransform):
    """Drops duplicates of a key within ``ttl``; returns ``(batches, dead_letters)``.

    Args:
      keys: fields that identify a record (a list, or one field name).
      ttl: how long a key is remembered: ``"30s"``, ``"10m"``, ``"1h30m"``, ``"2d"``.
      time_domain: ``event`` (TTL on event time, event-time timer) | ``processing`` (worker clock).
      event_time: field with the event time (event domain); default: the element timestamp.
      keep: ``first`` (emit at once, drop later duplicates) | ``last`` (emit the latest record of
        the group when its TTL ends); see ``docs/steps.md`` for the exact rules.
      trim / case_fold / collapse_whitespace: key normalisation, as in ExactDeduplicator.
      step: step name for metrics and dead letters (default: the transform label).
    """

    def __init__(self, keys: Sequence[str] | str, *, ttl: str, time_domain: str = "event",
                 event_time: str | None = None, keep: str = "first", trim: bool = False, case_fold: bool = False,
                 collapse_whitespace: bool = False, step: str | None = None) -> None:
        super().__init__()
        config = StreamingDeduplicateConfig(
            keys=keys if isinstance(keys, str) else list(keys), ttl=ttl, time_domain=time_domain,
            event_time=event_time, keep=keep, trim=trim, case_fold=case_fold,
            collapse_whitespace=collapse_whitespace)
        self._settings = _Settings.of(config)
        self._step = step

    def step_name(self) -> str:
        return self._step or self.label

    def display_data(self) -> dict[str, Any]:
        s = self._settings
        return {
            "keys": ", ".join(s.keys),
            "ttl_seconds": s.ttl_us / 1e6,
            "time_domain": s.time_domain,
            "event_time": s.event_time or "(element timestamp)",
            "keep": s.keep,
            "normalise": ", ".join(o for o, on in (("trim", s.trim), ("case_fold", s.case_fold),
                                                  ("collapse_whitespace", s.collapse_whitespace)) if on) or "none",
        }

    def expand(self, pcoll: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        step = self.step_name()
        keyed = pcoll | "KeyRows" >> beam.ParDo(_KeyRowsFn(self._settings, step)).with_output_types(
            tuple[bytes, pa.RecordBatch]).with_outputs(DLQ_TAG, PASS_TAG, main="keyed")
        deduped = keyed.keyed | "Dedup" >> beam.ParDo(_dedup_fn(self._settings, step)).with_output_types(
            pa.RecordBatch)
        merged = (deduped, keyed[PASS_TAG]) | "Merge" >> beam.Flatten()
        out = merged | "Coalesce" >> beam.ParDo(_CoalesceFn(step)).with_output_types(pa.RecordBatch)
        return out, keyed[DLQ_TAG]


@registry.register("step", STEP_TYPE, StreamingDeduplicateConfig, streaming=True,
                   requires=frozenset({"state_and_timers"}), regroups=True)
def build_streaming_deduplicate(config: StreamingDeduplicateConfig,
                                ctx: registry.BuildContext) -> StreamingDeduplicate:
    """Drops duplicates of a key within a time-to-live, on keyed state and timers."""
    return StreamingDeduplicate(**config.model_dump(), step=ctx.step_name)
