"""Select, Rename, Cast, Filter, WithColumns, MapBatches, MapRecords and the expression language."""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable
from typing import Any

import apache_beam as beam
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from pydantic import ValidationError

from beam_etl import registry
from beam_etl.ops.dlq import ENVELOPE_KEYS
from beam_etl.ops.metrics import summarise
from beam_etl.transforms.base import RecordError, tag_source
from beam_etl.transforms.mapping import (
    Cast,
    CastConfig,
    Filter,
    FilterConfig,
    MapBatches,
    MapBatchesConfig,
    MapRecords,
    MapRecordsConfig,
    Rename,
    Select,
    SelectConfig,
    WithColumns,
    cast_array,
    compile_expression,
    evaluate,
    load_callable,
    parse_cast_type,
    parse_datetime_strings,
)

# ---------------------------------------------------------------------------------- helpers


def batch(rows: list[dict[str, Any]], source: str = "in.csv", first_row: int = 1) -> pa.RecordBatch:
    return tag_source(pa.RecordBatch.from_pylist(rows), source, first_row)


def letters_match(expected: list[tuple[str, list[str]]]) -> Callable[[list[dict[str, Any]]], None]:
    """Matcher: one dead letter per (error_type, substrings of error), any order; checks the envelope."""

    def match(actual: list[dict[str, Any]]) -> None:
        if len(actual) != len(expected):
            raise BeamAssertException(f"expected {len(expected)} dead letters, got {len(actual)}: {actual}")
        remaining = list(actual)
        for error_type, parts in expected:
            hit = next((a for a in remaining if a["error_type"] == error_type
                        and all(p in a["error"] for p in parts)), None)
            if hit is None:
                raise BeamAssertException(f"no dead letter {error_type} {parts} in {remaining}")
            remaining.remove(hit)
        for letter in actual:
            if set(letter) != set(ENVELOPE_KEYS):
                raise BeamAssertException(f"envelope keys {sorted(letter)} != {sorted(ENVELOPE_KEYS)}")
            if letter["pipeline"] != "test" or letter["run_id"] != "test-run" or letter["attempt"] != 1:
                raise BeamAssertException(f"run context not in the envelope: {letter}")
            if not letter["source"].startswith("in.csv") or not letter["failed_at"] or not letter["exception"]:
                raise BeamAssertException(f"source/failed_at/exception missing: {letter}")
            if not isinstance(letter["record"], dict):
                raise BeamAssertException(f"record is not the original row: {letter}")

    return match


def count_is(n: int) -> Callable[[list[Any]], None]:
    def match(actual: list[Any]) -> None:
        if len(actual) != n:
            raise BeamAssertException(f"expected {n} elements, got {len(actual)}")

    return match


def run_step(step: beam.PTransform, batches: list[pa.RecordBatch], rows: Any, letters: Any,
             name: str, expanded: int = 0) -> dict[str, int]:
    """Runs ``step`` with assert_that on rows and dead letters; checks input = output + filtered + DLQ.

    ``expanded`` is the number of extra rows a one-to-many step (MapRecords lists) adds.
    """
    p = test_pipeline.TestPipeline()
    out, dlq = p | "Create" >> beam.Create(batches) | step
    row_values = out | "Rows" >> beam.FlatMap(lambda b: b.to_pylist())
    assert_that(row_values, rows if callable(rows) else equal_to(rows), label="CheckRows")
    assert_that(dlq, letters if callable(letters) else equal_to(letters), label="CheckDlq")
    result = p.run()
    result.wait_until_finish()
    counts = summarise(result)[name]
    total_in = sum(b.num_rows for b in batches)
    assert counts["records_in"] == total_in
    assert total_in + expanded == counts["records_out"] + counts["records_filtered"] + counts["records_failed"], counts
    return counts


def entry(name: str) -> registry.Entry:
    try:
        found = registry.lookup(name)
    except ModuleNotFoundError:  # other builtin modules may not exist yet
        found = registry._TABLE.get(name)
    assert found is not None
    return found


