"""OpenAI Responses pass-through: the upstream request, and usage / finish read from answers and streams."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.router.providers import openai_responses_native as native
from services.router.providers.base import Target
from services.router.sse import SseEvent
from shared.errors import RateLimitError, UpstreamError
from shared.schemas.chat import NativeRequest, Usage

TARGET = Target(
    provider="openai",
    kind="openai",
    model="gpt-5",
    api_base="https://api.openai.test/v1/",
    api_key="sk-oai",
    params={"store": False, "max_tokens": 10},
)
BODY = {"model": "gpt", "input": "hi", "reasoning": {"effort": "low"}}
USAGE = {
    "input_tokens": 1000,
    "input_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 200},
    "output_tokens": 50,
    "output_tokens_details": {"reasoning_tokens": 30},
    "total_tokens": 1050,
}


def _response(status: str = "completed", output: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": "resp_1", "object": "response", "status": status, "output": output or [], "usage": USAGE, **extra}


def test_the_request_is_the_clients_with_its_beta_header() -> None:
    req = native.request(
        NativeRequest(protocol=native.PROTOCOL, body=json.dumps(BODY).encode(), headers={"openai-beta": "x=v1"}),
        TARGET,
        stream=True,
    )
    assert req.url == "https://api.openai.test/v1/responses"
    assert req.headers["authorization"] == "Bearer sk-oai" and req.headers["openai-beta"] == "x=v1"
    # `store: false` is a Responses parameter; `max_tokens` is chat's name and does not apply here
    assert json.loads(req.body) == {**BODY, "model": "gpt-5", "store": False}


def test_usage_is_already_in_the_openai_convention() -> None:
    got = native.summary(json.dumps(_response()).encode())
    assert got.usage == Usage(
        input_tokens=1000, output_tokens=50, cached_tokens=600, cache_write_tokens=200, reasoning_tokens=30
    )
    assert got.finish_reason == "stop"


@pytest.mark.parametrize(
    ("response", "finish"),
    [
        (_response(output=[{"type": "message"}, {"type": "function_call"}]), "tool_calls"),
        (_response("incomplete", incomplete_details={"reason": "max_output_tokens"}), "length"),
        (_response("incomplete", incomplete_details={"reason": "content_filter"}), "content_filter"),
        (_response(output=[{"type": "web_search_call"}, {"type": "message"}]), "stop"),
    ],
)
def test_finish_reasons(response: dict[str, Any], finish: str) -> None:
    assert native.summary(json.dumps(response).encode()).finish_reason == finish


def test_web_search_calls_are_counted() -> None:
    output = [{"type": "web_search_call"}, {"type": "web_search_call"}, {"type": "message"}]
    got = native.summary(json.dumps(_response(output=output)).encode())
    assert got.usage is not None and got.usage.web_search_requests == 2


def _ev(kind: str, **data: Any) -> SseEvent:
    return SseEvent(kind, json.dumps({"type": kind, "sequence_number": 0, **data}).encode())


def test_a_stream_is_read_from_its_terminal_event() -> None:
    reader = native.StreamReader()
    reader.feed(_ev("response.created", response=_response("in_progress") | {"usage": None}))
    reader.feed(SseEvent("response.output_text.delta", b"{garbled"))  # not decoded
    assert reader.usage is None and not reader.done
    with pytest.raises(UpstreamError, match="before its final event"):
        reader.finish()
    reader.feed(_ev("response.completed", response=_response()))
    reader.finish()
    assert reader.done and reader.finish_reason == "stop" and reader.usage is not None
    assert reader.usage.cached_tokens == 600


def test_failures_are_taxonomy_errors() -> None:
    with pytest.raises(RateLimitError, match="slow down"):
        native.StreamReader().feed(_ev("error", code="rate_limit_exceeded", message="slow down", param=None))
    failed = _response("failed", error={"code": "server_error", "message": "boom"})
    reader = native.StreamReader()
    with pytest.raises(UpstreamError, match="boom"):
        reader.feed(_ev("response.failed", response=failed))
    assert reader.done and reader.usage is not None  # what it cost is still recorded
