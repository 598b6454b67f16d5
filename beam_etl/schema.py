"""Command line: infer a file's schema, or the keys and relationships between files.

    python -m beam_etl.schema infer SOURCE [--format csv|tsv|jsonl|json|parquet] [--sample-rows N] [--json]
    python -m beam_etl.schema relate SOURCE SOURCE [...] [--threshold 0.5] [--json]

Files are read with pyarrow directly (CSV with every column as text, so inference sees the raw
values; malformed rows are skipped and counted). ``infer --beam`` runs the ``InferSchema``
transform in a Beam pipeline (DirectRunner unless Beam options say otherwise) over the repo's
file sources instead. Exit codes: 0 done, 1 failed, 2 usage or input error (missing file,
unknown format, unreadable input).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")
NULL_VALUES = ("", "NA", "N/A", "null", "NULL", "None")  # as beam_etl's CSV source
_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
             ".parquet": "parquet", ".pq": "parquet"}
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")


class CliError(Exception):
    """A usage or input problem: printed on stderr, exit code 2."""


def detect_format(path: str, given: str | None) -> str:
    """``given``, else the format named by the file's extension (a compression suffix is skipped)."""
    if given:
        return given
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    while suffixes and suffixes[-1] in _COMPRESSED:
        suffixes.pop()
    fmt = _SUFFIXES.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise CliError(f"{path}: cannot tell the format from the extension; pass --format "
                       f"({'|'.join(FORMATS)})")
    return fmt


def _check_exists(path: str) -> None:
    if not os.path.exists(path):
        raise CliError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CliError(f"{path}: is a folder; give a file")


def _csv_header(path: str, delimiter: str) -> list[str]:
    with pa.input_stream(path, compression="detect") as raw:
        head = raw.read(1 << 20)
    line = head.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace").rstrip("\r")
    header = next(csv.reader([line], delimiter=delimiter), None)
    if not header:
        raise CliError(f"{path}: empty file (no header line)")
    return header


def read_csv_as_text(path: str, delimiter: str = ",") -> tuple[pa.Table, list[str]]:
    """Every column as strings (``NULL_VALUES`` as nulls); malformed rows skipped and counted."""
    import pyarrow.csv as pa_csv

    names = _csv_header(path, delimiter)
    skipped = [0]

    def skip(_row: Any) -> str:
        skipped[0] += 1
        return "skip"

    table = pa_csv.read_csv(
        path, read_options=pa_csv.ReadOptions(use_threads=True, encoding="utf8"),
        parse_options=pa_csv.ParseOptions(delimiter=delimiter, invalid_row_handler=skip),
        convert_options=pa_csv.ConvertOptions(column_types={n: pa.string() for n in names},
                                              null_values=list(NULL_VALUES), strings_can_be_null=True))
    notes = [f"{path}: skipped {skipped[0]:,} malformed row(s)"] if skipped[0] else []
    return table, notes


def _objects_to_table(objects: list[Any], path: str) -> pa.Table:
    rows = [o for o in objects if isinstance(o, dict)]
    if len(rows) != len(objects):
        other = next(o for o in objects if not isinstance(o, dict))
        raise CliError(f"{path}: expected JSON objects, found a {type(other).__name__}")
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    columns = {}
    for key in keys:
        values = [row.get(key) for row in rows]
        try:
            columns[key] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # mixed types: keep the text of each value
            columns[key] = pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values],
                                    pa.string())
    return pa.table(columns)


def read_source(path: str, fmt: str | None = None) -> tuple[pa.Table, list[str]]:
    """Reads a file for inference; returns the table and notes (skipped rows)."""
    _check_exists(path)
    fmt = detect_format(path, fmt)
    try:
        if fmt in ("csv", "tsv"):
            return read_csv_as_text(path, "\t" if fmt == "tsv" else ",")
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path), []
        if fmt == "jsonl":
            import pyarrow.json as pa_json

            try:
                return pa_json.read_json(path), []
            except (pa.ArrowInvalid, pa.ArrowTypeError):  # conflicting types: parse in Python
                with pa.input_stream(path, compression="detect") as f:
                    lines = f.read().decode("utf-8-sig").splitlines()
                return _objects_to_table([json.loads(line) for line in lines if line.strip()], path), []
        with pa.input_stream(path, compression="detect") as f:
            data = json.loads(f.read().decode("utf-8-sig"))
        return _objects_to_table(data if isinstance(data, list) else [data], path), []
    except CliError:
        raise
    except (pa.ArrowException, ValueError, OSError, UnicodeDecodeError) as err:
        raise CliError(f"{path}: cannot read as {fmt}: {err}") from None


def sample_rows(table: pa.Table, n: int | None, seed: int = 0) -> pa.Table:
    """A uniform sample of ``n`` rows (in file order), or the table when it is not larger."""
    if n is None or table.num_rows <= n:
        return table
    keep = np.sort(np.random.default_rng(seed).choice(table.num_rows, n, replace=False))
    return table.take(pa.array(keep))


def _options(args: argparse.Namespace) -> Any:
    from beam_etl.ml.schema_infer import InferOptions

    try:
        return InferOptions(threshold=args.threshold, semantic=not args.no_semantic)
    except ValueError as err:
        raise CliError(f"--{err}") from None


