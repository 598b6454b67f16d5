"""InferSchema step on DirectRunner, its registration and template, and the beam_etl.schema CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest
from apache_beam.transforms import window
from pydantic import ValidationError

from beam_etl import registry
from beam_etl.ml._infer_model import FIELDS_SCHEMA
from beam_etl.ml.schema_infer import InferOptions, infer_schema
from beam_etl.ops.dlq import ENVELOPE_KEYS
from beam_etl.ops.metrics import summarise
from beam_etl.transforms import schema as schema_step
from beam_etl.transforms.base import tag_source
from beam_etl.transforms.schema import InferSchema, InferSchemaConfig, ProfileCombineFn, RowSampleCombineFn
from tests.collect import read_elements, write_element

REPO = Path(__file__).resolve().parents[2]


def make_batches(n_batches: int = 4, rows: int = 250, seed: int = 5) -> list[pa.RecordBatch]:
    rng = np.random.default_rng(seed)
    out = []
    for b in range(n_batches):
        ids = np.arange(b * rows, (b + 1) * rows)
        batch = pa.RecordBatch.from_pydict({
            "id": pa.array([str(i) for i in ids]),
            "amount": pa.array([f"{x:.2f}" for x in rng.random(rows) * 100]),
            "day": pa.array([f"2024-03-{1 + i % 28:02d}" for i in ids]),
            "status": pa.array(rng.choice(["paid", "shipped", None], rows), pa.string()),
            "qty": pa.array(rng.integers(1, 10, rows)),
        })
        out.append(tag_source(batch, "orders.csv", b * rows + 1))
    return out


def run(step: beam.PTransform, batches: list[Any], windowed: bool = False) -> tuple[list[Any], list[dict], Any]:
    """Runs ``step`` over ``batches`` on DirectRunner; returns outputs, dead letters and the result."""
    import tempfile

    with tempfile.TemporaryDirectory() as out_dir, tempfile.TemporaryDirectory() as dlq_dir:
        p = beam.Pipeline()
        pcoll = p | "Create" >> beam.Create(batches)
        if windowed:
            pcoll = (pcoll | "Stamp" >> beam.Map(lambda tb: window.TimestampedValue(tb[1], tb[0]))
                     | "Window" >> beam.WindowInto(window.FixedWindows(60)))
        out, dlq = pcoll | step
        out | "WriteOut" >> beam.Map(write_element, out_dir)
        dlq | "WriteDlq" >> beam.Map(write_element, dlq_dir)
        result = p.run()
        result.wait_until_finish()
        table, others = read_elements(out_dir)
        _, letters = read_elements(dlq_dir)
    return ([table] if table is not None else others), letters, result


def _types(schema: dict[str, Any]) -> dict[str, str]:
    return {f["name"]: f["storage_type"] for f in schema["fields"]}


def test_infer_schema_on_several_batches_matches_the_library():
    batches = make_batches()
    (schema,), letters, result = run(InferSchema(semantic=False, step="schema"), batches)
    expected = infer_schema(pa.Table.from_batches(batches), semantic=False).to_dict()
    assert schema == json.loads(json.dumps(expected))
    assert _types(schema) == {"id": "int", "amount": "decimal", "day": "date", "status": "string", "qty": "int"}
    assert schema["rows"] == 1000 and letters == []
    counts = summarise(result)["schema"]
    assert counts["records_in"] == 1000 == counts["records_grouped"] and counts["batches_in"] == 4
    assert counts["records_out"] == 0 and counts["records_failed"] == 0


def test_sample_rows_profiles_a_bounded_uniform_sample():
    batches = make_batches()
    (schema,), letters, result = run(InferSchema(sample_rows=100, seed=3, semantic=False, step="schema"), batches)
    assert schema["rows"] == 100 and letters == []
    ids = schema["fields"][0]
    assert ids["cardinality"] == 100 and ids["max"] > 750 and ids["min"] < 250  # drawn from every batch
    assert summarise(result)["schema"]["records_grouped"] == 1000


def test_sample_fraction_profiles_a_share_of_rows():
    (schema,), _, _ = run(InferSchema(sample_fraction=0.2, seed=1, semantic=False), make_batches())
    assert 120 < schema["rows"] < 280 and _types(schema)["amount"] == "decimal"


def test_row_sample_combine_fn_is_bounded_and_mergeable():
    fn = RowSampleCombineFn(50, InferOptions(semantic=False), "schema")
    rng = np.random.default_rng(0)
    accs = []
    for b in make_batches(rows=100):
        accs.append(fn.add_input(fn.create_accumulator(), (rng.random(b.num_rows), b)))
    merged = fn.merge_accumulators(accs)
    assert sum(len(p) for p, _ in merged) <= 100
    out = fn.extract_output(merged)
    assert out["schema"]["rows"] == 50 and out["dead_letters"] == []


def test_profile_combine_fn_of_nothing_is_an_empty_schema():
    fn = ProfileCombineFn(InferOptions(semantic=False))
    assert fn.extract_output(fn.create_accumulator()) == {"schema": {"rows": 0, "threshold": 0.98, "fields": []},
                                                          "dead_letters": []}


def test_rows_that_fail_profiling_go_to_the_dlq(monkeypatch):
    real = schema_step.profile

    def fragile(batch, options):
        if "boom" in batch.column("status").to_pylist():
            raise ValueError("cannot profile 'boom'")
        return real(batch, options)

    monkeypatch.setattr(schema_step, "profile", fragile)
    good = make_batches(n_batches=2)
    bad = tag_source(pa.RecordBatch.from_pydict({
        "id": ["9000", "9001", "9002"], "amount": ["1.00", "2.00", "3.00"], "day": ["2024-03-01"] * 3,
        "status": ["paid", "boom", "shipped"], "qty": pa.array([1, 2, 3])}), "bad.csv", 1)
    (schema,), letters, result = run(InferSchema(semantic=False, step="schema"), [*good, bad])
    assert schema["rows"] == 502
    (letter,) = letters
    assert set(ENVELOPE_KEYS) <= set(letter) and letter["step"] == "schema"
    assert letter["record"]["id"] == "9001" and letter["error_type"] == "validation"
    assert "boom" in letter["error"] and letter["source"].startswith("bad.csv")
    counts = summarise(result)["schema"]
    assert counts["records_in"] == 503 and counts["records_failed"] == 1
    assert counts["records_in"] == counts["records_out"] + counts["records_grouped"] + counts["records_failed"]


def test_sample_rows_failures_go_to_the_dlq_when_the_window_closes(monkeypatch):
    real = schema_step.profile

    def fragile(batch, options):
        if "boom" in batch.column("status").to_pylist():
            raise TypeError("bad row")
        return real(batch, options)

    monkeypatch.setattr(schema_step, "profile", fragile)
    bad = pa.RecordBatch.from_pydict({"id": ["1", "2"], "amount": ["1.00", "2.00"], "day": ["2024-03-01"] * 2,
                                      "status": ["boom", "paid"], "qty": pa.array([1, 2])})
    (schema,), letters, result = run(InferSchema(sample_rows=10_000, semantic=False, step="schema"),
                                     [*make_batches(n_batches=1), bad])
    assert schema["rows"] == 251 and len(letters) == 1 and letters[0]["error_type"] == "type"
    counts = summarise(result)["schema"]
    assert (counts["records_in"], counts["records_grouped"], counts["records_failed"]) == (252, 251, 1)


def test_windowed_input_gives_one_schema_per_window():
    batches = make_batches(n_batches=4)
    stamped = [(0, batches[0]), (10, batches[1]), (70, batches[2]), (130, batches[3])]
    schemas, letters, _ = run(InferSchema(semantic=False), stamped, windowed=True)
    by_start = {s["window"]["start"]: s for s in schemas}
    assert sorted(by_start) == ["1970-01-01T00:00:00Z", "1970-01-01T00:01:00Z", "1970-01-01T00:02:00Z"]
    assert [by_start[k]["rows"] for k in sorted(by_start)] == [500, 250, 250] and letters == []
    assert by_start["1970-01-01T00:01:00Z"]["window"]["end"] == "1970-01-01T00:02:00Z"


def test_registered_step_writes_json_and_emits_fields(tmp_path, run_context):
    entry = registry.lookup("InferSchema")
    assert entry is not None and entry.kind == "step" and entry.supports_streaming(None)
    path = tmp_path / "schema.json"
    config = InferSchemaConfig(output_path=str(path), emit="fields", semantic=False)
    step = entry.factory(config, registry.BuildContext("infer", run_context))
    (table,), letters, _ = run(step, make_batches())
    written = json.loads(path.read_text())
    assert _types(written)["amount"] == "decimal" and written["rows"] == 1000
    assert table.schema == FIELDS_SCHEMA and table.column("name").to_pylist() == ["id", "amount", "day", "status",
                                                                                    "qty"]
    assert table.column("arrow_type").to_pylist()[1] == "decimal128(4, 2)" and letters == []
    assert step.display_data()["output_path"] == str(path)


@pytest.mark.parametrize(("config", "message"), [
    ({"sample_rows": 10, "sample_fraction": 0.5}, "not both"),
    ({"threshold": 0.3}, "threshold"),
    ({"sample_fraction": 1.5}, "sample_fraction"),
    ({"emit": "rows"}, "emit"),
    ({"output_path": " "}, "output_path"),
    ({"nope": 1}, "nope"),
])
def test_config_errors_name_the_field(config, message):
    with pytest.raises(ValidationError, match=message):
        InferSchemaConfig(**config)


def test_template_runs_and_writes_the_schema(tmp_path):
    from beam_etl.run import run_template

    code = run_template(str(REPO / "templates" / "infer_schema.yaml"), [], ["--runner=DirectRunner"],
                        output_dir=str(tmp_path), run_id="infer", quiet=True)
    assert code == 0
    run_dir = tmp_path / "infer"
    schema = json.loads((run_dir / "schema.json").read_text())
    types = _types(schema)
    assert types["amount"] == "decimal" and types["quantity"] == "int" and types["order_date"] == "datetime"
    fields = pa_csv.read_csv(next(run_dir.glob("schema_fields*.csv")))
    assert fields.num_rows == 12
    summary = json.loads((run_dir / "summary.json").read_text())
    steps = summary["steps"]["schema"]
    assert steps["records_in"] == steps["records_grouped"] == schema["rows"] == 3250


# ----------------------------------------------------------------- CLI

def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "beam_etl.schema", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd or REPO)


def test_cli_infer_table_and_json(tmp_path):
    data = REPO / "beam_etl" / "data" / "customers_orders.csv"
    table = cli("infer", str(data), "--no-semantic")
    assert table.returncode == 0, table.stderr
    assert "decimal(7,2)" in table.stdout and "order_date" in table.stdout
    assert "skipped 19 malformed row(s)" in table.stderr
    out = tmp_path / "s.json"
    as_json = cli("infer", str(data), "--json", "--sample-rows", "500", "--no-semantic", "--output", str(out))
    assert as_json.returncode == 0, as_json.stderr
    schema = json.loads(as_json.stdout)
    assert schema["rows"] == 500 and _types(schema)["quantity"] == "int"
    assert json.loads(out.read_text()) == schema


def test_cli_infer_jsonl_and_parquet(tmp_path):
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text('{"id": 1, "at": "2024-03-05T10:00:00Z", "v": "1"}\n{"id": 2, "at": "2024-03-05T11:00:00Z", '
                     '"v": 2}\n')
    result = cli("infer", str(jsonl), "--json", "--no-semantic")
    assert result.returncode == 0, result.stderr
    assert _types(json.loads(result.stdout)) == {"id": "int", "at": "datetime_tz", "v": "int"}
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1.5, 2.5]}), tmp_path / "t.data")
    result = cli("infer", str(tmp_path / "t.data"), "--format", "parquet", "--json", "--no-semantic")
    assert result.returncode == 0 and _types(json.loads(result.stdout)) == {"x": "float"}


def test_cli_infer_with_beam(tmp_path):
    csv = tmp_path / "small.csv"
    csv.write_text("id,amount,day\n1,1.50,2024-03-05\n2,2.25,05/03/2024\n3,,2024-03-07\n")
    result = cli("infer", str(csv), "--beam", "--json", "--no-semantic")
    assert result.returncode == 0, result.stderr
    assert _types(json.loads(result.stdout)) == {"id": "int", "amount": "decimal", "day": "date"}


def test_cli_errors_exit_2(tmp_path):
    missing = cli("infer", str(tmp_path / "nope.csv"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    (tmp_path / "notes.txt").write_text("x")
    unknown = cli("infer", str(tmp_path / "notes.txt"))
    assert unknown.returncode == 2 and "--format" in unknown.stderr
    bad_choice = cli("infer", str(tmp_path / "notes.txt"), "--format", "xml")
    assert bad_choice.returncode == 2 and "invalid choice" in bad_choice.stderr
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    broken = cli("infer", str(tmp_path / "broken.jsonl"))
    assert broken.returncode == 2 and "cannot read as jsonl" in broken.stderr
    no_command = cli()
    assert no_command.returncode == 2
    assert cli("relate", str(tmp_path / "nope.csv")).returncode == 2


def test_cli_relate(tmp_path):
    rng = np.random.default_rng(0)
    pa_csv.write_csv(pa.table({"id": np.arange(1, 301), "name": [f"c{i}" for i in range(300)]}),
                     tmp_path / "customers.csv")
    pa_csv.write_csv(pa.table({"order_id": np.arange(1, 2001), "customer_id": rng.integers(1, 301, 2000),
                               "quantity": rng.integers(1, 10, 2000)}), tmp_path / "orders.csv")
    result = cli("relate", str(tmp_path / "orders.csv"), str(tmp_path / "customers.csv"), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    fks = [(f["child_table"], f["child_column"], f["parent_table"], f["parent_column"]) for f in report["foreign_keys"]]
    assert fks == [("orders", "customer_id", "customers", "id")]
    assert {tuple(k["columns"]) for k in report["primary_keys"] if k["table"] == "orders"} == {("order_id",)}
    text = cli("relate", str(tmp_path / "orders.csv"), str(tmp_path / "customers.csv"))
    assert text.returncode == 0 and "orders.customer_id -> customers.id" in text.stdout
