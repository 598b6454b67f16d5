"""Schema registry: type strings, canonical JSON and hash, the widening lattice, diff, versions, CLI."""

from __future__ import annotations

import json
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_etl.ops.schema_registry import (
    SchemaRegistry,
    canonical_json,
    commit_pending_schemas,
    common_supertype,
    describe_schema_change,
    diff,
    load_schema,
    merge_schemas,
    name_similarity,
    parse_type,
    pending_schema_path,
    schema_from_dict,
    schema_hash,
    schema_to_dict,
    type_to_string,
    widens,
    write_pending_schema,
)
from beam_etl.schema_cli import main as cli

# ---------------------------------------------------------------------------------- type strings

ROUND_TRIP = [
    pa.null(), pa.bool_(), pa.int8(), pa.int64(), pa.uint32(), pa.float16(), pa.float32(), pa.float64(),
    pa.string(), pa.large_string(), pa.binary(), pa.large_binary(), pa.binary(16), pa.date32(), pa.date64(),
    pa.timestamp("s"), pa.timestamp("ns", "Europe/Paris"), pa.time32("ms"), pa.time64("ns"), pa.duration("us"),
    pa.decimal128(10, 2), pa.decimal256(50, 3), pa.list_(pa.field("item", pa.int64(), nullable=False)),
    pa.large_list(pa.string()), pa.list_(pa.int8(), 3), pa.map_(pa.string(), pa.float64()),
    pa.struct([pa.field("a", pa.int64(), nullable=False),
               pa.field("b c", pa.list_(pa.struct([("x", pa.timestamp("us", "UTC"))])))]),
]


@pytest.mark.parametrize("arrow_type", ROUND_TRIP, ids=str)
def test_type_strings_round_trip(arrow_type):
    text = type_to_string(arrow_type)
    assert parse_type(text) == arrow_type
    if arrow_type != pa.float32():  # Arrow writes float32 as "float", which the friendly alias reads as float64
        assert parse_type(str(arrow_type)) == arrow_type


def test_canonical_type_names_and_aliases():
    assert type_to_string(pa.float32()) == "float32" and type_to_string(pa.float64()) == "float64"
    assert type_to_string(pa.dictionary(pa.int32(), pa.string())) == "string"  # an encoding, not a type
    assert type_to_string(pa.timestamp("us", "UTC")) == "timestamp[us, tz=UTC]"
    assert type_to_string(pa.list_(pa.int64())) == "list<int64>"
    aliases = {"int": pa.int64(), "float": pa.float64(), "double": pa.float64(), "str": pa.string(),
               "boolean": pa.bool_(), "date": pa.date32(), "timestamp": pa.timestamp("us"),
               "timestamp(UTC)": pa.timestamp("us", "UTC"), "decimal(12, 2)": pa.decimal128(12, 2),
               "decimal(40,2)": pa.decimal256(40, 2)}
    for text, expected in aliases.items():
        assert parse_type(text) == expected, text


def test_an_unknown_type_names_the_field():
    with pytest.raises(ValueError, match=r"schema\.amount: 'money' is not a type"):
        schema_from_dict({"amount": "money"})


# ---------------------------------------------------------------------------------- canonical JSON and hash

BASE = pa.schema([pa.field("id", pa.int64(), nullable=False), ("name", pa.string()), ("amount", pa.float64())])


def test_hash_is_stable_and_ignores_metadata_order_and_encoding():
    assert canonical_json(BASE) == (
        '{"fields":[{"name":"amount","nullable":true,"type":"float64"},'
        '{"name":"id","nullable":false,"type":"int64"},{"name":"name","nullable":true,"type":"string"}]}')
    same = [
        BASE.with_metadata({"source": "x"}),
        pa.schema([BASE.field("amount"), BASE.field("name"), BASE.field("id")]),
        pa.schema([BASE.field("id"), pa.field("name", pa.dictionary(pa.int8(), pa.string())), BASE.field("amount")]),
        schema_from_dict(json.loads(json.dumps(schema_to_dict(BASE)))),
    ]
    assert {schema_hash(s) for s in same} == {schema_hash(BASE)}
    different = [
        BASE.set(2, pa.field("amount", pa.float32())),
        BASE.set(0, pa.field("id", pa.int64())),  # nullability is part of the schema
        BASE.append(pa.field("extra", pa.bool_())),
    ]
    assert len({schema_hash(s) for s in different} | {schema_hash(BASE)}) == 4


