"""Synthetic labelled columns for training and evaluating the semantic type detector.

Needs Faker (a development dependency: ``requirements-dev.txt``), imported lazily, so the package
itself never does. Used by ``scripts/train_semantic.py``, ``benchmarks/bench_semantic.py`` and
the tests. Everything is driven by explicit seeds, so a call returns the same columns every time.

``holdout=True`` adds value families that training never sees (other date formats, other
look-alike ids) so that the benchmark measures more than the training distribution.
"""

from __future__ import annotations

import ipaddress
import math
import random
import string
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

TRAIN_LOCALES: tuple[str, ...] = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pt_BR", "ja_JP",
                                  "de_AT", "hu_HU")
EVAL_LOCALES: tuple[str, ...] = ("en_AU", "en_CA", "fr_CA", "pl_PL", "sv_SE", "da_DK", "cs_CZ", "fi_FI")
LABELS: tuple[str, ...] = ("email", "phone", "ssn", "credit_card", "ipv4", "ipv6", "url", "uuid", "postal_code",
                           "country", "currency_amount", "date", "person_name", "free_text", "none")

TRAIN_DATE_FORMATS = ("%Y-%m-%d", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%Y/%m/%d", "%d-%m-%Y", "%d %b %Y",
                      "%B %d, %Y", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%d/%m/%y", "%Y%m%d",
                      "%Y-%m-%dT%H:%M:%S%z", "%m/%d/%Y %H:%M")
HOLDOUT_DATE_FORMATS = ("%d-%b-%Y", "%Y.%m.%d", "%b %d %Y", "%d.%m.%Y %H:%M", "%Y-%m-%d %H:%M", "%m/%d/%y",
                        "%a, %d %b %Y %H:%M:%S %z", "%Y-%m-%dT%H:%M:%S.%f")
# Fixed bounds: Faker's relative defaults ("-30y", now) would make the generated data depend on the clock.
DATE_RANGE = (datetime(1935, 1, 1), datetime(2027, 12, 31))
NULL_SPELLINGS = (None, None, None, "", "NULL", "N/A", "-", "null", "nan")
JUNK = ("unknown", "TBD", "0", "-1", "xxx", "test", "???", "n.a.", "see notes", "12", "ERROR")
CATEGORY_SETS: tuple[tuple[str, ...], ...] = (
    ("active", "inactive", "pending", "closed"), ("S", "M", "L", "XL", "XXL"), ("yes", "no"), ("Y", "N"),
    ("true", "false"), ("Sales", "Marketing", "Engineering", "HR", "Finance", "Support", "Legal"),
    ("low", "medium", "high", "critical"), ("new", "open", "in progress", "resolved", "rejected"),
    ("Gold", "Silver", "Bronze", "Platinum"), ("card", "cash", "transfer", "voucher"),
    ("Electronics", "Books", "Garden", "Toys", "Clothing", "Sports", "Home & Kitchen"),
    ("north", "south", "east", "west", "central"), ("A", "B", "C", "D"), ("male", "female", "other"),
)
HOLDOUT_CATEGORY_SETS: tuple[tuple[str, ...], ...] = (
    ("draft", "published", "archived"), ("Basic", "Standard", "Premium", "Enterprise"),
    ("mobile", "desktop", "tablet"), ("Q1", "Q2", "Q3", "Q4"),
)
NAMES: dict[str, tuple[str, ...]] = {
    "email": ("email", "contact_email"), "phone": ("phone", "mobile"), "ssn": ("ssn",), "credit_card": ("card_number",),
    "ipv4": ("ip",), "ipv6": ("ipv6",), "url": ("website", "url"), "uuid": ("uuid", "guid"),
    "postal_code": ("zip", "postcode"), "country": ("country",), "currency_amount": ("price", "amount"),
    "date": ("created_at", "date"), "person_name": ("name", "customer"), "free_text": ("comment", "description"),
    "none": ("id", "code", "value", "category"),
}


@dataclass(frozen=True)
class SynthColumn:
    """A generated column with its true label, generator family and locale."""

    label: str
    family: str
    locale: str
    noise: float
    values: list[str | None]
    name: str


Maker = Callable[[], str]


def _faker(locale: str, seed: int) -> Any:
    from faker import Faker

    fake = Faker(locale)
    fake.seed_instance(seed)
    return fake


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _group_card(number: str, sep: str) -> str:
    if len(number) == 15:
        parts = (number[:4], number[4:10], number[10:])
    else:
        parts = tuple(number[i:i + 4] for i in range(0, len(number), 4))
    return sep.join(parts)


def _amount(rng: random.Random) -> float:
    return round(math.exp(rng.uniform(0, 11)) * rng.choice((1, 1, 1, 0.01)), 2)


def _fmt_amount(x: float, style: str, decimals: int) -> str:
    s = f"{x:,.{decimals}f}"
    if style == "eu":
        return s.replace(",", "\x00").replace(".", ",").replace("\x00", ".")
    if style == "space":
        return s.replace(",", "\u00a0").replace(".", ",")
    if style == "plain":
        return s.replace(",", "")
    return s


