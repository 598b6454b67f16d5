"""The shared server writer (retries, lost COMMITs, bisecting) against an in-memory fake dialect.

The real servers are exercised in tests/integration; this fake makes the rare paths (a COMMIT
whose answer is lost, after it did or did not commit) happen on demand.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_etl.io._sql_conn import ServerConnection
from beam_etl.io._sql_server import ServerDialect, SourceColumn
from beam_etl.io._sql_server_write import ServerWrite, ServerWriteOptions, WritePlan
from beam_etl.ops.metrics import summarise

STATE: dict[str, Any] = {}  # module-level: the DoFn works on an unpickled copy of the dialect


class Lost(Exception):
    """The connection dropped."""


class Duplicate(Exception):
    """A row breaks the unique key."""


class FakeCursor:
    def __init__(self, conn: FakeConn) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Any = None) -> None:
        if sql.startswith("SAVEPOINT"):
            self.conn.savepoints.append(list(self.conn.pending))
        elif sql.startswith("ROLLBACK TO"):
            self.conn.pending = list(self.conn.savepoints[-1])
        elif sql.startswith("RELEASE"):
            self.conn.savepoints.pop()

    def close(self) -> None:
        pass


class FakeConn:
    def __init__(self) -> None:
        self.pending: list[tuple] = []
        self.savepoints: list[list[tuple]] = []
        self.token: int | None = None

    def cursor(self) -> FakeCursor:
        return FakeCursor(self)

    def commit(self) -> None:
        if STATE["lose_commit"]:
            STATE["lose_commit"] -= 1
            if STATE["commit_anyway"]:
                self._apply()
            raise Lost("server closed the connection during COMMIT")
        self._apply()

    def _apply(self) -> None:
        keys = {r[0] for r in STATE["table"]}
        for row in self.pending:
            assert row[0] not in keys, f"duplicate {row}"
            STATE["table"].append(row)
            keys.add(row[0])
        if self.token is not None:
            STATE["committed"].add(self.token)
        self.pending = []

    def rollback(self) -> None:
        self.pending = []

    def close(self) -> None:
        pass


class FakeDialect(ServerDialect):
    name = "fake"
    disconnect_errors = (Lost,)
    constraint_errors = (Duplicate,)

    def connect(self, database: Any, *, read_only: bool = False, timeout_s: float = 5.0, **params: Any) -> Any:
        STATE["connects"] += 1
        return FakeConn()

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, Lost)

    def table_columns(self, conn: Any, table: str, schema: str | None = None) -> dict[str, tuple[str, str]] | None:
        return {"id": ("id", "bigint"), "name": ("name", "text")}

    def write_plan(self, opts: Any, names: Sequence[str], targets: Sequence[str], table_columns: Sequence[str]
                   ) -> WritePlan:
        return WritePlan(tuple(names), tuple(targets), "INSERT")

    def begin(self, conn: Any) -> Any:
        conn.token = next(STATE["tokens"])
        return conn.token

    def committed(self, conn: Any, token: Any) -> bool:
        STATE["asked"] += 1
        return token in STATE["committed"]

    def batch_params(self, batch: pa.RecordBatch, targets: Sequence[str] = ()) -> list[tuple]:
        return [tuple(r.values()) for r in batch.to_pylist()]

    def execute_rows(self, cursor: Any, sql: str, rows: Sequence[tuple]) -> None:
        if STATE["drop_writes"]:
            STATE["drop_writes"] -= 1
            raise Lost("terminating connection due to administrator command")
        keys = {r[0] for r in STATE["table"]} | {r[0] for r in cursor.conn.pending}
        staged = []
        for row in rows:
            if row[0] in keys:
                raise Duplicate(f"duplicate key {row[0]}")
            keys.add(row[0])
            staged.append(row)
        cursor.conn.pending.extend(staged)

    # not used by the writer
    def describe(self, conn: Any, select_sql: str) -> list[SourceColumn]:
        raise NotImplementedError

    def primary_key(self, conn: Any, table: str, schema: str | None) -> list[str]:
        return ["id"]

    def estimate_rows(self, conn: Any, select_sql: str) -> int | None:
        return None

    def hash_bucket_sql(self, column_sql: str, buckets: int) -> str:
        return ""

    def stream(self, conn: Any, sql: str, params: Sequence[Any], batch_rows: int,
               columns: Sequence[SourceColumn]) -> Iterator[list[tuple]]:
        raise NotImplementedError

    def sql_type(self, arrow_type: pa.DataType) -> str:
        return "text"

    def arrow_type(self, declared: str) -> pa.DataType | None:
        return None

    def upsert_sql(self, table: str, columns: Sequence[str], key: Sequence[str]) -> str:
        return "UPSERT"

    def replace_sql(self, table: str, columns: Sequence[str]) -> str:
        return "REPLACE"


class WriteToFake(ServerWrite):
    dialect = FakeDialect()

    def __init__(self, max_retries: int = 3) -> None:
        opts = ServerWriteOptions(ServerConnection("fake", 1, "db", "u", password="canary-Fake-Pw"), None, "t",
                                  max_retries=max_retries, retry_backoff_s=0.001)
        super().__init__(opts, step_name="load")


@pytest.fixture(autouse=True)
def fake_state():
    STATE.clear()
    STATE.update(table=[], committed=set(), tokens=itertools.count(1), lose_commit=0, commit_anyway=False,
                 drop_writes=0, connects=0, asked=0)
    yield STATE


def run(batches: list[pa.RecordBatch], transform: WriteToFake, written: list[dict], dead: list[tuple]) -> dict:
    p = TestPipeline()
    out, letters = p | beam.Create(batches) | transform
    assert_that(out, equal_to(written))
    assert_that(letters | beam.Map(lambda d: (d["record"]["id"], d["error_type"], d["source"])), equal_to(dead),
                label="dead")
    result = p.run()
    result.wait_until_finish()
    return summarise(result)["load"]


def rows(start: int, stop: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([{"id": i, "name": f"n{i}"} for i in range(start, stop)])


def test_a_lost_commit_that_went_through_is_not_written_again(fake_state):
    fake_state.update(lose_commit=1, commit_anyway=True)
    counts = run([rows(0, 10)], WriteToFake(), [{"table": "t", "rows": 10}], [])
    assert sorted(r[0] for r in fake_state["table"]) == list(range(10))
    assert fake_state["asked"] == 1 and fake_state["connects"] == 2
    assert (counts["records_in"], counts["records_out"], counts["records_failed"]) == (10, 10, 0)


def test_a_lost_commit_that_did_not_go_through_is_retried(fake_state):
    fake_state.update(lose_commit=1, commit_anyway=False)
    run([rows(0, 10)], WriteToFake(), [{"table": "t", "rows": 10}], [])
    assert sorted(r[0] for r in fake_state["table"]) == list(range(10)) and fake_state["asked"] == 1


def test_dropped_connections_are_retried_then_exhausted_into_the_dlq(fake_state):
    fake_state.update(drop_writes=2)
    run([rows(0, 5)], WriteToFake(max_retries=2), [{"table": "t", "rows": 5}], [])
    assert len(fake_state["table"]) == 5 and fake_state["connects"] == 3
    fake_state.update(table=[], drop_writes=5)
    counts = run([rows(0, 2)], WriteToFake(max_retries=1), [{"table": "t", "rows": 0}],
                 [(0, "transient_exhausted", "t"), (1, "transient_exhausted", "t")])
    assert fake_state["table"] == [] and counts["records_failed"] == 2


def test_rows_breaking_the_key_are_isolated_and_the_rest_commit(fake_state):
    fake_state["table"].extend([(3, "old"), (77, "old")])
    batch = pa.RecordBatch.from_pylist([{"id": i, "name": f"n{i}"} for i in [*range(100), 50]])
    counts = run([batch], WriteToFake(), [{"table": "t", "rows": 98}],
                 [(3, "constraint", "t"), (77, "constraint", "t"), (50, "constraint", "t")])
    assert len(fake_state["table"]) == 100 and counts["records_out"] == 98
