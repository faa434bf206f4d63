"""JetStream publishes sent in call order on one connection, their acks matched on one inbox subscription."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import BadSubjectError, MaxPayloadError

from shared.bus import EXPECTED_LAST_SUBJECT_SEQ, MSG_ID, TRACEPARENT
from shared.spool_format import SpooledEvent

# JetStream's answer to a publish whose Nats-Expected-Last-Subject-Sequence is not the subject's last sequence
WRONG_LAST_SEQUENCE = 10071


class JetStreamRejected(Exception):
    """JetStream answered a publish with an error."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{code}/{err_code}: {description}")
        self.code = code
        self.err_code = err_code

    @property
    def permanent(self) -> bool:
        # 400: the message itself is refused (too large for the stream, …): sending it again cannot help
        return self.code == 400


class NoStream(Exception):
    """No stream listens on the subject (or JetStream is off): the server answered 'no responders'."""


def permanent(error: BaseException) -> bool:
    """Whether sending the same event again can never succeed."""
    return isinstance(error, MaxPayloadError | BadSubjectError) or (
        isinstance(error, JetStreamRejected) and error.permanent
    )


class JetStreamAcks:
    """JetStream publishes with their acks matched on one inbox subscription, sent in call order.

    nats-py's `publish_async` leaves the future pending when JetStream answers with an error (the
    error is raised inside its subscription callback), which would turn a refused message into a
    timeout retried forever."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[None]] = {}
        self._tokens = itertools.count()
        self._prefix = ""
        self._sub: Subscription | None = None

    async def start(self, nc: Client) -> None:
        self._prefix = nc.new_inbox()
        self._sub = await nc.subscribe(f"{self._prefix}.*", cb=self._on_ack, pending_msgs_limit=1_000_000)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for future in self._futures.values():
            future.cancel()

    async def send(self, nc: Client, event: SpooledEvent) -> asyncio.Future[None]:
        token = str(next(self._tokens))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futures[token] = future
        future.add_done_callback(lambda _: self._futures.pop(token, None))
        headers = {MSG_ID: event.event_id}
        if event.traceparent:
            headers[TRACEPARENT] = event.traceparent
        if event.first:
            headers[EXPECTED_LAST_SUBJECT_SEQ] = "0"
        try:
            await nc.publish(event.subject, event.data, reply=f"{self._prefix}.{token}", headers=headers)
        except BaseException:
            future.cancel()
            raise
        return future

    async def _on_ack(self, msg: Msg) -> None:
        future = self._futures.get(msg.subject[len(self._prefix) + 1 :])
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(NoStream(f"no stream for {msg.subject}"))
            return
        try:
            reply = json.loads(msg.data)
        except ValueError:
            future.set_exception(JetStreamRejected(0, 0, f"unreadable ack {msg.data[:100]!r}"))
            return
        error = reply.get("error") if isinstance(reply, dict) else None
        if error and error.get("err_code") == WRONG_LAST_SEQUENCE:
            # only a `first` event expects anything: its subject has moved on already (a reservation's `live`
            # note replayed after it was settled or released), which is where it had to go: done, not an error
            future.set_result(None)
        elif error:
            future.set_exception(
                JetStreamRejected(
                    int(error.get("code", 0)), int(error.get("err_code", 0)), str(error.get("description", ""))
                )
            )
        else:
            future.set_result(None)
