"""In-flight claims on batch items against a real nats-server: two copies of one item given to two batch replicas
at once reach the pipeline once and leave one result, one notice and one record; a claim left by a replica that
died blocks its item only until the claim expires; an item queued twice under two message ids does not
double the output; and the claims themselves are compare-and-set, renewed, released and expired by the server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.msg import Msg
from nats.js.api import StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError

from gatehouse.batch import BatchObject
from gatehouse.natsserver import NatsServer
from services.batch.claims import Claims, claim_key
from services.batch.plan import item_token
from services.batch.store import Results
from shared.bus import MSG_ID
from shared.schemas.batch import BatchItem, CreateJob, StoredResult, item_message_id
from shared.subjects import Subjects
from tests.integration.batch_support import KEY, Harness, harness

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def h(nats_server: NatsServer, subjects: Subjects, tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(nats_server.url, subjects, tmp_path) as h:
        yield h


async def one_item_job(h: Harness, concurrency: int = 0) -> tuple[BatchObject, str]:
    """A declared job of one item, `a` (model mock-1), and the item's token."""
    job = await h.client.create(CreateJob(key=KEY, model="mock-1", items=1, input_tokens=10, concurrency=concurrency))
    return job, item_token(job.id, "a")


@pytest.fixture
async def js(nats_server: NatsServer) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(nats_server.url)
    yield nc.jetstream()
    await nc.close()


def item(job_id: str, item_id: str, result_subject: str = "") -> BatchItem:
    body = {"model": "mock-1", "messages": [{"role": "user", "content": f"item {item_id}"}]}
    return BatchItem(
        job_id=job_id, item_id=item_id, body=msgspec.Raw(json.dumps(body).encode()), result_subject=result_subject
    )


