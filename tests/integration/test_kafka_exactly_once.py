"""Exactly-once results under a killed pipeline: Kafka -> PostgreSQL (upsert) and Kafka -> Kafka.

Each test produces N keyed messages, starts the streaming template on Prism, SIGKILLs the whole
run (its process group: the Python driver, Prism and the SDK worker) at about half way, starts
it again and checks the sink holds exactly N distinct keys with the right values, the DLQ is
empty and no key is missing. ``BEAM_ETL_KILL_TEST_N`` sets N (default 20 000; the acceptance
run uses 100 000: ``make test-kill``).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import psycopg2
import pytest

from tests.integration.kafka_helpers import (
    StreamingRun,
    committed,
    end_offsets,
    produce,
    read_topic,
    record,
    wait_for,
)
from tests.services import KAFKA, POSTGRES

pytestmark = pytest.mark.integration
N = int(os.environ.get("BEAM_ETL_KILL_TEST_N", "20000"))
PARTITIONS = 3
TIMEOUT_S = 300
# small polls and short bundles: the sink commits many times, so the kill lands between commits
SMALL_BUNDLES = ["--set", "sources.read.config.batch_rows=500", "--set", "sources.read.config.max_bundle=100ms"]


def _dead_letters(output_dir: Path) -> list[dict]:
    letters = []
    for path in output_dir.glob("*/dlq/**/*.jsonl*"):
        letters += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return letters


def _count(dsn: str, table: str) -> int:
    try:
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute(f'SELECT count(*) FROM "{table}"')
            return cur.fetchone()[0]
    except psycopg2.errors.UndefinedTable:
        return 0


def _kill_half_way_then_finish(args: list[str], env: dict[str, str], tmp_path: Path, progress, finished) -> int:
    """Run 1 is SIGKILLed once ``progress() >= N/2``; run 2 goes until ``finished()``. Returns progress at kill."""
    first = StreamingRun(args, env, tmp_path / "run1.log")
    try:
        wait_for(lambda: progress() >= N // 2, TIMEOUT_S, first, f"half of {N} records in the sink")
    finally:
        first.kill()
    at_kill = progress()
    second = StreamingRun(args, env, tmp_path / "run2.log")
    try:
        wait_for(finished, TIMEOUT_S, second, f"all {N} records in the sink and every offset committed")
    finally:
        second.kill()
    return at_kill


def _env() -> dict[str, str]:
    pg = POSTGRES
    return {**os.environ, "PGHOST": pg.host, "PGPORT": str(pg.port), "PGUSER": pg.user,
            "PGPASSWORD": pg.password, "PGDATABASE": pg.database, "HF_HUB_OFFLINE": "1"}


def test_kafka_to_postgres_exactly_once_after_sigkill(kafka_bootstrap, postgres_dsn, prism_binary, tmp_path):
    name = f"eo_pg_{uuid.uuid4().hex[:8]}"
    KAFKA.create_topic(name, PARTITIONS)
    produce(kafka_bootstrap, name, range(N))
    ends = end_offsets(kafka_bootstrap, name, PARTITIONS)
    args = ["--template", "kafka_to_postgres_upsert", "--runner=PrismRunner", "--streaming",
            "--output-dir", str(tmp_path / "out"), "--set", f"params.bootstrap={kafka_bootstrap}",
            "--set", f"params.topic={name}", "--set", f"params.table={name}", "--set", f"params.group={name}",
            *SMALL_BUNDLES]

    def finished() -> bool:
        return _count(postgres_dsn, name) >= N and committed(kafka_bootstrap, name, name, PARTITIONS) == ends

    try:
        at_kill = _kill_half_way_then_finish(args, _env(), tmp_path, lambda: _count(postgres_dsn, name), finished)
        print(f"kafka -> postgres: killed with {at_kill} of {N} rows in the table")
        assert at_kill < N, "the first run finished before it was killed: nothing was tested"
        with psycopg2.connect(postgres_dsn) as conn, conn.cursor() as cur:
            cur.execute(f'SELECT count(*), count(DISTINCT id), min(id), max(id) FROM "{name}"')
            assert cur.fetchone() == (N, N, 0, N - 1)  # exactly N keys, no gap
            cur.execute(f'SELECT id, name, amount FROM "{name}" ORDER BY id')
            rows = cur.fetchall()
        wrong = [r for r in rows if {"id": r[0], "name": r[1], "amount": float(r[2])} != record(r[0])]
        assert wrong == []
        assert _dead_letters(tmp_path / "out") == []
    finally:
        with psycopg2.connect(postgres_dsn) as conn, conn.cursor() as cur:
            cur.execute(f'DROP TABLE IF EXISTS "{name}"')
        KAFKA.delete_topic(name)


def test_kafka_to_kafka_exactly_once_after_sigkill(kafka_bootstrap, prism_binary, tmp_path):
    source, sink = (f"eo_kk_{uuid.uuid4().hex[:8]}_{s}" for s in ("in", "out"))
    KAFKA.create_topic(source, PARTITIONS)
    KAFKA.create_topic(sink, PARTITIONS)
    produce(kafka_bootstrap, source, range(N))
    ends = end_offsets(kafka_bootstrap, source, PARTITIONS)
    args = ["--template", "kafka_to_kafka", "--runner=PrismRunner", "--streaming",
            "--output-dir", str(tmp_path / "out"), "--set", f"params.bootstrap={kafka_bootstrap}",
            "--set", f"params.input_topic={source}", "--set", f"params.output_topic={sink}",
            "--set", f"params.group={source}", *SMALL_BUNDLES]

    def progress() -> int:  # committed offsets = input records whose output is committed (one transaction)
        return sum(max(o, 0) for o in committed(kafka_bootstrap, source, source, PARTITIONS))

    try:
        at_kill = _kill_half_way_then_finish(args, _env(), tmp_path, progress, lambda: progress() >= sum(ends))
        print(f"kafka -> kafka: killed with {at_kill} of {N} input offsets committed")
        assert at_kill < N, "the first run finished before it was killed: nothing was tested"
        messages = read_topic(kafka_bootstrap, sink, PARTITIONS, expect=N)
        values = [json.loads(v) for _, v in messages]
        assert len(messages) == N  # no duplicate and no loss among committed messages
        assert sorted(v["id"] for v in values) == list(range(N))
        wrong = [v for v in values if {k: v[k] for k in ("id", "name", "amount")} != record(v["id"])]
        assert wrong == []
        assert all(k == str(v["id"]).encode() for (k, _), v in zip(messages, values, strict=True))
        assert _dead_letters(tmp_path / "out") == []
    finally:
        KAFKA.delete_topic(source)
        KAFKA.delete_topic(sink)
