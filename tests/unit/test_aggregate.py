"""GroupByAggregate: pandas/numpy references on seeded random data, partial/merge functions, the quantile
sketch's rank error, having, DLQ, validation and streaming (TestStream)."""

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
from beam_etl.transforms import _agg_sketch as sketch
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


# ---------------------------------------------------------------------------------------------
# count_distinct, first/last, stddev/variance, quantile, having, streaming.
# ---------------------------------------------------------------------------------------------

NEW_OPS = {
    "nd_v": {"op": "count_distinct", "field": "v"},
    "nd_name": {"op": "count_distinct", "field": "name"},
    "first_name": {"op": "first", "field": "name", "order_by": "ts"},
    "last_name": {"op": "last", "field": "name", "order_by": "ts"},
    "first_v": {"op": "first", "field": "v", "order_by": "ts"},
    "last_v": {"op": "last", "field": "v", "order_by": "ts"},
    "sd": {"op": "stddev", "field": "v"},
    "var_pop": {"op": "variance", "field": "v", "ddof": 0},
    "med": {"op": "quantile", "field": "v", "q": 0.5},
    "p": {"op": "quantile", "field": "v", "q": [0.25, 0.9]},
}
NEW_COLUMNS = ["nd_v", "nd_name", "first_name", "last_name", "first_v", "last_v", "sd", "var_pop", "med",
               "p_p25", "p_p90"]


def hand_batches() -> list[pa.RecordBatch]:
    """Nulls in every column, ties in ts, a group without values (c) and a null key."""
    return [
        pa.record_batch({"k": ["a", "a", "b", "a", "b"], "v": [3.0, 1.0, None, 3.0, 2.0],
                         "ts": [5, 2, 7, None, 7], "name": ["x", "y", "z", None, "w"]}),
        pa.record_batch({"k": ["a", "b", "c", "a", None, "b"], "v": [None, 2.0, None, 8.0, 5.0, 6.0],
                         "ts": [1, 9, 4, 2, 3, 9], "name": ["q", "w", None, "p", "n", "zz"]}),
    ]


# Worked by hand from hand_batches():
#  a: v = 3, 1, 3, 8 (mean 3.75, squared deviations 26.75); names x@5, y@2, q@1, p@2 (null name skipped);
#     first_v: ts 2 holds 1 and 8 -> the smaller, 1; last_v: ts 5 -> 3 (a null ts loses)
#  b: v = 2, 2, 6 (mean 10/3, squared deviations 32/3); names z@7, w@7 (tie -> w), w@9, zz@9 (tie -> zz)
#  c: only nulls; None (the null key): v = 5 alone
HAND_EXPECTED = {
    "a": [3, 4, "q", "x", 1.0, 3.0, math.sqrt(26.75 / 3), 26.75 / 4, 3.0, 1.0, 8.0],
    "b": [2, 3, "w", "zz", 2.0, 6.0, math.sqrt(32 / 3 / 2), 32 / 3 / 3, 2.0, 2.0, 6.0],
    "c": [0, 0, None, None, None, None, None, None, None, None, None],
    None: [1, 1, "n", "n", 5.0, 5.0, None, 0.0, 5.0, 5.0, 5.0],
}
# the whole input: v = 3, 1, 2, 3, 2, 8, 5, 6 (mean 3.75, squared deviations 39.5); sorted 1 2 2 3 3 5 6 8
HAND_GLOBAL = [6, 8, "q", "zz", 1.0, 6.0, math.sqrt(39.5 / 7), 39.5 / 8, 3.0, 2.0, 8.0]


def assert_row(got: dict, expected: list, where: str) -> None:
    for col, want in zip(NEW_COLUMNS, expected, strict=True):
        value = got[col]
        if isinstance(want, float):
            assert value is not None and math.isclose(value, want, rel_tol=1e-12), (where, col, value, want)
        else:
            assert value == want, (where, col, value, want)


