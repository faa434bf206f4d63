"""One item through the same path as an interactive request: `<p>.guard.chat` with a reply inbox of this
batch process (`<p>.binbox.<id>.<attempt>`), then the guard's verdict and the router's Result back on it.

Marked `batch`, the request goes from the guard to the router's batch subject, where it waits while
interactive traffic needs the router (services/router/priority.py). The router heartbeats while the item
waits or runs, so a router that died is told from one that is busy.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from nats.aio.client import Client

from shared.bus import REQUEST_ID, TRACEPARENT
from shared.errors import ErrorInfo, GatewayError
from shared.inbox import Inbox, next_reply
from shared.schemas.chat import BodyPart, ChatRequest, GuardSummary, Result, Verdict
from shared.subjects import Subjects


class Lost(Exception):
    """The pipeline lost the item (no guard or router replica, or one went silent): run it again later."""

    def __init__(self, why: ErrorInfo) -> None:
        super().__init__(why.message)
        self.why = why


@dataclass(frozen=True, slots=True)
class Answer:
    result: Result
    guard: GuardSummary | None
    body: bytes  # the whole body (a large one arrives in parts)


class Pipeline:
    def __init__(self, subjects: Subjects, *, first_timeout_s: float, silence_s: float, total_timeout_s: float) -> None:
        self._subjects = subjects
        self.inbox = Inbox(subjects, subjects.batch_inbox(uuid.uuid4().hex[:12]))
        self._first = first_timeout_s
        self._silence = silence_s
        self._total = total_timeout_s
        self._nc: Client | None = None

    async def start(self, nc: Client) -> None:
        self._nc = nc
        await self.inbox.start(nc)

    async def stop(self) -> None:
        await self.inbox.stop()

    async def run(self, req: ChatRequest, traceparent: str = "") -> Answer:
        """The item's Result (with the guard's verdict), or Lost; `traceparent`: the item's span, which the
        guard's and router's spans continue."""
        assert self._nc is not None
        attempt = uuid.uuid4().hex  # a late reply to an earlier try of the same item never lands here
        inbox, queue = self.inbox.open(attempt)
        guard: GuardSummary | None = None
        parts: list[bytes] = []
        subject = self._subjects.guard_chat
        try:
            headers = {REQUEST_ID: req.request_id}
            if traceparent:
                headers[TRACEPARENT] = traceparent
            await self._nc.publish(subject.name, subject.encode(req), reply=inbox, headers=headers)
            stage, timeout = "guard", self._first
            while True:
                try:
                    item = await next_reply(queue, timeout, stage, self._silence)
                except TimeoutError:
                    raise Lost(
                        ErrorInfo(
                            status=504,
                            type="timeout_error",
                            code="gateway_timeout",
                            message=f"No answer from the {stage} stage within {timeout:g}s.",
                            retryable=True,
                        )
                    ) from None
                except GatewayError as exc:  # no replica of a stage, or one went silent
                    raise Lost(exc.info()) from exc
                if isinstance(item, Verdict):
                    guard = item.summary
                    stage, timeout = "router", self._total
                elif isinstance(item, BodyPart):
                    parts.append(item.data)
                elif isinstance(item, Result):
                    body = b"".join(parts) + item.body if parts else item.body
                    return Answer(item, item.guard or guard, body)
        finally:
            self.inbox.close(attempt)
