"""Shared pytest fixtures."""

from __future__ import annotations

import pyarrow as pa
import pytest

from beam_etl.ops.context import RunContext, use_run_context


@pytest.fixture(autouse=True)
def run_context(tmp_path):
    """Every test builds its pipelines inside a fresh run context."""
    with use_run_context(RunContext(pipeline="test", run_id="test-run", run_dir=str(tmp_path))) as ctx:
        yield ctx


@pytest.fixture
def sample_batch() -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([
        {"id": 1, "name": "Ada", "amount": 10.5, "city": "London"},
        {"id": 2, "name": None, "amount": 3.0, "city": "Paris"},
        {"id": 3, "name": "Linus", "amount": None, "city": None},
    ])
