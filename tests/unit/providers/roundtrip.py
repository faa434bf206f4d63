"""Drive a translator against a provider emulator in process: OpenAI body → upstream request → OpenAI answer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import msgspec
from starlette.applications import Starlette

from services.router.providers.base import JsonObj, Target, Translator
from services.router.sse import SseParser
from shared.errors import GatewayError, InvalidRequestError
from shared.schemas.openai import EMBEDDINGS_FIELDS, ChatCompletionRequest, EmbeddingsRequest, chat_from_builtins

RESPONSE_ID = "chatcmpl-req0123456789abcdef"
CREATED = 1_700_000_000


def canonical(body: Mapping[str, Any]) -> ChatCompletionRequest:
    """A test's chat body (model optional) as the canonical request ingress would have decoded."""
    try:
        return chat_from_builtins({"model": "m", **body})
    except msgspec.ValidationError as exc:  # what ingress answers for a body that does not fit the schema
        raise InvalidRequestError(str(exc)) from exc


def canonical_embeddings(body: Mapping[str, Any]) -> EmbeddingsRequest:
    known = {k: v for k, v in {"model": "m", **body}.items() if k in EMBEDDINGS_FIELDS}
    req = msgspec.convert(known, EmbeddingsRequest)
    req.extra = {k: v for k, v in body.items() if k not in EMBEDDINGS_FIELDS}
    return req


def _as_dict(obj: JsonObj | bytes) -> dict[str, Any]:
    return msgspec.json.decode(obj) if isinstance(obj, bytes) else dict(obj)


async def _send(app: Starlette, method: str, url: str, headers: Mapping[str, str], body: bytes) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport) as client:
        return await client.request(method, url, headers=dict(headers), content=body)


async def chat(translator: Translator, app: Starlette, body: dict[str, Any], target: Target) -> dict[str, Any]:
    """A non-stream completion; a provider error is raised as the translator maps it."""
    req = translator.chat_request(canonical(body), target, stream=False)
    resp = await _send(app, req.method, req.url, req.headers, req.body)
    if resp.status_code >= 400:
        raise translator.parse_error(resp.status_code, resp.content, {k.lower(): v for k, v in resp.headers.items()})
    return _as_dict(translator.parse_chat(resp.content, target, RESPONSE_ID, CREATED))


async def stream(
    translator: Translator, app: Starlette, body: dict[str, Any], target: Target
) -> tuple[list[dict[str, Any]], Any]:
    """(chunks, the ChatStream) for a streamed completion, fed in small network-like pieces."""
    req = translator.chat_request(canonical(body), target, stream=True)
    resp = await _send(app, req.method, req.url, req.headers, req.body)
    if resp.status_code >= 400:
        raise translator.parse_error(resp.status_code, resp.content, {k.lower(): v for k, v in resp.headers.items()})
    chat_stream = translator.open_stream(target, RESPONSE_ID, CREATED)
    parser = SseParser()
    out: list[dict[str, Any]] = []
    raw = resp.content
    for i in range(0, len(raw), 37):  # odd-sized reads split events and lines
        for event in parser.feed(raw[i : i + 37]):
            out.extend(_as_dict(c) for c in chat_stream.feed(event))
        if chat_stream.done():
            break
    for event in parser.close():
        out.extend(_as_dict(c) for c in chat_stream.feed(event))
    out.extend(_as_dict(c) for c in chat_stream.finish())
    return out, chat_stream


async def embeddings(translator: Translator, app: Starlette, body: dict[str, Any], target: Target) -> dict[str, Any]:
    req = translator.embeddings_request(canonical_embeddings(body), target)
    resp = await _send(app, req.method, req.url, req.headers, req.body)
    if resp.status_code >= 400:
        raise translator.parse_error(resp.status_code, resp.content, {k.lower(): v for k, v in resp.headers.items()})
    return _as_dict(translator.parse_embeddings(resp.content, target))


def assemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """What an OpenAI client accumulates from chunks: content, reasoning, tool calls by index, finish, usage."""
    content, reasoning, finish, usage = "", "", None, None
    calls: dict[int, dict[str, Any]] = {}
    roles = 0
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk["choices"]:
            delta = choice["delta"]
            roles += delta.get("role") == "assistant"
            content += delta.get("content") or ""
            reasoning += delta.get("reasoning_content") or ""
            for tc in delta.get("tool_calls") or []:
                slot = calls.setdefault(tc["index"], {"id": None, "name": "", "arguments": "", "extra": None})
                slot["id"] = tc.get("id") or slot["id"]
                fn = tc.get("function") or {}
                slot["name"] += fn.get("name") or ""
                slot["arguments"] += fn.get("arguments") or ""
                slot["extra"] = tc.get("extra_content") or slot["extra"]
            finish = choice.get("finish_reason") or finish
    return {
        "content": content,
        "reasoning": reasoning,
        "tool_calls": [calls[k] for k in sorted(calls)],
        "finish_reason": finish,
        "usage": usage,
        "roles": roles,
    }


__all__ = ["CREATED", "RESPONSE_ID", "GatewayError", "assemble", "chat", "embeddings", "stream"]
