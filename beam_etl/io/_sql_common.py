"""What the SQL connectors share: the ``Dialect`` base, option checks and error kinds.

``sql.py`` (SQLite) and the server connectors (``_sql_postgres.py``, ``_sql_mysql.py``) speak
to their databases only through a ``Dialect``; everything here is free of any driver.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from beam_etl.batch import json_safe

WRITE_MODES = ("insert", "upsert", "replace", "truncate_insert")
_PARAMSTYLES = ("qmark", "format", "numeric")


class Dialect(abc.ABC):
    """What differs between SQL databases. One instance per database kind, stateless.

    Subclasses set ``name``, ``paramstyle`` (PEP 249: qmark ``?``, format ``%s`` or
    numeric ``:1``), the driver's exception classes, and implement ``connect``,
    ``upsert_sql``, ``replace_sql`` and the type mappings.
    """

    name = "sql"
    paramstyle = "qmark"
    identifier_quote = '"'
    #: driver exceptions raised for rows that break a constraint (unique, not null, check).
    constraint_errors: tuple[type[BaseException], ...] = ()
    #: driver exceptions raised for rows whose values cannot be bound or stored.
    data_errors: tuple[type[BaseException], ...] = (OverflowError,)

    @abc.abstractmethod
    def connect(self, database: str, *, read_only: bool = False, timeout_s: float = 5.0, **params: Any) -> Any:
        """Opens a DB-API connection in autocommit mode (transactions are explicit)."""

    @abc.abstractmethod
    def sql_type(self, arrow_type: pa.DataType) -> str:
        """The column type ``CREATE TABLE`` / ``ADD COLUMN`` use for an Arrow type."""

    @abc.abstractmethod
    def arrow_type(self, declared: str) -> pa.DataType | None:
        """The Arrow type for a declared column type; None when the type says nothing."""

    @abc.abstractmethod
    def upsert_sql(self, table: str, columns: Sequence[str], key: Sequence[str]) -> str:
        """Insert, or update the non-key columns of the row with the same ``key``."""

    @abc.abstractmethod
    def replace_sql(self, table: str, columns: Sequence[str]) -> str:
        """Insert, replacing whole rows that collide on any unique key."""

    @abc.abstractmethod
    def table_columns(self, conn: Any, table: str) -> dict[str, tuple[str, str]] | None:
        """``{lower name: (name, declared type)}`` of a table, or None when it does not exist."""

    @abc.abstractmethod
    def is_transient(self, exc: BaseException) -> bool:
        """True for errors worth retrying (locks, busy server, dropped connection)."""

    def quote_identifier(self, name: str) -> str:
        """Quotes a table or column name; embedded quote characters are doubled."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"an SQL identifier must be a non-empty string, not {name!r}")
        if "\x00" in name:
            raise ValueError(f"an SQL identifier cannot contain a NUL character: {name!r}")
        q = self.identifier_quote
        return q + name.replace(q, q + q) + q

    def placeholders(self, count: int) -> str:
        """``?, ?, ?`` (or ``%s`` / ``:1`` by paramstyle) for ``count`` positional parameters."""
        if self.paramstyle == "qmark":
            marks = ["?"] * count
        elif self.paramstyle == "format":
            marks = ["%s"] * count
        elif self.paramstyle == "numeric":
            marks = [f":{i + 1}" for i in range(count)]
        else:
            raise ValueError(f"paramstyle {self.paramstyle!r} is not one of {_PARAMSTYLES}")
        return ", ".join(marks)

    def column_list(self, columns: Sequence[str]) -> str:
        return ", ".join(self.quote_identifier(c) for c in columns)

    def insert_sql(self, table: str, columns: Sequence[str]) -> str:
        return (
            f"INSERT INTO {self.quote_identifier(table)} ({self.column_list(columns)}) "
            f"VALUES ({self.placeholders(len(columns))})"
        )

    def delete_all_sql(self, table: str) -> str:
        return f"DELETE FROM {self.quote_identifier(table)}"

    def begin_write_sql(self) -> str:
        return "BEGIN"

    def create_table_sql(self, table: str, schema: pa.Schema, key: Sequence[str] = ()) -> str:
        keys = {k.lower() for k in key}
        cols = []
        for field in schema:
            not_null = " NOT NULL" if field.name.lower() in keys else ""
            cols.append(f"{self.quote_identifier(field.name)} {self.sql_type(field.type)}{not_null}")
        if key:
            cols.append(f"PRIMARY KEY ({self.column_list(key)})")
        return f"CREATE TABLE IF NOT EXISTS {self.quote_identifier(table)} ({', '.join(cols)})"

    def add_column_sql(self, table: str, name: str, arrow_type: pa.DataType) -> str:
        return (
            f"ALTER TABLE {self.quote_identifier(table)} "
            f"ADD COLUMN {self.quote_identifier(name)} {self.sql_type(arrow_type)}"
        )

    def classify_row_error(self, exc: BaseException) -> str | None:
        """``constraint`` or ``type`` for errors a single row can cause; None otherwise."""
        if self.constraint_errors and isinstance(exc, self.constraint_errors):
            return "constraint"
        if self.data_errors and isinstance(exc, self.data_errors):
            return "type"
        return None

    # Arrow -> Python parameters ----------------------------------------------------------

    def column_params(self, arr: pa.Array) -> list[Any]:
        """Python values to bind for one Arrow column (vectorised casts where Arrow can).

        Timestamps become ISO text (UTC with ``Z`` when zoned), dates ISO, decimals text,
        lists/structs/maps JSON text, booleans 0/1, durations integers in their unit.
        """
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        t = arr.type
        if pa.types.is_dictionary(t):
            arr = arr.dictionary_decode()
            t = arr.type
        if pa.types.is_null(t):
            return [None] * len(arr)
        if pa.types.is_boolean(t):
            return arr.cast(pa.int8()).to_pylist()
        if pa.types.is_timestamp(t):
            if t.tz is not None:
                arr = arr.cast(pa.timestamp(t.unit, "UTC"))
            return arr.cast(pa.string()).to_pylist()
        if pa.types.is_date(t) or pa.types.is_time(t) or pa.types.is_decimal(t):
            return arr.cast(pa.string()).to_pylist()
        if pa.types.is_float16(t):
            return arr.cast(pa.float64()).to_pylist()
        if pa.types.is_duration(t):
            return arr.cast(pa.int64()).to_pylist()
        if pa.types.is_nested(t):
            return [None if v is None else json.dumps(json_safe(v), ensure_ascii=False) for v in arr.to_pylist()]
        if pa.types.is_fixed_size_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
            return arr.cast(pa.binary()).to_pylist()
        return arr.to_pylist()

    def batch_params(self, batch: pa.RecordBatch) -> list[tuple[Any, ...]]:
        """The rows of ``batch`` as parameter tuples for ``executemany``."""
        columns = [self.column_params(col) for col in batch.columns]
        return list(zip(*columns, strict=True)) if columns else [()] * batch.num_rows


