"""The router's dispatcher with the Gemini, Mistral and Cohere translators against their emulators over real HTTP.

Each emulator runs under uvicorn on a free loopback port (as the end-to-end suite runs them), and the
dispatcher calls it through the production upstream transport: streamed bytes arrive in network-sized
pieces, usage chunks are relayed only when the client asked, failover moves past a 503 deployment.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from services.router.core import build_routes
from services.router.dispatch import Dispatcher
from services.router.providers.cohere import CohereTranslator
from services.router.providers.gemini import GeminiTranslator
from services.router.providers.mistral import MistralTranslator
from services.router.upstream import Upstream
from shared.config import GatehouseConfig
from shared.schemas.chat import Caller, ChatRequest, Chunk, ChunkBatch, Reply, Result
from tests.emulators import cohere, gemini, mistral
from tests.servers import serve_in_thread
from tests.unit.providers.roundtrip import canonical, canonical_embeddings

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def bases() -> Iterator[dict[str, str]]:
    with (
        serve_in_thread(gemini.create_app()) as g,
        serve_in_thread(mistral.create_app()) as m,
        serve_in_thread(cohere.create_app()) as c,
    ):
        yield {"gemini": g, "mistral": m, "cohere": c}


def _dispatcher(bases: dict[str, str], upstream: Upstream) -> Dispatcher:
    providers = {
        kind: {"kind": kind, "api_base": base, "api_key_env": f"{kind.upper()}_KEY"} for kind, base in bases.items()
    }
    config = GatehouseConfig.model_validate(
        {
            "providers": providers,
            "models": [
                {"name": "g", "deployments": [{"provider": "gemini", "model": "gemini-2.5-flash"}]},
                {"name": "m", "deployments": [{"provider": "mistral", "model": "mistral-small-latest"}]},
                {"name": "c", "deployments": [{"provider": "cohere", "model": "command-a-03-2025"}]},
                {
                    "name": "failover",
                    "deployments": [
                        {"provider": "gemini", "model": "err-503"},
                        {"provider": "cohere", "model": "err-429"},
                        {"provider": "mistral", "model": "mistral-small-latest"},
                    ],
                },
                {"name": "g-embed", "kind": "embeddings", "deployments": [{"provider": "gemini", "model": "emb"}]},
            ],
        }
    )
    environ = {"GEMINI_KEY": gemini.API_KEY, "MISTRAL_KEY": mistral.API_KEY, "COHERE_KEY": cohere.API_KEY}
    translators = {t.kind: t for t in (GeminiTranslator(), MistralTranslator(), CohereTranslator())}
    return Dispatcher(build_routes(config, environ), upstream, translators)


async def _serve(
    bases: dict[str, str],
    model: str,
    body: dict[str, Any],
    *,
    stream: bool,
    include_usage: bool = False,
    api: str = "chat",
) -> tuple[list[dict[str, Any]], Result]:
    upstream = Upstream()
    dispatcher = _dispatcher(bases, upstream)
    replies: list[Reply] = []

    async def send(reply: Reply) -> None:
        replies.append(reply)

    req = ChatRequest(
        request_id="r1",
        api=api,
        model=model,
        chat=canonical({**body, "model": model}) if api == "chat" else None,
        embeddings=canonical_embeddings({**body, "model": model}) if api == "embeddings" else None,
        caller=Caller(key_id="k"),
        stream=stream,
        include_usage=include_usage,
    )
    try:
        await dispatcher.serve(req, send)
    finally:
        await upstream.aclose()
    chunks: list[dict[str, Any]] = []
    for reply in replies[:-1]:
        items = [reply.data] if isinstance(reply, Chunk) else reply.items if isinstance(reply, ChunkBatch) else []
        chunks.extend(msgspec.json.decode(i) for i in items)
    result = replies[-1]
    assert isinstance(result, Result)
    return chunks, result


@pytest.mark.parametrize("model", ["g", "m", "c"])
async def test_non_stream_chat_with_usage(bases: dict[str, str], model: str) -> None:
    chunks, result = await _serve(
        bases, model, {"messages": [{"role": "user", "content": "hello over the wire"}]}, stream=False
    )
    assert result.error is None and not chunks
    body = msgspec.json.decode(result.body)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"].endswith("hello over the wire")
    assert result.outcome.usage is not None and result.outcome.usage.input_tokens > 0
    assert result.outcome.finish_reason == "stop"


@pytest.mark.parametrize("model", ["g", "m", "c"])
async def test_streamed_tool_calls_and_usage_only_when_asked(bases: dict[str, str], model: str) -> None:
    body = {"messages": [{"role": "user", "content": "the weather in both Paris and Tokyo?"}], "tools": [WEATHER]}
    chunks, result = await _serve(bases, model, body, stream=True, include_usage=True)
    assert result.error is None and result.outcome.finish_reason == "tool_calls"
    calls: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for tc in choice["delta"].get("tool_calls") or []:
                calls[tc["index"]] = calls.get(tc["index"], "") + tc["function"].get("arguments", "")
    assert [json.loads(calls[i]) for i in sorted(calls)] == [{"city": "Paris"}, {"city": "Tokyo"}]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] > 0
    assert result.outcome.usage is not None and result.outcome.usage.output_tokens > 0

    chunks, result = await _serve(bases, model, body, stream=True, include_usage=False)
    assert all(c["choices"] for c in chunks)  # no usage chunk relayed
    assert result.outcome.usage is not None  # but still recorded


async def test_failover_past_503_and_429(bases: dict[str, str]) -> None:
    _, result = await _serve(bases, "failover", {"messages": [{"role": "user", "content": "hi"}]}, stream=False)
    assert result.error is None
    assert [(a.status, a.error_code) for a in result.outcome.attempts] == [
        (503, "service_unavailable"),
        (429, "rate_limit_exceeded"),
        (200, ""),
    ]
    assert result.outcome.provider == "mistral"


async def test_embeddings_through_the_router(bases: dict[str, str]) -> None:
    _, result = await _serve(bases, "g-embed", {"input": ["a", "b"]}, stream=False, api="embeddings")
    assert result.error is None
    body = msgspec.json.decode(result.body)
    assert [d["index"] for d in body["data"]] == [0, 1]
