#!/usr/bin/env python
"""Benchmarks Kafka -> PostgreSQL: the ``kafka_to_postgres_upsert`` template on Prism against a plain loop.

    bash scripts/services.sh up postgres kafka
    python benchmarks/bench_kafka.py                    # 200k messages, 3 runs each, 30 s latency runs
    python benchmarks/bench_kafka.py --write-report     # ... and writes section "kafka" of BENCHMARKS.md
    python benchmarks/bench_kafka.py --quick            # smoke run: 20k messages, 1 run, 10 s latency runs

Two consumers write the same JSON messages (``{"id", "name", "amount", "sent_at_ms"}``, keyed
by id, 3 partitions, values from a fixed seed) into a table of their own, upserting by id:

* ``beam_etl``: ``python -m beam_etl.run --template kafka_to_postgres_upsert --runner=PrismRunner
  --streaming ...`` as a subprocess in its own process group (the driver with its LOOPBACK SDK
  worker and Prism), killed with ``os.killpg`` when the measurement is over;
* ``reference``: this script's ``--job reference``, also a subprocess in its own group: a
  confluent-kafka consumer loop (``consume`` up to 10k messages, ``json.loads``, ``COPY`` into a
  temporary table, ``INSERT ... SELECT ... ON CONFLICT (id) DO UPDATE``, commit, then commit
  the offsets synchronously). It writes the same columns as the template, Kafka metadata
  included.

Throughput: a fresh topic is filled with ``--messages`` messages, then the consumer starts; the
parent polls ``count(*)`` every 0.2 s. The sustained rate is the slope of rows over time between
the first samples at or above 10% and 90% of the messages; time-to-all-rows runs from the
subprocess start (interpreter start-up, pipeline submission and Prism included) to the sample
that sees every row. Each consumer runs ``--repeats`` times (alternating), fresh topic and table
each time; the table shows medians. A read ceiling (a bare confluent-kafka consumer plus
``json.loads``, no database; kafka-console-consumer is not installed with the broker here) is
measured on the same topics.

Latency: the consumer starts on a fresh topic, a probe message every 0.5 s shows when it is
running, then a paced producer sends at half of beam_etl's median sustained rate for
``--latency-seconds`` with ``sent_at_ms`` (wall clock, ms) in every message. The table has an
extra column ``written_at timestamptz DEFAULT clock_timestamp()`` (the upsert leaves columns it
does not write alone), so latency = ``written_at - sent_at_ms`` per row, both clocks this
machine's; rows sent in the first ``--warmup-seconds`` are left out. beam_etl runs three times:
with the reader's defaults (``max_bundle`` 2s, ``poll_timeout`` 100ms, ``idle_resume`` 200ms),
with ``max_bundle`` ``--low-latency-bundle`` (250ms), and with that and ``poll_timeout``
``--low-latency-poll``.

Peak RSS is the largest sum of RSS over the consumer's process group, sampled every 0.2 s with
psutil, as is the CPU time each program in the group used.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks.run_benchmarks import machine_info, merge_section  # noqa: E402
from tests.services import KAFKA, POSTGRES  # noqa: E402

SECTION = "kafka"
TEMPLATE = "kafka_to_postgres_upsert"
PARTITIONS = 3
POLL_S = 0.2
COLUMNS = ("id", "name", "amount", "sent_at_ms", "kafka_partition", "kafka_offset", "kafka_timestamp")
DDL = ('CREATE TABLE "{t}" (id bigint NOT NULL PRIMARY KEY, name text, amount double precision, sent_at_ms bigint, '
       "kafka_partition integer, kafka_offset bigint, kafka_timestamp timestamp with time zone, "
       "written_at timestamptz DEFAULT clock_timestamp())")
LATENCY_KINDS = ("reference", "beam_etl", "beam_etl_low", "beam_etl_low_poll")
FINALIZE_ERROR = "not in a finalizable state"
NAMES = np.array([f"customer-{k:04d}" for k in range(1000)])


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- data, topics, tables

@dataclasses.dataclass(frozen=True)
class Data:
    """The messages' values apart from sent_at_ms: a function of the seed."""

    names: list[str]
    amounts: list[float]

    @classmethod
    def generate(cls, n: int, seed: int) -> Data:
        rng = np.random.default_rng(seed)
        return cls(NAMES[rng.integers(0, len(NAMES), n)].tolist(), np.round(rng.lognormal(3.5, 1.0, n), 2).tolist())

    def value(self, i: int, sent_at_ms: int) -> bytes:
        j = i % len(self.names)
        return json.dumps({"id": i, "name": self.names[j], "amount": self.amounts[j],
                           "sent_at_ms": sent_at_ms}).encode()