def _makers(label: str, fake: Any, us: Any, en: Any, rng: random.Random, holdout: bool) -> list[tuple[str, Maker]]:
    """The value families of one label as (family name, value maker) pairs."""
    if label == "email":
        return [("email", fake.email), ("free_email", fake.free_email), ("company_email", fake.company_email)]
    if label == "phone":
        def international() -> str:
            code = fake.country_calling_code().split()[0]
            return f"{code} {fake.numerify(rng.choice(('### ### ###', '## ### ####', '#### ####')))}"
        return [("phone", fake.phone_number), ("phone2", fake.phone_number), ("international", international)]
    if label == "ssn":
        return [("ssn", us.ssn), ("ssn_space", lambda: us.ssn().replace("-", " "))]
    if label == "credit_card":
        return [("plain", fake.credit_card_number),
                ("spaced", lambda: _group_card(fake.credit_card_number(), " ")),
                ("dashed", lambda: _group_card(fake.credit_card_number(), "-"))]
    if label == "ipv4":
        return [("ipv4", fake.ipv4), ("private", fake.ipv4_private), ("public", fake.ipv4_public)]
    if label == "ipv6":
        return [("ipv6", fake.ipv6), ("compressed", lambda: str(ipaddress.IPv6Address(fake.ipv6())))]
    if label == "url":
        return [("url", fake.url), ("uri", fake.uri), ("image", fake.image_url),
                ("query", lambda: f"{fake.url()}{fake.uri_path()}?id={rng.randint(1, 99999)}")]
    if label == "uuid":
        return [("uuid4", fake.uuid4), ("upper", lambda: fake.uuid4().upper()),
                ("braces", lambda: "{" + fake.uuid4() + "}")]
    if label == "postal_code":
        fams = [("postcode", fake.postcode)]
        if hasattr(fake, "zipcode_plus4"):
            fams.append(("zip_plus4", lambda: rng.choice((fake.postcode, fake.zipcode_plus4))()))
        return fams
    if label == "country":
        return [("local_name", fake.country), ("alpha2", lambda: fake.country_code("alpha-2")),
                ("alpha3", lambda: fake.country_code("alpha-3")), ("english", en.country)]
    if label == "currency_amount":
        return [("pricetag", fake.pricetag), ("symbol", _money_maker(rng, "symbol")),
                ("code", _money_maker(rng, "code"))]
    if label == "date":
        formats = TRAIN_DATE_FORMATS + (HOLDOUT_DATE_FORMATS if holdout else ())
        fmt = rng.choice(formats)

        def date_value() -> str:
            value = fake.date_time_between(start_date=DATE_RANGE[0], end_date=DATE_RANGE[1])
            if "%z" in fmt:
                value = value.replace(tzinfo=rng.choice((UTC, fake.pytimezone())))
            return value.strftime(fmt)

        def iso8601() -> str:
            return fake.date_time_between(start_date=DATE_RANGE[0], end_date=DATE_RANGE[1]).isoformat()
        return [(fmt, date_value), ("iso8601", iso8601)] if not holdout else [(fmt, date_value)]
    if label == "person_name":
        return [("name", fake.name), ("first", fake.first_name), ("last", fake.last_name),
                ("last_first", lambda: f"{fake.last_name()}, {fake.first_name()}")]
    if label == "free_text":
        return [("sentence", lambda: fake.sentence(nb_words=rng.randint(4, 14))),
                ("text", lambda: fake.text(max_nb_chars=rng.choice((80, 160, 300))).replace("\n", " ")),
                ("paragraph", lambda: fake.paragraph(nb_sentences=rng.randint(1, 3)))]
    if label == "none":
        return _none_makers(fake, rng, holdout)
    raise ValueError(f"unknown label {label!r}")


def _money_maker(rng: random.Random, kind: str) -> Maker:
    symbols = ("$", "€", "£", "¥", "₹", "R$", "CHF", "kr", "zł", "Kč", "US$", "C$", "A$", "₩", "₺")
    codes = ("USD", "EUR", "GBP", "JPY", "CHF", "SEK", "PLN", "CZK", "CAD", "AUD", "BRL", "INR", "DKK", "NOK")
    marker = rng.choice(symbols if kind == "symbol" else codes)
    style = rng.choice(("us", "eu", "space", "plain"))
    decimals = rng.choice((2, 2, 0))
    before = rng.random() < 0.5
    gap = rng.choice(("", " ", "\u00a0")) if kind == "symbol" else " "

    def value() -> str:
        num = _fmt_amount(_amount(rng), style, decimals)
        sign = "-" if rng.random() < 0.05 else ""
        return f"{sign}{marker}{gap}{num}" if before else f"{sign}{num}{gap}{marker}"
    return value


