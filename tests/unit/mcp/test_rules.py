"""Argument rules: the first rule whose tools and condition match decides; paths are normalised first."""

from __future__ import annotations

import pytest

from services.ingress.mcp.rules import decide
from shared.config import ConfigError, parse_config
from shared.mcp_config import McpRule

RULES = [
    McpRule(tools=["*__transfer"], arg="amount", max=100, action="deny", message="too much"),
    McpRule(tools=["fs__write*"], arg="path", not_prefix="/srv/shared/", action="deny"),
    McpRule(tools=["mail__send"], arg="to", domain_not_in=["example.com"], action="approve"),
    McpRule(tools=["mail__send"], arg="cc", domain_in=["example.com"], action="allow"),
    McpRule(tools=["db__query"], arg="sql", matches="(?i)\\s*select\\b.*", action="allow"),
    McpRule(tools=["db__query"], action="deny"),
]


@pytest.mark.parametrize(
    ("tool", "args", "action"),
    [
        ("bank__transfer", {"amount": 100}, "allow"),
        ("bank__transfer", {"amount": 100.01}, "deny"),
        ("bank__transfer", {"amount": "250"}, "deny"),  # numbers written as text count
        ("bank__transfer", {"amount": "lots"}, "deny"),  # not a number: over any limit
        ("bank__transfer", {}, "allow"),  # the argument is missing: the rule does not apply
        ("fs__write_file", {"path": "/srv/shared/a.txt"}, "allow"),
        ("fs__write_file", {"path": "/srv/shared/../../etc/passwd"}, "deny"),
        ("fs__write_file", {"path": "/srv/sharedx/a"}, "deny"),
        ("fs__write_file", {"path": ["/srv/shared/a", "/tmp/b"]}, "deny"),  # any item outside
        ("mail__send", {"to": "Ann <ann@example.com>"}, "allow"),
        ("mail__send", {"to": "bob@sub.example.com"}, "allow"),
        ("mail__send", {"to": "eve@example.com.evil.org"}, "approve"),
        ("mail__send", {"to": ["a@example.com", "b@other.org"]}, "approve"),
        ("db__query", {"sql": "SELECT 1"}, "allow"),
        ("db__query", {"sql": "DROP TABLE x"}, "deny"),
        ("other__tool", {"amount": 10**9}, "allow"),
    ],
)
def test_the_first_matching_rule_decides(tool: str, args: dict[str, object], action: str) -> None:
    assert decide(RULES, tool, args).action == action


def test_a_decision_names_its_rule_and_message() -> None:
    decision = decide(RULES, "x__transfer", {"amount": 101})
    assert (decision.rule, decision.message) == (0, "too much")
    assert decide(RULES, "x__transfer", {"amount": 1}).rule == -1


def test_nested_arguments_by_dotted_path() -> None:
    rule = McpRule(tools=["*"], arg="options.targets.1", prefix="/ok/", action="allow")
    deny_rest = McpRule(tools=["*"], action="deny")
    assert decide([rule, deny_rest], "a__b", {"options": {"targets": ["/x", "/ok/y"]}}).action == "allow"
    assert decide([rule, deny_rest], "a__b", {"options": {"targets": ["/ok/x", "/no"]}}).action == "deny"


def test_bad_rules_and_servers_fail_at_load_with_file_and_line() -> None:
    with pytest.raises(ConfigError, match=r"cfg:3: mcp\.rules\.0.*needs `arg`"):
        parse_config("mcp:\n  rules:\n    - tools: ['*']\n      max: 3\n      action: deny\n", "cfg")
    with pytest.raises(ConfigError, match=r"not a valid RE2"):
        parse_config("mcp:\n  rules:\n    - {tools: ['*'], arg: a, matches: '(', action: deny}\n", "cfg")
    with pytest.raises(ConfigError, match=r"not a valid server name"):
        parse_config("mcp:\n  servers:\n    a__b: {transport: stdio, command: [x]}\n", "cfg")
    with pytest.raises(ConfigError, match=r"needs an http\(s\) `url`"):
        parse_config("mcp:\n  servers:\n    web: {transport: http}\n", "cfg")
    with pytest.raises(ConfigError, match=r"unknown guardrail policy 'nope'"):
        parse_config("mcp:\n  output_policy: nope\n", "cfg")
