"""QualityScorer: a per-record quality score and flags; QualityReport: per-run summary.

``QualityScorer`` adds two columns to every record:

- ``_quality_score`` (float64, 0..1)
- ``_quality_flags`` (list<string>): ``"field:reason"`` with reason null, type, pattern,
  range or allowed, in field order.

Scoring, for one record with checked fields ``C``::

    N  = checked fields that are non-null          (null = null, or a blank string)
    P  = fields in N that pass every rule of theirs
    R  = required fields that are null
    completeness = |N| / |C|                        (1 when C is empty)
    validity     = |P| / (|N| + |R|)                (1 when the denominator is 0)
    score = (w_c * completeness + w_v * validity) / (w_c + w_v)     (defaults w_c = w_v = 0.5)

Checked fields are those with a declared rule plus, with ``infer=True`` (default), every
other column except ``exclude`` and the quality columns. A field's type is its declared
``type``, else one inferred from the Arrow type (numbers must be finite) or, for string
columns, from the column name (email, phone, url, date/ts/*_at, country, uuid, ip).

Every check is vectorised (``pc.match_substring_regex``, compare and set kernels).
``QualityReport`` is a global combine over scored batches producing one dict; with
``report_path`` the scorer writes that report itself as JSON (via Beam FileSystems) once,
when the input ends.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from pydantic import Field, model_validator

from beam_etl import registry
from beam_etl.ops.dlq import DLQ_TAG
from beam_etl.transforms.base import BatchFnDoFn, BatchResult, batch_source
from beam_etl.transforms.mapping import (
    FALSE_WORDS,
    TRUE_WORDS,
    NamedStep,
    as_array,
    parse_datetime_strings,
    to_numpy_bool,
)

SCORE_FIELD = "_quality_score"
FLAGS_FIELD = "_quality_flags"
QUALITY_FIELDS_KEY = b"beam_etl.quality_fields"
REASONS = ("null", "type", "range", "pattern", "allowed")
HISTOGRAM_BINS = 10
STATS_TAG = "quality_stats"

SEMANTIC_TYPES = ("string", "int", "float", "bool", "date", "email", "phone", "url", "uuid", "ipv4", "country_code",
                  "country")
_STRING_ONLY_TYPES = ("string", "bool", "email", "phone", "url", "uuid", "ipv4", "country_code", "country")

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
EMAIL_RE = rf"^[A-Za-z0-9._%+'-]+@{_LABEL}(?:\.{_LABEL})*\.[A-Za-z]{{2,}}$"
PHONE_RE = r"^\+?[0-9][0-9 ().\-/]{5,23}[0-9]$"
URL_RE = (r"(?i)^(https?|ftp)://([^\s/?#@]+@)?([a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+"
          r"|localhost|\[[0-9a-f:]+\])(:\d{1,5})?([/?#]\S*)?$")
UUID_RE = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4_RE = rf"^{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}$"
INT_RE = r"^[+-]?\d+$"
FLOAT_RE = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
COUNTRY_NAME_RE = r"^\s*\p{L}[\p{L}'.() -]{2,59}\s*$"  # a name such as "United Kingdom" or "Côte d'Ivoire"
PATTERNS = {"email": EMAIL_RE, "phone": PHONE_RE, "url": URL_RE, "uuid": UUID_RE, "ipv4": IPV4_RE}

# ISO 3166-1 alpha-2 codes, plus the widely used UK and XK.
_COUNTRY_TABLE = """
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ
CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR
GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP
KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT
MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW
SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG
UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW UK XK
"""
COUNTRY_CODES = frozenset(_COUNTRY_TABLE.split())


def infer_semantic_type(name: str) -> str | None:
    """The semantic type a string column's name suggests, or None.

    Tokens come from splitting on non-alphanumerics and camelCase: ``email``/``e_mail`` ->
    email; ``phone``/``mobile``/``tel``/``fax`` -> phone; ``url``/``uri``/``website``/
    ``homepage`` -> url; ``date``/``dob``/``timestamp``/``datetime``/``ts`` or a trailing
    ``at``/``on`` (``created_at``) -> date; ``country`` -> country (a code or a name); ``uuid``/``guid`` ->
    uuid; ``ip``/``ipv4`` -> ipv4.
    """
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
    tokens = [t for t in re.split(r"[^a-z0-9]+", snake) if t]
    if not tokens:
        return None
    words = set(tokens)
    if words & {"email", "emails"} or "e_mail" in snake:
        return "email"
    if words & {"phone", "mobile", "tel", "telephone", "fax", "cellphone"}:
        return "phone"
    if words & {"url", "uri", "website", "homepage"}:
        return "url"
    if words & {"uuid", "guid"}:
        return "uuid"
    if words & {"ip", "ipv4"}:
        return "ipv4"
    if "country" in words:
        return "country"
    if words & {"date", "dob", "timestamp", "datetime", "ts"} or (len(tokens) > 1 and tokens[-1] in ("at", "on")):
        return "date"
    return None


# --------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FieldRule:
    """One field's declared rule (all keys optional)."""

    type: str | None = None
    required: bool = False
    min: float | dt.datetime | None = None
    max: float | dt.datetime | None = None
    pattern: str | None = None
    allowed: tuple[Any, ...] | None = None


