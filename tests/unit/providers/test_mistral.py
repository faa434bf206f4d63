"""Mistral translator: pure request/response/stream/error mapping, and the same against the Mistral emulator."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from services.router.providers.base import Target
from services.router.providers.mistral import MistralTranslator, mistral_id
from services.router.providers.mistral import build_request as _build_request
from services.router.sse import SseEvent
from shared.errors import (
    AuthenticationError,
    ContextLengthExceeded,
    InvalidRequestError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableEntityError,
    UpstreamError,
)
from tests.emulators import mistral as emulator
from tests.unit.providers import roundtrip as rt
from tests.unit.providers.roundtrip import canonical, canonical_embeddings

T = MistralTranslator()
TARGET = Target(
    provider="mistral",
    kind="mistral",
    model="mistral-large-latest",
    api_base="http://mistral.test/",
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


def _target(model: str) -> Target:
    return Target(
        provider="mistral", kind="mistral", model=model, api_base="http://mistral.test", api_key=emulator.API_KEY
    )


def build_request(payload: dict[str, Any], model: str, *, stream: bool) -> dict[str, Any]:
    """The translator's request body for a test's chat body, typed for the assertions."""
    return _build_request(canonical(payload), model, stream=stream)


# --- requests ---------------------------------------------------------------------------------------


def test_request_keeps_only_mistral_fields_and_renames() -> None:
    req = T.chat_request(
        canonical(
            {
                "model": "client-name",
                "messages": [
                    {"role": "developer", "content": "Be brief."},
                    {"role": "user", "content": "Hi", "name": "bob"},
                ],
                "seed": 42,
                "max_completion_tokens": 64,
                "stop": "END",
                "temperature": 0.2,
                "top_p": 0.9,
                "user": "u-1",
                "logit_bias": {"1": 2},
                "store": True,
                "stream_options": {"include_usage": True},
                "safe_prompt": True,
                "parallel_tool_calls": False,
                "reasoning_effort": "medium",
            }
        ),
        TARGET,
        stream=True,
    )
    assert req.url == "http://mistral.test/v1/chat/completions"
    assert req.headers["authorization"] == f"Bearer {emulator.API_KEY}"
    assert req.headers["accept"] == "text/event-stream"
    assert json.loads(req.body) == {
        "model": "mistral-large-latest",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "temperature": 0.2,
        "top_p": 0.9,
        "parallel_tool_calls": False,
        "safe_prompt": True,
        "max_tokens": 64,
        "random_seed": 42,
        "stop": ["END"],
        "reasoning_effort": "high",
        "stream": True,
    }


def test_tool_call_ids_are_mapped_consistently() -> None:
    assert mistral_id("D681PevKs") == "D681PevKs"
    foreign = mistral_id("call_9f8e7d6c5b4a")
    assert re.fullmatch(r"[A-Za-z0-9]{9}", foreign) and foreign == mistral_id("call_9f8e7d6c5b4a")
    assert mistral_id("call_1") != mistral_id("call_2")
    body = build_request(
        {
            "messages": [
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "content": "",
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "call_9f8e7d6c5b4a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_9f8e7d6c5b4a", "content": "cold"},
            ]
        },
        "m",
        stream=False,
    )
    assistant, tool = body["messages"][1], body["messages"][2]
    assert assistant == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": foreign, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
        ],
    }
    assert tool == {"role": "tool", "content": "cold", "tool_call_id": foreign, "name": "get_weather"}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "any"),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
    ],
)
def test_tools_and_tool_choice(choice: Any, expected: Any) -> None:
    body = build_request(
        {"messages": [{"role": "user", "content": "q"}], "tools": [WEATHER], "tool_choice": choice}, "m", stream=False
    )
    assert body["tool_choice"] == expected
    assert body["tools"] == [WEATHER]


def test_images_structured_output_and_prediction() -> None:
    body = build_request(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "low"}},
                    ],
                }
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "a", "strict": True, "schema": {"type": "object"}},
            },
            "prediction": {"type": "content", "content": [{"type": "text", "text": "draft"}]},
            "tools": [{"type": "function", "function": {"name": "noargs"}}],
        },
        "m",
        stream=False,
    )
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "low"}},
    ]
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "a", "schema": {"type": "object"}, "strict": True},
    }
    assert body["prediction"] == {"type": "content", "content": "draft"}
    # Mistral requires parameters on every function
    assert body["tools"][0]["function"]["parameters"] == {"type": "object", "properties": {}}
    with pytest.raises(InvalidRequestError):
        build_request(
            {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}]}, "m", stream=False
        )
    with pytest.raises(InvalidRequestError):
        build_request(
            {"messages": [{"role": "user", "content": "q"}], "tools": [{"type": "web_search"}]}, "m", stream=False
        )


# --- responses --------------------------------------------------------------------------------------


def _parse(payload: dict[str, Any]) -> dict[str, Any]:
    out = T.parse_chat(json.dumps(payload).encode(), TARGET, rt.RESPONSE_ID, rt.CREATED)
    assert isinstance(out, dict)
    return out


def test_parse_tool_calls_thinking_chunks_and_usage() -> None:
    out = _parse(
        {
            "id": "abc",
            "object": "chat.completion",
            "model": "magistral-medium-2509",
            "created": 1,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": [
                            {"type": "thinking", "thinking": [{"type": "text", "text": "Hmm."}]},
                            {"type": "text", "text": "Calling it."},
                        ],
                        "tool_calls": [
                            {"id": "D681PevKs", "function": {"name": "f", "arguments": {"a": 1}}, "index": 0}
                        ],
                    },
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {
                "prompt_tokens": 12,
                "completion_tokens": 8,
                "total_tokens": 20,
                "prompt_tokens_details": {"cached_tokens": 4},
            },
        }
    )
    msg = out["choices"][0]["message"]
    assert msg["content"] == "Calling it." and msg["reasoning_content"] == "Hmm."
    assert msg["tool_calls"] == [
        {"id": "D681PevKs", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    ]
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert out["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}
    usage = T.usage_of(out)
    assert usage is not None and (usage.input_tokens, usage.output_tokens, usage.cached_tokens) == (12, 8, 4)


def test_finish_reasons_and_errors_in_body() -> None:
    def reason(r: str) -> Any:
        return _parse({"choices": [{"index": 0, "message": {"content": "x"}, "finish_reason": r}]})["choices"][0][
            "finish_reason"
        ]

    assert (reason("stop"), reason("length"), reason("model_length")) == ("stop", "length", "length")
    with pytest.raises(UpstreamError):
        reason("error")
    with pytest.raises(UpstreamError):
        _parse({"object": "error", "message": "boom"})


def test_stream_chunks_are_normalised() -> None:
    stream = T.open_stream(TARGET, rt.RESPONSE_ID, rt.CREATED)
    events = [
        {"id": "x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {"id": "x", "choices": [{"index": 0, "delta": {"content": "Hi "}, "finish_reason": None}]},
        {
            "id": "x",
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {"id": "aaaaaaaaa", "function": {"name": "f", "arguments": '{"a":1}'}, "index": 0},
                            {"id": "bbbbbbbbb", "function": {"name": "g", "arguments": "{}"}, "index": 0},
                        ]
                    },
                    "finish_reason": None,
                }
            ],
        },
        {
            "id": "x",
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
        },
    ]
    chunks: list[Any] = []
    for e in events:
        chunks.extend(stream.feed(SseEvent("", json.dumps(e).encode())))
    assert not stream.done()
    assert stream.feed(SseEvent("", b"[DONE]")) == [] and stream.done()
    got = rt.assemble(chunks)
    assert got["content"] == "Hi " and got["roles"] == 1
    assert [(c["id"], c["name"]) for c in got["tool_calls"]] == [("aaaaaaaaa", "f"), ("bbbbbbbbb", "g")]
    assert got["finish_reason"] == "tool_calls" and stream.finish_reason == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 8
    assert stream.usage is not None and stream.usage.output_tokens == 5
    # every tool call delta is a complete OpenAI delta
    assert all(
        tc["type"] == "function" for c in chunks for ch in c["choices"] for tc in ch["delta"].get("tool_calls", [])
    )
    assert stream.finish() == []
    with pytest.raises(UpstreamError):
        stream.feed(SseEvent("", b'{"object": "error", "message": "overloaded"}'))
    cut = T.open_stream(TARGET, rt.RESPONSE_ID, rt.CREATED)
    cut.feed(SseEvent("", json.dumps(events[1]).encode()))
    with pytest.raises(UpstreamError):
        cut.finish()


def test_parse_error_taxonomy() -> None:
    def err(status: int, body: Any, headers: dict[str, str] | None = None) -> Any:
        return T.parse_error(status, json.dumps(body).encode(), headers or {})

    assert isinstance(err(401, {"message": "Unauthorized", "request_id": "r"}), AuthenticationError)
    limited = err(429, {"object": "error", "message": "Requests rate limit exceeded"}, {"retry-after": "2"})
    assert isinstance(limited, RateLimitError) and limited.retry_after == 2.0
    invalid = err(
        422,
        {
            "object": "error",
            "message": {
                "detail": [{"type": "extra_forbidden", "loc": ["body", "foo"], "msg": "Extra inputs are not permitted"}]
            },
        },
    )
    assert isinstance(invalid, UnprocessableEntityError) and invalid.message == "foo: Extra inputs are not permitted"
    ctx = err(
        400,
        {
            "object": "error",
            "message": "Prompt contains 40000 tokens and 0 draft tokens, too large for model with 32768 maximum "
            "context length",
        },
    )
    assert isinstance(ctx, ContextLengthExceeded)
    assert isinstance(err(503, {"object": "error", "message": "busy"}), ServiceUnavailableError)
    assert isinstance(T.parse_error(500, b"oops", {}), UpstreamError)


def test_embeddings_request_passes_openai_shape_through() -> None:
    req = T.embeddings_request(
        canonical_embeddings(
            {"model": "e", "input": ["a", "b"], "dimensions": 256, "encoding_format": "base64", "user": "x"}
        ),
        TARGET,
    )
    assert req.url == "http://mistral.test/v1/embeddings"
    assert json.loads(req.body) == {
        "model": "mistral-large-latest",
        "input": ["a", "b"],
        "output_dimension": 256,
        "encoding_format": "base64",
    }
    raw = (
        b'{"id":"e","object":"list","data":[{"object":"embedding","embedding":[0.1],"index":0}],'
        b'"usage":{"prompt_tokens":3,"total_tokens":3}}'
    )
    assert T.parse_embeddings(raw, TARGET) == raw


# --- against the emulator ---------------------------------------------------------------------------


async def test_emulator_chat_drops_openai_only_fields() -> None:
    app = emulator.create_app()
    out = await rt.chat(
        T,
        app,
        {
            "model": "x",
            "messages": [
                {"role": "system", "content": "Terse."},
                {"role": "user", "content": "hello there", "name": "bob"},
            ],
            "seed": 1,
            "user": "u",
            "logprobs": False,
            "n": 1,
            "max_completion_tokens": 50,
        },
        TARGET,
    )
    assert out["choices"][0]["message"]["content"] == "Emulated Mistral reply to: hello there"
    assert out["usage"]["prompt_tokens"] == 3
    assert app.state.requests[-1]["body"]["random_seed"] == 1


async def test_emulator_tool_round_trip_with_foreign_history() -> None:
    app = emulator.create_app()
    history = [
        {"role": "user", "content": "What's the weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [
                {
                    "id": "call_from_openai_abcdef",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_from_openai_abcdef", "content": "cold"},
        {"role": "user", "content": "And the weather in both Paris and Tokyo?"},
    ]
    out = await rt.chat(T, app, {"model": "x", "tools": [WEATHER], "messages": history}, TARGET)
    msg = out["choices"][0]["message"]
    assert out["choices"][0]["finish_reason"] == "tool_calls" and len(msg["tool_calls"]) == 2
    results = [
        {"role": "tool", "tool_call_id": tc["id"], "content": f"sunny {i}"} for i, tc in enumerate(msg["tool_calls"])
    ]
    final = await rt.chat(T, app, {"model": "x", "tools": [WEATHER], "messages": [*history, msg, *results]}, TARGET)
    assert (
        final["choices"][0]["message"]["content"]
        == "Emulated Mistral summary: get_weather=sunny 0; get_weather=sunny 1"
    )
    sent = app.state.requests[-1]["body"]["messages"]
    assert sent[4]["tool_calls"][0]["id"] == msg["tool_calls"][0]["id"]  # Mistral's own ids went back as they were


async def test_emulator_rejects_what_the_real_api_rejects() -> None:
    """The emulator's checks can fail: raw requests a pass-through would have sent."""
    app = emulator.create_app()
    headers = {"authorization": f"Bearer {emulator.API_KEY}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        url = "http://mistral.test/v1/chat/completions"
        base = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
        resp = await client.post(url, json={**base, "stream_options": {"include_usage": True}}, headers=headers)
        assert resp.status_code == 422 and resp.json()["message"]["detail"][0]["type"] == "extra_forbidden"
        resp = await client.post(
            url, json={**base, "messages": [{"role": "user", "content": "q", "name": "bob"}]}, headers=headers
        )
        assert resp.status_code == 422
        bad_id = [
            {"role": "user", "content": "q"},
            {"role": "assistant", "tool_calls": [{"id": "call_123456", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_123456", "content": "x"},
        ]
        resp = await client.post(url, json={**base, "messages": bad_id}, headers=headers)
        assert resp.status_code == 400 and "length of 9" in resp.json()["message"]
        resp = await client.post(url, json={**base, "tool_choice": "required", "tools": [WEATHER]}, headers=headers)
        assert resp.status_code == 200
        resp = await client.post(
            url,
            json={**base, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            headers=headers,
        )
        assert resp.status_code == 400 and "Expected last role" in resp.json()["message"]
        resp = await client.post(url, json=base)
        assert resp.status_code == 401


async def test_emulator_stream_tool_calls_and_thinking_model() -> None:
    app = emulator.create_app()
    chunks, stream = await rt.stream(
        T,
        app,
        {"model": "x", "tools": [WEATHER], "messages": [{"role": "user", "content": "weather in both?"}]},
        TARGET,
    )
    got = rt.assemble(chunks)
    assert [json.loads(c["arguments"]) for c in got["tool_calls"]] == [{"city": "Paris"}, {"city": "Tokyo"}]
    assert all(re.fullmatch(r"[A-Za-z0-9]{9}", c["id"]) for c in got["tool_calls"])
    assert got["finish_reason"] == "tool_calls" and stream.done() and stream.usage is not None
    assert "stream_options" not in app.state.requests[-1]["body"]

    chunks, stream = await rt.stream(
        T,
        app,
        {"model": "x", "messages": [{"role": "user", "content": "a long story please"}]},
        _target("magistral-medium"),
    )
    got = rt.assemble(chunks)
    assert got["content"] == "Emulated Mistral reply to: a long story please"
    assert got["reasoning"] == "Considering the question." and got["finish_reason"] == "stop"
    assert got["usage"]["completion_tokens"] == stream.usage.output_tokens > 0


async def test_emulator_json_and_length() -> None:
    app = emulator.create_app()
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "p", "schema": {"type": "object", "properties": {"n": {"type": "integer"}}}},
    }
    out = await rt.chat(
        T, app, {"model": "x", "response_format": fmt, "messages": [{"role": "user", "content": "q"}]}, TARGET
    )
    assert json.loads(out["choices"][0]["message"]["content"]) == {"n": 1}
    out = await rt.chat(
        T, app, {"model": "x", "max_tokens": 2, "messages": [{"role": "user", "content": "a b c"}]}, TARGET
    )
    assert out["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("model", "error", "retry_after"),
    [
        ("err-429", RateLimitError, 7.0),
        ("err-500", UpstreamError, None),
        ("err-503", ServiceUnavailableError, None),
        ("err-401", AuthenticationError, None),
        ("ctx-long", ContextLengthExceeded, None),
    ],
)
async def test_emulator_errors(model: str, error: type[Exception], retry_after: float | None) -> None:
    with pytest.raises(error) as caught:
        await rt.chat(
            T, emulator.create_app(), {"model": "x", "messages": [{"role": "user", "content": "q"}]}, _target(model)
        )
    assert getattr(caught.value, "retry_after", None) == retry_after


async def test_emulator_mid_stream_error_and_embeddings() -> None:
    app = emulator.create_app()
    with pytest.raises(UpstreamError):
        await rt.stream(
            T, app, {"model": "x", "messages": [{"role": "user", "content": "a b c"}]}, _target("err-stream")
        )
    out = await rt.embeddings(T, app, {"model": "e", "input": ["a b", "c"], "dimensions": 4}, TARGET)
    assert [len(d["embedding"]) for d in out["data"]] == [4, 4] and out["usage"]["prompt_tokens"] == 3
