"""AnomalyDetector(streaming=...): per-key running statistics, on TestStream (streaming DirectRunner) and batch."""

from __future__ import annotations

import os
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue
from pydantic import ValidationError

from beam_etl import registry
from beam_etl.batch import ArrowBatchCoder
from beam_etl.ml._anomaly_stats import FieldStats
from beam_etl.ml.anomaly import AnomalyConfigError
from beam_etl.ops.context import get_run_context
from beam_etl.ops.dlq import ENVELOPE_KEYS
from beam_etl.ops.metrics import summarise
from beam_etl.transforms._anomaly_stream import (
    Moments,
    StreamingAnomalyConfig,
    StreamSettings,
    new_state,
    score_key,
    zscore_prefix,
)
from beam_etl.transforms.anomaly import AnomalyDetector, AnomalyDetectorConfig
from beam_etl.transforms.base import tag_source
from tests.collect import read_json_elements, write_json_element

SECOND = 1_000_000
A_SPIKE, B_EARLY, B_SPIKE = 150, 3, 230  # ids of the planted rows (see make_timed)

# ---------------------------------------------------------------------------------------------
# Data and helpers.
# ---------------------------------------------------------------------------------------------


def make_timed(n_batches: int = 6, rows: int = 40, seed: int = 3) -> list[tuple[pa.RecordBatch, float]]:
    """Batches of two interleaved keys: A ~ N(10, 1) and B ~ N(100, 15); one batch per 10 s from t=1 s.

    Planted: id 150, A = 100 (normal for B, a spike for A); id 3, B = 1000 before B has any
    history; id 230, B = 1000 once B has plenty.
    """
    rng = np.random.default_rng(seed)
    out = []
    for b in range(n_batches):
        ids = np.arange(b * rows, (b + 1) * rows)
        keys = np.where(ids % 2 == 0, "A", "B")
        amount = np.where(keys == "A", rng.normal(10, 1, rows), rng.normal(100, 15, rows))
        qty = rng.integers(1, 4, rows).astype(np.int64)
        amount[ids == A_SPIKE] = 100.0
        amount[ids == B_EARLY] = 1000.0
        amount[ids == B_SPIKE] = 1000.0
        batch = pa.record_batch({"id": ids, "cust": keys, "amount": amount, "qty": qty})
        out.append((tag_source(batch, "orders.csv", b * rows + 1), 10.0 * b + 1))
    return out


def stream_of(timed: list[tuple[pa.RecordBatch, float]]) -> TestStream:
    stream = TestStream(coder=ArrowBatchCoder()).advance_watermark_to(0)
    for batch, ts in timed:
        stream = stream.advance_watermark_to(ts).add_elements([TimestampedValue(batch, ts)])
    return stream.advance_watermark_to_infinity()


class Outputs:
    """Rows (by id), dead letters and step metrics of one variant."""

    def __init__(self, root: str, label: str, result: Any) -> None:
        elements = read_json_elements(os.path.join(root, label, "out"))
        self.rows = {r["id"]: r for e in elements for r in e["rows"]}
        self.n_rows = sum(len(e["rows"]) for e in elements)
        self.letters = read_json_elements(os.path.join(root, label, "dlq"))
        self.metrics = summarise(result).get(label, {})

    def flagged(self) -> set[int]:
        return {i for i, r in self.rows.items() if r["is_anomaly"]}

    def tags(self) -> dict[int, tuple]:
        return {i: (round(r["anomaly_score"], 9), r["is_anomaly"], tuple(r["anomaly_reasons"]))
                for i, r in self.rows.items()}


def _attach(source: beam.PCollection, root: str, variants: dict[str, dict]) -> None:
    for label, streaming in variants.items():
        out, dlq = source | label >> AnomalyDetector(streaming=streaming, step=label)
        for name, pcoll in (("out", out), ("dlq", dlq)):
            os.makedirs(os.path.join(root, label, name))
            pcoll | f"{label}_{name}" >> beam.Map(write_json_element, os.path.join(root, label, name))


