"""Argument rules (pure): which of the config's `mcp.rules` decides a call, by its tool and its arguments.

The first rule whose tools match and whose condition holds decides (`allow`, `deny`, `approve`); no match
allows. A condition reads one argument by its dotted path (`to`, `options.path`, `recipients.0`).
"""

from __future__ import annotations

import fnmatch
import functools
import posixpath
from dataclasses import dataclass
from typing import Any

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


def _domain(text: str) -> str:
    """The domain of an e-mail address (after the last @) or URL (its host), lowercased."""
    text = text.strip().lower()
    if "@" in text and "://" not in text:
        return text.rsplit("@", 1)[1].rstrip(">").strip()
    host = text.split("://", 1)[-1].split("/", 1)[0]
    return host.rsplit("@", 1)[-1].split(":", 1)[0]


def _in_domains(domain: str, domains: list[str]) -> bool:
    """The domain is one of them, or a subdomain of one."""
    return any(domain == d.lower() or domain.endswith("." + d.lower()) for d in domains)


def _path(text: str) -> str:
    """A path with `..` and `.` resolved (a prefix check must not be escaped with `/srv/ok/../../etc`)."""
    if not text:
        return text
    normal = posixpath.normpath(text)
    return normal + "/" if text.endswith("/") and not normal.endswith("/") else normal


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re2._Regexp:
    return re2.compile(pattern)


def holds(rule: McpRule, arguments: dict[str, Any]) -> bool:
    """Whether the rule's condition holds for these arguments (every condition it sets must)."""
    if not rule.arg:
        return True
    value = argument(arguments, rule.arg)
    if value is _MISSING or value is None:
        return rule.missing == "match"
    values = value if isinstance(value, list) else [value]
    checks: list[bool] = []
    if rule.prefix is not None:
        checks.append(all(isinstance(v, str) and _path(v).startswith(rule.prefix) for v in values))
    if rule.not_prefix is not None:
        checks.append(any(not (isinstance(v, str) and _path(v).startswith(rule.not_prefix)) for v in values))
    if rule.domain_in is not None:
        checks.append(all(isinstance(v, str) and _in_domains(_domain(v), rule.domain_in) for v in values))
    if rule.domain_not_in is not None:
        checks.append(any(not (isinstance(v, str) and _in_domains(_domain(v), rule.domain_not_in)) for v in values))
    if rule.max is not None:
        numbers = [_number(v) for v in values]
        checks.append(any(n is None or n > rule.max for n in numbers))
    if rule.min is not None:
        numbers = [_number(v) for v in values]
        checks.append(any(n is None or n < rule.min for n in numbers))
    if rule.equals is not None:
        checks.append(any(v == rule.equals for v in values))
    if rule.one_of is not None:
        checks.append(all(isinstance(v, str) and v in rule.one_of for v in values))
    if rule.matches is not None:
        pattern = _compiled(rule.matches)
        checks.append(any(isinstance(v, str) and pattern.fullmatch(v) is not None for v in values))
    return all(checks)


def decide(rules: list[McpRule], tool: str, arguments: dict[str, Any]) -> RuleDecision:
    """The decision of the first rule that matches `tool` (namespaced) and whose condition holds."""
    for i, rule in enumerate(rules):
        if any(fnmatch.fnmatchcase(tool, pattern) for pattern in rule.tools) and holds(rule, arguments):
            return RuleDecision(rule.action, i, rule.message)
    return RuleDecision("allow")
