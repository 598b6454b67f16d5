"""SQLite connectors: type mapping, projection, queries, partitioned reads, write modes, DLQ routing."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import sqlite3

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from pydantic import ValidationError

from beam_etl import registry
from beam_etl.io import sql
from beam_etl.io.sql import ReadFromSqlite, SqliteDialect, WriteToSqlite
from beam_etl.ops.metrics import summarise
from beam_etl.transforms.base import batch_attempt, batch_source, tag_attempt


def run(build) -> dict[str, dict[str, int]]:
    """Builds a pipeline with ``build(p)``, runs it and returns the per-step counters."""
    p = BeamPipeline()
    build(p)
    result = p.run()
    result.wait_until_finish()
    return summarise(result)


def rows_of(batches, key="id"):
    rows = [r for b in batches for r in b.to_pylist()]
    return sorted(rows, key=lambda r: (r[key] is None, r[key]))


def expect_rows(expected, key="id"):
    def check(batches):
        got = rows_of(batches, key)
        if got != expected:
            raise BeamAssertException(f"rows differ:\n got {got[:5]}...\nwant {expected[:5]}...")
    return check


def db_rows(path, sql_text, params=()):
    with sqlite3.connect(path) as conn:
        return conn.execute(sql_text, params).fetchall()


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "test.db")


ALL_TYPES = pa.schema([
    ("id", pa.int64()), ("small", pa.int8()), ("name", pa.string()), ("price", pa.float64()),
    ("ok", pa.bool_()), ("day", pa.date32()), ("at", pa.timestamp("us")),
    ("at_utc", pa.timestamp("us", "UTC")), ("amount", pa.decimal128(12, 3)), ("raw", pa.binary()),
    ("tags", pa.list_(pa.string())), ("meta", pa.struct([("k", pa.string()), ("n", pa.int64())])),
    ("clock", pa.time64("us")),
])


def all_types_batch(n=5) -> pa.RecordBatch:
    rows = []
    for i in range(n):
        rows.append({
            "id": i, "small": i - 2, "name": f"name {i}" if i != 3 else None, "price": i * 1.5,
            "ok": i % 2 == 0, "day": dt.date(2024, 2, 1 + i), "at": dt.datetime(2024, 2, 1, 12, 30, i, 250 * i),
            "at_utc": dt.datetime(2024, 2, 1, 8, 0, i, tzinfo=dt.UTC),
            "amount": decimal.Decimal(f"{i}123.456"), "raw": bytes([0, 255, i]),
            "tags": ["a", str(i)], "meta": {"k": "v", "n": i}, "clock": dt.time(10, i, 0, 5),
        })
    rows[4] = {"id": 4, **{k: None for k in ALL_TYPES.names if k != "id"}}
    return pa.RecordBatch.from_pylist(rows, schema=ALL_TYPES)


# --------------------------------------------------------------------------------------
# Reading and writing every type
# --------------------------------------------------------------------------------------


def test_round_trip_of_all_types(db):
    batch = all_types_batch()
    run(lambda p: p | beam.Create([batch]) | WriteToSqlite(database=db, table="everything", create_table=True,
                                                            key=["id"]))
    declared = dict(db_rows(db, "SELECT name, type FROM pragma_table_info('everything')"))
    assert declared["at_utc"] == "TIMESTAMP WITH TIME ZONE" and declared["amount"] == "DECIMAL(12,3)"
    stored = db_rows(db, "SELECT ok, day, at, at_utc, amount, tags, meta FROM everything WHERE id = 1")[0]
    assert stored == (0, "2024-02-02", "2024-02-01 12:30:01.000250", "2024-02-01 08:00:01.000000Z", 1123.456,
                      '["a", "1"]', '{"k": "v", "n": 1}')

    expected_schema = pa.schema([
        ("id", pa.int64()), ("small", pa.int64()), ("name", pa.string()), ("price", pa.float64()),
        ("ok", pa.bool_()), ("day", pa.date32()), ("at", pa.timestamp("us")),
        ("at_utc", pa.timestamp("us", "UTC")), ("amount", pa.decimal128(12, 3)), ("raw", pa.binary()),
        ("tags", pa.string()), ("meta", pa.string()), ("clock", pa.time64("us")),
    ])
    want = []
    for row in batch.to_pylist():
        if row["tags"] is not None:
            row["tags"] = json.dumps(["a", str(row["id"])])
            row["meta"] = json.dumps({"k": "v", "n": row["id"]})
        want.append(row)

    def check(batches):
        for b in batches:
            if not b.schema.equals(expected_schema):
                raise BeamAssertException(f"schema {b.schema} != {expected_schema}")
            if not batch_source(b).startswith(f"sqlite:{db}:everything"):
                raise BeamAssertException(batch_source(b))
        expect_rows(want)(batches)

    def build(p):
        out, dead = p | ReadFromSqlite(database=db, table="everything")
        assert_that(out, check)
        assert_that(dead, equal_to([]), label="no dead letters")

    counts = run(build)
    assert counts["ReadFromSqlite"]["records_out"] == 5


def test_declared_types_untyped_columns_and_type_errors_go_to_dlq(db):
    with sqlite3.connect(db) as conn:
        conn.execute('CREATE TABLE t (id INTEGER PRIMARY KEY, n BIGINT, d DATE, ts DATETIME, b BOOLEAN, '
                     'x NUMERIC(6,2), f REAL, anything, blank, mixed)')
        conn.executemany("INSERT INTO t VALUES (?,?,?,?,?,?,?,?,?,?)", [
            (1, 10, "2024-01-01", "2024-01-01T10:00:00", 1, 1.5, 2, 1, None, 1),
            (2, "ten", "2024-01-02", "2024-01-02 10:00:00+02:00", "true", "2.25", 2.5, 2.5, None, "two"),
            (3, 30, "not a date", 1704103200, 0, "x", 3.0, 3, None, b"\x01"),
            (4, 40, "2024-01-04 00:00:00", "2024-01-04", 7, 123.456, None, None, None, None),
        ])

    def check_out(batches):
        got = rows_of(batches)
        assert [r["id"] for r in got] == [1], got
        schema = batches[0].schema
        assert schema.field("n").type == pa.int64() and schema.field("d").type == pa.date32()
        assert schema.field("ts").type == pa.timestamp("us") and schema.field("b").type == pa.bool_()
        assert schema.field("x").type == pa.decimal128(6, 2) and schema.field("f").type == pa.float64()
        assert schema.field("anything").type == pa.float64()  # integers and reals, no declared type
        assert schema.field("blank").type == pa.string()  # only NULLs
        assert schema.field("mixed").type == pa.binary()  # a blob among them
        assert got[0]["ts"] == dt.datetime(2024, 1, 1, 10) and got[0]["x"] == decimal.Decimal("1.50")

    def check_dead(letters):
        by_source = {d["source"]: d for d in letters}
        assert set(by_source) == {"t:2", "t:3", "t:4"}, by_source
        assert all(d["error_type"] == "type" and d["step"] == "orders" for d in letters)
        assert "column 'n'" in by_source["t:2"]["error"] and "'ten'" in by_source["t:2"]["error"]
        assert by_source["t:2"]["record"]["n"] == "ten"
        assert "column 'd'" in by_source["t:3"]["error"] and "column 'x'" in by_source["t:3"]["error"]
        assert "column 'b'" in by_source["t:4"]["error"] and "column 'x'" in by_source["t:4"]["error"]

    def build(p):
        out, dead = p | ReadFromSqlite(database=db, table="t", step_name="orders")
        assert_that(out, check_out)
        assert_that(dead, check_dead, label="dead")

    counts = run(build)["orders"]
    assert counts["records_in"] == 4 == counts["records_out"] + counts["records_failed"]
    assert counts["records_failed"] == 3


def test_lenient_values_of_declared_types_are_converted(db):
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (id INTEGER, ts TIMESTAMP, b BOOL, d DATE, s TEXT)")
        conn.executemany("INSERT INTO t VALUES (?,?,?,?,?)", [
            (1, "2024-01-02 03:04:05Z", "TRUE", "2024-01-02 00:00:00", "x"),
            (2, 1704164645, "f", "2024-01-03", b"bytes as text"),
        ])

    def check(batches):
        got = rows_of(batches)
        assert [r["ts"] for r in got] == [dt.datetime(2024, 1, 2, 3, 4, 5)] * 2
        assert [r["b"] for r in got] == [True, False]
        assert [r["d"] for r in got] == [dt.date(2024, 1, 2), dt.date(2024, 1, 3)]
        assert [r["s"] for r in got] == ["x", "bytes as text"]

    run(lambda p: assert_that((p | ReadFromSqlite(database=db, table="t"))[0], check))


# --------------------------------------------------------------------------------------
# Projection, queries, identifiers, partitions
# --------------------------------------------------------------------------------------


def odd_names_db(path):
    with sqlite3.connect(path) as conn:
        conn.execute('CREATE TABLE "order ""lines""" ("id" INTEGER PRIMARY KEY, "unit price" REAL, '
                     '"the ""name""" TEXT, "qty" INTEGER)')
        conn.executemany('INSERT INTO "order ""lines""" VALUES (?,?,?,?)',
                         [(i, i * 0.5, f"item {i}", i % 7) for i in range(1, 51)])


