"""The router's same-protocol pass-through against the Anthropic and OpenAI emulators over real HTTP.

Requests are parsed by the ingress surfaces (so they carry `native` and its canonical translation, as in
production) and served by the dispatcher through the production upstream transport. What the emulator
receives is compared with what the client sent; what the client gets with what the emulator answers to
the same request sent straight to it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest
from starlette.applications import Starlette

from services.ingress import apis
from services.router.core import build_routes
from services.router.dispatch import Dispatcher
from services.router.providers.anthropic import AnthropicTranslator
from services.router.providers.openai import OpenAITranslator
from services.router.sse import SseParser
from services.router.upstream import Upstream
from shared.config import GatehouseConfig
from shared.schemas.chat import Caller, ChatRequest, NativeEvents, Reply, Result, Usage
from tests.emulators import anthropic, openai
from tests.servers import serve_in_thread

CLAUDE = "claude-sonnet-4-5"
MESSAGES = {
    "model": "claude",
    "max_tokens": 2048,
    "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "tools": [
        {"name": "lookup", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 1},
    ],
    "messages": [
        {
            "role": "user",
            "content": [
                {
                    "type": "document",
                    "source": {"type": "text", "media_type": "text/plain", "data": "Gatehouse routes requests."},
                    "title": "About",
                    "citations": {"enabled": True},
                },
                {"type": "text", "text": "what does it do?", "cache_control": {"type": "ephemeral"}},
            ],
        }
    ],
}
HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "prompt-caching-2024-07-31,interleaved-thinking-2025-05-14",
}
RESPONSES = {
    "model": "gpt",
    "instructions": "Be brief.",
    "input": [{"role": "user", "content": [{"type": "input_text", "text": "hello responses"}]}],
    "reasoning": {"effort": "low", "summary": "auto"},
    "store": False,
    "prompt_cache_key": "tenant-1",
    "metadata": {"team": "qa"},
}


@dataclass
class Emulators:
    bases: dict[str, str]
    apps: dict[str, Starlette]

    def last(self, name: str) -> dict[str, Any]:
        """The last request the emulator `name` received (path, headers, body, raw)."""
        return self.apps[name].state.requests[-1]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulators]:
    apps = {"anthropic": anthropic.create_app(), "openai": openai.create_app()}
    with serve_in_thread(apps["anthropic"]) as a, serve_in_thread(apps["openai"]) as o:
        yield Emulators({"anthropic": a, "openai": o}, apps)


def _config(bases: dict[str, str]) -> GatehouseConfig:
    claude = {"kind": "anthropic", "api_base": bases["anthropic"], "api_key_env": "A_KEY"}
    oai = {"kind": "openai", "api_base": f"{bases['openai']}/v1", "api_key_env": "O_KEY"}
    providers = {"claude": claude, "oai": oai, "oai-compat": {**oai, "passthrough": False}}
    models = [
        {"name": "claude", "deployments": [{"provider": "claude", "model": CLAUDE}]},
        {"name": "gpt", "deployments": [{"provider": "oai", "model": "gpt-emu"}]},
        {"name": "gpt-compat", "deployments": [{"provider": "oai-compat", "model": "gpt-emu"}]},
        {
            "name": "claude-or-gpt",
            "deployments": [{"provider": "claude", "model": "err-529"}, {"provider": "oai", "model": "gpt-emu"}],
        },
        {"name": "claude-stream-fails", "deployments": [{"provider": "claude", "model": "err-stream"}]},
        {"name": "claude-429", "deployments": [{"provider": "claude", "model": "err-429"}]},
    ]
    return GatehouseConfig.model_validate({"providers": providers, "models": models})


async def _serve(emu: Emulators, api: apis.Api, body: dict[str, Any], headers: dict[str, str]) -> list[Reply]:
    parsed = api.parse(json.dumps(body).encode(), headers)
    req = ChatRequest(
        request_id="r1",
        api="chat",
        model=parsed.model,
        chat=parsed.chat,
        native=parsed.native,
        caller=Caller(key_id="k"),
        stream=parsed.stream,
    )
    upstream = Upstream()
    translators = {"anthropic": AnthropicTranslator(), "openai": OpenAITranslator()}
    routes = build_routes(_config(emu.bases), {"A_KEY": anthropic.API_KEY, "O_KEY": openai.API_KEY})
    replies: list[Reply] = []

    async def send(reply: Reply) -> None:
        replies.append(reply)

    try:
        await Dispatcher(routes, upstream, translators).serve(req, send)
    finally:
        await upstream.aclose()
    return replies


def _direct(url: str, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    return httpx.post(url, json=body, headers=headers, timeout=10)


def _relayed(replies: list[Reply]) -> bytes:
    return b"".join(i for r in replies if isinstance(r, NativeEvents) for i in r.items)


def _events(data: bytes) -> list[tuple[str, Any]]:
    return [(e.event, json.loads(e.data)) for e in SseParser().feed(data)]


def _without_ids(value: Any) -> Any:
    """Message and response ids hash the raw request bytes, which the gateway frames anew."""
    if isinstance(value, dict):
        return {
            k: "<id>" if k == "id" and str(v).startswith(("msg_", "resp_")) else _without_ids(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_without_ids(v) for v in value]
    return value


def _anthropic_direct(emu: Emulators, body: dict[str, Any]) -> httpx.Response:
    headers = {**HEADERS, "x-api-key": anthropic.API_KEY}
    return _direct(f"{emu.bases['anthropic']}/v1/messages", {**body, "model": CLAUDE}, headers)


async def test_anthropic_request_reaches_the_provider_unchanged_and_its_answer_comes_back(emu: Emulators) -> None:
    replies = await _serve(emu, apis.MESSAGES, MESSAGES, HEADERS)
    result = replies[-1]
    assert isinstance(result, Result) and result.error is None and result.native and len(replies) == 1
    sent = emu.last("anthropic")
    assert sent["body"] == {**MESSAGES, "model": CLAUDE}
    # every value but the model is the very bytes the client sent
    top = msgspec.json.Decoder(dict[str, msgspec.Raw])
    client = top.decode(json.dumps(MESSAGES).encode())
    upstream = top.decode(sent["raw"])
    assert list(upstream) == list(client)
    assert all(bytes(upstream[k]) == bytes(client[k]) for k in client if k != "model")
    assert sent["headers"]["anthropic-beta"] == HEADERS["anthropic-beta"]
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    direct = _anthropic_direct(emu, MESSAGES)
    assert direct.status_code == 200, direct.text
    assert _without_ids(json.loads(result.body)) == _without_ids(direct.json())
    answer = json.loads(result.body)
    assert [b["type"] for b in answer["content"]] == ["thinking", "text"]
    assert answer["content"][1]["citations"][0]["document_title"] == "About"
    u = answer["usage"]
    assert result.outcome.usage == Usage(
        input_tokens=u["input_tokens"] + u["cache_read_input_tokens"] + u["cache_creation_input_tokens"],
        output_tokens=u["output_tokens"],
        cached_tokens=u["cache_read_input_tokens"],
        cache_write_tokens=u["cache_creation_input_tokens"],
        cache_write_1h_tokens=u["cache_creation"]["ephemeral_1h_input_tokens"],  # a tool is cached for an hour
    )
    assert result.outcome.usage.cached_tokens > 0 and result.outcome.usage.cache_write_tokens > 0
    assert result.outcome.finish_reason == "stop" and result.outcome.provider_kind == "anthropic"


async def test_an_anthropic_stream_is_relayed_event_for_event(emu: Emulators) -> None:
    body = {**MESSAGES, "stream": True}
    body["messages"] = [{"role": "user", "content": "please search the web for gatehouse"}]
    replies = await _serve(emu, apis.MESSAGES, body, HEADERS)
    result = replies[-1]
    assert isinstance(result, Result) and result.error is None and result.native and not result.body
    direct = _anthropic_direct(emu, body)
    assert _without_ids(_events(_relayed(replies))) == _without_ids(_events(direct.content))
    kinds = [e[1].get("content_block", {}).get("type") for e in _events(_relayed(replies))]
    assert "server_tool_use" in kinds and "web_search_tool_result" in kinds
    assert result.outcome.usage is not None and result.outcome.usage.output_tokens > 0
    assert result.outcome.ttft_ms > 0 and result.outcome.finish_reason == "stop"


async def test_failover_to_another_protocol_takes_the_canonical_path(emu: Emulators) -> None:
    replies = await _serve(emu, apis.MESSAGES, {**MESSAGES, "model": "claude-or-gpt", "tools": []}, HEADERS)
    result = replies[-1]
    assert isinstance(result, Result) and result.error is None and not result.native
    assert [a.status for a in result.outcome.attempts] == [503, 200]
    assert json.loads(result.body)["object"] == "chat.completion"
    assert emu.last("openai")["path"] == "/v1/chat/completions"


async def test_a_request_only_anthropic_can_serve_skips_other_deployments(emu: Emulators) -> None:
    # the web search tool has no chat form: the OpenAI deployment behind the failing Claude one is skipped
    replies = await _serve(emu, apis.MESSAGES, {**MESSAGES, "model": "claude-or-gpt"}, HEADERS)
    result = replies[-1]
    assert isinstance(result, Result) and result.error is not None and result.error.status == 503
    # the one deployment that may serve it is retried (with backoff), the other is never tried
    assert [(a.deployment, a.status) for a in result.outcome.attempts] == [("claude/err-529", 503)] * 3
    assert [a.route for a in result.outcome.attempts] == ["first", "retry", "retry"]
    replies = await _serve(emu, apis.MESSAGES, {**MESSAGES, "model": "gpt"}, HEADERS)
    result = replies[-1]
    assert isinstance(result, Result) and result.error is not None and result.error.status == 400
    assert "only a deployment speaking Anthropic Messages" in result.error.message
    assert result.error.param == "tools[1].type" and not result.outcome.attempts


async def test_provider_errors_are_taxonomy_errors_and_a_stream_error_is_relayed_as_sent(emu: Emulators) -> None:
    replies = await _serve(emu, apis.MESSAGES, {**MESSAGES, "model": "claude-429"}, HEADERS)
    result = replies[-1]
    assert isinstance(result, Result) and result.error is not None
    assert (result.error.status, result.error.retry_after, result.native) == (429, 7.0, False)
    body = {**MESSAGES, "model": "claude-stream-fails", "stream": True, "thinking": {"type": "disabled"}}
    body["messages"] = [{"role": "user", "content": "one two three four five six"}]
    replies = await _serve(emu, apis.MESSAGES, body, HEADERS)
    result = replies[-1]
    events = _events(_relayed(replies))
    assert events[-1][0] == "error" and events[-1][1]["error"]["type"] == "overloaded_error"
    # the client has the provider's own error event: ingress writes nothing more
    assert isinstance(result, Result) and result.error is not None and result.native


@pytest.mark.parametrize("stream", [False, True])
async def test_responses_reach_openai_unchanged_and_come_back(emu: Emulators, stream: bool) -> None:
    body = {**RESPONSES, "stream": stream}
    replies = await _serve(emu, apis.RESPONSES, body, {"openai-beta": "responses=v1"})
    result = replies[-1]
    assert isinstance(result, Result) and result.error is None and result.native
    sent = emu.last("openai")
    assert sent["path"] == "/v1/responses" and sent["body"] == {**body, "model": "gpt-emu"}
    assert sent["headers"]["openai-beta"] == "responses=v1"
    direct = _direct(
        f"{emu.bases['openai']}/v1/responses",
        {**body, "model": "gpt-emu"},
        {"authorization": f"Bearer {openai.API_KEY}"},
    )
    if stream:
        assert _events(_relayed(replies)) == _events(direct.content)
        assert [e[1]["sequence_number"] for e in _events(_relayed(replies))] == list(
            range(len(_events(direct.content)))
        )
    else:
        assert json.loads(result.body) == direct.json()
    usage = result.outcome.usage
    assert usage is not None and usage.cached_tokens > 0 and usage.cache_write_tokens > 0
    assert usage.reasoning_tokens > 0 and result.outcome.finish_reason == "stop"


async def test_a_provider_that_opts_out_gets_the_canonical_translation(emu: Emulators) -> None:
    replies = await _serve(emu, apis.RESPONSES, {**RESPONSES, "model": "gpt-compat"}, {})
    result = replies[-1]
    assert isinstance(result, Result) and result.error is None and not result.native
    assert emu.last("openai")["path"] == "/v1/chat/completions"
    assert msgspec.json.decode(result.body)["object"] == "chat.completion"
