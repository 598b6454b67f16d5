"""What strings would parse as: each value's atom, vectorised with RE2 and numpy.

Values are tried narrowest first and leave at their first match: bool words (true/false, t/f,
yes/no, y/n; not 1/0, which are integers), numbers (integers up to 18 digits, ``ymd8`` for
8-digit integers that are real dates, ``dec:<scale>`` for plain decimals, floats with exponents
or nan/inf, ``lz`` for leading-zero numbers such as ``02139``, ``bigint`` for integers of 19+
digits), dates and datetimes (``_infer_dates``), times, JSON objects/arrays; the rest are
``other`` (string only). No Beam imports.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beam_etl.ml._infer_atoms import AtomStats, add_atom
from beam_etl.ml._infer_dates import days_from_civil, select, temporal_atoms, time_atoms
from beam_etl.ml._infer_dates import mask as _mask

TRUE_WORDS = ("true", "t", "yes", "y")
FALSE_WORDS = ("false", "f", "no", "n")
FLOAT_WORDS = ("nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity")
MAX_INT_DIGITS = 18  # longer digit strings are identifiers, not int64 values
MAX_DECIMAL_DIGITS = 38

_PLAIN_NUMBER = r"^[+-]?\d+(\.\d+)?$"
_LEADING_ZERO = r"^[+-]?0\d"
_FLOAT = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


def _json(values: pa.Array, atoms: dict[str, AtomStats]) -> np.ndarray:
    looks = _mask(pc.or_(pc.and_(pc.starts_with(values, "{"), pc.ends_with(values, "}")),
                         pc.and_(pc.starts_with(values, "["), pc.ends_with(values, "]"))))
    if not looks.any():
        return looks
    kinds = {"object": 0, "array": 0}
    parsed = np.zeros(int(looks.sum()), bool)
    for i, text in enumerate(select(values, looks).to_pylist()):
        try:
            value = json.loads(text)
        except ValueError:
            continue
        if isinstance(value, (dict, list)):
            parsed[i] = True
            kinds["object" if isinstance(value, dict) else "array"] += 1
    if parsed.any():
        add_atom(atoms, "json", AtomStats(int(parsed.sum()), counts={k: v for k, v in kinds.items() if v}))
    looks[np.flatnonzero(looks)[~parsed]] = False
    return looks


def _numbers(values: pa.Array, atoms: dict[str, AtomStats]) -> np.ndarray:
    """Plain integers, fixed-scale decimals, leading-zero digit strings and other floats."""
    plain = _mask(pc.match_substring_regex(values, _PLAIN_NUMBER))
    taken = np.zeros(len(values), bool)
    if plain.any():
        idx = np.flatnonzero(plain)
        nums = select(values, plain)
        lz = _mask(pc.match_substring_regex(nums, _LEADING_ZERO))
        if lz.any():
            add_atom(atoms, "lz", AtomStats(int(lz.sum())))
        digits = pc.utf8_length(pc.replace_substring_regex(nums, r"[^0-9]", "")).to_numpy(zero_copy_only=False)
        dot = pc.find_substring(nums, ".").to_numpy(zero_copy_only=False)
        length = pc.utf8_length(nums).to_numpy(zero_copy_only=False)
        is_int = ~lz & (dot < 0) & (digits <= MAX_INT_DIGITS)
        if is_int.any():
            ints = pc.cast(select(nums, is_int), pa.int64()).to_numpy(zero_copy_only=False)
            compact = _compact_dates(ints) & (length[is_int] == 8)
            for name, sel in (("int", ~compact), ("ymd8", compact)):
                if sel.any():
                    lo, hi = int(ints[sel].min()), int(ints[sel].max())
                    counts = {"format:%Y%m%d": int(sel.sum())} if name == "ymd8" else {}
                    add_atom(atoms, name, AtomStats(int(sel.sum()), lo, hi, counts=counts))
        scale = np.where(dot >= 0, length - dot - 1, 0)
        is_dec = ~lz & (dot >= 0) & (digits <= MAX_DECIMAL_DIGITS)
        for s in np.unique(scale[is_dec]).tolist():
            sel = is_dec & (scale == s)
            decs = pc.cast(select(nums, sel), pa.decimal128(MAX_DECIMAL_DIGITS, s))
            mm = pc.min_max(decs)
            add_atom(atoms, f"dec:{s}", AtomStats(int(sel.sum()), mm["min"].as_py(), mm["max"].as_py()))
        too_long = ~lz & (dot < 0) & (digits > MAX_INT_DIGITS)  # identifiers: a float would lose digits
        if too_long.any():
            add_atom(atoms, "bigint", AtomStats(int(too_long.sum())))
        taken[idx[lz | is_int | is_dec | too_long]] = True
    rest = ~taken
    floats = rest & (_mask(pc.match_substring_regex(values, _FLOAT))
                     | _mask(pc.is_in(pc.utf8_lower(values), value_set=pa.array(FLOAT_WORDS))))
    if floats.any():
        parsed = pc.cast(select(values, floats), pa.float64()).to_numpy(zero_copy_only=False)
        finite = parsed[~np.isnan(parsed)]
        nan = int(parsed.size - finite.size)
        add_atom(atoms, "float", AtomStats(int(floats.sum()), float(finite.min()) if finite.size else None,
                                           float(finite.max()) if finite.size else None,
                                           counts={"nan": nan} if nan else {}))
    return taken | floats


def _compact_dates(ints: np.ndarray) -> np.ndarray:
    """Which integers read as real YYYYMMDD dates between 1900 and 2100 (``20240305``)."""
    y, m, d = ints // 10_000, ints // 100 % 100, ints % 100
    _, ok = days_from_civil(np.where((y >= 1900) & (y <= 2100), y, 0), m, d)
    return ok


def _bools(values: pa.Array, atoms: dict[str, AtomStats]) -> np.ndarray:
    lower = pc.utf8_lower(values)
    true = _mask(pc.is_in(lower, value_set=pa.array(TRUE_WORDS)))
    false = _mask(pc.is_in(lower, value_set=pa.array(FALSE_WORDS)))
    hit = true | false
    if hit.any():
        t, f = int(true.sum()), int(false.sum())
        add_atom(atoms, "bool", AtomStats(t + f, f == 0, t > 0, counts={"true": t, "false": f}))
    return hit


def text_atoms(values: pa.Array) -> dict[str, AtomStats]:
    """Atoms of trimmed, non-null, non-blank strings (each value counted once, narrowest first)."""
    atoms: dict[str, AtomStats] = {}
    steps: list[Callable[[pa.Array, dict[str, AtomStats]], np.ndarray]] = [
        _bools, _numbers, temporal_atoms, time_atoms, _json]
    rest = values
    for step in steps:
        if not len(rest):
            break
        hit = step(rest, atoms)
        if hit.any():
            rest = select(rest, ~hit)
    if len(rest):
        add_atom(atoms, "other", AtomStats(len(rest)))
    return atoms


__all__ = ["FALSE_WORDS", "FLOAT_WORDS", "TRUE_WORDS", "text_atoms"]
