"""StreamingFuzzyDeduplicator: TestStream on the streaming DirectRunner, the same input bounded, config errors."""

from __future__ import annotations

import os
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue

from beam_etl.batch import ArrowBatchCoder
from beam_etl.ml.fuzzy import BlockKey, Comparison, FellegiSunter, FuzzyConfig
from beam_etl.ops.metrics import summarise
from beam_etl.runners.direct import BatchDirectRunner
from beam_etl.transforms import _fuzzy_stream
from beam_etl.transforms._fuzzy_stream import StreamingFuzzyDeduplicator
from tests.collect import read_json_elements, write_json_element

# ---------------------------------------------------------------------------------------------
# Data: people arriving in four batches (element timestamps in seconds); blocked by city.
# ---------------------------------------------------------------------------------------------

COLUMNS = ("row", "name", "email", "city")
BATCHES = [
    (1, [(0, "Amelia Wilson", "amelia.wilson@yahoo.com", "Edinburgh"),
         (1, "Finn Hoffmann", "finn.hoffmann@gmx.de", "Frankfurt"),
         (2, "Hugo Dubois", "h.dubois@gmail.com", "Marseille"),
         (3, "Mei Kato", "mei.kato@gmail.com", "Osaka")]),
    (10, [(4, "amelia  WILSON", "Amelia.Wilson@yahoo.com", "EDINBURGH"),  # case/spacing of 0
          (5, "Fin Hoffman", "finn.hoffmann@gmx.de", "Frankfurt"),  # typos of 1
          (6, "Hugo Dubois", "h.dubois@gmail.com", "Paris"),  # 2 in another block: never compared
          (7, "Oliver Brown", "oliver.b@outlook.com", "Edinburgh")]),  # distinct, same block as 0
    (20, [(8, "Amelia Wilsen", "amelia.wilson@yahoo.com", "Edinburgh"),  # typo of 0
          (9, "Hugo Dubois", "h.dubois@gmail.com", "Marseille"),  # exact copy of 2
          (10, "Nora Lind", "nora@lind.se", None),  # no block key: its own cluster
          (11, "Nora Lind", "nora@lind.se", "  ")]),  # the same, blank key: kept too
    (205, [(12, "Amelia Wilson", "amelia.wilson@yahoo.com", "Edinburgh"),  # 0's TTL (100 s) is over: new
           (13, "Amelia Wilsom", "amelia.wilson@yahoo.com", "Edinburgh")]),  # typo of 12, same batch
]
TOTAL = sum(len(rows) for _, rows in BATCHES)
KEPT_FIRST = [0, 1, 2, 3, 6, 7, 10, 11, 12]
# tag_only: row -> (row whose cluster it joins, duplicate count when emitted)
TAGGED = {4: (0, 1), 5: (1, 1), 8: (0, 2), 9: (2, 1), 13: (12, 1)}

THRESHOLD = FuzzyConfig(comparisons=(Comparison("name"), Comparison("email")), blocking=(BlockKey("city"),),
                        classifier="threshold", threshold=0.85)
# A Fellegi-Sunter model as EM would fit it: agreement levels 2-3 are evidence of a match.
MODEL = FellegiSunter(m=[np.array([0.01, 0.04, 0.15, 0.8])] * 2, u=[np.array([0.9, 0.07, 0.02, 0.01])] * 2,
                      prior=0.01, iterations=1, converged=True)
VARIANTS = {
    "first": {"config": THRESHOLD, "ttl_s": 100},
    "tag": {"config": FuzzyConfig(**{**THRESHOLD.__dict__, "strategy": "tag_only"}), "ttl_s": 100},
    "em": {"config": FuzzyConfig(**{**THRESHOLD.__dict__, "classifier": "em", "threshold": 0.5}), "ttl_s": 100,
           "model": MODEL},
}


def batch_of(rows: list[tuple]) -> pa.RecordBatch:
    cols = list(zip(*rows, strict=True))
    return pa.record_batch([pa.array(c, pa.int64() if i == 0 else pa.string()) for i, c in enumerate(cols)],
                           names=list(COLUMNS))


def timed_batches() -> list[tuple[pa.RecordBatch, float]]:
    return [(batch_of(rows), ts) for ts, rows in BATCHES]


# ---------------------------------------------------------------------------------------------
# Running pipelines and collecting what they produce.
# ---------------------------------------------------------------------------------------------