def test_projection_with_spaces_and_quotes_in_identifiers(db):
    odd_names_db(db)
    want = [{"the \"name\"": f"item {i}", "unit price": i * 0.5} for i in range(1, 51)]

    def check(batches):
        assert batches[0].schema.names == ['the "name"', "unit price"], batches[0].schema.names
        assert rows_of(batches, 'the "name"') == sorted(want, key=lambda r: r['the "name"'])

    run(lambda p: assert_that(
        (p | ReadFromSqlite(database=db, table='order "lines"', columns=['the "name"', "UNIT PRICE"]))[0], check))


def test_query_read_keeps_declared_types_and_infers_expressions(db):
    odd_names_db(db)
    query = ('SELECT "id", "qty", "unit price" * "qty" AS total, "the ""name""" AS label '
             'FROM "order ""lines""" WHERE "qty" > 3;')
    want = [{"id": i, "qty": i % 7, "total": i * 0.5 * (i % 7), "label": f"item {i}"}
            for i in range(1, 51) if i % 7 > 3]

    def check(batches):
        schema = batches[0].schema
        assert [f.type for f in schema] == [pa.int64(), pa.int64(), pa.float64(), pa.string()], schema
        assert rows_of(batches) == want
        assert batch_source(batches[0]).startswith(f"sqlite:{db}:query")

    run(lambda p: assert_that((p | ReadFromSqlite(database=db, query=query))[0], check))


