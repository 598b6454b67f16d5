"""Anomaly model layer (beam_etl.ml.anomaly): detectors, ensemble decision, reasons, pickling, running stats."""

from __future__ import annotations

import datetime as dt
import pickle

import numpy as np
import pyarrow as pa
import pytest

from beam_etl.ml._anomaly_pattern import shapes
from beam_etl.ml.anomaly import (
    DETECTORS,
    FLAG_FIELD,
    REASONS_FIELD,
    SCORE_FIELD,
    AnomalyConfig,
    AnomalyConfigError,
    AnomalyModel,
    FieldStats,
    RunningStats,
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


@pytest.mark.parametrize("detector", ["zscore", "robust_z", "iqr", "isolation_forest"])
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


# ---- ensemble and decision ---------------------------------------------------------------------


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