class Outputs:
    """One variant's rows (by ``row``), dead letters and step metrics."""

    def __init__(self, root: str, label: str, result: Any) -> None:
        self.rows = {r["row"]: r for e in read_json_elements(os.path.join(root, label, "out")) for r in e["rows"]}
        self.letters = read_json_elements(os.path.join(root, label, "dlq"))
        self.metrics = summarise(result).get(label, {})

    def ids(self) -> list[int]:
        return sorted(self.rows)

    def cluster(self, row: int) -> int:
        return self.rows[row]["cluster_id"]


def _run(p: beam.Pipeline, source: beam.PCollection, variants: dict[str, dict], root: str) -> dict[str, Outputs]:
    for label, kwargs in variants.items():
        out, dlq = source | label >> StreamingFuzzyDeduplicator(step=label, **kwargs)
        for name, pcoll in (("out", out), ("dlq", dlq)):
            os.makedirs(os.path.join(root, label, name))
            pcoll | f"{label}_{name}" >> beam.Map(write_json_element, os.path.join(root, label, name))
    result = p.run()
    result.wait_until_finish()
    return {label: Outputs(root, label, result) for label in variants}


def run_stream(timed: list[tuple[pa.RecordBatch, float]], variants: dict[str, dict], root: str,
               watermarks: dict[int, float] | None = None) -> dict[str, Outputs]:
    """A TestStream (DirectRunner, streaming); ``watermarks[i]``: where the watermark goes before batch i."""
    stream = TestStream(coder=ArrowBatchCoder()).advance_watermark_to(0)
    for i, (batch, ts) in enumerate(timed):
        stream = stream.advance_watermark_to((watermarks or {}).get(i, ts)).add_elements([TimestampedValue(batch, ts)])
    options = PipelineOptions(["--runner=DirectRunner"])
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    return _run(p, p | stream.advance_watermark_to_infinity(), variants, root)


def run_bounded(timed: list[tuple[pa.RecordBatch, float]], variants: dict[str, dict], root: str) -> dict[str, Outputs]:
    """The same transform on bounded input (the project's batch runner)."""
    p = beam.Pipeline(runner=BatchDirectRunner())
    source = (p | beam.Create(timed, reshuffle=False)
              | beam.Map(lambda bt: TimestampedValue(bt[0], bt[1])).with_output_types(pa.RecordBatch))
    return _run(p, source, variants, root)


def assert_accounted(out: Outputs, records_in: int) -> None:
    """Metrics: in == out + filtered + failed (the batch runner; Beam's streaming DirectRunner reports
    the counters of its first bundles only, for StreamingDeduplicate as well)."""
    m = out.metrics
    assert m["records_in"] == records_in
    assert m["records_out"] == len(out.rows)
    assert m["records_failed"] == len(out.letters)
    assert m["records_in"] == m["records_out"] + m["records_filtered"] + m["records_failed"]


@pytest.fixture(scope="module")
def people(tmp_path_factory) -> dict[str, dict[str, Outputs]]:
    """Every variant on the people stream (the watermark passes the TTL before the last batch), and bounded."""
    timed = timed_batches()
    root = tmp_path_factory.mktemp("people")
    return {"stream": run_stream(timed, VARIANTS, str(root / "s"), watermarks={3: 200}),
            "bounded": run_bounded(timed, VARIANTS, str(root / "b"))}


# ---------------------------------------------------------------------------------------------
# The people stream.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["stream", "bounded"])
def test_keep_first_drops_near_duplicates(people, mode):
    out = people[mode]["first"]
    assert out.ids() == KEPT_FIRST
    assert {r["duplicate_count"] for r in out.rows.values()} == {0}  # emitted before any duplicate arrived
    assert len({out.cluster(r) for r in KEPT_FIRST}) == len(KEPT_FIRST)
    assert all(isinstance(out.cluster(r), int) and out.cluster(r) >= 0 for r in KEPT_FIRST)
    assert not out.letters
    # no record lost: each one is kept here or tagged as a duplicate by tag_only
    assert len(out.rows) + sum(r["duplicate_count"] > 0 for r in people[mode]["tag"].rows.values()) == TOTAL
    if mode == "bounded":
        assert out.metrics["records_filtered"] == TOTAL - len(KEPT_FIRST)
        assert_accounted(out, TOTAL)


