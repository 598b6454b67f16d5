"""StreamingFuzzyDeduplicator: near-duplicates dropped or tagged in a stream, on keyed state and timers.

How it runs::

    batches --KeyRows--> (block key, sub-batch) --Match (state + TTL timer)--> small batches --\\
               |  \\--> rows with an empty block key (their own cluster) ------------------- Flatten --> Coalesce
               \\--> dead letters (with those of Match)

Semantics (the streaming counterpart of ``FuzzyDeduplicator``):

* **Blocking.** A row's block key is the first ``config.blocking`` key, its transform applied to
  the normalised field values (lower-cased, trimmed, whitespace collapsed) as in the batch core;
  without blocking keys, the first ``config.sorted_keys`` key serves as an exact block key (there
  is no sorted neighbourhood in a stream). Only rows with the same block key (and window) are
  compared. A row whose key is empty (null/blank field, or a transform giving "") passes through
  as its own cluster; it is never dropped. Further blocking keys, ``window``,
  ``max_block_size`` and ``score_column`` are not used.
* **State.** Per block key, the state holds the *representatives*: the first record of each
  cluster seen within the TTL (its compared-field values normalised as in the batch core, a hash
  of its normalised ``exact_fields``, its cluster id, its event time). At most
  ``max_records_per_key`` are held (the oldest by event time is evicted); each one expires
  ``ttl_s`` after its event time. Event time is ``time_field`` (timestamps, dates, ISO 8601 text
  or epoch seconds; a null or unreadable value sends the row to the DLQ) or else the element
  timestamp. An event-time timer clears the state once every representative has expired; expiry
  is also checked when a row arrives, so bounded input (timers fire only at its end) gives the
  stream's answer when the batches of a key arrive in event-time order.
* **Matching.** The rows of a key in one batch are taken in (event time, arrival) order. Each is
  compared with the live representatives of its key (``time + ttl > row time``): identical
  normalised ``exact_fields`` (default: the compared fields) match outright; otherwise the
  batch core's ``compare_pairs`` gives the similarities of ``config.comparisons`` and a score:
  ``classifier: threshold``, the weighted mean similarity of the core's ``classify``; ``classifier: em``,
  the posterior of a Fellegi-Sunter ``model`` fitted beforehand (e.g. ``find_duplicates(sample,
  config).model``), as there is no batch to fit EM on. A score ``>= config.threshold`` is a
  match; the best-scoring representative (the earliest stored on ties) wins.
* **Output.** A row that matches is a duplicate: ``keep_first`` drops it (counted in
  ``records_filtered``), ``tag_only`` emits it. A row that matches nothing becomes a new
  representative and is emitted. Two columns are appended (an input column of either name is
  replaced): ``cluster_id`` (int64 >= 0, a 63-bit hash of the cluster's first record: block key,
  event time in microseconds, normalised compared and exact values, and for a row without a block
  key every input field too; stable across runs, runners and bundle splits) and
  ``duplicate_count`` (how many duplicates of the cluster the step had seen when the row was
  emitted: 0 for a cluster's first record, n for its n-th duplicate).
  ``records_in == records_out + records_filtered + records_failed``.

Differences from the batch step: clustering is by leader (a row is compared with each cluster's
first record, not with its other members, and an emitted row is never re-assigned), where the
batch step takes connected components; ``duplicate_count`` counts the duplicates seen so far (a
``keep_first`` row is emitted before its duplicates arrive, so it carries 0; under ``tag_only``
the largest value per ``cluster_id`` is the cluster's size minus one, the batch step's value when
nothing expired and no chain of matches joins clusters);
``cluster_id`` is a content hash, not a row position; ``keep_last`` and ``keep_best`` are
rejected, as they cannot be decided without buffering; ``classifier: em`` needs a pre-fitted
``model``; ``config.embedding`` (a batch-wide neighbour search and vote) is rejected; exact copies
are caught within a block only. Missing compared or key fields read as null, as in the batch step;
a missing ``time_field`` sends the batch to the DLQ.

Cost: the keying, normalisation and hashing are vectorised per batch; a key's rows are scored
against the stored representatives in one vectorised call per comparator, then decided one row
at a time in Python. The state is one Arrow IPC blob per key, read once and written at most
once per element (see the note on the state cache in ``stream_dedup``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.coders import BytesCoder
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.utils.timestamp import Timestamp

from beam_etl.batch import ArrowBatchCoder
from beam_etl.hashing import hash_columns
from beam_etl.ml import _fuzzy_blocking as blk
from beam_etl.ml import _fuzzy_scoring as sc
from beam_etl.ml.fuzzy import (
    CLUSTER_COLUMN,
    COUNT_COLUMN,
    BlockKey,
    Comparison,
    FuzzyConfig,
    classify,
    compare_pairs,
    date_days,
    normalised_strings,
    numeric_values,
)
from beam_etl.ops.context import get_run_context
from beam_etl.ops.dlq import DLQ_TAG
from beam_etl.ops.metrics import StepMetrics, timed_process
from beam_etl.transforms.base import StepDoFn, classify_error, run_with_row_fallback
from beam_etl.transforms.mapping import missing_message, rows_to_dead_letters
from beam_etl.transforms.stream_dedup import _CoalesceFn, _drop_row_offset, _out, _read, _write, event_micros

STEP_TYPE = "StreamingFuzzyDeduplicator"
PASS_TAG = "no_key"
STRATEGIES = ("keep_first", "tag_only")
_PREFIX = "__beam_etl_fz_"
KEY_COL = _PREFIX + "key"  # the block key (string; "" = no key)
TIME_COL = _PREFIX + "time"  # event time in microseconds
ID_COL = _PREFIX + "id"  # the row's own cluster id (used when it opens a cluster)
EXACT_COL = _PREFIX + "exact"  # hash of the normalised exact fields
_ID_MASK = np.uint64((1 << 63) - 1)
_EXACT_SCORE = 2.0  # above any similarity: an exact copy wins over a fuzzy match
_PAIRS_PER_CHUNK = 1 << 16  # rows x representatives scored per vectorised call
_BLOB_CODER = ArrowBatchCoder()


def _value_col(k: int) -> str:
    return f"{_PREFIX}v{k}"


@dataclasses.dataclass(frozen=True)
class Slot:
    """One compared field as the core reads it: normalised text (``str``), a number or days (``date``)."""

    field: str
    kind: str

    @property
    def is_text(self) -> bool:
        return self.kind == "str"


def slots_of(comparisons: Sequence[Comparison]) -> tuple[Slot, ...]:
    """The distinct compared fields; ValueError when one field is compared both as number and date."""
    kinds = {"numeric": "num", "date": "date"}
    slots = tuple(dict.fromkeys(Slot(c.field, kinds.get(c.method, "str")) for c in comparisons))
    numbers = [x.field for x in slots if not x.is_text]
    clash = sorted({f for f in numbers if numbers.count(f) > 1})
    if clash:
        raise ValueError(f"StreamingFuzzyDeduplicator: field {clash[0]!r} is compared both as 'numeric' and as "
                         "'date'; compare it one way")
    return slots


def block_key_of(config: FuzzyConfig) -> BlockKey:
    """The key rows are partitioned by: the first blocking key, else the first sorted key."""
    return config.blocking[0] if config.blocking else config.sorted_keys[0]


# ---------------------------------------------------------------------------------------------
# Settings and validation.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What the stages need, picklable."""

    config: FuzzyConfig
    block: BlockKey
    ttl_us: int
    time_field: str | None
    max_records: int
    model: sc.FellegiSunter | None
    slots: tuple[Slot, ...]

    @property
    def exact_fields(self) -> list[str]:
        return list(self.config.exact_fields or [c.field for c in self.config.comparisons])


