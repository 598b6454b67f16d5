"""ExactDeduplicator: pandas reference on seeded random data, edge cases, metrics, validation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_etl import hashing, registry
from beam_etl.ops.context import RunContext
from beam_etl.ops.metrics import summarise
from beam_etl.transforms import dedup
from beam_etl.transforms.dedup import ExactDeduplicator, ExactDeduplicatorConfig
from tests.collect import read_elements, write_element

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def random_table(n: int = 6000, seed: int = 7) -> pa.Table:
    """Rows with ~30% repeated ids (repeats differ in other columns), nulls, strings, a row number."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, int(n * 0.7), n)
    names = np.array(["Ada", " ada ", "ADA", "Linus", "linus  torvalds", "Grace", None], dtype=object)
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "name": pa.array(names[rng.integers(0, len(names), n)], pa.string()),
        "amount": pa.array(np.round(rng.uniform(0, 100, n), 2), mask=rng.random(n) < 0.1),
        "ts": pa.array(rng.integers(0, 50, n), pa.int64()),  # many ties
        "city": pa.array(np.array(["Paris", "Oslo", None], dtype=object)[rng.integers(0, 3, n)], pa.string()),
        "row": pa.array(np.arange(n), pa.int64()),
    })


def batches_of(table: pa.Table, sizes: list[int]) -> list[pa.RecordBatch]:
    """Splits a table into batches of the given sizes, cycling through them (varied batch sizes)."""
    out, start, i = [], 0, 0
    while start < table.num_rows:
        size = sizes[i % len(sizes)]
        out.extend(table.slice(start, size).combine_chunks().to_batches())
        start += size
        i += 1
    return out


def rows_of(column: str):
    """Flattens output batches to the values of one column."""
    return lambda b: b.column(column).to_pylist()


_write = write_element
_read = read_elements


def run_many(batches: list[pa.RecordBatch], variants: dict[str, dict]) -> tuple[dict[str, pd.DataFrame], object]:
    """Runs several dedup variants over the same input in one pipeline; returns outputs + result."""
    root = tempfile.mkdtemp(prefix="dedup_test_")
    p = TestPipeline()
    source = p | beam.Create(batches, reshuffle=False)
    for label, kwargs in variants.items():
        kept, dlq = source | label >> ExactDeduplicator(**kwargs)
        for name, pcoll in (("out", kept), ("dlq", dlq)):
            os.makedirs(os.path.join(root, label, name))
            pcoll | f"{label}_{name}" >> beam.Map(_write, os.path.join(root, label, name))
    result = p.run()
    result.wait_until_finish()
    frames = {}
    for label in variants:
        table, _ = _read(os.path.join(root, label, "out"))
        _, letters = _read(os.path.join(root, label, "dlq"))
        assert not letters, letters[:1]
        frames[label] = table.to_pandas() if table is not None else pd.DataFrame()
    shutil.rmtree(root, ignore_errors=True)
    return frames, result


def expected_rows(df: pd.DataFrame, keys: list[str], keep: str, order_by: str | None = None) -> list[int]:
    if order_by is None:
        return sorted(df.drop_duplicates(keys, keep=keep)["row"])
    ordered = df.sort_values([order_by, "row"], kind="stable")
    return sorted(ordered.drop_duplicates(keys, keep=keep)["row"])


def test_randomised_against_pandas():
    table = random_table()
    df = table.to_pandas()
    batches = batches_of(table, [700, 64, 1500, 1])  # small batches are combined before the shuffle
    frames, result = run_many(batches, {
        "first": {"keys": ["id"]},
        "last": {"keys": ["id"], "keep": "last"},
        "first_by_ts": {"keys": ["id"], "order_by": "ts"},
        "last_by_ts": {"keys": ["id"], "keep": "last", "order_by": "ts", "partitions": 3},
        "two_keys": {"keys": ["id", "city"], "partitions": 1, "shuffle_compression": "lz4"},
        "no_compression": {"keys": ["id"], "shuffle_compression": "none", "partitions": 16},
    })
    assert sorted(frames["first"]["row"]) == expected_rows(df, ["id"], "first")
    assert sorted(frames["last"]["row"]) == expected_rows(df, ["id"], "last")
    assert sorted(frames["first_by_ts"]["row"]) == expected_rows(df, ["id"], "first", "ts")
    assert sorted(frames["last_by_ts"]["row"]) == expected_rows(df, ["id"], "last", "ts")
    # null city == null city, like pandas
    assert sorted(frames["two_keys"]["row"]) == expected_rows(df, ["id", "city"], "first")
    assert sorted(frames["no_compression"]["row"]) == expected_rows(df, ["id"], "first")
    # kept rows are unchanged, schema included
    kept = frames["first"].sort_values("row").reset_index(drop=True)
    ref = df.iloc[expected_rows(df, ["id"], "first")].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept[ref.columns], ref)
    # count identity: in = out + filtered + failed, per step
    metrics = summarise(result)
    for label, frame in frames.items():
        m = metrics[label]
        assert m["records_in"] == table.num_rows
        assert m["records_out"] == len(frame)
        assert m["records_in"] == m["records_out"] + m["records_filtered"] + m["records_failed"]
        assert m["records_failed"] == 0


