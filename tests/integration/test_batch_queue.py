"""The work queue from the producer's side, against a real nats-server: an item published again (a retry after a
lost acknowledgement, a re-run pipeline, a second process with the same credential) is one message in the queue;
and the queue has limits, so a producer filling it is refused with a clear error instead of filling JetStream."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from gatehouse.batch import BatchClient, BatchError
from gatehouse.credentials import ensure_producer
from gatehouse.natsserver import NatsServer
from services.batch.store import ItemQueue, QueueLimits, QueueUnavailable
from shared.producers import Namespace
from shared.schemas.batch import BatchItem, item_message_id, producer_id_secret
from shared.subjects import Subjects

pytestmark = pytest.mark.timeout(60)

RAW = json.dumps({"model": "mock-1", "messages": [{"role": "user", "content": "hello"}]}).encode()
RETENTION_S = 86400.0
# JetStream reserves a queue's max_bytes from its store, which the session's tests share
SMALL = QueueLimits(max_bytes=1024 * 1024, max_items=1000, max_items_per_job=100)


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[Client]:
    nc = await nats.connect(url)
    try:
        yield nc
    finally:
        await nc.close()


def item(job_id: str, item_id: str, token: str = "") -> BatchItem:
    return BatchItem(job_id=job_id, item_id=item_id, body=msgspec.Raw(RAW), token=token)


async def queued(nc: Client, subjects: Subjects, subject: str = "") -> int:
    info = await nc.jetstream().stream_info(subjects.batch_items_stream, subjects_filter=subject or None)
    if subject:
        return (info.state.subjects or {}).get(subject, 0)
    return info.state.messages


def lose_first_ack(client: BatchClient) -> None:
    """The client's next publish reaches the stream, but its acknowledgement is lost (as in a reconnect)."""
    publish = client._js.publish
    lost = [True]

    async def publish_then_lose_ack(*args: Any, **kwargs: Any) -> object:
        ack = await publish(*args, **kwargs)
        if lost.pop() if lost else False:
            raise NatsTimeoutError
        return ack

    client._js.publish = publish_then_lose_ack  # type: ignore[method-assign]


async def test_a_retry_after_a_lost_ack_and_a_rerun_pipeline_add_no_second_copy(
    nats_server: NatsServer, subjects: Subjects
) -> None:
    async with connected(nats_server.url) as nc, connected(nats_server.url) as nc2:
        await ItemQueue(nc.jetstream(), subjects, RETENTION_S, 5.0, SMALL).ensure()
        job = f"j{uuid.uuid4().hex[:8]}"
        subject = subjects.batch_items(job).name
        first = BatchClient(nc, subjects.prefix, timeout_s=5)
        lose_first_ack(first)
        with pytest.raises(NatsTimeoutError):
            await first.publish([item(job, "a", token="t0ken")])
        assert await queued(nc, subjects, subject) == 1  # it did arrive
        # the pipeline retries: JetStream answers `duplicate`, and that is the end of it
        assert await first.publish([item(job, "a", token="t0ken")]) == 1
        assert await queued(nc, subjects, subject) == 1
        # the pipeline crashed and runs again (a new process: a new client with nothing remembered)
        rerun = BatchClient(nc2, subjects.prefix, timeout_s=5)
        assert await rerun.publish([item(job, "a", token="t0ken"), item(job, "b", token="t0ken")]) == 2
        assert await queued(nc, subjects, subject) == 2  # only `b` is new


