"""WindowAggregate: hand-computed windows on TestStream (streaming) and on the batch runner, late data, triggers."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import time
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms import window as beam_window
from apache_beam.utils.timestamp import Duration, Timestamp

from beam_etl import registry
from beam_etl.build import build_pipeline
from beam_etl.ops.context import RunContext
from beam_etl.ops.metrics import summarise
from beam_etl.spec import build_spec
from beam_etl.transforms import _window_time as wt
from beam_etl.transforms.window import WindowAggregate, WindowAggregateConfig
from tests.collect import read_elements, write_element

BASE = dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC)  # every test's times are minutes:seconds after this
AGGS = {"n": {"op": "count_all"}, "total": {"op": "sum", "field": "amount"}}


def at(clock: str) -> str:
    """ISO text of ``BASE`` + ``"MM:SS"`` (e.g. ``"01:30"`` -> 2024-05-01T10:01:30Z)."""
    minutes, seconds = (int(x) for x in clock.split(":"))
    return (BASE + dt.timedelta(minutes=minutes, seconds=seconds)).isoformat().replace("+00:00", "Z")


def stamp(clock: str) -> Timestamp:
    return Timestamp.from_utc_datetime(dt.datetime.fromisoformat(at(clock)))


def batch(*rows: tuple[Any, ...], names: tuple[str, ...] = ("ts", "user", "amount")) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([dict(zip(names, r, strict=True)) for r in rows])


def _clock(value: Any) -> str:
    when = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    total = int((when - BASE).total_seconds())
    sign = "-" if total < 0 else ""
    return f"{sign}{abs(total) // 60:02d}:{abs(total) % 60:02d}"


def rows_of(table: pa.Table | None, *cols: str) -> list[tuple[Any, ...]]:
    """Sorted (window_start, window_end, *cols) tuples, times as MM:SS after BASE."""
    if table is None:
        return []
    out = [(_clock(r["window_start"]), _clock(r["window_end"]), *(r[c] for c in cols)) for r in table.to_pylist()]
    return sorted(out, key=lambda t: tuple("" if v is None else str(v) for v in t))


def _collect(pcolls: dict[str, beam.PCollection], root: str) -> None:
    for name, pcoll in pcolls.items():
        os.makedirs(os.path.join(root, name))
        _ = pcoll | f"Collect{name}" >> beam.Map(write_element, os.path.join(root, name))


def _results(root: str, result: Any, step: str) -> tuple[pa.Table | None, list[dict], dict[str, int]]:
    table, _ = read_elements(os.path.join(root, "out"))
    _, letters = read_elements(os.path.join(root, "dlq"))
    metrics = summarise(result).get(step, {})
    shutil.rmtree(root, ignore_errors=True)
    return table, letters, metrics


def run_stream(events: list[tuple[str, Any]], **kwargs: Any) -> tuple[pa.Table | None, list[dict], dict[str, int]]:
    """Runs WindowAggregate on a TestStream (DirectRunner, streaming); events: ("wm", "MM:SS"),
    ("add", batch) or ("clock", seconds of processing time)."""
    stream = TestStream()
    for kind, value in events:
        if kind == "wm":
            stream = stream.advance_watermark_to(stamp(value))
        elif kind == "add":
            stream = stream.add_elements([value])
        else:
            stream = stream.advance_processing_time(Duration(seconds=value))
    stream = stream.advance_watermark_to_infinity()
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    root = tempfile.mkdtemp(prefix="window_test_")
    pipeline = beam.Pipeline(options=options)
    out, dlq = pipeline | stream | "agg" >> WindowAggregate(**kwargs)
    _collect({"out": out, "dlq": dlq}, root)
    result = pipeline.run()
    result.wait_until_finish()
    return _results(root, result, "agg")


def run_batch(batches: list[pa.RecordBatch], **kwargs: Any) -> tuple[pa.Table | None, list[dict], dict[str, int]]:
    """Runs WindowAggregate on bounded input with the default (batch) runner."""
    root = tempfile.mkdtemp(prefix="window_test_")
    pipeline = beam.Pipeline()
    out, dlq = pipeline | beam.Create(batches, reshuffle=False) | "agg" >> WindowAggregate(**kwargs)
    _collect({"out": out, "dlq": dlq}, root)
    result = pipeline.run()
    result.wait_until_finish()
    return _results(root, result, "agg")


def folded_rows(table: pa.Table, keys: list[str]) -> int:
    """Input rows folded into the results: the last accumulating pane's count per (window, group)."""
    final: dict[tuple[Any, ...], int] = {}
    for r in table.to_pylist():
        group = (r["window_start"], *(r[k] for k in keys))
        final[group] = max(final.get(group, 0), r["n"])
    return sum(final.values())


