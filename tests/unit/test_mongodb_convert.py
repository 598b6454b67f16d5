"""MongoDB connectors without a server: BSON <-> Arrow conversion, option checks, planning helpers."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid

import bson
import pyarrow as pa
import pytest
from bson import Binary, Decimal128, Int64, ObjectId, Regex
from bson.datetime_ms import DatetimeMS
from pydantic import ValidationError

from beam_etl import registry
from beam_etl.io import _mongo_arrow as conv
from beam_etl.io import _mongo_client as mc
from beam_etl.io.mongodb import (
    ReadFromMongoDB,
    ReadFromMongoDBConfig,
    WriteToMongoDB,
    WriteToMongoDBConfig,
    _range_query,
)
from beam_etl.ops.secrets import register_secret

URI = "mongodb://127.0.0.1:1/"
UTC = dt.UTC


def decoded(*docs: dict) -> list[dict]:
    """Documents as the reader sees them: encoded by the server, decoded with the read codec."""
    return [conv.decode(bson.encode(d, codec_options=conv.WRITE_CODEC)) for d in docs]


def to_batch(*docs: dict, nested: str = "struct") -> conv.DocsBatch:
    return conv.documents_to_batch(decoded(*docs), nested)


# ----------------------------------------------------------------------------- BSON -> Arrow


def test_scalar_types_map_to_arrow():
    oid = ObjectId()
    u = uuid.uuid4()
    when = dt.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
    result = to_batch(
        {"_id": oid, "i": 1, "l": Int64(2 ** 40), "f": 1.5, "s": "héllo ✓", "t": when,
         "d": Decimal128("12.345"), "b": b"\x00\xff", "u": u, "ok": True, "n": None},
        {"_id": ObjectId(), "i": 2, "l": Int64(3), "f": 2, "s": None, "t": None, "d": Decimal128("-1.5"),
         "b": Binary(b"x", 128), "u": None, "ok": False, "n": None},
    )
    assert result.bad == {}
    schema = result.batch.schema
    assert schema.field("_id").type == pa.string()
    assert schema.field("_id").metadata == {conv.BSON_META: conv.OBJECT_ID}
    assert schema.field("i").type == pa.int64() and schema.field("l").type == pa.int64()
    assert schema.field("f").type == pa.float64()  # int and double in one field: double
    assert schema.field("t").type == pa.timestamp("us", "UTC")
    assert schema.field("d").type == pa.decimal128(38, 3)
    assert schema.field("b").type == pa.binary()
    assert schema.field("u").type == pa.string()
    assert schema.field("ok").type == pa.bool_()
    assert schema.field("n").type == pa.null()
    row = result.batch.to_pylist()[0]
    assert row["_id"] == str(oid) and row["u"] == str(u) and row["s"] == "héllo ✓"
    assert row["t"] == when
    assert row["d"] == decimal.Decimal("12.345")
    assert result.batch.to_pylist()[1]["b"] == b"x"


def test_non_finite_or_too_wide_decimals_become_text():
    result = to_batch({"d": Decimal128("NaN")}, {"d": Decimal128("1.5")})
    assert result.batch.schema.field("d").type == pa.string()
    assert result.batch.column("d").to_pylist() == ["NaN", "1.5"]
    wide = to_batch({"d": Decimal128("1E+30")}, {"d": Decimal128("0.0000000001")})
    assert wide.batch.schema.field("d").type == pa.string()


def test_conflicting_kinds_fall_back_to_json_text():
    result = to_batch({"v": 1, "w": {"a": 1}}, {"v": "one", "w": 5}, {"v": None, "w": None})
    assert result.batch.schema.field("v").metadata == {conv.BSON_META: conv.JSON_TEXT}
    assert result.batch.column("v").to_pylist() == ["1", '"one"', None]
    assert result.batch.column("w").to_pylist() == ['{"a":1}', "5", None]


def test_nested_struct_mode_unifies_keys_and_falls_back_at_the_conflict_only():
    result = to_batch(
        {"sub": {"a": 1, "b": {"c": "x"}, "tags": ["p", "q"]}},
        {"sub": {"a": 2, "z": [{"q": 1}], "b": {"c": 3}}},
    )
    t = result.batch.schema.field("sub").type
    assert t.field("a").type == pa.int64()
    assert t.field("tags").type == pa.list_(pa.string())
    assert t.field("z").type == pa.list_(pa.struct([("q", pa.int64())]))
    assert t.field("b").type == pa.struct([("c", pa.string())])  # "x" vs 3: JSON text inside the struct
    rows = result.batch.column("sub").to_pylist()
    assert rows[0]["b"] == {"c": '"x"'} and rows[1]["b"] == {"c": "3"}
    assert rows[1]["tags"] is None and rows[0]["z"] is None


def test_arrays_of_mixed_items_become_one_json_text():
    result = to_batch({"a": [1, "x", {"k": 1}]}, {"a": [2]})
    assert result.batch.schema.field("a").type == pa.string()
    assert result.batch.column("a").to_pylist() == ['[1,"x",{"k":1}]', "[2]"]


def test_nested_json_mode():
    when = dt.datetime(2024, 1, 2, tzinfo=UTC)
    result = to_batch({"sub": {"a": 1, "at": when, "id": ObjectId("65a1b2c3d4e5f6a7b8c9d0e1")}, "arr": [1, 2],
                       "x": 5}, nested="json")
    schema = result.batch.schema
    assert schema.field("sub").type == pa.string() and schema.field("arr").type == pa.string()
    assert schema.field("x").type == pa.int64()
    assert json.loads(result.batch.column("sub")[0].as_py()) == {
        "a": 1, "at": "2024-01-02T00:00:00+00:00", "id": "65a1b2c3d4e5f6a7b8c9d0e1"}


def test_empty_sub_documents_and_other_bson_types_are_text():
    result = to_batch({"e": {}, "r": Regex("^a", "i")})
    assert result.batch.column("e").to_pylist() == ["{}"]
    assert json.loads(result.batch.column("r")[0].as_py()) == {"$regularExpression": {"pattern": "^a",
                                                                                       "options": "i"}}


def test_out_of_range_date_leaves_only_its_document():
    docs = decoded({"_id": 1, "t": DatetimeMS(2 ** 62)}, {"_id": 2, "t": DatetimeMS(1_700_000_000_000)},
                   {"_id": 3, "t": dt.datetime(2024, 1, 1, tzinfo=UTC)})
    result = conv.documents_to_batch(docs)
    assert list(result.bad) == [0] and "outside the timestamp[us] range" in result.bad[0]
    assert result.kept == [1, 2]
    assert result.batch.column("_id").to_pylist() == [2, 3]
    assert result.batch.column("t").to_pylist()[0] == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


def test_invalid_utf8_fails_decode_but_lenient_decode_keeps_the_record():
    raw = bytearray(bson.encode({"_id": 7, "s": "abc"}))
    raw[raw.index(b"abc")] = 0xFF
    with pytest.raises(bson.errors.InvalidBSON):
        conv.decode(bytes(raw))
    assert conv.decode_lenient(bytes(raw)) == {"_id": 7, "s": "\\xffbc"}


# ----------------------------------------------------------------------------- Arrow -> BSON


def write_docs(batch: pa.RecordBatch, **hints) -> tuple[list, dict]:
    return conv.batch_to_documents(batch, conv.hints_for(batch.schema, hints.get("object_id_fields"),
                                                         hints.get("json_fields"), hints.get("omit_nulls", False),
                                                         hints.get("decimals", "decimal128")))


def test_arrow_types_become_bson_values():
    batch = pa.RecordBatch.from_pylist([{
        "dec": decimal.Decimal("1.50"), "day": dt.date(2024, 2, 3), "clock": dt.time(1, 2, 3),
        "ns": 1_700_000_000_123_456_789, "m": [("a", 1)], "s": {"x": decimal.Decimal("2.5"), "d": dt.date(2024, 1, 1)},
        "l": [1, 2], "b": b"\x01", "big": 2 ** 63 - 1,
    }], schema=pa.schema([
        ("dec", pa.decimal128(10, 2)), ("day", pa.date32()), ("clock", pa.time64("us")),
        ("ns", pa.timestamp("ns", "UTC")), ("m", pa.map_(pa.string(), pa.int64())),
        ("s", pa.struct([("x", pa.decimal128(5, 1)), ("d", pa.date32())])), ("l", pa.list_(pa.int64())),
        ("b", pa.large_binary()), ("big", pa.uint64()),
    ]))
    docs, bad = write_docs(batch)
    assert bad == {}
    doc = bson.decode(conv.encode(docs[0], 16 * 1024 * 1024).raw, codec_options=conv.WRITE_CODEC)
    assert doc["dec"] == Decimal128("1.50")
    assert doc["day"] == dt.datetime(2024, 2, 3, tzinfo=UTC)
    assert doc["clock"] == "01:02:03"
    assert doc["ns"] == dt.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)  # BSON keeps milliseconds
    assert doc["m"] == {"a": 1}
    assert doc["s"] == {"x": Decimal128("2.5"), "d": dt.datetime(2024, 1, 1, tzinfo=UTC)}
    assert doc["l"] == [1, 2] and doc["b"] == b"\x01"
    assert docs[0]["ns"] == dt.datetime(2023, 11, 14, 22, 13, 20, 123456)  # naive UTC before encoding


def test_rows_that_cannot_be_bson_are_reported():
    batch = pa.RecordBatch.from_pylist([{"u": 1, "oid": "65a1b2c3d4e5f6a7b8c9d0e1", "j": '{"a": [1]}'},
                                        {"u": 2 ** 63, "oid": "nope", "j": "not json"}],
                                       schema=pa.schema([("u", pa.uint64()), ("oid", pa.string()), ("j", pa.string())]))
    docs, bad = write_docs(batch, object_id_fields=["oid"], json_fields=["j"])
    assert docs[0] == {"u": 1, "oid": ObjectId("65a1b2c3d4e5f6a7b8c9d0e1"), "j": {"a": [1]}}
    assert docs[1] is None
    assert "64-bit" in bad[1] or "ObjectId" in bad[1] or "JSON" in bad[1]


def test_decimal_modes_and_omit_nulls():
    batch = pa.RecordBatch.from_pylist([{"d": decimal.Decimal("1.25"), "n": None}],
                                       schema=pa.schema([("d", pa.decimal128(5, 2)), ("n", pa.string())]))
    assert write_docs(batch, decimals="string")[0][0] == {"d": "1.25", "n": None}
    assert write_docs(batch, decimals="double", omit_nulls=True)[0][0] == {"d": 1.25}


def test_reader_metadata_drives_writer_hints():
    result = to_batch({"_id": ObjectId(), "v": 1, "sub": {"a": [1]}}, {"_id": ObjectId(), "v": "x", "sub": {}},
                      nested="json")
    hints = conv.hints_for(result.batch.schema, None, None, False)
    assert hints.object_id_fields == {"_id"} and hints.json_fields == {"v", "sub"}
    docs, bad = conv.batch_to_documents(result.batch, hints)
    assert bad == {} and isinstance(docs[0]["_id"], ObjectId)
    assert docs[0]["sub"] == {"a": [1]} and docs[1]["v"] == "x" and docs[1]["sub"] == {}


def test_round_trip_documents_arrow_documents():
    original = {"_id": ObjectId(), "at": dt.datetime(2024, 3, 4, 5, 6, 7, 891000, tzinfo=UTC),
                "price": Decimal128("19.99"), "raw": b"\x00\x01\xfe", "tags": ["a", "b"], "n": None,
                "sub": {"city": "Zürich", "geo": {"lat": 47.37, "lon": 8.54}}, "count": 3}
    result = to_batch(original)
    docs, bad = conv.batch_to_documents(result.batch, conv.hints_for(result.batch.schema, None, None, False))
    assert bad == {}
    back = bson.decode(conv.encode(docs[0], 16 * 1024 * 1024).raw, codec_options=conv.WRITE_CODEC)
    assert back == original


def test_fast_python_conversion_matches_to_pylist_on_slices():
    rows = [{"t": dt.datetime(2024, 1, 1, tzinfo=UTC) + dt.timedelta(seconds=i),
             "s": None if i % 4 == 0 else {"a": i, "tags": ["x"] * (i % 3), "in": {"k": str(i)}},
             "l": None if i % 5 == 0 else [{"x": i}, None]} for i in range(50)]
    batch = pa.RecordBatch.from_pylist(rows)
    for part in (batch, batch.slice(7, 20), batch.slice(45)):
        for name in part.schema.names:
            fast = conv._to_python(part.column(name))
            if name == "t":
                fast = [v.replace(tzinfo=UTC) for v in fast]
            assert fast == part.column(name).to_pylist(), name


def test_gc_pause_nests_and_restores():
    import gc

    assert gc.isenabled()
    with conv.gc_paused():
        with conv.gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_oversized_document_is_a_bad_value():
    with pytest.raises(conv.BadValue, match="limit"):
        conv.encode({"s": "x" * 2000}, 1000)
    with pytest.raises(conv.BadValue, match="cannot encode"):
        conv.encode({"v": object()}, 1000)


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"uri": "postgres://x"}, "uri: expected mongodb://"),
    ({"database": "a/b"}, "database:"),
    ({"collection": "system.users"}, "collection:"),
    ({"num_partitions": 0}, "num_partitions"),
    ({"nested": "structs"}, "did you mean 'struct'"),
    ({"partition_method": "bucket"}, "partition_method"),
    ({"filter": {"a": 1}, "pipeline": [{"$match": {}}]}, "either pipeline, or filter"),
    ({"pipeline": [{"$out": "x"}]}, r"\$out writes"),
    ({"pipeline": [{"$group": {"_id": "$a"}}], "num_partitions": 2}, r"combine documents"),
    ({"pipeline": [{"$match": {}, "$project": {}}]}, "one \\$-operator key"),
    ({"projection": []}, "projection"),
    ({"filter": "status = 1"}, "filter: expected a query mapping"),
    ({"timeout_s": 0}, "timeout_s"),
])
def test_read_options_are_checked_at_construction(kwargs, message):
    base = {"uri": URI, "database": "db", "collection": "c"}
    with pytest.raises(ValueError, match=message):
        ReadFromMongoDB(**{**base, **kwargs})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mode": "merge"}, "mode"),
    ({"mode": "insert", "key": ["a"]}, "does not match on a key"),
    ({"mode": "upsert", "key": []}, "key: expected a non-empty list"),
    ({"decimals": "float"}, "decimals"),
    ({"max_retries": -1}, "max_retries"),
    ({"retry_backoff_s": "x"}, "retry_backoff_s"),
])
def test_write_options_are_checked_at_construction(kwargs, message):
    base = {"uri": URI, "database": "db", "collection": "c"}
    with pytest.raises(ValueError, match=message):
        WriteToMongoDB(**{**base, **kwargs})


def test_configs_reject_unknown_keys_and_parse_extended_json():
    with pytest.raises(ValidationError, match="colection"):
        ReadFromMongoDBConfig(uri=URI, database="db", collection="c", colection="x")
    with pytest.raises(ValidationError, match="mode"):
        WriteToMongoDBConfig(uri=URI, database="db", collection="c", mode="merge")
    read = ReadFromMongoDB(uri=URI, database="db", collection="c",
                           filter={"_id": {"$oid": "65a1b2c3d4e5f6a7b8c9d0e1"},
                                   "at": {"$gte": {"$date": "2024-01-01T00:00:00Z"}}})
    query = read._opts.filter
    assert query["_id"] == ObjectId("65a1b2c3d4e5f6a7b8c9d0e1")
    assert query["at"]["$gte"] == dt.datetime(2024, 1, 1, tzinfo=UTC)
    assert ReadFromMongoDB(uri=URI, database="db", collection="c", projection=["a", "b"])._opts.projection == {
        "a": 1, "b": 1}
    assert registry.lookup("ReadFromMongoDB").kind == "source"
    assert registry.lookup("WriteToMongoDB").kind == "sink"


def test_display_data_hides_the_password_and_registered_secrets():
    register_secret("hunter2-secret")
    uri = "mongodb://app:hunter2-secret@db.example:27017/?authSource=admin"
    for transform in (ReadFromMongoDB(uri=uri, database="db", collection="c", filter={"k": "hunter2-secret"}),
                      WriteToMongoDB(uri=uri, database="db", collection="c", mode="upsert", key=["k"])):
        shown = json.dumps(transform.display_data())
        assert "hunter2" not in shown and "app:***@db.example" in shown
    assert mc.redact_uri("mongodb://u:p%40ss@h/") == "mongodb://u:***@h/"
    assert mc.redact_uri("mongodb+srv://h/?password=x&w=1") == "mongodb+srv://h/?password=***&w=1"


# ----------------------------------------------------------------------------- planning helpers


def test_ranges_cover_everything_without_overlap():
    ranges = mc.ranges_from_bounds([10, 20])
    assert [r.query() for r in ranges] == [{"_id": {"$lt": 10}}, {"_id": {"$gte": 10, "$lt": 20}},
                                           {"_id": {"$gte": 20}}]
    assert mc.ranges_from_bounds([]) == [mc.ReadRange(0, 1)]
    assert _range_query({"a": 1}, ranges[1]) == {"a": 1, "_id": {"$gte": 10, "$lt": 20}}
    assert _range_query({"_id": {"$ne": 5}}, ranges[0]) == {"$and": [{"_id": {"$ne": 5}}, {"_id": {"$lt": 10}}]}
    assert _range_query(None, mc.ReadRange(0, 1)) == {}


def test_interpolation_of_ids():
    lo, hi = ObjectId("000000000000000000000000"), ObjectId("0000000000000000000000ff")
    assert [str(b)[-2:] for b in mc.interpolate(lo, hi, 4)] == ["3f", "7f", "bf"]
    assert mc.interpolate(0, 100, 4) == [25, 50, 75]
    start = dt.datetime(2024, 1, 1, tzinfo=UTC)
    assert mc.interpolate(start, start + dt.timedelta(days=2), 2) == [start + dt.timedelta(days=1)]
    with pytest.raises(TypeError):
        mc.interpolate("a", "z", 2)
    assert mc.id_type_class(1) == mc.id_type_class(2.5) == mc.id_type_class(Int64(3))
    assert mc.id_type_class(True) != mc.id_type_class(1)


def test_transient_error_classification():
    from pymongo import errors

    assert mc.is_transient(errors.AutoReconnect("x"))
    assert mc.is_transient(errors.NetworkTimeout("x"))
    assert mc.is_transient(errors.OperationFailure("primary stepped down", code=189))
    assert not mc.is_transient(errors.OperationFailure("auth failed", code=18))
    assert not mc.is_transient(errors.BulkWriteError({"writeErrors": []}))
