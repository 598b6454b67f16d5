"""Dates, datetimes (with or without a zone) and times written as text, vectorised.

Layouts: ``2024-03-05`` / ``2024/03/05`` (optionally ``T`` or space, ``HH:MM[:SS[.f]]`` and a
zone ``Z``/``UTC``/``+02:00``/``+0200``), ``05/03/2024`` / ``05.03.2024`` / ``05-03-2024`` (same
optional time), ``March 5, 2024``, ``5 Mar 2024``; times ``10:30``, ``23:59:59.5``, ``1:05 PM``.
A cheap RE2 match picks the candidates, one capture pass reads their parts, numpy checks them
against the calendar (``2024-02-30`` is not a date) and turns them into day and microsecond
numbers. ``05/03/2024`` reads both ways: the day-first reading goes to ``lo``/``hi``, the
month-first one to ``lo_alt``/``hi_alt``, and ``dmy_only``/``mdy_only`` count the values only one
reading accepts. Format counters are kept per code and named once per atom. No Beam imports.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beam_etl.ml._infer_atoms import EPOCH, EPOCH_DATE, UTC, AtomStats, add_atom

_TIME = r"(?P<H>\d{1,2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:[.,](?P<f>\d{1,9}))?)?"
_ZONE = r"(?P<z>\s?(?:Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?))?"
_CLOCK = rf"(?:(?P<t>[T ]){_TIME}{_ZONE})?$"
YMD = rf"^(?P<y>\d{{4}})(?P<s1>[-/])(?P<m>\d{{1,2}})(?P<s2>[-/])(?P<d>\d{{1,2}}){_CLOCK}"
AB_Y = rf"^(?P<a>\d{{1,2}})(?P<s1>[-/.])(?P<b>\d{{1,2}})(?P<s2>[-/.])(?P<y>\d{{4}}){_CLOCK}"
MON_D_Y = r"^(?P<mon>[A-Za-z]{3,9})\.? (?P<d>\d{1,2})(?:st|nd|rd|th)?,? (?P<y>\d{4})$"
D_MON_Y = r"^(?P<d>\d{1,2})(?:st|nd|rd|th)? (?P<mon>[A-Za-z]{3,9})\.?,? (?P<y>\d{4})$"
TIME_ONLY = rf"^{_TIME}(?:\s?(?P<p>[AaPp]\.?[Mm]\.?))?$"
_OFFSET = r"^(?P<sign>[+-])(?P<zh>\d{2}):?(?P<zm>\d{2})?$"

_MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december"]
_MONTH_NAMES = pa.array(_MONTHS + [m[:3] for m in _MONTHS] + ["sept"])
_MONTH_NUMBER = np.array([*range(1, 13), *range(1, 13), 9], dtype=np.int64)
_US_PER_DAY = 86_400_000_000
_SEPARATORS = ("-", "/", ".")
_LAYOUT_YMD, _LAYOUT_AB_Y, _LAYOUT_MON_D_Y, _LAYOUT_D_MON_Y = range(4)


def mask(arr: pa.Array) -> np.ndarray:
    """A boolean Arrow array (nulls false) as numpy."""
    return np.asarray(arr.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def select(arr: pa.Array, keep: np.ndarray) -> pa.Array:
    return arr.filter(pa.array(keep, type=pa.bool_()))


def _int(parts: pa.StructArray, name: str, default: int = 0) -> np.ndarray:
    col = parts.field(name)
    return pc.cast(pc.if_else(pc.equal(col, ""), str(default), col), pa.int64()).to_numpy(zero_copy_only=False)


def _has(parts: pa.StructArray, name: str) -> np.ndarray:
    return mask(pc.not_equal(parts.field(name), ""))


def _separator(parts: pa.StructArray, name: str) -> np.ndarray:
    """Index of each separator in ``_SEPARATORS``."""
    col = parts.field(name)
    return np.where(mask(pc.equal(col, "/")), 1, np.where(mask(pc.equal(col, ".")), 2, 0))


def days_from_civil(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Days since 1970-01-01 of each (y, m, d), and whether it is a real calendar date."""
    ok = (m >= 1) & (m <= 12) & (d >= 1) & (y >= 1) & (y <= 9999)
    months = (np.where(ok, y, 1970) - 1970) * 12 + np.where(ok, m, 1) - 1
    start = months.astype("datetime64[M]")
    first = start.astype("datetime64[D]").astype(np.int64)
    length = (start + 1).astype("datetime64[D]").astype(np.int64) - first
    ok &= d <= length
    return first + np.where(ok, d, 1) - 1, ok