def pg_connect() -> Any:
    import psycopg2

    conn = psycopg2.connect(**POSTGRES.connect_kwargs())
    conn.autocommit = True
    return conn


def pg_env() -> dict[str, str]:
    pg = POSTGRES
    return {**os.environ, "PGHOST": pg.host, "PGPORT": str(pg.port), "PGUSER": pg.user, "PGPASSWORD": pg.password,
            "PGDATABASE": pg.database, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}


def sql(statement: str, params: tuple = ()) -> list[tuple]:
    conn = pg_connect()
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params or None)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def producer(linger_ms: int) -> Any:
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": KAFKA.bootstrap, "linger.ms": linger_ms, "acks": "all",
                     "queue.buffering.max.messages": 500_000})


def produce_one(prod: Any, topic: str, i: int, value: bytes) -> None:
    while True:
        try:
            prod.produce(topic, key=str(i).encode(), value=value)
            return
        except BufferError:
            prod.poll(0.05)


def prefill(topic: str, data: Data, n: int) -> float:
    """Produces messages 0..n-1; returns the seconds it took."""
    prod, started = producer(50), time.perf_counter()
    now = int(time.time() * 1000)
    for i in range(n):
        produce_one(prod, topic, i, data.value(i, now))
        if i % 10_000 == 0:
            prod.poll(0)
    if prod.flush(120) != 0:
        raise RuntimeError(f"{topic}: messages left unsent after 120 s")
    return time.perf_counter() - started


@dataclasses.dataclass
class Target:
    """A fresh topic, a table with ``written_at`` and a consumer group, all named after one label."""

    name: str

    @classmethod
    def fresh(cls, label: str) -> Target:
        target = cls(f"bench_kafka_{label}_{uuid.uuid4().hex[:8]}")
        KAFKA.create_topic(target.name, PARTITIONS)
        sql(f'DROP TABLE IF EXISTS "{target.name}"')
        sql(DDL.format(t=target.name))
        return target

    def count(self, conn: Any, where: str = "") -> int:
        with conn.cursor() as cur:
            cur.execute(f'SELECT count(*) FROM "{self.name}" {where}')
            return cur.fetchone()[0]

    def drop(self) -> None:
        try:
            sql(f'DROP TABLE IF EXISTS "{self.name}"')
        finally:
            KAFKA.delete_topic(self.name)


# ---------------------------------------------------------------- consumers, in their own process groups

def program(name: str) -> str:
    return "python" if name.startswith("python") else name