def test_normalisation_applies_to_the_key_only():
    table = pa.table({
        "name": ["  Alice   Smith ", "alice smith", "ALICE SMITH", "Alice\tSmith", "Bob", " bob", None],
        "row": list(range(7)),
    })
    frames, _ = run_many(table.to_batches(), {
        "raw": {"keys": ["name"]},
        "trim": {"keys": ["name"], "trim": True},
        "fold": {"keys": ["name"], "trim": True, "case_fold": True},
        "all": {"keys": ["name"], "case_fold": True, "collapse_whitespace": True},
    })
    assert sorted(frames["raw"]["row"]) == [0, 1, 2, 3, 4, 5, 6]
    assert sorted(frames["trim"]["row"]) == [0, 1, 2, 3, 4, 5, 6]  # " bob" -> "bob" != "Bob"
    assert sorted(frames["fold"]["row"]) == [0, 1, 3, 4, 6]  # "alice smith" == "ALICE SMITH"; bob == " bob"
    assert sorted(frames["all"]["row"]) == [0, 4, 6]
    # the kept record keeps its original value
    assert frames["all"].set_index("row").loc[0, "name"] == "  Alice   Smith "


def test_whole_record_dedup_and_null_keys():
    a = pa.record_batch({"k": [1, 1, None, None, 2], "v": ["x", "x", None, None, "y"]})
    # same records, columns in another order, in a second batch
    b = pa.record_batch({"v": ["x", "z", None], "k": [1, 1, None]})
    frames, result = run_many([a, b], {
        "whole": {},
        "by_k": {"keys": ["k"]},
        "by_k_v": {"keys": ["k", "v"]},
    })
    whole = sorted(((None if pd.isna(k) else int(k), v) for k, v in frames["whole"][["k", "v"]].itertuples(
        index=False, name=None)), key=repr)
    # (1,"x") once, (None,None) rows are all-null records: never deduplicated (3 of them)
    assert whole == sorted([(1, "x"), (2, "y"), (1, "z")] + [(None, None)] * 3, key=repr)
    # rows whose key fields are all null pass through: 3 null-k rows + one per k value
    assert len(frames["by_k"]) == 3 + 2
    assert frames["by_k"]["k"].isna().sum() == 3
    # a partially null key is a key: (1,x), (1,z), (2,y) and the all-null (None,None) rows (3)
    assert len(frames["by_k_v"]) == 3 + 3
    m = summarise(result)["whole"]
    assert (m["records_in"], m["records_out"], m["records_filtered"]) == (8, 6, 2)


def test_best_quality():
    table = pa.table({
        "id": [1, 1, 1, 2, 2, 3, 3],
        "a": [None, "x", "x", "p", "p", "z", None],
        "b": [None, None, "y", "q", "q", None, None],
        "ts": [5, 4, 9, 2, 1, None, 7],
        "row": list(range(7)),
    })
    scored = table.append_column("_quality_score", pa.array([0.9, 0.1, 0.5, None, 0.2, 0.3, 0.3]))
    frames, _ = run_many(table.to_batches(max_chunksize=3), {
        "complete": {"keys": ["id"], "keep": "best_quality"},
        "complete_ts": {"keys": ["id"], "keep": "best_quality", "order_by": "ts"},
    })
    # id 1: row 2 has the most non-null fields; id 2: tie (5 fields) -> arrival (row 3), or the
    # smallest ts (row 4); id 3: tie (3 fields) -> arrival (row 5); with order_by the null ts loses
    assert sorted(frames["complete"]["row"]) == [2, 3, 5]
    assert sorted(frames["complete_ts"]["row"]) == [2, 4, 6]
    frames, _ = run_many(scored.to_batches(max_chunksize=2), {
        "score": {"keys": ["id"], "keep": "best_quality"},
        "score_ts": {"keys": ["id"], "keep": "best_quality", "order_by": "ts"},
    })
    # _quality_score wins over completeness; a null score loses; ties -> order_by, then arrival
    assert sorted(frames["score"]["row"]) == [0, 4, 5]
    assert sorted(frames["score_ts"]["row"]) == [0, 4, 6]
    assert "_quality_score" in frames["score"].columns
    assert not [c for c in frames["score"].columns if c.startswith("__beam_etl")]


