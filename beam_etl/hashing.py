"""Stable 64-bit hashing of Arrow columns: numpy only, identical in every process and run.

Python's ``hash`` is salted per process, so it cannot pick shuffle partitions or file shards
that must agree across workers. ``hash_columns`` hashes one or more key columns row-wise;
``partition_of`` maps the hashes to ``0..n-1``. Used by dedup and aggregation shuffles and by
the file writers' ``shard_by``. No Beam imports: io/ and transforms/ both use it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pyarrow as pa

_U64 = np.uint64
_NULL_HASH = _U64(0x6A09E667F3BCC908)
_NAN_BITS = np.array([np.nan], dtype=np.float64).view(np.uint64)[0]
_LEN_MULT = _U64(0x9E3779B97F4A7C15)
_COMBINE_MULT = _U64(0xC2B2AE3D27D4EB4F)
_POLY = 0x100000001B3  # odd, so it has an inverse modulo 2**64
_POLY_INV = pow(_POLY, -1, 2**64)
_HASH_CHUNK_BYTES = 1 << 18


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser over a uint64 array (wrapping arithmetic); returns a new array."""
    x = x ^ (x >> _U64(30))
    x *= _U64(0xBF58476D1CE4E5B9)
    x ^= x >> _U64(27)
    x *= _U64(0x94D049BB133111EB)
    x ^= x >> _U64(31)
    return x


@lru_cache(maxsize=4)
def _powers(size: int) -> tuple[np.ndarray, np.ndarray]:
    """``_POLY**i`` and ``_POLY_INV**i`` modulo 2**64 for ``i < size`` (size is a power of 2)."""
    pw = np.full(size, _POLY, dtype=np.uint64)
    pw[0] = 1
    np.cumprod(pw, out=pw)
    ipw = np.full(size, _POLY_INV, dtype=np.uint64)
    ipw[0] = 1
    np.cumprod(ipw, out=ipw)
    return pw, ipw


def _hash_binary(arr: pa.Array) -> np.ndarray:
    """Polynomial hash of each string/binary value: sum(byte_j * P**j), via one cumsum."""
    n = len(arr)
    out = np.empty(n, dtype=np.uint64)
    if n == 0:
        return out
    large = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
    buffers = arr.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64 if large else np.int32,
                            count=arr.offset + n + 1)[arr.offset:].astype(np.int64)
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    start = 0
    while start < n:
        # Rows [start, stop) whose bytes fit in one chunk (at least one row).
        stop = int(np.searchsorted(offsets, offsets[start] + _HASH_CHUNK_BYTES, side="right")) - 1
        stop = min(max(stop, start + 1), n)
        base = offsets[start]
        rel = offsets[start:stop + 1] - base
        seg = data[base:offsets[stop]]
        size = 1 << max(int(len(seg)).bit_length(), 10)
        pw, ipw = _powers(size)
        csum = np.zeros(len(seg) + 1, dtype=np.uint64)
        np.cumsum((seg.astype(np.uint64) + _U64(1)) * pw[:len(seg)], out=csum[1:])
        out[start:stop] = (csum[rel[1:]] - csum[rel[:-1]]) * ipw[rel[:-1]]
        start = stop
    out ^= np.diff(offsets).astype(np.uint64) * _LEN_MULT
    return out


def _numeric_bits(arr: pa.Array) -> np.ndarray:
    """uint64 bit patterns of a numeric/temporal/boolean array (nulls arbitrary)."""
    t = arr.type
    if pa.types.is_boolean(t):
        return arr.fill_null(False).to_numpy(zero_copy_only=False).astype(np.uint64)
    if pa.types.is_floating(t):
        vals = arr.cast(pa.float64()).fill_null(0.0).to_numpy() + 0.0  # folds -0.0 into 0.0
        bits = vals.view(np.uint64).copy()
        bits[np.isnan(vals)] = _NAN_BITS
        return bits
    if pa.types.is_integer(t):
        vals = arr.fill_null(0).to_numpy()
        return vals.view(np.uint64) if vals.dtype == np.uint64 else vals.astype(np.int64).view(np.uint64)
    # temporal: hash the integer storage
    storage = pa.int64() if t.bit_width == 64 else pa.int32()
    return _numeric_bits(arr.view(storage))


def hash_array(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Stable 64-bit hash of every value; equal values (of one type family) hash equal.

    Integers of any width hash alike, as do float32/float64 (with -0.0 == 0.0 and one NaN).
    Nulls hash to a fixed constant. The result does not depend on batch boundaries.
    """
    if isinstance(arr, pa.ChunkedArray):
        if arr.num_chunks == 1:
            return hash_array(arr.chunk(0))
        parts = [hash_array(c) for c in arr.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    t = arr.type
    if pa.types.is_dictionary(t):
        dict_hash = hash_array(arr.dictionary)
        if len(dict_hash) == 0:
            return np.full(len(arr), _NULL_HASH, dtype=np.uint64)
        idx = arr.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.intp)
        h = dict_hash[idx]
    elif pa.types.is_null(t):
        return np.full(len(arr), _NULL_HASH, dtype=np.uint64)
    elif (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
          or pa.types.is_large_binary(t)):
        h = _mix64(_hash_binary(arr))
    elif pa.types.is_string_view(t):
        h = _mix64(_hash_binary(arr.cast(pa.string())))
    elif pa.types.is_binary_view(t) or pa.types.is_fixed_size_binary(t):
        h = _mix64(_hash_binary(arr.cast(pa.binary())))
    elif pa.types.is_decimal(t):
        h = _mix64(_hash_binary(arr.cast(pa.string())))
    elif (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
          or pa.types.is_temporal(t)):
        h = _mix64(_numeric_bits(arr))
    else:  # nested and other types: hash a canonical JSON text (slow path, rare)
        h = _mix64(_hash_binary(json_strings(arr)))
    if arr.null_count:
        h[~np.asarray(arr.is_valid(), dtype=bool)] = _NULL_HASH
    return h


def hash_columns(columns: Sequence[pa.Array | pa.ChunkedArray], num_rows: int) -> np.ndarray:
    """Combines the per-column hashes of a composite key into one uint64 per row."""
    acc = np.zeros(num_rows, dtype=np.uint64)
    for col in columns:
        acc = _mix64(acc * _COMBINE_MULT + hash_array(col))
    return acc


def partition_of(hashes: np.ndarray, partitions: int) -> np.ndarray:
    """Partition id (int64 in ``[0, partitions)``) of each hash."""
    return (hashes % _U64(partitions)).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Key views: the normalised columns that are compared and hashed.
# ---------------------------------------------------------------------------------------------


def json_strings(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Canonical JSON text of nested values (sorted keys), for hashing and comparing them."""
    return pa.array(
        [None if v is None else json.dumps(v, sort_keys=True, default=str) for v in arr.to_pylist()],
        type=pa.string(),
    )
