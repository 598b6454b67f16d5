"""Per-column features for the semantic type classifier: rule shares, character classes, shape stats."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from beam_etl.ml import _semantic_rules as rules
from beam_etl.ml._semantic_dates import DateInfo, detect_date_format

# Rule name -> per-value predicate; the share of sampled values matching each is a feature.
RULES = {
    "email": rules.is_email,
    "url": rules.is_url,
    "uuid": rules.is_uuid,
    "ipv4": rules.is_ipv4,
    "ipv6": rules.is_ipv6,
    "credit_card": rules.is_credit_card,
    "luhn": rules.is_luhn_number,
    "gtin": rules.is_gtin,
    "ssn": rules.is_ssn,
    "ssn_shape": rules.ssn_shape,
    "phone_shape": rules.is_phone_shape,
    "phone_formatted": rules.is_phone_formatted,
    "postal_code": rules.is_postal,
    "country": rules.is_country,
    "country_prefix": rules.country_prefix,
    "country_code_ci": rules.is_country_code_any_case,
    "currency_amount": rules.is_currency,
    "number": rules.is_number,
    "integer": rules.is_integer,
    "hex": rules.is_hex,
}
_OTHER = (
    "date", "date_any", "null_share", "log_n", "distinct_ratio", "log_distinct", "top_share", "int_increasing",
    "len_mean", "len_std", "len_min", "len_max", "len_mode_share",
    "digit_frac", "alpha_frac", "upper_frac", "lower_frac", "space_frac", "punct_frac", "nonascii_frac", "cjk_frac",
    "has_digit", "has_alpha", "all_digit", "all_upper", "all_lower", "leading_zero",
    "tok_mean", "tok_std", "tok_multi", "tok_many", "cap_tok", "lower_tok", "tok_len_mean", "tok_distinct",
    "ends_punct", "has_comma", "has_at", "has_plus", "has_paren", "has_dash", "has_dot", "has_slash", "has_colon",
    "digits_mean", "digits_std", "shape_top", "shape_distinct", "vowel_frac",
)
FEATURE_NAMES: tuple[str, ...] = tuple(f"rule_{r}" for r in RULES) + _OTHER

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")
_SENTENCE_END = (".", "!", "?", "\u3002", "\uff01", "\uff1f")
_SHAPE_SUB = (re.compile(r"\d+"), re.compile(r"[^\W\d_]+"))
_VOWELS = frozenset("aeiouyäöüéèêáàíóúåæø")


@dataclass(frozen=True)
class ColumnFeatures:
    """The feature vector of a column plus the rule shares and date details the decision needs."""

    vector: np.ndarray
    shares: dict[str, float]
    date: DateInfo


def _shape(v: str) -> str:
    return _SHAPE_SUB[1].sub("a", _SHAPE_SUB[0].sub("9", v))


def _increasing_share(values: list[str]) -> float:
    """Share of adjacent pairs of integer values that increase (1.0 for auto-increment ids)."""
    ints = [int(v) for v in values if v.isascii() and v.isdigit() and len(v) < 19]
    if len(ints) < 2:
        return 0.0
    return sum(b > a for a, b in zip(ints, ints[1:], strict=False)) / (len(ints) - 1)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    arr = np.asarray(xs, dtype=np.float64)
    return float(arr.mean()), float(arr.std())


def column_features(values: list[str], null_share: float) -> ColumnFeatures:
    """Features of a column from its sampled, stripped, non-null values (at least one)."""
    n = len(values)
    shares = {name: sum(map(fn, values)) / n for name, fn in RULES.items()}
    date = detect_date_format(values)
    shares["date"] = date.share
    f: dict[str, float] = {f"rule_{k}": v for k, v in shares.items() if k != "date"}
    f["date"], f["date_any"] = date.share, date.any_share

    counts = Counter(values)
    lengths = [len(v) for v in values]
    len_mean, len_std = _mean_std(lengths)
    f.update(null_share=null_share, log_n=math.log10(n), distinct_ratio=len(counts) / n,
             log_distinct=math.log10(len(counts)), int_increasing=_increasing_share(values),
             top_share=counts.most_common(1)[0][1] / n, len_mean=math.log1p(len_mean), len_std=math.log1p(len_std),
             len_min=math.log1p(min(lengths)), len_max=math.log1p(max(lengths)),
             len_mode_share=Counter(lengths).most_common(1)[0][1] / n)

    total = sum(lengths) or 1
    joined = "".join(values)
    digits = sum(ch.isdigit() for ch in joined)
    alpha = sum(ch.isalpha() for ch in joined)
    upper = sum(ch.isupper() for ch in joined)
    spaces = sum(ch.isspace() for ch in joined)
    f.update(digit_frac=digits / total, alpha_frac=alpha / total, upper_frac=upper / (alpha or 1),
             lower_frac=(alpha - upper) / (alpha or 1), space_frac=spaces / total,
             punct_frac=(total - digits - alpha - spaces) / total,
             nonascii_frac=sum(not ch.isascii() for ch in joined) / total,
             cjk_frac=len(_CJK.findall(joined)) / total)

    digit_counts = [sum(ch.isdigit() for ch in v) for v in values]
    f.update(has_digit=sum(d > 0 for d in digit_counts) / n,
             has_alpha=sum(any(ch.isalpha() for ch in v) for v in values) / n,
             all_digit=sum(v.isdigit() for v in values) / n,
             all_upper=sum(v.isupper() for v in values) / n,
             all_lower=sum(v.islower() for v in values) / n,
             leading_zero=sum(v[0] == "0" and v.isdigit() for v in values) / n)

    tokens = [v.split() for v in values]
    tok_counts = [len(t) for t in tokens]
    tok_mean, tok_std = _mean_std(tok_counts)
    words = [w for t in tokens for w in t if w.isalpha()]
    n_words = len(words) or 1
    all_tokens = [w for t in tokens for w in t]
    f.update(tok_mean=math.log1p(tok_mean), tok_std=math.log1p(tok_std),
             tok_multi=sum(c >= 2 for c in tok_counts) / n, tok_many=sum(c >= 5 for c in tok_counts) / n,
             cap_tok=sum(w[0].isupper() and (len(w) == 1 or w[1:].islower()) for w in words) / n_words,
             lower_tok=sum(w.islower() for w in words) / n_words,
             tok_len_mean=math.log1p(sum(map(len, all_tokens)) / (len(all_tokens) or 1)),
             tok_distinct=len(set(all_tokens)) / (len(all_tokens) or 1))

    def share_with(ch: str) -> float:
        return sum(ch in v for v in values) / n

    f.update(ends_punct=sum(v.endswith(_SENTENCE_END) for v in values) / n, has_comma=share_with(","),
             has_at=share_with("@"), has_plus=share_with("+"), has_paren=share_with("("), has_dash=share_with("-"),
             has_dot=share_with("."), has_slash=share_with("/"), has_colon=share_with(":"))

    d_mean, d_std = _mean_std(digit_counts)
    shapes = Counter(map(_shape, values))
    letters = [ch for ch in joined.lower() if ch.isalpha()]
    f.update(digits_mean=math.log1p(d_mean), digits_std=math.log1p(d_std),
             shape_top=shapes.most_common(1)[0][1] / n, shape_distinct=len(shapes) / n,
             vowel_frac=sum(ch in _VOWELS for ch in letters) / (len(letters) or 1))

    vector = np.fromiter((f[name] for name in FEATURE_NAMES), dtype=np.float64, count=len(FEATURE_NAMES))
    return ColumnFeatures(vector, shares, date)
