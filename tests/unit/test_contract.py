"""EnforceContract: each contract mode on new columns, widened, narrowed and non-castable types; new
tables; registration after the run; the YAML step and the contract_orders template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from pydantic import ValidationError

from beam_etl import registry
from beam_etl.ops.context import RunContext, use_run_context
from beam_etl.ops.dlq import ENVELOPE_KEYS
from beam_etl.ops.metrics import summarise
from beam_etl.ops.schema_registry import SchemaRegistry, pending_schema_path, schema_from_dict
from beam_etl.run import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, run_template
from beam_etl.transforms.base import tag_source
from beam_etl.transforms.contract import (
    Contract,
    ContractEnforcer,
    ContractViolation,
    EnforceContract,
    EnforceContractConfig,
    merge_evolved,
)

BASE = pa.schema([("id", pa.int64()), ("qty", pa.int32()), ("amount", pa.float64()), ("name", pa.string())])


def enforcer(contract: str | dict[str, str], base: pa.Schema | None = BASE, **kw: Any) -> ContractEnforcer:
    return ContractEnforcer(base, Contract.of(contract), table="orders", label="the declared schema", step="check",
                            ctx=RunContext(pipeline="test", run_id="test-run"), **kw)


def batch(**columns: pa.Array) -> pa.RecordBatch:
    return tag_source(pa.RecordBatch.from_pydict(columns), "in.csv", 1)


def base_batch(**overrides: pa.Array) -> pa.RecordBatch:
    columns = {"id": pa.array([1, 2, 3]), "qty": pa.array([1, 2, 3], pa.int32()),
               "amount": pa.array([1.5, 2.5, None]), "name": pa.array(["a", "b", "c"])}
    columns.update(overrides)
    return batch(**columns)


def check_letters(letters: list[dict[str, Any]], column: str, n: int) -> None:
    assert len(letters) == n
    for letter in letters:
        assert set(letter) == set(ENVELOPE_KEYS)
        assert letter["error_type"] == "contract" and letter["exception"] == "ContractViolation"
        assert repr(column) in letter["error"] and letter["step"] == "check"
        assert letter["source"].startswith("in.csv") and isinstance(letter["record"], dict)


# ---------------------------------------------------------------------------------- a new column

NEW_COLUMN = {"coupon": pa.array(["X1", None, "Y2"])}


def test_new_column_evolve_keeps_it_and_evolves_the_schema():
    out, letters, evolved = enforcer("evolve").apply(base_batch(**NEW_COLUMN))
    assert not letters and out.column_names == ["id", "qty", "amount", "name", "coupon"]
    assert evolved.names == ["id", "qty", "amount", "name", "coupon"] and evolved.field("coupon").type == pa.string()


def test_new_column_freeze_fails_naming_table_column_and_type():
    with pytest.raises(ContractViolation, match=r"columns=freeze: table 'orders' has a new column 'coupon' \(string\)"):
        enforcer("freeze").apply(base_batch(**NEW_COLUMN))


def test_new_column_discard_row_sends_rows_with_a_value_to_the_dlq():
    out, letters, evolved = enforcer("discard_row").apply(base_batch(**NEW_COLUMN))
    assert out.to_pylist() == [{"id": 2, "qty": 2, "amount": 2.5, "name": "b"}]
    check_letters(letters, "coupon", 2)
    assert [letter["record"]["coupon"] for letter in letters] == ["X1", "Y2"]  # the original row
    assert "new column 'coupon' (string) is not in the declared schema (columns=discard_row)" in letters[0]["error"]
    assert evolved is None


def test_new_column_discard_value_drops_the_column():
    out, letters, evolved = enforcer("discard_value").apply(base_batch(**NEW_COLUMN))
    assert not letters and out.num_rows == 3 and out.column_names == ["id", "qty", "amount", "name"]
    assert evolved is None


def test_a_new_column_without_values_is_no_violation():
    out, letters, _ = enforcer("freeze").apply(base_batch(coupon=pa.nulls(3, pa.string())))
    assert not letters and out.column_names == ["id", "qty", "amount", "name"]


# ---------------------------------------------------------------------------------- a widened type

WIDE = {"qty": pa.array([1, 2**40, 3], pa.int64())}


def test_widened_type_evolve_adopts_it():
    out, letters, evolved = enforcer("evolve").apply(base_batch(**WIDE))
    assert not letters and out.schema.field("qty").type == pa.int64() and out.column("qty")[1].as_py() == 2**40
    assert evolved.field("qty").type == pa.int64()


def test_widened_type_freeze_fails_on_a_value_that_does_not_fit():
    with pytest.raises(ContractViolation, match=r"data_type=freeze: table 'orders' column 'qty' .* int64 that do not "
                                                r"fit int32 \(first: 1099511627776\)"):
        enforcer("freeze").apply(base_batch(**WIDE))


def test_widened_type_whose_values_fit_is_cast_back_under_freeze():
    out, letters, evolved = enforcer("freeze").apply(base_batch(qty=pa.array([1, 2, 3], pa.int64())))
    assert not letters and out.schema.field("qty").type == pa.int32() and evolved is None


def test_widened_type_discard_row_and_discard_value():
    out, letters, _ = enforcer("discard_row").apply(base_batch(**WIDE))
    assert out.column("id").to_pylist() == [1, 3] and out.schema.field("qty").type == pa.int32()
    check_letters(letters, "qty", 1)
    assert "column 'qty' value 1099511627776 cannot be cast to int32 (data_type=discard_row)" in letters[0]["error"]
    out, letters, _ = enforcer("discard_value").apply(base_batch(**WIDE))
    assert not letters and out.column("qty").to_pylist() == [1, None, 3]


# ---------------------------------------------------------------------------------- a narrowed type


@pytest.mark.parametrize("mode", ["evolve", "freeze", "discard_row", "discard_value"])
def test_narrowed_type_is_cast_up_in_every_mode(mode):
    out, letters, evolved = enforcer(mode).apply(base_batch(amount=pa.array([1.5, None, 3.25], pa.float32())))
    assert not letters and evolved is None
    assert out.schema.field("amount").type == pa.float64() and out.column("amount").to_pylist() == [1.5, None, 3.25]


# ---------------------------------------------------------------------------------- a non-castable type

TEXT = {"amount": pa.array(["1.5", "abc", " 2 "])}


@pytest.mark.parametrize("mode", ["evolve", "freeze"])
def test_non_castable_values_fail_freeze_and_evolve(mode):
    with pytest.raises(ContractViolation, match=rf"data_type={mode}: table 'orders' column 'amount' has 1 value\(s\) "
                                                r"of type string that do not fit float64 \(first: 'abc'\)"):
        enforcer(mode).apply(base_batch(**TEXT))


def test_non_castable_values_discard_row_and_discard_value():
    out, letters, _ = enforcer("discard_row").apply(base_batch(**TEXT))
    assert out.column("amount").to_pylist() == [1.5, 2.0] and out.schema.field("amount").type == pa.float64()
    check_letters(letters, "amount", 1)
    assert "column 'amount' value 'abc' cannot be cast to float64" in letters[0]["error"]
    out, letters, _ = enforcer("discard_value").apply(base_batch(**TEXT))
    assert not letters and out.column("amount").to_pylist() == [1.5, None, 2.0]


def test_text_that_fits_is_coerced_even_under_freeze():
    text = base_batch(amount=pa.array(["1.5", "", None]), id=pa.array(["1", "2", "3"]))
    out, letters, _ = enforcer("freeze").apply(text)
    assert not letters and out.column("amount").to_pylist() == [1.5, None, None]
    assert out.column("id").to_pylist() == [1, 2, 3] and out.schema.field("id").type == pa.int64()


def test_entities_take_their_own_modes_and_reasons_combine():
    check = enforcer({"columns": "discard_row", "data_type": "discard_row"})
    out, letters, _ = check.apply(base_batch(coupon=pa.array(["X", None, None]), amount=pa.array(["x", "1", "2"])))
    assert out.num_rows == 2 and len(letters) == 1
    assert "'coupon'" in letters[0]["error"] and "'amount'" in letters[0]["error"]
    mixed = enforcer({"columns": "evolve", "data_type": "freeze"})
    out, _, evolved = mixed.apply(base_batch(**NEW_COLUMN))
    assert "coupon" in out.column_names and "coupon" in evolved.names
    with pytest.raises(ContractViolation):
        mixed.apply(base_batch(**WIDE))


# ---------------------------------------------------------------------------------- shape: order, missing columns


def test_output_follows_the_schema_order_and_fills_missing_columns():
    shuffled = batch(name=pa.array(["a"]), id=pa.array([1]), extra=pa.array([True]))
    out, _, evolved = enforcer("evolve").apply(shuffled)
    assert out.column_names == ["id", "qty", "amount", "name", "extra"]
    assert out.column("qty").type == pa.int32() and out.column("qty").null_count == 1
    assert evolved.names == ["id", "qty", "amount", "name", "extra"]  # never removes a column
    out, _, _ = enforcer("evolve", fill_missing=False).apply(shuffled)
    assert out.column_names == ["id", "name", "extra"]
    assert out.schema.metadata == shuffled.schema.metadata  # source tags travel on


def test_dictionary_columns_match_their_value_type():
    out, letters, evolved = enforcer("freeze").apply(base_batch(name=pa.array(["a", "b", "a"]).dictionary_encode()))
    assert not letters and evolved is None and out.num_rows == 3


# ---------------------------------------------------------------------------------- new tables


def test_a_new_table_evolves_or_is_discarded():
    b = base_batch()
    out, letters, evolved = enforcer("evolve", base=None).apply(b)
    assert out.equals(b) and not letters and evolved == BASE
    for mode in ("discard_row", "discard_value"):
        out, letters, evolved = enforcer({"tables": mode}, base=None).apply(b)
        assert out is None and evolved is None and len(letters) == 3
        assert f"tables={mode}: table 'orders' has no registered schema" in letters[0]["error"]
        assert letters[0]["error_type"] == "contract"


def test_a_frozen_new_table_fails_at_construction(tmp_path):
    ctx = RunContext(pipeline="pipe", run_id="r", run_dir=str(tmp_path), state_url=str(tmp_path / "s.sqlite"))
    with use_run_context(ctx), pytest.raises(ContractViolation, match=r"tables=freeze: table 'orders' of pipeline "
                                                                       r"'pipe' has no schema in the schema registry"):
        EnforceContract({"tables": "freeze"}, table="orders")
    SchemaRegistry(ctx.state_url).register("pipe", "orders", BASE)
    with use_run_context(ctx):
        step = EnforceContract("freeze", table="orders")
    assert step.base == BASE and step.version == 1


# ---------------------------------------------------------------------------------- Beam


def run_pipeline(step: beam.PTransform, batches: list[pa.RecordBatch], rows: Any, letters: Any) -> dict[str, int]:
    p = test_pipeline.TestPipeline()
    out, dlq = p | "Create" >> beam.Create(batches) | step
    assert_that(out | "Rows" >> beam.FlatMap(lambda b: b.to_pylist()), equal_to(rows), label="CheckRows")
    assert_that(dlq, letters, label="CheckDlq")
    result = p.run()
    result.wait_until_finish()
    counts = summarise(result)["contract"]
    assert counts["records_in"] == sum(b.num_rows for b in batches)
    assert counts["records_in"] == counts["records_out"] + counts["records_failed"], counts
    return counts


def contract_letters(n: int, column: str):
    def match(actual: list[dict[str, Any]]) -> None:
        if len(actual) != n or not all(a["error_type"] == "contract" and repr(column) in a["error"]
                                       and a["step"] == "contract" and a["run_id"] == "test-run" for a in actual):
            raise BeamAssertException(f"expected {n} contract dead letters naming {column!r}: {actual}")

    return match


def test_step_in_a_pipeline_counts_every_record(tmp_path):
    batches = [base_batch(**TEXT), base_batch(**NEW_COLUMN)]
    step = EnforceContract({"columns": "discard_value", "data_type": "discard_row"},
                           {"id": "int", "qty": "int32", "amount": "float", "name": "string"}, table="orders",
                           step="contract")
    rows = [{"id": 1, "qty": 1, "amount": 1.5, "name": "a"}, {"id": 3, "qty": 3, "amount": 2.0, "name": "c"},
            {"id": 1, "qty": 1, "amount": 1.5, "name": "a"}, {"id": 2, "qty": 2, "amount": 2.5, "name": "b"},
            {"id": 3, "qty": 3, "amount": None, "name": "c"}]
    counts = run_pipeline(step, batches, rows, contract_letters(1, "amount"))
    assert counts["records_failed"] == 1 and counts["records_out"] == 5
    pending = json.loads(pending_schema_path(tmp_path, "contract").read_text())  # the run context's run_dir
    assert pending["table"] == "orders" and not pending["merge_with_latest"]
    assert schema_from_dict(pending["schema"]) == BASE


def test_freeze_in_a_pipeline_fails_the_run():
    p = test_pipeline.TestPipeline()
    _ = p | beam.Create([base_batch(**NEW_COLUMN)]) | EnforceContract("freeze", BASE, step="contract")
    with pytest.raises(Exception, match="columns=freeze"):
        p.run().wait_until_finish()


def test_evolved_schemas_merge_across_bundles_and_register_immediately(tmp_path):
    url = str(tmp_path / "s.sqlite")
    SchemaRegistry(url).register("pipe", "orders", BASE)
    ctx = RunContext(pipeline="pipe", run_id="r9", run_dir="", state_url=url)
    with use_run_context(ctx):
        p = test_pipeline.TestPipeline()
        step = EnforceContract("evolve", table="orders", register="immediately", step="contract")
        _ = p | beam.Create([base_batch(**WIDE), base_batch(**NEW_COLUMN), base_batch()]) | step
        p.run().wait_until_finish()
    latest = SchemaRegistry(url).get("pipe", "orders")
    assert (latest.version, latest.run_id) == (2, "r9")
    assert latest.schema.names == ["id", "qty", "amount", "name", "coupon"]
    assert latest.schema.field("qty").type == pa.int64()
    assert merge_evolved([None]) is None


# ---------------------------------------------------------------------------------- config and templates


def test_config_accepts_a_mode_or_entities_and_validates_the_schema(tmp_path):
    entry = registry.lookup("EnforceContract")
    assert entry is not None and entry.config_model is EnforceContractConfig
    config = EnforceContractConfig.model_validate({"contract": "freeze", "schema": {"id": "int"}})
    assert Contract.of(config.contract) == Contract("freeze", "freeze", "freeze")
    config = EnforceContractConfig.model_validate({"contract": {"columns": "discard_row"}, "register": "never"})
    assert Contract.of(config.contract) == Contract("evolve", "discard_row", "evolve") and config.schema_ == "registry"
    assert entry.supports_streaming(config) and not entry.supports_streaming(EnforceContractConfig())
    for bad, message in (({"contract": "loose"}, "contract"), ({"contract": {"rows": "freeze"}}, "rows"),
                         ({"schema": {"id": "money"}}, "'money' is not a type"),
                         ({"schema": str(tmp_path / "none.json")}, "does not exist"),
                         ({"register": "later"}, "register")):
        with pytest.raises(ValidationError, match=message):
            EnforceContractConfig.model_validate(bad)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _template(tmp_path: Path, contract: str, csv: Path) -> Path:
    return _write(tmp_path / f"t_{contract}.yaml", [
        "name: evolving", "sources:", "  - name: src", "    type: ReadFromCsv",
        f"    config: {{path: '{csv}'}}", "steps:", "  - name: check", "    type: EnforceContract", "    input: src",
        f"    config: {{table: items, contract: {contract}}}", "sinks:", "  - name: out", "    type: WriteToJsonl",
        "    input: check", "    config: {path: '{{ run_dir }}/out', num_shards: 1}"])


def test_runs_register_evolution_only_after_success(tmp_path):
    out = tmp_path / "out"
    v1 = _write(tmp_path / "v1.csv", ["id,qty", "1,2", "2,3"])
    v2 = _write(tmp_path / "v2.csv", ["id,qty,coupon", "3,4,X", "4,5,"])
    run = lambda name, contract, csv: run_template(str(_template(tmp_path, contract, csv)), [],  # noqa: E731
                                                   ["--runner=DirectRunner"], output_dir=str(out), run_id=name,
                                                   quiet=True)
    reg = SchemaRegistry(str(out / "beam_etl_state.sqlite"))
    assert run("r1", "evolve", v1) == EXIT_OK and reg.get("evolving", "items").version == 1
    assert run("r2", "freeze", v2) == EXIT_FAILED  # a new column under freeze: nothing registered
    assert reg.get("evolving", "items").version == 1
    assert run("r3", "discard_row", v2) == EXIT_OK and reg.get("evolving", "items").version == 1
    summary = json.loads((out / "r3" / "summary.json").read_text())
    assert summary["totals"]["dead_letters"] == 1 and summary["schemas"] == []
    assert run("r4", "evolve", v2) == EXIT_OK
    latest = reg.get("evolving", "items")
    assert latest.version == 2 and latest.schema.names == ["id", "qty", "coupon"] and latest.run_id == "r4"
    summary = json.loads((out / "r4" / "summary.json").read_text())
    assert summary["schemas"][0]["version"] == 2 and summary["schemas"][0]["diff"]["added"][0]["name"] == "coupon"
    assert run("r5", "{tables: freeze}", v1) == EXIT_OK  # a registered table is no new table
    bad = _template(tmp_path, "{tables: freeze}", v1).read_text().replace("table: items", "table: other")
    assert run_template(str(_write(tmp_path / "bad.yaml", bad.splitlines())), [], ["--runner=DirectRunner"],
                        output_dir=str(out), run_id="r6", quiet=True) == EXIT_CONFIG


def test_contract_orders_template(tmp_path):
    code = run_template("contract_orders", [], ["--runner=DirectRunner"], output_dir=str(tmp_path), run_id="t1",
                        quiet=True)
    assert code == EXIT_OK
    run_dir = tmp_path / "t1"
    summary = json.loads((run_dir / "summary.json").read_text())
    steps = summary["steps"]["contract"]
    assert steps["records_in"] == steps["records_out"] + steps["records_failed"]
    letters = [json.loads(line) for p in (run_dir / "dlq").glob("*.jsonl") for line in p.read_text().splitlines()]
    contract = [letter for letter in letters if letter["error_type"] == "contract"]
    assert len(contract) == steps["records_failed"] == 10  # 6 amounts, 4 quantities (customers_orders.README.md)
    assert {letter["error"].split("'")[1] for letter in contract} == {"amount", "quantity"}
    table = pq.read_table(next(run_dir.glob("orders-*.parquet")))
    assert "phone" not in table.column_names  # columns: discard_value
    assert str(table.schema.field("amount").type) == "double" and str(table.schema.field("order_date").type) == \
        "date32[day]"
    reg = SchemaRegistry(str(tmp_path / "beam_etl_state.sqlite"))
    assert reg.get("contract_orders", "orders").version == 1
    assert summary["schemas"][0]["created"] is True


SINK_CONTRACT_TEMPLATE = """
name: sink_contract
sources:
  - name: items
    type: ReadFromCsv
    config: {{path: "{csv}"}}
