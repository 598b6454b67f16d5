"""Anomaly model layer (beam_etl.ml.anomaly): detectors, ensemble decision, reasons, pickling, running stats."""

from __future__ import annotations

import csv
import datetime as dt
import pickle
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from beam_etl.ml._anomaly_cov import RobustCovariance
from beam_etl.ml._anomaly_pattern import shapes
from beam_etl.ml.anomaly import (
    DETECTORS,
    FLAG_FIELD,
    LEGACY_WEIGHTS,
    REASONS_FIELD,
    SCORE_FIELD,
    AnomalyConfig,
    AnomalyConfigError,
    AnomalyModel,
    FieldStats,
    RunningStats,
    _Norm,
)

N = 2000
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
SPIKE, CATEGORY, CODE, TEXT_NUM, DATE = 0, 1, 2, 3, 4  # planted rows


def _dates(days) -> pa.Array:
    """date32 from day numbers (None -> null)."""
    return pa.array(list(days), pa.int32()).view(pa.date32())


@pytest.fixture(scope="module")
def table() -> pa.Table:
    """Numeric fields with NaN/nulls, a category, a code, numeric-looking text and a date; anomalies planted."""
    rng = np.random.default_rng(7)
    x = rng.normal(100.0, 10.0, size=N)
    y = rng.normal(0.0, 1.0, size=N)
    x[SPIKE] = 250.0
    y[10] = np.nan
    city = rng.choice(["Berlin", "Paris", "Rome"], size=N).astype(object)
    city[CATEGORY] = "Atlantis"
    code = np.array([f"AB-{v:04d}" for v in rng.integers(0, 10_000, size=N)], dtype=object)
    code[CODE] = "zz_top"
    amount = np.array([f"{v:.2f}" for v in rng.uniform(0, 500, size=N)], dtype=object)
    amount[TEXT_NUM] = "n/a"
    days = rng.integers(15_000, 19_000, size=N)
    days[DATE] = -30_000  # 1887
    y_arr = pa.array(y, mask=np.isin(np.arange(N), [11]))
    return pa.table(
        {
            "x": x,
            "y": y_arr,
            "city": pa.array(city.tolist(), pa.string()),
            "code": pa.array(code.tolist(), pa.string()),
            "amount": pa.array(amount.tolist(), pa.string()),
            "born": _dates(days),
            "id": pa.array(np.arange(N), pa.int64()),
        }
    )


@pytest.fixture(scope="module")
def model(table: pa.Table) -> AnomalyModel:
    cfg = AnomalyConfig(contamination=0.01, numeric_fields=["x", "y"], combine="max")
    return AnomalyModel(cfg).fit(table, now_s=NOW)


# ---- detectors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("detector", ["zscore", "robust_z", "iqr", "isolation_forest", "mahalanobis"])
def test_numeric_detectors_rank_planted_spike_above_bulk(model: AnomalyModel, table: pa.Table, detector: str) -> None:
    raw = model.detector_scores(table, now_s=NOW)[detector]
    assert raw.shape == (N,)
    assert ((raw >= 0) & (raw <= 1)).all()
    assert raw[SPIKE] > np.quantile(raw, 0.99)
    if detector != "isolation_forest":  # the forest sees the spike in only ~13 % of its subsamples
        assert raw[SPIKE] == raw.max()


def test_pattern_detector_flags_each_planted_kind(model: AnomalyModel, table: pa.Table) -> None:
    raw = model.detector_scores(table, now_s=NOW)["pattern"]
    assert model.pattern is not None
    assert set(model.pattern.labels) >= {
        "rare_category:city",
        "pattern:code",
        "type:amount",
        "date:born",
    }
    for row in (TEXT_NUM, DATE):
        assert raw[row] == 1.0
    for row in (CATEGORY, CODE):  # value / shape seen once at fit: rare, not unseen
        assert raw[row] == pytest.approx(1.0 - (1 / N) / 0.01)
    unseen = model.pattern.score(
        pa.table({"city": ["Gotham"], "code": ["AB-12"], "amount": ["1"], "born": _dates([1])})
    )
    assert unseen.max() == 1.0
    assert np.median(raw) == 0.0


