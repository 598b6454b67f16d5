"""Anomaly detection over Arrow batches: tags rows, never filters them (no Beam imports).

Detectors, each giving per-row scores in [0, 1] (higher = more anomalous):

* ``zscore``, ``robust_z`` (median/MAD), ``iqr`` (Tukey fences): per numeric field, mapped so
  that 0.5 is the classic cut (|z| = 3, |robust z| = 3.5, 1.5 IQR beyond the quartiles);
* ``isolation_forest``: scikit-learn's IsolationForest on the numeric fields (NaN imputed with
  the fit median); its paper score ``-score_samples`` is already in (0, 1];
* ``mahalanobis``: robust (reweighted-MCD style, ridge-regularised) Mahalanobis distance over the
  numeric fields, ``D / (D + cut)`` with 0.5 at the chi-squared 97.5 % cut (see ``_anomaly_cov``);
* ``pattern``: rare categories, values off a text field's dominant shape or numeric type,
  impossible dates (see ``_anomaly_pattern``).

Ensemble (``combine="mean"``, the default), and why it is built this way:

* Normalisation. Each detector's score is mapped by its own fit distribution to
  ``max(tail, rank / 2)``: *rank* is the share of fit rows scoring strictly lower, *tail* a
  logistic that is 0.5 at the fit's ``norm_quantile`` and tends to 1 beyond it (for the
  d / (d + cut) detectors it reads the distance d / cut, not the bounded score). Below the fit
  quantile the rank leads: detectors with different scales and tails stand on one footing in the
  bulk, so none dominates the ordering of ordinary rows because its scores are spread wider (the
  logistic alone saturated differently per detector). Above it the tail leads and keeps
  magnitude: a row far beyond every fit row (an order 100x its category's usual amount) is not
  capped at the level of the fit's 99th percentile, and a detector's 0.5 is still its fit quantile,
  so an explicit ``threshold`` above 0.5 means what it did before.
* Members and weights. Two multivariate numeric detectors that fail differently, weight 2 each:
  the forest (splits one field at a time: good with skewed or heavy-tailed fields, blind to rows
  whose values are each ordinary but jointly break a correlation) and the robust Mahalanobis
  distance (sees correlation structure, resists masking by the anomalies it scores, but reads a
  heavy tail as outlying). ``pattern`` (text and dates) weighs 1. The per-field statistical
  detectors weigh 0 while a multivariate detector scores: each field's deviation is already part
  of both multivariate scores, and three more votes for the same single-field evidence outweighed
  the joint evidence (lower ROC-AUC on the benchmark sets with correlated fields, see
  BENCHMARKS.md). They still explain flagged rows (``zscore:amount``) and count with weight 1 when
  no multivariate detector runs or when ``weights`` names them.
* Rows are flagged by ``contamination`` (threshold at the fit quantile of the ensemble score) or an
  explicit ``threshold``. The resolved weights are stored with the fitted model.

``combine="max"`` takes the weighted maximum of the normalised scores instead (weights default 1).

    model = AnomalyModel(AnomalyConfig(contamination=0.02)).fit(table)
    scores, is_anomaly, reasons = model.score(batch)
    tagged = model.to_columns(batch)     # + anomaly_score, is_anomaly, anomaly_reasons
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from beam_etl.ml._anomaly_cov import RobustCovariance
from beam_etl.ml._anomaly_pattern import PatternDetector, is_temporal, is_text
from beam_etl.ml._anomaly_stats import MAD_TO_STD, FieldStats, RunningStats

__all__ = [
    "DETECTORS",
    "FLAG_FIELD",
    "REASONS_FIELD",
    "SCORE_FIELD",
    "AnomalyConfig",
    "AnomalyConfigError",
    "AnomalyModel",
    "FieldStats",
    "RunningStats",
]

SCORE_FIELD = "anomaly_score"
FLAG_FIELD = "is_anomaly"
REASONS_FIELD = "anomaly_reasons"
STAT_DETECTORS = ("zscore", "robust_z", "iqr")
MULTIVARIATE_DETECTORS = ("isolation_forest", "mahalanobis")
DISTANCE_DETECTORS = (*STAT_DETECTORS, "mahalanobis")  # scores of the form d / (d + cut)
DETECTORS = (*STAT_DETECTORS, *MULTIVARIATE_DETECTORS, "pattern")
# The spread (in each detector's unit) at which a per-field score is 0.5: score = d / (d + cut).
STAT_CUTS = {"zscore": 3.0, "robust_z": 3.5, "iqr": 1.5}
# Ensemble weights under ``mean`` where ``AnomalyConfig.weights`` names none (others 1). The per-field
# statistical detectors get 0 while a multivariate detector scores (see the module docstring).
DEFAULT_WEIGHTS = {"isolation_forest": 2.0, "mahalanobis": 2.0}
LEGACY_WEIGHTS = {"isolation_forest": 2.0}  # models saved before the weights were stored with them
MAX_KNOTS = 4097  # fit quantiles kept per detector for the rank part of the normalisation
REASON_LEVEL = 0.5
Batch = pa.RecordBatch | pa.Table


class AnomalyConfigError(ValueError):
    """A configuration value (or a named field) that cannot work; the message names it."""


@dataclass
class AnomalyConfig:
    """What to detect and how to decide. Fields left as None are inferred from the fit table."""

    detectors: tuple[str, ...] = DETECTORS
    weights: dict[str, float] = field(default_factory=dict)
    combine: str = "mean"
    field_combine: str = "max"
    contamination: float = 0.05
    threshold: float | None = None
    numeric_fields: list[str] | None = None
    text_fields: list[str] | None = None
    date_fields: list[str] | None = None
    n_estimators: int = 100
    max_fit_rows: int = 100_000
    random_state: int = 0
    norm_quantile: float = 0.99
    rare_min_freq: float = 0.01
    pattern_coverage: float = 0.95
    future_tolerance_s: float = 86400.0

    def __post_init__(self) -> None:
        self.detectors = tuple(self.detectors)
        self._check_detectors()
        self._check_choice("combine", self.combine, ("mean", "max"))
        self._check_choice("field_combine", self.field_combine, ("mean", "max"))
        if not 0.0 < self.contamination <= 0.5:
            raise AnomalyConfigError(f"contamination must be in (0, 0.5], got {self.contamination!r}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise AnomalyConfigError(f"threshold must be in [0, 1] or None, got {self.threshold!r}")
        if not 0.5 <= self.norm_quantile < 1.0:
            raise AnomalyConfigError(f"norm_quantile must be in [0.5, 1), got {self.norm_quantile!r}")
        if not 0.0 < self.rare_min_freq < 1.0:
            raise AnomalyConfigError(f"rare_min_freq must be in (0, 1), got {self.rare_min_freq!r}")
        for name in ("n_estimators", "max_fit_rows"):
            if getattr(self, name) < 1:
                raise AnomalyConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")

    def _check_detectors(self) -> None:
        if not self.detectors:
            raise AnomalyConfigError(f"detectors must name at least one of {list(DETECTORS)}")
        for name in self.detectors:
            if name not in DETECTORS:
                raise AnomalyConfigError(f"detectors: unknown detector {name!r}; choose from {list(DETECTORS)}")
        for name, weight in self.weights.items():
            if name not in self.detectors:
                raise AnomalyConfigError(f"weights: {name!r} is not among detectors {list(self.detectors)}")
            if not weight >= 0:
                raise AnomalyConfigError(f"weights[{name!r}] must be >= 0, got {weight!r}")

    @staticmethod
    def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
        if value not in choices:
            raise AnomalyConfigError(f"{name} must be one of {list(choices)}, got {value!r}")


def _is_numeric(typ: pa.DataType) -> bool:
    return pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ)


def numeric_matrix(batch: Batch, fields: list[str]) -> np.ndarray:
    """(rows, fields) float64 matrix; nulls become NaN."""
    if not fields:
        return np.zeros((batch.num_rows, 0))
    cols = [batch.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False) for name in fields]
    return np.column_stack(cols).astype(np.float64, copy=False)


def _stat_scores(x: np.ndarray, stats: list[FieldStats], method: str) -> np.ndarray:
    """Per-field scores for one statistical method: d / (d + cut), 1 where the spread is 0 and x differs."""
    centre, scale = _centre_scale(stats, method)
    if method == "iqr":
        q1 = np.array([s.q1 for s in stats])
        q3 = np.array([s.q3 for s in stats])
        dev = np.maximum(np.maximum(q1 - x, x - q3), 0.0)
    else:
        dev = np.abs(x - centre)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = dev / scale
    d = np.where(scale > 0, d, np.where(dev > 0, np.inf, 0.0))
    cut = STAT_CUTS[method]
    finite = np.where(np.isinf(d), 0.0, d)
    score = np.where(np.isinf(d), 1.0, finite / (finite + cut))
    return np.nan_to_num(score, nan=0.0)


def _centre_scale(stats: list[FieldStats], method: str) -> tuple[np.ndarray, np.ndarray]:
    if method == "zscore":
        return np.array([s.mean for s in stats]), np.array([s.std for s in stats])
    if method == "robust_z":
        return np.array([s.median for s in stats]), np.array([s.mad * MAD_TO_STD for s in stats])
    return np.array([s.median for s in stats]), np.array([s.q3 - s.q1 for s in stats])


def _reduce(matrix: np.ndarray, how: str) -> np.ndarray:
    if matrix.shape[1] == 0:
        return np.zeros(matrix.shape[0])
    return matrix.max(axis=1) if how == "max" else matrix.mean(axis=1)


@dataclass
class _Norm:
    """Maps a detector's raw score to [0, 1] by its fit distribution: ``max(tail, rank / 2)``.

    ``rank`` is the share of fit rows scoring strictly lower; ``tail`` a logistic in (s - median) /
    spread, 0.5 at the fit quantile. Below the fit quantile the rank part leads (0 to 0.5), above it
    the tail (0.5 to 1), so 0.5 stays at the fit quantile and a cut above 0.5 means what it did with
    the tail alone. With ``distance`` the tail reads a d / (d + cut) score as its distance d / cut.
    Models saved without ``knots`` use the tail alone, as they were fitted."""

    median: float
    spread: float
    knots: np.ndarray | None = None  # fit quantiles at levels 0, 1/m, ..., 1
    distance: bool = False

    @classmethod
    def fit(cls, raw: np.ndarray, quantile: float, distance: bool = False) -> _Norm:
        t = _odds(raw) if distance else raw
        median, high = np.quantile(t, [0.5, quantile])
        knots = np.quantile(raw, np.linspace(0.0, 1.0, min(raw.size, MAX_KNOTS)))
        return cls(float(median), max(float(high - median), 1e-9), knots, distance)

    def tail(self, raw: np.ndarray) -> np.ndarray:
        x = ((_odds(raw) if self.distance else raw) - self.median) / self.spread
        return 1.0 / (1.0 + np.exp(-3.0 * np.clip(x - 1.0, -200.0, 200.0)))

    def rank(self, raw: np.ndarray) -> np.ndarray:
        """Share of the fit scoring strictly below ``raw``, interpolated between the knots."""
        knots, m = self.knots, len(self.knots) - 1
        if m == 0:
            return (raw > knots[0]).astype(np.float64)
        j = np.searchsorted(knots, raw, side="left")
        jc = np.clip(j, 1, m)
        lo, hi = knots[jc - 1], knots[jc]
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(hi > lo, (raw - lo) / (hi - lo), 1.0)
        u = (jc - 1 + np.clip(frac, 0.0, 1.0)) / m
        return np.where(j == 0, 0.0, np.where(j > m, 1.0, u))

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if self.knots is None:
            return self.tail(raw)
        return np.maximum(self.tail(raw), 0.5 * self.rank(raw))


def _odds(score: np.ndarray) -> np.ndarray:
    """d / cut from a d / (d + cut) score (1 maps to a large finite distance)."""
    s = np.clip(score, 0.0, 1.0 - 1e-12)
    return s / (1.0 - s)


class AnomalyModel:
    """Fitted detectors plus the ensemble decision. Picklable: fit once, ship to workers."""

    # class-level defaults: models pickled before these attributes existed load with them unset
    cov: RobustCovariance | None = None
    weights_: dict[str, float] | None = None

    def __init__(self, config: AnomalyConfig | None = None) -> None:
        self.config = config or AnomalyConfig()
        self.numeric_fields: list[str] = []
        self._text_fields: list[str] = []
        self._date_fields: list[str] = []
        self.stats: list[FieldStats] = []
        self.fill: np.ndarray = np.zeros(0)
        self.forest: Any = None
        self.cov = None
        self.pattern: PatternDetector | None = None
        self.norms: dict[str, _Norm] = {}
        self.weights_ = None
        self.threshold_: float | None = None

    # ---- fitting -------------------------------------------------------------------------------

    def fit(self, table: Batch, now_s: float | None = None) -> AnomalyModel:
        """Fit statistics, forest, patterns, normalisation and the decision threshold on ``table``."""
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if table.num_rows == 0:
            raise AnomalyConfigError("fit: the fit table has no rows")
        table = self._sample(table)
        self._resolve_fields(table)
        x = numeric_matrix(table, self.numeric_fields)
        self.stats = [FieldStats.from_values(x[:, i]) for i in range(x.shape[1])]
        self.fill = np.array([s.median for s in self.stats])
        if "isolation_forest" in self.active and self.numeric_fields:
            self._fit_forest(x)
        if "mahalanobis" in self.active and self.numeric_fields:
            self.cov = RobustCovariance.fit(self._impute(x))
        if "pattern" in self.active:
            self.pattern = PatternDetector(
                min_freq=self.config.rare_min_freq,
                coverage=self.config.pattern_coverage,
                future_tolerance_s=self.config.future_tolerance_s,
            ).fit(table, self._text_fields, self._date_fields)
        raw = {name: _reduce(m, self._field_combine(name)) for name, m in self._components(table, now_s).items()}
        if not raw:
            raise AnomalyConfigError(
                f"detectors {list(self.active)} have nothing to score: numeric fields {self.numeric_fields}, "
                f"text fields {self._text_fields}, date fields {self._date_fields}"
            )
        quantile = self.config.norm_quantile
        self.norms = {name: _Norm.fit(r, quantile, distance=name in DISTANCE_DETECTORS) for name, r in raw.items()}
        self.weights_ = self._resolve_weights(list(raw))
        fit_scores = self._combine(raw)
        self.threshold_ = (
            self.config.threshold
            if self.config.threshold is not None
            else float(np.quantile(fit_scores, 1.0 - self.config.contamination))
        )
        return self

    def _resolve_weights(self, scored: list[str]) -> dict[str, float]:
        """Each scoring detector's ensemble weight: the configured one, else the default for ``combine``."""
        defaults: dict[str, float] = {}
        if self.config.combine == "mean":
            defaults = dict(DEFAULT_WEIGHTS)
            if any(name in scored for name in MULTIVARIATE_DETECTORS):
                defaults.update({name: 0.0 for name in STAT_DETECTORS})
        return {name: float(self.config.weights.get(name, defaults.get(name, 1.0))) for name in scored}

    def _sample(self, table: pa.Table) -> pa.Table:
        if table.num_rows <= self.config.max_fit_rows:
            return table
        rng = np.random.default_rng(self.config.random_state)
        idx = np.sort(rng.choice(table.num_rows, size=self.config.max_fit_rows, replace=False))
        return table.take(pa.array(idx))

    def _resolve_fields(self, table: pa.Table) -> None:
        cfg, schema = self.config, table.schema
        self.numeric_fields = self._named("numeric_fields", cfg.numeric_fields, schema, _is_numeric, "numeric")
        self._text_fields = self._named("text_fields", cfg.text_fields, schema, is_text, "a string")
        self._date_fields = self._named("date_fields", cfg.date_fields, schema, is_temporal, "a date/timestamp")
        if not self.numeric_fields and not self._text_fields and not self._date_fields:
            raise AnomalyConfigError(f"fit: no numeric, text or date fields to score in {schema.names}")

    @staticmethod
    def _named(key: str, names: list[str] | None, schema: pa.Schema, ok: Any, what: str) -> list[str]:
        if names is None:
            return [f.name for f in schema if ok(f.type) and not f.name.startswith("anomaly_")]
        for name in names:
            if name not in schema.names:
                raise AnomalyConfigError(f"{key}: field {name!r} is not in the table; fields are {schema.names}")
            if not ok(schema.field(name).type):
                raise AnomalyConfigError(
                    f"{key}: field {name!r} has type {schema.field(name).type}, which is not {what} type"
                )
        return list(names)

    def _fit_forest(self, x: np.ndarray) -> None:
        from sklearn.ensemble import IsolationForest

        self.forest = IsolationForest(
            n_estimators=self.config.n_estimators, random_state=self.config.random_state, n_jobs=1
        ).fit(self._impute(x))

    def _impute(self, x: np.ndarray) -> np.ndarray:
        """NaN -> fit median; +-inf -> just past the fit range (still isolates as an extreme)."""
        lo = np.array([s.min for s in self.stats])
        hi = np.array([s.max for s in self.stats])
        span = hi - lo + 1.0
        x = np.where(np.isnan(x), self.fill, x)
        return np.clip(x, lo - span, hi + span)

    # ---- scoring -------------------------------------------------------------------------------

    @property
    def active(self) -> tuple[str, ...]:
        return self.config.detectors

    def _field_combine(self, name: str) -> str:
        return self.config.field_combine if name in STAT_DETECTORS else "max"

    def _components(self, batch: Batch, now_s: float | None = None) -> dict[str, np.ndarray]:
        """Per-detector (rows, fields-or-checks) raw score matrices; detectors with nothing to score are left out."""
        x = numeric_matrix(batch, self.numeric_fields)
        out: dict[str, np.ndarray] = {}
        for name in self.active:
            if name in STAT_DETECTORS and self.numeric_fields:
                out[name] = _stat_scores(x, self.stats, name)
            elif name == "isolation_forest" and self.forest is not None:
                out[name] = -self.forest.score_samples(self._impute(x))[:, None]
            elif name == "mahalanobis" and self.cov is not None:
                out[name] = self.cov.score(self._impute(x))[:, None]
            elif name == "pattern" and self.pattern is not None and self.pattern.labels:
                out[name] = self.pattern.score(batch, now_s)
        return out

    def _combine(self, raw: dict[str, np.ndarray]) -> np.ndarray:
        normed = [self.norms[name](r) for name, r in raw.items()]
        resolved = self.weights_
        if resolved is None:  # saved before weights were stored: the defaults it was fitted with
            defaults = LEGACY_WEIGHTS if self.config.combine == "mean" else {}
            resolved = {name: self.config.weights.get(name, defaults.get(name, 1.0)) for name in raw}
        weights = np.array([resolved.get(name, 1.0) for name in raw])
        stacked = np.column_stack(normed)
        if self.config.combine == "max":
            return (stacked * (weights / max(weights.max(), 1e-12))).max(axis=1)
        return stacked @ weights / max(weights.sum(), 1e-12)

    def _check_fitted(self, batch: Batch) -> None:
        if self.threshold_ is None:
            raise RuntimeError("AnomalyModel is not fitted: call fit(table) or load(path) first")
        needed = self.numeric_fields + (self._text_fields + self._date_fields if self.pattern else [])
        missing = [name for name in needed if name not in batch.schema.names]
        if missing:
            raise AnomalyConfigError(f"score: fields {missing} were fitted but are not in the batch")

    def detector_scores(self, batch: Batch, now_s: float | None = None) -> dict[str, np.ndarray]:
        """Raw per-detector scores in [0, 1] (fields combined), before ensemble normalisation."""
        self._check_fitted(batch)
        return {name: _reduce(m, self._field_combine(name)) for name, m in self._components(batch, now_s).items()}

    def score(self, batch: Batch, now_s: float | None = None) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
        """(ensemble scores in [0, 1], is_anomaly, reasons as "detector:field" per row; empty unless flagged)."""
        self._check_fitted(batch)
        if batch.num_rows == 0:
            return np.zeros(0), np.zeros(0, dtype=bool), []
        comps = self._components(batch, now_s)
        raw = {name: _reduce(m, self._field_combine(name)) for name, m in comps.items()}
        scores = self._combine(raw)
        flags = scores >= self.threshold_ if self.config.threshold is not None else scores > self.threshold_
        return scores, flags, self._reasons(batch, comps, raw, flags)

    def _reasons(
        self, batch: Batch, comps: dict[str, np.ndarray], raw: dict[str, np.ndarray], flags: np.ndarray
    ) -> list[list[str]]:
        reasons: list[list[str]] = [[] for _ in range(len(flags))]
        rows = np.flatnonzero(flags)
        if rows.size == 0:
            return reasons
        labels = {name: self._labels(name) for name in comps}
        # 0.5 = the detector's fit quantile (``norm_quantile``), the level at which it counts as a reason
        tails = {name: self.norms[name].tail(r[rows]) for name, r in raw.items()}
        blame = {name: self._blame(name, batch, rows) for name in comps if name in MULTIVARIATE_DETECTORS}
        for k, row in enumerate(rows):
            found: list[tuple[float, str]] = []
            for name, matrix in comps.items():
                if name in blame:
                    if tails[name][k] >= REASON_LEVEL:
                        found.append((tails[name][k], f"{name}:{blame[name][k]}"))
                    continue
                hits = np.flatnonzero(matrix[row] >= REASON_LEVEL)
                found += [(matrix[row, j], labels[name][j]) for j in hits]
            if not found:
                top = max(tails, key=lambda n: tails[n][k])
                label = f"{top}:{blame[top][k]}" if top in blame else labels[top][int(np.argmax(comps[top][row]))]
                found = [(0.0, label)]
            reasons[row] = [label for _, label in sorted(found, key=lambda t: -t[0])]
        return reasons

    def _labels(self, name: str) -> list[str]:
        if name == "pattern":
            return self.pattern.labels if self.pattern else []
        return [f"{name}:{f}" for f in self.numeric_fields]

    def _blame(self, name: str, batch: Batch, rows: np.ndarray) -> list[str]:
        """The field a multivariate detector most likely flags each row for.

        The forest: the field furthest from its median (in robust z). The Mahalanobis distance: the field
        with the largest share of the squared distance (see ``RobustCovariance.blame``).
        """
        x = numeric_matrix(batch.take(pa.array(rows)), self.numeric_fields)
        if name == "mahalanobis" and self.cov is not None:
            return [self.numeric_fields[i] for i in self.cov.blame(self._impute(x))]
        z = np.nan_to_num(_stat_scores(x, self.stats, "robust_z"), nan=0.0)
        return [self.numeric_fields[i] for i in np.argmax(z, axis=1)]

    def to_columns(self, batch: Batch, now_s: float | None = None) -> Batch:
        """``batch`` with ``anomaly_score`` (float64), ``is_anomaly`` (bool), ``anomaly_reasons`` (list<string>)
        appended; existing columns of those names are replaced."""
        scores, flags, reasons = self.score(batch, now_s)
        keep = [i for i, name in enumerate(batch.schema.names) if name not in (SCORE_FIELD, FLAG_FIELD, REASONS_FIELD)]
        cols = [batch.column(i) for i in keep] + [
            pa.array(scores, pa.float64()),
            pa.array(flags, pa.bool_()),
            pa.array(reasons, pa.list_(pa.string())),
        ]
        names = [batch.schema.names[i] for i in keep] + [SCORE_FIELD, FLAG_FIELD, REASONS_FIELD]
        if isinstance(batch, pa.Table):
            return pa.Table.from_arrays([_chunked(c) for c in cols], names=names)
        return pa.RecordBatch.from_arrays(cols, names=names)

    # ---- persistence ---------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the fitted model to ``path`` with joblib."""
        import joblib

        joblib.dump(self, path)

    @classmethod
    def load(cls, path: str | Path) -> AnomalyModel:
        """Read a model written by ``save``."""
        import joblib

        model = joblib.load(path)
        if not isinstance(model, cls):
            raise AnomalyConfigError(f"model file {str(path)!r} holds a {type(model).__name__}, not an AnomalyModel")
        return model


def _chunked(col: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    return col if isinstance(col, pa.ChunkedArray) else pa.chunked_array([col])
