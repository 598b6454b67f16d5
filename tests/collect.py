"""Collects a pipeline's output elements into files, so tests can read them after the run."""

from __future__ import annotations

import json
import os
import uuid

import pyarrow as pa


def write_element(element, directory: str) -> None:
    """Stores one output element in ``directory`` (one file each; works from any worker)."""
    path = os.path.join(directory, uuid.uuid4().hex)
    if isinstance(element, pa.RecordBatch):
        with pa.OSFile(path + ".arrow", "wb") as sink, pa.ipc.new_file(sink, element.schema) as writer:
            writer.write_batch(element)
    else:
        with open(path + ".json", "w") as f:
            json.dump(element, f)


def read_elements(directory: str) -> tuple[pa.Table | None, list]:
    """Returns the batches (concatenated) and the other elements stored in ``directory``."""
    files = sorted(os.listdir(directory))
    tables = [pa.ipc.open_file(os.path.join(directory, f)).read_all() for f in files if f.endswith(".arrow")]
    others = []
    for f in files:
        if f.endswith(".json"):
            with open(os.path.join(directory, f)) as fh:
                others.append(json.load(fh))
    return (pa.concat_tables(tables, promote_options="permissive") if tables else None), others


def write_json_element(element, directory: str, ts=None) -> None:
    """Stores one element as JSON (a batch as ``{"rows": [...]}``, plus ``"ts"`` seconds when given)."""
    if isinstance(element, pa.RecordBatch):
        element = {"rows": element.to_pylist()}
        if ts is not None:
            element["ts"] = ts.micros / 1e6
    with open(os.path.join(directory, uuid.uuid4().hex + ".json"), "w") as f:
        json.dump(element, f, default=str)


def read_json_elements(directory: str) -> list:
    """Every element ``write_json_element`` stored in ``directory``."""
    out = []
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name)) as f:
            out.append(json.load(f))
    return out
