"""Pattern-based anomaly checks on text and date columns, vectorised with Arrow compute.

Checks per text field (each only where the fit data makes it meaningful):
* ``type``: the field looks numeric (>= ``numeric_share`` of values parse) and this value does not;
* ``rare_category``: the field is categorical (its frequent values cover >= ``coverage`` of rows)
  and this value is rare (frequency < ``min_freq``) or unseen;
* ``pattern``: the field has a dominant character-class shape ("Aa9" compression, e.g.
  "AB-1234" -> "A-9") and this value's shape is rare.
Per date/timestamp field, ``date``: before 1900 or later than now + ``future_tolerance_s``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

NUMBER_RE = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
EPOCH_1900_S = -2208988800
_UNIT_PER_S = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def is_text(typ: pa.DataType) -> bool:
    """String-like columns (dictionary-encoded strings included)."""
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    return pa.types.is_string(typ) or pa.types.is_large_string(typ)


def is_temporal(typ: pa.DataType) -> bool:
    return pa.types.is_date(typ) or pa.types.is_timestamp(typ)


def shapes(values: pa.Array) -> pa.Array:
    """Character-class shape: runs of upper case -> "A", lower case -> "a", digits -> "9"."""
    out = pc.replace_substring_regex(values, r"\p{Lu}+", "A")
    out = pc.replace_substring_regex(out, r"\p{Ll}+", "a")
    return pc.replace_substring_regex(out, r"\d+", "9")


def _as_string(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col.cast(pa.string())


@dataclass
class _Frequencies:
    """Value -> share of non-null fit rows, for the values seen at fit."""

    values: pa.Array
    shares: np.ndarray

    @classmethod
    def fit(cls, col: pa.Array) -> _Frequencies:
        counts = pc.value_counts(col.drop_null())
        total = max(len(col) - col.null_count, 1)
        shares = counts.field("counts").to_numpy().astype(np.float64) / total
        return cls(counts.field("values"), shares)

    def dominant(self, min_freq: float, coverage: float) -> bool:
        """True when values at least ``min_freq`` frequent cover ``coverage`` of the rows."""
        return float(self.shares[self.shares >= min_freq].sum()) >= coverage

    def rarity(self, col: pa.Array, min_freq: float) -> np.ndarray:
        """1 for unseen values, falling linearly to 0 at frequency ``min_freq``; 0 for nulls."""
        idx = pc.index_in(col, value_set=self.values).to_numpy(zero_copy_only=False)
        seen = ~np.isnan(idx)
        share = np.zeros(len(col))
        share[seen] = self.shares[idx[seen].astype(np.int64)]
        score = np.clip(1.0 - share / min_freq, 0.0, 1.0)
        score[col.is_null().to_numpy(zero_copy_only=False)] = 0.0
        return score


@dataclass
class _TextField:
    name: str
    numeric: bool = False
    categories: _Frequencies | None = None
    shapes: _Frequencies | None = None


@dataclass
class PatternDetector:
    """Fitted pattern checks; ``score`` returns a (rows, checks) matrix and a label per check."""

    min_freq: float = 0.01
    coverage: float = 0.95
    numeric_share: float = 0.95
    future_tolerance_s: float = 86400.0
    text: list[_TextField] = field(default_factory=list)
    dates: list[str] = field(default_factory=list)

    def fit(self, table: pa.Table, text_fields: list[str], date_fields: list[str]) -> PatternDetector:
        self.text = [self._fit_text(name, _as_string(table.column(name))) for name in text_fields]
        self.dates = list(date_fields)
        return self

    def _fit_text(self, name: str, col: pa.Array) -> _TextField:
        out = _TextField(name)
        non_null = col.drop_null()
        if len(non_null) == 0:
            return out
        parses = pc.sum(pc.match_substring_regex(non_null, NUMBER_RE)).as_py() or 0
        if parses / len(non_null) >= self.numeric_share:
            out.numeric = True
            return out
        cats = _Frequencies.fit(col)
        if cats.dominant(self.min_freq, self.coverage):
            out.categories = cats
        shape = _Frequencies.fit(shapes(col))
        if shape.dominant(self.min_freq, self.coverage):
            out.shapes = shape
        return out

    @property
    def labels(self) -> list[str]:
        out: list[str] = []
        for f in self.text:
            if f.numeric:
                out.append(f"type:{f.name}")
            if f.categories is not None:
                out.append(f"rare_category:{f.name}")
            if f.shapes is not None:
                out.append(f"pattern:{f.name}")
        return out + [f"date:{name}" for name in self.dates]

    def score(self, batch: pa.RecordBatch | pa.Table, now_s: float | None = None) -> np.ndarray:
        """Per-check scores in [0, 1], columns in the order of ``labels``."""
        cols: list[np.ndarray] = []
        for f in self.text:
            col = _as_string(batch.column(f.name))
            if f.numeric:
                bad = pc.invert(pc.match_substring_regex(col, NUMBER_RE))
                cols.append(bad.fill_null(False).to_numpy(zero_copy_only=False).astype(np.float64))
            if f.categories is not None:
                cols.append(f.categories.rarity(col, self.min_freq))
            if f.shapes is not None:
                cols.append(f.shapes.rarity(shapes(col), self.min_freq))
        now = time.time() if now_s is None else now_s
        cols += [self._score_date(batch.column(name), now) for name in self.dates]
        if not cols:
            return np.zeros((batch.num_rows, 0))
        return np.column_stack(cols)

    def _score_date(self, col: pa.Array | pa.ChunkedArray, now_s: float) -> np.ndarray:
        seconds = epoch_seconds(col)
        bad = (seconds < EPOCH_1900_S) | (seconds > now_s + self.future_tolerance_s)
        return np.where(np.isnan(seconds), 0.0, bad.astype(np.float64))


def epoch_seconds(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Seconds since the epoch as float64 (NaN for nulls) for a date or timestamp column."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_date32(col.type):
        ints, per_s = col.cast(pa.int32()), 1 / 86400
    elif pa.types.is_date64(col.type):
        ints, per_s = col.cast(pa.int64()), 1_000
    else:
        ints, per_s = col.cast(pa.int64()), _UNIT_PER_S[col.type.unit]
    return ints.cast(pa.float64()).to_numpy(zero_copy_only=False) / per_s
