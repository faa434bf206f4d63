"""Argument rules (pure): which of the config's `mcp.rules` decides a call, by its tool and its arguments.

The first rule whose tools match and whose condition holds decides (`allow`, `deny`, `approve`); no match
allows. A condition reads one argument by its dotted path (`to`, `options.path`, `recipients.0`).
"""

from __future__ import annotations

import fnmatch
import functools
import math
import operator
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any
from urllib.parse import unquote, urlsplit

import re2

from shared.mcp_config import McpRule, RuleAction

_MISSING = object()


@dataclass(frozen=True, slots=True)
class RuleDecision:
    action: RuleAction
    rule: int = -1  # index in `mcp.rules`; -1: no rule matched
    message: str = ""


def argument(arguments: dict[str, Any], path: str) -> Any:
    """The value at a dotted path (list items by index), or _MISSING."""
    value: Any = arguments
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


_NOT_IN_HOST = frozenset("/\\?#@:[]<>%|^ ")


def _host(text: str) -> str | None:
    """A host name, percent-decoded, lowercased, without a trailing dot; None when there is none."""
    host = unquote(text).strip().lower().rstrip(".")  # `evil%2ecom` is evil.com to a WHATWG URL parser
    if not host or any(c in host for c in _NOT_IN_HOST) or any(ord(c) < 33 for c in host):
        return None  # `evil.com%40example.com`: no host a parser would agree on
    return host


def _url_host(text: str) -> str | None:
    """The host of a URL (`\\` read as `/`, as browsers do), or None when it has none or does not parse."""
    try:
        return _host(urlsplit(text.replace("\\", "/")).hostname or "")
    except ValueError:
        return None


def _domains(text: str) -> list[str] | None:
    """Every domain a value names: a URL's host, or the domain of each e-mail address of an address list
    (`Ann <ann@x.org>, bob@y.org`) or bare host; None when any part does not parse (the caller fails closed)."""
    text = text.strip()
    if not text:
        return None
    if _SCHEME.match(text):
        host = _url_host(text)
        return [host] if host else None
    domains: list[str] = []
    for _, address in getaddresses([text]):
        if not address:
            return None
        if "@" in address:
            host = _host(address.rsplit("@", 1)[1])
            if host is None:
                return None
        else:
            host = _url_host("//" + address)
        if host is None:
            return None
        domains.append(host)
    return domains or None


def _in_domains(domain: str, domains: list[str]) -> bool:
    """The domain is one of them, or a subdomain of one."""
    listed = [d.lower().rstrip(".") for d in domains]
    return any(domain == d or domain.endswith("." + d) for d in listed)


def _path(text: str) -> str:
    """A path percent-decoded (until stable), with `\\` read as `/` and `..` and `.` resolved (a prefix check
    must not be escaped with `/srv/ok/../../etc`, `/srv/ok/%2e%2e/x` or `/srv/ok\\..\\x`)."""
    if not text:
        return text
    for _ in range(8):
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    text = text.replace("\\", "/")
    normal = posixpath.normpath(text)
    return normal + "/" if text.endswith("/") and not normal.endswith("/") else normal


def _number(value: Any) -> float | None:
    """A finite number (numbers written as text count); None for anything else (NaN, inf, too large)."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float | str):
            number = float(value)
        else:
            return None
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re2._Regexp:
    return re2.compile(pattern)


# a check of one item: True/False, or None when the item cannot be read (not a string, not a number, no domain)
_Check = Callable[[Any], bool | None]


def _prefixed(prefix: str) -> _Check:
    return lambda v: _path(v).startswith(prefix) if isinstance(v, str) else None


def _domain_check(domains: list[str], inside: bool, strict: bool) -> _Check:
    """Whether the item names a domain in (inside) / outside (not inside) the list; an address list names
    several: for a deny/approve rule (strict) one of them is enough, for an allow rule every one must be (so no
    address slips past next to a listed one)."""
    quantifier = any if strict else all

    def check(v: Any) -> bool | None:
        found = _domains(v) if isinstance(v, str) else None
        if found is None:
            return None
        return quantifier(_in_domains(d, domains) == inside for d in found)

    return check


def _beyond(limit: float, past: Callable[[float, float], bool]) -> _Check:
    """Whether a number lies past the limit (`operator.gt` for a max, `operator.lt` for a min); an item that is
    not a number is not judged."""

    def check(v: Any) -> bool | None:
        n = _number(v)
        return None if n is None else past(n, limit)

    return check


def _checks(rule: McpRule, strict: bool) -> list[_Check]:
    checks: list[_Check] = []
    if rule.prefix is not None:
        checks.append(_prefixed(rule.prefix))
    if rule.not_prefix is not None:
        not_prefix = rule.not_prefix
        checks.append(lambda v: None if (p := _prefixed(not_prefix)(v)) is None else not p)
    if rule.domain_in is not None:
        checks.append(_domain_check(rule.domain_in, True, strict))
    if rule.domain_not_in is not None:
        checks.append(_domain_check(rule.domain_not_in, False, strict))
    if rule.max is not None:
        checks.append(_beyond(rule.max, operator.gt))
    if rule.min is not None:
        checks.append(_beyond(rule.min, operator.lt))
    if rule.equals is not None:
        equals = rule.equals
        checks.append(lambda v: v == equals)
    if rule.one_of is not None:
        one_of = rule.one_of
        checks.append(lambda v: v in one_of if isinstance(v, str) else None)
    if rule.matches is not None:
        pattern = _compiled(rule.matches)
        checks.append(lambda v: pattern.fullmatch(v) is not None if isinstance(v, str) else None)
    return checks


def holds(rule: McpRule, arguments: dict[str, Any]) -> bool:
    """Whether the rule's condition holds for these arguments (every condition it sets must).

    Read the way that stops a call: a `deny` or `approve` rule holds when any item of a list (or any address of
    an address list) meets the condition, and when the argument is missing, null or cannot be read (not a
    string, not a finite number, no domain) unless the rule says `missing: skip`; an `allow` rule holds only
    when every item meets it and every item can be read, and never for a missing argument unless
    `missing: match`. So a list or an odd value cannot carry a forbidden item past a rule."""
    if not rule.arg:
        return True
    strict = rule.action != "allow"  # a deny/approve rule fails closed: an unreadable value matches
    value = argument(arguments, rule.arg)
    if value is _MISSING or value is None:
        if rule.missing is not None:
            return rule.missing == "match"
        return strict
    values = value if isinstance(value, list) else [value]
    if not values:
        return strict
    for check in _checks(rule, strict):
        results = [check(v) for v in values]
        met = [strict if r is None else r for r in results]
        if not (any(met) if strict else all(met)):
            return False
    return True


def decide(rules: list[McpRule], tool: str, arguments: dict[str, Any]) -> RuleDecision:
    """The decision of the first rule that matches `tool` (namespaced) and whose condition holds."""
    for i, rule in enumerate(rules):
        if any(fnmatch.fnmatchcase(tool, pattern) for pattern in rule.tools) and holds(rule, arguments):
            return RuleDecision(rule.action, i, rule.message)
    return RuleDecision("allow")
