"""OpenLineage events, column-level lineage and impact analysis (beam_etl.ops.lineage, beam_etl.lineage)."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import sqlite3
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from beam_etl import registry
from beam_etl.lineage import main as lineage_cli
from beam_etl.ops import _lineage_rules as rules
from beam_etl.ops import lineage
from beam_etl.spec import PACKAGE_DATA_DIR, build_spec, list_templates, load_document, resolve_template_path

CSV = os.path.abspath(PACKAGE_DATA_DIR / "customers_orders.csv")
HEADER = ["order_id", "customer_id", "name", "email", "phone", "city", "country", "amount", "quantity",
          "order_date", "category", "status"]
CANARY = "canary-L1neage-Pw-93f2"
URI_CANARY = "canary-Mongo-Pw-5c1d"


def _spec(template: str | dict[str, Any], run_dir: Path, overrides: list[str] | None = None) -> tuple[Any, Any]:
    doc = template if isinstance(template, dict) else load_document(resolve_template_path(template))
    return build_spec(doc, overrides, {"run_dir": str(run_dir), "run_id": "r1"})


def _by_name(datasets: list[lineage.DatasetLineage]) -> dict[str, lineage.DatasetLineage]:
    return {d.ref.display: d for d in datasets}


def _sources(dataset: lineage.DatasetLineage, field: str, name: str = CSV) -> set[tuple[str, str, str]]:
    """(input field, type, subtype) of one output field, from dataset ``name``."""
    return {(i["field"], t["type"], t["subtype"]) for i in dataset.columns[field] if i["name"] == name
            for t in i["transformations"]}


def _every_row(dataset: lineage.DatasetLineage) -> set[tuple[str, str]]:
    return {(i["field"], t["subtype"]) for i in dataset.dataset for t in i["transformations"]}


def double_amount(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A MapBatches function for the opaque-step test."""
    return batch


# --------------------------------------------------------------------------------------
# Rules and names
# --------------------------------------------------------------------------------------


def test_every_registered_type_has_a_lineage_rule_or_is_deliberately_opaque():
    missing = []
    for entry in registry.entries():
        if entry.kind == "step" and entry.name not in rules.RULES and entry.name not in rules.OPAQUE_STEPS:
            missing.append(entry.name)
        if entry.kind in ("source", "sink") and entry.name not in lineage.NAMERS:
            missing.append(entry.name)
    assert not missing, f"add a rule to beam_etl/ops/_lineage_rules.py (or a namer) for {missing}"
    assert not set(rules.OPAQUE_STEPS) & set(rules.RULES)
    assert rules.rule_for("SomeFutureStep") is rules.opaque  # unknown types degrade to opaque


@pytest.mark.parametrize("path, expected", [
    ("/data/in.csv", ("file", "/data/in.csv")),
    ("file:///data/x/", ("file", "/data/x")),
    ("s3://key:secret@lake/orders/*.csv", ("s3://lake", "orders/*.csv")),
    ("gs://bucket/out/", ("gs://bucket", "out")),
])
def test_file_dataset_names(path, expected):
    ref = lineage.file_dataset(path)
    assert (ref.namespace, ref.name) == expected


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert lineage.file_dataset("in.csv").name == str(tmp_path / "in.csv")


def test_query_tables_and_same_files():
    assert lineage.query_tables('SELECT * FROM "sales"."orders" o JOIN customers c ON o.c = c.id') == [
        ["sales", "orders"], ["customers"]]
    assert lineage.same_files("/o/orders-*.parquet", "/o/orders")
    assert lineage.same_files("/o/*.parquet", "/o/orders")
    assert lineage.same_files("/o/orders/", "/o/orders") or lineage.same_files("/o/orders", "/o/orders")
    assert lineage.same_files("/o/orders-00000-of-00001.parquet", "/o/orders")
    assert lineage.same_files("/o", "/o/orders")
    assert not lineage.same_files("/o/customers-*.parquet", "/o/orders")
    assert not lineage.same_files("/o/orders_archive.csv", "/o/orders")


def test_default_store_path(tmp_path, monkeypatch):
    monkeypatch.delenv("BEAM_ETL_LINEAGE_STORE", raising=False)
    assert lineage.default_store_path(str(tmp_path / "s" / "state.sqlite"), "out") == tmp_path / "s" / \
        lineage.LINEAGE_FILE_NAME
    assert lineage.default_store_path(f"sqlite:///{tmp_path}/x.sqlite", "out") == tmp_path / lineage.LINEAGE_FILE_NAME
    assert lineage.default_store_path("postgresql://u@h/db", tmp_path) == tmp_path / lineage.LINEAGE_FILE_NAME
    monkeypatch.setenv("BEAM_ETL_LINEAGE_STORE", str(tmp_path / "l.sqlite"))
    assert lineage.default_store_path(None, "out") == tmp_path / "l.sqlite"