def test_hash_collisions_never_merge_different_keys(monkeypatch):
    table = random_table(2000, seed=3)
    df = table.to_pandas()
    # every row hashes alike: one partition, every pair of rows is a hash collision
    monkeypatch.setattr(dedup, "hash_columns", lambda cols, n: np.zeros(n, dtype=np.uint64))
    frames, _ = run_many(batches_of(table, [300]), {
        "first": {"keys": ["id"]},
        "fold": {"keys": ["name"], "trim": True, "case_fold": True, "keep": "last"},
    })
    assert sorted(frames["first"]["row"]) == expected_rows(df, ["id"], "first")
    folded = df.assign(name=df["name"].str.strip().str.lower())
    nulls = folded[folded["name"].isna()]  # rows without a key value are never deduplicated
    expected = expected_rows(folded.dropna(subset=["name"]), ["name"], "last") + list(nulls["row"])
    assert sorted(frames["fold"]["row"]) == sorted(expected)


def test_select_winners_compares_values_not_hashes():
    views = [pa.array(["a", "b", "a", "c", "b", None, None])]
    for hashes in (np.zeros(7, np.uint64), np.array([1, 1, 1, 2, 2, 3, 3], np.uint64), None):
        assert dedup.select_winners(views, 7, "first", hashes=hashes).tolist() == [0, 1, 3, 5]
        assert dedup.select_winners(views, 7, "last", hashes=hashes).tolist() == [2, 3, 4, 6]
    order = pa.array([3, 1, 2, None, 5, 1, 0])
    assert dedup.select_winners(views, 7, "first", order=order).tolist() == [1, 2, 3, 6]
    assert dedup.select_winners(views, 7, "last", order=order, hashes=np.zeros(7, np.uint64)).tolist() == [0, 3, 4, 5]


