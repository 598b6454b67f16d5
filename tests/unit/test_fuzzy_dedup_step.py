"""FuzzyDeduplicator step: clusters with typos merged per strategy, no record lost, config errors."""

from __future__ import annotations

import tempfile

import apache_beam as beam
import pyarrow as pa
import pydantic
import pytest
from apache_beam.testing.util import assert_that, equal_to

from beam_etl import registry
from beam_etl.ops.context import RunContext
from beam_etl.ops.metrics import summarise
from beam_etl.transforms import fuzzy_dedup
from beam_etl.transforms.base import tag_source
from beam_etl.transforms.fuzzy_dedup import FuzzyDeduplicator, FuzzyDeduplicatorConfig
from tests.collect import read_elements, write_element

# Three people entered several times with typos / case / spacing, plus two singletons.
ROWS = [
    # id, name, email, city, quality
    (1, "Amelia Wilson", "amelia.wilson@yahoo.com", "Edinburgh", 2.0),
    (2, "Finn Hoffmann", "finn.hoffmann@gmx.de", "Frankfurt", 5.0),
    (3, "amelia  wilson", "Amelia.Wilson@yahoo.com", "edinburgh", 9.0),   # case/spacing of 1
    (4, "Hugo Dubois", "h.dubois@gmail.com", "Marseille", 1.0),
    (5, "Amelia Wilsen", "amelia.wilson@yahoo.com", "Edinburgh", 4.0),    # typo of 1
    (6, "Fin Hoffman", "finn.hoffmann@gmx.de", "Frankfurt", 1.0),         # typos of 2
    (7, "Mei Kato", "mei.kato@gmail.com", "Osaka", 3.0),
    (8, "Hugo Duboys", "h.dubois@gmail.com", "Marseille", 7.0),           # typo of 4
    (9, "Oliver Brown", "oliver.b@outlook.com", "Leeds", 2.0),
    (10, "Hugo Dubois", "h.dubois@gmail.com", "Marseille", 3.0),          # exact copy of 4
]
CLUSTERS = [{1, 3, 5}, {2, 6}, {4, 8, 10}, {7}, {9}]
CONFIG = {
    "comparisons": [{"field": "name"}, {"field": "email"}, {"field": "city"}],
    "blocking": [{"fields": "city"}, {"fields": ["name"], "transform": "soundex"}],
    "sorted_keys": [{"fields": "email"}],
    "classifier": "threshold",
    "threshold": 0.85,
}


def table() -> pa.Table:
    cols = list(zip(*ROWS, strict=True))
    return pa.table({"id": pa.array(cols[0], pa.int64()), "name": list(cols[1]), "email": list(cols[2]),
                     "city": list(cols[3]), "quality": pa.array(cols[4], pa.float64())})


def batches() -> list[pa.RecordBatch]:
    """Three batches, tagged with their position in the source so the gathered order is stable."""
    t = table()
    return [tag_source(t.slice(s, n).combine_chunks().to_batches()[0], "people.csv", s)
            for s, n in ((0, 4), (4, 3), (7, 3))]


def build(**overrides) -> FuzzyDeduplicator:
    config = FuzzyDeduplicatorConfig(**(CONFIG | overrides))
    entry = registry.lookup("FuzzyDeduplicator")
    assert entry is not None and entry.config_model is FuzzyDeduplicatorConfig
    assert not entry.supports_streaming(config) and entry.regroups_records(config)
    return entry.factory(config, registry.BuildContext("fuzzy", RunContext(pipeline="t", run_id="r", run_dir="/tmp")))


def run(step: FuzzyDeduplicator, data=None) -> tuple[list[dict], dict[str, int]]:
    """Runs the step in a batch pipeline; returns the output rows and the step's metrics."""
    with tempfile.TemporaryDirectory() as out_dir:
        p = beam.Pipeline()
        kept, dlq = p | beam.Create(batches() if data is None else data) | step
        _ = kept | beam.Map(write_element, out_dir)
        assert_that(dlq, equal_to([]), label="no_dead_letters")
        result = p.run()
        result.wait_until_finish()
        out, _ = read_elements(out_dir)
    return ([] if out is None else out.to_pylist()), summarise(result).get("fuzzy", {})


