"""PostgreSQL and MySQL dialects without a server: quoting, statements, type mapping, planning, values."""

from __future__ import annotations

import datetime as dt
import decimal
import pickle

import psycopg2
import pyarrow as pa
import pymysql
import pytest

from beam_etl import registry
from beam_etl.io import _sql_pg_values as pg_values
from beam_etl.io._sql_conn import ServerConnection
from beam_etl.io._sql_mysql_dialect import MySqlDialect
from beam_etl.io._sql_pg_dialect import PostgresDialect
from beam_etl.io._sql_server import SourceColumn, column_to_arrow
from beam_etl.io._sql_server_read import (
    PartitionSpec,
    coerce_bound,
    parse_partition,
    range_predicates,
    source_sql,
    split_bounds,
)
from beam_etl.io._sql_server_write import ServerWriteOptions
from beam_etl.io.sql import ReadFromMySql, ReadFromPostgres, WriteToMySql, WriteToPostgres
from beam_etl.ops import secrets

PG = PostgresDialect()
MY = MySqlDialect()
CONN = {"host": "db.example", "database": "shop", "user": "etl", "password": "canary-Unit-Pw-7"}


def write_opts(mode: str = "insert", key: tuple[str, ...] = (), schema: str | None = None) -> ServerWriteOptions:
    return ServerWriteOptions(ServerConnection("h", 1, "d", "u"), schema, 'or"ders', mode, key)


# --------------------------------------------------------------------------------------
# Quoting and statements
# --------------------------------------------------------------------------------------


def test_identifiers_are_quoted_and_percent_is_doubled_for_parameterised_statements():
    assert PG.quote_identifier('a "b"; DROP') == '"a ""b""; DROP"'
    assert MY.quote_identifier("a `b`; DROP") == "`a ``b``; DROP`"
    assert PG.ident("per%cent") == '"per%%cent"' and MY.ident("x%s") == "`x%%s`"
    assert PG.table_ref("t", "my schema") == '"my schema"."t"'
    assert PG.table_ref("t%", None, params=False) == '"t%"'
    with pytest.raises(ValueError, match="NUL"):
        PG.quote_identifier("a\x00b")


def test_identifier_limits_are_checked_at_construction():
    with pytest.raises(ValueError, match="63 bytes"):
        ReadFromPostgres(**CONN, table="é" * 32)
    with pytest.raises(ValueError, match="64 characters"):
        WriteToMySql(**CONN, table="x" * 65)
    with pytest.raises(ValueError, match="ends with a space"):
        ReadFromMySql(**CONN, table="t ")
    with pytest.raises(ValueError, match="Basic Multilingual Plane"):
        WriteToMySql(**CONN, table="emoji 😀")
    ReadFromMySql(**CONN, table="é" * 64)  # characters, not bytes


def test_postgres_write_plans():
    plan = PG.write_plan(write_opts(), ["id", "na%me"], ["bigint", "text"], ["id", "na%me"])
    assert plan.rows_sql == 'INSERT INTO "or""ders" ("id", "na%%me") VALUES %s'
    assert plan.bulk == {"copy": 'COPY "or""ders" ("id", "na%me") FROM STDIN WITH (FORMAT csv)'}
    upsert = PG.write_plan(write_opts("upsert", ("id",), "s"), ["id", "v"], ["int", "text"], ["id", "v", "w"])
    assert upsert.rows_sql == ('INSERT INTO "s"."or""ders" ("id", "v") VALUES %s ON CONFLICT ("id") '
                               'DO UPDATE SET "v" = EXCLUDED."v"')
    assert upsert.bulk["stage"] == ('CREATE TEMP TABLE "__beam_etl_stage__" ON COMMIT DROP AS SELECT "id", "v" '
                                    'FROM "s"."or""ders" WITH NO DATA')
    assert upsert.bulk["merge"].startswith('INSERT INTO "s"."or""ders" ("id", "v") SELECT "id", "v" FROM '
                                           '"__beam_etl_stage__" ON CONFLICT ("id")')
    replace = PG.write_plan(write_opts("replace", ("id",)), ["id", "v"], ["int", "text"], ["id", "v", "w"])
    assert replace.rows_sql.endswith('ON CONFLICT ("id") DO UPDATE SET "v" = EXCLUDED."v", "w" = DEFAULT')
    only_key = PG.write_plan(write_opts("upsert", ("id",)), ["id"], ["int"], ["id"])
    assert only_key.rows_sql.endswith("DO NOTHING")


