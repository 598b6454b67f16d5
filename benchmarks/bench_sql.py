#!/usr/bin/env python
"""Benchmarks the PostgreSQL and MySQL connectors against the servers' own bulk tools.

    bash scripts/services.sh up postgres mariadb
    python benchmarks/bench_sql.py                      # 1M rows, 3 runs each, prints a Markdown table
    python benchmarks/bench_sql.py --write-report       # ... and writes it into BENCHMARKS.md (section "sql")
    python benchmarks/bench_sql.py --rows 100000 --repeats 1   # a quick smoke run

The rows (fixed seed) are generated once in Arrow and saved as an Arrow IPC file and as the CSV
that ``COPY ... (FORMAT csv)`` reads. Every measured job runs in a fresh subprocess; its time is
taken inside the job around the work (pipeline construction and run, or the COPY), so interpreter
start-up and imports are not counted, and its peak RSS (process tree, sampled every 50 ms) by the
parent. Each job runs ``--repeats`` times; the table shows medians.

Jobs:

* ``pg_write``: ``WriteToPostgres`` (mode insert: ``COPY FROM STDIN`` per batch) on DirectRunner,
  the batches read from the IPC file inside the pipeline;
* ``psql_copy``: ``psql -c "\\copy t FROM 'rows.csv' WITH (FORMAT csv)"`` of the same rows (reference);
* ``pg_read_N``: ``ReadFromPostgres`` with ``partition: {column: id, num_partitions: N}`` counting rows,
  on DirectRunner (and with ``--direct_num_workers=N --direct_running_mode=multi_threading``);
* ``pg_copy_out``: one connection, ``COPY (SELECT ...) TO STDOUT (FORMAT csv)`` into memory and
  ``pyarrow.csv`` into an Arrow table (the single-cursor reference);
* ``mysql_write``: ``WriteToMySql`` (mode insert: multi-row INSERTs) on DirectRunner.

Connection settings come from the variables ``scripts/services.sh env`` prints (same defaults).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks.run_benchmarks import measure, merge_section  # noqa: E402

SECTION = "sql"
PG_TABLE = "bench_sql_write"
PG_READ_TABLE = "bench_sql_read"
MY_TABLE = "bench_sql_write"
SCHEMA = pa.schema([
    ("id", pa.int64()), ("customer", pa.string()), ("amount", pa.float64()), ("quantity", pa.int32()),
    ("ordered_at", pa.timestamp("us", "UTC")), ("category", pa.string()), ("paid", pa.bool_()),
])
PG_DDL = ("CREATE TABLE {t} (id bigint PRIMARY KEY, customer text, amount double precision, quantity integer, "
          "ordered_at timestamptz, category text, paid boolean)")
MY_DDL = ("CREATE TABLE {t} (id BIGINT PRIMARY KEY, customer LONGTEXT, amount DOUBLE, quantity INT, "
          "ordered_at DATETIME(6), category LONGTEXT, paid TINYINT(1)) DEFAULT CHARSET=utf8mb4")


def pg_settings() -> dict:
    env = os.environ.get
    return {"host": env("BEAM_ETL_PG_HOST", "127.0.0.1"), "port": int(env("BEAM_ETL_PG_PORT", "55432")),
            "database": env("BEAM_ETL_PG_DB", "beam_etl_test"), "user": env("BEAM_ETL_PG_USER", "beam_etl"),
            "password": env("BEAM_ETL_PG_PASSWORD", "beam_etl_test_pw")}


def my_settings() -> dict:
    env = os.environ.get
    return {"host": env("BEAM_ETL_MYSQL_HOST", "127.0.0.1"), "port": int(env("BEAM_ETL_MYSQL_PORT", "53306")),
            "database": env("BEAM_ETL_MYSQL_DB", "beam_etl_test"), "user": env("BEAM_ETL_MYSQL_USER", "beam_etl"),
            "password": env("BEAM_ETL_MYSQL_PASSWORD", "beam_etl_test_pw")}


def pg_connect():
    import psycopg2

    s = pg_settings()
    conn = psycopg2.connect(host=s["host"], port=s["port"], dbname=s["database"], user=s["user"],
                            password=s["password"])
    conn.autocommit = True
    return conn


def my_connect():
    import pymysql

    return pymysql.connect(**my_settings(), autocommit=True, charset="utf8mb4")


# ---------------------------------------------------------------- data

def generate(rows: int, seed: int) -> pa.Table:
    """The benchmark rows: seeded, vectorised."""
    rng = np.random.default_rng(seed)
    names = np.array([f"customer {i:05d} ünï" if i % 7 == 0 else f"customer {i:05d}" for i in range(50_000)])
    categories = np.array(["electronics", "books", "clothing", "home", "grocery", "toys", "sports", "beauty"])
    start = np.datetime64("2023-01-01T00:00:00", "us").astype(np.int64)
    stamps = start + rng.integers(0, 365 * 86_400 * 1_000_000, rows)
    return pa.table({
        "id": pa.array(np.arange(1, rows + 1, dtype=np.int64)),
        "customer": pa.array(names[rng.integers(0, len(names), rows)]),
        "amount": pa.array(np.round(rng.lognormal(3.5, 1.0, rows), 2)),
        "quantity": pa.array(rng.integers(1, 20, rows, dtype=np.int32)),
        "ordered_at": pa.array(stamps, pa.timestamp("us", "UTC")),
        "category": pa.array(categories[rng.integers(0, len(categories), rows)]),
        "paid": pa.array(rng.random(rows) < 0.9),
    }, schema=SCHEMA)


def prepare(workdir: Path, rows: int, seed: int) -> tuple[Path, Path]:
    ipc, csv = workdir / f"rows_{rows}_{seed}.arrow", workdir / f"rows_{rows}_{seed}.csv"
    if not ipc.exists() or not csv.exists():
        table = generate(rows, seed)
        with pa.OSFile(str(ipc), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=65_536)
        pacsv.write_csv(table, str(csv), pacsv.WriteOptions(include_header=False, quoting_style="all_valid"))
    return ipc, csv


def reset_tables(csv: Path) -> None:
    """Empty write tables; a read table holding the rows (loaded with psql, analysed)."""
    conn = pg_connect()
    with conn.cursor() as cur:
        for table in (PG_TABLE, PG_READ_TABLE):
            cur.execute(f"DROP TABLE IF EXISTS {table}")
            cur.execute(PG_DDL.format(t=table))
    conn.close()
    psql_copy(PG_READ_TABLE, csv)
    conn = pg_connect()
    with conn.cursor() as cur:
        cur.execute(f"VACUUM ANALYZE {PG_READ_TABLE}")
    conn.close()
    mconn = my_connect()
    with mconn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {MY_TABLE}")
        cur.execute(MY_DDL.format(t=MY_TABLE))
    mconn.close()


def drop_tables() -> None:
    conn = pg_connect()
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {PG_TABLE}, {PG_READ_TABLE}")
    conn.close()
    mconn = my_connect()
    with mconn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {MY_TABLE}")
    mconn.close()


def psql_command(table: str, csv: Path) -> tuple[list[str], dict]:
    s = pg_settings()
    cmd = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", s["host"], "-p", str(s["port"]), "-U", s["user"],
           "-d", s["database"], "-c", f"\\copy {table} FROM '{csv}' WITH (FORMAT csv)"]
    return cmd, dict(os.environ, PGPASSWORD=s["password"])


def psql_copy(table: str, csv: Path) -> None:
    cmd, env = psql_command(table, csv)
    subprocess.run(cmd, env=env, check=True)


# ---------------------------------------------------------------- jobs (run in a subprocess)

def _batches(ipc: str):
    import apache_beam as beam

    count = pa.ipc.open_file(ipc).num_record_batches

    def load(i: int) -> pa.RecordBatch:
        return pa.ipc.open_file(pa.memory_map(ipc)).get_batch(i)

    return beam.Create(list(range(count))) | "Load" >> beam.Map(load)


def job_pg_write(args: argparse.Namespace) -> dict:
    import apache_beam as beam

    from beam_etl.io.sql import WriteToPostgres

    conn = pg_connect()
    with conn.cursor() as cur:
        cur.execute(f"TRUNCATE {PG_TABLE}")
    conn.close()
    started = time.perf_counter()
    with beam.Pipeline(argv=["--runner=DirectRunner"]) as p:
        _ = p | _batches(args.ipc) | WriteToPostgres(**pg_settings(), table=PG_TABLE)
    seconds = time.perf_counter() - started
    conn = pg_connect()
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {PG_TABLE}")
        rows = cur.fetchone()[0]
    conn.close()
    return {"seconds": seconds, "rows": rows}


def job_mysql_write(args: argparse.Namespace) -> dict:
    import apache_beam as beam

    from beam_etl.io.sql import WriteToMySql

    conn = my_connect()
    with conn.cursor() as cur:
        cur.execute(f"TRUNCATE TABLE {MY_TABLE}")
    started = time.perf_counter()
    with beam.Pipeline(argv=["--runner=DirectRunner"]) as p:
        _ = p | _batches(args.ipc) | WriteToMySql(**my_settings(), table=MY_TABLE)
    seconds = time.perf_counter() - started
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {MY_TABLE}")
        rows = cur.fetchone()[0]
    conn.close()
    return {"seconds": seconds, "rows": rows}


def job_pg_read(args: argparse.Namespace) -> dict:
    import apache_beam as beam

    from beam_etl.io.sql import ReadFromPostgres

    out = Path(args.out).with_suffix(".count")
    partition = {"column": "id", "num_partitions": args.partitions} if args.partitions > 1 else None
    argv = ["--runner=DirectRunner"]
    if args.threads > 1:
        argv += [f"--direct_num_workers={args.threads}", "--direct_running_mode=multi_threading"]
    started = time.perf_counter()
    with beam.Pipeline(argv=argv) as p:
        batches, _ = p | ReadFromPostgres(**pg_settings(), table=PG_READ_TABLE, partition=partition)
        _ = (batches | beam.Map(lambda b: b.num_rows) | beam.CombineGlobally(sum)
             | beam.Map(lambda n: out.write_text(str(n))))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": int(out.read_text())}


def job_pg_copy_out(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    conn = pg_connect()
    buffer = io.BytesIO()
    with conn.cursor() as cur:
        cur.execute("SET TimeZone = 'UTC'")
        cur.copy_expert(f"COPY (SELECT * FROM {PG_READ_TABLE}) TO STDOUT WITH (FORMAT csv)", buffer)
    conn.close()
    buffer.seek(0)
    table = pacsv.read_csv(buffer, read_options=pacsv.ReadOptions(column_names=SCHEMA.names),
                           convert_options=pacsv.ConvertOptions(column_types=SCHEMA, true_values=["t"],
                                                                false_values=["f"]))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": table.num_rows}


JOBS = {"pg_write": job_pg_write, "mysql_write": job_mysql_write, "pg_read": job_pg_read,
        "pg_copy_out": job_pg_copy_out}


# ---------------------------------------------------------------- the parent

def run_job(name: str, label: str, extra: list[str], args: argparse.Namespace, ipc: Path, workdir: Path) -> dict:
    out = workdir / f"{label}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--job", name, "--ipc", str(ipc), "--out", str(out),
           *extra]
    runs = []
    for i in range(args.repeats):
        out.unlink(missing_ok=True)
        m = measure(cmd, workdir / f"{label}-{i}.log", ROOT, args.timeout)
        if m["rc"] != 0 or not out.exists():
            raise SystemExit(f"{label} failed (rc {m['rc']}); see {workdir / f'{label}-{i}.log'}")
        result = json.loads(out.read_text())
        runs.append({**result, "peak_rss_mb": m["peak_rss_mb"]})
        print(f"  {label} run {i + 1}: {result['seconds']:.2f} s, {result['rows']:,} rows, "
              f"peak RSS {m['peak_rss_mb']:.0f} MB", file=sys.stderr)
    return summarise(runs)


def run_psql(args: argparse.Namespace, csv: Path, workdir: Path) -> dict:
    runs = []
    cmd, _ = psql_command(PG_TABLE, csv)
    for i in range(args.repeats):
        conn = pg_connect()
        with conn.cursor() as cur:
            cur.execute(f"TRUNCATE {PG_TABLE}")
        conn.close()
        os.environ["PGPASSWORD"] = pg_settings()["password"]
        m = measure(cmd, workdir / f"psql-{i}.log", ROOT, args.timeout)
        if m["rc"] != 0:
            raise SystemExit(f"psql \\copy failed; see {workdir / f'psql-{i}.log'}")
        runs.append({"seconds": m["wall_s"], "rows": args.rows, "peak_rss_mb": m["peak_rss_mb"]})
        print(f"  psql \\copy run {i + 1}: {m['wall_s']:.2f} s", file=sys.stderr)
    return summarise(runs)


def summarise(runs: list[dict]) -> dict:
    seconds = statistics.median(r["seconds"] for r in runs)
    rows = runs[0]["rows"]
    return {"seconds": seconds, "rows": rows, "rows_per_s": rows / seconds,
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs), "runs": [r["seconds"] for r in runs]}


def render(results: dict, args: argparse.Namespace, command: str) -> str:
    def row(label: str, key: str, ref: str | None) -> str:
        r = results[key]
        ratio = f"{r['rows_per_s'] / results[ref]['rows_per_s']:.2f}x" if ref else "1.00x (reference)"
        runs = ", ".join(f"{s:.2f}" for s in r["runs"])
        return (f"| {label} | {r['seconds']:.2f} | {r['rows_per_s']:,.0f} | {ratio} | {r['peak_rss_mb']:,.0f} | "
                f"{runs} |")

    import psycopg2
    import pymysql

    conn = pg_connect()
    with conn.cursor() as cur:
        cur.execute("SHOW server_version")
        pg_version = cur.fetchone()[0]
    conn.close()
    mconn = my_connect()
    with mconn.cursor() as cur:
        cur.execute("SELECT version()")
        my_version = cur.fetchone()[0]
    mconn.close()
    n = args.partitions
    lines = [
        "## SQL connectors (PostgreSQL, MariaDB)",
        "",
        f"Generated by `{command}` on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} (UTC); rerun it rather than "
        "editing this section.",
        "",
        f"{args.rows:,} rows (seed {args.seed}): `id bigint, customer text, amount double, quantity int, "
        "ordered_at timestamptz, category text, paid bool`. Medians of "
        f"{args.repeats} runs, each job in a fresh process; time measured inside the job (pipeline build and run, "
        "no interpreter start-up); peak RSS of the job's process tree. Servers from `scripts/services.sh` on the "
        f"same machine (PostgreSQL {pg_version}, MariaDB {my_version}); Python {platform.python_version()}, "
        f"psycopg2 {psycopg2.__version__.split()[0]}, PyMySQL {pymysql.__version__}, {os.cpu_count()} CPUs.",
        "",
        "**PostgreSQL writes** (table with a primary key, emptied before each run)",
        "",
        "| job | median s | rows/s | vs reference | peak RSS MB | runs (s) |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
        row("`psql \\copy ... FROM 'rows.csv' (FORMAT csv)`", "psql_copy", None),
        row("`WriteToPostgres` insert (COPY per 64k-row batch), DirectRunner", "pg_write", "psql_copy"),
        "",
        "**PostgreSQL reads**",
        "",
        "| job | median s | rows/s | vs reference | peak RSS MB | runs (s) |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
        row("one connection: `COPY (SELECT ...) TO STDOUT (FORMAT csv)` + `pyarrow.csv`", "pg_copy_out", None),
        row("`ReadFromPostgres`, one partition (one named cursor)", "pg_read_1", "pg_copy_out"),
        row(f"`ReadFromPostgres`, {n} partitions, DirectRunner (one worker thread)", f"pg_read_{n}", "pg_copy_out"),
        row(f"`ReadFromPostgres`, {n} partitions, DirectRunner, {args.threads} worker threads "
            "(`--direct_running_mode=multi_threading`)", f"pg_read_{n}_threads", "pg_copy_out"),
        "",
        "**MariaDB writes**",
        "",
        "| job | median s | rows/s | vs reference | peak RSS MB | runs (s) |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
        row("`WriteToMySql` insert (multi-row INSERTs), DirectRunner", "mysql_write", "pg_write"),
        "",
        f"`WriteToPostgres` reaches **{results['pg_write']['rows_per_s'] / results['psql_copy']['rows_per_s']:.0%}** "
        f"of `psql \\copy` (target: 70%). The {n}-partition read with {args.threads} worker threads runs at "
        f"**{results[f'pg_read_{n}_threads']['rows_per_s'] / results['pg_read_1']['rows_per_s']:.2f}x** the "
        f"one-partition read and **{results[f'pg_read_{n}_threads']['rows_per_s'] / results['pg_copy_out']['rows_per_s']:.2f}x** "  # noqa: E501
        "the single-connection `COPY TO STDOUT` reference. The MariaDB row's ratio is against `WriteToPostgres`.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "beam_etl_bench_sql"))
    parser.add_argument("--write-report", action="store_true", help="merge the table into BENCHMARKS.md")
    parser.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--job", choices=sorted(JOBS), help=argparse.SUPPRESS)
    parser.add_argument("--ipc", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.job:  # a measured subprocess
        result = JOBS[args.job](args)
        Path(args.out).write_text(json.dumps(result))
        return 0

    if shutil.which("psql") is None:
        raise SystemExit("psql is not installed: the reference job needs it (apt-get install postgresql-client)")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bench_sql.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"bench_sql: {args.rows:,} rows, seed {args.seed}, {args.repeats} runs each, in {workdir}", file=sys.stderr)
    ipc, csv = prepare(workdir, args.rows, args.seed)
    reset_tables(csv)
    n = args.partitions
    threads = args.threads = min(n, os.cpu_count() or 1)
    try:
        results = run_all(args, ipc, csv, workdir, n, threads)
        text = render(results, args, command.strip())
    finally:
        drop_tables()
    print(text)
    if args.write_report:
        merge_section(Path(args.report), SECTION, text)
        print(f"bench_sql: wrote section {SECTION!r} of {args.report}", file=sys.stderr)
    return 0


def run_all(args: argparse.Namespace, ipc: Path, csv: Path, workdir: Path, n: int, threads: int) -> dict:
    return {
        "psql_copy": run_psql(args, csv, workdir),
        "pg_write": run_job("pg_write", "pg_write", [], args, ipc, workdir),
        "pg_copy_out": run_job("pg_copy_out", "pg_copy_out", [], args, ipc, workdir),
        "pg_read_1": run_job("pg_read", "pg_read_1", ["--partitions", "1"], args, ipc, workdir),
        f"pg_read_{n}": run_job("pg_read", f"pg_read_{n}", ["--partitions", str(n)], args, ipc, workdir),
        f"pg_read_{n}_threads": run_job("pg_read", f"pg_read_{n}_threads",
                                        ["--partitions", str(n), "--threads", str(threads)], args, ipc, workdir),
        "mysql_write": run_job("mysql_write", "mysql_write", [], args, ipc, workdir),
    }


if __name__ == "__main__":
    sys.exit(main())
