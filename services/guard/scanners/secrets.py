"""Secrets scanner: vendor token formats, private keys, JWTs, passwords and high-entropy assignments.

Rules live in `services/guard/rules/secrets.yaml`; all of them are gated by one RE2 Set, so a clean
prompt costs a single linear pass. Known limits: a secret split by whitespace, quotes or string
concatenation is not reassembled; zero-width and full-width characters inside a token are handled by
the policy's de-obfuscation pass (see `textmap.py`), not here.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from functools import cache, partial
from pathlib import Path

import re2
import yaml
from pydantic import BaseModel, ConfigDict, Field

from services.guard.scanners.base import Finding, Severity
from services.guard.scanners.ruleset import Match, Rule, RuleSet
from services.guard.scanners.validators import jwt_ok, looks_random, not_placeholder, shannon_entropy

RULES_FILE = Path(__file__).resolve().parent.parent / "rules" / "secrets.yaml"
Check = Callable[[str, str], bool]


class SecretRule(BaseModel):
    """One entry of the rule file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    severity: Severity
    pattern: str
    min_entropy: float = 0.0
    check: str = ""
    allow: list[str] = Field(default_factory=list)


class _RuleFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[SecretRule]


@cache
def load_rules(path: Path = RULES_FILE) -> tuple[SecretRule, ...]:
    """The rule file, parsed and checked once per process."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    rules = _RuleFile.model_validate(data).rules
    ids = [r.id for r in rules]
    if len(ids) != len(set(ids)):
        raise ValueError(f"{path}: rule ids must be unique")
    return tuple(rules)


_UUID = re2.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_BASE64_LINE = re2.compile(r"[A-Za-z0-9+/=]{48}")
# keys whose values are high-entropy by design but grant nothing on their own
_NOT_SECRET_KEYS = ("page", "cursor", "continuation", "csrf", "xsrf", "nonce", "etag", "checksum", "hash")


def _pem_ok(value: str, _whole: str) -> bool:
    """A PEM private key with a body (a header quoted in prose, or a `MII...` stub, is not a key)."""
    header_end = value.find("-----", 10)
    body = value[header_end + 5 :] if header_end >= 0 else ""
    body = "".join(line.strip() for line in body.splitlines()[:40] if ":" not in line)
    return _BASE64_LINE.search(body) is not None


def _password_ok(value: str, _whole: str) -> bool:
    return not_placeholder(value)


def _strict_password_ok(value: str, _whole: str) -> bool:
    """In prose, a password must look like one: letters plus a digit or a symbol ("is incorrect" is not)."""
    has_alpha = any(c.isalpha() for c in value)
    has_other = any(not c.isalpha() for c in value)
    return has_alpha and has_other and not_placeholder(value)


def _random_ok(min_entropy: float, value: str, whole: str) -> bool:
    if _UUID.match(value) is not None:
        return False
    key = whole[: len(whole) - len(value)].lower()
    if any(word in key for word in _NOT_SECRET_KEYS):
        return False
    return looks_random(value, min_entropy) and not_placeholder(value)


def _mixed_case(value: str, _whole: str) -> bool:
    tail = value[value.index("_") + 1 :] if "_" in value else value
    return any(c.isupper() for c in tail) and any(c.islower() for c in tail)


def _compose(rule: SecretRule, generic_min_entropy: float) -> Check | None:
    checks: list[Check] = []
    if rule.allow:
        allow = tuple(rule.allow)
        checks.append(lambda v, _w: not any(a in v for a in allow))
    if rule.min_entropy:
        floor = rule.min_entropy
        checks.append(lambda v, _w: shannon_entropy(v) >= floor)
    named: dict[str, Check] = {
        "jwt": lambda v, _w: jwt_ok(v),
        "pem": _pem_ok,
        "password": _password_ok,
        "strict_password": _strict_password_ok,
        "random": partial(_random_ok, generic_min_entropy),
        "mixed_case": _mixed_case,
        "not_uuid": lambda v, _w: _UUID.match(v) is None,
    }
    if rule.check:
        if rule.check not in named:
            raise ValueError(f"rule {rule.id!r}: unknown check {rule.check!r} (known: {', '.join(sorted(named))})")
        checks.append(named[rule.check])
    if not checks:
        return None
    if len(checks) == 1:
        return checks[0]
    return lambda v, w: all(check(v, w) for check in checks)


class SecretsScanner:
    """Finds credentials; every finding's span is the secret value itself (what redaction replaces)."""

    name = "secrets"

    def __init__(
        self,
        rules: Sequence[SecretRule] | None = None,
        *,
        generic_min_entropy: float = 3.5,
        disabled: frozenset[str] = frozenset(),
    ) -> None:
        specs = [r for r in (load_rules() if rules is None else rules) if r.id not in disabled]
        self.rule_ids = tuple(r.id for r in specs)
        self._rules = RuleSet(
            [Rule(r.id, r.pattern, r.severity, "SECRET", _compose(r, generic_min_entropy)) for r in specs]
        )

    def label(self, rule: str) -> str:
        return "SECRET"

    def scan(self, text: str) -> list[Finding]:
        return [Finding(self.name, m.rule.id, m.rule.severity, m.start, m.end) for m in _first_wins(self.matches(text))]

    def matches(self, text: str) -> list[Match]:
        return self._rules.matches(text)


def _first_wins(matches: list[Match]) -> list[Match]:
    """Drop matches that overlap one from an earlier (more specific) rule; keep position order."""
    starts: list[int] = []  # kept spans never overlap, so sorted starts also sort their ends
    kept: list[Match] = []
    for m in matches:  # already in rule order
        i = bisect_left(starts, m.start)
        if i > 0 and kept[i - 1].end > m.start:
            continue
        if i < len(kept) and kept[i].start < m.end:
            continue
        starts.insert(i, m.start)
        kept.insert(i, m)
    return kept
