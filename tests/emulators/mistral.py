"""A Mistral chat completions / embeddings emulator, written from Mistral's public OpenAPI specification.

It validates what the real API validates that a translator can get wrong: bearer auth, the request
schema's `additionalProperties: false` at every level (HTTP 422 "Extra inputs are not permitted", the
FastAPI report inside Mistral's `{"object": "error", ...}` envelope), roles and their keys, content
chunk types, tool call ids of exactly 9 characters [a-zA-Z0-9], a tool result for every call of the
assistant turn before, the last message being user/tool (or a prefix assistant), `tool_choice`
values (auto/none/any/required or a named function), sampling ranges, `response_format` shapes.

Answers are deterministic: an echo of the last user message; tool calls (9-character ids, each call
whole in one stream chunk) when tools are offered and the prompt mentions the weather (two when it
says "both"), or always under `any`/`required`; a summary after tool results; JSON under
`response_format`. Streams are OpenAI-like chunks whose last chunk carries `usage`, then
`data: [DONE]`. Model names simulate the rest: `err-<status>` (429 with Retry-After), `slow-<ms>`,
`ctx-long` (context overflow), `magistral*` (content as thinking + text chunks), `err-stream`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

API_KEY = "mistral-emulator-key"
_ID = re.compile(r"^[a-zA-Z0-9]{9}$")
_REQUEST = {"model", "temperature", "top_p", "max_tokens", "stream", "stop", "random_seed", "metadata", "messages"}
_REQUEST |= {"response_format", "tools", "tool_choice", "presence_penalty", "frequency_penalty", "n", "prediction"}
_REQUEST |= {"parallel_tool_calls", "prompt_mode", "reasoning_effort", "guardrails", "prompt_cache_key", "safe_prompt"}
_MESSAGE = {
    "system": {"role", "content"},
    "user": {"role", "content"},
    "assistant": {"role", "content", "tool_calls", "prefix"},
    "tool": {"role", "content", "tool_call_id", "name"},
}
_CHUNK = {
    "text": {"type", "text"},
    "image_url": {"type", "image_url"},
    "document_url": {"type", "document_url", "document_name"},
    "input_audio": {"type", "input_audio"},
    "thinking": {"type", "thinking", "closed"},
    "reference": {"type", "reference_ids"},
}


class _Bad(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(str(body))
        self.status = status
        self.body = body


def _invalid(message: str, code: str | None = None, etype: str = "invalid_request_error") -> _Bad:
    return _Bad(400, {"object": "error", "message": message, "type": etype, "param": None, "code": code})


def _unprocessable(loc: list[Any], msg: str, kind: str, value: Any = None) -> _Bad:
    detail = [{"type": kind, "loc": ["body", *loc], "msg": msg, "input": value}]
    return _Bad(
        422,
        {
            "object": "error",
            "message": {"detail": detail},
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        },
    )


def _keys(obj: Any, allowed: set[str], loc: list[Any]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _unprocessable(
            loc, "Input should be a valid dictionary or object to extract fields from", "model_attributes_type", obj
        )
    for key in obj:
        if key not in allowed:
            raise _unprocessable([*loc, key], "Extra inputs are not permitted", "extra_forbidden", obj[key])
    return obj


def _content(content: Any, loc: list[Any]) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise _unprocessable(loc, "Input should be a valid string", "string_type", content)
    texts = []
    for i, chunk in enumerate(content):
        kind = chunk.get("type") if isinstance(chunk, dict) else None
        if kind not in _CHUNK:
            raise _unprocessable(
                [*loc, i],
                f"Input tag '{kind}' found using 'type' does not match any of the expected tags",
                "union_tag_invalid",
                chunk,
            )
        _keys(chunk, _CHUNK[kind], [*loc, i, kind])
        if kind == "text":
            texts.append(chunk.get("text", ""))
        if kind == "image_url":
            image = chunk["image_url"]
            url = (
                image
                if isinstance(image, str)
                else _keys(image, {"url", "detail"}, [*loc, i, "image_url"]).get("url", "")
            )
            if not url.startswith(("https://", "http://", "data:image/")):
                raise _invalid("Image URL must be a valid http(s) URL or a base64 data URL.", code="1400")
    return " ".join(texts)


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise _invalid("Invalid request: messages must not be empty.")
    pending: list[str] = []
    calls_by_id: dict[str, str] = {}
    for i, m in enumerate(raw):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in _MESSAGE:
            raise _unprocessable(
                ["messages", i],
                f"Input tag '{role}' found using 'role' does not match any of the expected tags: 'assistant', "
                "'system', 'tool', 'user'",
                "union_tag_invalid",
                m,
            )
        _keys(m, _MESSAGE[role], ["messages", i, role])
        _content(m.get("content"), ["messages", i, role, "content"])
        if role != "tool" and pending:
            raise _invalid("Not the same number of function calls and responses", code="3230")
        if role == "assistant":
            for j, call in enumerate(m.get("tool_calls") or []):
                _keys(call, {"id", "type", "function", "index"}, ["messages", i, role, "tool_calls", j])
                fn = _keys(
                    call.get("function"), {"name", "arguments"}, ["messages", i, role, "tool_calls", j, "function"]
                )
                call_id = call.get("id", "null")
                if not _ID.match(str(call_id)):
                    raise _invalid(
                        f"Tool call id was {call_id} but must be a-z, A-Z, 0-9, with a length of 9.",
                        code="3280",
                        etype="invalid_function_call",
                    )
                pending.append(call_id)
                calls_by_id[call_id] = fn.get("name", "")
        if role == "tool":
            call_id = m.get("tool_call_id")
            if call_id is not None and not _ID.match(str(call_id)):
                raise _invalid(
                    f"Tool call id was {call_id} but must be a-z, A-Z, 0-9, with a length of 9.",
                    code="3280",
                    etype="invalid_function_call",
                )
            if not pending:
                raise _invalid("Not the same number of function calls and responses", code="3230")
            if call_id is not None and call_id not in pending:
                raise _invalid(f"Tool call id {call_id} does not match any pending tool call.", code="3230")
            pending.remove(call_id if call_id is not None else pending[0])
    if pending:
        raise _invalid("Not the same number of function calls and responses", code="3230")
    last = raw[-1]
    if last["role"] not in {"user", "tool"} and not (last["role"] == "assistant" and last.get("prefix")):
        raise _invalid(
            f"Expected last role User or Tool (or Assistant with prefix True) for serving but got {last['role']}",
            code="3230",
        )
    return raw


def _tools(raw: Any) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(raw or []):
        _keys(tool, {"type", "function"}, ["tools", i])
        fn = _keys(tool.get("function"), {"name", "description", "parameters", "strict"}, ["tools", i, "function"])
        if "name" not in fn or "parameters" not in fn:
            missing = "name" if "name" not in fn else "parameters"
            raise _unprocessable(["tools", i, "function", missing], "Field required", "missing")
        if tool.get("type", "function") != "function":
            raise _unprocessable(["tools", i, "type"], "Input should be 'function'", "enum", tool.get("type"))
        out.append(fn)
    return out


def _validate(body: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any]:
    _keys(body, _REQUEST, [])
    for field in ("model", "messages"):
        if field not in body:
            raise _unprocessable([field], "Field required", "missing")
    messages = _messages(body["messages"])
    tools = _tools(body.get("tools"))
    choice = body.get("tool_choice", "auto")
    if isinstance(choice, dict):
        _keys(choice, {"type", "function"}, ["tool_choice"])
        if not isinstance(choice.get("function"), dict) or "name" not in choice["function"]:
            raise _unprocessable(["tool_choice", "function"], "Field required", "missing")
    elif choice not in {"auto", "none", "any", "required"}:
        raise _unprocessable(["tool_choice"], "Input should be 'auto', 'none', 'any' or 'required'", "enum", choice)
    temp = body.get("temperature")
    if temp is not None and not 0 <= temp <= 1.5:
        raise _unprocessable(["temperature"], "Input should be less than or equal to 1.5", "less_than_equal", temp)
    top_p = body.get("top_p")
    if top_p is not None and not 0 <= top_p <= 1:
        raise _unprocessable(["top_p"], "Input should be less than or equal to 1", "less_than_equal", top_p)
    fmt = body.get("response_format")
    if fmt is not None:
        _keys(fmt, {"type", "json_schema"}, ["response_format"])
        if fmt.get("type", "text") not in {"text", "json_object", "json_schema"}:
            raise _unprocessable(
                ["response_format", "type"], "Input should be 'text', 'json_object' or 'json_schema'", "enum"
            )
        if fmt.get("json_schema") is not None:
            _keys(fmt["json_schema"], {"name", "description", "schema", "strict"}, ["response_format", "json_schema"])
    if body.get("reasoning_effort") not in {None, "high", "none"}:
        raise _unprocessable(
            ["reasoning_effort"], "Input should be 'high' or 'none'", "enum", body.get("reasoning_effort")
        )
    if tools and isinstance(choice, dict) and choice["function"]["name"] not in {t["name"] for t in tools}:
        raise _invalid(f"Function {choice['function']['name']} not found in tools.")
    return messages, tools, choice


def _call_id(seed: str) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(alphabet[b % 62] for b in digest[:9])


def _sample(schema: dict[str, Any]) -> Any:
    kind = schema.get("type", "string")
    if kind == "object":
        return {k: _sample(v) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [_sample(schema.get("items") or {})]
    return {"integer": 1, "number": 1.5, "boolean": True}.get(kind, "emulated")


def _answer(
    body: dict[str, Any], messages: list[dict[str, Any]], tools: list[dict[str, Any]], choice: Any, n: int
) -> tuple[str, list[dict[str, Any]], str]:
    last = messages[-1]
    prompt = _content(last.get("content"), []) if last["role"] == "user" else ""
    forced = choice in {"any", "required"} or isinstance(choice, dict)
    if tools and choice != "none" and last["role"] == "user" and ("weather" in prompt.lower() or forced):
        name = choice["function"]["name"] if isinstance(choice, dict) else tools[0]["name"]
        cities = ["Paris", "Tokyo"] if "both" in prompt.lower() else ["Paris"]
        calls = [
            {
                "id": _call_id(f"{n}-{k}"),
                "type": "function",
                "function": {"name": name, "arguments": json.dumps({"city": c})},
            }
            for k, c in enumerate(cities)
        ]
        return "", calls, "tool_calls"
    if last["role"] == "tool":
        results: list[dict[str, Any]] = []
        for m in reversed(messages):
            if m["role"] != "tool":
                break
            results.insert(0, m)
        summary = [f"{m.get('name', '?')}={_content(m.get('content'), [])}" for m in results]
        text = "Emulated Mistral summary: " + "; ".join(summary)
    else:
        text = "Emulated Mistral reply to: " + " ".join(prompt.split()[:20])
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        text = json.dumps(_sample(fmt["json_schema"]["schema"]))
    elif fmt.get("type") == "json_object":
        text = json.dumps({"reply": text})
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and len(text.split()) > max_tokens:
        return " ".join(text.split()[:max_tokens]), [], "length"
    return text, [], "stop"


def _usage(messages: list[dict[str, Any]], text: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    prompt = sum(len(_content(m.get("content"), []).split()) for m in messages) or 1
    completion = len(text.split()) + 4 * len(calls)
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "num_cached_tokens": 0,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def _simulated(model: str) -> JSONResponse | None:
    if model == "ctx-long":
        msg = "Prompt contains 40000 tokens and 0 draft tokens, too large for model with 32768 maximum context length"
        return JSONResponse(
            {"object": "error", "message": msg, "type": "invalid_request_message_order", "param": None, "code": "3051"},
            status_code=400,
        )
    if not model.startswith("err-") or model == "err-stream":
        return None
    status = int(model[4:])
    if status == 401:
        return JSONResponse({"message": "Unauthorized", "request_id": "emu-req"}, status_code=401)
    headers = {"retry-after": "7"} if status == 429 else None
    messages = {
        429: ("Requests rate limit exceeded", "rate_limited", "1300"),
        500: ("Internal server error", "internal_server_error", None),
        503: ("Service unavailable: model overloaded", "service_unavailable", "3505"),
    }
    message, etype, code = messages.get(status, (f"emulated error {status}", "api_error", None))
    return JSONResponse(
        {"object": "error", "message": message, "type": etype, "param": None, "code": code},
        status_code=status,
        headers=headers,
    )


def create_app() -> Starlette:
    counter = {"n": 0}

    def _authorized(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {API_KEY}"

    async def chat(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse(
                {
                    "object": "error",
                    "message": "Invalid JSON body",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                },
                status_code=400,
            )
        request.app.state.requests.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
        if not _authorized(request):
            return JSONResponse({"message": "Unauthorized", "request_id": "emu-req"}, status_code=401)
        try:
            messages, tools, choice = _validate(body)
        except _Bad as bad:
            return JSONResponse(bad.body, status_code=bad.status)
        model = body["model"]
        simulated = _simulated(model)
        if simulated is not None:
            return simulated
        if model.startswith("slow-"):
            await asyncio.sleep(int(model[5:]) / 1000)
        counter["n"] += 1
        text, calls, finish = _answer(body, messages, tools, choice, counter["n"])
        usage = _usage(messages, text, calls)
        cid, created = f"emu{counter['n']:06d}", 1_700_000_000 + counter["n"]
        thinking = model.startswith("magistral")
        if not body.get("stream"):
            content: Any = text if not calls else ""
            if thinking and not calls:
                content = [
                    {"type": "thinking", "thinking": [{"type": "text", "text": "Considering the question."}]},
                    {"type": "text", "text": text},
                ]
            message = {"role": "assistant", "content": content, "tool_calls": calls or None, "prefix": False}
            choices = [{"index": i, "message": message, "finish_reason": finish} for i in range(body.get("n") or 1)]
            return JSONResponse(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": choices,
                    "usage": usage,
                }
            )

        async def events() -> AsyncIterator[bytes]:
            def chunk(
                delta: dict[str, Any], finish_reason: str | None = None, usage_obj: dict[str, Any] | None = None
            ) -> bytes:
                obj: dict[str, Any] = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
                }
                if usage_obj:
                    obj["usage"] = usage_obj
                return b"data: " + json.dumps(obj).encode() + b"\n\n"

            yield chunk({"role": "assistant", "content": ""})
            if thinking and not calls:
                yield chunk(
                    {
                        "content": [
                            {"type": "thinking", "thinking": [{"type": "text", "text": "Considering the question."}]}
                        ]
                    }
                )
            if calls:
                yield chunk({"tool_calls": [{**c, "index": k} for k, c in enumerate(calls)]})
            words = text.split(" ") if text else []
            for k, word in enumerate(words):
                piece = word + (" " if k < len(words) - 1 else "")
                yield chunk({"content": [{"type": "text", "text": piece}] if thinking else piece})
                if model == "err-stream":
                    error = {"object": "error", "message": "Internal server error", "type": "internal_server_error"}
                    yield b"data: " + json.dumps(error).encode() + b"\n\n"
                    return
            yield chunk({"content": ""}, finish, usage)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def embeddings(request: Request) -> Response:
        body = json.loads(await request.body())
        request.app.state.requests.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
        if not _authorized(request):
            return JSONResponse({"message": "Unauthorized", "request_id": "emu-req"}, status_code=401)
        try:
            _keys(body, {"model", "input", "output_dimension", "output_dtype", "encoding_format", "metadata"}, [])
            for field in ("model", "input"):
                if field not in body:
                    raise _unprocessable([field], "Field required", "missing")
        except _Bad as bad:
            return JSONResponse(bad.body, status_code=bad.status)
        inputs = [body["input"]] if isinstance(body["input"], str) else body["input"]
        dims = body.get("output_dimension") or 8
        data = []
        for i, text in enumerate(inputs):
            digest = hashlib.sha256(text.encode()).digest()
            data.append(
                {
                    "object": "embedding",
                    "embedding": [round((digest[k % 32] - 128) / 128, 6) for k in range(dims)],
                    "index": i,
                }
            )
        tokens = sum(len(t.split()) for t in inputs)
        return JSONResponse(
            {
                "id": "emu-embd",
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
            }
        )

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
        ]
    )
    app.state.requests = []
    return app
