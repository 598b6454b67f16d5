#!/usr/bin/env python
"""The benchmark job through beam_etl: runs the template ``benchmarks/bench_job.yaml``.

    python benchmarks/job_beam_etl.py --input orders.csv --output out_dir [--set k=v ...] [beam options]

Same work as ``job_pyarrow.py`` and ``job_beam_naive.py`` (read CSV -> drop rows with a null
in ``id``/``category``/``amount`` -> exact dedup on ``id`` -> group by ``category`` -> Parquet),
over Arrow RecordBatches. Extra arguments are Beam pipeline options (default
``--runner=DirectRunner``). Exits with status 3 and a one-line reason when
``beam_etl.run.run_template`` is not there yet, so the harness can report it and go on.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
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
    import beam_etl.run as bench_run

    run_template = getattr(bench_run, "run_template", None)
    if run_template is None:
        print("beam_etl: NOT AVAILABLE: beam_etl.run has no run_template(template_path, overrides, beam_args)",
              file=sys.stderr)
        return NOT_AVAILABLE

    Path(args.output).mkdir(parents=True, exist_ok=True)
    overrides = [f"params.input={args.input}", f"params.output={args.output}", *args.overrides]
    extra = {}
    if "output_dir" in inspect.signature(run_template).parameters:
        # run summary and dead letters go next to, not into, the folder the harness reads
        extra["output_dir"] = args.run_dir or str(Path(args.output).resolve().parent / "beam_etl_runs")
    t0 = time.perf_counter()
    rc = run_template(args.template, overrides, beam_args, **extra)
    print(f"beam_etl: rc={rc} in {time.perf_counter() - t0:.2f}s")
    if rc == REFUSED_BY_PREFLIGHT:
        print("beam_etl: NOT AVAILABLE: the runner preflight refused this runner here (reason above)", file=sys.stderr)
        return NOT_AVAILABLE
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
