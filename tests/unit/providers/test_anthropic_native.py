"""Anthropic Messages pass-through: the upstream request, and usage / finish read from answers and streams."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.router.providers import anthropic_native as native
from services.router.providers.base import Target
from services.router.sse import SseEvent
from shared.errors import ServiceUnavailableError, UpstreamError
from shared.schemas.chat import NativeRequest, Usage

TARGET = Target(
    provider="anthropic",
    kind="anthropic",
    model="claude-sonnet-4-5",
    api_base="https://api.anthropic.test",
    api_key="sk-ant",
    headers={"anthropic-beta": "deployment-beta-1"},
    params={"max_tokens": 99, "top_k": 4, "max_completion_tokens": 50},
)
BODY = {"model": "claude", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


def _native(body: dict[str, Any] = BODY, **headers: str) -> NativeRequest:
    return NativeRequest(protocol=native.PROTOCOL, body=json.dumps(body).encode(), headers=headers)


def test_the_request_is_the_clients_with_its_protocol_headers() -> None:
    req = native.request(
        _native(**{"anthropic-version": "2023-01-01", "anthropic-beta": "prompt-caching-2024-07-31"}),
        TARGET,
        stream=False,
    )
    assert req.method == "POST" and req.url == "https://api.anthropic.test/v1/messages"
    assert req.headers["x-api-key"] == "sk-ant"
    assert req.headers["anthropic-version"] == "2023-01-01"  # the client's, over the default
    assert req.headers["anthropic-beta"] == "prompt-caching-2024-07-31,deployment-beta-1"
    sent = json.loads(req.body)
    # params Anthropic documents fill what the client left out; chat-named ones do not apply
    assert sent == {**BODY, "model": "claude-sonnet-4-5", "top_k": 4}


def test_without_client_headers_the_deployment_version_applies() -> None:
    target = Target(provider="a", kind="anthropic", model="m", api_base="http://x/v1", api_version="2026-10-21")
    req = native.request(_native(), target, stream=True)
    assert req.url == "http://x/v1/messages"
    assert req.headers["anthropic-version"] == "2026-10-21" and "anthropic-beta" not in req.headers
    assert "x-api-key" not in req.headers


def test_usage_counts_cache_reads_and_writes_inside_input() -> None:
    body = {
        "id": "msg_1",
        "type": "message",
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "tool_use",
        "usage": {
            "input_tokens": 10,
            "cache_creation_input_tokens": 600,
            "cache_read_input_tokens": 300,
            "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 400},
            "output_tokens": 7,
            "server_tool_use": {"web_search_requests": 1},
        },
    }
    got = native.summary(json.dumps(body).encode())
    assert got.usage == Usage(
        input_tokens=910,
        output_tokens=7,
        cached_tokens=300,
        cache_write_tokens=600,
        cache_write_1h_tokens=400,
        web_search_requests=1,
    )
    assert got.finish_reason == "tool_calls"
    assert native.summary(b"not json").usage is None


def _ev(kind: str, **data: Any) -> SseEvent:
    return SseEvent(kind, json.dumps({"type": kind, **data}).encode())


def test_a_stream_is_read_from_message_start_and_the_cumulative_message_delta() -> None:
    reader = native.StreamReader()
    start = {"usage": {"input_tokens": 5, "cache_read_input_tokens": 40, "cache_creation_input_tokens": 0}}
    events = [
        _ev("message_start", message={"id": "m", "content": [], **start}),
        _ev("ping"),
        SseEvent("content_block_delta", b"{not even json"),  # not decoded: text deltas are not read
        _ev(
            "message_delta",
            delta={"stop_reason": "max_tokens"},
            usage={"output_tokens": 12, "server_tool_use": {"web_search_requests": 2}},
        ),
    ]
    for event in events:
        reader.feed(event)
    assert not reader.done
    with pytest.raises(UpstreamError, match="before message_stop"):
        reader.finish()
    reader.feed(_ev("message_stop"))
    reader.finish()
    assert reader.done and reader.finish_reason == "length"
    assert reader.usage == Usage(input_tokens=45, output_tokens=12, cached_tokens=40, web_search_requests=2)


def test_an_error_event_is_the_taxonomy_error() -> None:
    reader = native.StreamReader()
    assert reader.usage is None
    with pytest.raises(ServiceUnavailableError, match="Overloaded"):
        reader.feed(_ev("error", error={"type": "overloaded_error", "message": "Overloaded"}))
