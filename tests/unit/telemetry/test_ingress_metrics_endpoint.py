"""`/metrics` on the ingress port: open on loopback, a bearer token beyond it."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from services.ingress.telemetry import MetricsEndpoint
from shared import metrics


def _client(token: str, loopback: bool) -> TestClient:
    endpoint = MetricsEndpoint(token, loopback)
    return TestClient(Starlette(routes=[Route("/metrics", endpoint.serve, methods=["GET"])]))


def test_open_on_loopback_without_a_token() -> None:
    metrics.configure("ingress", enabled=True)
    try:
        metrics.request_finished("m", "p", "d", 200, 0.01)
        resp = _client("", loopback=True).get("/metrics")
    finally:
        metrics.configure("", enabled=False)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(resp.text)}
    assert {"gatehouse_requests", "gatehouse_request_duration_seconds"} <= names


def test_beyond_loopback_it_wants_the_token() -> None:
    refused = _client("", loopback=False).get("/metrics")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"
    client = _client("s3cret-token", loopback=False)
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", headers={"authorization": "Bearer wrong"}).status_code == 403
    assert client.get("/metrics", headers={"authorization": "Bearer s3cret-token"}).status_code == 200
    # a token set is asked for on loopback too
    assert _client("s3cret-token", loopback=True).get("/metrics").status_code == 403
