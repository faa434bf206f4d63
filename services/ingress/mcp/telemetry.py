"""Telemetry of MCP calls at ingress: the span of each call (continuing the client's trace, parent of the guard's
and the mcp stage's), its log context, and its metrics."""

from __future__ import annotations

from shared import metrics
from shared.logs import bind_request
from shared.tracing import CURRENT, SERVER, TRACER, Span, parse_traceparent


def start_call(call_id: str, client_traceparent: str) -> Span:
    span = TRACER.start("ingress.mcp", parse_traceparent(client_traceparent or None), kind=SERVER, request_id=call_id)
    CURRENT.set(span)
    bind_request(call_id, span.trace_id)
    return span


def finish_call(span: Span, server: str, tool: str, status: str, seconds: float) -> None:
    metrics.mcp_call(server or metrics.UNKNOWN, status, seconds)
    if not span.recording:
        return
    if status not in ("ok", "tool_error"):
        span.fail(status)
    span.end(_attributes, server, tool, status)


def _attributes(server: str, tool: str, status: str) -> dict[str, str | int]:
    return {"gatehouse.mcp.server": server, "gatehouse.mcp.tool": tool, "gatehouse.mcp.status": status}