# ---------------------------------------------------------------------------------------------
# The acceptance test: a TestStream with late data against a hand-computed expectation.
# ---------------------------------------------------------------------------------------------


def test_acceptance_teststream_with_late_data_equals_hand_computed_expectation():
    """Fixed 1-minute windows, allowed_lateness 30s, a LATE pane per late bundle, accumulating.

    10:00:00  watermark
              a@00:05 (1), b@00:20 (2), a@00:50 (4), a@01:10 (8), ts null, ts "yesterday"
    10:01:00  watermark -> ON_TIME [10:00,10:01): a n=2 total=5, b n=1 total=2
              a@00:30 (16): late but within 30s   -> LATE [10:00,10:01): a n=3 total=21
    10:02:00  watermark -> [10:00,10:01) closed at 10:01:30; ON_TIME [10:01,10:02): a n=1 total=8
              b@00:40 (32): its window closed     -> DLQ (late record)
              b@01:45 (64): late within lateness  -> LATE [10:01,10:02): b n=1 total=64
    10:03:00  watermark -> [10:01,10:02) closed at 10:02:30
              a@01:50 (128): its window closed    -> DLQ (late record)
    """
    events = [
        ("wm", "00:00"),
        ("add", batch((at("00:05"), "a", 1), (at("00:20"), "b", 2), (at("00:50"), "a", 4), (at("01:10"), "a", 8),
                      (None, "a", 1000), ("yesterday", "b", 1000))),
        ("wm", "01:00"),
        ("add", batch((at("00:30"), "a", 16))),
        ("wm", "02:00"),
        ("add", batch((at("00:40"), "b", 32), (at("01:45"), "b", 64))),
        ("wm", "03:00"),
        ("add", batch((at("01:50"), "a", 128))),
    ]
    table, letters, _ = run_stream(events, event_time="ts", window={"type": "fixed", "size": "1m"},
                                   keys=["user"], aggregations=AGGS, allowed_lateness="30s")
    assert rows_of(table, "user", "n", "total", "pane") == [
        ("00:00", "01:00", "a", 2, 5, "ON_TIME"),
        ("00:00", "01:00", "a", 3, 21, "LATE"),
        ("00:00", "01:00", "b", 1, 2, "ON_TIME"),
        ("01:00", "02:00", "a", 1, 8, "ON_TIME"),
        ("01:00", "02:00", "b", 1, 64, "LATE"),
    ]
    assert table.schema.field("window_start").type == pa.timestamp("us", tz="UTC")
    late = sorted((d for d in letters if d["exception"] == "LateRecord"), key=lambda d: d["record"]["amount"])
    assert [d["record"]["amount"] for d in late] == [32, 128]
    assert all(d["error_type"] == "validation" and d["step"] == "agg" for d in late)
    assert late[0]["error"].startswith("late record: event time 2024-05-01T10:00:40Z of field 'ts' is behind "
                                       "the watermark; its window [2024-05-01T10:00:00Z, 2024-05-01T10:01:00Z) "
                                       "closed at 2024-05-01T10:01:30Z (window end + allowed_lateness 30s)")
    bad = sorted((d for d in letters if d["exception"] != "LateRecord"), key=lambda d: str(d["record"]["ts"]))
    assert [d["record"]["ts"] for d in bad] == [None, "yesterday"]
    assert "event time field 'ts' is missing" in bad[0]["error"]
    assert "value 'yesterday' is not an Arrow timestamp or date, an ISO 8601 string" in bad[1]["error"]
    # nothing silently dropped: records in = rows folded into results + late + other dead letters
    # (counted from the outputs: the bundle-based DirectRunner reports counters of one bundle only)
    records_in = 6 + 1 + 2 + 1
    assert folded_rows(table, ["user"]) + len(late) + len(bad) == records_in == 10


