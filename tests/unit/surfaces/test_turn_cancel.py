"""A non-streamed request whose caller is cancelled while it waits for the router (each turn of the Responses `mcp`
loop, inside a stream the server cancels when its client leaves): the router is told to stop, and the request is
recorded as a client that left (499) with what the router reported, giving back what it held."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from services.ingress.app import Gateway
from shared.records import RequestRecord
from shared.schemas.chat import Outcome, Reply, Result, Usage


class _Inbox:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Reply] = asyncio.Queue()
        self.closed: list[str] = []

    def open(self, request_id: str, note: Any) -> tuple[str, asyncio.Queue[Reply]]:
        return "_INBOX.turn", self.queue

    def close(self, request_id: str) -> None:
        self.closed.append(request_id)


async def test_a_turn_cancelled_while_waiting_is_abandoned_like_a_stream_whose_client_left() -> None:
    gw = Gateway.__new__(Gateway)
    inbox = _Inbox()
    published: list[str] = []
    finished: list[RequestRecord] = []

    async def publish(subject: str, data: bytes, **_: Any) -> None:
        published.append(subject)
        if subject == "t.router.cancel":  # the router's last word: the usage so far
            inbox.queue.put_nowait(Result(outcome=Outcome(usage=Usage(input_tokens=7, output_tokens=2))))

    gw.inbox = inbox  # type: ignore[assignment]
    gw.broker = SimpleNamespace(connection=SimpleNamespace(publish=publish))  # type: ignore[assignment]
    gw.subjects = SimpleNamespace(  # type: ignore[assignment]
        guard_chat=SimpleNamespace(name="t.guard.chat", encode=lambda _r: b""),
        router_cancel=SimpleNamespace(name="t.router.cancel", encode=lambda _r: b""),
    )
    gw.first_timeout, gw.silence, gw._tasks = 60.0, 60.0, set()
    gw._finish = finished.append  # type: ignore[method-assign]
    record = RequestRecord(request_id="r1", api="responses", received_at=time.time(), started=time.monotonic())
    request = SimpleNamespace(request_id="r1")
    turn = asyncio.create_task(gw._dispatch(request, record, None, None, {}))  # type: ignore[arg-type]
    deadline = time.monotonic() + 5
    while not published and time.monotonic() < deadline:
        await asyncio.sleep(0)
    assert published == ["t.guard.chat"]
    turn.cancel()
    try:
        await turn
    except asyncio.CancelledError:
        pass
    while not finished and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert published == ["t.guard.chat", "t.router.cancel"]
    assert finished == [record] and record.status == 499 and record.error is not None
    assert record.error.code == "client_closed_request"
    assert record.outcome is not None and record.outcome.usage == Usage(input_tokens=7, output_tokens=2)
    assert inbox.closed == ["r1"]
