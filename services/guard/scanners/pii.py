"""PII scanner: structured personal data found by pattern and confirmed by a validator.

Entities (rule ids): email, phone (libphonenumber validity), credit_card (IIN + length + Luhn),
iban (country length + mod-97), ssn (US area/group/serial ranges), ip_address (globally routable
IPv4/IPv6 only), date_of_birth (a real date next to a birth keyword), street_address (US-style
"123 Main Street[, Apt 4][, City, ST 12345]").

Person names are not detected: the only offline option measured here (presidio + spaCy) costs about
66 ms per 2 KB prompt, far off the hot path. Phone numbers written without a +country code are
read in the configured regions only (default US). Postal addresses outside the US pattern, and
e-mail addresses written with " at " / " dot ", are not detected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import cache

import phonenumbers

from services.guard.scanners.base import Finding, Severity
from services.guard.scanners.ruleset import Match, Rule, RuleSet
from services.guard.scanners.validators import IBAN_LENGTHS, birth_date_ok, card_ok, iban_ok, public_ip, ssn_ok

SEVERITY: dict[str, Severity] = {
    "email": "medium",
    "phone": "medium",
    "credit_card": "high",
    "iban": "high",
    "ssn": "high",
    "ip_address": "low",
    "date_of_birth": "medium",
    "street_address": "medium",
}
LABELS: dict[str, str] = {
    "email": "EMAIL",
    "phone": "PHONE",
    "credit_card": "CREDIT_CARD",
    "iban": "IBAN",
    "ssn": "SSN",
    "ip_address": "IP_ADDRESS",
    "date_of_birth": "DATE_OF_BIRTH",
    "street_address": "ADDRESS",
}

_FILE_TLDS = frozenset(
    "png jpg jpeg gif svg webp ico bmp tif tiff css scss js mjs cjs ts tsx jsx json yaml yml xml html htm "
    "md txt lock toml ini cfg log csv pdf zip gz tar whl py rb go rs java kt".split()
)
_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]{0,6}\.?"
_DATE = (
    r"[0-9]{1,2}[/.-][0-9]{1,2}[/.-][0-9]{2,4}|[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}"
    rf"|[0-9]{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH},?\s+[0-9]{{4}}|{_MONTH}\s+[0-9]{{1,2}}(?:st|nd|rd|th)?,?\s+[0-9]{{4}}"
)
_DOB_WORDS = (
    r"dob\b|d\.o\.b\.?|date\s+of\s+birth\b|birth\s?date\b|born(?:\s+on)?\b|birthday\b|geburtsdatum\b"
    r"|geboren(?:\s+am)?\b|date\s+de\s+naissance\b|n[ée]e?\s+le\b|fecha\s+de\s+nacimiento\b|data\s+di\s+nascita\b"
)
_STREET_TYPES = (
    "Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Ter|Circle|Cir"
    "|Parkway|Pkwy|Highway|Hwy|Square|Sq|Trail|Trl|Alley|Plaza|Loop|Row"
)

# (entity, pattern); several patterns may serve one entity; on overlap the earlier, longer match wins
PATTERNS: tuple[tuple[str, str], ...] = (
    (
        "credit_card",
        r"\b(?P<s>[0-9]{4}(?:[ -]?[0-9]{4}){2}(?:[ -]?[0-9]{1,4}){1,2}|[0-9]{4}[ -]?[0-9]{6}[ -]?[0-9]{4,5})\b",
    ),
    ("iban", r"\b(?P<s>[A-Za-z]{2}[0-9]{2}(?: ?[A-Za-z0-9]{4}){2,8}(?: ?[A-Za-z0-9]{1,3})?)\b"),
    ("ssn", r"\b(?P<s>[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{3} [0-9]{2} [0-9]{4})\b"),
    ("ssn", r"(?i)\b(?:ssn|social\s+security(?:\s+(?:number|no\.?|#))?)\b[^0-9\n]{0,20}(?P<s>[0-9]{9})\b"),
    (
        "email",
        r"(?:(?P<u>://(?:[^\s/@:]{0,64}:)?)|^|[^\pL\pN._%+-])"
        r"(?P<s>[\pL\pN][\pL\pN._%+-]*@(?:[\pL\pN][\pL\pN-]*\.)+[A-Za-z]{2,24})\b:?",
    ),
    ("phone", r"(?:^|[^\w+])(?P<s>\+[1-9](?:[ .()/-]{0,2}[0-9]){6,14})\b"),
    ("phone", r"(?P<s>(?:\([2-9][0-9]{2}\)[ .-]?|\b[2-9][0-9]{2}[ .-])[0-9]{3}[ .-][0-9]{4})\b"),
    ("phone", r"\b(?P<s>0[1-9][0-9]{0,4}(?:[ .-]?[0-9]{2,4}){2,4})\b"),
    (
        "phone",
        r"(?i)\b(?:phone|tel|telephone|mobile|cell|call|text|whatsapp|fax|sms)\b[^0-9+\n]{0,15}"
        r"(?P<s>\+?[0-9][0-9 .()-]{5,18}[0-9])\b",
    ),
    ("ip_address", r"(?i)(?P<v>\b(?:v|ver\.?|version|release)\s?)?\b(?P<s>[0-9]{1,3}(?:\.[0-9]{1,3}){3,})\b"),
    ("ip_address", r"(?i)\b(?P<s>[23][0-9a-f]{3}(?::[0-9a-f]{0,4}){2,7})"),
    ("date_of_birth", rf"(?i)(?:{_DOB_WORDS})[^0-9A-Za-z\n]{{0,5}}(?:(?:is|was|of|on)\s+)?(?P<s>{_DATE})\b"),
    (
        "street_address",
        r"\b(?P<s>[0-9]{1,6}[A-Z]?[ \t]+(?:(?:[NSEW]\.?|North|South|East|West)[ \t]+)?"
        r"(?:[A-Z][a-z]+|[0-9]{1,3}(?:st|nd|rd|th))(?:[ \t]+[A-Z][a-z]+){0,3}[ \t]+"
        rf"(?:{_STREET_TYPES})\b\.?(?:[ \t]+(?:N|S|E|W|NE|NW|SE|SW)\b\.?)?"
        r"(?:,?[ \t]+(?:Apt|Apartment|Suite|Ste|Unit|#)\.?[ \t]*[A-Za-z0-9-]{1,6})?"
        r"(?:,[ \t]+[A-Z][a-z]+(?:[ \t]+[A-Z][a-z]+){0,2},?[ \t]+[A-Z]{2}(?:[ \t]+[0-9]{5}(?:-[0-9]{4})?)?)?)",
    ),
)


def _email_ok(value: str, whole: str) -> bool:
    local, _, domain = value.partition("@")
    if whole.endswith(":"):  # user@host:path is an scp/git remote, not a mailbox
        return False
    if whole.startswith("://"):  # scheme://user[:password]@host is a URL's userinfo, not a mailbox
        return False
    if len(local) > 64 or local.endswith(".") or ".." in local or len(domain) > 253:
        return False
    if any(len(label) > 63 or label.endswith("-") for label in domain.split(".")):
        return False
    return domain.rsplit(".", 1)[-1].lower() not in _FILE_TLDS


def _ip_ok(value: str, whole: str) -> bool:
    if len(whole) > len(value):  # the optional "version " prefix matched: 1.2.3.4 is a version here
        return False
    if "." in value:
        octets = value.split(".")
        if len(octets) != 4:
            return False
        if all(len(o) == 1 for o in octets):  # 2.4.1.0 is a version; 1.1.1.1-style resolvers are not personal
            return False
    return public_ip(value.rstrip(":"))


class PiiScanner:
    """Finds the configured PII entities; spans cover exactly the personal value."""

    name = "pii"

    def __init__(self, entities: Iterable[str] = tuple(SEVERITY), phone_regions: Sequence[str] = ("US",)) -> None:
        wanted = set(entities)
        unknown = wanted - set(SEVERITY)
        if unknown:
            raise ValueError(f"unknown PII entities: {', '.join(sorted(unknown))}")
        self.entities = frozenset(wanted)
        self._regions = tuple(phone_regions)
        # checks that may shorten a greedy candidate (card, IBAN, phone) run after matching, here
        self._shrinkers: dict[str, Callable[[str], int]] = {
            "credit_card": lambda v: _longest_prefix(v, card_ok, min_digits=13),
            "iban": _iban_prefix,
            "phone": lambda v: _longest_prefix(v, self._phone_ok, min_digits=7),
        }
        checks: dict[str, Callable[[str, str], bool] | None] = {
            "email": _email_ok,
            "ssn": lambda v, _w: ssn_ok(v),
            "ip_address": _ip_ok,
            "date_of_birth": lambda v, _w: birth_date_ok(v),
        }
        self._rules = RuleSet(
            [
                Rule(entity, pattern, SEVERITY[entity], LABELS[entity], checks.get(entity))
                for entity, pattern in PATTERNS
                if entity in wanted
            ]
        )
        if "phone" in wanted:
            _warm_up_phone_metadata(self._regions)

    def label(self, rule: str) -> str:
        return LABELS.get(rule, "PII")

    def scan(self, text: str) -> list[Finding]:
        found: list[Match] = []
        for match in self._rules.matches(text):
            shrink = self._shrinkers.get(match.rule.id)
            if shrink is None:
                found.append(match)
                continue
            length = shrink(match.value)
            if length:
                found.append(Match(match.rule, match.start, match.start + length, match.value[:length]))
        return [Finding(self.name, m.rule.id, m.rule.severity, m.start, m.end) for m in _first_wins(found)]

    def _phone_ok(self, value: str) -> bool:
        regions: Sequence[str | None] = (None,) if value.startswith("+") else self._regions
        for region in regions:
            try:
                number = phonenumbers.parse(value, region)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_valid_number(number):
                return True
        return False


def _longest_prefix(value: str, ok: Callable[[str], bool], *, min_digits: int) -> int:
    """Length of the longest prefix ending at a group boundary that passes `ok` (0 if none)."""
    cuts = [len(value)] + [i for i in range(len(value) - 1, 0, -1) if not value[i].isalnum() and value[i - 1].isalnum()]
    for attempt, cut in enumerate(cuts):
        if attempt >= 4:
            break
        prefix = value[:cut].rstrip(" .()/-")
        if sum(c.isdigit() for c in prefix) < min_digits:
            break
        if ok(prefix):
            return len(prefix)
    return 0


def _iban_prefix(value: str) -> int:
    """IBANs have a fixed length per country: take that many characters (ignoring spaces) and check."""
    want = IBAN_LENGTHS.get(value[:2].upper())
    if want is None:
        return 0
    count = 0
    for i, ch in enumerate(value):
        if ch != " ":
            count += 1
        if count == want:
            end = i + 1
            if end < len(value) and value[end] != " ":  # the IBAN would end inside a group
                return 0
            return end if iban_ok(value[:end]) else 0
    return 0


def _first_wins(matches: list[Match]) -> list[Match]:
    kept: list[Match] = []
    for m in sorted(matches, key=lambda m: (m.start, -(m.end - m.start))):
        if kept and m.start < kept[-1].end:
            continue
        kept.append(m)
    return kept


@cache
def _load_phone_metadata() -> None:
    """Load libphonenumber metadata once per process, so no request pays ~2 ms per new country."""
    for region in phonenumbers.SUPPORTED_REGIONS:
        example = phonenumbers.example_number(region)
        if example is not None:
            phonenumbers.is_valid_number(example)


def _warm_up_phone_metadata(regions: Sequence[str]) -> None:
    _load_phone_metadata()
    for region in regions:
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown phone region {region!r}")
