"""The batch service in-process against a real nats-server, with stand-in guard and router stages that
answer on the bus (and count every dispatch), so a test decides how slow, lossy or absent the pipeline is."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from gatehouse.batch import FINAL, BatchClient
from services.batch.app import BatchService
from services.batch.settings import BatchSettings
from shared.config import hash_key, load_config
from shared.directory import Directory
from shared.errors import CLIENT_CLOSED
from shared.governance import Budget, Limits, Team, VirtualKey, encode_entity, kv_key
from shared.keystore import KeyStore
from shared.schemas.batch import BatchObject
from shared.schemas.chat import BodyPart, GuardSummary, Heartbeat, Outcome, Result, Usage, Verdict
from shared.schemas.events import RequestEvent
from shared.subjects import Subjects

KEY = "sk-batch-integration-0001"
PRICE = "{input_per_mtok: 0, output_per_mtok: 1000000}"  # $1 per output token


def write_config(tmp: Path) -> Path:
    path = tmp / "gatehouse.yaml"
    path.write_text(
        f"""
server: {{request_timeout_s: 20, first_reply_timeout_s: 2, heartbeat_timeout_s: 1}}
keys:
  - {{id: plain, sha256: {hash_key(KEY)}, team: qa}}
providers:
  mock: {{kind: mock}}
models:
  - name: mock-1
    deployments: [{{provider: mock, model: mock-1}}]
  - name: priced
    max_output_tokens: 10
    deployments: [{{provider: mock, model: priced, price: {PRICE}}}]
batch:
  job_concurrency: 8
  item_attempts: 2