def run_stream(timed: list[tuple[pa.RecordBatch, float]], variants: dict[str, dict], root: str,
               stream: TestStream | None = None) -> dict[str, Outputs]:
    options = PipelineOptions(["--runner=DirectRunner"])
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    _attach(p | (stream or stream_of(timed)), root, variants)
    result = p.run()
    result.wait_until_finish()
    return {label: Outputs(root, label, result) for label in variants}


def run_batch(timed: list[tuple[pa.RecordBatch, float]], variants: dict[str, dict], root: str) -> dict[str, Outputs]:
    p = beam.Pipeline()
    source = (p | beam.Create(timed, reshuffle=False)
              | beam.Map(lambda bt: TimestampedValue(bt[0], bt[1])).with_output_types(pa.RecordBatch))
    _attach(source, root, variants)
    result = p.run()
    result.wait_until_finish()
    return {label: Outputs(root, label, result) for label in variants}


def reference_z(timed: list[tuple[pa.RecordBatch, float]], field: str, min_history: int,
                key: str | None = "cust") -> dict[int, float]:
    """Sequential reference: each row's z against all earlier values of its key (population std)."""
    history: dict[Any, list[float]] = {}
    out = {}
    for batch, _ in timed:
        for row in batch.to_pylist():
            seen = history.setdefault(row[key] if key else None, [])
            value = row[field]
            if value is None:
                continue
            if len(seen) >= min_history:
                out[row["id"]] = (value - np.mean(seen)) / np.std(seen)
            seen.append(value)
    return out


def assert_accounted(out: Outputs, records_in: int) -> None:
    """Every row is out or in the DLQ, and the step's metrics say so (batch runs only: Beam's streaming
    DirectRunner reports the counters of the first bundle alone)."""
    assert out.n_rows + len(out.letters) == records_in
    m = out.metrics
    assert m["records_in"] == records_in
    assert m["records_out"] == out.n_rows == len(out.rows)
    assert m["records_failed"] == len(out.letters)
    assert m["records_in"] == m["records_out"] + m["records_failed"]


PER_KEY = {"key_fields": ["cust"], "numeric_fields": ["amount"], "min_history": 30}

# ---------------------------------------------------------------------------------------------
# Streaming semantics.
# ---------------------------------------------------------------------------------------------


def test_spike_is_flagged_per_key_on_a_stream_and_matches_batch(tmp_path: Any) -> None:
    timed = make_timed()
    variants = {"per_key": PER_KEY, "global": {"numeric_fields": ["amount"], "min_history": 30}}
    outs = run_stream(timed, variants, str(tmp_path / "s"))
    per_key, global_ = outs["per_key"], outs["global"]
    assert per_key.n_rows == 240 and not per_key.letters
    # A = 100 is flagged for A although B's values are ~100; B's late 1000 is flagged too
    assert per_key.flagged() == {A_SPIKE, B_SPIKE}
    spike = per_key.rows[A_SPIKE]
    assert spike["anomaly_score"] > 0.9
    assert len(spike["anomaly_reasons"]) == 1
    assert spike["anomaly_reasons"][0].startswith("amount: zscore ") and spike["anomaly_reasons"][0].endswith(
        "(key A)")
    # one global statistic mixes both scales: the A spike looks ordinary there
    assert A_SPIKE not in global_.flagged()
    # the scores are the sequential reference, |z| mapped by |z| / (|z| + 3.5)
    ref = reference_z(timed, "amount", 30)
    for row_id, row in per_key.rows.items():
        z = ref.get(row_id)
        expected = 0.0 if z is None else abs(z) / (abs(z) + 3.5)
        assert row["anomaly_score"] == pytest.approx(expected, abs=1e-9), row_id
        assert row["is_anomaly"] == (z is not None and abs(z) >= 3.5)
        assert isinstance(row["anomaly_reasons"], list)
    assert set(per_key.rows[0]) == {"id", "cust", "amount", "qty", "anomaly_score", "is_anomaly", "anomaly_reasons"}
    # bounded input (batch runner) gives the same tags
    batch = run_batch(timed, variants, str(tmp_path / "b"))
    assert batch["per_key"].tags() == per_key.tags()
    assert batch["global"].tags() == global_.tags()
    assert_accounted(batch["per_key"], 240)
    assert batch["per_key"].metrics["batches_in"] == 6