# ---------------------------------------------------------------------------------------------
# Streaming: sliding windows, sessions, triggers, accumulation.
# ---------------------------------------------------------------------------------------------


def test_streaming_sliding_windows_hand_computed():
    """2-minute windows every minute; each record counts in two windows; no keys (one row per window)."""
    events = [
        ("wm", "00:00"),
        ("add", batch((at("00:10"), "a", 1), (at("01:10"), "b", 2), (at("01:50"), "a", 4))),
        ("wm", "02:00"),  # closes [-01:00, 01:00) and [00:00, 02:00)
        ("add", batch((at("00:30"), "a", 8))),  # both its windows closed -> DLQ
        ("add", batch((at("02:30"), "a", 16))),
        ("add", batch((at("01:30"), "b", 32))),  # misses closed [00:00, 02:00), counts in open [01:00, 03:00)
    ]
    table, letters, _ = run_stream(events, event_time="ts", window={"type": "sliding", "size": "2m", "period": "1m"},
                                   aggregations=AGGS)
    assert rows_of(table, "n", "total", "pane") == [
        ("-01:00", "01:00", 1, 1, "ON_TIME"),
        ("00:00", "02:00", 3, 7, "ON_TIME"),
        ("01:00", "03:00", 4, 54, "ON_TIME"),
        ("02:00", "04:00", 1, 16, "ON_TIME"),
    ]
    assert [d["record"]["amount"] for d in letters] == [8]
    assert "its window [2024-05-01T10:00:00Z, 2024-05-01T10:02:00Z) closed" in letters[0]["error"]


def test_streaming_sessions_merge_per_key_only():
    """Sessions (gap 1m) merge per user: a's records bridge two sessions; b's stay apart from a's."""
    events = [
        ("wm", "00:00"),
        ("add", batch((at("00:00"), "a", 1), (at("00:30"), "a", 2), (at("02:00"), "a", 4),
                      (at("00:45"), "b", 8), (at("05:00"), "b", 16))),
        # a: [00:00, 01:30) and [02:00, 03:00); b: [00:45, 01:45) and [05:00, 06:00)
        ("add", batch((at("01:20"), "a", 32))),  # bridges a's sessions: [00:00, 03:00)
        ("wm", "04:00"),  # a's and b's first sessions fire and close (lateness 0)
        ("add", batch((at("00:50"), "b", 64))),  # [00:50, 01:50) closed at 01:50 -> DLQ
        ("add", batch((at("04:30"), "b", 128))),  # merges into b's open [05:00, 06:00) -> [04:30, 06:00)
    ]
    table, letters, _ = run_stream(events, event_time="ts", window={"type": "session", "gap": "1m"},
                                   keys=["user"], aggregations=AGGS)
    assert rows_of(table, "user", "n", "total", "pane") == [
        ("00:00", "03:00", "a", 4, 39, "ON_TIME"),
        ("00:45", "01:45", "b", 1, 8, "ON_TIME"),
        ("04:30", "06:00", "b", 2, 144, "ON_TIME"),
    ]
    assert [d["record"]["amount"] for d in letters] == [64]
    assert "its session window [2024-05-01T10:00:50Z, 2024-05-01T10:01:50Z) closed" in letters[0]["error"]
    assert folded_rows(table, ["user"]) + len(letters) == 8


def test_early_and_late_firings_on_processing_time():
    """early_every 10s: an EARLY pane 10s (processing time) after a pane's first record, then ON_TIME;
    late_firings 1m: a LATE pane a minute after the first late record.

    The DirectRunner's TestStream clock starts at the epoch; the step arms processing-time timers
    from the wall clock, so the test moves the clock past it.
    """
    jump = int(time.time()) + 3600
    events = [
        ("wm", "00:00"),
        ("add", batch((at("00:05"), "a", 1), (at("00:07"), "b", 2))),
        ("clock", jump),  # -> EARLY: a n=1, b n=1
        ("add", batch((at("00:10"), "a", 4))),  # its early timer is already due -> EARLY: a n=2 (only a changed)
        ("wm", "01:00"),  # -> ON_TIME: every group
        ("add", batch((at("00:20"), "a", 8))),  # late; its late timer is already due -> LATE: a n=3
    ]
    table, letters, _ = run_stream(events, event_time="ts", window={"type": "fixed", "size": "1m"}, keys="user",
                                   aggregations=AGGS, allowed_lateness="5m",
                                   triggers={"early_every": "10s", "late_firings": "1m"})
    assert not letters
    assert rows_of(table, "user", "n", "total", "pane") == [
        ("00:00", "01:00", "a", 1, 1, "EARLY"),
        ("00:00", "01:00", "a", 2, 5, "EARLY"),
        ("00:00", "01:00", "a", 2, 5, "ON_TIME"),
        ("00:00", "01:00", "a", 3, 13, "LATE"),
        ("00:00", "01:00", "b", 1, 2, "EARLY"),
        ("00:00", "01:00", "b", 1, 2, "ON_TIME"),
    ]


