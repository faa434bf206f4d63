"""Gemini translator: pure request/response/stream/error mapping, and the same against the Gemini emulator."""

from __future__ import annotations

import json
from typing import Any

import httpx
import msgspec
import pytest

from services.router.providers.base import Target
from services.router.providers.gemini import GeminiTranslator
from services.router.providers.gemini_request import PLACEHOLDER_SIGNATURE
from services.router.providers.gemini_request import build_request as _build_request
from services.router.providers.gemini_schema import to_gemini
from services.router.sse import SseEvent
from shared.errors import (
    AuthenticationError,
    ContentPolicyViolation,
    ContextLengthExceeded,
    InvalidRequestError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
)
from tests.emulators import gemini as emulator
from tests.unit.providers import roundtrip as rt
from tests.unit.providers.roundtrip import canonical, canonical_embeddings

T = GeminiTranslator()
TARGET = Target(
    provider="google", kind="gemini", model="gemini-2.5-flash", api_base="http://gemini.test/", api_key=emulator.API_KEY
)
G3 = Target(
    provider="google",
    kind="gemini",
    model="gemini-3-pro-preview",
    api_base="http://gemini.test",
    api_key=emulator.API_KEY,
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": ["string", "null"], "enum": ["c", "f"]},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def _body(req: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(req.body)
    return body


def build_request(payload: dict[str, Any], model: str) -> dict[str, Any]:
    """The translator's request body for a test's chat body, typed for the assertions."""
    return _build_request(canonical(payload), model)


# --- requests ---------------------------------------------------------------------------------------


def test_request_url_headers_system_and_generation_config() -> None:
    req = T.chat_request(
        canonical(
            {
                "model": "client-name",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "developer", "content": "Use metric."},
                    {"role": "user", "content": "Hi"},
                    {"role": "user", "content": [{"type": "text", "text": "there"}]},
                ],
                "temperature": 0.3,
                "top_p": 0.9,
                "max_completion_tokens": 50,
                "stop": "END",
                "n": 2,
                "seed": 7,
                "presence_penalty": 0.5,
                "user": "ignored",
            }
        ),
        TARGET,
        stream=False,
    )
    assert req.url == "http://gemini.test/v1beta/models/gemini-2.5-flash:generateContent"
    assert req.headers["x-goog-api-key"] == emulator.API_KEY
    assert "authorization" not in req.headers
    body = _body(req)
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Use metric."}]}
    # consecutive user messages merge into one turn
    assert body["contents"] == [{"role": "user", "parts": [{"text": "Hi"}, {"text": "there"}]}]
    assert body["generationConfig"] == {
        "temperature": 0.3,
        "topP": 0.9,
        "presencePenalty": 0.5,
        "seed": 7,
        "maxOutputTokens": 50,
        "stopSequences": ["END"],
        "candidateCount": 2,
    }
    assert "model" not in body and "user" not in body


def test_stream_url_and_deployment_params_under_client_values() -> None:
    target = Target(
        provider="g",
        kind="gemini",
        model="tunedModels/mine",
        api_base="https://x",
        api_version="v1",
        params={"temperature": 0.1, "max_tokens": 9},
    )
    req = T.chat_request(
        canonical({"messages": [{"role": "user", "content": "q"}], "temperature": 0.8}), target, stream=True
    )
    assert req.url == "https://x/v1/tunedModels/mine:streamGenerateContent?alt=sse"
    assert _body(req)["generationConfig"] == {"temperature": 0.8, "maxOutputTokens": 9}


def test_images_become_inline_or_file_data() -> None:
    body = build_request(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in these?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.JPG?size=2"}},
                        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                    ],
                }
            ]
        },
        "gemini-2.5-flash",
    )
    assert body["contents"][0]["parts"] == [
        {"text": "What is in these?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"fileUri": "https://example.com/cat.JPG?size=2", "mimeType": "image/jpeg"}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
    ]
    with pytest.raises(InvalidRequestError):
        build_request(
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]}, "m"
        )


def test_tools_schema_is_cut_to_gemini_subset() -> None:
    body = build_request({"messages": [{"role": "user", "content": "q"}], "tools": [WEATHER]}, "m")
    decl = body["tools"][0]["functionDeclarations"][0]
    assert decl == {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "OBJECT",
            "properties": {
                "city": {"type": "STRING", "description": "City name"},
                "unit": {"type": "STRING", "nullable": True, "enum": ["c", "f"], "format": "enum"},
            },
            "required": ["city"],
        },
    }
    assert "toolConfig" not in body


