"""Anthropic Messages ↔ chat: request and response mapping, the SSE stream, errors, and the official SDK
reading what the translators write."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from services.ingress.surfaces import anthropic_messages as am
from shared.errors import (
    ErrorInfo,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
)
from tests.unit.surfaces.frames import USAGE, call_delta, chunk, completion, frames, split

# ---------------------------------------------------------------- request


def test_full_request_maps_to_chat() -> None:
    body = {
        "model": "claude-sonnet",
        "max_tokens": 512,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "cats", "n": 2}},
                    {"type": "tool_use", "id": "toolu_2", "name": "clock", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "no such cat", "is_error": True},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": [
                            {"type": "text", "text": "12:00"},
                            {"type": "image", "source": {"type": "url", "url": "https://example.com/clock.png"}},
                        ],
                    },
                    {"type": "text", "text": "Go on."},
                ],
            },
        ],
        "tools": [
            {"name": "lookup", "description": "Find things", "input_schema": {"type": "object"}},
            {"type": "custom", "name": "clock", "input_schema": {"type": "object", "properties": {}}},
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "metadata": {"user_id": "u-42"},
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "stream": True,
    }
    assert am.to_chat(body) == {
        "model": "claude-sonnet",
        "max_completion_tokens": 512,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q":"cats","n":2}'},
                    },
                    {"id": "toolu_2", "type": "function", "function": {"name": "clock", "arguments": "{}"}},
                ],
                # gatehouse's convention: the Anthropic translator sends them back, the guard scans them
                "thinking_blocks": [{"type": "thinking", "thinking": "hmm", "signature": "s"}],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: no such cat"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": "12:00"},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "https://example.com/clock.png"}},
                    {"type": "text", "text": "Go on."},
                ],
            },
        ],
        "tools": [
            {
                "type": "function",
                "function": {"name": "lookup", "parameters": {"type": "object"}, "description": "Find things"},
            },
            {"type": "function", "function": {"name": "clock", "parameters": {"type": "object", "properties": {}}}},
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "stop": ["END"],
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u-42",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_minimal_request_has_no_extras() -> None:
    body = {"model": "m", "max_tokens": 5, "system": "sys", "messages": [{"role": "user", "content": "hi"}]}
    assert am.to_chat(body) == {
        "model": "m",
        "max_completion_tokens": 5,
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}],
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "lookup"}, {"type": "function", "function": {"name": "lookup"}}),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: object) -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
        "tool_choice": choice,
    }
    chat = am.to_chat(body)
    assert chat["tool_choice"] == expected
    assert "parallel_tool_calls" not in chat


def test_document_blocks() -> None:
    content = [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
            "title": "a.pdf",
        },
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain words"}},
    ]
    chat = am.to_chat({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": content}]})
    assert chat["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "a.pdf"},  # the title is text the model reads
                {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"}},
                {"type": "text", "text": "plain words"},
            ],
        }
    ]


_OK = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("change", "param", "message"),
    [
        ({"model": None}, "model", "model: Field required"),
        ({"max_tokens": None}, "max_tokens", "max_tokens: Field required"),
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"max_tokens": True}, "max_tokens", "greater than or equal to 1"),
        ({"messages": None}, "messages", "messages: Field required"),
        ({"messages": []}, "messages", "at least one message"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role", "top-level `system`"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content", "Input should be"),
        (
            {"messages": [{"role": "user", "content": [{"type": "audio"}]}]},
            "messages[0].content[0].type",
            "'audio' is not supported",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}
                ]
            },
            "messages[0].content[0].source.type",
            "'file' is not supported",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]},
            "messages[0].content[0].tool_use_id",
            "Field required",
        ),
        (
            {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
            "tools[0].type",
            "'web_search_20250305' is not supported",
        ),
        ({"tools": [{"name": "t"}]}, "tools[0].input_schema", "Field required"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type", "'auto', 'any', 'tool' or 'none'"),
        ({"temperature": "hot"}, "temperature", "valid number"),
        ({"stop_sequences": "END"}, "stop_sequences", "list of strings"),
        ({"mcp_servers": [{"url": "x"}]}, "mcp_servers", "unless an Anthropic deployment serves it"),
        ({"stream": "yes"}, "stream", "valid boolean"),
    ],
)
def test_invalid_requests_name_the_field(change: dict[str, Any], param: str, message: str) -> None:
    body = {**_OK, **change}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(InvalidRequestError) as exc:
        am.to_chat(body)
    info = exc.value.info()
    assert info.status == 400
    assert info.param == param
    assert message in info.message


def test_body_must_be_an_object() -> None:
    with pytest.raises(InvalidRequestError, match="JSON object"):
        am.to_chat([1, 2])


# ---------------------------------------------------------------- response


def test_completion_with_text_and_tool_calls() -> None:
    comp = completion(
        {
            "content": "Checking.",
            "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "cats"}'}},
                {"id": "call_b", "type": "function", "function": {"name": "clock", "arguments": ""}},
            ],
        },
        "tool_calls",
    )
    assert am.from_chat(comp, "claude-x") == {
        "id": "msg_t1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_a", "name": "lookup", "input": {"q": "cats"}},
            {"type": "tool_use", "id": "call_b", "name": "clock", "input": {}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        # Anthropic's input_tokens leaves out cache reads; OpenAI's prompt_tokens counts them
        "usage": {
            "input_tokens": 20,
            "output_tokens": 9,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 5,
        },
    }


@pytest.mark.parametrize(
    ("finish", "choice", "reason", "sequence"),
    [
        ("stop", {}, "end_turn", None),
        ("length", {}, "max_tokens", None),
        ("content_filter", {}, "refusal", None),
        ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),  # vLLM names the matched stop
        ("stop", {"matched_stop": "###"}, "stop_sequence", "###"),  # SGLang
        ("stop", {"stop_reason": 128009}, "end_turn", None),  # a stop token id is not a sequence
        (None, {}, "end_turn", None),
    ],
)
def test_stop_reasons(finish: str | None, choice: dict[str, Any], reason: str, sequence: str | None) -> None:
    msg = am.from_chat(completion({"content": "x"}, finish, **choice), "m")  # type: ignore[arg-type]
    assert (msg["stop_reason"], msg["stop_sequence"]) == (reason, sequence)


def test_tool_calls_with_finish_stop_still_report_tool_use() -> None:
    comp = completion(
        {"content": None, "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]}, "stop"
    )
    msg = am.from_chat(comp, "m")
    assert msg["stop_reason"] == "tool_use"
    assert msg["content"] == [{"type": "tool_use", "id": "c", "name": "f", "input": {}}]


def test_malformed_tool_arguments_are_kept_not_dropped() -> None:
    comp = completion({"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": '{"a": 1'}}]}, "tool_calls")
    assert am.from_chat(comp, "m")["content"][0]["input"] == {"_raw_arguments": '{"a": 1'}


def test_refusal_and_empty_completion() -> None:
    assert am.from_chat(completion({"content": None, "refusal": "No."}, "stop"), "m")["content"] == [
        {"type": "text", "text": "No."}
    ]
    empty = am.from_chat({"choices": [], "usage": None}, "m")
    assert empty["content"] == [] and empty["stop_reason"] == "end_turn"
    assert empty["id"].startswith("msg_") and len(empty["id"]) > 10
    assert empty["usage"]["input_tokens"] == 0 and empty["usage"]["output_tokens"] == 0


def test_completion_bytes_are_read_typed_parsed_arguments_and_legacy_call_included() -> None:
    parsed = completion({"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}]}, "tool_calls")
    assert am.from_chat(json.dumps(parsed).encode(), "m")["content"] == [
        {"type": "tool_use", "id": "c", "name": "f", "input": {"a": 1}}
    ]
    legacy = completion({"content": None, "function_call": {"name": "g", "arguments": '{"b": 2}'}}, "function_call")
    assert am.from_chat(legacy, "m")["content"] == [
        {"type": "tool_use", "id": "call_0", "name": "g", "input": {"b": 2}}
    ]
    empty_legacy = completion({"content": "hi", "function_call": {}}, "stop")
    assert am.from_chat(empty_legacy, "m")["content"] == [{"type": "text", "text": "hi"}]


@pytest.mark.parametrize(
    "answer",
    [
        b"not json",
        completion({"content": 5}, "stop"),  # content is a string or parts
        {"id": "x", "choices": {"0": {}}},
    ],
)
def test_an_answer_that_is_not_a_chat_completion_is_the_upstreams_error(answer: Any) -> None:
    with pytest.raises(UpstreamError, match="not a chat completion"):
        am.from_chat(answer, "m")


def test_a_chunk_that_does_not_fit_reads_empty_and_the_stream_goes_on() -> None:
    stream = am.MessagesStream("m")
    raw = stream.feed(chunk({"content": "a"})) + stream.feed(chunk({"content": ["not", "text"]}))
    raw += stream.feed(chunk({"content": "b"}, "stop")) + stream.finish()
    text = "".join(d["delta"]["text"] for e, d in frames(raw) if e == "content_block_delta")
    assert text == "ab"


# ---------------------------------------------------------------- stream


def _run(chunks: list[dict[str, Any]], model: str = "claude-x") -> list[tuple[str, dict[str, Any]]]:
    stream = am.MessagesStream(model)
    raw = b"".join(stream.feed(c) for c in chunks) + stream.finish()
    assert stream.finish() == b"" and stream.feed(chunk({"content": "late"})) == b""
    return frames(raw)


def test_text_stream() -> None:
    events = _run(
        [
            chunk({"role": "assistant", "content": ""}),
            *[chunk({"content": piece}) for piece in ["Hel", "lo, ", "world"]],
            chunk({}, "stop"),
            chunk(None, usage=USAGE),
        ]
    )
    assert [e for e, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["id"] == "msg_t1" and start["model"] == "claude-x" and start["content"] == []
    assert start["usage"]["input_tokens"] == 0  # not known until the final chunk
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert "".join(d["delta"]["text"] for e, d in events if e == "content_block_delta") == "Hello, world"
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {
            "input_tokens": 20,
            "output_tokens": 9,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 5,
        },
    }


def test_usage_known_early_goes_in_message_start() -> None:
    events = _run([chunk({"content": "hi"}, usage={"prompt_tokens": 7, "completion_tokens": 0}), chunk({}, "length")])
    assert events[0][1]["message"]["usage"]["input_tokens"] == 7
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"


def test_text_then_tool_call_split_across_many_chunks() -> None:
    args = json.dumps({"city": "Paris", "units": "metric", "days": [1, 2, 3]})
    events = _run(
        [
            chunk({"role": "assistant", "content": "Let me check."}),
            chunk(call_delta(0, id="call_w", name="weather", args="")),
            *[chunk(call_delta(0, args=piece)) for piece in split(args, 3)],
            chunk({}, "tool_calls"),
            chunk(None, usage=USAGE),
        ]
    )
    starts = [d for e, d in events if e == "content_block_start"]
    assert starts == [
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "call_w", "name": "weather", "input": {}},
        },
    ]
    partial = [d["delta"]["partial_json"] for e, d in events if e == "content_block_delta" and d["index"] == 1]
    assert len(partial) == len(split(args, 3)) and json.loads("".join(partial)) == json.loads(args)
    stops = [d["index"] for e, d in events if e == "content_block_stop"]
    assert stops == [0, 1]
    # block 0 stops before block 1 starts
    names = [(e, d.get("index")) for e, d in events]
    assert names.index(("content_block_stop", 0)) < names.index(("content_block_start", 1))
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_parallel_tool_calls_get_their_own_blocks() -> None:
    events = _run(
        [
            chunk({"role": "assistant", "content": None}),
            chunk(call_delta(0, id="call_1", name="a", args='{"x"')),
            chunk(call_delta(0, args=": 1}")),
            chunk(call_delta(1, id="call_2", name="b", args="")),
            chunk(call_delta(1, args='{"y": 2}')),
            chunk(call_delta(2, id="call_3", name="c")),
            chunk({}, "tool_calls"),
        ]
    )
    starts = [
        (d["index"], d["content_block"]["id"], d["content_block"]["name"])
        for e, d in events
        if e == "content_block_start"
    ]
    assert starts == [(0, "call_1", "a"), (1, "call_2", "b"), (2, "call_3", "c")]
    by_block: dict[int, str] = {}
    for e, d in events:
        if e == "content_block_delta":
            by_block[d["index"]] = by_block.get(d["index"], "") + d["delta"]["partial_json"]
    assert by_block == {0: '{"x": 1}', 1: '{"y": 2}'}
    assert [d["index"] for e, d in events if e == "content_block_stop"] == [0, 1, 2]
    # no usage chunk at all: message_delta still carries the required output_tokens
    assert events[-2][1]["usage"]["output_tokens"] == 0


def test_tool_name_after_arguments_and_bytes_chunks() -> None:
    stream = am.MessagesStream("m")
    raw = stream.feed(json.dumps(chunk(call_delta(0, args='{"a":'))).encode())
    raw += stream.feed(json.dumps(chunk(call_delta(0, id="call_x", name="f"))).encode())
    raw += stream.feed(json.dumps(chunk(call_delta(0, args="1}"))).encode())
    raw += stream.feed(b"not json") + stream.finish()
    events = frames(raw)
    assert [d["content_block"]["name"] for e, d in events if e == "content_block_start"] == ["f"]
    assert "".join(d["delta"]["partial_json"] for e, d in events if e == "content_block_delta") == '{"a":1}'


def test_empty_stream_is_still_a_whole_message() -> None:
    events = frames(am.MessagesStream("m").finish())
    assert [e for e, _ in events] == ["message_start", "message_delta", "message_stop"]


def test_error_in_the_middle_of_a_stream() -> None:
    stream = am.MessagesStream("m")
    raw = stream.feed(chunk({"content": "partial"}))
    raw += stream.error(UpstreamError("The provider dropped the connection.").info())
    assert stream.finish() == b"" and stream.feed(chunk({"content": "more"})) == b""
    events = frames(raw)
    assert events[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "The provider dropped the connection."}},
    )
    assert "message_stop" not in [e for e, _ in events]


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (InvalidRequestError("bad"), "invalid_request_error"),
        (GatewayError("boom"), "api_error"),
        (NotFoundError("no model"), "not_found_error"),
        (PayloadTooLargeError("big"), "request_too_large"),
        (RateLimitError("slow down"), "rate_limit_error"),
        (UpstreamError("upstream"), "api_error"),
        (ServiceUnavailableError("busy"), "overloaded_error"),
    ],
)
def test_error_body(error: GatewayError, kind: str) -> None:
    assert am.error_body(error.info()) == {"type": "error", "error": {"type": kind, "message": error.message}}


def test_error_body_other_statuses() -> None:
    for status, kind in [
        (401, "authentication_error"),
        (403, "permission_error"),
        (418, "invalid_request_error"),
        (599, "api_error"),
    ]:
        info = ErrorInfo(status=status, type="x", code="y", message="m")
        assert am.error_body(info)["error"] == {"type": kind, "message": "m"}


# ---------------------------------------------------------------- the official SDK reads what we write


@dataclass
class Script:
    """What the fake router answers: a completion, or chunks then an optional error."""

    completion: dict[str, Any] | None = None
    chunks: list[dict[str, Any]] = field(default_factory=list)
    error: ErrorInfo | None = None
    seen: list[dict[str, Any]] = field(default_factory=list)


def _app(script: Script) -> Starlette:
    async def messages(request: Request) -> Response:
        body = await request.json()
        try:
            chat = am.to_chat(body)
        except GatewayError as exc:
            return JSONResponse(am.error_body(exc.info()), status_code=exc.status)
        script.seen.append(chat)
        if not chat.get("stream"):
            if script.error is not None:
                return JSONResponse(am.error_body(script.error), status_code=script.error.status)
            assert script.completion is not None
            return JSONResponse(am.from_chat(script.completion, body["model"]))
        stream = am.MessagesStream(body["model"])

        async def events() -> AsyncIterator[bytes]:
            for c in script.chunks:
                yield stream.feed(json.dumps(c).encode())
            yield stream.error(script.error) if script.error else stream.finish()

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])


@pytest.fixture
async def sdk() -> AsyncIterator[tuple[anthropic.AsyncAnthropic, Script]]:
    script = Script()
    # the SDK speaks httpx2 (it rejects plain httpx clients); the app runs in-process over ASGI
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=_app(script)))
    client = anthropic.AsyncAnthropic(api_key="gh-key", base_url="http://gatehouse", http_client=http, max_retries=0)
    async with client:
        yield client, script


_TOOLS: list[Any] = [
    {
        "name": "weather",
        "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
    {"name": "clock", "input_schema": {"type": "object", "properties": {}}},
]


async def test_sdk_create(sdk: tuple[anthropic.AsyncAnthropic, Script]) -> None:
    client, script = sdk
    script.completion = completion(
        {
            "content": "Looking it up.",
            "tool_calls": [
                {"id": "call_9", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}
            ],
        },
        "tool_calls",
    )
    message = await client.messages.create(
        model="claude-alias",
        max_tokens=100,
        system="You are terse.",
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=_TOOLS,
        tool_choice={"type": "auto"},
    )
    assert script.seen[0]["messages"][0] == {"role": "system", "content": "You are terse."}
    assert script.seen[0]["tools"][0]["function"]["name"] == "weather"
    assert message.id == "msg_t1" and message.model == "claude-alias" and message.role == "assistant"
    assert message.stop_reason == "tool_use"
    text, tool = message.content
    assert isinstance(text, anthropic.types.TextBlock) and text.text == "Looking it up."
    assert isinstance(tool, anthropic.types.ToolUseBlock)
    assert (tool.id, tool.name, tool.input) == ("call_9", "weather", {"city": "Oslo"})
    assert message.usage.input_tokens == 20 and message.usage.output_tokens == 9
    assert message.usage.cache_read_input_tokens == 5


async def test_sdk_stream_final_message(sdk: tuple[anthropic.AsyncAnthropic, Script]) -> None:
    client, script = sdk
    args_a, args_b = json.dumps({"city": "Oslo"}), json.dumps({"city": "Lima"})
    script.chunks = [
        chunk({"role": "assistant", "content": ""}),
        *[chunk({"content": p}) for p in ["Checking ", "two ", "cities."]],
        chunk(call_delta(0, id="call_a", name="weather", args="")),
        *[chunk(call_delta(0, args=p)) for p in split(args_a, 4)],
        chunk(call_delta(1, id="call_b", name="weather", args="")),
        *[chunk(call_delta(1, args=p)) for p in split(args_b, 5)],
        chunk({}, "tool_calls"),
        chunk(None, usage=USAGE),
    ]
    async with client.messages.stream(
        model="claude-alias", max_tokens=100, messages=[{"role": "user", "content": "Oslo and Lima?"}], tools=_TOOLS
    ) as stream:
        texts = [t async for t in stream.text_stream]
        final = await stream.get_final_message()
    assert script.seen[0]["stream"] is True and script.seen[0]["stream_options"] == {"include_usage": True}
    assert "".join(texts) == "Checking two cities."
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert isinstance(final.content[1], anthropic.types.ToolUseBlock)
    assert isinstance(final.content[2], anthropic.types.ToolUseBlock)
    assert (final.content[1].id, final.content[1].input) == ("call_a", {"city": "Oslo"})
    assert (final.content[2].id, final.content[2].input) == ("call_b", {"city": "Lima"})
    assert final.stop_reason == "tool_use" and final.model == "claude-alias"
    assert final.usage.input_tokens == 20 and final.usage.output_tokens == 9
    assert final.usage.cache_read_input_tokens == 5


async def test_sdk_raw_stream_events(sdk: tuple[anthropic.AsyncAnthropic, Script]) -> None:
    client, script = sdk
    script.chunks = [chunk({"content": "Hi"}), chunk({}, "stop"), chunk(None, usage=USAGE)]
    stream = await client.messages.create(
        model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    kinds = [event.type async for event in stream]
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


async def test_sdk_error_mid_stream_raises(sdk: tuple[anthropic.AsyncAnthropic, Script]) -> None:
    client, script = sdk
    script.chunks = [chunk({"content": "Hal"})]
    script.error = ServiceUnavailableError("All deployments are busy.").info()
    with pytest.raises(anthropic.APIStatusError) as exc:
        async with client.messages.stream(model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]) as s:
            await s.get_final_message()
    assert exc.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "All deployments are busy."},
    }


async def test_sdk_sees_errors_as_anthropic_errors(sdk: tuple[anthropic.AsyncAnthropic, Script]) -> None:
    client, script = sdk
    with pytest.raises(anthropic.BadRequestError) as bad:
        await client.messages.create(model="m", max_tokens=0, messages=[{"role": "user", "content": "hi"}])
    assert bad.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "max_tokens: Input should be an integer greater than or equal to 1",
        },
    }
    script.error = RateLimitError("Key quota exceeded.").info()
    with pytest.raises(anthropic.RateLimitError):
        await client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}])


# ---------------------------------------------------------------- what only Anthropic can serve


def _scanned(chat: dict[str, Any]) -> str:
    """Every text the guard scans in a chat body (services.guard.texts), joined."""
    from services.guard import texts
    from shared.schemas.openai import chat_from_builtins

    return "\n".join(texts.read(texts.chat_slots(chat_from_builtins(chat))))


def test_translate_lists_what_only_anthropic_serves_and_keeps_its_text_for_the_guard() -> None:
    body = {
        "model": "claude",
        "max_tokens": 64,
        "mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "tickets", "authorization_token": "t"}],
        "container": "container_1",
        "tools": [
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 2},
            {"name": "lookup", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "source": {"type": "text", "media_type": "text/plain", "data": "doc body words"},
                        "title": "Doc title",
                        "context": "doc context words",
                        "citations": {"enabled": True},
                    },
                    {
                        "type": "search_result",
                        "source": "https://kb.example/1",
                        "title": "KB one",
                        "content": [{"type": "text", "text": "search result words"}],
                    },
                    {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
                    {"type": "text", "text": "question words"},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "earlier thought words", "signature": "sig"},
                    {
                        "type": "server_tool_use",
                        "id": "srvtoolu_1",
                        "name": "web_search",
                        "input": {"query": "q words"},
                    },
                    {
                        "type": "web_search_tool_result",
                        "tool_use_id": "srvtoolu_1",
                        "content": [
                            {
                                "type": "web_search_result",
                                "url": "https://news.example",
                                "title": "web result title",
                                "encrypted_content": "ZW5j",
                            }
                        ],
                    },
                    {
                        "type": "text",
                        "text": "answer words",
                        "citations": [{"type": "char_location", "cited_text": "x"}],
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "mcp_tool_result",
                        "tool_use_id": "mcptoolu_1",
                        "content": [{"type": "text", "text": "mcp words"}],
                    },
                    {"type": "text", "text": "go on"},
                ],
            },
        ],
    }
    translation = am.translate(body)
    assert translation.untranslatable == [
        "mcp_servers: The parameter 'mcp_servers'",
        "container: The parameter 'container'",
        "messages[0].content[2].source.type: Image source type 'file'",
        "messages[1].content[1].type: Content block type 'server_tool_use'",
        "messages[1].content[2].type: Content block type 'web_search_tool_result'",
        "messages[2].content[0].type: Content block type 'mcp_tool_result'",
        "tools[0].type: Server tool 'web_search_20250305'",
    ]
    scanned = _scanned(translation.chat)
    for words in (
        "doc body words", "Doc title", "doc context words", "search result words", "KB one", "question words",
        "earlier thought words", "q words", "web result title", "answer words", "mcp words", "go on",
    ):  # fmt: skip
        assert words in scanned
    assert "ZW5j" not in scanned and "srvtoolu_1" not in scanned  # opaque data and ids are not text
    with pytest.raises(InvalidRequestError, match="unless an Anthropic deployment serves it") as exc:
        am.to_chat(body)
    assert exc.value.param == "mcp_servers"


def test_translate_of_a_plain_request_lists_nothing() -> None:
    body = {"model": "m", "max_tokens": 5, "system": "s", "messages": [{"role": "user", "content": "hi"}]}
    translation = am.translate(body)
    assert translation.untranslatable == [] and translation.chat == am.to_chat(body)
