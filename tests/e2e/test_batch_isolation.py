"""One key cannot see or touch another key's batch files, jobs or results: not through `/v1/files`,
`/v1/batches`, Anthropic's Message Batches API, nor the batch service's own calls on the bus (which name a key
and are checked as HTTP is). Each refusal is the 404 an id that does not exist gets, so nothing tells a
stranger's id from a wrong one."""

from __future__ import annotations

import asyncio
import json
import time

import anthropic
import openai
import pytest

from gatehouse.batch import BatchClient, BatchError
from shared.schemas.batch import CancelJob, DeleteFile, GetJob, JobResults
from tests.e2e.conftest import API_KEY, PII_KEY, RunningStack

pytestmark = pytest.mark.e2e
OWNER, STRANGER = API_KEY, PII_KEY


def _line(i: int) -> str:
    body = {"model": "mock-1", "messages": [{"role": "user", "content": f"isolation {i}"}]}
    return json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})


def test_a_key_cannot_read_cancel_or_delete_another_keys_batches_files_or_results(running_stack: RunningStack) -> None:
    owner = openai.OpenAI(base_url=running_stack.base_url, api_key=OWNER, max_retries=0, timeout=30)
    stranger = openai.OpenAI(base_url=running_stack.base_url, api_key=STRANGER, max_retries=0, timeout=30)
    uploaded = owner.files.create(file=("in.jsonl", "\n".join(_line(i) for i in range(3)).encode()), purpose="batch")
    batch = owner.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 60
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch.status
        time.sleep(0.3)
        batch = owner.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id

    for file_id in (uploaded.id, batch.output_file_id):
        with pytest.raises(openai.NotFoundError):
            stranger.files.retrieve(file_id)
        with pytest.raises(openai.NotFoundError):
            stranger.files.content(file_id)
        with pytest.raises(openai.NotFoundError):
            stranger.files.delete(file_id)
        assert file_id not in [f.id for f in stranger.files.list()]
    with pytest.raises(openai.NotFoundError):
        stranger.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        stranger.batches.cancel(batch.id)
    assert batch.id not in [b.id for b in stranger.batches.list(limit=100)]
    # a stranger's batch may not take the owner's file as its input
    with pytest.raises(openai.NotFoundError):
        stranger.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")

    claude = anthropic.Anthropic(base_url=running_stack.stack.ingress_url, api_key=STRANGER, max_retries=0)
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.batches.retrieve(batch.id)
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.batches.cancel(batch.id)
    with pytest.raises(anthropic.NotFoundError):
        list(claude.messages.batches.results(batch.id))

    async def on_the_bus() -> list[int]:
        assert running_stack.stack.nats is not None
        seed = str(running_stack.stack.credentials["batch_producer"].seed_file)
        gh = await BatchClient.connect(
            running_stack.stack.nats.url, seed_file=seed, prefix=running_stack.stack.prefix, timeout_s=30
        )
        statuses = []
        try:
            for call in (
                GetJob(key=STRANGER, job_id=batch.id),
                CancelJob(key=STRANGER, job_id=batch.id),
                JobResults(key=STRANGER, job_id=batch.id),
                DeleteFile(key=STRANGER, file_id=uploaded.id),
            ):
                with pytest.raises(BatchError) as refused:
                    await gh.call(call)
                statuses.append(refused.value.info.status)
        finally:
            await gh.close()
        return statuses

    assert asyncio.run(on_the_bus()) == [404, 404, 404, 404]
    # and everything is still the owner's, untouched
    assert owner.batches.retrieve(batch.id).status == "completed"
    assert len(owner.files.content(batch.output_file_id).text.splitlines()) == 3
    assert owner.files.retrieve(uploaded.id).id == uploaded.id
