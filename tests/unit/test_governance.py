"""The pure parts of governance: key lookup and inheritance, usage policy, delegation, periods, pricing,
usage queries and alert thresholds."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import msgspec
import pytest

from services.accounting.settlement import crossed
from services.accounting.usage import BadUsageQuery, usage_sql
from services.ingress.delegation import beyond
from shared.config import hash_key, parse_config
from shared.directory import Directory
from shared.errors import InvalidRequestError
from shared.governance import Budget, Limits, Org, ParamPolicy, Project, Quotas, Team, User, VirtualKey
from shared.periods import period_end, period_key, window, window_reset
from shared.route_pricing import RoutePricing, TokenRates, route_pricing
from shared.schemas.admin import UsageQuery
from shared.schemas.openai import chat_from_builtins
from shared.usage_policy import apply_params


def _directory() -> Directory:
    d = Directory()
    d.put(Org(id="acme", timezone="Europe/Berlin", limits=Limits(models=["gpt-*", "mock-*"])))
    d.put(Team(id="ml", org="acme", limits=Limits(policy="strict", lock_policy=True, quotas=Quotas(rpm=100))))
    d.put(Project(id="search", team="ml", limits=Limits(models=["gpt-4o*", "mock-1"], tags={"cost_center": "42"})))
    d.put(User(id="ann", team="ml", limits=Limits(budgets=[Budget(amount_usd=5, period="daily")])))
    d.put(
        VirtualKey(
            id="k1",
            team="ml",
            project="search",
            user="ann",
            sha256=hash_key("gh-new"),
            previous_sha256=hash_key("gh-old"),
            previous_until=1000.0,
            limits=Limits(policy="lax", params=ParamPolicy(max={"max_tokens": 256}, defaults={"temperature": 0.2})),
        )
    )
    return d


def test_a_key_resolves_through_its_user_project_team_and_org() -> None:
    d = _directory()
    key = d.key_for(hash_key("gh-new"), now=0)
    assert key is not None
    ent = d.entitlement(key)
    assert [s.name for s in ent.scopes] == ["key.k1", "user.ann", "project.search", "team.ml", "org.acme"]
    assert ent.caller.org == "acme" and ent.caller.team == "ml" and ent.timezone == "Europe/Berlin"
    # every level that lists models must allow it
    assert ent.allows("gpt-4o-mini", "gpt-4o-mini") and ent.allows("mock-1", "mock-1")
    assert not ent.allows("gpt-3.5-turbo", "gpt-3.5-turbo")  # the project narrows the org's gpt-*
    assert not ent.allows("claude-x", "claude-x")
    # the team locks its policy: the key's own choice does not weaken it
    assert ent.policy == "strict" and ent.caller.policy == "strict"
    assert ent.tags == {"cost_center": "42"} and ent.governed


def test_rotation_grace_disable_and_expiry() -> None:
    d = _directory()
    assert d.key_for(hash_key("gh-old"), now=999) is not None  # the old secret in its grace
    assert d.key_for(hash_key("gh-old"), now=1000) is None
    key = d.keys["k1"]
    d.put(msgspec.structs.replace(key, disabled=True))
    assert d.key_for(hash_key("gh-new"), now=0) is None
    d.put(msgspec.structs.replace(key, expires_at=50.0))
    assert d.key_for(hash_key("gh-new"), now=49) is not None and d.key_for(hash_key("gh-new"), now=50) is None
    d.delete("key", "k1")
    assert d.key_for(hash_key("gh-new"), now=0) is None


def test_usage_policy_fills_defaults_and_caps_parameters() -> None:
    policy = ParamPolicy(defaults={"temperature": 0.2}, max={"max_tokens": 256, "temperature": 1.0, "n": 1})
    req = chat_from_builtins({"model": "m", "messages": [{"role": "user", "content": "x"}]})
    out = apply_params(req, policy)
    assert out.temperature == 0.2 and out.max_completion_tokens == 256  # a capped key's answers are bounded
    req = chat_from_builtins({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 9000, "n": 3})
    out = apply_params(req, policy)
    assert out.max_tokens == 256 and out.n == 1 and out.temperature == 0.2
    with pytest.raises(InvalidRequestError) as exc:
        apply_params(req, ParamPolicy(max={"max_tokens": 256}, on_exceed="refuse"))
    assert exc.value.param == "max_tokens"
    untouched = chat_from_builtins({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5})
    assert apply_params(untouched, ParamPolicy(max={"max_tokens": 256})) is untouched


def test_entitlement_params_take_the_lowest_cap_and_the_nearest_default() -> None:
    d = _directory()
    d.put(
        Team(
            id="ml",
            org="acme",
            limits=Limits(params=ParamPolicy(max={"max_tokens": 128}, defaults={"temperature": 0.9})),
        )
    )
    key = d.key_for(hash_key("gh-new"), now=0)
    assert key is not None
    params = d.entitlement(key).params
    assert params.max == {"max_tokens": 128} and params.defaults == {"temperature": 0.2}


def test_a_team_admin_cannot_write_beyond_the_team() -> None:
    team = Limits(
        models=["mock-*"], quotas=Quotas(rpm=100), budgets=[Budget(amount_usd=50)], policy="p", lock_policy=True
    )
    assert beyond(Limits(models=["mock-1"], quotas=Quotas(rpm=10), budgets=[Budget(amount_usd=5)]), team) == []
    problems = beyond(
        Limits(models=["gpt-4o"], quotas=Quotas(rpm=500), budgets=[Budget(amount_usd=60)], policy="other"), team
    )
    assert [p.split(":")[0] for p in problems] == ["models", "policy", "quotas.rpm", "budgets"]
    assert beyond(Limits(), team)[0].startswith("models")  # the team restricts models: the key must too


def test_budget_periods_are_calendar_aligned_in_the_org_zone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 2026-03-31 23:30 in Berlin is still March there, already April 1 in Tokyo
    now = datetime(2026, 3, 31, 23, 30, tzinfo=berlin).timestamp()
    assert period_key("monthly", now, "Europe/Berlin") == "m202603"
    assert period_key("monthly", now, "Asia/Tokyo") == "m202604"
    assert period_key("daily", now, "Europe/Berlin") == "d20260331"
    assert period_key("weekly", now, "Europe/Berlin") == "w2026-14"
    assert period_key("total", now) == "total" and period_end("total", now) is None
    end = period_end("monthly", now, "Europe/Berlin")
    assert end == datetime(2026, 4, 1, tzinfo=berlin).timestamp()
    assert period_end("daily", now, "Europe/Berlin") == datetime(2026, 4, 1, tzinfo=berlin).timestamp()
    assert window(120.5) == 2 and window_reset(120.5) == pytest.approx(59.5)


def test_route_pricing_is_the_dearest_deployment_and_clamps_to_what_is_left() -> None:
    pricing = RoutePricing(model="m", rates=(TokenRates(1e-6, 2e-6), TokenRates(3e-6, 1e-6)), max_output=1000)
    assert pricing.worst_case(100, 10) == pytest.approx(max(100e-6 + 20e-6, 300e-6 + 10e-6))
    assert pricing.affordable_output(100, 0.001) == int((0.001 - 300e-6) / 2e-6)
    assert pricing.affordable_output(100, 0.0001) == 0
    # three choices (`n`) share what is left: the input is paid once
    assert pricing.affordable_output(100, 0.001, 3) == int((0.001 - 300e-6) / 2e-6) // 3
    config = parse_config(
        """
