"""Tests of the file sources in beam_etl.io.files: CSV, JSON Lines, JSON, text and Parquet."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import uuid
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_etl import registry
from beam_etl.io import _file_common as common
from beam_etl.io.files import (
    CsvReadConfig,
    ReadFromCsv,
    ReadFromJson,
    ReadFromJsonl,
    ReadFromParquet,
    ReadFromText,
)
from beam_etl.ops.dlq import ENVELOPE_KEYS
from beam_etl.ops.metrics import summarise
from beam_etl.transforms.base import FIRST_ROW_KEY, SOURCE_KEY

# ----------------------------------------------------------------------------- helpers


def _dump_batch(batch: pa.RecordBatch, folder: str) -> None:
    with pa.OSFile(f"{folder}/{uuid.uuid4().hex}.arrow", "wb") as sink, pa.ipc.new_file(sink, batch.schema) as w:
        w.write_batch(batch)


def _dump_letter(letter: dict, folder: str) -> None:
    Path(folder, f"{uuid.uuid4().hex}.json").write_text(json.dumps(letter))


def run_source(transform: beam.PTransform, tmp_path: Path, metrics: bool = False):
    """Runs a source; returns (batches, dead letters[, per-step metrics])."""
    out = tmp_path / f"collected-{uuid.uuid4().hex[:6]}"
    out.mkdir()
    p = beam.Pipeline()
    batches, dlq = p | transform
    batches | "DumpBatches" >> beam.Map(_dump_batch, str(out))
    dlq | "DumpLetters" >> beam.Map(_dump_letter, str(out))
    result = p.run()
    result.wait_until_finish()
    got = []
    for f in sorted(out.glob("*.arrow")):
        with pa.OSFile(str(f), "rb") as src:
            got.extend(pa.ipc.open_file(src).read_all().to_batches())
    letters = [json.loads(f.read_text()) for f in out.glob("*.json")]
    letters.sort(key=lambda d: (d["source"], d["error"]))
    if metrics:
        return got, letters, summarise(result)
    return got, letters


def rows_of(batches: list[pa.RecordBatch]) -> list[dict]:
    return [row for b in batches for row in b.to_pylist()]


def check_envelope(letter: dict, error_type: str, step: str) -> None:
    assert set(letter) == set(ENVELOPE_KEYS)
    assert letter["error_type"] == error_type
    assert letter["step"] == step
    assert letter["pipeline"] == "test" and letter["run_id"] == "test-run"
    assert letter["attempt"] == 1 and letter["failed_at"]


def write(path: Path, data: str | bytes) -> str:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return str(path)


CLEAN = "id,name,amount,active,day\n1,Ada,10.5,true,2024-01-02\n2,Bob,3,false,2024-02-03\n3,,7.25,TRUE,2024-03-04\n"


# ----------------------------------------------------------------------------- CSV


def test_csv_happy_path_infers_types_and_tags_batches(tmp_path):
    path = write(tmp_path / "orders.csv", CLEAN)
    source = ReadFromCsv(path)
    assert source.output_schema == pa.schema([("id", pa.int64()), ("name", pa.string()), ("amount", pa.float64()),
                                              ("active", pa.bool_()), ("day", pa.date32())])
    batches, letters, metrics = run_source(source, tmp_path, metrics=True)
    assert letters == []
    assert [(r["id"], r["name"], r["amount"], r["active"]) for r in rows_of(batches)] == [
        (1, "Ada", 10.5, True), (2, "Bob", 3.0, False), (3, None, 7.25, True)]
    meta = batches[0].schema.metadata
    assert meta[SOURCE_KEY].decode() == path and meta[FIRST_ROW_KEY] == b"0"
    assert metrics["ReadFromCsv"]["records_out"] == 3
    assert metrics["ReadFromCsv"]["records_failed"] == 0
    assert metrics["ReadFromCsv"]["bytes_in"] == len(CLEAN)


def test_csv_with_testpipeline_assert_that(tmp_path):
    path = write(tmp_path / "a.csv", "k,v\na,1\nb,2\n")
    with BeamTestPipeline() as p:
        batches, dlq = p | ReadFromCsv(path, schema={"v": "int"})
        rows = batches | beam.FlatMap(lambda b: [(r["k"], r["v"]) for r in b.to_pylist()])
        assert_that(rows, equal_to([("a", 1), ("b", 2)]), label="rows")
        assert_that(dlq, equal_to([]), label="dlq")


def test_csv_utf8_bom_is_stripped(tmp_path):
    path = write(tmp_path / "bom.csv", b"\xef\xbb\xbfid,name\n1,x\n")
    batches, letters = run_source(ReadFromCsv(path), tmp_path)
    assert rows_of(batches) == [{"id": 1, "name": "x"}]
    assert letters == []


def test_csv_latin1(tmp_path):
    path = write(tmp_path / "l1.csv", "city,n\nSão Paulo,1\nKöln,2\n".encode("latin-1"))
    batches, letters = run_source(ReadFromCsv(path, encoding="latin-1"), tmp_path)
    assert [r["city"] for r in rows_of(batches)] == ["São Paulo", "Köln"]
    assert letters == []


def test_csv_delimiter_quote_escape(tmp_path):
    text = "a;b;c\n1;'x;y';'it\\'s'\n2;plain;'q'\n"
    path = write(tmp_path / "d.csv", text)
    batches, letters = run_source(ReadFromCsv(path, delimiter=";", quote_char="'", escape_char="\\"), tmp_path)
    assert rows_of(batches) == [{"a": 1, "b": "x;y", "c": "it's"}, {"a": 2, "b": "plain", "c": "q"}]
    assert letters == []


def test_csv_quoted_newlines(tmp_path):
    text = 'id,note\n1,"line one\nline two"\n2,"x"\n3,"a,b\n\nc"\n'
    path = write(tmp_path / "nl.csv", text)
    batches, letters = run_source(ReadFromCsv(path, newlines_in_values=True), tmp_path)
    assert rows_of(batches) == [{"id": 1, "note": "line one\nline two"}, {"id": 2, "note": "x"},
                                {"id": 3, "note": "a,b\n\nc"}]
    assert letters == []


@pytest.mark.parametrize("suffix,opener", [(".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress)])
def test_csv_compressed(tmp_path, suffix, opener):
    path = write(tmp_path / f"c.csv{suffix}", opener(CLEAN.encode()))
    batches, letters = run_source(ReadFromCsv(path, split_size=16), tmp_path)
    assert [r["id"] for r in rows_of(batches)] == [1, 2, 3]
    assert letters == []


def test_csv_compression_option_overrides_extension(tmp_path):
    path = write(tmp_path / "c.data", gzip.compress(CLEAN.encode()))
    batches, _ = run_source(ReadFromCsv(path, compression="gzip"), tmp_path)
    assert len(rows_of(batches)) == 3


def test_csv_no_header(tmp_path):
    path = write(tmp_path / "nh.csv", "1,a\n2,b\n")
    batches, _ = run_source(ReadFromCsv(path, header=False, column_names=["n", "s"]), tmp_path)
    assert rows_of(batches) == [{"n": 1, "s": "a"}, {"n": 2, "s": "b"}]
    batches, _ = run_source(ReadFromCsv(path, header=False), tmp_path)
    assert rows_of(batches) == [{"f0": 1, "f1": "a"}, {"f0": 2, "f1": "b"}]


def test_csv_projection_and_explicit_schema(tmp_path):
    path = write(tmp_path / "p.csv", CLEAN)
    source = ReadFromCsv(path, columns=["amount", "id"], schema={"id": "string"})
    assert source.output_schema.names == ["amount", "id"]
    batches, _ = run_source(source, tmp_path)
    assert rows_of(batches)[0] == {"amount": 10.5, "id": "1"}


def test_csv_glob_and_path_list(tmp_path):
    for i in range(3):
        write(tmp_path / f"part{i}.csv", f"id,v\n{i}0,a\n{i}1,b\n")
    batches, _ = run_source(ReadFromCsv(str(tmp_path / "part*.csv")), tmp_path)
    assert sorted(r["id"] for r in rows_of(batches)) == [0, 1, 10, 11, 20, 21]
    paths = [str(tmp_path / "part0.csv"), str(tmp_path / "part2.csv")]
    batches, _ = run_source(ReadFromCsv(paths), tmp_path)
    assert sorted(r["id"] for r in rows_of(batches)) == [0, 1, 20, 21]


def _big_csv(tmp_path: Path, rows: int = 600) -> str:
    lines = ["id,name,score,comment"]
    for i in range(rows):
        comment = "x" * (i % 17) if i % 5 else ""
        lines.append(f"{i},name{i % 13},{i * 0.5},{comment}")
    return write(tmp_path / "big.csv", "\n".join(lines) + "\n")


@pytest.mark.parametrize("split_size", [37, 256, 1000])
def test_csv_split_file_loses_and_duplicates_nothing(tmp_path, split_size):
    path = _big_csv(tmp_path)
    meta = common.match_files([path])[0]
    assert len(common.plan_ranges(meta, split_size, "none", True)) > 5
    expected = pa_csv.read_csv(path).to_pylist()
    batches, letters = run_source(ReadFromCsv(path, split_size=split_size, batch_rows=50), tmp_path)
    got = sorted(rows_of(batches), key=lambda r: r["id"])
    assert letters == []
    assert [{**r, "comment": r["comment"] or None} for r in got] == [
        {**r, "comment": r["comment"] or None} for r in expected]
    assert all(b.num_rows <= 50 for b in batches)


def test_line_blocks_cover_every_line_exactly_once(tmp_path):
    data = b"".join(b"line%d %s\n" % (i, b"y" * (i * 7 % 23)) for i in range(300)) + b"tail-without-newline"
    path = write(tmp_path / "lines.txt", data)
    for split in (1, 2, 5, 64, 1000, 10_000):
        meta = common.match_files([path])[0]
        pieces = [b"".join(common.iter_line_blocks(item, block_size=97))
                  for item in common.plan_ranges(meta, split, "none", True)]
        assert b"".join(pieces) == data, split


def test_csv_wrong_column_count_goes_to_dlq(tmp_path):
    text = "id,name\n1,a\n2\n3,c\n\n4,d,extra\n5,e\n"
    path = write(tmp_path / "bad.csv", text)
    batches, letters = run_source(ReadFromCsv(path, step="orders"), tmp_path)
    assert [r["id"] for r in rows_of(batches)] == [1, 3, 5]
    assert [(d["record"], d["source"]) for d in letters] == [("2", f"{path}:3"), ("4,d,extra", f"{path}:6")]
    for d in letters:
        check_envelope(d, "parse", "orders")
        assert "expected 2 columns" in d["error"]
    assert len(rows_of(batches)) + len(letters) == 5  # rows in file = out + dead letters


def test_csv_bad_values_go_to_dlq_with_column_and_value(tmp_path):
    text = "id,amount\n1,10.5\n2,abc\nx3,4\n4,5e2\n"
    path = write(tmp_path / "vals.csv", text)
    batches, letters = run_source(ReadFromCsv(path, schema={"id": "int", "amount": "float"}), tmp_path)
    assert rows_of(batches) == [{"id": 1, "amount": 10.5}, {"id": 4, "amount": 500.0}]
    assert [(d["source"], d["error"], d["record"]) for d in letters] == [
        (f"{path}:3", "column 'amount': 'abc' is not a valid float", {"id": "2", "amount": "abc"}),
        (f"{path}:4", "column 'id': 'x3' is not a valid int", {"id": "x3", "amount": "4"}),
    ]
    for d in letters:
        check_envelope(d, "type", "ReadFromCsv")
    assert len(rows_of(batches)) + len(letters) == 4


def test_csv_undecodable_line_goes_to_dlq(tmp_path):
    data = b"id,name\n1,ok\n2,caf\xe9\n3,fine\n"
    path = write(tmp_path / "enc.csv", data)
    batches, letters = run_source(ReadFromCsv(path), tmp_path)
    assert [r["id"] for r in rows_of(batches)] == [1, 3]
    assert len(letters) == 1
    check_envelope(letters[0], "parse", "ReadFromCsv")
    assert letters[0]["source"] == f"{path}:3"
    assert "utf" in letters[0]["error"] and letters[0]["record"] == "2,caf\\xe9"


def test_csv_line_numbers_in_a_split_file(tmp_path):
    lines = ["id,v"] + [f"{i},{i}" if i % 97 else f"{i},bad{i}" for i in range(1, 500)]
    lines[250] = "oops"  # physical line 251 has one field
    path = write(tmp_path / "s.csv", "\n".join(lines) + "\n")
    batches, letters = run_source(ReadFromCsv(path, split_size=200, schema={"v": "int"}), tmp_path)
    by_source = {d["source"]: d for d in letters}
    bad_lines = [i + 1 for i in range(1, 500) if i % 97 == 0]  # the row with id i is on line i + 1
    assert sorted(by_source) == sorted([f"{path}:{n}" for n in bad_lines] + [f"{path}:251"])
    assert by_source[f"{path}:251"]["error_type"] == "parse"
    assert by_source[f"{path}:{bad_lines[0]}"]["record"] == {"id": "97", "v": "bad97"}
    assert len(rows_of(batches)) + len(letters) == 499


def test_csv_missing_header_column_sends_file_to_dlq(tmp_path):
    write(tmp_path / "a1.csv", "id,amount\n1,2.5\n")
    write(tmp_path / "a2.csv", "id,total\n2,3.5\n3,4.5\n")
    batches, letters = run_source(ReadFromCsv(str(tmp_path / "a*.csv")), tmp_path)
    assert rows_of(batches) == [{"id": 1, "amount": 2.5}]
    assert len(letters) == 2
    for d in letters:
        check_envelope(d, "validation", "ReadFromCsv")
        assert "['amount']" in d["error"] and "a2.csv" in d["error"]
    assert [d["source"].rsplit(":", 1)[1] for d in letters] == ["2", "3"]


def test_csv_construction_errors(tmp_path):
    with pytest.raises(ValueError, match=r"path: .*nothing-\*\.csv' matches no file"):
        ReadFromCsv(str(tmp_path / "nothing-*.csv"))
    path = write(tmp_path / "x.csv", CLEAN)
    with pytest.raises(ValueError, match="delimiter"):
        ReadFromCsv(path, delimiter=";;")
    with pytest.raises(ValueError, match=r"columns: \['nope'\] not found"):
        ReadFromCsv(path, columns=["nope"])
    with pytest.raises(ValueError, match="schema.id: type 'integerish' is not one of"):
        ReadFromCsv(path, schema={"id": "integerish"})
    with pytest.raises(ValueError, match="encoding"):
        ReadFromCsv(path, encoding="no-such-codec")
    with pytest.raises(ValueError, match="compression"):
        ReadFromCsv(path, compression="zip")
    with pytest.raises(ValueError, match="unknown option"):
        ReadFromCsv(path, delimeter=";")
    with pytest.raises(ValueError, match="batch_rows"):
        ReadFromCsv(path, batch_rows=0)


def test_csv_mixed_date_formats_stay_strings(tmp_path):
    path = write(tmp_path / "dates.csv", "d,t\n2024-01-02,2024-01-02T10:00:00\n03/01/2024,2024-01-02 11:30:00\n")
    source = ReadFromCsv(path)
    assert source.output_schema.field("d").type == pa.string()
    assert source.output_schema.field("t").type == pa.timestamp("us")


def test_csv_null_values(tmp_path):
    path = write(tmp_path / "n.csv", "a,b\n1,NA\nNULL,x\n3,-\n")
    batches, _ = run_source(ReadFromCsv(path, null_values=["NA", "NULL", "-"]), tmp_path)
    assert rows_of(batches) == [{"a": 1, "b": None}, {"a": None, "b": "x"}, {"a": 3, "b": None}]


def test_csv_registry_factory_uses_step_name(tmp_path):
    path = write(tmp_path / "r.csv", CLEAN)
    entry = registry.lookup("ReadFromCsv")
    assert entry.kind == "source" and entry.config_model is CsvReadConfig
    config = entry.config_model.model_validate({"path": path, "schema": {"id": "int"}})
    transform = entry.factory(config, registry.BuildContext(step_name="orders", run=None))
    assert isinstance(transform, ReadFromCsv) and transform.step == "orders"
    assert transform.display_data()["path"] == path


# ----------------------------------------------------------------------------- JSON Lines / JSON


def test_jsonl_nested_structs_and_lists(tmp_path):
    text = '{"id": 1, "user": {"name": "a", "tags": ["x", "y"]}}\n\n{"id": 2, "user": {"name": "b", "tags": []}}\n'
    path = write(tmp_path / "n.jsonl", text)
    batches, letters = run_source(ReadFromJsonl(path), tmp_path)
    assert letters == []
    schema = batches[0].schema
    assert pa.types.is_struct(schema.field("user").type)
    assert rows_of(batches) == [{"id": 1, "user": {"name": "a", "tags": ["x", "y"]}},
                                {"id": 2, "user": {"name": "b", "tags": []}}]


def test_jsonl_gzip_and_split(tmp_path):
    lines = [json.dumps({"id": i, "v": f"s{i}"}) for i in range(200)]
    gz = write(tmp_path / "a.jsonl.gz", gzip.compress(("\n".join(lines) + "\n").encode()))
    plain = write(tmp_path / "b.jsonl", "\n".join(lines) + "\n")
    batches, _ = run_source(ReadFromJsonl(gz), tmp_path)
    assert [r["id"] for r in rows_of(batches)] == list(range(200))
    batches, _ = run_source(ReadFromJsonl(plain, split_size=300), tmp_path)
    assert sorted(r["id"] for r in rows_of(batches)) == list(range(200))


def test_jsonl_malformed_line_goes_to_dlq(tmp_path):
    text = '{"id": 1}\n{"id": 2,\n{"id": 3}\n[1, 2]\n{"id": 4}\n'
    path = write(tmp_path / "m.jsonl", text)
    batches, letters = run_source(ReadFromJsonl(path, step="events"), tmp_path)
    assert [r["id"] for r in rows_of(batches)] == [1, 3, 4]
    assert [(d["source"], d["record"]) for d in letters] == [(f"{path}:2", '{"id": 2,'), (f"{path}:4", "[1, 2]")]
    for d in letters:
        check_envelope(d, "parse", "events")
    assert len(rows_of(batches)) + len(letters) == 5


def test_jsonl_type_conflict_kept_as_json_text(tmp_path):
    text = '{"id": 1, "v": 10}\n{"id": 2, "v": "ten"}\n{"id": 3, "v": {"n": 10}}\n'
    path = write(tmp_path / "c.jsonl", text)
    batches, letters = run_source(ReadFromJsonl(path), tmp_path)
    assert letters == []
    assert batches[0].schema.field("v").type == pa.string()
    assert [json.loads(r["v"]) for r in rows_of(batches)] == [10, "ten", {"n": 10}]


def test_jsonl_type_conflict_with_schema_goes_to_dlq(tmp_path):
    text = '{"id": 1, "v": 10}\n{"id": "two", "v": 20}\n{"id": 3, "v": 30}\n'
    path = write(tmp_path / "s.jsonl", text)
    batches, letters = run_source(ReadFromJsonl(path, schema={"id": "int"}, columns=["id", "v"]), tmp_path)
    assert [r["id"] for r in rows_of(batches)] == [1, 3]
    assert len(letters) == 1
    check_envelope(letters[0], "type", "ReadFromJsonl")
    assert letters[0]["source"] == f"{path}:2"
    assert letters[0]["error"] == "column 'id': '\"two\"' is not a valid int"
    assert len(rows_of(batches)) + len(letters) == 3


def test_json_array_single_object_and_malformed(tmp_path):
    arr = write(tmp_path / "a.json", json.dumps([{"id": 1, "x": {"y": 1}}, 5, {"id": 2, "x": {"y": 2}}], indent=2))
    one = write(tmp_path / "b.json", json.dumps({"id": 3, "x": {"y": 3}}))
    batches, letters = run_source(ReadFromJson([arr, one]), tmp_path)
    assert sorted(r["id"] for r in rows_of(batches)) == [1, 2, 3]
    assert [(d["source"], d["record"], d["error_type"]) for d in letters] == [(f"{arr}[1]", 5, "parse")]
    bad = write(tmp_path / "c.json", '[{"id": 1},\n {"id": 2\n')
    batches, letters = run_source(ReadFromJson(bad), tmp_path)
    assert batches == [] and len(letters) == 1
    check_envelope(letters[0], "parse", "ReadFromJson")
    assert letters[0]["source"].startswith(bad + ":")


# ----------------------------------------------------------------------------- text


def test_text_lines_and_blank_lines(tmp_path):
    path = write(tmp_path / "t.txt", "alpha\r\n\n  \nbeta\ngamma")
    batches, _ = run_source(ReadFromText(path), tmp_path)
    assert rows_of(batches) == [{"line": "alpha"}, {"line": "beta"}, {"line": "gamma"}]
    batches, _ = run_source(ReadFromText(path, skip_blank_lines=False), tmp_path)
    assert [r["line"] for r in rows_of(batches)] == ["alpha", "", "  ", "beta", "gamma"]


def test_text_regex_extracts_fields_and_dlqs_mismatches(tmp_path):
    text = "GET /a 200\nPOST /b 404\ngarbage\n\nGET /c 5xx\n"
    path = write(tmp_path / "log.txt", text)
    source = ReadFromText(path, regex=r"^(?P<method>[A-Z]+) (?P<path>\S+) (?P<status>\S+)$", schema={"status": "int"})
    batches, letters = run_source(source, tmp_path)
    assert rows_of(batches) == [{"method": "GET", "path": "/a", "status": 200},
                                {"method": "POST", "path": "/b", "status": 404}]
    assert [(d["source"], d["error_type"]) for d in letters] == [(f"{path}:3", "parse"), (f"{path}:5", "type")]
    assert letters[0]["record"] == "garbage"
    for d in letters:
        check_envelope(d, d["error_type"], "ReadFromText")
    assert len(rows_of(batches)) + len(letters) == 4  # four non-blank lines


def test_text_regex_in_split_file_numbers_lines(tmp_path):
    lines = [f"k{i}=v{i}" if i % 50 else f"broken {i}" for i in range(1, 400)]
    path = write(tmp_path / "kv.txt", "\n".join(lines) + "\n")
    batches, letters = run_source(ReadFromText(path, regex=r"^(?P<k>\w+)=(?P<v>\w+)$", split_size=128), tmp_path)
    assert len(rows_of(batches)) == 392
    assert sorted(d["source"] for d in letters) == sorted(f"{path}:{i}" for i in range(50, 400, 50))


def test_text_chunking(tmp_path):
    paragraphs = ["First para line one.\nline two.", "Second para.", "Third " + "word " * 30]
    path = write(tmp_path / "doc.txt", "\n\n".join(paragraphs) + "\n")
    batches, _ = run_source(ReadFromText(path, chunk_by="paragraph", chunk_size=10), tmp_path)
    assert [r["text"] for r in rows_of(batches)] == paragraphs
    batches, _ = run_source(ReadFromText(path, chunk_by="paragraph", chunk_size=1000), tmp_path)
    assert [r["text"] for r in rows_of(batches)] == ["\n\n".join(paragraphs)]
    batches, _ = run_source(ReadFromText(path, chunk_by="size", chunk_size=16), tmp_path)
    texts = [r["text"] for r in rows_of(batches)]
    assert "".join(texts) == "\n\n".join(paragraphs) + "\n" and max(len(t.encode()) for t in texts) <= 16
    batches, _ = run_source(ReadFromText(path, chunk_by="lines", chunk_size=40), tmp_path)
    texts = [r["text"] for r in rows_of(batches)]
    assert texts[0] == "First para line one.\nline two."
    assert all(len(t.encode()) <= 40 or "\n" not in t for t in texts)


def test_text_config_errors(tmp_path):
    path = write(tmp_path / "x.txt", "a\n")
    with pytest.raises(ValueError, match="named group"):
        ReadFromText(path, regex=r"(\d+)")
    with pytest.raises(ValueError, match="cannot be combined"):
        ReadFromText(path, regex=r"(?P<a>\d+)", chunk_by="lines")
    with pytest.raises(ValueError, match="chunk_by"):
        ReadFromText(path, chunk_by="words")


# ----------------------------------------------------------------------------- Parquet


def test_parquet_row_group_splits_projection_and_batches(tmp_path):
    table = pa.table({"id": list(range(1000)), "name": [f"n{i}" for i in range(1000)], "x": [1.5] * 1000})
    path = str(tmp_path / "p.parquet")
    pq.write_table(table, path, row_group_size=100)
    meta = common.match_files([path])[0]
    from beam_etl.io._file_text import ParquetReader

    assert len(ParquetReader.plan(meta, 1)) == 10
    batches, letters = run_source(ReadFromParquet(path, columns=["id", "name"], split_size=1, batch_rows=30),
                                  tmp_path)
    assert letters == []
    assert all(b.schema.names == ["id", "name"] and b.num_rows <= 30 for b in batches)
    assert sorted(r["id"] for r in rows_of(batches)) == list(range(1000))
    with pytest.raises(ValueError, match="columns"):
        ReadFromParquet(path, columns=["nope"])


def test_parquet_glob_of_files(tmp_path):
    for i in range(3):
        pq.write_table(pa.table({"id": [i]}), str(tmp_path / f"f{i}.parquet"))
    batches, _ = run_source(ReadFromParquet(str(tmp_path / "*.parquet")), tmp_path)
    assert sorted(r["id"] for r in rows_of(batches)) == [0, 1, 2]


def test_helpers_cast_and_infer():
    arr = pa.array(["1", "x", None, "99999999999999999999", "4"])
    result, mask = common.cast_with_mask(arr, pa.int64())
    assert result.to_pylist() == [1, None, None, None, 4]
    assert mask.to_pylist() == [False, True, False, True, False]
    assert common.infer_string_type(pa.array(["1", "2", None])) == pa.int64()
    assert common.infer_string_type(pa.array(["1", "2.5"])) == pa.float64()
    assert common.infer_string_type(pa.array(["true", "False"])) == pa.bool_()
    assert common.infer_string_type(pa.array(["2024-01-01Z", "x"])) == pa.string()
    ts, bad = common.cast_with_mask(pa.array(["2024-01-02T10:00:00Z", "2024-01-02 10:00:00"]),
                                    pa.timestamp("us", tz="UTC"))
    assert bad is None and ts[0] == ts[1]
