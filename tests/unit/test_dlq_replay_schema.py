"""ReadFromDlq re-applies the replaced source's schema: fixed records pass, bad ones fail again."""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_etl.io.dlq_source import ReadFromDlq
from beam_etl.ops.dlq import dead_letter


def test_schema_casts_replayed_records(tmp_path):
    letters = [
        dead_letter({"id": "1", "amount": "12.5"}, error_type="type", error="x", step="orders", attempt=1),
        dead_letter({"id": "2", "amount": "abc"}, error_type="type", error="x", step="orders", attempt=1),
    ]
    path = tmp_path / "dlq.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in letters) + "\n")
    with TestPipeline() as p:
        out, dlq = p | ReadFromDlq(path=str(path), schema={"id": "int", "amount": "float"})
        assert_that(out | beam.FlatMap(lambda b: b.to_pylist()), equal_to([{"id": 1, "amount": 12.5}]))
        assert_that(dlq | beam.Map(lambda d: (d["record"]["amount"], d["error_type"], d["attempt"], d["error"])),
                    equal_to([("abc", "type", 2, "column 'amount': 'abc' is not a valid float")]), label="bad")