class Group:
    """A command in its own process group; samples the group's RSS and CPU time every 0.2 s."""

    def __init__(self, cmd: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=pg_env(), stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.pgid = self.proc.pid
        self.peak_rss = 0
        self.peak_by_program: dict[str, int] = {}
        self.machine_busy = 0.0
        self._machine0 = psutil.cpu_times()
        self._cpu: dict[int, tuple[str, float]] = {}  # pid -> (name, user+system seconds)
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample_loop, daemon=True)
        self._sampler.start()

    def _members(self) -> list[psutil.Process]:
        members = []
        for proc in psutil.process_iter():
            try:
                if os.getpgid(proc.pid) == self.pgid:
                    members.append(proc)
            except (ProcessLookupError, psutil.Error):
                pass
        return members

    def _sample_loop(self) -> None:
        while not self._stop.is_set():
            by_program: dict[str, int] = {}
            for proc in self._members():
                try:
                    with proc.oneshot():
                        name = program(proc.name())
                        by_program[name] = by_program.get(name, 0) + proc.memory_info().rss
                        cpu = proc.cpu_times()
                        self._cpu[proc.pid] = (name, cpu.user + cpu.system)
                except psutil.Error:
                    pass
            self.peak_rss = max(self.peak_rss, sum(by_program.values()))
            for name, rss in by_program.items():
                self.peak_by_program[name] = max(self.peak_by_program.get(name, 0), rss)
            self._stop.wait(POLL_S)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_by_program(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, seconds in self._cpu.values():
            out[name] = out.get(name, 0.0) + seconds
        return out

    def peak_rss_mb_by_program(self) -> dict[str, float]:
        return {name: rss / 2**20 for name, rss in self.peak_by_program.items()}

    def kill(self) -> None:
        self._stop.set()
        self._sampler.join()
        before, after = self._machine0, psutil.cpu_times()
        spent = sum(after) - sum(before)
        idle = (after.idle + getattr(after, "iowait", 0.0)) - (before.idle + getattr(before, "iowait", 0.0))
        self.machine_busy = 100.0 * (1 - idle / spent) if spent > 0 else 0.0
        if self.alive():
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(60)
        self._log.close()

    def count_in_log(self, text: str) -> int:
        return self.log_path.read_text(errors="replace").count(text)

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def beam_command(target: Target, out_dir: Path, extra_sets: list[str]) -> list[str]:
    sets = [f"params.bootstrap={KAFKA.bootstrap}", f"params.topic={target.name}", f"params.table={target.name}",
            f"params.group={target.name}", *extra_sets]
    return [sys.executable, "-m", "beam_etl.run", "--template", TEMPLATE, "--runner=PrismRunner", "--streaming",
            "--output-dir", str(out_dir), *(a for s in sets for a in ("--set", s))]


def reference_command(target: Target, poll_timeout: float) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--job", "reference", "--topic", target.name,
            "--poll-timeout", str(poll_timeout)]


def start(kind: str, target: Target, args: argparse.Namespace, tag: str) -> Group:
    if kind == "reference":
        cmd = reference_command(target, args.ref_poll_timeout)
    else:
        sets = {"beam_etl": [], "beam_etl_low": [f"sources.read.config.max_bundle={args.low_latency_bundle}"],
                "beam_etl_low_poll": [f"sources.read.config.max_bundle={args.low_latency_bundle}",
                                      f"sources.read.config.poll_timeout={args.low_latency_poll}"]}[kind]
        cmd = beam_command(target, args.workdir / f"out-{tag}", sets)
    return Group(cmd, args.workdir / f"{tag}.log")


def dead_letters(args: argparse.Namespace, tag: str) -> int:
    return sum(len(p.read_text().splitlines()) for p in (args.workdir / f"out-{tag}").glob("*/dlq/**/*.jsonl*"))


def wait_until(condition: Callable[[], bool], group: Group, timeout_s: float, what: str) -> None:
    deadline = time.perf_counter() + timeout_s
    while not condition():
        if not group.alive():
            raise RuntimeError(f"the consumer exited ({group.proc.returncode}) before {what}; "
                               f"{group.log_path}:\n{group.tail()}")
        if time.perf_counter() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}; {group.log_path}:\n"
                               f"{group.tail()}")
        time.sleep(POLL_S)


# ---------------------------------------------------------------- throughput

def sustained_rate(samples: list[tuple[float, int]], n: int) -> float:
    """Rows/s between the first samples at or above 10% and 90% of ``n``."""
    t10, c10 = next((t, c) for t, c in samples if c >= 0.1 * n)
    t90, c90 = next((t, c) for t, c in samples if c >= 0.9 * n)
    if t90 <= t10:
        raise RuntimeError("10% and 90% of the rows arrived in the same 0.2 s sample; use more --messages")
    return (c90 - c10) / (t90 - t10)


