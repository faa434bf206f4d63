"""Store guard verdicts that found something as JetStream events, off the request path (through the one
event publisher, which spools while JetStream is away)."""

from __future__ import annotations

import time
import uuid

from nats.aio.client import Client

from services.guard.telemetry import verdict
from shared.event_publisher import EventPublisher
from shared.schemas.chat import GuardFinding, GuardSummary
from shared.schemas.events import GuardEvent
from shared.subjects import Subject


class VerdictLog:
    def __init__(
        self, subject: Subject[GuardEvent], events: EventPublisher, blocked: Subject[GuardEvent] | None = None
    ) -> None:
        self._subject = subject
        self._events = events
        # where a block also goes when a webhook wants `request_blocked` (the hooks stream), else None
        self._blocked = blocked

    async def start(self, nc: Client) -> None:
        await self._events.start(nc)

    def record(
        self, request_id: str, summary: GuardSummary, findings: list[GuardFinding], direction: str, scan_us: int
    ) -> None:
        verdict(summary, findings, direction, scan_us)
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
        self._events.publish(self._subject, event, event.event_id)
        if self._blocked is not None and summary.action == "block":
            self._events.publish(self._blocked, event, event.event_id)

    async def drain(self, timeout: float = 5.0) -> None:
        await self._events.drain(timeout)