def _check_model(config: FuzzyConfig, model: sc.FellegiSunter | None) -> None:
    if model is None:
        if config.classifier == "em":
            raise ValueError("StreamingFuzzyDeduplicator: classifier 'em' fits its model on the whole input, "
                             "which a stream does not have; use classifier='threshold', or pass model= a "
                             "FellegiSunter fitted beforehand (e.g. find_duplicates(sample, config).model)")
        return
    if not isinstance(model, sc.FellegiSunter):
        raise TypeError(f"StreamingFuzzyDeduplicator: model must be a FellegiSunter, not {type(model).__name__}")
    if config.classifier != "em":
        raise ValueError("StreamingFuzzyDeduplicator: model= is used with classifier 'em' only; "
                         f"set classifier='em' or drop model (classifier={config.classifier!r})")
    shape = [len(m) for m in model.m]
    expected = [c.n_levels for c in config.comparisons]
    if shape != expected:
        raise ValueError(f"StreamingFuzzyDeduplicator: model has levels {shape} per comparison, the config "
                         f"needs {expected}; fit the model with the same comparisons and thresholds")


def make_plan(config: FuzzyConfig, ttl_s: float, time_field: str | None, max_records_per_key: int,
              model: sc.FellegiSunter | None) -> _Plan:
    """Validates the options; every error names the option and the fix."""
    if not isinstance(config, FuzzyConfig):
        raise TypeError(f"StreamingFuzzyDeduplicator: config must be a FuzzyConfig, not {type(config).__name__}")
    if config.strategy not in STRATEGIES:
        raise ValueError(f"StreamingFuzzyDeduplicator: strategy {config.strategy!r} cannot be decided in a stream "
                         f"without buffering; use one of {STRATEGIES}, or the batch FuzzyDeduplicator")
    _check_model(config, model)
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not ttl_s > 0 or ttl_s == float("inf"):
        raise ValueError(f"StreamingFuzzyDeduplicator: ttl_s={ttl_s!r} must be a finite number of seconds > 0")
    if time_field is not None and (not isinstance(time_field, str) or not time_field):
        raise ValueError(f"StreamingFuzzyDeduplicator: time_field={time_field!r} is not a field name; "
                         "give a field, or omit it to use element timestamps")
    if isinstance(max_records_per_key, bool) or not isinstance(max_records_per_key, int) or max_records_per_key < 1:
        raise ValueError(f"StreamingFuzzyDeduplicator: max_records_per_key={max_records_per_key!r} must be an "
                         "integer >= 1")
    if getattr(config, "embedding", None) is not None:
        raise ValueError("StreamingFuzzyDeduplicator: config.embedding (embedding neighbours / borderline vote) "
                         "works over a whole batch; drop it, or compare a field with method 'embedding'")
    return _Plan(config, block_key_of(config), round(ttl_s * 1_000_000), time_field, max_records_per_key, model,
                 slots_of(config.comparisons))


