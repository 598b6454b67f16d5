"""Throttled progress lines for long runs, printed by whichever process does the work."""

from __future__ import annotations

import sys
import threading
import time

_lock = threading.Lock()
_state = {"records": 0, "bytes": 0, "last": 0.0, "start": 0.0}
INTERVAL_S = 5.0
_enabled = True


def set_enabled(enabled: bool) -> None:
    """Turns progress output on or off (``--quiet`` turns it off)."""
    global _enabled
    _enabled = enabled


def report_read(records: int, nbytes: int = 0, where: str = "") -> None:
    """Adds to the records-read tally; prints a line at most every few seconds."""
    now = time.monotonic()
    with _lock:
        if not _state["start"]:
            _state["start"] = now
            _state["last"] = now
        _state["records"] += records
        _state["bytes"] += nbytes
        due = now - _state["last"] >= INTERVAL_S
        if due:
            _state["last"] = now
            total, size, elapsed = _state["records"], _state["bytes"], now - _state["start"]
    if due and _enabled:
        rate = total / elapsed if elapsed else 0.0
        suffix = f" ({size / 1e6:,.0f} MB)" if size else ""
        print(
            f"[beam_etl] progress: {total:,} records read{suffix}, {rate:,.0f} rec/s"
            + (f", now {where}" if where else ""),
            file=sys.stderr,
            flush=True,
        )


def reset() -> None:
    """Clears the tally (called at the start of each run)."""
    with _lock:
        _state.update(records=0, bytes=0, last=0.0, start=0.0)