def test_reasons_name_field_and_detector(model: AnomalyModel, table: pa.Table) -> None:
    scores, flags, reasons = model.score(table, now_s=NOW)
    assert flags[[SPIKE, CATEGORY, CODE, TEXT_NUM, DATE]].all()
    assert {"zscore:x", "robust_z:x", "iqr:x"} <= set(reasons[SPIKE])
    assert any(r.startswith("isolation_forest:x") for r in reasons[SPIKE])
    assert "mahalanobis:x" in reasons[SPIKE]
    assert "rare_category:city" in reasons[CATEGORY]
    assert "pattern:code" in reasons[CODE]
    assert "type:amount" in reasons[TEXT_NUM]
    assert "date:born" in reasons[DATE]
    assert all(r == [] for r, f in zip(reasons, flags, strict=True) if not f)
    assert all(r for r, f in zip(reasons, flags, strict=True) if f)


def test_future_date_beyond_tolerance() -> None:
    day = 86400
    t = pa.table(
        {"v": np.arange(100.0), "when": pa.array([int(NOW) - 1000] * 99 + [int(NOW) + 3 * day], pa.timestamp("s"))}
    )
    m = AnomalyModel(AnomalyConfig(detectors=("pattern",), threshold=0.5)).fit(t, now_s=NOW)
    _, flags, reasons = m.score(t, now_s=NOW)
    assert flags.tolist() == [False] * 99 + [True]
    assert reasons[-1] == ["date:when"]


@pytest.mark.parametrize(
    "col",
    [
        pa.array([0, 86400 * 365 * 300], pa.timestamp("s", tz="UTC")).cast(pa.timestamp("ms", tz="UTC")),
        pa.array([0, -86400 * 365 * 80], pa.timestamp("s")).cast(pa.timestamp("us")),
        pa.array([0, 86400 * 365 * 300], pa.timestamp("s")).cast(pa.date64()),
    ],
)
def test_dates_of_every_arrow_type(col: pa.Array) -> None:
    t = pa.table({"when": col})
    m = AnomalyModel(AnomalyConfig(detectors=("pattern",), threshold=0.5)).fit(t, now_s=NOW)
    assert m.score(t, now_s=NOW)[1].tolist() == [False, True]


def test_shape_compression() -> None:
    got = shapes(pa.array(["AB-1234", "Hello World", "x9y", None])).to_pylist()
    assert got == ["A-9", "Aa Aa", "a9a", None]


def _correlated(n: int = 3000, seed: int = 3) -> tuple[pa.Table, np.ndarray]:
    """Two fields with correlation 0.9 and a skewed third; rows 0-9 break the correlation (a=1.5, b=-1.5),
    each value ordinary on its own."""
    rng = np.random.default_rng(seed)
    ab = rng.multivariate_normal([0.0, 0.0], [[1.0, 0.9], [0.9, 1.0]], size=n)
    ab[:10] = [1.5, -1.5]
    planted = np.zeros(n, dtype=bool)
    planted[:10] = True
    c = rng.lognormal(0.0, 0.5, size=n)
    c[:10] = 1.0  # the median
    return pa.table({"a": ab[:, 0], "b": ab[:, 1], "c": c}), planted


def test_mahalanobis_sees_rows_that_break_a_correlation() -> None:
    t, planted = _correlated()
    m = AnomalyModel(AnomalyConfig(text_fields=[], date_fields=[])).fit(t)
    raw = m.detector_scores(t)
    assert raw["mahalanobis"][planted].min() > np.quantile(raw["mahalanobis"][~planted], 0.995)
    assert raw["robust_z"][planted].max() < np.quantile(raw["robust_z"][~planted], 0.95)  # no single field is off
    assert set(m.cov.columns) == {0, 1, 2}
    _, flags, reasons = m.score(t)
    assert flags[planted].all()
    assert all(r[0] in ("mahalanobis:a", "mahalanobis:b") for r in np.array(reasons, dtype=object)[planted])


