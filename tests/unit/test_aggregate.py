"""GroupByAggregate: pandas reference on seeded random data, partial/merge functions, DLQ, validation."""

from __future__ import annotations

import math
import os
import shutil
import tempfile

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from beam_etl import registry
from beam_etl.batch import ArrowTableCoder
from beam_etl.ops.context import RunContext
from beam_etl.ops.metrics import summarise
from beam_etl.transforms import _agg_partials as partials
from beam_etl.transforms.aggregate import (
    GroupByAggregate,
    GroupByAggregateConfig,
    MergePartialsFn,
    parse_aggregations,
)
from tests.collect import read_elements, write_element

ALL_OPS = {
    "n": {"op": "count"},
    "rows": {"op": "count_all"},
    "total": {"op": "sum", "field": "amount"},
    "mean": {"op": "avg", "field": "amount"},
    "qty_sum": {"op": "sum", "field": "qty"},
    "qty_n": {"op": "count", "field": "qty"},
    "lo": {"op": "min", "field": "amount"},
    "hi": {"op": "max", "field": "name"},
}


def random_table(n: int = 5000, seed: int = 11) -> pa.Table:
    rng = np.random.default_rng(seed)
    cats = np.array(["a", "b", "c", None], dtype=object)
    return pa.table({
        "cat": pa.array(cats[rng.integers(0, 4, n)], pa.string()),
        "sub": pa.array(rng.integers(0, 3, n), pa.int32()),
        "amount": pa.array(np.round(rng.normal(50, 20, n), 3), mask=rng.random(n) < 0.1),
        "qty": pa.array(rng.integers(-5, 100, n), pa.int32(), mask=rng.random(n) < 0.05),
        "name": pa.array(np.array(["x", "yy", "z", None], dtype=object)[rng.integers(0, 4, n)], pa.string()),
    })


_write = write_element
_read = read_elements


def run_many(batches: list[pa.RecordBatch], variants: dict[str, dict], typed_empty: bool = False):
    """Runs several GroupByAggregate variants over one input; returns {label: (table, letters)}, result."""
    root = tempfile.mkdtemp(prefix="agg_test_")
    p = TestPipeline()
    create = beam.Create(batches, reshuffle=False)
    source = p | (create.with_output_types(pa.RecordBatch) if typed_empty else create)
    for label, kwargs in variants.items():
        out, dlq = source | label >> GroupByAggregate(**kwargs)
        for name, pcoll in (("out", out), ("dlq", dlq)):
            os.makedirs(os.path.join(root, label, name))
            pcoll | f"{label}_{name}" >> beam.Map(_write, os.path.join(root, label, name))
    result = p.run()
    result.wait_until_finish()
    outputs = {}
    for label in variants:
        table, _ = _read(os.path.join(root, label, "out"))
        _, letters = _read(os.path.join(root, label, "dlq"))
        outputs[label] = (table, letters)
    shutil.rmtree(root, ignore_errors=True)
    return outputs, result


