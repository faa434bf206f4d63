"""Deployment health shared by router replicas (a KV value per deployment), and the routers' status reports."""

from __future__ import annotations

from typing import Literal

import msgspec

HealthState = Literal["healthy", "open", "cooldown", "half_open"]
# why a deployment's health changed, for whoever acts on it (the `deployment_down` webhook reads this, never the
# human-readable `reason`): a breaker opened on failures in a row or on its error rate (the deployment went
# down), opened again because its probe failed (still down: the same outage), a 429 cooled it down, a replica
# claimed the probe, the probe succeeded; "" in a record written before the field existed
HealthCause = Literal[
    "", "consecutive_failures", "error_rate", "probe_failed", "rate_limited", "probe_claimed", "probe_succeeded"
]
# the causes of an outage's start: an `open` record with one of these is a deployment going down
DOWN_CAUSES: frozenset[str] = frozenset({"consecutive_failures", "error_rate"})


class DeploymentHealth(msgspec.Struct, frozen=True, kw_only=True):
    """The shared word on one deployment (`<P>_ROUTING` KV, key `Subjects.health_key(id)`), written by the
    replica that learnt it and applied by every replica.

    - `open`: the circuit breaker opened (failures in a row, or an error rate); no request until `until`,
      then one replica claims the probe (compare-and-set to `half_open`).
    - `cooldown`: the provider said 429 (with Retry-After, or the configured cooldown); no request until `until`.
    - `half_open`: replica `by` is probing with one request; others wait until `until` (the probe's lease).
    - `healthy`: a probe succeeded.

    `cause` says which of these happened and why, for code to act on (the `deployment_down` webhook);
    `reason` says it for people.
    """

    deployment: str
    state: HealthState
    until: float = 0.0  # unix seconds
    reason: str = ""
    cooldown_s: float = 0.0  # the open period that led here (doubles after each failed probe)
    by: str = ""  # the replica that wrote it
    at: float = 0.0
    # why (structured; `reason` is the same for people, with the upstream error): a HealthCause, carried as a plain
    # string so a replica that does not know a newer cause still reads the record (bus messages tolerate the new)
    cause: str = ""


class StatusQuery(msgspec.Struct, frozen=True, kw_only=True):
    """ingress (admin API) → every router replica: report your deployments."""


class DeploymentView(msgspec.Struct, frozen=True, kw_only=True):
    """One deployment as one router replica sees it."""

    deployment: str
    provider: str
    models: list[str] = []
    state: HealthState = "healthy"
    until: float = 0.0
    reason: str = ""
    ewma_latency_ms: float | None = None
    ewma_ttft_ms: float | None = None
    error_rate: float = 0.0  # failures / attempts in the breaker's window
    attempts: int = 0  # in the window
    inflight: int = 0
    consecutive_failures: int = 0
    ratelimit_remaining_requests: int | None = None
    ratelimit_remaining_tokens: int | None = None


class RouterStatus(msgspec.Struct, frozen=True, kw_only=True):
    replica: str
    at: float
    inflight: int = 0
    max_inflight: int = 0
    deployments: list[DeploymentView] = []
