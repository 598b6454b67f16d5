"""Pure time helpers behind WindowAggregate: durations, event times, window math, sessions.

Every time here is an ``int`` (or int64 array) of microseconds since the Unix epoch, UTC, the
resolution of Beam's ``Timestamp``; window arithmetic matches Beam's ``FixedWindows``,
``SlidingWindows`` (offset 0) and ``Sessions`` exactly. Nothing here imports Beam.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

US = 1_000_000
# Event times must fall in years 1..9999 (Python datetimes; far inside Beam's timestamp range).
MIN_US = -62_135_596_800 * US
MAX_US = 253_402_300_799 * US
FORMATS = ("auto", "timestamp", "iso", "epoch_s", "epoch_ms", "epoch_us")
_EPOCH_SCALE = {"epoch_s": US, "epoch_ms": 1_000, "epoch_us": 1}
_UNIT_US = {"s": US, "ms": 1_000, "us": 1}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d)?\s*$")
_DURATION_US = {"us": 1, "ms": 1_000, "s": US, "m": 60 * US, "h": 3600 * US, "d": 86400 * US, None: US}
_ZONED = r"(Z|z|[+-]\d\d(:?\d\d)?)$"


def parse_duration(value: Any, field: str, *, allow_zero: bool = False) -> int:
    """``"500ms"``, ``"10s"``, ``"5m"``, ``"1h"``, ``"1d"`` or a number of seconds -> microseconds."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{field}: expected a duration like '30s', '5m' or '1h', got {value!r}")
    if isinstance(value, (int, float)):
        if not np.isfinite(value):
            raise ValueError(f"{field}: expected a finite duration, got {value!r}")
        micros = round(value * US)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{field}: {value!r} is not a duration; write e.g. '500ms', '30s', '5m', '1h' or "
                             "'1d' (a bare number means seconds)")
        micros = round(float(match.group(1)) * _DURATION_US[match.group(2)])
    if micros < 0 or (micros == 0 and not allow_zero):
        raise ValueError(f"{field}: {value!r} must be {'>= 0' if allow_zero else '> 0'}")
    return int(micros)


def format_duration(micros: int) -> str:
    """The shortest exact spelling of a duration: ``300000000`` -> ``5m``."""
    for unit in ("d", "h", "m", "s", "ms"):
        if micros and micros % _DURATION_US[unit] == 0:
            return f"{micros // _DURATION_US[unit]}{unit}"
    return f"{micros}us"


def iso(micros: int) -> str:
    """UTC ISO 8601 text of an instant (``2024-05-01T10:00:00Z``)."""
    when = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=int(micros))
    text = when.isoformat(timespec="microseconds" if micros % US else "seconds")
    return text.replace("+00:00", "Z")


def timestamp_array(micros: np.ndarray | Sequence[int]) -> pa.Array:
    """An Arrow ``timestamp[us, tz=UTC]`` array of microsecond instants."""
    return pa.array(np.asarray(micros, dtype=np.int64), pa.int64()).cast(pa.timestamp("us", tz="UTC"))


# ---------------------------------------------------------------------------------------------
# Event times.
# ---------------------------------------------------------------------------------------------


class EventTimes:
    """Event times of a column: ``micros`` (int64) and per-row problems (``None`` = fine)."""

    def __init__(self, micros: np.ndarray, problems: list[str | None] | None) -> None:
        self.micros = micros
        self.problems = problems

    @property
    def bad(self) -> np.ndarray | None:
        """Mask of rows without a usable event time (None when every row has one)."""
        if self.problems is None:
            return None
        return np.array([p is not None for p in self.problems], dtype=bool)


def _from_epoch(values: np.ndarray, fmt: str) -> np.ndarray:
    """Epoch numbers (float64) -> microseconds; ``auto`` picks s/ms/us per value by magnitude."""
    if fmt == "auto":
        size = np.abs(values)
        scale = np.where(size < 1e11, float(US), np.where(size < 1e14, 1e3, 1.0))
    else:
        scale = float(_EPOCH_SCALE[fmt])
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = np.floor(values * scale)
    return scaled


def _describe_formats(fmt: str) -> str:
    if fmt in _EPOCH_SCALE:
        return f"a number of {fmt.split('_')[1]} since 1970-01-01 UTC (event_time_format: {fmt})"
    return {
        "auto": "an Arrow timestamp or date, an ISO 8601 string, or epoch seconds/milliseconds",
        "timestamp": "an Arrow timestamp or date (event_time_format: timestamp)",
    }.get(fmt, "an ISO 8601 string (event_time_format: iso)")


