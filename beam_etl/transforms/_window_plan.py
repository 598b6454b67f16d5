"""What every WindowAggregate stage shares: the validated plan, row preparation, output columns.

``Plan`` is the picklable, validated form of a WindowAggregate's settings (all times in
microseconds). The helpers turn rows into dead letters (bad event times, values a numeric
aggregate cannot use, late records) and results into output batches with ``window_start``,
``window_end`` and the pane column.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from beam_etl.batch import row_as_record, table_to_batches
from beam_etl.ops.context import RunContext
from beam_etl.ops.dlq import dead_letter
from beam_etl.transforms._agg_partials import Aggregation, coerce_numeric, numeric_fields
from beam_etl.transforms._window_time import EventTimes, event_times, format_duration, iso, timestamp_array
from beam_etl.transforms.base import batch_attempt, batch_source

EVENT_COL = "__beam_etl_event_us"  # event time (int64 µs) riding along with rows into the stateful stage
WINDOW_START = "window_start"
WINDOW_END = "window_end"
EARLY, ON_TIME, LATE = "EARLY", "ON_TIME", "LATE"
LATE_EXCEPTION = "LateRecord"  # the ``exception`` of a late record's dead letter
EVERY = "every"  # late_firings: one LATE pane per late bundle of records
NEVER = "never"  # late_firings: late records wait for one final LATE pane when the window closes


@dataclasses.dataclass(frozen=True)
class Plan:
    """Validated settings of one WindowAggregate (times in microseconds)."""

    step: str
    event_time: str
    time_format: str
    kind: str  # fixed | sliding | session
    size: int  # fixed/sliding window length; 0 for sessions
    period: int  # sliding period (== size for fixed); 0 for sessions
    gap: int  # session gap; 0 otherwise
    keys: tuple[str, ...]
    aggs: tuple[Aggregation, ...]
    lateness: int
    early_every: int | None
    late_firings: str | int  # EVERY, NEVER or a processing-time delay
    accumulating: bool
    pane_column: str | None
    partitions: int
    ctx: RunContext

    def describe_window(self) -> str:
        if self.kind == "session":
            return f"session gap {format_duration(self.gap)}"
        if self.kind == "sliding":
            return f"sliding {format_duration(self.size)} every {format_duration(self.period)}"
        return f"fixed {format_duration(self.size)}"


# ---------------------------------------------------------------------------------------------
# Rows in: event times and numeric inputs.
# ---------------------------------------------------------------------------------------------


def read_event_times(batch: pa.RecordBatch, plan: Plan) -> EventTimes:
    """The batch's event times; a missing column makes every row a problem."""
    idx = batch.schema.get_field_index(plan.event_time)
    if idx < 0:
        problem = (f"event time field {plan.event_time!r} is not in the record (fields: "
                   f"{', '.join(batch.schema.names)})")
        return EventTimes(np.zeros(batch.num_rows, dtype=np.int64), [problem] * batch.num_rows)
    return event_times(batch.column(idx), plan.event_time, plan.time_format)


def letters_for(batch: pa.RecordBatch, rows: Sequence[int], errors: Sequence[str], error_type: str,
                plan: Plan, exception: str) -> Iterator[dict[str, Any]]:
    """Dead letters for ``rows`` of ``batch`` (the helper event-time column left out)."""
    if EVENT_COL in batch.schema.names:
        batch = batch.drop_columns([EVENT_COL])
    attempt = batch_attempt(batch)
    for i, error in zip(rows, errors, strict=True):
        yield dead_letter(row_as_record(batch, i), error_type=error_type, error=error, exception=exception,
                          step=plan.step, source=batch_source(batch, i), attempt=attempt, ctx=plan.ctx)


def bad_time_letters(batch: pa.RecordBatch, times: EventTimes, plan: Plan) -> list[dict[str, Any]]:
    """Dead letters (validation) for rows whose event time is missing or unreadable."""
    rows = np.flatnonzero(times.bad).tolist()
    return list(letters_for(batch, rows, [times.problems[i] for i in rows], "validation", plan, "ValueError"))


def numeric_inputs(batch: pa.RecordBatch, plan: Plan) -> tuple[pa.RecordBatch, dict[str, Any], np.ndarray,
                                                                 list[dict[str, Any]]]:
    """Makes the inputs of numeric aggregates numbers: (kept rows, numeric columns, kept mask, letters).

    Rows whose value cannot be a number leave as dead letters (``error_type: type``), as in
    GroupByAggregate.
    """
    numeric: dict[str, Any] = {}
    bad: np.ndarray | None = None
    reasons: dict[str, np.ndarray] = {}
    for field in numeric_fields(plan.aggs):
        idx = batch.schema.get_field_index(field)
        if idx < 0:
            continue
        values, field_bad = coerce_numeric(batch.column(idx))
        numeric[field] = values
        if field_bad is not None:
            reasons[field] = field_bad
            bad = field_bad.copy() if bad is None else bad | field_bad
    if bad is None:
        return batch, numeric, np.ones(batch.num_rows, dtype=bool), []
    rows = np.flatnonzero(bad).tolist()
    errors = []
    for i in rows:
        field = next(f for f, mask in reasons.items() if mask[i])
        users = ", ".join(f"{a.name}={a.op}({field})" for a in plan.aggs if a.field == field)
        errors.append(f"field {field!r}: value {batch.column(field)[i].as_py()!r} is not a number "
                      f"(needed by {users})")
    letters = list(letters_for(batch, rows, errors, "type", plan, "TypeError"))
    keep = pa.array(~bad)
    return batch.filter(keep), {f: v.filter(keep) for f, v in numeric.items()}, ~bad, letters


def late_error(event_us: int, start: int, end: int, plan: Plan, watermark: int) -> str:
    """The dead-letter text of a record that arrived after its window closed."""
    closed = end + plan.lateness
    what = "session window" if plan.kind == "session" else "window"
    return (f"late record: event time {iso(event_us)} of field {plan.event_time!r} is behind the watermark; its "
            f"{what} [{iso(start)}, {iso(end)}) closed at {iso(closed)} (window end + allowed_lateness "
            f"{format_duration(plan.lateness) if plan.lateness else '0s'}); the watermark is at or past "
            f"{iso(watermark)}")


# ---------------------------------------------------------------------------------------------
# Results out.
# ---------------------------------------------------------------------------------------------


def with_window_columns(result: pa.Table, start: Any, end: Any, pane: str | None, plan: Plan) -> pa.Table:
    """``window_start``, ``window_end`` (UTC timestamps), the result columns and the pane column.

    ``start``/``end`` are microsecond ints (one window) or arrays (one per row).
    """
    n = result.num_rows
    starts = np.full(n, start, dtype=np.int64) if np.isscalar(start) else np.asarray(start, dtype=np.int64)
    ends = np.full(n, end, dtype=np.int64) if np.isscalar(end) else np.asarray(end, dtype=np.int64)
    columns = [timestamp_array(starts), timestamp_array(ends), *result.columns]
    names = [WINDOW_START, WINDOW_END, *result.column_names]
    if plan.pane_column:
        columns.append(pa.array([pane] * n, pa.string()))
        names.append(plan.pane_column)
    return pa.table(columns, names=names).replace_schema_metadata(None)


def output_batches(table: pa.Table) -> Iterator[pa.RecordBatch]:
    """The result rows as output batches."""
    yield from table_to_batches(table)
