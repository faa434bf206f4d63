"""Guard telemetry: the span of each request the guard checks (a child of the ingress span), the trace
context it forwards to the router, and the metrics of its verdicts."""

from __future__ import annotations

from nats.aio.msg import Msg

from shared import metrics
from shared.bus import TRACEPARENT
from shared.errors import ErrorInfo
from shared.logs import bind_request
from shared.schemas.chat import ChatRequest, GuardFinding, GuardSummary
from shared.schemas.mcp import ArgumentsScan, ToolCall, ToolOutcome
from shared.tracing import CONSUMER, CURRENT, TRACER, Span, parse_traceparent


def _start(msg: Msg, name: str, request_id: str) -> Span:
    """Open a span continuing the trace `msg` carries, and tag the task's log lines with it."""
    headers = msg.headers
    span = TRACER.start(
        name, parse_traceparent(headers.get(TRACEPARENT) if headers else None), kind=CONSUMER, request_id=request_id
    )
    CURRENT.set(span)
    bind_request(request_id, span.trace_id)
    return span


def start_check(msg: Msg, req: ChatRequest) -> Span:
    """Open the span of checking `req`, continuing the trace its message carries."""
    return _start(msg, "guard.check", req.request_id)


def forward_headers(msg: Msg, span: Span) -> dict[str, str]:
    """The headers of the request going on to the router: the same, with this span as the parent."""
    return {**(msg.headers or {}), TRACEPARENT: span.context.traceparent()}


def finish_check(span: Span, req: ChatRequest, summary: GuardSummary, error: ErrorInfo | None) -> None:
    metrics.request_finished(
        req.model,
        "",
        "",
        error.status if error is not None else 200,
        summary.scan_us / 1e6,
        error_type=error.type if error is not None else "",
        error_code=error.code if error is not None else "",
    )
    if not span.recording:
        return
    if error is not None:
        span.fail(error.code)
    span.end(_check_attributes, summary.policy, summary.action, len(summary.findings), summary.scan_us)


def _check_attributes(policy: str, action: str, findings: int, scan_us: int) -> dict[str, str | int]:
    return {
        "gatehouse.guard.policy": policy,
        "gatehouse.guard.action": action,
        "gatehouse.guard.findings": findings,
        "gatehouse.guard.scan_us": scan_us,
    }


def verdict(summary: GuardSummary, findings: list[GuardFinding], direction: str, scan_us: int) -> None:
    """A verdict on a request (direction input) or a response (output)."""
    metrics.guard_verdict(summary.policy, summary.action, direction, findings, scan_us / 1e6)


def start_tool_call(msg: Msg, call: ToolCall) -> Span:
    """Open the span of guarding one MCP call (arguments, the mcp stage's answer, the result)."""
    return _start(msg, "guard.mcp", call.call_id)


def start_tool_scan(msg: Msg, call: ToolCall) -> Span:
    """Open the span of scanning one MCP call's arguments before it is put to an approver."""
    return _start(msg, "guard.mcp_scan", call.call_id)


def finish_tool_call(span: Span, call: ToolCall, outcome: ToolOutcome | ArgumentsScan) -> None:
    if not span.recording:
        return
    if outcome.error is not None:
        span.fail(outcome.error.status)
    span.end(_tool_attributes, call.server, call.name)


def _tool_attributes(server: str, tool: str) -> dict[str, str | int]:
    return {"gatehouse.mcp.server": server, "gatehouse.mcp.tool": tool}
