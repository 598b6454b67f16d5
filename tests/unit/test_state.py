"""Incremental-load state: typed values, the SQLite store, and cursors that move only after success."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import time
from pathlib import Path

import pytest

from beam_etl.ops.state import (
    IncrementalConfig,
    SavedState,
    SqliteStateStore,
    decode_value,
    encode_value,
    files_state,
    newest,
    open_store,
)
from beam_etl.run import EXIT_BUDGET, EXIT_CONFIG, EXIT_OK, run_template
from beam_etl.state import main as state_main

VALUES = [7, 2.5, decimal.Decimal("12.340"), "abc", dt.date(2024, 2, 29), dt.datetime(2024, 1, 1, 12, 30),
          dt.datetime(2024, 1, 1, 12, 30, tzinfo=dt.UTC), [{"path": "/a", "size": 1, "mtime": 2.0}], None]


@pytest.mark.parametrize("value", VALUES, ids=[type(v).__name__ for v in VALUES])
def test_values_keep_their_type_through_json(value):
    encoded = json.loads(json.dumps(encode_value(value)))
    back = decode_value(encoded)
    assert back == value and type(back) is type(value)


def test_newest_mixes_naive_and_aware_datetimes_as_utc():
    naive, aware = dt.datetime(2024, 1, 1, 12), dt.datetime(2024, 1, 1, 11, tzinfo=dt.UTC)
    assert newest(naive, aware) is naive and newest(None, aware) is aware and newest(3, None) == 3


def test_sqlite_store_put_get_list_delete(tmp_path):
    store = open_store(str(tmp_path / "s" / "state.sqlite"))
    assert isinstance(store, SqliteStateStore) and store.get("p", "src") is None
    store.put(SavedState("p", "src", "cursor", dt.datetime(2024, 5, 1, tzinfo=dt.UTC), "r1", "now"))
    store.put(SavedState("p", "src", "cursor", dt.datetime(2024, 6, 1, tzinfo=dt.UTC), "r2", "later"))
    store.put(SavedState("q", "other", "cursor", 5, "r3", "now"))
    got = store.get("p", "src")
    assert got.value == dt.datetime(2024, 6, 1, tzinfo=dt.UTC) and got.run_id == "r2"
    assert [s.pipeline for s in store.list()] == ["p", "q"] and len(store.list("q")) == 1
    assert store.delete("p") == 1 and store.get("p", "src") is None
    assert open_store(f"sqlite://{tmp_path}/s/state.sqlite").get("q", "other").value == 5


def test_files_state_reads_new_and_changed_files():
    previous = [{"path": "a", "size": 1, "mtime": 1.0}, {"path": "b", "size": 2, "mtime": 1.0}]
    listed = [{"path": "a", "size": 1, "mtime": 1.0}, {"path": "b", "size": 3, "mtime": 2.0},
              {"path": "c", "size": 1, "mtime": 1.0}]
    todo, processed = files_state(previous, listed)
    assert [e["path"] for e in todo] == ["b", "c"]
    assert [e["path"] for e in processed] == ["a", "b", "c"] and processed[1]["size"] == 3


def test_incremental_config_checks_its_mode():
    with pytest.raises(ValueError, match="cursor_field is required"):
        IncrementalConfig()
    with pytest.raises(ValueError, match="does not apply"):
        IncrementalConfig(mode="new_files", cursor_field="x")


# ------------------------------------------------------------------ end to end with file sources

def _template(tmp_path: Path, budget: str = "") -> Path:
    path = tmp_path / "incremental.yaml"
    path.write_text(f"""
name: incremental_files
params:
  input: "{tmp_path / 'in'}"
{budget}
sources:
  - name: orders
    type: ReadFromCsv
    config:
      path: "{{{{ input }}}}"
      incremental: {{mode: new_files}}
sinks:
  - name: out
    type: WriteToJsonl
    input: orders
    config: {{path: "{{{{ run_dir }}}}/out", num_shards: 1}}