def test_discarding_panes_carry_only_new_records():
    events = [
        ("wm", "00:00"),
        ("add", batch((at("00:05"), "a", 1), (at("00:06"), "a", 2))),
        ("wm", "01:00"),
        ("add", batch((at("00:30"), "a", 4))),
        ("add", batch((at("00:40"), "a", 8))),
    ]
    table, _, _ = run_stream(events, event_time="ts", window={"type": "fixed", "size": "1m"}, keys=["user"],
                             aggregations=AGGS, allowed_lateness="5m", accumulation="discarding")
    assert rows_of(table, "n", "total", "pane") == [
        ("00:00", "01:00", 1, 4, "LATE"),
        ("00:00", "01:00", 1, 8, "LATE"),
        ("00:00", "01:00", 2, 3, "ON_TIME"),
    ]


def test_late_firings_false_reports_late_records_once_when_the_window_closes():
    events = [
        ("wm", "00:00"),
        ("add", batch((at("00:05"), "a", 1))),
        ("wm", "01:00"),
        ("add", batch((at("00:30"), "a", 2))),
        ("add", batch((at("00:40"), "a", 4))),
        ("wm", "01:30"),  # allowed_lateness 30s: the window closes, one LATE pane with both late records
        ("add", batch((at("00:50"), "a", 8))),
    ]
    table, letters, _ = run_stream(events, event_time="ts", window={"type": "fixed", "size": "60s"}, keys=["user"],
                                   aggregations=AGGS, allowed_lateness=30, triggers={"late_firings": False},
                                   pane_column="timing")
    assert rows_of(table, "n", "total", "timing") == [
        ("00:00", "01:00", 1, 1, "ON_TIME"),
        ("00:00", "01:00", 3, 7, "LATE"),
    ]
    assert [d["record"]["amount"] for d in letters] == [8]


# ---------------------------------------------------------------------------------------------
# Batch: the default runner, bounded input.
# ---------------------------------------------------------------------------------------------


BATCH_ROWS = [
    batch((at("00:05"), "a", 1), (at("00:50"), "b", 2), (at("01:10"), "a", 4)),
    batch((at("01:40"), "a", 8), (at("04:00"), "b", 16), (None, "b", 99), (at("00:55"), "b", 32)),
]


def test_batch_fixed_sliding_and_session_windows_hand_computed():
    fixed, letters, metrics = run_batch(BATCH_ROWS, event_time="ts", window={"type": "fixed", "size": "1m"},
                                        keys=["user"], aggregations=AGGS)
    assert rows_of(fixed, "user", "n", "total", "pane") == [
        ("00:00", "01:00", "a", 1, 1, "ON_TIME"),
        ("00:00", "01:00", "b", 2, 34, "ON_TIME"),
        ("01:00", "02:00", "a", 2, 12, "ON_TIME"),
        ("04:00", "05:00", "b", 1, 16, "ON_TIME"),
    ]
    assert [d["record"]["amount"] for d in letters] == [99] and letters[0]["error_type"] == "validation"
    assert metrics["records_in"] == 7 == metrics["records_out"] + metrics["records_grouped"] + \
        metrics["records_failed"]

    sliding, _, _ = run_batch(BATCH_ROWS, event_time="ts", window={"type": "sliding", "size": "2m", "period": "1m"},
                              aggregations=AGGS, pane_column=None)
    assert rows_of(sliding, "n", "total") == [
        ("-01:00", "01:00", 3, 35), ("00:00", "02:00", 5, 47), ("01:00", "03:00", 2, 12),
        ("03:00", "05:00", 1, 16), ("04:00", "06:00", 1, 16),
    ]
    assert "pane" not in sliding.column_names

    sessions, _, metrics = run_batch(BATCH_ROWS, event_time="ts", window={"type": "session", "gap": "40s"},
                                     keys=["user"], aggregations=AGGS)
    # a: 00:05 | 01:10, 01:40 (30s apart) ; b: 00:50, 00:55 | 04:00
    assert rows_of(sessions, "user", "n", "total") == [
        ("00:05", "00:45", "a", 1, 1), ("00:50", "01:35", "b", 2, 34),
        ("01:10", "02:20", "a", 2, 12), ("04:00", "04:40", "b", 1, 16),
    ]
    assert metrics["records_in"] == 7 == metrics["records_out"] + metrics["records_grouped"] + \
        metrics["records_failed"]