def test_nothing_is_flagged_before_min_history(tmp_path: Any) -> None:
    timed = make_timed()
    out = run_stream(timed, {"v": PER_KEY}, str(tmp_path))["v"]
    # the first 30 rows of each key (ids 0..59) have fewer than 30 earlier values: untouched
    for row_id in range(60):
        row = out.rows[row_id]
        assert (row["anomaly_score"], row["is_anomaly"], row["anomaly_reasons"]) == (0.0, False, []), row_id
    assert out.rows[B_EARLY]["amount"] == 1000.0  # the early spike is there, and not flagged
    assert out.rows[60]["anomaly_score"] > 0.0  # A's 31st row is scored


def test_per_key_state_is_independent(tmp_path: Any) -> None:
    timed = make_timed()
    only_a = [(b.filter(pa.compute.equal(b.column("cust"), "A")), ts) for b, ts in timed]
    both = run_stream(timed, {"v": PER_KEY}, str(tmp_path / "both"))["v"]
    alone = run_stream(only_a, {"v": PER_KEY}, str(tmp_path / "alone"))["v"]
    a_tags = {i: t for i, t in both.tags().items() if both.rows[i]["cust"] == "A"}
    assert a_tags == alone.tags()
    assert len(a_tags) == 120


def test_robust_z_and_two_fields(tmp_path: Any) -> None:
    timed = make_timed()
    config = {**PER_KEY, "numeric_fields": ["amount", "qty"], "method": "robust_z"}
    out = run_stream(timed, {"v": config}, str(tmp_path))["v"]
    assert {A_SPIKE, B_SPIKE} <= out.flagged()
    assert out.rows[A_SPIKE]["anomaly_reasons"][0].startswith("amount: robust_z ")
    # A's spike against the exact median/MAD of A's earlier values
    history = [r["amount"] for b, _ in timed for r in b.to_pylist() if r["cust"] == "A" and r["id"] < A_SPIKE]
    stats = FieldStats.from_values(np.array(history))
    z = (100.0 - stats.median) / (1.4826 * stats.mad)
    assert out.rows[A_SPIKE]["anomaly_reasons"][0] == f"amount: robust_z {z:.1f} (key A)"
    assert out.rows[A_SPIKE]["anomaly_score"] == pytest.approx(z / (z + 3.5))


def test_ttl_forgets_a_quiet_key_on_a_stream_and_in_batch(tmp_path: Any) -> None:
    rng = np.random.default_rng(5)

    def batch(first_id: int, n: int) -> pa.RecordBatch:
        return pa.record_batch({"id": np.arange(first_id, first_id + n), "cust": ["A"] * n,
                                "amount": rng.normal(10, 1, n)})

    # 40 rows at t=1 and 31 s; then quiet for 10 minutes (ttl 5m); then 10 rows at t=630 s
    timed = [(batch(0, 20), 1.0), (batch(20, 20), 31.0), (batch(40, 10), 631.0)]
    variants = {"ttl": {**PER_KEY, "min_history": 5, "ttl": "5m"}, "forever": {**PER_KEY, "min_history": 5}}
    outs = run_stream(timed, variants, str(tmp_path / "s"))
    # after the gap the key starts again: its first 5 rows are not scored
    assert [outs["ttl"].rows[i]["anomaly_score"] for i in range(40, 45)] == [0.0] * 5
    assert all(outs["ttl"].rows[i]["anomaly_score"] > 0 for i in range(45, 50))
    assert all(outs["forever"].rows[i]["anomaly_score"] > 0 for i in range(40, 50))
    batch_outs = run_batch(timed, variants, str(tmp_path / "b"))
    assert batch_outs["ttl"].tags() == outs["ttl"].tags()
    assert batch_outs["forever"].tags() == outs["forever"].tags()


