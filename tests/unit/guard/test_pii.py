"""PII scanner: each entity found with its exact span; validators reject look-alikes."""

from __future__ import annotations

import pytest

from services.guard.scanners.pii import PiiScanner


@pytest.fixture(scope="module")
def pii() -> PiiScanner:
    return PiiScanner()


def found(scanner: PiiScanner, text: str) -> list[tuple[str, str]]:
    return [(f.rule, text[f.start : f.end]) for f in scanner.scan(text)]


@pytest.mark.parametrize(
    "text,entity,value",
    [
        ("mail bob.smith+news@mail.example.org today", "email", "bob.smith+news@mail.example.org"),
        ("CONTACT: JANE.ROE@EXAMPLE.COM", "email", "JANE.ROE@EXAMPLE.COM"),
        ("mailto:press@northwind-traders.com?subject=x", "email", "press@northwind-traders.com"),
        ("call +44 20 7946 0958 now", "phone", "+44 20 7946 0958"),
        ("tel +44 (0)20 7946 0958", "phone", "+44 (0)20 7946 0958"),
        ("office (415) 867-5309 ext", "phone", "(415) 867-5309"),
        ("phone: 4158675309", "phone", "4158675309"),
        ("+33 6 12 34 56 78 is mine", "phone", "+33 6 12 34 56 78"),
        ("card 4111 1111 1111 1111 exp 12/27", "credit_card", "4111 1111 1111 1111"),
        ("amex 3782-822463-10005", "credit_card", "3782-822463-10005"),
        ("pay 5555555555554444 now", "credit_card", "5555555555554444"),
        ("IBAN DE89 3704 0044 0532 0130 00 please", "iban", "DE89 3704 0044 0532 0130 00"),
        ("to GB33BUKB20201555555555.", "iban", "GB33BUKB20201555555555"),
        ("SSN 536-90-4399.", "ssn", "536-90-4399"),
        ("social security number 536904399", "ssn", "536904399"),
        ("from 185.199.108.153 port 22", "ip_address", "185.199.108.153"),
        ("via 2606:4700:4700::1111 ok", "ip_address", "2606:4700:4700::1111"),
        ("DOB: 14/03/1985", "date_of_birth", "14/03/1985"),
        ("born on March 3, 1992 in Leeds", "date_of_birth", "March 3, 1992"),
        ("Geburtsdatum: 23.11.1968", "date_of_birth", "23.11.1968"),
        ("ship to 742 Evergreen Terrace, Springfield, IL 62704 asap", "street_address",
         "742 Evergreen Terrace, Springfield, IL 62704"),
        ("HQ: 1600 Pennsylvania Avenue NW, Washington, DC 20500", "street_address",
         "1600 Pennsylvania Avenue NW, Washington, DC 20500"),
    ],
)  # fmt: skip
def test_entities(pii: PiiScanner, text: str, entity: str, value: str) -> None:
    assert (entity, value) in found(pii, text)


@pytest.mark.parametrize(
    "text",
    [
        "git clone git@github.com:acme/app.git",
        '<img srcset="logo@2x.png 2x">',
        "mongodb://app:S3cret99@db.acme.io/test",
        "https://4f1c2b9e7d@o450123.ingest.sentry.io/55",
        "npm install lodash@4.17.21",
        "Invalid phone +1 123 456 7890",
        "Order #4492-1183-2291 shipped",
        "card 4111 1111 1111 1112 fails Luhn",
        "IBAN DE89 3704 0044 0532 0130 01 is wrong",
        "SSN 078-05-1120 and 666-12-3456 and 987-65-4321",
        "hosts 10.0.0.1 192.168.1.20 127.0.0.1 192.0.2.15 fe80::1",
        "version 1.2.3.4 and OID 1.3.6.1.2.1.1.3.0 and upgrade 2.4.1.0",
        "the meeting is on 03/14/2025",
        "DOB 1990-02-30 is not a date",
        "We sold 500 Apple Watches",
        "ISBN 978-3-16-148410-0 barcode 5901234123457",
        "std::vector<int> v; // C++",
    ],
)
def test_negatives(pii: PiiScanner, text: str) -> None:
    assert found(pii, text) == []


def test_greedy_candidates_are_trimmed_to_the_valid_value(pii: PiiScanner) -> None:
    assert found(pii, "IBAN DE89370400440532013000 ABCD EFGH") == [("iban", "DE89370400440532013000")]
    assert ("credit_card", "4111 1111 1111 1111") in found(pii, "4111 1111 1111 1111 2025")
    assert ("phone", "+44 20 7946 0958") in found(pii, "+44 20 7946 0958 12 items")


def test_phone_regions_decide_national_formats() -> None:
    text = "Ruf mich an: 030 12345678"
    assert found(PiiScanner(entities=["phone"]), text) == []
    assert found(PiiScanner(entities=["phone"], phone_regions=["DE"]), text) == [("phone", "030 12345678")]


def test_entity_selection_and_labels() -> None:
    only_email = PiiScanner(entities=["email"])
    assert found(only_email, "a@b.io 4111 1111 1111 1111") == [("email", "a@b.io")]
    assert only_email.label("credit_card") == "CREDIT_CARD"
    with pytest.raises(ValueError, match="unknown PII entities"):
        PiiScanner(entities=["name"])
    with pytest.raises(ValueError, match="unknown phone region"):
        PiiScanner(entities=["phone"], phone_regions=["XX"])


def test_non_ascii_offsets_and_addresses(pii: PiiScanner) -> None:
    text = "Grüße aus Köln — schreib an jürgen@example.de oder émile.kovács@exämple.hu, a@b.io,c@d.io"
    emails = [v for e, v in found(pii, text) if e == "email"]
    assert emails == ["jürgen@example.de", "émile.kovács@exämple.hu", "a@b.io", "c@d.io"]


def test_zero_width_in_email_is_missed_by_the_scanner_alone(pii: PiiScanner) -> None:
    """The policy's de-obfuscation pass catches this (see test_policy)."""
    assert ("email", "bob@example.com") not in found(pii, "bob\u200b@example.com")
