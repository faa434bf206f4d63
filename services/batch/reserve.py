"""A job's up-front reservation: its worst case added to every hard budget of its key at once, atomically
across replicas (shared/counters.py), or the job refused at submission; where the job allows it, the
affordable leading part reserved and run, and the rest reported. Released when the job ends: the part
its items' records did not take (each record settles its own share, services/accounting/settlement.py).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import msgspec

from services.batch.plan import MICRO, affordable
from shared.admission import budget_hold, exceeded
from shared.counters import Count, CounterError, Counters
from shared.directory import Entitlement
from shared.errors import ServiceUnavailableError
from shared.governance import Period
from shared.periods import period_key
from shared.schemas.chat import Hold, Reservation
from shared.schemas.events import ReservationState
from shared.subjects import Subjects

log = logging.getLogger("gatehouse.batch.reserve")


@dataclass(frozen=True, slots=True)
class Reserved:
    holds: list[Hold]  # hard budgets hold `micro`, soft ones 0
    micro: int  # reserved on each hard budget
    runnable: int  # leading items the reservation covers (all of them unless the job is partial)


class Reserver:
    def __init__(self, counters: Counters, subjects: Subjects) -> None:
        self._counters = counters
        self._subjects = subjects

    async def reserve(self, ent: Entitlement, shares: list[int], partial: bool, now: float) -> Reserved:
        """Reserve the items' shares (micro-USD, in input order) on the key's hard budgets."""
        soft = [
            budget_hold(
                s, b, self._subjects.spend_counter(s.name, period_key(b.period, now, ent.timezone)), 0, now, ent
            )
            for s in ent.scopes
            for b in s.limits.budgets
            if not b.hard
        ]
        hard = [(s, b) for s in ent.scopes for b in s.limits.budgets if b.hard]
        if not hard:
            return Reserved(soft, 0, len(shares))
        total = sum(shares)
        spend = [self._spend(s.name, b.period, now, ent) for s, b in hard]
        results = await asyncio.gather(*[self._counters.add(sub, total) for sub in spend], return_exceptions=True)
        held = [sub for sub, r in zip(spend, results, strict=True) if isinstance(r, Count)]
        if len(held) < len(spend):
            await self._give_back(held, total)
            raise ServiceUnavailableError("Budget counters are unavailable; try again shortly.", retry_after=1.0)
        totals = [r.value for r in results if isinstance(r, Count)]
        over = [(s, b, t) for (s, b), t in zip(hard, totals, strict=True) if t > round(b.amount_usd * MICRO)]
        if not over:
            holds = [budget_hold(s, b, sub, total, now, ent) for (s, b), sub in zip(hard, spend, strict=True)]
            return Reserved(holds + soft, total, len(shares))
        scope, budget, _ = over[0]
        room = min(round(b.amount_usd * MICRO) - (t - total) for _, b, t in over)
        runnable = affordable(shares, room) if partial else 0
        if runnable == 0:
            await self._give_back(spend, total)
            raise exceeded(scope, budget, now, ent, f"this batch's worst case (${total / MICRO:.6g})")
        kept = sum(shares[:runnable])
        await self._give_back(spend, total - kept)
        holds = [budget_hold(s, b, sub, kept, now, ent) for (s, b), sub in zip(hard, spend, strict=True)]
        return Reserved(holds + soft, kept, runnable)

    def _spend(self, scope: str, period: Period, now: float, ent: Entitlement) -> str:
        return self._subjects.spend_counter(scope, period_key(period, now, ent.timezone))

    async def _give_back(self, subjects: list[str], micro: int) -> None:
        if micro <= 0:
            return
        for subject in subjects:
            try:
                await self._counters.add(subject, -micro)
            except CounterError as exc:
                log.error("could not give back %d micro-USD on %s: %s", micro, subject, exc)

    async def release(self, job_id: str, holds: list[Hold], micro: int) -> None:
        """Give back `micro` of the job's reservation on each hard budget (idempotent per job)."""
        if micro <= 0:
            return
        for i, hold in enumerate(holds):
            if hold.hard and hold.micro_usd:
                await self._counters.add(hold.subject, -micro, msg_id=f"release.{job_id}.{i}")


def job_reservation(job_id: str, holds: list[Hold], left_micro: int, expires_at: float) -> Reservation:
    """The job's reservation as accounting's reaper sees it: what is still unclaimed by its items, released
    if the job's batch service never comes back (after `expires_at`)."""
    return Reservation(
        request_id=job_id,
        amount_usd=left_micro / MICRO,
        holds=[msgspec.structs.replace(h, micro_usd=left_micro if h.hard else 0) for h in holds],
        expires_at=expires_at,
    )


def state(kind: str, reservation: Reservation, now: float) -> ReservationState:
    return ReservationState(state=kind, reservation=reservation, at=now)