def test_hash_value_is_pinned():
    """The canonical JSON is a stored format: its hash must not move between releases."""
    import hashlib

    assert schema_hash(BASE) == hashlib.sha256(canonical_json(BASE).encode()).hexdigest()
    assert schema_hash(BASE) == "24cfb7dddb2a6c0f8a50dd9c61b4d234d87ad72bce65e0e1f48331afc561a615"
    assert schema_hash(pa.schema([("a", pa.int64())])) == hashlib.sha256(
        b'{"fields":[{"name":"a","nullable":true,"type":"int64"}]}').hexdigest()


def test_schema_from_mapping_and_files(tmp_path):
    mapping = {"id": "int", "amount": "float", "when": "date"}
    expected = pa.schema([("id", pa.int64()), ("amount", pa.float64()), ("when", pa.date32())])
    assert schema_from_dict(mapping) == expected
    (tmp_path / "s.json").write_text(json.dumps(schema_to_dict(BASE)))
    (tmp_path / "m.json").write_text(json.dumps(mapping))
    (tmp_path / "s.yaml").write_text("id: int\namount: float\nwhen: date\n")
    pq.write_table(pa.table({"id": pa.array([1], pa.int64()), "name": pa.array(["a"]).dictionary_encode()}),
                   tmp_path / "t.parquet")
    assert load_schema(tmp_path / "s.json") == BASE
    assert load_schema(str(tmp_path / "m.json")) == expected == load_schema(tmp_path / "s.yaml")
    assert load_schema(tmp_path / "t.parquet") == pa.schema([("id", pa.int64()), ("name", pa.string())])
    with pytest.raises(ValueError, match="does not exist"):
        load_schema(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ValueError, match="cannot parse schema file"):
        load_schema(tmp_path / "bad.json")
    with pytest.raises(ValueError, match=r"\['id'\] listed more than once"):
        schema_from_dict({"fields": [{"name": "id", "type": "int64"}, {"name": "id", "type": "string"}]})


# ---------------------------------------------------------------------------------- the lattice

WIDENING = [
    (pa.int32(), pa.int64(), True), (pa.int8(), pa.int16(), True), (pa.uint8(), pa.int16(), True),
    (pa.uint32(), pa.int32(), False), (pa.int32(), pa.uint64(), False), (pa.int64(), pa.int32(), False),
    (pa.int64(), pa.float64(), True), (pa.int16(), pa.float32(), True), (pa.int32(), pa.float32(), False),
    (pa.int32(), pa.decimal128(10, 0), True), (pa.int32(), pa.decimal128(10, 2), False),
    (pa.float32(), pa.float64(), True), (pa.float64(), pa.decimal128(38, 9), False),
    (pa.decimal128(10, 2), pa.decimal128(12, 3), True), (pa.decimal128(10, 2), pa.decimal128(10, 3), False),
    (pa.decimal128(10, 2), pa.float64(), True),
    (pa.date32(), pa.date64(), True), (pa.date32(), pa.timestamp("us"), True),
    (pa.date32(), pa.timestamp("us", "UTC"), False), (pa.timestamp("us"), pa.date32(), False),
    (pa.timestamp("ms"), pa.timestamp("us"), True), (pa.timestamp("us"), pa.timestamp("us", "UTC"), False),
    (pa.time32("s"), pa.time64("us"), True), (pa.duration("ms"), pa.duration("s"), False),
    (pa.string(), pa.large_string(), True), (pa.int64(), pa.string(), False), (pa.bool_(), pa.int8(), False),
    (pa.null(), pa.string(), True), (pa.int64(), pa.int64(), False),
    (pa.list_(pa.int32()), pa.large_list(pa.int64()), True), (pa.list_(pa.int64()), pa.list_(pa.int32()), False),
    (pa.struct([("a", pa.int32())]), pa.struct([("a", pa.int64()), ("b", pa.string())]), True),
    (pa.struct([("a", pa.int32()), ("b", pa.string())]), pa.struct([("a", pa.int64())]), False),
]