# --------------------------------------------------------------------------------------
# Column lineage of the quickstart, by hand
# --------------------------------------------------------------------------------------


def test_quickstart_column_lineage_matches_the_hand_written_expectation(tmp_path):
    spec, configs = _spec("quickstart", tmp_path)
    found = lineage.derive_lineage(spec, configs)

    (source,) = found.inputs
    assert (source.ref.namespace, source.ref.name) == ("file", CSV)
    assert list(source.fields) == HEADER and source.schema_origin == "file"  # the CSV header, sampled
    assert source.fields["amount"] == "double" and source.fields["quantity"] == "int64"  # declared schema wins

    outputs = _by_name(found.outputs)
    orders_sqlite = f"sqlite://{tmp_path}/orders.sqlite"
    assert set(outputs) == {f"file://{tmp_path}/orders", f"{orders_sqlite}/orders",
                            f"file://{tmp_path}/sales_by_country", f"{orders_sqlite}/sales_by_country",
                            f"file://{tmp_path}/dlq"}

    for name in (f"file://{tmp_path}/orders", f"{orders_sqlite}/orders"):
        orders = outputs[name]
        assert list(orders.fields) == HEADER + ["_quality_score", "_quality_flags", "cluster_id", "duplicate_count",
                                                "anomaly_score", "is_anomaly", "anomaly_reasons"]
        assert _sources(orders, "amount") == {("amount", "DIRECT", "IDENTITY")}  # orders sink amount <- csv amount
        assert _sources(orders, "order_id") == {("order_id", "DIRECT", "IDENTITY")}
        assert _sources(orders, "order_date") == {("order_date", "DIRECT", "TRANSFORMATION")}  # the Cast
        assert orders.fields["order_date"] == "date32[day]"
        (cast,) = orders.columns["order_date"][0]["transformations"]
        assert cast["description"] == "via parse_dates"
        assert {f for f, _, _ in _sources(orders, "_quality_score")} == set(HEADER)  # rules + infer: every column
        compared = {"customer_id", "amount", "order_date", "quantity", "category", "status", "name", "email"}
        assert _sources(orders, "cluster_id") == {(f, "DIRECT", "TRANSFORMATION") for f in compared}
        assert _sources(orders, "duplicate_count") == {(f, "DIRECT", "AGGREGATION") for f in compared}
        assert {f for f, _, _ in _sources(orders, "anomaly_score")} == {
            "amount", "quantity", "country", "category", "status", "order_date"}
        every_row = _every_row(orders)
        assert {("order_id", "FILTER"), ("customer_id", "FILTER"), ("amount", "FILTER")} <= every_row  # NullRemover
        assert ("order_id", "FILTER") in every_row  # ExactDeduplicator keys
        assert ("country", "GROUP_BY") not in every_row

    for name in (f"file://{tmp_path}/sales_by_country", f"{orders_sqlite}/sales_by_country"):
        sales = outputs[name]
        assert list(sales.fields) == ["country", "category", "avg_amount", "max_amount", "orders", "revenue"] or \
            set(sales.fields) == {"country", "category", "avg_amount", "max_amount", "orders", "revenue"}
        assert _sources(sales, "revenue") == {("amount", "DIRECT", "AGGREGATION")}  # revenue <- orders.amount
        assert _sources(sales, "avg_amount") == _sources(sales, "max_amount") == {("amount", "DIRECT", "AGGREGATION")}
        assert _sources(sales, "country") == {("country", "DIRECT", "IDENTITY")}
        assert sales.columns["orders"] == []  # count: from no column (the grouping is dataset-level)
        assert sales.fields["orders"] == "int64" and sales.fields["revenue"] == "double"
        assert {("country", "GROUP_BY"), ("category", "GROUP_BY"), ("amount", "FILTER")} <= _every_row(sales)

    dlq = outputs[f"file://{tmp_path}/dlq"]
    assert list(dlq.fields) == list(rules.ENVELOPE)
    assert {f for f, _, _ in _sources(dlq, "record")} == set(HEADER)