DIALECTS: dict[str, Dialect] = {}


def get_dialect(name: str) -> Dialect:
    """Returns the registered dialect called ``name``."""
    if name not in DIALECTS:
        raise ValueError(f"dialect {name!r} is not one of {sorted(DIALECTS)}")
    return DIALECTS[name]


# --------------------------------------------------------------------------------------
# Validation shared by the PTransforms and their config models
# --------------------------------------------------------------------------------------


def _check_identifier(field: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field}: expected a non-empty name, got {value!r}")
    if "\x00" in value:
        raise ValueError(f"{field}: a name cannot contain a NUL character (got {value!r})")


def _check_name_list(field: str, value: Any, allow_none: bool = True, case_sensitive: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{field}: expected a non-empty list of column names, got {value!r}")
    for item in value:
        _check_identifier(field, item)
    if case_sensitive:
        dupes = sorted({v for v in value if list(value).count(v) > 1})
    else:
        lowered = [v.lower() for v in value]
        dupes = sorted({v for v in value if lowered.count(v.lower()) > 1})
    if dupes:
        how = "" if case_sensitive else " (names are compared case-insensitively)"
        raise ValueError(f"{field}: names repeat{how}: {dupes}")


def _check_positive_int(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field}: expected a whole number >= 1, got {value!r}")


# --------------------------------------------------------------------------------------
# Error kinds
# --------------------------------------------------------------------------------------


class _StructuralError(RuntimeError):
    """A problem with the table or statement, not with any row: the run stops."""


class _BatchRejected(Exception):
    """A batch that cannot be written as a whole (e.g. a column missing from the table)."""


def sql_sink_streams(config: Any) -> bool:
    """SQL sinks run on unbounded input, except truncate_insert (it empties the table once, first)."""
    return getattr(config, "mode", "insert") != "truncate_insert"


def sql_sink_idempotent(config: Any) -> bool:
    """Writing the same rows twice changes nothing: upsert or replace on a key."""
    return getattr(config, "mode", "insert") in ("upsert", "replace") and bool(getattr(config, "key", None))