ORDERS = [
    {"id": 1, "amount": 10.0, "quantity": 2, "status": "paid", "name": "Ada"},
    {"id": 2, "amount": -5.0, "quantity": 1, "status": "paid", "name": "bob"},
    {"id": 3, "amount": 7.5, "quantity": 4, "status": "open", "name": "Alan"},
    {"id": 4, "amount": None, "quantity": 3, "status": "paid", "name": None},
]

# ---------------------------------------------------------------------------------- Select / Rename


def test_select_keeps_fields_in_order():
    counts = run_step(Select(["name", "id"], step="sel"), [batch(ORDERS)],
                      [{"name": r["name"], "id": r["id"]} for r in ORDERS], [], "sel")
    assert counts["records_out"] == 4


def test_select_missing_field_sends_rows_to_dlq():
    message = "Select: field 'email' is missing from the input (columns: id, amount, quantity, status, name)"
    counts = run_step(Select(["id", "email"], step="sel"), [batch(ORDERS[:2]), batch(ORDERS[2:], first_row=3)], [],
                      letters_match([("validation", [message])] * 4), "sel")
    assert counts["records_failed"] == 4


def test_select_ignore_missing_and_config_errors():
    run_step(Select(["id", "email"], ignore_missing=True, step="sel"), [batch(ORDERS[:1])], [{"id": 1}], [], "sel")
    with pytest.raises(ValueError, match=r"Select.fields: \[\] is not a non-empty list"):
        Select([])
    with pytest.raises(ValueError, match=r"Select.fields: \['id'\] listed more than once"):
        Select(["id", "id"])
    with pytest.raises(ValidationError, match="listed more than once"):
        SelectConfig.model_validate({"fields": ["a", "a"]})


def test_rename_renames_and_dead_letters_clashes():
    rows = [{"id": 1, "amount": 2.0}]
    run_step(Rename({"amount": "total"}, step="ren"), [batch(rows)], [{"id": 1, "total": 2.0}], [], "ren")
    run_step(Rename({"amount": "id"}, step="ren"), [batch(rows)], [],
             letters_match([("validation", ["two columns named 'id'"])]), "ren")
    run_step(Rename({"price": "cost"}, step="ren"), [batch(rows)], [],
             letters_match([("validation", ["field 'price' is missing"])]), "ren")
    with pytest.raises(ValueError, match=r"Rename.fields \(new names\): \['x'\] listed more than once"):
        Rename({"a": "x", "b": "x"})


# ---------------------------------------------------------------------------------- Cast


def test_cast_types_and_dead_letters_name_column_and_value():
    rows = [
        {"id": "1", "amount": "12.5", "paid": "yes", "day": "2024-01-05", "price": "9.99",
         "at": "2024-01-05T10:00:00Z"},
        {"id": " 2 ", "amount": "abc", "paid": "no", "day": "05/01/2024", "price": "1", "at": "2024-01-05 11:30:00"},
        {"id": "x3", "amount": "1e3", "paid": "maybe", "day": "31.12.2023", "price": "1.234", "at": "bad"},
        {"id": "", "amount": None, "paid": "TRUE", "day": "Jan 7, 2024", "price": None, "at": None},
    ]
    step = Cast({"id": "int", "amount": "float", "paid": "bool", "day": "date", "price": "decimal(6,2)",
                 "at": "timestamp"}, step="cast")
    expected = [
        {"id": 1, "amount": 12.5, "paid": True, "day": dt.date(2024, 1, 5), "price": decimal.Decimal("9.99"),
         "at": dt.datetime(2024, 1, 5, 10, 0)},
        {"id": None, "amount": None, "paid": True, "day": dt.date(2024, 1, 7), "price": None, "at": None},
    ]
    counts = run_step(step, [batch(rows)], expected, letters_match([
        ("type", ["column 'amount' value 'abc' cannot be cast to float"]),
        ("type", ["column 'id' value 'x3' cannot be cast to int", "column 'paid' value 'maybe' cannot be cast to bool",
                  "column 'price' value '1.234' cannot be cast to decimal(6,2)",
                  "column 'at' value 'bad' cannot be cast to timestamp"]),
    ]), "cast")
    assert counts["records_failed"] == 2


