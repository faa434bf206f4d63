"""Cohere v2 translator: pure request/response/stream/error mapping, and the same against the Cohere emulator."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from services.router.providers.base import Target
from services.router.providers.cohere import CohereTranslator
from services.router.providers.cohere import build_request as _build_request
from services.router.sse import SseEvent
from shared.errors import (
    AuthenticationError,
    ContextLengthExceeded,
    GatewayTimeoutError,
    InvalidRequestError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
)
from tests.emulators import cohere as emulator
from tests.unit.providers import roundtrip as rt
from tests.unit.providers.roundtrip import canonical, canonical_embeddings

T = CohereTranslator()
TARGET = Target(
    provider="cohere",
    kind="cohere",
    model="command-a-03-2025",
    api_base="http://cohere.test/",
    api_key=emulator.API_KEY,
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def _target(model: str) -> Target:
    return Target(
        provider="cohere", kind="cohere", model=model, api_base="http://cohere.test", api_key=emulator.API_KEY
    )


def build_request(payload: dict[str, Any], model: str, *, stream: bool) -> dict[str, Any]:
    """The translator's request body for a test's chat body, typed for the assertions."""
    return _build_request(canonical(payload), model, stream=stream)


# --- requests ---------------------------------------------------------------------------------------


def test_request_maps_fields_and_roles() -> None:
    req = T.chat_request(
        canonical(
            {
                "model": "client-name",
                "messages": [
                    {"role": "developer", "content": "Be brief."},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is this?"},
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                        ],
                    },
                ],
                "top_p": 1.0,
                "max_tokens": 99,
                "stop": ["\n\n"],
                "temperature": 0.4,
                "seed": 5,
                "user": "dropped",
                "logit_bias": {"1": 1},
                "safety_mode": "STRICT",
            }
        ),
        TARGET,
        stream=True,
    )
    assert req.url == "http://cohere.test/v2/chat"
    assert req.headers["authorization"] == f"Bearer {emulator.API_KEY}" and req.headers["accept"] == "text/event-stream"
    assert json.loads(req.body) == {
        "model": "command-a-03-2025",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                ],
            },
        ],
        "stream": True,
        "temperature": 0.4,
        "seed": 5,
        "safety_mode": "STRICT",
        "p": 0.99,
        "max_tokens": 99,
        "stop_sequences": ["\n\n"],
    }


def test_tool_history_plan_and_choice() -> None:
    body = build_request(
        {
            "messages": [
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": "I will check.",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": '{"temp": -3}'},
                {"role": "assistant", "content": None},
            ],
            "tools": [WEATHER, CLOCK],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        },
        "m",
        stream=False,
    )
    assert body["messages"] == [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
            ],
            "tool_plan": "I will check.",
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp": -3}'},
    ]
    # Cohere cannot name a function: REQUIRED with only that function offered
    assert body["tool_choice"] == "REQUIRED" and [t["function"]["name"] for t in body["tools"]] == ["get_weather"]
    assert (
        build_request(
            {"messages": [{"role": "user", "content": "q"}], "tools": [WEATHER], "tool_choice": "none"},
            "m",
            stream=False,
        )["tool_choice"]
        == "NONE"
    )
    assert "tool_choice" not in build_request(
        {"messages": [{"role": "user", "content": "q"}], "tools": [WEATHER]}, "m", stream=False
    )


def test_json_modes_reasoning_and_rejections() -> None:
    msgs = [{"role": "user", "content": "q"}]
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert build_request({"messages": msgs, "response_format": fmt}, "m", stream=False)["response_format"] == {
        "type": "json_object",
        "json_schema": schema,
    }
    assert build_request({"messages": msgs, "response_format": {"type": "json_object"}}, "m", stream=False)[
        "response_format"
    ] == {"type": "json_object"}
    assert build_request({"messages": msgs, "reasoning_effort": "none"}, "m", stream=False)["thinking"] == {
        "type": "disabled"
    }
    with pytest.raises(InvalidRequestError):
        build_request({"messages": msgs, "n": 2}, "m", stream=False)
    with pytest.raises(InvalidRequestError):
        build_request(
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}]}]},
            "m",
            stream=False,
        )
    with pytest.raises(InvalidRequestError):
        build_request({"messages": [*msgs, {"role": "tool", "content": "x"}]}, "m", stream=False)


# --- responses --------------------------------------------------------------------------------------


def _parse(payload: dict[str, Any]) -> dict[str, Any]:
    out = T.parse_chat(json.dumps(payload).encode(), TARGET, rt.RESPONSE_ID, rt.CREATED)
    assert isinstance(out, dict)
    return out


def test_parse_tool_calls_plan_thinking_and_billed_usage() -> None:
    out = _parse(
        {
            "id": "abc",
            "finish_reason": "TOOL_CALL",
            "message": {
                "role": "assistant",
                "content": [{"type": "thinking", "thinking": "Need data."}],
                "tool_plan": "I will call the tool.",
                "tool_calls": [
                    {
                        "id": "get_weather_x1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                    }
                ],
            },
            "usage": {
                "billed_units": {"input_tokens": 5, "output_tokens": 26},
                "tokens": {"input_tokens": 71, "output_tokens": 28},
                "cached_tokens": 2,
            },
        }
    )
    msg = out["choices"][0]["message"]
    assert msg["content"] == "I will call the tool." and msg["reasoning_content"] == "Need data."
    assert msg["tool_calls"] == [
        {
            "id": "get_weather_x1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
        }
    ]
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert (
        out["usage"]["prompt_tokens"],
        out["usage"]["completion_tokens"],
        out["usage"]["prompt_tokens_details"]["cached_tokens"],
    ) == (5, 26, 2)
    # without billed_units, the raw token counts
    out = _parse(
        {
            "finish_reason": "COMPLETE",
            "message": {"content": [{"type": "text", "text": "hi"}]},
            "usage": {"tokens": {"input_tokens": 9, "output_tokens": 1}},
        }
    )
    assert out["choices"][0]["message"]["content"] == "hi" and out["usage"]["prompt_tokens"] == 9


@pytest.mark.parametrize(
    ("reason", "expected"), [("COMPLETE", "stop"), ("STOP_SEQUENCE", "stop"), ("MAX_TOKENS", "length")]
)
def test_finish_reasons(reason: str, expected: str) -> None:
    out = _parse({"finish_reason": reason, "message": {"content": [{"type": "text", "text": "x"}]}})
    assert out["choices"][0]["finish_reason"] == expected


def test_error_and_timeout_finishes_raise() -> None:
    with pytest.raises(UpstreamError):
        _parse({"finish_reason": "ERROR", "message": {"content": []}})
    with pytest.raises(GatewayTimeoutError):
        _parse({"finish_reason": "TIMEOUT", "message": {"content": []}})


def _ev(kind: str, **data: Any) -> SseEvent:
    return SseEvent(kind, json.dumps({"type": kind, **data}).encode())


def test_stream_events_to_chunks() -> None:
    stream = T.open_stream(TARGET, rt.RESPONSE_ID, rt.CREATED)
    events = [
        _ev("message-start", id="m1", delta={"message": {"role": "assistant"}}),
        _ev("tool-plan-delta", delta={"message": {"tool_plan": "I will "}}),
        _ev("tool-plan-delta", delta={"message": {"tool_plan": "check."}}),
        _ev(
            "tool-call-start",
            index=0,
            delta={
                "message": {"tool_calls": {"id": "a_1", "type": "function", "function": {"name": "f", "arguments": ""}}}
            },
        ),
        _ev("tool-call-delta", index=0, delta={"message": {"tool_calls": {"function": {"arguments": '{"x"'}}}}),
        _ev("tool-call-delta", index=0, delta={"message": {"tool_calls": {"function": {"arguments": ": 1}"}}}}),
        _ev("tool-call-end", index=0),
        _ev(
            "tool-call-start",
            index=1,
            delta={
                "message": {
                    "tool_calls": {"id": "b_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}
                }
            },
        ),
        _ev("tool-call-end", index=1),
        _ev(
            "message-end",
            delta={"finish_reason": "TOOL_CALL", "usage": {"billed_units": {"input_tokens": 3, "output_tokens": 7}}},
        ),
    ]
    chunks: list[Any] = []
    for e in events:
        assert not stream.done()
        chunks.extend(stream.feed(e))
    assert stream.done() and stream.finish() == []
    got = rt.assemble(chunks)
    assert got["content"] == "I will check." and got["roles"] == 1
    assert [(c["id"], c["name"], c["arguments"]) for c in got["tool_calls"]] == [
        ("a_1", "f", '{"x": 1}'),
        ("b_2", "g", "{}"),
    ]
    assert got["finish_reason"] == "tool_calls" and stream.finish_reason == "tool_calls"
    assert chunks[-1]["choices"] == [] and got["usage"]["completion_tokens"] == 7
    assert stream.usage is not None and stream.usage.input_tokens == 3


def test_stream_text_thinking_and_errors() -> None:
    stream = T.open_stream(TARGET, rt.RESPONSE_ID, rt.CREATED)
    chunks: list[Any] = []
    for e in [
        _ev("message-start", id="m"),
        _ev("content-start", index=0, delta={"message": {"content": {"type": "thinking", "thinking": ""}}}),
        _ev("content-delta", index=0, delta={"message": {"content": {"thinking": "hmm"}}}),
        _ev("content-delta", index=1, delta={"message": {"content": {"text": "Hello"}}}),
        _ev("message-end", delta={"finish_reason": "MAX_TOKENS"}),
    ]:
        chunks.extend(stream.feed(e))
    got = rt.assemble(chunks)
    assert (got["content"], got["reasoning"], got["finish_reason"]) == ("Hello", "hmm", "length")
    broken = T.open_stream(TARGET, rt.RESPONSE_ID, rt.CREATED)
    broken.feed(_ev("message-start", id="m"))
    with pytest.raises(UpstreamError):
        broken.feed(_ev("message-end", delta={"error": "boom", "finish_reason": "ERROR"}))
    cut = T.open_stream(TARGET, rt.RESPONSE_ID, rt.CREATED)
    cut.feed(_ev("message-start", id="m"))
    with pytest.raises(UpstreamError):
        cut.finish()


def test_parse_error_taxonomy() -> None:
    def err(status: int, message: str, headers: dict[str, str] | None = None) -> Any:
        return T.parse_error(status, json.dumps({"id": "x", "message": message}).encode(), headers or {})

    assert isinstance(err(401, "invalid api token"), AuthenticationError)
    assert isinstance(err(498, "invalid api token"), AuthenticationError)
    limited = err(429, "slow down", {"retry-after": "4"})
    assert isinstance(limited, RateLimitError) and limited.retry_after == 4.0 and limited.message == "slow down"
    assert isinstance(
        err(400, "too many tokens: total number of tokens in the prompt cannot exceed 4081"), ContextLengthExceeded
    )
    assert isinstance(err(503, "unavailable"), ServiceUnavailableError)
    assert isinstance(err(500, "internal"), UpstreamError)


def test_embeddings_request_and_parse() -> None:
    req = T.embeddings_request(canonical_embeddings({"model": "e", "input": "hi", "dimensions": 256}), TARGET)
    assert req.url == "http://cohere.test/v2/embed"
    assert json.loads(req.body) == {
        "model": "command-a-03-2025",
        "texts": ["hi"],
        "input_type": "search_document",
        "embedding_types": ["float"],
        "output_dimension": 256,
    }
    req = T.embeddings_request(
        canonical_embeddings({"model": "e", "input": ["a"], "input_type": "search_query"}), TARGET
    )
    assert json.loads(req.body)["input_type"] == "search_query"
    out = T.parse_embeddings(
        b'{"id":"x","embeddings":{"float":[[0.5,0.25]]},"meta":{"billed_units":{"input_tokens":3}}}', TARGET
    )
    assert isinstance(out, dict) and out["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


# --- against the emulator ---------------------------------------------------------------------------


async def test_emulator_chat() -> None:
    app = emulator.create_app()
    out = await rt.chat(
        T,
        app,
        {
            "model": "x",
            "top_p": 1,
            "messages": [{"role": "system", "content": "Terse."}, {"role": "user", "content": "hello there"}],
        },
        TARGET,
    )
    assert out["choices"][0]["message"]["content"] == "Emulated Cohere reply to: hello there"
    assert out["usage"]["prompt_tokens"] == 3  # billed units, not the 63 raw tokens
    assert app.state.requests[-1]["body"]["stream"] is False


async def test_emulator_parallel_tool_calls_round_trip() -> None:
    app = emulator.create_app()
    first = [{"role": "user", "content": "Weather in both Paris and Tokyo?"}]
    out = await rt.chat(T, app, {"model": "x", "tools": [WEATHER], "messages": first}, TARGET)
    msg = out["choices"][0]["message"]
    assert out["choices"][0]["finish_reason"] == "tool_calls" and msg["content"].startswith("I will look up")
    assert [json.loads(tc["function"]["arguments"]) for tc in msg["tool_calls"]] == [
        {"city": "Paris"},
        {"city": "Tokyo"},
    ]
    results = [
        {"role": "tool", "tool_call_id": tc["id"], "content": f'{{"temp": {i}}}'}
        for i, tc in enumerate(msg["tool_calls"])
    ]
    final = await rt.chat(T, app, {"model": "x", "tools": [WEATHER], "messages": [*first, msg, *results]}, TARGET)
    assert final["choices"][0]["message"]["content"].startswith("Emulated Cohere summary: get_weather_")
    sent = app.state.requests[-1]["body"]["messages"][1]
    assert sent["tool_plan"] == msg["content"] and "content" not in sent


async def test_emulator_rejects_what_a_wrong_translation_sends() -> None:
    app = emulator.create_app()
    headers = {"authorization": f"Bearer {emulator.API_KEY}"}
    base = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        url = "http://cohere.test/v2/chat"
        for bad in [
            {**base, "top_p": 0.5},
            {**base, "p": 1.0},
            {**base, "tool_choice": "required", "tools": [WEATHER]},
            {**base, "messages": [{"role": "developer", "content": "x"}, {"role": "user", "content": "q"}]},
            {
                **base,
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "tool", "tool_call_id": "nope", "content": "x"},
                ],
            },
            {**base, "response_format": {"type": "json_schema", "json_schema": {}}},
        ]:
            resp = await client.post(url, json=bad, headers=headers)
            assert resp.status_code == 400, bad
            assert set(resp.json()) == {"id", "message"}
        assert (await client.post(url, json=base)).status_code == 401


async def test_emulator_streams() -> None:
    app = emulator.create_app()
    chunks, stream = await rt.stream(
        T,
        app,
        {"model": "x", "tools": [WEATHER], "messages": [{"role": "user", "content": "weather for both?"}]},
        TARGET,
    )
    got = rt.assemble(chunks)
    assert got["content"] == "I will look up the weather for Paris and Tokyo."
    assert [json.loads(c["arguments"]) for c in got["tool_calls"]] == [{"city": "Paris"}, {"city": "Tokyo"}]
    assert got["finish_reason"] == "tool_calls" and stream.usage is not None and got["usage"]["prompt_tokens"] == 3
    chunks, stream = await rt.stream(
        T,
        app,
        {"model": "x", "messages": [{"role": "user", "content": "a story about owls"}]},
        _target("command-a-reasoning"),
    )
    got = rt.assemble(chunks)
    assert (
        got["content"] == "Emulated Cohere reply to: a story about owls"
        and got["reasoning"] == "Considering the question."
    )
    assert got["finish_reason"] == "stop" and len(chunks) > 6
    with pytest.raises(UpstreamError):
        await rt.stream(T, app, {"model": "x", "messages": [{"role": "user", "content": "q"}]}, _target("err-stream"))


async def test_emulator_json_and_tool_choice_none() -> None:
    app = emulator.create_app()
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "p", "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}}},
    }
    out = await rt.chat(
        T, app, {"model": "x", "response_format": fmt, "messages": [{"role": "user", "content": "q"}]}, TARGET
    )
    assert json.loads(out["choices"][0]["message"]["content"]) == {"ok": True}
    out = await rt.chat(
        T,
        app,
        {
            "model": "x",
            "tools": [WEATHER],
            "tool_choice": "none",
            "messages": [{"role": "user", "content": "weather?"}],
        },
        TARGET,
    )
    assert out["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("model", "error", "retry_after"),
    [
        ("err-429", RateLimitError, 7.0),
        ("err-500", UpstreamError, None),
        ("err-503", ServiceUnavailableError, None),
        ("err-401", AuthenticationError, None),
        ("err-498", AuthenticationError, None),
        ("ctx-long", ContextLengthExceeded, None),
    ],
)
async def test_emulator_errors(model: str, error: type[Exception], retry_after: float | None) -> None:
    with pytest.raises(error) as caught:
        await rt.chat(
            T, emulator.create_app(), {"model": "x", "messages": [{"role": "user", "content": "q"}]}, _target(model)
        )
    assert getattr(caught.value, "retry_after", None) == retry_after


async def test_emulator_embeddings() -> None:
    out = await rt.embeddings(
        T, emulator.create_app(), {"model": "e", "input": ["one two", "three"], "dimensions": 4}, TARGET
    )
    assert [len(d["embedding"]) for d in out["data"]] == [4, 4] and out["usage"]["prompt_tokens"] == 3
