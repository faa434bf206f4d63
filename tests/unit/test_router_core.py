"""Routing decisions, the SSE parser, the mock provider and the OpenAI pass-through translator."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from services.router.app import create_app, heartbeat_interval
from services.router.core import build_routes, require_translators, resolve, should_fail_over
from services.router.providers import mock
from services.router.providers.base import Target, UpstreamRequest, retry_after_seconds
from services.router.providers.openai import OpenAITranslator
from services.router.providers.registry import translators
from services.router.settings import RouterSettings
from services.router.sse import SseEvent, SseParser
from shared.config import ConfigError, parse_config
from shared.errors import (
    AuthenticationError,
    GatewayTimeoutError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamResponseTooLarge,
)
from tests.unit.providers.roundtrip import canonical

CONFIG = parse_config(
    """
providers:
  mock: {kind: mock}
  oa: {kind: openai, api_key_env: OA_KEY, headers: {x-org: o}}
models:
  - name: chat
    aliases: [c]
    deployments:
      - {provider: oa, model: gpt-x, params: {temperature: 0.1}, headers: {x-dep: d}}
      - {provider: mock, model: mock-1}
  - {name: emb, kind: embeddings, deployments: [{provider: oa, model: e}]}
"""
)


def test_routes_resolve_aliases_and_read_keys_from_env() -> None:
    routes = build_routes(CONFIG, {"OA_KEY": "k"})
    route = resolve(routes, "c", "chat")
    first = route.deployments[0]
    assert first.id == "oa/gpt-x" and first.target.api_key == "k"
    assert first.target.api_base == "https://api.openai.com/v1"
    assert dict(first.target.headers) == {"x-org": "o", "x-dep": "d"}
    assert [d.target.kind for d in route.deployments] == ["openai", "mock"]
    with pytest.raises(NotFoundError):
        resolve(routes, "nope", "chat")
    with pytest.raises(InvalidRequestError):
        resolve(routes, "emb", "chat")


def test_failover_policy() -> None:
    assert should_fail_over(RateLimitError("x"))
    assert should_fail_over(UpstreamError("x"))
    assert should_fail_over(GatewayTimeoutError("x"))
    assert should_fail_over(UpstreamAuthError("x"))
    assert not should_fail_over(InvalidRequestError("x"))
    assert not should_fail_over(UpstreamResponseTooLarge("x"))  # the next deployment would bill it again
    assert not should_fail_over(AuthenticationError("x"))  # only a client's key problem is a 401


def test_routes_need_the_keys_their_models_use() -> None:
    with pytest.raises(ConfigError, match="provider 'oa': environment variable OA_KEY is not set"):
        build_routes(CONFIG, {})
    routes = build_routes(CONFIG, {"OA_KEY": "k"})
    assert routes["chat"].deployments[0].limits.max_body_bytes == 32 * 1024 * 1024


def test_every_deployed_provider_kind_needs_a_translator() -> None:
    require_translators(CONFIG, translators())
    with pytest.raises(ConfigError, match="provider 'oa': kind 'openai' has no translator in this router"):
        require_translators(CONFIG, {"anthropic"})


def test_the_router_refuses_to_start_without_a_key_a_model_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gh.yaml"
    config.write_text(
        "providers:\n  oa:\n    kind: openai\n    api_key_env: GH_TEST_OA_KEY\n"
        "models:\n  - {name: c, deployments: [{provider: oa, model: m}]}\n"
    )
    monkeypatch.delenv("GH_TEST_OA_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"gh.yaml:4: .*environment variable GH_TEST_OA_KEY is not set"):
        create_app(RouterSettings(config=str(config)))
    monkeypatch.setenv("GH_TEST_OA_KEY", "k")
    assert create_app(RouterSettings(config=str(config))) is not None


def test_provider_keys_stay_out_of_reprs() -> None:
    routes = build_routes(CONFIG, {"OA_KEY": "sk-very-secret"})
    dep = routes["chat"].deployments[0]
    assert dep.target.api_key == "sk-very-secret"
    assert "sk-very-secret" not in repr(dep.target) and "sk-very-secret" not in repr(dep)
    req = OpenAITranslator().chat_request(canonical({"messages": []}), dep.target, stream=False)
    assert isinstance(req, UpstreamRequest) and req.headers["authorization"] == "Bearer sk-very-secret"
    assert "sk-very-secret" not in repr(req)


def test_sse_parser_handles_split_lines_crlf_and_multiline_data() -> None:
    p = SseParser()
    events = p.feed(b'event: a\r\ndata: {"x"')
    assert events == []
    events = p.feed(b": 1}\r\n\r\ndata: one\ndata: two\n\n: comment\n\ndata: [DONE]")
    assert events == [SseEvent("a", b'{"x": 1}'), SseEvent("", b"one\ntwo")]
    assert p.close() == [SseEvent("", b"[DONE]")]


def test_openai_translator_merges_params_and_forces_usage_on_streams() -> None:
    t = OpenAITranslator()
    target = Target(
        provider="oa",
        kind="openai",
        model="gpt-x",
        api_base="http://h/v1/",
        api_key="k",
        params={"temperature": 0.1, "top_p": 0.5},
    )
    req = t.chat_request(
        canonical({"model": "chat", "messages": [], "top_p": 0.9, "stream": True}), target, stream=True
    )
    body = msgspec.json.decode(req.body)
    assert req.url == "http://h/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer k"
    assert body["model"] == "gpt-x" and body["temperature"] == 0.1 and body["top_p"] == 0.9
    assert body["stream_options"] == {"include_usage": True}


def test_openai_stream_reads_usage_and_finish_and_done() -> None:
    t = OpenAITranslator()
    s = t.open_stream(Target(provider="oa", kind="openai", model="m", api_base="x"), "id", 0)
    assert s.feed(SseEvent("", b'{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}'))
    s.feed(
        SseEvent(
            "",
            b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,'
            b'"prompt_tokens_details":{"cached_tokens":2},'
            b'"completion_tokens_details":{"reasoning_tokens":1}}}',
        )
    )
    assert s.feed(SseEvent("", b"[DONE]")) == [] and s.done()
    assert s.finish_reason == "length"
    assert s.usage is not None
    assert (s.usage.input_tokens, s.usage.output_tokens, s.usage.cached_tokens, s.usage.reasoning_tokens) == (
        3,
        4,
        2,
        1,
    )


def test_openai_errors_map_to_taxonomy_with_retry_after() -> None:
    err = OpenAITranslator().parse_error(429, b'{"error":{"message":"slow down"}}', {"retry-after": "3"})
    assert isinstance(err, RateLimitError) and err.message == "slow down" and err.retry_after == 3.0
    assert retry_after_seconds({"retry-after-ms": "1500"}) == 1.5
    assert OpenAITranslator().parse_error(500, b"oops", {}).status == 502


def test_mock_provider_is_deterministic_with_consistent_usage() -> None:
    body = {"messages": [{"role": "user", "content": "one two three"}]}
    a = mock.completion(body, "mock-1", "id", 1)
    assert a == mock.completion(body, "mock-1", "id", 1)
    text = a["choices"][0]["message"]["content"]  # type: ignore[index]
    chunks = mock.chunks(body, "mock-1", "id", 1)
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])  # type: ignore[index,union-attr]
    assert streamed == text
    assert chunks[-1]["usage"] == a["usage"]
    assert a["usage"]["completion_tokens"] == len(text.split())  # type: ignore[index]
    limited = mock.completion({**body, "max_tokens": 2}, "m", "id", 1)
    assert limited["choices"][0]["finish_reason"] == "length"  # type: ignore[index]
    emb = mock.embeddings({"input": ["x", "x", "y"]}, "e")
    vecs = [d["embedding"] for d in emb["data"]]  # type: ignore[union-attr,index]
    assert vecs[0] == vecs[1] != vecs[2] and abs(sum(v * v for v in vecs[0]) - 1) < 1e-9


@pytest.mark.parametrize(
    ("configured", "silence", "expected"), [(5.0, 15.0, 5.0), (5.0, 3.0, 1.0), (0.5, 2.0, 0.5), (5.0, 1.5, 0.5)]
)
def test_the_router_heartbeat_is_at_least_three_per_ingress_silence(
    configured: float, silence: float, expected: float
) -> None:
    """`server.heartbeat_timeout_s` under three heartbeats would make every request longer than it look lost."""
    assert heartbeat_interval(configured, silence) == pytest.approx(expected)