def test_mysql_write_plans():
    plan = MY.write_plan(write_opts(), ["id", "n`m"], ["bigint", "text"], [])
    assert plan.rows_sql == "INSERT INTO `or\"ders` (`id`, `n``m`) VALUES (%s, %s)" and plan.bulk is None
    upsert = MY.write_plan(write_opts("upsert", ("ID",)), ["id", "v"], ["int", "text"], [])
    assert upsert.rows_sql.endswith("ON DUPLICATE KEY UPDATE `v` = VALUES(`v`)")
    assert MY.write_plan(write_opts("replace"), ["id"], ["int"], []).rows_sql.startswith("REPLACE INTO")
    assert MY.upsert_sql("t", ["id"], ["id"]).endswith("`id` = VALUES(`id`)")  # every column is key: a no-op


def test_create_table_and_add_column():
    schema = pa.schema([("id", pa.string()), ("v", pa.list_(pa.int32())), ("m", pa.struct([("a", pa.int8())]))])
    assert PG.create_table_sql('"t"', schema, ["id"]) == (
        'CREATE TABLE IF NOT EXISTS "t" ("id" text NOT NULL, "v" integer[], "m" jsonb, PRIMARY KEY ("id"))')
    assert MY.create_table_sql("`t`", schema, ["id"]) == (
        "CREATE TABLE IF NOT EXISTS `t` (`id` VARCHAR(255) NOT NULL, `v` JSON, `m` JSON, PRIMARY KEY (`id`)) "
        "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin")
    assert PG.add_column_sql('"t"', "a b", pa.float64()) == (
        'ALTER TABLE "t" ADD COLUMN IF NOT EXISTS "a b" double precision')
    assert MY.add_column_sql("`t`", "a", pa.uint64()) == "ALTER TABLE `t` ADD COLUMN `a` BIGINT UNSIGNED"
    assert PG.hash_bucket_sql('"k"', 4) == 'COALESCE(mod(abs(hashtext(("k")::text)::bigint), 4), 0)'
    assert MY.hash_bucket_sql("`k`", 4) == "COALESCE(MOD(CRC32(`k`), 4), 0)"


# --------------------------------------------------------------------------------------
# Type mapping
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arrow_type", "postgres", "mysql"), [
    (pa.bool_(), "boolean", "TINYINT(1)"),
    (pa.int8(), "smallint", "TINYINT"),
    (pa.int32(), "integer", "INT"),
    (pa.int64(), "bigint", "BIGINT"),
    (pa.uint64(), "numeric(20,0)", "BIGINT UNSIGNED"),
    (pa.float32(), "real", "FLOAT"),
    (pa.float64(), "double precision", "DOUBLE"),
    (pa.decimal128(12, 3), "numeric(12,3)", "DECIMAL(12,3)"),
    (pa.string(), "text", "LONGTEXT"),
    (pa.large_string(), "text", "LONGTEXT"),
    (pa.binary(), "bytea", "LONGBLOB"),
    (pa.date32(), "date", "DATE"),
    (pa.time64("us"), "time without time zone", "TIME(6)"),
    (pa.timestamp("us"), "timestamp without time zone", "DATETIME(6)"),
    (pa.timestamp("ms", "Europe/Paris"), "timestamp with time zone", "DATETIME(6)"),
    (pa.duration("s"), "interval", "BIGINT"),
    (pa.list_(pa.string()), "text[]", "JSON"),
    (pa.list_(pa.list_(pa.int64())), "jsonb", "JSON"),
    (pa.struct([("a", pa.int64())]), "jsonb", "JSON"),
    (pa.dictionary(pa.int32(), pa.string()), "text", "LONGTEXT"),
])
def test_arrow_to_column_types(arrow_type, postgres, mysql):
    assert PG.sql_type(arrow_type) == postgres and MY.sql_type(arrow_type) == mysql