def test_schema_refs_any_of_and_free_form_objects() -> None:
    schema = {
        "type": "object",
        "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number"}}, "additionalProperties": False}},
        "properties": {
            "p": {"$ref": "#/$defs/Point"},
            "maybe": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "either": {"oneOf": [{"type": "string"}, {"type": "boolean"}]},
            "when": {"type": "string", "format": "date-time"},
            "mail": {"type": "string", "format": "email"},
            "k": {"const": 3},
        },
    }
    out = to_gemini(schema, where="s")
    assert out["properties"] == {
        "p": {"type": "OBJECT", "properties": {"x": {"type": "NUMBER"}}},
        "maybe": {"nullable": True, "type": "INTEGER"},
        "either": {"anyOf": [{"type": "STRING"}, {"type": "BOOLEAN"}]},
        "when": {"type": "STRING", "format": "date-time"},
        "mail": {"type": "STRING"},
        "k": {"enum": ["3"], "type": "STRING", "format": "enum"},
    }
    # a free-form object has no OpenAPI-subset form: the JSON Schema goes as parametersJsonSchema
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {
                "$schema": "x",
                "type": "object",
                "properties": {"meta": {"type": "object", "additionalProperties": True}},
            },
        },
    }
    decl = build_request({"messages": [{"role": "user", "content": "q"}], "tools": [tool]}, "m")["tools"][0]
    assert decl["functionDeclarations"][0] == {
        "name": "f",
        "parametersJsonSchema": {
            "type": "object",
            "properties": {"meta": {"type": "object", "additionalProperties": True}},
        },
    }
    # no parameters at all: none declared (Gemini rejects an OBJECT without properties)
    bare = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}
    decl = build_request({"messages": [{"role": "user", "content": "q"}], "tools": [bare]}, "m")["tools"][0]
    assert decl == {"functionDeclarations": [{"name": "now"}]}
    with pytest.raises(InvalidRequestError):
        to_gemini({"$ref": "#/$defs/Missing"}, where="s")


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("none", {"functionCallingConfig": {"mode": "NONE"}}),
        ("required", {"functionCallingConfig": {"mode": "ANY"}}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
        ),
        ("auto", None),
    ],
)
def test_tool_choice(choice: Any, config: Any) -> None:
    body = build_request(
        {"messages": [{"role": "user", "content": "q"}], "tools": [WEATHER], "tool_choice": choice}, "m"
    )
    assert body.get("toolConfig") == config


