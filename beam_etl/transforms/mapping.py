"""Column mapping steps: Select, Rename, Cast, Filter, WithColumns, MapBatches, MapRecords.

Every step is a PTransform over a PCollection of ``pyarrow.RecordBatch`` returning
``(batches, dead_letters)``. Work is vectorised with ``pyarrow.compute``; only user
functions (``MapRecords``, ``MapBatches``) run per-row or per-batch Python.

``Filter`` and ``WithColumns`` share a small, safe expression language: the text is parsed
with Python's ``ast`` and translated node by node into a ``pyarrow.compute.Expression``
(see ``compile_expression`` and docs/steps.md). Nothing is ever ``eval``-ed.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import datetime as dt
import importlib
import re
import zoneinfo
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import pyarrow as pa
import pyarrow.acero as acero
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from beam_etl import registry
from beam_etl.batch import concat_to_batch, with_metadata
from beam_etl.ops.context import RunContext, get_run_context
from beam_etl.ops.dlq import dead_letter
from beam_etl.transforms.base import BatchFn, BatchResult, BatchStep, RecordError, batch_source, classify_error

# Errors a vectorised conversion or evaluation may raise for bad data.
CONVERT_ERRORS = (pa.ArrowException, ValueError, TypeError, ArithmeticError)

# --------------------------------------------------------------------------------------
# Shared helpers (also used by clean.py and quality.py)
# --------------------------------------------------------------------------------------


_DEFAULT_EXCEPTIONS = {"validation": "ValueError", "type": "TypeError", "constraint": "ValueError"}


def rows_to_dead_letters(
    batch: pa.RecordBatch,
    rows: Sequence[int] | None,
    *,
    error_type: str,
    errors: str | Sequence[str],
    step: str,
    ctx: RunContext,
    exception: str | BaseException | None = None,
) -> list[dict[str, Any]]:
    """Builds dead letters for ``rows`` of ``batch`` (all rows when None).

    ``errors`` is one message for every row or one message per row.
    """
    indices = list(range(batch.num_rows)) if rows is None else list(rows)
    if exception is None:
        exception = _DEFAULT_EXCEPTIONS.get(error_type, "ValueError")
    if not indices:
        return []
    records = batch.take(pa.array(indices, type=pa.int64())).to_pylist()
    messages = [errors] * len(indices) if isinstance(errors, str) else list(errors)
    return [
        dead_letter(record, error_type=error_type, error=message, exception=exception, step=step,
                    source=batch_source(batch, row), ctx=ctx)
        for row, record, message in zip(indices, records, messages, strict=True)
    ]


def missing_fields(batch: pa.RecordBatch | pa.Schema, fields: Iterable[str]) -> list[str]:
    """Names in ``fields`` that the batch (or schema) lacks, in the given order."""
    schema = batch if isinstance(batch, pa.Schema) else batch.schema
    present = set(schema.names)
    return [f for f in fields if f not in present]


def missing_message(step_type: str, missing: Sequence[str], batch: pa.RecordBatch) -> str:
    """``Select: field 'x' is missing from the input (columns: a, b)``."""
    noun = "field" if len(missing) == 1 else "fields"
    verb = "is" if len(missing) == 1 else "are"
    names = ", ".join(repr(m) for m in missing)
    columns = ", ".join(batch.schema.names) or "none"
    return f"{step_type}: {noun} {names} {verb} missing from the input (columns: {columns})"


def set_column(batch: pa.RecordBatch, name: str, values: pa.Array) -> pa.RecordBatch:
    """Replaces column ``name`` in place, or appends it; keeps schema metadata."""
    names = list(batch.schema.names)
    arrays = list(batch.columns)
    if name in names:
        arrays[names.index(name)] = values
    else:
        names.append(name)
        arrays.append(values)
    return with_metadata(pa.RecordBatch.from_arrays(arrays, names=names), batch)


def as_array(values: pa.Array | pa.ChunkedArray | pa.Scalar, length: int | None = None) -> pa.Array:
    """Returns a plain Array (combining chunks, broadcasting scalars to ``length``)."""
    if isinstance(values, pa.ChunkedArray):
        if values.num_chunks == 1:
            return values.chunk(0)
        if values.num_chunks == 0:
            return pa.array([], type=values.type)
        return values.combine_chunks()
    if isinstance(values, pa.Scalar):
        return pa.repeat(values, length or 0)
    return values


def to_numpy_bool(mask: pa.Array | pa.ChunkedArray) -> Any:
    """A boolean Arrow array as a numpy bool array (nulls are False)."""
    return as_array(pc.fill_null(mask, False)).to_numpy(zero_copy_only=False)


def load_callable(path: str, field: str = "fn") -> Callable[..., Any]:
    """Imports ``"package.module:function"`` (or ``module:Class.method``) and returns it."""
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise ValueError(
            f"{field}: {path!r} is not an import path; write it as 'package.module:function'"
        )
    module_name, attr_path = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise ValueError(
            f"{field}: cannot import module {module_name!r} from {path!r} ({type(err).__name__}: {err}); "
            "check the module is installed and on PYTHONPATH"
        ) from err
    target: Any = module
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{field}: {path!r}: {getattr(target, '__name__', target)!r} has no attribute {part!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{field}: {path!r} is a {type(target).__name__}, not a callable")
    return target


def resolve_callable(fn: Callable[..., Any] | str, field: str = "fn") -> Callable[..., Any]:
    """Accepts a callable or an import path string."""
    if isinstance(fn, str):
        return load_callable(fn, field)
    if not callable(fn):
        raise ValueError(f"{field}: {fn!r} is not callable; pass a function or 'package.module:function'")
    return fn


def convert_partial(values: pa.Array, convert: Callable[[pa.Array], Any], out_type: pa.DataType) -> pa.Array:
    """Applies a vectorised ``convert``; values it rejects become null.

    The whole array is tried first. If that fails and the conversion cannot even run on an
    empty array (an unsupported type), every value fails. Otherwise the array is bisected so
    the kernel still runs on large good stretches and only the bad values end up null.
    """
    try:
        return _typed(as_array(convert(values)), out_type)
    except CONVERT_ERRORS:
        pass
    try:
        convert(values.slice(0, 0))
    except CONVERT_ERRORS:
        return pa.nulls(len(values), out_type)
    return _bisect_convert(values, convert, out_type)


def _typed(values: pa.Array, out_type: pa.DataType) -> pa.Array:
    return values if values.type == out_type else values.cast(out_type)


def _bisect_convert(values: pa.Array, convert: Callable[[pa.Array], Any], out_type: pa.DataType) -> pa.Array:
    n = len(values)
    if n == 0 or values.null_count == n:
        return pa.nulls(n, out_type)
    try:
        return _typed(as_array(convert(values)), out_type)
    except CONVERT_ERRORS:
        pass
    if n <= 8:
        parts = []
        for i in range(n):
            try:
                parts.append(_typed(as_array(convert(values.slice(i, 1))), out_type))
            except CONVERT_ERRORS:
                parts.append(pa.nulls(1, out_type))
        return pa.concat_arrays(parts)
    mid = n // 2
    return pa.concat_arrays([
        _bisect_convert(values.slice(0, mid), convert, out_type),
        _bisect_convert(values.slice(mid), convert, out_type),
    ])


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class NamedStep(BatchStep):
    """A BatchStep with an explicit step name (``step=``) and a captured run context."""

    type_name = "Step"

    def __init__(self, step: str | None = None) -> None:
        super().__init__(label=step)
        self._step = step
        self._ctx = get_run_context()

    def step_name(self) -> str:
        return self._step or self.label


# --------------------------------------------------------------------------------------
# Select and Rename
# --------------------------------------------------------------------------------------


def _check_names(step_type: str, field: str, names: Sequence[str]) -> None:
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{step_type}.{field}: {name!r} is not a column name; use non-empty strings")
    dupes = sorted({n for n in names if list(names).count(n) > 1})
    if dupes:
        raise ValueError(f"{step_type}.{field}: {dupes} listed more than once in {list(names)}; list each column once")


class Select(NamedStep):
    """Keeps only ``fields``, in that order.

    A missing field is a schema error: the batch's rows go to the DLQ (error_type
    ``validation``) naming the field, unless ``ignore_missing=True``.
    """

    row_fallback = False
    type_name = "Select"

    def __init__(self, fields: Sequence[str], *, ignore_missing: bool = False, step: str | None = None) -> None:
        super().__init__(step)
        if isinstance(fields, str) or not isinstance(fields, Sequence) or not fields:
            raise ValueError(f"Select.fields: {fields!r} is not a non-empty list of column names")
        _check_names("Select", "fields", fields)
        self.fields = list(fields)
        self.ignore_missing = bool(ignore_missing)

    def display_data(self) -> dict[str, Any]:
        return {"fields": ", ".join(self.fields), "ignore_missing": self.ignore_missing}

    def batch_fn(self) -> BatchFn:
        fields, ignore, step, ctx = self.fields, self.ignore_missing, self.step_name(), self._ctx

        def select(batch: pa.RecordBatch) -> BatchResult:
            missing = missing_fields(batch, fields)
            if missing and not ignore:
                return BatchResult(None, 0, rows_to_dead_letters(
                    batch, None, error_type="validation", errors=missing_message("Select", missing, batch),
                    exception="KeyError", step=step, ctx=ctx))
            keep = [f for f in fields if f not in missing]
            return BatchResult(with_metadata(batch.select(keep), batch))

        return select


class Rename(NamedStep):
    """Renames columns: ``fields={old: new}``; other columns keep their names and places."""

    row_fallback = False
    type_name = "Rename"

    def __init__(self, fields: Mapping[str, str], *, ignore_missing: bool = False, step: str | None = None) -> None:
        super().__init__(step)
        if not isinstance(fields, Mapping) or not fields:
            raise ValueError(f"Rename.fields: {fields!r} is not a non-empty mapping of old name -> new name")
        _check_names("Rename", "fields", list(fields))
        _check_names("Rename", "fields (new names)", list(fields.values()))
        self.fields = dict(fields)
        self.ignore_missing = bool(ignore_missing)

    def display_data(self) -> dict[str, Any]:
        return {"fields": ", ".join(f"{k}->{v}" for k, v in self.fields.items())}

    def batch_fn(self) -> BatchFn:
        mapping, ignore, step, ctx = self.fields, self.ignore_missing, self.step_name(), self._ctx

        def rename(batch: pa.RecordBatch) -> BatchResult:
            missing = missing_fields(batch, mapping)
            if missing and not ignore:
                return BatchResult(None, 0, rows_to_dead_letters(
                    batch, None, error_type="validation", errors=missing_message("Rename", missing, batch),
                    exception="KeyError", step=step, ctx=ctx))
            names = [mapping.get(n, n) for n in batch.schema.names]
            clashes = sorted({n for n in names if names.count(n) > 1})
            if clashes:
                return BatchResult(None, 0, rows_to_dead_letters(
                    batch, None, error_type="validation", step=step, ctx=ctx,
                    errors=f"Rename: renaming would give two columns named {clashes[0]!r} "
                           f"(columns: {', '.join(batch.schema.names)}; fields: {mapping})"))
            return BatchResult(with_metadata(batch.rename_columns(names), batch))

        return rename


# --------------------------------------------------------------------------------------
# Cast
# --------------------------------------------------------------------------------------

CAST_TYPES = "string, int, float, bool, date, timestamp, timestamp(<tz>), decimal(<precision>,<scale>)"
_TYPE_ALIASES = {
    "string": "string", "str": "string", "utf8": "string", "text": "string",
    "int": "int", "integer": "int", "int64": "int", "long": "int", "bigint": "int",
    "float": "float", "double": "float", "float64": "float",
    "bool": "bool", "boolean": "bool",
    "date": "date",
    "timestamp": "timestamp", "datetime": "timestamp",
}
_DECIMAL_RE = re.compile(r"^decimal\(\s*(\d+)\s*,\s*(\d+)\s*\)$", re.IGNORECASE)
_TIMESTAMP_TZ_RE = re.compile(r"^timestamp\(\s*([^()]+?)\s*\)$", re.IGNORECASE)
_OFFSET_RE = re.compile(r"^[+-]\d{2}:\d{2}$")


@dataclasses.dataclass(frozen=True)
class CastType:
    """A parsed Cast target: ``kind`` is string|int|float|bool|date|timestamp|decimal."""

    kind: str
    arrow: pa.DataType
    spec: str


def parse_cast_type(spec: str, where: str = "type") -> CastType:
    """Parses ``int``, ``decimal(10,2)``, ``timestamp(UTC)`` ...; ValueError names the allowed types."""
    text = spec.strip() if isinstance(spec, str) else spec
    if isinstance(text, str):
        kind = _TYPE_ALIASES.get(text.lower())
        if kind:
            arrow = {
                "string": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
                "date": pa.date32(), "timestamp": pa.timestamp("us"),
            }[kind]
            return CastType(kind, arrow, text)
        if m := _DECIMAL_RE.match(text):
            precision, scale = int(m.group(1)), int(m.group(2))
            if not 1 <= precision <= 38 or scale > precision:
                raise ValueError(
                    f"{where}: {spec!r} has precision {precision} and scale {scale}; "
                    "precision must be 1..38 and scale 0..precision"
                )
            return CastType("decimal", pa.decimal128(precision, scale), text)
        if m := _TIMESTAMP_TZ_RE.match(text):
            tz = m.group(1)
            if not _OFFSET_RE.match(tz):
                try:
                    zoneinfo.ZoneInfo(tz)
                except Exception as err:
                    raise ValueError(
                        f"{where}: {spec!r} names an unknown time zone {tz!r}; use an IANA name like 'UTC' "
                        "or 'Europe/Paris', or an offset like '+02:00'"
                    ) from err
            return CastType("timestamp", pa.timestamp("us", tz), text)
    raise ValueError(f"{where}: {spec!r} is not a supported type; allowed: {CAST_TYPES}")


ISO_FORMAT = "iso"
DEFAULT_DATETIME_FORMATS: tuple[str, ...] = (
    ISO_FORMAT,
    "%Y/%m/%d", "%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M",
    "%m/%d/%Y", "%m/%d/%Y %H:%M:%S", "%m/%d/%Y %H:%M",
    "%d/%m/%Y", "%d/%m/%Y %H:%M:%S", "%d/%m/%Y %H:%M",
    "%d.%m.%Y", "%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M",
    "%d-%m-%Y", "%d-%m-%Y %H:%M:%S",
    "%d %b %Y", "%d %B %Y", "%b %d, %Y", "%B %d, %Y", "%b %d %Y",
    "%Y-%m-%d %H:%M:%S%z", "%Y-%m-%dT%H:%M:%S%z",
    "%Y%m%d", "%Y%m%dT%H%M%S", "%Y%m%d%H%M%S",
)
# ISO 8601 forms strptime cannot read (fractional seconds, hour-only, zone offsets) go through Arrow's cast.
_ISO_NAIVE = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}(:\d{2}(:\d{2}\.\d{1,9})?)?$"
_ISO_ZONED = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}(:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}(:?\d{2})?)$"
_ISO_STRPTIME = ("%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S")
_DIRECTIVES = {
    "Y": r"\d{4}", "y": r"\d{2}", "m": r"\s?\d{1,2}", "d": r"\s?(?P<day>\d{1,2})", "H": r"\d{1,2}", "I": r"\d{1,2}",
    "M": r"\d{1,2}", "S": r"\d{1,2}", "b": "[A-Za-z]+", "B": "[A-Za-z]+", "h": "[A-Za-z]+", "a": "[A-Za-z]+",
    "A": "[A-Za-z]+", "p": "[A-Za-z]+", "z": r"(?:Z|[+-]\d{2}:?\d{2})", "j": r"\d{1,3}", "%": "%",
}
_TS_US = pa.timestamp("us")


def check_datetime_formats(formats: Sequence[str], where: str = "formats") -> list[str]:
    """Validates a list of strptime formats (or ``iso``)."""
    if isinstance(formats, str) or not isinstance(formats, Sequence) or not formats:
        raise ValueError(f"{where}: {formats!r} is not a non-empty list of strptime formats (or 'iso')")
    out = []
    for fmt in formats:
        if not isinstance(fmt, str) or (fmt.lower() != ISO_FORMAT and "%" not in fmt):
            raise ValueError(
                f"{where}: {fmt!r} is not a strptime format; use directives like '%d/%m/%Y', or 'iso' for ISO 8601"
            )
        out.append(ISO_FORMAT if fmt.lower() == ISO_FORMAT else fmt)
    return out


def _blank_to_null(values: pa.Array) -> pa.Array:
    """Trims strings; empty strings become null."""
    trimmed = pc.utf8_trim_whitespace(values)
    return as_array(pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, trimmed.type), trimmed))


def _only(mask: pa.Array, values: pa.Array) -> pa.Array:
    return as_array(pc.if_else(pc.fill_null(mask, False), values, pa.scalar(None, values.type)))


def _day_regex(fmt: str) -> str | None:
    """A regex capturing the day of month of values in ``fmt`` (None when it has no %d)."""
    if "%d" not in fmt:
        return None
    out, i = ["^"], 0
    while i < len(fmt):
        if fmt[i] == "%" and i + 1 < len(fmt):
            pattern = _DIRECTIVES.get(fmt[i + 1])
            if pattern is None:
                return None
            out.append(pattern)
            i += 2
        else:
            out.append(re.escape(fmt[i]))
            i += 1
    return "".join(out) + "$"


def _strptime(values: pa.Array, fmt: str) -> pa.Array:
    """strptime with nulls for failures, rejecting days past the month's end.

    Arrow's strptime rolls '2024-02-30' over to March 1st; the day read from the text must
    equal the parsed day.
    """
    parsed = as_array(pc.strptime(values, format=fmt, unit="us", error_is_null=True))
    if parsed.type != _TS_US:
        parsed = parsed.cast(_TS_US)
    day_regex = _day_regex(fmt)
    if day_regex is None or parsed.null_count == len(parsed):
        return parsed
    day = pc.cast(pc.struct_field(pc.extract_regex(values, day_regex), "day"), pa.int64())
    rolled = pc.fill_null(pc.not_equal(day, pc.day(parsed)), False)
    return as_array(pc.if_else(rolled, pa.scalar(None, _TS_US), parsed))


def _parse_iso(values: pa.Array) -> pa.Array:
    result = pa.nulls(len(values), _TS_US)
    for fmt in _ISO_STRPTIME:
        parsed = _strptime(values, fmt)
        result = as_array(pc.coalesce(result, parsed))
        values = _only(pc.is_null(parsed), values)
    trimmed = pc.replace_substring_regex(values, r"(\.\d{6})\d+", r"\1")
    naive_in = _only(pc.match_substring_regex(values, _ISO_NAIVE), trimmed)
    if naive_in.null_count < len(naive_in):
        result = as_array(pc.coalesce(result, convert_partial(naive_in, lambda a: pc.cast(a, _TS_US), _TS_US)))
    zoned_in = _only(pc.match_substring_regex(values, _ISO_ZONED), trimmed)
    if zoned_in.null_count < len(zoned_in):
        zoned = convert_partial(zoned_in, lambda a: pc.cast(pc.cast(a, pa.timestamp("us", "UTC")), _TS_US), _TS_US)
        result = as_array(pc.coalesce(result, zoned))
    return result


def parse_datetime_strings(values: pa.Array, formats: Sequence[str] = DEFAULT_DATETIME_FORMATS) -> pa.Array:
    """Parses strings to naive ``timestamp[us]`` (offsets converted to UTC), trying ``formats`` in order.

    Vectorised: each format runs once over the values no earlier format parsed. Values no
    format parses are null. ``iso`` is Arrow's ISO 8601 parser (fractional seconds, ``Z`` or
    ``+hh:mm`` offsets); other entries are strptime formats that must match the whole value.
    """
    values = as_array(values)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = values.cast(pa.string())
    values = _blank_to_null(values)
    result = pa.nulls(len(values), _TS_US)
    remaining = values
    for fmt in formats:
        if remaining.null_count == len(remaining):
            break
        parsed = _parse_iso(remaining) if fmt == ISO_FORMAT else _strptime(remaining, fmt)
        result = as_array(pc.coalesce(result, parsed))
        remaining = _only(pc.is_null(parsed), remaining)
    return result


_INT_RE = r"^[+-]?\d+$"
_FLOAT_RE = r"(?i)^[+-]?((\d+\.?\d*|\.\d+)(e[+-]?\d+)?|nan|inf|infinity)$"
_DECIMAL_VALUE_RE = r"^[+-]?(\d+\.?\d*|\.\d+)$"
TRUE_WORDS = ("true", "t", "yes", "y", "1", "on")
FALSE_WORDS = ("false", "f", "no", "n", "0", "off")


def _is_string(typ: pa.DataType) -> bool:
    return pa.types.is_string(typ) or pa.types.is_large_string(typ)


def cast_array(values: pa.Array, target: CastType, formats: Sequence[str] | None = None) -> tuple[pa.Array, pa.Array]:
    """Casts what casts; returns ``(result, failed)`` where ``failed`` marks values that did not.

    Strings are trimmed and blank strings count as null when the target is not ``string``.
    ``failed`` is a boolean numpy array.
    """
    values = as_array(values)
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    out_type = target.arrow
    if values.type == out_type:
        result, source = values, values
    elif target.kind == "string":
        source = values
        result = convert_partial(values, lambda a: pc.cast(a, pa.string()), out_type)
    elif _is_string(values.type):
        source = _blank_to_null(values)
        result = _cast_strings(source, target, formats)
    elif target.kind == "timestamp" and (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        source = values
        result = convert_partial(values, lambda a: _epoch_seconds(a, out_type), out_type)
    else:
        source = values
        result = convert_partial(values, lambda a: pc.cast(a, out_type), out_type)
    failed = to_numpy_bool(pc.and_(pc.is_valid(source), pc.is_null(result)))
    return result, failed


def _epoch_seconds(values: pa.Array, out_type: pa.DataType) -> pa.Array:
    micros = pc.round(pc.multiply_checked(pc.cast(values, pa.float64()), 1_000_000.0))
    return pc.cast(pc.cast(micros, pa.int64()), out_type)


def _cast_strings(values: pa.Array, target: CastType, formats: Sequence[str] | None) -> pa.Array:
    out_type = target.arrow
    if target.kind == "int":
        return convert_partial(_only(pc.match_substring_regex(values, _INT_RE), values),
                               lambda a: pc.cast(a, out_type), out_type)
    if target.kind == "float":
        return convert_partial(_only(pc.match_substring_regex(values, _FLOAT_RE), values),
                               lambda a: pc.cast(a, out_type), out_type)
    if target.kind == "decimal":
        return convert_partial(_only(pc.match_substring_regex(values, _DECIMAL_VALUE_RE), values),
                               lambda a: pc.cast(a, out_type), out_type)
    if target.kind == "bool":
        lowered = pc.utf8_lower(values)
        is_true = pc.is_in(lowered, value_set=pa.array(TRUE_WORDS))
        is_false = pc.is_in(lowered, value_set=pa.array(FALSE_WORDS))
        return as_array(pc.if_else(is_true, True, pc.if_else(is_false, False, pa.scalar(None, pa.bool_()))))
    if target.kind in ("date", "timestamp"):
        parsed = parse_datetime_strings(values, formats or DEFAULT_DATETIME_FORMATS)
        return parsed.cast(out_type) if parsed.type != out_type else parsed
    return convert_partial(values, lambda a: pc.cast(a, out_type), out_type)


class Cast(NamedStep):
    """Casts columns: ``fields={name: type}`` with types string, int, float, bool, date,
    timestamp, timestamp(<tz>) and decimal(p,s).

    ``formats={field: [strptime formats]}`` are tried in order for date/timestamp columns
    (default ``DEFAULT_DATETIME_FORMATS``: ISO 8601, then year-first, US, EU and month-name
    forms). ``on_error="dlq"`` (default) sends rows with a value that does not cast to the
    DLQ (error_type ``type``, naming column and value); ``"null"`` keeps the row with a null.
    """

    row_fallback = False
    type_name = "Cast"

    def __init__(
        self,
        fields: Mapping[str, str],
        *,
        formats: Mapping[str, Sequence[str]] | None = None,
        on_error: str = "dlq",
        ignore_missing: bool = False,
        step: str | None = None,
    ) -> None:
        super().__init__(step)
        if not isinstance(fields, Mapping) or not fields:
            raise ValueError(f"Cast.fields: {fields!r} is not a non-empty mapping of column -> type ({CAST_TYPES})")
        _check_names("Cast", "fields", list(fields))
        self.types = {name: parse_cast_type(spec, f"Cast.fields.{name}") for name, spec in fields.items()}
        self.fields = dict(fields)
        self.formats: dict[str, list[str]] = {}
        for name, fmts in (formats or {}).items():
            if name not in self.types:
                raise ValueError(f"Cast.formats: {name!r} is not one of the cast fields {list(self.types)}")
            if self.types[name].kind not in ("date", "timestamp"):
                raise ValueError(
                    f"Cast.formats.{name}: formats apply to date/timestamp columns, but {name!r} is cast to "
                    f"{self.fields[name]!r}"
                )
            self.formats[name] = check_datetime_formats(fmts, f"Cast.formats.{name}")
        if on_error not in ("dlq", "null"):
            raise ValueError(f"Cast.on_error: {on_error!r} is not allowed; use 'dlq' or 'null'")
        self.on_error = on_error
        self.ignore_missing = bool(ignore_missing)

    def display_data(self) -> dict[str, Any]:
        return {"fields": ", ".join(f"{k}:{v}" for k, v in self.fields.items()), "on_error": self.on_error}

    def batch_fn(self) -> BatchFn:
        types, formats, on_error = self.types, self.formats, self.on_error
        ignore, step, ctx = self.ignore_missing, self.step_name(), self._ctx

        def cast(batch: pa.RecordBatch) -> BatchResult:
            missing = missing_fields(batch, types)
            if missing and not ignore:
                return BatchResult(None, 0, rows_to_dead_letters(
                    batch, None, error_type="validation", errors=missing_message("Cast", missing, batch),
                    exception="KeyError", step=step, ctx=ctx))
            out = batch
            failures: list[tuple[str, Any]] = []
            any_failed = None
            for name, target in types.items():
                if name in missing:
                    continue
                column = batch.column(name)
                result, failed = cast_array(column, target, formats.get(name))
                out = set_column(out, name, result)
                if failed.any():
                    failures.append((name, failed))
                    any_failed = failed if any_failed is None else (any_failed | failed)
            if any_failed is None or on_error == "null":
                return BatchResult(out)
            bad_rows = any_failed.nonzero()[0]
            messages = [[] for _ in bad_rows]
            for name, failed in failures:
                values = batch.column(name).take(pa.array(bad_rows)).to_pylist()
                for k, (row, value) in enumerate(zip(bad_rows, values, strict=True)):
                    if failed[row]:
                        messages[k].append(
                            f"column {name!r} value {_short(value)} cannot be cast to {types[name].spec}")
            letters = rows_to_dead_letters(
                batch, bad_rows.tolist(), error_type="type", step=step, ctx=ctx, exception="ArrowInvalid",
                errors=["Cast: " + "; ".join(m) for m in messages])
            return BatchResult(out.filter(pa.array(~any_failed)), 0, letters)

        return cast


# --------------------------------------------------------------------------------------
# The expression language
# --------------------------------------------------------------------------------------

ExprNode = Any  # a pc.Expression, or a _Literal before it is wrapped


@dataclasses.dataclass(frozen=True)
class _Literal:
    value: Any


@dataclasses.dataclass(frozen=True)
class _Fn:
    arity: tuple[int, int | None]  # min, max (None = any)
    build: Callable[..., pc.Expression]
    literal_args: tuple[int, ...] = ()  # positions that must be literals
    boolean: bool = False


def _str_fn(name: str) -> Callable[..., pc.Expression]:
    return lambda x: getattr(pc, name)(x)


def _pattern_fn(name: str) -> Callable[..., pc.Expression]:
    def build(x: pc.Expression, pattern: Any) -> pc.Expression:
        if not isinstance(pattern, str):
            raise ValueError(f"the pattern must be a string literal, not {pattern!r}")
        if name == "match_substring_regex":
            try:
                pc.match_substring_regex(pa.array(["x"]), pattern)
            except pa.ArrowInvalid as err:
                raise ValueError(f"invalid regular expression {pattern!r}: {err}") from err
        return getattr(pc, name)(x, pattern=pattern)

    return build


def _round(x: pc.Expression, ndigits: Any = 0) -> pc.Expression:
    if not isinstance(ndigits, int) or isinstance(ndigits, bool):
        raise ValueError(f"round's second argument must be an integer literal, not {ndigits!r}")
    return pc.round(x, ndigits=ndigits, round_mode="half_to_even")


def _date_literal(text: Any) -> pc.Expression:
    try:
        return pc.scalar(dt.date.fromisoformat(text))
    except (TypeError, ValueError) as err:
        raise ValueError(f"date() needs an ISO date string like '2024-01-31', not {text!r}") from err


def _timestamp_literal(text: Any) -> pc.Expression:
    try:
        value = dt.datetime.fromisoformat(text)
    except (TypeError, ValueError) as err:
        raise ValueError(f"timestamp() needs an ISO timestamp like '2024-01-31T12:00:00', not {text!r}") from err
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return pc.scalar(pa.scalar(value, type=_TS_US))


def _col(name: Any) -> pc.Expression:
    if not isinstance(name, str) or not name:
        raise ValueError(f"col() needs a column name string, not {name!r}")
    return pc.field(name)


FUNCTIONS: dict[str, _Fn] = {
    "lower": _Fn((1, 1), _str_fn("utf8_lower")),
    "upper": _Fn((1, 1), _str_fn("utf8_upper")),
    "strip": _Fn((1, 1), _str_fn("utf8_trim_whitespace")),
    "len": _Fn((1, 1), _str_fn("utf8_length")),
    "startswith": _Fn((2, 2), _pattern_fn("starts_with"), (1,), True),
    "endswith": _Fn((2, 2), _pattern_fn("ends_with"), (1,), True),
    "contains": _Fn((2, 2), _pattern_fn("match_substring"), (1,), True),
    "matches": _Fn((2, 2), _pattern_fn("match_substring_regex"), (1,), True),
    "abs": _Fn((1, 1), lambda x: pc.abs_checked(x)),
    "round": _Fn((1, 2), _round, (1,)),
    "floor": _Fn((1, 1), lambda x: pc.floor(x)),
    "ceil": _Fn((1, 1), lambda x: pc.ceil(x)),
    "sqrt": _Fn((1, 1), lambda x: pc.sqrt_checked(x)),
    "min": _Fn((2, None), lambda *xs: pc.min_element_wise(*xs)),
    "max": _Fn((2, None), lambda *xs: pc.max_element_wise(*xs)),
    "coalesce": _Fn((1, None), lambda *xs: pc.coalesce(*xs)),
    "if_else": _Fn((3, 3), lambda c, a, b: pc.if_else(c, a, b)),
    "is_null": _Fn((1, 1), lambda x: pc.is_null(x), (), True),
    "nullif": _Fn((2, 2), lambda x, v: pc.if_else(pc.equal(x, v), pc.scalar(None), x)),
    "concat": _Fn((1, None), lambda *xs: pc.binary_join_element_wise(*xs, "")),
    "year": _Fn((1, 1), lambda x: pc.year(x)),
    "month": _Fn((1, 1), lambda x: pc.month(x)),
    "day": _Fn((1, 1), lambda x: pc.day(x)),
    "hour": _Fn((1, 1), lambda x: pc.hour(x)),
    "int": _Fn((1, 1), lambda x: x.cast(pa.int64())),
    "float": _Fn((1, 1), lambda x: x.cast(pa.float64())),
    "str": _Fn((1, 1), lambda x: x.cast(pa.string())),
    "to_date": _Fn((1, 1), lambda x: x.cast(pa.date32())),
    "date": _Fn((1, 1), _date_literal, (0,)),
    "timestamp": _Fn((1, 1), _timestamp_literal, (0,)),
    "col": _Fn((1, 1), _col, (0,)),
}

_UNSUPPORTED_NAMES = {
    ast.Attribute: "attribute access", ast.Subscript: "subscripts", ast.Lambda: "lambda",
    ast.ListComp: "comprehensions", ast.SetComp: "comprehensions", ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions", ast.Dict: "dict literals", ast.Starred: "star arguments",
    ast.JoinedStr: "f-strings", ast.NamedExpr: "assignment expressions (:=)", ast.Await: "await",
    ast.Yield: "yield", ast.YieldFrom: "yield", ast.Slice: "slices",
}
_BINOPS = {
    ast.Add: lambda a, b: pc.add_checked(a, b),
    ast.Sub: lambda a, b: pc.subtract_checked(a, b),
    ast.Mult: lambda a, b: pc.multiply_checked(a, b),
    ast.Div: lambda a, b: pc.divide_checked(a.cast(pa.float64()), b.cast(pa.float64())),
    ast.Pow: lambda a, b: pc.power_checked(a, b),
}
_CMPOPS = {
    ast.Eq: pc.equal, ast.NotEq: pc.not_equal, ast.Lt: pc.less, ast.LtE: pc.less_equal,
    ast.Gt: pc.greater, ast.GtE: pc.greater_equal,
}
EXPRESSION_SYNTAX = (
    "column names, literals (numbers, 'strings', True, False, None), + - * / **, == != < <= > >=, "
    "and/or/not, x in [..], x not in [..], x is None, x is not None, a if cond else b, and functions "
    + ", ".join(f"{name}()" for name in FUNCTIONS)
)


@dataclasses.dataclass(frozen=True)
class CompiledExpression:
    """An expression's text, its ``pyarrow.compute.Expression`` and the columns it reads."""

    text: str
    expression: pc.Expression
    fields: tuple[str, ...]
    boolean: bool | None  # True/False when known statically, None when it depends on column types


