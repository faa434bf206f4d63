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


def test_chat_completions_on_the_short_way_in_answers_as_the_route_does() -> None:
    client = _client()
    for path in ("/v1/chat/completions", "/chat/completions"):
        r = client.post(path, json={"model": "m", "messages": []})
        assert r.status_code == 401, path
        assert r.json()["error"]["type"] == "invalid_request_error" and r.headers["x-request-id"]
    r = client.post("/v1/chat/completions/", json={}, follow_redirects=False)
    assert r.status_code == 307  # not the short way: Starlette's own answer for a near miss
