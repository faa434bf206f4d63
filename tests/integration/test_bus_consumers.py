"""Durable pull consumers against a real nats-server: created, brought up to date when the settings change,
used as they are when they cannot be changed, and bound either way."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from gatehouse.natsserver import NatsServer
from shared.bus import bind_pull_consumer
from shared.subjects import Subjects

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def js(nats_server: NatsServer, subjects: Subjects) -> AsyncIterator[JetStreamContext]:
    nc: Client = await nats.connect(nats_server.url)
    js = nc.jetstream(timeout=10)
    await js.add_stream(StreamConfig(name=f"{subjects.prefix}_S", subjects=[f"{subjects.prefix}.>"]))
    try:
        yield js
    finally:
        await nc.close()


async def _bind(js: JetStreamContext, subjects: Subjects, ack_wait: float) -> JetStreamContext.PullSubscription:
    return await bind_pull_consumer(
        js,
        f"{subjects.prefix}_S",
        "worker",
        subject=f"{subjects.prefix}.a",
        ack_wait=ack_wait,
        max_deliver=5,
        max_ack_pending=100,
    )


async def test_creates_the_consumer_and_fetches_what_is_published_on_its_subject(
    js: JetStreamContext, subjects: Subjects
) -> None:
    await js.publish(f"{subjects.prefix}.a", b"before")  # delivered from the start of the stream
    await js.publish(f"{subjects.prefix}.b", b"other subject")
    psub = await _bind(js, subjects, 30.0)
    info = await js.consumer_info(f"{subjects.prefix}_S", "worker")
    assert info.config.ack_policy == AckPolicy.EXPLICIT
    assert info.config.deliver_policy == DeliverPolicy.ALL
    assert (info.config.filter_subject, info.config.max_deliver, info.config.max_ack_pending) == (
        f"{subjects.prefix}.a",
        5,
        100,
    )
    msgs = await psub.fetch(10, timeout=5)
    assert [m.data for m in msgs] == [b"before"]


async def test_a_second_binding_updates_the_editable_settings(js: JetStreamContext, subjects: Subjects) -> None:
    await _bind(js, subjects, 30.0)
    await _bind(js, subjects, 90.0)
    info = await js.consumer_info(f"{subjects.prefix}_S", "worker")
    assert info.config.ack_wait == 90.0


async def test_a_consumer_that_cannot_be_updated_is_used_as_it_is_and_logged(
    js: JetStreamContext, subjects: Subjects, caplog: pytest.LogCaptureFixture
) -> None:
    # deliver_policy cannot change on an existing consumer
    await js.add_consumer(
        f"{subjects.prefix}_S",
        ConsumerConfig(
            durable_name="worker",
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW,
            filter_subject=f"{subjects.prefix}.a",
        ),
    )
    with caplog.at_level(logging.WARNING, logger="shared.bus"):
        psub = await _bind(js, subjects, 30.0)
    assert "consumer worker exists with a config that cannot be updated" in caplog.text
    info = await js.consumer_info(f"{subjects.prefix}_S", "worker")
    assert info.config.deliver_policy == DeliverPolicy.NEW
    await js.publish(f"{subjects.prefix}.a", b"after")
    msgs = await psub.fetch(10, timeout=5)
    assert [m.data for m in msgs] == [b"after"]


async def test_a_consumer_of_several_subjects_is_made_with_them_and_an_older_one_gets_them_too(
    js: JetStreamContext, subjects: Subjects
) -> None:
    stream, a, b = f"{subjects.prefix}_S", f"{subjects.prefix}.a", f"{subjects.prefix}.b"
    await _bind(js, subjects, 30.0)  # one subject (as a consumer made before the second subject existed)
    await js.publish(b, b"on b")
    psub = await bind_pull_consumer(
        js, stream, "worker", subject=[a, b], ack_wait=30.0, max_deliver=5, max_ack_pending=100, inactive_threshold=60
    )
    info = await js.consumer_info(stream, "worker")
    assert sorted(info.config.filter_subjects or []) == [a, b] and info.config.inactive_threshold == 60
    msgs = await psub.fetch(10, timeout=5)
    assert [m.data for m in msgs] == [b"on b"]
