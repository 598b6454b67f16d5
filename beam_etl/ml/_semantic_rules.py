"""Per-value rules for semantic type detection: regexes, checksums and reference lists.

Every ``is_*`` function takes one stripped, non-null string and answers a bool. The rules are
deliberately strict (checksums, validity ranges, a scheme for URLs); the column-level decision
tolerates a share of misses for noisy data.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
COUNTRIES_FILE = DATA_DIR / "countries.txt"
CURRENCIES_FILE = DATA_DIR / "currencies.txt"

NULL_TOKENS = frozenset({"", "null", "none", "nan", "n/a", "na", "nil", "-", "--", "?", "#n/a", "<null>"})

_EMAIL = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,24}")
_URL = re.compile(
    r"(?i)(?:https?|ftps?|sftp|wss?|s3|gs|file)://(?:[^\s:@/]+(?::[^\s@/]*)?@)?"
    r"(?:(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,24}|localhost|\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-f:.]+\])"
    r"(?::\d{1,5})?(?:[/?#]\S*)?"
)
_UUID = re.compile(r"\{?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}?")
_IPV4_SHAPE = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
_IPV6_CHARS = re.compile(r"[0-9a-fA-F:.]+(?:%\w+)?")
_SSN = re.compile(r"(\d{3})([- ])(\d{2})\2(\d{4})")
_CARD_SEPARATORS = re.compile(r"[ -]")
_PHONE = re.compile(r"(?:\+|00)?[\d(][\d\s().\-/]{5,22}\d(?:\s*(?:x|ext\.?|#)\s*\d{1,6})?", re.IGNORECASE)
_PHONE_EXT = re.compile(r"\s*(?:x|ext\.?|#)\s*\d{1,6}$", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?(?:\d+|\d{1,3}(?:[,.' \u00a0\u202f]\d{3})+)(?:[.,]\d+)?(?:[eE][-+]?\d+)?|[-+]?[.,]\d+")
_INTEGER = re.compile(r"[-+]?\d+")
_HEX = re.compile(r"(?:0x)?[0-9a-fA-F]{6,}")
_AMOUNT = re.compile(r"\d{1,3}(?:[,.\s\u00a0\u202f']\d{3})+(?:[.,]\d{1,3})?|\d+(?:[.,]\d{1,3})?")
_MONEY_SPLIT = re.compile(r"(?P<pre>[^\d]*?)\s*(?P<num>\d(?:[\d.,\s\u00a0\u202f']*\d)?)\s*(?P<post>[^\d]*)")

# Postal code shapes of common countries (upper-cased value). Bare 6-digit (IN, RU, CN) and 8-digit
# codes are left out on purpose: they cannot be told from identifiers by their shape.
_POSTAL = re.compile(
    r"\d{5}(?:-\d{4})?"  # US ZIP(+4), DE, FR, ES, IT, FI, MX, SE without space
    r"|\d{4}"  # AT, AU, BE, CH, DK, NO, NZ, HU, ...
    r"|\d{3} \d{2}"  # SE, CZ, SK, GR
    r"|\d{2}-\d{3}"  # PL
    r"|\d{5}-\d{3}"  # BR
    r"|\d{3}-\d{4}"  # JP
    r"|\d{4}-\d{3}"  # PT
    r"|\d{4} ?[A-Z]{2}"  # NL
    r"|[A-Z]\d[A-Z] ?\d[A-Z]\d"  # CA
    r"|[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}"  # UK
    r"|[A-Z]{1,2}-\d{4,5}"  # country-prefixed: H-1234, D-12345, CH-8000
)

# Issuer identification number ranges (inclusive, compared on the leading digits) of the major
# card networks: Visa, Mastercard, Amex, Discover, Diners, JCB (incl. legacy 15-digit 1800/2131),
# Maestro, UnionPay, Mir, RuPay.
_IIN_RANGES: tuple[tuple[str, str], ...] = (
    ("4", "4"), ("51", "55"), ("2221", "2720"), ("34", "34"), ("37", "37"), ("6011", "6011"),
    ("644", "649"), ("65", "65"), ("622126", "622925"), ("300", "305"), ("3095", "3095"), ("36", "36"),
    ("38", "39"), ("3528", "3589"), ("1800", "1800"), ("2131", "2131"), ("5018", "5018"), ("5020", "5020"),
    ("5038", "5038"), ("5893", "5893"), ("6304", "6304"), ("6759", "6759"), ("6761", "6763"), ("62", "62"),
    ("2200", "2204"), ("60", "60"), ("81", "82"), ("508", "508"),
)


def is_email(v: str) -> bool:
    """An address ``local@domain.tld``."""
    return "@" in v and _EMAIL.fullmatch(v) is not None


def is_url(v: str) -> bool:
    """An absolute URL with a scheme (http, https, ftp, ws, s3, gs, file) and a host."""
    return "://" in v and _URL.fullmatch(v) is not None


def is_uuid(v: str) -> bool:
    """A dashed 8-4-4-4-12 UUID, optionally in braces (32 bare hex digits are a hex id, not a UUID)."""
    return len(v) in (36, 38) and _UUID.fullmatch(v) is not None


def is_ipv4(v: str) -> bool:
    """A dotted-quad IPv4 address valid for the ``ipaddress`` module."""
    if _IPV4_SHAPE.fullmatch(v) is None:
        return False
    try:
        ipaddress.IPv4Address(v)
    except ValueError:
        return False
    return True


def is_ipv6(v: str) -> bool:
    """An IPv6 address (any valid spelling, zone id allowed) per the ``ipaddress`` module."""
    if v.count(":") < 2 or _IPV6_CHARS.fullmatch(v) is None:
        return False
    try:
        ipaddress.IPv6Address(v)
    except ValueError:
        return False
    return True


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) checksum over a string of digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = ord(ch) - 48
        if i % 2:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return total % 10 == 0


def card_digits(v: str) -> str | None:
    """The digits (12-19) of a card-number-shaped value (spaces or dashes allowed), or None."""
    d = _CARD_SEPARATORS.sub("", v) if (" " in v or "-" in v) else v
    return d if 12 <= len(d) <= 19 and d.isascii() and d.isdigit() else None


def known_iin(digits: str) -> bool:
    """Whether the number starts with a known card network's issuer prefix."""
    for lo, hi in _IIN_RANGES:
        head = digits[: len(lo)]
        if lo <= head <= hi:
            return True
    return False