def test_stateful_engine_on_bounded_input_matches_the_native_engine():
    for window in ({"type": "fixed", "size": "1m"}, {"type": "session", "gap": "40s"}):
        common = {"event_time": "ts", "window": window, "keys": ["user"], "aggregations": AGGS}
        native, letters_n, _ = run_batch(BATCH_ROWS, **common)
        stateful, letters_s, metrics = run_batch(BATCH_ROWS, engine="stateful", **common)
        assert rows_of(native, "user", "n", "total", "pane") == rows_of(stateful, "user", "n", "total", "pane")
        assert len(letters_n) == len(letters_s) == 1
        assert metrics["records_in"] == 7 == metrics["records_grouped"] + metrics["records_failed"]
    with pytest.raises(ValueError, match="engine 'native' is for bounded input"):
        run_stream([("add", BATCH_ROWS[0])], engine="native", **common)


@pytest.mark.parametrize("window", [
    {"type": "fixed", "size": "5m"},
    {"type": "sliding", "size": "10m", "period": "5m"},
    {"type": "session", "gap": "90s"},
], ids=["fixed", "sliding", "session"])
def test_batch_runner_and_teststream_give_the_same_per_window_results(window):
    rng = np.random.default_rng(7)
    n = 1200
    seconds = rng.integers(0, 3600, n)
    table = pa.table({
        "ts": pa.array((int(BASE.timestamp()) + seconds) * 1000, pa.int64()),  # epoch milliseconds
        "user": pa.array(np.array(["ann", "bob", "cy", None], dtype=object)[rng.integers(0, 4, n)]),
        "amount": pa.array(rng.integers(0, 100, n), pa.int64()),
        "price": pa.array(np.round(rng.random(n) * 10, 2)),
    })
    aggs = {"n": {"op": "count_all"}, "total": {"op": "sum", "field": "amount"}, "lo": {"op": "min", "field": "price"},
            "hi": {"op": "max", "field": "amount"}, "mean": {"op": "avg", "field": "price"}}
    batches = table.to_batches(max_chunksize=300)
    common = {"event_time": "ts", "window": window, "keys": ["user"], "aggregations": aggs,
              "event_time_format": "epoch_ms", "pane_column": None}
    bounded, letters_b, _ = run_batch(batches, **common)
    events = [("wm", "00:00")] + [("add", b) for b in reversed(batches)]
    streamed, letters_s, _ = run_stream(events, **common)
    assert not letters_b and not letters_s
    columns = ("user", "n", "total", "lo", "hi")
    assert rows_of(bounded, *columns) == rows_of(streamed, *columns)
    np.testing.assert_allclose([r[-1] for r in rows_of(bounded, *columns, "mean")],
                               [r[-1] for r in rows_of(streamed, *columns, "mean")], rtol=1e-12)
    assert sum(bounded.column("n").to_pylist()) == n * (2 if window["type"] == "sliding" else 1)


# ---------------------------------------------------------------------------------------------
# Event times, window math, sessions (no pipeline).
# ---------------------------------------------------------------------------------------------


