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

import msgspec
import nats
import pytest
from nats.aio.client import Client

from services.accounting.settlement import Reservations
from shared.bus import ensure_events_stream
from shared.counters import Count, CounterError, Counters, Op, ensure_counter_streams
from shared.event_publisher import EventPublisher
from shared.records import RecordPublisher
from shared.schemas.chat import Hold, Reservation
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

        async def fails_for_bad(state: ReservationState, expected: int) -> bool:
            if state.reservation.request_id == bad.request_id:
                raise TimeoutError("the reservations stream did not answer")
            return await move(state, expected)

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
