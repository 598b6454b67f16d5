"""``ReadFromPostgres`` and ``WriteToPostgres`` (psycopg2), and their template registrations.

Reads are planned once and split into partitions (key ranges or hash buckets) that are
read in parallel on named (server-side) cursors. Writes load each batch in one transaction
with ``COPY ... FROM STDIN (FORMAT csv)`` (upsert and replace: COPY into a temporary stage,
then ``INSERT ... SELECT ... ON CONFLICT``) and fall back to parameterised multi-row INSERTs,
split in halves, to isolate the rows the server refuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from pydantic import Field, model_validator

from beam_etl import registry
from beam_etl.batch import DEFAULT_BATCH_ROWS
from beam_etl.io._sql_common import get_dialect, sql_sink_idempotent, sql_sink_streams
from beam_etl.io._sql_conn import PG_SSLMODES, ServerConnection, validate_connection
from beam_etl.io._sql_pg_dialect import PostgresDialect
from beam_etl.io._sql_server_config import ConnectionFields, ReadFields, WriteFields, transform_kwargs
from beam_etl.io._sql_server_read import ServerRead, ServerReadOptions, validate_read
from beam_etl.io._sql_server_write import ServerWrite, ServerWriteOptions, validate_write

DIALECT: PostgresDialect = get_dialect("postgres")  # type: ignore[assignment]


def _connection(host: Any, port: Any, database: Any, user: Any, password: Any, sslmode: Any, sslrootcert: Any,
                sslcert: Any, sslkey: Any, connect_timeout_s: Any) -> ServerConnection:
    validate_connection(host=host, port=port, database=database, user=user, password=password,
                        connect_timeout_s=connect_timeout_s, ssl_mode=sslmode, ssl_modes=PG_SSLMODES,
                        ssl_field="sslmode", ssl_files={"sslrootcert": sslrootcert, "sslcert": sslcert,
                                                        "sslkey": sslkey})
    return ServerConnection(host=host, port=port, database=database, user=user, password=password, ssl_mode=sslmode,
                            ssl_ca=sslrootcert, ssl_cert=sslcert, ssl_key=sslkey,
                            connect_timeout_s=float(connect_timeout_s))


class ReadFromPostgres(ServerRead):
    """Reads a PostgreSQL table or query as RecordBatches; returns ``(batches, dead_letters)``.

    ``p | ReadFromPostgres(host=..., database=..., user=..., password=..., table="orders",
    partition={"column": "id", "num_partitions": 4})``

    Types map to Arrow faithfully (see docs/connectors-sql.md); a value Arrow cannot hold
    (``infinity``, a BC date, ``NaN`` in a ``numeric(p,s)``) sends its row to the DLQ as a
    ``type`` error with source ``table:key=value``.
    """

    dialect = DIALECT

    def __init__(
        self,
        *,
        host: str,
        database: str,
        user: str,
        password: str | None = None,
        port: int = 5432,
        table: str | None = None,
        query: str | None = None,
        schema: str | None = None,
        columns: Sequence[str] | None = None,
        partition: dict[str, Any] | None = None,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        sslmode: str | None = "prefer",
        sslrootcert: str | None = None,
        sslcert: str | None = None,
        sslkey: str | None = None,
        connect_timeout_s: float = 10.0,
        max_retries: int = 3,
        incremental: Any = None,
        step_name: str | None = None,
        label: str | None = None,
    ) -> None:
        connection = _connection(host, port, database, user, password, sslmode, sslrootcert, sslcert, sslkey,
                                 connect_timeout_s)
        spec = validate_read(DIALECT, schema=schema, table=table, query=query, columns=columns, partition=partition,
                             batch_rows=batch_rows, max_retries=max_retries)
        opts = ServerReadOptions(connection, schema, table, query, tuple(columns) if columns else None, spec,
                                 batch_rows, max_retries)
        super().__init__(opts, step_name=step_name, label=label, incremental=incremental)


class WriteToPostgres(ServerWrite):
    """Writes RecordBatches to a PostgreSQL table; returns ``(written, dead_letters)``.

    Modes: ``insert`` (COPY), ``upsert`` (``ON CONFLICT (key) DO UPDATE``), ``replace`` (whole
    rows: columns the batch lacks are reset to their defaults; needs ``key``) and
    ``truncate_insert`` (``TRUNCATE`` once, before any batch).
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
        port: int = 5432,
        schema: str | None = None,
        mode: str = "insert",
        key: Sequence[str] | None = None,
        create_table: bool = False,
        schema_evolution: str = "fail",
        sslmode: str | None = "prefer",
        sslrootcert: str | None = None,
        sslcert: str | None = None,
        sslkey: str | None = None,
        connect_timeout_s: float = 10.0,
        max_retries: int = 5,
        step_name: str | None = None,
        label: str | None = None,
    ) -> None:
        connection = _connection(host, port, database, user, password, sslmode, sslrootcert, sslcert, sslkey,
                                 connect_timeout_s)
        validate_write(DIALECT, schema=schema, table=table, mode=mode, key=key, schema_evolution=schema_evolution,
                       max_retries=max_retries)
        if mode == "replace" and not key:
            raise ValueError("key: mode 'replace' needs key: [columns] on PostgreSQL (the ON CONFLICT target "
                             "whose rows are replaced)")
        opts = ServerWriteOptions(connection, schema, table, mode, tuple(key or ()), bool(create_table),
                                  schema_evolution, max_retries)
        super().__init__(opts, step_name=step_name, label=label)


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


class _PostgresConnectionFields(ConnectionFields):
    port: int = Field(default=5432, description="Server port.")
    sslmode: str | None = Field(default="prefer", description=f"TLS: one of {', '.join(PG_SSLMODES)}.")
    sslrootcert: str | None = Field(default=None, description="CA certificate (PEM) for verify-ca / verify-full.")
    sslcert: str | None = Field(default=None, description="Client certificate (PEM).")
    sslkey: str | None = Field(default=None, description="Client key (PEM).")


class ReadFromPostgresConfig(_PostgresConnectionFields, ReadFields):
    """Reads a PostgreSQL table or query as Arrow batches (parallel partitions, server-side cursors)."""

    @model_validator(mode="after")
    def _validate(self) -> ReadFromPostgresConfig:
        ReadFromPostgres(**transform_kwargs(self))
        return self


class WriteToPostgresConfig(_PostgresConnectionFields, WriteFields):
    """Writes Arrow batches to a PostgreSQL table (COPY; insert, upsert, replace or truncate_insert)."""

    @model_validator(mode="after")
    def _validate(self) -> WriteToPostgresConfig:
        WriteToPostgres(**transform_kwargs(self))
        return self


@registry.register("source", "ReadFromPostgres", ReadFromPostgresConfig, streaming=True)
def read_from_postgres(config: ReadFromPostgresConfig, ctx: registry.BuildContext) -> beam.PTransform:
    """Reads a PostgreSQL table or query as Arrow batches (parallel partitions, server-side cursors)."""
    return ReadFromPostgres(**transform_kwargs(config), step_name=ctx.step_name)


@registry.register("sink", "WriteToPostgres", WriteToPostgresConfig, streaming=sql_sink_streams,
                   idempotent=sql_sink_idempotent)
def write_to_postgres(config: WriteToPostgresConfig, ctx: registry.BuildContext) -> beam.PTransform:
    """Writes Arrow batches to a PostgreSQL table (COPY; insert, upsert, replace or truncate_insert)."""
    return WriteToPostgres(**transform_kwargs(config), step_name=ctx.step_name)
