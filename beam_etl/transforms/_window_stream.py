"""The streaming stage of WindowAggregate: one stateful DoFn that windows, triggers and gates lateness.

Input: ``(key, (first, last, rows))`` in the global window. For fixed and sliding windows the key
is a hash partition of the group key and rows share the windows ``first..last`` (see
``_window_time.window_slots``); for sessions the key is the group key itself (sessions merge per
key) and ``first``/``last`` are unused. Rows carry their event time in ``EVENT_COL``.

Per key, the state holds each open window's partial aggregates (a bag of ``(window id, fresh,
partial table)``) and a small ``Meta``: the windows (bounds and pane flags) and ``watermark``,
the largest event-time timer timestamp that has fired for the key. A DoFn cannot read the
runner's watermark, but the watermark is at least that value, so a record whose window closed at
or before it (window end + allowed lateness; for a session, the record's own proto-window
``[t, t + gap)``) is late for certain: it leaves as a dead letter (``error_type: validation``,
``exception: LateRecord``). Nothing else is ever dropped: a record the step still accepts
(including one the runner's watermark has passed but no timer has shown yet) is folded into its
window and reported in a pane before the window's state is released. The state is in the global
window, so the runner never drops input for an expired window either.

Timers per window (dynamic tags ``<kind>:<window id>``):
  ``end``   event time, window end - 1µs: the ON_TIME pane;
  ``gc``    event time, window end + allowed lateness: a last pane for records not reported yet,
            then the window's state is released and the window is closed for good;
  ``early`` processing time, ``early_every`` after the first record of a pane: an EARLY pane;
  ``late``  processing time, ``late_firings`` after the first late record: a LATE pane.
One per key, ``tick:0``: the watermark clock (``_tick``), which keeps ``watermark`` within one
window boundary (sessions: one gap) of the runner's, also for windows the key has not seen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.coders import PickleCoder, TupleCoder, VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration, Timestamp

from beam_etl.batch import ArrowTableCoder
from beam_etl.ops.dlq import DLQ_TAG
from beam_etl.ops.metrics import NAMESPACE_PREFIX, StepMetrics
from beam_etl.transforms._agg_partials import concat_partials, finalize, merge_partials, partial_aggregate
from beam_etl.transforms._window_plan import (
    EARLY,
    EVENT_COL,
    EVERY,
    LATE,
    LATE_EXCEPTION,
    NEVER,
    ON_TIME,
    Plan,
    late_error,
    letters_for,
    numeric_inputs,
    output_batches,
    with_window_columns,
)
from beam_etl.transforms._window_time import MIN_US, key_ids, next_boundary, next_gap_boundary, sessionize

_NO_WATERMARK = MIN_US - 1


@dataclasses.dataclass
class Win:
    """One open window: bounds and pane bookkeeping."""

    start: int
    end: int
    fired: bool = False  # the ON_TIME pane went out (records now are late data)
    pending: bool = False  # records folded in since the last pane
    early: bool = False  # an early timer is armed
    late: bool = False  # a late timer is armed


@dataclasses.dataclass
class Meta:
    """Per key: open windows and the event time the key's timers have shown the watermark reach."""

    watermark: int = _NO_WATERMARK
    next_id: int = 0
    windows: dict[int, Win] = dataclasses.field(default_factory=dict)
    tick: int | None = None  # when the watermark clock fires next
    quiet: int = 0  # clock ticks in a row without records
    active: bool = False  # records arrived since the last tick


class _Store:
    """The state of one key during one callback: meta, the partials bag and the timers."""

    def __init__(self, meta_state: Any, bag: Any, event: Any, clock: Any) -> None:
        self._meta_state = meta_state
        self._bag = bag
        self.event = event
        self.clock = clock
        self.meta: Meta = meta_state.read() or Meta()
        self._entries: list[tuple[int, int, pa.Table]] | None = None
        self._rewrite = False

    def _load(self) -> list[tuple[int, int, pa.Table]]:
        if self._entries is None:
            self._entries = list(self._bag.read())
        return self._entries

    def add(self, wid: int, partial: pa.Table, fresh: bool = True) -> None:
        """Stores a partial of window ``wid``: fresh (since the last pane) or the accumulated result."""
        entry = (wid, int(fresh), partial)
        if self._entries is not None:
            self._entries.append(entry)
        if not self._rewrite:
            self._bag.add(entry)

    def take(self, wid: int) -> list[tuple[bool, pa.Table]]:
        """Removes and returns the partials of window ``wid`` as (fresh, partial)."""
        entries = self._load()
        mine = [(bool(f), t) for w, f, t in entries if w == wid]
        if mine:
            self._entries = [e for e in entries if e[0] != wid]
            self._rewrite = True
        return mine

    def set_window_timers(self, wid: int, win: Win, lateness: int) -> None:
        self.event.set(Timestamp(micros=win.end - 1), dynamic_timer_tag=f"end:{wid}")
        self.event.set(Timestamp(micros=win.end + lateness), dynamic_timer_tag=f"gc:{wid}")

    def clear_timers(self, wid: int) -> None:
        for timer, kinds in ((self.event, ("end", "gc")), (self.clock, ("early", "late"))):
            for kind in kinds:
                timer.clear(dynamic_timer_tag=f"{kind}:{wid}")

    def save(self) -> None:
        self._meta_state.write(self.meta)
        if self._rewrite:
            self._bag.clear()
            for entry in self._entries or []:
                self._bag.add(entry)


