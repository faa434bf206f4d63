"""`gatehouse.batch`: submit batch jobs to gatehouse from Python over NATS, as the `batch_producer` role,
and read their results. The wire format is plain JSON (docs/batch.md), so any NATS client can do the same.

    from gatehouse.batch import BatchClient

    async with await BatchClient.connect("nats://127.0.0.1:4222", seed_file=".gatehouse/creds/batch_producer.nk") as gh:
        job = await gh.submit([{"messages": [{"role": "user", "content": "Hi"}]}], key="sk-…", model="mock-1")
        job = await gh.wait(job.id)
        async for line in gh.results(job.id):
            print(line.custom_id, line.response.status_code if line.response else line.error)
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js.errors import APIError

from shared.bus import MSG_ID, publish_windowed
from shared.errors import ErrorInfo, GatewayError
from shared.producers import Namespace
from shared.schemas.batch import (
    BatchCall,
    BatchItem,
    BatchObject,
    BatchReply,
    CancelJob,
    CreateJob,
    GetJob,
    JobResults,
    ListJobs,
    ResultLine,
    item_message_id,
    producer_id_secret,
)
from shared.subjects import Subjects
from shared.tokens import embeddings_tokens, estimate_prompt_tokens
from shared.validate import chat_request, embeddings_request

FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
# nats-server's answers to a publish the work queue refuses: at its limits (messages, bytes, per job: "maximum …
# exceeded"), or JetStream out of storage
QUEUE_FULL = frozenset({10077, 10047})
_JSON = msgspec.json.Encoder()


class BatchError(Exception):
    """The batch service refused a call (the OpenAI-style error it answered)."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(f"{info.status} {info.code}: {info.message}")
        self.info = info