def partition_db(path, n=3000):
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE events (k, v TEXT)")  # no key: reads split on the rowid; k holds anything
        rows = [(i * 3 if i % 10 else None, f"v{i}") for i in range(n)]
        rows += [("stray text key", "t"), (2.5, "real key")]
        conn.executemany("INSERT INTO events VALUES (?, ?)", rows)
    return n + 2


def test_partitioned_read_equals_unpartitioned(db):
    total = partition_db(db)
    dialect = SqliteDialect()
    conn = dialect.connect(db, read_only=True)
    try:
        by_rowid = sql.plan_sqlite_read(conn, sql._ReadOptions(db, "events", None, None, None, 4, 500), dialect)
        by_column = sql.plan_sqlite_read(conn, sql._ReadOptions(db, "events", None, None, "k", 5, 500), dialect)
    finally:
        conn.close()
    assert len(by_rowid) == 4 and len(by_column) == 5
    assert "rowid >= ?" in by_rowid[1].sql and '"k" IS NULL' in by_column[0].sql

    def same_rows(expected_count):
        def check(batches):
            rows = sorted((str(r["k"]), r["v"]) for b in batches for r in b.to_pylist())
            assert len(rows) == expected_count, len(rows)
            assert len(set(rows)) == expected_count
            assert max(b.num_rows for b in batches) <= 500
        return check

    def build(p):
        whole, _ = p | "Whole" >> ReadFromSqlite(database=db, table="events", batch_rows=500)
        rowid, _ = p | "ByRowid" >> ReadFromSqlite(database=db, table="events", num_partitions=4, batch_rows=500)
        column, _ = p | "ByColumn" >> ReadFromSqlite(database=db, table="events", partition_column="k",
                                                      num_partitions=5, batch_rows=500)
        query, _ = p | "Query" >> ReadFromSqlite(database=db, query="SELECT k, v FROM events",
                                                 partition_column="k", num_partitions=3, batch_rows=500)
        for name, pcoll in [("whole", whole), ("rowid", rowid), ("column", column), ("query", query)]:
            assert_that(pcoll, same_rows(total), label=f"check {name}")

    counts = run(build)
    assert {counts[s]["records_out"] for s in ("Whole", "ByRowid", "ByColumn", "Query")} == {total}