class _Compiler:
    def __init__(self, text: str, where: str) -> None:
        self.text = text
        self.where = where
        self.fields: list[str] = []

    def fail(self, node: ast.AST, what: str) -> ValueError:
        segment = ast.get_source_segment(self.text, node) or self.text
        return ValueError(
            f"{self.where}: {what} in {segment!r} (expression {self.text!r}) is not supported; "
            f"allowed: {EXPRESSION_SYNTAX}"
        )

    def expr(self, node: ast.AST) -> pc.Expression:
        value = self.node(node)
        return pc.scalar(value.value) if isinstance(value, _Literal) else value

    def node(self, node: ast.AST) -> ExprNode:
        if isinstance(node, ast.Constant):
            if node.value is None or isinstance(node.value, (bool, int, float, str)):
                return _Literal(node.value)
            raise self.fail(node, f"the literal {node.value!r}")
        if isinstance(node, ast.Name):
            self.fields.append(node.id)
            return pc.field(node.id)
        if isinstance(node, ast.BoolOp):
            parts = [self.expr(v) for v in node.values]
            combine = pc.and_kleene if isinstance(node.op, ast.And) else pc.or_kleene
            result = parts[0]
            for part in parts[1:]:
                result = combine(result, part)
            return result
        if isinstance(node, ast.UnaryOp):
            operand = self.node(node.operand)
            if isinstance(node.op, ast.Not):
                return pc.invert(self._wrap(operand))
            if isinstance(node.op, ast.USub):
                if isinstance(operand, _Literal) and isinstance(operand.value, (int, float)) \
                        and not isinstance(operand.value, bool):
                    return _Literal(-operand.value)
                return pc.negate_checked(self._wrap(operand))
            if isinstance(node.op, ast.UAdd):
                return operand
            raise self.fail(node, "the operator ~")
        if isinstance(node, ast.BinOp):
            build = _BINOPS.get(type(node.op))
            if build is None:
                raise self.fail(node, f"the operator {type(node.op).__name__}")
            return build(self.expr(node.left), self.expr(node.right))
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.IfExp):
            return pc.if_else(self.expr(node.test), self.expr(node.body), self.expr(node.orelse))
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            raise self.fail(node, "a list outside 'x in [..]'")
        what = _UNSUPPORTED_NAMES.get(type(node), f"{type(node).__name__} syntax")
        raise self.fail(node, what)

    @staticmethod
    def _wrap(value: ExprNode) -> pc.Expression:
        return pc.scalar(value.value) if isinstance(value, _Literal) else value

    def compare(self, node: ast.Compare) -> pc.Expression:
        parts = []
        left_node = node.left
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            left = self.expr(left_node)
            if isinstance(op, (ast.In, ast.NotIn)):
                values = self.literal_list(right_node)
                part = left.isin(values)
                part = pc.invert(part) if isinstance(op, ast.NotIn) else part
            elif isinstance(op, (ast.Is, ast.IsNot)) or (
                    isinstance(op, (ast.Eq, ast.NotEq)) and self.is_none(right_node)):
                if not self.is_none(right_node):
                    raise self.fail(node, "'is' with something other than None")
                negate = isinstance(op, (ast.IsNot, ast.NotEq))
                part = pc.is_valid(left) if negate else pc.is_null(left)
            else:
                part = _CMPOPS[type(op)](left, self.expr(right_node))
            parts.append(part)
            left_node = right_node
        result = parts[0]
        for part in parts[1:]:
            result = pc.and_kleene(result, part)
        return result

    @staticmethod
    def is_none(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) and node.value is None

    def literal(self, node: ast.AST) -> Any:
        value = self.node(node) if isinstance(node, (ast.Constant, ast.UnaryOp)) else None
        if not isinstance(value, _Literal):
            raise self.fail(node, "a non-literal value where a literal is needed")
        return value.value

    def literal_list(self, node: ast.AST) -> list[Any]:
        if not isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            raise self.fail(node, "'in' with something other than a literal list like [1, 2]")
        values = [self.literal(e) for e in node.elts]
        if not values:
            raise self.fail(node, "'in' with an empty list")
        kinds = {type(v) for v in values if v is not None}
        if kinds - {int, float} and len(kinds) > 1:
            raise self.fail(node, "'in' with a list mixing strings and numbers")
        return values

    def call(self, node: ast.Call) -> pc.Expression:
        if isinstance(node.func, ast.Attribute):
            raise self.fail(node, "attribute access (method calls)")
        if not isinstance(node.func, ast.Name):
            raise self.fail(node, "calling something other than a named function")
        name = node.func.id
        fn = FUNCTIONS.get(name)
        if fn is None:
            raise self.fail(node, f"the function {name}()")
        if node.keywords:
            raise self.fail(node, f"keyword arguments to {name}()")
        low, high = fn.arity
        if len(node.args) < low or (high is not None and len(node.args) > high):
            wanted = f"{low}" if low == high else f"{low} or more" if high is None else f"{low} to {high}"
            raise self.fail(node, f"{name}() with {len(node.args)} argument(s) (it takes {wanted})")
        args = [self.literal(a) if i in fn.literal_args else self.expr(a) for i, a in enumerate(node.args)]
        if name == "col" and isinstance(args[0], str):
            self.fields.append(args[0])
        try:
            return fn.build(*args)
        except ValueError as err:
            raise ValueError(f"{self.where}: {name}() in {self.text!r}: {err}") from err