_RULE_KEYS = ("type", "required", "min", "max", "pattern", "allowed")


def _bound(value: Any, where: str) -> float | dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{where}: {value!r} is not a number or a date")
    if isinstance(value, (int, float)):
        if math.isnan(value):
            raise ValueError(f"{where}: NaN is not a bound")
        return float(value)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        parsed = parse_datetime_strings(pa.array([value]))[0].as_py()
        if parsed is None:
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"{where}: {value!r} is not a number or a date such as '2024-01-31'") from None
        return parsed
    raise ValueError(f"{where}: {value!r} is not a number or a date")


def parse_rule(field: str, spec: Mapping[str, Any] | FieldRule | Any) -> FieldRule:
    """Validates one field's rule mapping; ValueError names the key, value and what is allowed."""
    where = f"QualityScorer.rules.{field}"
    if isinstance(spec, FieldRule):
        return spec
    if hasattr(spec, "model_dump"):
        spec = spec.model_dump(exclude_none=True)
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: {spec!r} is not a mapping of {', '.join(_RULE_KEYS)}")
    unknown = sorted(set(spec) - set(_RULE_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(_RULE_KEYS)}")
    typ = spec.get("type")
    if typ is not None and typ not in SEMANTIC_TYPES:
        raise ValueError(f"{where}.type: {typ!r} is not allowed; use one of {', '.join(SEMANTIC_TYPES)}")
    required = spec.get("required", False)
    if not isinstance(required, bool):
        raise ValueError(f"{where}.required: {required!r} is not true or false")
    low, high = _bound(spec.get("min"), f"{where}.min"), _bound(spec.get("max"), f"{where}.max")
    if (low is not None or high is not None) and typ in _STRING_ONLY_TYPES:
        raise ValueError(f"{where}: min/max do not apply to type {typ!r}; they apply to int, float, date or numbers")
    if low is not None and high is not None:
        if type(low) is not type(high):
            raise ValueError(f"{where}: min {spec.get('min')!r} and max {spec.get('max')!r} must both be numbers "
                             "or both dates")
        if low > high:
            raise ValueError(f"{where}: min {spec.get('min')!r} is greater than max {spec.get('max')!r}")
    kind = low if low is not None else high
    if kind is not None and typ in ("int", "float") and isinstance(kind, dt.datetime):
        raise ValueError(f"{where}: type {typ!r} needs numeric min/max, not {spec.get('min', spec.get('max'))!r}")
    if kind is not None and typ == "date" and isinstance(kind, float):
        raise ValueError(f"{where}: type 'date' needs date min/max like '2024-01-31', not "
                         f"{spec.get('min', spec.get('max'))!r}")
    pattern = spec.get("pattern")
    if pattern is not None:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"{where}.pattern: {pattern!r} is not a regular expression string")
        try:
            pc.match_substring_regex(pa.array(["x"]), pattern)
        except pa.ArrowInvalid as err:
            raise ValueError(f"{where}.pattern: {pattern!r} is not a valid RE2 regular expression ({err})") from err
    allowed = spec.get("allowed")
    if allowed is not None:
        if isinstance(allowed, (str, bytes)) or not isinstance(allowed, Sequence) or not allowed:
            raise ValueError(f"{where}.allowed: {allowed!r} is not a non-empty list of values")
        allowed = tuple(allowed)
    return FieldRule(typ, required, low, high, pattern, allowed)


