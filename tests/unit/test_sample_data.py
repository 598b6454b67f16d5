"""The bundled quickstart CSV: present, small, and messy exactly as its README says."""

from __future__ import annotations

import csv
import io
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.csv as pacsv
import pytest

DATA = Path(__file__).resolve().parents[2] / "beam_etl" / "data"
CSV_PATH = DATA / "customers_orders.csv"
README_PATH = DATA / "customers_orders.README.md"
COLUMNS = ["order_id", "customer_id", "name", "email", "phone", "city", "country", "amount", "quantity",
           "order_date", "category", "status"]
DATE_PATTERNS = {
    "iso_date": r"\d{4}-\d{2}-\d{2}",
    "dd_mm_yyyy": r"\d{2}/\d{2}/\d{4}",
    "month_name": r"[A-Z][a-z]+ \d{1,2}, \d{4}",
    "iso_datetime_z": r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z",
    "yyyymmdd": r"\d{8}",
}


@pytest.fixture(scope="module")
def counts() -> dict[str, int]:
    """The ``| `key` | count |`` rows of the README."""
    found = dict(re.findall(r"^\| `(\w+)` \| (\d+) \|", README_PATH.read_text(encoding="utf-8"), re.M))
    return {k: int(v) for k, v in found.items()}


@pytest.fixture(scope="module")
def text() -> str:
    return CSV_PATH.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def lines(text) -> list[str]:
    """Physical data lines (header dropped)."""
    return text.split("\n")[1:-1]


@pytest.fixture(scope="module")
def records(text) -> list[list[str]]:
    """Records as a whole-file CSV parser sees them (header dropped)."""
    return list(csv.reader(io.StringIO(text, newline="")))[1:]


@pytest.fixture(scope="module")
def good(records) -> list[dict[str, str]]:
    return [dict(zip(COLUMNS, r, strict=True)) for r in records if len(r) == len(COLUMNS)]


def _is_number(value: str, kind: type) -> bool:
    try:
        kind(value)
    except ValueError:
        return False
    return True


def test_file_is_commit_sized(text, lines, counts):
    assert CSV_PATH.stat().st_size < 600_000
    assert text.splitlines()[0] == ",".join(COLUMNS)
    assert 2_500 <= len(lines) <= 4_000
    assert len(lines) == counts["data_lines"]


def test_readme_documents_every_defect(counts):
    for key in ("rows_with_a_null", "exact_duplicates", "near_duplicates_same_order_id",
                "near_duplicates_new_order_id", "malformed_lines", "amount_outliers"):
        assert counts[key] > 0, key
    n = counts["data_lines"]
    assert 0.03 <= counts["rows_with_a_null"] / n <= 0.07
    assert 0.03 <= counts["exact_duplicates"] / n <= 0.05
    assert 0.03 <= (counts["near_duplicates_same_order_id"] + counts["near_duplicates_new_order_id"]) / n <= 0.05
    assert 0.005 <= counts["malformed_lines"] / n <= 0.015
    assert 0.005 <= counts["amount_outliers"] / n <= 0.015


def test_malformed_lines_fail_a_line_by_line_parser(lines, counts):
    bad = 0
    for line in lines:
        try:
            fields = next(csv.reader([line], strict=True))
        except csv.Error:
            bad += 1
            continue
        bad += len(fields) != len(COLUMNS)
    assert bad == counts["too_few_columns"] + counts["too_many_columns"] + counts["unbalanced_quote_lines"]


def test_malformed_lines_fail_whole_file_parsers(records, counts):
    expected = counts["too_few_columns"] + counts["too_many_columns"] + counts["unbalanced_quote_lines"] // 2
    assert sum(len(r) != len(COLUMNS) for r in records) == expected

    invalid = []

    def handler(row):
        invalid.append(row)
        return "skip"

    table = pacsv.read_csv(CSV_PATH, parse_options=pacsv.ParseOptions(invalid_row_handler=handler))
    assert len(invalid) == expected
    assert table.num_rows == len(records) - expected


