"""Semantic type detection (beam_etl.ml.semantic): rules, look-alikes, generated columns, model loading."""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter

import pyarrow as pa
import pytest

from beam_etl.ml import _semantic_model, semantic
from beam_etl.ml import _semantic_rules as rules
from beam_etl.ml.semantic import MODEL_PATH, SEMANTIC_TYPES, SemanticResult, detect_semantic_type, load_model

HAND_WRITTEN: dict[str, list[str | None]] = {
    "email": ["ana.lopez@example.com", "j.smith@mail.co.uk", None, "KLAUS.M@firma.de", "li_wei@example.cn",
              "o'brien@example.ie", "x1@test.org", "marie+news@exemple.fr"],
    "phone": ["+1 (415) 555-0132", "020 7946 0958", "+49 30 901820", "(02) 9374 4000", "+33 1 42 68 53 00",
              "555-0199 x12", "+81 3-3224-5000", "0612 345 678"],
    "ssn": ["123-45-6789", "078-05-1120", "219-09-9999", "457-55-5462", None, "536-22-1456", "001-01-0001"],
    "credit_card": ["4111 1111 1111 1111", "5500 0000 0000 0004", "3400 000000 00009", "6011000000000004",
                    "4012888888881881", "5105105105105100", "371449635398431"],
    "ipv4": ["192.168.1.10", "10.0.0.1", "8.8.8.8", "172.16.254.3", "203.0.113.77", None],
    "ipv6": ["2001:db8::1", "fe80::1ff:fe23:4567:890a", "::1", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"],
    "url": ["https://example.com/", "http://www.example.org/a/b?c=1", "https://shop.example.de/cart#top",
            "ftp://files.example.net/pub/readme.txt", "https://example.com:8443/api/v1/items"],
    "uuid": ["123e4567-e89b-12d3-a456-426614174000", "550E8400-E29B-41D4-A716-446655440000",
             "9b2f4c1e-0d3a-4f6b-8c7d-1e2f3a4b5c6d", "00000000-0000-4000-8000-000000000000"],
    "postal_code": ["02139", "10001", "94105", "00501", "60614", "30301", "02115", "73301", "98101", "33101"],
    "country": ["Germany", "France", "Japan", "Brazil", "Canada", "Spain", "Italy", "Netherlands", "Mexico",
                "Sweden", "India", "Kenya", "Germany", "France"],
    "currency_amount": ["$1,234.50", "12,50 €", "EUR 30", "£9.99", "$0.99", "1.250,00 €", "USD 1,000", "¥1,200",
                        "CHF 45.00", "-$20.00"],
    "date": ["31/12/2020", "15/01/2021", "01/02/2019", "28/02/2018", "13/07/2022", "30/11/2017", None],
    "person_name": ["Maria Garcia", "John Smith", "Anna Müller", "Pierre Dubois", "Giulia Rossi", "Jan de Vries",
                    "Sofia Andersson", "Liam O'Connor", "Ewa Kowalska", "Carlos Pereira", "Yuki Tanaka",
                    "Emma Johansson"],
    "free_text": ["The delivery arrived two days late and the box was damaged.",
                  "Great service, will order again next month!",
                  "Customer asked to change the billing address before shipping.",
                  "Please call back after 5 pm; the line is busy in the morning.",
                  "Item returned because the colour did not match the photos.",
                  "No issues reported during the last inspection of the site."],
    "none": ["SKU-10021", "SKU-10022", "PRD-2040-X", "SKU-33107", "PRD-1007-B", "SKU-20441", "PRD-4000-C",
             "SKU-33160", "PRD-1010-A", "SKU-40022"],
}


@pytest.mark.parametrize("label", sorted(HAND_WRITTEN))
def test_hand_written_columns(label: str) -> None:
    result = detect_semantic_type(HAND_WRITTEN[label])
    assert isinstance(result, SemanticResult)
    assert result.type == label, result
    assert 0.0 <= result.confidence <= 1.0


def test_result_details() -> None:
    card = detect_semantic_type(HAND_WRITTEN["credit_card"])
    assert card.details["match_share"] == 1.0 and card.details["decided_by"] == "rule" and card.confidence == 1.0
    date = detect_semantic_type(HAND_WRITTEN["date"])
    assert date.details["format"] == "%d/%m/%Y" and date.details["null_share"] > 0
    ambiguous = detect_semantic_type(["01/02/2021", "03/04/2021", "05/06/2021", "07/08/2021"])
    assert ambiguous.type == "date" and ambiguous.details["format_ambiguous"] == ["%m/%d/%Y"]
    iso = detect_semantic_type(["2024-03-05T10:20:00Z", "2023-12-31T23:59:59+01:00", "2022-01-01T00:00:00Z"])
    assert iso.details["format"] == "%Y-%m-%dT%H:%M:%S%z"


def test_postal_codes_keep_leading_zeros() -> None:
    zips = ["02139", "01002", "00501", "02115", "06510", "03801", "07030", "08540", "01060", "04101"]
    for column in (zips, pa.array(zips), pa.chunked_array([zips[:5], zips[5:]])):
        result = detect_semantic_type(column)
        assert result.type == "postal_code", result
        assert result.details["keep_string"] is True and result.details["leading_zero_share"] == 1.0


def _random_digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _luhn_failing(rng: random.Random) -> str:
    while True:
        number = "4" + _random_digits(rng, 15)
        if not rules.luhn_ok(number):
            return number


def test_look_alikes_are_not_claimed() -> None:
    rng = random.Random(5)
    nine = [_random_digits(rng, 9) for _ in range(200)]
    assert sum(rules.is_ssn(v) for v in nine) == 0
    assert detect_semantic_type(nine).type == "none"
    cards = [_luhn_failing(rng) for _ in range(200)]
    assert sum(rules.is_credit_card(v) for v in cards) == 0
    assert detect_semantic_type(cards).type == "none"
    # Luhn-valid but no known issuer prefix: not a card either.
    assert not rules.is_credit_card("9999999999999995") and rules.luhn_ok("9999999999999995")
    assert detect_semantic_type([_random_digits(rng, 10) for _ in range(200)]).type == "none"
    assert detect_semantic_type([f"{rng.getrandbits(128):032x}" for _ in range(100)]).type == "none"
    assert detect_semantic_type([str(rng.randint(-5000, 10 ** rng.randint(1, 7))) for _ in range(200)]).type == "none"
    assert detect_semantic_type([f"{rng.uniform(0, 1e4):.2f}" for _ in range(200)]).type == "none"
    assert detect_semantic_type([rng.choice(["red", "green", "blue"]) for _ in range(100)]).type == "none"
    invalid_ssn = [f"9{_random_digits(rng, 2)}-{_random_digits(rng, 2)}-{_random_digits(rng, 4)}" for _ in range(50)]
    assert detect_semantic_type(invalid_ssn).type != "ssn"
    sequence = [str(i) for i in range(10230, 10530)]
    assert detect_semantic_type(sequence).type == "none"


@pytest.mark.parametrize(("value", "expected"), [
    ("4111111111111111", True), ("4111-1111-1111-1111", True), ("4111111111111112", False), ("378282246310005", True),
    ("1234567812345670", False),
])
def test_credit_card_rule(value: str, expected: bool) -> None:
    assert rules.is_credit_card(value) is expected


@pytest.mark.parametrize(("value", "expected"), [
    ("123-45-6789", True), ("123 45 6789", True), ("000-12-3456", False), ("666-12-3456", False),
    ("912-12-3456", False), ("123-00-6789", False), ("123-45-0000", False), ("123456789", False),
])
def test_ssn_rule(value: str, expected: bool) -> None:
    assert rules.is_ssn(value) is expected


@pytest.mark.parametrize("value", ["$1,234.50", "12,50 €", "EUR 30", "-$5.00", "R$ 40.636,08", "11.500,08 kr.",
                                   "91.500,00\u00a0Kč", "usd 12"])
def test_currency_rule_accepts(value: str) -> None:
    assert rules.is_currency(value)


@pytest.mark.parametrize("value", ["12.50", "1,234", "ABC 123", "5 L", "$", "EUR"])
def test_currency_rule_rejects(value: str) -> None:
    assert not rules.is_currency(value)


def test_other_rules() -> None:
    assert rules.is_ipv4("192.168.0.1") and not rules.is_ipv4("256.1.1.1") and not rules.is_ipv4("1.2.3")
    assert rules.is_ipv6("fe80::1%eth0") and not rules.is_ipv6("12:30:45")
    assert rules.is_url("https://example.com/x") and not rules.is_url("example.com")
    assert rules.is_email("a.b@example.co.uk") and not rules.is_email("a@b")
    assert rules.is_uuid("{123e4567-e89b-12d3-a456-426614174000}")
    assert not rules.is_uuid("123e4567e89b12d3a456426614174000")
    assert rules.is_postal("SW1A 1AA") and rules.is_postal("K1A 0B1") and rules.is_postal("00-950")
    assert not rules.is_postal("123456")
    assert rules.is_country("DE") and rules.is_country("deutschland") and not rules.is_country("de")
    assert rules.is_gtin("978-0-306-40615-7") and not rules.is_gtin("978-0-306-40615-8")


def test_inputs_and_native_types() -> None:
    names = HAND_WRITTEN["person_name"]
    expected = detect_semantic_type(names)
    assert detect_semantic_type(pa.array(names, pa.large_string())) == expected
    assert detect_semantic_type(pa.array(names).dictionary_encode()) == expected
    stamps = pa.array([dt.datetime(2024, 1, 1), None])
    assert detect_semantic_type(stamps).type == "date" and detect_semantic_type(stamps).confidence == 1.0
    assert detect_semantic_type(pa.array([True, False])).type == "none"
    assert detect_semantic_type(pa.array([1, 2, 3, 5, 8, 13])).type == "none"
    empty = detect_semantic_type([None, "", "  ", "N/A"])
    assert empty.type == "none" and empty.confidence == 0.0
    assert detect_semantic_type([]).confidence == 0.0
    big = pa.array((HAND_WRITTEN["email"][:1] + [None]) * 50_000)
    result = detect_semantic_type(big)
    assert result.type == "email" and result.details["sampled"] <= semantic.MAX_SAMPLE
    assert result.details["null_share"] == pytest.approx(0.5, abs=0.01)


def test_column_name_is_only_a_weak_hint() -> None:
    phones = HAND_WRITTEN["phone"]
    assert detect_semantic_type(phones, name="customer_email").type == "phone"
    assert detect_semantic_type(phones, name="col_7") == detect_semantic_type(phones)
    assert semantic._name_hints("zipCode") == {"postal_code"}
    assert semantic._name_hints("customer_email") == {"email"}


def test_model_is_loaded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_load = _semantic_model.ForestModel.load

    def counting_load(path):
        calls.append(path)
        return real_load(path)

    monkeypatch.setattr(_semantic_model.ForestModel, "load", staticmethod(counting_load))
    load_model.cache_clear()
    try:
        for _ in range(3):
            assert detect_semantic_type(HAND_WRITTEN["person_name"]).type == "person_name"
        assert load_model() is load_model()
        assert len(calls) == 1
    finally:
        load_model.cache_clear()


def test_shipped_model() -> None:
    assert MODEL_PATH.is_file() and MODEL_PATH.stat().st_size < 2 * 1024 * 1024
    model = load_model()
    assert set(model.classes) == set(SEMANTIC_TYPES)
    assert rules.COUNTRIES_FILE.is_file() and rules.CURRENCIES_FILE.is_file()


LOCALES = ("en_US", "de_DE", "fr_FR", "ja_JP", "pl_PL", "sv_SE", "en_CA")


@pytest.fixture(scope="module")
def generated() -> list[tuple[str, str, str]]:
    """(label, locale, predicted type) for Faker columns in training and unseen locales."""
    pytest.importorskip("faker")
    from beam_etl.ml._semantic_synth import generate_columns

    columns = generate_columns(LOCALES, 2, seed=424242, noise_levels=(0.0, 0.5), size_range=(30, 150))
    return [(c.label, c.locale, detect_semantic_type(c.values, name=f"c{i}").type) for i, c in enumerate(columns)]


@pytest.mark.parametrize("label", SEMANTIC_TYPES)
def test_generated_columns(generated: list[tuple[str, str, str]], label: str) -> None:
    rows = [(loc, pred) for lab, loc, pred in generated if lab == label]
    wrong = Counter(f"{loc}->{pred}" for loc, pred in rows if pred != label)
    assert len(rows) >= 2 * len(LOCALES)
    assert sum(wrong.values()) <= len(rows) // 10, wrong
    claimed = Counter(lab for lab, _, pred in generated if pred == label and lab != label)
    assert sum(claimed.values()) <= len(rows) // 10, claimed
