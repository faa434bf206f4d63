"""The attempt plan of one request (pure): which deployment to try next, and why.

Candidates come in groups: the model's own deployments in the order its strategy gives, then each
generic `fallbacks` model's deployments. A provider saying the prompt is too long replaces the plan by
the `context_window_fallbacks` models; a refusal by the `content_policy_fallbacks` models.

`pick` prefers a deployment this request has not tried yet (immediate failover); when every available
one has failed, it retries the one that failed least (the dispatcher backs off first). A deployment
whose breaker is open or that is cooling down after a 429 is skipped; one whose cooldown is over is
offered as a probe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from services.router.breaker import Availability
from services.router.core import Deployment, Route

Group = Literal["primary", "fallback", "context_window_fallback", "content_policy_fallback"]
Order = Callable[[Route], Sequence[Deployment]]


@dataclass(frozen=True, slots=True)
class Candidate:
    deployment: Deployment
    model: str  # the model group (a fallback's name for fallbacks)
    group: Group


@dataclass(frozen=True, slots=True)
class Pick:
    candidate: Candidate
    probe: bool  # the deployment's breaker is open and cooled down: this request probes it
    retry: int  # times this request already failed on it (0: a fresh deployment)


@dataclass(frozen=True, slots=True)
class Blocked:
    """Nothing can be tried now: the earliest time something could (0: never, within this request)."""

    until: float
    rate_limited: bool  # every blocked deployment is cooling down after a 429 (not a failure)


def candidates(route: Route, routes: Mapping[str, Route], order: Order, group: Group = "primary") -> list[Candidate]:
    """The primary plan: the model's deployments, then its generic fallbacks'."""
    out = [Candidate(d, route.model.name, group) for d in order(route)]
    if group == "primary":
        out += fallback(route, routes, order, "fallback")
    return out


def fallback(route: Route, routes: Mapping[str, Route], order: Order, group: Group) -> list[Candidate]:
    names = {
        "fallback": route.model.fallbacks,
        "context_window_fallback": route.model.context_window_fallbacks,
        "content_policy_fallback": route.model.content_policy_fallbacks,
    }.get(group, [])
    out: list[Candidate] = []
    for name in names:
        target = routes.get(name)
        if target is not None:
            out += [Candidate(d, target.model.name, group) for d in order(target)]
    return out


def pick(
    plan: Sequence[Candidate],
    failed: Mapping[str, int],
    availability: Callable[[str], Availability],
    blocked: Callable[[str], tuple[str, float]],
    servable: Callable[[Deployment], bool],
) -> Pick | Blocked:
    """The next attempt, or when something could next be tried (`blocked`: (state, until) of a deployment)."""
    retry: Pick | None = None
    until = 0.0
    rate_limited = True
    seen: set[str] = set()
    for cand in plan:
        dep_id = cand.deployment.id
        if dep_id in seen or not servable(cand.deployment):
            continue
        seen.add(dep_id)
        state = availability(dep_id)
        tries = failed.get(dep_id, 0)
        if state == "no":
            kind, when = blocked(dep_id)
            until = when if not until else min(until, when)
            rate_limited = rate_limited and kind == "cooldown"
            continue
        if state == "probe":
            if tries:
                continue  # it failed this request already: no second probe
            return Pick(cand, probe=True, retry=0)
        if not tries:
            return Pick(cand, probe=False, retry=0)
        if retry is None or tries < retry.retry:
            retry = Pick(cand, probe=False, retry=tries)
    if retry is not None:
        return retry
    return Blocked(until, rate_limited and until > 0)
