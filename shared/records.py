"""Build the one RequestEvent that records a finished request (pure), and hand it to the event publisher."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from nats.aio.client import Client

from shared.admission import Admitted
from shared.directory import Entitlement
from shared.errors import ErrorInfo
from shared.event_publisher import EventPublisher
from shared.schemas.chat import Caller, GuardSummary, Outcome, Reservation, Verdict
from shared.schemas.events import AuditEvent, RequestEvent, ReservationState
from shared.subjects import Subjects
from shared.tracing import Span


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
    admitted: Admitted | None = None  # what quotas and budgets it holds (shared/admission.py)
    run: tuple[Entitlement, str] | None = None  # the agent run it counts in (key, run id), if tagged
    span: Span | None = None  # the request's span (services/ingress/telemetry.py); trace_id is its trace's

    def fail(self, error: ErrorInfo) -> None:
        self.status = error.status
        self.error = error

    def note_verdict(self, verdict: Verdict) -> None:
        """The guard's verdict on the request, as it arrives (shared/inbox.py)."""
        self.guard = verdict.summary

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
            reservation=self.admitted.reservation if self.admitted else None,
            guard_replica=guard.replica if guard else "",
            router_replica=outcome.replica,
            route_strategy=outcome.strategy,
            answered_model=outcome.model,
        )


class RecordPublisher:
    """Hands each finished request's event to the event publisher: off the response path, never dropped
    while the spool has room (see shared/event_publisher.py)."""

    def __init__(self, subjects: Subjects, events: EventPublisher) -> None:
        self._subject = subjects.events_request
        self._subjects = subjects
        self._events = events

    @property
    def events(self) -> EventPublisher:
        return self._events

    def hold(self, reservation: Reservation) -> None:
        """Note a budget reservation as live, so that it is released if this process dies before the
        request's record is stored (accounting settles it from the record otherwise)."""
        self.note(reservation, "live")

    def note(self, reservation: Reservation, state: str) -> None:
        """Publish a reservation's state: a request's `live` one, or a budget lease's (shared/leases.py):
        `live` when taken, `settled` when its replica gave back what it did not use. A `live` note is stored only
        on an empty subject: replayed late (a spool, a lost ack, past the duplicate window) after accounting
        settled or released the reservation, it must not make it live again (and be released twice)."""
        noted = ReservationState(state=state, reservation=reservation, at=time.time())
        subject = self._subjects.reservation(reservation.request_id)
        self._events.publish(subject, noted, f"resv-{state}-{reservation.request_id}", first=state == "live")

    async def start(self, nc: Client) -> None:
        await self._events.start(nc)

    def audit(self, event: AuditEvent) -> None:
        """Store one admin action (the audit log), through the same never-dropping publisher."""
        self._events.publish(self._subjects.events_audit, event, event.event_id)

    def submit(self, record: RequestRecord, finished_mono: float | None = None) -> None:
        event = record.event(time.monotonic() if finished_mono is None else finished_mono)
        # the request id is the event id, so a record sent again (after a lost ack) is stored once; the
        # request's trace context travels with it, so accounting's work joins the request's trace
        parent = record.span.context.traceparent() if record.span is not None else ""
        self._events.publish(self._subject, event, event.event_id, traceparent=parent)

    async def drain(self, timeout: float = 10.0) -> None:
        await self._events.drain(timeout)


def new_request_id() -> str:
    return uuid.uuid4().hex
