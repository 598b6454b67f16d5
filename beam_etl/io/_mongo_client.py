"""MongoDB plumbing shared by the connectors: option checks, clients, errors, read planning."""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from bson import json_util
from bson.objectid import ObjectId
from pymongo import MongoClient
from pymongo import errors as mongo_errors

from beam_etl.ops.secrets import REDACTED, redact

NESTED_MODES = ("struct", "json")
WRITE_MODES = ("insert", "upsert", "replace")
PARTITION_METHODS = ("paginate", "minmax")
DECIMAL_MODES = ("decimal128", "string", "double")
#: aggregation stages that act on one document at a time, so a pipeline made of them can be
#: run on each _id range separately and give the same documents as one run on everything.
PER_DOCUMENT_STAGES = frozenset({
    "$match", "$project", "$addFields", "$set", "$unset", "$replaceRoot", "$replaceWith", "$unwind",
    "$lookup", "$redact",
})
FORBIDDEN_STAGES = frozenset({"$out", "$merge"})
#: server error codes worth retrying (network, elections, shutdown, throttling).
TRANSIENT_CODES = frozenset({6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 63, 150, 234})
DUPLICATE_KEY_CODES = frozenset({11000, 11001, 12582})
_URI_RE = re.compile(r"^mongodb(\+srv)?://", re.IGNORECASE)
_DB_FORBIDDEN = set('/\\. "$*<>:|?\x00')
_JSON_OPTIONS = json_util.JSONOptions(tz_aware=True, tzinfo=dt.UTC, uuid_representation=4)


# ----------------------------------------------------------------------------- options


def redact_uri(uri: str) -> str:
    """The URI with its password (and any registered secret) replaced by ``***``."""
    text = str(uri)
    match = re.match(r"^(mongodb(?:\+srv)?://)([^@/]*)@", text, re.IGNORECASE)
    if match and ":" in match.group(2):
        user = match.group(2).split(":", 1)[0]
        text = f"{match.group(1)}{user}:{REDACTED}@{text[match.end():]}"
    text = re.sub(r"(?i)((?:password|secret|token)[^=&]*=)[^&]*", rf"\1{REDACTED}", text)
    return redact(text)


def check_uri(uri: Any) -> None:
    if not isinstance(uri, str) or not _URI_RE.match(uri.strip()):
        shown = redact_uri(uri) if isinstance(uri, str) else repr(uri)
        raise ValueError(f"uri: expected mongodb://host:port/ or mongodb+srv://... (usually \"${{MONGO_URI}}\"), "
                         f"got {shown!r}")


def check_names(database: Any, collection: Any) -> None:
    if not isinstance(database, str) or not database or set(database) & _DB_FORBIDDEN or len(database) > 63:
        raise ValueError(f"database: {database!r} is not a valid MongoDB database name (1-63 characters, none of "
                         f"{''.join(sorted(_DB_FORBIDDEN - {chr(0)}))!r})")
    if (not isinstance(collection, str) or not collection or "\x00" in collection or "$" in collection
            or collection.startswith("system.")):
        raise ValueError(f"collection: {collection!r} is not a valid collection name (non-empty, no '$', "
                         "not system.*)")


def check_positive(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field}: expected a whole number >= 1, got {value!r}")


