"""Connection settings of the server SQL connectors (PostgreSQL, MySQL/MariaDB).

``ServerConnection`` is what a DoFn needs to open its own connection on a worker. The
password is kept out of ``repr`` and display data, and registered with
``beam_etl.ops.secrets`` wherever the settings are built or unpickled, so ``redact`` hides it
in every message this process prints, workers included.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from beam_etl.ops.secrets import REDACTED, redact, register_secret

PG_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
MYSQL_SSL_MODES = ("DISABLED", "PREFERRED", "REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY")


@dataclasses.dataclass(frozen=True)
class ServerConnection:
    """Where and how to connect; ``ssl`` holds the TLS options of the dialect (mode, CA, ...)."""

    host: str
    port: int
    database: str
    user: str
    password: str | None = dataclasses.field(default=None, repr=False)
    ssl_mode: str | None = None
    ssl_ca: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None
    connect_timeout_s: float = 10.0
    application_name: str = "beam_etl"

    def __post_init__(self) -> None:
        register_secret(self.password or "")

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickled on a worker: that process's redact() must know the password too.
        for key, value in state.items():
            object.__setattr__(self, key, value)
        register_secret(self.password or "")

    def describe(self, scheme: str) -> str:
        """``scheme://user@host:port/database`` (never the password)."""
        return redact(f"{scheme}://{self.user}@{self.host}:{self.port}/{self.database}")

    def connect_timeout_whole_s(self) -> int:
        """The timeout in whole seconds (libpq and PyMySQL take integers); at least 1."""
        return max(1, math.ceil(self.connect_timeout_s))

    def display(self, scheme: str) -> dict[str, Any]:
        """Display data: the address, user and TLS mode; the password only as ``***``."""
        data: dict[str, Any] = {"connection": self.describe(scheme), "password": REDACTED if self.password else ""}
        if self.ssl_mode:
            data["ssl_mode"] = self.ssl_mode
        return data


def validate_connection(
    *, host: Any, port: Any, database: Any, user: Any, password: Any, connect_timeout_s: Any,
    ssl_mode: Any, ssl_modes: tuple[str, ...], ssl_field: str, ssl_files: dict[str, Any],
) -> None:
    """Raises ValueError naming the field, the value and what is allowed (never the password)."""
    if isinstance(password, str):
        register_secret(password)
    if not isinstance(host, str) or not host.strip():
        raise ValueError(f"host: expected a host name or address, got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port: expected a TCP port 1-65535, got {port!r}")
    if not isinstance(database, str) or not database.strip():
        raise ValueError(f"database: expected a database name, got {database!r}")
    if not isinstance(user, str) or not user.strip():
        raise ValueError(f"user: expected a user name, got {user!r}")
    if password is not None and not isinstance(password, str):
        raise ValueError(f"password: expected text (e.g. password: ${{DB_PASSWORD}}), got a {type(password).__name__}")
    if (isinstance(connect_timeout_s, bool) or not isinstance(connect_timeout_s, (int, float))
            or not 0 < connect_timeout_s <= 3600):
        raise ValueError(f"connect_timeout_s: expected seconds in (0, 3600], got {connect_timeout_s!r}")
    if ssl_mode is not None and ssl_mode not in ssl_modes:
        raise ValueError(f"{ssl_field}: {ssl_mode!r} is not one of {list(ssl_modes)}")
    for field, value in ssl_files.items():
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"{field}: expected the path of a PEM file, got {value!r}")
