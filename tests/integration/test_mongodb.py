"""MongoDB connectors against a real MongoDB-protocol server (FerretDB v1, scripts/services.sh up ferretdb).

FerretDB v1 does not store Decimal128 or NaN (it drops the connection), rejects nested arrays,
Infinity and keys with '.' or '$', and lacks $sample, $bucketAuto, $lookup, $replaceRoot and
splitVector; the tests below stay inside what it supports and say so where it matters.
"""

from __future__ import annotations

import datetime as dt
import decimal
import socket
import threading
import uuid
from collections.abc import Iterator

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline
from bson import Binary, ObjectId
from bson.datetime_ms import DatetimeMS
from pymongo import MongoClient

from beam_etl.io import _mongo_client as mc
from beam_etl.io.mongodb import ReadFromMongoDB, WriteToMongoDB
from beam_etl.ops.metrics import summarise
from tests.collect import read_elements, write_element

UTC = dt.UTC
pytestmark = pytest.mark.integration


@pytest.fixture
def mongo(mongo_uri) -> Iterator[tuple[str, str, MongoClient]]:
    """(uri, database, client) with a fresh database, dropped afterwards."""
    database = f"beam_etl_t_{uuid.uuid4().hex[:10]}"
    client = MongoClient(mongo_uri, tz_aware=True, uuidRepresentation="standard")
    try:
        yield mongo_uri, database, client
    finally:
        client.drop_database(database)
        client.close()


def run(build, tmp_path) -> tuple[pa.Table | None, list, dict]:
    """Runs ``build(p) -> (batches, others)``; returns the collected batches, other elements and counters."""
    out_dir, other_dir = tmp_path / f"out-{uuid.uuid4().hex[:6]}", tmp_path / f"other-{uuid.uuid4().hex[:6]}"
    out_dir.mkdir()
    other_dir.mkdir()
    p = BeamPipeline()
    batches, others = build(p)
    if batches is not None:
        _ = batches | "CollectBatches" >> beam.Map(write_element, str(out_dir))
    if others is not None:
        _ = others | "CollectOthers" >> beam.Map(write_element, str(other_dir))
    result = p.run()
    result.wait_until_finish()
    table, _ = read_elements(str(out_dir))
    _, letters = read_elements(str(other_dir))
    return table, letters, summarise(result)


def read_all(tmp_path, uri: str, database: str, collection: str, **options) -> tuple[pa.Table | None, list, dict]:
    def build(p):
        return p | ReadFromMongoDB(uri=uri, database=database, collection=collection, **options)
    return run(build, tmp_path)


def rows(table: pa.Table | None, key: str = "_id") -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: str(r[key])) if table is not None else []


def seed(client: MongoClient, database: str, collection: str, n: int) -> list[dict]:
    docs = [{"_id": ObjectId(), "n": i, "kind": ["a", "b", "c"][i % 3], "name": f"doc {i}",
             "sub": {"x": i, "tags": [f"t{i % 2}"]}} for i in range(n)]
    client[database][collection].insert_many(docs)
    return docs


# ----------------------------------------------------------------------------- reading


def test_read_with_filter_and_projection(mongo, tmp_path):
    uri, db, client = mongo
    docs = seed(client, db, "items", 30)
    table, dead, counts = read_all(tmp_path, uri, db, "items", filter={"kind": "b"}, projection=["n", "name"])
    assert dead == []
    assert table.schema.names == ["_id", "n", "name"]
    assert table.schema.field("_id").metadata == {b"beam_etl.bson": b"objectId"}
    want = sorted(({"_id": str(d["_id"]), "n": d["n"], "name": d["name"]} for d in docs if d["kind"] == "b"),
                  key=lambda r: r["_id"])
    assert rows(table) == want
    assert counts["ReadFromMongoDB"]["records_out"] == 10

    table, _, _ = read_all(tmp_path, uri, db, "items", filter={"n": {"$gte": 25}}, projection={"n": 1, "_id": 0})
    assert table.schema.names == ["n"] and sorted(table.column("n").to_pylist()) == [25, 26, 27, 28, 29]


