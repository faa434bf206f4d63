"""Deployment health across the router replicas, for `GET /admin/v1/deployments` and `gatehouse status`.

Every router replica answers `<p>.router.status` with its own view; `gather` collects the answers
(until the replies stop coming), and `merge` (pure) folds them into one row per deployment: the most
severe state any replica holds (they share breaker states, so they agree once the KV watch delivered),
requests in flight summed, averages weighted by each replica's attempts.
"""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from shared.schemas.routing import DeploymentView, RouterStatus, StatusQuery
from shared.subjects import Subjects

_SEVERITY = {"healthy": 0, "cooldown": 1, "half_open": 2, "open": 3}


class DeploymentRow(msgspec.Struct, kw_only=True):
    deployment: str
    provider: str
    models: list[str]
    state: str
    until: float
    reason: str
    ewma_latency_ms: float | None
    ewma_ttft_ms: float | None
    error_rate: float
    attempts: int
    inflight: int
    ratelimit_remaining_requests: int | None
    ratelimit_remaining_tokens: int | None
    replicas: dict[str, str]  # replica → the state it holds


class Fleet(msgspec.Struct, kw_only=True):
    replicas: list[str]
    inflight: int
    deployments: list[DeploymentRow]


def _mean(pairs: list[tuple[float | None, int]]) -> float | None:
    known = [(v, max(w, 1)) for v, w in pairs if v is not None]
    if not known:
        return None
    return sum(v * w for v, w in known) / sum(w for _, w in known)


def merge(statuses: list[RouterStatus]) -> Fleet:
    views: dict[str, list[tuple[str, DeploymentView]]] = {}
    for status in statuses:
        for view in status.deployments:
            views.setdefault(view.deployment, []).append((status.replica, view))
    rows = []
    for dep_id in sorted(views):
        seen = views[dep_id]
        worst = max((v for _, v in seen), key=lambda v: (_SEVERITY.get(v.state, 0), v.until))
        attempts = sum(v.attempts for _, v in seen)
        failures = sum(v.error_rate * v.attempts for _, v in seen)
        rows.append(
            DeploymentRow(
                deployment=dep_id,
                provider=worst.provider,
                models=sorted({m for _, v in seen for m in v.models}),
                state=worst.state,
                until=worst.until,
                reason=worst.reason,
                ewma_latency_ms=_mean([(v.ewma_latency_ms, v.attempts) for _, v in seen]),
                ewma_ttft_ms=_mean([(v.ewma_ttft_ms, v.attempts) for _, v in seen]),
                error_rate=failures / attempts if attempts else 0.0,
                attempts=attempts,
                inflight=sum(v.inflight for _, v in seen),
                ratelimit_remaining_requests=min(
                    (v.ratelimit_remaining_requests for _, v in seen if v.ratelimit_remaining_requests is not None),
                    default=None,
                ),
                ratelimit_remaining_tokens=min(
                    (v.ratelimit_remaining_tokens for _, v in seen if v.ratelimit_remaining_tokens is not None),
                    default=None,
                ),
                replicas={replica: v.state for replica, v in seen},
            )
        )
    return Fleet(
        replicas=sorted(s.replica for s in statuses), inflight=sum(s.inflight for s in statuses), deployments=rows
    )


async def gather(nc: Client, subjects: Subjects, timeout_s: float = 1.0, quiet_s: float = 0.2) -> list[RouterStatus]:
    """Every router replica's status: replies until none came for `quiet_s` after the first, at most `timeout_s`."""
    subject = subjects.router_status
    inbox = nc.new_inbox()
    got: list[RouterStatus] = []
    arrived = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        with contextlib.suppress(msgspec.MsgspecError):
            got.append(subject.decode_reply(msg.data))
            arrived.set()

    sub = await nc.subscribe(inbox, cb=on_reply)
    try:
        await nc.publish(subject.name, subject.encode(StatusQuery()), reply=inbox)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while loop.time() < end:
            arrived.clear()
            wait = end - loop.time() if not got else min(quiet_s, end - loop.time())
            try:
                async with asyncio.timeout(wait):
                    await arrived.wait()
            except TimeoutError:
                if got:
                    break
    finally:
        await sub.unsubscribe()
    return got