def _infer_with_beam(path: str, fmt: str, args: argparse.Namespace, beam_args: list[str]) -> Any:
    """Runs ReadFromX -> InferSchema -> WriteInferredSchema on a Beam runner; returns the schema."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_etl.io.files import ReadFromCsv, ReadFromJson, ReadFromJsonl, ReadFromParquet
    from beam_etl.ml.schema_infer import InferredSchema
    from beam_etl.transforms.schema import InferSchema, WriteInferredSchema

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "schema.json")
        if fmt in ("csv", "tsv"):
            delimiter = "\t" if fmt == "tsv" else ","
            header = _csv_header(path, delimiter)
            source = ReadFromCsv(path, delimiter=delimiter, schema=dict.fromkeys(header, "string"))
        elif fmt == "jsonl":
            source = ReadFromJsonl(path)
        elif fmt == "json":
            source = ReadFromJson(path)
        else:
            source = ReadFromParquet(path)
        options = _options(args)
        argv = beam_args if any(a.startswith("--runner") for a in beam_args) else ["--runner=DirectRunner", *beam_args]
        with beam.Pipeline(options=PipelineOptions(argv)) as p:
            batches, read_errors = p | "Read" >> source
            schemas, letters = batches | "InferSchema" >> InferSchema(
                threshold=options.threshold, semantic=options.semantic, sample_rows=args.sample_rows, seed=0)
            _ = schemas | "Write" >> WriteInferredSchema(out)
            _ = ((read_errors, letters) | "DeadLetters" >> beam.Flatten() | "Count" >> beam.combiners.Count.Globally()
                 | "WriteCount" >> beam.Map(lambda n: Path(out + ".dlq").write_text(str(n))))
        schema = InferredSchema.from_dict(json.loads(Path(out).read_text()))
        dead = int(Path(out + ".dlq").read_text()) if Path(out + ".dlq").exists() else 0
    if dead:
        print(f"{path}: {dead:,} record(s) went to the dead-letter output (unreadable rows)", file=sys.stderr)
    return schema


def cmd_infer(args: argparse.Namespace, beam_args: list[str]) -> int:
    from beam_etl.ml.schema_infer import infer_schema

    _check_exists(args.source)
    fmt = detect_format(args.source, args.format)
    if args.sample_rows is not None and args.sample_rows < 1:
        raise CliError(f"--sample-rows {args.sample_rows}: expected a positive number of rows")
    if args.beam:
        schema = _infer_with_beam(args.source, fmt, args, beam_args)
    else:
        if beam_args:
            raise CliError(f"unrecognized arguments: {' '.join(beam_args)} (Beam options need --beam)")
        table, notes = read_source(args.source, fmt)
        for note in notes:
            print(note, file=sys.stderr)
        schema = infer_schema(sample_rows(table, args.sample_rows), _options(args))
    text = schema.to_json() if args.json else schema.format_table()
    if args.output:
        Path(args.output).write_text(schema.to_json() + "\n")
    print(text)
    return EXIT_OK


def cmd_relate(args: argparse.Namespace) -> int:
    from beam_etl.ml.relationships import detect_relationships

    if len(args.sources) < 1:
        raise CliError("relate needs at least one SOURCE")
    if not 0 <= args.threshold <= 1:
        raise CliError(f"--threshold {args.threshold}: expected a score between 0 and 1")
    tables: dict[str, pa.Table] = {}
    for path in args.sources:
        name = _table_name(path, tables)
        table, notes = read_source(path, args.format)
        for note in notes:
            print(note, file=sys.stderr)
        tables[name] = sample_rows(table, args.sample_rows)
    report = detect_relationships(tables, threshold=args.threshold)
    print(report.to_json() if args.json else report.format_text())
    return EXIT_OK


def _table_name(path: str, taken: dict[str, Any]) -> str:
    name = Path(path).name
    while Path(name).suffix.lower() in (*_SUFFIXES, *_COMPRESSED):
        name = Path(name).stem
    base, i = name, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beam_etl.schema",
        description="Infer storage types, statistics and semantic types of a file, or keys and foreign keys "
                    "between files.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p_infer = commands.add_parser("infer", help="print the inferred schema of a file",
                                  description="Infer each column's storage type (with confidence), nulls, "
                                              "distinct values, min/max, lengths and semantic type.")
    p_infer.add_argument("source", metavar="SOURCE", help="a CSV, TSV, JSONL, JSON or Parquet file")
    p_infer.add_argument("--format", choices=FORMATS, help="the file format (default: from the extension)")
    p_infer.add_argument("--sample-rows", type=int, metavar="N", help="infer from a uniform sample of N rows")
    p_infer.add_argument("--threshold", type=float, default=0.98,
                         help="share of non-null values a type must hold (default 0.98)")
    p_infer.add_argument("--no-semantic", action="store_true", help="skip semantic type detection")
    p_infer.add_argument("--json", action="store_true", help="print the schema as JSON")
    p_infer.add_argument("--output", metavar="PATH", help="also write the schema JSON to PATH")
    p_infer.add_argument("--beam", action="store_true",
                         help="run the InferSchema transform in a Beam pipeline (extra options go to Beam)")
    p_relate = commands.add_parser("relate", help="primary-key and foreign-key candidates across files",
                                   description="Find key candidates of each file and foreign keys between them "
                                               "(inclusion of values, names, types). Table names are file names.")
    p_relate.add_argument("sources", nargs="+", metavar="SOURCE", help="two or more files (one is allowed)")
    p_relate.add_argument("--format", choices=FORMATS, help="the format of every file (default: by extension)")
    p_relate.add_argument("--threshold", type=float, default=0.5, help="minimum foreign-key score (default 0.5)")
    p_relate.add_argument("--sample-rows", type=int, metavar="N", help="use a uniform sample of N rows per file")
    p_relate.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m beam_etl.schema``; returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        if args.command == "infer":
            return cmd_infer(args, extra)
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return cmd_relate(args)
    except CliError as err:
        print(f"beam_etl.schema: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. `| head`
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