@pytest.mark.parametrize("mode", ["stream", "bounded"])
def test_tag_only_tags_the_cluster_of_the_first_record(people, mode):
    out = people[mode]["tag"]
    assert out.ids() == list(range(TOTAL))
    for row, (first, count) in TAGGED.items():
        assert (out.cluster(row), out.rows[row]["duplicate_count"]) == (out.cluster(first), count), row
    openers = [r for r in range(TOTAL) if r not in TAGGED]
    assert openers == KEPT_FIRST
    assert all(out.rows[r]["duplicate_count"] == 0 for r in openers)
    assert len({out.cluster(r) for r in openers}) == len(openers)
    # the same ids as keep_first gives its kept rows: ids are content hashes, not arrival counters
    assert {r: out.cluster(r) for r in openers} == {r: people[mode]["first"].cluster(r) for r in openers}
    if mode == "bounded":
        assert out.metrics["records_filtered"] == 0
        assert_accounted(out, TOTAL)


def test_blocks_ttl_and_empty_keys(people):
    out = people["stream"]["tag"]
    assert out.cluster(6) != out.cluster(2)  # same person, other city: a different block
    assert out.cluster(12) != out.cluster(0)  # past the TTL: a new cluster
    assert out.cluster(10) != out.cluster(11)  # no block key: each row is its own cluster
    assert out.rows[10]["city"] is None and out.rows[11]["city"] == "  "


def test_bounded_input_gives_the_stream_answer(people):
    for label in VARIANTS:
        assert people["bounded"][label].rows == people["stream"][label].rows, label


def test_em_with_a_fitted_model(people):
    for mode in ("stream", "bounded"):
        assert people[mode]["em"].ids() == KEPT_FIRST
    assert_accounted(people["bounded"]["em"], TOTAL)


# ---------------------------------------------------------------------------------------------
# Event times from a field, dead letters, eviction.
# ---------------------------------------------------------------------------------------------


def test_time_field_ttl_and_dead_letters(tmp_path):
    config = FuzzyConfig(comparisons=(Comparison("name"),), sorted_keys=(BlockKey("name", "prefix", 2),),
                         classifier="threshold", threshold=0.95)
    first = pa.record_batch({
        "row": [0, 1, 2, 3, 4, 5],
        "name": ["Jonathan Smith", "Jonathon Smith", "Jonathan Smith", "Jon Smith", "Jonathan Smith", "Jonathan"],
        "at": ["2024-01-01T00:00:00Z", "2024-01-01T00:00:30Z", "2024-01-01T00:02:00Z", None, "yesterday",
               "2024-01-01T00:00:10Z"],
    })
    no_at = pa.record_batch({"row": [6], "name": ["Jonathan Smith"]})
    outs = run_bounded([(first, 1), (no_at, 2)], {"d": {"config": config, "ttl_s": 60, "time_field": "at"}},
                       str(tmp_path))
    out = outs["d"]
    # 0 opens; 5 (10 s) differs; 1 (30 s) is a typo of 0; 2 (120 s) is past 0's TTL: a new cluster
    assert out.ids() == [0, 2, 5]
    by_row = {letter["record"]["row"]: letter for letter in out.letters}
    assert sorted(by_row) == [3, 4, 6]
    assert by_row[3]["error_type"] == "validation" and "null" in by_row[3]["error"]
    assert by_row[4]["error_type"] == "type" and "yesterday" in by_row[4]["error"]
    assert by_row[6]["exception"] == "KeyError" and "'at' is missing" in by_row[6]["error"]
    assert all(not k.startswith("__beam_etl") for letter in out.letters for k in letter["record"])
    assert_accounted(out, 7)


def test_oldest_record_is_evicted_and_failures_go_to_the_dlq(tmp_path, monkeypatch):
    real = _fuzzy_stream.Matcher.scores

    def fussy(self, a, b, left, right):
        if any("boom" in str(v) for v in a[0][left]):
            raise ValueError("cannot compare 'boom'")
        return real(self, a, b, left, right)

    monkeypatch.setattr(_fuzzy_stream.Matcher, "scores", fussy)
    config = FuzzyConfig(comparisons=(Comparison("name"),), blocking=(BlockKey("k"),), classifier="threshold",
                         threshold=0.9)
    timed = [(pa.record_batch({"row": [0, 1, 2], "k": ["a"] * 3, "name": ["alpha", "bravo", "charlie"]}), 1),
             (pa.record_batch({"row": [3, 4, 5], "k": ["a", "a", "b"], "name": ["alpha", "charlie", "x"]}), 2),
             (pa.record_batch({"row": [6, 7], "k": ["a", "a"], "name": ["boom", "delta"]}), 3),
             (pa.record_batch({"row": [8, 9], "k": ["b", "b"], "name": [None, " "]}), 3)]
    out = run_bounded(timed, {"d": {"config": config, "max_records_per_key": 2}}, str(tmp_path))["d"]
    # holding two records, "alpha" (the oldest) made room for "charlie": 3 is new, 4 a duplicate;
    # the batch of key "a" holding "boom" failed as a whole and left the state unchanged;
    # 9 is an exact copy of 8 (both blank: no similarity to score, yet identical normalised fields)
    assert out.ids() == [0, 1, 2, 3, 5, 8]
    assert sorted(letter["record"]["row"] for letter in out.letters) == [6, 7]
    assert {letter["error_type"] for letter in out.letters} == {"validation"}
    assert "boom" in out.letters[0]["error"]
    assert_accounted(out, 10)


