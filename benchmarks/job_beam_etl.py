#!/usr/bin/env python
"""The benchmark job through beam_etl: runs the template ``benchmarks/bench_job.yaml``.

    python benchmarks/job_beam_etl.py --input orders.csv --output out_dir [--set k=v ...] [beam options]

Same work as ``job_pyarrow.py`` and ``job_beam_naive.py`` (read CSV -> drop rows with a null
in ``id``/``category``/``amount`` -> exact dedup on ``id`` -> group by ``category`` -> Parquet),
over Arrow RecordBatches, through the command line ``python -m beam_etl.run`` (run in this
process as ``__main__``). Extra arguments are Beam pipeline options (default
``--runner=DirectRunner``). Exits with status 3 and a one-line reason when ``beam_etl.run`` is
not importable or the runner preflight refuses the runner, so the harness can report it and go on.
"""

from __future__ import annotations

import argparse
import importlib.util
import runpy
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TEMPLATE = HERE / "bench_job.yaml"
NOT_AVAILABLE = 3
REFUSED_BY_PREFLIGHT = 2  # beam_etl.run.EXIT_CONFIG: the template is valid, so the runner was refused


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="CSV written by benchmarks/generate.py")
    parser.add_argument("--output", required=True, help="folder for the result Parquet file")
    parser.add_argument("--template", default=str(TEMPLATE), help="template to run (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra template override, as for python -m beam_etl.run")
    parser.add_argument("--run-dir", default=None,
                        help="folder for the run summary and dead letters (default: <output>/../beam_etl_runs)")
    args, beam_args = parser.parse_known_args(argv)
    if not any(a.startswith("--runner") for a in beam_args):
        beam_args = ["--runner=DirectRunner", *beam_args]

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if importlib.util.find_spec("beam_etl") is None or importlib.util.find_spec("beam_etl.run") is None:
        print("beam_etl: NOT AVAILABLE: module beam_etl.run does not exist yet (beam_etl/run.py)", file=sys.stderr)
        return NOT_AVAILABLE

    Path(args.output).mkdir(parents=True, exist_ok=True)
    run_dir = args.run_dir or str(Path(args.output).resolve().parent / "beam_etl_runs")
    # Exactly what a user types: python -m beam_etl.run --template ... (run here as __main__,
    # so the timed process is the command line's, start-up included).
    cli = ["--template", args.template, "--set", f"params.input={args.input}",
           "--set", f"params.output={args.output}", *(a for o in args.overrides for a in ("--set", o)),
           "--output-dir", run_dir, *beam_args]  # run summary and dead letters next to, not in, the output
    sys.argv = ["beam_etl.run", *cli]
    t0 = time.perf_counter()
    try:
        runpy.run_module("beam_etl.run", run_name="__main__", alter_sys=True)
        rc = 0
    except SystemExit as done:
        rc = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    print(f"beam_etl: rc={rc} in {time.perf_counter() - t0:.2f}s")
    if rc == REFUSED_BY_PREFLIGHT:
        print("beam_etl: NOT AVAILABLE: the runner preflight refused this runner here (reason above)", file=sys.stderr)
        return NOT_AVAILABLE
    return rc


if __name__ == "__main__":
    sys.exit(main())
