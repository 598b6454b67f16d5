"""Per-field statistics for the anomaly detectors: one-shot fits and a mergeable running accumulator."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAD_TO_STD = 1.4826  # MAD * this estimates the standard deviation of a normal distribution
MEAN_AD_TO_STD = 1.2533  # mean absolute deviation * this estimates the same


@dataclass(frozen=True)
class FieldStats:
    """Location and spread of one numeric field, as the statistical detectors use them."""

    count: int
    mean: float
    std: float
    median: float
    mad: float
    q1: float
    q3: float
    min: float
    max: float

    @classmethod
    def from_values(cls, values: np.ndarray) -> FieldStats:
        """Exact statistics of the finite values (NaN and +-inf are ignored)."""
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        median = float(np.median(finite))
        q1, q3 = np.quantile(finite, [0.25, 0.75])
        return cls(
            count=int(finite.size),
            mean=float(finite.mean()),
            std=float(finite.std()),
            median=median,
            mad=_mad(finite, median),
            q1=float(q1),
            q3=float(q3),
            min=float(finite.min()),
            max=float(finite.max()),
        )


def _mad(values: np.ndarray, median: float) -> float:
    """Median absolute deviation, falling back to the scaled mean absolute deviation when it is 0."""
    dev = np.abs(values - median)
    mad = float(np.median(dev))
    if mad == 0.0:
        mad = float(dev.mean()) * MEAN_AD_TO_STD / MAD_TO_STD
    return mad


class RunningStats:
    """Mergeable accumulator: count, mean, M2 (Welford/Chan), min, max and a uniform reservoir sample.

    ``update`` takes a batch of values, ``merge`` combines two accumulators (e.g. per-worker or
    per-key partials). Mean and variance are exact; median and quantiles are exact while the total
    count fits in the reservoir, and estimates from a uniform sample after that.
    """

    def __init__(self, capacity: int = 4096, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"RunningStats capacity must be >= 1, got {capacity!r}")
        self.capacity = capacity
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = float("inf")
        self.max = float("-inf")
        self.reservoir = np.empty(0, dtype=np.float64)
        self._rng = np.random.default_rng(seed)

    def update(self, values: np.ndarray) -> RunningStats:
        """Add a batch of values (NaN and +-inf are skipped); returns self."""
        values = np.asarray(values, dtype=np.float64)
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return self
        part = RunningStats(self.capacity)
        part.count = int(finite.size)
        part.mean = float(finite.mean())
        part.m2 = float(((finite - part.mean) ** 2).sum())
        part.min = float(finite.min())
        part.max = float(finite.max())
        if finite.size > self.capacity:
            finite = self._rng.choice(finite, size=self.capacity, replace=False)
        part.reservoir = finite.copy()
        return self.merge(part)

    def merge(self, other: RunningStats) -> RunningStats:
        """Fold ``other`` into this accumulator (Chan et al. parallel update); returns self."""
        if other.count == 0:
            return self
        if self.count == 0:
            self.count, self.mean, self.m2 = other.count, other.mean, other.m2
            self.min, self.max = other.min, other.max
            self.reservoir = other.reservoir[: self.capacity].copy()
            return self
        n = self.count + other.count
        delta = other.mean - self.mean
        self.mean += delta * other.count / n
        self.m2 += other.m2 + delta * delta * self.count * other.count / n
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.reservoir = self._merge_reservoirs(other)
        self.count = n
        return self

    def _merge_reservoirs(self, other: RunningStats) -> np.ndarray:
        """A uniform sample of the union: take from each side in proportion to the counts it stands for."""
        total = self.reservoir.size + other.reservoir.size
        if self.count + other.count <= self.capacity and total == self.count + other.count:
            return np.concatenate([self.reservoir, other.reservoir])
        size = min(self.capacity, total)
        from_self = int(self._rng.hypergeometric(self.count, other.count, size))
        from_self = min(max(from_self, size - other.reservoir.size), self.reservoir.size)
        left = self._rng.choice(self.reservoir, size=from_self, replace=False)
        right = self._rng.choice(other.reservoir, size=size - from_self, replace=False)
        return np.concatenate([left, right])

    @property
    def variance(self) -> float:
        """Population variance (ddof=0)."""
        return self.m2 / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        return float(np.sqrt(self.variance))

    @property
    def exact_quantiles(self) -> bool:
        """True while every value seen is in the reservoir."""
        return self.reservoir.size == self.count

    def quantile(self, q: float | list[float]) -> float | np.ndarray:
        """Quantile(s) of the values seen (from the reservoir once it overflows)."""
        if self.count == 0:
            return float("nan") if np.isscalar(q) else np.full(len(q), np.nan)
        return np.quantile(self.reservoir, q) if not np.isscalar(q) else float(np.quantile(self.reservoir, q))

    def field_stats(self) -> FieldStats:
        """The statistics the detectors need; mean/std exact, the rest from the reservoir."""
        if self.count == 0:
            return FieldStats.from_values(np.empty(0))
        median = float(np.median(self.reservoir))
        q1, q3 = np.quantile(self.reservoir, [0.25, 0.75])
        return FieldStats(
            count=self.count,
            mean=self.mean,
            std=self.std,
            median=median,
            mad=_mad(self.reservoir, median),
            q1=float(q1),
            q3=float(q3),
            min=self.min,
            max=self.max,
        )
