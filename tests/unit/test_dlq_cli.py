"""The DLQ command line (list / show / replay) and the ReadFromDlq source, on DLQ files written here."""

from __future__ import annotations

import json
import sqlite3

import apache_beam as beam
import pyarrow as pa
import pytest
import yaml
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline
from apache_beam.testing.util import BeamAssertException, assert_that

from beam_etl import dlq as cli
from beam_etl import registry
from beam_etl.io.dlq_source import ReadFromDlq, list_dlq_files, records_to_batch
from beam_etl.ops.context import RunContext
from beam_etl.ops.dlq import dead_letter
from beam_etl.ops.metrics import summarise
from beam_etl.transforms.base import BatchStep, RecordError, batch_attempt, batch_source

RUN_A = "20261127T101500Z-aaaaaa"
RUN_B = "20261127T111500Z-bbbbbb"
RUN_C = "20261127T121500Z-cccccc"


def envelope(record, step, error_type, run_id, attempt=1, source="in.csv:2", error="bad value"):
    ctx = RunContext(pipeline="orders", run_id=run_id, run_dir="")
    return dead_letter(record, error_type=error_type, error=error, step=step, source=source,
                       exception="ValueError", attempt=attempt, ctx=ctx)


def write_jsonl(path, rows, record_as_text=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            if isinstance(row, str):
                handle.write(row + "\n")
                continue
            if record_as_text:  # what dead_letters_to_batch + a plain JSONL writer produce
                row = {**row, "record": json.dumps(row["record"])}
            handle.write(json.dumps(row) + "\n")


@pytest.fixture
def root(tmp_path):
    """Three runs: A with a summary and mixed dead letters, B without a summary, C without any."""
    out = tmp_path / "beam_etl_output"
    run_a = out / RUN_A
    run_a.mkdir(parents=True)
    (run_a / "summary.json").write_text(json.dumps({"pipeline": "orders", "run_id": RUN_A, "status": "failed"}))
    write_jsonl(run_a / "dlq" / "part-00000-of-00002.jsonl", [
        envelope({"id": 1, "amount": "abc"}, "clean", "validation", RUN_A, source="in.csv:2"),
        envelope({"id": 2, "amount": -5, "extra": "e"}, "clean", "validation", RUN_A, source="in.csv:3"),
        envelope("1;;;broken", "orders", "parse", RUN_A, source="in.csv:4", error="expected 3 fields"),
    ])
    write_jsonl(run_a / "dlq" / "part-00001-of-00002.jsonl", [
        envelope({"id": 3, "amount": 7, "note": "dup"}, "load", "constraint", RUN_A, attempt=2,
                 source="orders", error="UNIQUE constraint failed: orders.id"),
    ])
    (run_a / "dlq" / ".temp-beam").mkdir()
    write_jsonl(run_a / "dlq" / ".temp-beam" / "partial.jsonl", [envelope({"id": 9}, "x", "internal", RUN_A)])
    write_jsonl(out / RUN_B / "dlq" / "dead.jsonl", [
        envelope({"id": 10, "amount": "x"}, "clean", "validation", RUN_B),
        "this line is not JSON",
    ], record_as_text=True)
    (out / RUN_C).mkdir()
    (out / RUN_C / "summary.json").write_text(json.dumps({"pipeline": "daily", "run_id": RUN_C,
                                                          "status": "succeeded"}))
    return out


@pytest.fixture
def template(tmp_path):
    path = tmp_path / "orders.yaml"
    path.write_text(yaml.safe_dump({
        "name": "orders",
        "sources": [{"name": "orders", "type": "ReadFromCsv", "config": {"path": "in.csv"}},
                    {"name": "customers", "type": "ReadFromCsv", "config": {"path": "c.csv"}}],
        "sinks": [{"name": "out", "type": "WriteToParquet", "input": "orders", "config": {"path": "o"}}],
    }))
    return path


def cli_run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------------------
# list / show
# --------------------------------------------------------------------------------------


def test_list_shows_one_line_per_run_with_counts_by_step_and_type(root, capsys):
    code, out, _ = cli_run(capsys, "list", root)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["RUN_ID", "PIPELINE", "STATUS", "DEAD_LETTERS", "BY", "STEP:ERROR_TYPE"]
    assert lines[1].split()[:4] == [RUN_A, "orders", "failed", "4"]
    assert lines[1].endswith("clean:validation=2, load:constraint=1, orders:parse=1")
    assert lines[2].split() == [RUN_B, "orders", "-", "1", "clean:validation=1"]  # pipeline from the envelopes
    assert lines[3].split() == [RUN_C, "daily", "succeeded", "0", "-"]


def test_list_uses_the_environment_default_root_and_reports_a_missing_one(root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BEAM_ETL_OUTPUT_DIR", str(root))
    code, out, _ = cli_run(capsys, "list")
    assert code == 0 and RUN_A in out
    code, _, err = cli_run(capsys, "list", tmp_path / "nowhere")
    assert code == 2 and "no such folder" in err


def test_show_prints_readable_envelopes_with_filters_and_limit(root, capsys):
    code, out, _ = cli_run(capsys, "show", RUN_A, "--root", root, "--step", "clean", "--limit", "1")
    assert code == 0
    assert f"run {RUN_A} (pipeline orders): 2 dead letters (filters: step=clean)" in out
    assert "[1] clean | validation | attempt 1 |" in out
    assert "source:  in.csv:2" in out and "error:   ValueError: bad value" in out
    assert 'record:  {"id": 1, "amount": "abc"}' in out
    assert "[2]" not in out and "showing 1 of 2" in out


def test_show_accepts_a_prefix_a_folder_or_a_file(root, capsys):
    _, by_prefix, _ = cli_run(capsys, "show", RUN_A[:20], "--root", root, "--error-type", "constraint")
    assert "1 dead letters" in by_prefix and "UNIQUE constraint failed" in by_prefix
    _, by_folder, _ = cli_run(capsys, "show", root / RUN_A)
    assert "4 dead letters" in by_folder and "partial" not in by_folder  # hidden temp folders are left out
    _, by_file, err = cli_run(capsys, "show", root / RUN_B / "dlq" / "dead.jsonl")
    assert "1 dead letters" in by_file and '{"id": 10, "amount": "x"}' in by_file  # JSON-text record decoded
    assert "1 lines are not DLQ envelopes" in err and "dead.jsonl:2" in err


def test_show_json_prints_jsonl_of_the_selected_envelopes(root, capsys):
    code, out, _ = cli_run(capsys, "show", RUN_A, "--root", root, "--json", "--error-type", "validation")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["record"]["id"] for r in rows] == [1, 2]
    assert {r["run_id"] for r in rows} == {RUN_A} and all(r["error_type"] == "validation" for r in rows)


def test_show_unknown_run_and_bad_options_fail_with_a_message(root, capsys):
    code, _, err = cli_run(capsys, "show", "2025", "--root", root)
    assert code == 2 and "neither a file, a folder nor a run id" in err and RUN_C in err
    code, _, err = cli_run(capsys, "show", "20261127T1", "--root", root)
    assert code == 2 and "matches several runs" in err
    with pytest.raises(SystemExit) as info:
        cli.main(["show", RUN_A, "--error-type", "oops"])
    assert info.value.code == 2
    assert "invalid choice: 'oops'" in capsys.readouterr().err


def test_help_explains_the_commands(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert all(word in text for word in ("list", "show", "replay", "examples:", "constraint"))


# --------------------------------------------------------------------------------------
# replay
# --------------------------------------------------------------------------------------


def test_replay_dry_run_reports_selection_and_skipped_raw_records(root, template, capsys, monkeypatch):
    import beam_etl.run

    monkeypatch.setattr(beam_etl.run, "run_template", lambda *a, **k: pytest.fail("a dry run must not run"))
    code, out, _ = cli_run(capsys, "replay", RUN_A, "--root", root, "--template", template, "--dry-run")
    assert code == 0
    assert f"replay from:   {RUN_A}" in out and "2 file(s)" in out
    assert "into source:   orders (ReadFromCsv -> ReadFromDlq)" in out
    assert "selected:      4 of 4 dead letters" in out
    assert "replayable:    3 records (clean:validation=2, load:constraint=1)" in out
    assert "attempts:      2 at attempt 1 -> 2, 1 at attempt 2 -> 3" in out
    assert "skipped:       1 dead letters whose record is not a JSON object (orders:parse=1)" in out
    assert "dry run: no pipeline was run" in out

    code, out, _ = cli_run(capsys, "replay", RUN_A, "--root", root, "--template", template, "--dry-run",
                           "--into", "customers", "--step", "clean", "--set", "params.x=1")
    assert code == 0 and "into source:   customers" in out
    assert "selected:      2 of 4 dead letters (filters: step=clean)" in out and "skipped" not in out
    assert "overrides:     params.x=1" in out


def test_replay_rejects_an_unknown_source_or_template(root, template, capsys):
    code, _, err = cli_run(capsys, "replay", RUN_A, "--root", root, "--template", template, "--into", "nope")
    assert code == 2 and "--into 'nope'" in err and "['orders', 'customers']" in err
    code, _, err = cli_run(capsys, "replay", RUN_A, "--root", root, "--template", "no_such_template")
    assert code == 2 and "no_such_template" in err


def test_replay_hands_run_template_a_dlq_source(root, template, capsys, monkeypatch):
    import beam_etl.run

    calls = []
    monkeypatch.setattr(beam_etl.run, "run_template", lambda *args, **kwargs: calls.append(args) or 0)
    code, _, _ = cli_run(capsys, "replay", RUN_A, "--root", root, "--template", template, "--error-type",
                         "validation", "--set", "params.x=1", "--runner=DirectRunner")
    assert code == 0
    (tpl, overrides, beam_args, (into, replacement)), = calls
    assert (tpl, overrides, beam_args, into) == (str(template), ["params.x=1"], ["--runner=DirectRunner"], "orders")
    assert replacement == {"type": "ReadFromDlq", "config": {
        "path": str((root / RUN_A / "dlq").resolve()), "bump_attempt": True, "error_type": "validation"}}


def test_replay_runs_end_to_end_and_bumps_the_attempt(tmp_path, capsys, monkeypatch):
    """A real replay: SQLite in and out, dead letters into an SQLite table (any sink can be the DLQ)."""
    monkeypatch.setattr(registry, "_BUILTIN_MODULES", ("beam_etl.io.sql", "beam_etl.io.dlq_source"))
    monkeypatch.setenv("BEAM_ETL_OUTPUT_DIR", str(tmp_path / "out"))
    src, dst, dead = (str(tmp_path / n) for n in ("src.db", "dst.db", "dead.db"))
    sqlite3.connect(src).execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)").connection.close()
    with sqlite3.connect(dst) as conn:
        conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO people VALUES (3, 'already here')")
    template = tmp_path / "people.yaml"
    template.write_text(yaml.safe_dump({
        "name": "people",
        "dlq": {"type": "WriteToSqlite", "config": {"database": dead, "table": "dead_letters", "create_table": True}},
        "sources": [{"name": "people", "type": "ReadFromSqlite", "config": {"database": src, "table": "people"}}],
        "sinks": [{"name": "store", "type": "WriteToSqlite", "input": "people",
                   "config": {"database": dst, "table": "people"}}],
    }))
    dlq_file = tmp_path / "old" / "dlq" / "part.jsonl"
    write_jsonl(dlq_file, [
        envelope({"id": 1, "name": "one"}, "store", "constraint", RUN_A),
        envelope({"id": 3, "name": "dup"}, "store", "constraint", RUN_A, attempt=2),
        envelope("3,raw", "people", "parse", RUN_A),
    ])
    code, out, err = cli_run(capsys, "replay", dlq_file, "--template", template, "--runner=DirectRunner")
    assert code == 0, err
    assert "replayable:    2 records" in out
    with sqlite3.connect(dst) as conn:
        assert conn.execute("SELECT id, name FROM people ORDER BY id").fetchall() == [(1, "one"), (3, "already here")]
    with sqlite3.connect(dead) as conn:
        rows = conn.execute("SELECT step, error_type, attempt, record, run_id FROM dead_letters").fetchall()
    assert len(rows) == 1
    step, error_type, attempt, record, run_id = rows[0]
    assert (step, error_type, attempt, json.loads(record)) == ("store", "constraint", 3, {"id": 3, "name": "dup"})
    assert run_id != RUN_A


# --------------------------------------------------------------------------------------
# ReadFromDlq
# --------------------------------------------------------------------------------------


class FailOnTwo(BatchStep):
    """Dead-letters the row with id 2 (to see the attempt a replay gives its dead letters)."""

    def batch_fn(self):
        def fn(batch):
            if 2 in batch.column("id").to_pylist():
                raise RecordError("id 2 is still wrong")
            return batch
        return fn


def test_read_from_dlq_emits_records_skips_raw_text_and_bumps_attempts(root):
    def check_batches(batches):
        rows = sorted((r for b in batches for r in b.to_pylist()), key=lambda r: r["id"])
        if [r["id"] for r in rows] != [1, 2, 3, 10]:
            raise BeamAssertException(rows)
        # in one batch "amount" mixes text and numbers, so it becomes text; "extra" is null where missing
        if [r["amount"] for r in rows] != ["abc", "-5", 7, "x"] or [r.get("extra") for r in rows[:2]] != [None, "e"]:
            raise BeamAssertException(rows)
        attempts = sorted(batch_attempt(b) for b in batches)
        if attempts != [2, 2, 3] or not all(batch_source(b).startswith("dlq:") for b in batches):
            raise BeamAssertException(attempts)

    def check_dead(letters):
        (letter,) = [d for d in letters if d["step"] == "replayed"]
        assert letter["error_type"] == "parse" and letter["record"] == "this line is not JSON"
        assert letter["source"].endswith("dead.jsonl:2")
        (failed,) = [d for d in letters if d["step"] == "check"]
        assert failed["record"]["id"] == 2 and failed["attempt"] == 2

    p = BeamPipeline()
    records, dead = p | ReadFromDlq(path=str(root / "*" / "dlq" / "*.jsonl"), step_name="replayed")
    _, failed = records | "check" >> FailOnTwo()
    assert_that(records, check_batches)
    assert_that((dead, failed) | beam.Flatten(), check_dead, label="dead letters")
    result = p.run()
    result.wait_until_finish()
    counts = summarise(result)["replayed"]
    # 6 envelopes + 1 unreadable line: 4 records out, 1 raw-text record skipped, the bad line failed.
    assert (counts["records_in"], counts["records_out"], counts["records_filtered"], counts["records_failed"]) \
        == (6, 4, 1, 1)
    skipped = [c for c in result.metrics().query()["counters"] if c.key.metric.name == "envelopes_skipped"]
    assert sum(c.committed for c in skipped) == 1


def test_read_from_dlq_filters_and_keeps_attempts_when_asked(root):
    def check(batches):
        rows = [r for b in batches for r in b.to_pylist()]
        if rows != [{"id": 3, "amount": 7, "note": "dup"}] or batch_attempt(batches[0]) != 2:
            raise BeamAssertException(rows)

    p = BeamPipeline()
    glob = str(root / RUN_A / "dlq" / "*.jsonl")
    records, _ = p | ReadFromDlq(path=glob, step="load", error_type="constraint", bump_attempt=False)
    assert_that(records, check)
    p.run().wait_until_finish()


def test_read_from_dlq_validates_its_options(tmp_path, root):
    with pytest.raises(ValueError, match="path: .*does not exist"):
        ReadFromDlq(path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="matches no files"):
        ReadFromDlq(path=str(tmp_path / "*.jsonl"))
    with pytest.raises(ValueError, match="error_type: 'oops' is not one of"):
        ReadFromDlq(path=str(root), error_type="oops")
    entry = registry._TABLE["ReadFromDlq"]
    assert entry.kind == "source"
    assert entry.config_model.model_validate({"path": str(root)}).bump_attempt is True


def test_dlq_file_listing_and_record_batches(root):
    files = list_dlq_files(str(root / RUN_A / "dlq"))
    assert [f.rsplit("/", 1)[-1] for f in files] == ["part-00000-of-00002.jsonl", "part-00001-of-00002.jsonl"]
    batch = records_to_batch([{"a": 1}, {"b": "x"}, {"a": 2, "b": None}])
    assert batch.schema.names == ["a", "b"] and batch.column("a").to_pylist() == [1, None, 2]
    assert batch.schema.field("a").type == pa.int64()
