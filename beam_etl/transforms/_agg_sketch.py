"""A mergeable quantile sketch for GroupByAggregate's ``quantile``, vectorised over groups.

Each group's sketch holds values at *levels*; a value at level ``h`` stands for ``2**h`` input
values. When one level holds more than ``k`` values (``sketch_size``) they are sorted and every
other one moves up a level (a *compaction*); which half moves alternates with a per-sketch
counter, so the choice is a deterministic function of the inputs and the merge order (no
randomness). Sketches of any batches, windows or workers merge by pooling their values level by
level and compacting again.

Error bound: a compaction at level ``h`` moves the rank of any value by at most ``2**h``, and at
most ``n / (k * 2**h)`` compactions ever happen at level ``h`` (each consumes ``k`` values of
weight ``2**h``; every input value passes each level once). With ``L`` compacting levels,
``L <= floor(log2(n / k)) + 1``, a rank is off by at most ``eps * n`` with ``eps = L / k``,
whatever the batches and merge tree. A group with at most ``k`` values is never compacted and
its quantiles are exact (numpy's ``inverted_cdf``, SQL ``percentile_disc``).

A sketch is a struct ``{v: list<double>, l: list<int8>, n, c, lo, hi}``: values, their levels,
the count of input values, the compaction counter and the exact min and max.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_SKETCH_SIZE = 2048
MIN_SKETCH_SIZE = 64
MAX_SKETCH_SIZE = 65536
SKETCH_TYPE = pa.struct([
    ("v", pa.list_(pa.float64())), ("l", pa.list_(pa.int8())), ("n", pa.int64()), ("c", pa.int64()),
    ("lo", pa.float64()), ("hi", pa.float64()),
])


def rank_error_bound(n: int, k: int) -> float:
    """The worst-case normalised rank error of a sketch of ``n`` values with size ``k``."""
    if n <= k:
        return 0.0
    return (math.floor(math.log2(n / k)) + 1) / k


def compact(values: np.ndarray, levels: np.ndarray, counter: int, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Compacts one sketch until no level holds more than ``k`` values; returns (values, levels, counter)."""
    out_v: list[np.ndarray] = []
    out_l: list[np.ndarray] = []
    carry = np.empty(0, dtype=np.float64)
    top = int(levels.max()) if levels.size else 0
    h = 0
    while h <= top or carry.size:
        items = np.concatenate((values[levels == h], carry))
        carry = np.empty(0, dtype=np.float64)
        if items.size > k:
            items.sort(kind="stable")
            even = items.size - items.size % 2
            carry = items[counter & 1:even:2]
            counter += 1
            items = items[even:]  # at most one value stays behind
        out_v.append(items)
        out_l.append(np.full(items.size, h, dtype=np.int8))
        h += 1
    return np.concatenate(out_v), np.concatenate(out_l), counter


def _build(gid: np.ndarray, n_groups: int, values: np.ndarray, levels: np.ndarray, counts: np.ndarray,
           counters: np.ndarray, lo: np.ndarray, hi: np.ndarray, k: int) -> pa.StructArray:
    """Sketches from pooled (group, value, level) items: sorts, compacts the groups that need it."""
    order = np.lexsort((values, levels, gid))
    gid, values, levels = gid[order], values[order], levels[order]
    sizes = np.bincount(gid, minlength=n_groups)
    offsets = np.concatenate(([0], np.cumsum(sizes)))
    n_levels = int(levels.max()) + 1 if levels.size else 1
    per_level = np.bincount(gid * n_levels + levels, minlength=n_groups * n_levels).reshape(n_groups, n_levels)
    big = np.flatnonzero((per_level > k).any(axis=1))
    if big.size:
        pieces_v: list[np.ndarray] = []
        pieces_l: list[np.ndarray] = []
        done = 0
        for g in big.tolist():
            start, stop = offsets[g], offsets[g + 1]
            pieces_v.append(values[done:start])
            pieces_l.append(levels[done:start])
            v, lv, counters[g] = compact(values[start:stop], levels[start:stop], int(counters[g]), k)
            pieces_v.append(v)
            pieces_l.append(lv)
            sizes[g] = v.size
            done = stop
        pieces_v.append(values[done:])
        pieces_l.append(levels[done:])
        values, levels = np.concatenate(pieces_v), np.concatenate(pieces_l)
        offsets = np.concatenate(([0], np.cumsum(sizes)))
    off = pa.array(offsets, pa.int32())
    empty = counts == 0
    return pa.StructArray.from_arrays([
        pa.ListArray.from_arrays(off, pa.array(values, pa.float64())),
        pa.ListArray.from_arrays(off, pa.array(levels, pa.int8())),
        pa.array(counts, pa.int64()), pa.array(counters, pa.int64()),
        pa.array(lo, pa.float64(), mask=empty), pa.array(hi, pa.float64(), mask=empty),
    ], fields=list(SKETCH_TYPE))


