"""AnomalyDetector step: tags (never filters), fits once, loads a saved model once, routes failures to the DLQ."""

from __future__ import annotations

import tempfile
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.metrics.metric import MetricsFilter
from pydantic import ValidationError

from beam_etl import registry
from beam_etl.ml.anomaly import AnomalyConfig, AnomalyModel
from beam_etl.ops.context import get_run_context
from beam_etl.ops.dlq import ENVELOPE_KEYS
from beam_etl.ops.metrics import summarise
from beam_etl.transforms import anomaly as anomaly_step
from beam_etl.transforms.anomaly import AnomalyDetector, AnomalyDetectorConfig, FitSampleCombineFn
from beam_etl.transforms.base import tag_source
from tests.collect import read_elements, write_element

OUTLIER_IDS = {37, 555, 1234}


def make_batches(n_batches: int = 4, rows: int = 500, seed: int = 7) -> list[pa.RecordBatch]:
    rng = np.random.default_rng(seed)
    out = []
    for b in range(n_batches):
        ids = np.arange(b * rows, (b + 1) * rows)
        amount = rng.normal(100.0, 10.0, rows)
        qty = rng.integers(1, 5, rows).astype(np.int64)
        for i, row_id in enumerate(ids):
            if row_id in OUTLIER_IDS:
                amount[i], qty[i] = 5_000.0, 400
        batch = pa.RecordBatch.from_arrays([pa.array(ids), pa.array(amount), pa.array(qty)],
                                           names=["id", "amount", "qty"])
        out.append(tag_source(batch, "orders.csv", b * rows + 1))
    return out


def run(step: beam.PTransform, batches: list[pa.RecordBatch]) -> tuple[pa.Table | None, list[dict], Any]:
    with tempfile.TemporaryDirectory() as out_dir, tempfile.TemporaryDirectory() as dlq_dir:
        p = beam.Pipeline()
        out, dlq = p | "Create" >> beam.Create(batches) | step
        out | "WriteOut" >> beam.Map(write_element, out_dir)
        dlq | "WriteDlq" >> beam.Map(write_element, dlq_dir)
        result = p.run()
        result.wait_until_finish()
        table, _ = read_elements(out_dir)
        _, letters = read_elements(dlq_dir)
    return table, letters, result


def model_counter(result: Any, name: str) -> int:
    counters = result.metrics().query(MetricsFilter().with_namespace(anomaly_step.MODEL_METRICS_NAMESPACE))["counters"]
    return sum(int(c.committed or c.attempted or 0) for c in counters if c.key.metric.name.endswith(name))


def test_planted_outliers_are_tagged_and_no_row_is_dropped() -> None:
    batches = make_batches()
    table, letters, result = run(AnomalyDetector(contamination=0.01, step="anomaly"), batches)
    assert letters == []
    assert table.num_rows == sum(b.num_rows for b in batches)
    assert sorted(table.column("id").to_pylist()) == list(range(2000))
    rows = table.to_pylist()
    outliers = [r for r in rows if r["id"] in OUTLIER_IDS]
    normal = [r for r in rows if r["id"] not in OUTLIER_IDS]
    assert all(r["is_anomaly"] for r in outliers)
    assert min(r["anomaly_score"] for r in outliers) > max(r["anomaly_score"] for r in normal)
    assert all(r["anomaly_reasons"] for r in outliers)
    assert sum(r["is_anomaly"] for r in rows) < 0.05 * len(rows)
    counts = summarise(result)["anomaly"]
    assert counts["records_in"] == counts["records_out"] == 2000
    assert counts["batches_in"] == 4 and counts["records_failed"] == 0
    assert model_counter(result, "model_fits") == 1


def test_model_is_fitted_once_on_a_bounded_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    fitted: list[int] = []
    original = AnomalyModel.fit

    def counting_fit(self: AnomalyModel, table: Any, now_s: float | None = None) -> AnomalyModel:
        fitted.append(table.num_rows)
        return original(self, table, now_s)

    monkeypatch.setattr(AnomalyModel, "fit", counting_fit)
    table, letters, result = run(AnomalyDetector(fit_sample_rows=300, step="anomaly"), make_batches())
    assert fitted == [300]
    assert table.num_rows == 2000 and letters == []
    assert model_counter(result, "model_fits") == 1