def _parse_text_value(text: str, fmt: str) -> int | None:
    """One string -> microseconds, or None (the slow path for strings Arrow rejects)."""
    stripped = text.strip()
    if fmt in ("auto", "iso"):
        try:
            when = dt.datetime.fromisoformat(stripped)
        except ValueError:
            when = None
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            delta = when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
            return (delta.days * 86400 + delta.seconds) * US + delta.microseconds
        if fmt == "iso":
            return None
    try:
        number = float(stripped)
    except ValueError:
        return None
    if not np.isfinite(number):
        return None
    micros = _from_epoch(np.array([number]), "auto" if fmt in ("auto", "iso") else fmt)[0]
    return int(micros) if MIN_US <= micros <= MAX_US else None


def _text_micros(col: pa.Array, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """Strings -> (microseconds, ok mask); Arrow's ISO 8601 parser first, Python for the rest."""
    col = col.cast(pa.string())
    n = len(col)
    micros = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    valid = np.asarray(col.is_valid(), dtype=bool)
    todo = valid.copy()
    if fmt in ("auto", "iso"):
        zoned = np.asarray(pc.fill_null(pc.match_substring_regex(col, _ZONED), False), dtype=bool)
        for mask, target in ((zoned & valid, pa.timestamp("us", tz="UTC")), (~zoned & valid, pa.timestamp("us"))):
            if not mask.any():
                continue
            try:
                parsed = pc.cast(col.filter(pa.array(mask)), target).cast(pa.int64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
            micros[mask] = np.asarray(parsed, dtype=np.int64)
            ok[mask] = True
            todo[mask] = False
    for i in np.flatnonzero(todo).tolist():
        value = _parse_text_value(col[i].as_py(), fmt)
        if value is not None:
            micros[i] = value
            ok[i] = True
    return micros, ok


def event_times(col: pa.Array | pa.ChunkedArray | None, field: str, fmt: str = "auto") -> EventTimes:
    """Reads an event-time column as UTC microseconds; rows without a usable value get a problem text.

    Accepted: Arrow timestamps (any unit; naive ones are UTC) and dates; ISO 8601 strings (with or
    without a zone offset; naive ones are UTC); epoch numbers (or numeric strings): seconds,
    milliseconds or microseconds as ``fmt`` says, or under ``auto`` by magnitude (below 1e11:
    seconds, below 1e14: milliseconds, else microseconds).
    """
    if col is None:
        raise KeyError(field)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    if pa.types.is_dictionary(t):
        col = col.cast(t.value_type)
        t = col.type
    n = len(col)
    valid = np.asarray(col.is_valid(), dtype=bool) if col.null_count else np.ones(n, dtype=bool)
    ok = valid.copy()
    wrong_type = False
    if pa.types.is_timestamp(t) and fmt in ("auto", "timestamp"):
        raw = np.asarray(col.cast(pa.int64()).fill_null(0), dtype=np.int64)
        micros = raw // 1000 if t.unit == "ns" else raw * _UNIT_US[t.unit]
    elif pa.types.is_date(t) and fmt in ("auto", "timestamp"):
        raw = np.asarray(col.view(pa.int32() if pa.types.is_date32(t) else pa.int64()).fill_null(0), dtype=np.int64)
        micros = raw * 86400 * US if pa.types.is_date32(t) else raw * 1000
    elif (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)) and fmt in (
            "auto", *_EPOCH_SCALE):
        values = np.asarray(col.cast(pa.float64()).fill_null(0.0), dtype=np.float64)
        scaled = _from_epoch(values, fmt)
        in_range = np.isfinite(scaled) & (scaled >= MIN_US) & (scaled <= MAX_US)
        ok &= in_range
        micros = np.where(in_range, scaled, 0).astype(np.int64)
        if pa.types.is_integer(t) and fmt != "auto":  # exact integer arithmetic, no float rounding
            ints = np.asarray(col.cast(pa.int64()).fill_null(0), dtype=np.int64)
            micros = np.where(in_range, ints, 0) * _EPOCH_SCALE[fmt]
    elif (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)) and fmt != "timestamp":
        micros, parsed = _text_micros(col, fmt)
        ok &= parsed
    else:
        micros = np.zeros(n, dtype=np.int64)
        ok[:] = False
        wrong_type = True
    ok &= (micros >= MIN_US) & (micros <= MAX_US)
    if ok.all():
        return EventTimes(micros, None)
    problems: list[str | None] = [None] * n
    for i in np.flatnonzero(~ok).tolist():
        if not valid[i]:
            problems[i] = f"event time field {field!r} is missing (null); every record needs one to be windowed"
        elif wrong_type:
            problems[i] = (f"event time field {field!r} has type {t}; expected {_describe_formats(fmt)}")
        else:
            value = col[i].as_py()
            problems[i] = (f"event time field {field!r}: value {value!r} is not {_describe_formats(fmt)} "
                           "(or it lies outside years 1-9999)")
    return EventTimes(np.where(ok, micros, 0), problems)


