#!/usr/bin/env python
"""The idiomatic per-element Beam pipeline: one Python dict per row, DirectRunner.

    python benchmarks/job_beam_naive.py --input orders.csv --output out_dir [beam options]

``ReadFromText(skip_header_lines=1)`` -> ``csv.reader`` per line into a dict (empty field ->
None; ``id`` and ``quantity`` to int, ``amount`` to float, as pyarrow would infer) ->
``Filter`` rows with a null in ``id``/``category``/``amount`` -> key by ``id`` and
``CombinePerKey`` keeping one row per id -> ``CombinePerKey`` of (sum, count) per category
-> ``WriteToParquet`` (one shard).

Beam gives no order inside a key, so "keep the first occurrence" is "keep one occurrence"
here; the generated data makes duplicates byte-for-byte copies, so the result is the same.
Any extra arguments are Beam pipeline options (default ``--runner=DirectRunner``).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import PipelineOptions

HEADER = ["id", "name", "email", "city", "country", "amount", "quantity", "ts", "category", "status"]
REQUIRED = ("id", "category", "amount")
RESULT_SCHEMA = pa.schema([("category", pa.string()), ("amount_sum", pa.float64()), ("amount_avg", pa.float64()),
                           ("orders", pa.int64())])


def parse_line(line: str) -> dict:
    values = next(csv.reader([line]))
    row = {k: (v if v != "" else None) for k, v in zip(HEADER, values, strict=False)}
    for key in ("id", "quantity"):
        if row.get(key) is not None:
            row[key] = int(row[key])
    if row.get("amount") is not None:
        row["amount"] = float(row["amount"])
    return row


def has_required(row: dict) -> bool:
    return all(row.get(k) is not None for k in REQUIRED)


def first(rows):
    """Keeps one row per key (CombinePerKey with a callable combines lists of values)."""
    return next(iter(rows))


class SumCountFn(beam.CombineFn):
    """(sum, count) of the amounts of one category."""

    def create_accumulator(self):
        return 0.0, 0

    def add_input(self, acc, amount):
        return acc[0] + amount, acc[1] + 1

    def merge_accumulators(self, accs):
        sums, counts = zip(*accs, strict=True)
        return sum(sums), sum(counts)

    def extract_output(self, acc):
        return acc


def to_result(kv) -> dict:
    category, (total, count) = kv
    return {"category": category, "amount_sum": total, "amount_avg": total / count if count else None,
            "orders": count}


def build(p: beam.Pipeline, input_path: str, output_dir: str) -> None:
    rows = (
        p
        | "Read" >> beam.io.ReadFromText(input_path, skip_header_lines=1)
        | "Parse" >> beam.Map(parse_line)
        | "DropNulls" >> beam.Filter(has_required)
    )
    deduped = (
        rows
        | "KeyById" >> beam.Map(lambda r: (r["id"], r))
        | "FirstPerId" >> beam.CombinePerKey(first)
        | "Rows" >> beam.Values()
    )
    (
        deduped
        | "KeyByCategory" >> beam.Map(lambda r: (r["category"], r["amount"]))
        | "SumCount" >> beam.CombinePerKey(SumCountFn())
        | "ToResult" >> beam.Map(to_result)
        | "Write" >> beam.io.WriteToParquet(
            str(Path(output_dir) / "result"), RESULT_SCHEMA, num_shards=1, file_name_suffix=".parquet"
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="CSV written by benchmarks/generate.py")
    parser.add_argument("--output", required=True, help="folder for the result Parquet file")
    args, beam_args = parser.parse_known_args(argv)
    if not any(a.startswith("--runner") for a in beam_args):
        beam_args = ["--runner=DirectRunner", *beam_args]
    Path(args.output).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with beam.Pipeline(options=PipelineOptions(beam_args)) as p:
        build(p, args.input, args.output)
    print(f"beam_naive: done in {time.perf_counter() - t0:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