def check_choice(field: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        hint = difflib.get_close_matches(str(value), allowed, n=1)
        raise ValueError(f"{field}: {value!r} is not one of {list(allowed)}"
                         + (f"; did you mean {hint[0]!r}?" if hint else ""))


def extended_json(field: str, value: Any) -> Any:
    """Parses MongoDB Extended JSON in a filter or pipeline ({"$oid": ...}, {"$date": ...}) to BSON values."""
    try:
        return json_util.loads(json.dumps(value, default=_plain), json_options=_JSON_OPTIONS)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{field}: not valid MongoDB Extended JSON: {err}") from err


def _plain(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        stamp = value if isinstance(value, dt.datetime) else dt.datetime(value.year, value.month, value.day)
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.UTC)
        return {"$date": stamp.isoformat()}
    if isinstance(value, ObjectId):
        return {"$oid": str(value)}
    raise TypeError(f"{type(value).__name__} is not JSON")


def check_pipeline(pipeline: Any, num_partitions: int) -> list[dict[str, Any]]:
    if not isinstance(pipeline, list) or not pipeline:
        raise ValueError(f"pipeline: expected a non-empty list of stages like {{$match: {{...}}}}, got {pipeline!r}")
    stages = []
    for i, stage in enumerate(pipeline):
        if not isinstance(stage, dict) or len(stage) != 1 or not str(next(iter(stage))).startswith("$"):
            raise ValueError(f"pipeline[{i}]: a stage is a mapping with one $-operator key, got {stage!r}")
        name = next(iter(stage))
        if name in FORBIDDEN_STAGES:
            raise ValueError(f"pipeline[{i}]: {name} writes to the database; a read cannot use it "
                             "(use WriteToMongoDB as the sink instead)")
        stages.append(name)
    if num_partitions > 1:
        whole = [s for s in stages if s not in PER_DOCUMENT_STAGES]
        if whole:
            raise ValueError(
                f"num_partitions: {num_partitions} splits the collection by _id and runs the pipeline on each "
                f"range, but stages {whole} combine documents across ranges; use num_partitions: 1, or "
                f"only per-document stages ({', '.join(sorted(PER_DOCUMENT_STAGES))})")
    return extended_json("pipeline", pipeline)


def projection_spec(projection: Any) -> dict[str, Any] | None:
    if projection is None:
        return None
    if isinstance(projection, list):
        if not projection or not all(isinstance(p, str) and p for p in projection):
            raise ValueError(f"projection: a list must name fields, got {projection!r}")
        return dict.fromkeys(projection, 1)
    if isinstance(projection, dict) and projection:
        return extended_json("projection", projection)
    raise ValueError(f"projection: expected a list of fields or a mapping like {{name: 1, _id: 0}}, "
                     f"got {projection!r}")


# ----------------------------------------------------------------------------- clients


def connect(uri: str, timeout_s: float) -> MongoClient:
    """A client with the connectors' settings: tz-aware UTC dates, standard UUIDs, bounded waits."""
    ms = int(timeout_s * 1000)
    return MongoClient(uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, tz_aware=True, tzinfo=dt.UTC,
                       uuidRepresentation="standard", appname="beam_etl")


def is_transient(err: BaseException) -> bool:
    """Network errors, elections, shutdowns and errors the server labels retryable."""
    if isinstance(err, mongo_errors.BulkWriteError):
        return False  # per-document errors are looked at one by one
    if isinstance(err, (mongo_errors.AutoReconnect, mongo_errors.WaitQueueTimeoutError)):
        return True
    if isinstance(err, mongo_errors.PyMongoError) and (
            err.has_error_label("RetryableWriteError") or err.has_error_label("TransientTransactionError")):
        return True
    return isinstance(err, mongo_errors.OperationFailure) and err.code in TRANSIENT_CODES


def describe(err: BaseException) -> str:
    """``Class: message`` (the server's errmsg and code, not pymongo's dump of the reply), secrets redacted."""
    details = getattr(err, "details", None)
    if isinstance(err, mongo_errors.OperationFailure) and isinstance(details, Mapping) and details.get("errmsg"):
        return redact(f"{type(err).__name__}: {details['errmsg']} (code {err.code})")
    text = str(err)
    if isinstance(err, mongo_errors.ServerSelectionTimeoutError):
        text = text.split(", Timeout:", 1)[0]  # the topology description after it repeats the cause
    return redact(f"{type(err).__name__}: {text}")


# ----------------------------------------------------------------------------- planning


@dataclasses.dataclass(frozen=True)
class ReadRange:
    """One partition of a read: ``lower <= _id < upper`` (None: unbounded)."""

    index: int
    count: int
    lower: Any = None
    upper: Any = None

    def query(self) -> dict[str, Any] | None:
        bounds: dict[str, Any] = {}
        if self.lower is not None:
            bounds["$gte"] = self.lower
        if self.upper is not None:
            bounds["$lt"] = self.upper
        return {"_id": bounds} if bounds else None

    def label(self) -> str:
        return "" if self.count == 1 else f" (range {self.index + 1} of {self.count})"


def ranges_from_bounds(bounds: Sequence[Any]) -> list[ReadRange]:
    """Ranges ``[None, b1), [b1, b2), ..., [bk, None)`` from sorted, distinct boundaries."""
    edges = [None, *bounds, None]
    n = len(edges) - 1
    return [ReadRange(i, n, edges[i], edges[i + 1]) for i in range(n)]


_NUMBER = "number"


def id_type_class(value: Any) -> str:
    """The BSON comparison class of an _id: range queries only match values of the same class."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)) or type(value).__name__ in ("Int64", "Decimal128"):
        return _NUMBER
    if isinstance(value, ObjectId):
        return "objectId"
    if isinstance(value, dt.datetime):
        return "date"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def interpolate(lo: Any, hi: Any, n: int) -> list[Any]:
    """``n - 1`` evenly spaced boundaries between two _ids (numbers, ObjectIds or dates)."""
    if isinstance(lo, ObjectId) and isinstance(hi, ObjectId):
        a, b = int.from_bytes(lo.binary, "big"), int.from_bytes(hi.binary, "big")
        return [ObjectId((a + (b - a) * i // n).to_bytes(12, "big")) for i in range(1, n)]
    if isinstance(lo, dt.datetime) and isinstance(hi, dt.datetime):
        span = hi - lo
        return [lo + span * i / n for i in range(1, n)]
    if isinstance(lo, int) and isinstance(hi, int) and not isinstance(lo, bool):
        return [lo + (hi - lo) * i // n for i in range(1, n)]
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
        return [lo + (hi - lo) * i / n for i in range(1, n)]
    raise TypeError(f"cannot interpolate between _ids {lo!r} and {hi!r}")


def plan_ranges(collection: Any, query: dict[str, Any] | None, num_partitions: int, method: str,
                log: Any) -> list[ReadRange]:
    """Splits the documents matching ``query`` into ``num_partitions`` _id ranges.

    ``paginate`` (default) walks the _id index: the boundaries are the _ids at ranks
    ``count * i / n`` (even partitions, any _id type). ``minmax`` interpolates between the
    smallest and largest _id (one query each; ObjectId, number and date _ids; uneven when the
    ids are). Both read everything in one range when _ids of different BSON types are mixed,
    because a range query only matches _ids of its bounds' type.
    """
    if num_partitions <= 1:
        return [ReadRange(0, 1)]
    query = query or {}
    first = collection.find_one(query, {"_id": 1}, sort=[("_id", 1)])
    last = collection.find_one(query, {"_id": 1}, sort=[("_id", -1)])
    if first is None or last is None or first["_id"] == last["_id"]:
        return [ReadRange(0, 1)]
    lo, hi = first["_id"], last["_id"]
    if id_type_class(lo) != id_type_class(hi):
        log.warning("MongoDB read: _ids of different BSON types (%s .. %s); reading in one range",
                    type(lo).__name__, type(hi).__name__)
        return [ReadRange(0, 1)]
    bounds: list[Any] = []
    if method == "minmax":
        try:
            bounds = interpolate(lo, hi, num_partitions)
        except TypeError:
            log.warning("MongoDB read: cannot interpolate %s _ids; paginating instead", type(lo).__name__)
            method = "paginate"
    if method == "paginate":
        total = collection.count_documents(query)
        for i in range(1, num_partitions):
            skip = total * i // num_partitions
            if skip <= 0:
                continue
            doc = next(iter(collection.find(query, {"_id": 1}).sort("_id", 1).skip(skip).limit(1)), None)
            if doc is not None:
                bounds.append(doc["_id"])
    distinct: list[Any] = []
    for b in bounds:
        if (not distinct or b != distinct[-1]) and b != lo:
            distinct.append(b)
    return ranges_from_bounds(distinct)


def source_name(database: str, collection: str, doc_id: Any = None) -> str:
    """``db.collection`` plus the document's _id, for dead letters."""
    base = f"{database}.{collection}"
    if doc_id is None:
        return base
    return f"{base} _id={doc_id!r}" if not isinstance(doc_id, str) else f"{base} _id={doc_id}"
