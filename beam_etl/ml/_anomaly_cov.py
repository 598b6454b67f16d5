"""Robust Mahalanobis distance for the ``mahalanobis`` anomaly detector (numpy/scipy only, no Beam).

The isolation forest splits one field at a time, and the per-field detectors look at one field at a
time, so neither sees a row whose values are each ordinary but whose *combination* breaks the fields'
correlation. A Mahalanobis distance does, but a classical covariance is pulled towards the anomalies
it should expose (masking). This estimate follows the reweighted Minimum Covariance Determinant
(Rousseeuw & Van Driessen 1999) with a small ridge, as the regularised MCD does (Boudt et al. 2020):

1. standardise each field by its median and MAD (fields whose MAD is 0, i.e. with one value in at
   least half of the rows, are left out: their covariance is degenerate; the other detectors see them);
2. start from the ``support`` share of rows nearest the median (sum of squared robust z) and run
   C-steps: covariance of the subset (+ ``ridge`` on the diagonal, in robust-z units, so a subset that
   is flat in some direction stays invertible), keep the ``support`` share with the smallest distances,
   until the subset no longer changes;
3. reweight: rescale the distances so their median matches the chi-squared median, keep the rows
   within the chi-squared 97.5 % quantile and take their covariance as the final estimate.

The score is ``D / (D + cut)`` with ``D`` the (median-calibrated) distance and ``cut`` the square root
of the chi-squared 97.5 % quantile: 0.5 at the classical outlier cut, monotone in the distance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from beam_etl.ml._anomaly_stats import MAD_TO_STD

SUPPORT = 0.75  # share of rows in the C-step subset (the usual MCD choice between robustness and efficiency)
RIDGE = 1e-3  # added to the subset covariance's diagonal, in robust-z units (variance 1 per field)
CUT_QUANTILE = 0.975
MAX_C_STEPS = 30


def _chi2(q: float, dof: int) -> float:
    from scipy.stats import chi2

    return float(chi2.ppf(q, dof))


@dataclass
class RobustCovariance:
    """A fitted robust location/scatter over the columns ``columns`` of the numeric matrix."""

    columns: np.ndarray  # indices into the numeric fields that the estimate uses
    median: np.ndarray
    scale: np.ndarray
    location: np.ndarray  # in robust-z units
    precision: np.ndarray  # inverse scatter, robust-z units, calibrated so distances follow chi2(p)
    cut: float

    @classmethod
    def fit(cls, x: np.ndarray, support: float = SUPPORT, ridge: float = RIDGE) -> RobustCovariance | None:
        """Fit on a finite (rows, fields) matrix; None when no field has a non-zero MAD."""
        median = np.median(x, axis=0)
        mad = np.median(np.abs(x - median), axis=0)
        columns = np.flatnonzero(mad > 0)
        if columns.size == 0 or x.shape[0] < 2:
            return None
        median, scale = median[columns], mad[columns] * MAD_TO_STD
        z = _standardised(x[:, columns], median, scale)
        n, p = z.shape
        k = min(n, max(int(support * n), p + 1))
        subset = np.argsort((z * z).sum(axis=1), kind="stable")[:k]
        for _ in range(MAX_C_STEPS):
            location, precision = _moments(z[subset], ridge)
            d2 = _distances(z, location, precision)
            chosen = np.zeros(n, dtype=bool)
            chosen[np.argpartition(d2, k - 1)[:k]] = True
            if chosen[subset].all():
                break
            subset = np.flatnonzero(chosen)
        median_chi2 = _chi2(0.5, p)
        scaled = d2 * median_chi2 / max(float(np.median(d2)), 1e-300)
        keep = scaled <= _chi2(CUT_QUANTILE, p)
        if keep.sum() > 1:
            location, precision = _moments(z[keep], ridge)
            d2 = _distances(z, location, precision)
        precision = precision * median_chi2 / max(float(np.median(d2)), 1e-300)
        return cls(columns, median, scale, location, precision, float(np.sqrt(_chi2(CUT_QUANTILE, p))))

    def residuals(self, x: np.ndarray) -> np.ndarray:
        """Robust-z residuals from the location, (rows, used fields)."""
        return _standardised(x[:, self.columns], self.median, self.scale) - self.location

    def distances(self, x: np.ndarray) -> np.ndarray:
        """Squared robust Mahalanobis distances (about chi2 with len(columns) degrees of freedom in the bulk)."""
        r = self.residuals(x)
        return ((r @ self.precision) * r).sum(axis=1)

    def score(self, x: np.ndarray) -> np.ndarray:
        """Per-row score in [0, 1): D / (D + cut), 0.5 at the chi-squared 97.5 % cut."""
        d = np.sqrt(np.maximum(self.distances(x), 0.0))
        return d / (d + self.cut)

    def blame(self, x: np.ndarray) -> np.ndarray:
        """Index (into the numeric fields) of the field contributing most to each row's distance.

        The squared distance splits as the sum over fields of ``r_j * (P r)_j``: a field's residual
        times its residual given the other fields' (precision-weighted) residuals.
        """
        r = self.residuals(x)
        contributions = r * (r @ self.precision)
        return self.columns[np.argmax(contributions, axis=1)]


def _standardised(x: np.ndarray, median: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Robust z, bounded so that squares and products stay finite."""
    return np.clip((x - median) / scale, -1e100, 1e100)


def _moments(z: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    location = z.mean(axis=0)
    centred = z - location
    cov = centred.T @ centred / max(len(z), 1) + ridge * np.eye(z.shape[1])
    return location, np.linalg.inv(cov)


def _distances(z: np.ndarray, location: np.ndarray, precision: np.ndarray) -> np.ndarray:
    r = z - location
    return ((r @ precision) * r).sum(axis=1)