def test_hash_is_stable_across_processes_and_types():
    values = ["", "a", "a\x00", "héllo", None, "x" * 1000]
    here = hashing.hash_array(pa.array(values)).tolist()
    code = ("import pyarrow as pa; from beam_etl.hashing import hash_array; "
            f"print(hash_array(pa.array({values!r})).tolist())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "12345"}, cwd=ROOT).stdout
    assert json.loads(other) == here
    assert len(set(here)) == len(values)
    assert hashing.hash_array(pa.array(values, pa.large_string())).tolist() == here
    assert hashing.hash_array(pa.array(values).dictionary_encode()).tolist() == here
    assert hashing.hash_array(pa.array(values).slice(2)).tolist() == here[2:]
    ints = hashing.hash_array(pa.array([1, 2, None], pa.int32())).tolist()
    assert hashing.hash_array(pa.array([1, 2, None], pa.int64())).tolist() == ints
    assert hashing.hash_array(pa.array([0.0, -0.0])).tolist()[0] == hashing.hash_array(pa.array([-0.0])).tolist()[0]


def test_shuffle_payload_round_trip():
    rng = np.random.default_rng(0)
    n = 3000
    batch = pa.record_batch({
        "i": pa.array(rng.integers(-5, 300, n)),
        "big": pa.array(rng.integers(-2**62, 2**62, n)),
        "u": pa.array(rng.integers(0, 2**40, n).astype(np.uint64)),
        "s": pa.array([None if i % 7 == 0 else "x" * (i % 5) for i in range(n)]),
        "low": pa.array(np.array(["a", "b", None], dtype=object)[rng.integers(0, 3, n)]),
        "ls": pa.array([f"v{i}" for i in range(n)], pa.large_string()),
        "bin": pa.array([bytes([i % 256]) * (i % 3) if i % 11 else None for i in range(n)]),
        "ts": pa.array(rng.integers(1_600_000_000, 1_700_000_000, n), pa.timestamp("s", tz="UTC")),
        "d": pa.array(rng.integers(0, 20000, n).astype(np.int32), pa.date32()),
        "f": pa.array(rng.random(n)),
        "dict": pa.array(["p", "q"] * (n // 2)).dictionary_encode(),
        "nested": pa.array([[1], None, []] * (n // 3)),
        "nulls": pa.nulls(n, pa.int32()),
    }).slice(1)
    batch = batch.replace_schema_metadata({"source": "x.csv"})
    for compression in dedup.COMPRESSION_OPTIONS:
        encoder = dedup.ShuffleEncoder(batch, compression)
        for start, length in [(0, batch.num_rows), (17, 400), (batch.num_rows - 1, 1), (5, 0)]:
            got = dedup.decode_payload(encoder.payload(start, length))
            want = batch.slice(start, length)
            assert got.schema.equals(want.schema, check_metadata=True)
            assert got.equals(want)
            assert dedup.decode_payload(encoder.payload(start, length), ["s", "ts"]).equals(want.select(["s", "ts"]))
    assert len(dedup.encode_payload(batch, "zstd")) < batch.nbytes / 2


def test_empty_input():
    p = TestPipeline()
    kept, dlq = p | beam.Create([], reshuffle=False).with_output_types(pa.RecordBatch) | ExactDeduplicator(["id"])
    assert_that(kept, equal_to([]), label="kept")
    assert_that(dlq, equal_to([]), label="dlq")
    p.run().wait_until_finish()


@pytest.mark.parametrize("kwargs, field", [
    ({"keep": "middle"}, "keep"),
    ({"keys": []}, "keys"),
    ({"keys": ["id", "id"]}, "keys"),
    ({"keys": [""]}, "keys"),
    ({"partitions": 0}, "partitions"),
    ({"shuffle_compression": "gzip"}, "shuffle_compression"),
    ({"trim": "yes"}, "trim"),
    ({"order_by": ""}, "order_by"),
])
def test_validation_at_construction(kwargs, field):
    with pytest.raises(ValueError, match=field) as info:
        ExactDeduplicator(**kwargs)
    assert "allowed" in str(info.value) or "list" in str(info.value) or "least one" in str(info.value)


def test_order_by_must_be_orderable():
    batch = pa.record_batch({"id": [1, 1], "tags": pa.array([[1], [2]])})
    with pytest.raises(Exception, match="tags"):
        run_many([batch], {"d": {"keys": ["id"], "order_by": "tags"}})


def test_registry_and_config(run_context):
    entry = registry.lookup("ExactDeduplicator")
    assert entry is not None and entry.kind == "step" and entry.config_model is ExactDeduplicatorConfig
    config = ExactDeduplicatorConfig(keys="id", keep="last", trim=True)
    transform = entry.factory(config, registry.BuildContext(step_name="dedup_orders",
                                                            run=RunContext(pipeline="t", run_id="r")))
    assert isinstance(transform, ExactDeduplicator) and transform.step_name() == "dedup_orders"
    with pytest.raises(ValueError, match="keep"):
        ExactDeduplicatorConfig(keep="middle")
    with pytest.raises(ValueError, match="unknown|extra"):
        ExactDeduplicatorConfig(keys=["id"], colour="red")
    p = TestPipeline()
    kept, _ = p | beam.Create([pa.record_batch({"id": [1, 1, 2]})], reshuffle=False) | "x" >> transform
    assert_that(kept | beam.FlatMap(rows_of("id")), equal_to([1, 2]))
    result = p.run()
    result.wait_until_finish()
    m = summarise(result)["dedup_orders"]
    assert (m["records_in"], m["records_out"], m["records_filtered"]) == (3, 2, 1)


def test_windows_are_deduplicated_separately():
    from apache_beam.transforms.window import FixedWindows, TimestampedValue

    batches = [(pa.record_batch({"id": [1, 1, 2]}), 5), (pa.record_batch({"id": [1, 3]}), 15),
               (pa.record_batch({"id": [1]}), 7)]
    p = TestPipeline()
    windowed = (p | beam.Create(batches, reshuffle=False)
                | beam.Map(lambda bt: TimestampedValue(bt[0], bt[1])).with_output_types(pa.RecordBatch)
                | beam.WindowInto(FixedWindows(10)))
    kept, _ = windowed | ExactDeduplicator(["id"])
    assert_that(kept | beam.FlatMap(rows_of("id")), equal_to([1, 2, 1, 3]))  # [0,10): 1, 2; [10,20): 1, 3
    p.run().wait_until_finish()
