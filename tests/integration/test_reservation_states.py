"""Reservation states as the lock across accounting replicas (shared/reservation_notes.py), on a real nats-server:
a reservation is settled or released exactly once whichever replicas settle and reap it at the same moment, a
`live` note replayed late never makes a settled reservation live again, and a settlement retried after the
counters' duplicate window does not apply its increments twice. Short duplicate windows stand for 15 minutes: the
tests wait until the server has forgotten an id (polling it), never for a fixed time."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from types import SimpleNamespace

import msgspec
import nats
import pytest
from nats.aio.client import Client

from services.accounting.settlement import Reservations
from services.batch.jobs import JobControl
from services.batch.reserve import Reserver, job_reservation
from shared.bus import ensure_events_stream
from shared.counters import Count, CounterError, Counters, Op, ensure_counter_streams
from shared.event_publisher import EventPublisher
from shared.records import RecordPublisher
from shared.schemas.batch import BatchJob
from shared.schemas.chat import Caller, Hold, Reservation
from shared.schemas.events import ReservationState
from shared.spool import SpoolConfig
from shared.subjects import Subjects
from tests.integration.reservation_support import (
    W,
    make_drawn,
    make_lease,
    make_record,
    poll,
    publish_state,
    replica,
    start_replica,
)

pytestmark = pytest.mark.timeout(120)

SHORT_WINDOW_NS = 1_000_000_000


@pytest.fixture
def counter(ncs: list[Client]) -> Counters:
    return Counters(ncs[2])


@pytest.fixture
def spend(subjects: Subjects) -> str:
    return subjects.spend_counter("key.k", "total")


async def _noted_on_both(nc: Client, subjects: Subjects, reservation: Reservation, *replicas: Reservations) -> None:
    """Publish a reservation's live note and wait until every replica's mirror holds it."""
    await publish_state(nc, subjects, reservation)

    async def mirrored() -> bool:
        return all(reservation.request_id in r.states for r in replicas)

    await poll(mirrored, "the note never reached both mirrors")


async def _short_window(nc: Client, name: str) -> None:
    """Shorten a stream's duplicate window to a second."""
    reply = await nc.request(f"$JS.API.STREAM.INFO.{name}", b"", timeout=5)
    config = {**json.loads(reply.data)["config"], "duplicate_window": SHORT_WINDOW_NS}
    reply = await nc.request(f"$JS.API.STREAM.UPDATE.{name}", json.dumps(config).encode(), timeout=5)
    assert "error" not in json.loads(reply.data), reply.data


async def test_a_record_settled_on_one_replica_while_another_reaps_its_lease_is_counted_once(
    ncs: list[Client], subjects: Subjects, counter: Counters
) -> None:
    # a dead ingress replica's lease of 10 W with one request drawn from it; replica A settles the request's record
    # (at $4) while replica B releases the lease: whichever wins, the request's worst case goes back once
    async with replica(ncs[0], subjects) as a, replica(ncs[1], subjects) as b:
        for n in range(5):
            spend = subjects.spend_counter(f"key.k{n}", "total")
            lease = make_lease(spend, 10 * W)
            drawn = make_drawn(spend, lease.request_id)
            await counter.add(spend, 10 * W)
            await _noted_on_both(ncs[2], subjects, lease, a, b)
            _, reaped = await asyncio.gather(a.settle_many([(make_record(drawn), 4.0)]), b.reap())
            assert reaped == 1
            assert await counter.read(spend) == 4_000_000  # exactly the request's actual cost
            # and later rounds on either replica change nothing
            assert await a.reap() + await b.reap() == 0
            await a.settle_many([(make_record(drawn), 4.0)])
            assert await counter.read(spend) == 4_000_000


