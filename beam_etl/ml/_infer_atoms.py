"""Atoms: the narrowest kind of each value, counted per column, and the storage-type lattice.

Every non-null value lands in exactly one *atom* (``int``, ``dec:2``, ``date``, ...), from its
Arrow type or, for strings, from what the text parses as (``_infer_text``). An atom keeps a
count, typed min/max and a few additive counters, so atoms of two partial profiles merge
exactly. A storage type *fits* a set of atoms (``float`` fits ``int``, ``dec:*`` and ``float``);
``choose`` picks the first type in ``ORDER`` whose fitting share of values reaches the
threshold. No Beam imports.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Storage types, narrowest first; "string" fits everything.
ORDER = ("bool", "int", "decimal", "float", "date", "datetime_tz", "datetime", "time", "struct", "list", "json",
         "binary", "duration", "string")
NUMERIC = ("int", "decimal", "float")
UTC = dt.UTC
EPOCH_DATE = dt.date(1970, 1, 1)
EPOCH = dt.datetime(1970, 1, 1)


def _lo(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else min(a, b)


def _hi(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else max(a, b)


@dataclasses.dataclass
class AtomStats:
    """Count, min/max and counters of the values of one atom.

    ``lo_alt``/``hi_alt`` hold the month-first reading of dates like ``05/03/2024`` (``lo``/``hi``
    the day-first one); ``counts`` add up on merge, ``maxima`` keep the larger value.
    """

    count: int = 0
    lo: Any = None
    hi: Any = None
    lo_alt: Any = None
    hi_alt: Any = None
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    maxima: dict[str, int] = dataclasses.field(default_factory=dict)

    def merge(self, other: AtomStats) -> AtomStats:
        counts = dict(self.counts)
        for key, value in other.counts.items():
            counts[key] = counts.get(key, 0) + value
        maxima = dict(self.maxima)
        for key, value in other.maxima.items():
            maxima[key] = max(maxima.get(key, value), value)
        return AtomStats(self.count + other.count, _lo(self.lo, other.lo), _hi(self.hi, other.hi),
                         _lo(self.lo_alt, other.lo_alt), _hi(self.hi_alt, other.hi_alt), counts, maxima)


def merge_atoms(a: Mapping[str, AtomStats], b: Mapping[str, AtomStats]) -> dict[str, AtomStats]:
    """Atom-wise merge of two atom tables (new dict)."""
    out = dict(a)
    for name, stats in b.items():
        out[name] = out[name].merge(stats) if name in out else stats
    return out


def add_atom(atoms: dict[str, AtomStats], name: str, stats: AtomStats) -> None:
    """Merges ``stats`` into ``atoms[name]`` in place."""
    atoms[name] = atoms[name].merge(stats) if name in atoms else stats


def _min_max(arr: pa.Array) -> tuple[Any, Any]:
    result = pc.min_max(arr)
    return result["min"].as_py(), result["max"].as_py()


# ------------------------------------------------------------------ typed (non-string) arrays


def typed_atoms(arr: pa.Array) -> dict[str, AtomStats]:
    """Atoms of a non-null, non-string Arrow array (its type decides the atom)."""
    t, n = arr.type, len(arr)
    if not n:
        return {}
    if pa.types.is_boolean(t):
        trues = int(pc.sum(arr).as_py() or 0)
        return {"bool": AtomStats(n, trues == n, trues > 0, counts={"true": trues, "false": n - trues})}
    if pa.types.is_integer(t):
        lo, hi = _min_max(arr)
        return {"int": AtomStats(n, lo, hi)}
    if pa.types.is_floating(t):
        lo, hi = _min_max(arr)
        nan = int(np.count_nonzero(np.isnan(arr.to_numpy(zero_copy_only=False).astype(np.float64))))
        return {"float": AtomStats(n, lo, hi, counts={"nan": nan} if nan else {})}
    if pa.types.is_decimal(t):
        lo, hi = _min_max(arr)
        return {f"dec:{t.scale}": AtomStats(n, lo, hi, maxima={"precision": t.precision})}
    if pa.types.is_date(t):
        lo, hi = _min_max(pc.cast(arr, pa.date32()))
        return {"date": AtomStats(n, lo, hi, lo, hi)}
    if pa.types.is_timestamp(t):
        return _timestamp_atoms(arr)
    if pa.types.is_time(t):
        lo, hi = _min_max(pc.cast(arr, pa.time64("us")))
        return {"time": AtomStats(n, lo, hi)}
    if pa.types.is_struct(t):
        return {"struct": AtomStats(n)}
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) \
            or pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return {"list": AtomStats(n)}
    if pa.types.is_map(t):
        return {"json": AtomStats(n, counts={"object": n})}
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) \
            or pa.types.is_binary_view(t):
        return {"binary": AtomStats(n)}
    if pa.types.is_duration(t):
        lo, hi = _min_max(pc.cast(arr, pa.duration("us")).view(pa.int64()))
        return {"duration": AtomStats(n, dt.timedelta(microseconds=lo), dt.timedelta(microseconds=hi))}
    return {"other": AtomStats(n)}


def _timestamp_atoms(arr: pa.Array) -> dict[str, AtomStats]:
    t, n = arr.type, len(arr)
    micros = arr if t.unit == "us" else pc.cast(arr, pa.timestamp("us", t.tz), safe=False)
    lo, hi = _min_max(micros.view(pa.int64()))
    if t.tz is None:
        low, high = EPOCH + dt.timedelta(microseconds=lo), EPOCH + dt.timedelta(microseconds=hi)
        return {"datetime": AtomStats(n, low, high, low, high)}
    low = (EPOCH + dt.timedelta(microseconds=lo)).replace(tzinfo=UTC)
    high = (EPOCH + dt.timedelta(microseconds=hi)).replace(tzinfo=UTC)
    return {"datetime_tz": AtomStats(n, low, high, low, high, counts={f"tz:{t.tz}": n})}


# ------------------------------------------------------------------ the lattice


def decimal_scale(atoms: Mapping[str, AtomStats]) -> int | None:
    """The scale of the ``decimal`` candidate: the most common scale among ``dec:*`` atoms."""
    scales = {int(name[4:]): s.count for name, s in atoms.items() if name.startswith("dec:")}
    if not scales:
        return None
    return max(scales, key=lambda s: (scales[s], s))


def fitting(storage: str, atoms: Mapping[str, AtomStats]) -> list[str]:
    """The atoms whose values a column of ``storage`` type holds without loss.

    ``ymd8`` (8-digit integers that are real dates, ``20240305``) fits the integer types and the
    date types alike; ``lz`` (a leading-zero number such as ``02139``) rules out every numeric type.
    """
    names = set(atoms)
    lz = "lz" in names
    allowed: set[str]
    if storage == "int":
        allowed = set() if lz else {"int", "ymd8"}
    elif storage == "decimal":
        scale = decimal_scale(atoms)
        allowed = set() if lz or scale is None else {"int", "ymd8", f"dec:{scale}"}
    elif storage == "float":
        allowed = set() if lz else {"int", "ymd8", "float", *(a for a in names if a.startswith("dec:"))}
    elif storage == "date":
        allowed = {"date", "ymd8"}
    elif storage == "datetime":
        allowed = {"date", "ymd8", "datetime", "datetime_tz"}
    elif storage == "json":
        allowed = {"json", "struct", "list"}
    elif storage == "string":
        allowed = names
    else:
        allowed = {storage}
    return sorted(names & allowed)


def confidences(atoms: Mapping[str, AtomStats]) -> dict[str, float]:
    """Share of non-null values each storage type holds (types holding none are left out)."""
    total = sum(s.count for s in atoms.values())
    out = {}
    for storage in ORDER:
        held = sum(atoms[a].count for a in fitting(storage, atoms))
        if held and total:
            out[storage] = held / total
    return out


def choose(atoms: Mapping[str, AtomStats], threshold: float) -> tuple[str, float, dict[str, float]]:
    """The narrowest storage type holding at least ``threshold`` of the values, its share, and all shares."""
    shares = confidences(atoms)
    if not shares:
        return "null", 1.0, {}
    for storage in ORDER:
        if shares.get(storage, 0.0) >= threshold:
            return storage, shares[storage], shares
    return "string", 1.0, shares


# ------------------------------------------------------------------ min / max in the chosen type


def _compact_date(value: int) -> dt.date:
    return dt.date(value // 10_000, value // 100 % 100, value % 100)


def _as_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _as_decimal(value: Any, scale: int) -> decimal.Decimal | None:
    if value is None:
        return None
    return decimal.Decimal(value).quantize(decimal.Decimal(1).scaleb(-scale))


def _as_naive(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    return dt.datetime.combine(value, dt.time())


def bounds(storage: str, atoms: Mapping[str, AtomStats], month_first: bool) -> tuple[Any, Any]:
    """Min and max of the values that fit ``storage``, in its Python type."""
    names = fitting(storage, atoms)
    lo = hi = None
    scale = decimal_scale(atoms) or 0
    for name in names:
        s = atoms[name]
        a, b = (s.lo_alt, s.hi_alt) if month_first and name in ("date", "datetime", "datetime_tz") else (s.lo, s.hi)
        if name == "ymd8" and storage in ("date", "datetime"):
            a, b = _compact_date(a), _compact_date(b)
        if storage == "float":
            a, b = _as_float(a), _as_float(b)
        elif storage == "decimal":
            a, b = _as_decimal(a, scale), _as_decimal(b, scale)
        elif storage == "datetime":
            a, b = _as_naive(a), _as_naive(b)
        lo, hi = _lo(lo, a), _hi(hi, b)
    return lo, hi


def integer_digits(value: Any) -> int:
    """Digits before the decimal point of a number (0 for |value| < 1)."""
    whole = abs(int(value))
    return len(str(whole)) if whole else 0


__all__ = ["NUMERIC", "ORDER", "AtomStats", "add_atom", "bounds", "choose", "confidences", "decimal_scale",
           "fitting", "integer_digits", "merge_atoms", "typed_atoms"]
