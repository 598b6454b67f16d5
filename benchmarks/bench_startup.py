#!/usr/bin/env python
"""What beam_etl's start-up handling and column pruning buy, each switched off in turn.

    python benchmarks/bench_startup.py --write-report     # 1M rows, 5 rounds; BENCHMARKS.md section "startup"
    python benchmarks/bench_startup.py --rows 100000 --repeats 1   # a quick look

Every run is a fresh process on the same cached CSV (``benchmarks/generate.py``, seed 42),
measured as in ``run_benchmarks.py`` (wall time of the whole process, peak RSS of its tree).
The variants run round-robin, one of each per round, so a slow spell on the machine hits all:

- ``pyarrow``: the reference script (``job_pyarrow.py``);
- ``beam_etl``: the benchmark template as users run it (``python -m beam_etl.run``);
- ``no_gc_freeze``: the same with ``BEAM_ETL_NO_GC_FREEZE=1`` (CPython's collector runs during
  the imports and scans them again at exit: ``beam_etl/_startup.py``);
- ``no_pruning``: the same with ``--set optimize.prune_columns=false`` (every CSV column is carried
  through the dedup shuffle: ``beam_etl/pruning.py``);
- ``neither``: both switched off;
- ``cli_only`` / ``cli_only_no_gc_freeze``: ``python -m beam_etl.run --list-templates``, i.e. the
  start-up and shut-down of the command line alone, with and without the collector handling.

Every job's Parquet result is checked against pyarrow's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from run_benchmarks import compare, ensure_data, machine_info, measure, merge_section, read_result  # noqa: E402

SECTION = "startup"
NO_FREEZE = {"BEAM_ETL_NO_GC_FREEZE": "1"}
NO_PRUNING = ["--set", "optimize.prune_columns=false"]

# name -> (what it is, extra job arguments, extra environment, runs the job?)
VARIANTS: dict[str, tuple[str, list[str], dict[str, str], bool]] = {
    "pyarrow": ("pyarrow script (reference)", [], {}, True),
    "beam_etl": ("beam_etl, as shipped", [], {}, True),
    "no_gc_freeze": ("beam_etl, `BEAM_ETL_NO_GC_FREEZE=1`", [], NO_FREEZE, True),
    "no_pruning": ("beam_etl, `--set optimize.prune_columns=false`", NO_PRUNING, {}, True),
    "neither": ("beam_etl, both switched off", NO_PRUNING, NO_FREEZE, True),
    "cli_only": ("`python -m beam_etl.run --list-templates`", [], {}, False),
    "cli_only_no_gc_freeze": ("`... --list-templates`, `BEAM_ETL_NO_GC_FREEZE=1`", [], NO_FREEZE, False),
}


def log(message: str) -> None:
    print(f"[bench_startup] {message}", flush=True)


def command(name: str, csv: Path, out: Path, run_dir: Path) -> list[str]:
    extra = VARIANTS[name][1]
    if name == "pyarrow":
        return [sys.executable, str(HERE / "job_pyarrow.py"), "--input", str(csv), "--output", str(out)]
    if not VARIANTS[name][3]:
        return [sys.executable, "-m", "beam_etl.run", "--list-templates"]
    return [sys.executable, str(HERE / "job_beam_etl.py"), "--input", str(csv), "--output", str(out),
            "--run-dir", str(run_dir), *extra]


def run_once(name: str, csv: Path, work: Path, timeout_s: float) -> dict[str, Any]:
    out, run_dir = work / "out" / name, work / "runs"
    shutil.rmtree(out, ignore_errors=True)
    saved = dict(os.environ)
    os.environ.update(VARIANTS[name][2])
    try:
        result = measure(command(name, csv, out, run_dir), work / f"{name}.log", ROOT, timeout_s)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if result["rc"] == 0 and VARIANTS[name][3]:
        result["result"] = read_result(out)
    return result


def table(rows: int, runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    def median(name: str) -> float:
        return statistics.median(r["wall_s"] for r in runs[name])

    lines = ["| variant | runs | median s | min s | max s | x pyarrow | vs beam_etl as shipped | peak RSS MB | check |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    reference = runs["pyarrow"][0].get("result")
    for name, (label, *_rest) in VARIANTS.items():
        walls = [r["wall_s"] for r in runs[name]]
        checks = {compare(r["result"], reference) or "ok" for r in runs[name] if "result" in r} if reference else set()
        check = "—" if not VARIANTS[name][3] else ", ".join(sorted(checks)) or "no result"
        ratio = f"{median(name) / median('pyarrow'):.2f}" if VARIANTS[name][3] else "—"
        versus = f"{median(name) - median('beam_etl'):+.2f} s" if VARIANTS[name][3] and name != "pyarrow" else "—"
        lines.append(f"| {label} | {len(walls)} | {median(name):.2f} | {min(walls):.2f} | {max(walls):.2f} | {ratio} "
                     f"| {versus} | {max(r['peak_rss_mb'] for r in runs[name]):,.0f} | {check} |")
    return lines


def report(rows: int, csv: Path, runs: dict[str, list[dict[str, Any]]], argv: list[str]) -> str:
    m = machine_info()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    return "\n".join([
        "## Start-up and column pruning",
        "",
        f"Generated by `python benchmarks/bench_startup.py {' '.join(argv)}` on {when} (UTC); rerun it rather than "
        "editing this section.",
        "",
        f"**What**: the benchmark job (`benchmarks/bench_job.yaml`) on {rows:,} rows ({csv.stat().st_size / 1e6:,.0f} "
        "MB CSV, seed 42) on DirectRunner, with beam_etl's two start-up/data-volume optimisations switched off "
        "one at a time: the garbage-collector handling of the command line (`beam_etl/_startup.py`: the collector "
        "pauses while the ~2,400 modules import, then `gc.freeze()` moves what they created out of its reach) and "
        "column pruning (`beam_etl/pruning.py`: only `id`, `category` and `amount` go on past the CSV source, "
        "after it has validated every column). `--list-templates` rows time the command line's start-up and exit "
        "alone. Variants run round-robin; each run is a fresh process; wall time includes interpreter start, "
        "imports and exit. Every job's result is checked against the pyarrow script's.",
        "",
        f"**Machine**: {m['nproc']} CPUs ({m['cpu']}), {m['ram_gb']} GiB RAM, Python {m['python']}, apache-beam "
        f"{m['apache-beam']}, pyarrow {m['pyarrow']}.",
        "",
        *table(rows, runs),
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5, help="rounds (one run of every variant each)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/beam_etl_bench"))
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--write-report", action="store_true", help="write the section into BENCHMARKS.md")
    args = parser.parse_args(argv)
    csv, _ = ensure_data(args.workdir, args.rows, args.seed)
    work = args.workdir / "startup"
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    for round_no in range(1, args.repeats + 1):
        for name in VARIANTS:
            result = run_once(name, csv, work, args.timeout)
            if result["rc"] != 0:
                log(f"{name} failed (exit {result['rc']}); log: {work / (name + '.log')}")
                return 1
            runs[name].append(result)
            log(f"round {round_no}/{args.repeats} {name}: {result['wall_s']:.2f} s, "
                f"peak RSS {result['peak_rss_mb']:,.0f} MB")
    text = report(args.rows, csv, runs, sys.argv[1:] if argv is None else argv)
    print(text)
    if args.write_report:
        merge_section(ROOT / "BENCHMARKS.md", SECTION, text)
        log("wrote the startup section of BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
