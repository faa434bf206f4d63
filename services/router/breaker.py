"""The circuit breaker and cooldown of one deployment (pure: the time is always passed in).

healthy ──failures in a row, or error rate over the window──▶ open (until now + cooldown)
   ▲                                                           │ cooldown over
   │                                                           ▼
   └──────────── the probe succeeded ◀────────── half_open (one request: the probe)
                                                   │ the probe failed: open again, cooldown doubled
healthy ──429 (Retry-After, else rate_limit_cooldown_s)──▶ cooldown (until) ──over──▶ healthy

A transition that other replicas must know is returned as a `DeploymentHealth` for the caller to share;
`apply` takes one learnt from another replica. Counts (failures in a row, the window) are this replica's.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

from shared.routing_config import BreakerConfig
from shared.schemas.routing import DOWN_CAUSES, DeploymentHealth, HealthCause, HealthState

Availability = Literal["yes", "no", "probe"]

# the reason text of a breaker opened again because its probe failed (the deployment was down already)
PROBE_FAILED = "probe failed"


def went_down(health: DeploymentHealth) -> bool:
    """Whether a transition starts an outage: a breaker opened on a healthy deployment, not one opened again
    after a failed probe (the same outage) nor a 429's cooldown (the provider asked to wait; it is up)."""
    return health.state == "open" and health.cause in DOWN_CAUSES


class Breaker:
    __slots__ = ("_window", "config", "consecutive", "cooldown_s", "deployment", "probing", "reason", "state", "until")

    def __init__(self, deployment: str, config: BreakerConfig) -> None:
        self.deployment = deployment
        self.config = config
        self.state: HealthState = "healthy"
        self.until = 0.0
        self.reason = ""
        self.cooldown_s = 0.0
        self.consecutive = 0
        self.probing = False  # this replica holds the probe of a half-open breaker
        self._window: deque[list[int]] = deque()  # [second, attempts, failures]

    # ---- reading --------------------------------------------------------------------------------
    def availability(self, now: float) -> Availability:
        if self.state == "healthy":
            return "yes"
        if now < self.until:
            return "no"
        if self.state == "cooldown":
            self._close()
            return "yes"
        return "probe"  # open and cooled down, or a half-open probe whose lease ran out

    def counts(self, now: float) -> tuple[int, int]:
        """(attempts, failures) in the window."""
        self._trim(now)
        return sum(b[1] for b in self._window), sum(b[2] for b in self._window)

    # ---- what this replica learnt ---------------------------------------------------------------
    def success(self, now: float, by: str) -> DeploymentHealth | None:
        self._count(now, failed=False)
        self.consecutive = 0
        if self.probing or self.state in ("open", "half_open"):
            self._close()
            self._window.clear()
            return self._health("healthy", now, by, "probe succeeded", "probe_succeeded")
        return None

    def failure(self, now: float, by: str, reason: str) -> DeploymentHealth | None:
        self._count(now, failed=True)
        self.consecutive += 1
        if not self.config.enabled:
            return None
        if self.probing or self.state == "half_open":
            cooldown = min(max(self.cooldown_s, self.config.cooldown_s) * 2, self.config.max_cooldown_s)
            return self._open(now, cooldown, by, f"{PROBE_FAILED}: {reason}", "probe_failed")
        if self.state != "healthy":
            return None
        attempts, failures = self.counts(now)
        if self.consecutive >= self.config.consecutive_failures:
            why = f"{self.consecutive} failures in a row: {reason}"
            return self._open(now, self.config.cooldown_s, by, why, "consecutive_failures")
        if attempts >= self.config.min_requests and failures / attempts >= self.config.error_rate:
            why = f"{failures}/{attempts} attempts failed: {reason}"
            return self._open(now, self.config.cooldown_s, by, why, "error_rate")
        return None

    def rate_limited(self, now: float, retry_after: float | None, by: str, reason: str) -> DeploymentHealth | None:
        """The provider said 429: cool down for its Retry-After (capped), else the configured time."""
        wait = self.config.rate_limit_cooldown_s if retry_after is None else retry_after
        wait = min(max(wait, 0.0), self.config.max_retry_after_s)
        if wait <= 0:
            return None
        until = now + wait
        if self.state in ("open", "half_open") and self.until >= until:
            return None
        if self.state == "cooldown" and self.until >= until:
            return None
        self.probing = False
        self.state, self.until, self.reason = "cooldown", until, reason
        return self._health("cooldown", now, by, reason, "rate_limited")

    def claim(self, now: float, lease_s: float, by: str) -> DeploymentHealth:
        """This replica probes the deployment with one request; others wait until the lease ends."""
        self.state, self.until, self.probing = "half_open", now + lease_s, True
        return self._health("half_open", now, by, "probing", "probe_claimed")

    def release(self) -> None:
        """The probe request ended without a verdict (e.g. its client left): let another replica probe."""
        if self.probing and self.state == "half_open":
            self.probing = False
            self.state, self.until = "open", 0.0

    # ---- what another replica learnt --------------------------------------------------------------
    def apply(self, health: DeploymentHealth, me: str) -> None:
        if health.by == me:
            return  # our own word, echoed by the store (applied when it was said; it may be stale by now)
        self.probing = False
        if health.state == "healthy":
            self._close()
            self._window.clear()
            return
        self.state, self.until, self.reason = health.state, health.until, health.reason
        self.cooldown_s = health.cooldown_s or self.cooldown_s

    # ---- internals --------------------------------------------------------------------------------
    def _open(self, now: float, cooldown_s: float, by: str, reason: str, cause: HealthCause) -> DeploymentHealth:
        self.probing = False
        self.state, self.until, self.reason, self.cooldown_s = "open", now + cooldown_s, reason, cooldown_s
        return self._health("open", now, by, reason, cause)

    def _close(self) -> None:
        self.state, self.until, self.reason, self.probing, self.consecutive = "healthy", 0.0, "", False, 0
        self.cooldown_s = 0.0

    def _health(self, state: HealthState, now: float, by: str, reason: str, cause: HealthCause) -> DeploymentHealth:
        return DeploymentHealth(
            deployment=self.deployment,
            state=state,
            until=self.until if state != "healthy" else 0.0,
            reason=reason[:300],
            cooldown_s=self.cooldown_s,
            by=by,
            at=now,
            cause=cause,
        )

    def _count(self, now: float, *, failed: bool) -> None:
        second = int(now)
        if self._window and self._window[-1][0] == second:
            bucket = self._window[-1]
        else:
            bucket = [second, 0, 0]
            self._window.append(bucket)
        bucket[1] += 1
        bucket[2] += int(failed)
        self._trim(now)

    def _trim(self, now: float) -> None:
        oldest = now - self.config.window_s
        while self._window and self._window[0][0] < oldest:
            self._window.popleft()
