"""Incremental state in a PostgreSQL table (the real server from scripts/services.sh)."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import psycopg2
import pytest

from beam_etl.ops.state import PostgresStateStore, SavedState, StateError, open_store

pytestmark = pytest.mark.integration


def test_postgres_store_round_trips_typed_values_and_keeps_history(postgres_state_dsn):
    store = open_store(postgres_state_dsn)
    assert isinstance(store, PostgresStateStore)
    pipeline = f"p_{uuid.uuid4().hex[:8]}"
    first = dt.datetime(2024, 3, 1, 10, 0, tzinfo=dt.UTC)
    store.put(SavedState(pipeline, "orders", "cursor", first, "r1", "t1"))
    store.put(SavedState(pipeline, "orders", "cursor", decimal.Decimal("10.50"), "r2", "t2"))
    got = store.get(pipeline, "orders")
    assert got.value == decimal.Decimal("10.50") and got.run_id == "r2"
    with psycopg2.connect(postgres_state_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT run_id FROM beam_etl_state_history WHERE pipeline = %s ORDER BY run_id", (pipeline,))
        assert [r[0] for r in cur.fetchall()] == ["r1", "r2"]
    assert store.delete(pipeline) == 1 and store.get(pipeline, "orders") is None


def test_wrong_password_error_names_the_store_not_the_password(postgres_state_dsn):
    canary = "canary-St4te-Pw"
    user_part = postgres_state_dsn.split("//", 1)[1].split("@", 1)[0]
    bad = postgres_state_dsn.replace(user_part, f"{user_part.split(':')[0]}:{canary}", 1)
    with pytest.raises(StateError) as err:
        open_store(bad).get("p", "s")
    assert canary not in str(err.value) and "postgresql://" in str(err.value)