def _is_string(typ: pa.DataType) -> bool:
    return pa.types.is_string(typ) or pa.types.is_large_string(typ)


def _is_numeric(typ: pa.DataType) -> bool:
    return pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ)


def _effective_type(name: str, rule: FieldRule | None, typ: pa.DataType) -> str | None:
    if rule is not None and rule.type is not None:
        return rule.type
    if _is_string(typ):
        inferred = infer_semantic_type(name)
        if rule is not None and (rule.min is not None or rule.max is not None):
            bound = rule.min if rule.min is not None else rule.max
            return "date" if isinstance(bound, dt.datetime) else "float"
        return inferred or "string"
    if pa.types.is_integer(typ):
        return "int"
    if pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        return "float"
    if pa.types.is_boolean(typ):
        return "bool"
    if pa.types.is_temporal(typ):
        return "date"
    return None


@dataclasses.dataclass
class _Checked:
    null: np.ndarray
    fails: dict[str, np.ndarray]  # reason -> rows failing it (non-null rows only)


def _np(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return to_numpy_bool(mask)


def _typed_check(values: pa.Array, text: pa.Array | None, typ: str | None) -> tuple[np.ndarray, pa.Array | None]:
    """Returns (type-valid mask over all rows, typed values for range checks or None)."""
    n = len(values)
    ok_all = np.ones(n, dtype=bool)
    vtype = values.type
    if typ is None or typ == "string":
        return ok_all, None
    if _is_string(vtype):
        s = values
        if typ == "int":
            ok = pc.match_substring_regex(s, INT_RE)
            return _np(ok), pc.cast(pc.if_else(ok, s, pa.scalar(None, s.type)), pa.float64())
        if typ == "float":
            ok = pc.match_substring_regex(s, FLOAT_RE)
            numbers = pc.cast(pc.if_else(ok, s, pa.scalar(None, s.type)), pa.float64())
            ok = pc.and_(ok, pc.is_finite(numbers))
            return _np(ok), numbers
        if typ == "bool":
            lowered = pc.utf8_lower(s)
            ok = pc.is_in(lowered, value_set=pa.array(TRUE_WORDS + FALSE_WORDS))
            return _np(ok), None
        if typ == "date":
            parsed = parse_datetime_strings(s)
            return _np(pc.is_valid(parsed)), parsed
        if typ in ("country_code", "country"):
            ok = pc.is_in(pc.utf8_upper(pc.utf8_trim_whitespace(s)), value_set=pa.array(sorted(COUNTRY_CODES)))
            if typ == "country":
                ok = pc.or_(ok, pc.match_substring_regex(s, COUNTRY_NAME_RE))
            return _np(ok), None
        ok = pc.match_substring_regex(s, PATTERNS[typ])
        if typ == "phone":
            digits = pc.utf8_length(pc.replace_substring_regex(s, r"\D", ""))
            ok = pc.and_(ok, pc.and_(pc.greater_equal(digits, 7), pc.less_equal(digits, 15)))
        return _np(ok), None
    if _is_numeric(vtype):
        numbers = values.cast(pa.float64()) if not pa.types.is_floating(vtype) else values
        finite = pc.is_finite(numbers)
        if typ == "float":
            return _np(finite), numbers
        if typ == "int":
            whole = pc.and_(finite, pc.equal(pc.floor(numbers), numbers))
            return _np(whole), numbers
        if typ == "bool":
            return _np(pc.is_in(numbers, value_set=pa.array([0.0, 1.0]))), None
        if typ in ("phone",) and text is not None:
            return _typed_check(text, None, typ)
        return np.zeros(n, dtype=bool), None
    if pa.types.is_boolean(vtype):
        return (ok_all if typ == "bool" else np.zeros(n, dtype=bool)), None
    if pa.types.is_temporal(vtype):
        if typ != "date":
            return np.zeros(n, dtype=bool), None
        if pa.types.is_timestamp(vtype) and vtype.tz is not None:
            return ok_all, values.cast(pa.timestamp("us", vtype.tz)).cast(pa.timestamp("us"))
        try:
            return ok_all, values.cast(pa.timestamp("us"))
        except pa.ArrowException:
            return ok_all, None
    if text is not None:
        return _typed_check(text, None, typ)
    return np.zeros(n, dtype=bool), None


def _range_fail(typed: pa.Array | None, rule: FieldRule, type_ok: np.ndarray) -> np.ndarray:
    n = len(type_ok)
    if rule.min is None and rule.max is None:
        return np.zeros(n, dtype=bool)
    bound = rule.min if rule.min is not None else rule.max
    wants_date = isinstance(bound, dt.datetime)
    is_date = typed is not None and pa.types.is_timestamp(typed.type)
    if typed is None or wants_date != is_date:
        return type_ok.copy()  # bounds of another kind than the values: nothing can be in range
    inside = pa.array(np.ones(n, dtype=bool))
    if rule.min is not None:
        low = pa.scalar(rule.min, type=typed.type)
        inside = pc.and_(inside, pc.greater_equal(typed, low))
    if rule.max is not None:
        high = pa.scalar(rule.max, type=typed.type)
        inside = pc.and_(inside, pc.less_equal(typed, high))
    return type_ok & ~_np(inside)


def _allowed_ok(values: pa.Array, text: pa.Array | None, allowed: tuple[Any, ...]) -> np.ndarray:
    try:
        value_set = pa.array(list(allowed)).cast(values.type)
        return _np(pc.is_in(values, value_set=value_set))
    except (pa.ArrowException, ValueError, TypeError):
        if text is None:
            return np.zeros(len(values), dtype=bool)
        return _np(pc.is_in(text, value_set=pa.array([str(v) for v in allowed])))


def check_field(name: str, column: pa.Array | None, rule: FieldRule | None, n: int) -> _Checked:
    """Null mask and per-reason failure masks of one checked field."""
    if column is None:
        return _Checked(np.ones(n, dtype=bool), {})
    values = as_array(column)
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if _is_string(values.type):
        trimmed = as_array(pc.utf8_trim_whitespace(values))
        values = as_array(pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, trimmed.type), trimmed))
    null = _np(pc.is_null(values))
    present = ~null
    typ = _effective_type(name, rule, values.type)
    text: pa.Array | None
    if _is_string(values.type):
        text = values
    else:
        try:
            text = as_array(pc.cast(values, pa.string()))
        except pa.ArrowException:
            text = None
    type_ok, typed = _typed_check(values, text, typ)
    fails: dict[str, np.ndarray] = {}
    type_fail = present & ~type_ok
    if type_fail.any():
        fails["type"] = type_fail
    if rule is not None:
        if rule.min is not None or rule.max is not None:
            range_fail = present & _range_fail(typed, rule, type_ok & present)
            if range_fail.any():
                fails["range"] = range_fail
        if rule.pattern is not None:
            matched = _np(pc.match_substring_regex(text, rule.pattern)) if text is not None else np.zeros(n, bool)
            pattern_fail = present & ~matched
            if pattern_fail.any():
                fails["pattern"] = pattern_fail
        if rule.allowed is not None:
            allowed_fail = present & ~_allowed_ok(values, text, rule.allowed)
            if allowed_fail.any():
                fails["allowed"] = allowed_fail
    return _Checked(null, fails)