def test_tool_history_becomes_function_call_and_response_parts() -> None:
    body = build_request(
        {
            "messages": [
                {"role": "user", "content": "Weather in Paris and Tokyo?"},
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": "a1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                            "extra_content": {"google": {"thought_signature": "c2ln"}},
                        },
                        {
                            "id": "a2",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Tokyo"}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "a1", "content": '{"temp": 21}'},
                {"role": "tool", "tool_call_id": "a2", "content": "sunny"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "b1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "b1", "content": [{"type": "text", "text": "[1, 2]"}]},
            ]
        },
        "m",
    )
    contents = body["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user", "model", "user"]
    assert contents[1]["parts"] == [
        {"text": "Checking."},
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2ln"},
        {"functionCall": {"name": "get_weather", "args": {"city": "Tokyo"}}},
    ]
    assert contents[2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
        {"functionResponse": {"name": "get_weather", "response": {"output": "sunny"}}},
    ]
    # no signature came back: the documented placeholder on the step's first call
    assert contents[3]["parts"][0]["thoughtSignature"] == PLACEHOLDER_SIGNATURE
    assert contents[4]["parts"][0]["functionResponse"]["response"] == {"output": [1, 2]}


def test_tool_message_without_a_matching_call_is_rejected() -> None:
    with pytest.raises(InvalidRequestError) as err:
        build_request(
            {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "tool_call_id": "zz", "content": "x"}]},
            "m",
        )
    assert err.value.param == "messages[1].tool_call_id"
    bad_args = {
        "role": "assistant",
        "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{oops"}}],
    }
    with pytest.raises(InvalidRequestError):
        build_request({"messages": [{"role": "user", "content": "q"}, bad_args]}, "m")
    with pytest.raises(InvalidRequestError):
        build_request({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "m")


def test_json_mode_structured_output_and_reasoning_effort() -> None:
    msgs = [{"role": "user", "content": "q"}]
    gen = build_request({"messages": msgs, "response_format": {"type": "json_object"}}, "m")["generationConfig"]
    assert gen == {"responseMimeType": "application/json"}
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": schema}}
    gen = build_request({"messages": msgs, "response_format": fmt}, "m")["generationConfig"]
    assert gen["responseSchema"] == {"type": "OBJECT", "properties": {"name": {"type": "STRING"}}, "required": ["name"]}
    assert build_request({"messages": msgs, "reasoning_effort": "low"}, "gemini-2.5-flash")["generationConfig"] == {
        "thinkingConfig": {"thinkingBudget": 1024}
    }
    assert build_request({"messages": msgs, "reasoning_effort": "high"}, "gemini-3-pro")["generationConfig"] == {
        "thinkingConfig": {"thinkingLevel": "high"}
    }


# --- responses --------------------------------------------------------------------------------------


def _parse(payload: dict[str, Any]) -> dict[str, Any]:
    out = T.parse_chat(json.dumps(payload).encode(), TARGET, rt.RESPONSE_ID, rt.CREATED)
    assert isinstance(out, dict)
    return out


def test_parse_text_thoughts_tool_calls_and_usage() -> None:
    out = _parse(
        {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [
                            {"text": "Let me think.", "thought": True},
                            {"text": "Calling."},
                            {
                                "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                                "thoughtSignature": "c2ln",
                            },
                            {"functionCall": {"name": "get_weather", "args": {"city": "Tokyo"}}},
                        ],
                    },
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": 100,
                "candidatesTokenCount": 20,
                "thoughtsTokenCount": 30,
                "cachedContentTokenCount": 64,
                "totalTokenCount": 150,
            },
            "modelVersion": "gemini-2.5-flash-001",
        }
    )
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    msg = choice["message"]
    assert msg["content"] == "Calling." and msg["reasoning_content"] == "Let me think."
    assert [tc["function"] for tc in msg["tool_calls"]] == [
        {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"name": "get_weather", "arguments": '{"city":"Tokyo"}'},
    ]
    ids = [tc["id"] for tc in msg["tool_calls"]]
    assert len(set(ids)) == 2 and all(i.startswith("call_") for i in ids)
    assert msg["tool_calls"][0]["extra_content"] == {"google": {"thought_signature": "c2ln"}}
    assert "extra_content" not in msg["tool_calls"][1]
    assert out["usage"] == {
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "total_tokens": 150,
        "prompt_tokens_details": {"cached_tokens": 64},
        "completion_tokens_details": {"reasoning_tokens": 30},
    }
    usage = T.usage_of(out)
    assert usage is not None and (
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_tokens,
        usage.reasoning_tokens,
    ) == (100, 50, 64, 30)


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("OTHER", "stop"),
    ],
)
def test_finish_reasons(reason: str, expected: str) -> None:
    out = _parse({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason}]})
    assert out["choices"][0]["finish_reason"] == expected


def test_blocked_prompt_and_empty_answer() -> None:
    with pytest.raises(ContentPolicyViolation):
        _parse({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}})
    with pytest.raises(UpstreamError):
        _parse({})
    with pytest.raises(UpstreamError):
        T.parse_chat(b"<html>", TARGET, rt.RESPONSE_ID, rt.CREATED)


def _events(*payloads: dict[str, Any]) -> list[SseEvent]:
    return [SseEvent("", json.dumps(p).encode()) for p in payloads]


def test_stream_text_parallel_calls_finish_and_usage() -> None:
    stream = T.open_stream(TARGET, rt.RESPONSE_ID, rt.CREATED)
    chunks: list[Any] = []
    for event in _events(
        {
            "candidates": [{"content": {"parts": [{"text": "Hel"}], "role": "model"}}],
            "usageMetadata": {"promptTokenCount": 5},
        },
        {"candidates": [{"content": {"parts": [{"text": "lo"}], "role": "model"}}]},
        {
            "candidates": [
                {
                    "content": {
                        "parts": [
                            {"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": "c2ln"},
                            {"functionCall": {"name": "g", "args": {}}},
                        ]
                    },
                    "finishReason": "STOP",
                }
            ],
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 9, "totalTokenCount": 14},
        },
    ):
        assert not stream.done()
        chunks.extend(stream.feed(event))
    assert stream.done()
    chunks.extend(stream.finish())
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    got = rt.assemble(chunks)
    assert got["content"] == "Hello" and got["roles"] == 1
    assert [(c["name"], c["arguments"]) for c in got["tool_calls"]] == [("f", '{"a":1}'), ("g", "{}")]
    assert got["tool_calls"][0]["extra"] == {"google": {"thought_signature": "c2ln"}}
    assert got["finish_reason"] == "tool_calls" and stream.finish_reason == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 9
    assert stream.usage is not None and stream.usage.input_tokens == 5 and stream.usage.output_tokens == 9


