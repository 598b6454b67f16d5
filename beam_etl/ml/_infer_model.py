"""The output of schema inference: ``FieldSchema`` per column, ``InferredSchema`` per table.

Both are plain dataclasses with ``to_dict`` (JSON-safe), ``from_dict`` and an Arrow view
(``arrow_type`` / ``to_arrow_schema``); ``format_table`` prints a readable table. No Beam imports.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import math
from typing import Any

import pyarrow as pa

STORAGE_KEY = b"beam_etl.storage_type"
SEMANTIC_KEY = b"beam_etl.semantic_type"


def json_value(value: Any) -> Any:
    """A JSON-safe form of a min/max value: ISO text for dates and times, text for decimals."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return str(value)


@dataclasses.dataclass
class FieldSchema:
    """What one column holds: storage type (with its confidence), nulls, distinct values, range, lengths."""

    name: str
    storage_type: str
    confidence: float
    nullable: bool
    null_share: float
    null_count: int
    count: int
    cardinality: int
    cardinality_exact: bool
    min: Any = None
    max: Any = None
    length_min: int | None = None
    length_max: int | None = None
    length_mean: float | None = None
    semantic_type: str | None = None
    semantic_confidence: float | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    observed_type: pa.DataType | None = dataclasses.field(default=None, repr=False, compare=False)

    def arrow_type(self) -> pa.DataType:
        """The Arrow type a reader should cast this column to."""
        s = self.storage_type
        if s == "decimal":
            precision, scale = int(self.details.get("precision", 38)), int(self.details.get("scale", 0))
            if precision <= 38:
                return pa.decimal128(max(precision, 1), scale)
            return pa.decimal256(precision, scale) if precision <= 76 else pa.float64()
        if s in ("struct", "list", "binary", "duration") and self.observed_type is not None:
            return self.observed_type
        return {
            "null": pa.null(), "bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "date": pa.date32(),
            "datetime": pa.timestamp("us"), "datetime_tz": pa.timestamp("us", tz=self.details.get("timezone", "UTC")),
            "time": pa.time64("us"),
            "binary": pa.binary(), "duration": pa.duration("us"),
        }.get(s, pa.string())

    def to_arrow_field(self) -> pa.Field:
        meta = {STORAGE_KEY: self.storage_type.encode()}
        if self.semantic_type:
            meta[SEMANTIC_KEY] = self.semantic_type.encode()
        return pa.field(self.name, self.arrow_type(), nullable=self.nullable or self.storage_type == "null",
                        metadata=meta)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "observed_type"}
        out["min"], out["max"] = json_value(self.min), json_value(self.max)
        out["details"] = json_value(self.details)
        if self.observed_type is not None:
            out["details"].setdefault("arrow_type", str(self.observed_type))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FieldSchema:
        """Rebuilds a field from ``to_dict`` output (min/max stay in their JSON form)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"observed_type"}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclasses.dataclass
class InferredSchema:
    """The inferred schema of a table: one ``FieldSchema`` per column, in column order."""

    fields: list[FieldSchema]
    rows: int
    threshold: float = 0.98

    def field(self, name: str) -> FieldSchema:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"no field {name!r}; fields are {[f.name for f in self.fields]}")

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "threshold": self.threshold, "fields": [f.to_dict() for f in self.fields]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InferredSchema:
        return cls([FieldSchema.from_dict(f) for f in data.get("fields", [])], int(data.get("rows", 0)),
                   float(data.get("threshold", 0.98)))

    def to_arrow_schema(self) -> pa.Schema:
        """Arrow schema with the inferred types (metadata: storage and semantic type per field)."""
        return pa.schema([f.to_arrow_field() for f in self.fields])

    def to_fields_table(self) -> pa.Table:
        """One row per field (min/max and details as JSON text): a shape any sink can store."""
        return fields_table(self)

    def format_table(self, width: int = 24) -> str:
        """A readable, aligned table of the fields."""
        return format_table(self, width)

    def __str__(self) -> str:
        return self.format_table()


FIELDS_SCHEMA = pa.schema([
    ("name", pa.string()), ("storage_type", pa.string()), ("arrow_type", pa.string()), ("confidence", pa.float64()),
    ("nullable", pa.bool_()), ("null_share", pa.float64()), ("null_count", pa.int64()), ("count", pa.int64()),
    ("cardinality", pa.int64()), ("cardinality_exact", pa.bool_()), ("min", pa.string()), ("max", pa.string()),
    ("length_min", pa.int64()), ("length_max", pa.int64()), ("length_mean", pa.float64()),
    ("semantic_type", pa.string()), ("semantic_confidence", pa.float64()), ("details", pa.string()),
])


def fields_table(schema: InferredSchema) -> pa.Table:
    """``InferredSchema.to_fields_table``: the fields as rows of ``FIELDS_SCHEMA``."""
    rows = []
    for f in schema.fields:
        row = f.to_dict()
        row["arrow_type"] = str(f.arrow_type())
        for key in ("min", "max"):
            row[key] = None if row[key] is None else json.dumps(row[key], ensure_ascii=False)
        row["details"] = json.dumps(row["details"], ensure_ascii=False, sort_keys=True)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=FIELDS_SCHEMA)


def type_label(field: FieldSchema) -> str:
    """``decimal(10,2)``, ``datetime_tz``, ``int`` ..."""
    if field.storage_type == "decimal":
        return f"decimal({field.details.get('precision')},{field.details.get('scale')})"
    return field.storage_type


def _cut(value: Any, width: int) -> str:
    text = "" if value is None else str(json_value(value))
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(schema: InferredSchema, width: int = 24) -> str:
    """One line per field: type, confidence, nulls, distinct values, min, max, lengths, semantic type."""
    head = ["field", "type", "conf", "null%", "distinct", "min", "max", "len min/avg/max", "semantic"]
    rows = []
    for f in schema.fields:
        lengths = "" if f.length_min is None else f"{f.length_min}/{f.length_mean:.1f}/{f.length_max}"
        semantic = "" if not f.semantic_type else (
            f.semantic_type + ("" if f.semantic_confidence is None else f" ({f.semantic_confidence:.2f})"))
        rows.append([_cut(f.name, width), type_label(f), f"{f.confidence:.3f}", f"{100 * f.null_share:.1f}",
                     f"{'' if f.cardinality_exact else '~'}{f.cardinality:,}", _cut(f.min, width), _cut(f.max, width),
                     lengths, semantic])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    right = {2, 3, 4}
    lines = []
    for r in [head, *rows]:
        lines.append("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in
                               enumerate(zip(r, widths, strict=True))).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"{schema.rows:,} rows; a type needs {schema.threshold:.0%} of non-null values to parse")
    return "\n".join(lines)


__all__ = ["FIELDS_SCHEMA", "FieldSchema", "InferredSchema", "fields_table", "format_table", "json_value", "type_label"]
