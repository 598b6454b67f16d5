"""WindowAggregate's per-batch stages: split rows by window assignment, and the bounded-input merges.

``SplitFn`` reads each batch's event times (rows without a usable one become dead letters) and
splits the batch, vectorised, into sub-batches whose rows share their windows:

* ``keyed`` (streaming engine): ``(partition, (first, last, rows))`` for fixed/sliding windows,
  ``(group key, (0, 0, rows))`` for sessions; rows carry their event time in ``EVENT_COL``.
* ``timestamped`` (bounded fixed/sliding): each sub-batch as a ``TimestampedValue`` at the
  earliest event time of its rows, which lies in every window of those rows, ready for
  ``WindowInto`` and GroupByAggregate.
* ``sessions`` (bounded sessions): per group key, rows whose proto-windows ``[t, t + gap)``
  chain together are pre-aggregated into one partial with its extent (``SMIN``/``SMAX``),
  keyed by a hash partition of the group key; ``SessionMergeFn`` merges the partials of each
  partition into sessions (the same ``sessionize`` the streaming engine uses).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming

from beam_etl.batch import ArrowTableCoder, batch_nbytes, json_safe
from beam_etl.hashing import hash_columns, partition_of
from beam_etl.ops.dlq import DLQ_TAG
from beam_etl.ops.metrics import StepMetrics, timed_process
from beam_etl.transforms._agg_partials import concat_partials, finalize, merge_partials, partial_aggregate
from beam_etl.transforms._window_plan import (
    EARLY,
    EVENT_COL,
    LATE,
    ON_TIME,
    Plan,
    bad_time_letters,
    numeric_inputs,
    output_batches,
    read_event_times,
    with_window_columns,
)
from beam_etl.transforms._window_time import group_rows, key_ids, sessionize, window_slots

SID = "__beam_etl_sid"
SMIN = "__beam_etl_smin"  # earliest event time of a partial session
SMAX = "__beam_etl_smax"  # latest event time of a partial session
COMPACT_ROWS = 65_536
MODES = ("keyed", "timestamped", "sessions")


def _key_columns(data: pa.Table | pa.RecordBatch, keys: Iterable[str]) -> list[Any]:
    return [data.column(k) if k in data.schema.names else pa.nulls(data.num_rows) for k in keys]


class SplitFn(beam.DoFn):
    """Reads event times, routes rows without one to the DLQ, and splits batches by window (see module)."""

    def __init__(self, plan: Plan, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self._plan = plan
        self._mode = mode

    def setup(self) -> None:
        self._metrics = StepMetrics(self._plan.step)

    @timed_process
    def process(self, batch: pa.RecordBatch) -> Iterator[Any]:
        m = self._metrics
        if self._mode != "timestamped":  # there GroupByAggregate counts the rows it receives
            m.batches_in.inc()
            m.records_in.inc(batch.num_rows)
            m.bytes_in.inc(batch_nbytes(batch))
        if not batch.num_rows:
            return
        times = read_event_times(batch, self._plan)
        micros = times.micros
        if times.bad is not None:
            letters = bad_time_letters(batch, times, self._plan)
            if self._mode == "timestamped":
                m.records_in.inc(len(letters))
            m.records_failed.inc(len(letters))
            for letter in letters:
                yield beam.pvalue.TaggedOutput(DLQ_TAG, letter)
            keep = ~times.bad
            batch = batch.filter(pa.array(keep))
            micros = micros[keep]
            if not batch.num_rows:
                return
        if self._mode == "sessions":
            yield from self._session_partials(batch, micros)
        elif self._plan.kind == "session":
            yield from self._by_group_key(batch, micros)
        else:
            yield from self._by_slot(batch, micros)

    def _by_slot(self, batch: pa.RecordBatch, micros: np.ndarray) -> Iterator[Any]:
        plan = self._plan
        first, last = window_slots(micros, plan.size, plan.period)
        if self._mode == "keyed":
            hashes = hash_columns(_key_columns(batch, plan.keys), batch.num_rows)
            part = partition_of(hashes, plan.partitions)
            _, groups = group_rows(part, first, last)
            rows = batch.append_column(EVENT_COL, pa.array(micros, pa.int64()))
            for idx in groups:
                i = int(idx[0])
                yield int(part[i]), (int(first[i]), int(last[i]), rows.take(pa.array(idx)))
            return
        _, groups = group_rows(first, last)
        for idx in groups:
            yield beam.window.TimestampedValue(batch.take(pa.array(idx)), Timestamp(micros=int(micros[idx].min())))

    def _by_group_key(self, batch: pa.RecordBatch, micros: np.ndarray) -> Iterator[Any]:
        keys = self._plan.keys
        ids = key_ids(_key_columns(batch, keys), batch.num_rows)
        _, groups = group_rows(ids)
        rows = batch.append_column(EVENT_COL, pa.array(micros, pa.int64()))
        key_table = pa.table(_key_columns(batch, keys), names=list(keys)) if keys else None
        for idx in groups:
            values = key_table.slice(int(idx[0]), 1).to_pylist()[0] if key_table is not None else {}
            key = json.dumps([json_safe(values[k]) for k in keys], sort_keys=True, default=str)
            yield key, (0, 0, rows.take(pa.array(idx)))

    def _session_partials(self, batch: pa.RecordBatch, micros: np.ndarray) -> Iterator[Any]:
        plan = self._plan
        kept, numeric, mask, letters = numeric_inputs(batch, plan)
        if letters:
            self._metrics.records_failed.inc(len(letters))
            for letter in letters:
                yield beam.pvalue.TaggedOutput(DLQ_TAG, letter)
        if not kept.num_rows:
            return
        self._metrics.records_grouped.inc(kept.num_rows)  # the emit stage moves one per session to out
        micros = micros[mask]
        numbers = sessionize(key_ids(_key_columns(kept, plan.keys), kept.num_rows), micros, micros, plan.gap)
        partial = partial_aggregate(kept.append_column(SID, pa.array(numbers, pa.int64())),
                                    [*plan.keys, SID], plan.aggs, numeric)
        count = int(numbers.max()) + 1
        smin = np.full(count, np.iinfo(np.int64).max, dtype=np.int64)
        smax = np.full(count, np.iinfo(np.int64).min, dtype=np.int64)
        np.minimum.at(smin, numbers, micros)
        np.maximum.at(smax, numbers, micros)
        sid = np.asarray(partial.column(SID), dtype=np.int64)
        partial = partial.drop_columns([SID]).append_column(SMIN, pa.array(smin[sid])).append_column(
            SMAX, pa.array(smax[sid]))
        part = partition_of(hash_columns(_key_columns(partial, plan.keys), partial.num_rows), plan.partitions)
        _, groups = group_rows(part)
        for idx in groups:
            yield int(part[int(idx[0])]), partial.take(pa.array(idx))


# ---------------------------------------------------------------------------------------------
# Bounded sessions: merge partial sessions per partition.
# ---------------------------------------------------------------------------------------------


def compact_sessions(table: pa.Table, plan: Plan) -> pa.Table:
    """Merges partial sessions (keys, SMIN, SMAX, states) whose extents chain within ``gap``."""
    if not table.num_columns or not table.num_rows:
        return table
    smin = np.asarray(table.column(SMIN), dtype=np.int64)
    smax = np.asarray(table.column(SMAX), dtype=np.int64)
    numbers = sessionize(key_ids(_key_columns(table, plan.keys), table.num_rows), smin, smax, plan.gap)
    count = int(numbers.max()) + 1
    lo = np.full(count, np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full(count, np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(lo, numbers, smin)
    np.maximum.at(hi, numbers, smax)
    merged = merge_partials(table.append_column(SID, pa.array(numbers, pa.int64())), [*plan.keys, SID], plan.aggs)
    sid = np.asarray(merged.column(SID), dtype=np.int64)
    return merged.drop_columns([SID]).append_column(SMIN, pa.array(lo[sid])).append_column(SMAX, pa.array(hi[sid]))


class SessionMergeFn(beam.CombineFn):
    """Combines partial sessions of one partition; the accumulator is a table of them."""

    def __init__(self, plan: Plan) -> None:
        self._plan = plan

    def create_accumulator(self) -> pa.Table:
        return pa.table({})

    def add_input(self, acc: pa.Table, partial: pa.Table) -> pa.Table:
        return self.add_inputs(acc, [partial])

    def add_inputs(self, acc: pa.Table, partials: Iterable[pa.Table]) -> pa.Table:
        table = concat_partials([acc, *partials])
        return compact_sessions(table, self._plan) if table.num_rows > COMPACT_ROWS else table

    def merge_accumulators(self, accumulators: Iterable[pa.Table]) -> pa.Table:
        return compact_sessions(concat_partials(accumulators), self._plan)

    def compact(self, acc: pa.Table) -> pa.Table:
        return compact_sessions(acc, self._plan)

    def extract_output(self, acc: pa.Table) -> pa.Table:
        plan = self._plan
        sessions = compact_sessions(acc, plan)
        if not sessions.num_columns or not sessions.num_rows:
            return pa.table({})
        start = np.asarray(sessions.column(SMIN), dtype=np.int64)
        end = np.asarray(sessions.column(SMAX), dtype=np.int64) + plan.gap
        return with_window_columns(finalize(sessions, plan.keys, plan.aggs), start, end, ON_TIME, plan)

    def get_accumulator_coder(self) -> beam.coders.Coder:
        return ArrowTableCoder()


class EmitSessionsFn(beam.DoFn):
    """Turns each partition's sessions into batches; one output row per session moves grouped -> out."""

    def __init__(self, plan: Plan) -> None:
        self._plan = plan

    def setup(self) -> None:
        self._metrics = StepMetrics(self._plan.step)

    def process(self, element: tuple[int, pa.Table]) -> Iterator[Any]:
        table = element[1]
        if not table.num_rows:
            return
        self._metrics.records_out.inc(table.num_rows)
        self._metrics.records_grouped.dec(table.num_rows)
        yield from output_batches(table)


# ---------------------------------------------------------------------------------------------
# Bounded fixed/sliding: window columns from the window each GroupByAggregate result lies in.
# ---------------------------------------------------------------------------------------------


_TIMING = {PaneInfoTiming.EARLY: EARLY, PaneInfoTiming.ON_TIME: ON_TIME, PaneInfoTiming.LATE: LATE}


class AttachWindowFn(beam.DoFn):
    """Adds ``window_start``/``window_end`` (and the pane) from the element's window."""

    def __init__(self, plan: Plan) -> None:
        self._plan = plan

    def process(self, batch: pa.RecordBatch, window=beam.DoFn.WindowParam,
                pane=beam.DoFn.PaneInfoParam) -> Iterator[pa.RecordBatch]:
        timing = _TIMING.get(getattr(pane, "timing", None), ON_TIME)
        table = pa.Table.from_batches([batch])
        yield from output_batches(with_window_columns(table, window.start.micros, window.end.micros, timing,
                                                      self._plan))