async def test_a_proofless_items_id_is_the_credentials_and_nobody_elses(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    """Without a token or key, the message id is signed with the credential's seed: two processes with the same
    credential give an item one id (one message); another credential's id for it differs, so it cannot be used
    first to have the real item dropped; the bare `<job>/<item>` is not the id."""
    seed = ensure_producer(tmp_path, Namespace("team", "ml"))[0].seed_file
    other = ensure_producer(tmp_path, Namespace("team", "ds"))[0].seed_file
    job = f"j{uuid.uuid4().hex[:8]}"
    mine = item_message_id(item(job, "a"), producer_id_secret(seed.read_bytes()))
    assert mine.startswith(f"{job}/a/") and mine != item_message_id(item(job, "a"), producer_id_secret(b"SUAFAKE"))
    assert mine != item_message_id(item(job, "a"), producer_id_secret(other.read_bytes()))
    assert mine == item_message_id(item(job, "a"), producer_id_secret(seed.read_bytes().strip() + b"\n"))

    async with connected(nats_server.url) as nc:
        await ItemQueue(nc.jetstream(), subjects, RETENTION_S, 5.0, SMALL).ensure()
        subject = subjects.batch_items(job).name
        # someone else publishes first under the bare id: the real item still gets in
        await nc.jetstream().publish(subject, b"{}", headers={"Nats-Msg-Id": f"{job}/a"})
        one = await BatchClient.connect(nats_server.url, prefix=subjects.prefix, timeout_s=5, seed_file=str(seed))
        two = await BatchClient.connect(nats_server.url, prefix=subjects.prefix, timeout_s=5, seed_file=str(seed))
        try:
            assert await one.publish([item(job, "a")]) == 1
            assert await two.publish([item(job, "a")]) == 1
            assert await queued(nc, subjects, subject) == 2  # the squatter's message and one copy of the item
        finally:
            await one.close()
            await two.close()


async def test_a_full_queue_refuses_the_producer_clearly_and_one_job_cannot_fill_it(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    subjects = Subjects(f"q{uuid.uuid4().hex[:6]}")
    async with connected(nats_server.url) as nc:
        limits = QueueLimits(max_bytes=64 * 1024, max_items=5, max_items_per_job=3)
        await ItemQueue(nc.jetstream(), subjects, RETENTION_S, 5.0, limits).ensure()
        client = BatchClient(nc, subjects.prefix, timeout_s=5)
        assert await client.publish([item("big", str(n), token="t") for n in range(3)]) == 3
        with pytest.raises(BatchError) as per_job:
            await client.publish([item("big", "3", token="t")])
        assert (per_job.value.info.status, per_job.value.info.code) == (429, "batch_queue_full")
        assert "per subject" in per_job.value.info.message
        # the job's queued items are kept (a work queue never drops them for new ones), other jobs still get in
        assert await queued(nc, subjects) == 3
        assert await client.publish([item("small", "0", token="t"), item("small", "1", token="t")]) == 2
        with pytest.raises(BatchError) as whole:
            await client.publish([item("third", "0", token="t")])
        assert whole.value.info.code == "batch_queue_full" and "maximum messages exceeded" in whole.value.info.message
        assert await queued(nc, subjects) == 5


async def test_a_queue_made_without_limits_is_left_alone_and_reported(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Only admins manage streams: the batch service does not change a queue an earlier release made, but says which
    command sets its limits."""
    subjects = Subjects(f"q{uuid.uuid4().hex[:6]}")
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await js.add_stream(  # as releases before the limits made it
            StreamConfig(
                name=subjects.batch_items_stream,
                subjects=[subjects.batch_items_wildcard],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                max_age=RETENTION_S,
                duplicate_window=7200,
            )
        )
        limits = QueueLimits(max_bytes=1024 * 1024, max_items=100, max_items_per_job=10)
        with caplog.at_level(logging.WARNING, logger="gatehouse.batch.store"):
            await ItemQueue(js, subjects, RETENTION_S, 5.0, limits).ensure()
        config = (await js.stream_info(subjects.batch_items_stream)).config
        assert (config.max_bytes, config.max_msgs, config.max_msgs_per_subject) == (-1, -1, -1)
        command = (
            f"nats stream edit {subjects.batch_items_stream} --max-bytes 1048576 --max-msgs 100"
            " --max-msgs-per-subject 10 --discard new --discard-per-subject"
        )
        assert any(command in r.getMessage() for r in caplog.records)
        caplog.clear()
        # once set as configured, nothing to say
        await js.update_stream(ItemQueue(js, subjects, RETENTION_S, 5.0, limits).config())
        with caplog.at_level(logging.WARNING, logger="gatehouse.batch.store"):
            await ItemQueue(js, subjects, RETENTION_S, 5.0, limits).ensure()
        assert not caplog.records


async def test_a_queue_jetstream_cannot_reserve_is_a_clear_error(nats_server: NatsServer) -> None:
    subjects = Subjects(f"q{uuid.uuid4().hex[:6]}")
    async with connected(nats_server.url) as nc:
        huge = QueueLimits(max_bytes=1024**5, max_items=10, max_items_per_job=10)  # a pebibyte
        with pytest.raises(QueueUnavailable, match="GATEHOUSE_BATCH_QUEUE_MAX_BYTES"):
            await ItemQueue(nc.jetstream(), subjects, RETENTION_S, 5.0, huge).ensure()
