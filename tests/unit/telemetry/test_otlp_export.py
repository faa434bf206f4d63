"""Spans leave over OTLP/HTTP (the OpenTelemetry SDK's exporter) when an endpoint is configured."""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared import metrics
from shared.subjects import Subjects
from shared.telemetry import Telemetry, TelemetryConfig, parse_headers
from shared.tracing import CLIENT, TRACER, TraceContext
from tests.servers import serve_in_thread

TRACE = "0af7651916cd43dd8448eb211c80319c"


def test_otlp_headers_parse_like_the_otel_variable() -> None:
    assert parse_headers("authorization=Bearer x, x-tenant=a,,bad") == (
        ("authorization", "Bearer x"),
        ("x-tenant", "a"),
    )


async def test_spans_reach_an_otlp_collector() -> None:
    received: list[tuple[bytes, str]] = []

    async def collect(request: Request) -> Response:
        received.append((await request.body(), request.headers.get("x-tenant", "")))
        return Response(b"", media_type="application/x-protobuf")

    app = Starlette(routes=[Route("/v1/traces", collect, methods=["POST"])])
    with serve_in_thread(app) as url:
        config = TelemetryConfig(
            service="router",
            metrics=False,
            store_spans=False,
            otlp_endpoint=f"{url}/v1/traces",
            otlp_headers=(("x-tenant", "gatehouse-tests"),),
        )
        telemetry = Telemetry(config, Subjects("otlp"))
        try:
            await telemetry.start(None)
            parent = TRACER.start("router.dispatch", TraceContext(TRACE, "b7ad6b7169203331"), request_id="r1")
            attempt = TRACER.start("router.attempt", parent.context, kind=CLIENT, request_id="r1")
            attempt.set("gatehouse.deployment", "mock/m")
            attempt.fail("rate_limit_exceeded")
            attempt.end()
            parent.end()
        finally:
            await telemetry.stop()  # flushes the SDK's batch processor
            metrics.configure("", enabled=False)
    assert received and received[0][1] == "gatehouse-tests"
    spans = []
    for body, _ in received:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
            assert service == "gatehouse-router"
            spans += [s for scope in resource_spans.scope_spans for s in scope.spans]
    by_name = {s.name: s for s in spans}
    assert set(by_name) == {"router.dispatch", "router.attempt"}
    dispatch, attempt_span = by_name["router.dispatch"], by_name["router.attempt"]
    assert dispatch.trace_id.hex() == attempt_span.trace_id.hex() == TRACE
    assert dispatch.parent_span_id.hex() == "b7ad6b7169203331"
    assert attempt_span.parent_span_id == dispatch.span_id
    attributes = {a.key: a.value.string_value for a in attempt_span.attributes}
    assert attributes["gatehouse.deployment"] == "mock/m" and attributes["gatehouse.request_id"] == "r1"
    assert attempt_span.status.code == 2 and attempt_span.status.message == "rate_limit_exceeded"  # ERROR
    assert attempt_span.kind == 3  # SPAN_KIND_CLIENT
