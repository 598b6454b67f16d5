"""Helpers shared by the PostgreSQL and MySQL connector tests: run a pipeline, collect its outputs."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.testing.test_pipeline import TestPipeline

from beam_etl.ops.metrics import summarise
from tests.collect import read_elements, write_element


def unique(prefix: str = "t") -> str:
    return f"beam_etl_{prefix}_{uuid.uuid4().hex[:10]}"


def run(build: Callable[[beam.Pipeline], None]) -> dict[str, dict[str, int]]:
    """Builds a pipeline with ``build(p)``, runs it and returns the per-step counters."""
    p = TestPipeline()
    build(p)
    result = p.run()
    result.wait_until_finish()
    return summarise(result)


def read(transform: beam.PTransform) -> tuple[pa.Table | None, list[dict], dict[str, dict[str, int]]]:
    """Runs a source; returns its batches as one table, its dead letters and the counters."""
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as dead:
        def build(p: beam.Pipeline) -> None:
            batches, letters = p | transform
            batches | "Keep" >> beam.Map(write_element, out)
            letters | "KeepDead" >> beam.Map(write_element, dead)

        counts = run(build)
        table, _ = read_elements(out)
        _, letters = read_elements(dead)
    return table, letters, counts


def write(transform: beam.PTransform, batches: list[pa.RecordBatch]) -> tuple[list[dict], list[dict], dict]:
    """Runs a sink on ``batches``; returns its written records, its dead letters and the counters."""
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as dead:
        def build(p: beam.Pipeline) -> None:
            written, letters = p | beam.Create(batches) | transform
            written | "Keep" >> beam.Map(write_element, out)
            letters | "KeepDead" >> beam.Map(write_element, dead)

        counts = run(build)
        _, written = read_elements(out)
        _, letters = read_elements(dead)
    return written, letters, counts


def sorted_rows(table: pa.Table | None, key: str = "id") -> list[dict[str, Any]]:
    rows = table.to_pylist() if table is not None else []
    return sorted(rows, key=lambda r: (r[key] is None, r[key]))