def test_stream_errors() -> None:
    stream = T.open_stream(TARGET, rt.RESPONSE_ID, rt.CREATED)
    stream.feed(_events({"candidates": [{"content": {"parts": [{"text": "a"}]}}]})[0])
    with pytest.raises(ServiceUnavailableError):
        stream.feed(_events({"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}})[0])
    truncated = T.open_stream(TARGET, rt.RESPONSE_ID, rt.CREATED)
    truncated.feed(_events({"candidates": [{"content": {"parts": [{"text": "a"}]}}]})[0])
    with pytest.raises(UpstreamError):
        truncated.finish()


def test_parse_error_taxonomy() -> None:
    def err(status: int, body: Any, headers: dict[str, str] | None = None) -> Any:
        return T.parse_error(status, json.dumps(body).encode(), headers or {})

    key = err(
        400,
        {
            "error": {
                "code": 400,
                "message": "API key not valid.",
                "status": "INVALID_ARGUMENT",
                "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}],
            }
        },
    )
    assert isinstance(key, AuthenticationError)
    limited = err(
        429,
        {
            "error": {
                "code": 429,
                "message": "quota",
                "status": "RESOURCE_EXHAUSTED",
                "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}],
            }
        },
    )
    assert isinstance(limited, RateLimitError) and limited.retry_after == 37.0
    header_wins = err(
        429, {"error": {"code": 429, "message": "q", "details": [{"retryDelay": "37s"}]}}, {"retry-after": "3"}
    )
    assert header_wins.retry_after == 3.0
    too_long = err(
        400,
        {
            "error": {
                "code": 400,
                "status": "INVALID_ARGUMENT",
                "message": "The input token count (2000000) exceeds the maximum number of tokens allowed (1048576).",
            }
        },
    )
    assert isinstance(too_long, ContextLengthExceeded)
    assert isinstance(err(500, [{"error": {"code": 500, "message": "internal", "status": "INTERNAL"}}]), UpstreamError)
    assert isinstance(
        err(403, {"error": {"code": 403, "message": "denied", "status": "PERMISSION_DENIED"}}), PermissionDeniedError
    )
    plain = T.parse_error(502, b"<html>bad gateway</html>", {})
    assert isinstance(plain, UpstreamError)


def test_embeddings_request_and_parse() -> None:
    one = T.embeddings_request(canonical_embeddings({"model": "e", "input": "hello", "dimensions": 4}), TARGET)
    assert one.url.endswith("/v1beta/models/gemini-2.5-flash:embedContent")
    assert _body(one) == {"content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 4}
    many = T.embeddings_request(canonical_embeddings({"model": "e", "input": ["a", "b"]}), TARGET)
    assert many.url.endswith(":batchEmbedContents")
    assert [r["model"] for r in _body(many)["requests"]] == ["models/gemini-2.5-flash"] * 2
    with pytest.raises(InvalidRequestError):
        T.embeddings_request(canonical_embeddings({"model": "e", "input": [[1, 2, 3]]}), TARGET)
    parsed: Any = T.parse_embeddings(b'{"embeddings": [{"values": [0.1, 0.2]}, {"values": [0.3, 0.4]}]}', TARGET)
    assert [d["embedding"] for d in parsed["data"]] == [[0.1, 0.2], [0.3, 0.4]]


# --- against the emulator ---------------------------------------------------------------------------


async def test_emulator_chat_with_system_and_image() -> None:
    app = emulator.create_app()
    out = await rt.chat(
        T,
        app,
        {
            "model": "x",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Describe this picture"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    ],
                },
            ],
            "max_tokens": 100,
        },
        TARGET,
    )
    assert out["choices"][0]["message"]["content"] == "Emulated Gemini reply to: Describe this picture"
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["prompt_tokens"] == 6
    sent = app.state.requests[-1]
    assert sent["headers"]["x-goog-api-key"] == emulator.API_KEY
    assert sent["body"]["generationConfig"] == {"maxOutputTokens": 100}


async def test_emulator_parallel_tool_calls_then_results_on_gemini_3() -> None:
    app = emulator.create_app()
    first = {
        "model": "x",
        "tools": [WEATHER],
        "messages": [{"role": "user", "content": "Weather in both Paris and Tokyo?"}],
    }
    out = await rt.chat(T, app, first, G3)
    msg = out["choices"][0]["message"]
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert [json.loads(tc["function"]["arguments"]) for tc in msg["tool_calls"]] == [
        {"city": "Paris"},
        {"city": "Tokyo"},
    ]
    results = [
        {"role": "tool", "tool_call_id": tc["id"], "content": json.dumps({"temp_c": 20 + i})}
        for i, tc in enumerate(msg["tool_calls"])
    ]
    follow = {"model": "x", "tools": [WEATHER], "messages": [*first["messages"], msg, *results]}
    final = await rt.chat(T, app, follow, G3)
    assert final["choices"][0]["message"]["content"].startswith("Emulated Gemini summary: get_weather returned")
    sent_calls = app.state.requests[-1]["body"]["contents"][1]["parts"]
    assert sent_calls[0]["thoughtSignature"] == emulator.SIGNATURE  # the real signature went back
    # a client that dropped extra_content still gets through (placeholder signature)
    stripped = {
        **msg,
        "tool_calls": [{k: v for k, v in tc.items() if k != "extra_content"} for tc in msg["tool_calls"]],
    }
    again = await rt.chat(T, app, {**follow, "messages": [*first["messages"], stripped, *results]}, G3)
    assert again["choices"][0]["finish_reason"] == "stop"


async def test_emulator_rejects_what_the_real_api_rejects() -> None:
    """The emulator's checks can fail: raw Gemini requests a wrong translation would produce."""
    app = emulator.create_app()
    transport = httpx.ASGITransport(app=app)
    url = "http://gemini.test/v1beta/models/gemini-3-pro:generateContent"
    headers = {"x-goog-api-key": emulator.API_KEY}
    calls = {
        "role": "model",
        "parts": [{"functionCall": {"name": "f", "args": {}}}, {"functionCall": {"name": "f", "args": {}}}],
    }
    bad = [
        {"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]},
        {
            "contents": [{"role": "user", "parts": [{"text": "q"}]}],
            "tools": [
                {
                    "functionDeclarations": [
                        {
                            "name": "f",
                            "parameters": {
                                "type": "object",
                                "properties": {"a": {"type": "string"}},
                                "additionalProperties": False,
                            },
                        }
                    ]
                }
            ],
        },
        {
            "contents": [
                {"role": "user", "parts": [{"text": "q"}]},
                calls,
                {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]},
            ]
        },
        {"contents": [{"role": "user", "parts": [{"text": "q"}]}], "generationConfig": {"top_k": 3, "max_tokens": 5}},
        {"messages": [{"role": "user", "content": "q"}]},
    ]
    async with httpx.AsyncClient(transport=transport) as client:
        for body in bad:
            resp = await client.post(url, json=body, headers=headers)
            assert resp.status_code == 400, body
            assert resp.json()["error"]["status"] == "INVALID_ARGUMENT"
        missing_sig = {
            "contents": [
                {"role": "user", "parts": [{"text": "q"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "f"}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]},
            ]
        }
        resp = await client.post(url, json=missing_sig, headers=headers)
        assert resp.status_code == 400 and "thought_signature" in resp.json()["error"]["message"]
        resp = await client.post(url, json={"contents": [{"parts": [{"text": "q"}]}]})
        assert resp.status_code == 403


async def test_emulator_stream_text_and_tool_calls() -> None:
    app = emulator.create_app()
    chunks, stream = await rt.stream(
        T, app, {"model": "x", "messages": [{"role": "user", "content": "tell me about SSE framing please"}]}, TARGET
    )
    got = rt.assemble(chunks)
    assert got["content"] == "Emulated Gemini reply to: tell me about SSE framing please"
    assert got["finish_reason"] == "stop" and got["roles"] == 1
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) > 2
    assert got["usage"]["prompt_tokens"] == 6 and stream.usage.output_tokens == got["usage"]["completion_tokens"]
    assert app.state.requests[-1]["query"] == "alt=sse"

    chunks, stream = await rt.stream(
        T, app, {"model": "x", "tools": [WEATHER], "messages": [{"role": "user", "content": "weather for both?"}]}, G3
    )
    got = rt.assemble(chunks)
    assert [c["arguments"] for c in got["tool_calls"]] == ['{"city":"Paris"}', '{"city":"Tokyo"}']
    assert got["finish_reason"] == "tool_calls" and stream.finish_reason == "tool_calls"


async def test_emulator_json_schema_max_tokens_and_filters() -> None:
    app = emulator.create_app()
    fmt = {
        "type": "json_schema",
        "json_schema": {
            "name": "p",
            "schema": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                "additionalProperties": False,
            },
        },
    }
    out = await rt.chat(
        T, app, {"model": "x", "response_format": fmt, "messages": [{"role": "user", "content": "who?"}]}, TARGET
    )
    assert json.loads(out["choices"][0]["message"]["content"]) == {"name": "emulated", "age": 1}
    out = await rt.chat(
        T, app, {"model": "x", "max_tokens": 2, "messages": [{"role": "user", "content": "a b c d"}]}, TARGET
    )
    assert out["choices"][0]["finish_reason"] == "length"
    safety = Target(provider="g", kind="gemini", model="safety", api_base="http://g", api_key=emulator.API_KEY)
    out = await rt.chat(T, app, {"model": "x", "messages": [{"role": "user", "content": "q"}]}, safety)
    assert out["choices"][0]["finish_reason"] == "content_filter"
    blocked = Target(provider="g", kind="gemini", model="blocked", api_base="http://g", api_key=emulator.API_KEY)
    with pytest.raises(ContentPolicyViolation):
        await rt.chat(T, app, {"model": "x", "messages": [{"role": "user", "content": "q"}]}, blocked)
    thinking = Target(provider="g", kind="gemini", model="gemini-think", api_base="http://g", api_key=emulator.API_KEY)
    out = await rt.chat(T, app, {"model": "x", "messages": [{"role": "user", "content": "q"}]}, thinking)
    assert out["usage"]["completion_tokens_details"]["reasoning_tokens"] == 5


