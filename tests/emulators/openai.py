"""An OpenAI Chat Completions / Embeddings / Responses emulator, written from OpenAI's public API reference.

It validates what the real API validates that matters to a gateway (bearer auth, JSON body, required
`model` and non-empty `messages`, message roles, `stream_options` only with `stream`), answers
deterministically, streams `chat.completion.chunk` SSE ending in `data: [DONE]` (with a usage chunk
when `stream_options.include_usage` is set), emits tool calls when tools are offered and the prompt
mentions the weather, and simulates failures by model name: `err-<status>` answers that status with
OpenAI's error JSON (429 also sends Retry-After), `slow-<ms>` waits before answering (less if the caller
hangs up), `drip-<ms>` streams one word every <ms> (a stream the client leaves midway is noted in
`app.state.abandoned` with the time), `big-<bytes>` answers a reply text of that many bytes (an upstream
answer larger than a provider allows). The Responses API lives in `openai_responses`. Every request's path,
headers and body are recorded (`app.state.requests`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.emulators import openai_responses

API_KEY = "sk-emulator-openai"
ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


def _error(
    status: int,
    message: str,
    etype: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": etype, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _last_user(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, str):
                return c
            if isinstance(c, list):
                return " ".join(p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _usage(messages: list[dict[str, Any]], text: str) -> dict[str, Any]:
    prompt = sum(len(str(m.get("content") or "").split()) for m in messages) or 1
    completion = len(text.split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _tool_calls(body: dict[str, Any], prompt: str) -> list[dict[str, Any]] | None:
    tools = body.get("tools") or []
    if not tools or "weather" not in prompt.lower() or body.get("tool_choice") == "none":
        return None
    if body["messages"][-1].get("role") == "tool":
        return None  # the tool results are in: answer in text
    name = tools[0]["function"]["name"]
    arg = openai_responses.argument_name(tools[0]["function"].get("parameters"))
    cities = ["Paris", "Tokyo"] if "both" in prompt.lower() else ["Paris"]
    return [
        {"id": f"call_{i}abc", "type": "function", "function": {"name": name, "arguments": json.dumps({arg: city})}}
        for i, city in enumerate(cities)
    ]


async def _latency(request: Request, seconds: float) -> None:
    """Simulated provider time, cut short when the caller hangs up (nobody will read the answer), so a
    request abandoned mid-wait does not hold the emulator's shutdown."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if await request.is_disconnected():
            return
        await asyncio.sleep(min(left, 0.05))


def create_app() -> Starlette:
    async def chat(request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        if auth != f"Bearer {API_KEY}":
            return _error(401, "Incorrect API key provided.", code="invalid_api_key")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "We could not parse the JSON body of your request.")
        request.app.state.requests.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _error(400, "you must provide a model parameter", param="model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "Invalid 'messages': empty array.", param="messages", code="empty_array")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                return _error(400, f"Invalid value for 'messages[{i}].role'.", param=f"messages[{i}].role")
        stream = bool(body.get("stream"))
        if body.get("stream_options") is not None and not stream:
            return _error(
                400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
            )
        if model.startswith("err-"):
            status = int(model[4:])
            headers = {"retry-after": "7"} if status == 429 else None
            etype = {429: "rate_limit_error", 401: "invalid_request_error"}.get(status, "server_error")
            return _error(status, f"emulated error {status}", etype=etype, headers=headers)
        if model.startswith("slow-"):
            await _latency(request, int(model[5:]) / 1000)
        prompt = _last_user(messages)
        text = "Emulated OpenAI reply to: " + " ".join(prompt.split()[:20])
        if messages[-1].get("role") == "tool":
            text = "Emulated OpenAI answer from the tool result: " + str(messages[-1].get("content"))
        if model.startswith("big-"):
            size = int(model[4:])
            text = ("big " * (size // 4 + 1))[:size]
        calls = _tool_calls(body, prompt)
        created = int(time.time())
        cid = f"chatcmpl-emu{created}-{len(request.app.state.requests)}"
        if not stream:
            message: dict[str, Any] = {"role": "assistant", "content": None if calls else text, "refusal": None}
            if calls:
                message["tool_calls"] = calls
            return JSONResponse(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "logprobs": None,
                            "finish_reason": "tool_calls" if calls else "stop",
                        }
                    ],
                    "usage": _usage(messages, "" if calls else text),
                    "system_fingerprint": "fp_emulator",
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        drip = int(model[5:]) / 1000 if model.startswith("drip-") else 0.0
        if drip:
            text = " ".join(f"word{n}" for n in range(200))

        async def events() -> AsyncIterator[bytes]:
            finished = False
            try:
                async for event in _events():
                    yield event
                    if drip:
                        await asyncio.sleep(drip)
                finished = True
            finally:
                if not finished:
                    request.app.state.abandoned.append((cid, time.monotonic()))

        async def _events() -> AsyncIterator[bytes]:
            base = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_emulator",
            }

            def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
                obj = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
                if include_usage:
                    obj["usage"] = None
                return b"data: " + json.dumps(obj).encode() + b"\n\n"

            yield chunk({"role": "assistant", "content": "", "refusal": None})
            if calls:
                for i, call in enumerate(calls):
                    args = call["function"]["arguments"]
                    yield chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": i,
                                    "id": call["id"],
                                    "type": "function",
                                    "function": {"name": call["function"]["name"], "arguments": ""},
                                }
                            ]
                        }
                    )
                    for j in range(0, len(args), 5):
                        yield chunk({"tool_calls": [{"index": i, "function": {"arguments": args[j : j + 5]}}]})
            else:
                words = text.split(" ")
                for k, word in enumerate(words):
                    yield chunk({"content": word + (" " if k < len(words) - 1 else "")})
            yield chunk({}, "tool_calls" if calls else "stop")
            if include_usage:
                obj = {**base, "choices": [], "usage": _usage(messages, "" if calls else text)}
                yield b"data: " + json.dumps(obj).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def embeddings(request: Request) -> Response:
        if request.headers.get("authorization", "") != f"Bearer {API_KEY}":
            return _error(401, "Incorrect API key provided.", code="invalid_api_key")
        body = json.loads(await request.body())
        request.app.state.requests.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not inputs:
            return _error(400, "'input' cannot be empty.", param="input")
        data = [{"object": "embedding", "index": i, "embedding": [0.1 * (i + 1)] * 8} for i in range(len(inputs))]
        tokens = sum(len(str(x).split()) for x in inputs)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body.get("model"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def models(_: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": "gpt-emu", "object": "model", "created": 0, "owned_by": "emulator"}]}
        )

    async def responses(request: Request) -> Response:
        return await openai_responses.responses(request, API_KEY)

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/responses", responses, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )
    app.state.requests = []
    app.state.abandoned = []
    return app