# --------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------


def _flags_array(n: int, flags: list[tuple[str, np.ndarray]]) -> pa.Array:
    """Builds list<string> flags from (flag text, row mask) pairs, keeping their order per row."""
    rows_parts = [np.flatnonzero(mask) for _, mask in flags]
    codes_parts = [np.full(len(rows), code, dtype=np.int32) for code, rows in enumerate(rows_parts)]
    rows = np.concatenate(rows_parts) if rows_parts else np.empty(0, dtype=np.int64)
    codes = np.concatenate(codes_parts) if codes_parts else np.empty(0, dtype=np.int32)
    order = np.lexsort((codes, rows))
    counts = np.bincount(rows, minlength=n) if len(rows) else np.zeros(n, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    dictionary = pa.array([text for text, _ in flags], type=pa.string())
    values = pa.DictionaryArray.from_arrays(pa.array(codes[order], type=pa.int32()), dictionary).cast(pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), values)


@dataclasses.dataclass(frozen=True)
class Scorer:
    """The scoring function of QualityScorer, usable on its own: ``Scorer(...).score(batch)``."""

    rules: dict[str, FieldRule]
    infer: bool = True
    exclude: tuple[str, ...] = ()
    completeness_weight: float = 0.5
    validity_weight: float = 0.5

    def checked_fields(self, schema: pa.Schema) -> list[str]:
        """Declared-rule fields first, then (with ``infer``) every other column."""
        fields = list(self.rules)
        if self.infer:
            skip = set(self.exclude) | {SCORE_FIELD, FLAGS_FIELD} | set(fields)
            fields += [n for n in schema.names if n not in skip]
        return fields

    def score(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, dict[str, _Checked]]:
        """Returns the batch with the two quality columns, and each field's masks."""
        n = batch.num_rows
        base = batch
        for name in (SCORE_FIELD, FLAGS_FIELD):
            if name in base.schema.names:
                base = base.drop_columns([name])
        fields = self.checked_fields(base.schema)
        checks = {
            name: check_field(name, base.column(name) if name in base.schema.names else None,
                              self.rules.get(name), n)
            for name in fields
        }
        nonnull = np.zeros(n, dtype=np.float64)
        passing = np.zeros(n, dtype=np.float64)
        required_null = np.zeros(n, dtype=np.float64)
        flags: list[tuple[str, np.ndarray]] = []
        for name, checked in checks.items():
            present = ~checked.null
            failed = np.zeros(n, dtype=bool)
            for mask in checked.fails.values():
                failed |= mask
            nonnull += present
            passing += present & ~failed
            rule = self.rules.get(name)
            if rule is not None and rule.required:
                required_null += checked.null
            if checked.null.any():
                flags.append((f"{name}:null", checked.null))
            for reason in REASONS[1:]:
                if reason in checked.fails:
                    flags.append((f"{name}:{reason}", checked.fails[reason]))
        total = len(fields)
        completeness = nonnull / total if total else np.ones(n)
        denominator = nonnull + required_null
        validity = np.divide(passing, denominator, out=np.ones(n), where=denominator > 0)
        wc, wv = self.completeness_weight, self.validity_weight
        score = (wc * completeness + wv * validity) / (wc + wv)
        scored = pa.RecordBatch.from_arrays(
            [*base.columns, pa.array(score, type=pa.float64()), _flags_array(n, flags)],
            names=[*base.schema.names, SCORE_FIELD, FLAGS_FIELD],
        )
        meta = dict(batch.schema.metadata or {})
        meta[QUALITY_FIELDS_KEY] = json.dumps(fields).encode()
        return scored.replace_schema_metadata(meta), checks


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _ScoreDoFn(BatchFnDoFn):
    """Scores each batch, splits off records under ``min_score`` and emits report partials."""

    def __init__(self, scorer: Scorer, min_score: float | None, report: bool, step: str) -> None:
        super().__init__(lambda b: b, step, row_fallback=False)
        self._scorer = scorer
        self._min_score = min_score
        self._report = report

    def process(self, batch: pa.RecordBatch) -> Any:
        partials: list[dict[str, Any]] = []

        def score(b: pa.RecordBatch) -> BatchResult:
            scored, checks = self._scorer.score(b)
            if self._report:
                partials.append(report_partial(scored))
            if self._min_score is None:
                return BatchResult(scored)
            scores = scored.column(SCORE_FIELD).to_numpy()
            low = scores < self._min_score
            if not low.any():
                return BatchResult(scored)
            return BatchResult(scored.filter(pa.array(~low)), 0, self._letters(b, scored, checks, low))

        self._fn = score
        yield from super().process(batch)
        for partial in partials:
            yield beam.pvalue.TaggedOutput(STATS_TAG, partial)

    def _letters(self, batch: pa.RecordBatch, scored: pa.RecordBatch, checks: dict[str, _Checked],
                 low: np.ndarray) -> list[dict[str, Any]]:
        from beam_etl.ops.dlq import dead_letter

        rows = np.flatnonzero(low)
        index = pa.array(rows, type=pa.int64())
        records = batch.drop_columns([c for c in (SCORE_FIELD, FLAGS_FIELD) if c in batch.schema.names]) \
            .take(index).to_pylist()
        scores = scored.column(SCORE_FIELD).take(index).to_pylist()
        flags = scored.column(FLAGS_FIELD).take(index).to_pylist()
        letters = []
        for row, record, score, row_flags in zip(rows.tolist(), records, scores, flags, strict=True):
            described = []
            for flag in row_flags:
                name, _, reason = flag.rpartition(":")
                value = record.get(name)
                described.append(f"{flag} (value {_short(value)})" if reason != "null" else flag)
            message = (f"QualityScorer: quality score {score:.3f} is below min_score {self._min_score}; "
                       f"flags: {', '.join(described) or 'none'}")
            letters.append(dead_letter(record, error_type="validation", error=message, exception="QualityError",
                                       step=self._step, source=batch_source(batch, row), ctx=self._ctx))
        return letters


