#!/usr/bin/env python
"""Runs the benchmark jobs and writes BENCHMARKS.md.

    python benchmarks/run_benchmarks.py --rows 1000000 10000000 --repeats 3 --naive-repeats 1
    python benchmarks/run_benchmarks.py --quick      # 100k rows, 1 run each: smoke-tests the harness

For each size it generates the data once (cached in ``--workdir`` by rows+seed), then runs
each implementation ``--repeats`` times, every run in a fresh subprocess:

* wall time: ``time.perf_counter()`` around the subprocess (interpreter start and imports
  included, as a user would see it);
* peak RSS: the largest sum of RSS over the process and all its children, sampled every
  50 ms with psutil; cross-checked with the child's ``ru_maxrss`` from ``os.wait4`` (the
  per-child figure that ``getrusage(RUSAGE_CHILDREN)`` accumulates; that one only keeps the
  maximum over every child so far, so it cannot be read per run);
* result: every run's Parquet output is compared with the reference (pyarrow): same
  categories, equal counts, sums and averages within 1e-6 relative.

A job that exits with status 3 is "not available" (e.g. beam_etl.run not written yet): it is
reported and the others go on. Exit status: 0 when every available job ran and matched, 1
otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NOT_AVAILABLE = 3
REL_TOL = 1e-6
POLL_S = 0.05

# name -> (script, description, extra arguments)
IMPLEMENTATIONS: dict[str, tuple[Path, str, list[str]]] = {
    "pyarrow": (HERE / "job_pyarrow.py", "pyarrow, single process (reference)", []),
    "beam_naive": (HERE / "job_beam_naive.py", "Beam, dict per row, DirectRunner", []),
    "beam_etl": (HERE / "job_beam_etl.py", "beam_etl template, Arrow batches, DirectRunner", []),
    "beam_etl_prism": (HERE / "job_beam_etl.py", "beam_etl template on PrismRunner (LOOPBACK workers)",
                       ["--runner=PrismRunner"]),
    "beam_etl_flink": (HERE / "job_beam_etl.py", "beam_etl template on FlinkRunner, embedded Flink",
                       ["--runner=FlinkRunner", "--flink_master=[local]"]),
    "beam_etl_spark": (HERE / "job_beam_etl.py", "beam_etl template on SparkRunner, local Spark",
                       ["--runner=SparkRunner", "--spark_master_url=local[2]"]),
}
DEFAULT_IMPLS = ["pyarrow", "beam_naive", "beam_etl"]
SECTION_START, SECTION_END = "<!-- bench:{} start -->", "<!-- bench:{} end -->"


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------- data

def generator_digest() -> str:
    return hashlib.sha256((HERE / "generate.py").read_bytes()).hexdigest()[:12]


def ensure_data(workdir: Path, rows: int, seed: int) -> tuple[Path, dict]:
    """Generates (or reuses) the CSV for ``rows`` and ``seed``; returns its path and summary."""
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    csv_path = data_dir / f"orders_{rows}_seed{seed}.csv"
    meta_path = csv_path.with_suffix(".json")
    digest = generator_digest()
    if csv_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("generator") == digest and meta.get("bytes") == csv_path.stat().st_size:
            log(f"[data] reusing {csv_path} ({meta['bytes'] / 1e6:.0f} MB)")
            return csv_path, meta
    log(f"[data] generating {rows:,} rows (seed {seed}) -> {csv_path}")
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(HERE / "generate.py"), "--rows", str(rows), "--out", str(csv_path), "--seed", str(seed)],
        check=True, capture_output=True, text=True,
    )
    meta = dict(item.split("=", 1) for item in out.stdout.split())
    meta = {k: (int(v) if v.isdigit() else v) for k, v in meta.items()}
    meta.update(generator=digest, bytes=csv_path.stat().st_size, seconds=round(time.perf_counter() - t0, 2))
    meta_path.write_text(json.dumps(meta, indent=1))
    log(f"[data] {meta['bytes'] / 1e6:.0f} MB in {meta['seconds']:.1f}s "
        f"({meta['duplicate_rows']:,} duplicate-id rows, {meta['rows_with_null']:,} rows with a null)")
    return csv_path, meta


# ---------------------------------------------------------------- one measured run

def _tree_rss(root: psutil.Process) -> int:
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(cmd: list[str], log_path: Path, cwd: Path, timeout_s: float) -> dict:
    """Runs ``cmd`` in a fresh process group; returns wall time, peak tree RSS, ru_maxrss, exit code."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    peak = 0
    timed_out = False
    stop = threading.Event()
    with open(log_path, "wb") as log_file:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                start_new_session=True)

    def poll() -> None:
        nonlocal peak, timed_out
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not stop.is_set():
            peak = max(peak, _tree_rss(root))
            if time.perf_counter() - start > timeout_s and not timed_out:
                timed_out = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            stop.wait(POLL_S)

    sampler = threading.Thread(target=poll, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": wall, "peak_rss_mb": peak / 2**20, "ru_maxrss_mb": usage.ru_maxrss / 1024,
            "rc": proc.returncode, "timed_out": timed_out}


