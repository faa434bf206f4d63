"""Ingress telemetry: the span of each HTTP request (the root of the gateway's part of a trace), its metrics
when it ends, and the `/metrics` endpoint.

A client's W3C `traceparent` is continued (its trace id is the request's); without a valid one a trace
starts here. The request record's `trace_id` is that trace id, the spans of every later stage share it.

`/metrics` exposes model, provider and deployment names and request rates, no keys and no tenants. It is
open while ingress listens on loopback only; beyond loopback it wants `Authorization: Bearer <token>`
(`GATEHOUSE_INGRESS_METRICS_TOKEN`) or answers 403: scrape the metrics port from inside the network instead
(`GATEHOUSE_METRICS_PORT`, bound to `GATEHOUSE_METRICS_HOST`, 127.0.0.1 by default).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Mapping

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from shared import metrics
from shared.bus import TRACEPARENT
from shared.config import ModelConfig
from shared.errors import PermissionDeniedError, error_body
from shared.logs import bind_request
from shared.records import RequestRecord
from shared.tracing import CURRENT, SERVER, TRACER, Span, parse_traceparent

MODEL_CHARS = 128


def start_request(request: Request, record: RequestRecord) -> Span:
    """Open the request's span (continuing the client's trace) and tag the task's log lines with it."""
    span = TRACER.start(
        "ingress.request",
        parse_traceparent(request.headers.get(TRACEPARENT)),
        kind=SERVER,
        request_id=record.request_id,
    )
    if span.recording:
        span.attributes["http.route"] = request.scope["path"]  # one of the API's routes
    record.span = span
    record.trace_id = span.trace_id
    CURRENT.set(span)
    bind_request(record.request_id, span.trace_id)
    return span


def traceparent(record: RequestRecord) -> str:
    """What the next hop continues: this request's span."""
    return record.span.context.traceparent() if record.span is not None else ""


def finish_request(record: RequestRecord, models: Mapping[str, ModelConfig], finished_mono: float) -> None:
    """The request is over: its metrics, and the end of its span."""
    outcome = record.outcome
    model = (record.model if record.model in models else metrics.UNKNOWN) if record.model else ""
    provider = outcome.provider if outcome else ""
    deployment = outcome.deployment if outcome else ""
    error = record.error
    seconds = finished_mono - record.started
    metrics.request_finished(
        model,
        provider,
        deployment,
        record.status,
        seconds,
        error_type=error.type if error else "",
        error_code=error.code if error else "",
        ttft_s=record.first_byte_ms / 1000 if record.stream and record.first_byte_ms else 0.0,
    )
    usage = outcome.usage if outcome else None
    if usage is not None:
        metrics.tokens(model, provider, deployment, usage)
    span = record.span
    if span is None or not span.recording:
        return
    if error is not None:
        span.fail(error.code)
    span.end(
        request_attributes,
        record.api,
        record.status,
        record.stream,
        record.model[:MODEL_CHARS],
        provider,
        deployment,
        outcome.provider_model if outcome else "",
        usage.input_tokens if usage else -1,
        usage.output_tokens if usage else -1,
        record.guard.action if record.guard else "",
        round(record.first_byte_ms, 3),
        error.code if error else "",
    )


def request_attributes(
    api: str,
    status: int,
    stream: bool,
    model: str,
    provider: str,
    deployment: str,
    provider_model: str,
    input_tokens: int,
    output_tokens: int,
    guard_action: str,
    ttft_ms: float,
    error_code: str,
) -> dict[str, str | int | float | bool]:
    """The ingress span's attributes (made when the span is shipped)."""
    attributes: dict[str, str | int | float | bool] = {
        "http.request.method": "POST",
        "gen_ai.operation.name": api,
        "http.response.status_code": status,
        "gatehouse.stream": stream,
    }
    if model:
        attributes["gen_ai.request.model"] = model
    if provider:
        attributes["gen_ai.provider.name"] = provider
        attributes["gatehouse.deployment"] = deployment
        attributes["gen_ai.response.model"] = provider_model
    if input_tokens >= 0:
        attributes["gen_ai.usage.input_tokens"] = input_tokens
        attributes["gen_ai.usage.output_tokens"] = output_tokens
    if guard_action:
        attributes["gatehouse.guard.action"] = guard_action
    if ttft_ms:
        attributes["gatehouse.ttft_ms"] = ttft_ms
    if error_code:
        attributes["error.type"] = error_code
    return attributes


class MetricsEndpoint:
    """`GET /metrics` in the Prometheus text format (see the module docstring for who may read it)."""

    def __init__(self, token: str, loopback: bool) -> None:
        self._token = token.encode()
        self._open = loopback and not token

    async def serve(self, request: Request) -> Response:
        if not self._open:
            given = request.headers.get("authorization", "")
            scheme, _, secret = given.partition(" ")
            if not self._token or scheme.lower() != "bearer" or not hmac.compare_digest(secret.encode(), self._token):
                info = PermissionDeniedError(
                    "/metrics needs the metrics token (GATEHOUSE_INGRESS_METRICS_TOKEN) when ingress listens "
                    "beyond loopback; or scrape the metrics port (GATEHOUSE_METRICS_PORT)."
                ).info()
                return JSONResponse(error_body(info), status_code=info.status)
        # rendering takes a few ms with many series: off the event loop
        body = await asyncio.to_thread(generate_latest, metrics.REGISTRY)
        return Response(body, media_type=CONTENT_TYPE_LATEST)
