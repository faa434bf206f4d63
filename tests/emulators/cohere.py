"""A Cohere v2 chat / embed emulator, written from Cohere's public OpenAPI specification (cohere-openapi.yaml).

It validates what a translator can get wrong: bearer auth (401 `{"id", "message"}`), the request
fields of `/v2/chat` and `/v2/embed` (unknown fields are rejected here, which may be stricter than the
real API), message roles and their keys, content blocks (text / image_url; tool results text /
document), tool calls answered by `tool` messages with matching `tool_call_id`s before the
conversation goes on, `tool_choice` REQUIRED/NONE (REQUIRED needs tools), parameter ranges
(temperature 0 to 1, p 0.01 to 0.99, k 0 to 500, at most 5 stop sequences), `response_format` shapes, and
`input_type` on embed. Errors use Cohere's `{"id", "message"}` body.

Answers are deterministic: an echo of the last user message; a `tool_plan` plus tool calls when tools
are offered and the prompt mentions the weather (two when it says "both"), or always under REQUIRED;
a summary after tool results; JSON under `response_format`. Streams are Cohere's named SSE events
(message-start, content-start/delta/end, tool-plan-delta, tool-call-start/delta/end, message-end with
usage). Model names simulate the rest: `err-<status>` (429 with Retry-After), `slow-<ms>`,
`ctx-long`, `err-stream` (message-end with an error), `*reasoning*` (thinking content first).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

API_KEY = "cohere-emulator-key"
_REQUEST = {"stream", "model", "messages", "tools", "strict_tools", "documents", "citation_options"}
_REQUEST |= {"response_format", "safety_mode", "max_tokens", "stop_sequences", "temperature", "seed"}
_REQUEST |= {"frequency_penalty", "presence_penalty", "k", "p", "logprobs", "tool_choice", "thinking", "priority"}
_ROLE_KEYS = {
    "system": {"role", "content"},
    "user": {"role", "content"},
    "assistant": {"role", "content", "tool_calls", "tool_plan", "citations"},
    "tool": {"role", "tool_call_id", "content"},
}


class _Bad(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"id": "emu-err-0001", "message": message}, status_code=status, headers=headers)


def _keys(obj: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _Bad(f"invalid request: {where} must be an object")
    for key in obj:
        if key not in allowed:
            raise _Bad(f'invalid request: unknown field "{key}" in {where}')
    return obj


def _blocks(content: Any, allowed: set[str], where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _Bad(f"invalid request: {where}.content must be a string or a list of content blocks")
    texts = []
    for i, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in allowed:
            raise _Bad(f"invalid request: {where}.content[{i}].type must be one of {sorted(allowed)}")
        if kind == "text":
            _keys(block, {"type", "text"}, f"{where}.content[{i}]")
            texts.append(block.get("text", ""))
        elif kind == "image_url":
            image = _keys(block, {"type", "image_url"}, f"{where}.content[{i}]")["image_url"]
            if not isinstance(image, dict) or not str(image.get("url", "")).startswith(("http", "data:image/")):
                raise _Bad(f"invalid request: {where}.content[{i}].image_url.url must be a web URL or a data URI")
        elif kind == "document":
            _keys(block, {"type", "document"}, f"{where}.content[{i}]")
    return " ".join(texts)


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise _Bad("invalid request: messages must not be empty")
    pending: set[str] = set()
    for i, m in enumerate(raw):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in _ROLE_KEYS:
            raise _Bad(f"invalid request: messages[{i}].role must be one of system, user, assistant, tool")
        _keys(m, _ROLE_KEYS[role], f"messages[{i}]")
        if role != "tool" and pending:
            raise _Bad(
                "invalid request: all tool calls of the assistant message must have a tool result before the next "
                "message"
            )
        if role in {"system", "user"}:
            if "content" not in m:
                raise _Bad(f"invalid request: messages[{i}].content is required")
            _blocks(m["content"], {"text"} if role == "system" else {"text", "image_url"}, f"messages[{i}]")
        elif role == "assistant":
            calls = m.get("tool_calls") or []
            if not calls and not m.get("content"):
                raise _Bad(f"invalid request: messages[{i}] must have content or tool_calls")
            if "content" in m:
                _blocks(m["content"], {"text", "thinking"}, f"messages[{i}]")
            for j, call in enumerate(calls):
                _keys(call, {"id", "type", "function"}, f"messages[{i}].tool_calls[{j}]")
                fn = _keys(call.get("function"), {"name", "arguments"}, f"messages[{i}].tool_calls[{j}].function")
                if not call.get("id") or not fn.get("name"):
                    raise _Bad(f"invalid request: messages[{i}].tool_calls[{j}] needs an id and a function name")
                try:
                    json.loads(fn.get("arguments") or "{}")
                except ValueError:
                    raise _Bad(
                        f"invalid request: messages[{i}].tool_calls[{j}].function.arguments is not valid JSON"
                    ) from None
                pending.add(call["id"])
        else:
            call_id = m.get("tool_call_id")
            if call_id not in pending:
                raise _Bad(
                    f"invalid request: messages[{i}].tool_call_id {call_id!r} does not match a tool call of the "
                    "previous assistant message"
                )
            pending.discard(call_id)
            if "content" not in m:
                raise _Bad(f"invalid request: messages[{i}].content is required")
            _blocks(m["content"], {"text", "document"}, f"messages[{i}]")
    if pending:
        raise _Bad("invalid request: all tool calls of the assistant message must have a tool result")
    return raw


def _validate(body: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    _keys(body, _REQUEST, "request")
    if not body.get("model"):
        raise _Bad("invalid request: model must be specified")
    messages = _messages(body.get("messages"))
    tools = []
    for i, tool in enumerate(body.get("tools") or []):
        _keys(tool, {"type", "function"}, f"tools[{i}]")
        fn = _keys(tool.get("function"), {"name", "description", "parameters"}, f"tools[{i}].function")
        if tool.get("type") != "function" or not fn.get("name") or not isinstance(fn.get("parameters"), dict):
            raise _Bad(f"invalid request: tools[{i}] needs type function, a name and parameters")
        tools.append(fn)
    choice = body.get("tool_choice")
    if choice is not None and choice not in {"REQUIRED", "NONE"}:
        raise _Bad("invalid request: tool_choice must be one of REQUIRED, NONE")
    if choice == "REQUIRED" and not tools:
        raise _Bad("invalid request: tool_choice REQUIRED needs tools")
    ranges = {
        "temperature": (0, 1),
        "p": (0.01, 0.99),
        "k": (0, 500),
        "frequency_penalty": (0, 1),
        "presence_penalty": (0, 1),
    }
    for field, (low, high) in ranges.items():
        value = body.get(field)
        if value is not None and not low <= value <= high:
            raise _Bad(f"invalid request: {field} must be between {low} and {high}, received {value}")
    if len(body.get("stop_sequences") or []) > 5:
        raise _Bad("invalid request: stop_sequences can have at most 5 entries")
    if body.get("max_tokens") is not None and body["max_tokens"] < 1:
        raise _Bad("invalid request: max_tokens must be positive")
    fmt = body.get("response_format")
    if fmt is not None:
        _keys(fmt, {"type", "json_schema"}, "response_format")
        if fmt.get("type") not in {"text", "json_object"}:
            raise _Bad("invalid request: response_format.type must be one of text, json_object")
        if "json_schema" in fmt and fmt["type"] != "json_object":
            raise _Bad("invalid request: response_format.json_schema requires type json_object")
    thinking = body.get("thinking")
    if thinking is not None and (not isinstance(thinking, dict) or thinking.get("type") not in {"enabled", "disabled"}):
        raise _Bad("invalid request: thinking.type must be enabled or disabled")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise _Bad("invalid request: stream must be a boolean")
    return messages, tools


def _sample(schema: dict[str, Any]) -> Any:
    kind = schema.get("type", "string")
    if kind == "object":
        return {k: _sample(v) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [_sample(schema.get("items") or {})]
    return {"integer": 1, "number": 1.5, "boolean": True}.get(kind, "emulated")


def _answer(
    body: dict[str, Any], messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> tuple[str, str, list[dict[str, Any]], str]:
    """(text, tool_plan, tool_calls, finish_reason)."""
    last = messages[-1]
    prompt = _blocks(last["content"], {"text", "image_url"}, "last") if last["role"] == "user" else ""
    choice = body.get("tool_choice")
    if tools and choice != "NONE" and last["role"] == "user" and ("weather" in prompt.lower() or choice == "REQUIRED"):
        name = tools[0]["name"]
        cities = ["Paris", "Tokyo"] if "both" in prompt.lower() else ["Paris"]
        calls = []
        for city in cities:
            suffix = hashlib.sha256(f"{prompt}{city}".encode()).hexdigest()[:12]
            calls.append(
                {
                    "id": f"{name}_{suffix}",
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps({"city": city})},
                }
            )
        return "", f"I will look up the weather for {' and '.join(cities)}.", calls, "TOOL_CALL"
    if last["role"] == "tool":
        results: list[str] = []
        for m in reversed(messages):
            if m["role"] != "tool":
                break
            results.insert(0, f"{m['tool_call_id']}={_blocks(m['content'], {'text', 'document'}, 'tool')}")
        text = "Emulated Cohere summary: " + "; ".join(results)
    else:
        text = "Emulated Cohere reply to: " + " ".join(prompt.split()[:20])
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_object":
        text = json.dumps(_sample(fmt["json_schema"]) if "json_schema" in fmt else {"reply": text})
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and len(text.split()) > max_tokens:
        return " ".join(text.split()[:max_tokens]), "", [], "MAX_TOKENS"
    return text, "", [], "COMPLETE"


def _usage(messages: list[dict[str, Any]], out_words: int) -> dict[str, Any]:
    prompt = 0
    for m in messages:
        content = m.get("content") or ""
        prompt += len((content if isinstance(content, str) else " ".join(b.get("text", "") for b in content)).split())
    prompt = max(prompt, 1)
    return {
        "billed_units": {"input_tokens": prompt, "output_tokens": out_words},
        "tokens": {"input_tokens": prompt + 60, "output_tokens": out_words + 2},
        "cached_tokens": 0,
    }


def _simulated(model: str) -> JSONResponse | None:
    if model == "ctx-long":
        return _error(
            400,
            "too many tokens: total number of tokens in the prompt cannot exceed 128000 - received 130000. Try "
            "using a shorter message",
        )
    if not model.startswith("err-") or model == "err-stream":
        return None
    status = int(model[4:])
    messages = {
        429: "You are using a Trial key, which is limited to 10 API calls / minute.",
        401: "invalid api token",
        498: "invalid api token",
        500: "internal server error, this has been reported to our developers",
        503: "service unavailable",
    }
    return _error(
        status, messages.get(status, f"emulated error {status}"), {"retry-after": "7"} if status == 429 else None
    )


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


def _events(
    cid: str, model: str, text: str, plan: str, calls: list[dict[str, Any]], finish: str, usage: dict[str, Any]
) -> list[bytes]:
    out = [
        _sse(
            "message-start",
            {
                "id": cid,
                "delta": {
                    "message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}
                },
            },
        )
    ]
    plan_words = plan.split(" ") if plan else []
    for k, word in enumerate(plan_words):
        piece = word + (" " if k < len(plan_words) - 1 else "")
        out.append(_sse("tool-plan-delta", {"delta": {"message": {"tool_plan": piece}}}))
    for i, call in enumerate(calls):
        start = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
        out.append(_sse("tool-call-start", {"index": i, "delta": {"message": {"tool_calls": start}}}))
        args = call["function"]["arguments"]
        for j in range(0, len(args), 5):
            out.append(
                _sse(
                    "tool-call-delta",
                    {"index": i, "delta": {"message": {"tool_calls": {"function": {"arguments": args[j : j + 5]}}}}},
                )
            )
        out.append(_sse("tool-call-end", {"index": i}))
    index = 0
    if "reasoning" in model and not calls:
        out.append(
            _sse("content-start", {"index": 0, "delta": {"message": {"content": {"type": "thinking", "thinking": ""}}}})
        )
        out.append(
            _sse(
                "content-delta",
                {"index": 0, "delta": {"message": {"content": {"thinking": "Considering the question."}}}},
            )
        )
        out.append(_sse("content-end", {"index": 0}))
        index = 1
    if text:
        out.append(
            _sse("content-start", {"index": index, "delta": {"message": {"content": {"type": "text", "text": ""}}}})
        )
        words = text.split(" ")
        for k, word in enumerate(words):
            piece = word + (" " if k < len(words) - 1 else "")
            out.append(
                _sse(
                    "content-delta",
                    {"index": index, "delta": {"message": {"content": {"text": piece}}}, "logprobs": None},
                )
            )
        out.append(_sse("content-end", {"index": index}))
    if model == "err-stream":
        out.append(
            _sse("message-end", {"id": cid, "delta": {"error": "internal server error", "finish_reason": "ERROR"}})
        )
    else:
        out.append(_sse("message-end", {"id": cid, "delta": {"finish_reason": finish, "usage": usage}}))
    return out


def create_app() -> Starlette:
    counter = {"n": 0}

    def _auth(request: Request) -> JSONResponse | None:
        auth = request.headers.get("authorization", "")
        if not auth:
            return _error(401, "no api key supplied")
        if auth.lower() != f"bearer {API_KEY}".lower() or auth.split(" ", 1)[-1] != API_KEY:
            return _error(401, "invalid api token")
        return None

    async def chat(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "invalid request: body is not valid JSON")
        request.app.state.requests.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
        denied = _auth(request)
        if denied is not None:
            return denied
        try:
            messages, tools = _validate(body)
        except _Bad as bad:
            return _error(bad.status, bad.message)
        model = body["model"]
        simulated = _simulated(model)
        if simulated is not None:
            return simulated
        if model.startswith("slow-"):
            await asyncio.sleep(int(model[5:]) / 1000)
        counter["n"] += 1
        cid = f"emu-cohere-{counter['n']:04d}"
        text, plan, calls, finish = _answer(body, messages, tools)
        usage = _usage(messages, len(text.split()) + len(plan.split()) + 4 * len(calls))
        if not body.get("stream"):
            content = [{"type": "text", "text": text}] if text else []
            if "reasoning" in model and not calls:
                content.insert(0, {"type": "thinking", "thinking": "Considering the question."})
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if calls:
                message.update(tool_plan=plan, tool_calls=calls)
            return JSONResponse({"id": cid, "message": message, "finish_reason": finish, "usage": usage})
        events = _events(cid, model, text, plan, calls, finish, usage)

        async def stream() -> AsyncIterator[bytes]:
            for event in events:
                yield event

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def embed(request: Request) -> Response:
        body = json.loads(await request.body())
        request.app.state.requests.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
        denied = _auth(request)
        if denied is not None:
            return denied
        allowed = {
            "texts",
            "images",
            "model",
            "input_type",
            "inputs",
            "max_tokens",
            "output_dimension",
            "embedding_types",
            "truncate",
            "priority",
        }
        try:
            _keys(body, allowed, "request")
        except _Bad as bad:
            return _error(400, bad.message)
        if not body.get("model"):
            return _error(400, "invalid request: model must be specified")
        if body.get("input_type") not in {"search_document", "search_query", "classification", "clustering", "image"}:
            return _error(
                400,
                "invalid request: input_type is required and must be one of search_document, search_query, "
                "classification, clustering, image",
            )
        texts = body.get("texts") or []
        if not 1 <= len(texts) <= 96:
            return _error(400, "invalid request: texts must contain between 1 and 96 items")
        dims = body.get("output_dimension") or 8
        vectors = []
        for text in texts:
            digest = hashlib.sha256(text.encode()).digest()
            vectors.append([round((digest[k % 32] - 128) / 128, 6) for k in range(dims)])
        tokens = sum(len(t.split()) for t in texts)
        meta = {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}}
        return JSONResponse(
            {
                "id": "emu-embed",
                "embeddings": {"float": vectors},
                "texts": texts,
                "meta": meta,
                "response_type": "embeddings_by_type",
            }
        )

    app = Starlette(routes=[Route("/v2/chat", chat, methods=["POST"]), Route("/v2/embed", embed, methods=["POST"])])
    app.state.requests = []
    return app