def log_tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").splitlines()
    return "\n".join("      " + line for line in text[-lines:])


# ---------------------------------------------------------------- results

def read_result(out_dir: Path) -> dict[str, tuple[float, float, int]]:
    """{category: (amount_sum, amount_avg, orders)} from every Parquet file under ``out_dir``."""
    import pyarrow.parquet as pq

    files = sorted(
        p for p in out_dir.rglob("*")
        if p.is_file() and not any(part.startswith((".", "_")) or part.startswith("beam-temp")
                                   for part in p.relative_to(out_dir).parts)
    )
    parquet = [p for p in files if p.suffix == ".parquet"] or files
    if not parquet:
        raise ValueError(f"no output files under {out_dir}")
    result: dict[str, tuple[float, float, int]] = {}
    for path in parquet:
        table = pq.read_table(path)
        missing = {"category", "amount_sum", "amount_avg", "orders"} - set(table.column_names)
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)} (has {table.column_names})")
        for row in table.select(["category", "amount_sum", "amount_avg", "orders"]).to_pylist():
            if row["category"] in result:
                raise ValueError(f"{path}: category {row['category']!r} appears twice")
            result[row["category"]] = (row["amount_sum"], row["amount_avg"], row["orders"])
    return result


def compare(result: dict, reference: dict) -> str | None:
    """None when equal within tolerance, else what differs."""
    if set(result) != set(reference):
        return f"categories differ: {sorted(result)} vs {sorted(reference)}"
    for cat, (s, a, n) in reference.items():
        s2, a2, n2 = result[cat]
        if n2 != n:
            return f"{cat}: count {n2} vs {n}"
        for label, x, y in (("sum", s2, s), ("avg", a2, a)):
            if x is None or y is None or abs(x - y) > REL_TOL * max(abs(x), abs(y), 1e-12):
                return f"{cat}: {label} {x!r} vs {y!r}"
    return None


# ---------------------------------------------------------------- report

def machine_info() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 0

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "nproc": cpus, "cpu": model, "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "apache-beam": version("apache-beam"), "pyarrow": version("pyarrow"), "numpy": version("numpy"),
        "pandas": version("pandas"), "psutil": version("psutil"),
    }


def summarise(runs: list[dict]) -> dict:
    ok = [r for r in runs if r["rc"] == 0]
    walls = [r["wall_s"] for r in ok]
    return {
        "runs": len(ok), "median_s": statistics.median(walls) if walls else None,
        "min_s": min(walls) if walls else None, "max_s": max(walls) if walls else None,
        "peak_rss_mb": max((r["peak_rss_mb"] for r in ok), default=None),
        "ru_maxrss_mb": max((r["ru_maxrss_mb"] for r in ok), default=None),
    }


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def merge_section(report: Path, section: str, text: str) -> None:
    """Writes ``text`` as ``section`` of ``report``, keeping the file's other sections."""
    start, end = SECTION_START.format(section), SECTION_END.format(section)
    block = f"{start}\n{text.rstrip()}\n{end}\n"
    old = report.read_text() if report.exists() else ""
    if start in old and end in old:
        head, rest = old.split(start, 1)
        new = head + block + rest.split(end, 1)[1].lstrip("\n")
    elif old.strip() and "<!-- bench:" not in old:  # a report from before sections is the foundation section
        legacy = f"{SECTION_START.format('foundation')}\n{old.rstrip()}\n{SECTION_END.format('foundation')}\n"
        new = block if section == "foundation" else legacy + "\n" + block
    elif not old.strip():
        new = block
    else:
        new = old.rstrip() + "\n\n" + block
    report.write_text(new)