def test_read_with_extended_json_filter(mongo, tmp_path):
    uri, db, client = mongo
    docs = seed(client, db, "items", 10)
    table, _, _ = read_all(tmp_path, uri, db, "items", filter={"_id": {"$oid": str(docs[3]["_id"])}})
    assert table.column("n").to_pylist() == [3]


def test_read_with_an_aggregation_pipeline(mongo, tmp_path):
    uri, db, client = mongo
    seed(client, db, "items", 30)
    table, dead, _ = read_all(tmp_path, uri, db, "items", pipeline=[
        {"$match": {"kind": {"$in": ["a", "c"]}}}, {"$group": {"_id": "$kind", "total": {"$sum": "$n"}}},
        {"$sort": {"_id": 1}}])
    assert dead == []
    assert rows(table) == [{"_id": "a", "total": sum(range(0, 30, 3))}, {"_id": "c", "total": sum(range(2, 30, 3))}]

    # per-document stages may run on each _id range (FerretDB v1 evaluates $sum in $set, but not
    # $multiply, and takes "$field" paths in $addFields/$project as literal text)
    table, _, _ = read_all(tmp_path, uri, db, "items", num_partitions=3, pipeline=[
        {"$match": {"n": {"$lt": 12}}}, {"$set": {"plus_one": {"$sum": ["$n", 1]}}}, {"$unset": "sub"},
        {"$project": {"n": 1, "plus_one": 1}}])
    assert table.schema.names == ["_id", "n", "plus_one"]
    assert sorted((r["n"], r["plus_one"]) for r in table.to_pylist()) == [(i, i + 1) for i in range(12)]


@pytest.mark.parametrize("method", ["paginate", "minmax"])
def test_partitioned_read_equals_a_plain_read(mongo, tmp_path, method):
    uri, db, client = mongo
    seed(client, db, "items", 500)
    client[db]["ints"].insert_many([{"_id": i * 7, "v": i} for i in range(300)])
    for collection in ("items", "ints"):
        ranges = mc.plan_ranges(client[db][collection], None, 4, method, _Log())
        assert len(ranges) == 4
        plain, _, _ = read_all(tmp_path, uri, db, collection)
        split, dead, counts = read_all(tmp_path, uri, db, collection, num_partitions=4, partition_method=method,
                                       batch_rows=64)
        assert dead == []
        assert rows(split) == rows(plain)
        assert counts["ReadFromMongoDB"]["batches_in"] >= 4
    filtered = mc.plan_ranges(client[db]["ints"], {"v": {"$lt": 100}}, 4, "paginate", _Log())
    assert filtered[-1].lower <= 99 * 7  # boundaries come from the matching documents only


def test_mixed_id_types_are_read_in_one_range(mongo, tmp_path):
    uri, db, client = mongo
    client[db]["mixed"].insert_many([{"_id": 1}, {"_id": "a"}, {"_id": ObjectId()}, {"_id": 2.5}])
    assert len(mc.plan_ranges(client[db]["mixed"], None, 3, "paginate", _Log())) == 1
    table, dead, _ = read_all(tmp_path, uri, db, "mixed", num_partitions=3)
    assert table.num_rows == 4 and dead == []
    assert table.schema.field("_id").type == pa.string()  # ids of several kinds: JSON text


