"""Pair comparators (vectorised similarities in [0, 1], NaN = missing) and a Fellegi-Sunter EM fit."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import JaroWinkler, Levenshtein

STRING_SCORERS = {
    "jaro_winkler": JaroWinkler.normalized_similarity,
    "levenshtein": Levenshtein.normalized_similarity,
}
Encoder = Callable[[list[str]], np.ndarray]


def string_similarity(a: np.ndarray, b: np.ndarray, method: str, workers: int = 1) -> np.ndarray:
    """Row-wise similarity of two object arrays of strings; NaN where either side is empty."""
    if method == "exact":
        sim = (a == b).astype(np.float64)
    else:
        sim = process.cpdist(a, b, scorer=STRING_SCORERS[method], dtype=np.float64, workers=workers)
        sim = np.asarray(sim, dtype=np.float64).reshape(-1)
    sim[(a == "") | (b == "")] = np.nan
    return sim


def numeric_similarity(a: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray:
    """``max(0, 1 - |a - b| / scale)``; NaN where either value is NaN."""
    return np.clip(1.0 - np.abs(a - b) / scale, 0.0, 1.0)


SWAPPED_DATE_SIMILARITY = 0.9


def date_similarity(a: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray:
    """Like ``numeric_similarity`` on days since the epoch, but a day/month transposition
    (2024-04-05 vs 2024-05-04, the classic dd/mm vs mm/dd misreading) scores 0.9."""
    sim = numeric_similarity(a, b, scale)
    ok = ~(np.isnan(a) | np.isnan(b))
    if not ok.any():
        return sim
    da = np.where(ok, a, 0).astype("datetime64[D]")
    db = np.where(ok, b, 0).astype("datetime64[D]")
    ya, ma = da.astype("datetime64[Y]"), da.astype("datetime64[M]")
    day_a = (da - ma).astype(np.int64) + 1
    month_a = (ma - ya).astype(np.int64) + 1
    swappable = ok & (day_a <= 12) & (day_a != month_a)
    swapped = np.where(swappable, ya + (day_a - 1).astype("timedelta64[M]"), ya).astype("datetime64[D]")
    swapped = swapped + np.where(swappable, month_a - 1, 0).astype("timedelta64[D]")
    hit = swappable & (swapped == db)
    return np.where(hit, np.maximum(sim, SWAPPED_DATE_SIMILARITY), sim)


def embedding_similarity(a: np.ndarray, b: np.ndarray, encoder: Encoder) -> np.ndarray:
    """Cosine similarity of encoded strings (each distinct string encoded once), clipped to [0, 1]."""
    uniq, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    vecs = np.asarray(encoder([str(v) for v in uniq]), dtype=np.float64)
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    inv = inv.reshape(-1)
    sim = np.einsum("ij,ij->i", vecs[inv[: len(a)]], vecs[inv[len(a):]])
    sim = np.clip(sim, 0.0, 1.0)
    sim[(a == "") | (b == "")] = np.nan
    return sim


def to_levels(sim: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Comparison level per pair: how many thresholds ``sim`` reaches (0..len), -1 when missing."""
    levels = np.searchsorted(np.sort(np.asarray(thresholds, dtype=np.float64)), sim, side="right")
    levels = levels.astype(np.int8)
    levels[np.isnan(sim)] = -1
    return levels


@dataclass
class FellegiSunter:
    """Fitted m/u probabilities per comparison level and the match prior."""

    m: list[np.ndarray]
    u: list[np.ndarray]
    prior: float
    iterations: int
    converged: bool

    def weights(self) -> list[np.ndarray]:
        """Match weight log2(m/u) of each level of each comparison."""
        return [np.log2(m / u) for m, u in zip(self.m, self.u, strict=True)]

    def match_weight(self, levels: np.ndarray) -> np.ndarray:
        """Sum of level weights per pair (missing comparisons add 0)."""
        total = np.zeros(len(levels))
        for k, w in enumerate(self.weights()):
            lv = levels[:, k].astype(np.int64)
            total += np.where(lv >= 0, w[np.maximum(lv, 0)], 0.0)
        return total

    def probability(self, levels: np.ndarray) -> np.ndarray:
        """Posterior match probability per pair."""
        logit = np.log2(self.prior / (1.0 - self.prior)) + self.match_weight(levels)
        return 1.0 / (1.0 + np.exp2(-np.clip(logit, -500, 500)))


def fit_em(levels: np.ndarray, n_levels: Sequence[int], *, prior: float = 0.1, max_iter: int = 200,
           tol: float = 1e-6, smoothing: float = 1e-6) -> FellegiSunter:
    """Unsupervised Fellegi-Sunter fit by EM over the distinct level patterns.

    ``levels`` is (pairs x comparisons) with -1 for missing; ``n_levels[k]`` is the number of
    levels of comparison k. m starts top-heavy, u at the observed level frequencies.
    """
    patterns, counts = distinct_patterns(levels, n_levels)
    u = [_level_share(patterns[:, k], counts, n, smoothing) for k, n in enumerate(n_levels)]
    m = [_normalise(4.0 ** np.arange(n), smoothing) for n in n_levels]
    model = FellegiSunter(m, u, prior, 0, False)
    for it in range(1, max_iter + 1):
        g = model.probability(patterns)
        new_prior = float(np.clip((g * counts).sum() / counts.sum(), 1e-9, 1 - 1e-9))
        new_m = [_level_share(patterns[:, k], counts * g, n, smoothing) for k, n in enumerate(n_levels)]
        new_u = [_level_share(patterns[:, k], counts * (1 - g), n, smoothing) for k, n in enumerate(n_levels)]
        delta = max([abs(new_prior - model.prior)] + [float(np.abs(a - b).max()) for a, b in zip(new_m, model.m,
                                                                                               strict=True)])
        model = FellegiSunter(new_m, new_u, new_prior, it, delta < tol)
        if model.converged:
            break
    return model


def distinct_patterns(levels: np.ndarray, n_levels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of ``levels`` and their counts (rows packed into one int64 code for speed)."""
    radix = np.asarray(n_levels, dtype=np.int64) + 1
    if float(np.prod(radix.astype(np.float64))) >= 2.0**62:
        patterns, counts = np.unique(levels, axis=0, return_counts=True)
        return patterns, counts.astype(np.float64)
    place = np.cumprod(np.r_[1, radix[:-1]])
    codes, counts = np.unique((levels.astype(np.int64) + 1) @ place, return_counts=True)
    patterns = (codes[:, None] // place[None, :]) % radix[None, :] - 1
    return patterns.astype(np.int8), counts.astype(np.float64)


def _level_share(col: np.ndarray, weight: np.ndarray, n: int, smoothing: float) -> np.ndarray:
    """Weighted share of each level 0..n-1 among non-missing entries."""
    ok = col >= 0
    return _normalise(np.bincount(col[ok].astype(np.int64), weights=weight[ok], minlength=n)[:n], smoothing)


def _normalise(x: np.ndarray, smoothing: float) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64) + smoothing
    return x / x.sum()