def test_cast_dead_letter_keeps_original_record():
    def check(letters: list[dict[str, Any]]) -> None:
        assert letters[0]["record"] == {"n": "x"}, letters
        assert letters[0]["step"] == "cast"
        assert letters[0]["source"] == "in.csv (batch from row 1, row 1 after earlier steps)"

    run_step(Cast({"n": "int"}, step="cast"), [batch([{"n": "1"}, {"n": "x"}])], [{"n": 1}], check, "cast")


def test_cast_on_error_null_and_formats():
    rows = [{"d": "05/01/2024", "n": "x"}, {"d": "2024-01-05", "n": "2"}]
    step = Cast({"d": "date", "n": "int"}, formats={"d": ["%d/%m/%Y"]}, on_error="null", step="cast")
    run_step(step, [batch(rows)], [{"d": dt.date(2024, 1, 5), "n": None}, {"d": None, "n": 2}], [], "cast")


def test_cast_numbers_and_timestamps_with_zone():
    values = pa.array([1.0, 2.5, None])
    result, failed = cast_array(values, parse_cast_type("int"))
    assert result.to_pylist() == [1, None, None] and failed.tolist() == [False, True, False]
    texts = pa.array(["2024-01-05T10:00:00+02:00", "2024-01-05"])
    stamps, failed = cast_array(texts, parse_cast_type("timestamp(UTC)"))
    assert stamps.type == pa.timestamp("us", "UTC")
    assert [v.replace(tzinfo=None) for v in stamps.to_pylist()] == [dt.datetime(2024, 1, 5, 8), dt.datetime(2024, 1, 5)]
    assert not failed.any()
    as_text, _ = cast_array(pa.array([1, 2]), parse_cast_type("string"))
    assert as_text.to_pylist() == ["1", "2"]


def test_datetime_parsing_mixed_formats_and_rolled_over_days():
    parsed = parse_datetime_strings(pa.array([
        "2024-02-29", "2024-02-30", "02/30/2024", "12/31/2024", "31/12/2024", "5 January 2024", "2024-01-05T10:00:00.5",
        "20240105", None, "  ",
    ]))
    assert parsed.to_pylist() == [
        dt.datetime(2024, 2, 29), None, None, dt.datetime(2024, 12, 31), dt.datetime(2024, 12, 31),
        dt.datetime(2024, 1, 5), dt.datetime(2024, 1, 5, 10, 0, 0, 500000), dt.datetime(2024, 1, 5), None, None,
    ]


def test_cast_large_batch_is_vectorised_and_isolates_bad_rows():
    rows = [{"n": str(i) if i % 100 else f"bad{i}"} for i in range(5000)]

    def check(letters: list[dict[str, Any]]) -> None:
        assert len(letters) == 50
        assert all(ll["error"].startswith("Cast: column 'n' value 'bad") for ll in letters)

    counts = run_step(Cast({"n": "int"}, step="cast"), [batch(rows)], count_is(4950), check, "cast")
    assert counts["records_out"] == 4950


def test_cast_config_errors():
    with pytest.raises(ValueError, match=r"Cast.fields.n: 'varchar' is not a supported type; allowed: string, int"):
        Cast({"n": "varchar"})
    with pytest.raises(ValueError, match=r"Cast.fields.n: 'decimal\(50,2\)' has precision 50"):
        Cast({"n": "decimal(50,2)"})
    with pytest.raises(ValueError, match=r"Cast.formats.n: formats apply to date/timestamp columns"):
        Cast({"n": "int"}, formats={"n": ["%Y"]})
    with pytest.raises(ValueError, match=r"Cast.formats: 'm' is not one of the cast fields"):
        Cast({"n": "date"}, formats={"m": ["%Y"]})
    with pytest.raises(ValueError, match=r"Cast.formats.n: 'YYYY-MM-DD' is not a strptime format"):
        Cast({"n": "date"}, formats={"n": ["YYYY-MM-DD"]})
    with pytest.raises(ValueError, match=r"Cast.on_error: 'skip' is not allowed; use 'dlq' or 'null'"):
        Cast({"n": "int"}, on_error="skip")
    with pytest.raises(ValueError, match=r"unknown time zone 'Mars/Base'"):
        Cast({"n": "timestamp(Mars/Base)"})
    with pytest.raises(ValidationError, match="is not a supported type"):
        CastConfig.model_validate({"fields": {"n": "varchar"}})


