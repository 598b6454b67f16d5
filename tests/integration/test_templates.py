"""Every bundled template end to end on DirectRunner, plus the quickstart's outputs in detail."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from beam_etl.ops.dlq import ENVELOPE_KEYS
from beam_etl.run import run_template
from beam_etl.spec import list_templates
from tests.template_services import prepared

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
TEMPLATES = [p.stem for p in list_templates()]


def _run(template: str, tmp_path: Path, *overrides: str) -> tuple[int, Path, dict]:
    with prepared(template) as seeded:  # services, seed tables and env for templates that need them
        code = run_template(template, [*seeded, *overrides], ["--runner=DirectRunner"], output_dir=str(tmp_path),
                            run_id=f"e2e-{template}", quiet=True)
    run_dir = tmp_path / f"e2e-{template}"
    summary = json.loads((run_dir / "summary.json").read_text())
    return code, run_dir, summary


def _dead_letters(run_dir: Path) -> list[dict]:
    letters = []
    for path in sorted((run_dir / "dlq").glob("*.jsonl")):
        letters.extend(json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return letters


@pytest.mark.parametrize("template", TEMPLATES)
def test_template_runs_and_accounts_for_every_record(template, tmp_path):
    code, run_dir, summary = _run(template, tmp_path)
    assert code == 0, summary.get("error")
    assert summary["status"] == "succeeded"
    totals, steps = summary["totals"], summary["steps"]
    assert totals["records_read"] > 0
    for name, counts in steps.items():
        if name == "__dlq__":
            continue
        produced = (counts["records_out"] + counts["records_filtered"] + counts["records_grouped"]
                    + counts["records_failed"])
        if counts["records_in"]:  # steps and sinks: in = out + filtered + grouped + DLQ
            assert counts["records_in"] == produced, (name, counts)
    letters = _dead_letters(run_dir)
    assert len(letters) == totals["dead_letters"] == totals["dead_letters_stored"]
    for letter in letters:
        assert set(ENVELOPE_KEYS) <= set(letter), letter
        assert letter["run_id"] == f"e2e-{template}" and letter["pipeline"] == summary["pipeline"]
    _check_lineage(run_dir)


def _written_columns(namespace: str, name: str) -> list[str] | None:
    """Columns a sink actually wrote, for local Parquet/JSONL/CSV outputs and SQLite tables; else None."""
    if namespace.startswith("sqlite://"):
        with sqlite3.connect(namespace[len("sqlite://"):]) as db:
            return [row[1] for row in db.execute(f'PRAGMA table_info("{name}")')] or None
    if namespace != "file":
        return None
    files = sorted(Path(name).parent.glob(Path(name).name + "*")) if not Path(name).is_dir() else \
        sorted(Path(name).glob("*"))
    for path in files:
        if path.suffix == ".parquet":
            return pq.read_schema(path).names
        if path.suffix == ".jsonl" and path.stat().st_size:
            return list(json.loads(path.read_text().splitlines()[0]))
        if path.suffix == ".csv" and path.stat().st_size:
            return next(csv.reader([path.read_text().splitlines()[0]]))
    return None


def _check_lineage(run_dir: Path) -> None:
    """The lineage derived from the template alone (START) names exactly the columns the sinks wrote,
    and every column edge points at a column of an input dataset of the run."""
    events = {e["eventType"]: e for e in map(json.loads, (run_dir / "lineage.jsonl").read_text().splitlines())}
    start, complete = events["START"], events["COMPLETE"]
    inputs = {(d["namespace"], d["name"]): {f["name"] for f in d.get("facets", {}).get("schema", {}).get("fields", [])}
              for d in complete["inputs"]}
    for dataset in start["outputs"]:
        derived = [f["name"] for f in dataset.get("facets", {}).get("schema", {}).get("fields", [])]
        written = _written_columns(dataset["namespace"], dataset["name"])
        if written is None or not derived:
            continue
        assert sorted(derived) == sorted(written), (dataset["name"], derived, written)
    for dataset in complete["outputs"]:
        lineage = dataset.get("facets", {}).get("columnLineage", {}).get("fields", {})
        for column, edges in lineage.items():
            for edge in edges["inputFields"]:
                known = inputs.get((edge["namespace"], edge["name"]))
                assert known is None or not known or edge["field"] in known, (dataset["name"], column, edge)


def test_quickstart_outputs(tmp_path):
    code, run_dir, summary = _run("quickstart", tmp_path)
    assert code == 0
    orders = pq.read_table(next(run_dir.glob("orders-*.parquet")))
    with sqlite3.connect(run_dir / "orders.sqlite") as db:
        sqlite_orders = db.execute("select count(*) from orders").fetchone()[0]
        sales_rows = db.execute("select sum(orders) from sales_by_country").fetchone()[0]
    assert orders.num_rows == sqlite_orders == sales_rows
    ids = orders.column("order_id").to_pylist()
    normalised = [i.strip().upper() for i in ids]
    assert len(set(normalised)) == len(normalised), "exact dedup left duplicate order ids"
    assert orders.column("amount").null_count == 0 and orders.column("order_id").null_count == 0
    assert str(orders.schema.field("order_date").type) == "date32[day]"
    assert {"_quality_score", "_quality_flags"} <= set(orders.column_names)
    report = json.loads((run_dir / "quality_report.json").read_text())
    steps = summary["steps"]
    assert report["records"] == (orders.num_rows + steps["dedup"]["records_filtered"]
                                 + steps["fuzzy_dedup"]["records_filtered"])
    # the sample data re-enters 40 orders under a new order id (customers_orders.README.md): all merged
    assert steps["fuzzy_dedup"]["records_filtered"] == 40
    twins = Counter(zip(orders.column("customer_id").to_pylist(), orders.column("amount").to_pylist(), strict=True))
    assert max(twins.values()) == 1, "a re-entered order survived the fuzzy dedup"
    assert orders.column("duplicate_count").to_pylist().count(1) == 40
    # the 30 planted amount outliers (80-150x their category's typical order) are all tagged
    table = orders.to_pandas()
    planted = table["amount"] / table.groupby("category")["amount"].transform("median") > 40
    assert planted.sum() == 30 and table.loc[planted, "is_anomaly"].all()
    assert table["is_anomaly"].sum() <= 0.03 * len(table)
    # every step, connector and the DLQ sink report a processing-latency distribution
    assert set(steps) <= set(summary["metrics"]["batch_latency_ms"]), set(steps) - set(
        summary["metrics"]["batch_latency_ms"])
    letters = _dead_letters(run_dir)
    parse_errors = [x for x in letters if x["error_type"] == "parse"]
    type_errors = [x for x in letters if x["error_type"] == "type"]
    assert parse_errors and type_errors
    for letter in parse_errors + type_errors:  # malformed rows name their file and line
        assert letter["source"].startswith(str(REPO / "beam_etl" / "data" / "customers_orders.csv") + ":")
    assert any("'amount'" in x["error"] for x in type_errors)
    # 3,272 data lines; the 6 unbalanced-quote lines pair up into 3 records, so 3,269 records.
    assert summary["totals"]["records_read"] == 3269


def test_cli_default_runs_quickstart(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "beam_etl.run", "--runner=DirectRunner", "--output-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "records read" in result.stdout and "dead letters" in result.stdout
    assert "orders" in result.stdout and "ExactDeduplicator" in result.stdout
    run_dirs = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(run_dirs) == 1 and (run_dirs[0] / "summary.json").exists()


def test_cli_validate_prints_graph(tmp_path):
    result = subprocess.run([sys.executable, "-m", "beam_etl.run", "--template", "quickstart", "--validate"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "dedup (ExactDeduplicator) <- quality" in result.stdout
    assert not (tmp_path / "beam_etl_output").exists()


def test_cli_list_templates():
    result = subprocess.run([sys.executable, "-m", "beam_etl.run", "--list-templates"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for name in TEMPLATES:
        assert name in result.stdout


def test_cli_bad_override_exits_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "beam_etl.run", "--set", "steps.nope.config.x=1"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2
    assert "no item 'nope'" in result.stderr


def test_error_budget_fails_loudly(tmp_path):
    code, _, summary = _run("quickstart", tmp_path, "error_budget.max_count=3")
    assert code == 3
    assert summary["status"] == "failed" and "error budget exceeded" in summary["error"]


def test_missing_input_is_a_config_error_naming_the_source(tmp_path, capsys):
    code = run_template("quickstart", [f"params.input={tmp_path}/missing.csv"], ["--runner=DirectRunner"],
                        output_dir=str(tmp_path / "out"), quiet=True)
    assert code == 2
    err = capsys.readouterr().err
    assert "sources[0] (orders)" in err and "missing.csv" in err and "matches no file" in err
    assert not (tmp_path / "out").exists()