def test_event_time_orders_rows_within_a_batch(tmp_path: Any) -> None:
    """Rows of a key are scored in event-time order, whatever their order in the batch."""
    rng = np.random.default_rng(11)
    n = 60
    values = rng.normal(10, 1, n)
    values[50] = 40.0  # the spike, 51st in time
    perm = rng.permutation(n)
    base = np.datetime64("2024-05-01T00:00:00", "us")
    batch = pa.record_batch({"id": np.arange(n)[perm], "cust": ["A"] * n, "amount": values[perm],
                             "at": pa.array(base + np.arange(n)[perm] * np.timedelta64(1, "s"))})
    config = {**PER_KEY, "min_history": 20, "event_time": "at"}
    out = run_stream([(batch, 1.0)], {"v": config}, str(tmp_path))["v"]
    assert out.flagged() == {50}
    ordered = [(pa.record_batch({"id": np.arange(n), "cust": ["A"] * n, "amount": values}), 1.0)]
    ref = reference_z(ordered, "amount", 20)
    for row_id, row in out.rows.items():
        z = ref.get(row_id)
        assert row["anomaly_score"] == pytest.approx(0.0 if z is None else abs(z) / (abs(z) + 3.5), abs=1e-9)


# ---------------------------------------------------------------------------------------------
# Bad rows, nulls and errors.
# ---------------------------------------------------------------------------------------------


def test_bad_values_go_to_the_dlq_and_nulls_are_skipped(tmp_path: Any) -> None:
    timed = make_timed(n_batches=3)
    bad = tag_source(pa.record_batch({"id": [900, 901, 902], "cust": ["A", "A", "B"],
                                      "amount": ["12.5", "lots", None], "qty": [1, 2, 3]}), "bad.csv", 1)
    timed.append((bad, 40.0))
    variants = {"v": {**PER_KEY, "min_history": 5}}
    out = run_stream(timed, variants, str(tmp_path / "s"))["v"]
    assert out.n_rows + len(out.letters) == 123
    batch = run_batch(timed, variants, str(tmp_path / "b"))["v"]
    assert_accounted(batch, 123)
    assert batch.tags() == out.tags()
    assert len(out.letters) == 1
    letter = out.letters[0]
    assert set(ENVELOPE_KEYS) <= set(letter)
    assert letter["record"]["id"] == 901 and letter["error_type"] == "type" and letter["step"] == "v"
    assert "numeric field 'amount' value 'lots' is not a number" in letter["error"]
    assert letter["source"].startswith("bad.csv")
    assert out.rows[900]["anomaly_score"] > 0  # "12.5" is read as a number
    assert (out.rows[902]["anomaly_score"], out.rows[902]["is_anomaly"]) == (0.0, False)  # null: skipped


def test_missing_field_at_run_time_goes_to_the_dlq_naming_it(tmp_path: Any) -> None:
    timed = make_timed(n_batches=1, rows=4)
    out = run_batch(timed, {"v": {**PER_KEY, "numeric_fields": ["amout"]}}, str(tmp_path))["v"]
    assert out.rows == {}
    assert len(out.letters) == 4
    assert all("field 'amout' is missing from the input" in letter["error"] for letter in out.letters)
    assert {letter["error_type"] for letter in out.letters} == {"validation"}
    assert_accounted(out, 4)


def test_fit_mode_on_unbounded_input_is_refused() -> None:
    options = PipelineOptions(["--runner=DirectRunner"])
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    source = p | stream_of(make_timed(n_batches=1, rows=4))
    with pytest.raises(AnomalyConfigError, match=r"'anomaly'.*needs bounded input.*streaming"):
        source | AnomalyDetector(contamination=0.05, step="anomaly")


