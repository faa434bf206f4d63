"""What one router replica knows about each deployment (pure; the time is passed in): its breaker, the EWMA
of its latency and time to first token, requests in flight, and the rate limits its provider reported.

Transitions other replicas must know (open, cooldown, probe claimed, healthy again) are handed to
`share`, which `shared_health.SharedHealth` writes to NATS KV; what other replicas wrote comes back
through `apply`. The same transitions, this replica's own only, go to `notify` (`down_notices.DownNotices`:
the `deployment_down` webhook), shared breakers or not. The averages and counts stay per replica.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from services.router.breaker import Availability, Breaker
from services.router.retry import RateLimits
from shared.routing_config import RoutingConfig
from shared.schemas.routing import DeploymentHealth, DeploymentView

Share = Callable[[DeploymentHealth], None]


@dataclass(slots=True)
class DeploymentStats:
    breaker: Breaker
    provider: str = ""
    models: list[str] = field(default_factory=list)
    ewma_latency_ms: float | None = None
    ewma_ttft_ms: float | None = None
    inflight: int = 0
    limits: RateLimits | None = None

    def ewma(self, stream: bool) -> float | None:
        return (self.ewma_ttft_ms if stream else None) or self.ewma_latency_ms


def _ewma(old: float | None, sample: float, alpha: float) -> float:
    return sample if old is None else old + alpha * (sample - old)


class HealthBoard:
    def __init__(
        self, config: RoutingConfig, replica: str, share: Share | None = None, notify: Share | None = None
    ) -> None:
        self.config = config
        self.replica = replica
        self.share: Share = share or (lambda _h: None)
        self.notify: Share = notify or (lambda _h: None)
        self._stats: dict[str, DeploymentStats] = {}

    def register(self, deployment: str, provider: str, model: str) -> None:
        stats = self.stats(deployment)
        stats.provider = provider
        if model not in stats.models:
            stats.models.append(model)

    def stats(self, deployment: str) -> DeploymentStats:
        found = self._stats.get(deployment)
        if found is None:
            found = self._stats[deployment] = DeploymentStats(Breaker(deployment, self.config.breaker))
        return found

    def deployments(self) -> Iterable[str]:
        return self._stats.keys()

    # ---- the request path -------------------------------------------------------------------------
    def availability(self, deployment: str, now: float) -> Availability:
        return self.stats(deployment).breaker.availability(now)

    def blocked(self, deployment: str) -> tuple[str, float, str]:
        """(state, until, reason) of a deployment that is not available."""
        b = self.stats(deployment).breaker
        return b.state, b.until, b.reason

    def claim(self, deployment: str, now: float, lease_s: float) -> DeploymentHealth:
        return self.stats(deployment).breaker.claim(now, lease_s, self.replica)

    def release(self, deployment: str) -> None:
        self.stats(deployment).breaker.release()

    def begin(self, deployment: str) -> None:
        self.stats(deployment).inflight += 1

    def end(self, deployment: str) -> None:
        stats = self.stats(deployment)
        stats.inflight = max(stats.inflight - 1, 0)

    def observe_limits(self, deployment: str, limits: RateLimits | None) -> None:
        if limits is not None:
            self.stats(deployment).limits = limits

    def success(self, deployment: str, now: float, latency_ms: float, ttft_ms: float | None) -> None:
        stats = self.stats(deployment)
        alpha = self.config.ewma_alpha
        stats.ewma_latency_ms = _ewma(stats.ewma_latency_ms, latency_ms, alpha)
        if ttft_ms is not None:
            stats.ewma_ttft_ms = _ewma(stats.ewma_ttft_ms, ttft_ms, alpha)
        self._share(stats.breaker.success(now, self.replica))

    def failure(self, deployment: str, now: float, reason: str, latency_ms: float | None = None) -> None:
        stats = self.stats(deployment)
        if latency_ms is not None:
            # a slow failure (a timeout) also makes the deployment look slow to the latency strategy
            stats.ewma_latency_ms = _ewma(stats.ewma_latency_ms, latency_ms, self.config.ewma_alpha)
        self._share(stats.breaker.failure(now, self.replica, reason))

    def rate_limited(self, deployment: str, now: float, retry_after: float | None, reason: str) -> None:
        self._share(self.stats(deployment).breaker.rate_limited(now, retry_after, self.replica, reason))

    def apply(self, health: DeploymentHealth) -> None:
        self.stats(health.deployment).breaker.apply(health, self.replica)

    def _share(self, health: DeploymentHealth | None) -> None:
        if health is not None:
            self.share(health)
            self.notify(health)

    # ---- the status report ------------------------------------------------------------------------
    def view(self, deployment: str, now: float) -> DeploymentView:
        stats = self.stats(deployment)
        b = stats.breaker
        state = b.state
        if state != "healthy" and now >= b.until and state == "cooldown":
            state = "healthy"
        attempts, failures = b.counts(now)
        limits = stats.limits
        return DeploymentView(
            deployment=deployment,
            provider=stats.provider,
            models=list(stats.models),
            state=state,
            until=b.until if state != "healthy" else 0.0,
            reason=b.reason if state != "healthy" else "",
            ewma_latency_ms=stats.ewma_latency_ms,
            ewma_ttft_ms=stats.ewma_ttft_ms,
            error_rate=failures / attempts if attempts else 0.0,
            attempts=attempts,
            inflight=stats.inflight,
            consecutive_failures=b.consecutive,
            ratelimit_remaining_requests=limits.remaining_requests if limits else None,
            ratelimit_remaining_tokens=limits.remaining_tokens if limits else None,
        )
