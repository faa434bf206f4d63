"""OpenAI Responses ↔ chat: request and response mapping, the SSE stream, errors, and the official SDK
reading what the translators write."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from services.ingress.surfaces import openai_responses as orr
from shared.errors import ErrorInfo, GatewayError, InvalidRequestError, RateLimitError, UpstreamError, error_body
from tests.unit.surfaces.frames import USAGE, call_delta, chunk, completion, frames, split

# ---------------------------------------------------------------- request


def test_full_request_maps_to_chat() -> None:
    body = {
        "model": "gpt-alias",
        "instructions": "Be brief.",
        "input": [
            {"role": "developer", "content": "Answer in English."},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"},
                    {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"},
                ],
            },
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}],
            },
            {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "lookup", "arguments": '{"q":"x"}'},
            {"type": "function_call", "call_id": "call_2", "name": "clock", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "a cat"},
            {
                "type": "function_call_output",
                "call_id": "call_2",
                "output": [
                    {"type": "input_text", "text": "12:00"},
                    {"type": "input_image", "image_url": "data:image/png;base64,iVBO"},
                ],
            },
            {"role": "user", "content": "Go on."},
        ],
        "tools": [
            {
                "type": "function",
                "name": "lookup",
                "description": "Find",
                "parameters": {"type": "object"},
                "strict": True,
            },
            {"type": "function", "name": "clock", "parameters": None},
        ],
        "tool_choice": {"type": "function", "name": "lookup"},
        "parallel_tool_calls": False,
        "max_output_tokens": 300,
        "temperature": 0.3,
        "top_p": 0.8,
        "text": {"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": True}},
        "reasoning": {"effort": "low", "summary": "auto"},
        "user": "u-1",
        "store": True,
        "include": ["reasoning.encrypted_content"],
        "metadata": {"k": "v"},
        "stream": True,
    }
    assert orr.to_chat(body) == {
        "model": "gpt-alias",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Answer in English."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
                    {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"x"}'}},
                    {"id": "call_2", "type": "function", "function": {"name": "clock", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
            {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
            # chat allows only tool messages after the calls: a tool's image follows them as a user turn
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]},
            {"role": "user", "content": "Go on."},
        ],
        "max_completion_tokens": 300,
        "temperature": 0.3,
        "top_p": 0.8,
        "user": "u-1",
        "parallel_tool_calls": False,
        "reasoning_effort": "low",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
        },
        "tools": [
            {
                "type": "function",
                "function": {"name": "lookup", "description": "Find", "parameters": {"type": "object"}, "strict": True},
            },
            {"type": "function", "function": {"name": "clock"}},
        ],
        "tool_choice": {"type": "function", "function": {"name": "lookup"}},
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_string_input_and_calls_without_a_preceding_assistant_message() -> None:
    assert orr.to_chat({"model": "m", "input": "hi"}) == {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    chat = orr.to_chat(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": "time?"},
                {"type": "function_call", "call_id": "c1", "name": "clock", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "noon"},
            ],
            "text": {"format": {"type": "json_object"}, "verbosity": "low"},
        }
    )
    assert chat["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "clock", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "noon"},
    ]
    assert chat["response_format"] == {"type": "json_object"} and chat["verbosity"] == "low"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        ({"type": "function", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
        (
            {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "f"}]},
            {
                "type": "allowed_tools",
                "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "f"}}]},
            },
        ),
    ],
)
def test_tool_choice(choice: object, expected: object) -> None:
    assert orr.to_chat({"model": "m", "input": "x", "tool_choice": choice})["tool_choice"] == expected


@pytest.mark.parametrize(
    ("change", "param", "message"),
    [
        ({"model": None}, "model", "Missing required parameter: 'model'"),
        ({"model": 3}, "model", "expected a string"),
        ({"input": None}, "input", "Missing required parameter: 'input'"),
        ({"input": []}, "input", "empty array"),
        ({"input": 5}, "input", "expected a string or an array"),
        ({"previous_response_id": "resp_1"}, "previous_response_id", "A stored response"),
        ({"conversation": "conv_1"}, "conversation", "A stored conversation"),
        ({"background": True}, "background", "Background responses"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt", "stored prompt template"),
        ({"max_tool_calls": 3}, "max_tool_calls", "not supported"),
        ({"top_logprobs": 2}, "top_logprobs", "not supported"),
        ({"truncation": "auto"}, "truncation", "'truncation: auto' is not supported"),
        ({"include": ["message.output_text.logprobs"]}, "include[0]", "not supported"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", "'web_search' is not supported"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs"]}]}, "tools[0].type", "'file_search'"),
        ({"tools": [{"type": "function"}]}, "tools[0].name", "Missing required parameter"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice", "not supported"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", "'item_reference' is not supported"),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type", "'web_search_call' is not supported"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role", "'robot'"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]},
            "input[0].content[0].file_id",
            "An image given by file id",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}]},
            "input[0].content[0].file_id",
            "A file given by id or URL",
        ),
        (
            {"input": [{"role": "system", "content": [{"type": "input_image", "image_url": "https://x"}]}]},
            "input[0].content[0]",
            "text only",
        ),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id", "Missing required"),
        ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output", "Missing required"),
        ({"max_output_tokens": 0}, "max_output_tokens", "at least 1"),
        ({"temperature": "warm"}, "temperature", "expected a number"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name", "Missing required"),
        ({"stream": "yes"}, "stream", "expected a boolean"),
    ],
)
def test_unsupported_and_invalid_requests_name_the_param(change: dict[str, Any], param: str, message: str) -> None:
    body = {k: v for k, v in {"model": "m", "input": "hi", **change}.items() if v is not None}
    with pytest.raises(InvalidRequestError) as exc:
        orr.to_chat(body)
    info = exc.value.info()
    assert info.status == 400 and info.param == param and message in info.message


def test_harmless_defaults_are_accepted() -> None:
    body = {"model": "m", "input": "hi", "background": False, "truncation": "disabled", "store": False, "include": []}
    assert orr.to_chat(body) == {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


# ---------------------------------------------------------------- response


def test_completion_with_text_and_tool_calls() -> None:
    comp = completion(
        {
            "content": "Checking.",
            "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"cats"}'}},
                {"id": "call_b", "type": "function", "function": {"name": "clock", "arguments": "{}"}},
            ],
        },
        "tool_calls",
    )
    request = {
        "model": "gpt-alias",
        "input": "x",
        "instructions": "Be brief.",
        "temperature": 0.5,
        "tool_choice": "required",
    }
    resp = orr.from_chat(comp, "gpt-alias", request=request)
    assert resp["id"] == "resp_t1" and resp["object"] == "response" and resp["created_at"] == 1700000000
    assert resp["status"] == "completed" and resp["incomplete_details"] is None and resp["error"] is None
    assert resp["model"] == "gpt-alias"
    assert resp["output"] == [
        {
            "id": "msg_t1_0",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Checking.", "annotations": [], "logprobs": []}],
        },
        {
            "id": "fc_t1_1",
            "type": "function_call",
            "call_id": "call_a",
            "name": "lookup",
            "arguments": '{"q":"cats"}',
            "status": "completed",
        },
        {
            "id": "fc_t1_2",
            "type": "function_call",
            "call_id": "call_b",
            "name": "clock",
            "arguments": "{}",
            "status": "completed",
        },
    ]
    assert resp["usage"] == {
        "input_tokens": 25,
        "input_tokens_details": {"cached_tokens": 5, "cache_write_tokens": 0},
        "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 34,
    }
    assert "output_text" not in resp  # an SDK convenience, not a wire field
    assert (resp["instructions"], resp["temperature"], resp["tool_choice"]) == ("Be brief.", 0.5, "required")
    assert resp["tools"] == [] and resp["parallel_tool_calls"] is True


@pytest.mark.parametrize(
    ("finish", "status", "details"),
    [
        ("stop", "completed", None),
        ("tool_calls", "completed", None),
        ("length", "incomplete", {"reason": "max_output_tokens"}),
        ("content_filter", "incomplete", {"reason": "content_filter"}),
    ],
)
def test_status(finish: str, status: str, details: dict[str, str] | None) -> None:
    resp = orr.from_chat(completion({"content": "x"}, finish), "m")
    assert (resp["status"], resp["incomplete_details"], resp["output"][0]["status"]) == (status, details, status)


def test_refusal_and_missing_usage() -> None:
    resp = orr.from_chat(
        {"id": "chatcmpl-r", "choices": [{"message": {"content": None, "refusal": "No."}, "finish_reason": "stop"}]},
        "m",
    )
    assert resp["output"][0]["content"] == [{"type": "refusal", "refusal": "No."}]
    assert resp["usage"] is None


# ---------------------------------------------------------------- stream


def _run(chunks: list[dict[str, Any]], **kw: Any) -> list[tuple[str, dict[str, Any]]]:
    stream = orr.ResponsesStream("gpt-alias", **kw)
    raw = b"".join(stream.feed(c) for c in chunks) + stream.finish()
    assert stream.finish() == b"" and stream.feed(chunk({"content": "late"})) == b""
    events = frames(raw)
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    return events


def test_text_stream() -> None:
    events = _run(
        [
            chunk({"role": "assistant", "content": ""}),
            *[chunk({"content": p}) for p in ["Hel", "lo, ", "world"]],
            chunk({}, "stop"),
            chunk(None, usage=USAGE),
        ],
        request={"model": "gpt-alias", "input": "hi", "instructions": "Be brief."},
    )
    assert [e for e, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    created = events[0][1]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["usage"] is None
    assert created["id"] == "resp_t1" and created["instructions"] == "Be brief."
    deltas = [d for e, d in events if e == "response.output_text.delta"]
    assert "".join(d["delta"] for d in deltas) == "Hello, world"
    assert {(d["item_id"], d["output_index"], d["content_index"]) for d in deltas} == {("msg_t1_0", 0, 0)}
    assert events[7][1]["text"] == "Hello, world"
    assert events[8][1]["part"] == {"type": "output_text", "text": "Hello, world", "annotations": [], "logprobs": []}
    assert events[9][1]["item"]["status"] == "completed"
    final = events[-1][1]["response"]
    assert final["status"] == "completed" and final["id"] == "resp_t1"
    assert final["output"] == [events[9][1]["item"]]
    assert final["usage"]["input_tokens"] == 25 and final["usage"]["total_tokens"] == 34


def test_text_then_tool_call_split_across_many_chunks() -> None:
    args = json.dumps({"city": "Paris", "days": [1, 2, 3]})
    events = _run(
        [
            chunk({"role": "assistant", "content": "Let me check."}),
            chunk(call_delta(0, id="call_w", name="weather", args="")),
            *[chunk(call_delta(0, args=p)) for p in split(args, 3)],
            chunk({}, "tool_calls"),
            chunk(None, usage=USAGE),
        ]
    )
    added = [d for e, d in events if e == "response.output_item.added"]
    assert [(d["output_index"], d["item"]["type"]) for d in added] == [(0, "message"), (1, "function_call")]
    assert added[1]["item"] == {
        "id": "fc_t1_1",
        "type": "function_call",
        "call_id": "call_w",
        "name": "weather",
        "arguments": "",
        "status": "in_progress",
    }
    names = [e for e, _ in events]
    # the message is done before the call starts
    assert names.index("response.output_item.done") < names.index("response.function_call_arguments.delta")
    deltas = [d["delta"] for e, d in events if e == "response.function_call_arguments.delta"]
    assert len(deltas) == len(split(args, 3)) and "".join(deltas) == args
    done = next(d for e, d in events if e == "response.function_call_arguments.done")
    assert (done["arguments"], done["item_id"], done["output_index"]) == (args, "fc_t1_1", 1)
    final = events[-1][1]["response"]
    assert [i["type"] for i in final["output"]] == ["message", "function_call"]
    assert final["output"][1]["arguments"] == args and final["output"][1]["status"] == "completed"


def test_parallel_tool_calls_are_separate_items() -> None:
    events = _run(
        [
            chunk(call_delta(0, id="call_1", name="a", args='{"x"')),
            chunk(call_delta(0, args=": 1}")),
            chunk(call_delta(1, id="call_2", name="b", args='{"y": 2}')),
            chunk(call_delta(2, id="call_3", name="c")),
            chunk({}, "tool_calls"),
        ]
    )
    final = events[-1][1]["response"]
    assert [(i["call_id"], i["name"], i["arguments"]) for i in final["output"]] == [
        ("call_1", "a", '{"x": 1}'),
        ("call_2", "b", '{"y": 2}'),
        ("call_3", "c", ""),
    ]
    assert [d["output_index"] for e, d in events if e == "response.output_item.done"] == [0, 1, 2]
    assert final["usage"] is None  # no usage chunk came


def test_max_output_tokens_ends_incomplete() -> None:
    events = _run([chunk({"content": "cut sh"}), chunk({}, "length"), chunk(None, usage=USAGE)])
    kind, data = events[-1]
    assert kind == "response.incomplete"
    assert data["response"]["status"] == "incomplete"
    assert data["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert data["response"]["output"][0]["status"] == "incomplete"


def test_refusal_stream() -> None:
    events = _run([chunk({"refusal": "I can't "}), chunk({"refusal": "help."}), chunk({}, "stop")])
    names = [e for e, _ in events]
    assert "response.refusal.delta" in names and "response.output_text.delta" not in names
    done = next(d for e, d in events if e == "response.refusal.done")
    assert done["refusal"] == "I can't help."
    assert events[-1][1]["response"]["output"][0]["content"] == [{"type": "refusal", "refusal": "I can't help."}]


def test_error_in_the_middle_of_a_stream() -> None:
    stream = orr.ResponsesStream("m")
    raw = stream.feed(chunk({"content": "partial"}))
    raw += stream.error(UpstreamError("The provider dropped the connection.").info())
    assert stream.finish() == b"" and stream.error(UpstreamError("again").info()) == b""
    events = frames(raw)
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    assert events[-2] == (
        "error",
        {
            "type": "error",
            "sequence_number": len(events) - 2,
            "code": "bad_gateway",
            "message": "The provider dropped the connection.",
            "param": None,
        },
    )
    failed = events[-1][1]["response"]
    assert events[-1][0] == "response.failed" and failed["status"] == "failed"
    assert failed["error"] == {"code": "server_error", "message": "The provider dropped the connection."}


def test_empty_stream_is_still_a_whole_response() -> None:
    events = frames(orr.ResponsesStream("m").finish())
    assert [e for e, _ in events] == ["response.created", "response.in_progress", "response.completed"]


# ---------------------------------------------------------------- the official SDK reads what we write


@dataclass
class Script:
    completion: dict[str, Any] | None = None
    chunks: list[dict[str, Any]] = field(default_factory=list)
    error: ErrorInfo | None = None
    seen: list[dict[str, Any]] = field(default_factory=list)


def _app(script: Script) -> Starlette:
    async def responses(request: Request) -> Response:
        body = await request.json()
        try:
            chat = orr.to_chat(body)
        except GatewayError as exc:
            return JSONResponse(error_body(exc.info()), status_code=exc.status)
        script.seen.append(chat)
        if not chat.get("stream"):
            assert script.completion is not None
            return JSONResponse(orr.from_chat(script.completion, body["model"], request=body))
        stream = orr.ResponsesStream(body["model"], request=body)

        async def events() -> AsyncIterator[bytes]:
            for c in script.chunks:
                yield stream.feed(json.dumps(c).encode())
            yield stream.error(script.error) if script.error else stream.finish()

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/responses", responses, methods=["POST"])])


@pytest.fixture
async def sdk() -> AsyncIterator[tuple[openai.AsyncOpenAI, Script]]:
    script = Script()
    # the SDK speaks httpx2 (it rejects plain httpx clients); the app runs in-process over ASGI
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=_app(script)))
    client = openai.AsyncOpenAI(api_key="gh-key", base_url="http://gatehouse/v1", http_client=http, max_retries=0)
    async with client:
        yield client, script


_TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": False,
    }
]


def _tool_chunks() -> list[dict[str, Any]]:
    args_a, args_b = json.dumps({"city": "Oslo"}), json.dumps({"city": "Lima"})
    return [
        chunk({"role": "assistant", "content": ""}),
        *[chunk({"content": p}) for p in ["Checking ", "two ", "cities."]],
        chunk(call_delta(0, id="call_a", name="weather", args="")),
        *[chunk(call_delta(0, args=p)) for p in split(args_a, 4)],
        chunk(call_delta(1, id="call_b", name="weather", args="")),
        *[chunk(call_delta(1, args=p)) for p in split(args_b, 5)],
        chunk({}, "tool_calls"),
        chunk(None, usage=USAGE),
    ]


async def test_sdk_create(sdk: tuple[openai.AsyncOpenAI, Script]) -> None:
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
    resp = await client.responses.create(
        model="gpt-alias", instructions="Be terse.", input="Weather in Oslo?", tools=_TOOLS
    )
    assert script.seen[0]["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Weather in Oslo?"},
    ]
    assert resp.id == "resp_t1" and resp.model == "gpt-alias" and resp.status == "completed"
    assert resp.output_text == "Looking it up."
    calls = [item for item in resp.output if item.type == "function_call"]
    assert [(c.call_id, c.name, json.loads(c.arguments)) for c in calls] == [("call_9", "weather", {"city": "Oslo"})]
    assert resp.usage is not None
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == (25, 9, 34)
    assert resp.usage.input_tokens_details.cached_tokens == 5
    assert resp.usage.output_tokens_details.reasoning_tokens == 2
    assert resp.tools[0].type == "function" and resp.tools[0].name == "weather"


async def test_sdk_raw_stream(sdk: tuple[openai.AsyncOpenAI, Script]) -> None:
    client, script = sdk
    script.chunks = _tool_chunks()
    stream = await client.responses.create(model="gpt-alias", input="Oslo and Lima?", tools=_TOOLS, stream=True)
    events = [event async for event in stream]
    assert script.seen[0]["stream_options"] == {"include_usage": True}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Checking two cities."
    last = events[-1]
    assert last.type == "response.completed"
    assert last.response.output_text == "Checking two cities."
    assert last.response.usage is not None and last.response.usage.total_tokens == 34


async def test_sdk_stream_helper_final_response(sdk: tuple[openai.AsyncOpenAI, Script]) -> None:
    client, script = sdk
    script.chunks = _tool_chunks()
    async with client.responses.stream(model="gpt-alias", input="Oslo and Lima?", tools=_TOOLS) as stream:
        snapshots = [e.snapshot async for e in stream if e.type == "response.function_call_arguments.delta"]
        final = await stream.get_final_response()
    assert snapshots[-1] == json.dumps({"city": "Lima"})  # the helper accumulated our deltas per item
    assert final.output_text == "Checking two cities."
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.call_id, json.loads(c.arguments)) for c in calls] == [
        ("call_a", {"city": "Oslo"}),
        ("call_b", {"city": "Lima"}),
    ]
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (25, 9)


async def test_sdk_sees_a_mid_stream_error(sdk: tuple[openai.AsyncOpenAI, Script]) -> None:
    client, script = sdk
    script.chunks = [chunk({"content": "Hal"})]
    script.error = RateLimitError("Key quota exceeded.").info()
    stream = await client.responses.create(model="m", input="hi", stream=True)
    events = [event async for event in stream]
    error = next(e for e in events if e.type == "error")
    assert (error.code, error.message) == ("rate_limit_exceeded", "Key quota exceeded.")
    assert events[-1].type == "response.failed"
    assert events[-1].response.error is not None and events[-1].response.error.code == "rate_limit_exceeded"


async def test_sdk_sees_unsupported_params_as_400(sdk: tuple[openai.AsyncOpenAI, Script]) -> None:
    client, _ = sdk
    with pytest.raises(openai.BadRequestError) as exc:
        await client.responses.create(model="m", input="hi", previous_response_id="resp_old")
    assert exc.value.param == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as exc:
        await client.responses.create(model="m", input="hi", tools=[{"type": "web_search"}])
    assert exc.value.param == "tools[0].type"


def test_translate_lists_what_only_openai_serves_and_keeps_its_text_for_the_guard() -> None:
    from services.guard import texts
    from shared.schemas.openai import chat_from_builtins

    body = {
        "model": "gpt",
        "previous_response_id": "resp_1",
        "prompt": {"id": "pmpt_1", "variables": {"city": "variable words"}},
        "tools": [{"type": "web_search"}, {"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "tool_choice": {"type": "web_search_preview"},
        "input": [
            {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"query": "query words"}},
            {"type": "mcp_call", "id": "mcp_1", "name": "lookup", "arguments": "{}", "output": "mcp output words"},
            {"role": "user", "content": [{"type": "input_text", "text": "question words"}]},
        ],
    }
    translation = orr.translate(body)
    assert translation.untranslatable == [
        "previous_response_id: A stored response ('previous_response_id')",
        "prompt: A stored prompt template ('prompt')",
        "input[0].type: Input item type 'web_search_call'",
        "input[1].type: Input item type 'mcp_call'",
        "tools[0].type: Tool type 'web_search'",
        "tool_choice: Tool choice 'web_search_preview'",
    ]
    chat = translation.chat
    assert [t["function"]["name"] for t in chat["tools"]] == ["f"] and "tool_choice" not in chat
    scanned = "\n".join(texts.read(texts.chat_slots(chat_from_builtins(chat))))
    for words in ("variable words", "query words", "mcp output words", "question words"):
        assert words in scanned
    assert orr.translate({"model": "m", "input": "hi"}).untranslatable == []
