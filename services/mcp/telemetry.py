"""mcp stage telemetry: the span of each upstream call (a child of the guard's), and its metrics."""

from __future__ import annotations

from shared import metrics
from shared.logs import bind_request
from shared.schemas.mcp import McpError, ToolCall
from shared.tracing import CONSUMER, CURRENT, TRACER, Span, parse_traceparent


def start_call(call: ToolCall, traceparent: str | None = None) -> Span:
    span = TRACER.start("mcp.call", parse_traceparent(traceparent), kind=CONSUMER, request_id=call.call_id)
    CURRENT.set(span)
    bind_request(call.call_id, span.trace_id)
    return span


def finish_call(span: Span, call: ToolCall, error: McpError | None, seconds: float) -> None:
    metrics.mcp_call(call.server, error.status if error is not None else "ok", seconds)
    if not span.recording:
        return
    if error is not None:
        span.fail(error.status)
    span.end(_attributes, call.server, call.method, call.name)


def _attributes(server: str, method: str, name: str) -> dict[str, str | int]:
    return {"gatehouse.mcp.server": server, "gatehouse.mcp.method": method, "gatehouse.mcp.name": name}
