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
        ("bank__transfer", {}, "deny"),  # the argument is missing: a deny rule fails closed
        ("bank__transfer", {"amount": None}, "deny"),
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


DENY_OVER_100 = [McpRule(tools=["*"], arg="amount", max=100, action="deny")]
DENY_UNDER_0 = [McpRule(tools=["*"], arg="amount", min=0, action="deny")]


@pytest.mark.parametrize(
    "amount", ["NaN", "nan", "inf", "-inf", "Infinity", float("nan"), float("inf"), 10**400, "1e400"]
)
def test_a_value_that_is_not_a_finite_number_matches_a_limit(amount: object) -> None:
    assert decide(DENY_OVER_100, "pay__transfer", {"amount": amount}).action == "deny"
    assert decide(DENY_UNDER_0, "pay__transfer", {"amount": amount}).action == "deny"


@pytest.mark.parametrize(
    "to",
    [
        "https://evil.com?@example.com/",
        "https://evil.com#@example.com",
        "https://evil.com\\@example.com/",
        "HTTPS://EVIL.COM:443/@example.com",
        "eve@evil.test, bob@example.com",
        "bob@example.com, eve@evil.test",
        "eve@evil.test (http://example.com/)",
        "Eve <eve@evil.test>, <bob@example.com>",
        "",
        "@@",
        "https://",
        "https://[::1",
        "https://evil.com%40example.com/",
        "eve@evil.com%2f@example.com",
        ["bob@example.com", 7],
        [],
    ],
)
def test_every_address_of_a_value_is_checked_and_odd_ones_match(to: object) -> None:
    rules = [McpRule(tools=["*"], arg="to", domain_not_in=["example.com"], action="deny")]
    assert decide(rules, "mail__send", {"to": to}).action == "deny"


@pytest.mark.parametrize(
    "to",
    ["https://example.com/x", "https://a.example.com./", "Bob <bob@example.com>", "bob@EXAMPLE.com., ann@example.com"],
)
def test_addresses_inside_the_list_pass_domain_not_in(to: str) -> None:
    rules = [McpRule(tools=["*"], arg="to", domain_not_in=["example.com"], action="deny")]
    assert decide(rules, "mail__send", {"to": to}).action == "allow"


@pytest.mark.parametrize(
    "to",
    [
        "eve@evil.com.",
        "eve@EVIL.com",
        "ok@ok.org, eve@evil.com",
        ["ok@ok.org", "eve@evil.com"],
        "https://x.evil.com./",
        "https://evil%2ecom/",
    ],
)
def test_a_trailing_dot_or_a_list_does_not_escape_domain_in(to: object) -> None:
    rules = [McpRule(tools=["*"], arg="to", domain_in=["evil.com"], action="deny")]
    assert decide(rules, "mail__send", {"to": to}).action == "deny"


def test_a_list_cannot_slip_a_forbidden_item_past_positive_conditions() -> None:
    deny_prefix = [McpRule(tools=["*"], arg="path", prefix="/etc/", action="deny")]
    assert decide(deny_prefix, "fs__read", {"path": ["/tmp/a", "/etc/passwd"]}).action == "deny"
    assert decide(deny_prefix, "fs__read", {"path": ["/tmp/a", "/tmp/b"]}).action == "allow"
    deny_one_of = [McpRule(tools=["*"], arg="cmd", one_of=["rm", "dd"], action="deny")]
    assert decide(deny_one_of, "sh__run", {"cmd": ["ls", "rm"]}).action == "deny"
    assert decide(deny_one_of, "sh__run", {"cmd": ["ls", "cat"]}).action == "allow"
    # an allow rule needs every item (and every address) to meet it; the rest falls to the deny
    allow_ok = [
        McpRule(tools=["*"], arg="to", domain_in=["ok.org"], action="allow"),
        McpRule(tools=["*"], action="deny"),
    ]
    assert decide(allow_ok, "mail__send", {"to": ["a@ok.org", "b@ok.org"]}).action == "allow"
    assert decide(allow_ok, "mail__send", {"to": ["a@ok.org", "eve@evil.com"]}).action == "deny"
    assert decide(allow_ok, "mail__send", {"to": "a@ok.org, eve@evil.com"}).action == "deny"
    assert decide(allow_ok, "mail__send", {"to": ["a@ok.org", 3]}).action == "deny"
    assert decide(allow_ok, "mail__send", {}).action == "deny"


@pytest.mark.parametrize(
    "path",
    [
        "/srv/shared/%2e%2e/%2e%2e/etc/passwd",
        "/srv/shared/%252e%252e/%252e%252e/etc/passwd",
        "/srv/shared\\..\\..\\etc\\passwd",
        "/srv/shared/..%2f..%2fetc/passwd",
        "/srv/shared/..%5c..%5cetc",
        None,
        7,
    ],
)
def test_encoded_or_backslashed_paths_do_not_escape_a_prefix(path: object) -> None:
    rules = [McpRule(tools=["*"], arg="path", not_prefix="/srv/shared/", action="deny")]
    assert decide(rules, "fs__write", {"path": path}).action == "deny"
    assert decide(rules, "fs__write", {"path": "/srv/shared/a%20b.txt"}).action == "allow"


def test_missing_skip_still_lets_a_rule_pass_an_absent_argument() -> None:
    rules = [McpRule(tools=["*"], arg="cc", domain_not_in=["example.com"], missing="skip", action="approve")]
    assert decide(rules, "mail__send", {}).action == "allow"
    assert decide([McpRule(tools=["*"], arg="cc", domain_not_in=["x.org"], action="approve")], "m__s", {}).action == (
        "approve"
    )
