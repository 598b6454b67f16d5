"""StreamingDeduplicate: TestStream on the streaming DirectRunner, the batch runner, a sequential reference."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import FixedWindows, TimestampedValue

from beam_etl import registry
from beam_etl.batch import ArrowBatchCoder
from beam_etl.ops.context import RunContext
from beam_etl.ops.metrics import summarise
from beam_etl.runners.direct import BatchDirectRunner
from beam_etl.transforms import stream_dedup
from beam_etl.transforms.stream_dedup import StreamingDeduplicate, StreamingDeduplicateConfig, key_bytes, parse_ttl
from tests.collect import read_json_elements, write_json_element

SECOND = 1_000_000


# ---------------------------------------------------------------------------------------------
# Helpers: run a pipeline, collect rows (with their element timestamps) and dead letters.
# ---------------------------------------------------------------------------------------------


def _write(element: Any, directory: str, ts: Any = beam.DoFn.TimestampParam) -> None:
    write_json_element(element, directory, ts)


class Outputs:
    """What one StreamingDeduplicate produced: rows (each with ``_ts``), dead letters, metrics."""

    def __init__(self, root: str, label: str, result: Any) -> None:
        elements = read_json_elements(os.path.join(root, label, "out"))
        self.rows = [{**r, "_ts": e["ts"]} for e in elements for r in e["rows"]]
        self.letters = read_json_elements(os.path.join(root, label, "dlq"))
        self.metrics = summarise(result).get(label, {})

    def ids(self, field: str = "row") -> list:
        return sorted(r[field] for r in self.rows)

    def ts_of(self, row: int) -> float:
        return next(r["_ts"] for r in self.rows if r["row"] == row)


def _attach(source: beam.PCollection, root: str, variants: dict[str, dict]) -> None:
    for label, kwargs in variants.items():
        out, dlq = source | label >> StreamingDeduplicate(**kwargs)
        for name, pcoll in (("out", out), ("dlq", dlq)):
            os.makedirs(os.path.join(root, label, name))
            pcoll | f"{label}_{name}" >> beam.Map(_write, os.path.join(root, label, name))


def run_stream(stream: TestStream, variants: dict[str, dict], root: str) -> dict[str, Outputs]:
    """Runs the variants on one TestStream (DirectRunner, streaming)."""
    options = PipelineOptions(["--runner=DirectRunner"])
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    _attach(p | stream, root, variants)
    result = p.run()
    result.wait_until_finish()
    return {label: Outputs(root, label, result) for label in variants}


def run_batch(timed: list[tuple[pa.RecordBatch, float]], variants: dict[str, dict], root: str,
              runner: Any = None, window: Any = None) -> dict[str, Outputs]:
    """Runs the variants on bounded input (element timestamps in seconds) on the batch runner."""
    p = beam.Pipeline(runner=runner) if runner is not None else beam.Pipeline()
    source = (p | beam.Create(timed, reshuffle=False)
              | beam.Map(lambda bt: TimestampedValue(bt[0], bt[1])).with_output_types(pa.RecordBatch))
    if window is not None:
        source = source | beam.WindowInto(window)
    _attach(source, root, variants)
    result = p.run()
    result.wait_until_finish()
    return {label: Outputs(root, label, result) for label in variants}


def stream_of(timed: Iterable[tuple[pa.RecordBatch, float]]) -> TestStream:
    """A TestStream that moves the watermark to each batch's timestamp before adding it."""
    stream = TestStream(coder=ArrowBatchCoder()).advance_watermark_to(0)
    for batch, ts in timed:
        stream = stream.advance_watermark_to(ts).add_elements([TimestampedValue(batch, ts)])
    return stream.advance_watermark_to_infinity()


def rb(**columns: list) -> pa.RecordBatch:
    return pa.record_batch(columns)


def assert_accounted(out: Outputs, records_in: int) -> None:
    m = out.metrics
    assert m["records_in"] == records_in
    assert m["records_out"] == len(out.rows)
    assert m["records_failed"] == len(out.letters)
    assert m["records_in"] == m["records_out"] + m["records_filtered"] + m["records_failed"]


# ---------------------------------------------------------------------------------------------
# Streaming: event-time TTL.
# ---------------------------------------------------------------------------------------------