@pytest.mark.parametrize(("declared", "arrow_type", "decode"), [
    ("smallint", pa.int16(), "native"), ("integer", pa.int32(), "native"), ("bigint", pa.int64(), "native"),
    ("numeric(12,3)", pa.decimal128(12, 3), "cast"), ("numeric(50,2)", pa.decimal256(50, 2), "cast"),
    ("numeric", pa.string(), "text"), ("real", pa.float32(), "native"), ("double precision", pa.float64(), "native"),
    ("boolean", pa.bool_(), "native"), ("character varying(5)", pa.string(), "native"),
    ("character(3)", pa.string(), "native"), ("text", pa.string(), "native"), ("date", pa.date32(), "cast"),
    ("time(3) without time zone", pa.time64("us"), "native"), ("time with time zone", pa.string(), "text"),
    ("timestamp(3) without time zone", pa.timestamp("us"), "cast"),
    ("timestamp with time zone", pa.timestamp("us", "UTC"), "cast"), ("interval", pa.string(), "text"),
    ("json", pa.string(), "text"), ("jsonb", pa.string(), "text"), ("bytea", pa.binary(), "bytes"),
    ("uuid", pa.string(), "text"), ("integer[]", pa.list_(pa.int32()), "native"),
    ("text[]", pa.list_(pa.string()), "native"), ("uuid[]", pa.list_(pa.string()), "list_text"),
    ("numeric(5,2)[]", pa.list_(pa.decimal128(5, 2)), "native"), ("jsonb[]", pa.list_(pa.string()), "list_text"),
])
def test_postgres_declared_types_to_arrow(declared, arrow_type, decode):
    assert PG.arrow_type(declared) == arrow_type
    assert PG.decode_for(declared, arrow_type) == decode


def test_postgres_unknown_types_and_enums_read_as_text():
    assert PG.arrow_type("tsvector") is None and PG.arrow_type("") is None
    assert PG.decode_for("mood", pa.string(), enum=True) == "text"
    assert PG.decode_for("mood[]", pa.list_(pa.string()), enum=True) == "list_text"


@pytest.mark.parametrize(("declared", "arrow_type", "decode"), [
    ("tinyint(1)", pa.bool_(), "bool"), ("tinyint(4)", pa.int8(), "native"),
    ("tinyint(3) unsigned", pa.uint8(), "native"), ("smallint(5) unsigned", pa.uint16(), "native"),
    ("mediumint(9)", pa.int32(), "native"), ("int(11)", pa.int32(), "native"),
    ("int(10) unsigned", pa.uint32(), "native"), ("bigint(20)", pa.int64(), "native"),
    ("bigint(20) unsigned", pa.uint64(), "native"), ("decimal(10,2)", pa.decimal128(10, 2), "cast"),
    ("decimal(65,30)", pa.decimal256(65, 30), "cast"), ("float", pa.float32(), "native"),
    ("double", pa.float64(), "native"), ("bit(1)", pa.bool_(), "bit"), ("bit(12)", pa.uint64(), "bit"),
    ("year(4)", pa.int16(), "native"), ("date", pa.date32(), "cast"), ("datetime(6)", pa.timestamp("us"), "cast"),
    ("timestamp(3)", pa.timestamp("us", "UTC"), "cast_utc"), ("time(6)", pa.time64("us"), "time"),
    ("varchar(20)", pa.string(), "native"), ("enum('a','b')", pa.string(), "native"),
    ("set('a','b')", pa.string(), "native"), ("json", pa.string(), "native"), ("longtext", pa.string(), "native"),
    ("varbinary(8)", pa.binary(), "bytes"), ("longblob", pa.binary(), "bytes"), ("uuid", pa.string(), "native"),
])
def test_mysql_declared_types_to_arrow(declared, arrow_type, decode):
    assert MY.arrow_type(declared) == arrow_type
    assert MY.decode_for(declared, arrow_type) == decode