def _none_makers(fake: Any, rng: random.Random, holdout: bool) -> list[tuple[str, Maker]]:
    length = rng.choice((6, 7, 8, 9, 9, 10, 11, 12, 13, 14, 16, 16, 18))
    hex_len = rng.choice((8, 12, 16, 24, 32, 40, 64))
    hex_upper = rng.random() < 0.3
    code_pattern = rng.choice(("SKU-#####", "???-####", "PRD-######-?", "??#####", "#####-???", "INV/####/##",
                               "?-###-??", "ORD#######", "??-##-??##", "??????", "????##", "???###?", "????-??",
                               "??-???", "?????#??"))
    vocab_size = rng.randint(2, 25)
    vocab = [fake.word() for _ in range(vocab_size)]
    if rng.random() < 0.5:
        vocab = [w.capitalize() for w in vocab]
    categories = rng.choice(CATEGORY_SETS)
    start_id = rng.randint(1, 10 ** rng.randint(1, 8))
    counter = iter(range(start_id, start_id + 10 ** 9, rng.randint(1, 3)))
    decimals = rng.randint(1, 4)
    comma_decimal = rng.random() < 0.3
    scale = 10 ** rng.uniform(0, 6)

    def hex_id() -> str:
        s = "".join(rng.choice("0123456789abcdef") for _ in range(hex_len))
        return s.upper() if hex_upper else s

    def product_code() -> str:
        return "".join(rng.choice(string.ascii_uppercase) if c == "?" else _digits(rng, 1) if c == "#" else c
                       for c in code_pattern)

    def integer() -> str:
        return str(int(rng.choice((1, 1, 1, -1)) * math.exp(rng.uniform(0, rng.uniform(2, 16)))))

    def floating() -> str:
        s = f"{rng.lognormvariate(0, 2) * scale:.{decimals}f}"
        return s.replace(".", ",") if comma_decimal else s

    fams: list[tuple[str, Maker]] = [
        ("digits_fixed", lambda: _digits(rng, length)),
        ("digits_var", lambda: _digits(rng, rng.randint(5, 18))),
        ("sequence", lambda: str(next(counter))),
        ("hex", hex_id),
        ("product_code", product_code),
        ("integer", integer),
        ("float", floating),
        ("category_words", lambda: rng.choice(vocab)),
        ("category_words", lambda: rng.choice(vocab)),
        ("category_set", lambda: rng.choice(categories)),
        ("ean13", fake.ean13),
        ("isbn13", fake.isbn13),
    ]
    if holdout:
        holdout_set = rng.choice(HOLDOUT_CATEGORY_SETS)
        fams += [
            ("license_plate", fake.license_plate), ("iban", fake.iban), ("swift", fake.swift),
            ("md5", fake.md5), ("category_holdout", lambda: rng.choice(holdout_set)),
            ("alnum_token", lambda: "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(8))),
            ("percent", lambda: f"{rng.uniform(0, 100):.1f}%"),
        ]
    return fams


def _pad(v: str, rng: random.Random) -> str:
    return rng.choice((" ", "  ", "\t", "")) + v + rng.choice((" ", "", "  "))


def _apply_noise(values: list[str], rng: random.Random, noise: float, junk: Sequence[str]) -> list[str | None]:
    out: list[str | None] = list(values)
    n = len(out)
    if noise <= 0:
        return out
    if rng.random() < 0.3 * noise:
        case = rng.choice((str.upper, str.lower, str.title))
        share = rng.choice((1.0, rng.uniform(0.05, 0.3)))
        out = [case(v) if v is not None and rng.random() < share else v for v in out]
    if rng.random() < 0.5 * noise:
        share = rng.uniform(0.05, 1.0)
        out = [_pad(v, rng) if v is not None and rng.random() < share else v for v in out]
    bad = rng.uniform(0, 0.1 * noise)
    for i in range(n):
        if rng.random() < bad:
            out[i] = rng.choice(junk)
    nulls = rng.uniform(0, 0.3 * noise)
    for i in range(n):
        if rng.random() < nulls:
            out[i] = rng.choice(NULL_SPELLINGS)
    return out


def generate_columns(locales: Sequence[str], per_label: int, seed: int, noise_levels: Sequence[float] = (0.0, 0.5, 1.0),
                     holdout: bool = False, size_range: tuple[int, int] = (20, 400),
                     labels: Sequence[str] = LABELS) -> list[SynthColumn]:
    """``per_label`` columns for each (locale, label), noise drawn from ``noise_levels``; none gets 3x as many."""
    columns = []
    for locale in locales:
        base = seed * 1_000_003 + zlib.crc32(locale.encode())
        fake, us, en = _faker(locale, base), _faker("en_US", base + 1), _faker("en_GB", base + 2)
        rng = random.Random(base)
        for label in labels:
            count = per_label * (3 if label == "none" else 1)
            for _ in range(count):
                family, maker = rng.choice(_makers(label, fake, us, en, rng, holdout))
                size = int(math.exp(rng.uniform(math.log(size_range[0]), math.log(size_range[1]))))
                values = [maker() for _ in range(size)]
                noise = rng.choice(tuple(noise_levels))
                junk = (*JUNK, fake.word(), _digits(rng, 5), fake.last_name())
                columns.append(SynthColumn(label, f"{label}:{family}", locale, noise,
                                           _apply_noise(values, rng, noise, junk), rng.choice(NAMES[label])))
    return columns
