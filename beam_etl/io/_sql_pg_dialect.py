"""PostgreSQL through psycopg2: connections, catalog lookups, type mapping and statements.

Identifiers are quoted the way libpq's ``PQescapeIdentifier`` (behind psycopg2's
``sql.Identifier``) quotes them: in double quotes, with embedded double quotes doubled.
Sessions run with ``TimeZone=UTC``, ``DateStyle=ISO`` and ``IntervalStyle=iso_8601`` so the
text the reader takes from the server has one format.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import pyarrow as pa

from beam_etl.io import _sql_pg_values as values
from beam_etl.io._sql_common import DIALECTS
from beam_etl.io._sql_conn import ServerConnection
from beam_etl.io._sql_server import ServerDialect, SourceColumn
from beam_etl.io._sql_server_write import WritePlan

#: SQLSTATEs worth a retry: serialization failure, deadlock, lock timeout, shutdown/termination,
#: too many connections, out of resources, connection exceptions.
TRANSIENT_SQLSTATES = frozenset({
    "40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300", "53400",
    "08000", "08001", "08003", "08004", "08006",
})
_LOCK_SQLSTATES = frozenset({"40001", "40P01", "55P03"})
#: libpq errors (no SQLSTATE) that another attempt cannot fix: credentials, names, TLS setup, options.
_FATAL_CONNECT = ("password authentication failed", "no pg_hba.conf entry", "does not exist", "not permitted to log in",
                  "server does not support SSL", "certificate", "invalid sslmode", "invalid connection option",
                  "authentication method", "permission denied", "could not translate host name")
_NUMERIC_RE = re.compile(r"^numeric\((\d+),(-?\d+)\)$")
_TEXT_TYPES = ("text", "character varying", "character", "name", '"char"', "bpchar", "citext")

_SCALARS: dict[str, pa.DataType] = {
    "smallint": pa.int16(), "integer": pa.int32(), "bigint": pa.int64(), "oid": pa.int64(),
    "real": pa.float32(), "double precision": pa.float64(), "boolean": pa.bool_(),
    "date": pa.date32(), "bytea": pa.binary(),
}


def _base(declared: str) -> str:
    """The declared type without modifiers: ``character varying(5)`` -> ``character varying``."""
    return re.sub(r"\(\s*[\d,\s-]*\)", "", declared).strip()


class PostgresDialect(ServerDialect):
    """PostgreSQL 10+ through psycopg2 (paramstyle format)."""

    name = "postgres"
    scheme = "postgresql"
    default_port = 5432
    case_sensitive = True
    max_identifier_bytes = 63
    constraint_errors = (psycopg2.IntegrityError, psycopg2.errors.CardinalityViolation)
    data_errors = (psycopg2.DataError,)
    disconnect_errors = (psycopg2.InterfaceError, psycopg2.OperationalError)

    # -- connections ---------------------------------------------------------------------

    def connect(self, database: Any, *, read_only: bool = False, timeout_s: float = 5.0, **params: Any) -> Any:
        s: ServerConnection = database
        kwargs: dict[str, Any] = {
            "host": s.host, "port": s.port, "dbname": s.database, "user": s.user,
            "connect_timeout": s.connect_timeout_whole_s(), "application_name": s.application_name,
            "client_encoding": "UTF8",
            "options": "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=iso_8601 -c extra_float_digits=3",
        }
        if s.password is not None:
            kwargs["password"] = s.password
        if s.ssl_mode:
            kwargs["sslmode"] = s.ssl_mode
        for key, value in (("sslrootcert", s.ssl_ca), ("sslcert", s.ssl_cert), ("sslkey", s.ssl_key)):
            if value:
                kwargs[key] = value
        conn = psycopg2.connect(**kwargs, **params)
        conn.autocommit = False
        if read_only:
            conn.set_session(readonly=True)
        return conn

    def is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, psycopg2.InterfaceError):
            return True  # the connection is closed
        if not isinstance(exc, psycopg2.Error):
            return False
        code = getattr(exc, "pgcode", None)
        if code:
            return code in TRANSIENT_SQLSTATES
        if isinstance(exc, psycopg2.OperationalError):  # libpq-level: no SQLSTATE
            text = str(exc)
            return not any(marker in text for marker in _FATAL_CONNECT)
        return False

    def is_disconnect(self, exc: BaseException) -> bool:
        if not isinstance(exc, self.disconnect_errors):
            return False
        return getattr(exc, "pgcode", None) not in _LOCK_SQLSTATES

    def classify_row_error(self, exc: BaseException) -> str | None:
        if isinstance(exc, psycopg2.Error) and getattr(exc, "pgcode", None) in TRANSIENT_SQLSTATES:
            return None
        return super().classify_row_error(exc)

    # -- names and catalog ---------------------------------------------------------------

    def _regclass(self, cursor: Any, table: str, schema: str | None) -> int | None:
        cursor.execute("SELECT to_regclass(%s)::oid", (self.table_ref(table, schema, params=False),))
        row = cursor.fetchone()
        return row[0] if row else None

    def table_columns(self, conn: Any, table: str, schema: str | None = None) -> dict[str, tuple[str, str]] | None:
        cursor = conn.cursor()
        try:
            oid = self._regclass(cursor, table, schema)
            if oid is None:
                return None
            cursor.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (oid,))
            return {self.name_key(name): (name, declared) for name, declared in cursor.fetchall()}
        finally:
            cursor.close()

    def primary_key(self, conn: Any, table: str, schema: str | None) -> list[str]:
        cursor = conn.cursor()
        try:
            oid = self._regclass(cursor, table, schema)
            if oid is None:
                return []
            cursor.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
                "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                "WHERE i.indrelid = %s AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
                (oid,))
            return [r[0] for r in cursor.fetchall()]
        finally:
            cursor.close()

    def estimate_rows(self, conn: Any, select_sql: str) -> int | None:
        cursor = conn.cursor()
        try:
            cursor.execute(f"EXPLAIN (FORMAT JSON) {select_sql}", ())
            plan = cursor.fetchone()[0]
            plan = json.loads(plan) if isinstance(plan, str) else plan
            return int(plan[0]["Plan"]["Plan Rows"])
        finally:
            cursor.close()
            self.rollback_quietly(conn)

    def hash_bucket_sql(self, column_sql: str, buckets: int) -> str:
        return f"COALESCE(mod(abs(hashtext(({column_sql})::text)::bigint), {int(buckets)}), 0)"

    # -- types ---------------------------------------------------------------------------

    def sql_type(self, arrow_type: pa.DataType) -> str:
        t = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
        if isinstance(t, pa.ExtensionType):
            if getattr(t, "extension_name", "") == "arrow.uuid":
                return "uuid"
            t = t.storage_type
        if pa.types.is_boolean(t):
            return "boolean"
        if pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_uint8(t):
            return "smallint"
        if pa.types.is_int32(t) or pa.types.is_uint16(t):
            return "integer"
        if pa.types.is_int64(t) or pa.types.is_uint32(t):
            return "bigint"
        if pa.types.is_uint64(t):
            return "numeric(20,0)"
        if pa.types.is_float16(t) or pa.types.is_float32(t):
            return "real"
        if pa.types.is_float64(t):
            return "double precision"
        if pa.types.is_decimal(t):
            return f"numeric({t.precision},{t.scale})"
        if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) \
                or pa.types.is_binary_view(t):
            return "bytea"
        if pa.types.is_date(t):
            return "date"
        if pa.types.is_timestamp(t):
            return "timestamp with time zone" if t.tz is not None else "timestamp without time zone"
        if pa.types.is_time(t):
            return "time without time zone"
        if pa.types.is_duration(t):
            return "interval"
        if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            inner = t.value_type
            if pa.types.is_nested(inner) or pa.types.is_null(inner):
                return "jsonb"
            return self.sql_type(inner) + "[]"
        if pa.types.is_nested(t):
            return "jsonb"
        return "text"

    def arrow_type(self, declared: str) -> pa.DataType | None:
        d = (declared or "").strip().lower()
        if not d:
            return None
        if d.endswith("[]"):
            inner = self.arrow_type(d[:-2])
            return pa.list_(inner if inner is not None else pa.string())
        match = _NUMERIC_RE.match(d.replace(" ", ""))
        if match:
            precision, scale = int(match.group(1)), int(match.group(2))
            if 0 <= scale <= precision <= 38:
                return pa.decimal128(precision, scale)
            if 0 <= scale <= precision <= 76:
                return pa.decimal256(precision, scale)
            return pa.string()
        base = _base(d)
        if base in _SCALARS:
            return _SCALARS[base]
        if base == "numeric":
            return pa.string()  # unconstrained: any precision, NaN, Infinity -> exact text
        if base == "time without time zone":
            return pa.time64("us")
        if base == "timestamp without time zone":
            return pa.timestamp("us")
        if base == "timestamp with time zone":
            return pa.timestamp("us", "UTC")
        if base in _TEXT_TYPES or base in ("time with time zone", "interval", "json", "jsonb", "uuid", "money",
                                           "xml", "inet", "cidr", "macaddr"):
            return pa.string()
        return None

    def decode_for(self, declared: str, arrow_type: pa.DataType, enum: bool = False) -> str:
        """How the reader decodes a column of this declared type (see ``_sql_server.DECODES``)."""
        d = _base(declared.strip().lower())
        if pa.types.is_list(arrow_type):
            inner = arrow_type.value_type
            element = d[:-2]
            if enum or pa.types.is_string(inner) and _base(element) not in _TEXT_TYPES:
                return "list_text"
            return "native"
        if pa.types.is_decimal(arrow_type) or pa.types.is_date(arrow_type) or pa.types.is_timestamp(arrow_type):
            return "cast"
        if pa.types.is_binary(arrow_type):
            return "bytes"
        if pa.types.is_string(arrow_type):
            return "native" if d in _TEXT_TYPES and not enum else "text"
        return "native"

    def describe(self, conn: Any, select_sql: str) -> list[SourceColumn]:
        cursor = conn.cursor()
        try:
            cursor.execute(f"{select_sql} LIMIT 0", ())
            desc = list(cursor.description)
            oids = sorted({c.type_code for c in desc})
            cursor.execute(
                "SELECT t.oid, t.typtype, t.typbasetype, t.typtypmod, COALESCE(e.typtype, ''), "
                "COALESCE(b.typtype, '') FROM pg_type t LEFT JOIN pg_type e ON e.oid = t.typelem "
                "LEFT JOIN pg_type b ON b.oid = t.typbasetype WHERE t.oid = ANY(%s)", (oids,))
            kinds = {row[0]: row[1:] for row in cursor.fetchall()}
            tables = sorted({c.table_oid for c in desc if c.table_oid})
            attmods: dict[tuple[int, int], int] = {}
            if tables:
                cursor.execute("SELECT attrelid, attnum, atttypmod FROM pg_attribute WHERE attrelid = ANY(%s) "
                               "AND attnum > 0", (tables,))
                attmods = {(r[0], r[1]): r[2] for r in cursor.fetchall()}
            resolved: list[tuple[int, int]] = []
            for c in desc:
                typtype, base_oid, domain_mod, _, _ = kinds.get(c.type_code, ("b", 0, -1, "", ""))
                mod = attmods.get((c.table_oid, c.table_column), -1) if c.table_oid else -1
                if mod == -1 and c.precision not in (None, 65535) and c.scale is not None:
                    mod = ((c.precision << 16) | (c.scale & 0xFFFF)) + 4  # an expression's numeric(p,s)
                if typtype == "d":  # a domain reads as its base type
                    resolved.append((base_oid, mod if mod != -1 else domain_mod))
                else:
                    resolved.append((c.type_code, mod))
            cursor.execute("SELECT format_type(o, m) FROM unnest(%s::oid[], %s::int[]) WITH ORDINALITY AS u(o, m, i) "
                           "ORDER BY i", ([o for o, _ in resolved], [m for _, m in resolved]))
            declared = [r[0] for r in cursor.fetchall()]
        finally:
            cursor.close()
            self.rollback_quietly(conn)
        columns = []
        for c, decl in zip(desc, declared, strict=True):
            typtype, _, _, elem_type, base_type = kinds.get(c.type_code, ("b", 0, -1, "", ""))
            enum = "e" in (typtype, elem_type, base_type)
            arrow = pa.list_(pa.string()) if enum and decl.endswith("[]") else (
                pa.string() if enum else self.arrow_type(decl))
            if arrow is None:
                arrow = pa.string()
            # Casters go on the OID the server reports (a scalar domain reports its base type).
            columns.append(SourceColumn(c.name, arrow, decl, self.decode_for(decl, arrow, enum), c.type_code))
        return columns

    # -- reading -------------------------------------------------------------------------

    @staticmethod
    def _bytes(value: Any, cursor: Any) -> bytes | None:
        raw = psycopg2.BINARY(value, cursor)
        return None if raw is None else bytes(raw)

    def register_casters(self, conn: Any, columns: Sequence[SourceColumn]) -> None:
        """Per-connection casters: raw server text for ``text``/``cast`` columns, bytes for bytea."""
        ext = psycopg2.extensions
        for col in columns:
            oid = col.type_code
            if oid is None:
                continue
            if col.decode in ("text", "cast"):
                ext.register_type(ext.new_type((oid,), f"BEAM_ETL_TEXT_{oid}", lambda v, cur: v), conn)
            elif col.decode == "bytes":
                ext.register_type(ext.new_type((oid,), f"BEAM_ETL_BYTES_{oid}", self._bytes), conn)
            elif col.decode == "list_text":
                ext.register_type(ext.new_array_type((oid,), f"BEAM_ETL_TEXTS_{oid}", psycopg2.STRING), conn)
            elif pa.types.is_list(col.arrow_type) and pa.types.is_binary(col.arrow_type.value_type):
                element = ext.new_type((17,), "BEAM_ETL_BYTES_ELEMENT", self._bytes)
                ext.register_type(ext.new_array_type((oid,), f"BEAM_ETL_BYTEAS_{oid}", element), conn)

    def stream(self, conn: Any, sql: str, params: Sequence[Any], batch_rows: int,
               columns: Sequence[SourceColumn]) -> Iterator[list[tuple]]:
        self.register_casters(conn, columns)
        cursor = conn.cursor(name=f"beam_etl_{uuid.uuid4().hex}")
        cursor.itersize = batch_rows
        try:
            cursor.execute(sql, tuple(params))
            while True:
                rows = cursor.fetchmany(batch_rows)
                if not rows:
                    break
                yield rows
        finally:
            try:
                cursor.close()
            except psycopg2.Error:
                pass
            self.rollback_quietly(conn)

    # -- statements ----------------------------------------------------------------------

    def create_table_sql(self, table: str, schema: pa.Schema, key: Sequence[str] = ()) -> str:
        keys = set(key)
        cols = [f"{self.ident(f.name)} {self.sql_type(f.type)}{' NOT NULL' if f.name in keys else ''}"
                for f in schema]
        if key:
            cols.append(f"PRIMARY KEY ({', '.join(self.ident(k) for k in key)})")
        return f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(cols)})"

    def add_column_sql(self, table: str, name: str, arrow_type: pa.DataType) -> str:
        return f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {self.ident(name)} {self.sql_type(arrow_type)}"

    def _conflict_action(self, columns: Sequence[str], key: Sequence[str], source: str,
                         all_columns: Sequence[str] = ()) -> str:
        keys = set(key)
        given = set(columns)
        sets = [f"{self.ident(c)} = {source}.{self.ident(c)}" for c in columns if c not in keys]
        sets += [f"{self.ident(c)} = DEFAULT" for c in all_columns if c not in given and c not in keys]
        target = ", ".join(self.ident(k) for k in key)
        return f"ON CONFLICT ({target}) " + ("DO UPDATE SET " + ", ".join(sets) if sets else "DO NOTHING")

    def upsert_sql(self, table: str, columns: Sequence[str], key: Sequence[str]) -> str:
        return (f"INSERT INTO {table} ({', '.join(self.ident(c) for c in columns)}) VALUES %s "
                + self._conflict_action(columns, key, "EXCLUDED"))

    def replace_sql(self, table: str, columns: Sequence[str], key: Sequence[str] = (),
                    all_columns: Sequence[str] = ()) -> str:
        return (f"INSERT INTO {table} ({', '.join(self.ident(c) for c in columns)}) VALUES %s "
                + self._conflict_action(columns, key, "EXCLUDED", all_columns))

    def write_plan(self, opts: Any, names: Sequence[str], targets: Sequence[str],
                   table_columns: Sequence[str]) -> WritePlan:
        table = self.table_ref(opts.table, opts.schema)
        cols = ", ".join(self.ident(c) for c in names)
        raw_cols = ", ".join(self.quote_identifier(c) for c in names)
        raw_table = self.table_ref(opts.table, opts.schema, params=False)
        stage = self.ident("__beam_etl_stage__")
        if opts.mode in ("insert", "truncate_insert"):
            rows_sql = f"INSERT INTO {table} ({cols}) VALUES %s"
            bulk = {"copy": f"COPY {raw_table} ({raw_cols}) FROM STDIN WITH (FORMAT csv)"}
        else:
            if opts.mode == "upsert":
                action = self._conflict_action(names, opts.key, "EXCLUDED")
            else:
                action = self._conflict_action(names, opts.key, "EXCLUDED", table_columns)
            rows_sql = f"INSERT INTO {table} ({cols}) VALUES %s {action}"
            bulk = {
                "stage": f"CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {cols} FROM {table} WITH NO DATA",
                "copy": f"COPY {self.quote_identifier('__beam_etl_stage__')} ({raw_cols}) FROM STDIN WITH (FORMAT csv)",
                "merge": f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} {action}",
            }
        return WritePlan(tuple(names), tuple(targets), rows_sql, bulk)

    # -- writing -------------------------------------------------------------------------

    def begin(self, conn: Any) -> Any:
        cursor = conn.cursor()
        try:
            cursor.execute("SELECT txid_current()", ())
            return cursor.fetchone()[0]
        finally:
            cursor.close()

    def committed(self, conn: Any, token: Any) -> bool:
        cursor = conn.cursor()
        try:
            cursor.execute("SELECT txid_status(%s)", (token,))
            return cursor.fetchone()[0] == "committed"
        finally:
            cursor.close()

    def invalid_rows(self, batch: pa.RecordBatch) -> dict[int, str]:
        return values.nul_rows(batch)

    def batch_params(self, batch: pa.RecordBatch, targets: Sequence[str] = ()) -> list[tuple[Any, ...]]:
        return values.batch_params(batch, targets or [""] * batch.num_columns)

    def execute_rows(self, cursor: Any, sql: str, rows: Sequence[tuple]) -> None:
        psycopg2.extras.execute_values(cursor, sql, rows, page_size=1000)

    def bulk_write(self, conn: Any, plan: WritePlan, batch: pa.RecordBatch) -> bool:
        cursor = conn.cursor()
        try:
            if "stage" in plan.bulk:
                cursor.execute(plan.bulk["stage"], ())
            with values.CsvStream(batch, plan.targets) as data:
                cursor.copy_expert(plan.bulk["copy"], data, size=1 << 18)
            if "merge" in plan.bulk:
                cursor.execute(plan.bulk["merge"], ())
        finally:
            cursor.close()
        return True


DIALECTS["postgres"] = PostgresDialect()
