"""The built-in mock provider: deterministic chat and embeddings with usage, no network, no key.

It answers in OpenAI form directly, so the whole pipeline (guard, router, accounting) runs with no
provider account at all. The reply is derived from the last user message; tokens are counted as
whitespace-separated words, which keeps usage deterministic and easy to check.
"""

from __future__ import annotations

import hashlib
import math
import struct

from services.router.providers.base import JsonObj

CHUNK_WORDS = 2


def _last_user_text(body: JsonObj) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(
                    str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
                )
    return ""


def _prompt_tokens(body: JsonObj) -> int:
    total = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                content = message.get("content")
                if isinstance(content, str):
                    total += len(content.split())
                elif isinstance(content, list):
                    for part in content:
                        if isinstance(part, dict) and isinstance(part.get("text"), str):
                            total += len(part["text"].split())
    return max(total, 1)


def reply_text(body: JsonObj) -> str:
    """The mock's answer: a fixed preamble plus the first words of the last user message."""
    words = _last_user_text(body).split()[:24]
    text = "This is the gatehouse mock provider. You said: " + " ".join(words)
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    if isinstance(max_tokens, int) and max_tokens > 0:
        text = " ".join(text.split()[:max_tokens])
    return text


def _usage(body: JsonObj, text: str) -> JsonObj:
    prompt = _prompt_tokens(body)
    completion = len(text.split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _finish_reason(body: JsonObj, text: str) -> str:
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    if isinstance(max_tokens, int) and len(text.split()) >= max_tokens:
        return "length"
    return "stop"


def completion(body: JsonObj, model: str, response_id: str, created: int) -> JsonObj:
    text = reply_text(body)
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": "gatehouse-mock",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": _finish_reason(body, text),
            }
        ],
        "usage": _usage(body, text),
    }


def chunks(body: JsonObj, model: str, response_id: str, created: int) -> list[JsonObj]:
    """The stream: a role chunk, content chunks of a few words, a finish chunk, then a usage chunk."""
    text = reply_text(body)
    words = text.split(" ")
    base: JsonObj = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "gatehouse-mock",
    }
    out: list[JsonObj] = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    ]
    for i in range(0, len(words), CHUNK_WORDS):
        piece = " ".join(words[i : i + CHUNK_WORDS])
        if i + CHUNK_WORDS < len(words):
            piece += " "
        out.append({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
    out.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": _finish_reason(body, text)}]})
    out.append({**base, "choices": [], "usage": _usage(body, text)})
    return out


def _vector(text: str, dims: int) -> list[float]:
    seed = hashlib.sha256(text.encode()).digest()
    raw: list[float] = []
    counter = 0
    while len(raw) < dims:
        block = hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        raw.extend(v / 2**31 - 1.0 for v in struct.unpack("<8I", block))
        counter += 1
    vec = raw[:dims]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def embeddings(body: JsonObj, model: str) -> JsonObj:
    """Deterministic unit vectors derived from each input's text (same text → same vector)."""
    raw_input = body.get("input")
    inputs: list[str]
    if isinstance(raw_input, str):
        inputs = [raw_input]
    elif isinstance(raw_input, list):
        inputs = [str(x) for x in raw_input]
    else:
        inputs = []
    dims = body.get("dimensions")
    size = dims if isinstance(dims, int) and 0 < dims <= 3072 else 64
    tokens = sum(max(len(t.split()), 1) for t in inputs)
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": _vector(t, size)} for i, t in enumerate(inputs)],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
