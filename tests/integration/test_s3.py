"""File connectors on s3:// against a real S3 server (moto, scripts/services.sh up s3).

Each test gets its own bucket. The endpoint reaches Beam's S3 filesystem the ways a user would
give it: ``--s3_endpoint_url`` (``S3Options``; a template's ``options:``) or boto3's own
``AWS_ENDPOINT_URL``; credentials come from the standard chain (``AWS_*`` variables here).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid
from collections.abc import Iterator

import apache_beam as beam
import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline

from beam_etl.io.files import (
    ReadFromCsv,
    ReadFromJson,
    ReadFromJsonl,
    ReadFromParquet,
    ReadFromText,
    WriteToCsv,
    WriteToJson,
    WriteToJsonl,
    WriteToParquet,
)
from beam_etl.run import run_template
from tests.collect import read_elements, write_element
from tests.services import S3_SERVER

pytestmark = pytest.mark.integration

ROWS = [{"id": i, "name": f"name {i}", "country": ["FR", "DE", "JP"][i % 3], "amount": i * 1.25,
         "at": dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=i)} for i in range(90)]
SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string()), ("country", pa.string()), ("amount", pa.float64()),
                    ("at", pa.timestamp("us", "UTC"))])


@pytest.fixture
def bucket(s3_endpoint) -> Iterator[str]:
    """A fresh bucket, emptied and deleted afterwards."""
    name = f"beam-etl-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", **S3_SERVER.client_kwargs())
    client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=obj["Key"])
        client.delete_bucket(Bucket=name)


@pytest.fixture
def s3(bucket):
    return boto3.client("s3", **S3_SERVER.client_kwargs())


def keys(s3, bucket: str, prefix: str = "") -> list[str]:
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found += [o["Key"] for o in page.get("Contents", [])]
    return sorted(found)


def options(*extra: str) -> PipelineOptions:
    return PipelineOptions([f"--s3_endpoint_url={S3_SERVER.endpoint}", *extra])


def write(batches: list[pa.RecordBatch], sink: beam.PTransform | type, path: str, opts: PipelineOptions | None = None,
          **config) -> list:
    with BeamPipeline(options=opts or options()) as p:
        written, _ = p | beam.Create(batches) | sink(path, **config)
    return written


def read(source: type, path: str, tmp_path, opts: PipelineOptions | None = None, **config) -> tuple[pa.Table, list]:
    out = tmp_path / f"read-{uuid.uuid4().hex[:6]}"
    out.mkdir()
    p = BeamPipeline(options=opts or options())
    batches, dead = p | source(path, **config)
    _ = batches | beam.Map(write_element, str(out))
    _ = dead | "Dead" >> beam.Map(write_element, str(out))
    p.run().wait_until_finish()
    table, letters = read_elements(str(out))
    return table, letters


def sorted_rows(table: pa.Table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: r["id"])


def batches() -> list[pa.RecordBatch]:
    table = pa.Table.from_pylist(ROWS, schema=SCHEMA)
    return table.to_batches(max_chunksize=30)


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(("sink", "source", "suffix", "config"), [
    (WriteToParquet, ReadFromParquet, ".parquet", {}),
    (WriteToCsv, ReadFromCsv, ".csv", {}),
    (WriteToJsonl, ReadFromJsonl, ".jsonl", {}),
    (WriteToJson, ReadFromJson, ".json", {}),
], ids=["parquet", "csv", "jsonl", "json"])
def test_round_trip_each_format(bucket, s3, tmp_path, sink, source, suffix, config):
    write(batches(), sink, f"s3://{bucket}/out/data", num_shards=2, **config)
    names = keys(s3, bucket)
    assert names == [f"out/data-0000{i}-of-00002{suffix}" for i in range(2)]  # no temporary object is left
    table, dead = read(source, f"s3://{bucket}/out/data-*{suffix}", tmp_path)
    assert dead == []
    got = sorted_rows(table)
    if source is ReadFromParquet:
        assert got == ROWS and table.schema.field("at").type == pa.timestamp("us", "UTC")
    else:  # text formats: timestamps come back as text parsed by inference
        assert [(r["id"], r["name"], r["country"], r["amount"]) for r in got] == [
            (r["id"], r["name"], r["country"], r["amount"]) for r in ROWS]


def test_read_text_lines_and_compressed_text(bucket, s3, tmp_path):
    write(batches(), WriteToCsv, f"s3://{bucket}/csv/", compression="gzip", num_shards=1)
    assert keys(s3, bucket) == ["csv/part-00000-of-00001.csv.gz"]
    body = s3.get_object(Bucket=bucket, Key="csv/part-00000-of-00001.csv.gz")["Body"].read()
    assert body[:2] == b"\x1f\x8b"
    table, _ = read(ReadFromCsv, f"s3://{bucket}/csv/", tmp_path)
    assert sorted(table.column("id").to_pylist()) == list(range(90))
    s3.put_object(Bucket=bucket, Key="logs/app.log", Body=b"first line\nsecond line\n\nthird\n")
    table, _ = read(ReadFromText, f"s3://{bucket}/logs/app.log", tmp_path)
    assert table.column("line").to_pylist() == ["first line", "second line", "third"]
    write(batches(), WriteToJsonl, f"s3://{bucket}/events/", compression="gzip", num_shards=1)
    table, _ = read(ReadFromJsonl, f"s3://{bucket}/events/*.jsonl.gz", tmp_path)
    assert table.num_rows == 90


# ----------------------------------------------------------------------------- paths and globs


def test_globs_folders_and_hidden_objects(bucket, s3, tmp_path):
    for day in ("2024-01-01", "2024-01-02", "2024-02-01"):
        s3.put_object(Bucket=bucket, Key=f"in/{day}.csv", Body=f"id,day\n1,{day}\n2,{day}\n".encode())
    s3.put_object(Bucket=bucket, Key="in/sub/2024-03-01.csv", Body=b"id,day\n3,2024-03-01\n")
    s3.put_object(Bucket=bucket, Key="in/_SUCCESS", Body=b"")
    s3.put_object(Bucket=bucket, Key="in/.beam_etl-tmp-0000/x.csv", Body=b"id,day\n9,hidden\n")
    s3.put_object(Bucket=bucket, Key="in/empty-folder/", Body=b"")  # a console-made "folder" marker

    def days(path: str) -> list:
        table, _ = read(ReadFromCsv, path, tmp_path, schema={"day": "string"})
        return sorted(table.column("day").to_pylist())

    assert days(f"s3://{bucket}/in/2024-01-*.csv") == ["2024-01-01"] * 2 + ["2024-01-02"] * 2
    assert days(f"s3://{bucket}/in/*.csv") == sorted(["2024-01-01", "2024-01-02", "2024-02-01"] * 2)
    assert days(f"s3://{bucket}/in/**.csv")[-1] == "hidden"  # an explicit glob takes what it names
    everything = sorted(["2024-01-01", "2024-01-02", "2024-02-01"] * 2 + ["2024-03-01"])
    assert days(f"s3://{bucket}/in/") == everything  # a folder: recursive, hidden names and markers skipped
    assert days(f"s3://{bucket}/in") == everything
    assert days([f"s3://{bucket}/in/2024-02-01.csv", f"s3://{bucket}/in/sub/"]) == ["2024-02-01", "2024-02-01",
                                                                                     "2024-03-01"]


def test_parallel_read_of_many_files(bucket, s3, tmp_path):
    for i in range(60):
        table = pa.table({"id": list(range(i * 100, i * 100 + 100)), "part": [i] * 100})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        s3.put_object(Bucket=bucket, Key=f"many/part-{i:03d}.parquet", Body=buf.getvalue())
    table, dead = read(ReadFromParquet, f"s3://{bucket}/many/", tmp_path, batch_rows=50)
    assert dead == [] and sorted(table.column("id").to_pylist()) == list(range(6000))
    assert len(set(table.column("part").to_pylist())) == 60


# ----------------------------------------------------------------------------- partitioned Parquet


@pytest.mark.parametrize("compression", ["snappy", "gzip", "zstd", "none"])
def test_partitioned_parquet_with_compression(bucket, s3, tmp_path, compression):
    write(batches(), WriteToParquet, f"s3://{bucket}/lake/orders", partition_by=["country"],
          compression=compression, schema_json=True)
    names = keys(s3, bucket)
    assert names == ["lake/orders.schema.json"] + [
        f"lake/orders/country={c}/part-00000-of-00001.parquet" for c in ("DE", "FR", "JP")]
    body = s3.get_object(Bucket=bucket, Key="lake/orders/country=FR/part-00000-of-00001.parquet")["Body"].read()
    meta = pq.ParquetFile(io.BytesIO(body)).metadata
    codec = meta.row_group(0).column(0).compression
    assert codec == {"snappy": "SNAPPY", "gzip": "GZIP", "zstd": "ZSTD", "none": "UNCOMPRESSED"}[compression]
    schema = json.loads(s3.get_object(Bucket=bucket, Key="lake/orders.schema.json")["Body"].read())
    assert [f["name"] for f in schema["fields"]] == SCHEMA.names

    for country in ("FR", "DE", "JP"):  # each partition folder holds its rows, without the partition column
        table, _ = read(ReadFromParquet, f"s3://{bucket}/lake/orders/country={country}/", tmp_path)
        assert "country" not in table.schema.names
        assert sorted(table.column("id").to_pylist()) == [r["id"] for r in ROWS if r["country"] == country]
    table, _ = read(ReadFromParquet, f"s3://{bucket}/lake/orders/", tmp_path)
    assert sorted(table.column("id").to_pylist()) == list(range(90))


def test_write_modes_on_s3(bucket, s3, tmp_path):
    path = f"s3://{bucket}/modes/out"
    write(batches(), WriteToJsonl, path, num_shards=3)
    assert len(keys(s3, bucket, "modes/")) == 3
    write(batches()[:1], WriteToJsonl, path, num_shards=1)  # overwrite: the three old shards go
    assert keys(s3, bucket, "modes/") == ["modes/out-00000-of-00001.jsonl"]
    write(batches()[:1], WriteToJsonl, path, num_shards=1, mode="append")
    appended = keys(s3, bucket, "modes/")
    assert len(appended) == 2 and "modes/out-00000-of-00001.jsonl" in appended
    assert any(k.startswith("modes/out-00000-of-00001-") for k in appended)  # append names carry a token
    with pytest.raises(Exception, match="error_if_exists"):
        write(batches()[:1], WriteToJsonl, path, mode="error_if_exists")
    assert keys(s3, bucket, "modes/") == appended
    table, _ = read(ReadFromJsonl, f"s3://{bucket}/modes/", tmp_path)
    assert table.num_rows == 60


# ----------------------------------------------------------------------------- endpoint and errors


def test_endpoint_from_aws_endpoint_url_only(bucket, s3, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", S3_SERVER.endpoint)
    write(batches(), WriteToParquet, f"s3://{bucket}/env/", opts=PipelineOptions([]))
    table, _ = read(ReadFromParquet, f"s3://{bucket}/env/", tmp_path, opts=PipelineOptions([]))
    assert table.num_rows == 90


def test_missing_bucket_errors_name_the_path(s3_endpoint, tmp_path):
    missing = f"beam-etl-missing-{uuid.uuid4().hex[:8]}"
    BeamPipeline(options=options())  # makes these the filesystem options, as a pipeline run does
    with pytest.raises(ValueError, match=rf"ReadFromCsv: path: 's3://{missing}/in/\*.csv' matches no file: "
                                         rf"bucket '{missing}' does not exist at {S3_SERVER.endpoint}"):
        ReadFromCsv(f"s3://{missing}/in/*.csv")
    with pytest.raises(ValueError, match=rf"WriteToParquet: path: cannot write 's3://{missing}/out/': "
                                         rf"bucket '{missing}' does not exist"):
        WriteToParquet(f"s3://{missing}/out/")


def test_unreachable_endpoint_fails_fast_naming_it(s3_endpoint, tmp_path):
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opts = PipelineOptions([f"--s3_endpoint_url=http://127.0.0.1:{port}"])
    started = time.perf_counter()
    with pytest.raises(Exception, match=rf"cannot list 's3://any-bucket/in/\*.csv': cannot reach the S3 endpoint "
                                        rf"http://127.0.0.1:{port}"):
        read(ReadFromCsv, "s3://any-bucket/in/*.csv", tmp_path, opts=opts, schema={"a": "string"},
             column_names=["a"], header=False)
    assert time.perf_counter() - started < 60  # not Beam's minutes of listing retries


def _template(tmp_path, bucket: str, s3, options: dict) -> str:
    csv = "id,amount,country\n" + "".join(f"{i},{i * 2.5},{['FR', 'DE'][i % 2]}\n" for i in range(40))
    s3.put_object(Bucket=bucket, Key="in/orders.csv", Body=csv.encode())
    template = tmp_path / f"s3-{uuid.uuid4().hex[:6]}.yaml"
    template.write_text(yaml.safe_dump({
        "name": "s3_round_trip",
        "options": options,
        "sources": [{"name": "orders", "type": "ReadFromCsv", "config": {"path": f"s3://{bucket}/in/*.csv"}}],
        "sinks": [{"name": "lake", "type": "WriteToParquet", "input": "orders",
                   "config": {"path": f"s3://{bucket}/lake/orders", "partition_by": ["country"],
                              "compression": "zstd"}}],
    }))
    return str(template)


def _check_lake(bucket: str, s3, tmp_path) -> None:
    assert keys(s3, bucket, "lake/") == [f"lake/orders/country={c}/part-00000-of-00001.parquet" for c in ("DE", "FR")]
    table, _ = read(ReadFromParquet, f"s3://{bucket}/lake/orders/", tmp_path)
    assert sorted(table.column("id").to_pylist()) == list(range(40))


def test_template_options_set_the_endpoint(bucket, s3, tmp_path):
    template = _template(tmp_path, bucket, s3, {"s3_endpoint_url": S3_SERVER.endpoint,
                                                "s3_region_name": S3_SERVER.region})
    code = run_template(template, [], ["--runner=DirectRunner"], output_dir=str(tmp_path), run_id="opts", quiet=True)
    assert code == 0, (tmp_path / "opts" / "summary.json").read_text()
    _check_lake(bucket, s3, tmp_path)


def test_environment_endpoint_reaches_worker_processes(bucket, s3, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", S3_SERVER.endpoint)  # inherited by every worker process
    template = _template(tmp_path, bucket, s3, {})
    code = run_template(template, [], ["--runner=DirectRunner", "--direct_num_workers=2",
                                       "--direct_running_mode=multi_processing"],
                        output_dir=str(tmp_path), run_id="env", quiet=True)
    assert code == 0, (tmp_path / "env" / "summary.json").read_text()
    _check_lake(bucket, s3, tmp_path)


def test_s3_options_reach_worker_processes(bucket, s3, tmp_path):
    opts = options("--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing")
    write(batches(), WriteToParquet, f"s3://{bucket}/mp/", opts=opts, partition_by=["country"])
    table, dead = read(ReadFromParquet, f"s3://{bucket}/mp/", tmp_path, opts=opts)
    assert dead == [] and sorted(table.column("id").to_pylist()) == list(range(90))


def test_template_options_reach_worker_processes_of_beam_etl_run(bucket, s3, tmp_path, monkeypatch):
    """python -m beam_etl.run's batch runner hands every option to its worker processes (no env fallback)."""
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    template = _template(tmp_path, bucket, s3, {"s3_endpoint_url": S3_SERVER.endpoint,
                                                "s3_region_name": S3_SERVER.region})
    code = run_template(template, [], ["--runner=DirectRunner", "--direct_num_workers=2",
                                       "--direct_running_mode=multi_processing"],
                        output_dir=str(tmp_path), run_id="mp-opts", quiet=True)
    assert code == 0, (tmp_path / "mp-opts" / "summary.json").read_text()
    _check_lake(bucket, s3, tmp_path)
