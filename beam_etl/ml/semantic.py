"""Semantic type detection for columns: regex/checksum rules plus a shipped random forest (no Beam imports).

    result = detect_semantic_type(pa.array(["02139", "10001", None]), name="zip")
    result.type, result.confidence, result.details      # 'postal_code', 0.9.., {'keep_string': True, ...}

Types: ``SEMANTIC_TYPES``. A sample of up to ``MAX_SAMPLE`` non-null values is stripped and run
through the rules (``_semantic_rules``: Luhn + issuer prefix for cards, formatted and valid US
SSNs, ``ipaddress`` for IPs, country/currency lists under ``data/``, ``strptime`` formats for
dates) and turned into column features (``_semantic_features``). The decision:

1. a strict rule (uuid, ipv4, ipv6, email, url, credit_card, ssn) matching >= 90 % of values wins;
2. otherwise the classifier's probabilities are restricted to the types whose rule matches at
   least ``GATES[type]`` of the values (person_name, free_text and none have no rule), so a
   random digit column is never called a credit card, an SSN or a date, and auto-increment integers
   (``SEQUENCE_SHARE`` of adjacent values increasing) are never postal codes or phone numbers;
3. the column name, if it names a type ("zip", "email", ...), multiplies that type's probability
   by ``NAME_BOOST``: a weak hint that only tips near-ties.

The model (``models/semantic_types.npz``) is loaded once per process on first use.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beam_etl.ml._semantic_features import FEATURE_NAMES, ColumnFeatures, column_features
from beam_etl.ml._semantic_model import ForestModel
from beam_etl.ml._semantic_rules import NULL_TOKENS

__all__ = ["MAX_SAMPLE", "MODEL_PATH", "SEMANTIC_TYPES", "PreparedColumn", "SemanticResult", "detect_semantic_type",
           "load_model", "prepare_column"]

SEMANTIC_TYPES: tuple[str, ...] = (
    "email", "phone", "ssn", "credit_card", "ipv4", "ipv6", "url", "uuid", "postal_code", "country",
    "currency_amount", "date", "person_name", "free_text", "none",
)
MODEL_PATH = Path(__file__).resolve().parent / "models" / "semantic_types.npz"
MAX_SAMPLE = 300
STRICT_SHARE = 0.9
# Minimum share of values matching a type's rule for the classifier to be allowed to pick it.
GATES: dict[str, tuple[str, float]] = {
    "email": ("email", 0.5), "url": ("url", 0.5), "uuid": ("uuid", 0.5), "ipv4": ("ipv4", 0.5),
    "ipv6": ("ipv6", 0.5), "credit_card": ("credit_card", 0.5), "ssn": ("ssn", 0.5),
    "phone": ("phone_shape", 0.5), "postal_code": ("postal_code", 0.5), "date": ("date", 0.5),
    "currency_amount": ("currency_amount", 0.5), "country": ("country_any", 0.2),
}
# An auto-increment id column (adjacent integers increasing) is never a postal code or phone number.
SEQUENCE_SHARE = 0.95
SEQUENCE_VETO = ("postal_code", "phone")
_INCREASING = FEATURE_NAMES.index("int_increasing")
STRICT_TYPES = ("uuid", "ipv4", "ipv6", "email", "url", "credit_card", "ssn")
KEEP_STRING_TYPES = frozenset({"postal_code", "phone", "ssn", "credit_card"})
NAME_BOOST = 1.5
NAME_HINTS: dict[str, tuple[str, ...]] = {
    "email": ("email", "mail", "e-mail"),
    "phone": ("phone", "tel", "telephone", "mobile", "cell", "fax", "msisdn"),
    "ssn": ("ssn", "social"),
    "credit_card": ("card", "cc", "pan", "credit"),
    "ipv4": ("ip", "ipv4", "ipaddr"),
    "ipv6": ("ip", "ipv6", "ipaddr"),
    "url": ("url", "uri", "link", "website", "homepage", "href"),
    "uuid": ("uuid", "guid"),
    "postal_code": ("zip", "zipcode", "postal", "postcode", "plz", "cap", "cep"),
    "country": ("country", "nation", "land", "pays", "pais"),
    "currency_amount": ("price", "amount", "cost", "total", "salary", "fee", "revenue", "balance"),
    "date": ("date", "dob", "day", "time", "timestamp", "created", "updated", "birthday"),
    "person_name": ("name", "firstname", "lastname", "surname", "fullname", "given", "forename"),
    "free_text": ("comment", "comments", "description", "notes", "note", "text", "message", "review", "body"),
}
Values = pa.Array | pa.ChunkedArray | Sequence[str | None]
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class SemanticResult:
    """A column's semantic type, a confidence in [0, 1] and details (match share, date format, ...)."""

    type: str
    confidence: float
    details: dict[str, Any] = field(default_factory=dict)


@lru_cache(maxsize=1)
def load_model(path: Path = MODEL_PATH) -> ForestModel:
    """The shipped classifier, read once per process (``load_model.cache_clear()`` to re-read)."""
    model = ForestModel.load(path)
    if model.feature_names != FEATURE_NAMES:
        raise ValueError(f"{path}: trained on other features than this code computes; "
                         "retrain with `python scripts/train_semantic.py`")
    return model


