"""Template config models shared by the PostgreSQL and MySQL connectors.

Passwords are expected from ``${ENV}`` (``password: ${PGPASSWORD}``); whatever the source,
the value is registered as a secret before any other check runs, so no validation error,
log line or summary can show it.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, field_validator

from beam_etl import registry
from beam_etl.batch import DEFAULT_BATCH_ROWS
from beam_etl.io._sql_server_write import SCHEMA_EVOLUTION
from beam_etl.ops.secrets import register_secret
from beam_etl.ops.state import IncrementalConfig


class ConnectionFields(registry.StrictConfig):
    model_config = ConfigDict(populate_by_name=True)

    host: str = Field(description="Server host name or address.")
    database: str = Field(description="Database to connect to.")
    user: str = Field(description="User name (e.g. ${DB_USER}).")
    password: str | None = Field(default=None, repr=False,
                                 description="Password; give it as ${ENV} or from a secret file. Never shown.")
    connect_timeout_s: float = Field(default=10.0, description="Seconds to wait for a connection.")

    @field_validator("password", mode="before")
    @classmethod
    def _secret(cls, value: Any) -> Any:
        if isinstance(value, str):
            register_secret(value)
        return value


class ReadFields(registry.StrictConfig):
    schema_: str | None = Field(default=None, alias="schema",
                                description="Schema (PostgreSQL) or database (MySQL) of the table.")
    table: str | None = Field(default=None, description="Table or view to read; set this or query.")
    query: str | None = Field(default=None, description="SELECT statement to read; set this or table.")
    columns: list[str] | None = Field(default=None, description="Columns to read (default: all).")
    partition: dict[str, Any] | None = Field(
        default=None, description="Parallel read: {column, num_partitions (or auto), lower, upper, strategy: "
                                  "auto|range|hash, rows_per_partition, max_partitions}.")
    batch_rows: int = Field(default=DEFAULT_BATCH_ROWS, description="Rows per fetch and per RecordBatch.")
    max_retries: int = Field(default=3, description="Retries of a connect or query that fails transiently.")
    incremental: IncrementalConfig | None = Field(
        default=None, description="{cursor_field, primary_key, initial}: read rows with cursor_field >= the value "
                                  "saved by the last successful run (docs/incremental.md).")


class WriteFields(registry.StrictConfig):
    schema_: str | None = Field(default=None, alias="schema",
                                description="Schema (PostgreSQL) or database (MySQL) of the table.")
    table: str = Field(description="Table to write.")
    mode: str = Field(default="insert", description="insert, upsert, replace or truncate_insert.")
    key: list[str] | None = Field(default=None, description="Key columns: the conflict target of upsert (and "
                                                            "replace on PostgreSQL), the PRIMARY KEY of a new table.")
    create_table: bool = Field(default=False, description="Create the table from the Arrow schema when missing.")
    schema_evolution: str = Field(default="fail",
                                  description=f"New columns in the data: {', '.join(SCHEMA_EVOLUTION)}.")
    max_retries: int = Field(default=5, description="Retries (exponential backoff) of a batch on transient errors; "
                                                    "then its rows go to the DLQ as transient_exhausted.")


def transform_kwargs(config: registry.StrictConfig) -> dict[str, Any]:
    """Keyword arguments of the PTransform for a validated config (``schema`` by its alias)."""
    return config.model_dump(by_alias=True)
