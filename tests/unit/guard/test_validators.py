"""Validators: checksums, ranges, entropy and shape checks behind the regex candidates."""

from __future__ import annotations

import random
import string

import pytest

from services.guard.scanners.validators import (
    birth_date_ok,
    card_ok,
    iban_ok,
    jwt_ok,
    looks_random,
    luhn_ok,
    not_placeholder,
    public_ip,
    shannon_entropy,
    ssn_ok,
)


@pytest.mark.parametrize(
    "number", ["4111111111111111", "4111 1111 1111 1111", "5555-5555-5555-4444", "378282246310005", "6011000990139424"]
)
def test_known_test_cards_pass(number: str) -> None:
    assert card_ok(number)


@pytest.mark.parametrize(
    "number",
    [
        "4111111111111112",  # Luhn fails
        "4111 1111-1111 1111",  # mixed separators
        "0000000000000000",  # a mask
        "1234567812345670",  # Luhn-valid, but no card network starts with 12
        "5901234123457",  # an EAN-13 barcode (Luhn-valid by chance)
        "41111111111111111111",  # 20 digits
    ],
)
def test_non_cards_fail(number: str) -> None:
    assert not card_ok(number)


def test_luhn() -> None:
    assert luhn_ok("79927398713")
    assert not luhn_ok("79927398710")


@pytest.mark.parametrize(
    "iban",
    [
        "DE89 3704 0044 0532 0130 00",
        "GB33BUKB20201555555555",
        "FR76 3000 6000 0112 3456 7890 189",
        "gb33bukb20201555555555",
    ],
)
def test_valid_ibans(iban: str) -> None:
    assert iban_ok(iban)


@pytest.mark.parametrize(
    "iban",
    [
        "DE89 3704 0044 0532 0130 01",  # check digits do not match
        "DE89 3704 0044 0532 0130",  # too short for DE
        "XX89370400440532013000",  # no such country
        "GB82 WEST 1234 5698 7654",  # too short for GB
    ],
)
def test_invalid_ibans(iban: str) -> None:
    assert not iban_ok(iban)


@pytest.mark.parametrize("ssn,ok", [("536-90-4399", True), ("000-12-3456", False), ("666-12-3456", False),
                                    ("912-12-3456", False), ("123-00-4567", False), ("123-45-0000", False),
                                    ("078-05-1120", False), ("219 44 7805", True)])  # fmt: skip
def test_ssn_ranges(ssn: str, ok: bool) -> None:
    assert ssn_ok(ssn) is ok


def test_entropy_and_randomness() -> None:
    assert shannon_entropy("aaaa") == 0.0
    assert shannon_entropy("abcd") == 2.0
    rng = random.Random(1)
    for n in (16, 24, 40):
        token = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(n))
        assert looks_random(token, 3.5), token
    for word in ("getUserAccessTokenFromCache", "my-app-db-credentials-prod", "projects/123/secrets/x/versions/3",
                 "OPENAI_API_KEY", "xxxxxxxxxxxxxxxxxxxx", "1234567890123456"):  # fmt: skip
        assert not looks_random(word, 3.5), word


@pytest.mark.parametrize(
    "value",
    [
        "password",
        "********",
        "${DB_PASSWORD}",
        "{{ vault_pw }}",
        "changeme",
        "<password>",
        "os.environ",
        "request.form",
        "https://acme.io/reset",
        "your_password_here",
    ],
)
def test_placeholders_are_not_passwords(value: str) -> None:
    assert not not_placeholder(value)


def test_real_looking_passwords_pass() -> None:
    assert not_placeholder("Tr0ub4dor&3")
    assert not_placeholder("hunter2024")


def test_jwt_shape() -> None:
    good = (
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
    )
    assert jwt_ok(good)
    assert not jwt_ok("eyJhbGciOiJIUzI1NiJ9.not-a-payload.sig")
    assert not jwt_ok("eyJmb28iOiJiYXIifQ.eyJzdWIiOiIxIn0.sig")  # header without alg


@pytest.mark.parametrize("ip,ok", [("8.8.4.4", True), ("185.199.108.153", True), ("10.0.0.1", False),
                                   ("192.168.1.20", False), ("127.0.0.1", False), ("192.0.2.15", False),
                                   ("2606:4700::6810:85e5", True), ("fe80::1", False), ("2001:db8::1", False),
                                   ("224.0.0.1", False), ("not-an-ip", False)])  # fmt: skip
def test_public_ip(ip: str, ok: bool) -> None:
    assert public_ip(ip) is ok


@pytest.mark.parametrize("value,ok", [("03/14/1985", True), ("14/03/1985", True), ("1985-03-14", True),
                                      ("12 March 1990", True), ("March 3, 1992", True), ("23.11.1968", True),
                                      ("1990-02-30", False), ("13/13/1990", False), ("01/01/1850", False)])  # fmt: skip
def test_birth_dates(value: str, ok: bool) -> None:
    assert birth_date_ok(value) is ok