def is_credit_card(v: str) -> bool:
    """12-19 digits (spaces/dashes allowed) with a known issuer prefix and a valid Luhn checksum."""
    d = card_digits(v)
    return d is not None and known_iin(d) and luhn_ok(d)


def is_luhn_number(v: str) -> bool:
    """12-19 digits passing Luhn, whatever the prefix (a feature, not a decision)."""
    d = card_digits(v)
    return d is not None and luhn_ok(d)


def is_gtin(v: str) -> bool:
    """An EAN-13 / ISBN-13 (dashes or spaces allowed) with a valid GS1 check digit."""
    d = _CARD_SEPARATORS.sub("", v) if (" " in v or "-" in v) else v
    if len(d) != 13 or not (d.isascii() and d.isdigit()):
        return False
    total = sum((ord(ch) - 48) * (3 if i % 2 else 1) for i, ch in enumerate(d[:12]))
    return (10 - total % 10) % 10 == ord(d[12]) - 48


def ssn_shape(v: str) -> bool:
    """The ``AAA-GG-SSSS`` shape (dashes or spaces), valid or not."""
    return len(v) == 11 and _SSN.fullmatch(v) is not None


def is_ssn(v: str) -> bool:
    """A formatted US SSN: area not 000/666/9xx, group not 00, serial not 0000.

    Bare 9-digit numbers are never SSNs here: about 89 % of random 9-digit strings satisfy the
    validity rules, so without the format the claim would be a coin toss on any id column.
    """
    m = _SSN.fullmatch(v) if len(v) == 11 else None
    if m is None:
        return False
    area, group, serial = m.group(1), m.group(3), m.group(4)
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def phone_digits(v: str) -> int:
    """Number of digits of a phone-shaped value (extension excluded), 0 when not phone-shaped."""
    if _PHONE.fullmatch(v) is None:
        return 0
    n = sum(ch.isdigit() for ch in _PHONE_EXT.sub("", v))
    return n if 7 <= n <= 15 else 0