def check_accounting(rows: list[dict], metrics: dict[str, int], n_in: int) -> None:
    """Every input record is either kept or counted as a duplicate of a kept one."""
    assert metrics["records_in"] == n_in
    assert metrics["records_out"] == len(rows)
    assert metrics["records_in"] == metrics["records_out"] + metrics["records_filtered"] + metrics["records_failed"]
    assert metrics["records_failed"] == 0
    assert len(rows) + sum(r["duplicate_count"] for r in rows) == n_in


@pytest.mark.parametrize(("strategy", "extra", "expected_ids"), [
    ("keep_first", {}, {1, 2, 4, 7, 9}),
    ("keep_last", {}, {5, 6, 10, 7, 9}),
    ("keep_best", {"score_column": "quality"}, {3, 2, 8, 7, 9}),
])
def test_strategies_merge_clusters_with_typos(strategy, extra, expected_ids):
    rows, metrics = run(build(strategy=strategy, **extra))
    assert {r["id"] for r in rows} == expected_ids
    sizes = {len(c) - 1 for c in CLUSTERS}
    by_id = {r["id"]: r for r in rows}
    for cluster in CLUSTERS:
        (kept,) = cluster & expected_ids
        assert by_id[kept]["duplicate_count"] == len(cluster) - 1
        assert by_id[kept]["duplicate_count"] in sizes
    check_accounting(rows, metrics, len(ROWS))
    assert metrics["records_filtered"] == 5
    assert set(rows[0]) == {"id", "name", "email", "city", "quality", "cluster_id", "duplicate_count"}


def test_em_classifier_finds_the_same_clusters():
    rows, metrics = run(build(classifier="em", threshold=0.5))
    assert {r["id"] for r in rows} == {1, 2, 4, 7, 9}
    check_accounting(rows, metrics, len(ROWS))


def test_tag_only_keeps_every_record_with_its_cluster():
    rows, metrics = run(build(strategy="tag_only"))
    assert sorted(r["id"] for r in rows) == list(range(1, 11))
    assert metrics["records_in"] == metrics["records_out"] == len(ROWS)
    assert metrics["records_filtered"] == 0
    clusters: dict[int, set[int]] = {}
    for r in rows:
        clusters.setdefault(r["cluster_id"], set()).add(r["id"])
    assert sorted(map(sorted, clusters.values())) == sorted(map(sorted, CLUSTERS))
    for r in rows:
        assert r["duplicate_count"] == len(clusters[r["cluster_id"]]) - 1


def test_order_of_arrival_does_not_change_keep_first():
    rows, _ = run(build(), data=list(reversed(batches())))
    assert {r["id"] for r in rows} == {1, 2, 4, 7, 9}


def test_existing_output_columns_are_replaced_and_missing_fields_are_null():
    t = table().append_column("cluster_id", pa.array([99] * len(ROWS), pa.int64()))
    rows, metrics = run(build(comparisons=CONFIG["comparisons"] + [{"field": "not_there"}]),
                        data=t.to_batches())
    assert {r["id"] for r in rows} == {1, 2, 4, 7, 9}
    assert all(r["cluster_id"] != 99 for r in rows)
    check_accounting(rows, metrics, len(ROWS))


def test_empty_input_emits_nothing():
    rows, metrics = run(build(), data=[])
    assert rows == []
    assert metrics.get("records_out", 0) == 0


def test_table_function_matches_the_step():
    out, stats = fuzzy_dedup.fuzzy_dedup_table(table(), FuzzyDeduplicatorConfig(**CONFIG).to_fuzzy_config())
    assert set(out.column("id").to_pylist()) == {1, 2, 4, 7, 9}
    assert stats["rows"] == len(ROWS) and stats["kept"] == 5