# --------------------------------------------------------------------------------------
# Write modes
# --------------------------------------------------------------------------------------


def people(rows):
    return pa.RecordBatch.from_pylist(rows, schema=pa.schema([("id", pa.int64()), ("name", pa.string())]))


def write(db, batches, **options):
    def build(p):
        written, dead = p | beam.Create(batches) | WriteToSqlite(database=db, **options)
        assert_that(dead | beam.Map(lambda d: (d["error_type"], d["record"]["id"])), equal_to([]), label="no dlq")
        assert_that(written | beam.Map(lambda w: w["table"]), equal_to([options["table"]] * len(batches)))
    return run(build)


def test_insert_into_existing_table_without_create(db):
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, extra TEXT DEFAULT 'x')")
    write(db, [people([{"id": 1, "name": "Ada"}]), people([{"id": 2, "name": "Bob"}])], table="PEOPLE")
    assert db_rows(db, "SELECT * FROM people ORDER BY id") == [(1, "Ada", "x"), (2, "Bob", "x")]


def test_upsert_updates_matching_keys_and_inserts_new_ones(db):
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany("INSERT INTO people VALUES (?, ?)", [(1, "Ada"), (2, "Bob")])
    write(db, [people([{"id": 2, "name": "Robert"}, {"id": 3, "name": "Cy"}])], table="people", mode="upsert",
          key=["id"])
    assert db_rows(db, "SELECT * FROM people ORDER BY id") == [(1, "Ada"), (2, "Robert"), (3, "Cy")]


def test_replace_overwrites_whole_rows(db):
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, note TEXT)")
        conn.execute("INSERT INTO people VALUES (1, 'Ada', 'old note')")
    write(db, [people([{"id": 1, "name": "Ada L."}])], table="people", mode="replace")
    assert db_rows(db, "SELECT * FROM people") == [(1, "Ada L.", None)]


def test_truncate_insert_empties_the_table_once_before_all_batches(db):
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany("INSERT INTO people VALUES (?, ?)", [(i, "old") for i in range(100, 110)])
    batches = [people([{"id": i, "name": f"n{i}"} for i in range(start, start + 10)]) for start in range(0, 40, 10)]
    counts = write(db, batches, table="people", mode="truncate_insert")
    assert db_rows(db, "SELECT count(*), min(id), max(id) FROM people") == [(40, 0, 39)]
    assert counts["WriteToSqlite"]["records_out"] == 40


def test_create_table_with_key_and_add_columns(db):
    first = people([{"id": 1, "name": "Ada"}])
    second = pa.RecordBatch.from_pylist([{"id": 2, "name": "Bob", "age": 41, "when": dt.date(2024, 5, 1)}])
    write(db, [first], table="p", create_table=True, key=["id"])
    write(db, [second], table="p", add_columns=True)
    columns = db_rows(db, "SELECT name, type, pk, \"notnull\" FROM pragma_table_info('p')")
    assert columns == [("id", "INTEGER", 1, 1), ("name", "TEXT", 0, 0), ("age", "INTEGER", 0, 0),
                       ("when", "DATE", 0, 0)]
    assert db_rows(db, "SELECT * FROM p ORDER BY id") == [(1, "Ada", None, None), (2, "Bob", 41, "2024-05-01")]


def test_new_columns_without_add_columns_are_dead_letters(db):
    write(db, [people([{"id": 1, "name": "Ada"}])], table="p", create_table=True)
    grown = pa.RecordBatch.from_pylist([{"id": 2, "name": "Bob", "age": 41}])

    def check(letters):
        assert len(letters) == 1 and letters[0]["error_type"] == "validation", letters
        assert "['age']" in letters[0]["error"] and "add_columns: true" in letters[0]["error"]

    def build(p):
        _, dead = p | beam.Create([grown]) | WriteToSqlite(database=db, table="p")
        assert_that(dead, check)

    counts = run(build)["WriteToSqlite"]
    assert (counts["records_in"], counts["records_out"], counts["records_failed"]) == (1, 0, 1)


