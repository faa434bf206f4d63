"""Pure retry decisions: what a failed attempt means for the request, and how long to wait before the next.

- `classify`: a provider's error → try another deployment (`retryable`), a larger-context model
  (`context_window`), another model after a refusal (`content_policy`), or stop (`fatal`).
- `backoff_s`: exponential backoff with full jitter (a uniform draw in [0, min(cap, base·2^n)]), the
  scheme that spreads retries best when many clients fail at once.
- `rate_limits`: what a provider's `x-ratelimit-*` (or `anthropic-ratelimit-*`) headers say is left.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from shared.errors import ContentPolicyViolation, ContextLengthExceeded, GatewayError, RateLimitError

FailureKind = Literal["retryable", "rate_limited", "context_window", "content_policy", "fatal"]

# how providers word "the prompt does not fit" and "I won't answer that" in a 400 (their codes first)
_CONTEXT = re.compile(
    r"context[_ ]length|context window|maximum context|prompt is too long|too many (input )?tokens|"
    r"input is too long|exceeds the maximum (number of )?tokens|input length .* exceeds|reduce the length",
    re.IGNORECASE,
)
_CONTENT = re.compile(
    r"content[_ ]policy|content[_ ]filter|content management policy|responsible ai|safety (system|filter)|"
    r"blocked (due to|by) safety|flagged as potentially violating",
    re.IGNORECASE,
)
# finish reasons by which a provider refused a request it answered with 200
REFUSALS = frozenset({"content_filter", "refusal"})


def classify(error: GatewayError) -> FailureKind:
    if isinstance(error, ContextLengthExceeded):
        return "context_window"
    if isinstance(error, ContentPolicyViolation):
        return "content_policy"
    if isinstance(error, RateLimitError):
        return "rate_limited"
    if error.retryable:
        return "retryable"
    if error.status == 400:
        code = error.code_override or ""
        if code == "context_length_exceeded" or _CONTEXT.search(error.message):
            return "context_window"
        if code in ("content_policy_violation", "content_filter") or _CONTENT.search(error.message):
            return "content_policy"
    return "fatal"


def backoff_s(retry: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """The wait before retry number `retry` (0 for the first retry) of a deployment already tried."""
    ceiling = min(cap_s, base_s * (2 ** min(retry, 30)))
    return rng.uniform(0.0, ceiling) if ceiling > 0 else 0.0


@dataclass(frozen=True, slots=True)
class RateLimits:
    """What a provider said is left of its rate limits (None: it did not say), and when they reset."""

    remaining_requests: int | None = None
    limit_requests: int | None = None
    remaining_tokens: int | None = None
    limit_tokens: int | None = None
    reset_at: float = 0.0  # unix seconds; 0: unknown

    def capacity(self, now: float) -> float:
        """The share left (0..1) of the tightest limit the provider reported; 1.0 when unknown or reset."""
        if self.reset_at and now >= self.reset_at:
            return 1.0
        shares = [
            remaining / limit
            for remaining, limit in (
                (self.remaining_requests, self.limit_requests),
                (self.remaining_tokens, self.limit_tokens),
            )
            if remaining is not None and limit
        ]
        return max(0.0, min(1.0, *shares)) if shares else 1.0


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def _reset_in_s(value: str | None) -> float | None:
    """OpenAI's `6m0s`, `1s`, `20ms`, or plain seconds."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    total, found = 0.0, False
    for number, unit in _DURATION.findall(value):
        found = True
        total += float(number) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    return total if found else None


def _iso(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def rate_limits(headers: Mapping[str, str], now: float) -> RateLimits | None:
    """The limits a response's headers report (lower-cased names), or None when it reports none."""
    if "x-ratelimit-remaining-requests" in headers or "x-ratelimit-remaining-tokens" in headers:
        resets = [
            r
            for r in (
                _reset_in_s(headers.get("x-ratelimit-reset-requests")),
                _reset_in_s(headers.get("x-ratelimit-reset-tokens")),
            )
            if r is not None
        ]
        return RateLimits(
            remaining_requests=_int(headers.get("x-ratelimit-remaining-requests")),
            limit_requests=_int(headers.get("x-ratelimit-limit-requests")),
            remaining_tokens=_int(headers.get("x-ratelimit-remaining-tokens")),
            limit_tokens=_int(headers.get("x-ratelimit-limit-tokens")),
            reset_at=now + max(resets) if resets else 0.0,
        )
    if "anthropic-ratelimit-requests-remaining" in headers or "anthropic-ratelimit-tokens-remaining" in headers:
        resets = [
            r
            for r in (
                _iso(headers.get("anthropic-ratelimit-requests-reset")),
                _iso(headers.get("anthropic-ratelimit-tokens-reset")),
            )
            if r is not None
        ]
        return RateLimits(
            remaining_requests=_int(headers.get("anthropic-ratelimit-requests-remaining")),
            limit_requests=_int(headers.get("anthropic-ratelimit-requests-limit")),
            remaining_tokens=_int(headers.get("anthropic-ratelimit-tokens-remaining")),
            limit_tokens=_int(headers.get("anthropic-ratelimit-tokens-limit")),
            reset_at=max(resets) if resets else 0.0,
        )
    return None
