"""Anomaly detection over Arrow batches: tags rows, never filters them (no Beam imports).

Detectors, each giving per-row scores in [0, 1] (higher = more anomalous):

* ``zscore``, ``robust_z`` (median/MAD), ``iqr`` (Tukey fences): per numeric field, mapped so
  that 0.5 is the classic cut (|z| = 3, |robust z| = 3.5, 1.5 IQR beyond the quartiles);
* ``isolation_forest``: scikit-learn's IsolationForest on the numeric fields (NaN imputed with
  the fit median); its paper score ``-score_samples`` is already in (0, 1];
* ``pattern``: rare categories, values off a text field's dominant shape or numeric type,
  impossible dates (see ``_anomaly_pattern``).

The ensemble normalises each detector by its fit distribution (0.5 at the fit's ``norm_quantile``),
combines with ``mean`` or ``max`` and weights (default 1; the forest 2 under ``mean``), and flags
rows by ``contamination`` (threshold at the fit quantile) or an explicit ``threshold``.

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
DETECTORS = (*STAT_DETECTORS, "isolation_forest", "pattern")
# The spread (in each detector's unit) at which a per-field score is 0.5: score = d / (d + cut).
STAT_CUTS = {"zscore": 3.0, "robust_z": 3.5, "iqr": 1.5}
# Ensemble weights where ``AnomalyConfig.weights`` names none: the forest is the only multivariate detector.
DEFAULT_WEIGHTS = {"isolation_forest": 2.0}
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
    """Maps a detector's raw score to [0, 1] with 0.5 at the fit quantile: logistic in (s - median) / spread."""

    median: float
    spread: float

    @classmethod
    def fit(cls, raw: np.ndarray, quantile: float) -> _Norm:
        median, high = np.quantile(raw, [0.5, quantile])
        return cls(float(median), max(float(high - median), 1e-9))

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        x = (raw - self.median) / self.spread
        return 1.0 / (1.0 + np.exp(-3.0 * (x - 1.0)))


class AnomalyModel:
    """Fitted detectors plus the ensemble decision. Picklable: fit once, ship to workers."""

    def __init__(self, config: AnomalyConfig | None = None) -> None:
        self.config = config or AnomalyConfig()
        self.numeric_fields: list[str] = []
        self._text_fields: list[str] = []
        self._date_fields: list[str] = []
        self.stats: list[FieldStats] = []
        self.fill: np.ndarray = np.zeros(0)
        self.forest: Any = None
        self.pattern: PatternDetector | None = None
        self.norms: dict[str, _Norm] = {}
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
        self.norms = {name: _Norm.fit(r, self.config.norm_quantile) for name, r in raw.items()}
        fit_scores = self._combine(raw)
        self.threshold_ = (
            self.config.threshold
            if self.config.threshold is not None
            else float(np.quantile(fit_scores, 1.0 - self.config.contamination))
        )
        return self

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
            elif name == "pattern" and self.pattern is not None and self.pattern.labels:
                out[name] = self.pattern.score(batch, now_s)
        return out

    def _combine(self, raw: dict[str, np.ndarray]) -> np.ndarray:
        normed = [self.norms[name](r) for name, r in raw.items()]
        defaults = DEFAULT_WEIGHTS if self.config.combine == "mean" else {}
        weights = np.array([self.config.weights.get(name, defaults.get(name, 1.0)) for name in raw])
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
        normed = {name: self.norms[name](r[rows]) for name, r in raw.items()}
        blame = self._forest_blame(batch, rows) if "isolation_forest" in comps else None
        for k, row in enumerate(rows):
            found: list[tuple[float, str]] = []
            for name, matrix in comps.items():
                if name == "isolation_forest":
                    if normed[name][k] >= REASON_LEVEL:
                        found.append((normed[name][k], f"{name}:{blame[k]}"))
                    continue
                hits = np.flatnonzero(matrix[row] >= REASON_LEVEL)
                found += [(matrix[row, j], labels[name][j]) for j in hits]
            if not found:
                top = max(normed, key=lambda n: normed[n][k])
                j = int(np.argmax(comps[top][row])) if top != "isolation_forest" else 0
                found = [(0.0, f"{top}:{blame[k]}" if top == "isolation_forest" else labels[top][j])]
            reasons[row] = [label for _, label in sorted(found, key=lambda t: -t[0])]
        return reasons

    def _labels(self, name: str) -> list[str]:
        if name == "pattern":
            return self.pattern.labels if self.pattern else []
        return [f"{name}:{f}" for f in self.numeric_fields]

    def _forest_blame(self, batch: Batch, rows: np.ndarray) -> list[str]:
        """The field furthest from its median (in robust z) for each row: the forest's likely reason."""
        x = numeric_matrix(batch.take(pa.array(rows)), self.numeric_fields)
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