def test_nested_documents_struct_and_json_modes(mongo, tmp_path):
    uri, db, client = mongo
    client[db]["nested"].insert_many([
        {"_id": 1, "address": {"city": "Paris", "geo": {"lat": 48.85, "lon": 2.35}}, "tags": ["x", "y"],
         "lines": [{"sku": "A", "qty": 2}]},
        {"_id": 2, "address": {"city": "Oslo", "zip": "0150"}, "tags": [], "lines": [{"sku": "B", "qty": 1.5}]},
        {"_id": 3, "address": None, "tags": ["z"], "lines": [{"sku": "C", "qty": "many"}]},
    ])
    table, dead, _ = read_all(tmp_path, uri, db, "nested")
    assert dead == []
    address = table.schema.field("address").type
    assert pa.types.is_struct(address) and address.field("geo").type == pa.struct([("lat", pa.float64()),
                                                                                   ("lon", pa.float64())])
    assert table.schema.field("tags").type == pa.list_(pa.string())
    qty = table.schema.field("lines").type.value_type.field("qty").type
    assert qty == pa.string()  # 2, 1.5 and "many": JSON text for that field only
    by_id = {r["_id"]: r for r in table.to_pylist()}
    assert by_id[2]["address"] == {"city": "Oslo", "geo": None, "zip": "0150"}
    assert [line["qty"] for line in by_id[3]["lines"]] == ['"many"']

    table, dead, _ = read_all(tmp_path, uri, db, "nested", nested="json")
    assert {f.name: f.type for f in table.schema} == {"_id": pa.int64(), "address": pa.string(),
                                                      "tags": pa.string(), "lines": pa.string()}
    by_id = {r["_id"]: r for r in table.to_pylist()}
    assert by_id[1]["address"] == '{"city":"Paris","geo":{"lat":48.85,"lon":2.35}}'
    assert by_id[3]["address"] is None and by_id[2]["tags"] == "[]"


def test_document_that_cannot_convert_goes_to_the_dlq(mongo, tmp_path):
    uri, db, client = mongo
    client[db]["dates"].insert_many([{"_id": "ok1", "at": dt.datetime(2024, 1, 1, tzinfo=UTC)},
                                     {"_id": "far", "at": DatetimeMS(2 ** 62)},  # beyond timestamp[us]
                                     {"_id": "ok2", "at": dt.datetime(2025, 1, 1, tzinfo=UTC)}])
    table, dead, counts = read_all(tmp_path, uri, db, "dates")
    assert sorted(table.column("_id").to_pylist()) == ["ok1", "ok2"]
    assert len(dead) == 1
    letter = dead[0]
    assert letter["error_type"] == "type" and letter["source"] == f"{db}.dates _id=far"
    assert "outside the timestamp[us] range" in letter["error"] and letter["record"]["_id"] == "far"
    assert counts["ReadFromMongoDB"]["records_failed"] == 1 and counts["ReadFromMongoDB"]["records_in"] == 3