def throughput_run(kind: str, args: argparse.Namespace, data: Data, i: int) -> dict:
    tag = f"tp-{kind}-{i}"
    target = Target.fresh(tag.replace("-", "_"))
    try:
        fill_s = prefill(target.name, data, args.messages)
        n = args.messages
        conn = pg_connect()
        group = start(kind, target, args, tag)
        samples: list[tuple[float, int]] = []

        def done() -> bool:
            samples.append((time.perf_counter() - group.started, target.count(conn)))
            return samples[-1][1] >= n

        try:
            wait_until(done, group, args.timeout, f"{n:,} rows in {target.name}")
        finally:
            group.kill()
        with conn.cursor() as cur:
            cur.execute(f'SELECT count(*), count(DISTINCT id), sum(amount) FROM "{target.name}"')
            rows, distinct, amount = cur.fetchone()
            cur.execute("SELECT extract(epoch FROM percentile_disc(0.9) WITHIN GROUP (ORDER BY written_at) "
                        f"- percentile_disc(0.1) WITHIN GROUP (ORDER BY written_at))::float8 FROM \"{target.name}\"")
            written_span = cur.fetchone()[0]
        conn.close()
        expected = sum(data.amounts[j % len(data.amounts)] for j in range(n))
        ok = rows == n == distinct and abs(amount - expected) <= 1e-6 * abs(expected)
        read_rate = read_ceiling(target.name, n) if kind == "reference" else None
        result = {
            "rate": sustained_rate(samples, n), "total_s": samples[-1][0],
            "first_row_s": next(t for t, c in samples if c > 0), "peak_rss_mb": group.peak_rss / 2**20,
            "written_rate": 0.8 * n / written_span if written_span else None, "machine_busy": group.machine_busy,
            "rss_by_program": group.peak_rss_mb_by_program(),
            "cpu": group.cpu_by_program(), "check": "ok" if ok else f"{rows} rows, {distinct} ids, sum {amount}",
            "dlq": dead_letters(args, tag) if kind != "reference" else 0, "fill_s": fill_s, "read_rate": read_rate,
            "finalize_errors": group.count_in_log(FINALIZE_ERROR),
        }
    finally:
        target.drop()
    cpu = ", ".join(f"{k} {v:.1f}" for k, v in sorted(result["cpu"].items()))
    log(f"  {kind} run {i + 1}: sustained {result['rate']:,.0f} msg/s, all rows after {result['total_s']:.1f} s "
        f"(first after {result['first_row_s']:.1f} s), peak RSS {result['peak_rss_mb']:.0f} MB, CPU s: {cpu}, "
        f"{result['check']}" + (f", read ceiling {read_rate:,.0f} msg/s" if read_rate else ""))
    return result


def read_ceiling(topic: str, n: int) -> float:
    """Messages/s of a bare consumer (consume 10k at a time + json.loads), first to last message."""
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": KAFKA.bootstrap, "group.id": f"{topic}_ceiling",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got, first, deadline = 0, None, time.perf_counter() + 120
    try:
        while got < n and time.perf_counter() < deadline:
            messages = consumer.consume(10_000, timeout=0.5)
            if messages and first is None:
                first = time.perf_counter()
            for m in messages:
                if m.error() is None:
                    json.loads(m.value())
                    got += 1
        last = time.perf_counter()
    finally:
        consumer.close()
    if got < n or first is None:
        raise RuntimeError(f"read ceiling: {got} of {n} messages after 120 s")
    return n / (last - first)


# ---------------------------------------------------------------- latency

def paced_produce(topic: str, data: Data, rate: float, seconds: float, sent: list[int]) -> None:
    """Sends message i at ``i / rate`` s after the start, stamping sent_at_ms; appends the count to ``sent``."""
    prod = producer(5)
    started, i = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - started) < seconds:
        due = int(rate * elapsed)
        while i < due:
            produce_one(prod, topic, i, data.value(i, int(time.time() * 1000)))
            i += 1
        prod.poll(0)
        time.sleep(0.002)
    if prod.flush(60) != 0:
        raise RuntimeError(f"{topic}: messages left unsent after 60 s")
    sent.append(i)


