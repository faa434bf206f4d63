"""The built-in mock provider: an in-process OpenAI-compatible server, no network, no key.

`MockTransport` is an httpx transport that answers `POST …/chat/completions` (JSON, or SSE when the
body asks for a stream) and `POST …/embeddings` on the OpenAI wire format. The router reaches it
through the same OpenAI translator, upstream client and SSE parser as a real provider, so the whole
pipeline runs with no provider account and tests on `mock-1` exercise the code production runs.
Replies are deterministic: derived from the last user message; tokens are counted as
whitespace-separated words, which keeps usage easy to check. A request for `n` choices gets `n`
(identical) choices, indexed 0..n-1; streamed, their chunks interleave and each carries its choice's
index, as OpenAI's do, and usage counts the output tokens of every choice.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import struct
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import httpx
import msgspec

from services.router.providers.base import JsonObj

SCHEME = "mock"
_JSON = msgspec.json.Encoder()

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


def _choice_count(body: JsonObj) -> int:
    # ingress has validated n (1..128); anything else reaching the mock is treated as the default
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1


def _usage(body: JsonObj, text: str, choices: int) -> JsonObj:
    prompt = _prompt_tokens(body)
    completion = len(text.split()) * choices
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
    n = _choice_count(body)
    finish = _finish_reason(body, text)
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": "gatehouse-mock",
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
            for index in range(n)
        ],
        "usage": _usage(body, text, n),
    }


def chunks(body: JsonObj, model: str, response_id: str, created: int) -> list[JsonObj]:
    """The stream: role chunks, content chunks of a few words, finish chunks, then a usage chunk.

    Each chunk carries one choice; with `n` choices the steps interleave (choice 0, 1, …, then the
    next step), so a client has to reassemble by index, as it must against OpenAI.
    """
    text = reply_text(body)
    n = _choice_count(body)
    finish = _finish_reason(body, text)
    words = text.split(" ")
    base: JsonObj = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "gatehouse-mock",
    }
    deltas: list[tuple[JsonObj, str | None]] = [({"role": "assistant", "content": ""}, None)]
    for i in range(0, len(words), CHUNK_WORDS):
        piece = " ".join(words[i : i + CHUNK_WORDS])
        if i + CHUNK_WORDS < len(words):
            piece += " "
        deltas.append(({"content": piece}, None))
    deltas.append(({}, finish))
    out: list[JsonObj] = [
        {**base, "choices": [{"index": index, "delta": delta, "finish_reason": reason}]}
        for delta, reason in deltas
        for index in range(n)
    ]
    out.append({**base, "choices": [], "usage": _usage(body, text, n)})
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


@dataclass(frozen=True, slots=True)
class MockBehaviour:
    """Simulated latency of one mock provider account."""

    latency_ms: float = 0.0  # before the answer (or the first chunk)
    chunk_delay_ms: float = 0.0  # between stream chunks


class _SseBody(httpx.AsyncByteStream):
    def __init__(self, events: list[JsonObj], delay_s: float) -> None:
        self._events = events
        self._delay_s = delay_s

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i, event in enumerate(self._events):
            if i and self._delay_s:
                await asyncio.sleep(self._delay_s)
            yield b"data: " + _JSON.encode(event) + b"\n\n"
        yield b"data: [DONE]\n\n"


def _json(status: int, body: object) -> httpx.Response:
    # a stream, as a network response is: the router reads it raw, bounded
    return httpx.Response(
        status, headers={"content-type": "application/json"}, stream=httpx.ByteStream(_JSON.encode(body))
    )


def _error(status: int, message: str) -> httpx.Response:
    return _json(status, {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}})


class MockTransport(httpx.AsyncBaseTransport):
    """OpenAI-compatible answers for `mock://<provider>/…` URLs; `behaviours` holds each provider's latency."""

    def __init__(self, behaviours: Mapping[str, MockBehaviour] | None = None) -> None:
        self._behaviours = dict(behaviours or {})
        self._served = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        behaviour = self._behaviours.get(request.url.host, MockBehaviour())
        body = msgspec.json.decode(await request.aread())
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.")
        if behaviour.latency_ms:
            await asyncio.sleep(behaviour.latency_ms / 1000)
        model = str(body.get("model", ""))
        path = request.url.path
        self._served += 1
        created = 1_700_000_000 + self._served
        response_id = f"chatcmpl-mock{self._served}"
        if path.endswith("/embeddings"):
            return _json(200, embeddings(body, model))
        if not path.endswith("/chat/completions"):
            return _error(404, f"Unknown path {path}.")
        if body.get("stream"):
            events = chunks(body, model, response_id, created)
            options = body.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage")):
                events = events[:-1]
            return httpx.Response(
                200,
                headers={"content-type": "text/event-stream"},
                stream=_SseBody(events, behaviour.chunk_delay_ms / 1000),
            )
        return _json(200, completion(body, model, response_id, created))
