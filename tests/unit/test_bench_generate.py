"""benchmarks/generate.py: deterministic output, the promised null and duplicate fractions."""

from __future__ import annotations

import csv
import importlib.util
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

GENERATE = Path(__file__).resolve().parents[2] / "benchmarks" / "generate.py"


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("bench_generate", GENERATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sample(gen, tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("gen") / "orders.csv"
    info = gen.generate(20_000, path, seed=11)
    return path, info


def test_same_seed_same_bytes(gen, tmp_path):
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    gen.generate(1_000, a, seed=7)
    gen.generate(1_000, b, seed=7)
    gen.generate(1_000, c, seed=8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_output_does_not_depend_on_chunk_size(gen, tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    gen.generate(1_000, a, seed=3)
    gen.generate(1_000, b, seed=3, chunk_rows=97)
    assert a.read_bytes() == b.read_bytes()


def test_header_rows_and_types(sample, gen):
    path, info = sample
    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    assert table.column_names == gen.COLUMNS
    assert table.num_rows == info["rows"] == 20_000
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("amount").type == pa.float64()
    assert table.schema.field("quantity").type == pa.int64()
    assert set(table["category"].drop_null().unique().to_pylist()) == set(gen.CATEGORIES)


def test_null_fraction(sample):
    path, info = sample
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    with_null = sum(1 for r in rows if "" in r)
    assert with_null == info["rows_with_null"]
    assert 0.04 <= with_null / len(rows) <= 0.06
    assert all(r.count("") <= 1 for r in rows)


def test_duplicate_fraction_and_duplicates_are_copies(sample):
    path, info = sample
    by_id: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    id_rows = 0
    with path.open(newline="", encoding="utf-8") as f:
        for row in list(csv.reader(f))[1:]:
            if row[0]:
                id_rows += 1
                by_id[row[0]].add(tuple(row))
    duplicates = id_rows - len(by_id)
    assert 0.085 <= duplicates / id_rows <= 0.115
    assert duplicates <= info["duplicate_rows"]
    # a repeated id repeats the whole row, so "keep first" and "keep any" agree
    assert all(len(variants) == 1 for variants in by_id.values())