def test_keep_first_event_time(tmp_path):
    stream = (TestStream(coder=ArrowBatchCoder()).advance_watermark_to(0)
              .add_elements([TimestampedValue(rb(id=[1, 1, 2], row=[0, 1, 2]), 1)])
              .add_elements([TimestampedValue(rb(id=[1, 3], row=[3, 4]), 5)])
              # id 2 at t=12: its TTL (1 + 10s) is over although the watermark has not passed it yet
              .add_elements([TimestampedValue(rb(id=[2], row=[5]), 12)])
              .advance_watermark_to(20)  # timers of id 1 (11) and id 3 (15) fire; id 2 now expires at 22
              .add_elements([TimestampedValue(rb(id=[1, 2], row=[6, 7]), 21)])
              .add_elements([TimestampedValue(rb(id=[1, 3], row=[8, 9]), 25)])
              .advance_watermark_to_infinity())
    out = run_stream(stream, {"first": {"keys": ["id"], "ttl": "10s"}}, str(tmp_path))["first"]
    # 1: 0 kept, 1 and 3 within TTL; 2: 2 kept, 5 new first (t=12 >= 11), 7 within 22;
    # 3: 4 kept, 9 new first (25 >= 15); 1 again: 6 after expiry, 8 within 31
    assert out.ids() == [0, 2, 4, 5, 6, 9]
    assert not out.letters
    assert {r["row"]: r["_ts"] for r in out.rows} == {0: 1, 2: 1, 4: 5, 5: 12, 6: 21, 9: 25}


def test_keep_last_event_time(tmp_path):
    stream = (TestStream(coder=ArrowBatchCoder()).advance_watermark_to(0)
              .add_elements([TimestampedValue(rb(id=[1, 2, 1], row=[0, 1, 2]), 1)])
              .add_elements([TimestampedValue(rb(id=[1], row=[3]), 5)])
              .advance_watermark_to(12)  # groups of 1 and 2 (opened at 1) close at 11
              .add_elements([TimestampedValue(rb(id=[1], row=[4]), 13)])
              # t=30 is past the group's TTL (13 + 10): the group closes on arrival, 5 opens a new one
              .add_elements([TimestampedValue(rb(id=[1], row=[5]), 30)])
              .advance_watermark_to_infinity())
    out = run_stream(stream, {"last": {"keys": ["id"], "ttl": "10s", "keep": "last"}}, str(tmp_path))["last"]
    assert out.ids() == [1, 3, 4, 5]
    # a group's record is emitted at the group's expiry: first record's time + ttl
    assert (out.ts_of(3), out.ts_of(1), out.ts_of(4), out.ts_of(5)) == (11, 11, 23, 40)


def test_event_time_field_within_one_batch(tmp_path):
    """Per-row event times: a batch spanning more than the TTL re-emits inside the batch."""
    base = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)

    def at(seconds: list[int]) -> list[dt.datetime]:
        return [base + dt.timedelta(seconds=s) for s in seconds]

    first = rb(id=["a", "a", "a", "a", "a", "b"], at=at([12, 0, 5, 12, 25, 3]), row=[0, 1, 2, 3, 4, 5])
    second = rb(id=["a", "a", "b"], at=at([30, 36, 14]), row=[6, 7, 8])
    e0 = base.timestamp()
    timed = [(first, e0), (second, e0 + 30)]
    variants = {
        "first": {"keys": "id", "ttl": "10s", "event_time": "at"},
        "last": {"keys": "id", "ttl": "10s", "event_time": "at", "keep": "last"},
    }
    outs = run_stream(stream_of(timed), variants, str(tmp_path / "s"))
    # a: 0s kept, 5s dup, 12s kept (the first of the two 12s rows), 25s kept, 30s dup, 36s kept
    # b: 3s kept, 14s kept (>= 13)
    assert outs["first"].ids() == [0, 1, 4, 5, 7, 8]
    # groups of a: [0s, 10s) -> 5s; [12s, 22s) -> the later 12s row (3); [25s, 35s) -> 30s; [36s, ..) -> 36s
    assert outs["last"].ids() == [2, 3, 5, 6, 7, 8]
    batch = run_batch(timed, variants, str(tmp_path / "b"))
    assert batch["first"].ids() == outs["first"].ids()
    assert batch["last"].ids() == outs["last"].ids()


# ---------------------------------------------------------------------------------------------
# Streaming: processing-time TTL.
# ---------------------------------------------------------------------------------------------


