"""The HTML run report, built from a real quickstart run folder (one run for the module)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from beam_etl.ops import report

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report_runs")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "beam_etl.run", "--runner=DirectRunner", "--output-dir", str(out), "--report",
           "--run-id", "quickstart-run"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "report: " in done.stderr
    return out / "quickstart-run"


@pytest.fixture(scope="module")
def page(run_dir) -> str:
    return (run_dir / "report.html").read_text(encoding="utf-8")


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<img[^>]*>", "", html)))


def test_report_has_the_step_table_with_the_summary_counts(run_dir, page):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "<section id=\"steps\">" in page
    for step in ("orders", "parse_dates", "quality", "dedup", "fuzzy_dedup", "anomalies", "orders_parquet"):
        assert f"<td>{step}</td>" in page
    dedup = summary["steps"]["dedup"]
    row = re.search(r"<tr><td>dedup</td>(.*?)</tr>", page).group(1)
    assert f"{dedup['records_in']:,}" in row and f"{dedup['records_out']:,}" in row
    assert "(dead-letter sink)" in page
    assert f"{summary['totals']['records_read']:,}" in page


def test_charts_are_embedded_png_data_uris(page):
    images = re.findall(r'<img class="chart" alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    titles = [t for t, _ in images]
    assert {"Records out per step", "Dead letters by error type", "Quality score distribution",
            "Top anomaly reasons"} <= set(titles)
    import base64

    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for _, data in images)


def test_report_is_self_contained(page):
    assert "<script" not in page and "<link" not in page
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<style>" in page


def test_dlq_breakdown_matches_the_dead_letters(run_dir, page):
    letters = [json.loads(line) for f in (run_dir / "dlq").glob("*.jsonl") for line in f.read_text().splitlines()
               if line.strip()]
    assert letters
    by_type: dict[str, int] = {}
    for letter in letters:
        by_type[letter["error_type"]] = by_type.get(letter["error_type"], 0) + 1
    section = page[page.index('<section id="dlq">'):]
    section = section[:section.index("</section>")]
    assert f"{len(letters):,} dead letters" in section
    for kind, count in by_type.items():
        assert f"<tr><td>{kind}</td><td class=\"n\">{count:,}</td></tr>" in section
    assert "Most frequent errors" in section


def test_quality_anomaly_and_schema_sections(run_dir, page):
    quality = json.loads((run_dir / "quality_report.json").read_text())
    text = text_of(page)
    assert f"{quality['records']:,} records scored" in text
    assert "<td>email</td>" in page
    assert "records flagged" in text and "iqr:amount" in text
    schema = page[page.index('<section id="schemas">'):]
    assert "orders.schema.json" in schema and "<td>anomaly_score</td>" in schema and "<th>nullable</th>" in schema


def test_report_cli_rebuilds_for_a_run_folder_or_id(run_dir, tmp_path, capsys):
    target = tmp_path / "again.html"
    assert report.main([str(run_dir), "--out", str(target)]) == 0
    assert target.read_text().startswith("<!DOCTYPE html>")
    assert report.main([run_dir.name, "--output-dir", str(run_dir.parent), "--out", str(target)]) == 0
    assert report.main([str(tmp_path / "missing")]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    assert report.main([str(tmp_path)]) == 2
    assert "no summary.json" in capsys.readouterr().err


def test_schema_tables_are_generic():
    inferred = {"rows": 10, "threshold": 0.9, "fields": [
        {"name": "id", "type": "int64", "nullable": False, "semantic": "identifier"},
        {"name": "email", "type": "string", "nullable": True, "semantic": "email", "examples": ["a@b.c"]}]}
    html = report.schema_table(inferred)
    assert "<th>semantic</th>" in html and "<td>identifier</td>" in html and "<td>threshold</td>" in html
    json_schema = {"type": "object", "properties": {"id": {"type": "integer"}, "name": "string"}}
    html = report.schema_table(json_schema)
    assert "<td>id</td><td>integer</td>" in html and "<td>name</td><td>string</td>" in html
    assert "<pre>" in report.schema_table(["not", "a", "schema"])


def test_report_without_dlq_files_or_matplotlib(tmp_path, monkeypatch):
    (tmp_path / "summary.json").write_text(json.dumps({
        "pipeline": "p", "run_id": "r1", "status": "failed", "error": "boom <b>", "seconds": 1.0,
        "totals": {"records_read": 10, "dead_letters": 2},
        "steps": {"read": {"records_out": 8, "records_failed": 2}}}))
    (tmp_path / "result.json").write_text(json.dumps({"fields": [{"name": "a", "type": "int64"}]}))
    monkeypatch.setattr(report, "_matplotlib", lambda: None)
    html = report.build_report(tmp_path)
    assert "charts left out" in html and "data:image" not in html
    assert "counts from the run summary" in html and "<td>read</td><td class=\"n\">2</td>" in html
    assert "boom &lt;b&gt;" in html  # escaped
    assert "result.json" in html  # a schema-shaped file, whatever its name