def _extremes(gid: np.ndarray, n_groups: int, lo_values: np.ndarray,
              hi_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = np.full(n_groups, np.inf)
    hi = np.full(n_groups, -np.inf)
    np.minimum.at(lo, gid, lo_values)
    np.maximum.at(hi, gid, hi_values)
    return lo, hi


def sketch_partial(gid: np.ndarray, n_groups: int, values: pa.Array, k: int) -> pa.StructArray:
    """One sketch per group of ``values`` (numbers; nulls and NaN are left out)."""
    x = np.asarray(values.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    keep = ~np.isnan(x)  # nulls come out of to_numpy as NaN
    x, gid = x[keep], gid[keep]
    counts = np.bincount(gid, minlength=n_groups)
    lo, hi = _extremes(gid, n_groups, x, x)
    return _build(gid, n_groups, x, np.zeros(x.size, dtype=np.int8), counts,
                  np.zeros(n_groups, dtype=np.int64), lo, hi, k)


def sketch_merge(gid: np.ndarray, n_groups: int, sketches: pa.StructArray, k: int) -> pa.StructArray:
    """Merges the sketches of rows ``i`` into group ``gid[i]``."""
    v_col, l_col = sketches.field("v"), sketches.field("l")
    parents = _parent_indices(v_col)
    values = np.asarray(v_col.flatten().to_numpy(zero_copy_only=False), dtype=np.float64)
    levels = np.asarray(l_col.flatten().to_numpy(zero_copy_only=False), dtype=np.int8)
    item_gid = gid[parents] if parents.size else np.empty(0, dtype=np.int64)
    counts = np.bincount(gid, weights=_numbers(sketches.field("n"), 0), minlength=n_groups).astype(np.int64)
    counters = np.bincount(gid, weights=_numbers(sketches.field("c"), 0), minlength=n_groups).astype(np.int64)
    lo, hi = _extremes(gid, n_groups, _numbers(sketches.field("lo"), np.inf), _numbers(sketches.field("hi"), -np.inf))
    return _build(item_gid, n_groups, values, levels, counts, counters, lo, hi, k)


def _parent_indices(lists: pa.ListArray) -> np.ndarray:
    """For each flattened value, the index of its list (relative to a sliced array too)."""
    return np.asarray(pc.list_parent_indices(lists), dtype=np.int64)


def _numbers(col: pa.Array, null: float) -> np.ndarray:
    return np.asarray(col.cast(pa.float64()).fill_null(null).to_numpy(zero_copy_only=False), dtype=np.float64)


def sketch_quantiles(sketches: pa.StructArray, qs: Sequence[float]) -> list[pa.Array]:
    """One float64 column per ``q``: the smallest retained value whose cumulative weight reaches ``q * n``.

    ``q = 0`` and ``q = 1`` give the exact min and max; a group without values gives null.
    """
    n_groups = len(sketches)
    counts = np.asarray(sketches.field("n").fill_null(0), dtype=np.int64)
    v_col, l_col = sketches.field("v"), sketches.field("l")
    values = np.asarray(v_col.flatten().to_numpy(zero_copy_only=False), dtype=np.float64)
    weights = np.left_shift(1, np.asarray(l_col.flatten().to_numpy(zero_copy_only=False), dtype=np.int64))
    gid = _parent_indices(v_col)
    order = np.lexsort((values, gid))
    values, weights = values[order], weights[order]
    cum = np.cumsum(weights)
    sizes = np.bincount(gid, minlength=n_groups)
    starts = np.concatenate(([0], np.cumsum(sizes)))[:-1]
    base = np.where(starts > 0, cum[np.maximum(starts - 1, 0)] if cum.size else 0, 0)
    last = np.maximum(starts + sizes - 1, 0)
    empty = counts == 0
    lo, hi = _numbers(sketches.field("lo"), np.nan), _numbers(sketches.field("hi"), np.nan)
    out = []
    for q in qs:
        target = base + np.maximum(np.ceil(np.round(q * counts, 6)), 1).astype(np.int64)
        idx = np.minimum(np.searchsorted(cum, target, side="left"), last) if cum.size else last
        result = values[idx] if values.size else np.full(n_groups, np.nan)
        if q == 0:
            result = lo
        elif q == 1:
            result = hi
        out.append(pa.array(result, pa.float64(), mask=empty))
    return out