def test_processing_time_ttl(tmp_path):
    # The TestStream clock starts at 0 while the step reads the worker clock (Python timers cannot
    # be set relative to the runner's clock), so the stream first jumps to "now"; the step sees the
    # first records within 30 minutes of that. Once the test clock is past the TTL, any timer set
    # later fires at once, so the stream ends there.
    now = int(time.time())
    stream = (TestStream(coder=ArrowBatchCoder()).advance_watermark_to(0)
              .advance_processing_time(now)
              .add_elements([TimestampedValue(rb(id=[1, 2, 1], row=[0, 1, 2]), 1)])
              .advance_processing_time(1800)  # half the TTL
              .add_elements([TimestampedValue(rb(id=[1], row=[3]), 2)])
              .advance_processing_time(3600)  # past the TTL: the timers fire
              .add_elements([TimestampedValue(rb(id=[1, 2], row=[4, 5]), 3)])
              .advance_watermark_to_infinity())
    outs = run_stream(stream, {
        "first": {"keys": ["id"], "ttl": "1h", "time_domain": "processing"},
        "last": {"keys": ["id"], "ttl": "1h", "time_domain": "processing", "keep": "last"},
    }, str(tmp_path))
    assert outs["first"].ids() == [0, 1, 4, 5]
    # last: groups {0, 2, 3} -> 3 and {1} -> 1 close on the timer; {4} and {5} later
    assert outs["last"].ids() == [1, 3, 4, 5]
    # processing time: records keep element timestamps (a joined batch takes its earliest), never the clock's
    assert {r["_ts"] for r in outs["last"].rows} <= {1, 2, 3}


def test_processing_time_on_bounded_input(tmp_path):
    """Batch: the whole input falls inside the TTL; keep last is emitted at the end of input."""
    timed = [(rb(id=[1, 2, 1], row=[0, 1, 2]), 1), (rb(id=[1, 3], row=[3, 4]), 2)]
    variants = {
        "first": {"keys": ["id"], "ttl": "1h", "time_domain": "processing"},
        "last": {"keys": ["id"], "ttl": "1h", "time_domain": "processing", "keep": "last"},
    }
    # the project's batch runner (FnApiRunner) and Beam's DirectRunner (no processing-time timers
    # fire at the end of a bounded run there: the end-of-window flush emits)
    for name, runner in (("fnapi", BatchDirectRunner()), ("direct", None)):
        outs = run_batch(timed, variants, str(tmp_path / name), runner=runner)
        assert outs["first"].ids() == [0, 1, 4]
        assert outs["last"].ids() == [1, 3, 4]
    assert_accounted(run_batch(timed, variants, str(tmp_path / "m"), runner=BatchDirectRunner())["last"], 5)


# ---------------------------------------------------------------------------------------------
# Null keys, dead letters, accounting.
# ---------------------------------------------------------------------------------------------


def test_null_keys_pass_through(tmp_path):
    batch = rb(id=[1, None, None, 1, None, 2], name=["x", None, None, "x", "y", None], row=list(range(6)))
    timed = [(batch, 1), (rb(id=[None, 1], name=[None, "x"], row=[6, 7]), 2)]
    variants = {"first": {"keys": ["id", "name"], "ttl": "1m"},
                "last": {"keys": ["id", "name"], "ttl": "1m", "keep": "last"}}
    for outs in (run_stream(stream_of(timed), variants, str(tmp_path / "s")),
                 run_batch(timed, variants, str(tmp_path / "b"))):
        # rows 1, 2 and 6 have no key value: they come out unchanged; (None, "y") and (2, None) are keys
        assert outs["first"].ids() == [0, 1, 2, 4, 5, 6]
        assert outs["last"].ids() == [1, 2, 4, 5, 6, 7]
        assert sorted(r["row"] for r in outs["first"].rows if r["id"] is None and r["name"] is None) == [1, 2, 6]
    assert_accounted(outs["first"], 8)
    assert_accounted(outs["last"], 8)


