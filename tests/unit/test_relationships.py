"""Key and relationship detection (beam_etl.ml.relationships) on a generated star schema."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pytest

from beam_etl.ml.relationships import (
    DEFAULT_FK_THRESHOLD,
    detect_relationships,
    is_own_key,
    name_similarity,
    singular,
    tokens,
)
from beam_etl.ml.schema_infer import InferOptions, profile_all

TRUE_FKS = {
    ("sales", "customer_id", "customers", "id"),
    ("sales", "product_id", "products", "product_id"),
    ("sales", "store_id", "stores", "store_id"),
    ("sales", "date_key", "dates", "date_key"),
    ("products", "category_id", "categories", "id"),
    ("customers", "segment_id", "segments", "segment_id"),
    ("returns", "sale_id", "sales", "sale_id"),
    ("returns", "cust_id", "customers", "id"),
}


def star_schema(seed: int = 0, n: int = 20_000) -> dict[str, pa.Table]:
    """A fact table with 4 dimension keys, a snowflake and look-alike integer columns that are no keys."""
    rng = np.random.default_rng(seed)
    days = [dt.date(2024, 1, 1) + dt.timedelta(d) for d in range(366)]
    date_keys = np.array([int(d.strftime("%Y%m%d")) for d in days])
    sales = pa.table({
        "sale_id": np.arange(1, n + 1),
        "customer_id": rng.integers(1, 1001, n),
        "product_id": rng.integers(1, 1001, n),
        "store_id": rng.integers(1, 51, n),
        "date_key": rng.choice(date_keys, n),
        # look-alikes: small integers that all lie inside some dimension's id range
        "quantity": rng.integers(1, 11, n),
        "discount_pct": rng.integers(0, 51, n),
        "units_returned": rng.integers(0, 4, n),
        "line_no": rng.integers(1, 21, n),
        "promo_rank": rng.integers(1, 51, n),
        "amount_cents": rng.integers(100, 500_000, n),
    })
    returned = np.sort(rng.choice(np.arange(1, n + 1), 500, replace=False))
    return {
        "sales": sales,
        "customers": pa.table({"id": np.arange(1, 1001), "name": [f"customer {i}" for i in range(1000)],
                               "age": rng.integers(18, 90, 1000), "segment_id": rng.integers(1, 6, 1000)}),
        "products": pa.table({"product_id": np.arange(1, 1001), "sku": [f"SKU-{i:05d}" for i in range(1000)],
                              "price_cents": rng.integers(100, 100_000, 1000),
                              "category_id": rng.integers(1, 21, 1000)}),
        "stores": pa.table({"store_id": np.arange(1, 51), "city": [f"city {i}" for i in range(50)],
                            "size_rank": rng.permutation(np.arange(1, 51))}),
        "categories": pa.table({"id": np.arange(1, 21), "label": [f"category {i}" for i in range(20)]}),
        "segments": pa.table({"segment_id": np.arange(1, 6), "label": [f"segment {i}" for i in range(5)]}),
        "dates": pa.table({"date_key": date_keys, "day": pa.array(days), "weekday": [d.weekday() for d in days]}),
        "returns": pa.table({"return_id": np.arange(1, 501), "sale_id": returned,
                             "cust_id": rng.integers(1, 1001, 500), "reason_code": rng.integers(1, 6, 500)}),
    }


def _as_text(tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """The same tables as a CSV reader with every column as text would give them."""
    return {name: pa.table({c: t.column(c).cast(pa.string()) for c in t.column_names}) for name, t in tables.items()}


def _found(report) -> set[tuple[str, str, str, str]]:
    return {(f.child_table, f.child_column, f.parent_table, f.parent_column) for f in report.foreign_keys}


def _precision_recall(found: set, truth: set) -> tuple[float, float]:
    hits = len(found & truth)
    return (hits / len(found) if found else 1.0), hits / len(truth)


@pytest.mark.parametrize("variant", ["typed", "text", "small_sketch"])
def test_star_schema_foreign_keys_exactly(variant):
    tables = star_schema()
    kwargs = {}
    if variant == "text":
        tables = _as_text(tables)
    if variant == "small_sketch":  # containment from bottom-k sketches, not exact sets
        kwargs["distinct_sketch"] = 256
    report = detect_relationships(tables, **kwargs)
    found = _found(report)
    assert found == TRUE_FKS, (found - TRUE_FKS, TRUE_FKS - found)
    assert _precision_recall(found, TRUE_FKS) == (1.0, 1.0)
    ranked = [f.score for f in report.foreign_keys]
    assert ranked == sorted(ranked, reverse=True) and min(ranked) >= DEFAULT_FK_THRESHOLD
    for fk in report.foreign_keys:
        e = fk.evidence
        assert e["containment"] >= 0.95 and e["parent_uniqueness"] == 1.0 and e["type_compatibility"] == 1.0
        assert e["name_similarity"] >= 0.8


def test_look_alikes_score_below_the_threshold_with_their_evidence():
    report = detect_relationships(star_schema(), threshold=0.0)
    by_pair = {(f.child_table, f.child_column, f.parent_table, f.parent_column): f for f in report.foreign_keys}
    quantity = by_pair[("sales", "quantity", "products", "product_id")]
    assert quantity.evidence["containment"] == 1.0  # 1..10 lies inside 1..1000 ...
    assert quantity.evidence["range_span"] < 0.02 and quantity.score < 0.1  # ... but spans 1% of it
    # same-range surrogate keys: customer ids are inside products' ids too; the name decides
    wrong_dim = by_pair[("sales", "customer_id", "products", "product_id")]
    assert wrong_dim.evidence["containment"] == 1.0 and wrong_dim.evidence["named_after"] == "customers.id"
    false_scores = [f.score for key, f in by_pair.items() if key not in TRUE_FKS]
    assert max(false_scores) < DEFAULT_FK_THRESHOLD
    assert min(by_pair[key].score for key in TRUE_FKS) - max(false_scores) > 0.2


def test_primary_key_candidates():
    tables = star_schema()
    tables["order_lines"] = pa.table({"order_id": np.repeat(np.arange(1, 101), 3), "line_no": np.tile([1, 2, 3], 100),
                                      "qty": np.ones(300, np.int64)})
    report = detect_relationships(tables)
    best = {}
    for k in report.primary_keys:
        best.setdefault(k.table, k)
    assert {t: k.columns for t, k in best.items()} == {
        "sales": ("sale_id",), "customers": ("id",), "products": ("product_id",), "stores": ("store_id",),
        "categories": ("id",), "segments": ("segment_id",), "dates": ("date_key",), "returns": ("return_id",),
        "order_lines": ("order_id", "line_no")}
    assert all(k.exact for k in report.primary_keys)
    assert not any(k.columns == ("amount_cents",) for k in report.primary_keys)  # near-unique is no key
    skus = [k for k in report.primary_keys if k.columns == ("sku",)]
    assert skus and skus[0].score < best["products"].score


def test_orphans_lower_the_score_but_keep_a_named_foreign_key():
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 1001, 5000)
    ids[:100] = rng.integers(5000, 6000, 100)  # 2% of rows point at missing customers
    report = detect_relationships({"orders": pa.table({"customer_id": ids}),
                                   "customers": pa.table({"id": np.arange(1, 1001)})})
    (fk,) = report.foreign_keys
    assert 0.9 < fk.evidence["containment"] < 1.0 and fk.score < 1.0


@pytest.mark.parametrize("sketch", [10_000, 256])
def test_profiles_are_accepted_instead_of_tables(sketch):
    """Mergeable profiles (e.g. from InferSchema partials) suffice; with 256 hashes every containment is estimated."""
    tables = star_schema()
    options = InferOptions(semantic=False, sample_size=0, distinct_sketch=sketch)
    profiles = {name: profile_all(t, options) for name, t in tables.items()}
    assert _found(detect_relationships(profiles)) == TRUE_FKS


def test_report_serialises():
    report = detect_relationships(star_schema())
    data = json.loads(report.to_json())
    assert data["tables"]["sales"] == 20_000 and len(data["foreign_keys"]) == len(TRUE_FKS)
    assert "sales.customer_id -> customers.id" in report.format_text()


@pytest.mark.parametrize(("child", "table", "column", "low", "high"), [
    ("customer_id", "customers", "id", 1.0, 1.0),
    ("customer_id", "customer", "customer_id", 1.0, 1.0),
    ("CustomerID", "dim_customers", "id", 1.0, 1.0),
    ("cust_id", "customers", "id", 0.8, 0.8),
    ("billing_customer_id", "customers", "id", 0.9, 0.9),
    ("category_id", "categories", "id", 1.0, 1.0),
    ("customer", "customers", "id", 0.5, 0.5),
    ("quantity", "products", "id", 0.0, 0.0),
    ("store_rank", "stores", "id", 0.0, 0.0),
    ("store_id", "stores", "size_rank", 0.0, 0.3),
    ("customer_id", "products", "product_id", 0.0, 0.0),
])
def test_name_similarity(child, table, column, low, high):
    assert low <= name_similarity(child, table, column) <= high


def test_name_helpers():
    assert tokens("CustomerID") == ["customer", "id"] and tokens("order-line_no") == ["order", "line", "no"]
    assert [singular(w) for w in ("categories", "addresses", "status", "sales", "boxes")] == [
        "category", "address", "status", "sale", "box"]
    assert is_own_key("customers", "id") and is_own_key("customers", "customer_id")
    assert not is_own_key("orders", "customer_id")
