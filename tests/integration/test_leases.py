"""Leased counter blocks (shared/leases.py) on a real nats-server: two Governors stand for two ingress replicas
counting on the same JetStream counters. Requests per minute are never over-admitted under concurrent draws,
two replicas leasing one budget concurrently never overspend it, an idle replica gives back what it holds, and
the lease of a replica that died is released by accounting's reaper by exactly what its requests did not draw."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence

import pytest
from nats.aio.client import Client

from shared.admission import Admitted, Estimate, Governor
from shared.counters import Count, CounterError, Counters, Op
from shared.directory import Entitlement, Scope
from shared.errors import BudgetExceededError, RateLimitError
from shared.governance import Budget, Limits, Quotas, VirtualKey
from shared.leases import MAX_BLOCK, Leases
from shared.periods import window
from shared.route_pricing import RoutePricing, TokenRates
from shared.schemas.chat import Caller, Reservation
from shared.subjects import Subjects
from tests.integration.reservation_support import W, make_drawn, make_lease, make_record, poll, publish_state, replica

pytestmark = pytest.mark.timeout(120)

# $1 per output token: 10 output tokens at most, so every request's worst case is exactly $10
PRICING = RoutePricing("m", (TokenRates(input=0.0, output=1.0),), 10)
ESTIMATE = Estimate(0, 10, PRICING)


class Counted(Counters):
    """Real counters that also count the increments sent (to tell leased draws from exact ones)."""

    sent = 0

    async def add_many(self, ops: Sequence[Op]) -> list[Count | CounterError]:
        self.sent += len(ops)
        return await super().add_many(ops)


def _ent(limits: Limits) -> Entitlement:
    key = VirtualKey(id="k", team="t", sha256="0" * 64)
    return Entitlement(key=key, caller=Caller(key_id="k", team="t"), scopes=(Scope("key", "k", limits),))


def _replicas(
    ncs: list[Client], subjects: Subjects, notes: list[tuple[Reservation, str]] | None = None
) -> list[Governor]:
    def note(reservation: Reservation, state: str) -> None:
        if notes is not None:
            notes.append((reservation, state))

    return [
        Governor(Counted(nc), subjects, quotas_fail_open=False, reservation_grace_s=1.0, note=note) for nc in ncs[:2]
    ]


async def _admit(governor: Governor, ent: Entitlement) -> Admitted | Exception:
    try:
        return await governor.admit(ent, uuid.uuid4().hex, ESTIMATE, time.time() + 60)
    except (RateLimitError, BudgetExceededError) as exc:
        return exc


async def _window_has_room(seconds: float = 20) -> None:
    """A burst counted in one minute window: wait for the next window if this one ends too soon."""
    while 60 - (time.time() - window(time.time()) * 60) < seconds:
        await asyncio.sleep(0.2)


async def test_two_replicas_drawing_requests_concurrently_admit_exactly_the_limit(
    ncs: list[Client], subjects: Subjects
) -> None:
    replicas = _replicas(ncs, subjects)
    ent = _ent(Limits(quotas=Quotas(rpm=500)))
    await _window_has_room()
    burst = [_admit(replicas[i % 2], ent) for i in range(800)]
    outcomes = await asyncio.gather(*burst)
    admitted = [o for o in outcomes if isinstance(o, Admitted)]
    refused = [o for o in outcomes if isinstance(o, RateLimitError)]
    # never more than the limit; and while both replicas still have requests, every unit leased is drawn
    assert len(admitted) == 500 and len(refused) == 300
    assert all(0 <= int(a.headers["x-ratelimit-remaining-requests"]) < 500 for a in admitted)
    # far fewer increments than requests: most requests were drawn from leases
    sent = sum(g._counters.sent for g in replicas)  # type: ignore[attr-defined]
    assert sent < 400, sent
    counter = Counters(ncs[2])
    subject = subjects.quota_counter("rpm", "key.k", window(time.time()))
    for g in replicas:
        await g.drain()
    # whatever is left on the counter beyond the admitted requests is refused requests' exact increments
    assert await counter.read(subject) >= 500


async def test_an_idle_replica_gives_back_what_it_leased_and_others_use_it(
    ncs: list[Client], subjects: Subjects
) -> None:
    a, b = _replicas(ncs, subjects)
    ent = _ent(Limits(quotas=Quotas(rpm=2000)))
    await _window_has_room()
    counter = Counters(ncs[2])
    subject = subjects.quota_counter("rpm", "key.k", window(time.time()))
    first = await _admit(a, ent)
    assert isinstance(first, Admitted) and first.headers["x-ratelimit-remaining-requests"] == "1999"
    assert await counter.read(subject) == 1  # the first request in a while is counted exactly
    second = await _admit(a, ent)
    assert isinstance(second, Admitted) and second.headers["x-ratelimit-remaining-requests"] == "1998"
    # the next one took a block: the counter holds the whole block while replica a is using it
    assert await counter.read(subject) == 1 + MAX_BLOCK

    async def given_back() -> bool:
        return await counter.read(subject) == 2

    # a draws nothing more: after a second idle it gives back all but the two requests it admitted
    await poll(given_back, "the idle lease was not given back")
    more = [await _admit(b, ent) for _ in range(3)]
    assert all(isinstance(m, Admitted) for m in more)
    await b.drain()
    assert await counter.read(subject) == 5


async def test_under_admission_is_bounded_by_what_other_replicas_hold_undrawn(
    ncs: list[Client], subjects: Subjects
) -> None:
    a, b = _replicas(ncs, subjects)
    ent = _ent(Limits(quotas=Quotas(rpm=600)))
    await _window_has_room()
    # a counts one exactly, then holds a block of 64 (599 // 8, at most 64) and draws one from it
    assert all(isinstance(o, Admitted) for o in [await _admit(a, ent), await _admit(a, ent)])
    outcomes = await asyncio.gather(*(_admit(b, ent) for _ in range(700)))
    admitted = sum(isinstance(o, Admitted) for o in outcomes)
    # b falls short of the limit by at most the 63 units a holds undrawn (fewer if a gave them back meanwhile)
    assert 600 - 2 - (MAX_BLOCK - 1) <= admitted <= 600 - 2, admitted
    for g in (a, b):
        await g.drain()


async def test_two_replicas_leasing_one_budget_concurrently_never_overspend(
    ncs: list[Client], subjects: Subjects
) -> None:
    notes: list[tuple[Reservation, str]] = []
    replicas = _replicas(ncs, subjects, notes)
    budget = 2000 * W  # 2000 worst cases
    ent = _ent(Limits(budgets=[Budget(amount_usd=budget / 1_000_000, period="total")]))
    outcomes = await asyncio.gather(*(_admit(replicas[i % 2], ent) for i in range(2600)))
    admitted = [o for o in outcomes if isinstance(o, Admitted)]
    assert all(isinstance(o, Admitted | BudgetExceededError) for o in outcomes)
    assert len(admitted) * W <= budget  # never overspent
    assert len(admitted) >= 0.95 * 2000, len(admitted)  # and under-admission small
    leased = {a.reservation.lease_id for a in admitted if a.reservation is not None}
    assert len(leased - {""}) >= 2  # drawn from leases of both replicas (and exact near the end)
    assert all(a.reservation is not None and a.reservation.holds[0].micro_usd == W for a in admitted)
    lease_notes = [r for r, state in notes if state == "live"]
    assert lease_notes and all(r.lease and r.holds[0].micro_usd % W == 0 for r in lease_notes)
    for g in replicas:
        await g.drain()
    # every lease given back: the counter holds exactly the admitted requests' reservations
    counter = Counters(ncs[2])
    spend = subjects.spend_counter("key.k", "total")
    assert await counter.read(spend) == len(admitted) * W
    settled = {r.request_id for r, state in notes if state == "settled"}
    assert settled == {r.request_id for r in lease_notes}


async def test_a_dead_replicas_lease_is_released_by_what_its_requests_did_not_draw(
    ncs: list[Client], subjects: Subjects
) -> None:
    notes: list[tuple[Reservation, str]] = []
    a, _ = _replicas(ncs, subjects, notes)
    ent = _ent(Limits(budgets=[Budget(amount_usd=1000 * W / 1_000_000, period="total")]))
    exact = await _admit(a, ent)  # the first request in a while: reserved exactly, no lease
    assert isinstance(exact, Admitted) and exact.reservation is not None and not exact.reservation.lease_id
    drawn = [await _admit(a, ent) for _ in range(4)]
    assert all(isinstance(d, Admitted) and d.reservation is not None and d.reservation.lease_id for d in drawn)
    r1, r2, r3, r4 = [d.reservation for d in drawn if isinstance(d, Admitted) and d.reservation is not None]
    assert [state for _, state in notes] == ["live"]
    lease = notes[0][0]
    assert {r.lease_id for r in (r1, r2, r3, r4)} == {lease.request_id}
    # the lease's note outlives every request drawn from it: it stands for them while they run
    assert lease.expires_at >= max(r.expires_at for r in (r1, r2, r3, r4))
    size = lease.holds[0].micro_usd
    assert lease.lease and size == MAX_BLOCK * W  # a SHAREth of the headroom (124 W), at most MAX_BLOCK of them
    spend = subjects.spend_counter("key.k", "total")
    counter = Counters(ncs[2])
    assert await counter.read(spend) == W + size  # the exact reservation, and the lease
    # the replica dies: its leases are never given back
    assert isinstance(a.leases, Leases) and a.leases._sweeper is not None
    a.leases._sweeper.cancel()
    # what reached the reservations stream: the lease's live note, and r4's (as for a request holding a
    # concurrency slot); r1's record came before the crash, r3's comes late, r2 was running and never reports
    for reservation in (lease, r4):
        await publish_state(ncs[2], subjects, reservation)
    async with replica(ncs[2], subjects) as accounting:

        async def mirrored() -> bool:
            return {lease.request_id, r4.request_id} <= set(accounting.states)

        await poll(mirrored, "the reservation states never reached the mirror")
        await accounting.settle_many([(make_record(r1), 4.0)])  # r1 at its actual $4
        assert await counter.read(spend) == W + size + 4_000_000 - W
        # past the lease's expiry: it is released by L - 2W (r1 and r4 are known to be drawn from it), and r4
        # (expired too) gives back its own worst case
        assert await accounting.reap(lease.expires_at + 0.1) == 2
        assert await counter.read(spend) == W + 4_000_000
        released = accounting.states[lease.request_id]
        assert released.state == "released"
        assert sorted(released.reservation.drawn) == sorted([r1.request_id, r4.request_id])
        # reaping again releases nothing more
        assert await accounting.reap(lease.expires_at + 0.1) == 0
        # r3's record comes late: its worst case went back with the lease, so it adds its full actual $7
        await accounting.settle_many([(make_record(r3), 7.0)])
        assert await counter.read(spend) == W + 11_000_000  # exactly what was spent (and the exact one's hold)


async def test_a_lease_is_given_back_after_its_last_request_and_then_left_alone_by_the_reaper(
    ncs: list[Client], subjects: Subjects
) -> None:
    notes: list[tuple[Reservation, str]] = []
    a, _ = _replicas(ncs, subjects, notes)
    ent = _ent(Limits(budgets=[Budget(amount_usd=1000 * W / 1_000_000, period="total")]))
    assert isinstance(await _admit(a, ent), Admitted)  # exact
    running = await _admit(a, ent)
    assert isinstance(running, Admitted) and running.reservation is not None and running.reservation.lease_id
    lease_id = running.reservation.lease_id
    spend = subjects.spend_counter("key.k", "total")
    counter = Counters(ncs[2])
    assert await counter.read(spend) == W + MAX_BLOCK * W
    assert a.leases is not None
    held = a.leases._by_id[lease_id]

    async def closed() -> bool:
        return held.closed

    # idle: no more draws from it, but a request drawn from it still runs, so it is not given back yet
    await poll(closed, "the idle lease was not closed")
    assert await counter.read(spend) == W + MAX_BLOCK * W and [s for _, s in notes] == ["live"]
    await a.finish(running, 0)  # the request ends (its record handed over): now the lease goes back

    async def given_back() -> bool:
        return await counter.read(spend) == 2 * W

    await poll(given_back, "the lease was not given back after its last request")
    await poll(lambda: _true([s for _, s in notes] == ["live", "settled"]), "the lease was not noted settled")
    for reservation, state in notes:
        await publish_state(ncs[2], subjects, reservation, state)
    async with replica(ncs[2], subjects) as accounting:

        async def mirrored() -> bool:
            return lease_id in accounting.states and accounting.states[lease_id].state == "settled"

        await poll(mirrored, "the lease's states never reached the mirror")
        assert await accounting.reap(notes[0][0].expires_at + 60) == 0
        assert await counter.read(spend) == 2 * W


async def test_a_record_settled_while_its_lease_is_released_is_counted_once(
    ncs: list[Client], subjects: Subjects
) -> None:
    # a dead replica's lease of 10 W, one request drawn from it whose record arrives as the reaper releases the
    # lease: either the release counts it (its settlement adds actual - W) or it does not (the settlement adds its
    # full actual); never both, which would give its worst case back twice
    counter = Counters(ncs[2])
    spend = subjects.spend_counter("key.race", "total")
    lease = make_lease(spend, 10 * W)
    lease_id = lease.request_id
    drawn = make_drawn(spend, lease_id)
    await counter.add(spend, 10 * W)  # what the replica leased
    await publish_state(ncs[2], subjects, lease)
    async with replica(ncs[2], subjects) as accounting:

        async def mirrored() -> bool:
            return lease_id in accounting.states

        await poll(mirrored, "the lease's note never reached the mirror")
        await asyncio.gather(accounting.settle_many([(make_record(drawn), 4.0)]), accounting.reap())
        assert accounting.states[lease_id].state == "released"
        assert await counter.read(spend) == 4_000_000  # exactly the request's actual $4


class GiveBackFails(Counted):
    """Real counters on which a replica's give-back of a lease fails (the counters went away at that moment)."""

    async def add_many(self, ops: Sequence[Op]) -> list[Count | CounterError]:
        if ops and all(op.msg_id.startswith("release.") for op in ops):
            return [CounterError("counters away") for _ in ops]
        return await super().add_many(ops)