def _static_boolean(node: ast.AST) -> bool | None:
    if isinstance(node, (ast.Compare, ast.BoolOp)):
        return True
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, ast.Not)
    if isinstance(node, ast.Constant):
        return isinstance(node.value, bool)
    if isinstance(node, ast.BinOp):
        return False
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS:
        return True if FUNCTIONS[node.func.id].boolean else None
    return None


def compile_expression(text: str, where: str = "expression") -> CompiledExpression:
    """Parses ``text`` with ``ast`` into a ``pyarrow.compute.Expression``.

    ValueError names the unsupported syntax and lists what is allowed.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: {text!r} is not an expression; write e.g. \"amount > 0 and status == 'paid'\"")
    source = text.strip()
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as err:
        raise ValueError(f"{where}: {text!r} is not a valid expression ({err.msg} at column {err.offset})") from err
    compiler = _Compiler(source, where)
    expression = compiler.expr(tree.body)
    return CompiledExpression(source, expression, tuple(dict.fromkeys(compiler.fields)), _static_boolean(tree.body))


def evaluate(batch: pa.RecordBatch, expressions: Sequence[pc.Expression]) -> list[pa.Array]:
    """Evaluates expressions over a batch (one Acero projection); scalars are broadcast."""
    names = [f"_e{i}" for i in range(len(expressions))]
    plan = acero.Declaration.from_sequence([
        acero.Declaration("table_source", acero.TableSourceNodeOptions(pa.Table.from_batches([batch]))),
        acero.Declaration("project", acero.ProjectNodeOptions(list(expressions), names)),
    ])
    table = plan.to_table(use_threads=False)
    return [as_array(table.column(i)) for i in range(len(names))]


@dataclasses.dataclass
class _Isolated:
    parts: list[tuple[int, pa.RecordBatch]]  # (offset in the input, output for that stretch)
    failures: list[tuple[int, BaseException]]  # (row, error)


def apply_isolating(batch: pa.RecordBatch, fn: Callable[[pa.RecordBatch], pa.RecordBatch]) -> _Isolated:
    """Runs a vectorised ``fn``; when it raises, bisects so only the failing rows are set aside.

    A failure that also happens on zero rows (a schema or type problem) fails every row at once.
    """
    try:
        return _Isolated([(0, fn(batch))], [])
    except CONVERT_ERRORS as err:
        try:
            fn(batch.slice(0, 0))
        except CONVERT_ERRORS as schema_err:
            return _Isolated([], [(i, schema_err) for i in range(batch.num_rows)])
        if batch.num_rows == 1:
            return _Isolated([], [(0, err)])
    result = _Isolated([], [])
    _bisect_rows(batch, fn, 0, batch.num_rows, result)
    return result


def _bisect_rows(batch: pa.RecordBatch, fn: Callable[[pa.RecordBatch], pa.RecordBatch],
                 start: int, length: int, result: _Isolated) -> None:
    piece = batch.slice(start, length)
    try:
        result.parts.append((start, fn(piece)))
        return
    except CONVERT_ERRORS as err:
        if length == 1:
            result.failures.append((start, err))
            return
    half = length // 2
    _bisect_rows(batch, fn, start, half, result)
    _bisect_rows(batch, fn, start + half, length - half, result)


def _failure_letters(batch: pa.RecordBatch, failures: list[tuple[int, BaseException]], what: str,
                     fields: Sequence[str], step: str, ctx: RunContext) -> list[dict[str, Any]]:
    if not failures:
        return []
    rows = [row for row, _ in failures]
    present = [f for f in fields if f in batch.schema.names]
    values = batch.select(present).take(pa.array(rows, type=pa.int64())).to_pylist() if present else [{}] * len(rows)
    letters = []
    for (row, err), vals in zip(failures, values, strict=True):
        shown = ", ".join(f"{k}={_short(v)}" for k, v in vals.items())
        message = f"{what} failed: {err}" + (f" (values: {shown})" if shown else "")
        error_type = "type" if isinstance(err, pa.ArrowNotImplementedError) else classify_error(err)
        letters.extend(rows_to_dead_letters(batch, [row], error_type=error_type, errors=message,
                                            exception=err, step=step, ctx=ctx))
    return letters


def _compile_field(value: str | CompiledExpression, where: str) -> CompiledExpression:
    return value if isinstance(value, CompiledExpression) else compile_expression(value, where)


class Filter(NamedStep):
    """Keeps rows where ``expression`` is true; false or null rows are counted as filtered.

    Rows whose evaluation raises (e.g. division by zero, an overflow) go to the DLQ; a
    referenced column missing from the input sends the batch's rows to the DLQ as
    ``validation`` errors.
    """

    row_fallback = False
    type_name = "Filter"

    def __init__(self, expression: str, *, step: str | None = None) -> None:
        super().__init__(step)
        self.compiled = _compile_field(expression, "Filter.expression")
        if self.compiled.boolean is False:
            raise ValueError(
                f"Filter.expression: {self.compiled.text!r} is not a condition; it must give true/false, e.g. "
                "'amount > 0', \"status in ['paid', 'open']\", 'startswith(name, \"A\")'"
            )
        self.expression = self.compiled.text

    def display_data(self) -> dict[str, Any]:
        return {"expression": self.expression}

    def batch_fn(self) -> BatchFn:
        compiled, step, ctx = self.compiled, self.step_name(), self._ctx
        what = f"Filter: evaluating {compiled.text!r}"

        def keep_matching(piece: pa.RecordBatch) -> pa.RecordBatch:
            (mask,) = evaluate(piece, [compiled.expression])
            if not pa.types.is_boolean(mask.type):
                raise pa.ArrowTypeError(f"the expression gives {mask.type}, not true/false")
            return piece.filter(pc.fill_null(mask, False))

        def filter_batch(batch: pa.RecordBatch) -> BatchResult:
            missing = missing_fields(batch, compiled.fields)
            if missing:
                return BatchResult(None, 0, rows_to_dead_letters(
                    batch, None, error_type="validation", step=step, ctx=ctx,
                    errors=missing_message(f"Filter ({compiled.text!r})", missing, batch), exception="KeyError"))
            isolated = apply_isolating(batch, keep_matching)
            kept = [part for _, part in sorted(isolated.parts, key=lambda p: p[0]) if part.num_rows]
            out = with_metadata(concat_to_batch(pa.Table.from_batches(kept)), batch) if kept else None
            n_out = out.num_rows if out is not None else 0
            filtered = batch.num_rows - n_out - len(isolated.failures)
            letters = _failure_letters(batch, isolated.failures, what, compiled.fields, step, ctx)
            return BatchResult(out, filtered, letters)

        return filter_batch


class WithColumns(NamedStep):
    """Adds or replaces columns: ``columns={name: expression}``, evaluated in order.

    A later expression may use a column defined by an earlier one. Replacing a column keeps
    its position; new columns are appended. Rows whose evaluation raises go to the DLQ.
    """

    row_fallback = False
    type_name = "WithColumns"

    def __init__(self, columns: Mapping[str, str], *, step: str | None = None) -> None:
        super().__init__(step)
        if not isinstance(columns, Mapping) or not columns:
            raise ValueError(f"WithColumns.columns: {columns!r} is not a non-empty mapping of name -> expression")
        _check_names("WithColumns", "columns", list(columns))
        self.compiled = {name: _compile_field(text, f"WithColumns.columns.{name}") for name, text in columns.items()}
        self.columns = {name: c.text for name, c in self.compiled.items()}

    def display_data(self) -> dict[str, Any]:
        return {"columns": "; ".join(f"{k} = {v}" for k, v in self.columns.items())}

    def batch_fn(self) -> BatchFn:
        compiled, step, ctx = self.compiled, self.step_name(), self._ctx
        reads = tuple(dict.fromkeys(f for c in compiled.values() for f in c.fields))

        def add_columns(piece: pa.RecordBatch) -> pa.RecordBatch:
            out = piece
            for name, expr in compiled.items():
                (values,) = evaluate(out, [expr.expression])
                out = set_column(out, name, as_array(values, out.num_rows))
            return out

        def with_columns(batch: pa.RecordBatch) -> BatchResult:
            available = set(batch.schema.names)
            for name, expr in compiled.items():
                missing = [f for f in expr.fields if f not in available]
                if missing:
                    return BatchResult(None, 0, rows_to_dead_letters(
                        batch, None, error_type="validation", step=step, ctx=ctx,
                        errors=missing_message(f"WithColumns ({name} = {expr.text!r})", missing, batch),
                        exception="KeyError"))
                available.add(name)
            isolated = apply_isolating(batch, add_columns)
            parts = [part for _, part in sorted(isolated.parts, key=lambda p: p[0]) if part.num_rows]
            out = with_metadata(concat_to_batch(pa.Table.from_batches(parts)), batch) if parts else None
            what = "WithColumns: evaluating " + "; ".join(f"{k} = {c.text}" for k, c in compiled.items())
            return BatchResult(out, 0, _failure_letters(batch, isolated.failures, what, reads, step, ctx))

        return with_columns


# --------------------------------------------------------------------------------------
# User functions
# --------------------------------------------------------------------------------------


def _to_batch(value: Any, like: pa.RecordBatch) -> pa.RecordBatch | None:
    if value is None:
        return None
    if isinstance(value, pa.RecordBatch):
        return with_metadata(value, like)
    if isinstance(value, pa.Table):
        return with_metadata(concat_to_batch(value), like)
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None
    if pd is not None and isinstance(value, pd.DataFrame):
        return with_metadata(concat_to_batch(pa.Table.from_pandas(value, preserve_index=False)), like)
    raise TypeError(
        f"MapBatches fn returned {type(value).__name__}; return a pyarrow RecordBatch, Table or pandas DataFrame"
    )


class MapBatches(NamedStep):
    """Applies ``fn`` to each batch: Arrow RecordBatch (or pandas DataFrame with
    ``input_format="pandas"``) in; RecordBatch, Table, DataFrame or None out.

    ``fn`` may be a callable or ``"package.module:function"``; ``fn_kwargs`` are passed as
    keyword arguments. Fewer rows out than in counts the difference as filtered. When
    ``fn`` raises on a batch it is re-run row by row (``row_fallback=True``) so only the
    rows it fails on go to the DLQ (``RecordError(msg, error_type)`` picks the category).
    """

    type_name = "MapBatches"

    def __init__(
        self,
        fn: Callable[..., Any] | str,
        *,
        input_format: str = "arrow",
        fn_kwargs: Mapping[str, Any] | None = None,
        row_fallback: bool = True,
        step: str | None = None,
    ) -> None:
        super().__init__(step)
        self.fn_path = fn if isinstance(fn, str) else getattr(fn, "__qualname__", repr(fn))
        self.fn = resolve_callable(fn, "MapBatches.fn")
        if input_format not in ("arrow", "pandas"):
            raise ValueError(f"MapBatches.input_format: {input_format!r} is not allowed; use 'arrow' or 'pandas'")
        if fn_kwargs is not None and not isinstance(fn_kwargs, Mapping):
            raise ValueError(f"MapBatches.fn_kwargs: {fn_kwargs!r} is not a mapping of keyword arguments")
        self.input_format = input_format
        self.fn_kwargs = dict(fn_kwargs or {})
        self.row_fallback = bool(row_fallback)

    def display_data(self) -> dict[str, Any]:
        return {"fn": self.fn_path, "input_format": self.input_format}

    def batch_fn(self) -> BatchFn:
        fn, kwargs, pandas_in = self.fn, self.fn_kwargs, self.input_format == "pandas"

        def map_batch(batch: pa.RecordBatch) -> BatchResult:
            arg = batch.to_pandas() if pandas_in else batch
            out = _to_batch(fn(arg, **kwargs), batch)
            n_out = out.num_rows if out is not None else 0
            return BatchResult(out, max(0, batch.num_rows - n_out))

        return map_batch


class MapRecords(NamedStep):
    """Applies ``fn(record: dict)`` to each row: a dict out keeps it, None filters it, a list
    of dicts expands it (an empty list filters it).

    A record ``fn`` raises on goes to the DLQ (error_type from the exception; raise
    ``beam_etl.transforms.base.RecordError(msg, error_type)`` to choose it).
    """

    row_fallback = False
    type_name = "MapRecords"

    def __init__(
        self,
        fn: Callable[..., Any] | str,
        *,
        fn_kwargs: Mapping[str, Any] | None = None,
        step: str | None = None,
    ) -> None:
        super().__init__(step)
        self.fn_path = fn if isinstance(fn, str) else getattr(fn, "__qualname__", repr(fn))
        self.fn = resolve_callable(fn, "MapRecords.fn")
        if fn_kwargs is not None and not isinstance(fn_kwargs, Mapping):
            raise ValueError(f"MapRecords.fn_kwargs: {fn_kwargs!r} is not a mapping of keyword arguments")
        self.fn_kwargs = dict(fn_kwargs or {})

    def display_data(self) -> dict[str, Any]:
        return {"fn": self.fn_path}

    def batch_fn(self) -> BatchFn:
        fn, kwargs, step, ctx = self.fn, self.fn_kwargs, self.step_name(), self._ctx

        def letter(batch: pa.RecordBatch, row: int, record: dict[str, Any], error_type: str, message: str,
                   exc: BaseException | str | None) -> dict[str, Any]:
            return dead_letter(record, error_type=error_type, error=message, exception=exc, step=step,
                               source=batch_source(batch, row), ctx=ctx)

        def map_records(batch: pa.RecordBatch) -> BatchResult:
            out: list[dict[str, Any]] = []
            origin: list[tuple[int, dict[str, Any]]] = []
            result = BatchResult(None)
            for row, record in enumerate(batch.to_pylist()):
                try:
                    value = fn(dict(record), **kwargs)
                except Exception as exc:  # noqa: BLE001 - a failing record goes to the DLQ
                    result.dead_letters.append(
                        letter(batch, row, record, classify_error(exc), f"MapRecords: {exc}", exc))
                    continue
                if value is None:
                    result.filtered += 1
                    continue
                items = value if isinstance(value, (list, tuple)) else [value]
                bad = next((v for v in items if not isinstance(v, dict)), None) if items else None
                if bad is not None or not isinstance(value, (dict, list, tuple)):
                    got = type(value if bad is None else bad).__name__
                    result.dead_letters.append(letter(
                        batch, row, record, "type",
                        f"MapRecords: fn returned {got}; expected a dict, None or a list of dicts", "TypeError"))
                    continue
                if not items:
                    result.filtered += 1
                for item in items:
                    out.append(item)
                    origin.append((row, record))
            if out:
                built, rejected = records_to_batch_isolating(out)
                for index, message in rejected:
                    row, record = origin[index]
                    result.dead_letters.append(letter(batch, row, out[index], "type", message, "ArrowTypeError"))
                result.batch = with_metadata(built, batch) if built is not None else None
            return result

        return map_records


def records_to_batch_isolating(records: list[dict[str, Any]]) -> tuple[pa.RecordBatch | None, list[tuple[int, str]]]:
    """Builds a batch from dicts (union of keys, first-seen order); returns it and the records
    whose values do not fit their column's type as ``(index, message)``."""
    keys = list(dict.fromkeys(k for r in records for k in r))
    columns: dict[str, pa.Array] = {}
    rejected: dict[int, str] = {}
    for key in keys:
        values = [r.get(key) for r in records]
        try:
            columns[key] = pa.array(values)
            continue
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            pass
        # The column's type is the one most of its values have (ties: the first seen).
        classes = collections.Counter(type(v) for v in values if v is not None)
        common = classes.most_common(1)[0][0]
        typ = pa.array([next(v for v in values if type(v) is common)]).type
        for i, v in enumerate(values):
            try:
                pa.array([v], type=typ)
            except (pa.ArrowException, ValueError, TypeError, OverflowError):
                rejected.setdefault(i, f"MapRecords: output field {key!r} value {_short(v)} does not match "
                                       f"the type {typ} of most records")
    if rejected:
        keep = [r for i, r in enumerate(records) if i not in rejected]
        if not keep:
            return None, sorted(rejected.items())
        batch, more = records_to_batch_isolating(keep)
        return batch, sorted(rejected.items()) + more
    return pa.RecordBatch.from_arrays(list(columns.values()), names=keys), []