def test_unreachable_server_fails_the_run_with_a_clear_message(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"mongodb://nobody:pw-9f8e7d@127.0.0.1:{port}/"
    with pytest.raises(Exception, match=rf"reading shop.orders at mongodb://nobody:\*\*\*@127.0.0.1:{port}/ "
                                        r"failed: ServerSelectionTimeoutError: .*Connection refused") as info:
        read_all(tmp_path, uri, "shop", "orders", timeout_s=0.5)
    assert "pw-9f8e7d" not in str(info.value)
    batch = pa.RecordBatch.from_pylist([{"a": 1}])
    with pytest.raises(Exception, match="cannot reach MongoDB at") as info:
        run(lambda p: (None, (p | beam.Create([batch])
                              | WriteToMongoDB(uri=uri, database="shop", collection="orders", timeout_s=0.5))[1]),
            tmp_path)
    assert "pw-9f8e7d" not in str(info.value)


# ----------------------------------------------------------------------------- writing


def people(n: int, start: int = 0, suffix: str = "") -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([{"email": f"p{i}@x.org", "name": f"person {i}{suffix}", "age": 20 + i % 50}
                                       for i in range(start, start + n)])


def write(tmp_path, batches: list[pa.RecordBatch], **options) -> tuple[list, dict]:
    def build(p):
        written, dead = p | beam.Create(batches) | WriteToMongoDB(**options)
        return None, dead
    _, dead, counts = run(build, tmp_path)
    return dead, counts["WriteToMongoDB"]


def test_insert_then_upsert_twice_is_idempotent(mongo, tmp_path):
    uri, db, client = mongo
    coll = client[db]["people"]
    dead, counts = write(tmp_path, [people(40), people(40, 40)], uri=uri, database=db, collection="people")
    assert dead == [] and counts["records_out"] == 80 and coll.count_documents({}) == 80

    options = {"uri": uri, "database": db, "collection": "people", "mode": "upsert", "key": ["email"],
               "create_index": True}
    for _ in range(2):  # the same load twice: same collection
        dead, counts = write(tmp_path, [people(60, 50, " v2")], **options)
        assert dead == [] and counts["records_out"] == 60
        assert coll.count_documents({}) == 110
    assert coll.find_one({"email": "p55@x.org"}, {"_id": 0}) == {"email": "p55@x.org", "name": "person 55 v2",
                                                                 "age": 25}
    assert coll.find_one({"email": "p10@x.org"})["name"] == "person 10"
    assert any(ix.get("unique") for ix in coll.index_information().values())


def test_replace_mode_replaces_whole_documents(mongo, tmp_path):
    uri, db, client = mongo
    coll = client[db]["things"]
    coll.insert_many([{"_id": 1, "a": 1, "old": True}, {"_id": 2, "a": 2, "old": True}])
    batch = pa.RecordBatch.from_pylist([{"_id": 1, "a": 10}, {"_id": 3, "a": 30}])
    for _ in range(2):
        dead, counts = write(tmp_path, [batch], uri=uri, database=db, collection="things", mode="replace")
        assert dead == [] and counts["records_out"] == 2
    assert list(coll.find().sort("_id", 1)) == [{"_id": 1, "a": 10}, {"_id": 2, "a": 2, "old": True},
                                                 {"_id": 3, "a": 30}]
    # upsert keeps the fields the row does not carry
    write(tmp_path, [pa.RecordBatch.from_pylist([{"_id": 2, "a": 20}])], uri=uri, database=db, collection="things",
          mode="upsert")
    assert coll.find_one({"_id": 2}) == {"_id": 2, "a": 20, "old": True}


def test_per_document_errors_go_to_the_dlq_and_the_rest_is_written(mongo, tmp_path):
    uri, db, client = mongo
    coll = client[db]["orders"]
    coll.insert_many([{"_id": 2, "item": "existing"}, {"_id": 5, "item": "existing"}])
    batch = pa.RecordBatch.from_pylist([{"_id": i, "item": f"new {i}"} for i in range(8)])
    dead, counts = write(tmp_path, [batch], uri=uri, database=db, collection="orders")
    assert sorted(d["record"]["_id"] for d in dead) == [2, 5]
    letter = min(dead, key=lambda d: d["record"]["_id"])
    assert letter["error_type"] == "constraint" and "E11000" in letter["error"] and "(code 11000)" in letter["error"]
    assert letter["source"] == f"{db}.orders _id=2" and letter["record"] == {"_id": 2, "item": "new 2"}
    assert counts["records_out"] == 6 and counts["records_failed"] == 2
    assert coll.count_documents({}) == 8 and coll.find_one({"_id": 2})["item"] == "existing"

    # a document the server refuses (FerretDB v1: nested arrays) and one BSON cannot hold (uint64 > 2**63-1)
    bad = pa.RecordBatch.from_pylist(
        [{"_id": 100, "m": [[1, 2]], "u": 1}, {"_id": 101, "m": [[3]], "u": 2 ** 63}, {"_id": 102, "m": [], "u": 3}],
        schema=pa.schema([("_id", pa.int64()), ("m", pa.list_(pa.list_(pa.int64()))), ("u", pa.uint64())]))
    dead, counts = write(tmp_path, [bad], uri=uri, database=db, collection="orders")
    kinds = {d["record"]["_id"]: d["error_type"] for d in dead}
    assert kinds[101] == "type"
    assert 102 not in kinds and coll.find_one({"_id": 102}) == {"_id": 102, "m": [], "u": 3}
    if 100 in kinds:  # FerretDB v1 refuses nested arrays; MongoDB stores them
        assert kinds[100] == "validation"
    else:
        assert coll.find_one({"_id": 100})["m"] == [[1, 2]]


def test_types_round_trip_through_arrow(mongo, tmp_path):
    uri, db, client = mongo
    src, dst = client[db]["src"], client[db]["dst"]
    oid = ObjectId()
    original = {
        "_id": oid, "at": dt.datetime(2024, 2, 29, 23, 59, 58, 123000, tzinfo=UTC), "raw": b"\x00\x01\xfe\xff",
        "uuid_text": str(uuid.UUID(int=5)), "tags": ["α", "β", "日本"], "nested": {"a": {"b": [1, 2, 3]}, "t": "✓"},
        "none": None, "unicode": "Zürich — ✓ 🚀", "count": 2 ** 40, "ratio": 0.25, "flag": True,
        "people": [{"name": "Ann", "age": 31}, {"name": "Bo", "age": None}],
        "price": "19.99",  # FerretDB v1 cannot store Decimal128: the decimal travels as text (decimals: string)
    }
    src.insert_one(original)
    src.insert_one({"_id": ObjectId(), "raw": Binary(b"\x07", 0)})

    def build(p):
        batches, _ = p | ReadFromMongoDB(uri=uri, database=db, collection="src")
        typed = batches | beam.Map(_price_as_decimal)
        written, dead = typed | WriteToMongoDB(uri=uri, database=db, collection="dst", omit_nulls=True,
                                              decimals="string")
        return typed, dead

    table, dead, _ = run(build, tmp_path)
    assert dead == []
    row = next(r for r in table.to_pylist() if r["_id"] == str(oid))
    assert table.schema.field("at").type == pa.timestamp("us", "UTC") and row["at"] == original["at"]
    assert table.schema.field("raw").type == pa.binary() and row["raw"] == original["raw"]
    assert table.schema.field("price").type == pa.decimal128(38, 2)
    assert row["nested"] == {"a": {"b": [1, 2, 3]}, "t": "✓"} and row["none"] is None
    back = dst.find_one({"_id": oid})
    assert isinstance(back["_id"], ObjectId)  # the reader's objectId field metadata drives the writer
    # omit_nulls leaves out top-level nulls only; Bo's null age inside the array stays
    assert back == {k: v for k, v in original.items() if k != "none"}


def _price_as_decimal(batch: pa.RecordBatch) -> pa.RecordBatch:
    i = batch.schema.get_field_index("price")
    if i < 0:
        return batch
    values = [None if v is None else decimal.Decimal(v) for v in batch.column(i).to_pylist()]
    return batch.set_column(i, "price", pa.array(values, pa.decimal128(38, 2)))


class _Log:
    def warning(self, *args) -> None:
        pass


# ----------------------------------------------------------------------------- transient errors


class FlakyProxy:
    """A TCP proxy to the server that breaks the first connection carrying an ``insert`` command.

    ``after_forward=False`` closes it before the command reaches the server (nothing written);
    ``True`` forwards the command and closes before the reply (written, never acknowledged).
    """

    def __init__(self, target_host: str, target_port: int, after_forward: bool) -> None:
        self.target = (target_host, target_port)
        self.after_forward = after_forward
        self.tripped = threading.Event()
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                trip = from_client and b"insert\x00" in data and not self.tripped.is_set()
                if trip and not self.after_forward:
                    self.tripped.set()
                    break
                dst.sendall(data)
                if trip:
                    self.tripped.set()
                    src.recv(0)
                    break
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self.server.close()


@pytest.mark.parametrize("after_forward", [False, True], ids=["dropped-before-write", "dropped-after-write"])
def test_transient_network_errors_are_retried(mongo, tmp_path, after_forward):
    uri, db, client = mongo
    host, port = uri.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    proxy = FlakyProxy(host, int(port), after_forward)
    try:
        flaky_uri = f"mongodb://127.0.0.1:{proxy.port}/?retryWrites=false&directConnection=true"
        dead, counts = write(tmp_path, [people(25)], uri=flaky_uri, database=db, collection="people",
                             retry_backoff_s=0.05)
    finally:
        proxy.close()
    assert proxy.tripped.is_set()
    assert dead == []
    assert counts["records_out"] == 25
    assert client[db]["people"].count_documents({}) == 25
