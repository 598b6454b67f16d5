"""ReadFromPostgres / WriteToPostgres against the real PostgreSQL of scripts/services.sh.

Every test uses tables with unique names and drops them afterwards.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import threading
import time
import traceback
import urllib.parse

import psycopg2
import psycopg2.sql
import pyarrow as pa
import pytest

from beam_etl import registry
from beam_etl.io import _sql_server_read
from beam_etl.io._sql_pg_dialect import PostgresDialect
from beam_etl.io.sql import ReadFromPostgres, WriteToPostgres
from tests.integration.sql_helpers import read, sorted_rows, unique, write

pytestmark = pytest.mark.integration
CANARY = "canary-Sup3rS3cret"


@pytest.fixture
def pg(postgres_dsn) -> dict:
    """Connection keywords of ReadFromPostgres / WriteToPostgres for the test database."""
    url = urllib.parse.urlsplit(postgres_dsn)
    return {"host": url.hostname, "port": url.port, "database": url.path.lstrip("/"),
            "user": urllib.parse.unquote(url.username), "password": urllib.parse.unquote(url.password)}


@pytest.fixture
def db(pg):
    conn = psycopg2.connect(host=pg["host"], port=pg["port"], dbname=pg["database"], user=pg["user"],
                            password=pg["password"])
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture
def names(db):
    """Makes unique table (and type) names; drops them after the test."""
    made: list[tuple[str, str]] = []

    def make(prefix: str = "t", kind: str = "TABLE") -> str:
        name = unique(prefix)
        made.append((kind, name))
        return name

    yield make
    with db.cursor() as cur:
        for kind, name in reversed(made):
            cascade = "" if kind == "ROLE" else " CASCADE"
            cur.execute(psycopg2.sql.SQL("DROP {} IF EXISTS {}" + cascade).format(
                psycopg2.sql.SQL(kind), psycopg2.sql.Identifier(name)))


def q(name: str) -> str:
    return PostgresDialect().quote_identifier(name)


def execute(db, statement: str, params=None):
    with db.cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchall() if cur.description else None


# --------------------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------------------


def test_every_postgres_type_reads_into_its_arrow_type(pg, db, names):
    table, mood = names("types"), names("mood", "TYPE")
    execute(db, f"CREATE TYPE {q(mood)} AS ENUM ('sad', 'ok', 'happy')")
    execute(db, f"""CREATE TABLE {q(table)} (
        id integer PRIMARY KEY, s smallint, i integer, b bigint, n numeric(12,3), nu numeric, r real,
        d double precision, ok boolean, tx text, vc varchar(10), ch char(3), dy date, tm time, ts timestamp,
        tz timestamptz, iv interval, js json, jb jsonb, ia integer[], ta text[], bt bytea, u uuid, m {q(mood)},
        ma {q(mood)}[], ua uuid[], na numeric(5,2)[])""")
    execute(db, "SET TIME ZONE 'Asia/Kolkata'")
    execute(db, f"""INSERT INTO {q(table)} VALUES
        (1, -32768, 2147483647, -9223372036854775808, 123456789.125, 3.14159265358979323846264338327950288,
         1.5, 2.25, true, 'plain', 'väriable', 'ab', '2024-02-29', '23:59:59.999999', '2024-02-29 12:30:00.123456',
         '2024-03-01 10:00:00+05:30', '1 year 2 mons 3 days 04:05:06.5', '{{"b": [1, 2], "a": null}}',
         '{{"b": [1, 2], "a": null}}', '{{1,NULL,3}}', '{{"x, y",NULL,"zé\\"q"}}', '\\x00ff10',
         'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'happy', '{{sad,ok}}', '{{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}}',
         '{{1.50,NULL}}'),
        (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
        (3, 0, 0, 0, -0.001, 1e-20, 'NaN', '-Infinity', false, 'ünïcødé ✓ 😀', '', '', '1999-12-31', '00:00',
         '1970-01-01 00:00', '2024-06-01 00:00:00-07', '-1 days', '[]', '{{}}', '{{}}', '{{}}', '',
         '00000000-0000-0000-0000-000000000000', 'sad', '{{}}', '{{}}', '{{}}')""")

    got, dead, counts = read(ReadFromPostgres(**pg, table=table))
    assert dead == []
    want_types = {
        "id": pa.int32(), "s": pa.int16(), "i": pa.int32(), "b": pa.int64(), "n": pa.decimal128(12, 3),
        "nu": pa.string(), "r": pa.float32(), "d": pa.float64(), "ok": pa.bool_(), "tx": pa.string(),
        "vc": pa.string(), "ch": pa.string(), "dy": pa.date32(), "tm": pa.time64("us"), "ts": pa.timestamp("us"),
        "tz": pa.timestamp("us", "UTC"), "iv": pa.string(), "js": pa.string(), "jb": pa.string(),
        "ia": pa.list_(pa.int32()), "ta": pa.list_(pa.string()), "bt": pa.binary(), "u": pa.string(),
        "m": pa.string(), "ma": pa.list_(pa.string()), "ua": pa.list_(pa.string()),
        "na": pa.list_(pa.decimal128(5, 2)),
    }
    assert {f.name: f.type for f in got.schema} == want_types
    one, empty, three = sorted_rows(got)
    assert one == {
        "id": 1, "s": -32768, "i": 2147483647, "b": -9223372036854775808, "n": decimal.Decimal("123456789.125"),
        "nu": "3.14159265358979323846264338327950288", "r": 1.5, "d": 2.25, "ok": True, "tx": "plain",
        "vc": "väriable", "ch": "ab ", "dy": dt.date(2024, 2, 29), "tm": dt.time(23, 59, 59, 999999),
        "ts": dt.datetime(2024, 2, 29, 12, 30, 0, 123456),
        "tz": dt.datetime(2024, 3, 1, 4, 30, tzinfo=dt.UTC), "iv": "P1Y2M3DT4H5M6.5S",
        "js": '{"b": [1, 2], "a": null}', "jb": '{"a": null, "b": [1, 2]}', "ia": [1, None, 3],
        "ta": ["x, y", None, 'zé"q'], "bt": b"\x00\xff\x10", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "m": "happy", "ma": ["sad", "ok"], "ua": ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"],
        "na": [decimal.Decimal("1.50"), None],
    }
    assert empty == {"id": 2, **{k: None for k in want_types if k != "id"}}
    assert three["tx"] == "ünïcødé ✓ 😀" and three["vc"] == "" and three["bt"] == b""
    assert three["r"] != three["r"] and three["d"] == float("-inf")  # NaN and -Infinity
    assert three["tz"] == dt.datetime(2024, 6, 1, 7, 0, tzinfo=dt.UTC) and three["iv"] == "P-1D"
    assert three["ia"] == [] and three["ma"] == []
    assert counts["ReadFromPostgres"]["records_out"] == 3


ARROW_TYPES = pa.schema([
    ("id", pa.int64()), ("small", pa.int16()), ("int", pa.int32()), ("f32", pa.float32()), ("f64", pa.float64()),
    ("ok", pa.bool_()), ("name", pa.string()), ("raw", pa.binary()), ("day", pa.date32()),
    ("clock", pa.time64("us")), ("at", pa.timestamp("us")), ("at_utc", pa.timestamp("us", "UTC")),
    ("amount", pa.decimal128(12, 3)), ("ints", pa.list_(pa.int64())), ("tags", pa.list_(pa.string())),
    ("meta", pa.struct([("k", pa.string()), ("n", pa.int64())])), ("wait", pa.duration("us")),
])


def arrow_rows(n: int = 6) -> list[dict]:
    rows = []
    for i in range(n):
        rows.append({
            "id": i, "small": i - 3, "int": i * 1000, "f32": i / 4, "f64": i / 3, "ok": i % 2 == 0,
            "name": ["plain", "", "quote \" and ' and \\", "line\nbreak\r\n\\.", "ünï ✓ 😀", "a,b;c"][i % 6],
            "raw": bytes([0, 255, i, 92, 34]), "day": dt.date(2024, 1, 1) + dt.timedelta(days=i),
            "clock": dt.time(i, 30, 0, 5), "at": dt.datetime(2024, 2, 1, 12, 30, i, 250 * i),
            "at_utc": dt.datetime(2024, 2, 1, 8, 0, i, tzinfo=dt.UTC), "amount": decimal.Decimal(f"-{i}123.456"),
            "ints": [i, None, -i], "tags": ["a", None, 'b"c', "{d}", "e,f", ""],
            "meta": {"k": "v", "n": i}, "wait": dt.timedelta(seconds=i, microseconds=5),
        })
    rows.append({"id": n, **{k: None for k in ARROW_TYPES.names if k != "id"}})
    return rows


@pytest.mark.parametrize("mode", ["insert", "upsert"])
def test_arrow_types_round_trip_through_a_created_table(pg, db, names, mode):
    table = names("roundtrip")
    rows = arrow_rows()
    batch = pa.RecordBatch.from_pylist(rows, schema=ARROW_TYPES)
    written, dead, counts = write(WriteToPostgres(**pg, table=table, mode=mode, key=["id"], create_table=True),
                                  [batch])
    assert dead == [] and written == [{"table": table, "rows": len(rows)}]
    declared = dict(execute(db, "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                                "WHERE attrelid = %s::regclass AND attnum > 0", (q(table),)))
    assert declared["amount"] == "numeric(12,3)" and declared["tags"] == "text[]" and declared["meta"] == "jsonb"
    assert declared["at_utc"] == "timestamp with time zone" and declared["wait"] == "interval"

    got, dead, _ = read(ReadFromPostgres(**pg, table=table))
    assert dead == []
    for want, have in zip(rows, sorted_rows(got), strict=True):
        meta, wait = want.pop("meta"), want.pop("wait")
        assert json.loads(have.pop("meta")) == meta if meta else have.pop("meta") is None
        have_wait = have.pop("wait")
        assert have_wait == (f"PT{wait.seconds}.000005S" if wait else None)
        assert have == want


def test_values_arrow_cannot_hold_go_to_the_dlq_with_table_and_key(pg, db, names):
    table = names("badvalues")
    execute(db, f"CREATE TABLE {q(table)} (id int PRIMARY KEY, ts timestamp, d date, n numeric(6,2), "
                "deep int[])")
    execute(db, f"""INSERT INTO {q(table)} VALUES (1, 'infinity', '2024-01-01', 1, NULL),
        (2, '2024-01-01', '0044-03-15 BC', 2, NULL), (3, '2024-01-01', '2024-01-01', 'NaN', NULL),
        (4, '2024-01-01 10:00', '2024-01-02', 4.5, '{{1,2}}'), (5, NULL, NULL, NULL, '{{{{1,2}},{{3,4}}}}')""")
    got, dead, counts = read(ReadFromPostgres(**pg, table=table, step_name="src"))
    assert [r["id"] for r in sorted_rows(got)] == [4]
    by_source = {d["source"]: d for d in dead}
    assert set(by_source) == {f"{table}:id={i}" for i in (1, 2, 3, 5)}
    assert all(d["error_type"] == "type" and d["step"] == "src" for d in dead)
    assert "column 'ts'" in by_source[f"{table}:id=1"]["error"] and "infinity" in by_source[f"{table}:id=1"]["error"]
    assert "column 'd'" in by_source[f"{table}:id=2"]["error"]
    assert "column 'n'" in by_source[f"{table}:id=3"]["error"]
    assert by_source[f"{table}:id=1"]["record"]["ts"] == "infinity"
    assert counts["src"]["records_in"] == 5 == counts["src"]["records_out"] + counts["src"]["records_failed"]


# --------------------------------------------------------------------------------------
# Write modes and dead letters
# --------------------------------------------------------------------------------------


def people(rows: list[dict]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=pa.schema([("id", pa.int64()), ("name", pa.string()),
                                                              ("qty", pa.int64())]))


def test_upsert_is_idempotent_and_updates(pg, db, names):
    table = names("upsert")
    batches = [people([{"id": i, "name": f"n{i}", "qty": i} for i in range(s, s + 2500)]) for s in (0, 2500, 5000)]
    sink = dict(**pg, table=table, mode="upsert", key=["id"], create_table=True)
    for _ in range(2):
        _, dead, counts = write(WriteToPostgres(**sink), batches)
        assert dead == [] and counts["WriteToPostgres"]["records_out"] == 7500
        assert execute(db, f"SELECT count(*), count(DISTINCT id), sum(qty) FROM {q(table)}") == [
            (7500, 7500, sum(range(7500)))]
    changed = people([{"id": 5, "name": "five", "qty": -5}, {"id": 5, "name": "FIVE", "qty": 50},
                      {"id": 9000, "name": "new", "qty": 1}])
    _, dead, _ = write(WriteToPostgres(**sink), [changed])
    assert dead == []  # a key twice in one batch: the later row wins, as with two upserts
    assert execute(db, f"SELECT name, qty FROM {q(table)} WHERE id IN (5, 9000) ORDER BY id") == [
        ("FIVE", 50), ("new", 1)]


def test_replace_resets_columns_the_batch_lacks_and_truncate_insert_empties_once(pg, db, names):
    table = names("replace")
    execute(db, f"CREATE TABLE {q(table)} (id int PRIMARY KEY, name text, note text DEFAULT 'fresh')")
    execute(db, f"INSERT INTO {q(table)} VALUES (1, 'Ada', 'old'), (2, 'Bob', 'old')")
    batch = pa.RecordBatch.from_pylist([{"id": 1, "name": "Ada L."}, {"id": 3, "name": "Cy"}])
    _, dead, _ = write(WriteToPostgres(**pg, table=table, mode="replace", key=["id"]), [batch])
    assert dead == []
    assert execute(db, f"SELECT * FROM {q(table)} ORDER BY id") == [
        (1, "Ada L.", "fresh"), (2, "Bob", "old"), (3, "Cy", "fresh")]

    batches = [pa.RecordBatch.from_pylist([{"id": i, "name": f"n{i}"} for i in range(s, s + 10)])
               for s in range(100, 140, 10)]
    _, dead, counts = write(WriteToPostgres(**pg, table=table, mode="truncate_insert"), batches)
    assert dead == [] and counts["WriteToPostgres"]["records_out"] == 40
    assert execute(db, f"SELECT count(*), min(id), max(id) FROM {q(table)}") == [(40, 100, 139)]


def test_rows_breaking_constraints_go_to_the_dlq_and_the_rest_commit(pg, db, names):
    table = names("constraints")
    execute(db, f"CREATE TABLE {q(table)} (id bigint PRIMARY KEY, name text NOT NULL, "
                "qty integer CHECK (qty >= 0), code text UNIQUE)")
    rows = [{"id": i, "name": f"n{i}", "qty": i, "code": f"c{i}"} for i in range(1000)]
    rows[250]["id"] = 10           # duplicate key (row 10 comes first and commits)
    rows[400]["name"] = None       # NOT NULL
    rows[600]["qty"] = -1          # CHECK
    rows[700]["code"] = "c3"       # UNIQUE
    rows[800]["qty"] = 2 ** 40     # out of range for integer
    rows[900]["name"] = "nul\x00"  # PostgreSQL text cannot hold NUL
    batch = pa.RecordBatch.from_pylist(rows)
    written, dead, counts = write(WriteToPostgres(**pg, table=table, key=["id"], step_name="load"), [batch])
    by_row = {d["record"]["name"]: d for d in dead}
    by_id = {d["record"]["id"]: d for d in dead}
    assert sorted(by_id) == [10, 400, 600, 700, 800, 900], dead
    assert {i: d["error_type"] for i, d in by_id.items()} == {
        10: "constraint", 400: "constraint", 600: "constraint", 700: "constraint", 800: "type", 900: "type"}
    assert by_row["n250"]["source"] == f"{table}:id=10" and "duplicate key" in by_row["n250"]["error"]
    assert by_id[800]["exception"] == "NumericValueOutOfRange"
    assert all(d["step"] == "load" for d in dead)
    assert written == [{"table": table, "rows": 994}]
    assert (counts["load"]["records_in"], counts["load"]["records_out"], counts["load"]["records_failed"]) == (
        1000, 994, 6)
    assert execute(db, f"SELECT count(*), sum(qty) FROM {q(table)}") == [
        (994, sum(range(1000)) - 250 - 400 - 600 - 700 - 800 - 900)]


def test_missing_table_without_create_table_stops_the_run(pg, names):
    with pytest.raises(Exception, match="does not exist.*create_table: true"):
        write(WriteToPostgres(**pg, table=names("missing")), [people([{"id": 1, "name": "x", "qty": 1}])])


# --------------------------------------------------------------------------------------
# Reads: partitions, projection, queries
# --------------------------------------------------------------------------------------


@pytest.fixture
def events(pg, db, names) -> tuple[str, int]:
    table = names("events")
    execute(db, f"CREATE TABLE {q(table)} (id bigint PRIMARY KEY, at timestamptz, day date, name text, "
                "amount numeric(10,2))")
    execute(db, f"""INSERT INTO {q(table)} SELECT g, CASE WHEN g % 10 = 0 THEN NULL
        ELSE timestamptz '2024-01-01 00:00+00' + g * interval '7 minutes' END, date '2024-01-01' + (g % 400),
        CASE WHEN g % 13 = 0 THEN NULL ELSE 'name ' || (g * 7919 % 10007) END, g / 100.0
        FROM generate_series(1, 20000) g""")
    execute(db, f"ANALYZE {q(table)}")
    return table, 20000


def test_partitioned_reads_equal_a_plain_read(pg, events):
    table, total = events
    plain, dead, _ = read(ReadFromPostgres(**pg, table=table, batch_rows=3000))
    assert dead == [] and plain.num_rows == total
    want = sorted_rows(plain)
    cases = [
        ({"column": "id", "num_partitions": 4}, 4),
        ({"num_partitions": 3}, 3),                                   # the primary key
        ({"column": "at", "num_partitions": 5}, 5),                   # timestamptz, NULLs in the first range
        ({"column": "day", "num_partitions": 4, "lower": "2024-03-01", "upper": "2024-09-01"}, 4),
        ({"column": "name", "num_partitions": 6}, 6),                 # text: hash buckets
        ({"column": "amount", "num_partitions": 3}, 3),              # numeric ranges
        ({"column": "id", "rows_per_partition": 6000}, 4),            # auto: about 20000 / 6000 rows
    ]
    for spec, partitions in cases:
        got, dead, counts = read(ReadFromPostgres(**pg, table=table, partition=spec, batch_rows=3000,
                                                  step_name="parts"))
        assert dead == [], spec
        assert sorted_rows(got) == want, spec
        assert counts["parts"]["partitions"] == partitions, spec
        assert counts["parts"]["batches_in"] >= partitions, spec


def test_plan_splits_ranges_and_hash_buckets(pg, events):
    table, _ = events
    opts = ReadFromPostgres(**pg, table=table, partition={"column": "id", "num_partitions": 4})._opts
    dialect = PostgresDialect()
    conn = dialect.connect(opts.connection, read_only=True)
    try:
        tasks = _sql_server_read.plan_server_read(conn, opts, dialect)
        hashed = _sql_server_read.plan_server_read(
            conn, ReadFromPostgres(**pg, table=table, partition={"column": "name", "num_partitions": 3})._opts,
            dialect)
    finally:
        conn.close()
    assert [t.params for t in tasks] == [(5001,), (5001, 10001), (10001, 15001), (15001,)]
    assert '"id" IS NULL' in tasks[0].sql and tasks[0].key == ("id",)
    assert [t.params for t in hashed] == [(0,), (1,), (2,)] and "hashtext" in hashed[0].sql


def test_query_reads_with_projection_and_partitions(pg, events):
    table, _ = events
    query = f"SELECT id, name AS label, amount * 2 AS twice FROM {q(table)} WHERE name LIKE 'name 1%' ;"
    got, dead, counts = read(ReadFromPostgres(**pg, query=query, columns=["TWICE", "id"],
                                              partition={"column": "id", "num_partitions": 3}, step_name="qry"))
    assert dead == [] and got.schema.names == ["twice", "id"]
    assert got.schema.field("twice").type == pa.string()  # numeric * numeric: unconstrained
    plain, _, _ = read(ReadFromPostgres(**pg, query=query))
    assert got.num_rows == plain.num_rows > 1000 and counts["qry"]["partitions"] == 3
    with pytest.raises(Exception, match="columns: 'nope' is not a column"):
        read(ReadFromPostgres(**pg, table=table, columns=["nope"]))


# --------------------------------------------------------------------------------------
# Hostile names, schema evolution, TLS
# --------------------------------------------------------------------------------------


def test_hostile_table_and_column_names_work_everywhere(pg, db, names):
    table = names('we"ird; DROP TABLE x;-- %s tå')
    key, quoted, semi, space, uni, pct = 'k"ey', '"quoted"', "semi;colon", "spa ce", "ünï ✓", "per%cent%s"
    batch = pa.RecordBatch.from_pylist([
        {key: i, quoted: f"q{i}", semi: i * 1.5, space: "'); DROP TABLE t; --", uni: "%s %(x)s ?", pct: None}
        for i in range(50)])
    sink = dict(**pg, table=table, mode="upsert", key=[key], create_table=True)
    for _ in range(2):
        _, dead, _ = write(WriteToPostgres(**sink), [batch])
        assert dead == []
    new = 'new "col"; --'
    evolved = pa.RecordBatch.from_pylist([{key: 1, new: "x"}])
    _, dead, _ = write(WriteToPostgres(**sink, schema_evolution="add_columns"), [evolved])
    assert dead == []
    got, dead, counts = read(ReadFromPostgres(**pg, table=table, columns=[uni, key, space],
                                              partition={"column": key, "num_partitions": 3}))
    assert dead == [] and got.schema.names == [uni, key, space] and counts["ReadFromPostgres"]["partitions"] == 3
    assert sorted(r[key] for r in got.to_pylist()) == list(range(50))
    assert {r[space] for r in got.to_pylist()} == {"'); DROP TABLE t; --"}
    literal_table = q(table).replace("%", "%%")  # a statement with parameters: % is doubled
    assert execute(db, f"SELECT count(*) FROM {literal_table} WHERE {q(new)} = %s", ("x",)) == [(1,)]
    for name in (table, key, quoted, pct):  # our quoting is libpq's
        assert q(name) == psycopg2.sql.Identifier(name).as_string(db)


def test_schema_evolution_add_fail_and_ignore(pg, db, names):
    table = names("evolve")
    first = pa.RecordBatch.from_pylist([{"id": 1, "name": "a"}])
    grown = pa.RecordBatch.from_pylist([{"id": 2, "name": "b", "age": 7, "born": dt.date(2017, 1, 1)}])
    sink = dict(**pg, table=table, key=["id"], create_table=True)
    write(WriteToPostgres(**sink), [first])
    with pytest.raises(Exception, match=r"\['age', 'born'\] are not in table.*schema_evolution: add_columns"):
        write(WriteToPostgres(**sink), [grown])
    _, dead, _ = write(WriteToPostgres(**sink, schema_evolution="ignore"), [grown])
    assert dead == [] and execute(db, f"SELECT * FROM {q(table)} ORDER BY id") == [(1, "a"), (2, "b")]
    grown3 = pa.RecordBatch.from_pylist([{"id": 3, "name": "c", "age": 9, "born": dt.date(2015, 5, 5)}])
    _, dead, _ = write(WriteToPostgres(**sink, schema_evolution="add_columns"), [grown3])
    assert dead == []
    assert execute(db, f"SELECT id, age, born FROM {q(table)} ORDER BY id") == [
        (1, None, None), (2, None, None), (3, 9, dt.date(2015, 5, 5))]


def test_tls_is_used_when_required(pg):
    got, dead, _ = read(ReadFromPostgres(**{**pg, "sslmode": "require"},
                                         query="SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))
    assert dead == [] and got.to_pylist()[0]["ssl"] is True and got.to_pylist()[0]["version"].startswith("TLS")
    got, _, _ = read(ReadFromPostgres(**{**pg, "sslmode": "disable"},
                                      query="SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))
    assert got.to_pylist()[0]["ssl"] is False


# --------------------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------------------


def _leaks(text: str) -> bool:
    return CANARY in text


def test_canary_password_never_shows(pg, db, names, caplog, capsys, tmp_path, monkeypatch):
    role, table = names("role", "ROLE"), names("secret")
    execute(db, f"CREATE ROLE {q(role)} LOGIN PASSWORD %s", (CANARY,))
    execute(db, f"CREATE TABLE {q(table)} (id int PRIMARY KEY, name text)")
    execute(db, f"INSERT INTO {q(table)} VALUES (1, 'a')")
    execute(db, f"GRANT SELECT ON {q(table)} TO {q(role)}")
    caplog.set_level(logging.DEBUG)
    good = {**pg, "user": role, "password": CANARY}

    source = ReadFromPostgres(**good, table=table)
    assert not _leaks(repr(source.display_data())) and not _leaks(repr(source._opts))
    got, dead, _ = read(source)
    assert got.num_rows == 1 and dead == []
    # no INSERT privilege: the run stops, and its message names the table, never the password
    with pytest.raises(Exception) as denied:
        write(WriteToPostgres(**good, table=table), [pa.RecordBatch.from_pylist([{"id": 2, "name": "b"}])])
    assert "permission denied" in str(denied.value) and not _leaks(str(denied.value))

    wrong = {**good, "password": CANARY + "-wrong"}
    for transform in (ReadFromPostgres(**wrong, table=table), WriteToPostgres(**wrong, table=table)):
        with pytest.raises(Exception) as failed:
            if isinstance(transform, ReadFromPostgres):
                read(transform)
            else:
                write(transform, [pa.RecordBatch.from_pylist([{"id": 3, "name": "c"}])])
        shown = "".join(traceback.format_exception(failed.value))
        assert "password authentication failed" in shown and not _leaks(shown)
    assert not _leaks(caplog.text)
    captured = capsys.readouterr()
    assert not _leaks(captured.out + captured.err)

    # A template: the password comes from ${ENV}; the run summary and the output never show it.
    from beam_etl.run import run_template

    monkeypatch.setenv("BEAM_ETL_TEST_CANARY_PW", CANARY)
    template = tmp_path / "secret.yaml"
    template.write_text(f"""name: pg_secret
sources:
  - name: read
    type: ReadFromPostgres
    config: {{host: {pg['host']}, port: {pg['port']}, database: {pg['database']}, user: {role},
             password: "${{BEAM_ETL_TEST_CANARY_PW}}", table: {table}}}
sinks:
  - name: out
    type: WriteToJsonl
    input: read
    config: {{path: "{{{{ run_dir }}}}/out.jsonl"}}
""")
    code = run_template(str(template), beam_args=["--runner=DirectRunner"], output_dir=str(tmp_path / "runs"),
                        run_id="secret-ok", quiet=True, check_runner=False)
    summary = (tmp_path / "runs" / "secret-ok" / "summary.json").read_text()
    assert code == 0 and not _leaks(summary), summary
    monkeypatch.setenv("BEAM_ETL_TEST_CANARY_PW", CANARY + "-wrong")
    code = run_template(str(template), beam_args=["--runner=DirectRunner"], output_dir=str(tmp_path / "runs"),
                        run_id="secret-bad", quiet=True, check_runner=False)
    summary = (tmp_path / "runs" / "secret-bad" / "summary.json").read_text()
    assert code != 0 and "password authentication failed" in summary and not _leaks(summary)
    captured = capsys.readouterr()
    assert not _leaks(captured.out + captured.err + caplog.text)


def test_registered_configs_validate_and_hide_the_password(pg, names, run_context):
    entry = registry.lookup("ReadFromPostgres")
    assert entry is not None and entry.kind == "source" and registry.lookup("WriteToPostgres").kind == "sink"
    with pytest.raises(Exception) as err:
        entry.config_model.model_validate({**pg, "password": CANARY, "table": "t", "query": "SELECT 1"})
    assert "exactly one of" in str(err.value)
    config = entry.config_model.model_validate({**pg, "table": "t", "schema": "public", "partition": {"column": "id"}})
    transform = entry.factory(config, registry.BuildContext("orders", run_context))
    assert transform._opts.schema == "public" and transform._step_name == "orders"
    assert pg["password"] not in repr(config)


# --------------------------------------------------------------------------------------
# A connection killed mid-load
# --------------------------------------------------------------------------------------


def _slow_statement_trigger(db, names, table: str) -> str:
    """A statement trigger that sleeps while the flag table says so; returns the flag table."""
    flag, slow = names("flag"), names("slow", "FUNCTION")
    execute(db, f"CREATE TABLE {q(flag)} (slow boolean)")
    execute(db, f"INSERT INTO {q(flag)} VALUES (false)")
    execute(db, f"""CREATE FUNCTION {q(slow)}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF (SELECT slow FROM {q(flag)}) THEN PERFORM pg_sleep(30); END IF; RETURN NULL; END $$""")
    execute(db, f"CREATE TRIGGER slow BEFORE INSERT ON {q(table)} FOR EACH STATEMENT EXECUTE FUNCTION {q(slow)}()")
    return flag


def _killer(db_params: dict, table: str, flag: str, kills: int, done: list) -> threading.Thread:
    """Terminates the loading backend ``kills`` times while it sleeps in the trigger."""
    def kill() -> None:
        conn = psycopg2.connect(**db_params)
        conn.autocommit = True
        try:
            deadline = time.monotonic() + 60
            while len(done) < kills and time.monotonic() < deadline:
                with conn.cursor() as cur:
                    cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'beam_etl' "
                                "AND wait_event = 'PgSleep' AND pid <> pg_backend_pid()")
                    pids = [r[0] for r in cur.fetchall()]
                    for pid in pids[:1]:
                        if len(done) + 1 >= kills:  # the retry after the last kill runs at full speed
                            cur.execute(f"UPDATE {q(flag)} SET slow = false")
                        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
                        done.append(pid)
                time.sleep(0.05)
        finally:
            conn.close()

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("mode", ["insert", "upsert"])
def test_connection_killed_mid_load_is_retried_without_loss_or_duplicates(pg, db, names, mode):
    table = names("killed")
    execute(db, f"CREATE TABLE {q(table)} (id bigint PRIMARY KEY, name text)")
    flag = _slow_statement_trigger(db, names, table)
    batches = [people([{"id": i, "name": f"n{i}", "qty": i} for i in range(s, s + 2000)]).drop_columns(["qty"])
               for s in range(0, 10000, 2000)]
    execute(db, f"UPDATE {q(flag)} SET slow = true")
    killed: list[int] = []
    params = {"host": pg["host"], "port": pg["port"], "dbname": pg["database"], "user": pg["user"],
              "password": pg["password"]}
    thread = _killer(params, table, flag, 1, killed)
    written, dead, counts = write(WriteToPostgres(**pg, table=table, mode=mode, key=["id"]), batches)
    thread.join(5)
    assert len(killed) == 1
    assert dead == [] and sum(w["rows"] for w in written) == 10000
    assert execute(db, f"SELECT count(*), count(DISTINCT id), min(id), max(id) FROM {q(table)}") == [
        (10000, 10000, 0, 9999)]
    assert counts["WriteToPostgres"]["records_out"] == 10000


def test_retries_exhausted_send_the_batch_to_the_dlq(pg, db, names):
    table = names("exhausted")
    execute(db, f"CREATE TABLE {q(table)} (id bigint PRIMARY KEY, name text)")
    flag = _slow_statement_trigger(db, names, table)
    execute(db, f"UPDATE {q(flag)} SET slow = true")
    killed: list[int] = []
    params = {"host": pg["host"], "port": pg["port"], "dbname": pg["database"], "user": pg["user"],
              "password": pg["password"]}
    thread = _killer(params, table, flag, 2, killed)
    batch = pa.RecordBatch.from_pylist([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    written, dead, counts = write(WriteToPostgres(**pg, table=table, max_retries=1), [batch])
    thread.join(5)
    assert len(killed) == 2 and written == [{"table": table, "rows": 0}]
    assert sorted(d["record"]["id"] for d in dead) == [1, 2]
    assert {d["error_type"] for d in dead} == {"transient_exhausted"} and "2 attempts" in dead[0]["error"]
    assert execute(db, f"SELECT count(*) FROM {q(table)}") == [(0,)]


def test_schema_qualified_tables(pg, db, names):
    schema = names("schema", "SCHEMA")
    execute(db, f"CREATE SCHEMA {q(schema)}")
    batch = pa.RecordBatch.from_pylist([{"id": i, "name": f"n{i}"} for i in range(20)])
    _, dead, _ = write(WriteToPostgres(**pg, schema=schema, table="orders", mode="upsert", key=["id"],
                                       create_table=True), [batch])
    assert dead == [] and execute(db, f"SELECT count(*) FROM {q(schema)}.orders") == [(20,)]
    got, dead, counts = read(ReadFromPostgres(**pg, schema=schema, table="orders", partition={"num_partitions": 2},
                                              step_name="s"))
    assert dead == [] and sorted_rows(got) == batch.to_pylist() and counts["s"]["partitions"] == 2
    with pytest.raises(Exception, match="does not exist"):
        read(ReadFromPostgres(**pg, schema=schema, table="missing"))