# --------------------------------------------------------------------------------------
# Registration (YAML ``type:`` names)
# --------------------------------------------------------------------------------------


class SelectConfig(registry.StrictConfig):
    """Keep only the listed columns, in that order."""

    fields: list[str] = Field(min_length=1, description="Columns to keep, in output order.")
    ignore_missing: bool = Field(False, description="Skip listed columns the input lacks instead of dead-lettering.")

    @model_validator(mode="after")
    def _check(self) -> SelectConfig:
        Select(self.fields, ignore_missing=self.ignore_missing, step="check")
        return self


class RenameConfig(registry.StrictConfig):
    """Rename columns; others keep their names and order."""

    fields: dict[str, str] = Field(min_length=1, description="Mapping old name -> new name.")
    ignore_missing: bool = Field(False, description="Skip old names the input lacks instead of dead-lettering.")

    @model_validator(mode="after")
    def _check(self) -> RenameConfig:
        Rename(self.fields, ignore_missing=self.ignore_missing, step="check")
        return self


class CastConfig(registry.StrictConfig):
    """Cast columns to string, int, float, bool, date, timestamp[(tz)] or decimal(p,s)."""

    fields: dict[str, str] = Field(min_length=1, description=f"Mapping column -> type ({CAST_TYPES}).")
    formats: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Per date/timestamp column, strptime formats tried in order ('iso' = ISO 8601).")
    on_error: Literal["dlq", "null"] = Field(
        "dlq", description="dlq: rows with a value that does not cast go to the DLQ; null: store null instead.")
    ignore_missing: bool = Field(False, description="Skip columns the input lacks instead of dead-lettering.")

    @model_validator(mode="after")
    def _check(self) -> CastConfig:
        Cast(self.fields, formats=self.formats, on_error=self.on_error, step="check")
        return self