sinks:
  - name: items_out
    type: WriteToParquet
    input: items
    contract: {contract}
    config: {{path: "{{{{ run_dir }}}}/items", num_shards: 1}}
"""


def test_a_sink_contract_runs_before_the_sink_and_registers_under_the_sink_name(tmp_path):
    csv = _write(tmp_path / "in.csv", ["id,qty,note", "1,2,a", "2,x,b", "3,4,c"])
    contract = "{contract: {columns: discard_value, data_type: discard_row}, schema: {id: int, qty: int}}"
    template = _write(tmp_path / "t.yaml", SINK_CONTRACT_TEMPLATE.format(csv=csv, contract=contract).splitlines())
    code = run_template(str(template), [], ["--runner=DirectRunner"], output_dir=str(tmp_path / "out"), run_id="s1",
                        quiet=True)
    assert code == EXIT_OK
    run_dir = tmp_path / "out" / "s1"
    table = pq.read_table(next(run_dir.glob("items-*.parquet")))
    assert table.column_names == ["id", "qty"] and sorted(table.column("id").to_pylist()) == [1, 3]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"]["items_out_contract"]["records_failed"] == 1 and summary["totals"]["dead_letters"] == 1
    reg = SchemaRegistry(str(tmp_path / "out" / "beam_etl_state.sqlite"))
    assert reg.get("sink_contract", "items_out").version == 1


@pytest.mark.parametrize(("contract", "message"), [
    ("{contract: melt}", "sinks[0] (items_out).contract"),
    ("{schema: 42}", "sinks[0] (items_out).contract"),
])
def test_a_bad_sink_contract_is_a_config_error_naming_the_sink(tmp_path, capsys, contract, message):
    csv = _write(tmp_path / "in.csv", ["id", "1"])
    template = _write(tmp_path / "t.yaml", SINK_CONTRACT_TEMPLATE.format(csv=csv, contract=contract).splitlines())
    code = run_template(str(template), [], ["--runner=DirectRunner"], output_dir=str(tmp_path / "out"), quiet=True)
    assert code == EXIT_CONFIG
    assert message in capsys.readouterr().err
