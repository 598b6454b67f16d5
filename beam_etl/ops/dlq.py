"""The dead-letter envelope shared by every step and connector.

A dead letter is a plain dict with the keys of DESIGN.md::

    record, error_type, error, exception, step, source, attempt, pipeline, run_id, failed_at

Steps emit them on the tagged output ``DLQ_TAG``; ``build.py`` flattens all of them into
the run's DLQ sink.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from beam_etl.batch import json_safe
from beam_etl.ops.context import RunContext, get_run_context

DLQ_TAG = "dlq"
ERROR_TYPES = ("parse", "validation", "type", "constraint", "contract", "transient_exhausted", "internal")
ENVELOPE_KEYS = (
    "record", "error_type", "error", "exception", "step", "source",
    "attempt", "pipeline", "run_id", "failed_at",
)


def dead_letter(
    record: Any,
    *,
    error_type: str,
    error: str,
    step: str,
    source: str | None = None,
    exception: str | BaseException | None = None,
    attempt: int = 1,
    ctx: RunContext | None = None,
) -> dict[str, Any]:
    """Builds one DLQ envelope; ``record`` is the original row or raw text."""
    if error_type not in ERROR_TYPES:
        raise ValueError(f"error_type {error_type!r} is not one of {ERROR_TYPES}")
    if isinstance(exception, BaseException):
        exception = type(exception).__name__
    ctx = ctx or get_run_context()
    return {
        "record": json_safe(record),
        "error_type": error_type,
        "error": str(error),
        "exception": exception or "",
        "step": step,
        "source": source or "",
        "attempt": attempt,
        "pipeline": ctx.pipeline,
        "run_id": ctx.run_id,
        "failed_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
    }


def is_dead_letter(value: Any) -> bool:
    """True when ``value`` looks like a DLQ envelope."""
    return isinstance(value, dict) and all(k in value for k in ENVELOPE_KEYS)


def dead_letters_to_batch(letters: list[dict[str, Any]]) -> Any:
    """Turns envelopes into a RecordBatch; ``record`` becomes JSON text (see ``json_fields``)."""
    import json

    import pyarrow as pa

    rows = [
        {**letter, "record": json.dumps(letter.get("record"), default=str, ensure_ascii=False)}
        for letter in letters
    ]
    return pa.RecordBatch.from_pylist(rows, schema=DLQ_SCHEMA)


def _dlq_schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("record", pa.string()), ("error_type", pa.string()), ("error", pa.string()),
        ("exception", pa.string()), ("step", pa.string()), ("source", pa.string()),
        ("attempt", pa.int64()), ("pipeline", pa.string()), ("run_id", pa.string()),
        ("failed_at", pa.string()),
    ])


DLQ_SCHEMA = _dlq_schema()