# --------------------------------------------------------------------------------------
# Fetched values -> Arrow
# --------------------------------------------------------------------------------------


def test_column_to_arrow_converts_fast_and_isolates_bad_values():
    stamps = SourceColumn("at", pa.timestamp("us", "UTC"), "timestamptz", "cast")
    arr, bad = column_to_arrow(["2024-01-01 10:00:00+02", None, "2024-06-01 00:00:00.5+00"], stamps)
    assert bad == {} and arr.to_pylist()[0] == dt.datetime(2024, 1, 1, 8, tzinfo=dt.UTC)
    arr, bad = column_to_arrow(["2024-01-01 10:00:00+00", "infinity", "0044-03-15 00:00:00+00 BC"], stamps)
    assert arr.to_pylist()[1:] == [None, None] and sorted(bad) == [1, 2]
    assert "column 'at' (timestamptz) value 'infinity' does not fit" in bad[1]
    money = SourceColumn("n", pa.decimal128(5, 2), "numeric(5,2)", "cast")
    arr, bad = column_to_arrow(["1.50", "NaN", "-999.99"], money)
    assert arr.to_pylist() == [decimal.Decimal("1.50"), None, decimal.Decimal("-999.99")] and list(bad) == [1]


def test_column_to_arrow_mysql_decodings():
    bits = SourceColumn("b", pa.uint64(), "bit(10)", "bit")
    assert column_to_arrow([b"\x02\x01", None], bits)[0].to_pylist() == [513, None]
    flag = SourceColumn("f", pa.bool_(), "bit(1)", "bit")
    assert column_to_arrow([b"\x01", b"\x00"], flag)[0].to_pylist() == [True, False]
    tiny = SourceColumn("t", pa.bool_(), "tinyint(1)", "bool")
    assert column_to_arrow([1, 0, 7, None], tiny)[0].to_pylist() == [True, False, True, None]
    clock = SourceColumn("c", pa.time64("us"), "time(6)", "time")
    arr, bad = column_to_arrow(["10:00:01.500000", "-01:00:00", "25:00:00"], clock)
    assert arr.to_pylist() == [dt.time(10, 0, 1, 500000), None, None] and "not a time of day" in bad[1]
    utc = SourceColumn("ts", pa.timestamp("us", "UTC"), "timestamp(6)", "cast_utc")
    assert column_to_arrow(["2024-01-01 10:00:00.000001"], utc)[0].to_pylist() == [
        dt.datetime(2024, 1, 1, 10, 0, 0, 1, tzinfo=dt.UTC)]
    text = SourceColumn("s", pa.string(), "varchar", "native")
    arr, bad = column_to_arrow(["a", b"b", b"\xff"], text)
    assert arr.to_pylist() == ["a", "b", None] and "not UTF-8" in bad[2]


# --------------------------------------------------------------------------------------
# Arrow -> PostgreSQL COPY text and parameters; MySQL parameters
# --------------------------------------------------------------------------------------


def test_copy_csv_quotes_every_value_and_keeps_null_apart_from_empty():
    batch = pa.RecordBatch.from_pylist([
        {"id": 1, "s": 'a"b\n\\.', "raw": b"\x00\xff", "at": dt.datetime(2024, 1, 1, 10, tzinfo=dt.UTC),
         "tags": ["x", None, 'q"\\', "{,}"], "meta": {"k": [1]}, "wait": dt.timedelta(seconds=2)},
        {"id": 2, "s": "", "raw": None, "at": None, "tags": None, "meta": None, "wait": None},
    ], schema=pa.schema([("id", pa.int64()), ("s", pa.string()), ("raw", pa.binary()),
                         ("at", pa.timestamp("us", "Europe/Paris")), ("tags", pa.list_(pa.string())),
                         ("meta", pa.struct([("k", pa.list_(pa.int64()))])), ("wait", pa.duration("ms"))]))
    text = pg_values.copy_csv(batch, ["bigint", "text", "bytea", "timestamptz", "text[]", "jsonb", "interval"])
    assert text.decode() == (
        '"1","a""b\n\\.","\\x00ff","2024-01-01 10:00:00.000000","{""x"",NULL,""q\\""\\\\"",""{,}""}",'
        '"{""k"": [1]}","2000 milliseconds"\n'
        '"2","",,,,,\n')
    as_json = pg_values.copy_csv(batch.select(["tags"]), ["jsonb"])
    assert as_json.decode().splitlines()[0] == '"[""x"", null, ""q\\""\\\\"", ""{,}""]"'