# ---------------------------------------------------------------------------------------------
# Window math (Beam's FixedWindows / SlidingWindows with offset 0).
# ---------------------------------------------------------------------------------------------


def window_slots(micros: np.ndarray, size: int, period: int) -> tuple[np.ndarray, np.ndarray]:
    """For each instant, the first and last window index ``k`` (window ``[k*period, k*period+size)``).

    Fixed windows are ``period == size`` (one window each). Rows with equal (first, last) share
    the same set of windows.
    """
    last = np.floor_divide(micros, period)
    first = np.floor_divide(micros - size, period) + 1
    return first, last


def group_rows(*columns: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Groups rows by equal values of ``columns``: (row order, list of index arrays per group)."""
    n = len(columns[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64), []
    order = np.lexsort(columns[::-1])
    sorted_cols = [c[order] for c in columns]
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for c in sorted_cols:
        change[1:] |= c[1:] != c[:-1]
    starts = np.flatnonzero(change)
    return order, np.split(order, starts[1:])


def key_ids(columns: Sequence[pa.Array | pa.ChunkedArray], n: int) -> np.ndarray:
    """A dense int64 id per row such that rows share an id exactly when all key values are equal."""
    if not columns:
        return np.zeros(n, dtype=np.int64)
    codes = []
    for col in columns:
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        encoded = pc.dictionary_encode(col, null_encoding="encode")
        codes.append(np.asarray(encoded.indices.cast(pa.int64()), dtype=np.int64))
    if len(codes) == 1:
        return codes[0]
    _, inverse = np.unique(np.stack(codes, axis=1), axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def sessionize(group: np.ndarray, lo: np.ndarray, hi: np.ndarray, gap: int) -> np.ndarray:
    """Session number of each interval: ``[lo, hi + gap)`` of one group merge when they overlap.

    A row with event time ``t`` is the interval ``lo = hi = t`` (Beam's proto-window
    ``[t, t + gap)``); a session already formed is ``[start, end - gap]``. Numbers are dense,
    ordered by (group, start). Vectorised: a running maximum of interval ends per group.
    """
    n = len(lo)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((lo, group))
    g, start, end = group[order], lo[order], hi[order] + gap
    # rank starts and ends together so a per-group offset keeps the running max inside each group
    _, inverse = np.unique(np.concatenate([start, end]), return_inverse=True)
    rank_start, rank_end = inverse[:n], inverse[n:]
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = g[1:] != g[:-1]
    group_rank = np.cumsum(new_group) - 1
    offset = group_rank * (2 * n + 1)
    running_end = np.maximum.accumulate(rank_end + offset) - offset
    new_session = new_group.copy()
    new_session[1:] |= rank_start[1:] >= running_end[:-1]
    numbers = np.empty(n, dtype=np.int64)
    numbers[order] = np.cumsum(new_session) - 1
    return numbers


def next_boundary(after: int, size: int, period: int, lateness: int) -> int:
    """The first instant > ``after`` at which a fixed/sliding window fires (end - 1µs) or closes (end + lateness).

    Window ends are ``k * period + size``; the streaming engine's watermark clock ticks at these
    instants, so it learns the watermark to within one window boundary.
    """
    fire = (np.floor_divide(after - size + 1, period) + 1) * period + size - 1
    close = (np.floor_divide(after - size - lateness, period) + 1) * period + size + lateness
    return int(min(fire, close))


def next_gap_boundary(after: int, gap: int) -> int:
    """The first multiple of ``gap`` after ``after``: the session engine's watermark clock ticks there."""
    return int((after // gap + 1) * gap)
