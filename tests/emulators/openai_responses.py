"""The OpenAI Responses API (`POST /v1/responses`) of the OpenAI emulator, written from OpenAI's public API
reference.

It refuses what the real API refuses that a gateway could get wrong: a missing `model` or `input`, an
unknown top-level parameter (`Unknown parameter: '…'`, code `unknown_parameter`), a non-boolean
`stream`. It answers deterministically: an echo of the last user text, a `function_call` item when
function tools are offered and the prompt mentions the weather, an answer from a `function_call_output`,
a `reasoning` item when `reasoning.effort` is set, a web search call when the `web_search` tool is
offered and the prompt says "search", `status: incomplete` past `max_output_tokens`, and cache reads and
writes when `prompt_cache_key` is set. Streams use the real event names, each with its
`sequence_number`: `response.created`, `response.in_progress`, `response.output_item.added`,
`response.content_part.added`, `response.output_text.delta` / `.done`, `response.content_part.done`,
`response.function_call_arguments.delta` / `.done`, `response.output_item.done`, then
`response.completed` (or `response.incomplete`). `err-<status>` models answer that status;
`err-stream` sends an `error` event and `response.failed` mid-stream.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

PARAMS = {
    "model", "input", "instructions", "stream", "stream_options", "background", "context_management",
    "conversation", "include", "max_output_tokens", "max_tool_calls", "metadata", "parallel_tool_calls",
    "previous_response_id", "prompt", "prompt_cache_key", "prompt_cache_retention", "reasoning",
    "safety_identifier", "service_tier", "store", "temperature", "text", "tool_choice", "tools",
    "top_logprobs", "top_p", "truncation", "user",
}  # fmt: skip


def _error(status: int, message: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    etype = {429: "rate_limit_error"}.get(status, "invalid_request_error" if status < 500 else "server_error")
    body = {"error": {"message": message, "type": etype, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers={"retry-after": "7"} if status == 429 else None)


def _items(body: dict[str, Any]) -> list[dict[str, Any]]:
    raw = body["input"]
    return [{"type": "message", "role": "user", "content": raw}] if isinstance(raw, str) else list(raw)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content or [] if isinstance(p, dict))


def argument_name(parameters: Any) -> str:
    """The argument a call fills in: the tool's first required one (an MCP tool's), else `city`."""
    required = parameters.get("required") if isinstance(parameters, dict) else None
    return str(required[0]) if isinstance(required, list) and required else "city"


def _answer(body: dict[str, Any], digest: str) -> tuple[list[dict[str, Any]], str | None]:
    """(output items, incomplete reason) for a valid request."""
    items = _items(body)
    prompt = next(
        (_text_of(i.get("content")) for i in reversed(items) if i.get("role") == "user" and "content" in i), ""
    )
    output: list[dict[str, Any]] = []
    if (body.get("reasoning") or {}).get("effort"):
        output.append({"type": "reasoning", "id": f"rs_emu{digest[:16]}", "summary": []})
    tools = body.get("tools") or []
    functions = [t for t in tools if t.get("type") == "function"]
    answered = [i for i in items if i.get("type") == "function_call_output"]
    if any(t.get("type", "").startswith("web_search") for t in tools) and "search" in prompt.lower():
        action = {"type": "search", "query": prompt[:60]}
        output.append(
            {"type": "web_search_call", "id": f"ws_emu{digest[:16]}", "status": "completed", "action": action}
        )
    elif functions and not answered and "weather" in prompt.lower() and body.get("tool_choice") != "none":
        call = {"type": "function_call", "id": f"fc_emu{digest[:16]}", "call_id": f"call_emu{digest[:8]}"}
        arguments = {argument_name(functions[0].get("parameters")): "Paris"}
        output.append({**call, "name": functions[0]["name"], "arguments": json.dumps(arguments)})
        output[-1]["status"] = "completed"
        return output, None
    text = "Emulated OpenAI reply to: " + " ".join(prompt.split()[:20])
    if answered:
        text = "Emulated OpenAI answer from the tool result: " + str(answered[-1].get("output"))
    incomplete = None
    limit = body.get("max_output_tokens")
    if isinstance(limit, int) and len(text.split()) > limit:
        text, incomplete = " ".join(text.split()[:limit]), "max_output_tokens"
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    status = "incomplete" if incomplete else "completed"
    output.append(
        {"type": "message", "id": f"msg_emu{digest[:16]}", "status": status, "role": "assistant", "content": [part]}
    )
    return output, incomplete


def _usage(body: dict[str, Any], output: list[dict[str, Any]]) -> dict[str, Any]:
    words = len(json.dumps([body.get("instructions"), body["input"], body.get("tools")]).split())
    cached = words // 2 if body.get("prompt_cache_key") else 0
    written = words // 4 if body.get("prompt_cache_key") else 0
    reasoning = 8 if any(i["type"] == "reasoning" for i in output) else 0
    out = reasoning + sum(len(_text_of(i.get("content")).split()) + len(i.get("arguments", "")) // 4 for i in output)
    return {
        "input_tokens": words,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "output_tokens": max(out, 1),
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": words + max(out, 1),
    }


def _response(body: dict[str, Any], digest: str, created: int) -> dict[str, Any]:
    output, incomplete = _answer(body, digest)
    return {
        "id": f"resp_emu{digest[:24]}",
        "object": "response",
        "created_at": created,
        "status": "incomplete" if incomplete else "completed",
        "error": None,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body["model"],
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": _usage(body, output),
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


class _Events:
    """Numbered server-sent events of one streamed response."""

    def __init__(self) -> None:
        self.seq = 0

    def __call__(self, kind: str, **data: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.seq, **data}
        self.seq += 1
        return f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()


async def _stream(final: dict[str, Any], fail: bool) -> AsyncIterator[bytes]:
    ev = _Events()
    start = {**final, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}
    yield ev("response.created", response=start)
    yield ev("response.in_progress", response=start)
    for n, item in enumerate(final["output"]):
        if item["type"] == "message":
            yield ev(
                "response.output_item.added", output_index=n, item={**item, "status": "in_progress", "content": []}
            )
            at = {"item_id": item["id"], "output_index": n, "content_index": 0}
            empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            yield ev("response.content_part.added", **at, part=empty)
            text = item["content"][0]["text"]
            for k, word in enumerate(text.split(" ")):
                yield ev("response.output_text.delta", **at, delta=word if k == 0 else " " + word, logprobs=[])
                if fail and k == 1:
                    yield ev("error", code="server_error", message="The emulated stream failed.", param=None)
                    failed = {**start, "status": "failed", "error": {"code": "server_error", "message": "failed"}}
                    yield ev("response.failed", response=failed)
                    return
            yield ev("response.output_text.done", **at, text=text, logprobs=[])
            yield ev("response.content_part.done", **at, part=item["content"][0])
        elif item["type"] == "function_call":
            yield ev(
                "response.output_item.added", output_index=n, item={**item, "arguments": "", "status": "in_progress"}
            )
            args = item["arguments"]
            for k in range(0, len(args), 6):
                yield ev(
                    "response.function_call_arguments.delta", item_id=item["id"], output_index=n, delta=args[k : k + 6]
                )
            yield ev("response.function_call_arguments.done", item_id=item["id"], output_index=n, arguments=args)
        else:
            yield ev("response.output_item.added", output_index=n, item=item)
        yield ev("response.output_item.done", output_index=n, item=item)
    yield ev(f"response.{final['status']}", response=final)


async def responses(request: Request, api_key: str) -> Response:
    if request.headers.get("authorization", "") != f"Bearer {api_key}":
        return _error(401, "Incorrect API key provided.", code="invalid_api_key")
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError:
        return _error(400, "We could not parse the JSON body of your request.")
    request.app.state.requests.append(
        {"path": request.url.path, "headers": dict(request.headers), "body": body, "raw": raw}
    )
    if not isinstance(body, dict):
        return _error(400, "The request body must be a JSON object.")
    unknown = sorted(set(body) - PARAMS)
    if unknown:
        return _error(400, f"Unknown parameter: '{unknown[0]}'.", code="unknown_parameter", param=unknown[0])
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _error(400, "Missing required parameter: 'model'.", code="missing_required_parameter", param="model")
    if not isinstance(body.get("input"), str | list) or body["input"] == []:
        return _error(400, "Missing required parameter: 'input'.", code="missing_required_parameter", param="input")
    if "stream" in body and not isinstance(body["stream"], bool):
        return _error(400, "Invalid type for 'stream': expected a boolean.", param="stream")
    if model.startswith("err-") and model[4:].isdigit():
        return _error(int(model[4:]), f"emulated error {model[4:]}")
    digest = hashlib.sha256(json.dumps({k: v for k, v in body.items() if k != "stream"}, sort_keys=True).encode())
    final = _response(body, digest.hexdigest(), 1_700_000_000)
    if not body.get("stream"):
        return JSONResponse(final)
    return StreamingResponse(_stream(final, fail=model == "err-stream"), media_type="text/event-stream")