def test_event_times_from_every_supported_representation():
    base_us = int(BASE.timestamp()) * wt.US
    cases = [
        (pa.array([BASE], pa.timestamp("s", tz="UTC")), "auto", [base_us]),
        (pa.array([base_us * 1000 + 999], pa.timestamp("ns")), "auto", [base_us]),  # ns floor to µs
        (pa.array([BASE.date()], pa.date32()), "timestamp", [base_us - 10 * 3600 * wt.US]),
        (pa.array(["2024-05-01T10:00:00Z", "2024-05-01T12:00:00+02:00", "2024-05-01 10:00:00",
                   "2024-05-01T10:00:00.5"]), "auto", [base_us, base_us, base_us, base_us + 500_000]),
        (pa.array(["2024-05-01T10:00:00Z", "2024-05-01 10:00"]), "iso", [base_us, base_us]),
        (pa.array([1714557600, 1714557600000, 1714557600.25]), "auto", [base_us, base_us, base_us + 250_000]),
        (pa.array([1714557600000]), "epoch_ms", [base_us]),
        (pa.array([1714557600]), "epoch_s", [base_us]),
        (pa.array(["1714557600"]), "auto", [base_us]),
    ]
    for col, fmt, expected in cases:
        times = wt.event_times(col, "ts", fmt)
        assert times.problems is None, (col, times.problems)
        assert times.micros.tolist() == expected, (col, fmt)
    mixed = wt.event_times(pa.array(["2024-05-01T10:00:00Z", None, "soon", "9999999999999999999"]), "ts")
    assert mixed.bad.tolist() == [False, True, True, True]
    assert mixed.problems[1] == "event time field 'ts' is missing (null); every record needs one to be windowed"
    assert "value 'soon' is not" in mixed.problems[2]
    wrong = wt.event_times(pa.array([True]), "when")
    assert "event time field 'when' has type bool" in wrong.problems[0]
    assert wt.event_times(pa.array([1714557600]), "ts", "iso").bad.tolist() == [True]


def test_durations():
    assert wt.parse_duration("500ms", "x") == 500_000
    assert wt.parse_duration("5m", "x") == 300 * wt.US and wt.parse_duration(90, "x") == 90 * wt.US
    assert wt.parse_duration("1.5h", "x") == 5400 * wt.US and wt.parse_duration("1d", "x") == 86400 * wt.US
    assert wt.parse_duration(0, "x", allow_zero=True) == 0
    for bad in ("5 minutes", "-1s", True, None):
        with pytest.raises(ValueError):
            wt.parse_duration(bad, "window.size")
    with pytest.raises(ValueError, match="must be > 0"):
        wt.parse_duration("0s", "window.size")
    assert wt.format_duration(300 * wt.US) == "5m" and wt.format_duration(1500) == "1500us"


def test_window_slots_match_beams_window_fns():
    rng = np.random.default_rng(3)
    micros = rng.integers(-10**12, 10**12, 300)
    for size, period in ((60 * wt.US, 60 * wt.US), (120 * wt.US, 30 * wt.US), (100 * wt.US, 30 * wt.US)):
        fn = (beam_window.FixedWindows(Duration(micros=size)) if size == period
              else beam_window.SlidingWindows(Duration(micros=size), Duration(micros=period)))
        first, last = wt.window_slots(micros, size, period)
        for t, f, la in zip(micros.tolist(), first.tolist(), last.tolist(), strict=True):
            ours = {(k * period, k * period + size) for k in range(f, la + 1)}
            context = beam_window.WindowFn.AssignContext(Timestamp(micros=t))
            assert ours == {(w.start.micros, w.end.micros) for w in fn.assign(context)}


def test_sessionize_matches_beams_session_merging():
    rng = np.random.default_rng(5)
    gap = 50
    for _ in range(30):
        n = int(rng.integers(1, 40))
        group = rng.integers(0, 3, n)
        lo = rng.integers(0, 1000, n)
        hi = lo + rng.integers(0, 30, n)
        numbers = wt.sessionize(group, lo, hi, gap)
        for g in np.unique(group):
            expected: list[list[int]] = []  # Beam's Sessions.merge: sorted by start, merge while start < end
            for a, b in sorted(zip(lo[group == g].tolist(), (hi[group == g] + gap).tolist(), strict=True)):
                if expected and a < expected[-1][1]:
                    expected[-1][1] = max(expected[-1][1], b)
                else:
                    expected.append([a, b])
            ours: dict[int, list[int]] = {}
            for a, b, num in zip(lo[group == g], hi[group == g], numbers[group == g], strict=True):
                span = ours.setdefault(int(num), [int(a), int(b) + gap])
                span[0], span[1] = min(span[0], int(a)), max(span[1], int(b) + gap)
            assert sorted(ours.values()) == expected