async def test_two_replicas_reaping_one_lease_with_different_views_release_it_once(
    ncs: list[Client], subjects: Subjects, counter: Counters, spend: str
) -> None:
    lease = make_lease(spend, 10 * W)
    drawn = make_drawn(spend, lease.request_id)
    await counter.add(spend, 10 * W)
    async with replica(ncs[0], subjects) as a, replica(ncs[1], subjects) as b:
        await _noted_on_both(ncs[2], subjects, lease, a, b)
        await b._sub.unsubscribe()  # B's mirror lags from here on: it never hears what A does
        await a.settle_many([(make_record(drawn), 4.0)])  # A settles the request at $4 while the lease is live
        assert await b.reap() == 1  # B, knowing nothing of the request, releases the lease first
        assert await a.reap() == 0
        assert await counter.read(spend) == 4_000_000
        assert b.states[lease.request_id].reservation.drawn == [drawn.request_id]  # B read the lease as it is


async def test_a_reservation_settled_on_one_replica_while_another_releases_it_is_counted_once(
    ncs: list[Client], subjects: Subjects, counter: Counters
) -> None:
    async with replica(ncs[0], subjects) as a, replica(ncs[1], subjects) as b:
        for n in range(5):
            spend = subjects.spend_counter(f"key.k{n}", "total")
            request = make_drawn(spend, expires_at=time.time() - 1)  # its record is late: it expired meanwhile
            await counter.add(spend, W)
            await _noted_on_both(ncs[2], subjects, request, a, b)
            await asyncio.gather(a.settle_many([(make_record(request), 4.0)]), b.reap())
            assert await counter.read(spend) == 4_000_000


async def test_a_live_note_replayed_after_the_duplicate_window_leaves_a_settled_reservation_settled(
    ncs: list[Client], subjects: Subjects, counter: Counters, spend: str, tmp_path: object
) -> None:
    nc = ncs[2]
    await _short_window(nc, subjects.reservations_stream)
    conc = subjects.concurrency_counter("key.k")
    request = Reservation(
        request_id=uuid.uuid4().hex,
        amount_usd=W / 1_000_000,
        holds=[Hold(subject=spend, micro_usd=W)],
        concurrency=[conc],
        expires_at=time.time() - 1,
    )
    await counter.add(spend, W)
    await counter.add(conc, 1)
    publisher = EventPublisher(SpoolConfig(root=tmp_path / "spool"), timeout_s=2.0)  # type: ignore[operator]
    records = RecordPublisher(subjects, publisher)
    await records.start(nc)
    async with replica(ncs[0], subjects) as accounting:
        try:
            records.hold(request)

            async def noted() -> bool:
                return publisher.published == 1 and request.request_id in accounting.states

            await poll(noted, "the live note was not stored")
            await accounting.settle_many([(make_record(request), 4.0)])
            await counter.add(conc, -1)  # ingress's finish
            assert await counter.read(spend) == 4_000_000

            # the server forgets the live note's id (a second here, 15 minutes in production)
            probe = subjects.reservation("probe").name

            async def forgotten() -> bool:
                ack = await nc.jetstream().publish(probe, b"", headers={"Nats-Msg-Id": "probe"})
                return not ack.duplicate

            await forgotten()
            await poll(forgotten, "the duplicate window never passed")

            records.hold(request)  # the spool replays the live note

            async def replayed() -> bool:
                return publisher.published == 2

            await poll(replayed, "the replayed note was not acknowledged")
            assert publisher.rejected == 0  # refused by the server as not first on its subject: done, not an error
        finally:
            await records.drain()
    # a fresh mirror sees only the last state of each reservation
    async with replica(ncs[1], subjects) as restarted:
        await asyncio.wait_for(restarted.caught_up.wait(), 10)
        assert restarted.states[request.request_id].state == "settled"
        assert await restarted.reap(time.time() + 3600) == 0
        assert await counter.read(spend) == 4_000_000
        assert await counter.read(conc) == 0