async def test_a_refusal_after_a_failed_give_back_leaves_the_worst_case_to_accounting(
    ncs: list[Client], subjects: Subjects
) -> None:
    # the replica could not give its lease back, so accounting will release it by what the requests it knows of did
    # not draw; a request drawn from it and refused after all has no record: that release gives its worst case back,
    # so the replica must not give it back too
    governor = Governor(
        GiveBackFails(ncs[0]), subjects, quotas_fail_open=False, reservation_grace_s=1.0, note=lambda r, s: None
    )
    ent = _ent(Limits(budgets=[Budget(amount_usd=1000 * W / 1_000_000, period="total")]))
    await _admit(governor, ent)  # exact: the first request in a while
    drawn = await _admit(governor, ent)
    assert isinstance(drawn, Admitted) and drawn.reservation is not None and drawn.reservation.lease_id
    spend = subjects.spend_counter("key.k", "total")
    counter = Counters(ncs[2])
    assert governor.leases is not None
    await governor.leases.drain()  # the give-back fails: the lease is left to accounting
    before = await counter.read(spend)
    governor.leases.undraw(drawn.reservation.lease_id, [spend], W)  # refused after all
    await governor.drain()
    assert await counter.read(spend) == before


async def _true(value: bool) -> bool:
    return value


async def test_every_choice_of_a_request_is_reserved_and_a_clamp_lowers_each_choice(
    ncs: list[Client], subjects: Subjects
) -> None:
    # $0.01 per output token, 100 per choice at most: three choices (`n: 3`) may write 300 tokens, $3
    pricing = RoutePricing("m", (TokenRates(input=0.0, output=0.01),), 100)
    three = Estimate(0, 100, pricing, choices=3)
    governor = _replicas(ncs, subjects)[0]
    ent = _ent(Limits(budgets=[Budget(amount_usd=5.0, on_exceed="clamp")]))
    first = await governor.admit(ent, uuid.uuid4().hex, three, time.time() + 60)
    assert first.reservation is not None and first.reservation.amount_usd == pytest.approx(3.0)
    assert first.max_tokens is None and first.covered_output == 300  # every choice's output, as a stream counts it
    # $2 left: 200 tokens in all, 66 per choice
    second = await governor.admit(ent, uuid.uuid4().hex, three, time.time() + 60)
    assert second.max_tokens == 66 and second.covered_output == 198
    assert second.reservation is not None and second.reservation.amount_usd == pytest.approx(1.98)
    await governor.drain()