def test_new_ops_hand_computed_with_nulls_ties_and_empty_groups():
    outputs, result = run_many(hand_batches(), {
        "keyed": {"keys": ["k"], "aggregations": NEW_OPS},
        "keyed_p3": {"keys": ["k"], "aggregations": NEW_OPS, "partitions": 3},
        "global": {"aggregations": NEW_OPS},
    })
    for label in ("keyed", "keyed_p3"):
        out, letters = outputs[label]
        assert not letters
        assert out.column_names == ["k", *NEW_COLUMNS]
        rows = {r["k"]: r for r in out.to_pylist()}
        assert set(rows) == set(HAND_EXPECTED)
        for key, expected in HAND_EXPECTED.items():
            assert_row(rows[key], expected, f"{label}/{key}")
        schema = out.schema
        assert schema.field("nd_v").type == pa.int64() and schema.field("first_name").type == pa.string()
        assert schema.field("first_v").type == pa.float64() and schema.field("p_p90").type == pa.float64()
    out, _ = outputs["global"]
    assert out.num_rows == 1
    assert_row(out.to_pylist()[0], HAND_GLOBAL, "global")
    m = summarise(result)["keyed"]
    assert (m["records_in"], m["records_out"], m["records_grouped"]) == (11, 4, 7)


def test_new_ops_over_empty_input():
    outputs, _ = run_many([], {
        "keyed": {"keys": ["k"], "aggregations": NEW_OPS},
        "global": {"aggregations": NEW_OPS},
    }, typed_empty=True)
    assert outputs["keyed"][0] is None
    row = outputs["global"][0].to_pylist()[0]
    assert row == {"nd_v": 0, "nd_name": 0, **{c: None for c in NEW_COLUMNS[2:]}}


def test_first_last_keep_the_value_type_and_break_ties_by_value():
    aggs = parse_aggregations({
        "f": {"op": "first", "field": "d", "order_by": "o"}, "l": {"op": "last", "field": "d", "order_by": "o"}})
    import datetime as dt
    day = [dt.date(2024, 1, i) for i in (3, 1, 2, 9)]
    table = pa.table({"o": pa.array(["b", "a", "a", None]), "d": pa.array(day, pa.date32())})
    # the same rows in any order and split anyhow give the same answer
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]):
        shuffled = table.take(order)
        pieces = [partials.partial_aggregate(shuffled.slice(i, 2), [], aggs) for i in (0, 2)]
        out = partials.finalize(partials.merge_partials(pieces, [], aggs), [], aggs).to_pylist()
        # first: o = 'a' holds Jan 1 and Jan 2 -> Jan 1; last: o = 'b' (the null o loses) -> Jan 3
        assert out == [{"f": dt.date(2024, 1, 1), "l": dt.date(2024, 1, 3)}]


def test_numeric_new_ops_send_bad_values_to_the_dlq():
    batches = [pa.record_batch({"k": ["a", "a", "a", "b"], "x": ["1", "abc", " 3 ", "4"]})]
    outputs, result = run_many(batches, {
        "num": {"keys": ["k"], "aggregations": {
            "sd": {"op": "stddev", "field": "x"}, "m": {"op": "quantile", "field": "x", "q": 1},
            "nd": {"op": "count_distinct", "field": "x"}}},
    })
    out, letters = outputs["num"]
    rows = {r["k"]: r for r in out.to_pylist()}
    # the bad row leaves every aggregation of the step, count_distinct included
    assert rows["a"] == {"k": "a", "sd": math.sqrt(2.0), "m": 3.0, "nd": 2}
    assert rows["b"] == {"k": "b", "sd": None, "m": 4.0, "nd": 1}
    assert len(letters) == 1 and letters[0]["record"] == {"k": "a", "x": "abc"}
    assert letters[0]["error_type"] == "type" and "sd=stddev(x)" in letters[0]["error"]
    m = summarise(result)["num"]
    assert (m["records_in"], m["records_out"], m["records_failed"], m["records_grouped"]) == (4, 2, 1, 1)


@pytest.mark.parametrize("spec, column", [
    ({"op": "count_distinct", "field": "tags"}, "tags"),
    ({"op": "first", "field": "k", "order_by": "tags"}, "tags"),
    ({"op": "stddev", "field": "tags"}, "tags"),
])
def test_unusable_types_fail_loudly(spec, column):
    batches = [pa.record_batch({"k": ["a"], "tags": pa.array([[1, 2]])})]
    with pytest.raises(Exception, match=column) as info:
        run_many(batches, {"bad": {"keys": ["k"], "aggregations": {"x": spec}}})
    assert "allowed" in str(info.value)