@pytest.mark.parametrize(("overrides", "field"), [
    ({"comparisons": []}, "comparisons"),
    ({"comparisons": [{"field": "name", "method": "soundalike"}]}, "method"),
    ({"comparisons": [{"field": "name", "weight": 0}]}, "weight"),
    ({"blocking": [], "sorted_keys": []}, "blocking"),
    ({"blocking": [{"fields": []}]}, "fields"),
    ({"blocking": [{"fields": "city", "transform": "metaphone"}]}, "transform"),
    ({"window": 1}, "window"),
    ({"classifier": "svm"}, "classifier"),
    ({"threshold": 1.5}, "threshold"),
    ({"strategy": "keep_best"}, "score_column"),
    ({"strategy": "keep_any"}, "strategy"),
    ({"exact_fields": []}, "exact_fields"),
    ({"unknown_option": 1}, "unknown_option"),
    ({"embedding": {"fields": ["name"], "borderline": None}}, "embedding"),
    ({"embedding": {"fields": ["name"], "borderline": [0.9, 0.2]}}, "borderline"),
    ({"embedding": {"fields": []}}, "fields"),
    ({"embedding": {"fields": ["name"], "neighbours": -1}}, "neighbours"),
    ({"streaming": {}, "classifier": "em"}, "classifier: threshold"),
    ({"streaming": {}, "strategy": "keep_last"}, "keep_last"),
    ({"streaming": {"ttl_s": 0}}, "ttl_s"),
    ({"streaming": {}, "embedding": {"fields": ["name"]}}, "embedding"),
])
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(pydantic.ValidationError) as err:
        FuzzyDeduplicatorConfig(**(CONFIG | overrides))
    assert field in str(err.value)


def test_constructor_needs_a_fuzzy_config():
    with pytest.raises(TypeError, match="FuzzyConfig"):
        FuzzyDeduplicator({"comparisons": []})


def test_minilm_vote_on_borderline_pairs_through_the_step():
    """Typo pairs scoring in [0.5, 0.9) are decided by MiniLM; the share embedded is a metric."""
    from apache_beam.metrics.metric import MetricsFilter

    step = build(threshold=0.5, embedding={"fields": ["name", "city"], "borderline": [0.5, 0.9],
                                           "cosine_threshold": 0.8})
    with tempfile.TemporaryDirectory() as out_dir:
        p = beam.Pipeline()
        kept, _ = p | beam.Create(batches()) | step
        _ = kept | beam.Map(write_element, out_dir)
        result = p.run()
        result.wait_until_finish()
        out, _ = read_elements(out_dir)
    rows = out.to_pylist()
    assert {r["id"] for r in rows} == {1, 2, 4, 7, 9}
    counters = result.metrics().query(MetricsFilter().with_namespace(fuzzy_dedup.MATCH_METRICS_NAMESPACE))["counters"]
    found = {c.key.metric.name: c.committed for c in counters}
    assert 0 < found["fuzzy.embedded_records"] < len(ROWS)


def test_streaming_config_builds_the_stateful_variant_and_finds_the_same_clusters():
    config = FuzzyDeduplicatorConfig(**(CONFIG | {"streaming": {"ttl_s": 3600}}))
    entry = registry.lookup("FuzzyDeduplicator")
    assert entry.supports_streaming(config) and "state_and_timers" in entry.features(config)
    step = entry.factory(config, registry.BuildContext("fuzzy", RunContext(pipeline="t", run_id="r", run_dir="/tmp")))
    assert isinstance(step, fuzzy_dedup.StreamingFuzzyDeduplicator)
    rows, metrics = run(step)
    assert {r["id"] for r in rows} == {1, 2, 4, 7, 9}  # blocks by city: each typo meets its original
    assert metrics["records_in"] == 10 and metrics["records_filtered"] == 5


def test_batches_without_positions_get_one_canonical_order_whatever_the_arrival():
    """After a shuffle batches carry no source position: keep_last must not depend on arrival order."""
    t = table()
    plain = [t.slice(s, n).combine_chunks().to_batches()[0] for s, n in ((0, 4), (4, 3), (7, 3))]
    forward, _ = run(build(strategy="keep_last"), data=plain)
    backward, _ = run(build(strategy="keep_last"), data=list(reversed(plain)))
    assert {r["id"] for r in forward} == {r["id"] for r in backward}
    assert len(forward) == 5
