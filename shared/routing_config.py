"""Routing configuration (the `routing:` section of the config file, and each model's `routing:` overrides).

Shape (every key optional; unknown keys are rejected with file and line)::

    routing:
      strategy: priority          # priority | weighted | latency | least_inflight | cost | usage
      max_attempts: 3             # attempts per request, all deployments and fallbacks together
                                  # (never fewer than the model's deployments: each is tried once)
      backoff_base_s: 0.1         # retrying a deployment already tried: full jitter in [0, base·2^n]
      backoff_max_s: 2.0
      max_retry_wait_s: 5.0       # wait at most this long (Retry-After, backoff) for a deployment to
                                  # come back when nothing else can serve; longer: answer at once
      ttft_timeout_s: 60          # a stream's first token (a deployment's own ttft_timeout_s wins)
      explore: 0.05               # latency: share of requests sent in random order (keeps EWMAs fresh)
      ewma_alpha: 0.3             # weight of the newest sample in latency / TTFT averages
      breaker:
        enabled: true
        shared: true              # open / cooldown / probe states shared by every router replica (NATS KV)
        consecutive_failures: 5   # open after this many failures in a row …
        error_rate: 0.5           # … or this share of failures in the window …
        min_requests: 10          # … over at least this many attempts
        window_s: 30
        cooldown_s: 5             # first open period; doubles after each failed probe
        max_cooldown_s: 120
        rate_limit_cooldown_s: 5  # a 429 without Retry-After
        max_retry_after_s: 600    # a provider's Retry-After is believed up to this long
      health_checks:
        interval_s: 0             # > 0: probe every deployment that is open this often (1-token request)

A model may override `strategy`, `max_attempts`, `ttft_timeout_s` and `explore` under its own `routing:`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Strategy = Literal["priority", "weighted", "latency", "least_inflight", "cost", "usage"]
STRATEGIES: tuple[str, ...] = ("priority", "weighted", "latency", "least_inflight", "cost", "usage")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BreakerConfig(_Strict):
    enabled: bool = True
    shared: bool = True
    consecutive_failures: int = Field(default=5, ge=1)
    error_rate: float = Field(default=0.5, gt=0, le=1)
    min_requests: int = Field(default=10, ge=1)
    window_s: float = Field(default=30.0, gt=0)
    cooldown_s: float = Field(default=5.0, gt=0)
    max_cooldown_s: float = Field(default=120.0, gt=0)
    rate_limit_cooldown_s: float = Field(default=5.0, ge=0)
    max_retry_after_s: float = Field(default=600.0, gt=0)


class HealthCheckConfig(_Strict):
    interval_s: float = Field(default=0.0, ge=0)
    timeout_s: float = Field(default=10.0, gt=0)


class ModelRouting(_Strict):
    """What one model may set for itself; unset fields come from the top-level `routing:`."""

    strategy: Strategy | None = None
    max_attempts: int | None = Field(default=None, ge=1, le=20)
    ttft_timeout_s: float | None = Field(default=None, gt=0)
    explore: float | None = Field(default=None, ge=0, le=1)


class RoutingConfig(_Strict):
    strategy: Strategy = "priority"
    max_attempts: int = Field(default=3, ge=1, le=20)
    backoff_base_s: float = Field(default=0.1, ge=0)
    backoff_max_s: float = Field(default=2.0, ge=0)
    max_retry_wait_s: float = Field(default=5.0, ge=0)
    ttft_timeout_s: float = Field(default=60.0, gt=0)
    explore: float = Field(default=0.05, ge=0, le=1)
    ewma_alpha: float = Field(default=0.3, gt=0, le=1)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    health_checks: HealthCheckConfig = Field(default_factory=HealthCheckConfig)