""")
    return path


def _write_csv(folder: Path, name: str, rows: list[str]) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text("id,amount\n" + "\n".join(rows) + "\n")


def _run(template: Path, out: Path, run_id: str, *flags: str) -> tuple[int, list[dict]]:
    code = run_template(str(template), [], ["--runner=DirectRunner"], output_dir=str(out), run_id=run_id,
                        quiet=True, full_refresh="--full-refresh" in flags)
    rows: list[dict] = []
    for path in sorted((out / run_id).glob("out*.jsonl")):
        rows.extend(json.loads(line) for line in path.read_text().splitlines() if line)
    return code, rows


def test_new_files_are_read_once_and_state_moves_only_after_success(tmp_path, capsys):
    inbox, out = tmp_path / "in", tmp_path / "out"
    _write_csv(inbox, "a.csv", ["1,10", "2,20"])
    _write_csv(inbox, "b.csv", ["3,30"])
    template = _template(tmp_path)

    code, rows = _run(template, out, "r1")
    assert code == EXIT_OK and sorted(r["id"] for r in rows) == [1, 2, 3]
    code, rows = _run(template, out, "r2")
    assert code == EXIT_OK and rows == []  # nothing new

    _write_csv(inbox, "c.csv", ["4,40"])
    time.sleep(0.01)
    _write_csv(inbox, "a.csv", ["1,10", "2,20", "5,50"])  # grew: read again
    code, rows = _run(template, out, "r3")
    assert code == EXIT_OK and sorted(r["id"] for r in rows) == [1, 2, 4, 5]

    code, rows = _run(template, out, "r4", "--full-refresh")
    assert code == EXIT_OK and sorted(r["id"] for r in rows) == [1, 2, 3, 4, 5]
    summary = json.loads((out / "r4" / "summary.json").read_text())
    assert summary["state"][0]["source"] == "orders" and len(summary["state"][0]["to"]["value"]) == 3

    assert state_main(["--state", str(out / "beam_etl_state.sqlite"), "list"]) == 0
    listed = capsys.readouterr().out
    assert "incremental_files" in listed and "3 file(s) read" in listed and "r4" in listed


def test_a_failed_run_does_not_move_the_state(tmp_path):
    inbox, out = tmp_path / "in", tmp_path / "out"
    _write_csv(inbox, "a.csv", ["1,10"])
    template = _template(tmp_path, budget="error_budget: {max_count: 0}")
    assert _run(template, out, "ok")[0] == EXIT_OK

    _write_csv(inbox, "b.csv", ['2,"unterminated'])  # a malformed row: the budget of 0 dead letters fails the run
    code, _ = _run(template, out, "failed")
    assert code == EXIT_BUDGET
    assert not json.loads((out / "failed" / "summary.json").read_text())["state"]

    os.remove(inbox / "b.csv")
    _write_csv(inbox, "b.csv", ["2,20"])  # fixed: the next run reads it, because the failed one saved nothing
    code, rows = _run(template, out, "retry")
    assert code == EXIT_OK and [r["id"] for r in rows] == [2]


def test_state_cli_show_and_reset(tmp_path, capsys):
    url = str(tmp_path / "state.sqlite")
    open_store(url).put(SavedState("pipe", "src", "cursor", dt.date(2024, 1, 2), "run-9", "t"))
    assert state_main(["--state", url, "show", "pipe", "src"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["value"] == {"type": "date", "value": "2024-01-02"} and shown["run_id"] == "run-9"
    assert state_main(["--state", url, "reset", "pipe", "src"]) == 0
    assert "1 saved state(s) removed" in capsys.readouterr().out
    assert state_main(["--state", url, "show", "pipe", "src"]) == 1


def test_cursor_mode_on_a_file_source_is_a_config_error(tmp_path, capsys):
    _write_csv(tmp_path / "in", "a.csv", ["1,10"])
    template = _template(tmp_path)
    template.write_text(template.read_text().replace("{mode: new_files}", "{cursor_field: id}"))
    assert run_template(str(template), [], ["--runner=DirectRunner"], output_dir=str(tmp_path / "out"),
                        quiet=True) == EXIT_CONFIG
    assert "new_files only" in capsys.readouterr().err


# ------------------------------------------------------------------ SQLite cursor reads

def _sqlite_template(tmp_path: Path) -> Path:
    path = tmp_path / "sqlite_incremental.yaml"
    path.write_text(f"""
name: sqlite_incremental
sources:
  - name: src
    type: ReadFromSqlite
    config:
      database: "{tmp_path / 'src.sqlite'}"
      table: orders
      incremental: {{cursor_field: updated_at, primary_key: [id]}}
sinks:
  - name: dst
    type: WriteToSqlite
    input: src
    config: {{database: "{tmp_path / 'dst.sqlite'}", table: orders, mode: upsert, key: [id], create_table: true}}
""")
    return path


def test_sqlite_cursor_reads_only_rows_at_or_after_the_saved_cursor(tmp_path):
    import sqlite3

    src = sqlite3.connect(tmp_path / "src.sqlite")
    src.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, name TEXT, updated_at DATETIME)")
    src.executemany("INSERT INTO orders VALUES (?, ?, ?)",
                    [(1, "a", "2024-01-01 10:00:00"), (2, "b", "2024-01-01 11:00:00")])
    src.commit()
    template, out = _sqlite_template(tmp_path), tmp_path / "out"

    def run(run_id: str) -> int:
        assert run_template(str(template), [], ["--runner=DirectRunner"], output_dir=str(out), run_id=run_id,
                            quiet=True) == EXIT_OK
        return json.loads((out / run_id / "summary.json").read_text())["steps"]["src"]["records_out"]

    assert run("r1") == 2
    assert run("r2") == 1  # the row equal to the cursor, read again (closed start)
    src.execute("INSERT INTO orders VALUES (3, 'c', '2024-01-01 12:00:00')")
    src.execute("UPDATE orders SET name = 'A', updated_at = '2024-01-02 09:00:00' WHERE id = 1")
    src.commit()
    assert run("r3") == 3  # ids 1 and 3 are newer, 2 equals the saved cursor
    dst = sqlite3.connect(tmp_path / "dst.sqlite")
    assert dst.execute("SELECT id, name FROM orders ORDER BY id").fetchall() == [(1, "A"), (2, "b"), (3, "c")]
    saved = open_store(str(out / "beam_etl_state.sqlite")).get("sqlite_incremental", "src")
    assert saved.value == dt.datetime(2024, 1, 2, 9, 0)


def test_a_state_url_password_is_a_secret_even_from_the_command_line(capsys):
    from beam_etl.ops.secrets import redact

    store = open_store("postgresql://etl:St4te-Canary-Pw@127.0.0.1:1/state")
    assert "St4te-Canary-Pw" not in repr(store) and redact("pw St4te-Canary-Pw") == "pw ***"
    assert state_main(["--state", "postgresql://etl:St4te-Canary-Pw@127.0.0.1:1/state", "list"]) == 2
    out = capsys.readouterr()
    assert "St4te-Canary-Pw" not in out.out + out.err and "127.0.0.1:1/state" in out.err