def random_events(n: int = 5000, seed: int = 23) -> pa.Table:
    table = random_table(n, seed)
    rng = np.random.default_rng(seed + 1)
    return table.append_column("ts", pa.array(rng.permutation(n), pa.int64()))  # unique: no ties


CROSS_OPS = {
    "nd_amount": {"op": "count_distinct", "field": "amount"},
    "nd_name": {"op": "count_distinct", "field": "name"},
    "first_name": {"op": "first", "field": "name", "order_by": "ts"},
    "last_amount": {"op": "last", "field": "amount", "order_by": "ts"},
    "sd": {"op": "stddev", "field": "amount"},
    "var_qty": {"op": "variance", "field": "qty", "ddof": 0},
    "q": {"op": "quantile", "field": "amount", "q": [0.1, 0.5, 0.99]},
}


def cross_reference(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """pandas/numpy reference of CROSS_OPS (quantile: numpy's inverted_cdf, exact for groups <= 2048)."""
    grouped = df.groupby(keys, dropna=False)
    by_ts = df.sort_values("ts")

    def edge(field: str, last: bool):
        rows = by_ts[by_ts[field].notna()].groupby(keys, dropna=False)[field]
        return rows.last() if last else rows.first()

    def quantile(q: float):
        return grouped["amount"].agg(lambda s: np.quantile(s.dropna(), q, method="inverted_cdf"))

    out = pd.DataFrame({
        "nd_amount": grouped["amount"].nunique(), "nd_name": grouped["name"].nunique(),
        "first_name": edge("name", False), "last_amount": edge("amount", True),
        "sd": grouped["amount"].std(ddof=1), "var_qty": grouped["qty"].var(ddof=0),
        "q_p10": quantile(0.1), "q_p50": quantile(0.5), "q_p99": quantile(0.99),
    })
    return out.reset_index()


def test_new_ops_randomised_against_pandas_and_numpy():
    table = random_events()
    df = table.to_pandas()
    outputs, _ = run_many(table.to_batches(max_chunksize=700), {
        "two_keys": {"keys": ["cat", "sub"], "aggregations": CROSS_OPS},
        "one_key": {"keys": "cat", "aggregations": CROSS_OPS, "partitions": 3},
    })
    for label, keys in (("two_keys", ["cat", "sub"]), ("one_key", ["cat"])):
        got = outputs[label][0].to_pandas().sort_values(keys, na_position="last").reset_index(drop=True)
        ref = cross_reference(df, keys).sort_values(keys, na_position="last").reset_index(drop=True)
        assert len(got) == len(ref)
        assert got["first_name"].tolist() == ref["first_name"].tolist()
        for col in ("nd_amount", "nd_name", "last_amount", "sd", "var_qty", "q_p10", "q_p50", "q_p99"):
            np.testing.assert_allclose(got[col].astype(float), ref[col].astype(float), rtol=1e-9, err_msg=col)


def test_partials_of_new_ops_merge_to_the_same_result():
    table = random_events(3000, seed=5)
    aggs = parse_aggregations({**ALL_OPS, **CROSS_OPS})
    keys = ["cat", "sub"]
    coerced = {f: partials.coerce_numeric(table.column(f).combine_chunks())[0] for f in partials.numeric_fields(aggs)}
    whole = partials.finalize(partials.partial_aggregate(table, keys, aggs, coerced), keys, aggs)
    pieces = [partials.partial_aggregate(table.slice(s, 250), keys, aggs, {f: v.slice(s, 250) for f, v in
                                                                             coerced.items()})
              for s in range(0, table.num_rows, 250)]
    coder = ArrowTableCoder()
    level1 = [coder.decode(coder.encode(partials.merge_partials(pieces[i:i + 5], keys, aggs)))
              for i in range(0, len(pieces), 5)]
    merged = partials.finalize(partials.merge_partials(level1[::-1], keys, aggs), keys, aggs)
    a = whole.sort_by([(k, "ascending") for k in keys]).to_pylist()
    b = merged.sort_by([(k, "ascending") for k in keys]).to_pylist()
    for x, y in zip(a, b, strict=True):
        for col, value in x.items():
            if isinstance(value, float):
                assert math.isclose(value, y[col], rel_tol=1e-12), col
            else:
                assert value == y[col], col


def test_stddev_merge_is_numerically_stable():
    rng = np.random.default_rng(3)
    values = 1e9 + rng.normal(0, 1, 20_000)  # sum of squares would lose every digit here
    aggs = parse_aggregations({"sd": {"op": "stddev", "field": "x"}, "v0": {"op": "variance", "field": "x",
                                                                              "ddof": 0}})
    pieces = [partials.partial_aggregate(pa.table({"x": chunk}), [], aggs) for chunk in np.array_split(values, 37)]
    out = partials.finalize(partials.merge_partials(pieces, [], aggs), [], aggs).to_pylist()[0]
    assert math.isclose(out["sd"], np.std(values, ddof=1), rel_tol=1e-6)
    assert math.isclose(out["v0"], np.var(values), rel_tol=1e-6)


def _rank_check(data: np.ndarray, q: float, value: float, eps: float) -> tuple[float, float]:
    """Checks that ``value`` is an input value and an eps-approximate q-quantile of ``data``, also
    against numpy: between ``numpy.quantile`` (inverted_cdf) at q - eps and q + eps. Returns the
    fractions of values below / up to ``value``."""
    ordered = np.sort(data)
    n = len(ordered)
    below = np.searchsorted(ordered, value, "left") / n
    upto = np.searchsorted(ordered, value, "right") / n
    assert upto > below, f"{value} is not an input value"
    assert below <= q + eps + 1e-12 and upto >= q - eps - 1e-12, (q, value, below, upto, eps)
    low, high = (np.quantile(data, min(1.0, max(0.0, p)), method="inverted_cdf") for p in (q - eps, q + eps))
    assert low <= value <= high, (q, value, low, high)
    return below, upto


@pytest.mark.parametrize("k", [128, sketch.DEFAULT_SKETCH_SIZE])
def test_quantile_sketch_rank_error_on_100k_values(k):
    """100k skewed values in three groups, sketched per batch and merged in a shuffled two-level tree."""
    rng = np.random.default_rng(42)
    n = 100_000
    values = np.round(rng.lognormal(3, 1, n), 6)
    group = rng.integers(0, 3, n)
    qs = [0.0, 0.001, 0.01, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999, 1.0]
    aggs = parse_aggregations({"q": {"op": "quantile", "field": "x", "q": qs, "sketch_size": k}})
    table = pa.table({"g": group, "x": values})
    bounds = np.sort(rng.choice(np.arange(1, n), 40, replace=False))
    pieces = [partials.partial_aggregate(table.slice(s, e - s), ["g"], aggs)
              for s, e in zip([0, *bounds], [*bounds, n], strict=True)]
    order = rng.permutation(len(pieces))
    level1 = [partials.merge_partials([pieces[i] for i in order[j:j + 7]], ["g"], aggs) for j in range(0, 41, 7)]
    merged = partials.merge_partials(level1, ["g"], aggs)
    state = merged.column(partials.partial_states(aggs)[1].column).combine_chunks()
    out = partials.finalize(merged, ["g"], aggs).to_pylist()
    worst = 0.0
    for row, kept in zip(out, state.field("v").value_lengths().to_pylist(), strict=True):
        data = values[group == row["g"]]
        eps = sketch.rank_error_bound(len(data), k)
        levels = math.floor(math.log2(len(data) / k)) + 2
        assert 0 < eps < 0.1 and kept <= (k + 1) * levels  # compacted: at most k + 1 values per level
        for q in qs:
            below, upto = _rank_check(data, q, row[f"q_p{partials.percent_label(q)}"], eps)
            worst = max(worst, below - q, q - upto)
        assert row["q_p0"] == data.min() and row["q_p100"] == data.max()
    assert worst <= sketch.rank_error_bound(n // 3, k)
    print(f"k={k}: bound {sketch.rank_error_bound(n // 3, k):.4%}, worst observed rank error {worst:.4%}")


def test_quantile_is_exact_up_to_the_sketch_size_in_any_merge_order():
    rng = np.random.default_rng(9)
    data = rng.integers(0, 40, 2048).astype(float)  # many ties
    qs = [0.0, 0.05, 0.25, 0.5, 0.9, 0.999, 1.0]
    aggs = parse_aggregations({"q": {"op": "quantile", "field": "x", "q": qs}})
    results = set()
    for seed in range(3):
        shuffled = np.random.default_rng(seed).permutation(data)
        pieces = [partials.partial_aggregate(pa.table({"x": c}), [], aggs) for c in np.array_split(shuffled, 9)]
        row = partials.finalize(partials.merge_partials(pieces, [], aggs), [], aggs).to_pylist()[0]
        results.add(tuple(row.values()))
    assert results == {tuple(float(np.quantile(data, q, method="inverted_cdf")) for q in qs)}


def test_quantile_pipeline_on_100k_values():
    rng = np.random.default_rng(7)
    values = rng.normal(100, 15, 100_000)
    values[rng.random(values.size) < 0.01] = np.nan  # NaN is left out like null
    table = pa.table({"x": values})
    outputs, _ = run_many(table.to_batches(max_chunksize=4096), {
        "q": {"aggregations": {"p": {"op": "quantile", "field": "x", "q": [0.5, 0.95, 0.99]}}}})
    row = outputs["q"][0].to_pylist()[0]
    data = values[~np.isnan(values)]
    eps = sketch.rank_error_bound(len(data), sketch.DEFAULT_SKETCH_SIZE)
    for q, col in ((0.5, "p_p50"), (0.95, "p_p95"), (0.99, "p_p99")):
        _rank_check(data, q, row[col], eps)


# ----- having ---------------------------------------------------------------------------------

HAVING_INPUT = [pa.record_batch({"k": ["a", "a", "b"], "v": [1.0, 2.0, 5.0]}),
                pa.record_batch({"k": ["c", "c", "c"], "v": [1.0, 1.0, None]})]


def test_having_forms_filter_groups_and_count_them():
    aggs = {"orders": {"op": "count"}, "total": {"op": "sum", "field": "v"}}
    outputs, result = run_many(HAVING_INPUT, {
        "text": {"keys": ["k"], "aggregations": aggs, "having": "orders >= 2"},
        "struct": {"keys": ["k"], "aggregations": aggs, "having": {"field": "orders", "op": ">=", "value": 2}},
        "list": {"keys": ["k"], "aggregations": aggs,
                 "having": [{"field": "k", "op": "not in", "value": ["a"]}, "total > 2"]},
        "global": {"aggregations": aggs, "having": "orders > 100"},
    })
    for label in ("text", "struct"):
        out, letters = outputs[label]
        assert sorted(out.column("k").to_pylist()) == ["a", "c"] and not letters
    assert outputs["list"][0].to_pylist() == [{"k": "b", "orders": 1, "total": 5.0}]
    assert outputs["global"][0] is None
    metrics = summarise(result)
    expected = {"text": (6, 2, 1, 3), "struct": (6, 2, 1, 3), "list": (6, 1, 2, 3), "global": (6, 0, 1, 5)}
    for label, (n_in, n_out, n_filtered, n_grouped) in expected.items():
        m = metrics[label]
        assert (m["records_in"], m["records_out"], m["records_filtered"], m["records_grouped"]) == \
            (n_in, n_out, n_filtered, n_grouped), label
        assert m["records_in"] == m["records_out"] + m["records_filtered"] + m["records_grouped"] + m["records_failed"]


def test_having_errors_send_the_group_to_the_dlq():
    outputs, result = run_many(HAVING_INPUT, {
        "div": {"keys": ["k"], "aggregations": {"n": {"op": "count"}, "s": {"op": "sum", "field": "v"}},
                "having": "s / (n - 1) > 1"},
    })
    out, letters = outputs["div"]
    # a: 3 / 1 = 3 kept; c: 2 / 2 = 1 filtered; b: 5 / 0 raises -> dead letter
    assert out.to_pylist() == [{"k": "a", "n": 2, "s": 3.0}]
    assert len(letters) == 1
    letter = letters[0]
    assert letter["record"] == {"k": "b", "n": 1, "s": 5.0} and letter["step"] == "div"
    assert letter["error_type"] == "validation" and "having" in letter["error"] and "divide by zero" in letter["error"]
    m = summarise(result)["div"]
    assert (m["records_in"], m["records_out"], m["records_filtered"], m["records_failed"], m["records_grouped"]) == \
        (6, 1, 1, 1, 3)


@pytest.mark.parametrize("having, message", [
    ("foo > 1", "not output columns"),
    ("orders + 1", "not a condition"),
    ("orders >", "not a valid expression"),
    ("import os", "not a valid expression"),
    ({"field": "orders", "op": "=>", "value": 2}, "'=>' is not allowed"),
    ({"field": "orders", "op": ">=", "value": None}, "is null"),
    ({"field": "orders", "op": "is null", "value": 3}, "takes no value"),
    ({"field": "orders", "op": "in", "value": []}, "non-empty list"),
    ({"field": "orders", "op": ">=", "value": 2, "extra": 1}, "unknown keys"),
    ({"field": "nope", "op": ">=", "value": 2}, "not output columns"),
    (5, "not allowed"),
    ([], "not allowed"),
])
def test_having_validation(having, message):
    with pytest.raises(ValueError, match=message):
        GroupByAggregate(["k"], {"orders": {"op": "count"}}, having=having)


@pytest.mark.parametrize("aggregations, message", [
    ({"x": {"op": "first", "field": "v"}}, "needs order_by"),
    ({"x": {"op": "last", "field": "v", "order_by": ""}}, "needs order_by"),
    ({"x": {"op": "sum", "field": "v", "order_by": "t"}}, "applies to op first, last only"),
    ({"x": {"op": "stddev", "field": "v", "ddof": 2}}, "ddof"),
    ({"x": {"op": "variance", "field": "v", "ddof": True}}, "ddof"),
    ({"x": {"op": "quantile", "field": "v"}}, "needs q"),
    ({"x": {"op": "quantile", "field": "v", "q": 1.5}}, "1.5 is not allowed"),
    ({"x": {"op": "quantile", "field": "v", "q": []}}, "not allowed"),
    ({"x": {"op": "quantile", "field": "v", "q": [0.5, 0.5]}}, "repeats"),
    ({"x": {"op": "quantile", "field": "v", "q": "p50"}}, "'p50' is not allowed"),
    ({"x": {"op": "quantile", "field": "v", "q": 0.5, "sketch_size": 10}}, "sketch_size"),
    ({"x": {"op": "count_distinct"}}, "needs a field"),
    ({"x_p50": {"op": "max", "field": "v"}, "x": {"op": "quantile", "field": "v", "q": [0.5]}}, "repeat"),
    ({"x": {"op": "stddev", "field": "v", "q": 0.5}}, "applies to op quantile only"),
])
def test_new_op_validation(aggregations, message):
    with pytest.raises(ValueError, match=message):
        GroupByAggregate(["k"], aggregations)


def test_registry_streaming_and_new_config_forms():
    entry = registry.lookup("GroupByAggregate")
    ctx = registry.BuildContext(step_name="by_cat", run=RunContext(pipeline="t", run_id="r"))
    config = GroupByAggregateConfig(keys="cat", aggregations=[
        {"field": "amount", "op": "quantile", "q": [0.5, 0.95], "as": "lat"},
        {"field": "name", "op": "last", "order_by": "ts"},
        {"field": "amount", "op": "stddev", "ddof": 0, "as": "sd"},
        {"op": "count", "as": "orders"}], having={"field": "orders", "op": ">=", "value": 2})
    assert entry.supports_streaming(config)
    transform = entry.factory(config, ctx)
    assert transform.having == "col('orders') >= 2"
    assert [a.output_names for a in transform.aggregations] == [("lat_p50", "lat_p95"), ("last_name",), ("sd",),
                                                                ("orders",)]
    assert transform.aggregations[1].order_by == "ts" and transform.aggregations[2].ddof == 0
    assert "having" in transform.display_data()
    mapping = GroupByAggregateConfig(keys=["cat"], aggregations={"n": {"op": "count_distinct", "field": "a"}},
                                     having="n > 1")
    assert entry.factory(mapping, ctx).having == "n > 1"
    with pytest.raises(ValueError, match="order_by"):
        GroupByAggregateConfig(keys=["cat"], aggregations={"x": {"op": "first", "field": "a"}})
    with pytest.raises(ValueError, match="not output columns"):
        GroupByAggregateConfig(keys=["cat"], aggregations={"n": {"op": "count"}}, having="m > 1")


def test_aggregation_objects_round_trip():
    aggs = parse_aggregations({"p": {"op": "quantile", "field": "x", "q": [0.5, 0.9], "sketch_size": 256},
                               "f": {"op": "first", "field": "x", "order_by": "t"},
                               "v": {"op": "variance", "field": "x", "ddof": 0}})
    assert parse_aggregations(aggs) == aggs
    assert partials.describe(aggs) == "p=quantile(x, q=[0.5, 0.9]), f=first(x, order_by=t), v=variance(x, ddof=0)"
    assert all(partials.is_internal_name(s.column) for s in partials.partial_states(aggs))


# ----- streaming ------------------------------------------------------------------------------


class _TagWindow(beam.DoFn):
    """(window start, timestamp, row) for each output row."""

    def process(self, batch, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam):
        for row in batch.to_pylist():
            yield int(window.start), float(timestamp), tuple(sorted(row.items(), key=lambda kv: kv[0]))


def test_streaming_windows_with_test_stream():
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.testing.test_stream import TestStream
    from apache_beam.testing.util import assert_that, equal_to
    from apache_beam.transforms.window import FixedWindows, TimestampedValue

    def batch(at, keys, values, text=None):
        """A batch with event time ``at``; "t" orders its rows (at * 100 + row), "w" is v as text."""
        text = text or [str(v) for v in values]
        rows = {"k": keys, "v": values, "w": text, "t": [at * 100 + i for i in range(len(keys))]}
        return TimestampedValue(pa.record_batch(rows), at)

    stream = (TestStream()
              .advance_watermark_to(0)
              .add_elements([batch(10, ["a", "a", "b"], [1.0, 2.0, 5.0])])
              .add_elements([batch(50, ["a", "b"], [4.0, 9.0], ["4", "x"])])
              .advance_watermark_to(60)  # closes [0, 60)
              .add_elements([batch(70, ["a", "b"], [7.0, 1.0])])
              .advance_watermark_to(200)  # [120, 180) stays empty
              .add_elements([batch(230, ["b"], [2.0])])
              .advance_watermark_to_infinity())
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    p = TestPipeline(options=options)
    windowed = (p | stream.with_output_types(pa.RecordBatch)
                | beam.WindowInto(FixedWindows(60)))
    keyed, dlq = windowed | "keyed" >> GroupByAggregate(["k"], {
        "s": {"op": "sum", "field": "v"}, "sd": {"op": "stddev", "field": "w", "ddof": 0},
        "last": {"op": "last", "field": "v", "order_by": "t"}}, having="s > 1")
    total, _ = windowed | "global" >> GroupByAggregate([], {
        "n": {"op": "count"}, "m": {"op": "quantile", "field": "v", "q": 0.5}})
    assert_that(keyed | "tag_keyed" >> beam.ParDo(_TagWindow()), equal_to([
        (0, 59.999999, (("k", "a"), ("last", 4.0), ("s", 7.0), ("sd", math.sqrt(14 / 9)))),
        (0, 59.999999, (("k", "b"), ("last", 5.0), ("s", 5.0), ("sd", 0.0))),
        (60, 119.999999, (("k", "a"), ("last", 7.0), ("s", 7.0), ("sd", 0.0))),
        # window 60: b sums to 1, filtered by having
        (180, 239.999999, (("k", "b"), ("last", 2.0), ("s", 2.0), ("sd", 0.0))),
    ]), label="keyed")
    assert_that(total | "tag_global" >> beam.ParDo(_TagWindow()), equal_to([
        (0, 59.999999, (("m", 4.0), ("n", 5))),  # one row per non-empty window, none for [120, 180)
        (60, 119.999999, (("m", 1.0), ("n", 2))),
        (180, 239.999999, (("m", 2.0), ("n", 1))),
    ]), label="global")
    assert_that(dlq | beam.Map(lambda d: (d["record"]["w"], d["error_type"])), equal_to([("x", "type")]),
                label="dlq")
    p.run().wait_until_finish()