# ---------------------------------------------------------------------------------------------
# Configuration, registry and a YAML template.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config, message", [
    ({"window": {"type": "tumbling", "size": "1m"}}, "window.type"),
    ({"window": {"type": "fixed"}}, "window.size: missing"),
    ({"window": {"type": "fixed", "size": "1m", "gap": "5m"}}, "gap: not used by fixed windows"),
    ({"window": {"type": "sliding", "size": "1m", "period": "5m"}}, "longer than size"),
    ({"window": {"type": "session", "gap": "soon"}}, "is not a duration"),
    ({"allowed_lateness": "-5s"}, "allowed_lateness"),
    ({"triggers": {"early_every": "10s", "late": True}}, "late"),
    ({"triggers": {"late_firings": "often"}}, "late_firings"),
    ({"aggregations": {"n": {"op": "median"}}}, "aggregations"),
    ({"keys": ["window_start"]}, "output columns of WindowAggregate"),
    ({"aggregations": {"pane": {"op": "count_all"}}}, "output columns of WindowAggregate"),
    ({"event_time_format": "unix"}, "event_time_format"),
    ({"accumulation": "both"}, "accumulation"),
])
def test_config_errors_name_the_field(config, message):
    doc = {"event_time": "ts", "window": {"type": "fixed", "size": "1m"}, "aggregations": AGGS, **config}
    with pytest.raises(ValueError, match=message):
        WindowAggregateConfig.model_validate(doc)


def test_registered_step_needs_state_and_timers_and_supports_streaming():
    entry = registry.lookup("WindowAggregate")
    assert entry is not None and entry.kind == "step"
    config = WindowAggregateConfig.model_validate({
        "event_time": "ts", "window": {"type": "session", "gap": "30m"}, "keys": "user", "aggregations": AGGS,
        "allowed_lateness": "1h", "triggers": {"early_every": "10s", "late_firings": "1m"}})
    assert entry.features(config) == frozenset({"state_and_timers"}) and entry.supports_streaming(config)
    assert entry.regroups_records(config)  # a shuffle / keyed state: no exactly-once source may feed it
    assert entry.features(config.model_copy(update={"engine": "native"})) == frozenset()
    step = entry.factory(config, registry.BuildContext("per_user", RunContext()))
    assert step.step_name() == "per_user"
    shown = step.display_data()
    assert shown["window"] == "session gap 30m" and shown["late_firings"] == "1m"


def test_yaml_template_runs_with_the_dlq_wired(tmp_path):
    """ReadFromJsonl -> WindowAggregate (daily counts of the packaged events) -> WriteToJsonl."""
    doc = {
        "name": "window_template_test",
        "sources": [{"name": "events", "type": "ReadFromJsonl",
                     "config": {"path": "{{ package_data }}/events.jsonl"}}],
        "steps": [{"name": "daily", "type": "WindowAggregate", "input": "events", "config": {
            "event_time": "ts", "window": {"type": "fixed", "size": "1d"}, "keys": ["type"],
            "aggregations": {"events": {"op": "count_all"}, "value_sum": {"op": "sum", "field": "value"}}}}],
        "sinks": [{"name": "out", "type": "WriteToJsonl", "input": "daily",
                   "config": {"path": str(tmp_path / "daily"), "num_shards": 1}}],
    }
    spec, configs = build_spec(doc, [], {"run_dir": str(tmp_path), "run_id": "t"})
    pipeline = beam.Pipeline()
    build_pipeline(pipeline, spec, configs, RunContext(pipeline="window_template_test", run_id="t",
                                                       run_dir=str(tmp_path)))
    result = pipeline.run()
    result.wait_until_finish()
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file() and "daily" in str(p))
    rows = [yaml.safe_load(line) for p in written for line in p.read_text().splitlines() if line.strip()]
    assert {"window_start", "window_end", "type", "events", "value_sum", "pane"} <= set(rows[0])
    counts = summarise(result)["daily"]
    assert counts["records_in"] == 593 and counts["records_failed"] == 0  # 7 lines of the file are not JSON
    assert sum(r["events"] for r in rows) == 593 == counts["records_out"] + counts["records_grouped"]
