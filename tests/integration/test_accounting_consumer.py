"""The event consumer in-process, against a real nats-server and chDB: a ClickHouse outage costs no
delivery attempts and loses nothing, events that can never be stored do not block the stream, and a
graceful stop stores the batch in hand."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from gatehouse.natsserver import NatsServer
from services.accounting import migrations
from services.accounting.consumer import EventConsumer, Item
from services.accounting.core import REQUEST_COLUMNS, event_row
from services.accounting.sink import ClickHouseSink
from shared.bus import MSG_ID, ensure_events_stream, publish_event
from shared.subjects import Subjects, encode
from tests.integration.accounting_support import make_event

pytestmark = pytest.mark.timeout(60)
ACK_WAIT_S = 2.0


@pytest.fixture
async def bus(nats_server: NatsServer, subjects: Subjects) -> AsyncIterator[tuple[Client, JetStreamContext]]:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await ensure_events_stream(js, subjects)
    yield nc, js
    await nc.close()


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[ClickHouseSink]:
    sink = ClickHouseSink(f"chdb://{tmp_path / 'clickhouse'}", readable=migrations.tables(migrations.load()))
    yield sink
    await sink.close()  # chDB: one data path per process at a time, so close before the next test


async def rows_of(sink: ClickHouseSink, sql: str, max_rows: int) -> list[list[object]]:
    return (await sink.query(sql, max_rows)).rows


def consumer_for(
    bus: tuple[Client, JetStreamContext], subjects: Subjects, sink: ClickHouseSink, **kw: float
) -> EventConsumer:
    options: dict[str, float] = {
        "batch_size": 500,
        "flush_interval_s": 0.2,
        "ack_wait_s": ACK_WAIT_S,
        "max_deliver": 2,
        "retry_s": 0.2,
        "retry_max_s": 0.4,
        **kw,
    }
    return EventConsumer(
        *bus,
        subjects,
        sink,
        migrations.load(),
        {"openai": "openai"},
        durable="accounting",
        batch_size=int(options["batch_size"]),
        flush_interval_s=options["flush_interval_s"],
        ack_wait_s=options["ack_wait_s"],
        max_deliver=int(options["max_deliver"]),
        retry_s=options["retry_s"],
        retry_max_s=options["retry_max_s"],
    )


@asynccontextmanager
async def running(consumer: EventConsumer) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(consumer.run())
    await asyncio.wait_for(consumer.ready.wait(), 20)
    try:
        yield task
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 20)


async def until(check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        ok = check()
        if not isinstance(ok, bool):
            ok = await ok
        if ok:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def publish(js: JetStreamContext, subjects: Subjects, ids: list[str], ended: float | None = None) -> None:
    """`ids` as request events under their own message ids; `ended`: when the requests ended (default: now)."""
    for i in ids:
        event = make_event(i) if ended is None else make_event(i, received_at=ended - 1, finished_at=ended)
        await publish_event(js, subjects.events_request.name, event, i, timeout_s=5.0)


async def test_clickhouse_outage_holds_the_batch_without_redelivery_and_loses_nothing(
    bus: tuple[Client, JetStreamContext], subjects: Subjects, sink: ClickHouseSink
) -> None:
    _, js = bus
    consumer = consumer_for(bus, subjects, sink)
    first = [uuid.uuid4().hex for _ in range(20)]
    during = [uuid.uuid4().hex for _ in range(30)]
    # the first requests ended 15 minutes ago: a copy published again under another message id (past JetStream's
    # duplicate window) necessarily enters the stream that long after its event, and only such a copy is looked
    # up; a fresh one was caught only when it happened to share a batch with a failed insert (verify_all)
    ended = time.time() - 900
    async with running(consumer):
        await publish(js, subjects, first, ended)
        await until(lambda: consumer.stored.get("requests", 0) == 20)

        await sink.command("DETACH TABLE requests")  # ClickHouse cannot take the inserts any more
        await publish(js, subjects, during)
        # and one event already stored, redelivered under a new message id
        again = make_event(first[0], received_at=ended - 1, finished_at=ended)
        await js.publish(subjects.events_request.name, encode(again), headers={MSG_ID: "again"})
        await until(lambda: _held(js, subjects, 31))  # the consumer has the whole batch in hand
        # another replica asking for work for three ack waits gets none of the held batch: without the
        # keepalive each event would go to it once per ack wait, and with max_deliver=2 be parked by now
        replica = await js.pull_subscribe_bind(durable="accounting", stream=subjects.events_stream)
        with pytest.raises(TimeoutError):
            await replica.fetch(100, timeout=3 * ACK_WAIT_S)
        await replica.unsubscribe()
        info = await js.consumer_info(subjects.events_stream, "accounting")
        assert info.num_redelivered == 0 and info.num_ack_pending == 31
        assert consumer.stored["requests"] == 20

        await sink.command("ATTACH TABLE requests")
        await until(lambda: consumer.stored["requests"] == 50)
        await until(lambda: _acked_all(js, subjects))

    rows = await rows_of(sink, "SELECT count(), uniqExact(event_id) FROM requests", 10)
    assert rows == [[50, 50]]
    stored = await rows_of(sink, "SELECT event_id FROM requests", 100)
    assert {r[0] for r in stored} == set(first + during)
    # work-queue stream: what is stored and acked is gone from NATS
    assert (await js.stream_info(subjects.events_stream)).state.messages == 0


async def test_batches_waiting_behind_a_stalled_insert_are_held_too(
    bus: tuple[Client, JetStreamContext], subjects: Subjects, sink: ClickHouseSink
) -> None:
    # batches of 10: during the outage one batch is being stored, the next is prepared and waits for it, and
    # the one after that has been fetched meanwhile; none of the three may go back to the stream
    _, js = bus
    consumer = consumer_for(bus, subjects, sink, batch_size=10)
    during = [uuid.uuid4().hex for _ in range(30)]
    async with running(consumer):
        await sink.command("DETACH TABLE requests")
        await publish(js, subjects, during)
        await until(lambda: _held(js, subjects, 30))
        replica = await js.pull_subscribe_bind(durable="accounting", stream=subjects.events_stream)
        with pytest.raises(TimeoutError):
            await replica.fetch(100, timeout=3 * ACK_WAIT_S)
        await replica.unsubscribe()
        info = await js.consumer_info(subjects.events_stream, "accounting")
        assert info.num_redelivered == 0 and info.num_ack_pending == 30

        await sink.command("ATTACH TABLE requests")
        await until(lambda: consumer.stored.get("requests", 0) == 30)
        await until(lambda: _acked_all(js, subjects))
    rows = await rows_of(sink, "SELECT count(), uniqExact(event_id) FROM requests", 10)
    assert rows == [[30, 30]]


async def _held(js: JetStreamContext, subjects: Subjects, count: int) -> bool:
    info = await js.consumer_info(subjects.events_stream, "accounting")
    return bool(info.num_ack_pending == count and info.num_pending == 0)


async def _acked_all(js: JetStreamContext, subjects: Subjects) -> bool:
    info = await js.consumer_info(subjects.events_stream, "accounting")
    return bool(info.num_ack_pending == 0 and info.num_pending == 0)


async def test_a_batch_stored_by_a_process_that_died_before_acking_is_not_stored_again(
    bus: tuple[Client, JetStreamContext], subjects: Subjects, sink: ClickHouseSink
) -> None:
    _, js = bus
    consumer = consumer_for(bus, subjects, sink)
    stored_before_crash = [f"a{n}" for n in range(10)]
    await sink.migrate(migrations.load())
    rows = [
        event_row(subjects, subjects.events_request.name, encode(make_event(i)), {})[1] for i in stored_before_crash
    ]
    assert await sink.insert_new({"requests": rows}) == {"requests": 10}
    # the same events come back from the stream, among new ones: the process that stored them took them from
    # the stream and died before acking, so they come again as redeliveries
    fresh = [f"b{n}" for n in range(10)]
    await publish(js, subjects, stored_before_crash)
    await consumer_for(bus, subjects, sink)._subscribe()  # the durable consumer, as the service makes it
    died = await js.pull_subscribe_bind(durable="accounting", stream=subjects.events_stream)
    assert len(await died.fetch(10, timeout=5)) == 10  # taken, never acked
    await died.unsubscribe()
    await publish(js, subjects, fresh)
    async with running(consumer):
        await until(lambda: _acked_all(js, subjects), timeout=3 * ACK_WAIT_S + 20)
    assert consumer.stored["requests"] == 10 and consumer.skipped == 10
    counts = await rows_of(sink, "SELECT count(), uniqExact(event_id) FROM requests", 10)
    assert counts == [[20, 20]]
    # the materialized rollup saw each event once too (a duplicate insert would count it twice)
    rollup = await rows_of(sink, "SELECT sum(requests) FROM requests_per_minute", 10)
    assert rollup == [[20]]


async def test_events_that_can_never_be_stored_are_dropped_without_blocking_the_rest(
    bus: tuple[Client, JetStreamContext], subjects: Subjects, sink: ClickHouseSink
) -> None:
    _, js = bus
    consumer = consumer_for(bus, subjects, sink)
    await js.publish(subjects.events_request.name, b"\x93not an event", headers={MSG_ID: "garbage"})
    await js.publish(f"{subjects.prefix}.events.unknown", encode(make_event("x")), headers={MSG_ID: "unknown"})
    good = [uuid.uuid4().hex for _ in range(10)]
    await publish(js, subjects, good)
    async with running(consumer):
        await until(lambda: consumer.stored.get("requests", 0) == 10)
        await until(lambda: _acked_all(js, subjects))
    assert consumer.dropped == 2
    rows = await rows_of(sink, "SELECT count() FROM requests", 10)
    assert rows == [[10]]


async def test_a_row_clickhouse_cannot_encode_is_isolated_and_the_others_are_stored(
    bus: tuple[Client, JetStreamContext], subjects: Subjects, sink: ClickHouseSink
) -> None:
    _, js = bus
    consumer = consumer_for(bus, subjects, sink)
    await sink.migrate(migrations.load())
    ids = [f"e{n}" for n in range(5)]
    await publish(js, subjects, ids)
    psub = await js.pull_subscribe(subjects.events_wildcard, durable="probe", stream=subjects.events_stream)
    msgs = await psub.fetch(5, timeout=5)
    items = [Item(m, *event_row(subjects, m.subject, m.data, {})) for m in msgs]
    # core clamps every value to its column, so no event produces such a row; this stands in for a future bug
    items[3].row[REQUEST_COLUMNS.index("status")] = "not a status"
    stored = await consumer._store(items)  # the batch path after decoding (private: no event can reach it)
    assert stored is not None and [i.row[0] for i in stored] == ["e0", "e1", "e2", "e4"]
    assert consumer.dropped == 1
    rows = await rows_of(sink, "SELECT event_id FROM requests ORDER BY event_id", 10)
    assert rows == [["e0"], ["e1"], ["e2"], ["e4"]]


async def test_graceful_stop_stores_the_batch_in_hand(
    bus: tuple[Client, JetStreamContext], subjects: Subjects, sink: ClickHouseSink
) -> None:
    _, js = bus
    # a batching window far longer than the test: a stop that sat it out would fail the wait below. The first
    # event is in the stream before the consumer starts, so its first pull takes it and the next pull waits for
    # the window: the 25 published then are still in the stream when stop() comes (watching for them between
    # their pull and their ack raced the store, which under load could end first)
    consumer = consumer_for(bus, subjects, sink, flush_interval_s=600.0)
    first = uuid.uuid4().hex
    await publish(js, subjects, [first])
    ids = [uuid.uuid4().hex for _ in range(25)]
    async with running(consumer) as task:
        await until(lambda: consumer.stored.get("requests", 0) == 1)
        await publish(js, subjects, ids)

        async def waiting() -> bool:
            info = await js.consumer_info(subjects.events_stream, "accounting")
            return bool(info.num_pending == 25 and info.num_ack_pending == 0)

        await until(waiting)
        consumer.stop()
        await asyncio.wait_for(task, 60)  # pulled what was there at once, without waiting for the window
    assert consumer.stored["requests"] == 26
    await until(lambda: _acked_all(js, subjects), timeout=5)  # the server applies acks asynchronously
    rows = await rows_of(sink, "SELECT count() FROM requests", 10)
    assert rows == [[26]]


async def test_a_deleted_consumer_is_set_up_again(
    bus: tuple[Client, JetStreamContext], subjects: Subjects, sink: ClickHouseSink
) -> None:
    _, js = bus
    consumer = consumer_for(bus, subjects, sink)
    async with running(consumer):
        await publish(js, subjects, ["before"])
        await until(lambda: consumer.stored.get("requests", 0) == 1)
        await js.delete_consumer(subjects.events_stream, "accounting")  # an operator's mistake
        await publish(js, subjects, ["after"])
        await until(lambda: consumer.stored.get("requests", 0) == 2)
    rows = await rows_of(sink, "SELECT event_id FROM requests ORDER BY event_id", 10)
    assert rows == [["after"], ["before"]]
