"""Streaming AnomalyDetector (``streaming:``): per-key running statistics on keyed state.

How it runs::

    batches --KeyRows--> (key bytes, the key's rows in order) --Score (state [+ TTL timer])--> tagged slices
               \\--> dead letters                                                   --Coalesce--> batches

*KeyRows* (per batch, vectorised): checks the named fields, casts every numeric field to float64
(a value that does not cast sends its row to the DLQ), reads the event time where one is needed,
encodes each row's key as canonical bytes (``stream_dedup.key_bytes``) and emits one slice per key,
its rows in batch order (stable-sorted by ``event_time`` when that is set).

*Score* (per key and window): one state cell holds the key's statistics per numeric field. Every
row is scored against the values of its key **before** it (the state plus the earlier rows of the
slice), then the slice is folded into the state, so a spike never hides itself:

* ``zscore``: mean and population variance as running moments; a slice is scored with prefix
  sums (vectorised), optionally exponentially weighted (``halflife``, in values of that key and
  field); the moments are exact without a half-life.
* ``robust_z``: median and MAD (scaled by 1.4826) of a ``RunningStats`` reservoir (a uniform
  sample of at most ``sample_size`` values per key and field, exact until it overflows) plus the
  slice's earlier values; per-row numpy on a sorted buffer, so slower than ``zscore``.

The score of a field is ``|z| / (|z| + threshold)`` (0 at the centre, 0.5 at the threshold, 1 as
``|z|`` grows; a value off a constant history has ``|z| = inf`` and score 1). A row's score is the
maximum over its fields; it is flagged when some field has ``|z| >= threshold``. A field scores a
row only when the key already has ``min_history`` non-null values of it; null and non-finite
values are skipped. ``ttl`` forgets a key that had no rows for that long: an event-time timer
clears the state, and a row that arrives ``ttl`` or more after the key's latest time starts from
empty statistics (so bounded input, where timers fire only at the end, gives the same flags).

*Coalesce* (per bundle and window): joins the per-key outputs back into batches.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.coders import PickleCoder
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.utils.timestamp import Timestamp
from pydantic import Field, field_validator, model_validator

from beam_etl import registry
from beam_etl.ml._anomaly_stats import MAD_TO_STD, MEAN_AD_TO_STD, RunningStats
from beam_etl.ml.anomaly import FLAG_FIELD, REASONS_FIELD, SCORE_FIELD
from beam_etl.ops.context import get_run_context
from beam_etl.ops.dlq import DLQ_TAG
from beam_etl.ops.metrics import StepMetrics, timed_process
from beam_etl.transforms.base import StepDoFn
from beam_etl.transforms.dedup import key_views
from beam_etl.transforms.mapping import (
    as_array,
    cast_array,
    missing_fields,
    missing_message,
    parse_cast_type,
    rows_to_dead_letters,
)
from beam_etl.transforms.stream_dedup import (
    KEY_COL,
    TIME_COL,
    _CoalesceFn,
    _drop_row_offset,
    _read,
    _write,
    event_micros,
    key_bytes,
    parse_ttl,
)

STEP_TYPE = "AnomalyDetector"
METHODS = ("zscore", "robust_z")
DEFAULT_THRESHOLD = 3.5
DEFAULT_MIN_HISTORY = 30
DEFAULT_SAMPLE_SIZE = 4096
VALUE_PREFIX = "__beam_etl_as_v"  # internal float64 copy of numeric field i (NaN: skipped)
_OUTPUTS = (SCORE_FIELD, FLAG_FIELD, REASONS_FIELD)
_FLOAT = parse_cast_type("float")


# ---------------------------------------------------------------------------------------------
# Config.
# ---------------------------------------------------------------------------------------------


def _check_names(option: str, names: list[str]) -> list[str]:
    blank = [n for n in names if not n or not n.strip()]
    if blank:
        raise ValueError(f"{option} entry {blank[0]!r} is not a field name; allowed: non-empty strings")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{option} {names!r} repeat {dupes}; list each field once")
    reserved = [n for n in names if n in _OUTPUTS or n.startswith("__beam_etl_")]
    if reserved:
        raise ValueError(f"{option} {reserved!r} are output or internal column names; score other fields")
    return names


class StreamingAnomalyConfig(registry.StrictConfig):
    """Per-key running statistics for AnomalyDetector on unbounded input (the ``streaming:`` block)."""

    numeric_fields: list[str] = Field(description="Numeric fields to score against their key's history.")
    key_fields: list[str] = Field(
        default_factory=list, description="Fields whose values pick the statistics (none: one global key).")
    method: Literal["zscore", "robust_z"] = Field(
        "zscore", description="zscore: mean/std; robust_z: median/MAD of a bounded sample per key and field.")
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0, description="|z| at or above which a field flags the row.")
    min_history: int = Field(
        DEFAULT_MIN_HISTORY, ge=2, description="Values of a field a key must have seen before it can flag.")
    halflife: float | None = Field(
        None, gt=0, description="zscore only: exponentially weighted moments; a value's weight halves after "
                                "this many newer values of its key (default: all history weighs the same).")
    sample_size: int = Field(
        DEFAULT_SAMPLE_SIZE, ge=16, le=1_000_000,
        description="robust_z only: values kept per key and field (a uniform sample once it overflows).")
    ttl: str | None = Field(
        None, description="Forget a key's statistics after this long without rows (event time): '30m', '1d'.")
    event_time: str | None = Field(
        None, description="Field with the event time: orders a key's rows in a batch and drives ttl "
                          "(default: the element timestamp).")

    @model_validator(mode="before")
    @classmethod
    def _unknown_keys(cls, data: Any) -> Any:
        """Unknown keys named with a hint from this block (not the step's top-level keys)."""
        if isinstance(data, dict):
            unknown = [k for k in data if k not in cls.model_fields]
            if unknown:
                hint = difflib.get_close_matches(str(unknown[0]), list(cls.model_fields), n=1)
                raise ValueError(f"unknown key {unknown[0]!r} in streaming"
                                 + (f"; did you mean {hint[0]!r}?" if hint else "")
                                 + f" Allowed: {sorted(cls.model_fields)}")
        return data

    @field_validator("numeric_fields")
    @classmethod
    def _check_numeric(cls, names: list[str]) -> list[str]:
        if not names:
            raise ValueError("numeric_fields=[] is empty; list the numeric fields to score")
        return _check_names("numeric_fields", names)

    @field_validator("key_fields")
    @classmethod
    def _check_keys(cls, names: list[str]) -> list[str]:
        return _check_names("key_fields", names)

    @field_validator("ttl")
    @classmethod
    def _check_ttl(cls, ttl: str | None) -> str | None:
        if ttl is not None:
            parse_ttl(ttl)
        return ttl

    @model_validator(mode="after")
    def _check(self) -> StreamingAnomalyConfig:
        both = [n for n in self.key_fields if n in self.numeric_fields]
        if both:
            raise ValueError(f"key_fields and numeric_fields both name {both}; a field is a key or a value")
        if self.halflife is not None and self.method != "zscore":
            raise ValueError(f"halflife={self.halflife!r} applies to method: zscore only; robust_z keeps a "
                             "bounded sample (sample_size) instead; remove halflife or set method: zscore")
        if "sample_size" in self.model_fields_set and self.method != "robust_z":
            raise ValueError("sample_size applies to method: robust_z only (zscore keeps running moments); "
                             "remove sample_size or set method: robust_z")
        if self.event_time is not None and not self.event_time.strip():
            raise ValueError("event_time='' is not a field name; give a field, or omit it to use element timestamps")
        return self


@dataclasses.dataclass(frozen=True)
class StreamSettings:
    """What the stages need, picklable."""

    key_fields: tuple[str, ...]
    numeric_fields: tuple[str, ...]
    method: str
    threshold: float
    min_history: int
    decay: float  # weight kept by a value per newer value (1.0: no decay)
    sample_size: int
    ttl_us: int | None
    event_time: str | None

    @classmethod
    def of(cls, config: StreamingAnomalyConfig) -> StreamSettings:
        decay = 1.0 if config.halflife is None else float(0.5 ** (1.0 / config.halflife))
        return cls(tuple(config.key_fields), tuple(config.numeric_fields), config.method, float(config.threshold),
                   int(config.min_history), decay, int(config.sample_size),
                   None if config.ttl is None else parse_ttl(config.ttl), config.event_time)

    @property
    def needs_time(self) -> bool:
        return self.ttl_us is not None or self.event_time is not None

    @property
    def needed(self) -> list[str]:
        return [*self.key_fields, *self.numeric_fields, *([self.event_time] if self.event_time else [])]


# ---------------------------------------------------------------------------------------------
# Running statistics and prefix scoring (no Beam).
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Moments:
    """zscore state of one field: values seen, their total weight, weighted mean and variance."""

    count: int = 0
    weight: float = 0.0
    mean: float = 0.0
    var: float = 0.0


FieldState = Moments | RunningStats


@dataclasses.dataclass
class KeyState:
    """The state of one key: one entry per numeric field, and the latest time seen (us)."""

    fields: list[FieldState]
    last_us: int | None = None


def new_state(s: StreamSettings) -> KeyState:
    if s.method == "zscore":
        return KeyState([Moments() for _ in s.numeric_fields])
    return KeyState([RunningStats(s.sample_size) for _ in s.numeric_fields])


def _fits(state: KeyState | None, s: StreamSettings) -> bool:
    """Whether a stored state matches the settings (a restored job may have changed fields or method)."""
    kind = Moments if s.method == "zscore" else RunningStats
    return state is not None and len(state.fields) == len(s.numeric_fields) and all(
        isinstance(f, kind) for f in state.fields)


def z_values(x: np.ndarray | float, center: np.ndarray | float, spread: np.ndarray | float) -> np.ndarray:
    """(x - center) / spread; a flat history (spread ~ 0) gives 0 at the centre and +-inf elsewhere."""
    x, center, spread = np.asarray(x, float), np.asarray(center, float), np.asarray(spread, float)
    dev = x - center
    tiny = 1e-12 * np.maximum(1.0, np.abs(center))
    flat = spread <= tiny
    with np.errstate(divide="ignore", invalid="ignore"):
        z = dev / np.where(flat, 1.0, spread)
    return np.where(flat, np.where(np.abs(dev) <= tiny, 0.0, np.copysign(np.inf, dev)), z)


def zscore_prefix(x: np.ndarray, st: Moments, decay: float = 1.0) -> tuple[np.ndarray, np.ndarray, Moments]:
    """z of each value against the moments of the values before it (state, then earlier ``x``).

    Returns ``(z, prior counts, new state)``; the values are finite. Sums are shifted by the prior
    mean (or the first value) for precision; with ``decay < 1`` every older value's weight is
    multiplied by ``decay`` per newer value (an exponentially weighted mean and variance).
    """
    k = len(x)
    c = st.mean if st.count else float(x[0])
    y = x - c
    a0 = st.weight * (st.mean - c)
    b0 = st.weight * (st.var + (st.mean - c) ** 2)
    steps = np.arange(1, k + 1, dtype=np.float64)
    if decay == 1.0:
        w_in = st.weight + steps
        a_in = a0 + np.cumsum(y)
        b_in = b0 + np.cumsum(y * y)
    else:
        from scipy.signal import lfilter  # s[i] = decay * s[i-1] + v[i], in C

        a_in = lfilter([1.0], [1.0, -decay], y, zi=[decay * a0])[0]
        b_in = lfilter([1.0], [1.0, -decay], y * y, zi=[decay * b0])[0]
        kept = decay ** steps
        w_in = kept * st.weight + (1.0 - kept) / (1.0 - decay)
    w = np.concatenate(([st.weight], w_in[:-1]))  # the sums before each value
    a = np.concatenate(([a0], a_in[:-1]))
    b = np.concatenate(([b0], b_in[:-1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_y = a / w
        std = np.sqrt(np.maximum(b / w - mean_y * mean_y, 0.0))
    z = z_values(x, c + mean_y, std)
    end_mean = a_in[-1] / w_in[-1]
    new = Moments(st.count + k, float(w_in[-1]), float(c + end_mean),
                  float(max(b_in[-1] / w_in[-1] - end_mean * end_mean, 0.0)))
    return z, st.count + np.arange(k), new


def _robust_z(value: float, ordered: np.ndarray) -> float:
    """Robust z of ``value`` against the sorted values ``ordered`` (median, MAD with the mean-AD fallback)."""
    n = len(ordered)
    half = n // 2
    median = float(ordered[half]) if n % 2 else 0.5 * float(ordered[half - 1] + ordered[half])
    dev = np.abs(ordered - median)
    if n % 2:
        mad = float(np.partition(dev, half)[half])
    else:
        part = np.partition(dev, [half - 1, half])
        mad = 0.5 * float(part[half - 1] + part[half])
    if mad == 0.0:
        mad = float(dev.mean()) * MEAN_AD_TO_STD / MAD_TO_STD
    spread = MAD_TO_STD * mad
    tiny = 1e-12 * max(1.0, abs(median))
    if spread <= tiny:
        return 0.0 if abs(value - median) <= tiny else float(np.copysign(np.inf, value - median))
    return (value - median) / spread


def robust_prefix(x: np.ndarray, st: RunningStats, min_history: int) -> tuple[np.ndarray, np.ndarray, RunningStats]:
    """Robust z of each value against the key's sample plus the earlier values; ``st`` is updated in place.

    The earlier values of the slice are kept exactly and folded into the reservoir every
    ``capacity // 4`` values (at least 16), so a row is compared with at most 1.25 ``capacity`` values.
    """
    k = len(x)
    z = np.full(k, np.nan)
    prior = np.empty(k, dtype=np.int64)
    ordered = np.sort(st.reservoir)
    fold = max(16, st.capacity // 4)
    start = 0
    for i in range(k):
        prior[i] = st.count + i - start
        if prior[i] >= min_history:
            z[i] = _robust_z(float(x[i]), ordered)
        ordered = np.insert(ordered, np.searchsorted(ordered, x[i]), x[i])
        if i + 1 - start >= fold:
            st.update(x[start:i + 1])
            ordered, start = np.sort(st.reservoir), i + 1
    if start < k:
        st.update(x[start:])
    return z, prior, st


def score_key(values: Sequence[np.ndarray], times: np.ndarray | None, state: KeyState,
              s: StreamSettings) -> np.ndarray:
    """z per row and field (NaN: not scored) for one key's rows in order; ``state`` is updated in place."""
    n = len(values[0]) if values else 0
    z = np.full((n, len(values)), np.nan)
    starts = [0]
    if s.ttl_us is not None and times is not None and n:
        first = times[0] if state.last_us is None else state.last_us
        before = np.maximum.accumulate(np.concatenate(([first], times[:-1])))  # latest time before each row
        starts = np.flatnonzero(times - before >= s.ttl_us).tolist()  # the key was quiet for ttl: start again
        if starts and starts[0] == 0:
            state.fields = new_state(s).fields
        else:
            starts = [0, *starts]
    bounds = [*starts, n]
    for seg, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        if seg:
            state.fields = new_state(s).fields
        for j, column in enumerate(values):
            x = column[a:b]
            rows = np.flatnonzero(np.isfinite(x))
            if rows.size == 0:
                continue
            st = state.fields[j]
            if isinstance(st, Moments):
                zz, prior, state.fields[j] = zscore_prefix(x[rows], st, s.decay)
            else:
                zz, prior, state.fields[j] = robust_prefix(x[rows], st, s.min_history)
            zz = np.where(prior >= s.min_history, zz, np.nan)
            z[a + rows, j] = zz
    if times is not None and n:
        latest = int(times.max())
        state.last_us = latest if state.last_us is None else max(state.last_us, latest)
    return z


def tag_rows(z: np.ndarray, s: StreamSettings, key_label: str | None) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(anomaly_score, is_anomaly, anomaly_reasons) from the z matrix (rows x fields)."""
    size = np.abs(z)
    scored = ~np.isnan(size)
    with np.errstate(invalid="ignore"):
        field_scores = np.where(np.isinf(size), 1.0, size / (size + s.threshold))
    field_scores = np.where(scored, field_scores, 0.0)
    scores = field_scores.max(axis=1) if z.shape[1] else np.zeros(z.shape[0])
    hits = scored & (np.where(scored, size, 0.0) >= s.threshold)
    flags = hits.any(axis=1)
    reasons: list[list[str]] = [[] for _ in range(z.shape[0])]
    suffix = f" (key {key_label})" if key_label is not None else ""
    for row in np.flatnonzero(flags).tolist():
        found = sorted(np.flatnonzero(hits[row]).tolist(), key=lambda j: -size[row, j])
        reasons[row] = [f"{s.numeric_fields[j]}: {s.method} {z[row, j]:.1f}{suffix}" for j in found]
    return (pa.array(scores, pa.float64()), pa.array(flags, pa.bool_()),
            pa.array(reasons, pa.list_(pa.string())))


# ---------------------------------------------------------------------------------------------
# Stage 1: keyed rows.
# ---------------------------------------------------------------------------------------------


def _value_name(j: int) -> str:
    return f"{VALUE_PREFIX}{j}"


def _drop_internal(batch: pa.RecordBatch) -> pa.RecordBatch:
    drop = [n for n in batch.schema.names if n in (KEY_COL, TIME_COL) or n.startswith(VALUE_PREFIX)]
    return batch.drop_columns(drop) if drop else batch


def _as_floats(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """float64 values and a mask of values that are not numbers; raises TypeError for a non-numeric type."""
    values = as_array(values)
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    t = values.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return cast_array(values, _FLOAT)
    if pa.types.is_null(t) or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) \
            or pa.types.is_boolean(t):
        return pc.cast(values, pa.float64(), safe=False), np.zeros(len(values), dtype=bool)
    raise TypeError(f"type {t} is not numeric")


class _KeyRowsFn(StepDoFn):
    """Per batch: numeric fields as float64, times, key bytes; one slice per key, rows in order."""

    def __init__(self, settings: StreamSettings, step: str) -> None:
        super().__init__(step)
        self._s = settings

    @timed_process
    def process(self, batch: pa.RecordBatch, timestamp: Any = beam.DoFn.TimestampParam) -> Iterator[Any]:
        s = self._s
        self.count_input(batch)
        n = batch.num_rows
        if n == 0:
            return
        missing = missing_fields(batch, s.needed)
        if missing:
            yield from self._fail(batch, None, "validation", missing_message(STEP_TYPE, missing, batch), "KeyError")
            return
        failed = np.zeros(n, dtype=bool)
        errors: list[str | None] = [None] * n
        columns: list[pa.Array] = []
        for name in s.numeric_fields:
            try:
                floats, bad = _as_floats(batch.column(name))
            except (TypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                message = f"{STEP_TYPE}: numeric field {name!r} cannot be scored: {exc}; cast it to a number first"
                yield from self._fail(batch, None, "type", message, "TypeError")
                return
            for i in np.flatnonzero(bad & ~failed).tolist():
                errors[i] = f"{STEP_TYPE}: numeric field {name!r} value {batch.column(name)[i].as_py()!r} " \
                            "is not a number"
            failed |= bad
            columns.append(pc.fill_null(pc.cast(floats, pa.float64()), np.nan))
        times = None
        if s.needs_time:
            if s.event_time is None:
                times = np.full(n, timestamp.micros, dtype=np.int64)
            else:
                times, nulls, bad = event_micros(batch.column(s.event_time))
                for i in np.flatnonzero((nulls | bad) & ~failed).tolist():
                    errors[i] = (f"{STEP_TYPE}: event_time field {s.event_time!r} value "
                                 f"{batch.column(s.event_time)[i].as_py()!r} is null or not a timestamp")
                failed |= nulls | bad
        try:
            keys = self._keys(batch)
        except (TypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            message = f"{STEP_TYPE}: key_fields {list(s.key_fields)} cannot be read as a key: {exc}"
            yield from self._fail(batch, None, "type", message, "TypeError")
            return
        if failed.any():
            rows = np.flatnonzero(failed).tolist()
            yield from self._fail(batch, rows, "type", [errors[i] or "" for i in rows], "TypeError")
        work = batch
        for j, column in enumerate(columns):
            work = work.append_column(_value_name(j), column)
        if times is not None:
            work = work.append_column(TIME_COL, pa.array(times, pa.int64()))
        work = _drop_row_offset(work)
        ok = ~failed
        if not ok.any():
            return
        if not ok.all():
            work, keys = work.filter(pa.array(ok)), keys.filter(pa.array(ok))
            times = None if times is None else times[ok]
        yield from self._split(work, keys, times)

    def _keys(self, batch: pa.RecordBatch) -> pa.Array:
        """Canonical key bytes per row; a row whose key fields are all null is a key of its own."""
        s = self._s
        if not s.key_fields:
            return pa.repeat(pa.scalar(b"", pa.binary()), batch.num_rows)
        keys = key_bytes(key_views(batch, s.key_fields), batch.num_rows)
        return pc.fill_null(keys, pa.scalar(b"\x00" * len(s.key_fields), pa.binary())) if keys.null_count else keys

    def _split(self, work: pa.RecordBatch, keys: pa.Array, times: np.ndarray | None) -> Iterator[Any]:
        encoded = pc.dictionary_encode(keys)
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        by_time = self._s.event_time is not None
        order = np.lexsort((times, codes)) if by_time else np.argsort(codes, kind="stable")
        codes = codes[order]
        if by_time or np.any(order[1:] < order[:-1]):
            work = work.take(pa.array(order, type=pa.int64()))
        bounds = np.flatnonzero(np.diff(codes)) + 1
        starts = [0, *bounds.tolist()]
        stops = [*bounds.tolist(), len(codes)]
        names = encoded.dictionary.to_pylist()
        for a, b in zip(starts, stops, strict=True):
            yield names[int(codes[a])], work.slice(a, b - a)

    def _fail(self, batch: pa.RecordBatch, rows: list[int] | None, error_type: str, errors: str | list[str],
              exception: str) -> Iterator[beam.pvalue.TaggedOutput]:
        letters = rows_to_dead_letters(_drop_internal(batch), rows, error_type=error_type, errors=errors,
                                       step=self._step, ctx=self._ctx, exception=exception)
        self._metrics.records_failed.inc(len(letters))
        for letter in letters:
            yield beam.pvalue.TaggedOutput(DLQ_TAG, letter)


# ---------------------------------------------------------------------------------------------
# Stage 2: per-key state (and the TTL timer).
# ---------------------------------------------------------------------------------------------


class _ScoreLogic:
    """Scores one key's slice against its state, then folds the slice in (one read, one write)."""

    def __init__(self, settings: StreamSettings, step: str) -> None:
        self._s = settings
        self._step = step
        self._ctx = get_run_context()

    def setup(self) -> None:
        self._metrics = StepMetrics(self._step)

    def _key_label(self, sub: pa.RecordBatch) -> str | None:
        if not self._s.key_fields:
            return None
        values = [sub.column(name)[0].as_py() for name in self._s.key_fields]
        return ", ".join("null" if v is None else str(v) for v in values)

    def process(self, sub: pa.RecordBatch, element_us: int, window: Any, cell: Any,
                timer: Any) -> Iterator[Any]:
        s = self._s
        old = _read(cell)
        state = copy.deepcopy(old) if _fits(old, s) else new_state(s)
        try:
            values = [sub.column(_value_name(j)).to_numpy(zero_copy_only=False)
                      for j in range(len(s.numeric_fields))]
            times = sub.column(TIME_COL).to_numpy(zero_copy_only=False) if s.needs_time else None
            z = score_key(values, times, state, s)
            score, flag, reasons = tag_rows(z, s, self._key_label(sub))
            out = _drop_internal(sub)
            out = out.drop_columns([n for n in _OUTPUTS if n in out.schema.names])
            out = pa.RecordBatch.from_arrays([*out.columns, score, flag, reasons],
                                             schema=out.schema.append(pa.field(SCORE_FIELD, pa.float64()))
                                             .append(pa.field(FLAG_FIELD, pa.bool_()))
                                             .append(pa.field(REASONS_FIELD, pa.list_(pa.string()))))
        except Exception as exc:  # noqa: BLE001 - the rows go to the DLQ; the key's state stays as it was
            letters = rows_to_dead_letters(
                _drop_internal(sub), None, error_type="internal", exception=exc, step=self._step, ctx=self._ctx,
                errors=f"{STEP_TYPE}: scoring the rows of one key failed: {exc}")
            self._metrics.records_failed.inc(len(letters))
            for letter in letters:
                yield beam.pvalue.TaggedOutput(DLQ_TAG, letter)
            return
        _write(cell, old, state)
        if timer is not None and state.last_us is not None:
            fire = min(max(state.last_us, element_us) + s.ttl_us, window.max_timestamp().micros)
            timer.set(Timestamp(micros=fire))
        yield out


def _score_fn(settings: StreamSettings, step: str) -> beam.DoFn:
    """The stateful DoFn; it declares a TTL timer only when ``ttl`` is set (specs are class attributes)."""
    stats_spec = userstate.BagStateSpec("stats", PickleCoder())

    if settings.ttl_us is None:
        class _StreamingAnomalyFn(beam.DoFn):
            def __init__(self) -> None:
                self._logic = _ScoreLogic(settings, step)

            def setup(self) -> None:
                self._logic.setup()

            def process(self, element: tuple[bytes, pa.RecordBatch], timestamp: Any = beam.DoFn.TimestampParam,
                        window: Any = beam.DoFn.WindowParam,
                        cell: Any = beam.DoFn.StateParam(stats_spec)) -> Iterator[Any]:
                yield from self._logic.process(element[1], timestamp.micros, window, cell, None)

        return _StreamingAnomalyFn()

    # Timer ids unique per step: the FnApiRunner mixes same-id timers of one stage (apache/beam#21995).
    ttl_timer = userstate.TimerSpec(f"anomaly_ttl_{hashlib.sha1(step.encode()).hexdigest()[:12]}",
                                    TimeDomain.WATERMARK)

    class _StreamingAnomalyTtlFn(beam.DoFn):
        def __init__(self) -> None:
            self._logic = _ScoreLogic(settings, step)

        def setup(self) -> None:
            self._logic.setup()

        def process(self, element: tuple[bytes, pa.RecordBatch], timestamp: Any = beam.DoFn.TimestampParam,
                    window: Any = beam.DoFn.WindowParam, cell: Any = beam.DoFn.StateParam(stats_spec),
                    timer: Any = beam.DoFn.TimerParam(ttl_timer)) -> Iterator[Any]:
            yield from self._logic.process(element[1], timestamp.micros, window, cell, timer)

        @userstate.on_timer(ttl_timer)
        def on_ttl(self, cell: Any = beam.DoFn.StateParam(stats_spec)) -> None:
            cell.clear()  # the key had no rows for ttl: forget its statistics

    return _StreamingAnomalyTtlFn()


# ---------------------------------------------------------------------------------------------
# The transform.
# ---------------------------------------------------------------------------------------------


class StreamingAnomalyDetector(beam.PTransform):
    """Tags rows against their key's running statistics; returns ``(batches, dead_letters)``.

    Built by ``AnomalyDetector(streaming={...})``; see the module docstring for the rules.
    """

    def __init__(self, config: StreamingAnomalyConfig | dict[str, Any], step: str | None = None) -> None:
        super().__init__()
        self.config = config if isinstance(config, StreamingAnomalyConfig) else StreamingAnomalyConfig(**config)
        self._settings = StreamSettings.of(self.config)
        self._step = step

    def step_name(self) -> str:
        return self._step or self.label

    def display_data(self) -> dict[str, Any]:
        c = self.config
        return {"mode": "streaming", "numeric_fields": ", ".join(c.numeric_fields),
                "key_fields": ", ".join(c.key_fields) or "(one global key)", "method": c.method,
                "threshold": c.threshold, "min_history": c.min_history,
                "halflife": c.halflife if c.halflife is not None else "none", "ttl": c.ttl or "none"}

    def expand(self, pcoll: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        step = self.step_name()
        keyed = pcoll | "KeyRows" >> beam.ParDo(_KeyRowsFn(self._settings, step)).with_output_types(
            tuple[bytes, pa.RecordBatch]).with_outputs(DLQ_TAG, main="keyed")
        scored = keyed.keyed | "ScoreByKey" >> beam.ParDo(_score_fn(self._settings, step)).with_output_types(
            pa.RecordBatch).with_outputs(DLQ_TAG, main="scored")
        out = scored.scored | "Coalesce" >> beam.ParDo(_CoalesceFn(step)).with_output_types(pa.RecordBatch)
        dead = (keyed[DLQ_TAG], scored[DLQ_TAG]) | "MergeDlq" >> beam.Flatten()
        return out, dead


__all__ = ["StreamSettings", "StreamingAnomalyConfig", "StreamingAnomalyDetector", "score_key", "tag_rows",
           "zscore_prefix"]