def test_rules_of_the_mapping_steps(tmp_path):
    doc = {
        "name": "rules_demo",
        "sources": [{"name": "src", "type": "ReadFromJsonl", "config": {"path": str(tmp_path / "none.jsonl")}}],
        "steps": [
            {"name": "renamed", "type": "Rename", "input": "src", "config": {"fields": {"amt": "amount"}}},
            {"name": "typed", "type": "Cast", "input": "renamed", "config": {"fields": {"amount": "float"}}},
            {"name": "big", "type": "Filter", "input": "typed", "config": {"expression": "amount > limit"}},
            {"name": "derived", "type": "WithColumns", "input": "big", "config": {"columns": {
                "net": "amount / 1.2", "label": "'vip' if tier == 'gold' else kind", "net_copy": "net"}}},
            {"name": "picked", "type": "Select", "input": "derived", "config": {"fields": ["id", "net", "label",
                                                                                           "net_copy"]}},
            {"name": "user_code", "type": "MapBatches", "input": "picked",
             "config": {"fn": "tests.unit.test_lineage:double_amount"}},
        ],
        "sinks": [
            {"name": "out", "type": "WriteToJsonl", "input": "user_code", "config": {"path": str(tmp_path / "o")}},
            {"name": "plain", "type": "WriteToJsonl", "input": "picked", "config": {"path": str(tmp_path / "p")}},
        ],
    }
    spec, configs = _spec(doc, tmp_path)
    found = lineage.derive_lineage(spec, configs)
    (source,) = found.inputs
    src = str(tmp_path / "none.jsonl")
    # the file does not exist: the source's columns are those the steps use, marked as inferred
    assert source.schema_origin == "inferred-from-usage"
    assert set(source.fields) == {"amt", "limit", "tier", "kind", "id"}
    assert all(note == lineage.USAGE_NOTE for note in source.notes.values())

    outputs = _by_name(found.outputs)
    plain = outputs[f"file://{tmp_path}/p"]
    assert list(plain.fields) == ["id", "net", "label", "net_copy"]
    assert _sources(plain, "id", src) == {("id", "DIRECT", "IDENTITY")}
    assert _sources(plain, "net", src) == {("amt", "DIRECT", "TRANSFORMATION")}  # renamed, cast, computed
    # a later column reads an earlier one (build_spec sorts mapping keys: net < net_copy)
    assert _sources(plain, "net_copy", src) == {("amt", "DIRECT", "TRANSFORMATION")}
    assert _sources(plain, "label", src) == {("kind", "DIRECT", "TRANSFORMATION"), ("tier", "INDIRECT", "CONDITIONAL")}
    assert plain.fields["net"] == "double"
    assert {("amt", "FILTER"), ("limit", "FILTER")} == _every_row(plain)

    opaque = outputs[f"file://{tmp_path}/o"]
    inputs = {i["field"] for i in opaque.columns["net"]}
    assert inputs == {"id", "amt", "tier", "kind"}  # every input column, flagged opaque
    assert all(t["description"].startswith("opaque") for i in opaque.columns["net"] for t in i["transformations"])


def test_rules_of_aggregations_contracts_and_error_outputs(tmp_path):
    doc = {
        "name": "agg_demo",
        "sources": [{"name": "events", "type": "ReadFromKafka", "config": {
            "bootstrap_servers": "k1:9092,k2:9092", "topics": ["clicks"], "metadata": ["offset"], "start": "earliest",
            "schema": {"page": "string", "amount": "float", "ts": "timestamp"}}}],
        "steps": [
            {"name": "per_minute", "type": "WindowAggregate", "input": "events", "config": {
                "event_time": "ts", "window": {"type": "fixed", "size": "1m"}, "keys": ["page"],
                "aggregations": {"n": {"op": "count_all"}, "spent": {"op": "sum", "field": "amount"}},
                "pane_column": None}},
            {"name": "profile", "type": "InferSchema", "input": "events", "config": {"emit": "fields"}},
            {"name": "typed", "type": "EnforceContract", "input": "events", "config": {
                "contract": {"columns": "discard_value"}, "schema": {"page": "string", "amount": "float64"}},
             "error_handling": {"output": "bad"}},
        ],
        "sinks": [
            {"name": "agg", "type": "WriteToKafka", "input": "per_minute",
             "config": {"bootstrap_servers": "k1:9092", "topic": "minutes"}},
            {"name": "prof", "type": "WriteToCsv", "input": "profile", "config": {"path": str(tmp_path / "prof")}},
            {"name": "clean", "type": "WriteToParquet", "input": "typed", "config": {"path": str(tmp_path / "c")}},
            {"name": "rejects", "type": "WriteToJsonl", "input": "typed.bad", "config": {"path": str(tmp_path / "r")}},
        ],
    }
    spec, configs = _spec(doc, tmp_path)
    found = lineage.derive_lineage(spec, configs)
    (source,) = found.inputs
    assert source.ref == lineage.DatasetRef("kafka://k1:9092", "clicks")
    assert source.fields["kafka_offset"] == "int64" and source.fields["amount"] == "double"
    outputs = _by_name(found.outputs)
    agg = outputs["kafka://k1:9092/minutes"]
    topic = "clicks"
    assert list(agg.fields) == ["window_start", "window_end", "page", "n", "spent"]
    assert _sources(agg, "spent", topic) == {("amount", "DIRECT", "AGGREGATION")}
    assert _sources(agg, "window_start", topic) == {("ts", "DIRECT", "TRANSFORMATION")}
    assert agg.columns["n"] == []
    assert {("page", "GROUP_BY"), ("ts", "WINDOW")} <= _every_row(agg)
    prof = outputs[f"file://{tmp_path}/prof"]
    assert _sources(prof, "name", topic) >= {("amount", "DIRECT", "AGGREGATION"), ("page", "DIRECT", "AGGREGATION")}
    clean = outputs[f"file://{tmp_path}/c"]
    assert set(clean.fields) == {"page", "amount"} and clean.fields["amount"] == "float64"  # others discarded
    assert _sources(clean, "amount", topic) == {("amount", "DIRECT", "TRANSFORMATION")}
    rejects = outputs[f"file://{tmp_path}/r"]
    assert list(rejects.fields) == list(rules.ENVELOPE)
    assert {f for f, _, _ in _sources(rejects, "record", topic)} >= {"page", "amount", "ts", "kafka_offset"}