def test_missing_table_without_create_table_fails_loudly(db):
    sqlite3.connect(db).close()
    with pytest.raises(Exception, match="does not exist.*create_table: true"):
        run(lambda p: p | beam.Create([people([{"id": 1, "name": "x"}])]) | WriteToSqlite(database=db, table="nope"))


# --------------------------------------------------------------------------------------
# Dead letters from writes
# --------------------------------------------------------------------------------------


def test_constraint_failures_are_isolated_by_splitting(db):
    rows = [{"id": i, "name": f"n{i}"} for i in range(1000)]
    for i, dup_of in [(250, 10), (600, 599), (999, 0)]:
        rows[i]["id"] = dup_of
    batch = tag_attempt(people(rows), 2)

    def check(letters):
        assert sorted(d["record"]["id"] for d in letters) == [0, 10, 599], letters
        for d in letters:
            assert d["error_type"] == "constraint" and d["source"] == "people" and d["step"] == "load"
            assert "UNIQUE constraint failed" in d["error"] and d["exception"] == "IntegrityError"
            assert d["attempt"] == 2 and d["pipeline"] == "test" and d["run_id"] == "test-run"
            assert d["record"]["name"] in ("n250", "n600", "n999")

    def build(p):
        written, dead = p | beam.Create([batch]) | WriteToSqlite(database=db, table="people", create_table=True,
                                                                 key=["id"], step_name="load")
        assert_that(dead, check)
        assert_that(written, equal_to([{"table": "people", "rows": 997}]), label="written")

    counts = run(build)["load"]
    assert (counts["records_in"], counts["records_out"], counts["records_failed"]) == (1000, 997, 3)
    assert db_rows(db, "SELECT count(*) FROM people") == [(997,)]
    assert db_rows(db, "SELECT name FROM people WHERE id IN (0, 10, 599) ORDER BY id") == [("n0",), ("n10",),
                                                                                           ("n599",)]


def test_injection_looking_values_and_names_are_stored_verbatim(db):
    evil = ["'); DROP TABLE t; --", 'Robert"); DELETE FROM t; --', "x' OR '1'='1", "?", "%s", ":1", "\\'"]
    column = 'na"me; DROP TABLE t'
    batch = pa.RecordBatch.from_pylist([{"id": i, column: v} for i, v in enumerate(evil)])
    write(db, [batch], table="t; DROP TABLE t", create_table=True, key=["id"])

    def check(batches):
        assert [r[column] for r in rows_of(batches)] == evil

    run(lambda p: assert_that((p | ReadFromSqlite(database=db, table="t; DROP TABLE t"))[0], check))


def test_locked_database_exhausts_retries_into_dlq(db):
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        def check(letters):
            assert len(letters) == 2 and {d["error_type"] for d in letters} == {"transient_exhausted"}, letters
            assert "locked" in letters[0]["error"] and "2 attempts" in letters[0]["error"]

        def build(p):
            written, dead = p | beam.Create([people([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])]) \
                | WriteToSqlite(database=db, table="people", busy_timeout_s=0.05, max_retries=1)
            assert_that(dead, check)
            assert_that(written, equal_to([{"table": "people", "rows": 0}]), label="written")

        counts = run(build)["WriteToSqlite"]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (counts["records_in"], counts["records_out"], counts["records_failed"]) == (2, 0, 2)


# --------------------------------------------------------------------------------------
# Construction-time validation, registry, dialect
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"table": "t", "query": "SELECT 1"}, "exactly one of"),
    ({}, "exactly one of"),
    ({"table": "t", "num_partitions": 0}, "num_partitions: expected a whole number >= 1, got 0"),
    ({"table": "t", "batch_rows": -5}, "batch_rows"),
    ({"query": "SELECT 1", "num_partitions": 4}, "needs partition_column"),
    ({"table": "t", "columns": ["a", "A"]}, "columns: names repeat"),
    ({"table": ""}, "table: expected a non-empty name"),
])
def test_read_options_are_validated_at_construction(db, kwargs, message):
    sqlite3.connect(db).close()
    with pytest.raises(ValueError, match=message):
        ReadFromSqlite(database=db, **kwargs)


