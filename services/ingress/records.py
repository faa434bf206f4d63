"""Build the one RequestEvent that records a finished request (pure), and publish it reliably (I/O)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

from nats.js import JetStreamContext

from shared.bus import publish_event_retrying
from shared.errors import ErrorInfo
from shared.schemas.chat import Caller, GuardSummary, Outcome
from shared.schemas.events import RequestEvent
from shared.subjects import Subjects

log = logging.getLogger("gatehouse.ingress.records")


@dataclass
class RequestRecord:
    """Everything ingress learns about one request while serving it."""

    request_id: str
    api: str
    received_at: float
    started: float  # monotonic
    trace_id: str = ""
    caller: Caller = field(default_factory=lambda: Caller(key_id=""))
    model: str = ""
    stream: bool = False
    status: int = 200
    error: ErrorInfo | None = None
    outcome: Outcome | None = None
    guard: GuardSummary | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    first_byte_ms: float = 0.0
    tags: dict[str, str] = field(default_factory=dict)

    def fail(self, error: ErrorInfo) -> None:
        self.status = error.status
        self.error = error

    def event(self, finished_mono: float) -> RequestEvent:
        outcome = self.outcome or Outcome()
        guard = self.guard
        return RequestEvent(
            event_id=self.request_id,
            request_id=self.request_id,
            trace_id=self.trace_id,
            api=self.api,
            caller=self.caller,
            requested_model=self.model,
            provider=outcome.provider,
            deployment=outcome.deployment,
            provider_model=outcome.provider_model,
            stream=self.stream,
            status=self.status,
            error=self.error,
            usage=outcome.usage,
            finish_reason=outcome.finish_reason,
            attempts=outcome.attempts,
            guard_action=guard.action if guard else "",
            guard_policy=guard.policy if guard else "",
            guard_findings=guard.findings if guard else [],
            received_at=self.received_at,
            finished_at=self.received_at + (finished_mono - self.started),
            latency_ms=(finished_mono - self.started) * 1000,
            ttft_ms=self.first_byte_ms,
            upstream_ms=outcome.upstream_ms,
            request_bytes=self.request_bytes,
            response_bytes=self.response_bytes,
            tags=self.tags,
            provider_kind=outcome.provider_kind,
            usage_estimated=outcome.usage_estimated,
        )


class RecordPublisher:
    """Publishes request events to JetStream off the response path, retrying while JetStream is away."""

    RETRY_DELAYS = (0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

    def __init__(self, subjects: Subjects, timeout_s: float) -> None:
        self._subject = subjects.events_request.name
        self._timeout_s = timeout_s
        self._pending: set[asyncio.Task[None]] = set()
        self._js: JetStreamContext | None = None

    def bind(self, js: JetStreamContext) -> None:
        self._js = js

    def submit(self, record: RequestRecord) -> None:
        event = record.event(time.monotonic())
        task = asyncio.create_task(self._publish(event))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _publish(self, event: RequestEvent) -> None:
        # the request id is the event id, so a retried publish is deduplicated by JetStream
        error = await publish_event_retrying(
            lambda: self._js, self._subject, event, event.event_id, self.RETRY_DELAYS, timeout_s=self._timeout_s
        )
        if error is not None:
            log.error("request event %s could not be stored: %r", event.event_id, error)

    async def drain(self, timeout: float = 10.0) -> None:
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)


def new_request_id() -> str:
    return uuid.uuid4().hex