class FilterConfig(registry.StrictConfig):
    """Keep rows where a condition holds; others are counted as filtered."""

    expression: str = Field(description="Condition in the beam_etl expression language, e.g. \"amount > 0\".")

    @field_validator("expression")
    @classmethod
    def _check(cls, value: str) -> str:
        Filter(value, step="check")
        return value


class WithColumnsConfig(registry.StrictConfig):
    """Add or replace columns computed from expressions, in order."""

    columns: dict[str, str] = Field(min_length=1, description="Mapping new column -> expression.")

    @field_validator("columns")
    @classmethod
    def _check(cls, value: dict[str, str]) -> dict[str, str]:
        WithColumns(value, step="check")
        return value


class MapBatchesConfig(registry.StrictConfig):
    """Apply a user function to each Arrow batch (or pandas DataFrame)."""

    fn: str = Field(description="Import path 'package.module:function'.")
    input_format: Literal["arrow", "pandas"] = Field("arrow", description="What fn receives.")
    fn_kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments passed to fn.")
    row_fallback: bool = Field(True, description="Re-run fn row by row when it raises, to isolate bad rows.")

    @field_validator("fn")
    @classmethod
    def _check(cls, value: str) -> str:
        load_callable(value, "fn")
        return value


class MapRecordsConfig(registry.StrictConfig):
    """Apply a user function to each record (dict in; dict, None or list of dicts out)."""

    fn: str = Field(description="Import path 'package.module:function'.")
    fn_kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments passed to fn.")

    @field_validator("fn")
    @classmethod
    def _check(cls, value: str) -> str:
        load_callable(value, "fn")
        return value


