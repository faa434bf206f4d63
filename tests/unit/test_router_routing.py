"""Routing decisions (pure): strategies, the breaker, backoff, failure classes, rate-limit headers, the plan."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from services.router import plan, strategies
from services.router.breaker import Breaker, went_down
from services.router.core import build_routes
from services.router.health import HealthBoard
from services.router.retry import backoff_s, classify, rate_limits
from services.router.strategies import Option
from shared.config import parse_config
from shared.errors import (
    ContextLengthExceeded,
    GatewayTimeoutError,
    InvalidRequestError,
    RateLimitError,
    UpstreamAuthError,
    UpstreamError,
)
from shared.routing_config import BreakerConfig, RoutingConfig


def test_weighted_random_matches_the_weights_within_statistical_bounds() -> None:
    rng = random.Random(7)
    weights = [1, 3, 6]
    n = 20_000
    firsts = Counter(strategies.order("weighted", [Option(weight=w) for w in weights], rng)[0] for _ in range(n))
    # chi-square with 2 degrees of freedom: 13.8 is the 0.1% critical value
    chi2 = sum((firsts[i] - n * w / 10) ** 2 / (n * w / 10) for i, w in enumerate(weights))
    assert chi2 < 13.8, (firsts, chi2)
    # and a wrong weighting would fail it: uniform counts are far outside the bound
    uniform = sum((n / 3 - n * w / 10) ** 2 / (n * w / 10) for w in weights)
    assert uniform > 1000


def test_latency_prefers_the_lowest_ewma_measures_unknown_ones_first_and_explores() -> None:
    rng = random.Random(1)
    fast, slow, unknown = Option(ewma_ms=40.0), Option(ewma_ms=400.0), Option()
    assert strategies.order("latency", [slow, fast], rng) == [1, 0]
    assert strategies.order("latency", [slow, fast, unknown], rng)[0] == 2
    picks = Counter(strategies.order("latency", [slow, fast], rng, explore=0.1)[0] for _ in range(5000))
    assert 0.03 < picks[0] / 5000 < 0.08  # about half of the 10 % explored lead with the slow one


def test_least_inflight_cost_usage_and_priority() -> None:
    rng = random.Random(3)
    assert strategies.order("least_inflight", [Option(inflight=5), Option(inflight=1), Option(inflight=3)], rng) == [
        1,
        2,
        0,
    ]
    priced = [Option(price=None), Option(price=0.02), Option(price=0.001)]
    assert strategies.order("cost", priced, rng) == [2, 1, 0]
    exhausted = Counter(
        strategies.order("usage", [Option(capacity=0.0), Option(capacity=0.5)], rng)[0] for _ in range(200)
    )
    assert exhausted == {1: 200}
    assert strategies.order("priority", [Option(), Option(), Option()], rng) == [0, 1, 2]


def test_breaker_opens_on_failures_in_a_row_then_half_opens_and_closes_on_a_good_probe() -> None:
    b = Breaker("d", BreakerConfig(consecutive_failures=3, cooldown_s=5))
    assert b.failure(100.0, "r1", "500") is None
    assert b.failure(100.1, "r1", "500") is None
    opened = b.failure(100.2, "r1", "500")
    assert opened is not None and opened.state == "open" and opened.until == pytest.approx(105.2)
    assert b.availability(104.0) == "no"
    assert b.availability(105.3) == "probe"
    claim = b.claim(105.3, 30, "r1")
    assert claim.state == "half_open" and b.availability(106) == "no"  # one probe at a time
    closed = b.success(106.0, "r1")
    assert closed is not None and closed.state == "healthy" and b.availability(106.1) == "yes"


def test_a_failed_probe_doubles_the_cooldown_and_an_error_rate_opens_too() -> None:
    b = Breaker("d", BreakerConfig(consecutive_failures=2, cooldown_s=5, max_cooldown_s=8))
    b.failure(0.0, "r", "x")
    b.failure(0.1, "r", "x")
    b.claim(6.0, 30, "r")
    reopened = b.failure(6.5, "r", "x")
    assert reopened is not None and reopened.state == "open" and reopened.cooldown_s == 8  # capped
    rate = Breaker("d", BreakerConfig(consecutive_failures=100, error_rate=0.5, min_requests=10, window_s=30))
    for i in range(10):
        changed = rate.success(float(i), "r") if i % 2 else rate.failure(float(i), "r", "x")
    assert changed is None  # 5/10 failed, the 10th attempt was a success: checked on failures only
    assert rate.failure(10.0, "r", "x") is not None  # 6/11


def test_a_429_cools_down_for_its_retry_after_and_another_replicas_word_is_applied() -> None:
    b = Breaker("d", BreakerConfig(max_retry_after_s=60))
    cooled = b.rate_limited(10.0, 7.0, "r1", "slow down")
    assert cooled is not None and cooled.state == "cooldown" and cooled.until == 17.0
    assert b.availability(16.9) == "no" and b.availability(17.0) == "yes"  # no probe after a cooldown
    assert b.rate_limited(10.0, 10_000, "r1", "x") is not None and b.until == 70.0  # capped
    other = Breaker("d", BreakerConfig())
    other.apply(cooled, "r2")
    assert other.availability(12.0) == "no" and other.state == "cooldown"
    healthy = msgspec_replace(cooled, state="healthy", until=0.0)
    other.apply(healthy, "r2")
    assert other.availability(12.0) == "yes"


def msgspec_replace(obj: object, **changes: object) -> object:
    import msgspec

    return msgspec.structs.replace(obj, **changes)  # type: ignore[type-var]


def test_a_disabled_breaker_never_opens_but_429_cooldowns_still_apply() -> None:
    b = Breaker("d", BreakerConfig(enabled=False, consecutive_failures=1))
    assert b.failure(0.0, "r", "x") is None and b.availability(0.1) == "yes"
    assert b.rate_limited(0.0, 3.0, "r", "x") is not None and b.availability(1.0) == "no"


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    rng = random.Random(0)
    for retry in range(6):
        draws = [backoff_s(retry, 0.1, 2.0, rng) for _ in range(2000)]
        cap = min(2.0, 0.1 * 2**retry)
        assert all(0 <= d <= cap for d in draws)
        assert math.isclose(sum(draws) / len(draws), cap / 2, rel_tol=0.1)  # uniform: mean at half the cap


def test_failures_are_classified() -> None:
    assert classify(UpstreamError("x")) == "retryable"
    assert classify(GatewayTimeoutError("x")) == "retryable"
    assert classify(UpstreamAuthError("x")) == "retryable"
    assert classify(RateLimitError("x", retry_after=3)) == "rate_limited"
    assert classify(ContextLengthExceeded("x")) == "context_window"
    assert classify(InvalidRequestError("This model's maximum context length is 8192 tokens")) == "context_window"
    assert classify(InvalidRequestError("prompt is too long: 210000 tokens > 200000 maximum")) == "context_window"
    assert classify(InvalidRequestError("x", code="context_length_exceeded")) == "context_window"
    assert classify(InvalidRequestError("The response was filtered due to the content management policy")) == (
        "content_policy"
    )
    assert classify(InvalidRequestError("'messages' must not be empty")) == "fatal"


def test_rate_limit_headers_openai_and_anthropic() -> None:
    openai = rate_limits(
        {
            "x-ratelimit-limit-requests": "100",
            "x-ratelimit-remaining-requests": "25",
            "x-ratelimit-limit-tokens": "1000",
            "x-ratelimit-remaining-tokens": "900",
            "x-ratelimit-reset-requests": "1m30s",
        },
        1000.0,
    )
    assert openai is not None and openai.capacity(1000.0) == 0.25 and openai.reset_at == 1090.0
    assert openai.capacity(1091.0) == 1.0  # the window reset
    anthropic = rate_limits(
        {"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "0"}, 0.0
    )
    assert anthropic is not None and anthropic.capacity(0.0) == 0.0
    assert rate_limits({"content-type": "application/json"}, 0.0) is None


CONFIG = parse_config(
    """