@pytest.mark.parametrize(("old", "new", "expected"), WIDENING,
                         ids=[f"{type_to_string(o)}->{type_to_string(n)}" for o, n, _ in WIDENING])
def test_widening_lattice(old, new, expected):
    assert widens(old, new) is expected
    if expected:
        assert not widens(new, old), "a widening never goes both ways"


def test_common_supertype():
    assert common_supertype(pa.int32(), pa.int64()) == pa.int64()
    assert common_supertype(pa.uint32(), pa.int32()) == pa.int64()
    assert common_supertype(pa.int64(), pa.uint64()) == pa.decimal128(20, 0)
    assert common_supertype(pa.int32(), pa.decimal128(5, 2)) == pa.decimal128(12, 2)
    assert common_supertype(pa.float32(), pa.int64()) == pa.float64()
    assert common_supertype(pa.date32(), pa.timestamp("ms")) == pa.timestamp("ms")
    assert common_supertype(pa.int64(), pa.string()) is None
    assert common_supertype(pa.timestamp("us", "UTC"), pa.timestamp("us")) is None


def test_merge_schemas_widens_appends_and_never_removes():
    base = pa.schema([pa.field("id", pa.int32(), nullable=False), ("name", pa.string())])
    other = pa.schema([("id", pa.int64()), ("extra", pa.bool_())])
    merged = merge_schemas(base, other)
    assert merged == pa.schema([("id", pa.int64()), ("name", pa.string()), ("extra", pa.bool_())])


# ---------------------------------------------------------------------------------- diff

OLD = pa.schema([pa.field("id", pa.int32()), ("email", pa.string()), ("amount", pa.float64()),
                 ("created", pa.timestamp("us")), ("zip", pa.int64()), ("qty", pa.int64())])
NEW = pa.schema([pa.field("id", pa.int64(), nullable=False), ("email_address", pa.string()), ("amount", pa.float32()),
                 ("created", pa.timestamp("us")), ("zip", pa.string()), ("quantity", pa.int64()),
                 ("coupon", pa.string())])


def test_diff_classifies_every_change():
    d = diff(OLD, NEW)
    assert [c.name for c in d.added] == ["email_address", "quantity", "coupon"]
    assert [c.name for c in d.removed] == ["email", "qty"]
    assert [(r.old, r.new, r.type) for r in d.rename_candidates] == [("email", "email_address", "string"),
                                                                     ("qty", "quantity", "int64")]
    assert all(0.8 <= r.score <= 1.0 for r in d.rename_candidates)
    assert [(c.column, c.old_type, c.new_type) for c in d.widened] == [("id", "int32", "int64")]
    assert [(c.column, c.old_type, c.new_type) for c in d.narrowed] == [("amount", "float64", "float32")]
    assert [(c.column, c.old_type, c.new_type) for c in d.changed] == [("zip", "int64", "string")]
    assert [(c.column, c.old_nullable, c.new_nullable) for c in d.nullability] == [("id", True, False)]
    assert not d.is_empty and not d.is_backward_compatible
    text = d.render()
    for line in ("+ added    coupon: string", "- removed  email: string", "~ renamed? email -> email_address",
                 "^ widened  id: int32 -> int64", "v narrowed amount: float64 -> float32",
                 "! changed  zip: int64 -> string", "? nullable id: nullable -> not null"):
        assert line in text, text
    as_json = json.loads(json.dumps(d.to_dict()))
    assert as_json["rename_candidates"][0]["old"] == "email" and as_json["is_backward_compatible"] is False


