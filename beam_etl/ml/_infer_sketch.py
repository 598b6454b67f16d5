"""Mergeable column sketches for schema inference: bottom-k hashes (KMV) and a value sample.

``KMVSketch`` keeps the ``k`` smallest 64-bit hashes of a column's distinct values. Below ``k``
distinct values it *is* the distinct set (exact count); above, ``(k - 1) / u_k`` (``u_k`` the k-th
smallest hash scaled to [0, 1)) estimates the count with a relative standard error of about
``1 / sqrt(k)``. Two sketches merge by keeping the k smallest of their union, and the share of one
column's distinct values found in another (containment) is read off the hashes both sketches
hold completely (those below the smaller of their two cut-offs).

Values are hashed through their canonical text (integers ``42`` and strings ``"42"`` hash
alike), so sketches of an integer key and a CSV string key compare. No Beam imports.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beam_etl.hashing import hash_array

_TWO64 = float(2**64)
_ALL = np.uint64(2**64 - 1)


def decode(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array with dictionary encoding and extension types removed."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if isinstance(arr.type, pa.ExtensionType):
        arr = arr.storage
    return arr


def text_values(arr: pa.Array) -> pa.Array:
    """Canonical text of each value (nulls stay null): numbers as written, nested values as JSON."""
    t = arr.type
    if pa.types.is_string(t):
        return arr
    if pa.types.is_floating(t):
        values = arr.drop_null().to_numpy(zero_copy_only=False)
        if values.size and np.all(np.isfinite(values)) and np.all(values == np.round(values)) \
                and np.all(np.abs(values) < 2**53):
            return pc.cast(pc.cast(arr, pa.int64()), pa.string())  # 3.0 hashes like 3
    if pa.types.is_nested(t):
        return pa.array([None if v is None else json.dumps(v, sort_keys=True, default=str)
                         for v in arr.to_pylist()], type=pa.string())
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return pa.array([None if v is None else v.hex() for v in arr.to_pylist()], type=pa.string())
    try:
        return pc.cast(arr, pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in arr.to_pylist()], type=pa.string())


def value_hashes(text: pa.Array) -> np.ndarray:
    """Stable 64-bit hashes of canonical text values (see ``text_values``); nulls must be removed first."""
    return hash_array(text)


@dataclasses.dataclass
class KMVSketch:
    """Bottom-k distinct hashes: an exact distinct set up to ``k`` values, an estimate beyond."""

    k: int = 10_000
    hashes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.uint64))
    saturated: bool = False

    def add(self, hashes: np.ndarray) -> KMVSketch:
        """Folds in a batch of hashes (duplicates welcome); returns self."""
        if hashes.size:
            merged = np.union1d(self.hashes, hashes.astype(np.uint64, copy=False))
            self._keep(merged)
        return self

    def merge(self, other: KMVSketch) -> KMVSketch:
        """A new sketch of the union of both columns."""
        out = KMVSketch(min(self.k, other.k), saturated=self.saturated or other.saturated)
        out._keep(np.union1d(self.hashes, other.hashes))
        return out

    def _keep(self, merged: np.ndarray) -> None:
        if merged.size > self.k:
            self.saturated = True
            merged = merged[: self.k]
        self.hashes = merged

    @property
    def exact(self) -> bool:
        """Whether ``estimate()`` is the exact distinct count."""
        return not self.saturated

    def estimate(self) -> int:
        """Distinct values: exact when ``exact``, else the KMV estimate."""
        if not self.saturated:
            return int(self.hashes.size)
        kth = (float(self.hashes[-1]) + 1.0) / _TWO64
        return int(round((self.hashes.size - 1) / kth))

    def cutoff(self) -> np.uint64:
        """The largest hash up to which this sketch holds every distinct hash of its column."""
        return self.hashes[-1] if self.saturated and self.hashes.size else _ALL

    def containment(self, other: KMVSketch) -> tuple[float, int]:
        """Share of this column's distinct values that ``other`` holds, and how many hashes it rests on."""
        cut = min(self.cutoff(), other.cutoff())
        mine = self.hashes[self.hashes <= cut]
        if not mine.size:
            return 0.0, 0
        theirs = other.hashes[other.hashes <= cut]
        found = np.isin(mine, theirs, assume_unique=True)
        return float(found.mean()), int(mine.size)


@dataclasses.dataclass
class ValueSample:
    """A bounded sample of distinct values with their row counts: the ``size`` smallest hashes (bottom-k).

    Deterministic and exactly mergeable: the sample of a merged profile equals the sample of
    the whole input, counts included. ``rows()`` turns it back into a row-like sample (each value
    repeated in proportion to its count), which is what the semantic detector expects: repeats
    tell a category column from a column of names.
    """

    size: int = 1000
    hashes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.uint64))
    values: list[str] = dataclasses.field(default_factory=list)
    counts: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))

    def add(self, hashes: np.ndarray, text: pa.Array) -> ValueSample:
        """Folds in values (``text``, non-null) with their ``hashes``; returns self."""
        if not hashes.size:
            return self
        uniq, first, counts = np.unique(hashes, return_index=True, return_counts=True)
        uniq, first, counts = uniq[: self.size], first[: self.size], counts[: self.size]
        if self.hashes.size >= self.size and uniq[0] > self.hashes[-1]:
            return self  # nothing here beats the current sample
        new_values = text.take(pa.array(first, type=pa.int64())).to_pylist()
        self._combine(uniq, new_values, counts)
        return self

    def merge(self, other: ValueSample) -> ValueSample:
        """A new sample of both inputs."""
        out = ValueSample(min(self.size, other.size), self.hashes, list(self.values), self.counts)
        out._combine(other.hashes, other.values, other.counts)
        return out

    def rows(self) -> list[str]:
        """Up to ``size`` values drawn in proportion to their counts (evenly spaced over the cumulative
        counts, so frequent values repeat), in a fixed pseudo-random order: a row-like sample."""
        if not self.values:
            return []
        cumulative = np.cumsum(self.counts)
        n = int(min(cumulative[-1], self.size))
        picks = np.searchsorted(cumulative, np.linspace(0, cumulative[-1] - 1, n).astype(np.int64), side="right")
        order = np.random.default_rng(0).permutation(n)
        return [self.values[i] for i in picks[order].tolist()]

    def _combine(self, hashes: np.ndarray, values: list[Any], counts: np.ndarray) -> None:
        all_hashes = np.concatenate([self.hashes, hashes])
        all_values = [*self.values, *values]
        all_counts = np.concatenate([self.counts, np.asarray(counts, np.int64)])
        uniq, first, inverse = np.unique(all_hashes, return_index=True, return_inverse=True)
        summed = np.bincount(inverse.reshape(-1), weights=all_counts, minlength=len(uniq)).astype(np.int64)
        keep = first[: self.size]
        self.hashes = uniq[: self.size]
        self.values = [all_values[i] for i in keep]
        self.counts = summed[: self.size]


__all__ = ["KMVSketch", "ValueSample", "decode", "text_values", "value_hashes"]
