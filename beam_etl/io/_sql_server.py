"""The ``ServerDialect`` base of the client-server databases, and fetched rows -> Arrow.

A server dialect (PostgreSQL, MySQL/MariaDB) adds to ``Dialect`` what the shared reader
(``_sql_server_read``) and writer (``_sql_server_write``) need: describing a query's columns,
streaming rows from a server-side cursor, a fast bulk path, transaction tokens and the
driver's transient errors. Statements that take parameters are built with ``ident`` (the
quoted name with ``%`` doubled, since both drivers use the ``format`` paramstyle).
"""

from __future__ import annotations

import abc
import dataclasses
import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from beam_etl.io._sql_common import Dialect
from beam_etl.io._sql_conn import ServerConnection

#: How a reader turns the driver's values of a column into Arrow (see ``column_to_arrow``).
DECODES = (
    "native",      # the driver's Python values -> pa.array(values, type)
    "text",        # the server's text form kept as a string
    "cast",        # the server's text form -> Arrow cast (decimals, dates, timestamps)
    "cast_utc",    # date-time text without an offset that is UTC (MySQL TIMESTAMP) -> zoned timestamp
    "bytes",       # bytes-like -> binary
    "list_text",   # arrays whose elements stay text
    "bool",        # integers (MySQL TINYINT(1)) -> bool, non-zero is true
    "bit",         # big-endian bytes (MySQL BIT) -> unsigned integer, or bool for BIT(1)
    "time",        # 'HH:MM:SS[.ffffff]' text (MySQL TIME) -> time64, outside 00:00..24:00 is an error
)


@dataclasses.dataclass(frozen=True)
class SourceColumn:
    """One column a read yields: its name, Arrow type, declared type and decoding."""

    name: str
    arrow_type: pa.DataType
    declared: str
    decode: str = "native"
    type_code: Any = None  # the driver's type code (PostgreSQL OID) the reader registers casters for


class ServerDialect(Dialect):
    """A client-server database reached through a DB-API driver with the ``format`` paramstyle."""

    paramstyle = "format"
    scheme = "sql"
    default_port = 0
    #: whether column names match case-sensitively (PostgreSQL: quoted names are exact).
    case_sensitive = True
    max_identifier_bytes = 63
    #: errors that mean the connection is gone (reconnect before the next attempt).
    disconnect_errors: tuple[type[BaseException], ...] = ()

    # -- names ---------------------------------------------------------------------------

    def ident(self, name: str) -> str:
        """The quoted name for a statement that takes parameters (``%`` doubled)."""
        return self.quote_identifier(name).replace("%", "%%")

    def table_ref(self, table: str, schema: str | None = None, *, params: bool = True) -> str:
        """``schema.table`` (or ``table``) quoted; ``params=False`` for statements without parameters."""
        quote = self.ident if params else self.quote_identifier
        return f"{quote(schema)}.{quote(table)}" if schema else quote(table)

    def name_key(self, name: str) -> str:
        """The form under which two column names are the same column."""
        return name if self.case_sensitive else name.lower()

    def check_identifier(self, field: str, name: str) -> None:
        """Rejects names the server would silently truncate or refuse."""
        if len(name.encode("utf-8")) > self.max_identifier_bytes:
            raise ValueError(f"{field}: {name!r} is longer than {self.name}'s limit of "
                             f"{self.max_identifier_bytes} bytes for a name")

    # -- connections -------------------------------------------------------------------

    @abc.abstractmethod
    def connect(self, database: Any, *, read_only: bool = False, timeout_s: float = 5.0, **params: Any) -> Any:
        """Opens a connection to ``database`` (a ``ServerConnection``); transactions are explicit."""

    def connection_error(self, settings: ServerConnection, err: BaseException) -> str:
        """A one-line description of a failed connect (the caller redacts it)."""
        return f"cannot connect to {settings.describe(self.scheme)}: {str(err).strip()}"

    def is_disconnect(self, exc: BaseException) -> bool:
        """True when the connection is unusable after ``exc``."""
        return bool(self.disconnect_errors) and isinstance(exc, self.disconnect_errors)

    @staticmethod
    def close_quietly(conn: Any) -> None:
        if conn is None:
            return
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - a dead connection may fail to close; it is gone either way
            pass

    def rollback_quietly(self, conn: Any) -> None:
        if conn is None:
            return
        try:
            conn.rollback()
        except Exception:  # noqa: BLE001 - the connection may already be gone
            pass

    # -- reading ---------------------------------------------------------------------------

    @abc.abstractmethod
    def describe(self, conn: Any, select_sql: str) -> list[SourceColumn]:
        """The columns ``select_sql`` yields (it is run with ``LIMIT 0``)."""

    @abc.abstractmethod
    def primary_key(self, conn: Any, table: str, schema: str | None) -> list[str]:
        """The primary key columns of a table, in key order ([] when none)."""

    @abc.abstractmethod
    def estimate_rows(self, conn: Any, select_sql: str) -> int | None:
        """The planner's row estimate for ``select_sql`` (no scan), or None."""

    @abc.abstractmethod
    def hash_bucket_sql(self, column_sql: str, buckets: int) -> str:
        """SQL for a bucket 0..buckets-1 of a column's value; NULL falls in bucket 0."""

    @abc.abstractmethod
    def stream(self, conn: Any, sql: str, params: Sequence[Any], batch_rows: int,
               columns: Sequence[SourceColumn]) -> Iterator[list[tuple]]:
        """Runs ``sql`` on a server-side cursor and yields at most ``batch_rows`` rows at a time."""

    # -- writing -------------------------------------------------------------------------

    def truncate_sql(self, table: str, schema: str | None) -> str:
        return f"TRUNCATE TABLE {self.table_ref(table, schema)}"

    def begin(self, conn: Any) -> Any:
        """Starts a transaction; returns a token ``committed`` can check after a lost COMMIT."""
        return None

    def committed(self, conn: Any, token: Any) -> bool:
        """Whether the transaction of ``token`` committed (asked on a new connection)."""
        return False

    def invalid_rows(self, batch: pa.RecordBatch) -> dict[int, str]:
        """Rows the server would refuse for their values alone, found before sending (row -> reason)."""
        return {}

    @abc.abstractmethod
    def execute_rows(self, cursor: Any, sql: str, rows: Sequence[tuple]) -> None:
        """Runs ``sql`` (a multi-row statement) for ``rows`` with bound parameters."""

    def bulk_write(self, conn: Any, plan: Any, batch: pa.RecordBatch) -> bool:
        """Writes the whole batch the fastest way (PostgreSQL: COPY); False when not supported."""
        return False


