"""``ReadFromMySql`` and ``WriteToMySql`` (PyMySQL; MySQL and MariaDB), and their registrations.

Reads are planned once and split into partitions (key ranges or ``CRC32`` hash buckets)
that are read in parallel on unbuffered ``SSCursor``s. Writes run one transaction per batch
with multi-row INSERTs (``executemany``), split in halves to isolate the rows the server
refuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from pydantic import Field, model_validator

from beam_etl import registry
from beam_etl.batch import DEFAULT_BATCH_ROWS
from beam_etl.io._sql_common import get_dialect, sql_sink_idempotent, sql_sink_streams
from beam_etl.io._sql_conn import MYSQL_SSL_MODES, ServerConnection, validate_connection
from beam_etl.io._sql_mysql_dialect import MySqlDialect
from beam_etl.io._sql_server_config import ConnectionFields, ReadFields, WriteFields, transform_kwargs
from beam_etl.io._sql_server_read import ServerRead, ServerReadOptions, validate_read
from beam_etl.io._sql_server_write import ServerWrite, ServerWriteOptions, validate_write

DIALECT: MySqlDialect = get_dialect("mysql")  # type: ignore[assignment]


def _connection(host: Any, port: Any, database: Any, user: Any, password: Any, ssl_mode: Any, ssl_ca: Any,
                ssl_cert: Any, ssl_key: Any, connect_timeout_s: Any) -> ServerConnection:
    validate_connection(host=host, port=port, database=database, user=user, password=password,
                        connect_timeout_s=connect_timeout_s, ssl_mode=ssl_mode, ssl_modes=MYSQL_SSL_MODES,
                        ssl_field="ssl_mode", ssl_files={"ssl_ca": ssl_ca, "ssl_cert": ssl_cert,
                                                        "ssl_key": ssl_key})
    return ServerConnection(host=host, port=port, database=database, user=user, password=password, ssl_mode=ssl_mode,
                            ssl_ca=ssl_ca, ssl_cert=ssl_cert, ssl_key=ssl_key,
                            connect_timeout_s=float(connect_timeout_s))


class ReadFromMySql(ServerRead):
    """Reads a MySQL/MariaDB table or query as RecordBatches; returns ``(batches, dead_letters)``.

    ``p | ReadFromMySql(host=..., database=..., user=..., password=..., table="orders",
    partition={"column": "id", "num_partitions": 4})``

    Types map to Arrow faithfully (TINYINT(1) -> bool, BIGINT UNSIGNED -> uint64, BIT -> uint64,
    YEAR -> int16, DATETIME -> timestamp, TIMESTAMP -> timestamp UTC; see docs/connectors-sql.md).
    A value Arrow cannot hold (a zero date, a TIME outside 00:00-24:00) sends its row to the DLQ
    as a ``type`` error with source ``table:key=value``.
    """

    dialect = DIALECT

    def __init__(
        self,
        *,
        host: str,
        database: str,
        user: str,
        password: str | None = None,
        port: int = 3306,
        table: str | None = None,
        query: str | None = None,
        schema: str | None = None,
        columns: Sequence[str] | None = None,
        partition: dict[str, Any] | None = None,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        ssl_mode: str | None = "PREFERRED",
        ssl_ca: str | None = None,
        ssl_cert: str | None = None,
        ssl_key: str | None = None,
        connect_timeout_s: float = 10.0,
        max_retries: int = 3,
        incremental: Any = None,
        step_name: str | None = None,
        label: str | None = None,
    ) -> None:
        connection = _connection(host, port, database, user, password, ssl_mode, ssl_ca, ssl_cert, ssl_key,
                                 connect_timeout_s)
        spec = validate_read(DIALECT, schema=schema, table=table, query=query, columns=columns, partition=partition,
                             batch_rows=batch_rows, max_retries=max_retries)
        opts = ServerReadOptions(connection, schema, table, query, tuple(columns) if columns else None, spec,
                                 batch_rows, max_retries)
        super().__init__(opts, step_name=step_name, label=label, incremental=incremental)


class WriteToMySql(ServerWrite):
    """Writes RecordBatches to a MySQL/MariaDB table; returns ``(written, dead_letters)``.

    Modes: ``insert`` (multi-row INSERT), ``upsert`` (``ON DUPLICATE KEY UPDATE``: matches any
    PRIMARY/UNIQUE key; ``key`` names the key of a table that create_table makes), ``replace``
    (``REPLACE INTO``) and ``truncate_insert`` (``TRUNCATE`` once, before any batch).
    """

    dialect = DIALECT

    def __init__(
        self,
        *,
        host: str,
        database: str,
        user: str,
        table: str,
        password: str | None = None,
        port: int = 3306,
        schema: str | None = None,
        mode: str = "insert",
        key: Sequence[str] | None = None,
        create_table: bool = False,
        schema_evolution: str = "fail",
        ssl_mode: str | None = "PREFERRED",
        ssl_ca: str | None = None,
        ssl_cert: str | None = None,
        ssl_key: str | None = None,
        connect_timeout_s: float = 10.0,
        max_retries: int = 5,
        step_name: str | None = None,
        label: str | None = None,
    ) -> None:
        connection = _connection(host, port, database, user, password, ssl_mode, ssl_ca, ssl_cert, ssl_key,
                                 connect_timeout_s)
        validate_write(DIALECT, schema=schema, table=table, mode=mode, key=key, schema_evolution=schema_evolution,
                       max_retries=max_retries)
        opts = ServerWriteOptions(connection, schema, table, mode, tuple(key or ()), bool(create_table),
                                  schema_evolution, max_retries)
        super().__init__(opts, step_name=step_name, label=label)


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


class _MySqlConnectionFields(ConnectionFields):
    port: int = Field(default=3306, description="Server port.")
    ssl_mode: str | None = Field(default="PREFERRED", description=f"TLS: one of {', '.join(MYSQL_SSL_MODES)}.")
    ssl_ca: str | None = Field(default=None, description="CA certificate (PEM) for VERIFY_CA / VERIFY_IDENTITY.")
    ssl_cert: str | None = Field(default=None, description="Client certificate (PEM).")
    ssl_key: str | None = Field(default=None, description="Client key (PEM).")


class ReadFromMySqlConfig(_MySqlConnectionFields, ReadFields):
    """Reads a MySQL/MariaDB table or query as Arrow batches (parallel partitions, unbuffered cursors)."""

    @model_validator(mode="after")
    def _validate(self) -> ReadFromMySqlConfig:
        ReadFromMySql(**transform_kwargs(self))
        return self


class WriteToMySqlConfig(_MySqlConnectionFields, WriteFields):
    """Writes Arrow batches to a MySQL/MariaDB table (insert, upsert, replace or truncate_insert)."""

    @model_validator(mode="after")
    def _validate(self) -> WriteToMySqlConfig:
        WriteToMySql(**transform_kwargs(self))
        return self


@registry.register("source", "ReadFromMySql", ReadFromMySqlConfig, streaming=True)
def read_from_mysql(config: ReadFromMySqlConfig, ctx: registry.BuildContext) -> beam.PTransform:
    """Reads a MySQL/MariaDB table or query as Arrow batches (parallel partitions, unbuffered cursors)."""
    return ReadFromMySql(**transform_kwargs(config), step_name=ctx.step_name)


@registry.register("sink", "WriteToMySql", WriteToMySqlConfig, streaming=sql_sink_streams,
                   idempotent=sql_sink_idempotent)
def write_to_mysql(config: WriteToMySqlConfig, ctx: registry.BuildContext) -> beam.PTransform:
    """Writes Arrow batches to a MySQL/MariaDB table (insert, upsert, replace or truncate_insert)."""
    return WriteToMySql(**transform_kwargs(config), step_name=ctx.step_name)