def test_rename_candidates_need_the_same_type_a_similar_name_and_pair_once():
    old = pa.schema([("customer_id", pa.int64()), ("total", pa.float64())])
    new = pa.schema([("customerid", pa.int64()), ("customer_no", pa.int64()), ("total_amount", pa.string())])
    d = diff(old, new)
    assert [(r.old, r.new) for r in d.rename_candidates] == [("customer_id", "customerid")]  # best match only
    assert not any(r.old == "total" for r in d.rename_candidates)  # different type
    assert diff(old, new, rename_threshold=1.01).rename_candidates == ()
    assert name_similarity("CustomerID", "customer_id") > name_similarity("customer_id", "order_date")
    assert name_similarity("id_customer", "customer id") == 1.0  # token order does not matter


def test_diff_of_equal_or_widened_schemas():
    assert diff(BASE, BASE.with_metadata({"a": "b"})).is_empty
    assert diff(BASE, BASE).render() == "no changes"
    reordered = diff(BASE, pa.schema([BASE.field("name"), BASE.field("id"), BASE.field("amount")]))
    assert reordered.reordered and not reordered.added and reordered.is_backward_compatible
    widened = diff(pa.schema([("n", pa.int32())]), pa.schema([("n", pa.int64()), ("m", pa.string())]))
    assert widened.is_backward_compatible


# ---------------------------------------------------------------------------------- the registry


def test_register_versions_and_get(tmp_path):
    reg = SchemaRegistry(str(tmp_path / "state.sqlite"))
    assert reg.get("pipe", "orders") is None and reg.versions("pipe", "orders") == []
    v1 = reg.register("pipe", "orders", BASE, run_id="r1")
    assert (v1.version, v1.created, v1.run_id) == (1, True, "r1") and v1.hash == schema_hash(BASE)
    again = reg.register("pipe", "orders", BASE.with_metadata({"x": "y"}), run_id="r2")
    assert (again.version, again.created, again.run_id) == (1, False, "r1")
    wider = BASE.append(pa.field("coupon", pa.string()))
    assert reg.register("pipe", "orders", wider).version == 2
    back = reg.register("pipe", "orders", BASE)  # back to v1's shape: a new version, latest is the current shape
    assert (back.version, back.created, back.hash) == (3, True, v1.hash)
    reg.register("pipe", "customers", BASE)
    reg.register("other", "orders", BASE)
    assert [v.version for v in reg.versions("pipe", "orders")] == [1, 2, 3]
    assert reg.get("pipe", "orders").version == 3 == reg.get("pipe", "orders", "latest").version
    assert reg.get("pipe", "orders", 2).schema == wider and reg.get("pipe", "orders", 9) is None
    assert [(v.pipeline, v.table, v.version) for v in reg.tables()] == [
        ("other", "orders", 1), ("pipe", "customers", 1), ("pipe", "orders", 3)]
    assert [v.table for v in reg.tables("pipe")] == ["customers", "orders"]
    assert json.loads(json.dumps(v1.to_dict()))["schema"] == schema_to_dict(BASE)
    assert reg.delete("pipe", "orders") == 3 and reg.get("pipe", "orders") is None
    assert SchemaRegistry(f"sqlite:///{tmp_path / 'state.sqlite'}").get("pipe", "customers").version == 1


def test_concurrent_registrations_get_distinct_versions(tmp_path):
    url = str(tmp_path / "state.sqlite")
    SchemaRegistry(url).register("p", "t", BASE)
    schemas = [BASE.append(pa.field(f"c{i}", pa.int64())) for i in range(6)]
    errors: list[BaseException] = []

    def work(schema: pa.Schema) -> None:
        try:
            SchemaRegistry(url).register("p", "t", schema)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(s,)) for s in schemas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    versions = SchemaRegistry(url).versions("p", "t")
    assert [v.version for v in versions] == list(range(1, 8))
    assert {v.hash for v in versions[1:]} == {schema_hash(s) for s in schemas}