"""
    )
    return path


@dataclass
class Stages:
    """Stand-in guard + router: answer each item after `delay_s`; `drop` items are never answered once."""

    nc: Client
    subjects: Subjects
    delay_s: float = 0.0
    output_tokens: int = 3
    drop_first: set[str] = field(default_factory=set)  # request ids whose first dispatch gets no answer
    body_bytes: int = 0  # pad each answer's body to about this size (0: a small body)
    dispatches: Counter[str] = field(default_factory=Counter)
    times: list[float] = field(default_factory=list)  # when each dispatch arrived (unix time)
    headers: dict[str, dict[str, str]] = field(default_factory=dict)  # request id → the headers it came with
    # hold every item at a stand-in of the router's priority gate (heartbeating) until a cancel withdraws it
    hold: bool = False
    withdrawn: set[str] = field(default_factory=set)  # request ids a router cancel withdrew
    # hold every answer (heartbeating, as the router does for an item with its provider) until this is set
    gate: asyncio.Event | None = None
    _held: dict[str, asyncio.Event] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self, *, as_guard: bool = False) -> None:
        """`as_guard`: on a connection with the guard role's permissions (its queue group, no router cancels)."""
        chat = self.subjects.guard_chat
        await self.nc.subscribe(chat.name, queue=chat.queue if as_guard else "", cb=self._on)
        if not as_guard:
            await self.nc.subscribe(self.subjects.router_cancel.name, cb=self._on_cancel)

    async def _on_cancel(self, msg: Msg) -> None:
        held = self._held.get(self.subjects.router_cancel.decode(msg.data).request_id)
        if held is not None:
            held.set()

    async def _on(self, msg: Msg) -> None:
        task = asyncio.create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        req = self.subjects.guard_chat.decode(msg.data)
        assert req.batch, "items reach the guard marked as batch"
        self.dispatches[req.request_id] += 1
        self.times.append(time.time())
        self.headers[req.request_id] = dict(msg.headers or {})
        if req.request_id in self.drop_first and self.dispatches[req.request_id] == 1:
            return
        replies = self.subjects.replies
        await self.nc.publish(msg.reply, replies.encode(Verdict(GuardSummary(policy="default", action="allow"))))
        if self.hold:  # waiting at the gate: heartbeats until a cancel withdraws it (as the router answers)
            held = self._held[req.request_id] = asyncio.Event()
            while not held.is_set():
                await self.nc.publish(msg.reply, replies.encode(Heartbeat()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(held.wait(), 0.3)
            self.withdrawn.add(req.request_id)
            # what the router answers an item withdrawn at its gate
            await self.nc.publish(msg.reply, replies.encode(Result(outcome=Outcome(), error=CLIENT_CLOSED)))
            return
        while self.gate is not None and not self.gate.is_set():  # still with the provider
            await self.nc.publish(msg.reply, replies.encode(Heartbeat()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.gate.wait(), 0.3)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # the provider's latency
        usage = Usage(input_tokens=4, output_tokens=self.output_tokens)
        answer: dict[str, object] = {"id": f"chatcmpl-{req.request_id}", "object": "chat.completion", "choices": []}
        if self.body_bytes:
            answer["padding"] = "x" * self.body_bytes
        body = msgspec.json.encode(answer)
        outcome = Outcome(provider="mock", provider_kind="mock", deployment="mock/priced", usage=usage)
        part = self.nc.max_payload // 2  # a body larger than a message arrives in parts, as the router sends it
        while len(body) > part:
            await self.nc.publish(msg.reply, replies.encode(BodyPart(body[:part])))
            body = body[part:]
        await self.nc.publish(msg.reply, replies.encode(Result(outcome=outcome, body=body)))


@dataclass
class Harness:
    nc: Client
    js: JetStreamContext
    subjects: Subjects
    stages: Stages
    client: BatchClient
    config_path: Path
    services: list[BatchService] = field(default_factory=list)

    async def start_service(self) -> BatchService:
        settings = BatchSettings(
            subject_prefix=self.subjects.prefix,
            config=str(self.config_path),
            batch_sweep_every_s=0.2,
            # JetStream reserves a stream's max_bytes from its store: the test server holds many tests' queues
            batch_queue_max_bytes=16 * 1024 * 1024,
            batch_progress_every_s=0.5,
            batch_ack_wait_s=3.0,
            batch_metrics_poll_s=0.2,
            nats_timeout_s=5.0,
        )
        service = BatchService(settings, load_config(self.config_path), self.subjects)
        await service.start(self.nc, self.js)
        self.services.append(service)
        return service

    async def wait(self, job_id: str, timeout: float = 60.0, key: str = KEY) -> BatchObject:
        return await self.client.wait(key, job_id, poll_s=0.1, timeout_s=timeout)

    async def wait_until(self, job_id: str, done: int, key: str = KEY, timeout: float = 30.0) -> BatchObject:
        """Poll the job until `done` items have ended (or it has)."""
        deadline = time.monotonic() + timeout
        while True:
            job = await self.client.get(key, job_id)
            counts = job.request_counts
            if counts.completed + counts.failed >= done or job.status in FINAL:
                return job
            assert time.monotonic() < deadline, f"only {counts.completed + counts.failed} of {done} done"
            await asyncio.sleep(0.05)

    async def records(self, job_id: str) -> list[RequestEvent]:
        """Every request record of the job on the event stream (what accounting would store), read by
        sequence (the stream is a work queue: no second consumer may read it)."""
        info = await self.js.stream_info(self.subjects.events_stream)
        out: list[RequestEvent] = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await self.js.get_msg(self.subjects.events_stream, seq)
            except nats.js.errors.NotFoundError:
                continue
            if msg.subject != self.subjects.events_request.name:
                continue
            event = self.subjects.events_request.decode(msg.data or b"")
            if event.batch_id == job_id:
                out.append(event)
        return out

    async def put_team_key(self, team: str, budget_usd: float, secret: str) -> None:
        """A team with a total budget and a key of it, in the directory bucket (as the admin API writes them)."""
        store = KeyStore(self.js, self.subjects.directory_bucket, Directory())
        kv = await store.bucket()
        limits = Limits(budgets=[Budget(amount_usd=budget_usd, period="total")])
        await kv.put(kv_key("team", team), encode_entity(Team(id=team, limits=limits)))
        key = VirtualKey(id=f"{team}-key", team=team, sha256=hash_key(secret))
        await kv.put(kv_key("key", key.id), encode_entity(key))
        # every batch replica's mirror has it before the test goes on
        deadline = time.monotonic() + 5
        while not all(key.id in s.directory.keys and team in s.directory.teams for s in self.services):
            assert time.monotonic() < deadline, "the directory watch did not deliver the key"
            await asyncio.sleep(0.02)

    async def counter(self, subject: str) -> int:
        try:
            msg = await self.js.get_last_msg(self.subjects.counters_stream, subject)
        except nats.js.errors.NotFoundError:
            return 0
        return int(msgspec.json.decode(msg.data)["val"])


@asynccontextmanager
async def harness(url: str, subjects: Subjects, tmp: Path) -> AsyncIterator[Harness]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    stages = Stages(nc, subjects)
    await stages.start()
    client = BatchClient(nc, subjects.prefix, timeout_s=30)
    h = Harness(nc, js, subjects, stages, client, write_config(tmp))
    try:
        yield h
    finally:
        for service in h.services:
            await service.stop()
        await nc.close()
