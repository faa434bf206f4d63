"""One wildcard reply subscription per ingress process, fanned out to per-request queues.

Subscribing once (instead of once per request) keeps the hot path free of SUB/UNSUB round trips;
a request's inbox is registered before its request is published, so no reply can be missed.
"""

from __future__ import annotations

import asyncio
import uuid

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.errors import ServiceUnavailableError
from shared.schemas.chat import Reply
from shared.subjects import Subjects, decode_reply


class NoResponders(Exception):
    """NATS said nobody is subscribed to the subject the request was published on."""


class Inbox:
    def __init__(self, subjects: Subjects) -> None:
        self.prefix = subjects.inbox(uuid.uuid4().hex[:12])
        self._queues: dict[str, asyncio.Queue[Reply | NoResponders]] = {}
        self._sub: Subscription | None = None

    async def start(self, nc: Client) -> None:
        self._sub = await nc.subscribe(f"{self.prefix}.*", cb=self._on_msg, pending_msgs_limit=1_000_000)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def _on_msg(self, msg: Msg) -> None:
        queue = self._queues.get(msg.subject[len(self.prefix) + 1 :])
        if queue is None:
            return  # the request already ended (e.g. client went away)
        if not msg.data and msg.headers and msg.headers.get("Status") == "503":
            queue.put_nowait(NoResponders())
            return
        queue.put_nowait(decode_reply(msg.data))

    def open(self, request_id: str) -> tuple[str, asyncio.Queue[Reply | NoResponders]]:
        queue: asyncio.Queue[Reply | NoResponders] = asyncio.Queue()
        self._queues[request_id] = queue
        return f"{self.prefix}.{request_id}", queue

    def close(self, request_id: str) -> None:
        self._queues.pop(request_id, None)


async def next_reply(queue: asyncio.Queue[Reply | NoResponders], timeout: float, stage: str) -> Reply:
    """The next reply, or ServiceUnavailable if no stage replica is up, or TimeoutError."""
    async with asyncio.timeout(timeout):  # no extra task per wait, unlike wait_for
        item = await queue.get()
    if isinstance(item, NoResponders):
        raise ServiceUnavailableError(
            f"No replica of the {stage} stage (or a stage behind it) is running; try again shortly."
        )
    return item
