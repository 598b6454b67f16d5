"""Date/datetime format detection for string columns (``strptime`` formats, English month names)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

# Candidate formats, in order of preference when several parse the same share of values
# (e.g. day-first before month-first when no day exceeds 12).
DATE_FORMATS: tuple[str, ...] = (
    "%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "%Y%m%d",
    "%d/%m/%Y", "%m/%d/%Y", "%d-%m-%Y", "%m-%d-%Y", "%d.%m.%Y",
    "%d/%m/%y", "%m/%d/%y", "%d.%m.%y", "%d-%m-%y", "%y-%m-%d",
    "%d %b %Y", "%d %B %Y", "%b %d, %Y", "%B %d, %Y", "%d-%b-%Y", "%d-%b-%y", "%b %d %Y", "%B %d %Y",
    "%a, %d %b %Y", "%A, %B %d, %Y",
    "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z",
    "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S%z",
    "%d/%m/%Y %H:%M", "%m/%d/%Y %H:%M", "%d/%m/%Y %H:%M:%S", "%m/%d/%Y %H:%M:%S", "%d.%m.%Y %H:%M",
    "%d.%m.%Y %H:%M:%S", "%m/%d/%Y %I:%M %p", "%m/%d/%Y %I:%M:%S %p", "%a, %d %b %Y %H:%M:%S %z",
    "%Y/%m/%d %H:%M:%S", "%d-%m-%Y %H:%M:%S",
)
_TOKEN_RE = {
    "%Y": r"\d{4}", "%y": r"\d{2}", "%m": r"\d{1,2}", "%d": r"\d{1,2}", "%H": r"\d{1,2}", "%I": r"\d{1,2}",
    "%M": r"\d{2}", "%S": r"\d{2}", "%f": r"\d{1,6}", "%b": r"[A-Za-z]{3}", "%B": r"[A-Za-z]{3,9}",
    "%a": r"[A-Za-z]{3}", "%A": r"[A-Za-z]{6,9}", "%z": r"(?:Z|[+-]\d{2}:?\d{2})", "%p": r"(?:AM|PM|am|pm)",
}
_YEAR_RANGE = (1800, 2200)
_PROBE = 24


@lru_cache(maxsize=1)
def _format_regexes() -> tuple[tuple[str, re.Pattern[str]], ...]:
    out = []
    for fmt in DATE_FORMATS:
        pattern = re.sub(r"%[A-Za-z]", lambda m: _TOKEN_RE[m.group(0)], re.escape(fmt).replace("\\%", "%"))
        out.append((fmt, re.compile(pattern, re.IGNORECASE)))
    return tuple(out)


def parses(value: str, fmt: str) -> bool:
    """Whether ``value`` parses with ``fmt`` to a date with a plausible year (4-digit years 1800-2200)."""
    try:
        parsed = datetime.strptime(value, fmt)
    except ValueError:
        return False
    return "%Y" not in fmt or _YEAR_RANGE[0] <= parsed.year <= _YEAR_RANGE[1]


@dataclass(frozen=True)
class DateInfo:
    """The best format of a column: share of values it parses, share parsed by any candidate, ties."""

    format: str | None = None
    share: float = 0.0
    any_share: float = 0.0
    ambiguous: tuple[str, ...] = field(default_factory=tuple)


def detect_date_format(values: list[str]) -> DateInfo:
    """Pick the ``strptime`` format that parses the most values (ties broken by ``DATE_FORMATS`` order)."""
    if not values:
        return DateInfo()
    regexes = _format_regexes()
    candidates: list[tuple[str, re.Pattern[str]]] = []
    for fmt, rx in regexes:
        if any(rx.fullmatch(v) and parses(v, fmt) for v in values[:_PROBE]):
            candidates.append((fmt, rx))
    if not candidates:
        return DateInfo()
    counts = dict.fromkeys((fmt for fmt, _ in candidates), 0)
    any_hits = 0
    for v in values:
        hit = False
        for fmt, rx in candidates:
            if rx.fullmatch(v) and parses(v, fmt):
                counts[fmt] += 1
                hit = True
        any_hits += hit
    best = max(counts.values())
    tied = tuple(fmt for fmt, c in counts.items() if c == best)
    n = len(values)
    return DateInfo(tied[0], best / n, any_hits / n, tied[1:] if len(tied) > 1 else ())
