"""MySQL and MariaDB through PyMySQL: connections, catalog lookups, type mapping and statements.

Identifiers go in backticks with embedded backticks doubled. Sessions run with
``time_zone = '+00:00'`` (TIMESTAMP columns read and write in UTC) and ``STRICT_ALL_TABLES``
added to ``sql_mode``, so a value that does not fit its column is an error (it goes to the
DLQ), never a silent truncation. Decimals, dates and date-times are fetched as the server's
text and converted by Arrow.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pymysql
import pymysql.converters
import pymysql.cursors
from pymysql.constants import FIELD_TYPE

from beam_etl.io._sql_common import DIALECTS
from beam_etl.io._sql_conn import ServerConnection
from beam_etl.io._sql_server import ServerDialect, SourceColumn
from beam_etl.io._sql_server_write import WritePlan

#: Lock wait timeout, deadlock, too many connections, server shutdown, can't connect,
#: gone away, lost connection, connection killed (MariaDB), disconnected for inactivity.
TRANSIENT_CODES = frozenset({1205, 1213, 1040, 1053, 2002, 2003, 2006, 2013, 1927, 4031})
DISCONNECT_CODES = frozenset({1053, 2002, 2003, 2006, 2013, 1927, 4031})
#: Duplicate key, NULL in NOT NULL, no default, foreign keys, CHECK (MySQL 3819, MariaDB 4025).
CONSTRAINT_CODES = frozenset({1062, 1048, 1364, 1451, 1452, 1216, 1217, 1557, 1586, 3819, 4025})
#: Out of range, truncated, incorrect value, too long, invalid JSON, bad geometry, bad charset.
DATA_CODES = frozenset({1264, 1265, 1292, 1366, 1367, 1406, 1411, 1690, 3140, 4038, 1416, 1300, 1918})

_READ_CONV = dict(pymysql.converters.conversions)
for _code in (FIELD_TYPE.DECIMAL, FIELD_TYPE.NEWDECIMAL, FIELD_TYPE.DATE, FIELD_TYPE.NEWDATE, FIELD_TYPE.DATETIME,
              FIELD_TYPE.TIMESTAMP, FIELD_TYPE.TIME):
    _READ_CONV[_code] = pymysql.converters.through  # the server's text: converted by Arrow / the reader

_INT_TYPES = {"tinyint": (pa.int8(), pa.uint8()), "smallint": (pa.int16(), pa.uint16()),
              "mediumint": (pa.int32(), pa.uint32()), "int": (pa.int32(), pa.uint32()),
              "integer": (pa.int32(), pa.uint32()), "bigint": (pa.int64(), pa.uint64())}
_TEXT_TYPES = ("char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set", "json", "uuid",
               "inet4", "inet6", "nchar", "nvarchar")
_BINARY_TYPES = ("binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", "geometry", "point",
                 "linestring", "polygon", "multipoint", "multilinestring", "multipolygon", "geometrycollection")
_DECIMAL_RE = re.compile(r"^(?:decimal|numeric|dec|fixed)\((\d+)(?:,(\d+))?\)")


def _ssl_context(s: ServerConnection) -> ssl.SSLContext | None:
    mode = s.ssl_mode or "PREFERRED"
    if mode == "DISABLED":
        return None
    ctx = ssl.create_default_context(cafile=s.ssl_ca) if s.ssl_ca else ssl.create_default_context()
    if mode in ("PREFERRED", "REQUIRED"):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif mode == "VERIFY_CA":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
    if s.ssl_cert:
        ctx.load_cert_chain(s.ssl_cert, s.ssl_key)
    return ctx


class MySqlDialect(ServerDialect):
    """MySQL 5.7+/8 and MariaDB 10.3+ through PyMySQL (paramstyle format)."""

    name = "mysql"
    scheme = "mysql"
    default_port = 3306
    identifier_quote = "`"
    case_sensitive = False  # column names are case-insensitive in MySQL
    max_identifier_bytes = 256  # MySQL counts characters: see check_identifier
    constraint_errors = ()
    data_errors = ()
    disconnect_errors = (pymysql.err.InterfaceError,)

    # -- connections ---------------------------------------------------------------------

    def connect(self, database: Any, *, read_only: bool = False, timeout_s: float = 5.0, **params: Any) -> Any:
        s: ServerConnection = database
        mode = s.ssl_mode or "PREFERRED"
        try:
            conn = self._open(s, _ssl_context(s), **params)
        except pymysql.err.OperationalError as err:
            if mode != "PREFERRED" or self._code(err) != 2026:
                raise
            conn = self._open(s, None, **params)  # PREFERRED: the server offers no TLS, go on without
        if mode not in ("DISABLED", "PREFERRED"):
            with conn.cursor() as cursor:
                cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'", ())
                row = cursor.fetchone()
            if not row or not row[1]:
                conn.close()
                raise pymysql.err.OperationalError(2026, f"ssl_mode {mode} needs TLS, but the connection has none")
        return conn

    @staticmethod
    def _open(s: ServerConnection, context: ssl.SSLContext | None, **params: Any) -> Any:
        return pymysql.connect(
            host=s.host, port=s.port, user=s.user, password=s.password or "", database=s.database,
            charset="utf8mb4", connect_timeout=s.connect_timeout_whole_s(), autocommit=False, conv=_READ_CONV,
            ssl=context, ssl_disabled=context is None, program_name=s.application_name,
            init_command=("SET time_zone = '+00:00', "
                          "sql_mode = CONCAT_WS(',', NULLIF(@@sql_mode, ''), 'STRICT_ALL_TABLES'), "
                          "net_write_timeout = 3600, net_read_timeout = 3600"),
            **params)

    @staticmethod
    def _code(exc: BaseException) -> int | None:
        args = getattr(exc, "args", ())
        return args[0] if args and isinstance(args[0], int) else None

    def is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, pymysql.err.InterfaceError):
            return True
        if not isinstance(exc, pymysql.err.MySQLError):
            return isinstance(exc, (ConnectionError, TimeoutError))
        return self._code(exc) in TRANSIENT_CODES

    def is_disconnect(self, exc: BaseException) -> bool:
        if isinstance(exc, (pymysql.err.InterfaceError, ConnectionError, TimeoutError)):
            return True
        return isinstance(exc, pymysql.err.MySQLError) and self._code(exc) in DISCONNECT_CODES

    def classify_row_error(self, exc: BaseException) -> str | None:
        if not isinstance(exc, pymysql.err.MySQLError):
            return None
        code = self._code(exc)
        if code in CONSTRAINT_CODES:
            return "constraint"
        if code in DATA_CODES or isinstance(exc, pymysql.err.DataError):
            return "type"
        return None

    # -- names and catalog ---------------------------------------------------------------

    def check_identifier(self, field: str, name: str) -> None:
        if len(name) > 64:
            raise ValueError(f"{field}: {name!r} is longer than MySQL's limit of 64 characters for a name")
        if name != name.rstrip(" "):
            raise ValueError(f"{field}: {name!r} ends with a space, which MySQL does not allow in a name")
        if any(ord(ch) > 0xFFFF for ch in name):
            raise ValueError(f"{field}: {name!r} has a character outside the Basic Multilingual Plane, "
                             "which MySQL does not allow in a name")

    def table_columns(self, conn: Any, table: str, schema: str | None = None) -> dict[str, tuple[str, str]] | None:
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
                (schema, table))
            rows = cursor.fetchall()
        return {self.name_key(n): (n, t) for n, t in rows} if rows else None

    def primary_key(self, conn: Any, table: str, schema: str | None) -> list[str]:
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = "
                "COALESCE(%s, DATABASE()) AND TABLE_NAME = %s AND CONSTRAINT_NAME = 'PRIMARY' "
                "ORDER BY ORDINAL_POSITION", (schema, table))
            return [r[0] for r in cursor.fetchall()]

    def estimate_rows(self, conn: Any, select_sql: str) -> int | None:
        with conn.cursor(pymysql.cursors.DictCursor) as cursor:
            cursor.execute(f"EXPLAIN {select_sql}", ())
            counts = [int(r["rows"]) for r in cursor.fetchall() if r.get("rows") is not None]
        return max(counts) if counts else None

    def hash_bucket_sql(self, column_sql: str, buckets: int) -> str:
        return f"COALESCE(MOD(CRC32({column_sql}), {int(buckets)}), 0)"

    # -- types ---------------------------------------------------------------------------

    def sql_type(self, arrow_type: pa.DataType, key: bool = False) -> str:
        t = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
        if isinstance(t, pa.ExtensionType):
            t = t.storage_type
        if pa.types.is_boolean(t):
            return "TINYINT(1)"
        ints = {pa.int8(): "TINYINT", pa.int16(): "SMALLINT", pa.int32(): "INT", pa.int64(): "BIGINT",
                pa.uint8(): "TINYINT UNSIGNED", pa.uint16(): "SMALLINT UNSIGNED", pa.uint32(): "INT UNSIGNED",
                pa.uint64(): "BIGINT UNSIGNED"}
        if t in ints:
            return ints[t]
        if pa.types.is_float16(t) or pa.types.is_float32(t):
            return "FLOAT"
        if pa.types.is_float64(t):
            return "DOUBLE"
        if pa.types.is_decimal(t):
            return f"DECIMAL({t.precision},{t.scale})" if t.precision <= 65 else "LONGTEXT"
        if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
            return "VARBINARY(255)" if key else "LONGBLOB"
        if pa.types.is_fixed_size_binary(t):
            return f"BINARY({t.byte_width})" if t.byte_width <= 255 else "LONGBLOB"
        if pa.types.is_date(t):
            return "DATE"
        if pa.types.is_timestamp(t):
            return "DATETIME(6)"  # zoned values are stored in UTC: TIMESTAMP stops at 2038
        if pa.types.is_time(t):
            return "TIME(6)"
        if pa.types.is_duration(t):
            return "BIGINT"
        if pa.types.is_nested(t):
            return "JSON"
        return "VARCHAR(255)" if key else "LONGTEXT"

    def arrow_type(self, declared: str) -> pa.DataType | None:
        d = (declared or "").strip().lower()
        if not d:
            return None
        base = re.split(r"[\s(]", d, maxsplit=1)[0]
        unsigned = " unsigned" in d
        if base in ("bool", "boolean") or (d.startswith("tinyint(1)") and not unsigned):
            return pa.bool_()
        if base in _INT_TYPES:
            return _INT_TYPES[base][1 if unsigned else 0]
        if base in ("decimal", "numeric", "dec", "fixed"):
            match = _DECIMAL_RE.match(d)
            precision, scale = (int(match.group(1)), int(match.group(2) or 0)) if match else (10, 0)
            return pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
        if base == "float":
            return pa.float32()
        if base in ("double", "real"):
            return pa.float64()
        if base == "bit":
            match = re.match(r"bit\((\d+)\)", d)
            return pa.bool_() if not match or match.group(1) == "1" else pa.uint64()
        if base == "year":
            return pa.int16()
        if base == "date":
            return pa.date32()
        if base == "datetime":
            return pa.timestamp("us")
        if base == "timestamp":
            return pa.timestamp("us", "UTC")
        if base == "time":
            return pa.time64("us")
        if base in _TEXT_TYPES:
            return pa.string()
        if base in _BINARY_TYPES:
            return pa.binary()
        return None

    def decode_for(self, declared: str, arrow_type: pa.DataType) -> str:
        base = re.split(r"[\s(]", declared.strip().lower(), maxsplit=1)[0]
        if base == "bit":
            return "bit"
        if pa.types.is_boolean(arrow_type):
            return "bool"
        if pa.types.is_timestamp(arrow_type) and arrow_type.tz is not None:
            return "cast_utc"  # TIMESTAMP text in the session's time zone, which is UTC
        if pa.types.is_decimal(arrow_type) or pa.types.is_date(arrow_type) or pa.types.is_timestamp(arrow_type):
            return "cast"
        if pa.types.is_time(arrow_type):
            return "time"
        if pa.types.is_binary(arrow_type):
            return "bytes"
        return "native"

    def _from_description(self, desc: Sequence[tuple]) -> list[SourceColumn]:
        """Column types from result metadata only (no privilege to create a temporary table)."""
        codes = {
            FIELD_TYPE.TINY: pa.int8(), FIELD_TYPE.SHORT: pa.int16(), FIELD_TYPE.INT24: pa.int32(),
            FIELD_TYPE.LONG: pa.int32(), FIELD_TYPE.LONGLONG: pa.int64(), FIELD_TYPE.FLOAT: pa.float32(),
            FIELD_TYPE.DOUBLE: pa.float64(), FIELD_TYPE.YEAR: pa.int16(), FIELD_TYPE.DATE: pa.date32(),
            FIELD_TYPE.DATETIME: pa.timestamp("us"), FIELD_TYPE.TIMESTAMP: pa.timestamp("us", "UTC"),
            FIELD_TYPE.TIME: pa.time64("us"),
        }
        out = []
        for name, code, _, length, _, _, _ in desc:
            if code == FIELD_TYPE.TINY and length == 1:
                arrow, declared = pa.bool_(), "tinyint(1)"
            elif code in (FIELD_TYPE.NEWDECIMAL, FIELD_TYPE.DECIMAL):
                arrow, declared = pa.string(), "decimal"
            elif code in (FIELD_TYPE.BIT,):
                arrow, declared = pa.uint64(), "bit"
            else:
                arrow = codes.get(code, pa.string())
                declared = f"type {code}"
            decode = {"tinyint(1)": "bool", "bit": "bit"}.get(declared) or self.decode_for(declared, arrow)
            out.append(SourceColumn(name, arrow, declared, decode, code))
        return out

    def describe(self, conn: Any, select_sql: str) -> list[SourceColumn]:
        with conn.cursor() as cursor:
            cursor.execute(f"{select_sql} LIMIT 0", ())
            desc = list(cursor.description)
            temp = self.ident("__beam_etl_describe__")
            try:
                cursor.execute(f"CREATE TEMPORARY TABLE {temp} AS {select_sql} LIMIT 0", ())
            except pymysql.err.MySQLError:
                return self._from_description(desc)
            try:
                cursor.execute(f"SHOW COLUMNS FROM {temp}", ())
                shown = [(r[0], r[1].decode() if isinstance(r[1], bytes) else r[1]) for r in cursor.fetchall()]
            finally:
                cursor.execute(f"DROP TEMPORARY TABLE IF EXISTS {temp}", ())
        conn.rollback()
        columns = []
        for (name, *_), (_, declared) in zip(desc, shown, strict=True):
            arrow = self.arrow_type(declared) or pa.string()
            columns.append(SourceColumn(name, arrow, declared, self.decode_for(declared, arrow)))
        return columns

    def stream(self, conn: Any, sql: str, params: Sequence[Any], batch_rows: int,
               columns: Sequence[SourceColumn]) -> Iterator[list[tuple]]:
        cursor = conn.cursor(pymysql.cursors.SSCursor)
        try:
            cursor.execute(sql, tuple(params))
            while True:
                rows = cursor.fetchmany(batch_rows)
                if not rows:
                    break
                yield list(rows)
        finally:
            try:
                cursor.close()
            except pymysql.err.MySQLError:
                pass
            self.rollback_quietly(conn)

    # -- statements ----------------------------------------------------------------------

    def create_table_sql(self, table: str, schema: pa.Schema, key: Sequence[str] = ()) -> str:
        keys = {k.lower() for k in key}
        cols = []
        for f in schema:
            is_key = f.name.lower() in keys
            cols.append(f"{self.ident(f.name)} {self.sql_type(f.type, key=is_key)}{' NOT NULL' if is_key else ''}")
        if key:
            cols.append(f"PRIMARY KEY ({', '.join(self.ident(k) for k in key)})")
        return (f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(cols)}) "
                "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin")

    def add_column_sql(self, table: str, name: str, arrow_type: pa.DataType) -> str:
        return f"ALTER TABLE {table} ADD COLUMN {self.ident(name)} {self.sql_type(arrow_type)}"

    def _values(self, columns: Sequence[str]) -> str:
        return f"({', '.join(self.ident(c) for c in columns)}) VALUES ({', '.join(['%s'] * len(columns))})"

    def upsert_sql(self, table: str, columns: Sequence[str], key: Sequence[str]) -> str:
        keys = {k.lower() for k in key}
        updates = [c for c in columns if c.lower() not in keys] or list(columns[:1])
        sets = ", ".join(f"{self.ident(c)} = VALUES({self.ident(c)})" for c in updates)
        return f"INSERT INTO {table} {self._values(columns)} ON DUPLICATE KEY UPDATE {sets}"

    def replace_sql(self, table: str, columns: Sequence[str]) -> str:
        return f"REPLACE INTO {table} {self._values(columns)}"

    def write_plan(self, opts: Any, names: Sequence[str], targets: Sequence[str],
                   table_columns: Sequence[str]) -> WritePlan:
        table = self.table_ref(opts.table, opts.schema)
        if opts.mode == "upsert":
            sql = self.upsert_sql(table, names, opts.key)
        elif opts.mode == "replace":
            sql = self.replace_sql(table, names)
        else:
            sql = f"INSERT INTO {table} {self._values(names)}"
        return WritePlan(tuple(names), tuple(targets), sql)

    # -- writing -------------------------------------------------------------------------

    def begin(self, conn: Any) -> Any:
        conn.begin()
        return None

    def invalid_rows(self, batch: pa.RecordBatch) -> dict[int, str]:
        bad: dict[int, str] = {}
        for name, col in zip(batch.schema.names, batch.columns, strict=True):
            if not pa.types.is_floating(col.type):
                continue
            finite = pc.fill_null(pc.is_finite(col), True)
            if not pc.all(finite).as_py():
                for i in pc.indices_nonzero(pc.invert(finite)).to_pylist():
                    bad.setdefault(i, f"column {name!r}: MySQL cannot store NaN or infinite floats")
        return bad

    def batch_params(self, batch: pa.RecordBatch, targets: Sequence[str] = ()) -> list[tuple[Any, ...]]:
        columns = []
        for col in batch.columns:
            arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
            if pa.types.is_dictionary(arr.type):
                arr = arr.dictionary_decode()
            if isinstance(arr.type, pa.ExtensionType):
                arr = arr.storage
            t = arr.type
            if pa.types.is_timestamp(t) and t.tz is not None:
                arr = arr.cast(pa.timestamp(t.unit, "UTC")).cast(pa.timestamp(t.unit))  # UTC wall time
            columns.append(self.column_params(arr))
        return list(zip(*columns, strict=True)) if columns else [()] * batch.num_rows

    def execute_rows(self, cursor: Any, sql: str, rows: Sequence[tuple]) -> None:
        cursor.executemany(sql, rows)


DIALECTS["mysql"] = MySqlDialect()
