"""Checks that turn a regex candidate into a finding: checksums, number ranges, entropy, token shapes."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
import re
from collections import Counter
from datetime import date

# IBAN length per country (ISO 13616 registry, plus the widely used partial members)
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25,
    "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18,
    "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33,
    "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip


def luhn_ok(digits: str) -> bool:
    """Luhn (mod 10) checksum over a string of ASCII digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_brand(digits: str) -> str | None:
    """The card network whose IIN range and length fit, or None (most Luhn-valid numbers are not cards)."""
    n = len(digits)
    two, three, four, six = int(digits[:2]), int(digits[:3]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4" and n in (13, 16, 19):
        return "visa"
    if (51 <= two <= 55 or 2221 <= four <= 2720) and n == 16:
        return "mastercard"
    if two in (34, 37) and n == 15:
        return "amex"
    if (four == 6011 or two == 65 or 644 <= three <= 649 or 622126 <= six <= 622925) and 16 <= n <= 19:
        return "discover"
    if 3528 <= four <= 3589 and 16 <= n <= 19:
        return "jcb"
    if (300 <= three <= 305 or two in (36, 38, 39)) and 14 <= n <= 19:
        return "diners"
    if two == 62 and 16 <= n <= 19:
        return "unionpay"
    if (two == 50 or 56 <= two <= 69) and 12 <= n <= 19 and n != 13:  # 13 digits: far more often an EAN barcode
        return "maestro"
    return None


def card_ok(raw: str) -> bool:
    """A card number as written: 13-19 digits, separators used consistently, a known IIN, Luhn-valid."""
    seps = {c for c in raw if not c.isdigit()}
    if len(seps) > 1:
        return False
    digits = raw if not seps else raw.replace(next(iter(seps)), "")
    if not digits.isascii() or not digits.isdigit() or not 13 <= len(digits) <= 19:
        return False
    if len(set(digits)) == 1:  # 0000 0000 0000 0000 is a mask, not a number
        return False
    return card_brand(digits) is not None and luhn_ok(digits)


def iban_ok(raw: str) -> bool:
    """ISO 13616: known country, that country's length, and the mod-97 check equal to 1."""
    iban = raw.replace(" ", "").upper()
    if len(iban) < 15 or not iban.isascii() or not iban.isalnum():
        return False
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban[2:4].isdigit():
        return False
    rearranged = iban[4:] + iban[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


_SSN_BLOCKLIST = {"078051120", "219099999", "123456789"}


def ssn_ok(raw: str) -> bool:
    """US SSN ranges: area not 000, 666 or 900-999; group not 00; serial not 0000; no famous samples."""
    digits = "".join(c for c in raw if c.isdigit())
    if len(digits) != 9 or digits in _SSN_BLOCKLIST or len(set(digits)) == 1:
        return False
    area, group, serial = int(digits[:3]), int(digits[3:5]), int(digits[5:])
    return area not in (0, 666) and area < 900 and group != 0 and serial != 0


def shannon_entropy(value: str) -> float:
    """Bits per character of the value's own character distribution."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def random_floor(value: str) -> float:
    """Entropy that 99% of truly random strings of this length and alphabet exceed (fitted by simulation).

    Short random strings cannot reach a fixed bar like 3.5 bits: 16 random hex digits average 3.2.
    """
    n = max(len(value), 2)
    if all(c in "0123456789abcdefABCDEF" for c in value):
        return 4.0 - 24.0 / n
    return math.log2(n) - 0.9


def looks_random(value: str, min_entropy: float) -> bool:
    """A token that is plausibly machine-generated: entropy above the bar and a mix of character classes."""
    # the bar is set for long tokens; short ones get the shortfall their length forces on random strings
    shortfall = max(0.0, 3.5 - random_floor(value))
    if shannon_entropy(value) < min_entropy - shortfall:
        return False
    has_digit = any(c.isdigit() for c in value)
    has_alpha = any(c.isalpha() for c in value)
    mixed_case = any(c.isupper() for c in value) and any(c.islower() for c in value)
    if not ((has_digit and has_alpha) or (mixed_case and len(value) >= 16)):
        return False
    # identifiers in code (snake_case / CamelCase words) are long and varied but not random
    return not _is_wordish(value)


_RUNS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")


def _is_wordish(value: str) -> bool:
    """Identifiers, paths and names (getUserToken, my-app-db-credentials, projects/1/secrets/x) are not keys.

    Random tokens switch between upper case, lower case and digits every one or two characters;
    words and numbers in identifiers come in runs of four or more on average.
    """
    runs = _RUNS.findall(value)
    if not runs:
        return True
    letters = sum(c.isalpha() for c in value)
    average = sum(len(r) for r in runs) / len(runs)
    return average >= 4.0 and letters >= len(value) / 2


_PLACEHOLDER_WORDS = {
    "password", "passwd", "pass", "pwd", "secret", "changeme", "change_me", "example", "sample", "dummy",
    "test", "testing", "null", "none", "nil", "undefined", "redacted", "placeholder", "your_password",
    "yourpassword", "mypassword", "my_password", "admin", "root", "user", "username", "token", "apikey",
    "api_key", "foobar", "foo", "bar", "xxx", "todo", "tbd", "required", "optional", "string", "true",
    "false", "default", "value", "empty", "hidden", "masked", "secret123", "password123",
}  # fmt: skip
_TEMPLATE_MARKS = ("${", "{{", "}}", "%(", "<", ">", "$(", "process.env", "os.environ", "getenv", "env(", "%s")


def not_placeholder(value: str) -> bool:
    """False for the values people write in docs and templates instead of a real password or key."""
    v = value.strip().strip("'\"`")
    low = v.lower()
    if len(v) < 4 or low in _PLACEHOLDER_WORDS:
        return False
    if any(mark in low for mark in _TEMPLATE_MARKS) or v.startswith(("$", "%", ":")) or "://" in v:
        return False
    if len(set(low.replace("-", "").replace("_", ""))) <= 2:  # ****, xxxxxx, 000000, ...
        return False
    if low.startswith(("your", "my-", "my_", "insert", "enter", "replace", "put-", "put_", "<")):
        return False
    # a bare identifier or call (password = get_password, pwd=args.pwd) is code, not a value
    ident = v.replace("_", "").replace(".", "")
    return not (ident.isalpha() and ("_" in v or "." in v) and v.islower())


def _b64url_json(part: str) -> object:
    padded = part + "=" * (-len(part) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded)
        return json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None


def jwt_ok(token: str) -> bool:
    """Three base64url parts whose first two decode to JSON objects, the header naming an `alg`."""
    parts = token.split(".")
    if len(parts) != 3:
        return False
    header = _b64url_json(parts[0])
    if not isinstance(header, dict) or "alg" not in header:
        return False
    return isinstance(_b64url_json(parts[1]), dict)


def public_ip(value: str) -> bool:
    """A globally routable address: private, loopback, link-local and documentation ranges are not personal."""
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return False
    return addr.is_global and not addr.is_multicast


MONTHS = {
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6, "jul": 7, "aug": 8, "sep": 9, "sept": 9,
    "oct": 10, "nov": 11, "dec": 12,
}  # fmt: skip


def birth_date_ok(raw: str) -> bool:
    """A real calendar date between 1900 and 2099, written in one of the common numeric or month-name forms."""
    text = raw.strip().lower().replace(",", " ")
    for suffix in ("st ", "nd ", "rd ", "th "):
        text = text.replace(suffix, " ")
    tokens = [t for t in text.replace("/", " ").replace("-", " ").replace(".", " ").split() if t]
    if len(tokens) != 3:
        return False
    month_idx = next((i for i, t in enumerate(tokens) if t[:3] in MONTHS and t.isalpha()), None)
    try:
        if month_idx is not None:
            month = MONTHS[tokens[month_idx][:4] if tokens[month_idx][:4] == "sept" else tokens[month_idx][:3]]
            rest = [int(t) for i, t in enumerate(tokens) if i != month_idx]
            day, year = (rest[0], rest[1]) if rest[1] > 31 else (rest[1], rest[0])
            return _valid(year, month, day)
        a, b, c = (int(t) for t in tokens)
    except ValueError:
        return False
    if a > 31:  # ISO: year-month-day
        return _valid(a, b, c)
    year = c + (1900 if c >= 30 else 2000) if c < 100 else c
    # day-first and month-first are both common; accept when either reading is a real date
    return _valid(year, b, a) or _valid(year, a, b)


def _valid(year: int, month: int, day: int) -> bool:
    if not 1900 <= year <= 2099:
        return False
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True
