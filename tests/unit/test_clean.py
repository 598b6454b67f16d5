"""NullRemover: drop rows, drop columns by global null fraction, fill with constants and global statistics."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from pydantic import ValidationError

from beam_etl import registry
from beam_etl.ops.dlq import ENVELOPE_KEYS
from beam_etl.ops.metrics import summarise
from beam_etl.transforms.base import tag_source
from beam_etl.transforms.clean import (
    NullRemover,
    NullRemoverConfig,
    NullStatsCombineFn,
    QuantileSketch,
    TopCounts,
    null_mask,
)


def batch(rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> pa.RecordBatch:
    return tag_source(pa.RecordBatch.from_pylist(rows, schema=schema), "people.csv", 1)


def run_step(step: beam.PTransform, batches: list[pa.RecordBatch], rows: Any, letters: Any,
             name: str = "nulls") -> dict[str, int]:
    p = test_pipeline.TestPipeline()
    out, dlq = p | "Create" >> beam.Create(batches) | step
    assert_that(out | "Rows" >> beam.FlatMap(lambda b: b.to_pylist()), rows if callable(rows) else equal_to(rows),
                label="CheckRows")
    assert_that(dlq, letters if callable(letters) else equal_to(letters), label="CheckDlq")
    result = p.run()
    result.wait_until_finish()
    counts = summarise(result)[name]
    total = sum(b.num_rows for b in batches)
    assert counts["records_in"] == total
    assert total == counts["records_out"] + counts["records_filtered"] + counts["records_failed"], counts
    return counts


def letters_match(expected: list[tuple[str, list[str]]]) -> Callable[[list[dict[str, Any]]], None]:
    def match(actual: list[dict[str, Any]]) -> None:
        if len(actual) != len(expected):
            raise BeamAssertException(f"expected {len(expected)} dead letters, got {actual}")
        remaining = list(actual)
        for error_type, parts in expected:
            hit = next((a for a in remaining if a["error_type"] == error_type
                        and all(p in a["error"] for p in parts)), None)
            if hit is None:
                raise BeamAssertException(f"no dead letter {error_type} {parts} in {remaining}")
            remaining.remove(hit)
        for letter in actual:
            if set(letter) != set(ENVELOPE_KEYS) or letter["step"] != "nulls" or letter["run_id"] != "test-run" \
                    or letter["pipeline"] != "test" or not letter["source"].startswith("people.csv") \
                    or not letter["exception"] or not letter["failed_at"] or letter["attempt"] != 1:
                raise BeamAssertException(f"bad envelope: {letter}")

    return match


PEOPLE = [
    {"id": 1, "name": "Ada", "age": 36, "score": 1.0, "city": "London"},
    {"id": 2, "name": None, "age": None, "score": float("nan"), "city": "Paris"},
    {"id": 3, "name": "  ", "age": 41, "score": 3.0, "city": None},
    {"id": 4, "name": "Linus", "age": 20, "score": 4.0, "city": "Paris"},
]


def test_null_mask_counts_nan_and_blank_strings():
    assert null_mask(pa.array([1.0, float("nan"), None])).to_pylist() == [False, True, True]
    assert null_mask(pa.array(["a", " ", "", None])).to_pylist() == [False, True, True, True]


def test_default_drops_rows_with_any_null_and_counts_them_as_filtered():
    counts = run_step(NullRemover(step="nulls"), [batch(PEOPLE[:2]), batch(PEOPLE[2:])], [PEOPLE[0], PEOPLE[3]], [])
    assert counts["records_filtered"] == 2 and counts["records_failed"] == 0


def test_drop_rows_fields_and_how_all():
    run_step(NullRemover(drop_rows=["name", "age"], step="nulls"), [batch(PEOPLE)], [PEOPLE[0], PEOPLE[3]], [])
    rows = [{"a": None, "b": None}, {"a": 1, "b": None}, {"a": None, "b": " "}]
    run_step(NullRemover(drop_rows={"fields": "any", "how": "all"}, step="nulls"), [batch(rows)], [rows[1]], [])


def test_fill_constants_and_unstorable_fill_value_goes_to_dlq():
    rows = [{"age": None, "city": None}, {"age": 3, "city": "Oslo"}, {"age": 5, "city": None}]
    step = NullRemover(fill={"age": "unknown", "city": "n/a"}, step="nulls")
    counts = run_step(step, [batch(rows)], [{"age": 3, "city": "Oslo"}, {"age": 5, "city": "n/a"}], letters_match([
        ("type", ["field 'age' value None could not be filled", "fill value 'unknown' (constant) cannot be stored "
                  "in int64 column 'age'"]),
    ]))
    assert counts["records_failed"] == 1


def test_fill_strategies_use_global_statistics_across_batches():
    first = batch([{"k": "a", "amount": 1.0, "qty": 1, "tag": "x"},
                   {"k": "b", "amount": None, "qty": None, "tag": None}])
    second = batch([{"k": "c", "amount": 4.0, "qty": 2, "tag": "y"}, {"k": "d", "amount": 10.0, "qty": 4, "tag": "y"}])
    step = NullRemover(fill_strategy={"amount": "mean", "qty": "median", "tag": "mode"}, step="nulls")
    expected = [
        {"k": "a", "amount": 1.0, "qty": 1, "tag": "x"},
        {"k": "b", "amount": 5.0, "qty": 2, "tag": "y"},
        {"k": "c", "amount": 4.0, "qty": 2, "tag": "y"},
        {"k": "d", "amount": 10.0, "qty": 4, "tag": "y"},
    ]
    counts = run_step(step, [first, second], expected, [])
    assert counts["records_out"] == 4


def test_mean_of_int_column_is_rounded_and_text_mean_is_a_dead_letter():
    rows = [{"n": 1, "s": "a"}, {"n": 2, "s": None}, {"n": None, "s": "b"}]
    step = NullRemover(fill_strategy={"n": "mean", "s": "mean"}, step="nulls")
    run_step(step, [batch(rows)], [{"n": 1, "s": "a"}, {"n": 2, "s": "b"}], letters_match([
        ("type", ["field 's' value None could not be filled", "mean needs a numeric column, but 's' is string"]),
    ]))


def test_drop_columns_uses_the_global_null_fraction_then_fills_then_drops_rows():
    # 'sparse' is null in 3 of 4 rows overall but complete in the second batch: it goes everywhere.
    first = batch([{"id": 1, "sparse": None, "city": None}, {"id": 2, "sparse": None, "city": "Rome"}])
    second = batch([{"id": 3, "sparse": 7, "city": None}, {"id": None, "sparse": None, "city": "Oslo"}])
    step = NullRemover(drop_columns={"max_null_fraction": 0.5}, fill={"city": "?"}, drop_rows="any", step="nulls")
    expected = [{"id": 1, "city": "?"}, {"id": 2, "city": "Rome"}, {"id": 3, "city": "?"}]
    counts = run_step(step, [first, second], expected, [])
    assert counts["records_filtered"] == 1


def test_mode_shorthand_and_missing_fields():
    rows = [{"a": 1, "b": None}, {"a": 2, "b": None}, {"a": 3, "b": 1}]
    run_step(NullRemover(mode="drop_columns", step="nulls"), [batch(rows)], [{"a": 1}, {"a": 2}, {"a": 3}], [])
    run_step(NullRemover(drop_rows=["zip"], step="nulls"), [batch(rows)], [], letters_match([
        ("validation", ["NullRemover: field 'zip' is missing from the input (columns: a, b)"])] * 3))
    run_step(NullRemover(drop_rows=["zip", "a"], ignore_missing=True, step="nulls"), [batch(rows)], rows, [])


def test_config_errors_name_field_value_and_choices():
    with pytest.raises(ValueError, match=r"NullRemover.mode: 'erase' is not allowed; use one or a list of drop_rows"):
        NullRemover(mode="erase")
    with pytest.raises(ValueError, match=r"NullRemover.fill_strategy.x: 'average' is not allowed; use one of mean"):
        NullRemover(fill_strategy={"x": "average"})
    with pytest.raises(ValueError, match=r"NullRemover.fill_strategy.x: 'constant' needs a value in fill.x"):
        NullRemover(fill_strategy={"x": "constant"})
    with pytest.raises(ValueError, match=r"NullRemover.drop_columns is configured but mode \['drop_rows'\]"):
        NullRemover(mode="drop_rows", drop_columns={"max_null_fraction": 0.2})
    with pytest.raises(ValueError, match=r"NullRemover.drop_columns.max_null_fraction: 1.5 is not a number between"):
        NullRemover(drop_columns={"max_null_fraction": 1.5})
    with pytest.raises(ValueError, match=r"NullRemover.drop_rows.how: 'some' is not allowed"):
        NullRemover(drop_rows={"fields": ["a"], "how": "some"})
    with pytest.raises(ValueError, match=r"NullRemover.mode: 'fill' needs values"):
        NullRemover(mode="fill")
    with pytest.raises(ValidationError, match="max_null_fraction"):
        NullRemoverConfig.model_validate({"drop_columns": {"max_null_fraction": 2}})
    with pytest.raises(ValidationError, match="'constant' needs a value"):
        NullRemoverConfig.model_validate({"fill_strategy": {"x": "constant"}})


def test_quantile_sketch_is_exact_when_small_and_close_when_large():
    small = QuantileSketch()
    small.add(np.array([5.0, 1.0, 3.0, 2.0]))
    assert small.median() == 2.5
    rng = np.random.default_rng(7)
    values = rng.normal(100, 15, 250_000)
    sketches = []
    for chunk in np.array_split(values, 5):
        sketch = QuantileSketch(capacity=20_000)
        sketch.add(chunk)
        sketches.append(sketch)
    merged = sketches[0]
    for sketch in sketches[1:]:
        merged.merge(sketch)
    assert merged.count >= 249_000
    rank = (values < merged.median()).mean()
    assert abs(rank - 0.5) < 0.01


def test_top_counts_mode_and_stats_combine_fn():
    top = TopCounts(capacity=2)
    top.add_counts({"a": 5, "b": 1, "c": 1})
    top.add_counts({"a": 1, "d": 4})
    assert top.mode() == "a"
    fn = NullStatsCombineFn(None, {"x": "mean"})
    acc = fn.add_input(fn.create_accumulator(), pa.RecordBatch.from_pylist([{"x": 1.0}, {"x": None}]))
    acc = fn.merge_accumulators([acc, fn.add_input(fn.create_accumulator(),
                                                   pa.RecordBatch.from_pylist([{"x": 5.0}]))])
    out = fn.extract_output(acc)
    assert out["rows"] == 3 and math.isclose(out["fill_values"]["x"], 3.0)


def test_registered_factory():
    try:
        entry = registry.lookup("NullRemover")
    except ModuleNotFoundError:  # other builtin modules may not exist yet
        entry = registry._TABLE["NullRemover"]
    config = entry.config_model.model_validate(
        {"drop_rows": {"fields": ["id"]}, "drop_columns": {"max_null_fraction": 0.9}, "fill": {"city": "?"},
         "fill_strategy": {"age": "median"}})
    step = entry.factory(config, registry.BuildContext(step_name="clean_people", run=None))
    assert step.step_name() == "clean_people" and step.needs_stats
    assert step.mode == ["drop_columns", "fill", "drop_rows"]