def test_dead_letters_and_accounting(tmp_path):
    good = rb(id=["a", " A", "b", "c", "c"], at=["2024-01-01T00:00:00Z", "2024-01-01T00:00:05Z", None,
                                                 "not a time", "2024-01-01 00:00:01"], row=[0, 1, 2, 3, 4])
    no_at = rb(id=["a"], row=[5])  # the event_time field is missing: a schema error
    timed = [(good, 1), (no_at, 2)]
    variants = {"d": {"keys": ["id"], "ttl": "1m", "event_time": "at", "trim": True, "case_fold": True}}
    out = run_batch(timed, variants, str(tmp_path))["d"]
    assert out.ids() == [0, 4]  # " A" folds to "a" and lies within the TTL
    by_row = {letter["record"]["row"]: letter for letter in out.letters}
    assert sorted(by_row) == [2, 3, 5]
    assert by_row[2]["error_type"] == "validation" and "null" in by_row[2]["error"]
    assert by_row[3]["error_type"] == "type" and "not a time" in by_row[3]["error"]
    assert by_row[5]["error_type"] == "validation" and by_row[5]["exception"] == "KeyError"
    assert "'at' is missing" in by_row[5]["error"]
    assert all(letter["step"] == "d" and letter["pipeline"] == "test" for letter in out.letters)
    assert "__beam_etl_sd_key" not in by_row[2]["record"]
    assert_accounted(out, 6)


def test_unkeyable_values_go_to_the_dlq(tmp_path, monkeypatch):
    real = stream_dedup.key_bytes

    def fussy(views, n):
        if "bad" in views[0].to_pylist():
            raise ValueError("cannot key 'bad'")
        return real(views, n)

    monkeypatch.setattr(stream_dedup, "key_bytes", fussy)
    out = run_batch([(rb(id=["a", "bad", "a"], row=[0, 1, 2]), 1)],
                    {"d": {"keys": "id", "ttl": "1m"}}, str(tmp_path), runner=BatchDirectRunner())["d"]
    assert out.ids() == [0]
    assert [(x["record"]["row"], x["error_type"]) for x in out.letters] == [(1, "validation")]
    assert_accounted(out, 3)


# ---------------------------------------------------------------------------------------------
# The same transform on bounded input.
# ---------------------------------------------------------------------------------------------


def reference(timed: list[tuple[pa.RecordBatch, float]], ttl_s: int, keep: str) -> list[int]:
    """The TTL rules, sequentially: batches in order, rows of a batch by (event time, row)."""
    groups: dict[Any, list] = {}  # key -> [deadline, best time, best row]
    kept: list[int] = []
    for batch, _ in timed:
        rows = sorted(batch.to_pylist(), key=lambda r: (r["t"], r["row"]))
        for r in rows:
            g = groups.get(r["id"])
            if g is not None and r["t"] >= g[0]:
                if keep == "last":
                    kept.append(g[2])
                g = None
            if g is None:
                groups[r["id"]] = [r["t"] + ttl_s, r["t"], r["row"]]
                if keep == "first":
                    kept.append(r["row"])
            elif keep == "last" and r["t"] >= g[1]:
                g[1:] = [r["t"], r["row"]]
    if keep == "last":
        kept.extend(g[2] for g in groups.values())
    return sorted(kept)


def random_batches(seed: int = 5, count: int = 12) -> list[tuple[pa.RecordBatch, float]]:
    """Batches 7s apart, rows up to 6s later than their batch, 6 keys, repeated (key, time) pairs."""
    rng = np.random.default_rng(seed)
    out, row = [], 0
    for i in range(count):
        n = int(rng.integers(1, 25))
        base = 1000 + 7 * i
        t = base + rng.integers(0, 7, n)
        out.append((rb(id=rng.integers(0, 6, n).tolist(), t=t.tolist(), row=list(range(row, row + n))), base))
        row += n
    return out


def test_batch_mode_equals_stream_and_reference(tmp_path):
    timed = random_batches()
    total = sum(b.num_rows for b, _ in timed)
    variants = {
        "first": {"keys": ["id"], "ttl": "10s", "event_time": "t"},
        "last": {"keys": ["id"], "ttl": "10s", "event_time": "t", "keep": "last"},
        "first_ts": {"keys": ["id"], "ttl": "15s"},  # element timestamps
    }
    stream = run_stream(stream_of(timed), variants, str(tmp_path / "s"))
    batch = run_batch(timed, variants, str(tmp_path / "b"))
    for keep in ("first", "last"):
        expected = reference(timed, 10, keep)
        assert stream[keep].ids() == expected, keep
        assert batch[keep].ids() == expected, keep
        assert_accounted(batch[keep], total)
    by_ts = [(b.set_column(1, "t", pa.array([ts] * b.num_rows)), ts) for b, ts in timed]
    assert stream["first_ts"].ids() == batch["first_ts"].ids() == reference(by_ts, 15, "first")
    assert 0 < len(batch["first"].rows) < total  # the data has both duplicates and re-emissions