# ---------------------------------------------------------------------------------------------
# Stage 1: block keys, event times, compared values (vectorised per batch).
# ---------------------------------------------------------------------------------------------


def _column(batch: pa.RecordBatch, name: str) -> pa.Array:
    """A field of the batch; a missing one reads as nulls (as in the batch step)."""
    idx = batch.schema.get_field_index(name)
    return batch.column(idx) if idx >= 0 else pa.nulls(batch.num_rows, pa.string())


def match_columns(batch: pa.RecordBatch, plan: _Plan) -> pa.RecordBatch:
    """Appends the block key, compared values, exact hash and own cluster id (needs TIME_COL)."""
    config, n = plan.config, batch.num_rows
    strings = {f: normalised_strings(_column(batch, f)) for f in config.string_fields()}
    key = blk.build_key([blk.transform_values(strings[f], plan.block.transform, plan.block.length)
                         for f in plan.block.fields])
    key_arr = pa.array(key, pa.string()) if n else pa.array([], pa.string())
    values: list[pa.Array] = []
    for slot in plan.slots:
        if slot.is_text:
            values.append(pa.array(strings[slot.field], pa.string()))
        else:
            raw = _column(batch, slot.field)
            values.append(pa.array(numeric_values(raw) if slot.kind == "num" else date_days(raw), pa.float64()))
    exact = hash_columns([pa.array(strings[f], pa.string()) for f in plan.exact_fields], n)
    exact_arr = pa.array(exact.view(np.int64))
    own = hash_columns([key_arr, batch.column(TIME_COL), exact_arr, *values], n) & _ID_MASK
    names = [KEY_COL, ID_COL, EXACT_COL, *(_value_col(k) for k in range(len(values)))]
    arrays = [key_arr, pa.array(own.astype(np.int64)), exact_arr, *values]
    for name, arr in zip(names, arrays, strict=True):
        batch = batch.append_column(name, arr)
    return batch