def test_robust_covariance_resists_masking_and_degenerate_fields() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1000, 3))
    x[:100] = rng.normal(6.0, 0.3, size=(100, 3))  # a 10 % cluster that a classical covariance would absorb
    x[:, 2] = np.where(np.arange(1000) % 10 == 0, 1.0, 0.0)  # 90 % one value: MAD 0, left out
    cov = RobustCovariance.fit(x)
    assert cov is not None and cov.columns.tolist() == [0, 1]
    score = cov.score(x)
    assert ((score >= 0) & (score < 1)).all()
    assert score[:100].min() > score[100:].max()
    assert np.median(cov.distances(x[100:])) == pytest.approx(1.39, abs=0.3)  # chi2(2) median in the bulk
    assert RobustCovariance.fit(np.ones((50, 2))) is None
    constant = AnomalyModel().fit(pa.table({"v": np.ones(50), "w": np.arange(50.0)}))
    assert constant.cov is not None and constant.cov.columns.tolist() == [1]


def test_rank_normalisation_ties_and_range() -> None:
    raw = np.r_[np.zeros(980), np.linspace(0.2, 1.0, 20)]  # e.g. pattern: mostly 0
    norm = _Norm.fit(raw, 0.99)
    rank = norm.rank(np.array([0.0, 0.2, 1.0, 2.0, -1.0]))
    np.testing.assert_allclose(rank, [0.0, 980 / 999, 1.0, 1.0, 0.0])  # share strictly below, levels i / (n - 1)
    grid = np.linspace(-0.5, 1.5, 200)
    assert (np.diff(norm(grid)) >= 0).all() and ((norm(grid) >= 0) & (norm(grid) <= 1)).all()
    above = grid[norm.tail(grid) >= 0.5]  # above the fit quantile the tail alone decides: thresholds keep meaning
    np.testing.assert_array_equal(norm(above), norm.tail(above))
    below = np.array([0.0, 0.5])
    np.testing.assert_allclose(norm(below), np.maximum(norm.tail(below), norm.rank(below) / 2))
    big = _Norm.fit(np.random.default_rng(0).normal(size=50_000), 0.99)
    assert len(big.knots) <= 4097
    assert big.rank(np.array([0.0]))[0] == pytest.approx(0.5, abs=0.01)


def test_distance_tail_reads_d_over_cut() -> None:
    d = np.random.default_rng(1).exponential(1.0, size=5000)
    raw = d / (d + 3.0)
    norm = _Norm.fit(raw, 0.99, distance=True)
    far, farther = np.array([30 / 33]), np.array([300 / 303])
    assert norm.tail(far)[0] > 0.99 and norm.tail(farther)[0] > norm.tail(far)[0] - 1e-12
    assert norm.tail(np.array([np.quantile(raw, 0.99)]))[0] == pytest.approx(0.5, abs=0.01)
    assert np.isfinite(norm(np.array([1.0])))[0]


# ---- ensemble and decision ---------------------------------------------------------------------


def test_default_weights_resolved_and_stored(table: pa.Table) -> None:
    m = AnomalyModel().fit(table, now_s=NOW)
    assert m.weights_ == {
        "zscore": 0.0, "robust_z": 0.0, "iqr": 0.0, "isolation_forest": 2.0, "mahalanobis": 2.0, "pattern": 1.0
    }
    only_stats = AnomalyModel(AnomalyConfig(detectors=("zscore", "iqr", "pattern"))).fit(table, now_s=NOW)
    assert only_stats.weights_ == {"zscore": 1.0, "iqr": 1.0, "pattern": 1.0}
    named = AnomalyModel(AnomalyConfig(weights={"robust_z": 0.5})).fit(table, now_s=NOW)
    assert named.weights_["robust_z"] == 0.5
    assert AnomalyModel(AnomalyConfig(combine="max")).fit(table, now_s=NOW).weights_["zscore"] == 1.0


