"""Unknown routes and wrong methods answer from the error taxonomy, in the OpenAI error envelope."""

from __future__ import annotations

from starlette.testclient import TestClient

from services.ingress.app import create_app
from shared.config import GatehouseConfig
from shared.errors import MethodNotAllowedError, UnknownEndpointError
from shared.event_publisher import EventPublisher
from shared.natsconn import NatsLink
from shared.settings import ServiceSettings
from shared.subjects import Subjects


def _client() -> TestClient:
    # no `with`: the lifespan (the NATS connection) never starts, and routing needs none of it
    events = EventPublisher.from_settings(ServiceSettings(), "ingress")
    link = NatsLink(servers=("nats://127.0.0.1:1",), role="ingress", prefix="t")
    return TestClient(create_app(GatehouseConfig(), link, Subjects("t"), events))


def test_unknown_endpoint_is_a_taxonomy_404() -> None:
    r = _client().get("/v1/nowhere")
    assert r.status_code == UnknownEndpointError.status == 404
    assert r.json() == {
        "error": {
            "message": "Invalid URL (GET /v1/nowhere).",
            "type": "invalid_request_error",
            "param": None,
            "code": "unknown_url",
        }
    }


def test_wrong_method_is_a_taxonomy_405_with_allow() -> None:
    r = _client().get("/v1/chat/completions")
    assert r.status_code == MethodNotAllowedError.status == 405
    assert r.json()["error"]["code"] == "method_not_allowed"
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert r.headers["allow"] == "POST"