# --------------------------------------------------------------------------------------
# Fetched values -> Arrow
# --------------------------------------------------------------------------------------

_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError,
                 ValueError)


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _parse_time(value: Any) -> dt.time:
    if isinstance(value, dt.time):
        return value
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
        if not 0 <= seconds < 86400:
            raise ValueError("outside 00:00:00..23:59:59.999999, so not a time of day")
        return (dt.datetime.min + value).time()
    text = str(value).strip()
    try:
        return dt.time.fromisoformat(text)
    except ValueError:
        raise ValueError("outside 00:00:00..23:59:59.999999, so not a time of day") from None


def _bits(value: Any, as_bool: bool) -> Any:
    number = int.from_bytes(bytes(value), "big") if isinstance(value, (bytes, bytearray, memoryview)) else int(value)
    return bool(number) if as_bool else number


def _prepare(values: Sequence[Any], col: SourceColumn) -> list[Any] | Sequence[Any]:
    """Values in the form ``pa.array`` takes for the column's decoding (per value, Python)."""
    decode = col.decode
    if decode == "bytes":
        return [None if v is None else bytes(v) for v in values]
    if decode == "bool":
        return [None if v is None else bool(int(v)) for v in values]
    if decode == "bit":
        as_bool = pa.types.is_boolean(col.arrow_type)
        return [None if v is None else _bits(v, as_bool) for v in values]
    if decode == "time":
        return [None if v is None else _parse_time(v) for v in values]
    return values


def _convert(values: Sequence[Any], col: SourceColumn) -> pa.Array:
    if col.decode == "cast":
        return pa.array(values, type=pa.string()).cast(col.arrow_type)
    if col.decode == "cast_utc":
        naive = pa.timestamp(col.arrow_type.unit)
        return pa.array(values, type=pa.string()).cast(naive).cast(col.arrow_type)
    return pa.array(_prepare(values, col), type=col.arrow_type)


def _one_text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("bytes that are not UTF-8 text") from None
    return value if isinstance(value, str) else str(value)


def column_to_arrow(values: Sequence[Any], col: SourceColumn) -> tuple[pa.Array, dict[int, str]]:
    """Arrow array for one fetched column, plus ``{row: reason}`` for values that do not fit.

    The whole column is converted at once (Arrow's C++ casts); only when that fails is it
    converted value by value to find the rows that cannot be represented.
    """
    try:
        return _convert(values, col), {}
    except _ARROW_ERRORS:
        pass
    out: list[Any] = []
    bad: dict[int, str] = {}
    text_like = col.decode == "text" or pa.types.is_string(col.arrow_type)
    for i, value in enumerate(values):
        if value is None:
            out.append(None)
            continue
        try:
            if text_like:
                out.append(_one_text(value))
            else:
                out.append(_convert([value], col)[0].as_py())
        except _ARROW_ERRORS as why:
            reason = str(why).splitlines()[0] if str(why) else type(why).__name__
            bad[i] = (f"column {col.name!r} ({col.declared}) value {_short(value)} does not fit "
                      f"{col.arrow_type}: {reason}")
            out.append(None)
    return pa.array(out, type=col.arrow_type), bad
