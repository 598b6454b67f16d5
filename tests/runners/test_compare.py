"""The output comparison itself: it must see every kind of difference between two runs."""

from __future__ import annotations

import json
import sqlite3

import pyarrow as pa
import pyarrow.parquet as pq

from tests.runners.compare import differences, logical_name, snapshot


def _write_run(root, rows, letters, extra_row=None):
    root.mkdir()
    table = pa.Table.from_pylist(rows + ([extra_row] if extra_row else []))
    pq.write_table(table.slice(0, 1), root / "out-00000-of-00002.parquet")
    pq.write_table(table.slice(1), root / "out-00001-of-00002.parquet")
    (root / "dlq").mkdir()
    (root / "dlq" / "part-00000-of-00001.jsonl").write_text("\n".join(json.dumps(x) for x in letters) + "\n")
    with sqlite3.connect(root / "db.sqlite") as conn:
        conn.execute("CREATE TABLE t (k TEXT, v REAL)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(r["k"], r["v"]) for r in rows])
    (root / "summary.json").write_text(json.dumps({"run_id": root.name}))
    return snapshot(root)


ROWS = [{"k": "a", "v": 1.0}, {"k": "b", "v": 2.5}, {"k": "c", "v": 1 / 3}]
LETTER = {"record": '{"k": "z"}', "error": "bad", "run_id": "r1", "failed_at": "2026-01-01T00:00:00Z"}


def test_logical_names_drop_shard_numbers():
    assert logical_name("data/orders-00003-of-00010.parquet") == "data/orders.parquet"


def test_same_rows_in_other_order_and_run_ids_compare_equal(tmp_path):
    one = _write_run(tmp_path / "one", ROWS, [LETTER])
    other = _write_run(tmp_path / "two", list(reversed(ROWS)),
                       [{**LETTER, "run_id": "r2", "failed_at": "2026-02-02T00:00:00Z"}])
    assert set(one) == {"out.parquet", "dlq/part.jsonl", "db.sqlite:t"}
    assert differences(one, other) == []


def test_float_noise_is_tolerated_but_real_changes_are_not(tmp_path):
    one = _write_run(tmp_path / "one", ROWS, [LETTER])
    noisy = _write_run(tmp_path / "two", [*ROWS[:2], {"k": "c", "v": 1 / 3 + 1e-15}], [LETTER])
    changed = _write_run(tmp_path / "three", [*ROWS[:2], {"k": "c", "v": 0.3334}], [LETTER])
    assert differences(one, noisy) == []
    problems = differences(one, changed)
    assert any(p.startswith("out.parquet") for p in problems) and any(p.startswith("db.sqlite:t") for p in problems)


def test_missing_extra_and_dead_letter_differences_are_reported(tmp_path):
    one = _write_run(tmp_path / "one", ROWS, [LETTER])
    extra = _write_run(tmp_path / "two", ROWS, [LETTER], extra_row={"k": "d", "v": 4.0})
    other_letter = _write_run(tmp_path / "three", ROWS, [{**LETTER, "error": "different"}])
    assert any("3 rows expected, 4 written" in p for p in differences(one, extra))
    assert any(p.startswith("dlq/part.jsonl") for p in differences(one, other_letter))