def latency_run(kind: str, args: argparse.Namespace, data: Data, rate: float) -> dict:
    tag = f"lat-{kind}"
    target = Target.fresh(tag.replace("-", "_"))
    conn = pg_connect()
    group = start(kind, target, args, tag)
    try:
        prod, probe = producer(0), [0]

        def running() -> bool:  # a probe (negative id) every 0.5 s until one is in the table
            if time.perf_counter() - group.started >= 0.5 * probe[0]:
                probe[0] += 1
                produce_one(prod, target.name, -probe[0], data.value(-probe[0], int(time.time() * 1000)))
                prod.flush(10)
            return target.count(conn) > 0

        wait_until(running, group, args.timeout, "the first probe row")
        up_s = time.perf_counter() - group.started
        start_ms = int(time.time() * 1000)
        sent: list[int] = []
        thread = threading.Thread(target=paced_produce, args=(target.name, data, rate, args.latency_seconds, sent))
        thread.start()
        while thread.is_alive():
            if not group.alive():
                raise RuntimeError(f"the consumer exited during the latency run; {group.log_path}:\n{group.tail()}")
            thread.join(POLL_S)
        if not sent:
            raise RuntimeError("the paced producer failed")
        produced_at = time.perf_counter()
        wait_until(lambda: target.count(conn, "WHERE id >= 0") >= sent[0], group, 120, f"all {sent[0]:,} rows")
        drain_s = time.perf_counter() - produced_at
    finally:
        group.kill()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*), percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY lat), min(lat), "
                "max(lat) FROM (SELECT (extract(epoch FROM written_at) * 1000 - sent_at_ms)::float8 AS lat "
                f'FROM "{target.name}" '
                "WHERE id >= 0 AND sent_at_ms >= %s) s", (start_ms + int(args.warmup_seconds * 1000),))
            rows, (p50, p95, p99), low, high = cur.fetchone()
            cur.execute(f'SELECT count(*) FROM "{target.name}" WHERE written_at IS NULL')
            null_written = cur.fetchone()[0]
        conn.close()
    finally:
        target.drop()
    result = {"rate": rate, "achieved": sent[0] / args.latency_seconds, "rows": rows, "p50": p50, "p95": p95,
              "p99": p99, "min": low, "max": high, "up_s": up_s, "drain_s": drain_s, "null_written": null_written,
              "peak_rss_mb": group.peak_rss / 2**20, "cpu": group.cpu_by_program(),
              "rss_by_program": group.peak_rss_mb_by_program(), "machine_busy": group.machine_busy,
              "dlq": dead_letters(args, tag) if kind != "reference" else 0,
              "finalize_errors": group.count_in_log(FINALIZE_ERROR)}
    log(f"  {kind} latency at {rate:,.0f} msg/s: p50 {p50:,.0f} ms, p95 {p95:,.0f} ms, p99 {p99:,.0f} ms, "
        f"max {high:,.0f} ms over {rows:,} rows; running after {up_s:.1f} s, drained {drain_s:.1f} s after the "
        f"producer stopped; peak RSS {result['peak_rss_mb']:.0f} MB")
    return result


# ---------------------------------------------------------------- the reference consumer (a subprocess)

def job_reference(args: argparse.Namespace) -> int:
    """consume(10k) -> json.loads -> COPY into a temp table -> INSERT ... ON CONFLICT -> commit -> commit offsets."""
    import psycopg2
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": KAFKA.bootstrap, "group.id": args.topic,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([args.topic])
    conn = psycopg2.connect(**POSTGRES.connect_kwargs())
    cur = conn.cursor()
    cur.execute("CREATE TEMP TABLE stage (id bigint, name text, amount double precision, sent_at_ms bigint, "
                "kafka_partition integer, kafka_offset bigint, kafka_timestamp bigint) ON COMMIT DELETE ROWS")
    conn.commit()
    cols = ", ".join(COLUMNS)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS if c != "id")
    upsert = (f'INSERT INTO "{args.topic}" ({cols}) SELECT id, name, amount, sent_at_ms, kafka_partition, '
              "kafka_offset, to_timestamp(kafka_timestamp / 1000.0) FROM stage "
              f"ON CONFLICT (id) DO UPDATE SET {updates}")
    while True:
        messages = consumer.consume(10_000, timeout=args.poll_timeout)
        if not messages:
            continue
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        for m in messages:
            if m.error() is not None:
                raise RuntimeError(str(m.error()))
            d = json.loads(m.value())
            writer.writerow((d["id"], d["name"], d["amount"], d["sent_at_ms"], m.partition(), m.offset(),
                             m.timestamp()[1]))
        buffer.seek(0)
        cur.copy_expert("COPY stage FROM STDIN WITH (FORMAT csv)", buffer)
        cur.execute(upsert)
        conn.commit()
        consumer.commit(asynchronous=False)


