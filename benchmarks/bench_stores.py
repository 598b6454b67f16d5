#!/usr/bin/env python
"""Benchmarks the MongoDB sink and Parquet-on-S3 writes against plain-library references.

    bash scripts/services.sh up ferretdb s3
    python benchmarks/bench_stores.py --rows 500000 --repeats 3

Four jobs, each run ``--repeats`` times in a fresh subprocess on the same generated table
(fixed seed, written once to a local Parquet file that every job reads inside its timed part):

* ``mongo_beam_etl``: ``ReadFromParquet(local) | WriteToMongoDB(mode=insert)`` on the in-process
  FnApiRunner (what ``python -m beam_etl.run --runner=DirectRunner`` uses; pipeline start-up
  included in the timed part);
* ``mongo_pymongo`` (reference): ``pq.read_table`` then ``batch.to_pylist()`` +
  ``insert_many(ordered=False)`` per 65,536-row batch;
* ``s3_beam_etl``: ``ReadFromParquet(local) | WriteToParquet("s3://...", compression=snappy)``
  through Beam's S3 filesystem (temporary objects, then copy into place);
* ``s3_pyarrow`` (reference): ``pq.read_table`` then ``pq.write_table`` to
  ``pyarrow.fs.S3FileSystem(endpoint_override=...)``.

Timed part: ``time.perf_counter()`` inside the job around read + write; rows/s = rows / median
of that. Wall time (interpreter start, imports and loading included) and peak RSS (largest sum
over the process tree, sampled every 50 ms) come from ``run_benchmarks.measure``. Every run is
checked: the collection holds ``rows`` documents / the written Parquet objects hold ``rows``
rows. The Markdown section ``stores`` of BENCHMARKS.md is rewritten (``merge_section``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from run_benchmarks import machine_info, measure, merge_section  # noqa: E402

BATCH_ROWS = 65_536
JOBS = {
    "mongo_beam_etl": "beam_etl `ReadFromParquet` -> `WriteToMongoDB` (insert, unordered bulk writes)",
    "mongo_pymongo": "`pq.read_table`, then pymongo `insert_many(ordered=False)` of `to_pylist()` dicts per batch "
                     "(reference)",
    "s3_beam_etl": "beam_etl `ReadFromParquet` -> `WriteToParquet` on s3:// (Beam S3 filesystem, temp objects + copy)",
    "s3_pyarrow": "`pq.read_table`, then `pq.write_table` to `pyarrow.fs.S3FileSystem(endpoint_override=...)` "
                  "(reference)",
}
REFERENCE = {"mongo_beam_etl": "mongo_pymongo", "s3_beam_etl": "s3_pyarrow"}
RESULT_PREFIX = "BENCH_RESULT "
DEFAULT_MONGO = os.environ.get("BEAM_ETL_MONGO_URI", "mongodb://127.0.0.1:57017/")
DEFAULT_S3 = os.environ.get("BEAM_ETL_S3_ENDPOINT", "http://127.0.0.1:55900")


# ---------------------------------------------------------------- data

def generate(rows: int, seed: int, path: Path) -> None:
    """A flat orders table: ids, text, numbers, a UTC timestamp and a category."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    ids = np.arange(rows, dtype=np.int64)
    cities = np.array(["Paris", "Berlin", "Tokyo", "Lima", "Oslo", "Cairo", "Perth", "Quito"])
    categories = np.array(["books", "games", "garden", "food", "toys", "tools", "music", "sport"])
    start = np.datetime64("2024-01-01T00:00:00", "us")
    table = pa.table({
        "id": ids,
        "name": pa.array([f"customer {i}" for i in rng.integers(0, rows // 3 + 1, rows)]),
        "email": pa.array([f"user{i}@example.org" for i in ids]),
        "city": pa.array(cities[rng.integers(0, len(cities), rows)]),
        "amount": pa.array(np.round(rng.gamma(2.0, 40.0, rows), 2)),
        "quantity": pa.array(rng.integers(1, 10, rows)),
        "ts": pa.array(start + rng.integers(0, 365 * 86_400_000_000, rows).astype("timedelta64[us]"),
                       pa.timestamp("us", "UTC")),
        "category": pa.array(categories[rng.integers(0, len(categories), rows)]),
    })
    pq.write_table(table, path)


def load(path: Path) -> list:
    import pyarrow.parquet as pq

    return pq.read_table(path).combine_chunks().to_batches(max_chunksize=BATCH_ROWS)


FN_API_RUNNER = "--runner=apache_beam.runners.portability.fn_api_runner.fn_runner.FnApiRunner"


# ---------------------------------------------------------------- jobs (run in a subprocess)

def _s3_env(endpoint: str) -> None:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def _parquet_rows(endpoint: str, bucket: str, prefix: str) -> int:
    import boto3
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    client = boto3.client("s3", endpoint_url=endpoint)
    fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", region="us-east-1")
    total = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith(".parquet"):
                total += pq.ParquetFile(fs.open_input_file(f"{bucket}/{obj['Key']}")).metadata.num_rows
    return total


def run_job(job: str, data: Path, rows: int, mongo_uri: str, s3_endpoint: str, bucket: str) -> dict:
    import apache_beam as beam
    import pyarrow.parquet as pq
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_etl.io.files import ReadFromParquet

    run_id = uuid.uuid4().hex[:8]
    if job.startswith("mongo"):
        from pymongo import MongoClient

        client = MongoClient(mongo_uri)
        coll = client["beam_etl_bench"][f"{job}_{run_id}"]
        coll.drop()
        t0 = time.perf_counter()
        if job == "mongo_pymongo":
            for batch in pq.read_table(data).to_batches(max_chunksize=BATCH_ROWS):
                coll.insert_many(batch.to_pylist(), ordered=False)
        else:
            from beam_etl.io.mongodb import WriteToMongoDB

            with beam.Pipeline(options=PipelineOptions([FN_API_RUNNER])) as p:
                batches, _ = p | ReadFromParquet(str(data), batch_rows=BATCH_ROWS)
                _ = batches | WriteToMongoDB(uri=mongo_uri, database="beam_etl_bench", collection=coll.name)
        seconds = time.perf_counter() - t0
        written = coll.count_documents({})
        coll.drop()
        client.close()
    else:
        _s3_env(s3_endpoint)
        prefix = f"{job}/{run_id}/"
        t0 = time.perf_counter()
        if job == "s3_pyarrow":
            import pyarrow.fs as pafs

            fs = pafs.S3FileSystem(endpoint_override=s3_endpoint, scheme="http", region="us-east-1")
            pq.write_table(pq.read_table(data), f"{bucket}/{prefix}part-00000.parquet", filesystem=fs,
                           compression="snappy")
        else:
            from beam_etl.io.files import WriteToParquet

            with beam.Pipeline(options=PipelineOptions([FN_API_RUNNER, f"--s3_endpoint_url={s3_endpoint}"])) as p:
                batches, _ = p | ReadFromParquet(str(data), batch_rows=BATCH_ROWS)
                _ = batches | WriteToParquet(f"s3://{bucket}/{prefix}", compression="snappy")
        seconds = time.perf_counter() - t0
        written = _parquet_rows(s3_endpoint, bucket, prefix)
    return {"job": job, "seconds": seconds, "rows_written": written, "ok": written == rows}


# ---------------------------------------------------------------- driver

def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def render(results: dict[str, list[dict]], rows: int, command: str, seed: int, started: str, info: dict) -> str:
    lines = [
        "# Benchmarks: stores (MongoDB sink, Parquet on S3)",
        "",
        f"Generated by `{command}` on {started} (UTC); rerun it rather than editing this section.",
        "",
        f"**Data**: {rows:,} rows generated with seed {seed} (id, name, email, city, amount, quantity, ts "
        "timestamp[us, UTC], category) in a local Parquet file that every job reads inside its timed part; "
        f"batches of {BATCH_ROWS:,} rows.",
        "",
        "**Servers**: FerretDB v1 (SQLite backend) and moto's S3 server on loopback "
        "(`scripts/services.sh up ferretdb s3`). Both are test doubles: absolute rates say more about them "
        "than about MongoDB or S3; the ratios compare two clients against the same server.",
        "",
        f"**Machine**: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gb']} GiB RAM, {info['os']}. Python "
        f"{info['python']}, apache-beam {info['apache-beam']}, pyarrow {info['pyarrow']}.",
        "",
        "**Method**: every run is a fresh subprocess. `write s` is `time.perf_counter()` inside the job "
        "around reading the local file and writing (for beam_etl: building and running the pipeline "
        "`ReadFromParquet | sink` on the in-process FnApiRunner); rows/s = rows / median write s. "
        "`wall s` is the whole subprocess (interpreter start, imports, checking). Peak RSS "
        "is the largest sum of RSS over the process tree, sampled every 50 ms. `x ref` = median write s / "
        "the reference's median write s. Each run is checked: the collection holds every row / the Parquet "
        "objects hold every row.",
        "",
    ]
    for title, jobs in (("MongoDB: insert", ["mongo_pymongo", "mongo_beam_etl"]),
                        ("S3: Parquet write (snappy)", ["s3_pyarrow", "s3_beam_etl"])):
        lines += [f"## {title}, {rows:,} rows", "",
                  "| job | runs | median write s | min | max | rows/s | median wall s | peak RSS MB | x ref | check |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        medians = {}
        for job in jobs:
            ok = [r for r in results.get(job, []) if r.get("ok")]
            medians[job] = statistics.median(r["seconds"] for r in ok) if ok else None
        for job in jobs:
            runs = results.get(job, [])
            ok = [r for r in runs if r.get("ok")]
            med = medians[job]
            ref = medians.get(REFERENCE.get(job, job))
            walls = [r["wall_s"] for r in ok]
            lines.append(
                f"| `{job}` | {len(ok)} | {_fmt(med, '.2f')} | "
                f"{_fmt(min((r['seconds'] for r in ok), default=None), '.2f')} | "
                f"{_fmt(max((r['seconds'] for r in ok), default=None), '.2f')} | "
                f"{_fmt(rows / med if med else None, ',.0f')} | "
                f"{_fmt(statistics.median(walls) if walls else None, '.2f')} | "
                f"{_fmt(max((r['peak_rss_mb'] for r in ok), default=None), ',.0f')} | "
                f"{_fmt(med / ref if med and ref else None, '.2f')} | "
                f"{'ok' if runs and len(ok) == len(runs) else 'FAILED'} |")
        lines.append("")
    lines += [f"- `{job}`: {text}" for job, text in JOBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--mongo-uri", default=DEFAULT_MONGO)
    parser.add_argument("--s3-endpoint", default=DEFAULT_S3)
    parser.add_argument("--bucket", default="beam-etl-bench")
    parser.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    parser.add_argument("--workdir", type=Path, default=ROOT / "beam_etl_output" / "bench_stores")
    parser.add_argument("--report", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-report", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    parser.add_argument("--timeout-s", type=float, default=1800)
    parser.add_argument("--job", choices=list(JOBS), help=argparse.SUPPRESS)  # one run, inside the subprocess
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.job:
        result = run_job(args.job, args.data, args.rows, args.mongo_uri, args.s3_endpoint, args.bucket)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0 if result["ok"] else 1

    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    command = "python benchmarks/bench_stores.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = args.workdir / f"orders_{args.rows}_seed{args.seed}.parquet"
    if not data.exists():
        print(f"[data] generating {args.rows:,} rows (seed {args.seed}) -> {data}", flush=True)
        generate(args.rows, args.seed, data)
    if any(j.startswith("s3") for j in args.jobs):
        import boto3

        _s3_env(args.s3_endpoint)
        client = boto3.client("s3", endpoint_url=args.s3_endpoint)
        if args.bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=args.bucket)

    results: dict[str, list[dict]] = {}
    failed = False
    for repeat in range(args.repeats):
        for job in args.jobs:  # interleaved, so drift in the servers hits every job alike
            log_path = args.workdir / f"{job}-{repeat}.log"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--job", job, "--data", str(data),
                   "--rows", str(args.rows), "--mongo-uri", args.mongo_uri, "--s3-endpoint", args.s3_endpoint,
                   "--bucket", args.bucket]
            run = measure(cmd, log_path, ROOT, args.timeout_s)
            result = {"ok": False}
            for line in log_path.read_text(errors="replace").splitlines():
                if line.startswith(RESULT_PREFIX):
                    result = json.loads(line[len(RESULT_PREFIX):])
            run.update(result)
            run["ok"] = bool(result.get("ok")) and run["rc"] == 0
            failed |= not run["ok"]
            results.setdefault(job, []).append(run)
            print(f"[{job} #{repeat + 1}] write {run.get('seconds', float('nan')):.2f}s wall {run['wall_s']:.2f}s "
                  f"peak {run['peak_rss_mb']:.0f} MB {'ok' if run['ok'] else 'FAILED (see ' + str(log_path) + ')'}",
                  flush=True)
    text = render(results, args.rows, command, args.seed, started, machine_info())
    print("\n" + text)
    if not args.no_report:
        merge_section(args.report, "stores", text)
        print(f"\nwrote section 'stores' of {args.report}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