def _to_strings(values: Values) -> tuple[list[str | None], int, int, str | None]:
    """(up to 4 * MAX_SAMPLE evenly spaced values, row count, Arrow null count, native-type verdict)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if not isinstance(values, pa.Array):
        items = list(values)
        picked = [items[i] for i in _spread(len(items), MAX_SAMPLE * 4)]
        return [None if v is None else str(v) for v in picked], len(items), 0, None
    arr = values.dictionary_decode() if pa.types.is_dictionary(values.type) else values
    t = arr.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return [], len(arr), arr.null_count, "date"
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
            or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
            or pa.types.is_binary(t) or pa.types.is_large_binary(t)):
        return [], len(arr), arr.null_count, "none"
    non_null = arr.drop_null()
    if len(non_null) > MAX_SAMPLE * 4:
        non_null = non_null.take(pa.array(_spread(len(non_null), MAX_SAMPLE * 4), type=pa.int64()))
    if not pa.types.is_string(non_null.type):
        try:
            non_null = pc.cast(non_null, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return [], len(arr), arr.null_count, "none"
    return non_null.to_pylist(), len(arr), arr.null_count, None


def _spread(n: int, k: int) -> list[int]:
    """All of range(n), or k evenly spaced indices of it."""
    return list(range(n)) if n <= k else [int(i) for i in np.linspace(0, n - 1, k)]


def _clean(raw: list[str | None], total: int, arrow_nulls: int) -> tuple[list[str], float]:
    """Stripped non-null values (null tokens dropped), evenly sampled to ``MAX_SAMPLE``; null share."""
    stripped = (v.strip() for v in raw if v is not None)
    kept = [s for s in stripped if s.lower() not in NULL_TOKENS]
    if not total:
        return [], 1.0
    present = 1.0 - arrow_nulls / total
    null_share = 1.0 - present * (len(kept) / len(raw) if raw else 0.0)
    kept = [kept[i] for i in _spread(len(kept), MAX_SAMPLE)]
    return kept, null_share


def _name_hints(name: str | None) -> set[str]:
    """The types a column name points at ("customer_email" -> email; "zipCode" -> postal_code)."""
    if not name:
        return set()
    spaced = _CAMEL.sub("_", name.strip()).lower()
    tokens = {t for t in _NON_ALNUM.split(spaced) if t} | {_NON_ALNUM.sub("", spaced)}
    return {typ for typ, words in NAME_HINTS.items() if tokens & set(words)}


@dataclass(frozen=True)
class PreparedColumn:
    """A column reduced to what the decision needs (also what ``scripts/train_semantic.py`` trains on)."""

    rows: int
    arrow_nulls: int
    native: str | None
    sample: list[str]
    null_share: float
    features: ColumnFeatures | None


def prepare_column(values: Values) -> PreparedColumn:
    """Sample, strip and drop null tokens, then compute the column features (None when nothing is left)."""
    raw, total, arrow_nulls, native = _to_strings(values)
    if native is not None:
        return PreparedColumn(total, arrow_nulls, native, [], 1.0, None)
    sample, null_share = _clean(raw, total, arrow_nulls)
    feats = column_features(sample, null_share) if sample else None
    return PreparedColumn(total, arrow_nulls, None, sample, null_share, feats)


def detect_semantic_type(values: pa.Array | pa.ChunkedArray | list[str | None],
                         name: str | None = None) -> SemanticResult:
    """The semantic type of one column (see the module docstring for the decision rules)."""
    prepared = prepare_column(values)
    if prepared.native is not None:
        confidence = 1.0 if prepared.rows > prepared.arrow_nulls else 0.0
        return SemanticResult(prepared.native, confidence, {"decided_by": "arrow_type", "rows": prepared.rows})
    sample, feats = prepared.sample, prepared.features
    details: dict[str, Any] = {"rows": prepared.rows, "sampled": len(sample),
                               "null_share": round(prepared.null_share, 4)}
    if feats is None:
        return SemanticResult("none", 0.0, {**details, "decided_by": "empty"})
    shares = dict(feats.shares)
    shares["country_any"] = max(shares["country"], shares["country_prefix"], shares["country_code_ci"])

    strict = [(shares[t], t) for t in STRICT_TYPES if shares[t] >= STRICT_SHARE]
    if strict:
        share, typ = max(strict)
        return _result(typ, share, {**details, "decided_by": "rule"}, shares, feats, sample)

    model = load_model()
    proba = model.predict_proba(feats.vector)
    scores = {c: float(p) for c, p in zip(model.classes, proba, strict=True)}
    allowed = {t: p for t, p in scores.items() if t not in GATES or shares[GATES[t][0]] >= GATES[t][1]}
    if feats.vector[_INCREASING] >= SEQUENCE_SHARE:
        for typ in SEQUENCE_VETO:
            allowed.pop(typ, None)
    for typ in _name_hints(name) & allowed.keys():
        allowed[typ] *= NAME_BOOST
    total_p = sum(allowed.values())
    if total_p <= 0:
        return SemanticResult("none", 0.0, {**details, "decided_by": "classifier"})
    typ = max(allowed, key=allowed.__getitem__)
    confidence = allowed[typ] / total_p
    top = sorted(((round(p / total_p, 4), t) for t, p in allowed.items() if p > 0), reverse=True)[:3]
    details.update(decided_by="classifier", scores={t: p for p, t in top})
    return _result(typ, confidence, details, shares, feats, sample)


def _result(typ: str, confidence: float, details: dict[str, Any], shares: dict[str, float],
            feats: ColumnFeatures, sample: list[str]) -> SemanticResult:
    if typ in GATES:
        details["match_share"] = round(shares[GATES[typ][0]], 4)
    if typ in STRICT_TYPES:
        confidence = max(confidence, shares[typ])
    if typ == "date":
        details["format"] = feats.date.format
        if feats.date.ambiguous:
            details["format_ambiguous"] = list(feats.date.ambiguous)
    if typ in KEEP_STRING_TYPES:
        details["keep_string"] = True
        details["leading_zero_share"] = round(sum(v[:1] == "0" for v in sample) / len(sample), 4)
    return SemanticResult(typ, float(min(1.0, max(0.0, confidence))), details)