def render(results: dict, info: dict, command: str, seed: int, started: str, impls: list[str]) -> str:
    lines = [
        "# Benchmarks" if impls == DEFAULT_IMPLS else f"# Benchmarks: {', '.join(impls)}",
        "",
        f"Generated by `{command}` on {started} (UTC); rerun it (or `make bench`) rather than editing this file.",
        "",
        "**Job** (the same in every implementation): read the CSV -> drop rows with a null in `id`, `category` "
        "or `amount` -> exact dedup on `id` keeping the first occurrence -> group by `category`: "
        "`sum(amount)`, `avg(amount)`, `count` -> one Parquet file.",
        "",
        f"**Data**: `benchmarks/generate.py --seed {seed}`: columns id, name, email, city, country, amount, "
        "quantity, ts, category, status; ~10% of rows repeat an earlier id (as exact copies), ~5% of the "
        "distinct rows have one empty field; 8 categories.",
        "",
        f"**Machine**: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gb']} GiB RAM, {info['os']}. "
        f"Python {info['python']}, apache-beam {info['apache-beam']}, pyarrow {info['pyarrow']}, "
        f"numpy {info['numpy']}, pandas {info['pandas']}.",
        "",
        "**Method**: every run is a fresh subprocess. Wall time is `time.perf_counter()` around it, "
        "interpreter start and imports included. Peak RSS is the largest sum of RSS over the process tree, "
        "sampled every 50 ms with psutil; `ru_maxrss` (from `os.wait4`, largest single process) is the "
        "cross-check. Median/min/max over the runs; rows/s = input rows / median. "
        "`x pyarrow` = median time / pyarrow's median time; `speed-up vs naive` = naive's median / median. "
        "Each run's output is compared with pyarrow's (categories, counts equal; sums and averages within "
        "1e-6 relative).",
        "",
        *(f"- `{name}`: {IMPLEMENTATIONS[name][1]} (`benchmarks/{IMPLEMENTATIONS[name][0].name}"
          f"{' ' + ' '.join(IMPLEMENTATIONS[name][2]) if IMPLEMENTATIONS[name][2] else ''}`)" for name in impls),
        "",
    ]
    for rows, entry in results.items():
        data = entry["data"]
        lines += [f"## {int(rows):,} rows ({data['bytes'] / 1e6:,.0f} MB CSV)", "",
                  "| implementation | runs | median s | min s | max s | rows/s | peak RSS MB | ru_maxrss MB "
                  "| x pyarrow | speed-up vs naive | result |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        base = (entry["impls"].get("pyarrow", {}).get("summary") or {}).get("median_s")
        naive = (entry["impls"].get("beam_naive", {}).get("summary") or {}).get("median_s")
        notes = []
        for name, impl in entry["impls"].items():
            s = impl.get("summary") or {}
            med = s.get("median_s")
            label = f"`{name}`"
            if impl["status"] != "ok" or med is None:
                lines.append(f"| {label} | 0 | — | — | — | — | — | — | — | — | {impl['status']} |")
                if impl.get("detail"):
                    notes.append(f"- `{name}`: {impl['detail']}")
                continue
            lines.append(
                f"| {label} | {s['runs']} | {med:.2f} | {s['min_s']:.2f} | {s['max_s']:.2f} "
                f"| {int(rows) / med:,.0f} | {_fmt(s['peak_rss_mb'], ',.0f')} | {_fmt(s['ru_maxrss_mb'], ',.0f')} "
                f"| {_fmt(med / base if base else None, '.2f')} | {_fmt(naive / med if naive else None, '.2f')} "
                f"| {impl['check']} |"
            )
            if impl.get("detail"):
                notes.append(f"- `{name}`: {impl['detail']}")
        lines += ["", *notes, ""] if notes else [""]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------- main

def run_size(args: argparse.Namespace, rows: int, impls: list[str]) -> dict:
    csv_path, meta = ensure_data(args.workdir, rows, args.seed)
    entry: dict = {"data": meta, "impls": {}}
    reference: dict | None = None
    for name in impls:
        script, _desc, extra_args = IMPLEMENTATIONS[name]
        repeats = args.naive_repeats if name == "beam_naive" else args.repeats
        impl: dict = {"status": "ok", "runs": [], "check": "ok"}
        entry["impls"][name] = impl
        if name == "beam_naive" and rows > args.skip_naive_above:
            impl.update(status="skipped", detail=f"skipped above {args.skip_naive_above:,} rows (--skip-naive-above)")
            log(f"[{rows:,}] {name}: skipped (> --skip-naive-above {args.skip_naive_above:,})")
            continue
        for i in range(repeats):
            run_dir = args.workdir / "runs" / f"{name}_{rows}_{i}"
            shutil.rmtree(run_dir, ignore_errors=True)
            out_dir = run_dir / "out"
            out_dir.mkdir(parents=True)
            log_path = args.workdir / "logs" / f"{name}_{rows}_{i}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, str(script), "--input", str(csv_path), "--output", str(out_dir), *extra_args]
            log(f"[{rows:,}] {name} run {i + 1}/{repeats} ...")
            m = measure(cmd, log_path, run_dir, args.timeout)
            m["log"] = str(log_path)
            impl["runs"].append(m)
            if m["rc"] == NOT_AVAILABLE:
                lines = log_path.read_text(errors="replace").strip().splitlines()
                problems = [ln.strip()[2:] for ln in lines if ln.startswith("  - ")]  # a preflight refusal's reasons
                reason = problems[:1] or lines[-1:] or ["exit status 3"]
                impl.update(status="not available", detail=reason[0])
                log(f"[{rows:,}] {name}: NOT AVAILABLE - {reason[0]}; going on with the others")
                break
            if m["rc"] != 0:
                why = "timed out" if m["timed_out"] else f"exit status {m['rc']}"
                last = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()][-1:]
                impl.update(status="FAILED", detail=f"{why}: `{last[0].strip() if last else ''}` (log: {log_path})")
                log(f"[{rows:,}] {name}: FAILED ({why}) after {m['wall_s']:.1f}s; log tail:\n{log_tail(log_path)}")
                break
            try:
                result = read_result(out_dir)
            except (OSError, ValueError) as err:
                diff = f"cannot read the output: {err}"
            else:
                reference = reference or result
                diff = compare(result, reference)
            m["check"] = "MISMATCH" if diff else "ok"
            if diff:
                impl.update(check="MISMATCH", detail=diff)
            log(f"[{rows:,}] {name} run {i + 1}/{repeats}: {m['wall_s']:.2f}s, peak RSS {m['peak_rss_mb']:,.0f} MB "
                f"(ru_maxrss {m['ru_maxrss_mb']:,.0f} MB), result {m['check']}")
        impl["summary"] = summarise(impl["runs"]) if impl["status"] == "ok" else None
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000], help="sizes to run (default 1000000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per implementation and size (default 3)")
    parser.add_argument("--naive-repeats", type=int, default=None,
                        help="runs of the naive Beam job (default: --repeats)")
    parser.add_argument("--skip-naive-above", type=int, default=2_000_000,
                        help="skip the naive Beam job above this many rows (default 2000000)")
    parser.add_argument("--impls", nargs="+", choices=list(IMPLEMENTATIONS), default=DEFAULT_IMPLS,
                        help=f"implementations to run (default: {' '.join(DEFAULT_IMPLS)})")
    parser.add_argument("--section", default="foundation",
                        help="section of the report to (re)write; other sections are kept (default %(default)s)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/beam_etl_bench"),
                        help="data cache, run folders and logs (default %(default)s)")
    parser.add_argument("--report", type=Path, default=None,
                        help="Markdown report (default BENCHMARKS.md in the repo; <workdir>/BENCHMARKS.quick.md "
                             "with --quick)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before a run is killed (default 3600)")
    parser.add_argument("--quick", action="store_true", help="100k rows, one run each: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.repeats, args.naive_repeats = [100_000], 1, 1
    if args.naive_repeats is None:
        args.naive_repeats = args.repeats
    if args.repeats < 1 or args.naive_repeats < 1:
        parser.error("--repeats and --naive-repeats must be >= 1")
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    report = args.report or (args.workdir / "BENCHMARKS.quick.md" if args.quick else ROOT / "BENCHMARKS.md")
    impls = [name for name in IMPLEMENTATIONS if name in args.impls]

    command = "python benchmarks/run_benchmarks.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    info = machine_info()
    log(f"beam_etl benchmarks: sizes {args.rows}, {args.repeats} run(s) each ({args.naive_repeats} for beam_naive), "
        f"workdir {args.workdir}")
    log(f"machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gb']} GiB; python {info['python']}, "
        f"apache-beam {info['apache-beam']}, pyarrow {info['pyarrow']}")

    results: dict = {}
    t0 = time.perf_counter()
    for rows in args.rows:
        results[rows] = run_size(args, rows, impls)
        merge_section(report, args.section, render(results, info, command, args.seed, started, impls))
    raw = {"command": command, "started": started, "machine": info, "results": results}
    (args.workdir / "results.json").write_text(json.dumps(raw, indent=1, default=str))
    log(f"done in {time.perf_counter() - t0:.0f}s; report: {report}; raw results: {args.workdir / 'results.json'}")

    failed = [f"{name} at {rows:,} rows ({impl['status'] if impl['status'] != 'ok' else impl['check']})"
              for rows, entry in results.items()
              for name, impl in entry["impls"].items()
              if impl["status"] not in ("ok", "skipped", "not available") or impl["check"] != "ok"]
    for rows, entry in results.items():
        for name, impl in entry["impls"].items():
            if impl["status"] == "not available":
                log(f"note: {name} was not available at {rows:,} rows: {impl.get('detail')}")
    if failed:
        log("FAILED: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