# ---------------------------------------------------------------------------------- expressions


def test_expression_language_compiles_to_arrow_expressions():
    table = pa.RecordBatch.from_pylist([
        {"a": 3, "b": 2, "s": "Apple", "t": dt.date(2024, 1, 2)},
        {"a": -1, "b": 0, "s": None, "t": dt.date(2023, 1, 2)},
    ])
    cases = {
        "a > 0 and s == 'Apple'": [True, False],
        "a in [3, 4]": [True, False],
        "a not in [3]": [False, True],
        "s is None": [False, True],
        "s is not None": [True, False],
        "not (a > 0)": [False, True],
        "lower(s) == 'apple'": [True, None],
        "startswith(s, 'Ap') or endswith(s, 'x')": [True, None],
        "len(s) == 5": [True, None],
        "1 < a <= 3": [True, False],
        "t >= date('2024-01-01')": [True, False],
        "matches(s, '^A.+e$')": [True, None],
        "a * 2 + b": [8, -2],
        "a / nullif(b, 0)": [1.5, None],
        "a if a > 0 else -a": [3, 1],
        "coalesce(s, 'none')": ["Apple", "none"],
        "concat(upper(s), '-', str(a))": ["APPLE-3", None],
        "round(a / 2, 1)": [1.5, -0.5],
        "max(a, b, 0)": [3, 0],
        "col('a') + 1": [4, 0],
    }
    for text, expected in cases.items():
        (values,) = evaluate(table, [compile_expression(text).expression])
        assert values.to_pylist() == expected, text
    assert compile_expression("amount > 0 and status == 'paid'").fields == ("amount", "status")


@pytest.mark.parametrize(("text", "message"), [
    ("a.b", "attribute access in 'a.b'"),
    ("x[0]", "subscripts in 'x[0]'"),
    ("foo(a)", "the function foo() in 'foo(a)'"),
    ("__import__('os')", "the function __import__()"),
    ("lambda: 1", "lambda in 'lambda: 1'"),
    ("a % 2", "the operator Mod in 'a % 2'"),
    ("a in b", "'in' with something other than a literal list"),
    ("a is 1", "'is' with something other than None"),
    ("startswith(s, t)", "a non-literal value where a literal is needed in 't'"),
    ("len(a, b)", "len() with 2 argument(s) (it takes 1)"),
    ("a = 1", "is not a valid expression"),
    ("f'{a}'", "f-strings"),
    ("matches(s, '(')", "invalid regular expression '('"),
])
def test_expression_errors_name_the_unsupported_syntax(text: str, message: str):
    with pytest.raises(ValueError) as err:
        compile_expression(text, "Filter.expression")
    assert message in str(err.value)
    assert str(err.value).startswith("Filter.expression: ")


# ---------------------------------------------------------------------------------- Filter / WithColumns


def test_filter_keeps_matching_rows_and_counts_filtered():
    step = Filter("amount > 0 and status == 'paid'", step="flt")
    counts = run_step(step, [batch(ORDERS[:2]), batch(ORDERS[2:])], [ORDERS[0]], [], "flt")
    assert counts["records_filtered"] == 3 and counts["records_out"] == 1


def test_filter_string_functions_and_membership():
    step = Filter("startswith(lower(name), 'a') and quantity in [2, 4] and len(name) >= 3", step="flt")
    run_step(step, [batch(ORDERS)], [ORDERS[0], ORDERS[2]], [], "flt")