def test_postgres_params_bind_native_values_and_array_literals():
    batch = pa.RecordBatch.from_pylist([{"ok": True, "n": decimal.Decimal("1.50"), "d": dt.date(2024, 1, 2),
                                         "ints": [1, None], "raw": b"\x01"}])
    params = PG.batch_params(batch, ["boolean", "numeric(5,2)", "date", "integer[]", "bytea"])
    assert params == [(True, "1.50", "2024-01-02", "{\"1\",NULL}", b"\x01")]


def test_invalid_rows_are_found_before_sending():
    batch = pa.RecordBatch.from_pylist([{"s": "ok", "f": 1.0}, {"s": "nul\x00", "f": float("nan")},
                                        {"s": None, "f": float("inf")}])
    assert list(PG.invalid_rows(batch)) == [1] and "NUL" in PG.invalid_rows(batch)[1]
    assert sorted(MY.invalid_rows(batch)) == [1, 2] and "NaN" in MY.invalid_rows(batch)[1]


def test_mysql_params_keep_utc_wall_time_and_json():
    batch = pa.RecordBatch.from_pylist(
        [{"at": dt.datetime(2024, 1, 1, 10, tzinfo=dt.timezone(dt.timedelta(hours=2))), "ok": True,
          "tags": ["a"], "raw": b"\x00"}],
        schema=pa.schema([("at", pa.timestamp("us", "Europe/Paris")), ("ok", pa.bool_()),
                          ("tags", pa.list_(pa.string())), ("raw", pa.binary())]))
    assert MY.batch_params(batch) == [("2024-01-01 08:00:00.000000", 1, '["a"]', b"\x00")]


# --------------------------------------------------------------------------------------
# Partition planning
# --------------------------------------------------------------------------------------


def test_split_bounds_by_kind():
    assert split_bounds(1, 100, 4, "int") == [26, 51, 76]
    assert split_bounds(5, 6, 4, "int") == [6]
    assert split_bounds(3, 3, 4, "int") == [] and split_bounds(None, 3, 4, "int") == []
    assert split_bounds(dt.date(2024, 1, 1), dt.date(2024, 1, 11), 2, "date") == [dt.date(2024, 1, 6)]
    lo, hi = dt.datetime(2024, 1, 1, tzinfo=dt.UTC), dt.datetime(2024, 1, 2, tzinfo=dt.UTC)
    assert split_bounds(lo, hi, 4, "timestamp")[1] == dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC)
    assert split_bounds(decimal.Decimal("0"), decimal.Decimal("1"), 4, "decimal") == [
        decimal.Decimal("0.25"), decimal.Decimal("0.5"), decimal.Decimal("0.75")]
    assert split_bounds(0.0, 1.0, 2, "float") == [0.5]


def test_range_predicates_cover_nulls_and_values_beyond_the_bounds():
    preds = range_predicates('"k"', [10, 20])
    assert preds == [('("k" < %s OR "k" IS NULL)', (10,)), ('"k" >= %s AND "k" < %s', (10, 20)),
                     ('"k" >= %s', (20,))]
    assert range_predicates('"k"', []) == [("", ())]


