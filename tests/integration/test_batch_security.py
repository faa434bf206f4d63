"""The batch service against an attacker on the bus and crafted input: a queue message runs only if it proves
it is its job's (the job's item token or API key), a key disabled, deleted or rotated out stops its job, and
no message can make a worker fail forever (a response too large to store, JSON nested too deep, an item whose
handling keeps raising) or a declared job run more items than it declared."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import msgspec
import nats
import pytest

from gatehouse.batch import FINAL, BatchError
from gatehouse.natsserver import NatsServer
from services.batch import runner
from services.batch.plan import item_token, new_job_id
from services.batch.store import ItemQueue
from shared.bus import MSG_ID
from shared.config import hash_key
from shared.directory import Directory
from shared.files import FileStore, StoredFile
from shared.governance import VirtualKey, encode_entity, kv_key
from shared.keystore import KeyStore
from shared.schemas.batch import BatchItem, CreateJob
from shared.subjects import Subjects
from tests.integration.batch_support import KEY, Harness, harness

pytestmark = pytest.mark.timeout(120)

OTHER = "sk-batch-integration-other-0002"
BODY = json.dumps({"model": "mock-1", "messages": [{"role": "user", "content": "hello"}]}).encode()


def priced(i: int) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": f"item {i}"}], "max_tokens": 1}


async def forge(h: Harness, job_id: str, item: BatchItem, raw: bytes | None = None) -> None:
    """Publish straight to the job's queue subject, as any holder of the producer credential can."""
    subject = h.subjects.batch_items(job_id)
    data = raw if raw is not None else subject.encode(item)
    await h.js.publish(subject.name, data, headers={"Nats-Msg-Id": f"forged/{item.item_id}"})


async def queue_is_empty(h: Harness, timeout: float = 10.0) -> bool:
    """Every message of the work queue was acknowledged or terminated (none left to come back)."""
    deadline = time.monotonic() + timeout
    while True:
        info = await h.js.stream_info(h.subjects.batch_items_stream)
        if info.state.messages == 0:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)