# ---------------------------------------------------------------------------------------------
# Config and registration.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "match"), [
    ({"streaming": {"key_fields": ["cust"]}}, r"streaming\.numeric_fields"),
    ({"streaming": {"numeric_fields": []}}, "numeric_fields=.. is empty"),
    ({"streaming": {"numeric_fields": ["amount"], "method": "lof"}}, "method"),
    ({"streaming": {"numeric_fields": ["amount"], "threshold": 0}}, "threshold"),
    ({"streaming": {"numeric_fields": ["amount"], "min_history": 1}}, "min_history"),
    ({"streaming": {"numeric_fields": ["amount"], "ttl": "soon"}}, "ttl='soon'"),
    ({"streaming": {"numeric_fields": ["amount"], "method": "robust_z", "halflife": 10}}, "halflife"),
    ({"streaming": {"numeric_fields": ["amount"], "sample_size": 100}}, "sample_size"),
    ({"streaming": {"numeric_fields": ["amount"], "key_fields": ["amount"]}}, "both name"),
    ({"streaming": {"numeric_fields": ["anomaly_score"]}}, "output or internal"),
    ({"streaming": {"numeric_fields": ["amount"], "windw": 5}}, "unknown key 'windw' in streaming"),
    ({"streaming": {"numeric_fields": ["amount"]}, "model_path": "m.joblib"}, r"remove \['model_path'\]"),
    ({"streaming": {"numeric_fields": ["amount"]}, "contamination": 0.1}, r"remove \['contamination'\]"),
    ({"streaming": {"numeric_fields": ["amount"]}, "fit_sample_rows": 10}, r"remove \['fit_sample_rows'\]"),
])
def test_config_errors_are_clear(values: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        AnomalyDetectorConfig(**values)


def test_registered_as_streaming_with_keyed_state() -> None:
    entry = registry.lookup("AnomalyDetector")
    config = AnomalyDetectorConfig(streaming={"numeric_fields": ["amount"], "key_fields": ["cust"], "ttl": "1h"})
    assert entry.supports_streaming(config)
    assert entry.regroups_records(config)
    assert "state_and_timers" in entry.features(config)
    assert entry.features(AnomalyDetectorConfig()) == frozenset()
    step = entry.factory(config, registry.BuildContext("anomaly", get_run_context()))
    assert isinstance(step, AnomalyDetector) and step.config is None
    assert step.streaming.key_fields == ["cust"] and step.streaming.threshold == 3.5
    assert step.display_data()["mode"] == "streaming"


# ---------------------------------------------------------------------------------------------
# The running statistics (no Beam).
# ---------------------------------------------------------------------------------------------


def test_prefix_moments_match_a_sequential_reference() -> None:
    x = np.random.default_rng(0).normal(50, 5, 300)
    st = Moments()
    z = []
    for part in np.array_split(x, [7, 100, 101, 250]):  # uneven slices, one of a single value
        zz, prior, st = zscore_prefix(part, st)
        z.extend(zz.tolist())
    assert st.count == 300 and st.mean == pytest.approx(x.mean()) and st.var == pytest.approx(x.var())
    ref = [(x[i] - x[:i].mean()) / x[:i].std() for i in range(2, 300)]
    np.testing.assert_allclose(z[2:], ref, rtol=1e-9)


def test_halflife_weights_recent_values() -> None:
    x = np.random.default_rng(1).normal(0, 1, 200)
    decay = 0.5 ** (1 / 25)
    z1, _, st = zscore_prefix(x[:120], Moments(), decay)
    z2, _, _ = zscore_prefix(x[120:], st, decay)
    z = np.concatenate([z1, z2])
    for i in (5, 119, 120, 199):
        w = decay ** np.arange(i - 1, -1, -1)
        mean = (w * x[:i]).sum() / w.sum()
        std = np.sqrt((w * (x[:i] - mean) ** 2).sum() / w.sum())
        assert z[i] == pytest.approx((x[i] - mean) / std, rel=1e-9)


def test_constant_history_and_ttl_gaps_in_one_slice() -> None:
    s = StreamSettings.of(StreamingAnomalyConfig(numeric_fields=["v"], min_history=3, ttl="10s"))
    values = np.array([5.0, 5.0, 5.0, 5.0, 6.0, np.nan, 7.0, 7.0, 7.0, 9.0])
    times = np.array([0, 1, 2, 3, 4, 5, 20, 21, 22, 23]) * SECOND  # a 15 s gap before the 7th row
    state = new_state(s)
    z = score_key([values], times, state, s)[:, 0]
    assert z[3] == 0.0 and z[4] == np.inf  # off a constant history: |z| = inf, score 1
    assert np.isnan(z[5])  # null: skipped
    assert np.isnan(z[6:9]).all()  # the gap reset the key: 3 values of history again first
    assert z[9] == np.inf
    assert state.fields[0].count == 4 and state.last_us == 23 * SECOND