def test_bounds_are_coerced_to_the_column_kind():
    zoned = pa.timestamp("us", "UTC")
    assert coerce_bound("2024-01-01", "timestamp", zoned, "f") == dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    assert coerce_bound("2024-01-01T02:00:00+02:00", "timestamp", pa.timestamp("us"), "f") == dt.datetime(2024, 1, 1)
    assert coerce_bound(dt.date(2024, 1, 1), "date", pa.date32(), "f") == dt.date(2024, 1, 1)
    assert coerce_bound("7", "int", pa.int64(), "f") == 7
    with pytest.raises(ValueError, match="partition.lower: 'soon' is not a date bound"):
        coerce_bound("soon", "date", pa.date32(), "partition.lower")


@pytest.mark.parametrize(("value", "message"), [
    ("id", "expected a mapping"),
    ({"colum": "id"}, r"unknown keys \['colum'\]"),
    ({"column": "id", "num_partitions": 0}, "partition.num_partitions: expected a whole number >= 1"),
    ({"column": "id", "strategy": "round"}, "partition.strategy: 'round' is not one of"),
    ({"column": "id", "strategy": "hash", "lower": 1}, "only range partitions have bounds"),
    ({"column": "", "num_partitions": 2}, "partition.column: expected a non-empty name"),
])
def test_partition_specs_are_validated(value, message):
    with pytest.raises(ValueError, match=message):
        parse_partition(value)


def test_partition_spec_defaults_to_auto():
    assert parse_partition({"column": "id"}) == PartitionSpec(column="id")
    spec = parse_partition({"column": "id", "num_partitions": "auto", "rows_per_partition": 10})
    assert spec.num_partitions is None and spec.rows_per_partition == 10


def test_query_sources_are_wrapped_and_percent_doubled():
    opts = ReadFromPostgres(**CONN, query="SELECT * FROM t WHERE s LIKE 'a%';")._opts
    assert source_sql(PG, opts) == "(SELECT * FROM t WHERE s LIKE 'a%%') AS \"__beam_etl_query__\""


# --------------------------------------------------------------------------------------
# Construction-time validation, secrets, registry
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"table": "t", "query": "SELECT 1"}, "exactly one of"),
    ({}, "exactly one of"),
    ({"table": "t", "port": 0}, "port: expected a TCP port"),
    ({"table": "t", "host": ""}, "host: expected"),
    ({"table": "t", "sslmode": "on"}, r"sslmode: 'on' is not one of \['disable'"),
    ({"table": "t", "connect_timeout_s": 0}, "connect_timeout_s"),
    ({"table": "t", "batch_rows": 0}, "batch_rows"),
    ({"table": "t", "max_retries": -1}, "max_retries"),
    ({"query": "SELECT 1", "partition": {"num_partitions": 2}}, "partition.column: a query read needs"),
    ({"query": "SELECT 1", "schema": "s"}, "schema: only a table read"),
    ({"table": "t", "columns": ["a", "a"]}, "columns: names repeat"),
])
def test_postgres_read_options_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReadFromPostgres(**{**CONN, **kwargs})


def test_column_names_are_case_sensitive_on_postgres_only():
    ReadFromPostgres(**CONN, table="t", columns=["a", "A"])
    with pytest.raises(ValueError, match="compared case-insensitively"):
        ReadFromMySql(**CONN, table="t", columns=["a", "A"])


@pytest.mark.parametrize(("factory", "kwargs", "message"), [
    (WriteToPostgres, {"mode": "upsret"}, "mode: 'upsret' is not one of .*did you mean 'upsert'"),
    (WriteToPostgres, {"mode": "upsert"}, "key: mode 'upsert' needs key"),
    (WriteToPostgres, {"mode": "replace"}, "key: mode 'replace' needs key"),
    (WriteToPostgres, {"schema_evolution": "evolve"}, "schema_evolution: 'evolve' is not one of"),
    (WriteToMySql, {"ssl_mode": "required"}, r"ssl_mode: 'required' is not one of \['DISABLED'"),
    (WriteToMySql, {"key": []}, "key: expected a non-empty list"),
])
def test_write_options_are_validated(factory, kwargs, message):
    with pytest.raises(ValueError, match=message):
        factory(**CONN, table="t", **kwargs)
    WriteToMySql(**CONN, table="t", mode="replace")  # MySQL's REPLACE needs no key


