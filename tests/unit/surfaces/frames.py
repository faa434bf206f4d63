"""Test helpers: split SSE bytes into (event, data) frames, and build chat chunks tersely."""

from __future__ import annotations

import json
from typing import Any


def frames(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        assert set(lines) == {"event", "data"}, block
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"], block
        out.append((lines["event"], data))
    return out


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    """A `chat.completion.chunk` with one choice (or none when `delta` is None)."""
    body: dict[str, Any] = {
        "id": "chatcmpl-t1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "up",
    }
    if delta is not None or finish is not None:
        body["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    else:
        body["choices"] = []
    body.update(extra)
    return body


def call_delta(
    index: int, *, id: str | None = None, name: str | None = None, args: str | None = None
) -> dict[str, Any]:
    fn: dict[str, Any] = {}
    if name is not None:
        fn["name"] = name
    if args is not None:
        fn["arguments"] = args
    call: dict[str, Any] = {"index": index, "function": fn}
    if id is not None:
        call["id"] = id
        call["type"] = "function"
    return {"tool_calls": [call]}


def split(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


USAGE = {
    "prompt_tokens": 25,
    "completion_tokens": 9,
    "total_tokens": 34,
    "prompt_tokens_details": {"cached_tokens": 5},
    "completion_tokens_details": {"reasoning_tokens": 2},
}


def completion(
    message: dict[str, Any], finish: str, usage: dict[str, Any] | None = None, **choice: Any
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-t1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "upstream-model",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish, **choice}],
        "usage": usage if usage is not None else USAGE,
    }