def test_filter_evaluation_errors_go_to_dlq_per_row():
    rows = [{"amount": 10, "qty": 2}, {"amount": 5, "qty": 0}, {"amount": 9, "qty": 3}, {"amount": 1, "qty": 1}]
    counts = run_step(Filter("amount / qty > 2", step="flt"), [batch(rows)], [rows[0], rows[2]],
                      letters_match([("validation", ["divide by zero", "amount=5", "qty=0"])]), "flt")
    assert counts == {**counts, "records_out": 2, "records_filtered": 1, "records_failed": 1}


def test_filter_missing_column_and_type_mismatch_dead_letter_the_batch():
    run_step(Filter("price > 1", step="flt"), [batch(ORDERS[:2])], [],
             letters_match([("validation", ["field 'price' is missing"])] * 2), "flt")
    run_step(Filter("name > 1", step="flt"), [batch(ORDERS[:2])], [],
             letters_match([("type", ["Filter: evaluating 'name > 1' failed", "name='Ada'"]),
                            ("type", ["name='bob'"])]), "flt")


def test_filter_config_errors():
    with pytest.raises(ValueError, match=r"Filter.expression: 'amount \* 2' is not a condition"):
        Filter("amount * 2")
    with pytest.raises(ValidationError, match=r"attribute access \(method calls\) in \"os.system\('x'\)\""):
        FilterConfig.model_validate({"expression": "os.system('x')"})


def test_with_columns_adds_replaces_and_chains():
    step = WithColumns({"total": "amount * quantity", "big": "total > 20", "name": "upper(name)",
                        "one": "1"}, step="wc")
    expected = [
        {**r, "name": r["name"].upper() if r["name"] else None,
         "total": None if r["amount"] is None else r["amount"] * r["quantity"],
         "big": None if r["amount"] is None else r["amount"] * r["quantity"] > 20, "one": 1}
        for r in ORDERS
    ]
    run_step(step, [batch(ORDERS)], expected, [], "wc")


def test_with_columns_overflow_goes_to_dlq():
    rows = [{"a": 2**62}, {"a": 1}]
    run_step(WithColumns({"b": "a * 4"}, step="wc"), [batch(rows)], [{"a": 1, "b": 4}],
             letters_match([("validation", ["overflow", f"a={2**62}"])]), "wc")
    with pytest.raises(ValueError, match=r"WithColumns.columns.b: the function nope\(\)"):
        WithColumns({"b": "nope(a)"})


# ---------------------------------------------------------------------------------- user functions


def double_amount(table: pa.RecordBatch, factor: float = 2.0) -> pa.Table:
    """A MapBatches fn used through its import path."""
    return pa.Table.from_batches([table]).set_column(1, "amount", pc.multiply(table.column("amount"), factor))


def drop_small(df: pd.DataFrame) -> pd.DataFrame:
    if (df["quantity"] == 3).any():
        raise RecordError("quantity 3 is not allowed", "constraint")
    return df[df["quantity"] > 1].assign(big=lambda d: d["quantity"] * 10)


def enrich(record: dict[str, Any], suffix: str = "!") -> Any:
    if record["id"] == 2:
        return None
    if record["id"] == 3:
        return [{"id": 3, "part": "a"}, {"id": 3, "part": "b"}]
    if record["id"] == 4:
        raise RecordError(f"id 4 has no amount (amount={record['amount']!r})", "constraint")
    return {"id": record["id"], "part": record["name"] + suffix}


def test_map_batches_arrow_by_import_path():
    step = MapBatches("tests.unit.test_mapping:double_amount", fn_kwargs={"factor": 3.0}, step="mb")
    expected = [{**r, "amount": None if r["amount"] is None else r["amount"] * 3} for r in ORDERS]
    run_step(step, [batch(ORDERS)], expected, [], "mb")


