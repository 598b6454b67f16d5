#!/usr/bin/env python
"""The cost of the Prometheus endpoint: the benchmark job with and without ``--metrics-port``.

    python benchmarks/bench_observability.py --write-report        # 1M rows, 5 runs each; BENCHMARKS.md section
    python benchmarks/bench_observability.py --rows 100000 --repeats 1 --runners DirectRunner   # a quick look

For each runner (default: DirectRunner and PrismRunner) it runs ``python -m beam_etl.run --template
benchmarks/bench_job.yaml`` ``--repeats`` times without and with ``--metrics-port``, interleaved in
ABBA order (off, on, on, off, ...), every run a fresh process on the same cached CSV
(``benchmarks/generate.py``, seed 42). With the port, a thread here scrapes ``/metrics`` every
``--scrape-interval`` seconds while the run lasts, as Prometheus would. Time is summary.json's
``seconds`` (build + run); the process's wall time is shown too. Every run's Parquet result is
checked against the first one's. Both variants time each batch and write ``metrics.prom`` (that is
not optional); the difference measured is the endpoint thread and the scrapes it answers.

Acceptance: the median with the endpoint is at most 5% above the median without it (per runner).
On shared CPUs single runs of this ~2-3 s job vary by 10-20%, so the section also shows the ratio of
the fastest runs and the endpoint's own busy time (the sum of its answer times over the run's time),
which noise cannot inflate. Exit status 0 when accepted and every run succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import shutil
import socket
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from run_benchmarks import compare, ensure_data, machine_info, measure, merge_section, read_result  # noqa: E402

SECTION = "observability"
MAX_OVERHEAD = 0.05
NOT_AVAILABLE = 2  # beam_etl.run.EXIT_CONFIG: the preflight refused the runner (e.g. no Prism binary)


def log(message: str) -> None:
    print(f"[bench_observability] {message}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Scraper(threading.Thread):
    """GETs ``url`` every ``interval_s`` until stopped: answers, their latency, the largest records_in sum seen."""

    def __init__(self, url: str, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.url, self.interval_s = url, interval_s
        self.stop = threading.Event()
        self.ok = self.failed = 0
        self.max_records_in = 0
        self.latencies_ms: list[float] = []

    def run(self) -> None:
        while not self.stop.wait(self.interval_s):
            asked = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as answer:
                    text = answer.read().decode()
            except (urllib.error.URLError, OSError):
                self.failed += 1  # not listening yet, or done
                continue
            self.latencies_ms.append((time.perf_counter() - asked) * 1000)
            self.ok += 1
            total = sum(float(v) for v in re.findall(r"^beam_etl_records_in_total\{[^}]*\} (\S+)$", text, re.M))
            self.max_records_in = max(self.max_records_in, int(total))


def one_run(args: argparse.Namespace, csv_path: Path, work: Path, runner: str, endpoint: bool,
            name: str) -> dict[str, Any]:
    out = work / runner / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "beam_etl.run", "--template", str(HERE / "bench_job.yaml"), "--quiet",
           "--set", f"params.input={csv_path}", "--set", f"params.output={out / 'result'}",
           "--output-dir", str(out / "runs"), "--run-id", "run", f"--runner={runner}"]
    scraper = None
    if endpoint:
        port = _free_port()
        cmd += ["--metrics-port", str(port)]
        scraper = Scraper(f"http://127.0.0.1:{port}/metrics", args.scrape_interval)
        scraper.start()
    try:
        m = measure(cmd, out / "run.log", ROOT, args.timeout)
    finally:
        if scraper is not None:
            scraper.stop.set()
            scraper.join(10)
    summary_path = out / "runs" / "run" / "summary.json"
    summary = json.loads(summary_path.read_text()) if m["rc"] == 0 and summary_path.exists() else {}
    m.update(pipeline_s=summary.get("seconds"), log=str(out / "run.log"),
             scrapes=scraper.ok if scraper else None, live_records_in=scraper.max_records_in if scraper else None,
             scrape_ms=scraper.latencies_ms if scraper else None,
             result=read_result(out / "result") if m["rc"] == 0 else None)
    return m


def render(args: argparse.Namespace, info: dict, meta: dict, runs: dict, verdicts: dict, loads: list[float],
           command: str) -> str:
    lines = [
        "## Observability: overhead of the Prometheus endpoint (benchmark job)",
        "",
        f"Generated by `{command}` on {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M')} (UTC); rerun it "
        "rather than editing this section.",
        "",
        f"**Job**: `benchmarks/bench_job.yaml` (CSV -> drop nulls -> dedup on id -> group by category -> Parquet) on "
        f"{args.rows:,} rows ({meta['bytes'] / 1e6:,.0f} MB, `benchmarks/generate.py --seed {args.seed}`). "
        f"**Machine**: {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, apache-beam "
        f"{info['apache-beam']}, pyarrow {info['pyarrow']}; 1-minute load average {min(loads):.1f}-{max(loads):.1f} "
        "during the runs (the CPUs were shared with other work).",
        "",
        f"**Method**: per runner, {args.repeats} runs without and {args.repeats} with `--metrics-port`, interleaved "
        "in ABBA order, every run a fresh `python -m beam_etl.run` process. With the port, the harness scrapes "
        f"`/metrics` every {args.scrape_interval:g} s while the run lasts (as Prometheus would). `pipeline s` is "
        "summary.json's `seconds` (build + run); `wall s` adds interpreter start-up. Both variants time every "
        "batch (`batch_latency_us`) and write `metrics.prom`: those are always on, so the difference is the "
        "endpoint and its scrapes. On the DirectRunner a batch pipeline runs in-process and `run()` returns only "
        "at the end, so scrapes during the run serve the run info and zeros; on Prism every scrape asks the job "
        "service for the live metrics (`live records_in`: the largest sum of records_in over all steps that a "
        "scrape saw). `scrape ms`: the time the endpoint took to answer.",
        "",
        "| runner | `--metrics-port` | runs (pipeline s) | median pipeline s | median wall s | peak RSS MB "
        "| scrapes per run | scrape ms (median) | live records_in | result |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for runner, variants in runs.items():
        for variant in ("off", "on"):
            ok = [r for r in variants[variant] if r["rc"] == 0]
            if not ok:
                lines.append(f"| {runner} | {variant} | — | — | — | — | — | — | — | not available |")
                continue
            pipe = [r["pipeline_s"] for r in ok]
            scrapes = "—" if variant == "off" else f"{sum(r['scrapes'] for r in ok) / len(ok):.1f}"
            live = "—" if variant == "off" else f"{max(r['live_records_in'] for r in ok):,}"
            latencies = [x for r in ok for x in r["scrape_ms"] or []]
            scrape_ms = f"{statistics.median(latencies):.1f}" if latencies else "—"
            lines.append(
                f"| {runner} | {variant} | {', '.join(f'{x:.2f}' for x in pipe)} | {statistics.median(pipe):.2f} "
                f"| {statistics.median(r['wall_s'] for r in ok):.2f} | {max(r['peak_rss_mb'] for r in ok):,.0f} "
                f"| {scrapes} | {scrape_ms} | {live} | {'ok' if len(ok) == len(variants[variant]) else 'FAILED'} |")
    lines.append("")
    for runner, v in verdicts.items():
        if v is None:
            lines.append(f"- {runner}: not measured (the runner was not available here).")
            continue
        lines.append(f"- {runner}: with / without the endpoint (median pipeline time) = **{v['ratio']:.3f}** "
                     f"({v['overhead']:+.1%}); fastest runs {v['min_ratio']:.3f}; median wall time "
                     f"{v['wall_ratio']:.3f}; the endpoint was busy answering scrapes for {v['endpoint_busy']:.2%} "
                     "of the run.")
    measured = [v for v in verdicts.values() if v is not None]
    accepted = bool(measured) and all(v["overhead"] <= MAX_OVERHEAD for v in measured)
    lines += ["", f"**Acceptance** (overhead <= {MAX_OVERHEAD:.0%} per runner): {'met' if accepted else 'NOT met'}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="input rows (default 1000000)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per variant and runner (default 5)")
    parser.add_argument("--runners", nargs="+", default=["DirectRunner", "PrismRunner"],
                        help="runners to measure (default: DirectRunner PrismRunner)")
    parser.add_argument("--scrape-interval", type=float, default=1.0, help="seconds between scrapes (default 1)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/beam_etl_bench"))
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before a run is killed")
    parser.add_argument("--write-report", action="store_true", help="write the observability section of BENCHMARKS.md")
    parser.add_argument("--report", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    command = "python benchmarks/bench_observability.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    args.workdir = args.workdir.resolve()
    work = args.workdir / "observability"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    csv_path, meta = ensure_data(args.workdir, args.rows, args.seed)
    runs: dict[str, dict[str, list[dict]]] = {r: {"off": [], "on": []} for r in args.runners}
    verdicts: dict[str, dict | None] = {}
    failed: list[str] = []
    reference = None
    loads = [os.getloadavg()[0]]
    for runner in args.runners:
        available = True
        for i in range(args.repeats):
            for variant in ("off", "on") if i % 2 == 0 else ("on", "off"):  # ABBA: drift cancels
                m = one_run(args, csv_path, work, runner, variant == "on", f"{variant}_{i}")
                runs[runner][variant].append(m)
                loads.append(os.getloadavg()[0])
                if m["rc"] == NOT_AVAILABLE and i == 0:
                    log(f"{runner}: not available here (the preflight refused it; log {m['log']})")
                    available = False
                    break
                if m["rc"] != 0:
                    failed.append(f"{runner} {variant} run {i + 1}: exit status {m['rc']} (log {m['log']})")
                    log(failed[-1])
                    continue
                reference = reference or m["result"]
                diff = compare(m["result"], reference)
                if diff:
                    failed.append(f"{runner} {variant} run {i + 1}: result differs: {diff}")
                extra = f", {m['scrapes']} scrapes, live records_in up to {m['live_records_in']:,}" if m["scrapes"] \
                    is not None else ""
                log(f"{runner} {variant} run {i + 1}/{args.repeats}: pipeline {m['pipeline_s']:.2f} s, wall "
                    f"{m['wall_s']:.2f} s, peak RSS {m['peak_rss_mb']:,.0f} MB, load {loads[-1]:.1f}{extra}"
                    f"{', RESULT DIFFERS' if diff else ''}")
            if not available:
                break
        ok = {v: [r for r in runs[runner][v] if r["rc"] == 0] for v in ("off", "on")}
        if not ok["off"] or not ok["on"]:
            verdicts[runner] = None
            continue
        off, on = (statistics.median(r["pipeline_s"] for r in ok[v]) for v in ("off", "on"))
        wall_off, wall_on = (statistics.median(r["wall_s"] for r in ok[v]) for v in ("off", "on"))
        fastest_off, fastest_on = (min(r["pipeline_s"] for r in ok[v]) for v in ("off", "on"))
        busy = statistics.median(sum(r["scrape_ms"]) / 1000 / r["pipeline_s"] for r in ok["on"])
        verdicts[runner] = {"ratio": on / off, "overhead": on / off - 1, "wall_ratio": wall_on / wall_off,
                            "wall_overhead": wall_on / wall_off - 1, "min_ratio": fastest_on / fastest_off,
                            "endpoint_busy": busy}
        log(f"{runner}: median {off:.2f} s without, {on:.2f} s with the endpoint ({on / off - 1:+.1%})")
    measured = [v for v in verdicts.values() if v is not None]
    accepted = bool(measured) and all(v["overhead"] <= MAX_OVERHEAD for v in measured)
    raw = {r: {v: [{k: x for k, x in m.items() if k != "result"} for m in ms] for v, ms in variants.items()}
           for r, variants in runs.items()}
    (work / "results.json").write_text(json.dumps({"runs": raw, "verdicts": verdicts}, indent=1, default=str))
    info = machine_info()
    if args.write_report:
        merge_section(args.report, SECTION, render(args, info, meta, runs, verdicts, loads, command))
        log(f"wrote the {SECTION} section of {args.report}")
    log(f"acceptance (overhead <= {MAX_OVERHEAD:.0%}): {'met' if accepted else 'NOT met'}")
    if failed:
        log("FAILED: " + "; ".join(failed))
    return 0 if accepted and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