def test_unbalanced_quotes_come_in_pairs(lines, counts):
    odd = [i for i, line in enumerate(lines) if line.count('"') % 2]
    assert len(odd) == counts["unbalanced_quote_lines"]
    assert all(odd[k + 1] == odd[k] + 1 for k in range(0, len(odd), 2))


def test_non_numeric_amounts_and_quantities(good, counts):
    amounts = [r["amount"] for r in good if r["amount"] and not _is_number(r["amount"], float)]
    quantities = [r["quantity"] for r in good if r["quantity"] and not _is_number(r["quantity"], int)]
    assert len(amounts) == counts["non_numeric_amount"]
    assert "12,50€" in amounts and "abc" in amounts
    assert len(quantities) == counts["non_numeric_quantity"]
    assert "two" in quantities


def test_exact_duplicates(lines, counts):
    repeats = sum(c - 1 for c in Counter(lines).values())
    assert repeats == counts["exact_duplicates"]


def test_nulls_per_column(good, counts):
    for column in COLUMNS:
        assert sum(r[column] == "" for r in good) == counts[f"null_{column}"], column
    for required in ("order_id", "customer_id", "amount"):
        assert counts[f"null_{required}"] > 0
    assert sum("" in r.values() for r in good) == counts["rows_with_a_null"]


def test_near_duplicates_sharing_an_order_id(lines, good, counts):
    exact_seen: set[str] = set()
    unique_lines = []
    for line in lines:
        if line not in exact_seen:
            exact_seen.add(line)
            unique_lines.append(line)
    unique = [dict(zip(COLUMNS, r, strict=True)) for r in csv.reader(unique_lines) if len(r) == len(COLUMNS)]
    by_id: dict[str, list[dict]] = defaultdict(list)
    for row in unique:
        if row["order_id"]:
            by_id[row["order_id"].strip().upper()].append(row)
    near = sum(len(rows) - 1 for rows in by_id.values())
    assert near == counts["near_duplicates_same_order_id"]
    padded = sum(1 for r in unique if r["order_id"] and r["order_id"] != r["order_id"].strip().upper())
    assert padded == counts["near_duplicates_same_order_id_with_case_or_padding"]
    # the copies differ from their original, but only a little
    for rows in by_id.values():
        for other in rows[1:]:
            assert other != rows[0]
            assert other["customer_id"] == rows[0]["customer_id"] and other["amount"] == rows[0]["amount"]


def test_near_duplicates_with_a_new_order_id(good, counts):
    first_id: dict[tuple[str, str], str] = {}
    rekeyed = 0
    for row in good:
        if not (row["order_id"] and row["customer_id"] and row["amount"]):
            continue
        key = (row["customer_id"], row["amount"])
        oid = row["order_id"].strip().upper()
        if key in first_id and first_id[key] != oid:
            rekeyed += 1
        first_id.setdefault(key, oid)
    # malformed-value rows reuse an order's customer and amount too, so allow a few extra
    assert counts["near_duplicates_new_order_id"] <= rekeyed <= counts["near_duplicates_new_order_id"] + 10


def test_amount_outliers(good, counts):
    by_category: dict[str, list[float]] = defaultdict(list)
    for r in good:
        if r["amount"] and r["category"] and _is_number(r["amount"], float):
            by_category[r["category"]].append(float(r["amount"]))
    outliers = 0
    for values in by_category.values():
        median = statistics.median(values)
        outliers += sum(v > 20 * median for v in values)
    assert outliers == counts["amount_outliers"]


def test_mixed_date_formats(good, counts):
    found = Counter()
    for r in good:
        if r["order_date"]:
            kind = next(k for k, p in DATE_PATTERNS.items() if re.fullmatch(p, r["order_date"]))
            found[kind] += 1
    for kind in DATE_PATTERNS:
        assert found[kind] == counts[f"date_{kind}"], kind
        assert found[kind] > 0
