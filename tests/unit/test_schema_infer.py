"""Schema inference (beam_etl.ml.schema_infer): storage types, statistics, merges, output model."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from beam_etl.ml import _infer_semantic
from beam_etl.ml._infer_sketch import KMVSketch, text_values, value_hashes
from beam_etl.ml.schema_infer import (
    ColumnProfile,
    InferOptions,
    InferredSchema,
    empty_profile,
    infer_schema,
    merge,
    profile,
)

DATA = Path(__file__).resolve().parents[2] / "beam_etl" / "data"
UTC = dt.UTC
D = decimal.Decimal


def field(values, name="x", **options):
    """The FieldSchema of one string (or typed) column."""
    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, pa.string())
    return infer_schema(pa.table({name: arr}), semantic=False, **options).field(name)


# ----------------------------------------------------------------- storage types from text

@pytest.mark.parametrize(("values", "storage", "lo", "hi"), [
    (["1", "-2", "300", None, " 4 "], "int", -2, 300),
    (["1.5", "2.25", "1e3", "-0.5", "7"], "float", -0.5, 1000.0),
    (["10.50", "3.25", "100.00", "-7.10"], "decimal", D("-7.10"), D("100.00")),
    (["2024-03-05", "05/03/2024", "March 5, 2024", "5 Mar 2024", "2024/03/06", "20240307"], "date",
     dt.date(2024, 3, 5), dt.date(2024, 3, 7)),
    (["2024-03-05 10:20:00", "2024-03-05T11:00", "2024-03-06T00:00:00.123456"], "datetime",
     dt.datetime(2024, 3, 5, 10, 20), dt.datetime(2024, 3, 6, 0, 0, 0, 123456)),
    (["2024-03-05T10:20:00Z", "2024-03-05T12:20:00+02:00", "2024-03-05 10:20:00-0500"], "datetime_tz",
     dt.datetime(2024, 3, 5, 10, 20, tzinfo=UTC), dt.datetime(2024, 3, 5, 15, 20, tzinfo=UTC)),
    (["10:30", "23:59:59", "07:05:00.250", "1:15 PM"], "time", dt.time(7, 5, 0, 250000), dt.time(23, 59, 59)),
    (["true", "False", "yes", "NO", "y", "n", "T", "f"], "bool", False, True),
    (["02139", "10001", "94105"], "string", "02139", "94105"),
    (["ORD-1", "ORD-2"], "string", "ORD-1", "ORD-2"),
])
def test_storage_types_from_text(values, storage, lo, hi):
    f = field(values)
    assert (f.storage_type, f.min, f.max) == (storage, lo, hi)
    assert type(f.min) is type(lo) and f.confidence == 1.0


def test_decimal_keeps_precision_and_scale():
    f = field(["10.50", "3.25", "12345.00", "-7.10"])
    assert f.details["precision"] == 7 and f.details["scale"] == 2
    assert f.arrow_type() == pa.decimal128(7, 2)
    mixed_scales = field(["1.5", "2.25", "3.125", "4.0625"])
    assert mixed_scales.storage_type == "float"  # no fixed number of decimals


def test_json_objects_and_arrays():
    f = field(['{"a": 1}', '[1, 2]', '{"b": {"c": null}}', None])
    assert f.storage_type == "json" and f.details["json_kinds"] == {"object": 2, "array": 1}
    assert field(["{not json}", "{}"]).storage_type == "string"


def test_dates_day_first_or_month_first_by_evidence():
    day_first = field(["05/03/2024", "25/12/2023", "01/02/2024"])
    assert day_first.details["day_first"] is True
    assert (day_first.min, day_first.max) == (dt.date(2023, 12, 25), dt.date(2024, 3, 5))
    month_first = field(["05/03/2024", "12/25/2023", "01/02/2024"])
    assert month_first.details["day_first"] is False
    assert (month_first.min, month_first.max) == (dt.date(2023, 12, 25), dt.date(2024, 5, 3))
    assert month_first.details["formats"] == {"%m/%d/%Y": 3}


def test_dates_are_checked_against_the_calendar():
    assert field(["2024-02-29", "2023-02-29"], threshold=0.5).details["candidates"]["date"] == 0.5
    assert field(["2023-02-29"]).storage_type == "string"
    assert field(["2024-01-01T24:00:00"]).storage_type == "string"


def test_datetime_zones():
    zoned = field(["2024-03-05T10:20:00Z", "2024-03-05T12:20:00+02:00"])
    assert zoned.details["offsets"] == {"+00:00": 1, "+02:00": 1}
    assert zoned.arrow_type() == pa.timestamp("us", tz="UTC")
    naive = field(["2024-03-05T10:20:00", "2024-03-05"])
    assert naive.storage_type == "datetime" and naive.arrow_type() == pa.timestamp("us")
    assert naive.min == dt.datetime(2024, 3, 5)  # a date widens to midnight
    mixed = field(["2024-03-05T10:20:00Z", "2024-03-05T10:20:00", "2024-03-05T12:00:00"])
    assert mixed.storage_type == "datetime" and mixed.details["zoned_share"] == pytest.approx(1 / 3, abs=1e-6)


def test_bool_words_and_digits():
    f = field(["yes", "no", "Y", "N", None])
    assert f.details["true_count"] == 2 and f.details["false_count"] == 2 and f.null_count == 1
    assert field(["1", "0", "1"]).storage_type == "int"  # 1/0 stay integers


def test_leading_zero_numbers_stay_strings_even_when_rare():
    values = [str(10000 + i) for i in range(99)] + ["02139"]
    f = field(values)
    assert f.storage_type == "string" and f.details["leading_zeros"] == 1
    assert field(["0", "0.5", "10"]).storage_type == "decimal"  # a lone 0 or 0.5 is no leading zero


def test_integers_beyond_int64_stay_strings():
    assert field(["1234567890123456789012", "1"]).storage_type == "string"


def test_threshold_decides_between_type_and_string():
    almost = [str(i) for i in range(99)] + ["n/a?"]
    f = field(almost)
    assert f.storage_type == "int" and f.confidence == pytest.approx(0.99)
    assert (f.min, f.max) == (0, 98)  # bounds cover the values that parse
    dirty = [str(i) for i in range(97)] + ["x", "y", "z"]
    g = field(dirty)
    assert g.storage_type == "string" and g.details["candidates"]["int"] == pytest.approx(0.97)
    assert field(dirty, threshold=0.95).storage_type == "int"


def test_narrowest_type_wins_and_types_widen():
    assert field(["1", "2", "3.5"]).storage_type == "decimal"  # ints fit a fixed-scale decimal
    assert field(["1", "2", "3.5e2"]).storage_type == "float"
    assert field(["2024-03-05", "20240306"]).storage_type == "date"
    assert field(["20240305", "20240306"]).storage_type == "int"  # compact dates alone read as integers


def test_blank_strings_are_nulls_and_all_null_is_null():
    f = field(["1", "  ", "", None])
    assert f.storage_type == "int" and f.null_count == 3 and f.details["blank_strings"] == 2
    g = field(pa.nulls(3, pa.string()))
    assert g.storage_type == "null" and g.null_share == 1.0 and g.arrow_type() == pa.null()


def test_string_lengths_and_lexicographic_bounds():
    f = field(["bb", "a", "dddd", None])
    assert (f.length_min, f.length_max, f.length_mean) == (1, 4, pytest.approx(7 / 3))
    assert (f.min, f.max) == ("a", "dddd") and f.cardinality == 3 and f.cardinality_exact


# ----------------------------------------------------------------- typed Arrow columns

def test_storage_types_from_arrow_types():
    t = pa.table({
        "b": pa.array([True, False, None]),
        "i8": pa.array([1, -3, None], pa.int8()),
        "u64": pa.array([0, 2**63 + 5, 7], pa.uint64()),
        "f32": pa.array([1.5, float("nan"), None], pa.float32()),
        "dec": pa.array([D("1.250"), D("-3.500"), None], pa.decimal128(10, 3)),
        "d": pa.array([dt.date(2024, 1, 2), dt.date(2023, 5, 6), None]),
        "ts": pa.array([dt.datetime(2024, 1, 1, 12), None, dt.datetime(2024, 1, 2)], pa.timestamp("ns")),
        "tz": pa.array([dt.datetime(2024, 1, 1, 12)] * 3, pa.timestamp("s", tz="Europe/Paris")),
        "t": pa.array([dt.time(1, 2), dt.time(3, 4), None], pa.time32("s")),
        "s": pa.array([{"a": 1}, None, {"a": 2}]),
        "l": pa.array([[1], [2, 3], None]),
        "bin": pa.array([b"a", b"b", None]),
        "dur": pa.array([1, 2, 3], pa.duration("s")),
        "dict": pa.array(["7", "8", "7"]).dictionary_encode(),
        "n": pa.nulls(3),
    })
    s = infer_schema(t, semantic=False)
    got = {f.name: f.storage_type for f in s.fields}
    assert got == {"b": "bool", "i8": "int", "u64": "int", "f32": "float", "dec": "decimal", "d": "date",
                   "ts": "datetime", "tz": "datetime_tz", "t": "time", "s": "struct", "l": "list", "bin": "binary",
                   "dur": "duration", "dict": "int", "n": "null"}
    assert (s.field("u64").min, s.field("u64").max) == (0, 2**63 + 5)
    assert s.field("dec").details == {**s.field("dec").details, "precision": 10, "scale": 3}
    assert s.field("f32").details["nan_count"] == 1
    assert s.field("tz").details["timezone"] == "Europe/Paris"
    schema = s.to_arrow_schema()
    assert schema.field("dec").type == pa.decimal128(10, 3)
    assert schema.field("tz").type == pa.timestamp("us", tz="Europe/Paris")
    assert schema.field("s").type == t.schema.field("s").type and schema.field("l").type == t.schema.field("l").type
    assert schema.field("t").type == pa.time64("us") and schema.field("dict").type == pa.int64()
    assert schema.field("b").metadata[b"beam_etl.storage_type"] == b"bool"


# ----------------------------------------------------------------- merges

def _mixed_table(n: int, seed: int = 3) -> pa.Table:
    rng = np.random.default_rng(seed)
    days = np.datetime64("2024-01-01") + rng.integers(0, 365, n).astype("timedelta64[D]")
    dates = np.datetime_as_string(days).astype(object)
    dates[::7] = [d.replace("-", "") for d in dates[::7]]
    nulls = rng.random(n) < 0.05
    amount = np.array([f"{x:.2f}" for x in rng.random(n) * 500], dtype=object)
    amount[nulls] = None
    return pa.table({
        "id": pa.array(np.arange(n)),
        "code": pa.array([f"C{i % 997:05d}" for i in range(n)]),
        "amount": pa.array(amount, pa.string()),
        "day": pa.array(dates, pa.string()),
        "score": pa.array(rng.normal(size=n)),
        "flag": pa.array(rng.choice(["yes", "no", None], n), pa.string()),
    })


def test_merge_of_partial_profiles_equals_profile_of_the_whole():
    table = _mixed_table(5000)
    options = InferOptions(semantic=False, distinct_sketch=1024, sample_size=50)
    whole = profile(table, options)
    cuts = [0, 7, 1200, 1201, 3333, 5000]
    parts = [profile(table.slice(a, b - a), options) for a, b in zip(cuts, cuts[1:], strict=False)]
    left_fold = empty_profile(options)
    for part in parts:
        left_fold = merge(left_fold, part)
    right_fold = empty_profile(options)
    for part in reversed(parts):
        right_fold = merge(part, right_fold)
    expected = whole.finish()
    assert left_fold.finish() == expected
    assert right_fold.finish().to_dict() == {**expected.to_dict(), "fields": [
        right_fold.finish().field(f.name).to_dict() for f in expected.fields]}
    for name, col in whole.columns.items():
        assert left_fold.columns[name].sample.values == col.sample.values
        assert np.array_equal(left_fold.columns[name].sketch.hashes, col.sketch.hashes)
    assert not expected.field("id").cardinality_exact  # 5000 distinct > sketch of 1024: estimated
    assert expected.field("id").cardinality == pytest.approx(5000, rel=0.1)
    assert expected.field("code").cardinality == 997 and expected.field("code").cardinality_exact
    assert expected.field("day").storage_type == "date"
    assert expected.field("amount").storage_type == "decimal" and expected.field("amount").null_count > 0


def test_columns_missing_from_some_batches_count_as_nulls():
    a = pa.table({"x": ["1", "2"]})
    b = pa.table({"x": ["3"], "y": ["2024-01-01"]})
    s = merge(profile(a), profile(b)).finish()
    assert [f.name for f in s.fields] == ["x", "y"] and s.rows == 3
    y = s.field("y")
    assert y.null_count == 2 and y.null_share == pytest.approx(2 / 3) and y.storage_type == "date"


def test_types_of_different_batches_widen():
    a = profile(pa.table({"v": pa.array([1, 2], pa.int64())}), InferOptions(semantic=False))
    b = profile(pa.table({"v": pa.array([2.5], pa.float64())}), InferOptions(semantic=False))
    c = profile(pa.table({"v": pa.array(["7"], pa.string())}), InferOptions(semantic=False))
    f = merge(merge(a, b), c).finish().field("v")
    assert f.storage_type == "float" and (f.min, f.max) == (1.0, 7.0)
    assert f.details["arrow_types"] == ["double", "int64", "string"] and f.cardinality == 4


# ----------------------------------------------------------------- sketches

def test_kmv_estimate_and_containment():
    big = KMVSketch(1024).add(value_hashes(text_values(pa.array(np.arange(200_000)))))
    assert not big.exact and big.estimate() == pytest.approx(200_000, rel=0.1)
    half = KMVSketch(1024).add(value_hashes(text_values(pa.array(np.arange(0, 200_000, 2)))))
    share, rested_on = half.containment(big)
    assert share == 1.0 and rested_on > 200
    share, _ = big.containment(half)
    assert share == pytest.approx(0.5, abs=0.08)
    ints = KMVSketch(64).add(value_hashes(text_values(pa.array([1, 2, 3]))))
    strings = KMVSketch(64).add(value_hashes(text_values(pa.array(["1", "2", "3", "4"]))))
    floats = KMVSketch(64).add(value_hashes(text_values(pa.array([1.0, 2.0]))))
    assert ints.containment(strings) == (1.0, 3) and floats.containment(ints) == (1.0, 2)


def test_value_sample_is_bounded_and_deterministic():
    options = InferOptions(semantic=False, sample_size=20)
    col = ColumnProfile.from_array("x", pa.array([f"v{i}" for i in range(500)]), options)
    assert len(col.sample.values) == 20 and len(set(col.sample.values)) == 20
    again = ColumnProfile.from_array("x", pa.array([f"v{i}" for i in reversed(range(500))]), options)
    assert sorted(again.sample.values) == sorted(col.sample.values)


# ----------------------------------------------------------------- output model

def test_output_model_dict_json_arrow_and_table():
    t = pa.table({"amount": ["1.50", "2.00", None], "day": ["2024-01-01", "2024-01-02", "2024-01-03"],
                  "name": ["Ada", "Linus", "Grace"]})
    s = infer_schema(t, semantic=False)
    data = json.loads(s.to_json())
    assert data["rows"] == 3 and [f["name"] for f in data["fields"]] == ["amount", "day", "name"]
    amount = data["fields"][0]
    assert amount["storage_type"] == "decimal" and amount["min"] == "1.50" and amount["nullable"] is True
    assert data["fields"][1]["max"] == "2024-01-03"
    back = InferredSchema.from_dict(data)
    assert back.to_arrow_schema().types == s.to_arrow_schema().types
    assert s.to_arrow_schema().types == [pa.decimal128(3, 2), pa.date32(), pa.string()]
    assert not s.to_arrow_schema().field("day").nullable
    text = s.format_table()
    assert "decimal(3,2)" in text and "amount" in text and "3 rows" in text
    fields = s.to_fields_table()
    assert fields.num_rows == 3 and fields.column("arrow_type").to_pylist()[0] == "decimal128(3, 2)"
    assert json.loads(fields.column("min").to_pylist()[1]) == "2024-01-01"


def test_options_are_validated():
    with pytest.raises(ValueError, match="threshold"):
        InferOptions(threshold=0.2)
    with pytest.raises(ValueError, match="distinct_sketch"):
        InferOptions(distinct_sketch=2)


def test_bundled_orders_csv():
    from beam_etl.schema import read_csv_as_text

    table, notes = read_csv_as_text(str(DATA / "customers_orders.csv"))
    s = infer_schema(table, semantic=False)
    types = {f.name: f.storage_type for f in s.fields}
    assert types["amount"] == "decimal" and types["quantity"] == "int" and types["customer_id"] == "string"
    assert types["order_date"] == "datetime"  # dates in 5 layouts, 10% with a time and Z
    od = s.field("order_date")
    assert od.details["formats"] == {"%Y-%m-%d": 1926, "%d/%m/%Y": 392, "%B %d, %Y": 331,
                                     "%Y-%m-%dT%H:%M:%S%z": 329, "%Y%m%d": 257}  # customers_orders.README.md
    assert s.field("amount").details["scale"] == 2 and s.field("amount").confidence > 0.99
    assert s.field("country").cardinality == 12 and notes


# ----------------------------------------------------------------- semantic types

def test_semantic_adapter_reports_none_with_a_warning_when_the_module_is_missing(monkeypatch):
    monkeypatch.setattr(_infer_semantic, "MODULE", "beam_etl.ml._no_such_semantic_module")
    monkeypatch.setattr(_infer_semantic, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match="semantic types are not reported"):
        f = infer_schema(pa.table({"email": ["a@b.co", "c@d.io"]})).field("email")
    assert f.semantic_type is None and f.semantic_confidence is None and f.storage_type == "string"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per process, not per column
        infer_schema(pa.table({"x": ["1"]}))


def test_semantic_adapter_survives_a_failing_detector(monkeypatch):
    class Broken:
        @staticmethod
        def detect_semantic_type(values, name=None):
            raise RuntimeError("boom")

    monkeypatch.setattr(_infer_semantic.importlib, "import_module", lambda name: Broken)
    monkeypatch.setattr(_infer_semantic, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match="boom"):
        f = infer_schema(pa.table({"x": ["a"]})).field("x")
    assert f.semantic_type is None


def test_semantic_types_with_the_detector():
    pytest.importorskip("beam_etl.ml.semantic")  # written by another change; this test waits for it
    emails = [f"user{i}@example{i % 7}.com" for i in range(200)]
    f = infer_schema(pa.table({"contact": emails})).field("contact")
    assert f.semantic_type == "email" and f.storage_type == "string"
    assert 0 < f.semantic_confidence <= 1
