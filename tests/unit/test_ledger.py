"""The run ledger: every run is a row of beam_etl_runs in the state store; secrets never reach it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import beam_etl.run as run_module
from beam_etl import runs
from beam_etl.ops import ledger
from beam_etl.ops.ledger import RunLedger, RunRecord, redact_config, redact_override
from beam_etl.ops.state import STATE_FILE_NAME
from beam_etl.run import EXIT_BUDGET, EXIT_FAILED, EXIT_OK, run_template

CANARY = "canary-Ledger-Pw-5531"
LITERAL_CANARY = "canary-Literal-Tok-0907"  # typed on the command line, never registered as a secret

TEMPLATE = """name: ledger_demo
params:
  db_password: "${{BEAM_ETL_TEST_LEDGER_PASSWORD}}"
error_budget: {{max_count: {max_count}}}
sources:
  - name: rows
    type: ReadFromCsv
    config: {{path: "{csv}", schema: {{amount: float}}}}
steps:
  - name: required
    type: NullRemover
    input: rows
    config: {{drop_rows: {{fields: [name]}}}}
sinks:
  - name: out
    type: WriteToJsonl
    input: required
    config: {{path: "{sink}"}}
"""


@pytest.fixture
def canary(monkeypatch):
    monkeypatch.setenv("BEAM_ETL_TEST_LEDGER_PASSWORD", CANARY)
    return CANARY


def _template(tmp_path: Path, *, max_count: int = 100, sink: str = "{{ run_dir }}/out") -> Path:
    csv = tmp_path / "in.csv"
    csv.write_text("id,name,amount\n1,a,2.5\n2,,3\n3,c,abc\n4,d,1\n")
    path = tmp_path / "ledger_demo.yaml"
    path.write_text(TEMPLATE.format(csv=csv, sink=sink, max_count=max_count))
    return path


def _run(tmp_path: Path, template: Path, run_id: str, overrides: list[str] | None = None) -> tuple[int, dict]:
    out = tmp_path / "out"
    code = run_template(str(template), overrides, ["--runner=DirectRunner"], output_dir=str(out), run_id=run_id,
                        quiet=True)
    summary_path = out / run_id / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return code, summary


def _cli(capsys, *argv: str) -> str:
    capsys.readouterr()
    code = runs.main(list(argv))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def _store(tmp_path: Path) -> str:
    return str(tmp_path / "out" / STATE_FILE_NAME)


def test_a_run_is_recorded_with_counts_outcome_and_provenance(tmp_path, canary, capsys):
    template = _template(tmp_path)
    code, summary = _run(tmp_path, template, "run-ok", [f"params.api_token={LITERAL_CANARY}"])
    assert code == EXIT_OK and summary["outcome"] == "succeeded"
    record = RunLedger(_store(tmp_path)).get("run-ok")
    assert record is not None
    assert (record.status, record.pipeline, record.runner) == ("succeeded", "ledger_demo", "DirectRunner")
    assert record.template == str(template)
    assert record.template_sha256 == hashlib.sha256(template.read_bytes()).hexdigest()
    assert record.steps == summary["steps"] and record.totals == summary["totals"]
    assert record.totals["records_read"] == 4 and record.totals["dead_letters"] == 1
    assert record.steps["required"]["records_filtered"] == 1
    assert record.cost == summary["cost"] and record.error is None
    assert record.started_at and record.ended_at and record.seconds is not None
    env = record.environment
    assert env["pid"] > 0 and env["python"] and env["beam"] and env["host"] == record.host and record.user_name
    spec = record.config["spec"]
    assert spec["name"] == "ledger_demo" and spec["params"]["db_password"] == "***"
    assert spec["sources"][0]["config"]["path"] == str(tmp_path / "in.csv")  # the resolved config
    assert record.config["overrides"] == ["params.api_token=***"]

    row = json.dumps(record.as_dict())
    assert CANARY not in row and LITERAL_CANARY not in row
    for argv in (("list",), ("list", "--json"), ("show", "run-ok"), ("show", "run-ok", "--json")):
        shown = _cli(capsys, "--state", _store(tmp_path), *argv)
        assert "run-ok" in shown and CANARY not in shown and LITERAL_CANARY not in shown
    assert "succeeded" in _cli(capsys, "list", "--state", _store(tmp_path))


def test_a_failing_run_records_failed_and_a_redacted_error(tmp_path, canary, capsys, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    template = _template(tmp_path, sink=f"{blocker}/${{BEAM_ETL_TEST_LEDGER_PASSWORD}}/out")
    code, summary = _run(tmp_path, template, "run-bad")
    assert code == EXIT_FAILED and summary["status"] == "failed"
    record = RunRecord(**json.loads(_cli(capsys, "show", "run-bad", "--json", "--state", _store(tmp_path))))
    assert record.status == "failed" and record.error and "***" in record.error
    assert record.ended_at and record.cost["cpu_seconds"] >= 0
    assert CANARY not in json.dumps(record.as_dict())
    assert CANARY not in (tmp_path / "out" / "run-bad" / "summary.json").read_text()
    listed = _cli(capsys, "list", "--state", _store(tmp_path))
    assert "run-bad" in listed and "failed" in listed and CANARY not in listed
    assert CANARY not in caplog.text  # log records are redacted whatever handler gets them


def test_an_exceeded_error_budget_is_its_own_outcome(tmp_path, canary):
    code, summary = _run(tmp_path, _template(tmp_path, max_count=0), "run-budget")
    assert code == EXIT_BUDGET and summary["outcome"] == "budget_exceeded"
    record = RunLedger(_store(tmp_path)).get("run-budget")
    assert record is not None and record.status == "budget_exceeded" and "error budget" in (record.error or "")


def test_a_crashed_run_stays_running(tmp_path, canary, monkeypatch, capsys):
    def crash(result):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "summarise", crash)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, _template(tmp_path), "run-crash")
    ledger._OPEN.pop("run-crash", None)
    record = RunLedger(_store(tmp_path)).get("run-crash")
    assert record is not None and record.status == "running" and record.ended_at is None
    assert "running" in _cli(capsys, "list", "--state", _store(tmp_path))


def test_list_filters_limits_and_finds_the_default_store(tmp_path, monkeypatch, capsys):
    store = RunLedger(str(tmp_path / "out" / STATE_FILE_NAME))
    for i, pipeline in enumerate(["a", "b", "a"]):
        store.save(RunRecord(run_id=f"r{i}", pipeline=pipeline, status="succeeded", started_at=f"2026-01-0{i + 1}"))
    store.save(RunRecord(run_id="r1", pipeline="b", status="failed", started_at="2026-01-02"))  # an update
    assert [r.run_id for r in store.list()] == ["r2", "r1", "r0"]
    assert [r.run_id for r in store.list("a", limit=1)] == ["r2"]
    assert store.get("r1").status == "failed" and store.get("nope") is None
    monkeypatch.setenv("BEAM_ETL_OUTPUT_DIR", str(tmp_path / "out"))  # what run.py and beam_etl.state use
    listed = json.loads(_cli(capsys, "list", "--pipeline", "a", "--json"))
    assert [r["run_id"] for r in listed] == ["r2", "r0"]
    assert runs.main(["show", "nope"]) == 1


def test_config_redaction_masks_secret_names_urls_and_registered_values():
    config = {"password": "p", "api_key": "k", "token": {"nested": 1}, "credentials": ["x"], "key": "abc",
              "keys": ["order_id"], "dsn": "postgresql://u:pw-in-url@host/db", "empty_secret": "", "n": 3}
    masked = redact_config(config)
    assert masked["password"] == masked["api_key"] == masked["token"] == masked["credentials"] == "***"
    assert masked["key"] == "***" and masked["keys"] == ["order_id"]  # column lists stay readable
    assert masked["dsn"] == "postgresql://u:***@host/db" and masked["empty_secret"] == "" and masked["n"] == 3
    assert redact_override("sources.db.config.password=x") == "sources.db.config.password=***"
    assert redact_override("params.input=in.csv") == "params.input=in.csv"
