"""The API surfaces around a pass-through: what they hand the router, and how a relayed stream that breaks ends."""

from __future__ import annotations

import json

import pytest

from services.ingress import apis
from services.router.sse import SseParser
from shared.errors import InvalidRequestError, ServiceUnavailableError

MESSAGES = {"model": "claude", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], "top_k": 3}


def test_the_messages_surface_hands_on_the_clients_own_body_and_protocol_headers() -> None:
    raw = json.dumps({**MESSAGES, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}).encode()
    headers = {"anthropic-beta": "b1", "anthropic-version": "2023-06-01", "x-api-key": "sk-gh", "user-agent": "sdk"}
    parsed = apis.MESSAGES.parse(raw, headers)
    assert parsed.native is not None and parsed.native.body == raw
    assert parsed.native.protocol == "anthropic-messages"
    assert parsed.native.headers == {"anthropic-beta": "b1", "anthropic-version": "2023-06-01"}  # never the key
    assert parsed.native.untranslatable == ["tools[0].type: Server tool 'web_search_20250305'"]
    assert parsed.chat is not None and parsed.chat.tools is None  # the chat form has no server tools


def test_the_responses_surface_hands_on_the_clients_own_body() -> None:
    raw = json.dumps({"model": "gpt", "input": "hi", "previous_response_id": "resp_1"}).encode()
    parsed = apis.RESPONSES.parse(raw, {"openai-beta": "responses=v1", "authorization": "Bearer sk-gh"})
    assert parsed.native is not None and parsed.native.body == raw
    assert parsed.native.headers == {"openai-beta": "responses=v1"}
    assert parsed.native.untranslatable == ["previous_response_id: A stored response ('previous_response_id')"]


def test_malformed_requests_are_still_refused_at_the_edge() -> None:
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        apis.MESSAGES.parse(json.dumps({"model": "m", "messages": []}).encode(), {})
    with pytest.raises(InvalidRequestError, match="Background"):
        apis.RESPONSES.parse(json.dumps({"model": "m", "input": "x", "background": True}).encode(), {})


def test_a_relayed_stream_that_breaks_ends_with_the_protocols_own_error_event() -> None:
    info = ServiceUnavailableError("Upstream went away.").info()
    parsed = apis.MESSAGES.parse(json.dumps(MESSAGES).encode(), {})
    (event,) = SseParser().feed(apis.MESSAGES.writer(parsed).fail_native(info, relayed=7))
    assert event.event == "error"
    assert json.loads(event.data) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Upstream went away."},
    }
    parsed = apis.RESPONSES.parse(json.dumps({"model": "m", "input": "x", "stream": True}).encode(), {})
    (event,) = SseParser().feed(apis.RESPONSES.writer(parsed).fail_native(info, relayed=7))
    assert event.event == "error"
    data = json.loads(event.data)
    # the next number after the 7 events relayed (0..6), and no response.created of gatehouse's own
    assert data["sequence_number"] == 7 and data["code"] == "service_unavailable"