class BatchClient:
    """A producer: with the default credential (`namespace` ''), or one scoped to a team or key (`namespace`
    `team.ml`, from `gatehouse batch-producers create --team ml`), whose items and notices stay in that
    namespace's subjects."""

    def __init__(
        self, nc: Client, prefix: str = "gh", timeout_s: float = 120.0, namespace: str = "", id_secret: bytes = b""
    ) -> None:
        self.nc = nc
        self.subjects = Subjects(prefix)
        self.namespace = Namespace.parse(namespace).name if namespace else ""
        self.timeout_s = timeout_s
        self._js = nc.jetstream(timeout=timeout_s)
        # job id → its item token (from the reply that created the job): what proves an item is the job's
        self.item_tokens: dict[str, str] = {}
        # what signs the message ids of items without a proof (`item_message_id`): from the credential's seed, so
        # every process with it gives an item the same id; without one, this client's own (its repeats are still
        # dropped, another process's copy is not, and the batch service runs an item id once per job)
        self._id_secret = id_secret or secrets.token_bytes(32)

    @classmethod
    async def connect(
        cls,
        servers: str | list[str],
        *,
        seed_file: str = "",
        prefix: str = "gh",
        timeout_s: float = 120.0,
        namespace: str = "",
    ) -> BatchClient:
        """Connect as a batch producer (`seed_file`: its NKey seed; none for an open dev server; `namespace`: the
        team or key a scoped credential was issued for, e.g. `team.ml`)."""
        subjects = Subjects(prefix)
        inbox = subjects.producer_inbox(Namespace.parse(namespace).name) if namespace else None
        nc = await nats.connect(
            servers,
            nkeys_seed=seed_file or None,
            inbox_prefix=(inbox or subjects.role_inbox("batch_producer")).encode(),
            name="gatehouse-batch-producer",
            max_reconnect_attempts=-1,
        )
        secret = producer_id_secret(await asyncio.to_thread(Path(seed_file).read_bytes)) if seed_file else b""
        return cls(nc, prefix, timeout_s, namespace, secret)

    async def close(self) -> None:
        await self.nc.drain()

    async def __aenter__(self) -> BatchClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def ready(self, timeout_s: float = 60.0) -> None:
        """Wait until a batch service replica answers (TimeoutError if none does in time)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await self.nc.request(self.subjects.ping("batch"), b"", timeout=1.0)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise TimeoutError("no batch service replica answers") from None
                await asyncio.sleep(0.2)

    # ---- calls ------------------------------------------------------------------------------------------
    async def call(self, call: BatchCall) -> BatchReply:
        api = self.subjects.batch_api
        msg = await self.nc.request(api.name, api.encode(call), timeout=self.timeout_s)
        reply = api.decode_reply(msg.data)
        if reply.error is not None:
            raise BatchError(reply.error)
        return reply

    async def create(self, call: CreateJob) -> BatchObject:
        """Create a job; its item token is kept (`item_tokens`) for the items `publish` sends it."""
        reply = await self.call(call)
        assert reply.job is not None
        if reply.item_token:
            self.item_tokens[reply.job.id] = reply.item_token
        return reply.job

    async def get(self, key: str, job_id: str) -> BatchObject:
        reply = await self.call(GetJob(key=key, job_id=job_id))
        assert reply.job is not None
        return reply.job

    async def cancel(self, key: str, job_id: str) -> BatchObject:
        reply = await self.call(CancelJob(key=key, job_id=job_id))
        assert reply.job is not None
        return reply.job

    async def list(self, key: str, limit: int = 20, after: str = "") -> list[BatchObject]:
        return (await self.call(ListJobs(key=key, limit=limit, after=after))).jobs

    # ---- submitting ---------------------------------------------------------------------------------------
    async def publish(self, items: Iterable[BatchItem]) -> int:
        """Publish items to their jobs' queue subjects (JetStream acknowledges each; this client's own repeat is
        dropped). An item without `token` or `key` gets its job's item token, if this client created the job."""

        def publishes() -> Iterator[Coroutine[Any, Any, object]]:
            for item in items:
                if not item.token and not item.key and item.job_id in self.item_tokens:
                    item = msgspec.structs.replace(item, token=self.item_tokens[item.job_id])  # noqa: PLW2901
                yield self._publish_item(item)

        return await publish_windowed(publishes())

    async def _publish_item(self, item: BatchItem) -> None:
        """One item, under the message id it has every time (`item_message_id`): publishing it again, from here or
        from another process holding the same credential, adds nothing to the queue."""
        subject = self.subjects.batch_items(item.job_id, self.namespace)
        try:
            await self._js.publish(
                subject.name, subject.encode(item), headers={MSG_ID: item_message_id(item, self._id_secret)}
            )
        except APIError as exc:
            if exc.err_code in QUEUE_FULL:
                raise BatchError(_queue_full(exc)) from exc
            raise

    async def submit(
        self,
        bodies: Iterable[Mapping[str, object]],
        *,
        key: str,
        model: str,
        endpoint: str = "/v1/chat/completions",
        ids: Iterable[str] | None = None,
        max_tokens: int | None = None,
        metadata: Mapping[str, str] | None = None,
        result_subject: str = "",
        partial: bool = False,
        completion_window: str = "24h",
        job_id: str = "",
        concurrency: int = 0,
    ) -> BatchObject:
        """Declare a job for these request bodies (priced and reserved up front), then queue them.

        Each body gets `model` where it has none; `ids` are the items' ids (default: their position)."""
        prepared = [_with_model(body, model) for body in bodies]
        item_ids = [str(i) for i in (ids if ids is not None else range(len(prepared)))]
        if len(item_ids) != len(prepared):
            raise ValueError("ids and bodies differ in number")
        input_tokens, caps = _declaration(prepared, endpoint)
        if max_tokens is None and caps and all(c is not None for c in caps):
            max_tokens = max(c for c in caps if c is not None)
        job = await self.create(
            CreateJob(
                key=key,
                endpoint=endpoint,
                completion_window=completion_window,
                model=model,
                items=len(prepared),
                input_tokens=input_tokens,
                max_tokens=max_tokens,
                metadata=dict(metadata or {}),
                result_subject=result_subject,
                partial=partial,
                job_id=job_id,
                concurrency=concurrency,
            )
        )
        await self.publish(
            BatchItem(job_id=job.id, item_id=item_id, body=msgspec.Raw(raw), index=n)
            for n, (item_id, raw) in enumerate(zip(item_ids, prepared, strict=True))
        )
        return job

    # ---- following a job ------------------------------------------------------------------------------------
    async def wait(self, key: str, job_id: str, *, poll_s: float = 0.5, timeout_s: float | None = None) -> BatchObject:
        """Poll until the job has ended (completed, failed, expired or cancelled)."""
        deadline = time.monotonic() + timeout_s if timeout_s is not None else None
        while True:
            job = await self.get(key, job_id)
            if job.status in FINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job.status}")
            await asyncio.sleep(poll_s)

    async def results(self, key: str, job_id: str, which: str = "all", page: int = 1000) -> AsyncIterator[ResultLine]:
        """Every result line stored so far, in the order results were stored."""
        after = -1
        while True:
            reply = await self.call(JobResults(key=key, job_id=job_id, after=after, limit=page, which=which))
            for line in reply.results:
                yield line
            after = reply.next
            if not reply.has_more:
                return

    def result_subject(self, name: str) -> str:
        """The result subject `name` in this producer's namespace (`<p>.batch.out[.ns.<ns>].<name>`), for
        `result_subject` and `notices`."""
        return self.subjects.batch_out(name, self.namespace).name

    async def notices(self, name: str) -> Subscription:
        """Subscribe to `result_subject(name)`, the result subject items can name (`result_subject`)."""
        return await self.nc.subscribe(self.result_subject(name))


def _queue_full(exc: APIError) -> ErrorInfo:
    return ErrorInfo(
        status=429,
        type="rate_limit_error",
        code="batch_queue_full",
        message=f"The batch work queue is full ({exc.description}): publish the item again once queued items have run.",
        retryable=True,
    )


def _with_model(body: Mapping[str, object], model: str) -> bytes:
    obj = dict(body)
    obj.setdefault("model", model)
    return _JSON.encode(obj)


def _declaration(bodies: list[bytes], endpoint: str) -> tuple[int, list[int | None]]:
    """The items' prompt tokens (the estimate the service checks them against) and their max_tokens."""
    total = 0
    caps: list[int | None] = []
    for raw in bodies:
        try:
            if endpoint == "/v1/embeddings":
                total += embeddings_tokens(embeddings_request(raw))
                caps.append(0)
            else:
                chat = chat_request(raw)
                total += estimate_prompt_tokens(chat)
                caps.append(chat.max_completion_tokens or chat.max_tokens)
        except GatewayError:
            caps.append(None)  # invalid: the service reports it in the job's error lines
    return total, caps
