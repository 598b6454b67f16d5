"""Incremental MongoDB reads (FerretDB from scripts/services.sh): only new and updated documents."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pymongo
import pytest

from beam_etl.ops.state import open_store
from beam_etl.run import EXIT_OK, run_template

pytestmark = pytest.mark.integration
T0 = dt.datetime(2024, 6, 1, 9, 0, tzinfo=dt.UTC)


def test_mongodb_cursor_reads_new_and_updated_documents(mongo_uri, tmp_path, monkeypatch):
    collection = f"inc_{uuid.uuid4().hex[:8]}"
    client = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    coll = client["beam_etl_test"][collection]
    coll.insert_many([{"_id": i, "name": f"n{i}", "updated_at": T0 + dt.timedelta(minutes=i)} for i in range(1, 4)])
    monkeypatch.setenv("MONGO_URI", mongo_uri)
    template = tmp_path / "mongo_incremental.yaml"
    template.write_text(f"""
name: mongo_incremental
sources:
  - name: docs
    type: ReadFromMongoDB
    config:
      uri: "${{MONGO_URI}}"
      database: beam_etl_test
      collection: {collection}
      num_partitions: 2
      incremental: {{cursor_field: updated_at, primary_key: [_id]}}
sinks:
  - name: out
    type: WriteToJsonl
    input: docs
    config: {{path: "{{{{ run_dir }}}}/docs", num_shards: 1}}
""")
    out = tmp_path / "out"

    def run(run_id: str) -> list[str]:
        assert run_template(str(template), [], ["--runner=DirectRunner"], output_dir=str(out), run_id=run_id,
                            quiet=True) == EXIT_OK
        rows = [json.loads(line) for p in (out / run_id).glob("docs*.jsonl") for line in p.read_text().splitlines()]
        return sorted(r["name"] for r in rows)

    try:
        assert run("r1") == ["n1", "n2", "n3"]
        assert run("r2") == ["n3"]  # closed start: the document equal to the saved cursor
        coll.update_one({"_id": 1}, {"$set": {"name": "N1", "updated_at": T0 + dt.timedelta(hours=2)}})
        coll.insert_one({"_id": 4, "name": "n4", "updated_at": T0 + dt.timedelta(hours=1)})
        assert run("r3") == ["N1", "n3", "n4"]
        saved = open_store(str(out / "beam_etl_state.sqlite")).get("mongo_incremental", "docs")
        assert saved.value == T0 + dt.timedelta(hours=2)
    finally:
        coll.drop()
        client.close()