def test_password_is_registered_and_never_shown():
    password = CONN["password"]
    for transform in (ReadFromPostgres(**CONN, table="t"), WriteToMySql(**CONN, table="t")):
        data = transform.display_data()
        assert data["password"] == "***" and password not in repr(data) and password not in repr(transform._opts)
    assert secrets.redact(f"login with {password} failed") == "login with *** failed"
    with pytest.raises(ValueError) as err:
        ReadFromPostgres(**{**CONN, "password": 12345}, table="t")
    assert "12345" not in str(err.value)


def test_unpickled_settings_register_the_password_again(monkeypatch):
    settings = ServerConnection("h", 5432, "d", "u", password="canary-Pickled-Pw")
    monkeypatch.setattr(secrets, "_SECRETS", set())
    assert secrets.redact("canary-Pickled-Pw") == "canary-Pickled-Pw"
    copy = pickle.loads(pickle.dumps(settings))  # as on a worker
    assert copy == settings and secrets.redact("x canary-Pickled-Pw") == "x ***"


def test_transient_and_row_errors_are_classified():
    lost = psycopg2.OperationalError("server closed the connection unexpectedly")
    assert PG.is_transient(lost) and PG.is_disconnect(lost)
    assert PG.is_transient(psycopg2.OperationalError("SSL connection has been closed unexpectedly"))
    assert not PG.is_transient(psycopg2.OperationalError('FATAL:  password authentication failed for user "u"'))
    assert PG.is_transient(psycopg2.InterfaceError("connection already closed"))
    assert PG.classify_row_error(psycopg2.IntegrityError("dup")) == "constraint"
    assert PG.classify_row_error(psycopg2.DataError("bad")) == "type"
    assert PG.classify_row_error(psycopg2.ProgrammingError("syntax")) is None
    err = pymysql.err.OperationalError
    assert MY.is_transient(err(2013, "Lost connection")) and MY.is_disconnect(err(2013, "Lost connection"))
    assert MY.is_transient(err(1213, "Deadlock")) and not MY.is_disconnect(err(1213, "Deadlock"))
    assert not MY.is_transient(err(1045, "Access denied"))
    assert MY.classify_row_error(pymysql.err.IntegrityError(1062, "Duplicate entry")) == "constraint"
    assert MY.classify_row_error(err(4025, "CONSTRAINT failed")) == "constraint"
    assert MY.classify_row_error(pymysql.err.DataError(1406, "Data too long")) == "type"
    assert MY.classify_row_error(pymysql.err.ProgrammingError(1146, "no such table")) is None


def test_registered_configs_build_the_transforms(run_context):
    for name, kind in [("ReadFromPostgres", "source"), ("WriteToPostgres", "sink"), ("ReadFromMySql", "source"),
                       ("WriteToMySql", "sink")]:
        entry = registry.lookup(name)
        assert entry is not None and entry.kind == kind
    read = registry.lookup("ReadFromPostgres")
    config = read.config_model.model_validate({**CONN, "table": "orders", "schema": "sales",
                                               "partition": {"column": "id", "num_partitions": 4}})
    assert CONN["password"] not in repr(config)
    transform = read.factory(config, registry.BuildContext("orders", run_context))
    assert transform._opts.schema == "sales" and transform._opts.partition.num_partitions == 4
    assert transform.display_data()["table"] == "sales.orders"
    with pytest.raises(ValueError, match="unknown keys"):
        read.config_model.model_validate({**CONN, "table": "t", "partition": {"col": "id"}})
    write = registry.lookup("WriteToMySql")
    with pytest.raises(ValueError, match="extra|unknown"):
        write.config_model.model_validate({**CONN, "table": "t", "tabel": "x"})
    sink = write.factory(write.config_model.model_validate({**CONN, "table": "t", "mode": "upsert", "key": ["id"],
                                                            "schema_evolution": "add_columns"}),
                         registry.BuildContext("store", run_context))
    assert sink._opts.schema_evolution == "add_columns" and sink._step_name == "store"
