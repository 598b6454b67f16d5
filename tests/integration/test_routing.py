"""Dead letters routed with error_handling, a custom DLQ sink, and the count identity."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import yaml

from beam_etl.run import run_template

CSV = "id,amount\n1,10\n2,abc\n3,7.5\n4,oops\n5,1\n"


def _template(tmp_path: Path, body: dict) -> Path:
    (tmp_path / "in.csv").write_text(CSV)
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_error_handling_routes_dead_letters_to_a_sink(tmp_path):
    path = _template(tmp_path, {
        "name": "routed",
        "sources": [{"name": "read", "type": "ReadFromCsv",
                     "config": {"path": str(tmp_path / "in.csv"), "schema": {"amount": "string"}}}],
        "steps": [{"name": "typed", "type": "Cast", "input": "read", "config": {"fields": {"amount": "float"}},
                   "error_handling": {"output": "errors"}}],
        "sinks": [
            {"name": "good", "type": "WriteToJsonl", "input": "typed", "config": {"path": "{{ run_dir }}/good"}},
            {"name": "bad", "type": "WriteToSqlite", "input": "typed.errors",
             "config": {"database": "{{ run_dir }}/bad.sqlite", "table": "bad", "create_table": True}},
        ],
    })
    code = run_template(str(path), [], ["--runner=DirectRunner"], output_dir=str(tmp_path), run_id="r1", quiet=True)
    assert code == 0
    with sqlite3.connect(tmp_path / "r1" / "bad.sqlite") as db:
        rows = db.execute("select record, error_type, step from bad order by record").fetchall()
    assert [json.loads(r[0])["amount"] for r in rows] == ["abc", "oops"]
    assert {r[1] for r in rows} == {"type"} and {r[2] for r in rows} == {"typed"}
    summary = json.loads((tmp_path / "r1" / "summary.json").read_text())
    assert summary["steps"]["typed"]["records_failed"] == 2 and summary["steps"]["good"]["records_out"] == 3


def test_custom_dlq_sink(tmp_path):
    path = _template(tmp_path, {
        "name": "custom_dlq",
        "dlq": {"type": "WriteToSqlite",
                "config": {"database": "{{ run_dir }}/dlq.sqlite", "table": "dead_letters", "create_table": True}},
        "sources": [{"name": "read", "type": "ReadFromCsv",
                     "config": {"path": str(tmp_path / "in.csv"), "schema": {"amount": "float"}}}],
        "sinks": [{"name": "good", "type": "WriteToParquet", "input": "read", "config": {"path": "{{ run_dir }}/g"}}],
    })
    code = run_template(str(path), [], ["--runner=DirectRunner"], output_dir=str(tmp_path), run_id="r2", quiet=True)
    assert code == 0
    with sqlite3.connect(tmp_path / "r2" / "dlq.sqlite") as db:
        sources = sorted(r[0] for r in db.execute("select source from dead_letters"))
    assert sources == [f"{tmp_path / 'in.csv'}:3", f"{tmp_path / 'in.csv'}:5"]