@registry.register("step", "Select", SelectConfig, streaming=True,
                   reads=lambda config: registry.ColumnUse(frozenset(config.fields), passes_through=False))
def build_select(config: SelectConfig, ctx: registry.BuildContext) -> Select:
    """Keep only the listed columns, in that order."""
    return Select(config.fields, ignore_missing=config.ignore_missing, step=ctx.step_name)


@registry.register("step", "Rename", RenameConfig, streaming=True)
def build_rename(config: RenameConfig, ctx: registry.BuildContext) -> Rename:
    """Rename columns."""
    return Rename(config.fields, ignore_missing=config.ignore_missing, step=ctx.step_name)


@registry.register("step", "Cast", CastConfig, streaming=True)
def build_cast(config: CastConfig, ctx: registry.BuildContext) -> Cast:
    """Cast columns to other types; values that do not cast go to the DLQ (or become null)."""
    return Cast(config.fields, formats=config.formats, on_error=config.on_error,
                ignore_missing=config.ignore_missing, step=ctx.step_name)


@registry.register("step", "Filter", FilterConfig, streaming=True)
def build_filter(config: FilterConfig, ctx: registry.BuildContext) -> Filter:
    """Keep rows matching an expression; the rest are counted as filtered."""
    return Filter(config.expression, step=ctx.step_name)