def test_model_saved_before_rank_norms_scores_as_fitted(table: pa.Table) -> None:
    """A model pickled by the earlier version (no ``knots``, ``weights_`` or ``cov``) keeps its scoring."""
    m = AnomalyModel(AnomalyConfig(detectors=("zscore", "robust_z", "iqr", "isolation_forest", "pattern")))
    m.fit(table, now_s=NOW)
    for attr in ("weights_", "cov"):
        m.__dict__.pop(attr)
    for norm in m.norms.values():
        norm.__dict__.pop("knots")
        norm.__dict__.pop("distance")
    old = pickle.loads(pickle.dumps(m))
    raw = old.detector_scores(table, now_s=NOW)
    w = {name: LEGACY_WEIGHTS.get(name, 1.0) for name in raw}

    def logistic(name: str, r: np.ndarray) -> np.ndarray:
        x = (r - old.norms[name].median) / old.norms[name].spread
        return 1.0 / (1.0 + np.exp(-3.0 * (x - 1.0)))

    want = sum(w[name] * logistic(name, r) for name, r in raw.items()) / sum(w.values())
    np.testing.assert_allclose(old.score(table, now_s=NOW)[0], want)




@pytest.mark.parametrize("contamination", [0.02, 0.1])
def test_is_anomaly_fraction_matches_contamination(table: pa.Table, contamination: float) -> None:
    m = AnomalyModel(AnomalyConfig(contamination=contamination)).fit(table, now_s=NOW)
    scores, flags, _ = m.score(table, now_s=NOW)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert flags.mean() == pytest.approx(contamination, abs=0.005)


def test_explicit_threshold(table: pa.Table) -> None:
    m = AnomalyModel(AnomalyConfig(threshold=0.8, numeric_fields=["x"], text_fields=[], date_fields=[])).fit(table)
    scores, flags, _ = m.score(table)
    assert (flags == (scores >= 0.8)).all()
    assert flags[SPIKE]


def test_weights_zero_silences_a_detector(table: pa.Table) -> None:
    cfg = AnomalyConfig(detectors=("zscore", "pattern"), weights={"pattern": 0.0}, contamination=0.01)
    m = AnomalyModel(cfg).fit(table, now_s=NOW)
    scores, _, _ = m.score(table, now_s=NOW)
    only_z = AnomalyModel(AnomalyConfig(detectors=("zscore",), contamination=0.01)).fit(table, now_s=NOW)
    np.testing.assert_allclose(scores, only_z.score(table)[0])


def test_null_and_nan_rows_score_without_error(model: AnomalyModel, table: pa.Table) -> None:
    scores, _, _ = model.score(table, now_s=NOW)
    assert np.isfinite(scores).all()
    assert scores[10] < model.threshold_ and scores[11] < model.threshold_
    batch = pa.record_batch(
        {
            "x": pa.array([None, 100.0, float("inf")]),
            "y": pa.array([float("nan"), None, 0.0]),
            "city": pa.array([None, "Paris", "Rome"]),
            "code": pa.array([None, "AB-0001", "AB-0002"]),
            "amount": pa.array([None, "1.5", "2"]),
            "born": _dates([None, 16_000, 16_000]),
        }
    )
    scores, flags, reasons = model.score(batch, now_s=NOW)
    assert np.isfinite(scores).all()
    assert flags.tolist() == [False, False, True]
    assert "zscore:x" in reasons[2]