def _now() -> Timestamp:
    return Timestamp.now()


class WindowStateFn(beam.DoFn):
    """Windows, triggers and lateness for one key's rows (see the module docstring)."""

    META = ReadModifyWriteStateSpec("meta", PickleCoder())
    PARTIALS = BagStateSpec("partials", TupleCoder([VarIntCoder(), VarIntCoder(), ArrowTableCoder()]))
    EVENT = TimerSpec("event", TimeDomain.WATERMARK)
    CLOCK = TimerSpec("clock", TimeDomain.REAL_TIME)

    def __init__(self, plan: Plan) -> None:
        self._plan = plan
        # about two windows (plus lateness) of boundaries, each fire and close instant counted
        step = plan.gap or plan.period
        self._quiet_ticks = 2 * -(-(plan.size + plan.gap + plan.lateness) // step) + 2
        if plan.kind != "session":
            self._quiet_ticks *= 2  # fixed/sliding windows tick at both their fire and close instants

    def setup(self) -> None:
        self._metrics = StepMetrics(self._plan.step)
        namespace = NAMESPACE_PREFIX + self._plan.step
        self._late = Metrics.counter(namespace, "records_late")
        self._skipped = Metrics.counter(namespace, "late_window_skips")

    # -- callbacks ------------------------------------------------------------------------------

    def process(self, element: tuple[Any, tuple[int, int, pa.RecordBatch]],
                meta=beam.DoFn.StateParam(META), bag=beam.DoFn.StateParam(PARTIALS),
                event=beam.DoFn.TimerParam(EVENT), clock=beam.DoFn.TimerParam(CLOCK)) -> Iterator[Any]:
        _, (first, last, rows) = element
        store = _Store(meta, bag, event, clock)
        if self._plan.kind == "session":
            yield from self._add_session_rows(store, rows)
        else:
            yield from self._add_slot_rows(store, first, last, rows)
        store.save()

    @on_timer(EVENT)
    def on_event_timer(self, meta=beam.DoFn.StateParam(META), bag=beam.DoFn.StateParam(PARTIALS),
                       event=beam.DoFn.TimerParam(EVENT), clock=beam.DoFn.TimerParam(CLOCK),
                       tag=beam.DoFn.DynamicTimerTagParam, fired=beam.DoFn.TimestampParam) -> Iterator[Any]:
        store = _Store(meta, bag, event, clock)
        store.meta.watermark = max(store.meta.watermark, fired.micros)
        kind, wid = _parse_tag(tag)
        win = store.meta.windows.get(wid)
        if kind == "tick":
            self._tick(store)
        elif win is not None and kind == "end" and not win.fired:
            yield from self._fire(store, wid, ON_TIME, all_groups=True)
            win.fired = True
        elif win is not None and kind == "gc":
            if not win.fired:
                yield from self._fire(store, wid, ON_TIME, all_groups=True)
            elif win.pending:
                yield from self._fire(store, wid, LATE)
            self._close(store, wid)
        store.save()

    @on_timer(CLOCK)
    def on_clock_timer(self, meta=beam.DoFn.StateParam(META), bag=beam.DoFn.StateParam(PARTIALS),
                       event=beam.DoFn.TimerParam(EVENT), clock=beam.DoFn.TimerParam(CLOCK),
                       tag=beam.DoFn.DynamicTimerTagParam) -> Iterator[Any]:
        store = _Store(meta, bag, event, clock)
        kind, wid = _parse_tag(tag)
        win = store.meta.windows.get(wid)
        if win is not None and kind == "early":
            win.early = False
            if not win.fired:
                yield from self._fire(store, wid, EARLY)
        elif win is not None and kind == "late":
            win.late = False
            if win.fired:
                yield from self._fire(store, wid, LATE)
        store.save()

    # -- fixed and sliding windows ----------------------------------------------------------------

    def _add_slot_rows(self, store: _Store, first: int, last: int, rows: pa.RecordBatch) -> Iterator[Any]:
        plan = self._plan
        windows = [(k * plan.period, k * plan.period + plan.size) for k in range(first, last + 1)]
        watermark = store.meta.watermark
        open_windows = [(s, e) for s, e in windows if e + plan.lateness > watermark]
        if not open_windows:
            start, end = windows[-1]
            events = rows.column(EVENT_COL).to_numpy()
            yield from self._late_letters(rows, list(range(rows.num_rows)),
                                          [late_error(int(t), start, end, plan, watermark) for t in events])
            return
        if len(open_windows) < len(windows):
            self._skipped.inc(rows.num_rows)
        store.meta.active = True
        if store.meta.tick is None:
            known = watermark if watermark > _NO_WATERMARK else open_windows[0][1] - 2
            self._arm_tick(store, known)
        kept, numeric, _, letters = numeric_inputs(rows.drop_columns([EVENT_COL]), plan)
        yield from self._failed(letters)
        if not kept.num_rows:
            return
        self._metrics.records_grouped.inc(kept.num_rows)
        partial = partial_aggregate(kept, plan.keys, plan.aggs, numeric)
        for start, end in open_windows:
            win = store.meta.windows.get(start)
            if win is None:  # the ON_TIME moment may already be known to have passed
                win = store.meta.windows[start] = Win(start, end, fired=end - 1 <= watermark)
                store.set_window_timers(start, win, plan.lateness)
            store.add(start, partial)
            yield from self._on_record(store, start, win)

    # -- session windows --------------------------------------------------------------------------

    def _add_session_rows(self, store: _Store, rows: pa.RecordBatch) -> Iterator[Any]:
        plan = self._plan
        events = rows.column(EVENT_COL).to_numpy().astype(np.int64)
        watermark = store.meta.watermark
        late = events + plan.gap + plan.lateness <= watermark
        if late.any():
            idx = np.flatnonzero(late).tolist()
            yield from self._late_letters(rows, idx, [
                late_error(int(events[i]), int(events[i]), int(events[i]) + plan.gap, plan, watermark) for i in idx])
            rows = rows.filter(pa.array(~late))
            events = events[~late]
        if not rows.num_rows:
            return
        kept, numeric, mask, letters = numeric_inputs(rows.drop_columns([EVENT_COL]), plan)
        yield from self._failed(letters)
        if not kept.num_rows:
            return
        self._metrics.records_grouped.inc(kept.num_rows)
        events = events[mask]
        store.meta.active = True
        if store.meta.tick is None:
            self._arm_tick(store, watermark if watermark > _NO_WATERMARK else int(events.min()) - 1)
        wins = store.meta.windows
        wids = list(wins)
        lo = np.concatenate([np.array([wins[w].start for w in wids], dtype=np.int64), events])
        hi = np.concatenate([np.array([wins[w].end - plan.gap for w in wids], dtype=np.int64), events])
        numbers = sessionize(np.zeros(len(lo), dtype=np.int64), lo, hi, plan.gap)
        row_numbers = numbers[len(wids):]
        for number in np.unique(row_numbers).tolist():
            members = numbers == number
            olds = [w for w, m in zip(wids, members[:len(wids)], strict=True) if m]
            wid = self._session_window(store, olds, int(lo[members].min()), int(hi[members].max()) + plan.gap)
            idx = pa.array(np.flatnonzero(row_numbers == number))
            store.add(wid, partial_aggregate(kept.take(idx), plan.keys, plan.aggs,
                                             {f: v.take(idx) for f, v in numeric.items()}))
            yield from self._on_record(store, wid, wins[wid])

    def _session_window(self, store: _Store, olds: list[int], start: int, end: int) -> int:
        """The session that records ``[start, end)`` go to: new, grown, or merged from ``olds``."""
        meta = store.meta
        if not olds:
            wid = meta.next_id
            meta.next_id += 1
            win = meta.windows[wid] = Win(start, end, fired=end - 1 <= meta.watermark)
            store.set_window_timers(wid, win, self._plan.lateness)
            return wid
        wid = min(olds)
        parts = [meta.windows[w] for w in olds]
        win = meta.windows[wid]
        # a session whose ON_TIME pane went out stays "fired" only if it did not grow past its end
        fired = all(p.fired for p in parts) and end == max(p.end for p in parts)
        for other in olds:
            if other == wid:
                continue
            for fresh, partial in store.take(other):
                store.add(wid, partial, fresh)
            store.clear_timers(other)
            del meta.windows[other]
        changed = (start, end) != (win.start, win.end) or len(olds) > 1
        win.start, win.end, win.fired = start, end, fired
        win.pending = any(p.pending for p in parts)
        if changed:
            store.set_window_timers(wid, win, self._plan.lateness)
        return wid

    # -- the watermark clock ------------------------------------------------------------------------

    def _arm_tick(self, store: _Store, after: int) -> None:
        plan = self._plan
        store.meta.tick = (next_gap_boundary(after, plan.gap) if plan.kind == "session"
                           else next_boundary(after, plan.size, plan.period, plan.lateness))
        store.event.set(Timestamp(micros=store.meta.tick), dynamic_timer_tag="tick:0")

    def _tick(self, store: _Store) -> None:
        """The clock fired: tick on to the next window boundary unless the key has been quiet a while.

        Window timers only tell a key about windows it holds; the clock also covers boundaries of
        windows the key has not seen yet, so a record for such a window is judged (late, or past
        its ON_TIME moment) as exactly as one for a known window (fixed/sliding: every window fire
        and close instant; sessions: every multiple of the gap, so to within one gap). After
        ``quiet_ticks`` ticks without records the clock stops (so it ends when the input does);
        the next record restarts it.
        """
        meta = store.meta
        meta.tick = None
        meta.quiet = 0 if meta.active else meta.quiet + 1
        meta.active = False
        if meta.quiet < self._quiet_ticks:
            self._arm_tick(store, meta.watermark)

    # -- panes ------------------------------------------------------------------------------------

    def _on_record(self, store: _Store, wid: int, win: Win) -> Iterator[Any]:
        """Records were folded into ``win``: arm an early/late firing, or fire a LATE pane now."""
        plan = self._plan
        win.pending = True
        if not win.fired:
            if plan.early_every and not win.early:
                store.clock.set(_now() + Duration(micros=plan.early_every), dynamic_timer_tag=f"early:{wid}")
                win.early = True
            return
        if plan.late_firings == EVERY:
            yield from self._fire(store, wid, LATE)
        elif plan.late_firings != NEVER and not win.late:
            store.clock.set(_now() + Duration(micros=int(plan.late_firings)), dynamic_timer_tag=f"late:{wid}")
            win.late = True

    def _fire(self, store: _Store, wid: int, pane: str, all_groups: bool = False) -> Iterator[Any]:
        """Emits a pane of window ``wid``.

        Discarding: the groups' results over the records since the last pane. Accumulating: the
        groups' results over all records so far, for the groups that got records since the last
        pane (every group when ``all_groups``, as the ON_TIME pane does).
        """
        plan = self._plan
        win = store.meta.windows[wid]
        if not win.pending and not (all_groups and plan.accumulating):
            return
        parts = store.take(wid)
        win.pending = False
        if not parts:
            return
        merged = merge_partials([t for _, t in parts], plan.keys, plan.aggs)
        result = finalize(merged, plan.keys, plan.aggs)
        if plan.accumulating:
            store.add(wid, merged, fresh=False)
            if not all_groups and plan.keys:
                result = result.filter(pa.array(_changed(merged, [t for f, t in parts if f], plan.keys)))
        if not result.num_rows:
            return
        table = with_window_columns(result, win.start, win.end, pane, plan)
        self._metrics.records_out.inc(table.num_rows)
        stamp = Timestamp(micros=win.end - 1)
        for batch in output_batches(table):
            yield beam.window.TimestampedValue(batch, stamp)

    def _close(self, store: _Store, wid: int) -> None:
        store.take(wid)
        store.clear_timers(wid)
        del store.meta.windows[wid]

    # -- accounting ---------------------------------------------------------------------------------

    def _failed(self, letters: list[dict[str, Any]]) -> Iterator[Any]:
        if letters:
            self._metrics.records_failed.inc(len(letters))
        for letter in letters:
            yield beam.pvalue.TaggedOutput(DLQ_TAG, letter)

    def _late_letters(self, rows: pa.RecordBatch, idx: list[int], errors: list[str]) -> Iterator[Any]:
        self._late.inc(len(idx))
        yield from self._failed(list(letters_for(rows, idx, errors, "validation", self._plan, LATE_EXCEPTION)))


def _changed(merged: pa.Table, fresh: list[pa.Table], keys: tuple[str, ...]) -> np.ndarray:
    """Mask of ``merged`` rows whose group appears in the ``fresh`` partials."""
    if not fresh:
        return np.zeros(merged.num_rows, dtype=bool)
    both = concat_partials([merged.select(list(keys)), *(t.select(list(keys)) for t in fresh)])
    ids = key_ids([both.column(k) for k in keys], both.num_rows)
    return np.isin(ids[:merged.num_rows], ids[merged.num_rows:])


def _parse_tag(tag: str) -> tuple[str, int]:
    kind, _, wid = tag.partition(":")
    return kind, int(wid)

