"""The run context: pipeline name, run id and output folder, captured by transforms."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import secrets
from collections.abc import Iterator


def new_run_id() -> str:
    """Returns a sortable, unique run id such as ``20261127T101500Z-3fa2c1``."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"


@dataclasses.dataclass(frozen=True)
class RunContext:
    """Identifies one run; copied into every DoFn so dead letters can name it."""

    pipeline: str = "adhoc"
    run_id: str = dataclasses.field(default_factory=new_run_id)
    run_dir: str = ""
    state_url: str = ""  # incremental-load state store (beam_etl.ops.state); "" = none
    full_refresh: bool = False  # sources ignore their saved cursors
    log_format: str = "text"  # --log-format, for SDK workers outside the launcher process
    tenant: str | None = None  # --tenant, named on worker log lines


_ACTIVE: list[RunContext] = []


def get_run_context() -> RunContext:
    """Returns the context of the pipeline being built (a default one outside a run)."""
    if not _ACTIVE:
        _ACTIVE.append(RunContext())
    return _ACTIVE[-1]


@contextlib.contextmanager
def use_run_context(ctx: RunContext) -> Iterator[RunContext]:
    """Makes ``ctx`` the context transforms capture while a pipeline is built."""
    _ACTIVE.append(ctx)
    try:
        yield ctx
    finally:
        _ACTIVE.remove(ctx)