def test_to_columns_appends_typed_columns(model: AnomalyModel, table: pa.Table) -> None:
    batch = table.slice(0, 50).to_batches()[0]
    out = model.to_columns(batch, now_s=NOW)
    assert isinstance(out, pa.RecordBatch)
    assert out.schema.names == [*batch.schema.names, SCORE_FIELD, FLAG_FIELD, REASONS_FIELD]
    assert out.schema.field(SCORE_FIELD).type == pa.float64()
    assert out.schema.field(FLAG_FIELD).type == pa.bool_()
    assert out.schema.field(REASONS_FIELD).type == pa.list_(pa.string())
    again = model.to_columns(out, now_s=NOW)  # re-scoring replaces, never duplicates
    assert again.schema.names == out.schema.names
    assert again.column(SCORE_FIELD).equals(out.column(SCORE_FIELD))
    empty = model.to_columns(batch.slice(0, 0), now_s=NOW)
    assert empty.num_rows == 0 and empty.schema == out.schema
    as_table = model.to_columns(table, now_s=NOW)
    assert isinstance(as_table, pa.Table) and as_table.num_rows == N


ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_planted_outliers_rank_first() -> None:
    """The bundled sample's 30 planted amount outliers, scored as templates/anomaly_tagging.yaml does."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_sample_data import planted_outlier_ids

    planted = planted_outlier_ids()
    assert len(planted) == 30
    with open(ROOT / "beam_etl" / "data" / "customers_orders.csv", encoding="utf-8", newline="") as f:
        lines = f.read().splitlines()
    names = next(csv.reader(lines[:1]))
    rows = []
    for line in lines[1:]:
        values = next(csv.reader([line]))
        if len(values) != len(names):  # the pipeline sends these to the DLQ (parse): drop them
            continue
        row = dict(zip(names, values, strict=True))
        try:  # and these (type)
            amount = float(row["amount"]) if row["amount"].strip() else None
            quantity = int(row["quantity"]) if row["quantity"].strip() else None
        except ValueError:
            continue
        rows.append({**row, "amount": amount, "quantity": quantity})
    text = ["email", "phone", "country", "category", "status"]
    t = pa.table({"amount": [r["amount"] for r in rows], "quantity": [r["quantity"] for r in rows],
                  **{c: [r[c] or None for r in rows] for c in text}})
    labels = np.array([r["order_id"].strip().upper() in planted for r in rows])
    cfg = AnomalyConfig(numeric_fields=["amount", "quantity"], text_fields=text, date_fields=[], contamination=0.02)
    scores, flags, reasons = AnomalyModel(cfg).fit(t).score(t)
    assert labels.sum() == 30
    assert scores[labels].min() > np.quantile(scores[~labels], 0.995)
    assert flags[labels].all()
    assert all(any(r.endswith(":amount") for r in reasons[i]) for i in np.flatnonzero(labels))


# ---- persistence -------------------------------------------------------------------------------


def test_pickle_round_trip_scores_identically(model: AnomalyModel, table: pa.Table) -> None:
    clone = pickle.loads(pickle.dumps(model))
    a, fa, ra = model.score(table, now_s=NOW)
    b, fb, rb = clone.score(table, now_s=NOW)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fa, fb)
    assert ra == rb


def test_joblib_save_load(model: AnomalyModel, table: pa.Table, tmp_path) -> None:
    path = tmp_path / "anomaly.joblib"
    model.save(path)
    np.testing.assert_array_equal(AnomalyModel.load(path).score(table, now_s=NOW)[0], model.score(table, now_s=NOW)[0])


def test_default_model_save_load_keeps_mahalanobis_and_reasons(table: pa.Table, tmp_path) -> None:
    model = AnomalyModel(AnomalyConfig(contamination=0.01)).fit(table, now_s=NOW)
    path = tmp_path / "default.joblib"
    model.save(path)
    loaded = AnomalyModel.load(path)
    assert loaded.cov is not None and loaded.weights_ == model.weights_
    a, fa, ra = model.score(table, now_s=NOW)
    b, fb, rb = loaded.score(table, now_s=NOW)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fa, fb)
    assert ra == rb
    np.testing.assert_array_equal(
        loaded.detector_scores(table, now_s=NOW)["mahalanobis"], model.detector_scores(table, now_s=NOW)["mahalanobis"]
    )


def test_fit_is_deterministic_and_samples(table: pa.Table) -> None:
    cfg = AnomalyConfig(max_fit_rows=500, random_state=3)
    a = AnomalyModel(cfg).fit(table, now_s=NOW).score(table, now_s=NOW)[0]
    b = AnomalyModel(cfg).fit(table, now_s=NOW).score(table, now_s=NOW)[0]
    np.testing.assert_array_equal(a, b)


# ---- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"detectors": ("zscore", "lof")}, "'lof'"),
        ({"detectors": ()}, "detectors"),
        ({"contamination": 0.0}, "contamination"),
        ({"contamination": 0.6}, "0.6"),
        ({"threshold": 1.5}, "threshold"),
        ({"combine": "median"}, "'median'"),
        ({"weights": {"iqr": 1.0}, "detectors": ("zscore",)}, "'iqr'"),
        ({"weights": {"zscore": -1.0}}, "weights['zscore']"),
        ({"n_estimators": 0}, "n_estimators"),
    ],
)
def test_config_errors_name_the_value(kwargs: dict, needle: str) -> None:
    with pytest.raises(AnomalyConfigError, match=None) as err:
        AnomalyConfig(**kwargs)
    assert needle in str(err.value)


def test_field_errors_name_the_field(table: pa.Table) -> None:
    with pytest.raises(AnomalyConfigError, match="'nope'"):
        AnomalyModel(AnomalyConfig(numeric_fields=["nope"])).fit(table)
    with pytest.raises(AnomalyConfigError, match="'city'.*not numeric"):
        AnomalyModel(AnomalyConfig(numeric_fields=["city"])).fit(table)
    fitted = AnomalyModel(AnomalyConfig(numeric_fields=["x"], text_fields=[], date_fields=[])).fit(table)
    with pytest.raises(AnomalyConfigError, match="'x'"):
        fitted.score(table.drop_columns(["x"]))
    with pytest.raises(AnomalyConfigError, match="nothing to score"):
        AnomalyModel(AnomalyConfig(detectors=("zscore",))).fit(table.select(["city"]))
    with pytest.raises(RuntimeError, match="not fitted"):
        AnomalyModel().score(table)


def test_all_detectors_known() -> None:
    assert AnomalyConfig().detectors == DETECTORS


# ---- running statistics ------------------------------------------------------------------------


def test_running_stats_merge_equals_one_shot() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(5.0, 2.0, size=3000)
    values[::97] = np.nan
    parts = [RunningStats(capacity=4096, seed=i).update(chunk) for i, chunk in enumerate(np.array_split(values, 7))]
    merged = RunningStats(capacity=4096)
    for part in parts[:3]:
        merged.merge(part)
    tail = RunningStats(capacity=4096)
    for part in parts[3:]:
        tail.merge(part)
    merged.merge(tail)
    one_shot = FieldStats.from_values(values)
    got = merged.field_stats()
    assert got.count == one_shot.count
    for name in ("mean", "std", "median", "mad", "q1", "q3", "min", "max"):
        assert getattr(got, name) == pytest.approx(getattr(one_shot, name), rel=1e-9), name
    assert merged.exact_quantiles


def test_running_stats_batch_updates_equal_one_shot_moments_when_reservoir_overflows() -> None:
    rng = np.random.default_rng(2)
    values = rng.exponential(3.0, size=50_000)
    acc = RunningStats(capacity=2000, seed=0)
    for chunk in np.array_split(values, 25):
        acc.update(chunk)
    assert acc.count == values.size
    assert acc.mean == pytest.approx(values.mean(), rel=1e-12)
    assert acc.variance == pytest.approx(values.var(), rel=1e-10)
    assert acc.reservoir.size == 2000 and not acc.exact_quantiles
    assert acc.quantile(0.5) == pytest.approx(np.median(values), rel=0.1)


def test_running_stats_feed_the_statistical_detector(table: pa.Table) -> None:
    x = table.column("x").to_numpy()
    acc = RunningStats(capacity=N).update(x[:700]).merge(RunningStats(capacity=N).update(x[700:]))
    got, want = acc.field_stats(), FieldStats.from_values(x)
    for name in ("count", "mean", "std", "median", "mad", "q1", "q3"):
        assert getattr(got, name) == pytest.approx(getattr(want, name), rel=1e-9), name


def test_running_stats_rejects_bad_capacity() -> None:
    with pytest.raises(ValueError, match="capacity"):
        RunningStats(capacity=0)
