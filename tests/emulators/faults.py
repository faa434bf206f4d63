"""A fault-injecting OpenAI Chat Completions upstream, on OpenAI's wire format (bearer auth, chat.completion
JSON, `chat.completion.chunk` SSE ending in `data: [DONE]`, OpenAI error JSON, `Retry-After`).

Each model name is a deployment with a script of faults, consumed one per request, then `default`:

- `ok` · `fail:<status>` (OpenAI error JSON) · `429:<seconds>` (with Retry-After; `429:` without)
- `hang` (accepts, never answers) · `slow:<ms>` (answers after ms) · `slow_first:<ms>` (a stream's first
  chunk after ms) · `drip:<ms>` (a stream of 40 chunks, ms apart)
- `drop_first` (a stream whose connection closes before any chunk) · `drop_mid` (after 3 chunks)
- `garbage` (200 with a body that is not JSON) · `context` (400 context_length_exceeded)
- `refuse` (200 whose finish_reason is content_filter)

Program it with `script(app, model, [...], default=...)` or `POST /_faults/<model>` {"faults": [...],
"default": "ok"}. Every request is counted per model (`app.state.served[model]`) with its time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

API_KEY = "sk-emulator-faults"


class _Dropped(Exception):
    """Raised inside a streaming body: uvicorn closes the connection without ending the chunked body."""


def script(app: Starlette, model: str, faults: list[str], default: str = "ok") -> None:
    app.state.scripts[model] = list(faults)
    app.state.defaults[model] = default


def _error(status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> Response:
    etype = {400: "invalid_request_error", 429: "rate_limit_error"}.get(status, "server_error")
    body = {"error": {"message": message, "type": etype, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _completion(model: str, text: str, finish: str = "stop") -> dict[str, Any]:
    return {
        "id": f"chatcmpl-fault-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": len(text.split()), "total_tokens": 3 + len(text.split())},
    }


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    obj = {
        "id": "chatcmpl-fault",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def create_app() -> Starlette:
    async def chat(request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        body = json.loads(await request.body())
        model = str(body.get("model", ""))
        state = request.app.state
        state.served[model].append(time.monotonic())
        queue = state.scripts.get(model) or []
        fault = queue.pop(0) if queue else state.defaults.get(model, "ok")
        name, _, arg = fault.partition(":")
        stream = bool(body.get("stream"))
        text = f"answer from {model}"
        if name == "fail":
            return _error(int(arg), f"emulated {arg}")
        if name == "429":
            return _error(429, "Rate limit reached", headers={"retry-after": arg} if arg else None)
        if name == "context":
            return _error(400, "This model's maximum context length is 8192 tokens.", "context_length_exceeded")
        if name == "hang":
            await asyncio.sleep(3600)
        if name == "slow":
            await asyncio.sleep(int(arg) / 1000)
        if name == "garbage":
            return Response(b"<html>502 Bad Gateway</html>", media_type="application/json")
        if not stream:
            finish = "content_filter" if name == "refuse" else "stop"
            return JSONResponse(_completion(model, "" if name == "refuse" else text, finish))

        async def events() -> AsyncIterator[bytes]:
            if name == "drop_first":
                raise _Dropped
            if name == "slow_first":
                await asyncio.sleep(int(arg) / 1000)
            words = [f"w{i}" for i in range(40)] if name == "drip" else text.split()
            yield _chunk(model, {"role": "assistant", "content": ""})
            for i, word in enumerate(words):
                if name == "drop_mid" and i == 2:
                    raise _Dropped
                if name == "drip":
                    await asyncio.sleep(int(arg) / 1000)
                yield _chunk(model, {"content": word + " "})
            yield _chunk(model, {}, "stop")
            usage = {"prompt_tokens": 3, "completion_tokens": len(words), "total_tokens": 3 + len(words)}
            yield (
                b"data: "
                + json.dumps(
                    {
                        "id": "x",
                        "object": "chat.completion.chunk",
                        "choices": [],
                        "usage": usage,
                        "model": model,
                        "created": 0,
                    }
                ).encode()
                + b"\n\n"
            )
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def program(request: Request) -> Response:
        body = json.loads(await request.body())
        script(request.app, request.path_params["model"], body.get("faults", []), body.get("default", "ok"))
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/_faults/{model}", program, methods=["POST"]),
        ]
    )
    app.state.scripts = {}
    app.state.defaults = {}
    app.state.served = defaultdict(list)
    return app