def test_read_database_must_exist_and_not_be_memory(tmp_path):
    with pytest.raises(ValueError, match="database: .*does not exist"):
        ReadFromSqlite(database=str(tmp_path / "missing.db"), table="t")
    with pytest.raises(ValueError, match="':memory:' is private"):
        ReadFromSqlite(database=":memory:", table="t")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mode": "upsret"}, "mode: 'upsret' is not one of .*did you mean 'upsert'"),
    ({"mode": "upsert"}, "key: mode 'upsert' needs key"),
    ({"key": []}, "key: expected a non-empty list"),
    ({"busy_timeout_s": 0}, "busy_timeout_s"),
    ({"max_retries": -1}, "max_retries"),
])
def test_write_options_are_validated_at_construction(db, kwargs, message):
    with pytest.raises(ValueError, match=message):
        WriteToSqlite(database=db, table="t", **kwargs)


def test_registered_factories_use_the_step_name(db, run_context):
    odd_names_db(db)
    read_entry, write_entry = registry._TABLE["ReadFromSqlite"], registry._TABLE["WriteToSqlite"]
    assert (read_entry.kind, write_entry.kind) == ("source", "sink")
    with pytest.raises(ValidationError, match="exactly one of"):
        read_entry.config_model.model_validate({"database": db})
    with pytest.raises(ValidationError, match="unknown|extra"):
        write_entry.config_model.model_validate({"database": db, "table": "t", "tabel": "x"})
    read_config = read_entry.config_model.model_validate({"database": db, "table": 'order "lines"',
                                                          "columns": ["id"], "num_partitions": 2})
    write_config = write_entry.config_model.model_validate({"database": db, "table": "copy", "mode": "upsert",
                                                            "key": ["id"], "create_table": True})
    ctx_read = registry.BuildContext("lines", run_context)
    ctx_write = registry.BuildContext("store", run_context)

    def build(p):
        batches, _ = p | "Read" >> read_entry.factory(read_config, ctx_read)
        _ = batches | "Write" >> write_entry.factory(write_config, ctx_write)

    counts = run(build)
    assert counts["lines"]["records_out"] == 50 and counts["store"]["records_out"] == 50
    assert db_rows(db, "SELECT count(*) FROM copy") == [(50,)]


def test_display_data_names_the_options(db):
    sqlite3.connect(db).close()
    data = ReadFromSqlite(database=db, table="t", num_partitions=2).display_data()
    assert data["table"] == "t" and data["num_partitions"] == 2
    assert WriteToSqlite(database=db, table="t", mode="upsert", key=["id"]).display_data()["key"] == "id"


def test_dialect_statements_quote_identifiers_and_use_placeholders():
    d = SqliteDialect()
    assert d.quote_identifier('a "b"') == '"a ""b"""'
    assert d.insert_sql("t", ["a", "b c"]) == 'INSERT INTO "t" ("a", "b c") VALUES (?, ?)'
    assert d.upsert_sql("t", ["id", "v"], ["id"]) == (
        'INSERT INTO "t" ("id", "v") VALUES (?, ?) ON CONFLICT ("id") DO UPDATE SET "v" = excluded."v"')
    assert d.upsert_sql("t", ["id"], ["id"]).endswith("DO NOTHING")
    assert d.replace_sql("t", ["a"]) == 'INSERT OR REPLACE INTO "t" ("a") VALUES (?)'
    with pytest.raises(ValueError, match="NUL"):
        d.quote_identifier("a\x00b")

    class FormatDialect(SqliteDialect):
        paramstyle = "format"

    assert FormatDialect().insert_sql("t", ["a", "b"]).endswith("VALUES (%s, %s)")
    assert d.arrow_type("VARCHAR(20)") == pa.string() and d.arrow_type("BIGINT") == pa.int64()
    assert d.arrow_type("DECIMAL(40, 2)") == pa.decimal256(40, 2) and d.arrow_type("NUMERIC") == pa.float64()
    assert d.arrow_type("") is None and d.arrow_type("DOUBLE PRECISION") == pa.float64()


def test_batch_attempt_defaults_to_one():
    batch = people([{"id": 1, "name": "a"}])
    assert batch_attempt(batch) == 1 and batch_attempt(tag_attempt(batch, 3)) == 3
