"""Shared pytest fixtures."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyarrow as pa
import pytest

from beam_etl.ops.context import RunContext, use_run_context
from beam_etl.runners import locate

REPO = Path(__file__).resolve().parents[1]


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


@pytest.fixture(scope="session")
def prism_binary() -> Path:
    """The Prism binary for the installed Beam; built by scripts/runners.sh when missing."""
    found = locate.find_prism()
    if found is None:
        result = subprocess.run(["bash", str(REPO / "scripts" / "runners.sh"), "prism"], capture_output=True,
                                text=True, timeout=1200)
        found = locate.find_prism()
        if found is None:
            pytest.fail(f"Prism is not available and scripts/runners.sh prism failed ({result.returncode}):\n"
                        f"{result.stderr[-3000:]}")
    return found