def _drop_internal(batch: pa.RecordBatch, also: Sequence[str] = ()) -> pa.RecordBatch:
    """Drops the internal columns (and the columns ``also``)."""
    drop = [n for n in batch.schema.names if n.startswith(_PREFIX) or n in also]
    return batch.drop_columns(drop) if drop else batch


def _original(letter: dict[str, Any]) -> dict[str, Any]:
    """A dead letter whose record no longer carries the internal columns."""
    record = letter.get("record")
    if isinstance(record, dict):
        letter["record"] = {k: v for k, v in record.items() if not k.startswith(_PREFIX)}
    return letter


def with_outputs(batch: pa.RecordBatch, cluster_ids: np.ndarray, counts: np.ndarray) -> pa.RecordBatch:
    """The rows without internal columns, plus ``cluster_id`` and ``duplicate_count``."""
    out = _drop_internal(batch, (CLUSTER_COLUMN, COUNT_COLUMN))  # an input column of either name is replaced
    out = out.append_column(CLUSTER_COLUMN, pa.array(np.asarray(cluster_ids, np.int64)))
    return out.append_column(COUNT_COLUMN, pa.array(np.asarray(counts, np.int64)))


def unkeyed_ids(batch: pa.RecordBatch) -> np.ndarray:
    """Cluster ids of rows without a block key: their own id mixed with every input field."""
    columns = [batch.column(ID_COL), *_drop_internal(batch).columns]
    return (hash_columns(columns, batch.num_rows) & _ID_MASK).astype(np.int64)


def split_by_key(batch: pa.RecordBatch) -> list[tuple[str, pa.RecordBatch]]:
    """``[(key, rows of the key sorted by event time, ties in row order)]``; the key column is dropped."""
    encoded = pc.dictionary_encode(batch.column(KEY_COL))
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    order = np.lexsort((batch.column(TIME_COL).to_numpy(zero_copy_only=False), codes))
    codes = codes[order]
    rows = batch.drop_columns([KEY_COL]).take(pa.array(order, type=pa.int64()))
    bounds = np.flatnonzero(np.diff(codes)) + 1
    starts = np.concatenate(([0], bounds)).tolist()
    stops = np.concatenate((bounds, [len(codes)])).tolist()
    keys = encoded.dictionary.to_pylist()
    return [(keys[int(codes[a])], rows.slice(a, b - a)) for a, b in zip(starts, stops, strict=True)]