def test_pending_schemas_register_only_when_committed(tmp_path):
    url, run_dir = str(tmp_path / "state.sqlite"), tmp_path / "run"
    reg = SchemaRegistry(url)
    reg.register("pipe", "orders", BASE)
    concurrent = BASE.append(pa.field("from_elsewhere", pa.string()))
    evolved = pa.schema([BASE.field("id"), BASE.field("name"), BASE.field("amount"), ("coupon", pa.string())])
    write_pending_schema(pending_schema_path(run_dir, "check/orders"), pipeline="pipe", table="orders",
                         schema=evolved, base_version=1, merge_with_latest=True)
    reg.register("pipe", "orders", concurrent)  # another run registered v2 meanwhile
    assert reg.get("pipe", "orders").version == 2  # nothing is registered before the commit
    changes = commit_pending_schemas(run_dir, url, "pipe", "run-7")
    latest = reg.get("pipe", "orders")
    assert latest.version == 3 and latest.run_id == "run-7"
    assert latest.schema.names == ["id", "name", "amount", "from_elsewhere", "coupon"]  # merged, nothing lost
    assert changes[0]["created"] and changes[0]["previous"] == 2
    assert [c["name"] for c in changes[0]["diff"]["added"]] == ["coupon"]
    assert describe_schema_change(changes[0]) == "pipe/orders: schema version 2 -> 3 (1 added)"
    assert commit_pending_schemas(tmp_path / "no-run", url, "pipe", "x") == []


# ---------------------------------------------------------------------------------- CLI


def test_cli_list_show_diff_register(tmp_path, capsys):
    url = str(tmp_path / "state.sqlite")
    (tmp_path / "v1.json").write_text(json.dumps({"id": "int32", "email": "string"}))
    (tmp_path / "v2.json").write_text(json.dumps({"id": "int64", "email_address": "string"}))
    assert cli(["--state", url, "list"]) == 0
    assert "no schemas" in capsys.readouterr().out
    assert cli(["--state", url, "register", "pipe", "users", str(tmp_path / "v1.json")]) == 0
    assert "registered as version 1" in capsys.readouterr().out
    assert cli(["--state", url, "register", "pipe", "users", str(tmp_path / "v1.json")]) == 0
    assert "unchanged: already version 1" in capsys.readouterr().out
    assert cli(["--state", url, "diff", "pipe", "users"]) == 1  # one version: nothing to diff
    capsys.readouterr()
    assert cli(["--state", url, "register", "pipe", "users", str(tmp_path / "v2.json")]) == 0
    assert cli(["--state", url, "list"]) == 0
    out = capsys.readouterr().out
    assert "pipe" in out and "users" in out and "v2" in out
    assert cli(["--state", url, "list", "pipe", "users"]) == 0
    assert capsys.readouterr().out.count("users") == 2
    assert cli(["--state", url, "show", "pipe", "users", "--version", "1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == 1 and shown["schema"]["fields"][0] == {"name": "id", "type": "int32",
                                                                      "nullable": True}
    assert cli(["--state", url, "diff", "pipe", "users"]) == 0
    out = capsys.readouterr().out
    assert "v1 -> v2" in out and "^ widened  id: int32 -> int64" in out and "~ renamed? email -> email_address" in out
    assert cli(["--state", url, "diff", "pipe", "users", "2", str(tmp_path / "v1.json"), "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert as_json["old"] == "v2" and as_json["narrowed"][0]["column"] == "id"
    assert cli(["--state", url, "show", "pipe", "users", "--version", "7"]) == 1
    assert "no version 7" in capsys.readouterr().err
    assert cli(["--state", url, "register", "pipe", "users", str(tmp_path / "nope.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