# ---------------------------------------------------------------- report

def render(tp: dict[str, list[dict]], lat: dict[str, dict], args: argparse.Namespace, command: str) -> str:
    import confluent_kafka
    import psycopg2

    info = machine_info()
    pg_version = sql("SHOW server_version")[0][0].split()[0]
    fields = ("rate", "written_rate", "total_s", "first_row_s", "peak_rss_mb", "machine_busy")
    med = {k: {f: statistics.median(r[f] for r in runs) for f in fields} for k, runs in tp.items()}
    ref = med["reference"]
    read = statistics.median(r["read_rate"] for r in tp["reference"])
    labels = {"beam_etl": "`beam_etl` template on Prism (reader defaults)",
              "beam_etl_low": f"`beam_etl` template on Prism, `max_bundle={args.low_latency_bundle}`",
              "beam_etl_low_poll": f"`beam_etl` template on Prism, `max_bundle={args.low_latency_bundle}`, "
                                   f"`poll_timeout={args.low_latency_poll}`",
              "reference": "plain confluent-kafka loop (reference)"}

    def cpu(runs: list[dict]) -> str:
        names = sorted({n for r in runs for n in r["cpu"]})
        return ", ".join(f"{n} {statistics.median(r['cpu'].get(n, 0.0) for r in runs):.1f}" for n in names)

    def rss(runs: list[dict]) -> str:
        total = statistics.median(r["peak_rss_mb"] for r in runs)
        names = sorted({n for r in runs for n in r["rss_by_program"]})
        if len(names) < 2:
            return f"{total:,.0f}"
        parts = ", ".join(f"{n} {statistics.median(r['rss_by_program'].get(n, 0.0) for r in runs):,.0f}"
                          for n in names)
        return f"{total:,.0f} ({parts})"

    lines = [
        "## Kafka -> PostgreSQL (streaming upsert)",
        "",
        f"Generated by `{command}` on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} (UTC); rerun it (or "
        "`make bench-kafka`) rather than editing this section.",
        "",
        f"**Job**: the `{TEMPLATE}` template (`ReadFromKafka` with `exactly_once: true` and metadata partition, "
        "offset, timestamp -> `NullRemover` on `id` -> `WriteToPostgres` mode upsert by `id`), run as "
        "`python -m beam_etl.run --template kafka_to_postgres_upsert --runner=PrismRunner --streaming --set "
        "params.bootstrap=... --set params.topic=... --set params.table=... --set params.group=...` in its own "
        "process group (driver + LOOPBACK SDK worker + Prism). **Reference**: a plain confluent-kafka loop in a "
        "process of its own (`benchmarks/bench_kafka.py --job reference`): `consume(10_000, timeout="
        f"{args.ref_poll_timeout:g})`, `json.loads`, psycopg2 `COPY` into a temp table, `INSERT ... SELECT ... ON "
        "CONFLICT (id) DO UPDATE`, commit, then a synchronous offset commit; the same seven columns.",
        "",
        f"**Data**: JSON `{{\"id\", \"name\", \"amount\", \"sent_at_ms\"}}` keyed by id, seed {args.seed}, "
        f"{PARTITIONS} partitions, a fresh topic, consumer group and table (id primary key, plus `written_at "
        "timestamptz DEFAULT clock_timestamp()`) for every run.",
        "",
        f"**Machine**: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gb']} GiB RAM, {info['os']}. "
        f"Python {info['python']}, apache-beam {info['apache-beam']}, pyarrow {info['pyarrow']}, confluent-kafka "
        f"{metadata.version('confluent-kafka')} (librdkafka {confluent_kafka.libversion()[0]}), psycopg2 "
        f"{psycopg2.__version__.split()[0]}. "
        f"Kafka 4.4.0 (one KRaft node) and PostgreSQL {pg_version} from `scripts/services.sh` on the same "
        "machine, so broker, database, producer and consumer share the CPUs; other work on the machine "
        "can slow any run, which is why the reference runs in the same invocation, alternating with beam_etl "
        f"(1-minute load average {args.load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end).",
        "",
        f"**Throughput**: {args.messages:,} messages in the topic before the consumer starts; `count(*)` polled "
        f"every {POLL_S:g} s. *Sustained* = rows/s between the first samples at or above 10% and 90% of the "
        "messages; the cross-check *by written_at* = 80% of the messages / the time between the 10th and 90th "
        "percentile of `written_at` in the finished table; *all rows* = seconds from starting the subprocess "
        "(interpreter, imports, pipeline submission and Prism included) to the sample that sees every row; "
        "*first row* likewise. Medians over "
        f"{args.repeats} run(s); peak RSS is the largest sum of RSS over the process group (psutil, every "
        f"{POLL_S:g} s; in brackets the largest sum per program), CPU s the CPU time of each program in the "
        "group, machine CPU % how busy all CPUs were while the consumer ran (everything on the machine). Every "
        "run's table is checked: all ids once, `sum(amount)` as sent.",
        "",
        "| consumer | sustained msg/s | vs reference | by written_at msg/s | all rows s | first row s | "
        "peak RSS MB | CPU s | machine CPU % | runs: sustained msg/s | check |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | --- | --- |",
    ]
    for kind in ("reference", "beam_etl"):
        m, runs = med[kind], tp[kind]
        checks = {r["check"] for r in runs} | ({f"{sum(r['dlq'] for r in runs)} dead letters"}
                                                if any(r["dlq"] for r in runs) else set())
        ratio = "1.00x" if kind == "reference" else f"{m['rate'] / ref['rate']:.2f}x"
        lines.append(f"| {labels[kind]} | {m['rate']:,.0f} | {ratio} | {m['written_rate']:,.0f} | {m['total_s']:.1f} "
                     f"| {m['first_row_s']:.1f} | {rss(runs)} | {cpu(runs)} | {m['machine_busy']:.0f} "
                     f"| {', '.join(format(r['rate'], ',.0f') for r in runs)} | {', '.join(sorted(checks))} |")
    lines += [
        "",
        f"Read ceiling on the same topics (a bare confluent-kafka consumer, `consume(10_000)` + `json.loads`, no "
        f"database; median of {len(tp['reference'])}): **{read:,.0f} msg/s**. beam_etl sustains "
        f"**{med['beam_etl']['rate'] / ref['rate']:.2f}x** the reference's rate "
        f"({med['beam_etl']['written_rate'] / ref['written_rate']:.2f}x by written_at) and needs "
        f"**{med['beam_etl']['total_s'] / ref['total_s']:.2f}x** its time to all rows "
        f"({med['beam_etl']['first_row_s']:.1f} s of it before the first row).",
        "",
        f"**Latency**: the consumer starts on an empty topic (a probe message every 0.5 s shows when it runs), then "
        f"a paced producer (linger.ms 5) sends at **{lat['reference']['rate']:,.0f} msg/s** (half beam_etl's "
        f"median sustained rate) for {args.latency_seconds:g} s. Latency per row = `written_at` (PostgreSQL's "
        "`clock_timestamp()` when the row is inserted, just before its commit) - `sent_at_ms` (the producer's wall "
        f"clock; same machine); rows sent in the first {args.warmup_seconds:g} s are left out. One run each. "
        "*drain s* = seconds from the producer's last message to the last row in the table. The producer runs "
        "in the benchmark's own process, so its CPU counts in machine CPU % but not in the consumer's CPU s.",
        "",
        "| consumer | sent msg/s | rows | p50 ms | p95 ms | p99 ms | max ms | drain s | peak RSS MB | CPU s "
        "| machine CPU % |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for kind in LATENCY_KINDS:
        r = lat[kind]
        lines.append(f"| {labels[kind]} | {r['achieved']:,.0f} | {r['rows']:,} | {r['p50']:,.0f} | {r['p95']:,.0f} "
                     f"| {r['p99']:,.0f} | {r['max']:,.0f} | {r['drain_s']:.1f} | {rss([r])} | {cpu([r])} "
                     f"| {r['machine_busy']:.0f} |")
    notes = [f"- `{kind}`: {lat[kind]['null_written']} rows with a null `written_at`" for kind in lat
             if lat[kind]["null_written"]]
    notes += [f"- `{kind}` latency run: {lat[kind]['dlq']} dead letters" for kind in lat if lat[kind]["dlq"]]
    runs = [*tp["beam_etl"], *(lat[k] for k in LATENCY_KINDS if k != "reference")]
    errors = [r["finalize_errors"] for r in runs]
    if any(errors):
        notes.append(f"- beam_etl runs: the SDK worker logged `RuntimeError: Bundle is not in a finalizable state` "
                     f"in {sum(1 for e in errors if e)} of {len(runs)} runs ({sum(errors)} times in all); "
                     "every run still wrote every row.")
    lines += ["", *notes] if notes else []
    lines += [
        "",
        "Reader settings that bound beam_etl's latency (`ReadFromKafka`, `--set sources.read.config.NAME=...`): "
        "`max_bundle` (2s: a partition's reader checkpoints after this long; its offsets commit when the bundle "
        "is finalised), `poll_timeout` (100ms: a poll returns after this long unless `batch_rows` messages came "
        "first), `idle_resume` (200ms: the pause before a caught-up partition is polled again), `batch_rows` "
        "(10,000).",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000, help="messages per throughput run")
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs per consumer")
    parser.add_argument("--latency-seconds", type=float, default=30.0, help="how long the paced producer sends")
    parser.add_argument("--warmup-seconds", type=float, default=5.0, help="leading seconds left out of latency")
    parser.add_argument("--low-latency-bundle", default="250ms", help="max_bundle of the second beam_etl latency run")
    parser.add_argument("--low-latency-poll", default="50ms",
                        help="poll_timeout of the third beam_etl latency run (with --low-latency-bundle)")
    parser.add_argument("--ref-poll-timeout", type=float, default=0.1, help="the reference's consume() timeout (s)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a consumer may take for one run")
    parser.add_argument("--quick", action="store_true", help="20k messages, 1 run, 10 s latency runs (smoke test)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "beam_etl_bench_kafka")
    parser.add_argument("--write-report", action="store_true", help="merge the section into BENCHMARKS.md")
    parser.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--job", choices=["reference"], help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--poll-timeout", type=float, default=0.1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.repeats, args.latency_seconds, args.warmup_seconds = 20_000, 1, 10.0, 2.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.job == "reference":
        return job_reference(args)

    from beam_etl.runners.locate import find_prism
    from tests.services import port_open

    if find_prism() is None:
        raise SystemExit("Prism is not built: run scripts/runners.sh prism (or make runners)")
    for service in (POSTGRES, KAFKA):
        if not port_open(service.host, service.port):
            raise SystemExit(f"{service.name} is not running: bash scripts/services.sh up postgres kafka")
    args.workdir.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bench_kafka.py " + " ".join(argv if argv is not None else sys.argv[1:])
    log(f"bench_kafka: {args.messages:,} messages, {args.repeats} runs each, logs in {args.workdir}")
    data = Data.generate(args.messages, args.seed)
    args.load = os.getloadavg()
    tp: dict[str, list[dict]] = {"beam_etl": [], "reference": []}
    for i in range(args.repeats):
        for kind in tp:
            tp[kind].append(throughput_run(kind, args, data, i))
    rate = statistics.median(r["rate"] for r in tp["beam_etl"]) / 2
    log(f"bench_kafka: latency runs at {rate:,.0f} msg/s for {args.latency_seconds:g} s each")
    lat = {kind: latency_run(kind, args, data, rate) for kind in LATENCY_KINDS}
    text = render(tp, lat, args, command.strip())
    (args.workdir / "results.json").write_text(json.dumps({"throughput": tp, "latency": lat}, indent=1))
    print(text)
    if args.write_report:
        merge_section(Path(args.report), SECTION, text)
        log(f"bench_kafka: wrote section {SECTION!r} of {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
