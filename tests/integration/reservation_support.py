"""Shared by the reservation and lease integration tests: reservations and the records that settle them, their
state notes on the reservations stream, an accounting replica mirroring them, and polling a condition."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from nats.aio.client import Client

from services.accounting.settlement import Reservations
from shared.counters import Counters
from shared.schemas.chat import Caller, Hold, Reservation
from shared.schemas.events import ReservationState
from shared.schemas.mcp import McpCallEvent
from shared.subjects import Subjects

W = 10_000_000  # one request's worst case in micro-USD ($10)


async def poll(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    """Wait until `check` holds, failing with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def start_replica(nc: Client, subjects: Subjects, counters: Counters | None = None) -> Reservations:
    """An accounting replica's reservations, mirroring the reservations stream until stopped."""
    accounting = Reservations(nc, nc.jetstream(), subjects, counters or Counters(nc))
    await accounting.start()
    return accounting


@asynccontextmanager
async def replica(nc: Client, subjects: Subjects, counters: Counters | None = None) -> AsyncIterator[Reservations]:
    """An accounting replica's reservations, mirroring the reservations stream while the block runs."""
    accounting = await start_replica(nc, subjects, counters)
    try:
        yield accounting
    finally:
        await accounting.stop()


def make_record(reservation: Reservation) -> McpCallEvent:
    """A record carrying a reservation (settlement reads only the reservation)."""
    now = time.time()
    return McpCallEvent(
        event_id=uuid.uuid4().hex,
        call_id=reservation.request_id,
        method="tools/call",
        server="s",
        tool="s__t",
        caller=Caller(key_id="k", team="t"),
        status="ok",
        latency_ms=1.0,
        cost_usd=0.0,
        received_at=now,
        finished_at=now,
        reservation=reservation,
    )


async def publish_state(nc: Client, subjects: Subjects, reservation: Reservation, state: str = "live") -> None:
    """Publish a reservation's state to the reservations stream, as ingress or accounting does."""
    subject = subjects.reservation(reservation.request_id)
    await nc.jetstream().publish(
        subject.name, subject.encode(ReservationState(state=state, reservation=reservation, at=0))
    )


def make_lease(spend: str, size: int) -> Reservation:
    """A lease of `size` micro-USD on `spend`, expired already (as a dead replica leaves it)."""
    return Reservation(
        request_id=f"lease-x-{uuid.uuid4().hex}",
        amount_usd=size / 1_000_000,
        holds=[Hold(subject=spend, micro_usd=size)],
        expires_at=time.time() - 1,
        lease=True,
    )


def make_drawn(spend: str, lease_id: str = "", expires_at: float | None = None) -> Reservation:
    """A request's reservation of W on `spend` (drawn from lease `lease_id` if given), live for a minute unless
    `expires_at` says otherwise."""
    return Reservation(
        request_id=uuid.uuid4().hex,
        amount_usd=W / 1_000_000,
        holds=[Hold(subject=spend, micro_usd=W)],
        expires_at=time.time() + 60 if expires_at is None else expires_at,
        lease_id=lease_id,
    )
