"""Store guard verdicts that found something as JetStream events, off the request path, with retries."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

from nats.js import JetStreamContext

from shared.bus import publish_event_retrying
from shared.schemas.chat import GuardFinding, GuardSummary
from shared.schemas.events import GuardEvent

log = logging.getLogger("gatehouse.guard.verdicts")


class VerdictLog:
    RETRY_DELAYS = (0.0, 0.2, 1.0, 3.0, 10.0)

    def __init__(self, subject: str, js: Callable[[], JetStreamContext], timeout_s: float) -> None:
        self._subject = subject
        self._js = js
        self._timeout_s = timeout_s
        self._tasks: set[asyncio.Task[None]] = set()

    def record(
        self, request_id: str, summary: GuardSummary, findings: list[GuardFinding], direction: str, scan_us: int
    ) -> None:
        if not findings and summary.action != "block":
            return  # a clean pass is recorded on the request's own row
        event = GuardEvent(
            event_id=uuid.uuid4().hex,
            request_id=request_id,
            policy=summary.policy,
            action=summary.action,
            direction=direction,
            findings=findings,
            scan_us=scan_us,
            at=time.time(),
        )
        task = asyncio.create_task(self._store(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _store(self, event: GuardEvent) -> None:
        error = await publish_event_retrying(
            self._js, self._subject, event, event.event_id, self.RETRY_DELAYS, timeout_s=self._timeout_s
        )
        if error is not None:
            log.error("guard event %s for request %s not stored: %r", event.event_id, event.request_id, error)

    async def drain(self, timeout: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