class _KeyRowsFn(StepDoFn):
    """Per batch: event times, block keys and compared values; one sub-batch per key."""

    def __init__(self, plan: _Plan, step: str) -> None:
        super().__init__(step)
        self._plan = plan

    @timed_process
    def process(self, batch: pa.RecordBatch, timestamp: Any = beam.DoFn.TimestampParam) -> Iterator[Any]:
        m = self._metrics
        self.count_input(batch)
        if batch.num_rows == 0:
            return
        timed = yield from self._with_times(batch, timestamp)
        if timed is None or timed.num_rows == 0:
            return
        result = run_with_row_fallback(lambda b: match_columns(b, self._plan), timed, self._step, self._ctx)
        if result.dead_letters:
            m.records_failed.inc(len(result.dead_letters))
            yield from (beam.pvalue.TaggedOutput(DLQ_TAG, _original(letter)) for letter in result.dead_letters)
        if result.batch is None or result.batch.num_rows == 0:
            return
        keyed = _drop_row_offset(result.batch)
        no_key = pc.equal(keyed.column(KEY_COL), "")
        if pc.any(no_key).as_py():
            alone = keyed.filter(no_key)
            ids = unkeyed_ids(alone)
            yield beam.pvalue.TaggedOutput(PASS_TAG, with_outputs(alone, ids, np.zeros(len(ids), np.int64)))
            keyed = keyed.filter(pc.invert(no_key))
        if keyed.num_rows:
            yield from split_by_key(keyed)

    def _with_times(self, batch: pa.RecordBatch, timestamp: Timestamp) -> Iterator[Any]:
        """Appends TIME_COL; rows whose event time is missing, null or unreadable leave for the DLQ."""
        field, n = self._plan.time_field, batch.num_rows
        if field is None:
            return batch.append_column(TIME_COL, pa.array(np.full(n, timestamp.micros, dtype=np.int64)))
        if batch.schema.get_field_index(field) < 0:
            yield from self._fail(batch, None, "validation", missing_message(STEP_TYPE, [field], batch), "KeyError")
            return None
        micros, nulls, bad = event_micros(batch.column(field))
        if nulls.any():
            message = f"{STEP_TYPE}: time_field {field!r} is null or blank"
            yield from self._fail(batch, np.flatnonzero(nulls), "validation", message, "ValueError")
        if bad.any():
            rows = np.flatnonzero(bad)
            values = batch.column(field).take(pa.array(rows)).to_pylist()
            messages = [f"{STEP_TYPE}: time_field {field!r} value {v!r} is not a timestamp; "
                        "allowed: timestamps, dates, ISO 8601 text or epoch seconds" for v in values]
            yield from self._fail(batch, rows, "type", messages, "TypeError")
        ok = ~(nulls | bad)
        batch = batch.append_column(TIME_COL, pa.array(micros, type=pa.int64()))
        return batch if ok.all() else batch.filter(pa.array(ok))

    def _fail(self, batch: pa.RecordBatch, rows: Sequence[int] | None, error_type: str,
              errors: str | Sequence[str], exception: str) -> Iterator[beam.pvalue.TaggedOutput]:
        letters = rows_to_dead_letters(batch, None if rows is None else [int(r) for r in rows],
                                       error_type=error_type, errors=errors, step=self._step, ctx=self._ctx,
                                       exception=exception)
        self._metrics.records_failed.inc(len(letters))
        yield from (beam.pvalue.TaggedOutput(DLQ_TAG, letter) for letter in letters)


# ---------------------------------------------------------------------------------------------
# Stage 2: the representatives of a key, and matching.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Reps:
    """The representatives of one key (columns, insertion order); ``stamp`` sets the timer."""

    ids: np.ndarray
    times: np.ndarray
    stamps: np.ndarray
    exact: np.ndarray
    counts: np.ndarray
    values: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls, slots: Sequence[Slot]) -> Reps:
        z = np.zeros(0, np.int64)
        return cls(z, z, z, z, z, [np.zeros(0, object if x.is_text else np.float64) for x in slots])

    def concat(self, other: Reps) -> Reps:
        return Reps(*(np.concatenate([a, b]) for a, b in zip(self._columns(), other._columns(), strict=True)),
                    [np.concatenate([a, b]) for a, b in zip(self.values, other.values, strict=True)])

    def _columns(self) -> tuple[np.ndarray, ...]:
        return self.ids, self.times, self.stamps, self.exact, self.counts

    def take(self, idx: np.ndarray) -> Reps:
        return Reps(self.ids[idx], self.times[idx], self.stamps[idx], self.exact[idx], self.counts[idx],
                    [v[idx] for v in self.values])

    def encode(self) -> bytes:
        cols = {"id": self.ids, "time": self.times, "stamp": self.stamps, "exact": self.exact, "count": self.counts}
        arrays = [pa.array(v) for v in cols.values()]
        arrays += [pa.array(v, pa.float64() if v.dtype != object else pa.string()) for v in self.values]
        return _BLOB_CODER.encode(pa.record_batch(arrays, names=[*cols, *(f"v{k}" for k in range(len(self.values)))]))

    @classmethod
    def decode(cls, blob: bytes) -> Reps:
        b = _BLOB_CODER.decode(blob)
        cols = [b.column(i).to_numpy(zero_copy_only=False) for i in range(b.num_columns)]
        values = [np.asarray(v, dtype=object) if pa.types.is_string(b.column(5 + k).type) else v
                  for k, v in enumerate(cols[5:])]
        return cls(*cols[:5], values)