async def until(condition: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not (condition() if callable(condition) else condition):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def notices(h: Harness, subject: str) -> list[Msg]:
    """The result notices published to `subject` (collected from now on)."""
    got: list[Msg] = []

    async def on(msg: Msg) -> None:
        got.append(msg)

    await h.nc.subscribe(subject, cb=on)
    await h.nc.flush()
    return got


async def test_two_replicas_given_the_same_item_at_once_dispatch_it_once_and_leave_one_line(
    h: Harness, subjects: Subjects
) -> None:
    first, second = await h.start_service(), await h.start_service()
    out = subjects.batch_out("claims").name
    lines = await notices(h, out)
    job = await h.client.create(CreateJob(key=KEY, model="mock-1", items=2, input_tokens=20, concurrency=4))
    h.stages.gate = asyncio.Event()  # the provider holds the first copy's call
    the_item = msgspec.structs.replace(item(job.id, "a", out), token=h.client.item_tokens[job.id])
    subject = subjects.batch_items(job.id)
    # two messages of one item (as a redelivery or a producer's republish makes them), both in the queue
    await h.js.publish(subject.name, subject.encode(the_item), headers={MSG_ID: item_message_id(the_item)})
    await h.js.publish(subject.name, subject.encode(the_item), headers={MSG_ID: "a-second-copy"})
    token = item_token(job.id, "a")
    # one copy is with the provider; the other has been delivered too: it found the claim (or, without claims,
    # it would be at the provider as well)
    await until(
        lambda: first.worker.waited + second.worker.waited >= 1 or h.stages.dispatches[token] >= 2,
        "the second copy was never delivered",
    )
    h.stages.gate.set()
    await h.client.publish([item(job.id, "b", out)])
    done = await h.wait(job.id)
    assert done.status == "completed" and done.request_counts.completed == 2
    assert h.stages.dispatches[token] == 1
    assert first.worker.dispatched + second.worker.dispatched == 2
    results = [line async for line in h.client.results(KEY, job.id)]
    assert sorted(line.custom_id or "" for line in results) == ["a", "b"]
    await h.nc.flush()
    await until(lambda: len(lines) >= 2, "result notices")
    assert sorted(json.loads(m.data)["custom_id"] for m in lines) == ["a", "b"]
    assert len({r.event_id for r in await h.records(job.id)}) == 2


async def test_a_claim_left_by_a_replica_that_died_blocks_its_item_only_until_it_expires(
    h: Harness, subjects: Subjects
) -> None:
    service = await h.start_service()
    job, token = await one_item_job(h)
    # what a replica that died with the item at its provider leaves: its claim, and the item back in the queue
    dead = Claims(h.js, subjects.batch_claims_bucket, 3.0, 5.0)
    assert await dead.take(job.id, token, "dead-replica/1") is not None
    await h.client.publish([item(job.id, "a")])
    await until(lambda: service.worker.waited >= 1, "the item was never delivered")
    kv = await h.js.key_value(subjects.batch_claims_bucket)
    entry = await kv.get(claim_key(job.id, token))
    assert entry.value == b"dead-replica/1"  # still the dead replica's claim: the item has not run
    assert h.stages.dispatches[token] == 0
    done = await h.wait(job.id)  # the server expires the claim; the item's next delivery claims and runs it
    assert done.status == "completed" and done.request_counts.completed == 1
    assert h.stages.dispatches[token] == 1


async def test_an_item_queued_under_two_message_ids_does_not_double_the_output(h: Harness, subjects: Subjects) -> None:
    service = await h.start_service()
    out = subjects.batch_out("republish").name
    lines = await notices(h, out)
    job, token = await one_item_job(h, concurrency=4)
    h.stages.gate = asyncio.Event()
    the_item = msgspec.structs.replace(item(job.id, "a", out), token=h.client.item_tokens[job.id])
    subject = subjects.batch_items(job.id)
    # the item is queued twice under two message ids: a replica of an earlier release re-enqueued the file job
    # under the id it used (`<job>/<item>`), or a producer of its own published it under another id
    await h.js.publish(subject.name, subject.encode(the_item), headers={MSG_ID: f"{job.id}/a"})
    await h.client.publish([the_item])
    info = await h.js.stream_info(subjects.batch_items_stream)
    assert info.state.messages == 2
    await until(
        lambda: service.worker.waited >= 1 or h.stages.dispatches[token] >= 2, "the second copy was never delivered"
    )
    h.stages.gate.set()
    done = await h.wait(job.id)
    assert done.status == "completed" and done.request_counts.completed == 1
    assert h.stages.dispatches[token] == 1
    assert [line.custom_id async for line in h.client.results(KEY, job.id)] == ["a"]
    # the job ends only when both copies are acknowledged; the copy answered from the stored result counted
    # nothing and published no second line (a notice goes out before its copy's ack, on this connection)
    info = await h.js.stream_info(subjects.batch_items_stream)
    assert info.state.messages == 0
    await h.nc.flush()
    assert len(lines) == 1 and json.loads(lines[0].data)["custom_id"] == "a"
    assert await h.counter(subjects.batch_counter(job.id, "completed")) == 1


async def test_claims_are_compare_and_set_renewed_released_and_expired_by_the_server(
    js: JetStreamContext, subjects: Subjects
) -> None:
    one = Claims(js, subjects.batch_claims_bucket, 1.0, 5.0)
    other = Claims(js, subjects.batch_claims_bucket, 1.0, 5.0)
    held = await one.take("job", "t1", "one")
    assert held is not None
    assert await other.take("job", "t1", "other") is None  # a live claim
    assert await one.renew(held, "one")
    await one.release(held)
    again = await other.take("job", "t1", "other")  # released: claimed at once
    assert again is not None
    # the server removes a claim nobody renews: then it can be taken, and its old holder's renewal fails
    kv = await js.key_value(subjects.batch_claims_bucket)
    deadline = time.monotonic() + 10
    while True:
        try:
            await kv.get(claim_key("job", "t1"))
        except KeyNotFoundError:
            break
        assert time.monotonic() < deadline, "the claim never expired"
        await asyncio.sleep(0.05)
    third = await one.take("job", "t1", "one")
    assert third is not None
    assert not await other.renew(again, "other") and again.lost
    await other.release(again)  # not its claim any more: left alone
    assert (await kv.get(claim_key("job", "t1"))).value == b"one"


async def test_a_result_is_stored_once_and_a_later_one_is_answered_with_the_first(
    js: JetStreamContext, subjects: Subjects
) -> None:
    # a duplicate window shorter than the gap between the two puts: create-only storage, not message-id
    # deduplication, has to keep the first result
    await js.add_stream(
        StreamConfig(
            name=subjects.batch_results_stream,
            subjects=[subjects.batch_results_wildcard],
            max_msgs_per_subject=1,
            duplicate_window=0.1,
            allow_direct=True,
        )
    )
    results = Results(js, subjects, retention_s=30 * 86400, timeout_s=5)
    await results.ensure()  # exists: left as it is
    first = StoredResult(job_id="job", item_id="a", index=0, request_id="t", status=200, body=b"first", finished_at=1.0)
    assert await results.put(first, "t") == first
    second = msgspec.structs.replace(first, body=b"second")
    # past the window (the server's minimum, 100 ms): a message id published after the first result is no
    # longer a duplicate when published again
    probe = subjects.batch_result("job", "probe").name
    await js.publish(probe, b"", headers={MSG_ID: "probe"})
    deadline = time.monotonic() + 10
    while (await js.publish(probe, b"", headers={MSG_ID: "probe"})).duplicate:
        assert time.monotonic() < deadline, "the duplicate window never passed"
        await asyncio.sleep(0.05)
    assert await results.put(second, "t") == first
    assert await results.get("job", "t") == first


async def test_an_item_costs_one_claim_write(h: Harness, subjects: Subjects) -> None:
    await h.start_service()
    bodies = [{"messages": [{"role": "user", "content": f"item {i}"}]} for i in range(100)]
    job = await h.client.submit(bodies, key=KEY, model="mock-1")
    done = await h.wait(job.id)
    assert done.request_counts.completed == 100
    info = await h.js.stream_info(f"KV_{subjects.batch_claims_bucket}")
    # one create per item; a renewal only for a call longer than a third of the ack wait (1 s here, which a
    # loaded machine may reach), never more than two writes an item
    assert 100 <= (info.state.last_seq or 0) <= 200


async def test_a_try_that_runs_again_gives_its_claim_back_at_once(h: Harness) -> None:
    service = await h.start_service()
    job, token = await one_item_job(h)
    h.stages.drop_first = {token}  # the first try is lost (heartbeat_timeout_s is 1): it runs again after 1 s
    await h.client.publish([item(job.id, "a")])
    done = await h.wait(job.id)
    assert done.status == "completed" and done.request_counts.completed == 1
    assert h.stages.dispatches[token] == 2
    # the second try claimed the item at once, instead of finding the first try's claim (3 s) still there
    assert service.worker.waited == 0
