"""One wildcard reply subscription per process (ingress, batch), fanned out to per-request queues.

Subscribing once (instead of once per request) keeps the hot path free of SUB/UNSUB round trips;
a request's inbox is registered before its request is published, so no reply can be missed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.errors import ServiceUnavailableError, UpstreamError
from shared.schemas.chat import Heartbeat, Reply, Verdict
from shared.subjects import Subjects


class NoResponders(Exception):
    """NATS said nobody is subscribed to the subject the request was published on."""


class Inbox:
    def __init__(self, subjects: Subjects, prefix: str = "") -> None:
        """`prefix`: the wildcard reply subject to use (default: a new ingress inbox, `Subjects.inbox`)."""
        self.prefix = prefix or subjects.inbox(uuid.uuid4().hex[:12])
        self._decode = subjects.replies.decode
        self._queues: dict[str, asyncio.Queue[Reply | NoResponders]] = {}
        self._verdicts: dict[str, Callable[[Verdict], None]] = {}
        self._sub: Subscription | None = None

    async def start(self, nc: Client) -> None:
        self._sub = await nc.subscribe(f"{self.prefix}.*", cb=self._on_msg, pending_msgs_limit=1_000_000)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def _on_msg(self, msg: Msg) -> None:
        key = msg.subject[len(self.prefix) + 1 :]
        queue = self._queues.get(key)
        if queue is None:
            return  # the request already ended (e.g. client went away)
        if not msg.data and msg.headers and msg.headers.get("Status") == "503":
            queue.put_nowait(NoResponders())
            return
        item = self._decode(msg.data)
        if type(item) is Verdict:
            note = self._verdicts.get(key)
            if note is not None:  # taken note of here: the request's task need not wake for it
                note(item)
                return
        queue.put_nowait(item)

    def __len__(self) -> int:
        """Requests waiting for their replies (in flight beyond ingress)."""
        return len(self._queues)

    def open(
        self, request_id: str, on_verdict: Callable[[Verdict], None] | None = None
    ) -> tuple[str, asyncio.Queue[Reply | NoResponders]]:
        """The request's reply subject and queue; with `on_verdict`, the guard's verdict goes to it (in order
        with the other replies, before any that came after it) instead of into the queue."""
        queue: asyncio.Queue[Reply | NoResponders] = asyncio.Queue()
        self._queues[request_id] = queue
        if on_verdict is not None:
            self._verdicts[request_id] = on_verdict
        return f"{self.prefix}.{request_id}", queue

    def close(self, request_id: str) -> None:
        self._queues.pop(request_id, None)
        self._verdicts.pop(request_id, None)


async def next_reply(queue: asyncio.Queue[Reply | NoResponders], timeout: float, stage: str, silence: float) -> Reply:
    """The next reply, skipping heartbeats. ServiceUnavailable if no stage replica is up, UpstreamError
    if the pipeline went silent for `silence` seconds (not even a heartbeat), TimeoutError after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError
        try:
            async with asyncio.timeout(min(remaining, silence)):  # no extra task per wait, unlike wait_for
                item = await queue.get()
        except TimeoutError:
            if loop.time() >= deadline:
                raise
            raise UpstreamError(
                f"The gateway lost this request: the {stage} stage sent nothing for {silence:g}s."
            ) from None
        if isinstance(item, NoResponders):
            raise ServiceUnavailableError(
                f"No replica of the {stage} stage (or a stage behind it) is running; try again shortly."
            )
        if not isinstance(item, Heartbeat):
            return item
