"""The batch service in-process against a real nats-server, with stand-in guard and router stages: every
item runs once and leaves one record, a stored result is never run again, a stopped replica's items are
finished by the next, a cancel stops dispatching within a second, a job expires with its window, and a
job's worst case is reserved (or refused) up front and the unused part given back."""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgspec
import pytest

from gatehouse.batch import BatchError
from gatehouse.natsserver import NatsServer
from services.batch.plan import item_token
from shared.files import FileStore, StoredFile
from shared.schemas.batch import BatchItem, CreateJob, JobResults
from shared.subjects import Subjects
from tests.integration.batch_support import KEY, harness

pytestmark = pytest.mark.timeout(120)


def bodies(n: int, max_tokens: int | None = None) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for i in range(n):
        body: dict[str, object] = {"messages": [{"role": "user", "content": f"item number {i}"}]}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        out.append(body)
    return out


async def test_every_item_of_a_declared_job_runs_once_and_leaves_one_record(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    async with harness(nats_server.url, subjects, tmp_path) as h:
        await h.start_service()
        job = await h.client.submit(bodies(300), key=KEY, model="mock-1", metadata={"run": "nightly"})
        assert job.status == "in_progress" and job.request_counts.total == 300
        done = await h.wait(job.id)
        assert done.status == "completed"
        assert (done.request_counts.completed, done.request_counts.failed) == (300, 0)
        assert len(h.stages.dispatches) == 300 and set(h.stages.dispatches.values()) == {1}
        lines = [line async for line in h.client.results(KEY, job.id)]
        assert sorted(line.custom_id or "" for line in lines) == sorted(str(i) for i in range(300))
        assert all(line.response is not None and line.response.status_code == 200 for line in lines)
        records = await h.records(job.id)
        assert len(records) == 300 and len({r.request_id for r in records}) == 300
        assert {r.batch_item_id for r in records} == {str(i) for i in range(300)}
        assert all(r.status == 200 and r.caller.key_id == "plain" and r.caller.team == "qa" for r in records)


async def test_an_item_whose_result_is_stored_is_acknowledged_without_running_again(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    async with harness(nats_server.url, subjects, tmp_path) as h:
        await h.start_service()
        job = await h.client.create(CreateJob(key=KEY, model="mock-1", items=2, input_tokens=20, concurrency=1))
        item = BatchItem(
            job_id=job.id, item_id="a", body=msgspec.Raw(json.dumps(bodies(1)[0] | {"model": "mock-1"}).encode())
        )
        await h.client.publish([item])
        await h.wait_until(job.id, 1)
        # the same item again, past JetStream's duplicate detection (another message id): answered from its result
        subject = subjects.batch_items(job.id)
        await h.js.publish(subject.name, subject.encode(item), headers={"Nats-Msg-Id": "another-id"})
        await h.client.publish([msgspec.structs.replace(item, item_id="b")])
        done = await h.wait(job.id)
        assert done.status == "completed" and done.request_counts.completed == 2
        assert h.stages.dispatches[item_token(job.id, "a")] == 1
        assert len(await h.records(job.id)) == 2


async def test_items_a_stopped_replica_held_are_finished_by_the_next_one_once(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    async with harness(nats_server.url, subjects, tmp_path) as h:
        h.stages.delay_s = 0.05
        first = await h.start_service()
        job = await h.client.submit(bodies(120), key=KEY, model="mock-1")
        await h.wait_until(job.id, 20)
        await first.stop()  # items in hand finish or go back to the queue
        h.services.remove(first)
        await h.start_service()
        done = await h.wait(job.id)
        assert done.status == "completed" and done.request_counts.completed == 120
        lines = [line async for line in h.client.results(KEY, job.id)]
        assert len(lines) == 120 and len({line.custom_id for line in lines}) == 120
        records = await h.records(job.id)
        assert len({r.event_id for r in records}) == 120  # redelivered records share their event id


async def test_a_lost_dispatch_is_run_again_and_completes_once(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    async with harness(nats_server.url, subjects, tmp_path) as h:
        await h.start_service()
        job = await h.client.create(CreateJob(key=KEY, model="mock-1", items=3, input_tokens=30))
        # the router "dies" with the first try of item 1: no answer, no heartbeat (heartbeat_timeout_s is 1)
        h.stages.drop_first = {item_token(job.id, "1")}
        raw = [json.dumps(b | {"model": "mock-1"}).encode() for b in bodies(3)]
        await h.client.publish(BatchItem(job_id=job.id, item_id=str(i), body=msgspec.Raw(r)) for i, r in enumerate(raw))
        done = await h.wait(job.id)
        assert done.status == "completed" and done.request_counts.completed == 3
        assert h.stages.dispatches[item_token(job.id, "1")] == 2
        assert len({r.event_id for r in await h.records(job.id)}) == 3


async def test_cancel_stops_dispatching_within_a_second_and_keeps_partial_results(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    async with harness(nats_server.url, subjects, tmp_path) as h:
        h.stages.delay_s = 0.1
        await h.start_service()
        job = await h.client.submit(bodies(400), key=KEY, model="mock-1", concurrency=4)
        await h.wait_until(job.id, 12)
        cancelled = await h.client.cancel(KEY, job.id)
        at = time.time()
        assert cancelled.status == "cancelling"
        done = await h.wait(job.id)
        assert done.status == "cancelled"
        late = [t for t in h.stages.times if t > at + 1.0]
        assert not late, f"{len(late)} items dispatched more than a second after the cancel"
        counts = done.request_counts
        assert counts.completed >= 12 and counts.completed + counts.failed == 400
        assert done.gatehouse.cancelled == counts.failed
        lines = [line async for line in h.client.results(KEY, job.id)]
        codes = {line.error.code for line in lines if line.error is not None}
        assert codes == {"batch_cancelled"}
        assert sum(1 for line in lines if line.response is not None) == counts.completed


async def test_a_job_past_its_window_expires_with_what_ran(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    async with harness(nats_server.url, subjects, tmp_path) as h:
        h.stages.delay_s = 0.3
        await h.start_service()
        job = await h.client.submit(bodies(40), key=KEY, model="mock-1", concurrency=1, completion_window="2s")
        done = await h.wait(job.id)
        assert done.status == "expired" and done.expired_at is not None
        counts = done.request_counts
        assert 1 <= counts.completed < 40 and counts.completed + counts.failed == 40
        lines = [line async for line in h.client.results(KEY, job.id, which="error")]
        assert {line.error.code for line in lines if line.error} == {"batch_expired"}


async def test_a_job_the_budget_cannot_cover_is_refused_up_front_or_run_in_part(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    async with harness(nats_server.url, subjects, tmp_path) as h:
        await h.start_service()
        secret = "gh-budget-team-key-0001"
        await h.put_team_key("lab", 30.0, secret)  # $30; each item may cost $10 (10 output tokens at $1)
        spend = h.subjects.spend_counter("team.lab", "total")
        with pytest.raises(BatchError) as refused:
            await h.client.submit(bodies(5, max_tokens=10), key=secret, model="priced")
        assert refused.value.info.status == 429 and refused.value.info.code == "budget_exceeded"
        assert await h.counter(spend) == 0  # nothing stays reserved
        job = await h.client.submit(bodies(5, max_tokens=10), key=secret, model="priced", partial=True)
        assert job.gatehouse.not_affordable == 2 and job.gatehouse.reserved_usd == pytest.approx(30.0, abs=1e-3)
        done = await h.wait(job.id, key=secret)
        assert (done.request_counts.completed, done.request_counts.failed) == (3, 2)
        errors = [line async for line in h.client.results(secret, job.id, which="error")]
        assert {line.response.status_code for line in errors if line.response} == {429}
        # the three items' shares stay on the counter for accounting to settle; the rest was given back
        assert await h.counter(spend) == 30_000_000
        records = await h.records(job.id)
        shares = sorted(r.reservation.holds[0].micro_usd for r in records if r.reservation and r.status == 200)
        assert shares == [10_000_000] * 3


async def test_a_file_job_reports_bad_lines_and_runs_the_rest(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    async with harness(nats_server.url, subjects, tmp_path) as h:
        await h.start_service()
        good = [
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": bodies(1)[0] | {"model": "mock-1"},
            }
            for i in range(6)
        ]
        bad = [
            "{not json",
            json.dumps({"custom_id": "r0", "url": "/v1/chat/completions", "body": {"model": "mock-1", "messages": []}}),
            json.dumps(
                {
                    "custom_id": "m",
                    "url": "/v1/chat/completions",
                    "body": {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
                }
            ),
            json.dumps({"custom_id": "u", "url": "/v1/embeddings", "body": {"model": "mock-1", "input": "x"}}),
            json.dumps(
                {
                    "custom_id": "big",
                    "url": "/v1/chat/completions",
                    "body": {"model": "mock-1", "messages": [{"role": "user", "content": "x" * 5_000_000}]},
                }
            ),
        ]
        text = "\n".join([json.dumps(good[0]), *bad[:2], *map(json.dumps, good[1:]), *bad[2:]]) + "\n"
        files = FileStore(h.js, subjects.files_bucket, 3600)
        await files.put(
            StoredFile(
                id="file-test1",
                bytes=len(text),
                created_at=time.time(),
                filename="in.jsonl",
                purpose="batch",
                key_id="plain",
            ),
            text.encode(),
        )
        job = await h.client.create(CreateJob(key=KEY, input_file_id="file-test1"))
        assert job.status == "validating" and job.request_counts.total == 11
        done = await h.wait(job.id)
        assert done.status == "completed" and (done.request_counts.completed, done.request_counts.failed) == (6, 5)
        out = (await files.read(done.output_file_id or "")).decode().splitlines()
        err = [json.loads(line) for line in (await files.read(done.error_file_id or "")).decode().splitlines()]
        assert [json.loads(line)["custom_id"] for line in out] == [f"r{i}" for i in range(6)]  # input order
        assert [e["error"]["code"] for e in err] == [
            "invalid_json_line",
            "duplicate_custom_id",
            "model_not_found",
            "mismatched_url",
            "request_too_large",
        ]
        assert all(e["response"] is None and e["error"]["message"].startswith("Line ") for e in err)
        page = await h.client.call(JobResults(key=KEY, job_id=job.id, which="output", limit=4))
        assert len(page.results) <= 4 and page.has_more
