"""QualityScorer (score, flags, min_score DLQ, report file) and QualityReport."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from pydantic import ValidationError

from beam_etl import registry
from beam_etl.ops.dlq import ENVELOPE_KEYS
from beam_etl.ops.metrics import summarise
from beam_etl.transforms.base import tag_source
from beam_etl.transforms.quality import (
    FLAGS_FIELD,
    SCORE_FIELD,
    QualityReport,
    QualityReportFn,
    QualityScorer,
    QualityScorerConfig,
    Scorer,
    check_field,
    infer_semantic_type,
    parse_rule,
)

RULES = {
    "email": {"type": "email", "required": True},
    "amount": {"type": "float", "min": 0, "max": 100},
    "status": {"allowed": ["paid", "open"]},
    "zip": {"pattern": r"^\d{5}$"},
}
GOOD = {"email": "ada@example.com", "amount": 10.0, "status": "paid", "zip": "12345"}
MIXED = {"email": "bad", "amount": 500.0, "status": "paid", "zip": "1234"}
SPARSE = {"email": None, "amount": None, "status": "x", "zip": "12345"}
# completeness / validity per row: GOOD 4/4, 4/4; MIXED 4/4, 1/4; SPARSE 2/4, 1/(2 + 1 required null)
EXPECTED = {
    "ada@example.com": (1.0, []),
    "bad": (0.5 * 1 + 0.5 * 0.25, ["email:type", "amount:range", "zip:pattern"]),
    None: (0.5 * 0.5 + 0.5 / 3, ["email:null", "amount:null", "status:allowed"]),
}


def batch(rows: list[dict[str, Any]], first_row: int = 1) -> pa.RecordBatch:
    return tag_source(pa.RecordBatch.from_pylist(rows), "orders.jsonl", first_row)


def scored_rows_match(expected: dict[Any, tuple[float, list[str]]], key: str = "email") -> Callable[[list[Any]], None]:
    def match(rows: list[dict[str, Any]]) -> None:
        if len(rows) != len(expected):
            raise BeamAssertException(f"expected {len(expected)} rows, got {rows}")
        for row in rows:
            score, flags = expected[row[key]]
            if not math.isclose(row[SCORE_FIELD], score) or row[FLAGS_FIELD] != flags:
                raise BeamAssertException(f"{row} != score {score} flags {flags}")

    return match


def run_step(step: beam.PTransform, batches: list[pa.RecordBatch], rows: Any, letters: Any,
             name: str = "quality") -> dict[str, int]:
    p = test_pipeline.TestPipeline()
    out, dlq = p | "Create" >> beam.Create(batches) | step
    assert_that(out | "Rows" >> beam.FlatMap(lambda b: b.to_pylist()), rows, label="CheckRows")
    assert_that(dlq, letters if callable(letters) else equal_to(letters), label="CheckDlq")
    result = p.run()
    result.wait_until_finish()
    counts = summarise(result)[name]
    total = sum(b.num_rows for b in batches)
    assert counts["records_in"] == total
    assert total == counts["records_out"] + counts["records_filtered"] + counts["records_failed"], counts
    return counts


def test_score_formula_and_flags_with_declared_rules():
    step = QualityScorer(RULES, infer=False, step="quality")
    counts = run_step(step, [batch([GOOD, MIXED]), batch([SPARSE], 3)], scored_rows_match(EXPECTED), [])
    assert counts["records_out"] == 3 and counts["records_failed"] == 0


def test_weights_change_the_score():
    scorer = Scorer({k: parse_rule(k, v) for k, v in RULES.items()}, infer=False,
                    completeness_weight=1.0, validity_weight=0.0)
    scored, _ = scorer.score(pa.RecordBatch.from_pylist([GOOD, MIXED, SPARSE]))
    assert scored.column(SCORE_FIELD).to_pylist() == [1.0, 1.0, 0.5]
    assert scored.schema.field(FLAGS_FIELD).type == pa.list_(pa.string())


def test_inferred_rules_from_arrow_type_and_column_name():
    rows = [
        {"contact_email": "x@y.com", "created_at": "2024-01-05", "ratio": 0.5, "country": "de", "note": "a", "n": 1},
        {"contact_email": "nope", "created_at": "yesterday", "ratio": float("nan"), "country": "D3",
         "note": "b", "n": 2},
        {"contact_email": None, "created_at": "05/01/2024 10:00", "ratio": 1.5, "country": "US", "note": " ", "n": 3},
    ]
    expected = {
        "a": (1.0, []),
        "b": (0.5 + 0.5 * 2 / 6, ["contact_email:type", "created_at:type", "ratio:type", "country:type"]),
        " ": (0.5 * 4 / 6 + 0.5, ["contact_email:null", "note:null"]),
    }

    run_step(QualityScorer(step="quality"), [batch(rows)], scored_rows_match(expected, key="note"), [])
    assert infer_semantic_type("updatedAt") == "date" and infer_semantic_type("phone_number") == "phone"
    assert infer_semantic_type("latitude") is None and infer_semantic_type("home_url") == "url"


def test_inferred_country_takes_codes_and_names_declared_country_code_only_codes():
    rows = [{"country": value, "k": i} for i, value in enumerate(["United Kingdom", "Côte d'Ivoire", "gb", "12"])]
    inferred = {0: (1.0, []), 1: (1.0, []), 2: (1.0, []), 3: (0.75, ["country:type"])}  # 2 fields checked
    run_step(QualityScorer(step="quality"), [batch(rows)], scored_rows_match(inferred, key="k"), [])
    strict = {0: (0.75, ["country:type"]), 1: (0.75, ["country:type"]), 2: (1.0, []), 3: (0.75, ["country:type"])}
    run_step(QualityScorer(rules={"country": {"type": "country_code"}}, step="quality"), [batch(rows)],
             scored_rows_match(strict, key="k"), [])


def test_semantic_type_checks_are_vectorised_per_column():
    cases = {
        "phone": (["+1 (555) 123-4567", "12", "555-CALL-NOW"], [False, True, True]),
        "url": (["https://example.com/a?b=1", "http://localhost:8080", "example.com"], [False, False, True]),
        "uuid": (["123e4567-e89b-12d3-a456-426614174000", "123e4567"], [False, True]),
        "ipv4": (["10.0.0.1", "256.1.1.1"], [False, True]),
        "int": (["12", "1.5"], [False, True]),
        "bool": (["yes", "nope"], [False, True]),
        "date": (["2024-02-29", "2023-02-29"], [False, True]),
    }
    for typ, (values, type_fails) in cases.items():
        checked = check_field("x", pa.array(values), parse_rule("x", {"type": typ}), len(values))
        assert checked.fails.get("type", [False] * len(values)).tolist() == type_fails, typ
    amounts = check_field("amount", pa.array(["5", "-1", "x"]), parse_rule("amount", {"min": 0}), 3)
    assert amounts.fails["type"].tolist() == [False, False, True]
    assert amounts.fails["range"].tolist() == [False, True, False]
    dates = check_field("d", pa.array(["2024-01-05", "2020-01-01"]), parse_rule("d", {"min": "2023-01-01"}), 2)
    assert dates.fails["range"].tolist() == [False, True]


def test_min_score_sends_low_records_to_dlq_with_flags_and_values():
    def letters(got: list[dict[str, Any]]) -> None:
        assert len(got) == 1, got
        letter = got[0]
        assert set(letter) == set(ENVELOPE_KEYS)
        assert letter["error_type"] == "validation" and letter["step"] == "quality"
        assert letter["record"] == SPARSE
        assert letter["error"] == ("QualityScorer: quality score 0.417 is below min_score 0.6; flags: email:null, "
                                   "amount:null, status:allowed (value 'x')")
        assert letter["source"] == "orders.jsonl (batch from row 3, row 0 after earlier steps)"
        assert letter["pipeline"] == "test" and letter["run_id"] == "test-run" and letter["failed_at"]
        assert letter["exception"] and letter["attempt"] == 1

    step = QualityScorer(RULES, infer=False, min_score=0.6, step="quality")
    counts = run_step(step, [batch([GOOD, MIXED]), batch([SPARSE], 3)],
                      scored_rows_match({k: v for k, v in EXPECTED.items() if k is not None}), letters)
    assert counts["records_failed"] == 1


def expected_report() -> dict[str, Any]:
    scores = [v[0] for v in EXPECTED.values()]
    counts = [0] * 10
    for s in scores:
        counts[min(int(s * 10), 9)] += 1
    return {
        "records": 3,
        "mean_score": sum(scores) / 3,
        "score_histogram": {"bins": [i / 10 for i in range(11)], "counts": counts},
        "fields": {
            "email": {"null_count": 1, "null_rate": 1 / 3, "invalid_count": 1, "invalid_rate": 0.5},
            "amount": {"null_count": 1, "null_rate": 1 / 3, "invalid_count": 1, "invalid_rate": 0.5},
            "status": {"null_count": 0, "null_rate": 0.0, "invalid_count": 1, "invalid_rate": 1 / 3},
            "zip": {"null_count": 0, "null_rate": 0.0, "invalid_count": 1, "invalid_rate": 1 / 3},
        },
    }


def same_report(got: dict[str, Any], want: dict[str, Any]) -> bool:
    return json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True) or (
        got.keys() == want.keys() and math.isclose(got["mean_score"], want["mean_score"])
        and got["score_histogram"] == want["score_histogram"] and got["records"] == want["records"]
        and all(math.isclose(got["fields"][f][k], v) for f in want["fields"] for k, v in want["fields"][f].items())
        and set(got["fields"]) == set(want["fields"])
    )


def test_quality_report_transform_gives_one_dict():
    def match(reports: list[dict[str, Any]]) -> None:
        if len(reports) != 1 or not same_report(reports[0], expected_report()):
            raise BeamAssertException(f"{reports} != {expected_report()}")

    with test_pipeline.TestPipeline() as p:
        scored, _ = (p | beam.Create([batch([GOOD, MIXED]), batch([SPARSE], 3)])
                     | QualityScorer(RULES, infer=False, step="quality"))
        assert_that(scored | QualityReport(), match)


def test_report_path_writes_the_report_once_including_dead_lettered_records(tmp_path):
    path = tmp_path / "reports" / "quality_report.json"
    step = QualityScorer(RULES, infer=False, min_score=0.6, report_path=str(path), step="quality")
    run_step(step, [batch([GOOD, MIXED]), batch([SPARSE], 3)],
             scored_rows_match({k: v for k, v in EXPECTED.items() if k is not None}),
             lambda letters: None if len(letters) == 1 else (_ for _ in ()).throw(BeamAssertException(letters)))
    report = json.loads(path.read_text())
    assert same_report(report, expected_report()), report


def test_report_fn_on_empty_input():
    fn = QualityReportFn()
    report = fn.extract_output(fn.create_accumulator())
    assert report["records"] == 0 and report["mean_score"] is None and report["fields"] == {}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rules": {"email": {"type": "mail"}}}, "QualityScorer.rules.email.type: 'mail' is not allowed; use one of"),
    ({"rules": {"a": {"min": 5, "max": 1}}}, "QualityScorer.rules.a: min 5 is greater than max 1"),
    ({"rules": {"e": {"type": "email", "min": 1}}}, "min/max do not apply to type 'email'"),
    ({"rules": {"z": {"pattern": "("}}}, "QualityScorer.rules.z.pattern: '(' is not a valid RE2 regular expression"),
    ({"rules": {"z": {"regex": "x"}}}, "QualityScorer.rules.z: unknown key(s) ['regex']; allowed: type, required"),
    ({"rules": {"s": {"allowed": []}}}, "QualityScorer.rules.s.allowed: [] is not a non-empty list"),
    ({"rules": {"d": {"type": "date", "min": 3}}}, "type 'date' needs date min/max like '2024-01-31', not 3"),
    ({"weights": {"completeness": 0, "validity": 0}}, "QualityScorer.weights: {'completeness': 0, 'validity': 0} are"),
    ({"weights": {"accuracy": 1}}, "QualityScorer.weights: unknown key(s) ['accuracy']"),
    ({"min_score": 1.5}, "QualityScorer.min_score: 1.5 is not a number between 0 and 1"),
    ({"rules": {"a": {}}, "exclude": ["a"]}, "QualityScorer.exclude: ['a'] also have rules"),
])
def test_config_errors(kwargs: dict[str, Any], message: str):
    with pytest.raises(ValueError) as err:
        QualityScorer(**kwargs)
    assert message in str(err.value)


def test_registered_factory_and_config_model():
    try:
        entry = registry.lookup("QualityScorer")
    except ModuleNotFoundError:  # other builtin modules may not exist yet
        entry = registry._TABLE["QualityScorer"]
    config = entry.config_model.model_validate({
        "rules": {"amount": {"type": "float", "min": 0}, "day": {"min": "2024-01-01"}},
        "weights": {"completeness": 0.3, "validity": 0.7}, "min_score": 0.5, "report_path": "out/q.json"})
    step = entry.factory(config, registry.BuildContext(step_name="score_orders", run=None))
    assert step.step_name() == "score_orders" and step.min_score == 0.5
    assert step.scorer.completeness_weight == 0.3
    with pytest.raises(ValidationError, match="min_score"):
        QualityScorerConfig.model_validate({"min_score": 2})
    with pytest.raises(ValidationError, match="is not allowed; use one of"):
        QualityScorerConfig.model_validate({"rules": {"x": {"type": "mail"}}})