def test_matcher_numbers_dates_and_state_round_trip():
    """Stage 1 and 2 without Beam: numeric and date comparators, ties, the state blob."""
    config = FuzzyConfig(comparisons=(Comparison("name"), Comparison("dob", "date", scale=365),
                                      Comparison("amount", "numeric", scale=10)),
                         blocking=(BlockKey("name", "prefix", 1),), classifier="threshold", threshold=0.9)
    plan = _fuzzy_stream.make_plan(config, 60.0, None, 10, None)
    batch = pa.record_batch({
        "name": ["Ann Lee", "Ann Lee", "Ann Lee", "ann lee", "Bob Ray"],
        "dob": ["1990-01-01", "1990-01-02", "1960-01-01", None, "1990-01-01"],
        "amount": ["10", "10.5", "10", None, "10"],
    })
    batch = batch.append_column(_fuzzy_stream.TIME_COL, pa.array([0, 1_000_000, 2_000_000, 3_000_000, 4_000_000]))
    (key_a, sub_a), (key_b, _) = _fuzzy_stream.split_by_key(_fuzzy_stream.match_columns(batch, plan))
    assert (key_a, key_b) == ("a", "b")
    matcher = _fuzzy_stream.Matcher(plan)
    decision = matcher.decide(sub_a, _fuzzy_stream.Reps.empty(plan.slots), 0)
    # 1: a day and 50 cents apart; 2: born 30 years earlier; 3: only the name to compare, ties go to 0
    assert decision.duplicate.tolist() == [False, True, False, True]
    ids = decision.cluster_ids
    assert ids[1] == ids[3] == ids[0] != ids[2]
    assert len(decision.reps) == 2 and decision.added and decision.changed
    stored = _fuzzy_stream.Reps.decode(decision.reps.encode())
    assert stored.ids.tolist() == [ids[0], ids[2]] and stored.values[1].tolist() == [7305.0, -3653.0]
    later = _fuzzy_stream.split_by_key(_fuzzy_stream.match_columns(batch.slice(1, 1).set_column(
        3, _fuzzy_stream.TIME_COL, pa.array([70_000_000])), plan))[0][1]
    again = matcher.decide(later, stored, 70_000_000)  # past the TTL of both: a new cluster, the old ones forgotten
    assert not again.duplicate[0] and again.reps.ids.tolist() == [again.cluster_ids[0]]


# ---------------------------------------------------------------------------------------------
# Configuration errors.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, kwargs, error", [
    ({"classifier": "em"}, {}, "use classifier='threshold'"),
    ({"strategy": "keep_last"}, {}, "strategy 'keep_last' cannot be decided in a stream"),
    ({"strategy": "keep_best", "score_column": "q"}, {}, "'keep_best'"),
    ({}, {"model": MODEL}, "classifier 'em' only"),
    ({"classifier": "em"}, {"model": FellegiSunter([np.ones(2)], [np.ones(2)], 0.1, 1, True)}, "levels"),
    ({}, {"ttl_s": 0}, "ttl_s"),
    ({}, {"max_records_per_key": 0}, "max_records_per_key"),
    ({}, {"time_field": ""}, "time_field"),
])
def test_bad_config_is_rejected_at_construction(changes, kwargs, error):
    with pytest.raises(ValueError, match=error):
        StreamingFuzzyDeduplicator(FuzzyConfig(**{**THRESHOLD.__dict__, **changes}), **kwargs)


def test_display_data():
    data = StreamingFuzzyDeduplicator(THRESHOLD, ttl_s=60, step="s").display_data()
    assert data["block_key"] == "exact(city)" and data["ttl_seconds"] == 60 and data["strategy"] == "keep_first"