providers: {mock: {kind: mock}, oa: {kind: openai}}
models:
  - name: m
    max_output_tokens: 500
    deployments:
      - {provider: mock, model: x, price: {input_per_mtok: 1, output_per_mtok: 4}}
      - {provider: mock, model: y}
"""
    )
    priced = route_pricing(config, config.models[0])
    assert priced.known and priced.max_output == 500
    assert priced.worst_case(1_000_000, 1_000_000) == pytest.approx(5.0)


def test_usage_queries_admit_fixed_dimensions_and_quote_values() -> None:
    sql = usage_sql(UsageQuery(group_by=["team", "day"], filters={"team": "x' OR 1=1 --"}, since=10), now=100)
    assert "`team` = 'x\\' OR 1=1 --'" in sql and "GROUP BY `team`, toDate(received_at)" in sql
    with pytest.raises(BadUsageQuery):
        usage_sql(UsageQuery(group_by=["event_id; DROP TABLE requests"]), now=1)
    with pytest.raises(BadUsageQuery):
        usage_sql(UsageQuery(filters={"file('/etc/passwd')": "x"}), now=1)
    with pytest.raises(BadUsageQuery):
        usage_sql(UsageQuery(since=100, until=50), now=1)


def test_alert_thresholds_cross_once() -> None:
    assert crossed(40, 55, 100, [50, 80, 100]) == [50]
    assert crossed(40, 100, 100, [80, 50, 100]) == [50, 80, 100]
    assert crossed(50, 60, 100, [50]) == []  # already at 50 before: crossed by an earlier request
    assert crossed(0, 10, 0, [50]) == []


def test_the_conservative_prompt_estimate_covers_text_of_a_token_a_character() -> None:
    from shared.tokens import estimate_prompt_tokens

    cjk = chat_from_builtins({"model": "m", "messages": [{"role": "user", "content": "東京都の天気は" * 30}]})
    english = chat_from_builtins({"model": "m", "messages": [{"role": "user", "content": "the weather " * 30}]})
    # CJK runs about a token a character: 210 characters; the best guess says ~53, the worst case covers it
    assert estimate_prompt_tokens(cjk) < 210 <= estimate_prompt_tokens(cjk, conservative=True)
    assert estimate_prompt_tokens(english, conservative=True) >= estimate_prompt_tokens(english)