@pytest.mark.parametrize(
    ("model", "error", "retry_after"),
    [
        ("err-429", RateLimitError, 7.0),
        ("err-500", UpstreamError, None),
        ("err-503", ServiceUnavailableError, None),
        ("err-401", AuthenticationError, None),
    ],
)
async def test_emulator_errors(model: str, error: type[Exception], retry_after: float | None) -> None:
    target = Target(provider="g", kind="gemini", model=model, api_base="http://g", api_key=emulator.API_KEY)
    with pytest.raises(error) as caught:
        await rt.chat(T, emulator.create_app(), {"model": "x", "messages": [{"role": "user", "content": "q"}]}, target)
    assert getattr(caught.value, "retry_after", None) == retry_after


async def test_emulator_bad_key_and_mid_stream_error() -> None:
    app = emulator.create_app()
    wrong = Target(provider="g", kind="gemini", model="m", api_base="http://g", api_key="nope")
    with pytest.raises(AuthenticationError):
        await rt.chat(T, app, {"model": "x", "messages": [{"role": "user", "content": "q"}]}, wrong)
    broken = Target(provider="g", kind="gemini", model="err-stream", api_base="http://g", api_key=emulator.API_KEY)
    with pytest.raises(UpstreamError):
        await rt.stream(T, app, {"model": "x", "messages": [{"role": "user", "content": "a b c d e f g"}]}, broken)


async def test_emulator_embeddings() -> None:
    app = emulator.create_app()
    one = await rt.embeddings(T, app, {"model": "e", "input": "hello", "dimensions": 4}, TARGET)
    assert len(one["data"]) == 1 and len(one["data"][0]["embedding"]) == 4
    many = await rt.embeddings(T, app, {"model": "e", "input": ["a", "b", "a"]}, TARGET)
    vectors = [d["embedding"] for d in many["data"]]
    assert [d["index"] for d in many["data"]] == [0, 1, 2] and vectors[0] == vectors[2] != vectors[1]
    assert msgspec.json.decode(msgspec.json.encode(many))["object"] == "list"