def test_windows_are_deduplicated_separately(tmp_path):
    timed = [(rb(id=[1, 1, 2], row=[0, 1, 2]), 5), (rb(id=[1, 3], row=[3, 4]), 15), (rb(id=[1], row=[5]), 7)]
    outs = run_batch(timed, {"first": {"keys": "id", "ttl": "1h"}, "last": {"keys": "id", "ttl": "1h", "keep": "last"}},
                     str(tmp_path), window=FixedWindows(10))
    assert outs["first"].ids() == [0, 2, 3, 4]  # [0, 10): 1, 2; [10, 20): 1, 3
    assert outs["last"].ids() == [2, 3, 4, 5]
    assert outs["last"].ts_of(5) == pytest.approx(10, abs=2e-3)  # the end of its window (ms precision)


# ---------------------------------------------------------------------------------------------
# Keys, config, registry.
# ---------------------------------------------------------------------------------------------


def test_key_bytes_are_exact():
    views = [pa.array(["a", "a", "a1", None, "", None]), pa.array([1, 1, None, 1, None, None])]
    keys = key_bytes(views, 6).to_pylist()
    assert keys[0] == keys[1]
    assert len(set(keys[:5])) == 4  # ("a", 1) twice, ("a1", null), (null, 1), ("", null)
    assert keys[5] is None  # every key field null: no key
    # field boundaries cannot shift: ("ab", "c") != ("a", "bc"); types are part of the key
    assert key_bytes([pa.array(["ab"]), pa.array(["c"])], 1) != key_bytes([pa.array(["a"]), pa.array(["bc"])], 1)
    assert key_bytes([pa.array(["1"])], 1) != key_bytes([pa.array([1])], 1)
    assert key_bytes([pa.array([1], pa.int8())], 1) == key_bytes([pa.array([1], pa.int64())], 1)
    assert key_bytes([pa.array([0.0])], 1) == key_bytes([pa.array([-0.0])], 1)


def test_parse_ttl():
    assert parse_ttl("10m") == 600 * SECOND
    assert parse_ttl("1h30m") == 5400 * SECOND
    assert parse_ttl(" 500ms ") == 500_000
    assert parse_ttl("1.5s") == 1_500_000
    assert parse_ttl("2d") == 2 * 86400 * SECOND
    for bad in ("10", "ten minutes", "", "0s", "10x", 600, None, "m"):
        with pytest.raises(ValueError, match="ttl"):
            parse_ttl(bad)


@pytest.mark.parametrize("kwargs, field", [
    ({"ttl": "10"}, "ttl"),
    ({"keys": []}, "keys"),
    ({"keys": ["id", "id"]}, "keys"),
    ({"keys": [""]}, "keys"),
    ({"keep": "best_quality"}, "keep"),
    ({"time_domain": "ingestion"}, "time_domain"),
    ({"time_domain": "processing", "event_time": "ts"}, "event_time"),
    ({"colour": "red"}, "colour"),
])
def test_validation_at_construction(kwargs, field):
    config = {"keys": ["id"], "ttl": "10m", **kwargs}
    with pytest.raises(ValueError, match=field):
        StreamingDeduplicateConfig(**config)
    if field != "colour":
        keys = config.pop("keys")
        with pytest.raises(ValueError, match=field):
            StreamingDeduplicate(keys, **config)


def test_registry_entry(run_context):
    entry = registry.lookup("StreamingDeduplicate")
    assert entry is not None and entry.kind == "step" and entry.config_model is StreamingDeduplicateConfig
    config = StreamingDeduplicateConfig(keys="id", ttl="10m", keep="last")
    assert entry.features(config) == frozenset({"state_and_timers"})
    assert entry.supports_streaming(config)
    assert entry.regroups_records(config)  # keyed state: an exactly-once source needs durable checkpoints
    transform = entry.factory(config, registry.BuildContext(step_name="dedup_events",
                                                            run=RunContext(pipeline="t", run_id="r")))
    assert isinstance(transform, StreamingDeduplicate) and transform.step_name() == "dedup_events"
    assert transform.display_data()["ttl_seconds"] == 600