def test_source_schemas_from_files(tmp_path):
    pq.write_table(pa.table({"id": [1], "price": [2.5]}), tmp_path / "part-0.parquet")
    (tmp_path / "e.jsonl").write_text('{"a": 1, "b": "x", "c": null}\n{"a": 2}\n')
    db = tmp_path / "s.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE t (k INTEGER, v TEXT)")
    deadline = float("inf")
    parquet = lineage.source_schema("ReadFromParquet", registry.lookup("ReadFromParquet").config_model(
        path=str(tmp_path) + "/"), deadline)
    assert parquet.columns == {"id": "int64", "price": "double"} and parquet.complete
    jsonl = lineage.source_schema("ReadFromJsonl", registry.lookup("ReadFromJsonl").config_model(
        path=str(tmp_path / "*.jsonl")), deadline)
    assert jsonl.columns == {"a": "int64", "b": "string", "c": None} and not jsonl.complete
    table = lineage.source_schema("ReadFromSqlite", registry.lookup("ReadFromSqlite").config_model(
        database=str(db), table="t"), deadline)
    assert table.columns == {"k": "integer", "v": "text"} and table.origin == "database"
    late = lineage.source_schema("ReadFromJsonl", registry.lookup("ReadFromJsonl").config_model(
        path=str(tmp_path / "e.jsonl")), deadline=0.0)  # past the time budget: no file is opened
    assert late.columns == {} and late.origin == "unknown"


# --------------------------------------------------------------------------------------
# Events: shape, every template, secrets
# --------------------------------------------------------------------------------------

_FACET = {"type": "object", "required": ["_producer", "_schemaURL"],
          "properties": {"_producer": {"type": "string", "minLength": 1},
                         "_schemaURL": {"type": "string", "pattern": "^[a-z][a-z0-9+.-]*:"}}}
_INPUT_FIELD = {"type": "object", "required": ["namespace", "name", "field", "transformations"],
                "properties": {"namespace": {"type": "string", "minLength": 1}, "name": {"type": "string"},
                               "field": {"type": "string", "minLength": 1},
                               "transformations": {"type": "array", "minItems": 1, "items": {
                                   "type": "object", "required": ["type"], "properties": {
                                       "type": {"enum": ["DIRECT", "INDIRECT"]},
                                       "subtype": {"enum": ["IDENTITY", "TRANSFORMATION", "AGGREGATION", "FILTER",
                                                            "GROUP_BY", "SORT", "WINDOW", "CONDITIONAL", "JOIN"]},
                                       "masking": {"type": "boolean"}}}}}}
_DATASET = {"type": "object", "required": ["namespace", "name"],
            "properties": {"namespace": {"type": "string", "minLength": 1}, "name": {"type": "string", "minLength": 1},
                           "facets": {"type": "object", "additionalProperties": _FACET},
                           "inputFacets": {"type": "object", "additionalProperties": _FACET},
                           "outputFacets": {"type": "object", "additionalProperties": _FACET}}}
RUN_EVENT_SHAPE = {
    "type": "object", "required": ["eventTime", "producer", "schemaURL", "run", "job"],
    "properties": {
        "eventType": {"enum": ["START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER"]},
        "eventTime": {"type": "string"}, "producer": {"type": "string"}, "schemaURL": {"type": "string"},
        "run": {"type": "object", "required": ["runId"], "properties": {
            "runId": {"type": "string"}, "facets": {"type": "object", "additionalProperties": _FACET}}},
        "job": {"type": "object", "required": ["namespace", "name"], "properties": {
            "namespace": {"type": "string"}, "name": {"type": "string"},
            "facets": {"type": "object", "additionalProperties": _FACET}}},
        "inputs": {"type": "array", "items": _DATASET}, "outputs": {"type": "array", "items": _DATASET}},
}


def _same(client: Any, ours: Any) -> bool:
    """Equal, except for keys the client adds with empty defaults (``fields: []``)."""
    if isinstance(client, dict) and isinstance(ours, dict):
        return all(k in client and _same(client[k], v) for k, v in ours.items()) and all(
            client[k] in ([], {}, None) for k in client.keys() - ours.keys())
    if isinstance(client, list) and isinstance(ours, list):
        return len(client) == len(ours) and all(_same(a, b) for a, b in zip(client, ours, strict=True))
    return client == ours


