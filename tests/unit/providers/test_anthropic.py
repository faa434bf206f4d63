"""Anthropic translator: pure request/response/stream/error mapping, the same against the emulator, and the SDK."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import httpx2
import msgspec
import pytest
from anthropic.types import ToolParam

from services.router.providers.anthropic import AnthropicTranslator
from services.router.providers.anthropic_request import RESPONSE_TOOL
from services.router.providers.base import Target
from services.router.sse import SseEvent, SseParser
from shared.errors import (
    AuthenticationError,
    ContextLengthExceeded,
    InvalidRequestError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
)
from tests.emulators import anthropic as emulator
from tests.servers import serve_in_thread
from tests.unit.providers import roundtrip as rt
from tests.unit.providers.roundtrip import canonical

T = AnthropicTranslator()
TARGET = Target(
    provider="anthropic",
    kind="anthropic",
    model="claude-sonnet-4-5",
    api_base="http://anthropic.test",
    api_key=emulator.API_KEY,
)
CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Current weather for a city", "parameters": CITY_SCHEMA},
}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def _req(body: dict[str, Any], target: Target = TARGET, *, stream: bool = False) -> dict[str, Any]:
    req = T.chat_request(canonical(body), target, stream=stream)
    out: dict[str, Any] = json.loads(req.body)
    return out


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


# --- request mapping -------------------------------------------------------------------------------


def test_request_url_headers_system_and_defaults() -> None:
    target = Target(
        provider="a",
        kind="anthropic",
        model="claude-x",
        api_base="https://api.anthropic.com/",
        api_key="k",
        headers={"anthropic-beta": "b1"},
    )
    body = {
        "model": "alias",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
            _user("Hi"),
        ],
    }
    req = T.chat_request(canonical(body), target, stream=True)
    assert req.url == "https://api.anthropic.com/v1/messages"
    assert req.headers["x-api-key"] == "k"
    assert req.headers["anthropic-version"] == "2023-06-01"
    assert req.headers["anthropic-beta"] == "b1"
    assert "authorization" not in req.headers
    payload = json.loads(req.body)
    assert payload == {
        "model": "claude-x",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use French."}],
        "stream": True,
    }
    assert (
        T.chat_request(canonical(body), Target("a", "anthropic", "m", "http://h/v1"), stream=False).url
        == "http://h/v1/messages"
    )


def test_max_tokens_client_wins_over_deployment_default_under_either_name() -> None:
    target = Target("a", "anthropic", "m", "http://h", params={"max_completion_tokens": 9000, "temperature": 0.2})
    assert _req({"messages": [_user("x")]}, target)["max_tokens"] == 9000
    assert _req({"messages": [_user("x")], "max_tokens": 50}, target)["max_tokens"] == 50
    assert _req({"messages": [_user("x")], "max_completion_tokens": 70}, target)["max_tokens"] == 70
    assert _req({"messages": [_user("x")]}, target)["temperature"] == 0.2


def test_sampling_stop_user_and_refused_parameters() -> None:
    body = {"messages": [_user("x")], "temperature": 1.7, "top_p": 0.9, "stop": "END", "user": "u-1", "top_k": 5}
    payload = _req(body)
    assert payload["temperature"] == 1.0  # OpenAI's 0..2 clamped to Anthropic's 0..1
    assert payload["top_p"] == 0.9
    assert payload["stop_sequences"] == ["END"]
    assert payload["metadata"] == {"user_id": "u-1"}
    assert payload["top_k"] == 5
    tagged = _req({"messages": [_user("x")], "metadata": {"project": "p"}, "service_tier": "priority"})
    assert "metadata" not in tagged and "service_tier" not in tagged  # OpenAI's meanings, not Anthropic's
    assert _req({"messages": [_user("x")], "service_tier": "standard_only"})["service_tier"] == "standard_only"
    for extra in ({"presence_penalty": 1}, {"seed": 3}, {"frequency_penalty": 0.5}, {"logit_bias": {"1": 2}}):
        assert not set(extra) & set(_req({"messages": [_user("x")], **extra}))
    with pytest.raises(InvalidRequestError, match="'n' must be 1"):
        _req({"messages": [_user("x")], "n": 2})
    with pytest.raises(InvalidRequestError, match="log probabilities"):
        _req({"messages": [_user("x")], "logprobs": True})


def test_images_documents_and_unsupported_parts() -> None:
    parts = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/report.pdf?x=1"}},
    ]
    blocks = _req({"messages": [{"role": "user", "content": parts}]})["messages"][0]["content"]
    assert blocks == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
        {"type": "document", "source": {"type": "url", "url": "https://example.com/report.pdf?x=1"}},
    ]
    bmp = {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}
    with pytest.raises(InvalidRequestError, match="image/bmp"):
        _req({"messages": [{"role": "user", "content": [bmp]}]})
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    with pytest.raises(InvalidRequestError, match="input_audio"):
        _req({"messages": [{"role": "user", "content": [audio]}]})


def test_tools_and_tool_choice_mapping() -> None:
    bare = {"type": "function", "function": {"name": "ping"}}
    base = {"messages": [_user("x")], "tools": [WEATHER, bare]}
    payload = _req(base)
    assert payload["tools"] == [
        {
            "name": "get_weather",
            "input_schema": CITY_SCHEMA,
            "description": "Current weather for a city",
        },
        {"name": "ping", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert payload["tool_choice"] == {"type": "auto"}
    assert _req({**base, "tool_choice": "none"})["tool_choice"] == {"type": "none"}
    assert _req({**base, "tool_choice": "required"})["tool_choice"] == {"type": "any"}
    named = {"type": "function", "function": {"name": "ping"}}
    assert _req({**base, "tool_choice": named})["tool_choice"] == {"type": "tool", "name": "ping"}
    serial = _req({**base, "parallel_tool_calls": False})["tool_choice"]
    assert serial == {"type": "auto", "disable_parallel_tool_use": True}
    allowed = {
        "type": "allowed_tools",
        "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": {"name": "ping"}}]},
    }
    restricted = _req({**base, "tool_choice": allowed})
    assert [t["name"] for t in restricted["tools"]] == ["ping"]
    assert "tool_choice" not in _req({"messages": [_user("x")], "tool_choice": "auto"})


def test_tool_history_becomes_tool_use_and_results_first() -> None:
    body = {
        "messages": [
            _user("Weather in Paris and Tokyo?"),
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {
                        "id": "functions.get_weather:2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "functions.get_weather:2", "content": [{"type": "text", "text": "25C"}]},
            _user("Thanks, and which is warmer?"),
        ],
        "tools": [WEATHER],
    }
    turns = _req(body)["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "functions_get_weather_2", "name": "get_weather", "input": {}},
    ]
    assert turns[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
        {"type": "tool_result", "tool_use_id": "functions_get_weather_2", "content": [{"type": "text", "text": "25C"}]},
        {"type": "text", "text": "Thanks, and which is warmer?"},
    ]
    bad = {
        "messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}]}]
    }
    with pytest.raises(InvalidRequestError, match="JSON object"):
        _req(bad)


def test_legacy_functions_are_rewritten_to_tools() -> None:
    body = {
        "messages": [
            _user("weather?"),
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
            },
            {"role": "function", "name": "get_weather", "content": "-3C"},
        ],
        "functions": [WEATHER["function"]],
        "function_call": {"name": "get_weather"},
    }
    payload = _req(body)
    assert payload["tools"][0]["name"] == "get_weather"
    assert payload["tool_choice"] == {"type": "tool", "name": "get_weather"}
    use = payload["messages"][1]["content"][0]
    result = payload["messages"][2]["content"][0]
    assert use["type"] == "tool_use" and use["input"] == {"city": "Oslo"}
    assert result == {"type": "tool_result", "tool_use_id": use["id"], "content": "-3C"}


def test_response_format_is_a_forced_tool() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "math", "schema": schema, "strict": True}}
    payload = _req({"messages": [_user("2+2?")], "response_format": fmt})
    assert payload["tools"][-1]["name"] == RESPONSE_TOOL
    assert payload["tools"][-1]["input_schema"] == schema
    assert payload["tool_choice"] == {"type": "tool", "name": RESPONSE_TOOL}
    with_tools = _req({"messages": [_user("x")], "response_format": fmt, "tools": [WEATHER]})
    assert with_tools["tool_choice"] == {"type": "any"}  # the model may call the client's tool or answer
    obj = _req({"messages": [_user("x")], "response_format": {"type": "json_object"}})
    assert obj["tools"][0]["input_schema"]["type"] == "object"
    thinking = {"type": "enabled", "budget_tokens": 2048}
    think = _req({"messages": [_user("x")], "response_format": fmt, "thinking": thinking, "temperature": 0.3})
    assert think["tool_choice"] == {"type": "auto"}  # forced tool use is refused with thinking
    assert "temperature" not in think and think["thinking"] == thinking
    assert RESPONSE_TOOL in think["system"][-1]["text"]
    with pytest.raises(InvalidRequestError, match="reserved"):
        _req({"messages": [_user("x")], "tools": [{"type": "function", "function": {"name": RESPONSE_TOOL}}]})
    array = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "array"}}}
    with pytest.raises(InvalidRequestError, match="root"):
        _req({"messages": [_user("x")], "response_format": array})


def test_prefill_cache_control_and_thinking_blocks_roundtrip() -> None:
    sig_block = {"type": "thinking", "thinking": "hmm", "signature": "c2ln"}
    body = {
        "messages": [
            {
                "role": "system",
                "content": [{"type": "text", "text": "Long doc", "cache_control": {"type": "ephemeral"}}],
            },
            _user("go"),
            {
                "role": "assistant",
                "content": None,
                "thinking_blocks": [sig_block],
                "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "t1", "content": "ok"},
            {"role": "assistant", "content": "The answer is "},
        ],
        "tools": [{**WEATHER, "cache_control": {"type": "ephemeral"}}],
    }
    payload = _req(body)
    assert payload["system"] == [{"type": "text", "text": "Long doc", "cache_control": {"type": "ephemeral"}}]
    assert payload["tools"][0]["cache_control"] == {"type": "ephemeral"}
    assert payload["messages"][1]["content"][0] == sig_block
    assert payload["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "The answer is"}]}


# --- response mapping ------------------------------------------------------------------------------


def _message(content: list[dict[str, Any]], stop: str = "end_turn", **usage: int) -> bytes:
    u = {"input_tokens": 10, "output_tokens": 5, **usage}
    body = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929"}
    return json.dumps({**body, "content": content, "stop_reason": stop, "stop_sequence": None, "usage": u}).encode()


def _parse(data: bytes) -> dict[str, Any]:
    out = T.parse_chat(data, TARGET, rt.RESPONSE_ID, rt.CREATED)
    return msgspec.json.decode(out) if isinstance(out, bytes) else dict(out)


def test_response_text_tool_calls_and_usage_with_cache() -> None:
    data = _message(
        [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Tokyo"}},
        ],
        "tool_use",
        cache_read_input_tokens=100,
        cache_creation_input_tokens=20,
    )
    out = _parse(data)
    assert out["id"] == rt.RESPONSE_ID and out["object"] == "chat.completion" and out["created"] == rt.CREATED
    assert out["model"] == "claude-sonnet-4-5-20250929"
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me check."
    calls = choice["message"]["tool_calls"]
    assert [c["id"] for c in calls] == ["toolu_1", "toolu_2"]
    assert json.loads(calls[1]["function"]["arguments"]) == {"city": "Tokyo"}
    assert isinstance(calls[0]["function"]["arguments"], str)
    assert out["usage"]["prompt_tokens"] == 130
    assert out["usage"]["completion_tokens"] == 5
    assert out["usage"]["total_tokens"] == 135
    assert out["usage"]["prompt_tokens_details"]["cached_tokens"] == 100
    assert out["usage"]["prompt_tokens_details"]["cache_write_tokens"] == 20
    usage = T.usage_of(out)
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.cached_tokens, usage.cache_write_tokens) == (130, 5, 100, 20)


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("refusal", "content_filter"),
        ("tool_use", "stop"),  # tool_use without a client tool call: the forced JSON answer
    ],
)
def test_stop_reasons(stop: str, finish: str) -> None:
    assert _parse(_message([{"type": "text", "text": "x"}], stop))["choices"][0]["finish_reason"] == finish


def test_response_tool_answer_becomes_content_and_thinking_is_reasoning() -> None:
    data = _message(
        [
            {"type": "thinking", "thinking": "Two plus two.", "signature": "c2ln"},
            {"type": "redacted_thinking", "data": "xyz"},
            {"type": "tool_use", "id": "toolu_9", "name": RESPONSE_TOOL, "input": {"answer": 4}},
        ],
        "tool_use",
    )
    message = _parse(data)["choices"][0]["message"]
    assert json.loads(message["content"]) == {"answer": 4}
    assert "tool_calls" not in message
    assert message["reasoning_content"] == "Two plus two."
    assert message["thinking_blocks"] == [
        {"type": "thinking", "thinking": "Two plus two.", "signature": "c2ln"},
        {"type": "redacted_thinking", "data": "xyz"},
    ]
    assert _parse(data)["choices"][0]["finish_reason"] == "stop"
    with pytest.raises(UpstreamError):
        T.parse_chat(b"<html>", TARGET, rt.RESPONSE_ID, rt.CREATED)


# --- stream mapping --------------------------------------------------------------------------------


def _ev(kind: str, **data: Any) -> SseEvent:
    return SseEvent(kind, json.dumps({"type": kind, **data}).encode())


def _feed(events: list[SseEvent]) -> tuple[list[dict[str, Any]], Any]:
    stream = T.open_stream(TARGET, rt.RESPONSE_ID, rt.CREATED)
    out: list[dict[str, Any]] = []
    for event in events:
        out += [msgspec.json.decode(c) if isinstance(c, bytes) else c for c in stream.feed(event)]
    out += [msgspec.json.decode(c) if isinstance(c, bytes) else c for c in stream.finish()]
    return out, stream


def _start(**usage: int) -> SseEvent:
    msg = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [], "stop_reason": None}
    return _ev("message_start", message={**msg, "usage": {"input_tokens": 12, "output_tokens": 1, **usage}})


def test_stream_text_role_first_finish_and_final_usage_chunk() -> None:
    events = [
        _start(cache_read_input_tokens=30),
        _ev("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        _ev("ping"),
        _ev("content_block_delta", index=0, delta={"type": "text_delta", "text": "Hello"}),
        _ev("content_block_delta", index=0, delta={"type": "text_delta", "text": " world"}),
        _ev("content_block_stop", index=0),
        _ev("message_delta", delta={"stop_reason": "end_turn", "stop_sequence": None}, usage={"output_tokens": 7}),
        _ev("message_stop"),
    ]
    chunks, stream = _feed(events)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["id"] == rt.RESPONSE_ID and c["object"] == "chat.completion.chunk" for c in chunks)
    assert {c["model"] for c in chunks} == {"m"}  # the snapshot named in message_start
    got = rt.assemble(chunks)
    assert got["content"] == "Hello world"
    assert got["finish_reason"] == "stop" and got["roles"] == 1
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == 42 and chunks[-1]["usage"]["completion_tokens"] == 7
    assert stream.usage.input_tokens == 42 and stream.usage.output_tokens == 7 and stream.usage.cached_tokens == 30
    assert stream.finish_reason == "stop" and stream.done()


def test_stream_parallel_tool_calls_with_split_arguments() -> None:
    def use(i: int, tid: str) -> SseEvent:
        block = {"type": "tool_use", "id": tid, "name": "get_weather", "input": {}}
        return _ev("content_block_start", index=i, content_block=block)

    def part(i: int, s: str) -> SseEvent:
        return _ev("content_block_delta", index=i, delta={"type": "input_json_delta", "partial_json": s})

    events = [
        _start(),
        _ev("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        _ev("content_block_delta", index=0, delta={"type": "text_delta", "text": "Checking both."}),
        _ev("content_block_stop", index=0),
        use(1, "toolu_a"),
        part(1, ""),
        part(1, '{"ci'),
        part(1, 'ty": "Par'),
        part(1, 'is"}'),
        _ev("content_block_stop", index=1),
        use(2, "toolu_b"),
        part(2, '{"city":'),
        part(2, ' "Tokyo"}'),
        _ev("content_block_stop", index=2),
        _ev("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 40}),
        _ev("message_stop"),
    ]
    chunks, stream = _feed(events)
    got = rt.assemble(chunks)
    assert got["content"] == "Checking both."
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for c in got["tool_calls"]] == [
        ("toolu_a", "get_weather", {"city": "Paris"}),
        ("toolu_b", "get_weather", {"city": "Tokyo"}),
    ]
    indexes = [tc["index"] for c in chunks for ch in c["choices"] for tc in ch["delta"].get("tool_calls", [])]
    assert indexes == [0, 0, 0, 0, 1, 1, 1]  # block indexes 1 and 2 become tool-call indexes 0 and 1
    assert got["finish_reason"] == "tool_calls" and stream.finish_reason == "tool_calls"


def test_stream_response_tool_streams_as_content_and_thinking_as_reasoning() -> None:
    block = {"type": "tool_use", "id": "toolu_r", "name": RESPONSE_TOOL, "input": {}}
    events = [
        _start(),
        _ev("content_block_start", index=0, content_block={"type": "thinking", "thinking": ""}),
        _ev("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "Sum it."}),
        _ev("content_block_delta", index=0, delta={"type": "signature_delta", "signature": "c2ln"}),
        _ev("content_block_start", index=1, content_block=block),
        _ev("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": '{"answer"'}),
        _ev("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": ": 4}"}),
        _ev("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 9}),
        _ev("message_stop"),
    ]
    got = rt.assemble(_feed(events)[0])
    assert json.loads(got["content"]) == {"answer": 4}
    assert got["reasoning"] == "Sum it."
    assert got["tool_calls"] == [] and got["finish_reason"] == "stop"


def test_stream_errors() -> None:
    overloaded = _ev("error", error={"type": "overloaded_error", "message": "Overloaded"})
    with pytest.raises(ServiceUnavailableError, match="Overloaded"):
        _feed([_start(), overloaded])
    with pytest.raises(RateLimitError):
        _feed([_start(), _ev("error", error={"type": "rate_limit_error", "message": "slow down"})])
    with pytest.raises(UpstreamError, match="message_stop"):
        _feed([_start(), _ev("content_block_delta", index=0, delta={"type": "text_delta", "text": "cut"})])
    with pytest.raises(UpstreamError):
        _feed([SseEvent("message_start", b"{not json")])


# --- errors ----------------------------------------------------------------------------------------


def _err(etype: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_1"}).encode()


def test_parse_error_statuses_and_retry_after() -> None:
    e = T.parse_error(429, _err("rate_limit_error", "Too many"), {"retry-after": "7"})
    assert isinstance(e, RateLimitError) and e.retry_after == 7.0 and "Too many" in e.message
    e = T.parse_error(529, _err("overloaded_error", "Overloaded"), {})
    assert isinstance(e, ServiceUnavailableError) and e.retryable
    assert isinstance(T.parse_error(401, _err("authentication_error", "invalid x-api-key"), {}), AuthenticationError)
    billing = T.parse_error(402, _err("billing_error", "credit balance too low"), {})
    assert isinstance(billing, PermissionDeniedError) and billing.info().code == "billing_error"
    too_long = T.parse_error(
        400, _err("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"), {}
    )
    assert isinstance(too_long, ContextLengthExceeded)
    assert type(T.parse_error(400, _err("invalid_request_error", "bad"), {})) is InvalidRequestError
    assert type(T.parse_error(500, _err("api_error", "boom"), {})) is UpstreamError
    assert isinstance(T.parse_error(529, b"<html>overloaded</html>", {}), ServiceUnavailableError)
    assert type(T.parse_error(502, b"", {})) is UpstreamError


# --- against the emulator --------------------------------------------------------------------------


async def test_emulator_chat_and_stream() -> None:
    app = emulator.create_app()
    body = {"model": "claude", "messages": [{"role": "system", "content": "Be nice."}, _user("Hello there Claude")]}
    out = await rt.chat(T, app, body, TARGET)
    assert out["choices"][0]["message"]["content"] == "Emulated Claude reply to: Hello there Claude"
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["prompt_tokens"] > 0 and out["usage"]["completion_tokens"] > 0
    sent = app.state.requests[-1]
    assert sent["headers"]["x-api-key"] == emulator.API_KEY and sent["body"]["max_tokens"] == 4096
    chunks, stream = await rt.stream(T, app, body, TARGET)
    got = rt.assemble(chunks)
    assert got["content"] == "Emulated Claude reply to: Hello there Claude"
    assert got["roles"] == 1 and got["finish_reason"] == "stop"
    assert got["usage"]["completion_tokens"] == out["usage"]["completion_tokens"]
    assert stream.usage is not None and stream.usage.output_tokens == out["usage"]["completion_tokens"]


async def test_emulator_parallel_tool_calls_then_results() -> None:
    app = emulator.create_app()
    body: dict[str, Any] = {
        "model": "claude",
        "messages": [_user("What's the weather in both cities?")],
        "tools": [WEATHER],
    }
    out = await rt.chat(T, app, body, TARGET)
    message = out["choices"][0]["message"]
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert [json.loads(c["function"]["arguments"]) for c in message["tool_calls"]] == [
        {"city": "Paris"},
        {"city": "Tokyo"},
    ]
    chunks, _ = await rt.stream(T, app, body, TARGET)
    got = rt.assemble(chunks)
    assert [c["id"] for c in got["tool_calls"]] == [c["id"] for c in message["tool_calls"]]
    assert [json.loads(c["arguments"]) for c in got["tool_calls"]] == [{"city": "Paris"}, {"city": "Tokyo"}]
    history = [
        *body["messages"],
        message,
        *(
            {"role": "tool", "tool_call_id": c["id"], "content": f"sunny in {i}"}
            for i, c in enumerate(message["tool_calls"])
        ),
    ]
    answer = await rt.chat(T, app, {**body, "messages": history}, TARGET)
    assert answer["choices"][0]["message"]["content"] == "Based on the tool results: sunny in 0; sunny in 1"
    serial = await rt.chat(T, app, {**body, "parallel_tool_calls": False}, TARGET)
    assert len(serial["choices"][0]["message"]["tool_calls"]) == 1


async def test_emulator_rejects_what_the_real_api_rejects() -> None:
    app = emulator.create_app()
    # an OpenAI body sent as is: a "system" role and no max_tokens
    transport = httpx.ASGITransport(app=app)
    headers = {"x-api-key": emulator.API_KEY, "anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(transport=transport, base_url="http://a") as client:
        raw = {"model": "m", "max_tokens": 10, "messages": [{"role": "system", "content": "x"}, _user("y")]}
        resp = await client.post("/v1/messages", json=raw, headers=headers)
        assert resp.status_code == 400 and 'Unexpected role "system"' in resp.json()["error"]["message"]
        resp = await client.post("/v1/messages", json={"model": "m", "messages": [_user("y")]}, headers=headers)
        assert resp.json()["error"]["message"] == "max_tokens: Field required"
        resp = await client.post(
            "/v1/messages", json={"model": "m", "max_tokens": 5, "messages": [_user("y")], "n": 1}, headers=headers
        )
        assert resp.json()["error"]["message"] == "n: Extra inputs are not permitted"
        resp = await client.post("/v1/messages", json=raw, headers={"x-api-key": emulator.API_KEY})
        assert resp.status_code == 400 and "anthropic-version" in resp.json()["error"]["message"]
    # a client history whose tool result answers no call is the client's error, reported as Anthropic says it
    stray = {"messages": [_user("hi"), {"role": "tool", "tool_call_id": "call_x", "content": "?"}]}
    with pytest.raises(InvalidRequestError, match="unexpected `tool_use_id`"):
        await rt.chat(T, app, stray, TARGET)
    unanswered = {
        "messages": [
            _user("hi"),
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                ],
            },
            _user("never mind"),
        ],
        "tools": [WEATHER],
    }
    with pytest.raises(InvalidRequestError, match="without `tool_result`"):
        await rt.chat(T, app, unanswered, TARGET)


async def test_emulator_images_prefill_stop_and_max_tokens() -> None:
    app = emulator.create_app()
    parts = [
        {"type": "text", "text": "Describe"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
    ]
    body = {"messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": "Sure: "}]}
    out = await rt.chat(T, app, body, TARGET)
    assert out["choices"][0]["message"]["content"].startswith("Emulated Claude reply to: Describe")
    stopped = await rt.chat(T, app, {"messages": [_user("alpha beta gamma")], "stop": ["beta"]}, TARGET)
    assert stopped["choices"][0]["message"]["content"] == "Emulated Claude reply to: alpha "
    assert stopped["choices"][0]["finish_reason"] == "stop"
    short = await rt.chat(T, app, {"messages": [_user("alpha beta gamma")], "max_tokens": 3}, TARGET)
    assert short["choices"][0]["finish_reason"] == "length"


async def test_emulator_json_response_format() -> None:
    app = emulator.create_app()
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "temp": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": schema}}
    body = {"messages": [_user("Give me JSON")], "response_format": fmt}
    out = await rt.chat(T, app, body, TARGET)
    assert json.loads(out["choices"][0]["message"]["content"]) == {"city": "Paris", "temp": 42}
    assert out["choices"][0]["finish_reason"] == "stop"
    got = rt.assemble((await rt.stream(T, app, body, TARGET))[0])
    assert json.loads(got["content"]) == {"city": "Paris", "temp": 42} and got["finish_reason"] == "stop"


async def test_emulator_thinking_blocks_must_come_back_with_tool_results() -> None:
    app = emulator.create_app()
    thinking = {"type": "enabled", "budget_tokens": 1024}
    body: dict[str, Any] = {
        "messages": [_user("weather in Paris?")],
        "tools": [WEATHER],
        "thinking": thinking,
        "max_tokens": 2048,
    }
    out = await rt.chat(T, app, body, TARGET)
    message = out["choices"][0]["message"]
    assert message["reasoning_content"] and message["thinking_blocks"][0]["signature"]
    result = {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "sunny"}
    follow = {**body, "messages": [*body["messages"], message, result]}
    assert (await rt.chat(T, app, follow, TARGET))["choices"][0]["message"]["content"].endswith("sunny")
    stripped = {k: v for k, v in message.items() if k != "thinking_blocks"}
    with pytest.raises(InvalidRequestError, match="thinking block"):
        await rt.chat(T, app, {**body, "messages": [*body["messages"], stripped, result]}, TARGET)
    got = rt.assemble((await rt.stream(T, app, body, TARGET))[0])
    assert got["reasoning"] and got["tool_calls"]


async def test_emulator_cache_usage() -> None:
    app = emulator.create_app()
    system = {
        "role": "system",
        "content": [{"type": "text", "text": "A long shared document " * 20, "cache_control": {"type": "ephemeral"}}],
    }
    out = await rt.chat(T, app, {"messages": [system, _user("Summarise")]}, TARGET)
    sent = app.state.requests[-1]["body"]
    assert sent["system"][0]["cache_control"] == {"type": "ephemeral"}
    usage = out["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] > 0
    assert usage["prompt_tokens"] > usage["prompt_tokens_details"]["cached_tokens"]


@pytest.mark.parametrize(
    ("model", "error", "retry_after"),
    [
        ("err-429", RateLimitError, 7.0),
        ("err-529", ServiceUnavailableError, None),
        ("err-500", UpstreamError, None),
        ("err-401", AuthenticationError, None),
        ("err-context", ContextLengthExceeded, None),
    ],
)
async def test_emulator_errors(model: str, error: type[Exception], retry_after: float | None) -> None:
    app = emulator.create_app()
    target = Target("anthropic", "anthropic", model, "http://anthropic.test", api_key=emulator.API_KEY)
    with pytest.raises(error) as caught:
        await rt.chat(T, app, {"messages": [_user("hi")]}, target)
    assert getattr(caught.value, "retry_after", None) == retry_after


async def test_emulator_error_inside_stream_and_wrong_key() -> None:
    app = emulator.create_app()
    target = Target("anthropic", "anthropic", "err-stream", "http://anthropic.test", api_key=emulator.API_KEY)
    with pytest.raises(ServiceUnavailableError, match="Overloaded"):
        await rt.stream(T, app, {"messages": [_user("tell me a long story please")]}, target)
    bad_key = Target("anthropic", "anthropic", "claude", "http://anthropic.test", api_key="wrong")
    with pytest.raises(AuthenticationError, match="invalid x-api-key"):
        await rt.chat(T, app, {"messages": [_user("hi")]}, bad_key)


# --- the official SDK accepts the emulator ---------------------------------------------------------


def _sdk(app: Any) -> anthropic.AsyncAnthropic:
    # the SDK speaks httpx2 (it rejects plain httpx clients); the emulator runs in-process over ASGI
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
    return anthropic.AsyncAnthropic(
        api_key=emulator.API_KEY, base_url="http://anthropic.test", http_client=http, max_retries=0
    )


async def test_sdk_reads_emulator_messages_streams_and_errors() -> None:
    app = emulator.create_app()
    client = _sdk(app)
    tool: ToolParam = {"name": "get_weather", "description": "weather", "input_schema": CITY_SCHEMA}
    msg = await client.messages.create(
        model="claude",
        max_tokens=100,
        messages=[{"role": "user", "content": "weather in both places?"}],
        tools=[tool],
    )
    assert msg.stop_reason == "tool_use"
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert [u.input for u in uses] == [{"city": "Paris"}, {"city": "Tokyo"}]
    async with client.messages.stream(
        model="claude",
        max_tokens=100,
        messages=[{"role": "user", "content": "weather in both places?"}],
        tools=[tool],
    ) as stream:
        final = await stream.get_final_message()
    assert [b.input for b in final.content if b.type == "tool_use"] == [{"city": "Paris"}, {"city": "Tokyo"}]
    assert final.usage.output_tokens == msg.usage.output_tokens and final.stop_reason == "tool_use"
    async with client.messages.stream(
        model="claude", max_tokens=100, messages=[{"role": "user", "content": "Say hello to everyone"}]
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
    assert text == "Emulated Claude reply to: Say hello to everyone"
    with pytest.raises(anthropic.RateLimitError):
        await client.messages.create(model="err-429", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.APIStatusError) as caught:
        await client.messages.create(model="err-529", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 529
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": ""}])
    await client.close()


def test_api_version_2026_10_21_drops_sampling_parameters() -> None:
    target = Target("a", "anthropic", "claude", "http://h", api_key="k", api_version="2026-10-21")
    req = T.chat_request(
        canonical({"messages": [_user("x")], "temperature": 0.5, "top_p": 0.9, "top_k": 3}), target, stream=False
    )
    assert req.headers["anthropic-version"] == "2026-10-21"
    assert not {"temperature", "top_p", "top_k"} & set(json.loads(req.body))


async def test_emulator_api_version_2026_10_21() -> None:
    app = emulator.create_app()
    target = Target(
        "a", "anthropic", "claude", "http://anthropic.test", api_key=emulator.API_KEY, api_version="2026-10-21"
    )
    out = await rt.chat(T, app, {"messages": [_user("warm please")], "temperature": 0.3}, target)
    assert out["choices"][0]["message"]["content"] == "Emulated Claude reply to: warm please"
    # what sending the parameter anyway would cost under that version
    headers = {"x-api-key": emulator.API_KEY, "anthropic-version": "2026-10-21"}
    raw = {"model": "claude", "max_tokens": 10, "messages": [_user("x")], "temperature": 0.3}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as client:
        resp = await client.post("/v1/messages", json=raw, headers=headers)
    assert resp.status_code == 400 and resp.json()["error"]["message"].startswith("temperature:")


def test_emulator_runs_under_uvicorn() -> None:
    with serve_in_thread(emulator.create_app()) as base:
        target = Target("a", "anthropic", "claude", base, api_key=emulator.API_KEY)
        req = T.chat_request(canonical({"messages": [_user("over the network")]}), target, stream=True)
        stream = T.open_stream(target, rt.RESPONSE_ID, rt.CREATED)
        parser, chunks = SseParser(), []
        with httpx.Client() as client, client.stream(req.method, req.url, headers=req.headers, content=req.body) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            for raw in r.iter_bytes():
                for event in parser.feed(raw):
                    chunks += [msgspec.json.decode(c) for c in stream.feed(event) if isinstance(c, bytes)]
    assert rt.assemble(chunks)["content"] == "Emulated Claude reply to: over the network" and stream.done()