def reference(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The pandas reference of ALL_OPS (null keys form their own group)."""
    grouped = df.groupby(keys, dropna=False) if keys else df.assign(_g=0).groupby("_g")
    out = pd.DataFrame({
        "n": grouped.size(),
        "rows": grouped.size(),
        "total": grouped["amount"].sum(min_count=1),
        "mean": grouped["amount"].mean(),
        "qty_sum": grouped["qty"].sum(min_count=1),
        "qty_n": grouped["qty"].count(),
        "lo": grouped["amount"].min(),
        "hi": grouped["name"].agg(lambda s: s.dropna().max() if s.notna().any() else None),
    })
    return out.reset_index(drop=not keys)


def assert_matches(table: pa.Table, ref: pd.DataFrame, keys: list[str]) -> None:
    got = table.to_pandas()
    assert len(got) == len(ref)
    order = keys or ["n"]
    got = got.sort_values(order, na_position="last").reset_index(drop=True)
    ref = ref.sort_values(order, na_position="last").reset_index(drop=True)
    for col in ref.columns:
        if col in keys:
            assert got[col].astype(object).where(got[col].notna(), None).tolist() == \
                ref[col].astype(object).where(ref[col].notna(), None).tolist(), col
        elif col == "hi":
            assert got[col].tolist() == ref[col].tolist()
        else:
            np.testing.assert_allclose(got[col].astype(float), ref[col].astype(float), rtol=1e-9, err_msg=col)


def test_randomised_against_pandas():
    table = random_table()
    df = table.to_pandas()
    batches = table.to_batches(max_chunksize=700)
    outputs, result = run_many(batches, {
        "two_keys": {"keys": ["cat", "sub"], "aggregations": ALL_OPS},
        "one_key": {"keys": "cat", "aggregations": ALL_OPS, "partitions": 3},
        "global": {"aggregations": ALL_OPS},
    })
    for label, keys in (("two_keys", ["cat", "sub"]), ("one_key", ["cat"]), ("global", [])):
        out, letters = outputs[label]
        assert not letters
        assert out.column_names == [*keys, *ALL_OPS]
        assert_matches(out, reference(df, keys), keys)
    schema = outputs["two_keys"][0].schema
    assert schema.field("n").type == pa.int64() and schema.field("rows").type == pa.int64()
    assert schema.field("qty_sum").type == pa.int64()  # sum of int32 -> int64
    assert schema.field("mean").type == pa.float64() and schema.field("total").type == pa.float64()
    assert schema.field("hi").type == pa.string() and schema.field("sub").type == pa.int32()
    # null group keys form their own group
    assert outputs["one_key"][0].column("cat").null_count == 1
    metrics = summarise(result)
    for label, (out, _) in outputs.items():
        m = metrics[label]
        assert m["records_in"] == table.num_rows and m["records_out"] == out.num_rows
        # rows folded into groups count as "grouped": in = out + filtered + grouped + failed
        assert m["records_in"] == m["records_out"] + m["records_filtered"] + m["records_grouped"] + m["records_failed"]
        assert m["records_grouped"] == table.num_rows - out.num_rows


def test_list_form_count_without_field_and_default_names():
    batches = [pa.record_batch({"k": ["a", "a", "b"], "v": [1.5, None, 2.0]})]
    outputs, _ = run_many(batches, {
        "list": {"keys": ["k"], "aggregations": [
            {"op": "count"}, {"field": "v", "op": "sum"}, {"field": "v", "op": "avg", "as": "mean"},
            {"field": "v", "op": "count"}]},
    })
    out = outputs["list"][0].sort_by("k").to_pylist()
    assert out == [{"k": "a", "count": 2, "sum_v": 1.5, "mean": 1.5, "count_v": 1},
                   {"k": "b", "count": 1, "sum_v": 2.0, "mean": 2.0, "count_v": 1}]


def test_strings_are_parsed_and_bad_values_go_to_the_dlq():
    batches = [
        pa.record_batch({"k": ["a", "a", "b", "b"], "amount": ["1.5", " 2 ", "abc", None]}),
        pa.record_batch({"k": ["a", "b"], "amount": ["", "1e3"]}),
    ]
    outputs, result = run_many(batches, {
        "parse": {"keys": ["k"], "aggregations": {"total": {"op": "sum", "field": "amount"},
                                                 "n": {"op": "count_all"}, "vals": {"op": "count", "field": "amount"}}},
    })
    out, letters = outputs["parse"]
    rows = {r["k"]: r for r in out.to_pylist()}
    assert rows["a"] == {"k": "a", "total": 3.5, "n": 3, "vals": 2}  # "" is a missing value, not an error
    assert rows["b"] == {"k": "b", "total": 1000.0, "n": 2, "vals": 1}
    assert len(letters) == 1
    letter = letters[0]
    assert letter["error_type"] == "type" and letter["record"] == {"k": "b", "amount": "abc"}
    assert "amount" in letter["error"] and "abc" in letter["error"] and letter["step"] == "parse"
    assert letter["pipeline"] == "test" and letter["run_id"] == "test-run"
    m = summarise(result)["parse"]
    assert (m["records_in"], m["records_out"], m["records_failed"], m["records_grouped"]) == (6, 2, 1, 3)


def test_non_numeric_type_fails_loudly_at_the_first_batch():
    batches = [pa.record_batch({"k": ["a"], "tags": pa.array([[1, 2]])})]
    with pytest.raises(Exception, match="tags") as info:
        run_many(batches, {"bad": {"keys": ["k"], "aggregations": {"s": {"op": "sum", "field": "tags"}}}})
    assert "allowed" in str(info.value)


def test_empty_input():
    outputs, result = run_many([], {
        "keyed": {"keys": ["k"], "aggregations": {"n": {"op": "count"}}},
        "global": {"aggregations": {"n": {"op": "count"}, "s": {"op": "sum", "field": "v"},
                                    "m": {"op": "avg", "field": "v"}}},
    }, typed_empty=True)
    assert outputs["keyed"][0] is None
    assert outputs["global"][0].to_pylist() == [{"n": 0, "s": None, "m": None}]  # SQL: one row over no rows


def test_partials_merge_to_the_same_result():
    table = random_table(3000, seed=5)
    aggs = parse_aggregations(ALL_OPS)
    keys = ["cat", "sub"]
    coerced = {f: partials.coerce_numeric(table.column(f).combine_chunks())[0] for f in partials.numeric_fields(aggs)}
    whole = partials.finalize(partials.merge_partials(
        [partials.partial_aggregate(table, keys, aggs, coerced)], keys, aggs), keys, aggs)
    pieces = []
    for start in range(0, table.num_rows, 400):
        part = table.slice(start, 400)
        numeric = {f: v.slice(start, 400) for f, v in coerced.items()}
        pieces.append(partials.partial_aggregate(part, keys, aggs, numeric))
    # merge in two levels, as a combiner does before and after the shuffle
    level1 = [partials.merge_partials(pieces[i:i + 3], keys, aggs) for i in range(0, len(pieces), 3)]
    merged = partials.finalize(partials.merge_partials(level1, keys, aggs), keys, aggs)
    a = whole.sort_by([(k, "ascending") for k in keys]).to_pylist()
    b = merged.sort_by([(k, "ascending") for k in keys]).to_pylist()
    for x, y in zip(a, b, strict=True):
        for col, value in x.items():
            if isinstance(value, float):
                assert math.isclose(value, y[col], rel_tol=1e-12), col
            else:
                assert value == y[col], col


def test_merge_partials_fn_accumulator():
    aggs = parse_aggregations({"n": {"op": "count"}, "s": {"op": "sum", "field": "v"}})
    fn = MergePartialsFn(["k"], aggs)
    acc = fn.create_accumulator()
    coder = ArrowTableCoder()
    assert coder.decode(coder.encode(acc)).num_columns == 0
    for i in range(5):
        batch = pa.table({"k": ["a", "b"], "v": [i, 2 * i]})
        acc = fn.add_input(acc, partials.partial_aggregate(batch, ["k"], aggs))
    assert acc.num_rows == 10  # appended lazily, merged later
    compact = fn.compact(acc)
    assert compact.num_rows == 2
    acc2 = fn.merge_accumulators([coder.decode(coder.encode(compact)), fn.create_accumulator(), acc])
    out = {r["k"]: r for r in fn.extract_output(acc2).to_pylist()}
    assert out == {"a": {"k": "a", "n": 10, "s": 20}, "b": {"k": "b", "n": 10, "s": 40}}
    assert fn.get_accumulator_coder().to_type_hint() is pa.Table


@pytest.mark.parametrize("kwargs, message", [
    ({"keys": ["k"], "aggregations": {"x": {"op": "median", "field": "v"}}}, "median"),
    ({"keys": ["k"], "aggregations": {"x": {"op": "sum"}}}, "needs a field"),
    ({"keys": ["k"], "aggregations": {"x": {"op": "count_all", "field": "v"}}}, "count_all"),
    ({"keys": ["k"], "aggregations": [{"op": "count"}, {"op": "count"}]}, "repeat"),
    ({"keys": ["k"], "aggregations": {"k": {"op": "count"}}}, "also group keys"),
    ({"keys": ["k"], "aggregations": {}}, "empty"),
    ({"keys": ["k"]}, "missing"),
    ({"keys": ["k", "k"], "aggregations": {"n": {"op": "count"}}}, "repeat"),
    ({"keys": ["k"], "aggregations": {"n": {"op": "count"}}, "partitions": 0}, "partitions"),
    ({"keys": ["k"], "aggregations": {"n": {"op": "count", "colour": 1}}}, "unknown"),
    ({"keys": ["k"], "aggregations": "count"}, "aggregations"),
])
def test_validation_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GroupByAggregate(**kwargs)


def test_registry_and_config_forms():
    entry = registry.lookup("GroupByAggregate")
    assert entry is not None and entry.kind == "step" and entry.config_model is GroupByAggregateConfig
    ctx = registry.BuildContext(step_name="by_cat", run=RunContext(pipeline="t", run_id="r"))
    mapping = GroupByAggregateConfig(keys=["cat"], aggregations={"total": {"op": "sum", "field": "amount"},
                                                                 "orders": {"op": "count"}})
    listed = GroupByAggregateConfig(keys=["cat"], aggregations=[{"field": "amount", "op": "sum", "as": "total"},
                                                                {"op": "count", "as": "orders"}])
    for config in (mapping, listed):
        transform = entry.factory(config, ctx)
        assert transform.step_name() == "by_cat"
        assert [(a.name, a.op, a.field) for a in transform.aggregations] == [
            ("total", "sum", "amount"), ("orders", "count", None)]
    with pytest.raises(ValueError, match="op"):
        GroupByAggregateConfig(keys=["cat"], aggregations={"x": {"op": "median", "field": "a"}})
    with pytest.raises(ValueError):
        GroupByAggregateConfig(keys=["cat"], aggregations={"x": {"op": "sum", "field": "a"}}, colour="red")


def test_windowed_input_aggregates_per_window():
    from apache_beam.testing.util import assert_that, equal_to
    from apache_beam.transforms.window import FixedWindows, TimestampedValue

    batches = [(pa.record_batch({"k": ["a", "a"], "v": [1.0, 2.0]}), 5),
               (pa.record_batch({"k": ["a"], "v": [4.0]}), 15)]
    p = TestPipeline()
    windowed = (p | beam.Create(batches, reshuffle=False)
                | beam.Map(lambda bt: TimestampedValue(bt[0], bt[1])).with_output_types(pa.RecordBatch)
                | beam.WindowInto(FixedWindows(10)))
    keyed, _ = windowed | "keyed" >> GroupByAggregate(["k"], {"s": {"op": "sum", "field": "v"}})
    total, _ = windowed | "global" >> GroupByAggregate([], {"n": {"op": "count"}})  # no default row per window
    assert_that(keyed | beam.FlatMap(lambda b: b.column("s").to_pylist()), equal_to([3.0, 4.0]), label="keyed")
    assert_that(total | "n" >> beam.FlatMap(lambda b: b.column("n").to_pylist()), equal_to([2, 1]), label="global")
    p.run().wait_until_finish()
