"""Stored request records on their way to on_event plugins, against a real nats-server and chDB: accounting
forwards each with the price it stored, a window of publishes at a time, and the dispatcher hands that price
to the plugins instead of pricing the record again."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck

from services.accounting import migrations, webhooks
from services.accounting.consumer import EventConsumer
from services.accounting.core import COST_HEADER, REQUEST_COLUMNS, event_row
from services.accounting.sink import ClickHouseSink
from services.accounting.webhooks import WebhookDispatcher
from shared.bus import MSG_ID, PUBLISH_WINDOW, publish_windowed
from shared.plugins import BoundHook, HookResult, HookRunner, RequestView
from shared.pricing import Rates
from shared.schemas.chat import Usage
from shared.subjects import Subjects, encode
from tests.integration.accounting_support import make_event

pytestmark = pytest.mark.timeout(120)
KINDS = {"mock": "mock"}
RATES = {"mock/mock-1": Rates(input=1.5, output=6.0)}  # USD per million tokens
# more records than a window of publishes, stored in one batch
RECORDS = 3 * PUBLISH_WINDOW


class CountingPublishes(JetStreamContext):
    """JetStream as it is, counting the publishes to one subject that await their acks at once."""

    def __init__(self, nc: Client, subject: str) -> None:
        super().__init__(nc)
        self.subject = subject
        self.awaiting = 0
        self.most = 0

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float | None = None,
        stream: str | None = None,
        headers: dict[str, Any] | None = None,
        msg_ttl: float | None = None,
    ) -> PubAck:
        if subject != self.subject:
            return await super().publish(subject, payload, timeout, stream, headers, msg_ttl)
        self.awaiting += 1
        self.most = max(self.most, self.awaiting)
        try:
            return await super().publish(subject, payload, timeout, stream, headers, msg_ttl)
        finally:
            self.awaiting -= 1


async def until_true(check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_stored_records_are_forwarded_with_their_stored_price_a_window_at_a_time(
    nc: Client, subjects: Subjects, tmp_path: Path
) -> None:
    js = CountingPublishes(nc, subjects.hooks_request.name)
    ids = [uuid.uuid4().hex for _ in range(RECORDS)]
    # published before accounting starts, so that one pull takes them all and they are stored as one batch
    await publish_windowed(
        js.publish(
            subjects.events_request.name,
            encode(make_event(i, usage=Usage(input_tokens=n + 1, output_tokens=7))),
            headers={MSG_ID: i},
        )
        for n, i in enumerate(ids)
    )
    sink = ClickHouseSink(f"chdb://{tmp_path / 'clickhouse'}", readable=migrations.tables(migrations.load()))
    consumer = EventConsumer(
        nc, js, subjects, sink, migrations.load(), KINDS,
        durable="accounting", batch_size=2 * RECORDS, flush_interval_s=0.2, ack_wait_s=30, max_deliver=2,
        retry_s=0.2, retry_max_s=0.4, rates=RATES, forward_requests=True,
    )  # fmt: skip

    async def forwarded() -> bool:
        return (await js.stream_info(subjects.hooks_stream)).state.messages >= RECORDS

    task = asyncio.create_task(consumer.run())
    try:
        await until_true(forwarded)
        stored = dict((await sink.query("SELECT event_id, cost_usd FROM requests", 2 * RECORDS)).rows)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 20)
        await sink.close()
    assert len(stored) == RECORDS and len(set(stored.values())) == RECORDS  # priced, each differently
    info = await js.stream_info(subjects.hooks_stream)
    carried = {}
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(subjects.hooks_stream, seq)
        assert msg.headers is not None
        carried[msg.headers[MSG_ID]] = msg.headers[COST_HEADER]
    assert carried == {event_id: repr(cost) for event_id, cost in stored.items()}
    # a batch of thousands must not be thousands of publishes in the air at once
    assert 0 < js.most <= PUBLISH_WINDOW


async def test_on_event_plugins_get_the_carried_price_and_only_a_record_without_one_is_priced(
    nc: Client, subjects: Subjects, monkeypatch: pytest.MonkeyPatch
) -> None:
    js = nc.jetstream()
    priced_here: list[str] = []

    def counting_event_row(*args: Any) -> Any:
        priced_here.append(args[1])
        return event_row(*args)

    monkeypatch.setattr(webhooks, "event_row", counting_event_row)
    seen: dict[str, float] = {}

    async def on_event(view: RequestView) -> HookResult | None:
        seen[view.request_id] = view.cost_usd
        return None

    usage = Usage(input_tokens=1000, output_tokens=500)
    events = {name: make_event(f"{name}-{uuid.uuid4().hex}", usage=usage) for name in ("carried", "none", "old")}
    # a price pricing this record would never give: only the header can be its source
    headers = {"carried": {COST_HEADER: "0.125"}, "none": {COST_HEADER: "none"}, "old": {}}
    for name, event in events.items():
        await js.publish(subjects.hooks_request.name, encode(event), headers={MSG_ID: event.event_id, **headers[name]})
    dispatcher = WebhookDispatcher(
        js, subjects, [],
        event_hooks=HookRunner({"on_event": [BoundHook("seen", on_event, 5.0, False)]}),
        kinds=KINDS, rates=RATES,
    )  # fmt: skip

    async def all_seen() -> bool:
        return len(seen) == len(events)

    task = asyncio.create_task(dispatcher.run())
    try:
        await until_true(all_seen)
    finally:
        dispatcher.stop()
        await asyncio.wait_for(task, 20)
    _, row, _ = event_row(subjects, subjects.events_request.name, encode(events["old"]), KINDS, RATES)
    listed = row[REQUEST_COLUMNS.index("cost_usd")]
    assert listed == (1000 * 1.5 + 500 * 6.0) / 1e6
    assert seen == {
        events["carried"].request_id: 0.125,
        events["none"].request_id: 0.0,  # stored unpriced: the view shows 0, as before
        events["old"].request_id: listed,  # forwarded before the price travelled along: priced here
    }
    assert len(priced_here) == 1
