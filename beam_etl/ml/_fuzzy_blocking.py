"""Candidate pairs without O(n^2): standard blocking and sorted neighbourhood (numpy only).

Keys are object arrays of strings; an empty string means "no key" and such a row is left out
of that key's candidates. Pairs are always returned as ``(left, right)`` int64 arrays with
``left < right``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

_SOUNDEX_CODES = {c: d for letters, d in (("bfpv", "1"), ("cgjkqsxz", "2"), ("dt", "3"), ("l", "4"),
                                          ("mn", "5"), ("r", "6")) for c in letters}


def soundex(value: str) -> str:
    """American Soundex code of ``value`` ("" when it has no letters)."""
    letters = [c for c in value.lower() if "a" <= c <= "z"]
    if not letters:
        return ""
    out = [letters[0]]
    last = _SOUNDEX_CODES.get(letters[0], "")
    for c in letters[1:]:
        if c in "hw":
            continue
        code = _SOUNDEX_CODES.get(c, "")
        if code and code != last:
            out.append(code)
            if len(out) == 4:
                break
        last = code
    return "".join(out).ljust(4, "0")


def _prefix(n: int) -> Callable[[str], str]:
    return lambda s: s[:n]


def _first_token(s: str) -> str:
    return s.split(" ", 1)[0]


def _sorted_tokens(s: str) -> str:
    return " ".join(sorted(s.split()))


TRANSFORMS: dict[str, Callable[[int], Callable[[str], str]]] = {
    "exact": lambda _n: str,
    "prefix": _prefix,
    "soundex": lambda _n: soundex,
    "first_token": lambda _n: _first_token,
    "sorted_tokens": lambda _n: _sorted_tokens,
}


def transform_values(values: np.ndarray, transform: str, length: int = 0) -> np.ndarray:
    """Applies a named key transform once per distinct value; returns an object array."""
    fn = TRANSFORMS[transform](length)
    uniq, inv = np.unique(values, return_inverse=True)
    mapped = np.array([fn(v) if v else "" for v in uniq], dtype=object)
    return mapped[inv.reshape(-1)] if len(values) else np.zeros(0, dtype=object)


def build_key(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Joins transformed key parts row-wise; a row with any empty part gets the empty key."""
    n = len(parts[0])
    key = np.array(parts[0], dtype=object, copy=True)
    empty = key == ""
    for part in parts[1:]:
        key = key + "\x1f" + part
        empty |= part == ""
    key[empty] = ""
    return key if n else np.zeros(0, dtype=object)


def block_pairs(key: np.ndarray, max_block_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """All pairs of rows sharing a non-empty key; blocks over ``max_block_size`` (>0) are skipped."""
    rows = np.flatnonzero(key != "")
    if len(rows) < 2:
        return _empty_pairs()
    _, codes = np.unique(key[rows], return_inverse=True)
    order = np.argsort(codes.reshape(-1), kind="stable")
    rows, codes = rows[order], codes.reshape(-1)[order]
    starts = np.r_[0, np.flatnonzero(np.diff(codes)) + 1]
    sizes = np.diff(np.r_[starts, len(codes)])
    group = np.repeat(np.arange(len(starts)), sizes)
    pos = np.arange(len(codes))
    count = (starts + sizes)[group] - pos - 1
    if max_block_size > 0:
        count[(sizes > max_block_size)[group]] = 0
    left_pos = np.repeat(pos, count)
    offsets = np.arange(len(left_pos)) - np.repeat(np.cumsum(count) - count, count) + 1
    return _ordered(rows[left_pos], rows[left_pos + offsets])


def neighbourhood_pairs(key: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted neighbourhood: rows sorted by a non-empty key, each paired with the next ``window-1``."""
    rows = np.flatnonzero(key != "")
    rows = rows[np.argsort(key[rows], kind="stable")]
    lefts = [rows[:-o] for o in range(1, min(window, len(rows)))]
    rights = [rows[o:] for o in range(1, min(window, len(rows)))]
    if not lefts:
        return _empty_pairs()
    return _ordered(np.concatenate(lefts), np.concatenate(rights))


def union_pairs(pairs: Sequence[tuple[np.ndarray, np.ndarray]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ``(left, right)`` pairs over several candidate sets, sorted by (left, right)."""
    if not pairs:
        return _empty_pairs()
    code = np.unique(np.concatenate([a.astype(np.int64) * n + b for a, b in pairs]))
    return code // n, code % n


def _ordered(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = a.astype(np.int64), b.astype(np.int64)
    return np.minimum(a, b), np.maximum(a, b)


def _empty_pairs() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
