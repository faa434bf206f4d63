"""Pull batches from the durable event consumer with one pull request per batch, delivered to a callback.

nats-py's `PullSubscription.fetch` waits for each message of a batch with its own `asyncio.wait_for` (a task
per message), which costs more than storing the event. Here a batch is one pull request
(`$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>` with `batch` and `no_wait`) whose messages a subscription
callback appends to a list: the server sends what it has at once and ends the request with a 404 status when
that is fewer than `batch`. The messages are plain JetStream messages (ack, nak, term, in_progress work as usual).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

STATUS = "Status"
HEARTBEAT = "100"
# how long to wait for the server's answer to a pull request before calling the fetch failed
GRACE_S = 2.0


class FetchFailed(Exception):
    """The consumer did not answer a pull request (gone, or the connection is down)."""


class Puller:
    """One outstanding pull request at a time; messages of an expired request that arrive late are kept
    for the next fetch (they are real deliveries)."""

    def __init__(self, nc: Client, stream: str, durable: str) -> None:
        self._nc = nc
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = ""
        self._sub: Subscription | None = None
        self._buffer: list[Msg] = []
        self._want = 0
        self._full = asyncio.Event()
        self._ended = asyncio.Event()
        self._status = ""

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get(STATUS) if msg.headers else None
        if not status:
            self._buffer.append(msg)
            if len(self._buffer) >= self._want:
                self._full.set()
        elif status != HEARTBEAT:  # 404 no messages, 408 expired, 409 consumer deleted or limits
            self._status = f"{status} {msg.headers.get('Description', '') if msg.headers else ''}".strip()
            self._ended.set()

    def _take(self, batch: int) -> list[Msg]:
        taken, self._buffer = self._buffer[:batch], self._buffer[batch:]
        return taken

    async def fetch(self, batch: int) -> list[Msg]:
        """Up to `batch` messages: what the stream holds now ([] if nothing). The request is `no_wait`: the server
        sends what it has at once and ends the request with a 404 when that is fewer than `batch`."""
        if self._sub is None:
            raise FetchFailed("the puller is not started")
        if len(self._buffer) >= batch:
            return self._take(batch)
        self._want = batch
        self._full.clear()
        self._ended.clear()
        self._status = ""
        request = {"batch": batch - len(self._buffer), "no_wait": True}
        await self._nc.publish(self._next, json.dumps(request).encode(), reply=self._inbox)
        waits = {asyncio.ensure_future(self._full.wait()), asyncio.ensure_future(self._ended.wait())}
        try:
            done, _ = await asyncio.wait(waits, timeout=GRACE_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        if not done and not self._buffer:
            raise FetchFailed(f"no answer to a pull request on {self._next} within {GRACE_S:.1f}s")
        if self._status and not self._status.startswith(("404", "408")) and not self._buffer:
            raise FetchFailed(f"pull request refused: {self._status}")
        return self._take(batch)