def _clock(parts: pa.StructArray) -> tuple[np.ndarray, np.ndarray]:
    """Microseconds of the day of H:M[:S[.f]] parts, and whether they are a valid time."""
    h, m, s = _int(parts, "H"), _int(parts, "M"), _int(parts, "S")
    frac = parts.field("f")
    frac = pc.utf8_slice_codeunits(pc.utf8_rpad(pc.if_else(pc.equal(frac, ""), "0", frac), 6, "0"), 0, 6)
    micros = pc.cast(frac, pa.int64()).to_numpy(zero_copy_only=False)
    ok = (h <= 23) & (m <= 59) & (s <= 59)
    return ((h * 60 + m) * 60 + s) * 1_000_000 + micros, ok


def _zone(parts: pa.StructArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zone offset in minutes, whether a zone is written, and whether it is valid."""
    zone = pc.utf8_upper(pc.utf8_trim_whitespace(parts.field("z")))
    written = mask(pc.not_equal(zone, ""))
    utc = mask(pc.is_in(zone, value_set=pa.array(["Z", "UTC", "GMT"])))
    is_off = mask(pc.match_substring_regex(zone, _OFFSET))
    off = pc.extract_regex(pc.if_else(pa.array(is_off), zone, "+00"), _OFFSET)
    zh, zm = _int(off, "zh"), _int(off, "zm")
    sign = np.where(mask(pc.equal(off.field("sign"), "-")), -1, 1)
    valid = utc | (is_off & (zh <= 23) & (zm <= 59))
    return np.where(valid, sign * (zh * 60 + zm), 0), written, valid


@dataclasses.dataclass
class _Parsed:
    """Matched values of one layout: day numbers (two readings), clock, zone and format code."""

    day_a: np.ndarray
    day_b: np.ndarray
    clock: np.ndarray
    offset: np.ndarray
    timed: np.ndarray
    zoned: np.ndarray
    code: np.ndarray
    dmy_only: np.ndarray
    mdy_only: np.ndarray

    def take(self, keep: np.ndarray) -> _Parsed:
        return _Parsed(*(getattr(self, f.name)[keep] for f in dataclasses.fields(self)))


def _with_clock(parts: pa.StructArray, ok: np.ndarray, day_a: np.ndarray, day_b: np.ndarray, layout_code: np.ndarray,
                dmy_only: np.ndarray, mdy_only: np.ndarray) -> tuple[_Parsed, np.ndarray]:
    timed = _has(parts, "t")
    clock, clock_ok = _clock(parts)
    offset, written, zone_ok = _zone(parts)
    ok = ok & (~timed | clock_ok) & (~written | zone_ok)
    zoned = timed & written
    time_code = np.where(timed, 16 + 8 * mask(pc.equal(parts.field("t"), "T")) + 4 * _has(parts, "S")
                         + 2 * _has(parts, "f") + written, 0)
    parsed = _Parsed(day_a, day_b, np.where(timed, clock, 0), np.where(zoned, offset, 0), timed, zoned,
                     layout_code * 32 + time_code, dmy_only, mdy_only)
    return parsed, ok


def _ymd(parts: pa.StructArray) -> tuple[_Parsed, np.ndarray]:
    days, ok = days_from_civil(_int(parts, "y"), _int(parts, "m"), _int(parts, "d"))
    sep = _separator(parts, "s1")
    ok &= sep == _separator(parts, "s2")
    none = np.zeros(len(days), bool)
    return _with_clock(parts, ok, days, days, _LAYOUT_YMD * 100 + sep, none, none)


def _ab_y(parts: pa.StructArray) -> tuple[_Parsed, np.ndarray]:
    a, b, y = _int(parts, "a"), _int(parts, "b"), _int(parts, "y")
    dmy, dmy_ok = days_from_civil(y, b, a)
    mdy, mdy_ok = days_from_civil(y, a, b)
    sep = _separator(parts, "s1")
    ok = (dmy_ok | mdy_ok) & (sep == _separator(parts, "s2"))
    kind = np.where(dmy_ok & mdy_ok, 2, np.where(dmy_ok, 0, 1))
    return _with_clock(parts, ok, np.where(dmy_ok, dmy, mdy), np.where(mdy_ok, mdy, dmy),
                       _LAYOUT_AB_Y * 100 + sep * 3 + kind, dmy_ok & ~mdy_ok, mdy_ok & ~dmy_ok)


def _month_name(layout: int) -> Callable[[pa.StructArray], tuple[_Parsed, np.ndarray]]:
    def parse(parts: pa.StructArray) -> tuple[_Parsed, np.ndarray]:
        index = pc.index_in(pc.utf8_lower(parts.field("mon")), value_set=_MONTH_NAMES)
        known = mask(index.is_valid())
        month = np.where(known, _MONTH_NUMBER[index.fill_null(0).to_numpy(zero_copy_only=False)], 0)
        days, ok = days_from_civil(_int(parts, "y"), month, _int(parts, "d"))
        n = len(days)
        zeros, none = np.zeros(n, np.int64), np.zeros(n, bool)
        code = np.full(n, layout * 100 * 32, np.int64)
        return _Parsed(days, days, zeros, zeros, none, none, code, none, none), ok & known
    return parse


_LAYOUTS = ((YMD, r"^\d{4}[-/]\d", _ymd), (AB_Y, r"^\d{1,2}[-/.]\d{1,2}[-/.]\d{4}", _ab_y),
            (MON_D_Y, r"^[A-Za-z]{3,9}\.? \d", _month_name(_LAYOUT_MON_D_Y)),
            (D_MON_Y, r"^\d{1,2}(?:st|nd|rd|th)? [A-Za-z]", _month_name(_LAYOUT_D_MON_Y)))


def format_name(code: int) -> str:
    """The strftime-like layout of a format code (``|`` joins the two readings of ``05/03/2024``)."""
    layout_code, time_code = divmod(int(code), 32)
    layout, base = divmod(layout_code, 100)
    if layout == _LAYOUT_YMD:
        s = _SEPARATORS[base]
        date = f"%Y{s}%m{s}%d"
    elif layout == _LAYOUT_AB_Y:
        sep_index, kind = divmod(base, 3)
        s = _SEPARATORS[sep_index]
        dmy, mdy = f"%d{s}%m{s}%Y", f"%m{s}%d{s}%Y"
        date = (dmy, mdy, f"{dmy}|{mdy}")[kind]
    else:
        date = "%B %d, %Y" if layout == _LAYOUT_MON_D_Y else "%d %B %Y"
    if not time_code:
        return date
    clock = ("T" if time_code & 8 else " ") + "%H:%M" + (":%S" if time_code & 4 else "") \
        + (".%f" if time_code & 2 else "")
    return date + clock + ("%z" if time_code & 1 else "")


def _offset_label(minutes: int) -> str:
    return f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _value_counts(values: np.ndarray) -> list[tuple[int, int]]:
    uniq, counts = np.unique(values, return_counts=True)
    return list(zip(uniq.tolist(), counts.tolist(), strict=True))


def _atoms(parsed: _Parsed, atoms: dict[str, AtomStats]) -> None:
    for atom, sel in (("date", ~parsed.timed), ("datetime", parsed.timed & ~parsed.zoned),
                      ("datetime_tz", parsed.zoned)):
        if not sel.any():
            continue
        p = parsed.take(sel)
        counts = {f"format:{format_name(c)}": n for c, n in _value_counts(p.code)}
        for key, flags in (("dmy_only", p.dmy_only), ("mdy_only", p.mdy_only)):
            if flags.any():
                counts[key] = int(flags.sum())
        if atom == "date":
            lo_a, hi_a, lo_b, hi_b = (EPOCH_DATE + dt.timedelta(days=int(v))
                                      for v in (p.day_a.min(), p.day_a.max(), p.day_b.min(), p.day_b.max()))
        else:
            zoned = atom == "datetime_tz"
            if zoned:
                counts.update({f"offset:{_offset_label(m)}": n for m, n in _value_counts(p.offset)})
            shift = p.clock - p.offset * 60_000_000
            a, b = p.day_a * _US_PER_DAY + shift, p.day_b * _US_PER_DAY + shift
            lo_a, hi_a, lo_b, hi_b = (_to_datetime(v, zoned) for v in (a.min(), a.max(), b.min(), b.max()))
        add_atom(atoms, atom, AtomStats(int(sel.sum()), lo_a, hi_a, lo_b, hi_b, counts))


def _to_datetime(micros: int, zoned: bool) -> dt.datetime:
    value = EPOCH + dt.timedelta(microseconds=int(micros))
    return value.replace(tzinfo=UTC) if zoned else value


def temporal_atoms(values: pa.Array, atoms: dict[str, AtomStats]) -> np.ndarray:
    """Adds date/datetime/datetime_tz atoms of ``values``; returns which values they took."""
    taken = np.zeros(len(values), bool)
    found: list[_Parsed] = []
    for pattern, prefix, parse in _LAYOUTS:
        candidates = ~taken & mask(pc.match_substring_regex(values, prefix))
        if not candidates.any():
            continue
        idx = np.flatnonzero(candidates)
        sub = select(values, candidates)
        full = mask(pc.match_substring_regex(sub, pattern))
        if not full.any():
            continue
        parsed, ok = parse(pc.extract_regex(select(sub, full), pattern))
        if ok.any():
            found.append(parsed.take(ok))
            taken[idx[np.flatnonzero(full)[ok]]] = True
    if found:
        merged = _Parsed(*(np.concatenate([getattr(p, f.name) for p in found]) for f in dataclasses.fields(_Parsed)))
        _atoms(merged, atoms)
    return taken


def _time_of_day(micros: int) -> dt.time:
    seconds, us = divmod(int(micros), 1_000_000)
    return dt.time(seconds // 3600, seconds // 60 % 60, seconds % 60, us)


def time_atoms(values: pa.Array, atoms: dict[str, AtomStats]) -> np.ndarray:
    """Adds the ``time`` atom of ``values`` (24-hour or with AM/PM); returns which values it took."""
    matched = mask(pc.match_substring_regex(values, TIME_ONLY))
    if not matched.any():
        return matched
    parts = pc.extract_regex(select(values, matched), TIME_ONLY)
    clock, ok = _clock(parts)
    h = _int(parts, "H")
    meridiem = pc.utf8_lower(pc.replace_substring(parts.field("p"), ".", ""))
    has_p, pm = mask(pc.not_equal(meridiem, "")), mask(pc.equal(meridiem, "pm"))
    ok &= ~has_p | ((h >= 1) & (h <= 12))
    clock = clock + (np.where(has_p, h % 12 + 12 * pm, h) - h) * 3_600_000_000
    if ok.any():
        code = (8 * has_p + 4 * _has(parts, "S") + 2 * _has(parts, "f"))[ok]
        counts = {}
        for c, n in _value_counts(code):
            name = ("%I" if c & 8 else "%H") + ":%M" + (":%S" if c & 4 else "") + (".%f" if c & 2 else "") \
                + (" %p" if c & 8 else "")
            counts[f"format:{name}"] = n
        good = clock[ok]
        add_atom(atoms, "time", AtomStats(int(ok.sum()), _time_of_day(good.min()), _time_of_day(good.max()),
                                          counts=counts))
    matched[np.flatnonzero(matched)[~ok]] = False
    return matched


__all__ = ["days_from_civil", "format_name", "mask", "select", "temporal_atoms", "time_atoms"]
