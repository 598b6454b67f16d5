"""WindowAggregate: GROUP BY per event-time window (fixed, sliding or session) over Arrow batches.

Each row's window comes from its event-time field (Arrow timestamp or date, ISO 8601 string, or
epoch seconds/milliseconds); rows without a usable event time go to the DLQ. Results carry
``window_start`` and ``window_end`` (UTC timestamps), the group keys, the aggregations (the syntax
of GroupByAggregate) and, unless ``pane_column: null``, the pane (``EARLY``/``ON_TIME``/``LATE``).
The output PCollection is in the global window, timestamped at each window's end.

Two engines, picked from the input (``engine: auto``):

* bounded input (batch): fixed/sliding windows split each batch by window slot, ``WindowInto``
  and GroupByAggregate (one ON_TIME result per window and group); sessions pre-aggregate per
  group key and merge per hash partition (``_window_split``). There is no late data in batch.
* unbounded input or ``--streaming``: one stateful DoFn per partition (sessions: per group key)
  keeps per-window partials, fires EARLY/ON_TIME/LATE panes from timers and sends records that
  arrive after their window closed (the watermark past window end + ``allowed_lateness``) to
  the DLQ as ``error_type: validation``, ``exception: LateRecord`` (``_window_stream``).

Accounting: batch as GroupByAggregate (``records_in = records_out + records_grouped +
records_failed``); streaming ``records_in = records_grouped + records_failed`` (late records
included, also counted in ``records_late``) and ``records_out`` counts the rows of every pane.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.utils.timestamp import Duration
from pydantic import BaseModel, Field, model_validator

from beam_etl import registry
from beam_etl.ops.context import get_run_context
from beam_etl.ops.dlq import DLQ_TAG
from beam_etl.transforms._window_plan import EVERY, NEVER, WINDOW_END, WINDOW_START, Plan
from beam_etl.transforms._window_split import AttachWindowFn, EmitSessionsFn, SessionMergeFn, SplitFn
from beam_etl.transforms._window_stream import WindowStateFn
from beam_etl.transforms._window_time import FORMATS, format_duration, parse_duration
from beam_etl.transforms.aggregate import GroupByAggregate
from beam_etl.transforms.dedup import DEFAULT_PARTITIONS, MAX_PARTITIONS

WINDOW_TYPES = ("fixed", "sliding", "session")
ACCUMULATION = ("accumulating", "discarding")
ENGINES = ("auto", "native", "stateful")
_WINDOW_KEYS = {"fixed": ("size",), "sliding": ("size", "period"), "session": ("gap",)}


def _err(where: str, message: str) -> ValueError:
    return ValueError(f"WindowAggregate: {where}: {message}")


def _as_dict(value: Any) -> Any:
    return value.model_dump(exclude_none=True, by_alias=True) if isinstance(value, BaseModel) else value


def parse_window(window: Any) -> tuple[str, int, int, int]:
    """``{type, size, period, gap}`` -> (kind, size, period, gap) in microseconds."""
    window = _as_dict(window)
    if not isinstance(window, Mapping):
        raise _err("window", f"{window!r} is not a mapping; write {{type: fixed, size: 5m}}, "
                   "{type: sliding, size: 10m, period: 5m} or {type: session, gap: 30m}")
    kind = window.get("type")
    if kind not in WINDOW_TYPES:
        raise _err("window.type", f"{kind!r} is not allowed; allowed: {', '.join(WINDOW_TYPES)}")
    needed = _WINDOW_KEYS[kind]
    unknown = sorted(set(window) - {"type", *needed})
    if unknown:
        raise _err("window", f"{', '.join(unknown)}: not used by {kind} windows, which take "
                   f"{', '.join(needed)}")
    for key in needed:
        if window.get(key) is None:
            raise _err(f"window.{key}", f"missing; {kind} windows need {', '.join(needed)} (e.g. {key}: 5m)")
    if kind == "session":
        return kind, 0, 0, parse_duration(window["gap"], "WindowAggregate: window.gap")
    size = parse_duration(window["size"], "WindowAggregate: window.size")
    if kind == "fixed":
        return kind, size, size, 0
    period = parse_duration(window["period"], "WindowAggregate: window.period")
    if period > size:
        raise _err("window.period", f"{format_duration(period)} is longer than size {format_duration(size)}, so "
                   "some records would fall in no window; use a period <= size")
    return kind, size, period, 0


def parse_late_firings(value: Any) -> str | int:
    """``true``/``every_element`` -> EVERY, ``false`` -> NEVER, a duration -> its microseconds."""
    if value is True or value in ("every_element", "every element", EVERY):
        return EVERY
    if value is False or value in ("never", "false"):
        return NEVER
    return parse_duration(value, "WindowAggregate: triggers.late_firings (true, false or a duration like 30s)")


class WindowAggregate(beam.PTransform):
    """Aggregates ``aggregations`` per group ``keys`` and event-time window; returns ``(batches, dead_letters)``.

    Args:
      event_time: the field holding each record's event time.
      window: ``{type: fixed, size}``, ``{type: sliding, size, period}`` or ``{type: session, gap}``;
        durations as ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"1d"`` or seconds.
      aggregations: as GroupByAggregate (``{out: {op, field}}`` or ``[{field, op, as}]``).
      keys: group key fields (empty: one row per window).
      event_time_format: auto, timestamp, iso, epoch_s, epoch_ms or epoch_us.
      allowed_lateness: how long after a window's end late records still update it (streaming).
      triggers: ``{early_every: <duration>, late_firings: true|false|<duration>}`` (streaming).
      accumulation: accumulating (each pane is the window's whole result so far) or discarding
        (each pane covers only the records since the previous pane).
      pane_column: name of the pane column, or None for none.
      partitions: hash partitions of the aggregation (batch shuffle; streaming state keys).
      engine: auto (stateful on unbounded input or with --streaming), native or stateful.
      step: step name for metrics and dead letters (default: the transform label).
    """

    def __init__(
        self,
        event_time: str,
        window: Any,
        aggregations: Any,
        keys: Sequence[str] | str | None = None,
        *,
        event_time_format: str = "auto",
        allowed_lateness: Any = 0,
        triggers: Any = None,
        accumulation: str = "accumulating",
        pane_column: str | None = "pane",
        partitions: int = DEFAULT_PARTITIONS,
        engine: str = "auto",
        step: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(event_time, str) or not event_time:
            raise _err("event_time", f"{event_time!r} is not a field name; write event_time: <field>")
        if event_time_format not in FORMATS:
            raise _err("event_time_format", f"{event_time_format!r} is not allowed; allowed: {', '.join(FORMATS)}")
        if accumulation not in ACCUMULATION:
            raise _err("accumulation", f"{accumulation!r} is not allowed; allowed: {', '.join(ACCUMULATION)}")
        if engine not in ENGINES:
            raise _err("engine", f"{engine!r} is not allowed; allowed: {', '.join(ENGINES)}")
        if pane_column is not None and (not isinstance(pane_column, str) or not pane_column):
            raise _err("pane_column", f"{pane_column!r} is not a column name; give a name or null for none")
        self._kind, self._size, self._period, self._gap = parse_window(window)
        self._lateness = parse_duration(allowed_lateness, "WindowAggregate: allowed_lateness", allow_zero=True)
        triggers = _as_dict(triggers) or {}
        if not isinstance(triggers, Mapping):
            raise _err("triggers", f"{triggers!r} is not a mapping; write {{early_every: 10s, late_firings: true}}")
        unknown = sorted(set(triggers) - {"early_every", "late_firings"})
        if unknown:
            raise _err("triggers", f"unknown keys {unknown}; allowed: early_every, late_firings")
        early = triggers.get("early_every")
        self._early = None if early is None else parse_duration(early, "WindowAggregate: triggers.early_every")
        self._late_firings = parse_late_firings(triggers.get("late_firings", True))
        # GroupByAggregate validates keys, aggregations and partitions and parses the aggregations
        self._keys = [keys] if isinstance(keys, str) else list(keys or [])
        try:
            self._aggs = GroupByAggregate(self._keys, aggregations, partitions=partitions).aggregations
        except ValueError as error:
            raise ValueError(str(error).replace("GroupByAggregate:", "WindowAggregate:", 1)) from error
        outputs = [*self._keys, *(n for a in self._aggs for n in getattr(a, "output_names", (a.name,)))]
        reserved = [WINDOW_START, WINDOW_END, *([pane_column] if pane_column else [])]
        clash = sorted(set(outputs) & set(reserved))
        if clash:
            raise _err("keys/aggregations", f"{clash} are output columns of WindowAggregate itself; rename them "
                       "(or set pane_column to another name)")
        self._aggregations = aggregations
        self._event_time = event_time
        self._format = event_time_format
        self._accumulating = accumulation == "accumulating"
        self._pane_column = pane_column
        self._partitions = partitions
        self._engine = engine
        self._step = step
        self._ctx = get_run_context()

    def step_name(self) -> str:
        return self._step or self.label

    def plan(self) -> Plan:
        """The validated settings, as the DoFns get them."""
        return Plan(
            step=self.step_name(), event_time=self._event_time, time_format=self._format, kind=self._kind,
            size=self._size, period=self._period, gap=self._gap, keys=tuple(self._keys), aggs=tuple(self._aggs),
            lateness=self._lateness, early_every=self._early, late_firings=self._late_firings,
            accumulating=self._accumulating, pane_column=self._pane_column, partitions=self._partitions,
            ctx=self._ctx,
        )

    def display_data(self) -> dict[str, Any]:
        plan = self.plan()
        late = plan.late_firings
        late_text = {EVERY: "every element", NEVER: "once at close"}.get(late) if isinstance(late, str) \
            else format_duration(late)
        return {"event_time": self._event_time, "window": plan.describe_window(),
                "keys": ", ".join(self._keys) or "(none)",
                "allowed_lateness": format_duration(self._lateness) if self._lateness else "0s",
                "early_every": format_duration(self._early) if self._early else "none",
                "late_firings": late_text, "accumulation": "accumulating" if self._accumulating else "discarding"}

    def uses_state(self, pcoll: beam.PCollection) -> bool:
        """Whether this input gets the streaming (stateful) engine."""
        options = pcoll.pipeline.options
        unbounded = bool(options and options.view_as(StandardOptions).streaming) or not pcoll.is_bounded
        if self._engine == "native" and unbounded:
            raise ValueError(f"WindowAggregate step {self.step_name()!r}: engine 'native' is for bounded input; on "
                             "unbounded input Beam's GroupByKey would drop late records silently. Use engine: auto")
        return self._engine == "stateful" or (self._engine == "auto" and unbounded)

    def expand(self, pcoll: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        plan = self.plan()
        if self.uses_state(pcoll):
            key_type = str if plan.kind == "session" else int
            split = (pcoll | "Global" >> beam.WindowInto(beam.window.GlobalWindows())
                     | "Split" >> beam.ParDo(SplitFn(plan, "keyed")).with_output_types(
                         tuple[key_type, tuple[int, int, pa.RecordBatch]]).with_outputs(DLQ_TAG, main="rows"))
            panes = split.rows | "Window" >> beam.ParDo(WindowStateFn(plan)).with_outputs(DLQ_TAG, main="panes")
            letters = (split[DLQ_TAG], panes[DLQ_TAG]) | "DeadLetters" >> beam.Flatten()
            return panes.panes, letters
        if plan.kind == "session":
            split = (pcoll | "Global" >> beam.WindowInto(beam.window.GlobalWindows())
                     | "Split" >> beam.ParDo(SplitFn(plan, "sessions")).with_output_types(
                         tuple[int, pa.Table]).with_outputs(DLQ_TAG, main="partials"))
            out = (split.partials | "Merge" >> beam.CombinePerKey(SessionMergeFn(plan))
                   | "Emit" >> beam.ParDo(EmitSessionsFn(plan)).with_output_types(pa.RecordBatch))
            return out, split[DLQ_TAG]
        split = pcoll | "Split" >> beam.ParDo(SplitFn(plan, "timestamped")).with_outputs(DLQ_TAG, main="rows")
        windowfn = (beam.window.FixedWindows(Duration(micros=plan.size)) if plan.kind == "fixed"
                    else beam.window.SlidingWindows(Duration(micros=plan.size), Duration(micros=plan.period)))
        windowed = split.rows | "Window" >> beam.WindowInto(windowfn)
        results, agg_letters = windowed | "Aggregate" >> GroupByAggregate(
            self._keys, self._aggregations, partitions=plan.partitions, step=plan.step)
        out = (results | "WindowColumns" >> beam.ParDo(AttachWindowFn(plan)).with_output_types(pa.RecordBatch)
               | "Rewindow" >> beam.WindowInto(beam.window.GlobalWindows()))
        letters = (split[DLQ_TAG], agg_letters) | "DeadLetters" >> beam.Flatten()
        return out, letters


# ---------------------------------------------------------------------------------------------
# Registry.
# ---------------------------------------------------------------------------------------------


class WindowSpec(registry.StrictConfig):
    """``{type: fixed, size}``, ``{type: sliding, size, period}`` or ``{type: session, gap}``."""

    type: Literal["fixed", "sliding", "session"] = Field(description="Window kind.")
    size: str | float | None = Field(None, description="fixed/sliding: window length, e.g. 60s, 5m, 1h.")
    period: str | float | None = Field(None, description="sliding: how often a window starts (<= size).")
    gap: str | float | None = Field(None, description="session: the inactivity gap that closes a session.")


class TriggerSpec(registry.StrictConfig):
    """When panes fire besides the ON_TIME pane at the window's end (streaming only)."""

    early_every: str | float | None = Field(
        None, description="Processing-time delay after a pane's first record before an EARLY pane (e.g. 10s).")
    late_firings: bool | str | float = Field(
        True, description="true: a LATE pane for each late bundle; a duration: at most one LATE pane per "
                          "delay; false: one LATE pane when the window closes.")


class WindowAggregateConfig(registry.StrictConfig):
    """Aggregates records per group and event-time window (fixed, sliding or session)."""

    event_time: str = Field(description="Field with the event time (timestamp, ISO 8601 text or epoch number).")
    event_time_format: Literal["auto", "timestamp", "iso", "epoch_s", "epoch_ms", "epoch_us"] = Field(
        "auto", description="How to read event_time; auto goes by the column type (epoch numbers by magnitude).")
    window: WindowSpec = Field(description="{type: fixed|sliding|session, size, period, gap}.")
    keys: list[str] | str = Field(default_factory=list, description="Group key fields (empty: one row per window).")
    aggregations: dict[str, Any] | list[Any] = Field(
        description="As GroupByAggregate: {out_name: {op, field}} or [{field, op, as}].")
    allowed_lateness: str | float = Field(0, description="How long after a window's end late records still "
                                                         "update it (streaming; later ones go to the DLQ).")
    triggers: TriggerSpec = Field(default_factory=TriggerSpec, description="Early and late firings (streaming).")
    accumulation: Literal["accumulating", "discarding"] = Field(
        "accumulating", description="accumulating: every pane is the whole result so far; discarding: only "
                                    "the records since the previous pane.")
    pane_column: str | None = Field("pane", description="Column naming the pane (EARLY/ON_TIME/LATE); null: none.")
    partitions: int = Field(DEFAULT_PARTITIONS, ge=1, le=MAX_PARTITIONS,
                            description="Hash partitions (batch shuffle; streaming state keys).")
    engine: Literal["auto", "native", "stateful"] = Field(
        "auto", description="auto: stateful on unbounded input or --streaming, else native (batch).")

    def kwargs(self) -> dict[str, Any]:
        return {
            "event_time": self.event_time, "window": self.window.model_dump(exclude_none=True),
            "aggregations": _plain(self.aggregations), "keys": self.keys,
            "event_time_format": self.event_time_format, "allowed_lateness": self.allowed_lateness,
            "triggers": self.triggers.model_dump(exclude_none=True), "accumulation": self.accumulation,
            "pane_column": self.pane_column, "partitions": self.partitions, "engine": self.engine,
        }

    @model_validator(mode="after")
    def _validate(self) -> WindowAggregateConfig:
        WindowAggregate(**self.kwargs())
        return self


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, exclude_none=True)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _requires(config: WindowAggregateConfig) -> frozenset[str]:
    """The streaming engine keeps per-window state and timers; the native (batch) engine needs neither."""
    return frozenset() if config is not None and config.engine == "native" else frozenset({"state_and_timers"})


@registry.register("step", "WindowAggregate", WindowAggregateConfig, streaming=True, requires=_requires,
                   regroups=True)
def build_window_aggregate(config: WindowAggregateConfig, ctx: registry.BuildContext) -> WindowAggregate:
    """Aggregates records per group and event-time window (fixed, sliding or session)."""
    return WindowAggregate(**config.kwargs(), step=ctx.step_name)