async def test_items_not_proven_to_be_the_jobs_never_run_on_its_key(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    async with harness(nats_server.url, subjects, tmp_path) as h:
        await h.start_service()
        await h.put_team_key("other", 1000.0, OTHER)
        job = await h.client.create(CreateJob(key=KEY, model="mock-1", items=3, input_tokens=30))
        forged = [
            BatchItem(job_id=job.id, item_id="no-proof", body=msgspec.Raw(BODY)),  # only the (known) job id
            BatchItem(job_id=job.id, item_id="other-key", body=msgspec.Raw(BODY), key=OTHER),
            BatchItem(job_id=job.id, item_id="bad-token", body=msgspec.Raw(BODY), token="x" * 32),
            BatchItem(job_id=job.id, item_id="bad-key", body=msgspec.Raw(BODY), key="sk-not-a-key"),
            # the id of a real item, sent first: it must not stand in for the real one
            BatchItem(job_id=job.id, item_id="0", body=msgspec.Raw(BODY)),
        ]
        for item in forged:
            await forge(h, job.id, item)
        # the real items: two with the job's item token (the client got it when it created the job), one with the key
        await h.client.publish([BatchItem(job_id=job.id, item_id=str(i), body=msgspec.Raw(BODY)) for i in range(2)])
        await h.client.publish([BatchItem(job_id=job.id, item_id="2", body=msgspec.Raw(BODY), key=KEY)])
        done = await h.wait(job.id)
        assert done.status == "completed"
        assert (done.request_counts.completed, done.request_counts.failed) == (3, 0)
        for item in forged[:-1]:
            assert h.stages.dispatches[item_token(job.id, item.item_id)] == 0, item.item_id
        assert h.stages.dispatches[item_token(job.id, "0")] == 1
        lines = [line async for line in h.client.results(KEY, job.id)]
        assert sorted(line.custom_id or "" for line in lines) == ["0", "1", "2"]
        assert {r.batch_item_id for r in await h.records(job.id)} == {"0", "1", "2"}
        assert await queue_is_empty(h)  # the forged messages were dropped, not left to come back


async def test_a_file_jobs_queue_takes_no_item_from_a_producer(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    async with harness(nats_server.url, subjects, tmp_path) as h:
        h.stages.delay_s = 0.2
        service = await h.start_service()
        lines = b"".join(
            json.dumps({"custom_id": f"f{i}", "url": "/v1/chat/completions", "body": json.loads(BODY)}).encode() + b"\n"
            for i in range(3)
        )
        files = FileStore(h.js, subjects.files_bucket, 3600)
        record = StoredFile(
            id="file-sec0001", bytes=len(lines), created_at=time.time(), filename="in.jsonl", purpose="batch",
            key_id=service.directory.static[next(iter(service.directory.static))].id,
        )  # fmt: skip
        await files.put(record, lines)
        job = await h.client.create(CreateJob(key=KEY, input_file_id=record.id))
        await forge(h, job.id, BatchItem(job_id=job.id, item_id="injected", body=msgspec.Raw(BODY)))
        done = await h.wait(job.id)
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (3, 3, 0)
        assert h.stages.dispatches[item_token(job.id, "injected")] == 0
        assert await queue_is_empty(h)


async def _set_key(h: Harness, key: VirtualKey | None, key_id: str) -> None:
    store = KeyStore(h.js, h.subjects.directory_bucket, Directory())
    kv = await store.bucket()
    if key is None:
        await kv.delete(kv_key("key", key_id))
    else:
        await kv.put(kv_key("key", key.id), encode_entity(key))
    deadline = time.monotonic() + 5
    while True:  # every replica's mirror has the change
        mirrored = [s.directory.keys.get(key_id) for s in h.services]
        if all(m == key for m in mirrored):
            return
        assert time.monotonic() < deadline, "the directory watch did not deliver the change"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("change", ["disabled", "deleted", "rotated", "expired"])
async def test_a_key_that_no_longer_authenticates_stops_its_running_job(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path, change: str
) -> None:
    secret = f"sk-batch-integration-{change}-key"
    async with harness(nats_server.url, subjects, tmp_path) as h:
        h.stages.delay_s = 0.05
        await h.start_service()
        await h.put_team_key(change, 1e6, secret)
        key = h.services[0].directory.keys[f"{change}-key"]
        job = await h.client.submit([priced(i) for i in range(150)], key=secret, model="priced", concurrency=2)
        await h.wait_until(job.id, 6, key=secret)
        now = time.time()
        if change == "disabled":
            await _set_key(h, msgspec.structs.replace(key, disabled=True), key.id)
        elif change == "deleted":
            await _set_key(h, None, key.id)
        elif change == "expired":
            await _set_key(h, msgspec.structs.replace(key, expires_at=now), key.id)
        else:  # a new secret, the old one only within a grace that is already over
            rotated = msgspec.structs.replace(
                key, sha256=hash_key("sk-batch-integration-new"), previous_sha256=key.sha256, previous_until=now
            )
            await _set_key(h, rotated, key.id)
        at = time.time()
        jobs = h.services[0].worker.env.jobs
        deadline = time.monotonic() + 60
        while True:  # read as the service sees it: the key can no longer read it through the API
            got = await jobs.read(job.id)
            assert got is not None
            if got[0].status in FINAL:
                break
            assert time.monotonic() < deadline, got[0].status
            await asyncio.sleep(0.2)
        late = [t for t in h.stages.times if t > at + 1.0]
        assert not late, f"{len(late)} items dispatched more than a second after the key stopped authenticating"
        assert got[0].completed < 150
        results = await h.services[0].worker.env.results.all(job.id)
        codes = {r.error.code for r in results if r.error is not None}
        assert codes == {"invalid_api_key"}


async def test_a_response_too_large_to_store_ends_its_item_after_one_dispatch(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    async with harness(nats_server.url, subjects, tmp_path) as h:
        h.stages.body_bytes = int(h.nc.max_payload * 1.5)
        await h.start_service()
        job = await h.client.create(CreateJob(key=KEY, model="mock-1", items=2, input_tokens=20))
        await h.client.publish([BatchItem(job_id=job.id, item_id=str(i), body=msgspec.Raw(BODY)) for i in range(2)])
        done = await h.wait(job.id, timeout=30)
        assert (done.request_counts.completed, done.request_counts.failed) == (0, 2)
        assert [h.stages.dispatches[item_token(job.id, str(i))] for i in range(2)] == [1, 1]
        lines = [line async for line in h.client.results(KEY, job.id)]
        assert {line.response.status_code for line in lines if line.response} == {502}
        assert all(b"upstream_response_too_large" in bytes(line.response.body) for line in lines if line.response)


async def test_json_nested_too_deep_is_dropped_never_redelivered_forever(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    nested = b"[" * 20000 + b"]" * 20000
    deep = b'{"model":"mock-1","messages":[{"role":"user","content":"hi"}],"tools":' + nested + b"}"
    async with harness(nats_server.url, subjects, tmp_path) as h:
        await h.start_service()
        job = await h.client.create(CreateJob(key=KEY, model="mock-1", items=1, input_tokens=20))
        # a message that is not even an item, and an item whose body nests past the decoder's depth
        unreadable = b'{"job_id":"' + job.id.encode() + b'","item_id":"u","body":' + nested + b"}"
        await forge(h, job.id, BatchItem(job_id=job.id, item_id="u", body=msgspec.Raw(b"{}")), raw=unreadable)
        await h.client.publish([BatchItem(job_id=job.id, item_id="deep", body=msgspec.Raw(deep))])
        await h.client.publish([BatchItem(job_id=job.id, item_id="fine", body=msgspec.Raw(BODY))])
        done = await h.wait(job.id, timeout=30)
        assert (done.request_counts.completed, done.request_counts.failed) == (1, 0)
        assert h.stages.dispatches[item_token(job.id, "deep")] == 0
        assert await queue_is_empty(h)


async def test_an_item_whose_handling_keeps_failing_ends_failed(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "GIVE_UP_DELIVERIES", 2, raising=False)
    async with harness(nats_server.url, subjects, tmp_path) as h:
        service = await h.start_service()
        worker = service.worker
        real = worker._result

        async def broken(job_id: str, item: BatchItem, *args: object) -> object:
            if item.item_id == "bad":
                raise RuntimeError("a bug")
            return await real(job_id, item, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(worker, "_result", broken)
        job = await h.client.create(CreateJob(key=KEY, model="mock-1", items=2, input_tokens=20))
        await h.client.publish([BatchItem(job_id=job.id, item_id=i, body=msgspec.Raw(BODY)) for i in ("bad", "good")])
        done = await h.wait(job.id, timeout=30)
        assert (done.request_counts.completed, done.request_counts.failed) == (1, 1)
        lines = {line.custom_id: line async for line in h.client.results(KEY, job.id)}
        bad = lines["bad"].response
        assert bad is not None and bad.status_code == 500
        assert len(await h.records(job.id)) == 2  # the failed item is a request record too
        assert await queue_is_empty(h)


async def test_a_declared_job_runs_no_more_items_than_it_declared(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    async with harness(nats_server.url, subjects, tmp_path) as h:
        await h.start_service()
        job = await h.client.create(CreateJob(key=KEY, model="mock-1", items=2, input_tokens=20, concurrency=1))
        await h.client.publish([BatchItem(job_id=job.id, item_id=str(i), body=msgspec.Raw(BODY)) for i in range(4)])
        done = await h.wait(job.id)
        lines = [line async for line in h.client.results(KEY, job.id)]
        ran = [line for line in lines if line.response is not None and line.response.status_code == 200]
        assert len(ran) == 2
        assert sum(h.stages.dispatches.values()) == 2
        beyond = [line for line in lines if line.response is not None and line.response.status_code != 200]
        assert beyond and all(
            b"declared_size_exceeded" in bytes(line.response.body) for line in beyond if line.response
        )
        assert done.request_counts.completed == 2


async def test_job_metadata_is_bounded_as_openai_bounds_it(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    async with harness(nats_server.url, subjects, tmp_path) as h:
        await h.start_service()
        for metadata in ({"k": "v" * 513}, {"k" * 65: "v"}, {f"k{i}": "v" for i in range(17)}):
            with pytest.raises(BatchError) as refused:
                await h.client.create(CreateJob(key=KEY, model="mock-1", items=1, input_tokens=5, metadata=metadata))
            assert refused.value.info.status == 400 and refused.value.info.param == "metadata"
        ok = await h.client.create(
            CreateJob(
                key=KEY, model="mock-1", items=1, input_tokens=5, metadata={f"k{i}": "v" * 512 for i in range(16)}
            )
        )
        assert ok.metadata is not None and len(ok.metadata) == 16


async def test_a_cancel_withdraws_the_items_waiting_in_the_router_at_once(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    async with harness(nats_server.url, subjects, tmp_path) as h:
        h.stages.hold = True  # every item waits at the (stand-in) router's gate: interactive traffic has it
        await h.start_service()
        job = await h.client.create(CreateJob(key=KEY, model="mock-1", items=20, input_tokens=200, concurrency=4))
        await h.client.publish([BatchItem(job_id=job.id, item_id=str(i), body=msgspec.Raw(BODY)) for i in range(20)])
        deadline = time.monotonic() + 10
        while len(h.stages.dispatches) < 4:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await h.client.cancel(KEY, job.id)
        # withdrawn now, not when the router would have got to them (or the request's timeout)
        done = await h.wait(job.id, timeout=10)
        assert done.status == "cancelled" and done.request_counts.failed == 20
        assert h.stages.withdrawn == set(h.stages.dispatches) and len(h.stages.withdrawn) == 4
        lines = [line async for line in h.client.results(KEY, job.id)]
        assert {line.error.code for line in lines if line.error} == {"batch_cancelled"} and len(lines) == 20
        assert not await h.records(job.id)  # nothing ran: no request reached a provider


async def test_an_item_id_taken_first_by_a_stranger_does_not_drop_the_real_item(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    async with harness(nats_server.url, subjects, tmp_path) as h:
        await h.start_service()
        job = await h.client.create(CreateJob(key=KEY, model="mock-1", items=1, input_tokens=10, job_id="nightly-1"))
        # someone who knows the (chosen, guessable) job id publishes first under the documented message id
        subject = subjects.batch_items(job.id)
        other = json.dumps({"model": "priced", "messages": [{"role": "user", "content": "squatter"}]}).encode()
        squatter = BatchItem(job_id=job.id, item_id="doc-1", body=msgspec.Raw(other))
        await h.js.publish(subject.name, subject.encode(squatter), headers={"Nats-Msg-Id": f"{job.id}/doc-1"})
        await h.client.publish([BatchItem(job_id=job.id, item_id="doc-1", body=msgspec.Raw(BODY))])
        done = await h.wait(job.id, timeout=20)
        assert (done.request_counts.completed, done.request_counts.failed) == (1, 0)  # the real item ran


async def test_a_file_jobs_item_is_queued_though_someone_published_first_under_its_bare_id(
    nats_server: NatsServer, subjects: Subjects
) -> None:
    # the service queues a file job's lines itself (ItemQueue.enqueue) once the job exists, and again if another
    # replica takes over a job left half queued: until then the job id (returned at creation, seen in progress
    # events) is all a holder of the producer credential needs to publish under `<job>/<item>` first
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        queue = ItemQueue(js, subjects, retention_s=86400, timeout_s=5)
        await queue.ensure()
        job_id = new_job_id()
        subject = subjects.batch_items(job_id)
        squatter = BatchItem(job_id=job_id, item_id="c1", body=msgspec.Raw(BODY))
        await js.publish(subject.name, subject.encode(squatter), headers={MSG_ID: f"{job_id}/c1"})
        real = [
            BatchItem(job_id=job_id, item_id=f"c{i}", body=msgspec.Raw(BODY), index=i, token="the-item-token")
            for i in (1, 2)
        ]
        await queue.enqueue(job_id, real)
        await queue.enqueue(job_id, real)  # queued again (a takeover): nothing more
        info = await js.stream_info(subjects.batch_items_stream)
        queued = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            item = subject.decode((await js.get_msg(subjects.batch_items_stream, seq)).data or b"")
            queued.append((item.item_id, item.token))
    finally:
        await nc.close()
    assert sorted(queued) == [("c1", ""), ("c1", "the-item-token"), ("c2", "the-item-token")]