def _rebuilt_with_the_openlineage_client(event: dict[str, Any]) -> None:
    """Builds the event from the openlineage-python client's classes (their validators run) and checks
    that every standard facet serialises exactly as ours: key names, nesting and schema URLs."""
    from openlineage.client import event_v2
    from openlineage.client.generated import (
        column_lineage_dataset,
        documentation_job,
        error_message_run,
        input_statistics_input_dataset,
        job_type_job,
        output_statistics_output_dataset,
        processing_engine_run,
        schema_dataset,
        source_code_location_job,
    )
    from openlineage.client.serde import Serde

    def field(i: dict[str, Any]) -> Any:
        return column_lineage_dataset.InputField(
            namespace=i["namespace"], name=i["name"], field=i["field"],
            transformations=[column_lineage_dataset.Transformation(**t) for t in i["transformations"]])

    builders = {
        "schema": lambda b: schema_dataset.SchemaDatasetFacet(
            fields=[schema_dataset.SchemaDatasetFacetFields(**f) for f in b["fields"]]),
        "columnLineage": lambda b: column_lineage_dataset.ColumnLineageDatasetFacet(
            fields={k: column_lineage_dataset.Fields(inputFields=[field(i) for i in v["inputFields"]])
                    for k, v in b["fields"].items()}, dataset=[field(i) for i in b["dataset"]]),
        "outputStatistics": lambda b: output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(**b),
        "inputStatistics": lambda b: input_statistics_input_dataset.InputStatisticsInputDatasetFacet(**b),
        "jobType": lambda b: job_type_job.JobTypeJobFacet(**b),
        "sourceCodeLocation": lambda b: source_code_location_job.SourceCodeLocationJobFacet(**b),
        "documentation": lambda b: documentation_job.DocumentationJobFacet(**b),
        "errorMessage": lambda b: error_message_run.ErrorMessageRunFacet(**b),
        "processing_engine": lambda b: processing_engine_run.ProcessingEngineRunFacet(**b),
    }

    def facets(mapping: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, facet in (mapping or {}).items():
            if key not in builders:
                assert key.startswith("beam_etl_"), key  # our own facets carry the producer's prefix
                continue
            built = builders[key]({k: v for k, v in facet.items() if not k.startswith("_")})
            built._producer = facet["_producer"]
            assert _same(Serde.to_dict(built), facet), (key, Serde.to_dict(built), facet)
            out[key] = built
        return out

    event_v2.RunEvent(
        eventType=event_v2.RunState(event["eventType"]), eventTime=event["eventTime"], producer=event["producer"],
        run=event_v2.Run(runId=event["run"]["runId"], facets=facets(event["run"]["facets"])),
        job=event_v2.Job(namespace=event["job"]["namespace"], name=event["job"]["name"],
                         facets=facets(event["job"]["facets"])),
        inputs=[event_v2.InputDataset(namespace=d["namespace"], name=d["name"], facets=facets(d["facets"]),
                                      inputFacets=facets(d.get("inputFacets", {}))) for d in event["inputs"]],
        outputs=[event_v2.OutputDataset(namespace=d["namespace"], name=d["name"], facets=facets(d["facets"]),
                                        outputFacets=facets(d.get("outputFacets", {}))) for d in event["outputs"]])


def check_event(event: dict[str, Any]) -> None:
    """An event has the OpenLineage RunEvent shape (2-0-2)."""
    import jsonschema

    jsonschema.validate(event, RUN_EVENT_SHAPE)
    assert event["schemaURL"] == "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
    uuid.UUID(event["run"]["runId"])
    assert dt.datetime.fromisoformat(event["eventTime"]).tzinfo is not None
    json.dumps(event)  # plain JSON
    try:
        import openlineage.client  # noqa: F401
    except ImportError:
        return
    _rebuilt_with_the_openlineage_client(event)


def _fake_summary(spec: Any, status: str = "succeeded", error: str | None = None) -> dict[str, Any]:
    nodes = [t.name for t in [*spec.sources, *spec.sinks]] + ["__dlq__"]
    return {"status": status, "error": error,
            "steps": {n: {"records_in": 7, "records_out": 5, "records_failed": 2} for n in nodes}}


@pytest.fixture
def template_env(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", CANARY)
    monkeypatch.setenv("MYSQL_PASSWORD", CANARY)
    monkeypatch.setenv("MONGO_URI", f"mongodb://etl:{URI_CANARY}@127.0.0.1:27017/")


@pytest.mark.parametrize("template", [p.stem for p in list_templates()])
def test_every_template_gives_valid_events(template, tmp_path, template_env):
    spec, configs = _spec(template, tmp_path / "run")
    store = tmp_path / "lineage.sqlite"
    recorder = lineage.LineageRecorder.start(spec, configs, run_id=f"{template}-1", run_dir=tmp_path / "run",
                                             template=resolve_template_path(template), runner="DirectRunner",
                                             store=store)
    recorder.finish(_fake_summary(spec))
    recorder.emit("FAIL", _fake_summary(spec, "failed", "boom"))
    events = [json.loads(line) for line in (tmp_path / "run" / lineage.EVENTS_FILE).read_text().splitlines()]
    assert [e["eventType"] for e in events] == ["START", "COMPLETE", "FAIL"]
    for event in events:
        check_event(event)
        assert event["job"] == {**event["job"], "namespace": "beam_etl", "name": spec.name}
        assert event["run"]["runId"] == lineage.run_uuid(f"{template}-1")
        assert event["inputs"] and event["outputs"]
    complete = events[1]
    assert all(o["outputFacets"]["outputStatistics"]["rowCount"] >= 5 for o in complete["outputs"])
    assert all(i["inputFacets"]["inputStatistics"]["rowCount"] >= 7 for i in complete["inputs"])
    assert "outputFacets" not in events[0]["outputs"][0]  # START: nothing counted yet
    assert events[2]["run"]["facets"]["errorMessage"]["message"] == "boom"
    location = complete["job"]["facets"]["sourceCodeLocation"]
    assert location["url"] == resolve_template_path(template).resolve().as_uri()
    assert lineage.LineageStore(store).runs()[0]["status"] == "FAIL"


def test_a_canary_secret_never_reaches_the_events_or_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv("BEAM_ETL_TEST_LINEAGE_PASSWORD", CANARY)
    doc = yaml.safe_load(f"""
name: secret_lineage
sources:
  - name: read
    type: ReadFromCsv
    config: {{path: "{CSV}"}}
sinks:
  - name: pg
    type: WriteToPostgres
    input: read
    config: {{host: 127.0.0.1, port: 5432, user: etl, password: "${{BEAM_ETL_TEST_LINEAGE_PASSWORD}}",
             database: shop, table: orders}}
  - name: mongo
    type: WriteToMongoDB
    input: read
    config: {{uri: "mongodb://etl:{URI_CANARY}@127.0.0.1:27017/?authSource=admin", database: shop,
             collection: orders}}
""")
    spec, configs = _spec(doc, tmp_path / "run")
    store = tmp_path / "lineage.sqlite"
    recorder = lineage.LineageRecorder.start(spec, configs, run_id="secret-1", run_dir=tmp_path / "run",
                                             store=store)
    recorder.finish(_fake_summary(spec, "failed", f"password authentication failed for {CANARY}"))
    text = (tmp_path / "run" / lineage.EVENTS_FILE).read_text()
    names = {(o["namespace"], o["name"]) for o in json.loads(text.splitlines()[0])["outputs"]}
    assert ("postgres://127.0.0.1:5432", "shop.public.orders") in names
    assert ("mongodb://127.0.0.1:27017", "shop.orders") in names
    for blob in (text, store.read_bytes().decode("utf-8", errors="replace")):
        assert CANARY not in blob and URI_CANARY not in blob
    assert "***" in text  # the error message was redacted, not dropped


def test_events_reach_an_http_endpoint_with_the_client_and_with_urllib(tmp_path, monkeypatch):
    received: list[tuple[str, dict[str, Any]]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, json.loads(body)))
            self.send_response(201)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        spec, configs = _spec("csv_to_parquet", tmp_path / "run")
        recorder = lineage.LineageRecorder.start(spec, configs, run_id="http-1", run_dir=tmp_path / "run", url=url)
        recorder.finish(_fake_summary(spec))
        monkeypatch.setitem(sys.modules, "openlineage.client.transport.http", None)  # the urllib fallback
        lineage.post_event(url, recorder.events[-1])
    finally:
        server.shutdown()
    assert [path for path, _ in received] == ["/api/v1/lineage"] * 3
    assert [e["eventType"] for _, e in received] == ["START", "COMPLETE", "COMPLETE"]
    assert received[1][1] == recorder.events[1]


def test_an_unreachable_endpoint_only_warns(tmp_path, capsys):
    spec, configs = _spec("csv_to_parquet", tmp_path / "run")
    recorder = lineage.LineageRecorder.start(spec, configs, run_id="down-1", run_dir=tmp_path / "run",
                                             url="http://user:tok3n@127.0.0.1:9/")
    assert recorder.events and (tmp_path / "run" / lineage.EVENTS_FILE).exists()
    err = capsys.readouterr().err
    assert "could not write the START event to http://127.0.0.1:9/" in err and "tok3n" not in err


# --------------------------------------------------------------------------------------
# Real runs: chained impact analysis, FAIL on a failing run
# --------------------------------------------------------------------------------------


def _run(template: str, output: Path, run_id: str, overrides: list[str] | None = None) -> int:
    from beam_etl.run import run_template

    return run_template(template, overrides, ["--runner=DirectRunner"], output_dir=str(output), run_id=run_id,
                        quiet=True, check_runner=False)


def test_impact_and_upstream_across_two_chained_runs(tmp_path, capsys):
    source = tmp_path / "in.csv"
    source.write_text("order_id,amount,country\n1,10.5,DE\n2,3.0,FR\n3,,DE\n")
    lake = tmp_path / "lake" / "orders"
    runs = tmp_path / "runs"
    assert _run("csv_to_parquet", runs, "A", [f"params.input={source}", f"params.output={lake}/"]) == 0
    template_b = tmp_path / "b.yaml"
    template_b.write_text(f"""name: parquet_to_sqlite
sources:
  - name: lake
    type: ReadFromParquet
    config: {{path: "{lake}/*.parquet"}}
steps:
  - name: money
    type: WithColumns
    input: lake
    config: {{columns: {{amount_cents: "amount * 100"}}}}
sinks:
  - name: db
    type: WriteToSqlite
    input: money
    config: {{database: "{tmp_path}/b.sqlite", table: orders, mode: insert, create_table: true}}
""")
    assert _run(str(template_b), runs, "B") == 0
    store = runs / lineage.LINEAGE_FILE_NAME  # beside the default state store
    assert store.exists() and (runs / "A" / lineage.EVENTS_FILE).exists()
    capsys.readouterr()

    assert lineage_cli(["impact", f"{source}.amount", "--store", str(store), "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    reached = {(h["dataset"], h["field"]): h for h in hits}
    table = f"sqlite://{tmp_path}/b.sqlite/orders"
    assert reached[(f"file://{lake}", "amount")]["relation"] == "DIRECT"
    assert reached[(table, "amount")]["runs"] == ["B"] and reached[(table, "amount")]["depth"] == 2
    assert reached[(table, "amount_cents")]["subtypes"] == ["DIRECT TRANSFORMATION"]
    assert (table, "country") not in reached

    assert lineage_cli(["upstream", f"{table}.amount_cents", "--store", str(store)]) == 0
    text = capsys.readouterr().out
    assert f"file://{source}" in text and "amount" in text and "csv_to_parquet" in text

    assert lineage_cli(["show", "B", "--store", str(store)]) == 0
    shown = capsys.readouterr().out
    assert "amount_cents real <- #1.amount (DIRECT TRANSFORMATION via money)" in shown
    assert "3 rows" in shown
    assert lineage_cli(["impact", "no-such-dataset", "--store", str(store)]) == 1


def test_a_failing_run_emits_fail(tmp_path):
    data = tmp_path / "in.csv"
    data.write_text("id,amount\n1,2.5\n2,abc\n")
    template = tmp_path / "t.yaml"
    template.write_text(f"""name: strict
error_budget: {{max_count: 0}}
sources:
  - name: read
    type: ReadFromCsv
    config: {{path: "{data}", schema: {{amount: float}}}}
sinks:
  - name: out
    type: WriteToJsonl
    input: read
    config: {{path: "{{{{ run_dir }}}}/out"}}
""")
    assert _run(str(template), tmp_path / "runs", "F") == 3  # over the error budget
    events = [json.loads(x) for x in (tmp_path / "runs" / "F" / lineage.EVENTS_FILE).read_text().splitlines()]
    assert [e["eventType"] for e in events] == ["START", "FAIL"]
    assert "error budget exceeded" in events[1]["run"]["facets"]["errorMessage"]["message"]
    counts = {o["name"].rsplit("/", 1)[-1]: o["outputFacets"]["outputStatistics"]["rowCount"]
              for o in events[1]["outputs"]}
    assert counts == {"out": 1, "dlq": 1}
    for event in events:
        check_event(event)
    assert lineage.LineageStore(tmp_path / "runs" / lineage.LINEAGE_FILE_NAME).runs()[0]["status"] == "FAIL"


# Hand-written, from reading each template: output dataset (its name ends with the key) -> column -> the
# (input column, subtype) pairs it derives from. Key columns only; the quickstart has its own test above.
EXPECTED_COLUMNS: dict[str, dict[str, dict[str, set[tuple[str, str]]]]] = {
    "csv_to_parquet": {"/data": {"order_id": {("order_id", "IDENTITY")}, "amount": {("amount", "IDENTITY")}}},
    "csv_to_sqlite": {"/data.sqlite/orders": {"order_id": {("order_id", "IDENTITY")},
                                              "amount": {("amount", "IDENTITY")}}},
    "csv_to_postgres": {"warehouse.public.orders": {"order_id": {("order_id", "IDENTITY")},
                                                    "amount": {("amount", "IDENTITY")}}},
    "access_log_to_jsonl": {
        "/requests": {"ip": {("ip", "IDENTITY")}, "ts": {("ts", "TRANSFORMATION")}},
        "/status_counts": {"status": {("status", "IDENTITY")}, "path": {("path", "IDENTITY")}, "hits": set(),
                           "bytes_total": {("bytes", "AGGREGATION")}}},
    "dedup_customers": {"/customers": {
        "customer_id": {("customer_id", "IDENTITY")}, "country": {("country", "IDENTITY")},
        "cluster_id": {(f, "TRANSFORMATION") for f in ("name", "email", "phone", "city", "customer_id")}}},
    "anomaly_tagging": {
        "/orders_tagged": {"order_id": {("order_id", "IDENTITY")}, "amount": {("amount", "TRANSFORMATION")}},
        "/quarantine": {"order_id": {("order_id", "IDENTITY")}}},
    "contract_orders": {"/orders": {"amount": {("amount", "TRANSFORMATION")},
                                    "order_id": {("order_id", "TRANSFORMATION")}}},
    "infer_schema": {"/schema_fields": {"storage_type": {(f, "AGGREGATION") for f in HEADER}}},
    "events_jsonl_to_parquet": {
        "/events": {"day": {("ts", "TRANSFORMATION")}, "net_value": {("value", "TRANSFORMATION")},
                    "event_id": {("event_id", "IDENTITY")}},
        "/purchases": {"net_value": {("value", "TRANSFORMATION")}},
        "/daily": {"day": {("ts", "TRANSFORMATION")}, "type": {("type", "IDENTITY")}, "events": set(),
                   "value_sum": {("value", "AGGREGATION")}}},
    "kafka_to_kafka": {"/clean": {"source_partition": {("kafka_partition", "IDENTITY")},
                                  "source_offset": {("kafka_offset", "IDENTITY")}}},
    "kafka_to_parquet": {"/events": {"date": {("kafka_timestamp", "TRANSFORMATION")},
                                     "hour": {("kafka_timestamp", "TRANSFORMATION")}}},
    "kafka_to_postgres": {"warehouse.public.page_minutes": {
        "window_start": {("ts", "TRANSFORMATION")}, "page": {("page", "IDENTITY")}, "events": set(),
        "revenue": {("amount", "AGGREGATION")}, "users": {("user", "AGGREGATION")}}},
    "kafka_to_postgres_upsert": {"warehouse.public.orders": {"id": {("id", "IDENTITY")}}},
    "mongodb_to_s3_parquet": {"/mongodb/orders": {"status": {("status", "IDENTITY")}}},
    "mysql_to_postgres": {"warehouse.public.orders": {"id": {("id", "IDENTITY")},
                                                      "updated_at": {("updated_at", "IDENTITY")}}},
    "postgres_to_parquet": {"/export": {"id": {("id", "IDENTITY")}, "country": {("country", "IDENTITY")}}},
    "s3_to_postgres": {"warehouse.public.orders": {"order_id": {("order_id", "IDENTITY")}}},
}


def test_every_template_has_a_hand_written_lineage_expectation():
    assert set(EXPECTED_COLUMNS) | {"quickstart"} == {p.stem for p in list_templates()}


@pytest.mark.parametrize("template", sorted(EXPECTED_COLUMNS))
def test_template_column_lineage_matches_the_hand_written_expectation(template, tmp_path, template_env):
    spec, configs = _spec(template, tmp_path)
    found = lineage.derive_lineage(spec, configs)
    inputs = {d.ref.name for d in found.inputs}
    for suffix, columns in EXPECTED_COLUMNS[template].items():
        (dataset,) = [d for d in found.outputs if d.ref.display.endswith(suffix)]
        for column, expected in columns.items():
            edges = {(i["field"], t["subtype"]) for i in dataset.columns[column] for t in i["transformations"]}
            assert edges == expected, (template, suffix, column, edges)
            assert all(i["name"] in inputs for i in dataset.columns[column])


@pytest.mark.parametrize("template", sorted(EXPECTED_COLUMNS))
def test_template_impact_reaches_the_expected_output_columns(template, tmp_path, template_env, capsys):
    """Recorded in a store, each expected edge shows up in ``impact`` of its input column."""
    spec, configs = _spec(template, tmp_path / "run")
    store = tmp_path / "lineage.sqlite"
    recorder = lineage.LineageRecorder.start(spec, configs, run_id=f"{template}-1", run_dir=tmp_path / "run",
                                             template=resolve_template_path(template), runner="DirectRunner",
                                             store=store)
    recorder.finish(_fake_summary(spec))
    found = lineage.derive_lineage(spec, configs)
    for suffix, columns in EXPECTED_COLUMNS[template].items():
        (dataset,) = [d for d in found.outputs if d.ref.display.endswith(suffix)]
        for column in columns:
            for edge in dataset.columns[column]:
                source = next(d for d in found.inputs if d.ref.name == edge["name"])
                capsys.readouterr()
                assert lineage_cli(["impact", f"{source.ref.display}.{edge['field']}", "--store", str(store),
                                    "--json"]) == 0
                hits = json.loads(capsys.readouterr().out)["hits"]
                assert (dataset.ref.display, column) in {(h["dataset"], h["field"]) for h in hits}, (
                    template, source.ref.display, edge["field"], dataset.ref.display, column)
