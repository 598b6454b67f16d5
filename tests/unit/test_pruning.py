"""Column pruning: which columns a source passes on, and that pruning never changes a run's results."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from beam_etl.pruning import project, source_columns
from beam_etl.run import EXIT_OK, run_template
from beam_etl.spec import build_spec
from beam_etl.transforms.base import SOURCE_KEY, tag_source

CSV_HEADER = "id,name,email,amount,quantity,category\n"

BASE = {
    "name": "prune",
    "sources": [{"name": "read", "type": "ReadFromCsv", "config": {"path": "{{ input }}"}}],
    "steps": [
        {"name": "clean", "type": "NullRemover", "input": "read", "config": {"drop_rows": {"fields": ["id"]}}},
        {"name": "dedup", "type": "ExactDeduplicator", "input": "clean", "config": {"keys": ["id"]}},
        {"name": "totals", "type": "GroupByAggregate", "input": "dedup", "config": {
            "keys": ["category"], "aggregations": {"total": {"op": "sum", "field": "amount"}, "n": {"op": "count"}}}},
    ],
    "sinks": [{"name": "out", "type": "WriteToParquet", "input": "totals",
               "config": {"path": "{{ output }}/totals", "num_shards": 1}}],
}


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "orders.csv"
    path.write_text(CSV_HEADER + "1,Ann,ann@x.org,10.5,1,a\n2,Bob,bob@x.org,4.0,2,b\n")
    return path


def pruned(document: dict, csv_file: Path, overrides: list[str] | None = None) -> dict[str, tuple[str, ...]]:
    document = {**copy.deepcopy(document), "params": {"input": str(csv_file), "output": "/tmp/unused"}}
    spec, configs = build_spec(document, overrides, {"run_dir": "/tmp/r", "run_id": "r"})
    return source_columns(spec, configs)


def with_steps(*steps: dict, sink_input: str) -> dict:
    document = copy.deepcopy(BASE)
    document["steps"] = list(steps)
    document["sinks"][0]["input"] = sink_input
    return document


def test_the_columns_below_an_aggregation_are_the_only_ones_passed_on(csv_file):
    assert pruned(BASE, csv_file) == {"read": ("amount", "category", "id")}


def test_nothing_is_pruned_when_a_sink_reads_the_pass_through_steps(csv_file):
    document = with_steps(BASE["steps"][0], BASE["steps"][1], sink_input="dedup")
    assert pruned(document, csv_file) == {}


def test_a_branch_to_a_sink_keeps_every_column(csv_file):
    document = copy.deepcopy(BASE)
    document["sinks"].append({"name": "raw", "type": "WriteToParquet", "input": "clean",
                              "config": {"path": "{{ output }}/raw"}})
    assert pruned(document, csv_file) == {}


def test_two_aggregations_read_the_union_of_their_columns(csv_file):
    document = copy.deepcopy(BASE)
    document["steps"].append({"name": "qty", "type": "GroupByAggregate", "input": "read", "config": {
        "keys": ["name"], "aggregations": {"q": {"op": "max", "field": "quantity"}}}})
    document["sinks"].append({"name": "out2", "type": "WriteToParquet", "input": "qty",
                              "config": {"path": "{{ output }}/qty"}})
    assert pruned(document, csv_file) == {"read": ("amount", "category", "id", "name", "quantity")}


def test_a_step_that_declares_nothing_keeps_every_column(csv_file):
    mapper = {"name": "tweak", "type": "MapBatches", "input": "read",
              "config": {"fn": "tests.unit.test_pruning:identity"}}
    document = with_steps(mapper, {**BASE["steps"][2], "input": "tweak"}, sink_input="totals")
    assert pruned(document, csv_file) == {}


def test_a_select_passes_on_its_fields(csv_file):
    select = {"name": "pick", "type": "Select", "input": "read", "config": {"fields": ["id", "email"]}}
    document = with_steps(select, sink_input="pick")
    assert pruned(document, csv_file) == {"read": ("email", "id")}


@pytest.mark.parametrize("dedup_config", [{}, {"keys": ["id"], "keep": "best_quality"}])
def test_whole_record_dedup_reads_every_column(csv_file, dedup_config):
    document = copy.deepcopy(BASE)
    document["steps"][1]["config"] = dedup_config
    assert pruned(document, csv_file) == {}


@pytest.mark.parametrize("clean_config", [{"drop_rows": "any"}, {"drop_rows": {"fields": ["id"]}, "fill": {"x": 0}},
                                          {"mode": "drop_columns"}])
def test_null_remover_actions_over_every_column_keep_them_all(csv_file, clean_config):
    document = copy.deepcopy(BASE)
    document["steps"][0]["config"] = clean_config
    assert pruned(document, csv_file) == {}


def test_order_by_and_aggregation_fields_are_read(csv_file):
    document = copy.deepcopy(BASE)
    document["steps"][1]["config"] = {"keys": ["id"], "keep": "last", "order_by": "quantity"}
    document["steps"][2]["config"]["aggregations"]["top"] = {"op": "first", "field": "name", "order_by": "email"}
    assert pruned(document, csv_file) == {"read": ("amount", "category", "email", "id", "name", "quantity")}


def test_routed_dead_letters_do_not_count_as_readers(csv_file):
    document = copy.deepcopy(BASE)
    document["sources"][0]["error_handling"] = {"output": "errors"}
    document["sinks"].append({"name": "bad", "type": "WriteToJsonl", "input": "read.errors",
                              "config": {"path": "{{ output }}/bad"}})
    assert pruned(document, csv_file) == {"read": ("amount", "category", "id")}


def test_the_template_can_turn_pruning_off(csv_file):
    assert pruned(BASE, csv_file, ["optimize.prune_columns=false"]) == {}


def identity(batch):
    return batch


def test_project_keeps_order_metadata_and_internal_columns():
    batch = tag_source(pa.record_batch({"a": [1, 2], "b": ["x", "y"], "__beam_etl_part": [0, 1], "c": [1.0, 2.0]}),
                       "f.csv", 0)
    out = project(batch, frozenset({"c", "a"}))
    assert out.schema.names == ["a", "__beam_etl_part", "c"]
    assert out.schema.metadata[SOURCE_KEY] == b"f.csv"
    assert project(batch, frozenset({"a", "b", "c"})) is batch
    assert project(batch, frozenset()).num_rows == 2  # a global count still sees every row


def run_both_ways(tmp_path: Path, csv_file: Path) -> dict[str, tuple[list[dict], list[dict]]]:
    document = copy.deepcopy(BASE)
    document["sources"][0]["config"]["schema"] = {"quantity": "int"}  # a column nobody below reads
    template = tmp_path / "prune.yaml"
    template.write_text(yaml.safe_dump(document, sort_keys=False))
    results = {}
    for prune in ("true", "false"):
        out = tmp_path / f"out_{prune}"
        overrides = [f"params.input={csv_file}", f"params.output={out}", f"optimize.prune_columns={prune}"]
        code = run_template(str(template), overrides, ["--runner=DirectRunner"], output_dir=str(tmp_path / "runs"),
                            run_id=f"run_{prune}", quiet=True)
        assert code == EXIT_OK
        rows = sorted(pq.read_table(out).to_pylist(), key=lambda r: r["category"])
        letters = [json.loads(line) for f in sorted((tmp_path / "runs" / f"run_{prune}" / "dlq").glob("*.jsonl"))
                   for line in f.read_text().splitlines()]
        results[prune] = (rows, letters)
    return results


def test_pruning_changes_neither_the_output_nor_the_dead_letters(tmp_path, csv_file):
    """A bad value in a column nobody reads still sends its whole row to the DLQ."""
    csv_file.write_text(CSV_HEADER + "".join(f"{i % 50},n{i},e{i}@x.org,{i}.5,{i % 7},{'abc'[i % 3]}\n"
                                             for i in range(300))
                        + "7,Eve,eve@x.org,1.0,not-a-number,a\n" + "8,Max,max@x.org,2.0,3\n")
    results = run_both_ways(tmp_path, csv_file)
    assert results["true"][0] == results["false"][0]
    assert sum(r["n"] for r in results["true"][0]) == 50
    letters = {prune: sorted((d["error_type"], json.dumps(d["record"], sort_keys=True), d["source"])
                             for d in dead) for prune, (_, dead) in results.items()}
    assert letters["true"] == letters["false"]
    by_type = {t: json.loads(r) for t, r, _ in letters["true"]}
    assert set(by_type) == {"type", "parse"}
    assert by_type["type"] == {"id": "7", "name": "Eve", "email": "eve@x.org", "amount": "1.0",
                               "quantity": "not-a-number", "category": "a"}


def test_validate_prints_the_pruned_columns(tmp_path, csv_file, capsys):
    from beam_etl.run import main

    template = tmp_path / "prune.yaml"
    template.write_text(yaml.safe_dump(BASE, sort_keys=False))
    assert main(["--template", str(template), "--validate", "--set", f"params.input={csv_file}",
                 "--set", f"params.output={tmp_path}"]) == EXIT_OK
    assert "prune  read passes on only ['amount', 'category', 'id']" in capsys.readouterr().out
