"""ReadFromMySql / WriteToMySql against the real MariaDB of scripts/services.sh.

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

import pyarrow as pa
import pymysql
import pytest

from beam_etl import registry
from beam_etl.io._sql_mysql_dialect import MySqlDialect
from beam_etl.io.sql import ReadFromMySql, WriteToMySql
from tests.integration.sql_helpers import read, sorted_rows, unique, write

pytestmark = pytest.mark.integration
CANARY = "canary-Sup3rS3cret"


@pytest.fixture
def my(mysql_params) -> dict:
    """Connection keywords of ReadFromMySql / WriteToMySql for the test database."""
    return {k: mysql_params[k] for k in ("host", "port", "database", "user", "password")}


@pytest.fixture
def db(mysql_params):
    conn = pymysql.connect(**mysql_params, charset="utf8mb4", autocommit=True)
    yield conn
    conn.close()


@pytest.fixture
def names(db):
    """Makes unique table (and user) names; drops them after the test."""
    made: list[tuple[str, str]] = []

    def make(prefix: str = "t", kind: str = "TABLE") -> str:
        name = unique(prefix)
        made.append((kind, name))
        return name

    yield make
    with db.cursor() as cur:
        for kind, name in reversed(made):
            target = f"'{name}'@'%'" if kind == "USER" else q(name)
            cur.execute(f"DROP {kind} IF EXISTS {target}")


def q(name: str) -> str:
    return MySqlDialect().quote_identifier(name)


def execute(db, statement: str, params=None):
    with db.cursor() as cur:
        cur.execute(statement, params)
        return [tuple(r) for r in cur.fetchall()] if cur.description else None


# --------------------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------------------


def test_every_mysql_type_reads_into_its_arrow_type(my, db, names):
    table = names("types")
    execute(db, f"""CREATE TABLE {q(table)} (
        id INT PRIMARY KEY, flag TINYINT(1), yes BOOL, ti TINYINT, tu TINYINT UNSIGNED, si SMALLINT,
        su SMALLINT UNSIGNED, mi MEDIUMINT, i INT, iu INT UNSIGNED, bi BIGINT, bu BIGINT UNSIGNED,
        de DECIMAL(12,3), dw DECIMAL(40,5), fl FLOAT, db DOUBLE, b1 BIT(1), b10 BIT(10), yr YEAR, dy DATE,
        tm TIME(6), dtm DATETIME(6), ts TIMESTAMP(6) NULL, ch CHAR(3), vc VARCHAR(20), tx TEXT,
        en ENUM('sad', 'ok', 'happy'), st SET('a', 'b', 'c'), js JSON, bl BLOB, vb VARBINARY(8), bn BINARY(2)
    ) DEFAULT CHARSET=utf8mb4""")
    execute(db, "SET time_zone = '+05:30'")
    execute(db, f"""INSERT INTO {q(table)} VALUES
        (1, 1, 0, -128, 255, -32768, 65535, -8388608, -2147483648, 4294967295, -9223372036854775808,
         18446744073709551615, 123456789.125, 12345678901234567890123456789012345.12345, 1.5, 2.25, b'1',
         b'1000000001', 2024, '2024-02-29', '23:59:59.999999', '2024-02-29 12:30:00.123456',
         '2024-03-01 10:00:00', 'ab', 'väriable', 'plain', 'happy', 'a,c', '{{"b": [1, 2], "a": null}}',
         x'00ff10', x'5c22', x'0102'),
        (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
        (3, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, -0.001, 0, -1e-3, -1e300, b'0', b'0', 1901, '1000-01-01',
         '00:00:00', '9999-12-31 23:59:59.999999', '1970-01-02 00:00:00', '', 'ünïcødé ✓ 😀', '', 'sad', '',
         '[]', x'', x'', x'0000')""")

    got, dead, counts = read(ReadFromMySql(**my, table=table))
    assert dead == []
    want_types = {
        "id": pa.int32(), "flag": pa.bool_(), "yes": pa.bool_(), "ti": pa.int8(), "tu": pa.uint8(),
        "si": pa.int16(), "su": pa.uint16(), "mi": pa.int32(), "i": pa.int32(), "iu": pa.uint32(), "bi": pa.int64(),
        "bu": pa.uint64(), "de": pa.decimal128(12, 3), "dw": pa.decimal256(40, 5), "fl": pa.float32(),
        "db": pa.float64(), "b1": pa.bool_(), "b10": pa.uint64(), "yr": pa.int16(), "dy": pa.date32(),
        "tm": pa.time64("us"), "dtm": pa.timestamp("us"), "ts": pa.timestamp("us", "UTC"), "ch": pa.string(),
        "vc": pa.string(), "tx": pa.string(), "en": pa.string(), "st": pa.string(), "js": pa.string(),
        "bl": pa.binary(), "vb": pa.binary(), "bn": pa.binary(),
    }
    assert {f.name: f.type for f in got.schema} == want_types
    one, empty, three = sorted_rows(got)
    assert one == {
        "id": 1, "flag": True, "yes": False, "ti": -128, "tu": 255, "si": -32768, "su": 65535, "mi": -8388608,
        "i": -2147483648, "iu": 4294967295, "bi": -9223372036854775808, "bu": 18446744073709551615,
        "de": decimal.Decimal("123456789.125"), "dw": decimal.Decimal("12345678901234567890123456789012345.12345"),
        "fl": 1.5, "db": 2.25, "b1": True, "b10": 513, "yr": 2024, "dy": dt.date(2024, 2, 29),
        "tm": dt.time(23, 59, 59, 999999), "dtm": dt.datetime(2024, 2, 29, 12, 30, 0, 123456),
        "ts": dt.datetime(2024, 3, 1, 4, 30, tzinfo=dt.UTC), "ch": "ab", "vc": "väriable", "tx": "plain",
        "en": "happy", "st": "a,c", "js": '{"b": [1, 2], "a": null}', "bl": b"\x00\xff\x10", "vb": b'\\"',
        "bn": b"\x01\x02",
    }
    assert empty == {"id": 2, **{k: None for k in want_types if k != "id"}}
    assert three["vc"] == "ünïcødé ✓ 😀" and three["bl"] == b"" and three["db"] == -1e300
    assert three["dtm"] == dt.datetime(9999, 12, 31, 23, 59, 59, 999999)
    assert three["ts"] == dt.datetime(1970, 1, 1, 18, 30, tzinfo=dt.UTC) and three["b1"] is False
    assert counts["ReadFromMySql"]["records_out"] == 3


ARROW_TYPES = pa.schema([
    ("id", pa.int64()), ("small", pa.int16()), ("u64", pa.uint64()), ("f32", pa.float32()), ("f64", pa.float64()),
    ("ok", pa.bool_()), ("name", pa.string()), ("raw", pa.binary()), ("day", pa.date32()),
    ("clock", pa.time64("us")), ("at", pa.timestamp("us")), ("at_utc", pa.timestamp("us", "UTC")),
    ("amount", pa.decimal128(12, 3)), ("tags", pa.list_(pa.string())),
    ("meta", pa.struct([("k", pa.string()), ("n", pa.int64())])),
])


@pytest.mark.parametrize("mode", ["insert", "upsert", "replace"])
def test_arrow_types_round_trip_through_a_created_table(my, db, names, mode):
    table = names("roundtrip")
    rows = []
    for i in range(6):
        rows.append({
            "id": i, "small": i - 3, "u64": 2 ** 64 - 1 - i, "f32": i / 4, "f64": i / 3, "ok": i % 2 == 0,
            "name": ["plain", "", "quote \" and ' and \\", "line\nbreak\r\n", "ünï ✓ 😀", "a,b;c %s"][i],
            "raw": bytes([0, 255, i, 92, 39]), "day": dt.date(2024, 1, 1) + dt.timedelta(days=i),
            "clock": dt.time(i, 30, 0, 5), "at": dt.datetime(2024, 2, 1, 12, 30, i, 250 * i),
            "at_utc": dt.datetime(2024, 2, 1, 8, 0, i, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "amount": decimal.Decimal(f"-{i}123.456"), "tags": ["a", None, 'b"c'], "meta": {"k": "v", "n": i},
        })
    rows.append({"id": 6, **{k: None for k in ARROW_TYPES.names if k != "id"}})
    batch = pa.RecordBatch.from_pylist(rows, schema=ARROW_TYPES)
    written, dead, _ = write(WriteToMySql(**my, table=table, mode=mode, key=["id"], create_table=True), [batch])
    assert dead == [] and written == [{"table": table, "rows": 7}]
    declared = dict(execute(db, "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS WHERE "
                                "TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s", (table,)))
    assert declared["u64"] == "bigint(20) unsigned" and declared["at_utc"] == "datetime(6)"
    assert declared["ok"] == "tinyint(1)" and declared["amount"] == "decimal(12,3)"

    got, dead, _ = read(ReadFromMySql(**my, table=table))
    assert dead == [] and got.schema.field("at_utc").type == pa.timestamp("us")  # DATETIME: UTC wall time
    for want, have in zip(rows, sorted_rows(got), strict=True):
        tags, meta, at_utc = want.pop("tags"), want.pop("meta"), want.pop("at_utc")
        assert (json.loads(have.pop("tags")) if tags else have.pop("tags")) == tags
        assert (json.loads(have.pop("meta")) if meta else have.pop("meta")) == meta
        have_utc = have.pop("at_utc")
        assert have_utc == (at_utc.astimezone(dt.UTC).replace(tzinfo=None) if at_utc else None)
        assert have == want


def test_values_arrow_cannot_hold_go_to_the_dlq_with_table_and_key(my, db, names):
    table = names("badvalues")
    execute(db, f"CREATE TABLE {q(table)} (id INT PRIMARY KEY, d DATE, tm TIME)")
    execute(db, "SET SESSION sql_mode = ''")
    execute(db, f"INSERT INTO {q(table)} VALUES (1, '0000-00-00', '10:00'), (2, '2024-01-01', '-01:00:00'), "
                "(3, '2024-01-02', '25:00:00'), (4, '2024-01-03', '23:59:59')")
    got, dead, counts = read(ReadFromMySql(**my, table=table, step_name="src"))
    assert [r["id"] for r in sorted_rows(got)] == [4]
    by_source = {d["source"]: d for d in dead}
    assert set(by_source) == {f"{table}:id={i}" for i in (1, 2, 3)}
    assert all(d["error_type"] == "type" for d in dead)
    assert "column 'd'" in by_source[f"{table}:id=1"]["error"] and "0000-00-00" in by_source[f"{table}:id=1"]["error"]
    assert "not a time of day" in by_source[f"{table}:id=2"]["error"]
    assert counts["src"]["records_in"] == 4 and counts["src"]["records_failed"] == 3


# --------------------------------------------------------------------------------------
# Write modes and dead letters
# --------------------------------------------------------------------------------------


def people(rows: list[dict]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=pa.schema([("id", pa.int64()), ("name", pa.string()),
                                                              ("qty", pa.int64())]))


def test_upsert_is_idempotent_and_updates(my, db, names):
    table = names("upsert")
    batches = [people([{"id": i, "name": f"n{i}", "qty": i} for i in range(s, s + 2500)]) for s in (0, 2500, 5000)]
    sink = dict(**my, table=table, mode="upsert", key=["id"], create_table=True)
    for _ in range(2):
        _, dead, counts = write(WriteToMySql(**sink), batches)
        assert dead == [] and counts["WriteToMySql"]["records_out"] == 7500
        assert execute(db, f"SELECT count(*), count(DISTINCT id), sum(qty) FROM {q(table)}") == [
            (7500, 7500, sum(range(7500)))]
    changed = people([{"id": 5, "name": "five", "qty": -5}, {"id": 5, "name": "FIVE", "qty": 50},
                      {"id": 9000, "name": "new", "qty": 1}])
    _, dead, _ = write(WriteToMySql(**sink), [changed])
    assert dead == []
    assert execute(db, f"SELECT name, qty FROM {q(table)} WHERE id IN (5, 9000) ORDER BY id") == [
        ("FIVE", 50), ("new", 1)]


def test_replace_and_truncate_insert(my, db, names):
    table = names("replace")
    execute(db, f"CREATE TABLE {q(table)} (id INT PRIMARY KEY, name TEXT, note VARCHAR(10) DEFAULT 'fresh')")
    execute(db, f"INSERT INTO {q(table)} VALUES (1, 'Ada', 'old'), (2, 'Bob', 'old')")
    batch = pa.RecordBatch.from_pylist([{"id": 1, "name": "Ada L."}, {"id": 3, "name": "Cy"}])
    _, dead, _ = write(WriteToMySql(**my, table=table, mode="replace"), [batch])
    assert dead == []
    assert execute(db, f"SELECT * FROM {q(table)} ORDER BY id") == [
        (1, "Ada L.", "fresh"), (2, "Bob", "old"), (3, "Cy", "fresh")]
    batches = [pa.RecordBatch.from_pylist([{"id": i, "name": f"n{i}"} for i in range(s, s + 10)])
               for s in range(100, 140, 10)]
    _, dead, counts = write(WriteToMySql(**my, table=table, mode="truncate_insert"), batches)
    assert dead == [] and counts["WriteToMySql"]["records_out"] == 40
    assert execute(db, f"SELECT count(*), min(id), max(id) FROM {q(table)}") == [(40, 100, 139)]


def test_rows_breaking_constraints_go_to_the_dlq_and_the_rest_commit(my, db, names):
    table = names("constraints")
    execute(db, f"CREATE TABLE {q(table)} (id BIGINT PRIMARY KEY, name VARCHAR(20) NOT NULL, "
                "qty INT CHECK (qty >= 0), code VARCHAR(20) UNIQUE, ratio DOUBLE)")
    rows = [{"id": i, "name": f"n{i}", "qty": i, "code": f"c{i}", "ratio": i / 7} for i in range(1000)]
    rows[250]["id"] = 10            # duplicate key
    rows[400]["name"] = None        # NOT NULL
    rows[600]["qty"] = -1           # CHECK
    rows[700]["code"] = "c3"        # UNIQUE
    rows[800]["qty"] = 2 ** 40      # out of range for INT (strict mode)
    rows[850]["name"] = "x" * 21    # too long for VARCHAR(20)
    rows[900]["ratio"] = float("nan")  # MySQL has no NaN
    batch = pa.RecordBatch.from_pylist(rows)
    written, dead, counts = write(WriteToMySql(**my, table=table, key=["id"], step_name="load"), [batch])
    by_id = {d["record"]["id"]: d for d in dead}
    assert sorted(by_id) == [10, 400, 600, 700, 800, 850, 900], dead
    assert {i: d["error_type"] for i, d in by_id.items()} == {
        10: "constraint", 400: "constraint", 600: "constraint", 700: "constraint", 800: "type", 850: "type",
        900: "type"}
    assert by_id[10]["source"] == f"{table}:id=10" and "Duplicate entry" in by_id[10]["error"]
    assert written == [{"table": table, "rows": 993}]
    assert (counts["load"]["records_in"], counts["load"]["records_out"], counts["load"]["records_failed"]) == (
        1000, 993, 7)
    assert execute(db, f"SELECT count(*) FROM {q(table)}") == [(993,)]


# --------------------------------------------------------------------------------------
# Reads: partitions, projection, queries
# --------------------------------------------------------------------------------------


@pytest.fixture
def events(db, names) -> tuple[str, int]:
    table = names("events")
    execute(db, f"CREATE TABLE {q(table)} (id BIGINT PRIMARY KEY, at DATETIME(6), name VARCHAR(40), "
                "amount DECIMAL(10,2))")
    rows = [(g, None if g % 10 == 0 else dt.datetime(2024, 1, 1) + dt.timedelta(minutes=7 * g),
             None if g % 13 == 0 else f"name {g * 7919 % 10007}", decimal.Decimal(g) / 100)
            for g in range(1, 12001)]
    with db.cursor() as cur:
        cur.executemany(f"INSERT INTO {q(table)} VALUES (%s, %s, %s, %s)", rows)
        cur.execute(f"ANALYZE TABLE {q(table)}")
    return table, len(rows)


def test_partitioned_reads_equal_a_plain_read(my, events):
    table, total = events
    plain, dead, _ = read(ReadFromMySql(**my, table=table, batch_rows=2000))
    assert dead == [] and plain.num_rows == total
    want = sorted_rows(plain)
    for spec, partitions in [({"column": "id", "num_partitions": 4}, 4), ({"num_partitions": 3}, 3),
                             ({"column": "at", "num_partitions": 5}, 5), ({"column": "name", "num_partitions": 6}, 6),
                             ({"column": "amount", "num_partitions": 3}, 3),
                             ({"column": "id", "rows_per_partition": 5000}, 3)]:
        got, dead, counts = read(ReadFromMySql(**my, table=table, partition=spec, batch_rows=2000,
                                               step_name="parts"))
        assert dead == [] and sorted_rows(got) == want, spec
        assert counts["parts"]["partitions"] == partitions, spec


def test_query_reads_with_projection_and_partitions(my, events):
    table, _ = events
    query = f"SELECT id, name AS label, amount * 2 AS twice FROM {q(table)} WHERE name LIKE 'name 1%'"
    got, dead, counts = read(ReadFromMySql(**my, query=query, columns=["TWICE", "id"],
                                           partition={"column": "id", "num_partitions": 3}, step_name="qry"))
    assert dead == [] and got.schema.names == ["twice", "id"]
    assert pa.types.is_decimal(got.schema.field("twice").type)
    plain, _, _ = read(ReadFromMySql(**my, query=query))
    assert got.num_rows == plain.num_rows > 500 and counts["qry"]["partitions"] == 3


# --------------------------------------------------------------------------------------
# Hostile names, schema evolution, TLS, secrets
# --------------------------------------------------------------------------------------


def test_hostile_table_and_column_names_work_everywhere(my, db, names):
    table = names("we`ird; DROP TABLE x;-- %s tå")
    key, quoted, semi, space, uni, pct = "k`ey", '"quoted"', "semi;colon", "spa ce", "ünï ✓", "per%cent%s"
    batch = pa.RecordBatch.from_pylist([
        {key: i, quoted: f"q{i}", semi: i * 1.5, space: "'); DROP TABLE t; --", uni: "%s %(x)s ?", pct: None}
        for i in range(50)])
    sink = dict(**my, table=table, mode="upsert", key=[key], create_table=True)
    for _ in range(2):
        _, dead, _ = write(WriteToMySql(**sink), [batch])
        assert dead == []
    new = "new `col`; --"
    _, dead, _ = write(WriteToMySql(**sink, schema_evolution="add_columns"),
                       [pa.RecordBatch.from_pylist([{key: 1, new: "x"}])])
    assert dead == []
    got, dead, counts = read(ReadFromMySql(**my, table=table, columns=[uni, key, space],
                                           partition={"column": key, "num_partitions": 3}))
    assert dead == [] and got.schema.names == [uni, key, space] and counts["ReadFromMySql"]["partitions"] == 3
    assert sorted(r[key] for r in got.to_pylist()) == list(range(50))
    literal_table = q(table).replace("%", "%%")
    assert execute(db, f"SELECT count(*) FROM {literal_table} WHERE {q(new)} = %s", ("x",)) == [(1,)]
    with pytest.raises(ValueError, match="ends with a space"):
        WriteToMySql(**my, table="trailing ")


def test_schema_evolution_add_fail_and_ignore(my, db, names):
    table = names("evolve")
    sink = dict(**my, table=table, key=["id"], create_table=True)
    write(WriteToMySql(**sink), [pa.RecordBatch.from_pylist([{"id": 1, "name": "a"}])])
    grown = pa.RecordBatch.from_pylist([{"id": 2, "NAME": "b", "age": 7}])  # names match case-insensitively
    with pytest.raises(Exception, match=r"\['age'\] are not in table.*schema_evolution: add_columns"):
        write(WriteToMySql(**sink), [grown])
    _, dead, _ = write(WriteToMySql(**sink, schema_evolution="ignore"), [grown])
    assert dead == [] and execute(db, f"SELECT * FROM {q(table)} ORDER BY id") == [(1, "a"), (2, "b")]
    _, dead, _ = write(WriteToMySql(**sink, schema_evolution="add_columns"),
                       [pa.RecordBatch.from_pylist([{"id": 3, "name": "c", "age": 9}])])
    assert dead == [] and execute(db, f"SELECT id, age FROM {q(table)} ORDER BY id") == [
        (1, None), (2, None), (3, 9)]


def test_ssl_mode_required_fails_clearly_without_server_tls(my, db):
    has_tls = execute(db, "SHOW VARIABLES LIKE 'have_ssl'")[0][1] == "YES"
    query = "SELECT 1 AS one"
    if has_tls:
        got, _, _ = read(ReadFromMySql(**my, query=query, ssl_mode="REQUIRED"))
        assert got.num_rows == 1
    else:
        with pytest.raises(Exception, match="needs TLS|SSL is required"):
            read(ReadFromMySql(**my, query=query, ssl_mode="REQUIRED"))
    for mode in ("PREFERRED", "DISABLED"):
        got, _, _ = read(ReadFromMySql(**my, query=query, ssl_mode=mode))
        assert got.to_pylist() == [{"one": 1}]


def test_canary_password_never_shows(my, db, names, caplog, capsys):
    user, table = names("user", "USER"), names("secret")
    execute(db, f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (CANARY,))
    execute(db, f"CREATE TABLE {q(table)} (id INT PRIMARY KEY, name TEXT)")
    execute(db, f"INSERT INTO {q(table)} VALUES (1, 'a')")
    execute(db, f"GRANT SELECT ON {q(my['database'])}.{q(table)} TO '{user}'@'%'")
    caplog.set_level(logging.DEBUG)
    good = {**my, "user": user, "password": CANARY}
    source = ReadFromMySql(**good, table=table)
    assert CANARY not in repr(source.display_data()) and CANARY not in repr(source._opts)
    got, dead, _ = read(source)
    assert got.num_rows == 1 and dead == []
    with pytest.raises(Exception) as denied:
        write(WriteToMySql(**good, table=table), [pa.RecordBatch.from_pylist([{"id": 2, "name": "b"}])])
    assert "denied" in str(denied.value) and CANARY not in str(denied.value)
    wrong = {**good, "password": CANARY + "-wrong"}
    with pytest.raises(Exception) as failed:
        read(ReadFromMySql(**wrong, table=table))
    shown = "".join(traceback.format_exception(failed.value))
    assert "Access denied" in shown and CANARY not in shown
    captured = capsys.readouterr()
    assert CANARY not in captured.out + captured.err + caplog.text
    entry = registry.lookup("WriteToMySql")
    config = entry.config_model.model_validate({**wrong, "table": table, "mode": "upsert", "key": ["id"]})
    assert CANARY not in repr(config)


# --------------------------------------------------------------------------------------
# A connection killed mid-load
# --------------------------------------------------------------------------------------


def _slow_row_trigger(db, table: str, flag: str, marker: int) -> None:
    """Row ``marker`` sleeps in a trigger while the flag table says so."""
    execute(db, f"CREATE TABLE {q(flag)} (slow BOOL)")
    execute(db, f"INSERT INTO {q(flag)} VALUES (true)")
    execute(db, f"CREATE TRIGGER {q(table + '_slow')} BEFORE INSERT ON {q(table)} FOR EACH ROW "
                f"BEGIN IF NEW.id = {marker} AND (SELECT slow FROM {q(flag)}) THEN DO SLEEP(30); END IF; END")


def test_connection_killed_mid_load_is_retried_without_loss_or_duplicates(my, db, names, mysql_params):
    table, flag = names("killed"), names("flag")
    execute(db, f"CREATE TABLE {q(table)} (id BIGINT PRIMARY KEY, name TEXT)")
    _slow_row_trigger(db, table, flag, marker=5500)
    killed: list[int] = []

    def kill() -> None:
        conn = pymysql.connect(**mysql_params, autocommit=True)
        try:
            deadline = time.monotonic() + 60
            while not killed and time.monotonic() < deadline:
                with conn.cursor() as cur:
                    cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE STATE = 'User sleep' "
                                "AND INFO = 'DO SLEEP(30)' AND ID <> CONNECTION_ID()")
                    ids = [r[0] for r in cur.fetchall()]
                    if ids:
                        cur.execute(f"UPDATE {q(flag)} SET slow = false")
                        cur.execute(f"KILL {int(ids[0])}")
                        killed.append(ids[0])
                time.sleep(0.05)
        finally:
            conn.close()

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    batches = [pa.RecordBatch.from_pylist([{"id": i, "name": f"n{i}"} for i in range(s, s + 2000)])
               for s in range(0, 10000, 2000)]
    written, dead, counts = write(WriteToMySql(**my, table=table), batches)
    thread.join(5)
    assert len(killed) == 1
    assert dead == [] and sum(w["rows"] for w in written) == 10000
    assert execute(db, f"SELECT count(*), count(DISTINCT id), min(id), max(id) FROM {q(table)}") == [
        (10000, 10000, 0, 9999)]



def test_schema_qualified_tables(my, db, names):
    table = names("qualified")
    batch = pa.RecordBatch.from_pylist([{"id": i, "name": f"n{i}"} for i in range(20)])
    _, dead, _ = write(WriteToMySql(**my, schema=my["database"], table=table, mode="upsert", key=["id"],
                                    create_table=True), [batch])
    assert dead == [] and execute(db, f"SELECT count(*) FROM {q(table)}") == [(20,)]
    got, dead, counts = read(ReadFromMySql(**my, schema=my["database"], table=table,
                                           partition={"num_partitions": 2}, step_name="s"))
    assert dead == [] and sorted_rows(got) == batch.to_pylist() and counts["s"]["partitions"] == 2
    with pytest.raises(Exception, match="planning the read of table 'missing' failed"):
        read(ReadFromMySql(**my, table="missing"))