def rows_as_reps(sub: pa.RecordBatch, element_us: int, slots: Sequence[Slot]) -> Reps:
    """The rows of a sub-batch in the shape of representatives (each one may open a cluster)."""
    def ints(name: str) -> np.ndarray:
        return sub.column(name).to_numpy(zero_copy_only=False).astype(np.int64)

    values = []
    for k, slot in enumerate(slots):
        arr = sub.column(_value_col(k)).to_numpy(zero_copy_only=False)
        values.append(np.asarray(arr, dtype=object) if slot.is_text else np.asarray(arr, np.float64))
    times = ints(TIME_COL)
    return Reps(ints(ID_COL), times, np.maximum(times, element_us), ints(EXACT_COL),
                np.zeros(sub.num_rows, np.int64), values)


def _core_column(slot: Slot, values: np.ndarray) -> pa.Array:
    """Numbers as float64, days as date32: what the core's ``numeric_values``/``date_days`` read back."""
    if slot.kind == "num":
        return pa.array(values, pa.float64())
    missing = np.isnan(values)
    return pa.array(np.where(missing, 0, values).astype(np.int32), pa.int32(), mask=missing).cast(pa.date32())


@dataclasses.dataclass
class Decision:
    """Per row of a sub-batch: cluster id, duplicate count, duplicate flag; and the new state."""

    cluster_ids: np.ndarray
    counts: np.ndarray
    duplicate: np.ndarray
    reps: Reps
    changed: bool  # the state must be written
    added: bool  # a representative was added: the timer moves


