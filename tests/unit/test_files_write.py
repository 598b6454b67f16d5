"""Tests of the file sinks in beam_etl.io.files: Parquet, CSV, JSON Lines and JSON writers."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import uuid
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_etl import registry
from beam_etl.io.files import (
    ParquetWriteConfig,
    ReadFromCsv,
    ReadFromJsonl,
    WriteToCsv,
    WriteToJson,
    WriteToJsonl,
    WriteToParquet,
)
from beam_etl.ops.dlq import ENVELOPE_KEYS, dead_letter
from beam_etl.ops.metrics import summarise
from tests.unit.test_files_read import run_source

# ----------------------------------------------------------------------------- helpers

BATCH_A = pa.RecordBatch.from_pylist([
    {"id": 1, "country": "FR", "amount": 10.5, "tags": ["a"]},
    {"id": 2, "country": "DE", "amount": None, "tags": []},
])
BATCH_B = pa.RecordBatch.from_pylist([
    {"id": 3, "country": "FR", "amount": 1.0, "tags": ["b", "c"]},
    {"id": 4, "country": None, "amount": 2.0, "tags": None},
    {"id": 5, "country": "a/b c", "amount": 3.0, "tags": ["d"]},
])


def _dump_value(value, folder: str) -> None:
    Path(folder, f"{uuid.uuid4().hex}.json").write_text(json.dumps(value))


def run_sink(sink: beam.PTransform, batches: list, tmp_path: Path, fail_after: bool = False):
    """Writes ``batches`` with ``sink``; returns (final paths, dead letters, metrics)."""
    out = tmp_path / f"collected-{uuid.uuid4().hex[:6]}"
    (out / "paths").mkdir(parents=True)
    (out / "dlq").mkdir()
    p = beam.Pipeline()
    pcoll = p | "Create" >> beam.Create(batches, reshuffle=False)
    paths, dlq = pcoll | sink
    paths | "DumpPaths" >> beam.Map(_dump_value, str(out / "paths"))
    dlq | "DumpDlq" >> beam.Map(_dump_value, str(out / "dlq"))
    result = p.run()
    result.wait_until_finish()
    final = sorted(json.loads(f.read_text()) for f in (out / "paths").glob("*.json"))
    letters = [json.loads(f.read_text()) for f in (out / "dlq").glob("*.json")]
    return final, letters, summarise(result)


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def read_parquet_rows(paths: list[str]) -> list[dict]:
    return sorted(pq.read_table(paths).to_pylist(), key=lambda r: r["id"])


# ----------------------------------------------------------------------------- Parquet


def test_parquet_happy_path_names_and_metrics(tmp_path):
    final, letters, metrics = run_sink(WriteToParquet(str(tmp_path / "out" / "orders"), num_shards=1),
                                       [BATCH_A, BATCH_B], tmp_path)
    assert final == [str(tmp_path / "out" / "orders-00000-of-00001.parquet")]
    assert letters == []
    assert [r["id"] for r in read_parquet_rows(final)] == [1, 2, 3, 4, 5]
    assert files_in(tmp_path / "out") == ["orders-00000-of-00001.parquet"]  # no temporary folder left
    assert metrics["WriteToParquet"]["records_in"] == 5
    assert metrics["WriteToParquet"]["records_out"] == 5
    assert pq.ParquetFile(final[0]).schema_arrow.metadata is None or b"beam_etl.source" not in (
        pq.ParquetFile(final[0]).schema_arrow.metadata or {})


def test_parquet_with_testpipeline_assert_that(tmp_path):
    target = str(tmp_path / "t" / "data")
    with BeamTestPipeline() as p:
        paths, dlq = p | beam.Create([BATCH_A], reshuffle=False) | WriteToParquet(target, num_shards=2)
        assert_that(paths | beam.Map(os.path.basename),
                    equal_to(["data-00000-of-00002.parquet", "data-00001-of-00002.parquet"]), label="paths")
        assert_that(dlq, equal_to([]), label="dlq")


def test_num_shards_gives_exactly_n_files(tmp_path):
    batches = [pa.RecordBatch.from_pylist([{"id": i * 10 + j} for j in range(10)]) for i in range(7)]
    final, _, _ = run_sink(WriteToParquet(str(tmp_path / "s" / "x"), num_shards=3), batches, tmp_path)
    assert [os.path.basename(f) for f in final] == [f"x-0000{i}-of-00003.parquet" for i in range(3)]
    assert sorted(r["id"] for r in pq.read_table(final).to_pylist()) == list(range(70))
    final, _, _ = run_sink(WriteToParquet(str(tmp_path / "s1" / "x"), num_shards=3), batches[:1], tmp_path)
    assert len(final) == 3 and pq.read_table(final).num_rows == 10  # empty shards are still written


def test_shard_by_puts_each_key_in_one_file(tmp_path):
    batches = [pa.RecordBatch.from_pylist([{"id": i * 10 + j, "customer": f"c{(i + j) % 6}"} for j in range(10)])
               for i in range(7)]
    final, letters, _ = run_sink(WriteToParquet(str(tmp_path / "h" / "x"), num_shards=3, shard_by=["customer"]),
                                 batches, tmp_path)
    assert letters == [] and len(final) == 3
    files_of = {}
    for path in final:
        for row in pq.read_table(path).to_pylist():
            files_of.setdefault(row["customer"], set()).add(path)
    assert len(files_of) == 6 and all(len(paths) == 1 for paths in files_of.values())
    assert sorted(r["id"] for r in pq.read_table(final).to_pylist()) == list(range(70))


def test_shard_by_checks_its_config_and_dead_letters_rows_without_the_column(tmp_path):
    with pytest.raises(ValueError, match="shard_by needs num_shards"):
        WriteToParquet(str(tmp_path / "e" / "x"), shard_by=["id"])
    final, letters, _ = run_sink(WriteToParquet(str(tmp_path / "m" / "x"), num_shards=2, shard_by=["customer"]),
                                 [BATCH_A], tmp_path)
    assert len(letters) == 2 and "shard_by column(s) ['customer'] missing" in letters[0]["error"]
    assert pq.read_table(final).num_rows == 0


def test_num_shards_zero_writes_per_bundle_without_shuffle(tmp_path):
    final, _, _ = run_sink(WriteToParquet(str(tmp_path / "b" / "x")), [BATCH_A, BATCH_B], tmp_path)
    assert final and all(os.path.basename(f).startswith("x-0000") for f in final)
    assert [r["id"] for r in read_parquet_rows(final)] == [1, 2, 3, 4, 5]


def test_modes_overwrite_append_error_if_exists(tmp_path):
    prefix = str(tmp_path / "m" / "orders")
    first, _, _ = run_sink(WriteToParquet(prefix, num_shards=3), [BATCH_A, BATCH_B], tmp_path)
    assert len(first) == 3
    # a neighbour with a similar prefix must never be touched
    neighbour = tmp_path / "m" / "orders-eu-00000-of-00001.parquet"
    pq.write_table(pa.table({"id": [99]}), str(neighbour))
    second, _, _ = run_sink(WriteToParquet(prefix, num_shards=1), [BATCH_A], tmp_path)
    assert files_in(tmp_path / "m") == ["orders-00000-of-00001.parquet", "orders-eu-00000-of-00001.parquet"]
    assert [r["id"] for r in read_parquet_rows(second)] == [1, 2]
    third, _, _ = run_sink(WriteToParquet(prefix, mode="append", num_shards=1), [BATCH_B], tmp_path)
    assert len(third) == 1 and third[0] not in second
    assert os.path.basename(third[0]).startswith("orders-00000-of-00001-")
    every = [str(tmp_path / "m" / f) for f in files_in(tmp_path / "m") if not f.startswith("orders-eu")]
    assert [r["id"] for r in read_parquet_rows(every)] == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="error_if_exists"):
        WriteToParquet(prefix, mode="error_if_exists")
    fresh, _, _ = run_sink(WriteToParquet(str(tmp_path / "m" / "new"), mode="error_if_exists"), [BATCH_A], tmp_path)
    assert len(fresh) == 1
    # files that appear after construction are caught when the write finalises
    late = WriteToParquet(str(tmp_path / "m" / "late"), mode="error_if_exists")
    pq.write_table(pa.table({"id": [1]}), str(tmp_path / "m" / "late-00000-of-00001.parquet"))
    with pytest.raises(Exception, match="error_if_exists"):
        run_sink(late, [BATCH_A], tmp_path)
    assert not [f for f in files_in(tmp_path / "m") if ".beam_etl-tmp" in f]


def test_parquet_compression_round_trip(tmp_path):
    for codec in ("zstd", "gzip", "none", "snappy"):
        final, _, _ = run_sink(WriteToParquet(str(tmp_path / codec / "x"), compression=codec), [BATCH_A], tmp_path)
        column = pq.ParquetFile(final[0]).metadata.row_group(0).column(0)
        assert column.compression == {"none": "UNCOMPRESSED"}.get(codec, codec.upper())
        assert [r["id"] for r in read_parquet_rows(final)] == [1, 2]


def test_parquet_row_group_size(tmp_path):
    batches = [pa.RecordBatch.from_pylist([{"id": i * 100 + j} for j in range(100)]) for i in range(5)]
    final, _, _ = run_sink(WriteToParquet(str(tmp_path / "rg" / "x"), num_shards=1, row_group_size=200), batches,
                           tmp_path)
    meta = pq.ParquetFile(final[0]).metadata
    assert meta.num_rows == 500 and [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [200, 200, 100]


def test_partitioned_write_dead_letter_keeps_partition_value(tmp_path):
    b1 = pa.RecordBatch.from_pylist([{"k": "a", "n": 1}])
    b2 = pa.RecordBatch.from_pylist([{"k": "a", "n": "x"}])
    final, letters, _ = run_sink(WriteToParquet(str(tmp_path / "pd"), partition_by=["k"], num_shards=1), [b1, b2],
                                 tmp_path)
    assert len(final) == 1 and [d["record"] for d in letters] == [{"n": "x", "k": "a"}]


def test_partition_by_hive_folders(tmp_path):
    root = tmp_path / "ds" / "orders"
    final, letters, _ = run_sink(WriteToParquet(str(root), partition_by=["country"], num_shards=2, schema_json=True),
                                 [BATCH_A, BATCH_B], tmp_path)
    assert letters == []
    folders = sorted({os.path.basename(os.path.dirname(f)) for f in final})
    assert folders == ["country=DE", "country=FR", "country=__HIVE_DEFAULT_PARTITION__", "country=a%2Fb%20c"]
    assert all(os.path.basename(f).startswith("part-") for f in final)
    assert "country" not in pq.read_schema(final[0]).names
    dataset = ds.dataset(str(root), format="parquet", partitioning="hive")
    rows = sorted(dataset.to_table().to_pylist(), key=lambda r: r["id"])
    assert [(r["id"], r["country"]) for r in rows] == [(1, "FR"), (2, "DE"), (3, "FR"), (4, None), (5, "a/b c")]
    schema = json.loads((tmp_path / "ds" / "orders.schema.json").read_text())
    assert [f["name"] for f in schema["fields"]] == ["id", "country", "amount", "tags"]
    # overwrite replaces every partition, stale folders disappear
    run_sink(WriteToParquet(str(root), partition_by="country"), [BATCH_A], tmp_path)
    assert sorted(os.listdir(root)) == ["country=DE", "country=FR"]


def test_schema_json_contents(tmp_path):
    batch = pa.RecordBatch.from_arrays(
        [pa.array([1, 2]), pa.array([{"a": "x"}, None]), pa.array([[1.5], []])],
        schema=pa.schema([pa.field("id", pa.int64(), nullable=False), ("s", pa.struct([("a", pa.string())])),
                          ("l", pa.list_(pa.float64()))]))
    run_sink(WriteToJsonl(str(tmp_path / "j" / "rows"), schema_json=True), [batch], tmp_path)
    schema = json.loads((tmp_path / "j" / "rows.schema.json").read_text())
    assert schema == {"fields": [
        {"name": "id", "type": "int64", "nullable": False},
        {"name": "s", "type": "struct<a: string>", "nullable": True,
         "fields": [{"name": "a", "type": "string", "nullable": True}]},
        {"name": "l", "type": "list<item: double>", "nullable": True,
         "item": {"name": "item", "type": "double", "nullable": True}},
    ]}


def test_schema_unification_across_batches(tmp_path):
    b1 = pa.RecordBatch.from_pylist([{"id": 1, "note": None}])  # note is null-typed here
    b2 = pa.RecordBatch.from_pylist([{"id": 2, "note": "hello", "extra": 1.5}])
    b3 = pa.RecordBatch.from_pylist([{"id": 3, "note": None}])
    for shards in (0, 1):
        final, letters, _ = run_sink(WriteToParquet(str(tmp_path / f"u{shards}" / "x"), num_shards=shards),
                                     [b1, b2, b3], tmp_path)
        assert letters == []
        rows = read_parquet_rows(final)
        assert [(r["id"], r["note"], r.get("extra")) for r in rows] == [(1, None, None), (2, "hello", 1.5),
                                                                        (3, None, None)]
        assert pq.read_schema(final[0]).field("note").type == pa.string()


def test_values_that_cannot_be_written_go_to_dlq(tmp_path):
    b1 = pa.RecordBatch.from_pylist([{"id": 1, "n": 10}, {"id": 2, "n": 20}])
    b2 = pa.RecordBatch.from_pylist([{"id": 3, "n": "30"}, {"id": 4, "n": "abc"}])
    final, letters, metrics = run_sink(WriteToParquet(str(tmp_path / "d" / "x"), num_shards=1, step="out"),
                                       [b1, b2], tmp_path)
    assert [(r["id"], r["n"]) for r in read_parquet_rows(final)] == [(1, 10), (2, 20), (3, 30)]
    assert len(letters) == 1
    letter = letters[0]
    assert set(letter) == set(ENVELOPE_KEYS)
    assert letter["error_type"] == "type" and letter["step"] == "out"
    assert letter["record"] == {"id": 4, "n": "abc"} and "'abc'" in letter["error"]
    assert metrics["out"]["records_in"] == metrics["out"]["records_out"] + metrics["out"]["records_failed"]


def test_empty_input_writes_nothing_and_clears_overwritten_files(tmp_path):
    prefix = str(tmp_path / "e" / "x")
    run_sink(WriteToParquet(prefix, num_shards=2, schema_json=True), [BATCH_A], tmp_path)
    assert len(files_in(tmp_path / "e")) == 3
    final, letters, _ = run_sink(WriteToParquet(prefix, num_shards=2, schema_json=True), [], tmp_path)
    assert final == [] and letters == []
    assert files_in(tmp_path / "e") == []
    final, _, _ = run_sink(WriteToCsv(str(tmp_path / "e2" / "x")), [], tmp_path)
    assert final == []
    assert not (tmp_path / "e2").exists() or files_in(tmp_path / "e2") == []


def _fail_on_marker(batch: pa.RecordBatch) -> pa.RecordBatch:
    if "boom" in batch.schema.names:
        raise RuntimeError("upstream failure")
    return batch


def test_atomic_previous_files_survive_a_failed_write(tmp_path):
    prefix = str(tmp_path / "a" / "orders")
    before, _, _ = run_sink(WriteToParquet(prefix, num_shards=2), [BATCH_A], tmp_path)
    snapshot = {f: Path(f).read_bytes() for f in before}
    p = beam.Pipeline()
    bad = pa.RecordBatch.from_pylist([{"id": 7, "boom": 1}])
    _ = (p | beam.Create([BATCH_B, bad], reshuffle=False) | beam.Map(_fail_on_marker)
         | WriteToParquet(prefix, num_shards=1))
    with pytest.raises(Exception, match="upstream failure"):
        p.run().wait_until_finish()
    assert {f: Path(f).read_bytes() for f in before} == snapshot
    assert [f for f in files_in(tmp_path / "a") if not f.startswith(".beam_etl-tmp")] == [
        os.path.basename(f) for f in before]


# ----------------------------------------------------------------------------- CSV


@pytest.mark.parametrize("codec,decompress", [("none", bytes), ("gzip", gzip.decompress), ("bz2", bz2.decompress),
                                              ("xz", lzma.decompress)])
def test_csv_compression_round_trip(tmp_path, codec, decompress):
    flat = BATCH_A.drop_columns(["tags"])
    final, _, _ = run_sink(WriteToCsv(str(tmp_path / codec / "x"), compression=codec, delimiter=";"), [flat],
                           tmp_path)
    suffix = {"none": "", "gzip": ".gz", "bz2": ".bz2", "xz": ".xz"}[codec]
    assert final == [str(tmp_path / codec / f"x-00000-of-00001.csv{suffix}")]
    raw = decompress(Path(final[0]).read_bytes())
    assert raw.decode().splitlines()[0] == '"id";"country";"amount"'
    batches, letters = run_source(ReadFromCsv(final[0], delimiter=";"), tmp_path)
    assert letters == []
    assert [r for b in batches for r in b.to_pylist()] == flat.to_pylist()


def test_csv_nested_values_as_json_text_and_no_header(tmp_path):
    final, letters, _ = run_sink(WriteToCsv(str(tmp_path / "c" / "x"), header=False), [BATCH_A], tmp_path)
    assert letters == []
    table = pa_csv.read_csv(final[0], read_options=pa_csv.ReadOptions(autogenerate_column_names=True))
    assert table.num_rows == 2 and json.loads(table.column("f3")[0].as_py()) == ["a"]


# ----------------------------------------------------------------------------- JSON Lines / JSON


def test_jsonl_round_trip_and_gzip(tmp_path):
    final, _, _ = run_sink(WriteToJsonl(str(tmp_path / "j" / "x"), compression="gzip"), [BATCH_A, BATCH_B],
                           tmp_path)
    assert all(f.endswith(".jsonl.gz") for f in final)
    rows = [json.loads(line) for f in final for line in gzip.decompress(Path(f).read_bytes()).splitlines()]
    assert sorted(rows, key=lambda r: r["id"]) == sorted(BATCH_A.to_pylist() + BATCH_B.to_pylist(),
                                                         key=lambda r: r["id"])
    batches, _ = run_source(ReadFromJsonl(final), tmp_path)
    assert sorted(r["id"] for b in batches for r in b.to_pylist()) == [1, 2, 3, 4, 5]


def test_jsonl_json_fields_and_dead_letters(tmp_path):
    letters = [dead_letter({"id": 1, "bad": "x"}, error_type="type", error="nope", step="s", source="f.csv:2"),
               dead_letter("raw,line", error_type="parse", error="cols", step="s", source="f.csv:3")]
    final, failed, _ = run_sink(WriteToJsonl(str(tmp_path / "dlq" / "errors"), json_fields=["record"]), letters,
                                tmp_path)
    assert failed == []
    rows = sorted((json.loads(line) for line in Path(final[0]).read_text().splitlines()), key=lambda r: r["source"])
    assert rows[0]["record"] == {"id": 1, "bad": "x"} and rows[1]["record"] == "raw,line"
    assert set(rows[0]) == set(ENVELOPE_KEYS)
    text = pa.RecordBatch.from_pylist([{"doc": '{"a": [1, 2]}'}, {"doc": "not json"}, {"doc": None}])
    final, _, _ = run_sink(WriteToJsonl(str(tmp_path / "jf" / "x"), json_fields=["doc"]), [text], tmp_path)
    assert Path(final[0]).read_text().splitlines() == ['{"doc": {"a": [1, 2]}}', '{"doc": "not json"}', '{"doc": null}']


def test_jsonl_special_values(tmp_path):
    import datetime as dt

    text = 'quote " backslash \\ newline \n tab \t control \x01 unicode ü€'
    batch = pa.RecordBatch.from_pylist([
        {"t": dt.datetime(2024, 1, 2, 3, 4, 5), "d": dt.date(2024, 1, 2), "f": float("nan"), "g": 3.0,
         "b": b"\xff", "s": text, "l": [1.5, None]},
        {"t": None, "d": None, "f": 1e20, "g": -0.5, "b": None, "s": None, "l": [float("nan")]},
    ])
    final, letters, _ = run_sink(WriteToJsonl(str(tmp_path / "sv" / "x")), [batch], tmp_path)
    lines = Path(final[0]).read_text().splitlines()
    assert len(lines) == 1  # the second row holds NaN inside a list: not JSON, so a dead letter
    assert json.loads(lines[0]) == {"t": "2024-01-02T03:04:05", "d": "2024-01-02", "f": None, "g": 3.0,
                                    "b": {"base64": "/w=="}, "s": text, "l": [1.5, None]}
    assert '"g": 3.0' in lines[0]
    assert [(d["error_type"], d["record"]["g"]) for d in letters] == [("internal", -0.5)]


def test_json_array_pretty_and_compact(tmp_path):
    final, _, _ = run_sink(WriteToJson(str(tmp_path / "p" / "x"), pretty=True, num_shards=1), [BATCH_A, BATCH_B],
                           tmp_path)
    text = Path(final[0]).read_text()
    assert text.startswith("[\n  {\n    \"id\"")
    assert sorted(r["id"] for r in json.loads(text)) == [1, 2, 3, 4, 5]
    final, _, _ = run_sink(WriteToJson(str(tmp_path / "c" / "x"), num_shards=2), [BATCH_A], tmp_path)
    docs = [json.loads(Path(f).read_text()) for f in final]
    assert sorted(len(d) for d in docs) == [0, 2]  # the empty shard holds an empty array


def test_folder_style_path(tmp_path):
    final, _, _ = run_sink(WriteToJsonl(str(tmp_path / "folder") + "/", schema_json=True), [BATCH_A], tmp_path)
    assert final == [str(tmp_path / "folder" / "part-00000-of-00001.jsonl")]
    assert files_in(tmp_path / "folder") == ["part-00000-of-00001.jsonl", "part.schema.json"]


def test_writer_config_validation_and_registry(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        WriteToParquet(str(tmp_path / "x"), mode="replace")
    with pytest.raises(ValueError, match="compression"):
        WriteToParquet(str(tmp_path / "x"), compression="lz4")
    with pytest.raises(ValueError, match="compression"):
        WriteToCsv(str(tmp_path / "x"), compression="snappy")
    with pytest.raises(ValueError, match="num_shards"):
        WriteToCsv(str(tmp_path / "x"), num_shards=-1)
    entry = registry.lookup("WriteToParquet")
    assert entry.kind == "sink" and entry.config_model is ParquetWriteConfig
    config = entry.config_model.model_validate({"path": str(tmp_path / "x"), "partition_by": "country",
                                                "schema_json": True})
    sink = entry.factory(config, registry.BuildContext(step_name="lake", run=None))
    assert isinstance(sink, WriteToParquet) and sink.step == "lake" and sink.partition_by == ["country"]