class QualityScorer(NamedStep):
    """Adds ``_quality_score`` (0..1) and ``_quality_flags`` (``"field:reason"``) to each record.

    ``rules={field: {type, required, min, max, pattern, allowed}}``; ``infer`` (default
    True) also checks every other column with rules inferred from its type and name;
    ``exclude`` lists columns never checked; ``weights={completeness, validity}``
    (default 0.5 each); ``min_score`` sends records below it to the DLQ (error_type
    ``validation``, flags in the message); ``report_path`` writes the run's quality report
    (``QualityReport``) there as JSON once the input ends.
    """

    row_fallback = False
    type_name = "QualityScorer"

    def __init__(
        self,
        rules: Mapping[str, Any] | None = None,
        *,
        infer: bool = True,
        exclude: Sequence[str] = (),
        weights: Mapping[str, float] | None = None,
        min_score: float | None = None,
        report_path: str | None = None,
        step: str | None = None,
    ) -> None:
        super().__init__(step)
        if rules is not None and not isinstance(rules, Mapping):
            raise ValueError(f"QualityScorer.rules: {rules!r} is not a mapping of field -> rule")
        parsed = {name: parse_rule(name, spec) for name, spec in (rules or {}).items()}
        if isinstance(exclude, str) or not isinstance(exclude, Sequence):
            raise ValueError(f"QualityScorer.exclude: {exclude!r} is not a list of column names")
        clash = sorted(set(parsed) & set(exclude))
        if clash:
            raise ValueError(f"QualityScorer.exclude: {clash} also have rules; a field is either checked or excluded")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - {"completeness", "validity"})
        if unknown:
            raise ValueError(f"QualityScorer.weights: unknown key(s) {unknown}; allowed: completeness, validity")
        wc, wv = weights.get("completeness", 0.5), weights.get("validity", 0.5)
        for key, value in (("completeness", wc), ("validity", wv)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or math.isnan(value):
                raise ValueError(f"QualityScorer.weights.{key}: {value!r} is not a number >= 0")
        if wc + wv <= 0:
            raise ValueError(f"QualityScorer.weights: {weights!r} are both 0; at least one must be > 0")
        if min_score is not None and (isinstance(min_score, bool) or not isinstance(min_score, (int, float))
                                      or not 0 <= min_score <= 1):
            raise ValueError(f"QualityScorer.min_score: {min_score!r} is not a number between 0 and 1")
        if report_path is not None and (not isinstance(report_path, str) or not report_path.strip()):
            raise ValueError(f"QualityScorer.report_path: {report_path!r} is not a file path")
        self.scorer = Scorer(parsed, bool(infer), tuple(exclude), float(wc), float(wv))
        self.min_score = None if min_score is None else float(min_score)
        self.report_path = report_path

    def display_data(self) -> dict[str, Any]:
        return {"rules": ", ".join(self.scorer.rules) or "(inferred)", "infer": self.scorer.infer,
                "weights": f"completeness={self.scorer.completeness_weight}, validity={self.scorer.validity_weight}",
                "min_score": str(self.min_score), "report_path": self.report_path or ""}

    def batch_fn(self) -> Any:
        scorer = self.scorer
        return lambda batch: scorer.score(batch)[0]

    def expand(self, pcoll: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        report = self.report_path is not None
        results = pcoll | "Score" >> beam.ParDo(
            _ScoreDoFn(self.scorer, self.min_score, report, self.step_name())
        ).with_outputs(DLQ_TAG, STATS_TAG, main="output")
        if report:
            _ = (
                results[STATS_TAG]
                | "CombineReport" >> _combine_globally(results[STATS_TAG], QualityReportFn(partials=True))
                | "WriteReport" >> WriteQualityReport(self.report_path)
            )
        return results.output, results[DLQ_TAG]


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------


def report_partial(batch: pa.RecordBatch) -> dict[str, Any]:
    """Per-batch report partial of a scored batch (vectorised)."""
    n = batch.num_rows
    meta = batch.schema.metadata or {}
    fields = json.loads(meta[QUALITY_FIELDS_KEY]) if QUALITY_FIELDS_KEY in meta else []
    partial: dict[str, Any] = {"records": n, "score_sum": 0.0, "histogram": [0] * HISTOGRAM_BINS,
                               "fields": {f: [0, 0] for f in fields}}
    if not n:
        return partial
    if SCORE_FIELD in batch.schema.names:
        scores = as_array(pc.fill_null(batch.column(SCORE_FIELD), 0.0)).to_numpy(zero_copy_only=False)
        partial["score_sum"] = float(scores.sum())
        bins = np.clip((scores * HISTOGRAM_BINS).astype(np.int64), 0, HISTOGRAM_BINS - 1)
        partial["histogram"] = np.bincount(bins, minlength=HISTOGRAM_BINS).tolist()
    if FLAGS_FIELD in batch.schema.names:
        flags = as_array(batch.column(FLAGS_FIELD))
        flat = pc.list_flatten(flags)
        if len(flat):
            parents = pc.list_parent_indices(flags)
            parts = pc.split_pattern(flat, ":", max_splits=1, reverse=True)
            table = pa.table({"row": parents, "field": pc.list_element(parts, 0), "reason": pc.list_element(parts, 1)})
            is_null = pc.equal(table["reason"], "null")
            nulls = table.filter(is_null).group_by("field").aggregate([("row", "count")])
            invalid = table.filter(pc.invert(is_null)).group_by("field").aggregate([("row", "count_distinct")])
            for field, count in zip(nulls["field"].to_pylist(), nulls["row_count"].to_pylist(), strict=True):
                partial["fields"].setdefault(field, [0, 0])[0] += count
            for field, count in zip(invalid["field"].to_pylist(), invalid["row_count_distinct"].to_pylist(),
                                    strict=True):
                partial["fields"].setdefault(field, [0, 0])[1] += count
    return partial


class QualityReportFn(beam.CombineFn):
    """Global combine of scored batches (or, with ``partials=True``, of ``report_partial`` dicts).

    Output::

        {"records": N, "mean_score": float | None,
         "score_histogram": {"bins": [0.0, 0.1, ..., 1.0], "counts": [10 ints]},
         "fields": {name: {"null_count", "null_rate", "invalid_count", "invalid_rate"}}}

    ``null_rate`` = nulls / N; ``invalid_rate`` = invalid non-null values / non-null values.
    """

    def __init__(self, partials: bool = False) -> None:
        self._partials = partials

    def create_accumulator(self) -> dict[str, Any]:
        return {"records": 0, "score_sum": 0.0, "histogram": [0] * HISTOGRAM_BINS, "fields": {}}

    def add_input(self, acc: dict[str, Any], element: Any) -> dict[str, Any]:
        partial = element if self._partials else report_partial(element)
        return self.merge_accumulators([acc, partial])

    def merge_accumulators(self, accumulators: Any) -> dict[str, Any]:
        out = self.create_accumulator()
        for acc in accumulators:
            out["records"] += acc["records"]
            out["score_sum"] += acc["score_sum"]
            out["histogram"] = [a + b for a, b in zip(out["histogram"], acc["histogram"], strict=True)]
            for field, (nulls, invalid) in acc["fields"].items():
                mine = out["fields"].setdefault(field, [0, 0])
                mine[0] += nulls
                mine[1] += invalid
        return out

    def extract_output(self, acc: dict[str, Any]) -> dict[str, Any]:
        n = acc["records"]
        fields = {}
        for field, (nulls, invalid) in acc["fields"].items():
            present = n - nulls
            fields[field] = {
                "null_count": nulls, "null_rate": nulls / n if n else 0.0,
                "invalid_count": invalid, "invalid_rate": invalid / present if present else 0.0,
            }
        return {
            "records": n,
            "mean_score": acc["score_sum"] / n if n else None,
            "score_histogram": {"bins": [round(i / HISTOGRAM_BINS, 2) for i in range(HISTOGRAM_BINS + 1)],
                                "counts": list(acc["histogram"])},
            "fields": fields,
        }


def _combine_globally(pcoll: beam.PCollection, fn: beam.CombineFn) -> beam.PTransform:
    combine = beam.CombineGlobally(fn)
    if not isinstance(pcoll.windowing.windowfn, GlobalWindows):
        combine = combine.without_defaults()
    return combine


class QualityReport(beam.PTransform):
    """Scored batches -> one report dict (see ``QualityReportFn``), per window in streaming."""

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "CombineQualityReport" >> _combine_globally(pcoll, QualityReportFn())


def write_quality_report(report: Mapping[str, Any], path: str) -> str:
    """Writes the report as JSON with Beam's FileSystems (local, gs://, s3://); returns the path."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path, mime_type="application/json") as handle:
        handle.write(json.dumps(report, indent=2, sort_keys=True, default=str).encode("utf-8"))
    return path


class _WriteReportFn(beam.DoFn):
    def __init__(self, path: str) -> None:
        self._path = path

    def process(self, report: dict[str, Any], window: Any = beam.DoFn.WindowParam) -> Any:
        path = self._path
        if not isinstance(window, GlobalWindow):
            root, dot, ext = path.rpartition(".")
            stamp = window.end.to_utc_datetime().strftime("%Y%m%dT%H%M%SZ")
            path = f"{root}-{stamp}.{ext}" if dot and "/" not in ext else f"{path}-{stamp}"
        yield write_quality_report(report, path)


class WriteQualityReport(beam.PTransform):
    """Writes each report dict to ``path`` as JSON (one file per window in streaming); outputs the path."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "Write" >> beam.ParDo(_WriteReportFn(self.path))


# --------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------


class FieldRuleConfig(registry.StrictConfig):
    """Rules for one field."""

    type: str | None = Field(None, description=f"One of {', '.join(SEMANTIC_TYPES)}.")
    required: bool = Field(False, description="A null here also counts as a validity failure.")
    min: float | dt.date | str | None = Field(None, description="Lowest valid number or date.")
    max: float | dt.date | str | None = Field(None, description="Highest valid number or date.")
    pattern: str | None = Field(None, description="RE2 regular expression the value must match (search).")
    allowed: list[Any] | None = Field(None, description="The only valid values.")


class WeightsConfig(registry.StrictConfig):
    """Weights of completeness and validity in the score."""

    completeness: float = Field(0.5, ge=0)
    validity: float = Field(0.5, ge=0)


class QualityScorerConfig(registry.StrictConfig):
    """Score each record's completeness and validity; flag failing fields."""

    rules: dict[str, FieldRuleConfig] = Field(default_factory=dict, description="Per-field rules.")
    infer: bool = Field(True, description="Also check every other column with rules inferred from type and name.")
    exclude: list[str] = Field(default_factory=list, description="Columns never checked.")
    weights: WeightsConfig = Field(default_factory=WeightsConfig, description="{completeness, validity}.")
    min_score: float | None = Field(None, ge=0, le=1, description="Records below this go to the DLQ.")
    report_path: str | None = Field(None, description="Write the run's quality report JSON here.")

    def kwargs(self) -> dict[str, Any]:
        return {
            "rules": {k: v.model_dump(exclude_none=True) for k, v in self.rules.items()},
            "infer": self.infer, "exclude": self.exclude, "weights": self.weights.model_dump(),
            "min_score": self.min_score, "report_path": self.report_path,
        }

    @model_validator(mode="after")
    def _check(self) -> QualityScorerConfig:
        QualityScorer(**self.kwargs(), step="check")
        return self


@registry.register("step", "QualityScorer", QualityScorerConfig, regroups=True)
def build_quality_scorer(config: QualityScorerConfig, ctx: registry.BuildContext) -> QualityScorer:
    """Add _quality_score and _quality_flags; optional min_score DLQ and report file."""
    return QualityScorer(**config.kwargs(), step=ctx.step_name)


__all__ = [
    "FLAGS_FIELD", "SCORE_FIELD", "SEMANTIC_TYPES", "FieldRule", "QualityReport", "QualityReportFn", "QualityScorer",
    "Scorer", "WriteQualityReport", "check_field", "infer_semantic_type", "parse_rule", "report_partial",
    "write_quality_report",
]