class Matcher:
    """Scores rows against representatives and decides, row by row, who opens a cluster."""

    def __init__(self, plan: _Plan) -> None:
        self._plan = plan
        self._tag = plan.config.strategy == "tag_only"

    def scores(self, a: list[np.ndarray], b: list[np.ndarray], left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Match score of the pairs ``(a[left], b[right])``: the batch core's comparators and classifier."""
        config, slots = self._plan.config, self._plan.slots
        if len(left) == 0:
            return np.zeros(0)
        if a is not b:  # one set of rows for the core: a's, then b's
            a, right = [np.concatenate([x, y]) for x, y in zip(a, b, strict=True)], right + len(a[0])
        strings = {x.field: v for x, v in zip(slots, a, strict=True) if x.is_text}
        data = pa.table({x.field: _core_column(x, v) for x, v in zip(slots, a, strict=True) if not x.is_text})
        sims = compare_pairs(data, strings, np.arange(len(a[0])), left, right, config.comparisons, config.workers)
        model = self._plan.model
        if model is None:
            return classify(sims, config)[0]
        levels = np.column_stack([sc.to_levels(sims[:, k], c.thresholds) for k, c in enumerate(config.comparisons)])
        return model.probability(levels)

    def _pair_scores(self, a: Reps, b: Reps, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Scores, with identical normalised exact fields scoring above any similarity."""
        s = np.array(self.scores(a.values, b.values, left, right), dtype=np.float64)
        s[a.exact[left] == b.exact[right]] = _EXACT_SCORE
        return s

    def _stored_scores(self, rows: Reps, reps: Reps, start: int, stop: int) -> np.ndarray:
        """Scores of rows ``start:stop`` against every stored representative (rows x reps), one call."""
        m = len(reps)
        left = np.repeat(np.arange(start, stop), m)
        right = np.tile(np.arange(m), stop - start)
        return self._pair_scores(rows, reps, left, right).reshape(stop - start, m)

    def _admit(self, is_rep: np.ndarray, times: np.ndarray, j: int) -> None:
        """Candidate ``j`` opens a cluster; over ``max_records_per_key``, the oldest is evicted."""
        is_rep[j] = True
        held = np.flatnonzero(is_rep)
        if len(held) > self._plan.max_records:
            is_rep[held[int(np.argmin(times[held]))]] = False

    def decide(self, sub: pa.RecordBatch, reps: Reps, element_us: int) -> Decision:
        """Matches the rows of one key (sorted by event time) against ``reps`` and each other."""
        plan, ttl = self._plan, self._plan.ttl_us
        rows = rows_as_reps(sub, element_us, plan.slots)
        m0, n = len(reps), len(rows)
        pool = reps.concat(rows)  # candidate j < m0: a stored representative; j >= m0: row j - m0
        is_rep = np.concatenate([np.ones(m0, bool), np.zeros(n, bool)])
        cluster, dup_count, duplicate = rows.ids.copy(), np.zeros(n, np.int64), np.zeros(n, bool)
        chunk = max(1, _PAIRS_PER_CHUNK // max(m0, 1))
        stored = np.zeros((0, 0))
        for i in range(n):
            if m0 and i % chunk == 0:
                stored = self._stored_scores(rows, reps, i, min(n, i + chunk))
            live = is_rep & (pool.times + ttl > rows.times[i])
            score = np.full(m0 + n, -np.inf)
            if m0:
                score[:m0] = np.where(live[:m0], stored[i % chunk], -np.inf)
            new = np.flatnonzero(live[m0:])
            if len(new):
                score[m0 + new] = self._pair_scores(rows, rows, np.full(len(new), i), new)
            j = int(np.argmax(score))
            if score[j] < plan.config.threshold:
                self._admit(is_rep, pool.times, m0 + i)
                continue
            duplicate[i], cluster[i] = True, pool.ids[j]
            if self._tag:
                pool.counts[j] += 1
                dup_count[i] = pool.counts[j]
        keep = is_rep & (pool.times + ttl > rows.times.max())  # expired at the latest row's time: forgotten
        added = bool(keep[m0:].any())
        changed = added or not keep[:m0].all() or (self._tag and bool(duplicate.any()))
        return Decision(cluster, dup_count, duplicate, pool.take(np.flatnonzero(keep)), changed, added)


# ---------------------------------------------------------------------------------------------
# Stage 2: keyed state and the TTL timer.
# ---------------------------------------------------------------------------------------------


class _MatchLogic:
    """Reads a key's representatives once, matches a sub-batch, writes them back at most once."""

    def __init__(self, plan: _Plan, step: str) -> None:
        self._plan = plan
        self._step = step
        self._ctx = get_run_context()

    def setup(self) -> None:
        self._metrics = StepMetrics(self._step)
        self._matcher = Matcher(self._plan)

    def process(self, sub: pa.RecordBatch, element_us: int, window: Any, cell: Any, timer: Any) -> Iterator[Any]:
        old = _read(cell)
        try:
            reps = Reps.decode(old) if old is not None else Reps.empty(self._plan.slots)
            decision = self._matcher.decide(sub, reps, element_us)
        except Exception as exc:  # noqa: BLE001 - the rows leave for the DLQ, the state stays as it was
            letters = rows_to_dead_letters(_drop_internal(sub), None, error_type=classify_error(exc),
                                           errors=f"{STEP_TYPE}: {exc}", step=self._step, ctx=self._ctx,
                                           exception=exc)
            self._metrics.records_failed.inc(len(letters))
            yield from (beam.pvalue.TaggedOutput(DLQ_TAG, letter) for letter in letters)
            return
        self._store(decision, old, window, cell, timer)
        yield from self._emit(sub, decision, element_us, window)

    def _store(self, decision: Decision, old: bytes | None, window: Any, cell: Any, timer: Any) -> None:
        if not decision.changed:
            return
        if not len(decision.reps):
            cell.clear()
            return
        _write(cell, old, decision.reps.encode())
        if decision.added:  # the timer fires once every representative has expired
            fire = int(decision.reps.stamps.max()) + self._plan.ttl_us
            timer.set(Timestamp(micros=min(fire, window.max_timestamp().micros)))

    def _emit(self, sub: pa.RecordBatch, decision: Decision, element_us: int, window: Any) -> Iterator[Any]:
        keep = np.ones(sub.num_rows, bool)
        if self._plan.config.strategy == "keep_first":
            keep = ~decision.duplicate
            if not keep.all():
                self._metrics.records_filtered.inc(int((~keep).sum()))
        if not keep.any():
            return
        out = with_outputs(sub, decision.cluster_ids, decision.counts)
        if not keep.all():
            out = out.filter(pa.array(keep))
        yield _out(out, element_us, window)


def _match_fn(plan: _Plan, step: str) -> beam.DoFn:
    """The stateful DoFn (state and timer specs are class attributes, named per step)."""
    # Timer ids unique per step: the FnApiRunner mixes up same-named timers of one stage (apache/beam#21995).
    suffix = hashlib.sha1(step.encode()).hexdigest()[:12]
    ttl_timer = userstate.TimerSpec(f"fuzzy_ttl_{suffix}", TimeDomain.WATERMARK)
    reps_spec = userstate.BagStateSpec("reps", BytesCoder())

    class _StreamingFuzzyFn(beam.DoFn):
        def __init__(self) -> None:
            self._logic = _MatchLogic(plan, step)

        def setup(self) -> None:
            self._logic.setup()

        def process(self, element: tuple[str, pa.RecordBatch], timestamp: Any = beam.DoFn.TimestampParam,
                    window: Any = beam.DoFn.WindowParam, cell: Any = beam.DoFn.StateParam(reps_spec),
                    timer: Any = beam.DoFn.TimerParam(ttl_timer)) -> Iterator[Any]:
            yield from self._logic.process(element[1], timestamp.micros, window, cell, timer)

        @userstate.on_timer(ttl_timer)
        def on_ttl(self, cell: Any = beam.DoFn.StateParam(reps_spec)) -> None:
            cell.clear()  # every representative of the key has expired (or the window is over)

    return _StreamingFuzzyFn()


# ---------------------------------------------------------------------------------------------
# The transform.
# ---------------------------------------------------------------------------------------------


class StreamingFuzzyDeduplicator(beam.PTransform):
    """Drops (``keep_first``) or tags (``tag_only``) near-duplicates within a TTL; returns ``(batches, dlq)``.

    Args:
      config: the matching configuration (``beam_etl.ml.fuzzy.FuzzyConfig``); strategy
        ``keep_first`` or ``tag_only``; classifier ``threshold``, or ``em`` with ``model``.
      step: step name for metrics and dead letters (default: the transform label).
      ttl_s: seconds (event time) a cluster's first record is remembered.
      time_field: field with the event time; default: the element timestamp.
      max_records_per_key: representatives held per block key (the oldest is evicted).
      model: a fitted ``FellegiSunter`` (classifier ``em`` only), e.g. ``find_duplicates(sample, config).model``.
    """

    def __init__(self, config: FuzzyConfig, *, step: str | None = None, ttl_s: float = 86400.0,
                 time_field: str | None = None, max_records_per_key: int = 1000,
                 model: sc.FellegiSunter | None = None) -> None:
        super().__init__()
        self._plan = make_plan(config, ttl_s, time_field, max_records_per_key, model)
        self._step = step

    def step_name(self) -> str:
        return self._step or self.label

    def display_data(self) -> dict[str, Any]:
        p, c = self._plan, self._plan.config
        return {
            "comparisons": ", ".join(f"{x.field}:{x.method}" for x in c.comparisons),
            "block_key": f"{p.block.transform}({', '.join(p.block.fields)})",
            "classifier": c.classifier + (" (fitted model)" if p.model is not None else ""),
            "threshold": c.threshold,
            "strategy": c.strategy,
            "ttl_seconds": p.ttl_us / 1e6,
            "time_field": p.time_field or "(element timestamp)",
            "max_records_per_key": p.max_records,
        }

    def expand(self, pcoll: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        step = self.step_name()
        keyed = pcoll | "KeyRows" >> beam.ParDo(_KeyRowsFn(self._plan, step)).with_output_types(
            tuple[str, pa.RecordBatch]).with_outputs(DLQ_TAG, PASS_TAG, main="keyed")
        matched = keyed.keyed | "Match" >> beam.ParDo(_match_fn(self._plan, step)).with_outputs(
            DLQ_TAG, main="output")
        merged = (matched.output, keyed[PASS_TAG]) | "Merge" >> beam.Flatten()
        out = merged | "Coalesce" >> beam.ParDo(_CoalesceFn(step)).with_output_types(pa.RecordBatch)
        dlq = (keyed[DLQ_TAG], matched[DLQ_TAG]) | "MergeDeadLetters" >> beam.Flatten()
        return out, dlq