def test_map_batches_pandas_with_row_fallback_and_filtered_rows():
    step = MapBatches(drop_small, input_format="pandas", step="mb")
    expected = [{**ORDERS[0], "big": 20}, {**ORDERS[2], "big": 40}]
    counts = run_step(step, [batch(ORDERS)], expected,
                      letters_match([("constraint", ["quantity 3 is not allowed"])]), "mb")
    assert counts["records_filtered"] == 1 and counts["records_failed"] == 1


def test_map_records_dict_none_list_and_errors():
    step = MapRecords(enrich, fn_kwargs={"suffix": "?"}, step="mr")

    def rows_ok(rows: list[dict[str, Any]]) -> None:
        assert sorted(rows, key=lambda r: (r["id"], r["part"])) == [
            {"id": 1, "part": "Ada?"}, {"id": 3, "part": "a"}, {"id": 3, "part": "b"}], rows

    counts = run_step(step, [batch(ORDERS)], rows_ok,
                      letters_match([("constraint", ["MapRecords: id 4 has no amount (amount=None)"])]), "mr",
                      expanded=1)
    assert counts["records_filtered"] == 1 and counts["records_failed"] == 1 and counts["records_out"] == 3


def test_map_records_bad_returns_and_inconsistent_types():
    def fn(record: dict[str, Any]) -> Any:
        if record["id"] == 2:
            return 42
        if record["id"] == 5:
            raise KeyError("amount")
        return {"id": record["id"], "v": "text" if record["id"] == 3 else 7}

    rows = [*ORDERS, {"id": 5, "amount": 1.0, "quantity": 1, "status": "paid", "name": "Eve"}]
    run_step(MapRecords(fn, step="mr"), [batch(rows)], [{"id": 1, "v": 7}, {"id": 4, "v": 7}], letters_match([
        ("type", ["fn returned int; expected a dict, None or a list of dicts"]),
        ("validation", ["MapRecords: 'amount'"]),
        ("type", ["output field 'v' value 'text' does not match the type int64 of most records"]),
    ]), "mr")


def test_user_function_config_errors():
    with pytest.raises(ValueError, match=r"fn: 'nomodule' is not an import path; write it as 'package.module:func"):
        load_callable("nomodule")
    with pytest.raises(ValueError, match=r"fn: cannot import module 'no_such_pkg_xyz'"):
        load_callable("no_such_pkg_xyz:f")
    with pytest.raises(ValueError, match=r"has no attribute 'missing'"):
        load_callable("tests.unit.test_mapping:missing")
    with pytest.raises(ValueError, match=r"'tests.unit.test_mapping:ORDERS' is a list, not a callable"):
        load_callable("tests.unit.test_mapping:ORDERS")
    with pytest.raises(ValueError, match=r"MapBatches.input_format: 'polars' is not allowed"):
        MapBatches(double_amount, input_format="polars")
    with pytest.raises(ValueError, match=r"MapRecords.fn: 3 is not callable"):
        MapRecords(3)
    with pytest.raises(ValidationError, match="cannot import module"):
        MapRecordsConfig.model_validate({"fn": "no_such_pkg_xyz:f"})


# ---------------------------------------------------------------------------------- registry


def test_registered_factories_use_the_step_name():
    ctx = registry.BuildContext(step_name="my_step", run=None)
    configs = {
        "Select": {"fields": ["id"]},
        "Rename": {"fields": {"a": "b"}},
        "Cast": {"fields": {"a": "int"}, "formats": {}, "on_error": "null"},
        "Filter": {"expression": "a > 1"},
        "WithColumns": {"columns": {"b": "a + 1"}},
        "MapBatches": {"fn": "tests.unit.test_mapping:double_amount", "input_format": "arrow"},
        "MapRecords": {"fn": "tests.unit.test_mapping:enrich"},
    }
    for name, config in configs.items():
        found = entry(name)
        assert found.kind == "step" and found.summary
        transform = found.factory(found.config_model.model_validate(config), ctx)
        assert transform.step_name() == "my_step"
    with pytest.raises(ValidationError, match="extra"):
        MapBatchesConfig.model_validate({"fn": "tests.unit.test_mapping:double_amount", "bogus": 1})