def is_phone_shape(v: str) -> bool:
    """7-15 digits with optional ``+``/``00`` prefix, separators, parentheses and an extension."""
    return phone_digits(v) > 0


def is_phone_formatted(v: str) -> bool:
    """Phone-shaped and written like a phone number: a ``+`` prefix, parentheses or separators."""
    return phone_digits(v) > 0 and not v.isdigit()


def is_postal(v: str) -> bool:
    """A postal code in one of the common national shapes (see ``_POSTAL``)."""
    return len(v) <= 10 and _POSTAL.fullmatch(v.upper()) is not None


def is_number(v: str) -> bool:
    """A plain number: integer, decimal, grouped thousands or scientific notation."""
    return _NUMBER.fullmatch(v) is not None


def is_integer(v: str) -> bool:
    """An optionally signed run of digits."""
    return _INTEGER.fullmatch(v) is not None


def is_hex(v: str) -> bool:
    """Six or more hex digits with at least one letter a-f (an id, a hash)."""
    return _HEX.fullmatch(v) is not None and not v.isdigit()


def normalise_name(v: str) -> str:
    """Case-folded, accent-free, single-spaced text for list lookups."""
    decomposed = unicodedata.normalize("NFKD", v.casefold())
    kept = "".join(ch if ch.isalnum() else " " for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(kept.split())


def _read_pairs(path: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            kind, _, value = line.partition("\t")
            pairs.append((kind, value))
    return pairs


@lru_cache(maxsize=1)
def country_lists() -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """(ISO alpha-2/alpha-3 codes, normalised names, 5-letter name prefixes) from ``countries.txt``."""
    codes, names = set(), set()
    for kind, value in _read_pairs(COUNTRIES_FILE):
        if kind == "code":
            codes.add(value)
        else:
            names.add(normalise_name(value))
    prefixes = {n[:5] for n in names if len(n) >= 5}
    return frozenset(codes), frozenset(names), frozenset(prefixes)


def is_country(v: str) -> bool:
    """An ISO 3166 alpha-2/alpha-3 code (upper case) or a country name from the built-in list."""
    codes, names, _ = country_lists()
    if len(v) <= 3 and v.isupper():
        return v in codes
    return normalise_name(v) in names


def is_country_code_any_case(v: str) -> bool:
    """A 2-3 letter value that is an ISO 3166 code once upper-cased ("de", "Fra")."""
    return 2 <= len(v) <= 3 and v.isalpha() and v.upper() in country_lists()[0]


def country_prefix(v: str) -> bool:
    """Whether the value starts like a listed country name (catches other languages' spellings)."""
    n = normalise_name(v)
    return len(n) >= 5 and n[:5] in country_lists()[2]


@lru_cache(maxsize=1)
def currency_lists() -> tuple[frozenset[str], frozenset[str]]:
    """(ISO 4217 codes, case-folded currency symbols) from ``currencies.txt``."""
    codes, symbols = set(), set()
    for kind, value in _read_pairs(CURRENCIES_FILE):
        if kind == "code":
            codes.add(value.upper())
        else:
            symbols.add(value.casefold())
    return frozenset(codes), frozenset(symbols)


def _is_currency_marker(text: str) -> bool:
    codes, symbols = currency_lists()
    if len(text) == 3 and text.isalpha() and text.upper() in codes:
        return True
    folded = text.casefold()
    return folded in symbols or folded.rstrip(".") in symbols


def is_currency(v: str) -> bool:
    """An amount with a currency symbol or ISO code (any case) before or after it: ``$1,234.50``, ``12,50 €``,
    ``EUR 30``."""
    s = v.strip("()")
    m = _MONEY_SPLIT.fullmatch(s)
    if m is None:
        return False
    pre, num, post = m.group("pre").strip(), m.group("num"), m.group("post").strip()
    pre = pre.lstrip("-+").strip() if pre[:1] in "-+" else pre.rstrip("-+").strip()
    if bool(pre) == bool(post) or _AMOUNT.fullmatch(num) is None:
        return False
    return _is_currency_marker(pre or post)