@registry.register("step", "WithColumns", WithColumnsConfig, streaming=True)
def build_with_columns(config: WithColumnsConfig, ctx: registry.BuildContext) -> WithColumns:
    """Add or replace columns computed from expressions."""
    return WithColumns(config.columns, step=ctx.step_name)


@registry.register("step", "MapBatches", MapBatchesConfig, streaming=True)
def build_map_batches(config: MapBatchesConfig, ctx: registry.BuildContext) -> MapBatches:
    """Apply a user function to each batch (Arrow or pandas)."""
    return MapBatches(config.fn, input_format=config.input_format, fn_kwargs=config.fn_kwargs,
                      row_fallback=config.row_fallback, step=ctx.step_name)


@registry.register("step", "MapRecords", MapRecordsConfig, streaming=True)
def build_map_records(config: MapRecordsConfig, ctx: registry.BuildContext) -> MapRecords:
    """Apply a user function to each record."""
    return MapRecords(config.fn, fn_kwargs=config.fn_kwargs, step=ctx.step_name)


__all__ = [
    "CAST_TYPES", "DEFAULT_DATETIME_FORMATS", "Cast", "CastType", "CompiledExpression", "Filter", "MapBatches",
    "MapRecords", "RecordError", "Rename", "Select", "WithColumns", "cast_array", "compile_expression", "evaluate",
    "load_callable", "parse_cast_type", "parse_datetime_strings",
]