class AnswersLost(Counters):
    """Real counters whose answers to the first settlement's increments are lost (they were applied)."""

    lose = True

    async def add_many(self, ops: Sequence[Op]) -> list[Count | CounterError]:
        results = await super().add_many(ops)
        if self.lose and ops and all(op.msg_id.startswith("settle") for op in ops):
            self.lose = False
            return [CounterError("no answer within 2s") for _ in ops]
        return results


async def test_a_settlement_retried_after_the_duplicate_window_does_not_count_twice(
    ncs: list[Client], subjects: Subjects, counter: Counters, spend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _short_window(ncs[2], subjects.counters_stream)
    # the counters forget an id after a second here: the replica gives up owed increments that old
    monkeypatch.setattr("services.accounting.settlement.DUPLICATE_WINDOW_S", 1.0, raising=False)
    monkeypatch.setattr("services.accounting.settlement.OWED_MARGIN_S", 0.0, raising=False)
    request = make_drawn(spend)
    await counter.add(spend, W)
    await publish_state(ncs[2], subjects, request)
    async with replica(ncs[0], subjects, AnswersLost(ncs[0])) as accounting:
        with pytest.raises(CounterError):
            await accounting.settle_many([(make_record(request), 4.0)])  # applied, but the answers were lost
        assert await counter.read(spend) == 4_000_000

        async def forgotten() -> bool:
            return not (await counter.add(spend, 0, msg_id="probe")).duplicate

        await forgotten()
        await poll(forgotten, "the duplicate window never passed")
        await accounting.settle_many([(make_record(request), 4.0)])  # the consumer retries the batch
        assert await counter.read(spend) == 4_000_000


async def test_increments_owed_within_the_duplicate_window_are_sent_again_once(
    ncs: list[Client], subjects: Subjects, counter: Counters, spend: str
) -> None:
    request = make_drawn(spend)
    await counter.add(spend, W)
    await publish_state(ncs[2], subjects, request)
    async with replica(ncs[0], subjects, AnswersLost(ncs[0])) as accounting:
        with pytest.raises(CounterError):
            await accounting.settle_many([(make_record(request), 4.0)])
        await accounting.settle_many([(make_record(request), 4.0)])  # sent again: deduplicated
        assert await counter.read(spend) == 4_000_000
        assert not accounting._owed


async def test_an_operator_created_counter_stream_with_a_short_duplicate_window_is_refused_clearly(
    ncs: list[Client], subjects: Subjects
) -> None:
    nc = ncs[2]
    await _short_window(nc, subjects.counters_stream)  # as `nats stream add` with its 2-minute default would
    with pytest.raises(CounterError, match=rf"{subjects.counters_stream} deduplicates increments for 1 s.*dupe-window"):
        await ensure_counter_streams(nc, subjects)


async def test_an_expired_reservation_waits_while_the_event_stream_holds_an_older_record(
    ncs: list[Client], subjects: Subjects, counter: Counters, spend: str
) -> None:
    # accounting (or ClickHouse) is behind: the request finished and its record waits in the event stream when its
    # reservation expires; releasing it then would let new requests spend what this one spent already
    nc = ncs[2]
    js = nc.jetstream()
    await ensure_events_stream(js, subjects)
    await counter.add(spend, W)
    event = subjects.events_mcp
    record = make_drawn(spend)
    await js.publish(event.name, event.encode(make_record(record)))  # stored before the reservation expires
    request = msgspec.structs.replace(record, expires_at=time.time() + 1)
    await publish_state(nc, subjects, request)
    async with replica(ncs[0], subjects) as accounting:
        await asyncio.wait_for(accounting.caught_up.wait(), 10)
        assert await accounting.reap(request.expires_at + 60) == 0  # held: its record may be in the backlog
        assert await counter.read(spend) == W
        # accounting catches up: the record is settled and taken off the stream
        await accounting.settle_many([(make_record(request), 4.0)])
        await js.purge_stream(subjects.events_stream)
        assert await accounting.reap(request.expires_at + 60) == 0
        assert await counter.read(spend) == 4_000_000
        # a reservation whose record never came is released once no older event waits
        lost = make_drawn(spend, expires_at=time.time() - 1)
        await counter.add(spend, W)
        await publish_state(nc, subjects, lost)

        async def released() -> bool:
            return await accounting.reap() == 1

        await poll(released, "the lost request's reservation was not released")
        assert await counter.read(spend) == 4_000_000


async def test_a_record_whose_state_cannot_be_moved_does_not_cost_the_others_their_increments(
    ncs: list[Client], subjects: Subjects, counter: Counters, spend: str
) -> None:
    good, bad = make_drawn(spend), make_drawn(spend)
    await counter.add(spend, 2 * W)
    async with replica(ncs[0], subjects) as accounting:
        move = accounting._notes.move

        async def fails_for_bad(state: ReservationState, expected: int, data: bytes | None = None) -> bool:
            if state.reservation.request_id == bad.request_id:
                raise TimeoutError("the reservations stream did not answer")
            return await move(state, expected, data)

        accounting._notes.move = fails_for_bad  # type: ignore[method-assign]
        with pytest.raises(TimeoutError):
            await accounting.settle_many([(make_record(good), 4.0), (make_record(bad), 3.0)])
        assert await counter.read(spend) == 4_000_000 + W  # the good one settled at $4, the bad one still held
        accounting._notes.move = move  # type: ignore[method-assign]
        await accounting.settle_many([(make_record(good), 4.0), (make_record(bad), 3.0)])  # the batch retried
        assert await counter.read(spend) == 7_000_000


async def test_a_batch_of_requests_drawn_from_one_lease_settles_in_one_pass(
    ncs: list[Client], subjects: Subjects, counter: Counters, spend: str
) -> None:
    """A busy key's batch holds dozens of records drawn from the same live lease: they are added to the lease in one
    move, so the batch settles at once (one compare-and-set each raced on the lease's subject: 64 such records took
    eight passes, the rest of each pass raising 'kept changing')."""
    await ensure_counter_streams(ncs[2], subjects)
    lease = msgspec.structs.replace(make_lease(spend, 100 * W), expires_at=time.time() + 60)
    await counter.add(spend, 100 * W)
    await publish_state(ncs[2], subjects, lease)
    async with replica(ncs[0], subjects) as accounting:
        drawn = [make_drawn(spend, lease.request_id) for _ in range(64)]
        await accounting.settle_many([(make_record(r), 4.0) for r in drawn])  # raises if any is left unsettled
        assert accounting.settled == 64
        assert await counter.read(spend) == 100 * W + 64 * (4_000_000 - W)
        subject = subjects.reservation(lease.request_id).name
        msg = await ncs[2].jetstream().get_last_msg(subjects.reservations_stream, subject)
        known = msgspec.msgpack.decode(msg.data or b"", type=ReservationState)
        assert known.state == "live" and sorted(known.reservation.drawn) == sorted(r.request_id for r in drawn)
        assert known.reservation.drawn_micro == [64 * W]


async def test_an_unknown_event_backlog_releases_nothing(
    ncs: list[Client], subjects: Subjects, counter: Counters, spend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NATS too slow to say how old the event backlog is: the reaper releases nothing that round (a record may be
    late), and releases once the backlog can be read again and is empty."""
    nc = ncs[2]
    await ensure_counter_streams(nc, subjects)
    await ensure_events_stream(nc.jetstream(), subjects)
    await counter.add(spend, W)
    await publish_state(nc, subjects, make_drawn(spend, expires_at=time.time() - 1))
    async with replica(ncs[0], subjects) as accounting:
        await asyncio.wait_for(accounting.caught_up.wait(), 10)
        request = ncs[0].request
        info = f"$JS.API.STREAM.INFO.{subjects.events_stream}"

        async def slow_info(subject: str, *args: object, **kwargs: object) -> object:
            if subject == info:
                raise nats.errors.TimeoutError
            return await request(subject, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(ncs[0], "request", slow_info)
        assert await accounting.reap() == 0
        assert await counter.read(spend) == W
        monkeypatch.setattr(ncs[0], "request", request)
        assert await accounting.reap() == 1
        assert await counter.read(spend) == 0


async def test_a_reservation_of_concurrency_slots_only_is_settled_and_never_released_after_ingress_freed_them(
    ncs: list[Client], subjects: Subjects
) -> None:
    """A key with max_concurrency and no budget: its request's reservation holds one slot and no budget. Its record
    settles it, so when its expiry passes the reaper does not give the slot back a second time (ingress gave it
    back when the request ended; the counter went to -1 and max_concurrency stopped being enforced)."""
    nc = ncs[2]
    await ensure_counter_streams(nc, subjects)
    counter = Counters(nc)
    slots = subjects.concurrency_counter("key.k")
    request = Reservation(
        request_id=uuid.uuid4().hex, concurrency=[slots], expires_at=time.time() - 1
    )  # expired by the time the reaper looks
    await counter.add(slots, 1)  # ingress admitted it
    await publish_state(nc, subjects, request)
    accounting = await start_replica(ncs[0], subjects)
    try:

        async def mirrored() -> bool:
            return request.request_id in accounting.states

        await poll(mirrored, "the note never reached the mirror")
        await accounting.settle_many([(make_record(request), 0.0)])
        await counter.add(slots, -1)  # ingress's finish gave the slot back
        assert await accounting.reap() == 0
        assert await counter.read(slots) == 0
        msg = await nc.jetstream().get_last_msg(
            subjects.reservations_stream, subjects.reservation(request.request_id).name
        )
        assert msgspec.msgpack.decode(msg.data or b"", type=ReservationState).state == "settled"
    finally:
        await accounting.stop()


class _LostAck:
    """The reservations stream as NATS under load shows it: the next move is stored but its ack is lost, and the
    read-back that follows times out too."""

    def __init__(self, js: object) -> None:
        self._js = js
        self.armed = True
        self._read_fails = False

    async def publish(self, *args: object, **kwargs: object) -> object:
        ack = await self._js.publish(*args, **kwargs)  # type: ignore[attr-defined]
        if self.armed:
            self._read_fails = True
            raise nats.errors.TimeoutError
        return ack

    async def get_last_msg(self, *args: object, **kwargs: object) -> object:
        if self._read_fails:
            self._read_fails = self.armed = False
            raise nats.errors.TimeoutError
        return await self._js.get_last_msg(*args, **kwargs)  # type: ignore[attr-defined]


async def test_a_release_stored_with_its_ack_and_read_back_lost_still_gives_back_its_holds_and_slots(
    ncs: list[Client], subjects: Subjects
) -> None:
    """The release's move is stored, its ack lost and its read-back timed out: the replica cannot tell it moved the
    state, and the next reap finds it `released`. Its mirror shows the very bytes it published, so the worst case
    and the concurrency slot are given back all the same (they stayed counted for ever: a key with max_concurrency 1
    was blocked for good)."""
    nc = ncs[2]
    await ensure_counter_streams(nc, subjects)
    counter = Counters(nc)
    spend, slots = subjects.spend_counter("key.k", "total"), subjects.concurrency_counter("key.k")
    lost = msgspec.structs.replace(make_drawn(spend, expires_at=time.time() - 1), concurrency=[slots])
    await counter.add(spend, W)
    await counter.add(slots, 1)
    await publish_state(nc, subjects, lost)
    accounting = await start_replica(ncs[0], subjects)
    try:

        async def mirrored() -> bool:
            return lost.request_id in accounting.states

        await poll(mirrored, "the note never reached the mirror")
        flaky = _LostAck(accounting._notes._js)
        accounting._notes._js = flaky  # type: ignore[assignment]
        with pytest.raises(nats.errors.TimeoutError):
            await accounting.reap()
        assert not flaky.armed

        async def given_back() -> bool:
            await accounting.reap()
            return await counter.read(spend) == 0 and await counter.read(slots) == 0

        await poll(given_back, "the release's holds and slot stayed counted", timeout=10)
        assert accounting.states[lost.request_id].state == "released"
    finally:
        await accounting.stop()


async def test_a_settlement_stored_with_its_ack_and_read_back_lost_is_counted_when_the_batch_is_retried(
    ncs: list[Client], subjects: Subjects
) -> None:
    """The settlement's move is stored, its ack and read-back lost: the batch raises and is retried, the retry reads
    the state `settled` and sees its own bytes there, so the increments prepared for that move are paid."""
    nc = ncs[2]
    await ensure_counter_streams(nc, subjects)
    counter = Counters(nc)
    spend = subjects.spend_counter("key.k", "total")
    request = make_drawn(spend)
    await counter.add(spend, W)
    await publish_state(nc, subjects, request)
    accounting = await start_replica(ncs[0], subjects)
    try:
        flaky = _LostAck(accounting._notes._js)
        accounting._notes._js = flaky  # type: ignore[assignment]
        with pytest.raises(nats.errors.TimeoutError):
            await accounting.settle_many([(make_record(request), 4.0)])
        assert not flaky.armed

        async def counted() -> bool:
            await accounting.settle_many([(make_record(request), 4.0)])  # the batch retried (and again)
            return await counter.read(spend) == 4_000_000

        await poll(counted, "the settlement's increments were never applied", timeout=10)
    finally:
        await accounting.stop()


async def test_the_budget_alerts_of_a_batch_are_published_even_when_one_record_of_it_fails(
    ncs: list[Client], subjects: Subjects
) -> None:
    """One record's state cannot be moved (the batch raises and is retried); another's settlement crosses its
    budget's 50% alert: the alert is published all the same, once (it was skipped: on the retry that record is
    settled already)."""
    nc = ncs[2]
    await ensure_counter_streams(nc, subjects)
    await ensure_events_stream(nc.jetstream(), subjects)
    counter = Counters(nc)
    spend = subjects.spend_counter("key.k", "2026-12")
    hold = Hold(
        subject=spend, micro_usd=W, scope="key.k", period="monthly", period_key="2026-12", amount_micro=5_000_000
    )
    good = Reservation(request_id=uuid.uuid4().hex, holds=[msgspec.structs.replace(hold, alerts=[50])])
    bad = Reservation(request_id=uuid.uuid4().hex, holds=[hold])
    await counter.add(spend, 2 * W)
    alerts = await nc.subscribe(subjects.events_alert.name)
    accounting = await start_replica(ncs[0], subjects)
    move = accounting._notes.move

    async def fails_for_bad(state: ReservationState, expected: int, data: bytes | None = None) -> bool:
        if state.reservation.request_id == bad.request_id:
            raise TimeoutError("the reservations stream did not answer")
        return await move(state, expected, data)

    accounting._notes.move = fails_for_bad  # type: ignore[method-assign]
    try:
        with pytest.raises(TimeoutError):
            await accounting.settle_many([(make_record(good), 4.0), (make_record(bad), 0.5)])
        alert = subjects.events_alert.decode((await alerts.next_msg(timeout=10)).data)
        assert (alert.scope, alert.threshold_pct, alert.spent_usd) == ("key.k", 50, 4.0)
        accounting._notes.move = move  # type: ignore[method-assign]
        await accounting.settle_many([(make_record(good), 4.0), (make_record(bad), 0.5)])  # the batch retried
        assert await counter.read(spend) == 4_500_000
        with pytest.raises(nats.errors.TimeoutError):
            await alerts.next_msg(timeout=0.5)  # (published once: the retry's increment of it is a duplicate)
    finally:
        await alerts.unsubscribe()
        await accounting.stop()


async def test_the_budget_alert_of_increments_paid_late_is_published_when_they_are_paid(
    ncs: list[Client], subjects: Subjects
) -> None:
    """The counters stream is away when a record is settled: its increments are owed, and when they are paid (the
    next reap) the 50% crossing they make is published (it was never checked)."""
    nc = ncs[2]
    await ensure_counter_streams(nc, subjects)
    await ensure_events_stream(nc.jetstream(), subjects)
    spend = subjects.spend_counter("key.k", "2026-12")
    hold = Hold(
        subject=spend,
        micro_usd=W,
        scope="key.k",
        period="monthly",
        period_key="2026-12",
        amount_micro=5_000_000,
        alerts=[50],
    )
    request = Reservation(request_id=uuid.uuid4().hex, holds=[hold])
    alerts = await nc.subscribe(subjects.events_alert.name)
    accounting = await start_replica(ncs[0], subjects)
    try:
        reply = await nc.request(f"$JS.API.STREAM.DELETE.{subjects.counters_stream}", b"", timeout=5)
        assert json.loads(reply.data).get("success"), reply.data
        with pytest.raises(CounterError):
            await accounting.settle_many([(make_record(request), 4.0)])
        await ensure_counter_streams(nc, subjects)  # the counters are back
        await accounting.reap()  # pays what is owed
        alert = subjects.events_alert.decode((await alerts.next_msg(timeout=10)).data)
        assert (alert.scope, alert.threshold_pct, alert.spent_usd) == ("key.k", 50, 4.0)
        assert await Counters(nc).read(subjects.settled_counter("key.k", "2026-12")) == 4_000_000
    finally:
        await alerts.unsubscribe()
        await accounting.stop()


def _job_control(nc: Client, subjects: Subjects) -> JobControl:
    """A batch replica's JobControl, for its reservation's give-back alone (no queue or files)."""
    worker = SimpleNamespace(env=SimpleNamespace(js=nc.jetstream(), subjects=subjects, timeout_s=5.0))
    return JobControl(worker, None, None, Reserver(Counters(nc), subjects))  # type: ignore[arg-type]


async def test_a_batch_jobs_give_back_that_failed_is_done_by_the_replica_taking_over_once(
    ncs: list[Client], subjects: Subjects
) -> None:
    """A job's finalizing gives back what its items did not take, and the counters are away: the give-back fails
    after the job's reservation moved. The replica that takes the finalizing over gives it back (it found the
    reservation `settled` and gave nothing: the budget stayed short by it until the period ended), once."""
    nc = ncs[2]
    await ensure_counter_streams(nc, subjects)
    spend = subjects.spend_counter("key.k", "2026-12")
    now = time.time()
    job = BatchJob(
        id=f"batch_{uuid.uuid4().hex}",
        status="finalizing",
        endpoint="/v1/chat/completions",
        caller=Caller(key_id="k", team="t"),
        holds=[Hold(subject=spend, micro_usd=10 * W)],
        reserved_micro=10 * W,
        created_at=now,
        expires_at=now + 3600,
    )
    await publish_state(nc, subjects, job_reservation(job.id, job.holds, 10 * W, job.expires_at))
    reply = await nc.request(f"$JS.API.STREAM.DELETE.{subjects.counters_stream}", b"", timeout=5)
    assert json.loads(reply.data).get("success"), reply.data
    with pytest.raises(CounterError):
        await _job_control(ncs[0], subjects)._release(job, 6 * W)
    await ensure_counter_streams(nc, subjects)  # the counters are back (holding the job's reservation again)
    counter = Counters(nc)
    await counter.add(spend, 10 * W)
    takeover = _job_control(ncs[1], subjects)
    await takeover._release(job, 6 * W)
    assert await counter.read(spend) == 4 * W
    await takeover._release(job, 6 * W)  # finalizing once more: nothing more is given back
    assert await counter.read(spend) == 4 * W
    msg = await nc.jetstream().get_last_msg(subjects.reservations_stream, subjects.reservation(job.id).name)
    assert msgspec.msgpack.decode(msg.data or b"", type=ReservationState).state == "settled"
