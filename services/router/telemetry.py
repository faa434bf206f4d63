"""Router telemetry: the span of each request the router dispatches (a child of the guard's span), a span
and metrics per provider attempt, and the trace context on the final reply to the ingress inbox.

The trace context is not sent to providers: they are other companies' systems that join none of our
traces, and a `traceparent` would hand them the client's trace ids (linking the calls of one client
workflow) for nothing in return.
"""

from __future__ import annotations

import contextvars
import logging
import time

from nats.aio.msg import Msg

from services.router.core import Deployment
from shared import metrics
from shared.bus import REQUEST_ID, TRACEPARENT
from shared.errors import CLIENT_CLOSED, GatewayError
from shared.logs import bind_request
from shared.schemas.chat import ChatRequest, Result
from shared.tracing import CLIENT, CONSUMER, CURRENT, TRACER, Span, current_context, parse_traceparent

log = logging.getLogger("gatehouse.router")


class RequestTrace:
    """What the router's telemetry knows about the request in hand (one per task, see `_TRACE`)."""

    __slots__ = ("attempts", "last_error", "open_attempt", "req", "result", "span", "started")

    def __init__(self, req: ChatRequest, span: Span) -> None:
        self.req = req
        self.span = span
        self.started = time.monotonic()
        self.attempts = 0
        self.last_error = ""
        self.open_attempt: AttemptTrace | None = None
        self.result: Result | None = None

    def headers(self) -> dict[str, str]:
        """Headers of the final reply: the request id and this span's context."""
        return {REQUEST_ID: self.req.request_id, TRACEPARENT: self.span.context.traceparent()}


_TRACE: contextvars.ContextVar[RequestTrace | None] = contextvars.ContextVar("gatehouse_router_trace", default=None)


def start_dispatch(msg: Msg, req: ChatRequest) -> RequestTrace:
    """Open the span of dispatching `req`, continuing the trace its message carries."""
    headers = msg.headers
    span = TRACER.start(
        "router.dispatch",
        parse_traceparent(headers.get(TRACEPARENT) if headers else None),
        kind=CONSUMER,
        request_id=req.request_id,
    )
    trace = RequestTrace(req, span)
    _TRACE.set(trace)
    CURRENT.set(span)
    bind_request(req.request_id, span.trace_id)
    return trace


def finish_dispatch(trace: RequestTrace) -> None:
    """The request left the router: its metrics and the end of its span (and of an attempt cut short)."""
    if trace.open_attempt is not None:  # cancelled mid-call: the client went away
        trace.open_attempt.end(CLIENT_CLOSED.status, None, 0.0)
    result, req, span = trace.result, trace.req, trace.span
    outcome = result.outcome if result is not None else None
    error = result.error if result is not None else None
    status = error.status if error is not None else (200 if result is not None else CLIENT_CLOSED.status)
    provider = outcome.provider if outcome else ""
    deployment = outcome.deployment if outcome else ""
    metrics.request_finished(
        req.model,
        provider,
        deployment,
        status,
        time.monotonic() - trace.started,
        error_type=error.type if error else "",
        error_code=error.code if error else "",
        ttft_s=outcome.ttft_ms / 1000 if outcome and req.stream and outcome.ttft_ms else 0.0,
    )
    if not span.recording:
        return
    code = error.code if error is not None else ""
    if code:
        span.fail(code)
    span.end(_dispatch_attributes, req.model, req.stream, status, trace.attempts, provider, deployment, code)


def _dispatch_attributes(
    model: str, stream: bool, status: int, attempts: int, provider: str, deployment: str, code: str
) -> dict[str, str | int | float | bool]:
    out: dict[str, str | int | float | bool] = {
        "gen_ai.request.model": model,
        "gatehouse.stream": stream,
        "http.response.status_code": status,
        "gatehouse.attempts": attempts,
    }
    if provider:
        out["gen_ai.provider.name"] = provider
        out["gatehouse.deployment"] = deployment
    if code:
        out["error.type"] = code
    return out


class AttemptTrace:
    """One call of one deployment: a span (child of the dispatch span) and the upstream metrics."""

    __slots__ = ("_started", "_t0", "dep", "number", "request", "span")

    def __init__(self, req: ChatRequest, dep: Deployment, started: float) -> None:
        self.request = _TRACE.get()
        self.dep = dep
        self._started = started
        self._t0 = time.monotonic()
        parent = self.request.span.context if self.request is not None else current_context()
        self.span = TRACER.start("router.attempt", parent, kind=CLIENT, request_id=req.request_id)
        self.number = 1
        if self.request is not None:
            if self.request.attempts:
                metrics.router_retry(req.model, dep.id, self.request.last_error)
            self.request.attempts += 1
            self.number = self.request.attempts
            self.request.open_attempt = self

    def end(self, status: int, error: GatewayError | None, ttft_ms: float) -> None:
        """The attempt ended with `status`; `ttft_ms`: its first chunk, in ms since the request's start."""
        request = self.request
        if request is not None:
            if request.open_attempt is not self:
                return  # ended already
            request.open_attempt = None
        seconds = time.monotonic() - self._t0
        ttft_s = max(self._started + ttft_ms / 1000 - self._t0, 0.0) if ttft_ms else 0.0
        code = (
            error.info().code if error is not None else (CLIENT_CLOSED.code if status == CLIENT_CLOSED.status else "")
        )
        target = self.dep.target
        req_model = request.req.model if request is not None else target.model
        metrics.upstream_attempt(req_model, target.provider, self.dep.id, status, code, seconds, ttft_s)
        if error is not None:
            if request is not None:
                request.last_error = code
            log.info("attempt on %s failed: %s %s after %.0f ms", self.dep.id, status, code, seconds * 1000)
        span = self.span
        if not span.recording:
            return
        if code:
            span.fail(code)
        span.end(
            _attempt_attributes,
            target.provider,
            target.kind,
            self.dep.id,
            target.model,
            self.number,
            status,
            round(ttft_s * 1000, 3),
            code,
        )


def _attempt_attributes(
    provider: str, kind: str, deployment: str, model: str, number: int, status: int, ttft_ms: float, code: str
) -> dict[str, str | int | float | bool]:
    out: dict[str, str | int | float | bool] = {
        "gen_ai.provider.name": provider,
        "gatehouse.provider_kind": kind,
        "gatehouse.deployment": deployment,
        "gen_ai.request.model": model,
        "gatehouse.attempt": number,
        "http.response.status_code": status,
    }
    if ttft_ms:
        out["gatehouse.ttft_ms"] = ttft_ms
    if code:
        out["error.type"] = code
    return out


def attempt_started(req: ChatRequest, dep: Deployment, started: float) -> AttemptTrace:
    """An attempt on `dep` begins (`started`: when the router began serving the request, monotonic)."""
    return AttemptTrace(req, dep, started)
