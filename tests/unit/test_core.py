"""The data unit, the DLQ envelope, the row fallback and the run summary arithmetic."""

from __future__ import annotations

import datetime as dt
import decimal

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_etl.batch import ArrowBatchCoder, json_safe, records_to_batch, split_batch
from beam_etl.ops.dlq import DLQ_SCHEMA, ENVELOPE_KEYS, dead_letter, dead_letters_to_batch
from beam_etl.ops.secrets import redact_mapping, register_secret
from beam_etl.transforms.base import BatchResult, BatchStep, RecordError, run_with_row_fallback, tag_source


def test_coder_round_trip_keeps_types_and_metadata():
    batch = tag_source(records_to_batch([
        {"id": 1, "when": dt.datetime(2024, 1, 2, 3), "price": decimal.Decimal("1.50"), "tags": ["a"]},
        {"id": 2, "when": None, "price": None, "tags": []},
    ]), "in.csv", 10)
    coder = ArrowBatchCoder()
    back = coder.decode(coder.encode(batch))
    assert back.equals(batch) and back.schema.metadata == batch.schema.metadata


def test_split_batch_is_zero_copy_slices():
    batch = records_to_batch([{"x": i} for i in range(10)])
    parts = list(split_batch(batch, 4))
    assert [p.num_rows for p in parts] == [4, 4, 2]


def test_json_safe_handles_arrow_values():
    assert json_safe({"d": dt.date(2024, 1, 2), "b": b"\xff", "n": decimal.Decimal("2.5")}) == {
        "d": "2024-01-02", "b": {"base64": "/w=="}, "n": "2.5"}


def test_dead_letter_envelope_has_every_key():
    letter = dead_letter({"a": 1}, error_type="parse", error="bad", step="s", source="f.csv:3", exception=ValueError())
    assert tuple(letter) == ENVELOPE_KEYS
    assert letter["exception"] == "ValueError" and letter["pipeline"] == "test" and letter["run_id"] == "test-run"
    with pytest.raises(ValueError, match="error_type"):
        dead_letter({}, error_type="oops", error="x", step="s")
    batch = dead_letters_to_batch([letter])
    assert batch.schema == DLQ_SCHEMA and batch.column("record").to_pylist() == ['{"a": 1}']


def test_row_fallback_isolates_failing_rows(run_context):
    batch = tag_source(records_to_batch([{"x": 1}, {"x": -1}, {"x": 2}]), "in.csv", 1)

    def positive_only(b: pa.RecordBatch) -> pa.RecordBatch:
        if min(b.column("x").to_pylist()) < 0:
            raise RecordError("x must be positive", "validation")
        return b

    result = run_with_row_fallback(positive_only, batch, "check", run_context)
    assert result.batch.column("x").to_pylist() == [1, 2]
    assert len(result.dead_letters) == 1
    letter = result.dead_letters[0]
    assert letter["record"] == {"x": -1} and letter["error_type"] == "validation" and "in.csv" in letter["source"]


class _DropOdd(BatchStep):
    def batch_fn(self):
        def fn(batch):
            keep = pa.array([v % 2 == 0 for v in batch.column("x").to_pylist()])
            return BatchResult(batch.filter(keep), filtered=batch.num_rows - sum(keep.to_pylist()))
        return fn


def test_batch_step_counts_and_outputs():
    with TestPipeline() as p:
        out, dlq = p | beam.Create([records_to_batch([{"x": i} for i in range(6)])]) | "DropOdd" >> _DropOdd()
        assert_that(out | beam.FlatMap(lambda b: b.column("x").to_pylist()), equal_to([0, 2, 4]))
        assert_that(dlq, equal_to([]), label="no dead letters")


def test_redact_mapping_hides_secret_keys_and_values():
    register_secret("s3cr3t-value")
    cfg = {"password": "pw", "dsn": "postgres://u:s3cr3t-value@h/db", "nested": {"api_key": "k", "x": 1}}
    assert redact_mapping(cfg) == {"password": "***", "dsn": "postgres://u:***@h/db",
                                   "nested": {"api_key": "***", "x": 1}}