def test_fit_sample_combine_fn_is_uniform_and_bounded() -> None:
    fn = FitSampleCombineFn(100, seed=1)
    accs = []
    for b in make_batches(n_batches=4, rows=500):
        acc = fn.create_accumulator()
        accs.append(fn.add_input(acc, b))
    sample = fn.extract_output(fn.merge_accumulators(accs))
    assert sample.num_rows == 100
    ids = np.array(sample.column("id").to_pylist())
    assert len(set(ids)) == 100
    # every batch contributes (uniform over batches, not the first rows seen)
    assert len({i // 500 for i in ids}) == 4
    assert fn.extract_output(fn.create_accumulator()) is None


def test_model_path_loads_once_and_does_not_fit(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    batches = make_batches()
    model = AnomalyModel(AnomalyConfig(contamination=0.01)).fit(pa.Table.from_batches(batches))
    path = tmp_path / "model.joblib"
    model.save(path)
    loads: list[str] = []
    original = AnomalyModel.load.__func__

    def counting_load(cls: type, p: Any) -> AnomalyModel:
        loads.append(str(p))
        return original(cls, p)

    monkeypatch.setattr(AnomalyModel, "load", classmethod(counting_load))
    monkeypatch.setattr(AnomalyModel, "fit", lambda *a, **k: pytest.fail("fit must not run with model_path"))
    table, letters, result = run(AnomalyDetector(model_path=str(path), step="anomaly"), batches)
    assert loads == [str(path)]  # one DoFn instance, four batches: loaded once in setup
    assert table.num_rows == 2000 and letters == []
    flagged = set(table.filter(table.column("is_anomaly")).column("id").to_pylist())
    assert flagged >= OUTLIER_IDS
    assert model_counter(result, "model_loads") == 1


def test_batch_that_fails_scoring_goes_to_dlq_row_by_row(tmp_path: Any) -> None:
    good = make_batches(n_batches=2)
    bad = tag_source(pa.RecordBatch.from_pylist([{"id": 9000, "amount": "lots", "qty": 1},
                                                 {"id": 9001, "amount": "more", "qty": 2}]), "bad.csv", 1)
    model_path = str(tmp_path / "model.joblib")
    AnomalyModel(AnomalyConfig(numeric_fields=["amount", "qty"], detectors=("zscore",))).fit(
        pa.Table.from_batches(good)).save(model_path)
    table, letters, result = run(AnomalyDetector(model_path=model_path, step="anomaly"), [*good, bad])
    assert table.num_rows == 1000
    assert len(letters) == 2
    assert {letter["record"]["id"] for letter in letters} == {9000, 9001}
    for letter in letters:
        assert set(ENVELOPE_KEYS) <= set(letter)
        assert letter["error_type"] == "type"
        assert letter["step"] == "anomaly"
        assert "AnomalyDetector: scoring the batch failed" in letter["error"]
        assert letter["source"].startswith("bad.csv")
    counts = summarise(result)["anomaly"]
    assert counts["records_in"] == 1002
    assert counts["records_out"] + counts["records_failed"] == 1002


def test_threshold_and_explicit_fields() -> None:
    table, letters, _ = run(AnomalyDetector(threshold=0.9, numeric_fields=["amount"], detectors=["robust_z"],
                                            step="anomaly"), make_batches())
    assert letters == [] and table.num_rows == 2000
    flagged = set(table.filter(table.column("is_anomaly")).column("id").to_pylist())
    assert flagged == OUTLIER_IDS


def test_registered_with_config_dependent_streaming() -> None:
    entry = registry.lookup("AnomalyDetector")
    assert entry.kind == "step"
    fit = AnomalyDetectorConfig(contamination=0.02)
    saved = AnomalyDetectorConfig(model_path="/models/anomaly.joblib")
    assert not entry.supports_streaming(fit) and entry.regroups_records(fit)
    assert entry.supports_streaming(saved) and not entry.regroups_records(saved)
    streaming = AnomalyDetectorConfig(streaming={"numeric_fields": ["amount"]})
    assert entry.supports_streaming(streaming) and entry.regroups_records(streaming)
    assert entry.features(streaming) == {"state_and_timers"} and entry.features(fit) == frozenset()
    step = entry.factory(fit, registry.BuildContext("anomaly", get_run_context()))
    assert isinstance(step, AnomalyDetector) and step.config.contamination == 0.02


@pytest.mark.parametrize(("values", "field"), [
    ({"contamination": 0.9}, "contamination"),
    ({"threshold": 1.5}, "threshold"),
    ({"detectors": ["zscore", "lof"]}, "detectors"),
    ({"detectors": []}, "detectors"),
    ({"combine": "median"}, "combine"),
    ({"fit_sample_rows": 0}, "fit_sample_rows"),
    ({"weights": {"pattern": 1.0}, "detectors": ["zscore"]}, "weights"),
    ({"model_path": "m.joblib", "contamination": 0.1}, "model_path"),
    ({"contamnation": 0.1}, "contamnation"),
    ({"streaming": {"numeric_fields": ["amount"]}, "detectors": ["zscore"]}, "streaming"),
])
def test_config_errors_name_the_field(values: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        AnomalyDetectorConfig(**values)


def test_fit_error_names_step_and_field() -> None:
    with pytest.raises(Exception, match=r"'anomaly'.*numeric_fields: field 'nope'"):
        run(AnomalyDetector(numeric_fields=["nope"], step="anomaly"), make_batches(n_batches=1))


def test_fit_does_not_depend_on_batch_order() -> None:
    batches = make_batches()
    first, _, _ = run(AnomalyDetector(step="anomaly"), batches)
    second, _, _ = run(AnomalyDetector(step="anomaly"), list(reversed(batches)))
    scores = {r["id"]: r["anomaly_score"] for r in first.to_pylist()}
    assert all(scores[r["id"]] == pytest.approx(r["anomaly_score"]) for r in second.to_pylist())
