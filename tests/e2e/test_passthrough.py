"""Same-protocol traffic is lossless: the official SDKs send the same requests through gatehouse and straight to
the provider emulator; the upstream bodies and protocol headers must be equal field by field, and so must the
answers the client gets (except the ids the emulator derives from the raw request bytes). The guard still
scans such requests, a redacting policy sends them the canonical way, and the record prices cache use."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.conftest import API_KEY, PII_KEY, RunningStack
from tests.emulators import anthropic as anthropic_emu
from tests.emulators import openai as openai_emu

pytestmark = pytest.mark.e2e

CLAUDE = "claude-sonnet-4-5"  # the deployment's model id behind `claude-native`
SECRET = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"  # a GitHub token shape (fake)
BETAS = "prompt-caching-2024-07-31,interleaved-thinking-2025-05-14"
CACHE = {"type": "ephemeral"}
REQUEST: dict[str, Any] = {
    "max_tokens": 2048,
    "system": [
        {"type": "text", "text": "You answer questions about the attached handbook.", "cache_control": CACHE},
        {"type": "text", "text": "Be brief."},
    ],
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "tools": [
        {
            "name": "lookup",
            "description": "Look a term up in the handbook",
            "input_schema": {"type": "object", "properties": {"term": {"type": "string"}}},
            "cache_control": CACHE,
        }
    ],
    "messages": [
        {
            "role": "user",
            "content": [
                {
                    "type": "document",
                    "source": {"type": "text", "media_type": "text/plain", "data": "Gatehouse routes every request."},
                    "title": "Handbook",
                    "context": "Internal documentation",
                    "citations": {"enabled": True},
                    "cache_control": CACHE,
                },
                {"type": "text", "text": "What does gatehouse do?", "cache_control": CACHE},
            ],
        }
    ],
}


@pytest.fixture(scope="module")
def claude(running_stack: RunningStack) -> Iterator[anthropic.Anthropic]:
    base = running_stack.base_url.removesuffix("/v1")
    with anthropic.Anthropic(base_url=base, api_key=API_KEY, max_retries=0, timeout=20) as c:
        yield c


@pytest.fixture(scope="module")
def claude_direct(running_stack: RunningStack) -> Iterator[anthropic.Anthropic]:
    url = running_stack.emulator_urls["anthropic"]
    with anthropic.Anthropic(base_url=url, api_key=anthropic_emu.API_KEY, max_retries=0, timeout=20) as c:
        yield c


def _sent(stack: RunningStack, name: str, back: int = 1) -> dict[str, Any]:
    return stack.emulators[name].state.requests[-back]  # type: ignore[no-any-return]


def _without_ids(value: Any) -> Any:
    """Message ids hash the raw request bytes (gatehouse frames the body anew); everything else must match."""
    if isinstance(value, dict):
        return {
            k: "<id>" if k == "id" and str(v).startswith(("msg_", "resp_")) else _without_ids(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_without_ids(v) for v in value]
    return value


def _same_upstream(stack: RunningStack, name: str, headers: tuple[str, ...]) -> dict[str, Any]:
    """The last two requests the emulator got (through gatehouse, then direct) are equal; the first is returned."""
    via, direct = _sent(stack, name, 2), _sent(stack, name, 1)
    assert via["path"] == direct["path"]
    assert via["body"] == direct["body"]  # field by field (the model id is the deployment's on both)
    for header in headers:
        assert via["headers"].get(header) == direct["headers"].get(header), header
    return via


def test_anthropic_sdk_request_and_answer_are_unchanged(
    running_stack: RunningStack, claude: anthropic.Anthropic, claude_direct: anthropic.Anthropic
) -> None:
    raw = claude.messages.with_raw_response.create(
        model="claude-native", **REQUEST, extra_headers={"anthropic-beta": BETAS}
    )
    via = raw.parse()
    direct = claude_direct.messages.create(model=CLAUDE, **REQUEST, extra_headers={"anthropic-beta": BETAS})
    sent = _same_upstream(running_stack, "anthropic", ("anthropic-beta", "anthropic-version"))
    assert sent["headers"]["anthropic-beta"] == BETAS
    assert sent["body"]["system"][0]["cache_control"] == CACHE and sent["body"]["tools"][0]["cache_control"] == CACHE
    assert sent["body"]["messages"][0]["content"][0]["citations"] == {"enabled": True}
    assert _without_ids(via.model_dump()) == _without_ids(direct.model_dump())
    assert [b.type for b in via.content] == ["thinking", "text"]
    assert via.content[1].citations  # type: ignore[union-attr]
    assert via.usage.cache_read_input_tokens and via.usage.cache_creation_input_tokens

    # the record: cache reads and writes inside the input, each priced at its own rate
    rid = raw.headers["x-request-id"]
    u = via.usage
    row = running_stack.wait_rows(
        "SELECT input_tokens, cached_tokens, cache_write_tokens, output_tokens, cost_usd, provider, finish_reason "
        f"FROM requests WHERE request_id = '{rid}'",
        1,
    ).rows[0]
    assert row[:4] == [
        u.input_tokens + (u.cache_read_input_tokens or 0) + (u.cache_creation_input_tokens or 0),
        u.cache_read_input_tokens,
        u.cache_creation_input_tokens,
        u.output_tokens,
    ]
    # claude-sonnet-4-5: $3 / MTok in, $3.75 cache write, $0.30 cache read, $15 out
    expected = (
        u.input_tokens * 3e-6
        + (u.cache_creation_input_tokens or 0) * 3.75e-6
        + (u.cache_read_input_tokens or 0) * 0.3e-6
        + u.output_tokens * 15e-6
    )
    assert row[4] == pytest.approx(expected) and row[5:] == ["emu-anthropic", "stop"]


def test_anthropic_sdk_stream_is_relayed_unchanged(
    running_stack: RunningStack, claude: anthropic.Anthropic, claude_direct: anthropic.Anthropic
) -> None:
    with claude.messages.stream(model="claude-native", **REQUEST, extra_headers={"anthropic-beta": BETAS}) as s:
        via_events = [e.model_dump() for e in s]
        via = s.get_final_message()
    with claude_direct.messages.stream(model=CLAUDE, **REQUEST, extra_headers={"anthropic-beta": BETAS}) as s:
        direct_events = [e.model_dump() for e in s]
        direct = s.get_final_message()
    _same_upstream(running_stack, "anthropic", ("anthropic-beta", "anthropic-version"))
    assert _without_ids(via_events) == _without_ids(direct_events)
    assert _without_ids(via.model_dump()) == _without_ids(direct.model_dump())
    assert {e["type"] for e in via_events} >= {"message_start", "content_block_delta", "citation", "message_stop"}


def test_beta_only_features_reach_anthropic(
    running_stack: RunningStack, claude: anthropic.Anthropic, claude_direct: anthropic.Anthropic
) -> None:
    request: dict[str, Any] = {
        "max_tokens": 256,
        "betas": ["mcp-client-2025-04-04"],
        "mcp_servers": [{"type": "url", "url": "https://mcp.example.com/sse", "name": "tickets"}],
        "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "search_result",
                        "source": "https://kb.example.com/1",
                        "title": "KB",
                        "content": [{"type": "text", "text": "Gatehouse is a gateway."}],
                    },
                    {"type": "text", "text": "Please search the web for gatehouse."},
                ],
            }
        ],
    }
    via = claude.beta.messages.create(model="claude-native", **request)
    direct = claude_direct.beta.messages.create(model=CLAUDE, **request)
    sent = _same_upstream(running_stack, "anthropic", ("anthropic-beta", "anthropic-version"))
    assert sent["headers"]["anthropic-beta"] == "mcp-client-2025-04-04" and sent["body"]["mcp_servers"]
    assert _without_ids(via.model_dump()) == _without_ids(direct.model_dump())
    assert [b.type for b in via.content] == ["server_tool_use", "web_search_tool_result", "text"]
    # no other provider can serve this request: the OpenAI-backed model says so instead of dropping the tools
    with pytest.raises(anthropic.BadRequestError) as exc:
        claude.beta.messages.create(model="gpt-emu", **request)
    assert "only a deployment speaking Anthropic Messages" in exc.value.message


def test_responses_api_request_and_answer_are_unchanged(running_stack: RunningStack) -> None:
    request: dict[str, Any] = {
        "instructions": "Be brief.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hello native responses"}]}],
        "reasoning": {"effort": "low", "summary": "auto"},
        "store": False,
        "prompt_cache_key": "tenant-1",
        "metadata": {"team": "qa"},
        "max_output_tokens": 200,
        "extra_headers": {"OpenAI-Beta": "responses=v1"},
    }
    direct_url = f"{running_stack.emulator_urls['openai']}/v1"
    with (
        openai.OpenAI(base_url=running_stack.base_url, api_key=API_KEY, max_retries=0, timeout=20) as oai,
        openai.OpenAI(base_url=direct_url, api_key=openai_emu.API_KEY, max_retries=0, timeout=20) as direct_client,
    ):
        via = oai.responses.create(model="gpt-native", **request)
        direct = direct_client.responses.create(model="gpt-emu", **request)
        _same_upstream(running_stack, "openai", ("openai-beta",))
        assert via.model_dump() == direct.model_dump()  # the ids hash the body, which is the same
        assert via.usage is not None and via.usage.input_tokens_details.cached_tokens > 0
        # (the stream helper's parsed snapshots warn when dumped: the SDK's own typing quirk)
        with oai.responses.stream(model="gpt-native", **request) as s:
            via_events = [e.model_dump(warnings=False) for e in s]
        with direct_client.responses.stream(model="gpt-emu", **request) as s:
            direct_events = [e.model_dump(warnings=False) for e in s]
        _same_upstream(running_stack, "openai", ("openai-beta",))
        assert via_events == direct_events and via_events[-1]["type"] == "response.completed"


def test_the_guard_still_scans_what_only_the_native_body_carries(
    running_stack: RunningStack, claude: anthropic.Anthropic
) -> None:
    before = len(running_stack.emulators["anthropic"].state.requests)
    with pytest.raises(anthropic.BadRequestError) as exc:
        claude.messages.create(
            model="claude-native",
            max_tokens=64,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "search_result",
                            "source": "https://kb.example.com/2",
                            "title": "Deploy notes",
                            "content": [{"type": "text", "text": f"deploy with token {SECRET}"}],
                        },
                        {"type": "text", "text": "summarise"},
                    ],
                }
            ],
        )
    assert "guardrail policy" in exc.value.message and SECRET not in exc.value.message
    assert len(running_stack.emulators["anthropic"].state.requests) == before


def test_a_redacting_policy_sends_the_request_the_canonical_way(running_stack: RunningStack) -> None:
    email = "jane.roe@example.com"
    base = running_stack.base_url.removesuffix("/v1")
    with anthropic.Anthropic(base_url=base, api_key=PII_KEY, max_retries=0, timeout=20) as pii:
        msg = pii.messages.create(
            model="claude-native",
            max_tokens=64,
            system=[{"type": "text", "text": "Be brief.", "cache_control": CACHE}],
            messages=[{"role": "user", "content": f"write to {email} today"}],
            extra_headers={"anthropic-beta": BETAS},
        )
    sent = _sent(running_stack, "anthropic")
    # the provider got the redacted canonical translation: no address, and what only the client's own body
    # could carry is gone (cache_control, the beta header)
    assert email not in str(sent["body"]) and "<EMAIL_1>" in str(sent["body"])
    assert "cache_control" not in str(sent["body"]) and "anthropic-beta" not in sent["headers"]
    assert msg.content[0].text == f"Emulated Claude reply to: write to {email} today"  # type: ignore[union-attr]


def test_failover_to_another_protocol_answers_in_the_clients_protocol(claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(
        model="claude-or-gpt", max_tokens=64, messages=[{"role": "user", "content": "hello failover"}]
    )
    assert msg.type == "message" and msg.content[0].text == "Emulated OpenAI reply to: hello failover"  # type: ignore[union-attr]
