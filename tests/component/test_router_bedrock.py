"""Bedrock through the dispatcher and the production upstream transport, signed with botocore's SigV4 from the
standard credential chain, against the Bedrock emulator over real HTTP (which recomputes the signature)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from botocore.credentials import Credentials
from starlette.applications import Starlette

from services.router.core import build_routes
from services.router.dispatch import Dispatcher
from services.router.providers.registry import translators
from services.router.signing import AwsSigner, request_signers
from services.router.upstream import Upstream
from shared.config import ConfigError, GatehouseConfig
from shared.schemas.chat import Caller, ChatRequest, Chunk, ChunkBatch, Reply, Result
from tests.emulators import bedrock
from tests.servers import serve_in_thread
from tests.unit.providers.roundtrip import canonical

MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.fixture(scope="module")
def emulator() -> Iterator[tuple[Starlette, str]]:
    app = bedrock.create_app()
    with serve_in_thread(app) as url:
        yield app, url


def config(url: str) -> GatehouseConfig:
    return GatehouseConfig.model_validate(
        {
            "providers": {"aws": {"kind": "bedrock", "region": "us-east-1", "api_base": url}},
            "models": [
                {"name": "claude", "deployments": [{"provider": "aws", "model": MODEL}]},
                {"name": "long", "deployments": [{"provider": "aws", "model": "err-long"}],
                 "context_window_fallbacks": ["claude"]},
            ],
            "routing": {"max_attempts": 1},
        }
    )  # fmt: skip


async def ask(url: str, signer: AwsSigner, body: dict[str, object], model: str = "claude") -> list[Reply]:
    upstream = Upstream(signers={"aws": signer})
    dispatcher = Dispatcher(build_routes(config(url), {}), upstream, translators())
    replies: list[Reply] = []

    async def send(reply: Reply) -> None:
        replies.append(reply)

    stream = bool(body.get("stream"))
    req = ChatRequest(
        request_id="r1", api="chat", model=model, chat=canonical({"model": model, **body}), caller=Caller(key_id="k"),
        stream=stream, include_usage=stream, deadline=time.time() + 20,
    )  # fmt: skip
    try:
        await dispatcher.serve(req, send)
    finally:
        await upstream.aclose()
    return replies


def good_signer() -> AwsSigner:
    return AwsSigner(Credentials(bedrock.ACCESS_KEY, bedrock.SECRET_KEY, bedrock.SESSION_TOKEN), "us-east-1")


async def test_signed_converse_plain_streamed_and_with_tools(emulator: tuple[Starlette, str]) -> None:
    app, url = emulator
    hello = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello bedrock"}]}
    result = (await ask(url, good_signer(), hello))[-1]
    assert isinstance(result, Result) and result.error is None, result.error
    answer = json.loads(result.body)
    assert answer["choices"][0]["message"]["content"] == "Emulated Bedrock reply to: hello bedrock"
    assert result.outcome.usage is not None and result.outcome.usage.input_tokens > 0
    seen = app.state.requests[-1]
    assert seen["path"].endswith("/model/anthropic.claude-3-5-sonnet-20240620-v1:0/converse")
    assert seen["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIAGATEHOUSEEMU0001/")
    assert seen["headers"]["x-amz-security-token"] == bedrock.SESSION_TOKEN
    replies = await ask(url, good_signer(), {**hello, "stream": True})
    text = "".join(
        json.loads(d)["choices"][0]["delta"].get("content") or ""
        for r in replies
        if isinstance(r, Chunk | ChunkBatch)
        for d in ([r.data] if isinstance(r, Chunk) else r.items)
        if json.loads(d)["choices"]
    )
    last = replies[-1]
    assert isinstance(last, Result) and last.error is None and text == "Emulated Bedrock reply to: hello bedrock"
    assert last.outcome.usage is not None and last.outcome.usage.output_tokens == 6
    assert app.state.requests[-1]["headers"]["accept"] == "application/vnd.amazon.eventstream"
    tools = {"messages": [{"role": "user", "content": "weather in both cities?"}], "tools": TOOLS, "stream": True}
    replies = await ask(url, good_signer(), tools)
    calls: dict[int, dict[str, str]] = {}
    for r in replies:
        for d in [r.data] if isinstance(r, Chunk) else r.items if isinstance(r, ChunkBatch) else []:
            for choice in json.loads(d)["choices"]:
                for call in choice["delta"].get("tool_calls") or []:
                    entry = calls.setdefault(call["index"], {"name": "", "args": ""})
                    entry["name"] += call.get("function", {}).get("name") or ""
                    entry["args"] += call.get("function", {}).get("arguments") or ""
    assert [json.loads(c["args"]) for c in calls.values()] == [{"city": "Paris"}, {"city": "Tokyo"}]
    assert replies[-1].outcome.finish_reason == "tool_calls"  # type: ignore[union-attr]


async def test_a_wrong_secret_is_refused_by_signature_and_is_the_gateways_problem(
    emulator: tuple[Starlette, str],
) -> None:
    _, url = emulator
    wrong = AwsSigner(Credentials(bedrock.ACCESS_KEY, "not-the-secret", bedrock.SESSION_TOKEN), "us-east-1")
    result = (await ask(url, wrong, {"messages": [{"role": "user", "content": "x"}]}))[-1]
    assert isinstance(result, Result) and result.error is not None
    assert (result.error.status, result.error.code) == (502, "upstream_auth_error")
    assert "does not match" in result.outcome.attempts[0].error_message


async def test_a_too_long_prompt_falls_back_to_a_larger_model(emulator: tuple[Starlette, str]) -> None:
    _, url = emulator
    result = (await ask(url, good_signer(), {"messages": [{"role": "user", "content": "x"}]}, model="long"))[-1]
    assert isinstance(result, Result) and result.error is None
    assert [(a.status, a.error_code, a.route) for a in result.outcome.attempts] == [
        (400, "context_length_exceeded", "first"),
        (200, "", "context_window_fallback"),
    ]


def test_credentials_come_from_the_standard_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config("http://127.0.0.1:1")
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", bedrock.ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bedrock.SECRET_KEY)
    signers = request_signers(cfg, {})
    assert set(signers) == {"aws"} and signers["aws"].region == "us-east-1"
    no_region = GatehouseConfig.model_validate(
        {
            "providers": {"aws": {"kind": "bedrock"}},
            "models": [{"name": "m", "deployments": [{"provider": "aws", "model": "x"}]}],
        }
    )
    with pytest.raises(ConfigError, match="needs `region`"):
        request_signers(no_region, {})