providers:
  a: {kind: mock}
  b: {kind: mock}
  c: {kind: mock}
models:
  - name: small
    deployments: [{provider: a, model: s1}, {provider: b, model: s2}]
    fallbacks: [other]
    context_window_fallbacks: [big]
    routing: {strategy: weighted, max_attempts: 5}
  - {name: other, deployments: [{provider: c, model: o1}]}
  - {name: big, deployments: [{provider: c, model: b1}]}
routing:
  max_attempts: 2
"""
)


def test_config_routing_per_model_and_fallback_references() -> None:
    routes = build_routes(CONFIG, {})
    assert routes["small"].policy.strategy == "weighted" and routes["small"].attempt_budget == 5
    assert routes["other"].policy.strategy == "priority" and routes["other"].attempt_budget == 2
    bad = (
        "providers: {a: {kind: mock}}\nmodels:\n  - {name: m, deployments: [{provider: a, model: x}], fallbacks: [n]}\n"
    )
    with pytest.raises(Exception, match="fallbacks\\[0\\]: unknown model 'n'"):
        parse_config(bad)


def test_the_plan_prefers_fresh_deployments_skips_blocked_ones_and_retries_the_least_failed() -> None:
    routes = build_routes(CONFIG, {})
    board = HealthBoard(RoutingConfig(), "r")
    candidates = plan.candidates(routes["small"], routes, lambda r: r.deployments)
    assert [(c.deployment.id, c.group) for c in candidates] == [
        ("a/s1", "primary"),
        ("b/s2", "primary"),
        ("c/o1", "fallback"),
    ]

    def pick(failed: dict[str, int], now: float = 0.0) -> plan.Pick | plan.Blocked:
        return plan.pick(
            candidates, failed, lambda d: board.availability(d, now), lambda d: board.blocked(d)[:2], lambda d: True
        )

    first = pick({})
    assert isinstance(first, plan.Pick) and first.candidate.deployment.id == "a/s1" and first.retry == 0
    board.rate_limited("b/s2", 0.0, 30.0, "429")
    after = pick({"a/s1": 1})
    assert isinstance(after, plan.Pick) and after.candidate.deployment.id == "c/o1"  # b cools down: the fallback
    again = pick({"a/s1": 2, "c/o1": 1})
    assert isinstance(again, plan.Pick) and again.candidate.deployment.id == "c/o1" and again.retry == 1
    for dep in ("a/s1", "c/o1"):
        board.rate_limited(dep, 0.0, 10.0, "429")
    blocked = pick({})
    assert isinstance(blocked, plan.Blocked) and blocked.until == 10.0 and blocked.rate_limited
    ctx = plan.fallback(routes["small"], routes, lambda r: r.deployments, "context_window_fallback")
    assert [(c.deployment.id, c.model) for c in ctx] == [("c/b1", "big")]


def test_every_transition_says_why_and_only_an_opening_on_a_healthy_deployment_went_down() -> None:
    # the upstream's error text may read like anything, the probe's reason included: the cause is what counts
    b = Breaker("d", BreakerConfig(consecutive_failures=2, cooldown_s=5, min_requests=100))
    b.failure(0.0, "r", "probe failed: upstream said so")
    opened = b.failure(0.1, "r", "probe failed: upstream said so")
    assert opened is not None and opened.cause == "consecutive_failures" and went_down(opened)
    claim = b.claim(6.0, 30, "r")
    reopened = b.failure(6.5, "r", "500")
    assert claim.cause == "probe_claimed" and not went_down(claim)
    assert reopened is not None and reopened.cause == "probe_failed" and not went_down(reopened)
    b.claim(20.0, 30, "r")
    closed = b.success(20.1, "r")
    assert closed is not None and closed.cause == "probe_succeeded" and not went_down(closed)
    cooled = b.rate_limited(21.0, 7.0, "r", "slow down")
    assert cooled is not None and cooled.cause == "rate_limited" and not went_down(cooled)
    rate = Breaker("d", BreakerConfig(consecutive_failures=100, error_rate=0.5, min_requests=2, window_s=30))
    rate.success(0.0, "r")
    by_rate = rate.failure(0.1, "r", "x")
    assert by_rate is not None and by_rate.cause == "error_rate" and went_down(by_rate)
    # a record from a replica that predates the field is not taken for an outage's start
    assert not went_down(msgspec_replace(opened, cause=""))  # type: ignore[arg-type]
