"""The schema registry on a real PostgreSQL state store (scripts/services.sh up postgres)."""

from __future__ import annotations

import threading
import uuid

import pyarrow as pa
import pytest

from beam_etl.ops.schema_registry import SchemaRegistry, schema_hash
from beam_etl.run import EXIT_FAILED, EXIT_OK, run_template

pytestmark = pytest.mark.integration
BASE = pa.schema([pa.field("id", pa.int64(), nullable=False), ("name", pa.string())])


@pytest.fixture
def pipeline(postgres_state_dsn):
    """A pipeline name of its own; its versions are deleted afterwards."""
    name = f"schema_test_{uuid.uuid4().hex[:8]}"
    yield name
    SchemaRegistry(postgres_state_dsn).delete(name)


def test_versions_in_postgres(postgres_state_dsn, pipeline):
    reg = SchemaRegistry(postgres_state_dsn)
    assert reg.register(pipeline, "orders", BASE, run_id="r1").version == 1
    assert not reg.register(pipeline, "orders", BASE).created
    wider = BASE.append(pa.field("coupon", pa.string()))
    assert reg.register(pipeline, "orders", wider).version == 2
    reg.register(pipeline, "customers", BASE)
    assert [v.version for v in reg.versions(pipeline, "orders")] == [1, 2]
    assert reg.get(pipeline, "orders", 1).schema == BASE and reg.get(pipeline, "orders").schema == wider
    assert [(v.table, v.version) for v in reg.tables(pipeline)] == [("customers", 1), ("orders", 2)]
    assert "beam_etl_test_pw" not in repr(reg)


def test_concurrent_registrations_in_postgres(postgres_state_dsn, pipeline):
    schemas = [BASE.append(pa.field(f"c{i}", pa.int64())) for i in range(6)]
    errors: list[BaseException] = []

    def work(schema: pa.Schema) -> None:
        try:
            SchemaRegistry(postgres_state_dsn).register(pipeline, "t", schema)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(s,)) for s in schemas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    versions = SchemaRegistry(postgres_state_dsn).versions(pipeline, "t")
    assert [v.version for v in versions] == list(range(1, 7))
    assert {v.hash for v in versions} == {schema_hash(s) for s in schemas}


def test_a_run_registers_its_evolution_in_postgres(postgres_state_dsn, pipeline, tmp_path):
    csv = tmp_path / "in.csv"
    template = tmp_path / "t.yaml"

    def run(run_id: str, contract: str, lines: list[str]) -> int:
        csv.write_text("\n".join(lines) + "\n")
        template.write_text("\n".join([
            f"name: {pipeline}", "sources:", "  - name: src", "    type: ReadFromCsv", f"    config: {{path: '{csv}'}}",
            "steps:", "  - name: check", "    type: EnforceContract", "    input: src",
            f"    config: {{table: items, contract: {contract}}}", "sinks:", "  - name: out", "    type: WriteToJsonl",
            "    input: check", "    config: {path: '{{ run_dir }}/out', num_shards: 1}"]) + "\n")
        return run_template(str(template), [], ["--runner=DirectRunner"], output_dir=str(tmp_path / "out"),
                            run_id=run_id, quiet=True, state_url=postgres_state_dsn)

    reg = SchemaRegistry(postgres_state_dsn)
    assert run("r1", "evolve", ["id,qty", "1,2"]) == EXIT_OK
    assert reg.get(pipeline, "items").version == 1
    assert run("r2", "freeze", ["id,qty,coupon", "2,3,X"]) == EXIT_FAILED
    assert reg.get(pipeline, "items").version == 1
    assert run("r3", "evolve", ["id,qty,coupon", "2,3,X"]) == EXIT_OK
    latest = reg.get(pipeline, "items")
    assert latest.version == 2 and latest.schema.names == ["id", "qty", "coupon"] and latest.run_id == "r3"
