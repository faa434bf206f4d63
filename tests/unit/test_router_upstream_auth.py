"""A provider rejecting the gateway's key is the gateway's problem: 502 upstream_auth_error with failover,
never the client's own 401, and the provider's words only in the attempt record."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from services.router.core import attempt_error, attempt_message, build_routes, should_fail_over
from services.router.dispatch import Dispatcher
from services.router.providers.anthropic import AnthropicTranslator
from services.router.providers.base import Target, Translator
from services.router.providers.cohere import CohereTranslator
from services.router.providers.gemini import GeminiTranslator
from services.router.providers.openai import OpenAITranslator
from services.router.upstream import Upstream
from shared.config import GatehouseConfig
from shared.errors import AuthenticationError, ContextLengthExceeded, RateLimitError, UpstreamAuthError
from shared.schemas.chat import Caller, ChatRequest, Reply, Result
from tests.emulators import openai as openai_emu
from tests.servers import serve_in_thread
from tests.unit.providers.roundtrip import canonical

ACME = Target(provider="acme", kind="openai", model="m", api_base="http://acme", api_key="sk-acme-secret-123")
GEMINI_BAD_KEY = json.dumps(
    {
        "error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}],
        }
    }
).encode()


@pytest.mark.parametrize(
    ("translator", "status", "body"),
    [
        (OpenAITranslator(), 401, b'{"error": {"message": "Incorrect API key provided: sk-ab***yz."}}'),
        (OpenAITranslator(), 403, b'{"error": {"message": "Project does not have access to model."}}'),
        (AnthropicTranslator(), 401, b'{"type":"error","error":{"type":"authentication_error","message":"bad"}}'),
        (CohereTranslator(), 498, b'{"message": "invalid api token"}'),
        (GeminiTranslator(), 400, GEMINI_BAD_KEY),
    ],
)
def test_provider_auth_failures_become_retryable_upstream_auth_errors(
    translator: Translator, status: int, body: bytes
) -> None:
    err = attempt_error(translator.parse_error(status, body, {}), ACME)
    assert isinstance(err, UpstreamAuthError)
    info = err.info()
    assert (info.status, info.type, info.code, info.retryable) == (502, "api_error", "upstream_auth_error", True)
    assert info.message == "The gateway's credentials for provider 'acme' were rejected."
    assert should_fail_over(err)
    assert attempt_message(err).startswith(("invalid_api_key: ", "permission_denied: "))


def test_other_provider_errors_pass_through_with_bounded_messages() -> None:
    limited = RateLimitError("slow down", retry_after=2)
    assert attempt_error(limited, ACME) is limited
    long = attempt_error(ContextLengthExceeded("z" * 50_000), ACME)
    assert isinstance(long, ContextLengthExceeded) and len(long.message) == 1000 and long.message.endswith("…")
    assert len(attempt_message(long)) == 300


def test_a_provider_echoing_the_key_never_gets_it_through() -> None:
    echoed = attempt_error(RateLimitError("key sk-acme-secret-123 is over quota", retry_after=2), ACME)
    assert echoed.message == "key [provider key] is over quota" and echoed.retry_after == 2
    assert isinstance(echoed, RateLimitError)
    rejected = attempt_error(AuthenticationError("bad key sk-acme-secret-123"), ACME)
    assert "sk-acme-secret-123" not in attempt_message(rejected) + rejected.message


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    with serve_in_thread(openai_emu.create_app()) as base:
        yield base


async def _serve(base: str, model: str) -> Result:
    config = GatehouseConfig.model_validate(
        {
            "providers": {
                "rejected": {"kind": "openai", "api_base": f"{base}/v1", "api_key_env": "BAD_KEY"},
                "good": {"kind": "openai", "api_base": f"{base}/v1", "api_key_env": "GOOD_KEY"},
            },
            "models": [
                {
                    "name": "failover",
                    "deployments": [
                        {"provider": "rejected", "model": "gpt-emu"},
                        {"provider": "good", "model": "gpt-emu"},
                    ],
                },
                {"name": "only-rejected", "deployments": [{"provider": "rejected", "model": "gpt-emu"}]},
            ],
        }
    )
    routes = build_routes(config, {"BAD_KEY": "sk-not-this-one", "GOOD_KEY": openai_emu.API_KEY})
    upstream = Upstream()
    replies: list[Reply] = []

    async def send(reply: Reply) -> None:
        replies.append(reply)

    body = canonical({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    try:
        await Dispatcher(routes, upstream, {"openai": OpenAITranslator()}).serve(
            ChatRequest(request_id="r", api="chat", model=model, chat=body, caller=Caller(key_id="k")), send
        )
    finally:
        await upstream.aclose()
    result = replies[-1]
    assert isinstance(result, Result)
    return result


async def test_a_rejected_key_fails_over_to_the_next_deployment(emulator: str) -> None:
    result = await _serve(emulator, "failover")
    assert result.error is None and json.loads(result.body)["object"] == "chat.completion"
    first, second = result.outcome.attempts
    assert (first.status, first.error_code) == (502, "upstream_auth_error")
    assert "Incorrect API key provided" in first.error_message  # the provider's words, for operators only
    assert (second.deployment, second.status, second.error_message) == ("good/gpt-emu", 200, "")


async def test_when_every_key_is_rejected_the_client_sees_a_502_not_its_own_401(emulator: str) -> None:
    result = await _serve(emulator, "only-rejected")
    assert result.error is not None
    assert (result.error.status, result.error.code) == (502, "upstream_auth_error")
    assert result.error.message == "The gateway's credentials for provider 'rejected' were rejected."
    assert "Incorrect API key" not in result.error.message
