"""Every backend provider behind one endpoint: the official openai and anthropic SDKs against the running
stack, each backend served by an emulator that speaks (and validates) that provider's own wire format."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from tests.e2e.conftest import TOOLS

pytestmark = pytest.mark.e2e

# backend → (chat model, model answering 429, the emulator's name in its replies)
BACKENDS = {
    "openai": ("gpt-emu", "emu-429", "OpenAI"),
    "gemini": ("gemini-chat", "gemini-429", "Gemini"),
    "mistral": ("mistral-chat", "mistral-429", "Mistral"),
    "cohere": ("cohere-chat", "cohere-429", "Cohere"),
    "anthropic": ("anthropic-chat", "anthropic-429", "Claude"),
    "azure": ("azure-chat", "azure-429", "Azure"),
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_plain_and_streamed_chat_agree_and_report_usage(oai: openai.OpenAI, backend: str) -> None:
    model, _, name = BACKENDS[backend]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello every backend"}]
    completion = oai.chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]
    text = completion.choices[0].message.content
    assert text == f"Emulated {name} reply to: hello every backend"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    chunks = list(
        oai.chat.completions.create(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_streamed_tool_call_round_trip(oai: openai.OpenAI, backend: str) -> None:
    model, _, _ = BACKENDS[backend]
    messages: list[dict[str, object]] = [{"role": "user", "content": "What's the weather in Paris?"}]
    with oai.chat.completions.stream(model=model, messages=messages, tools=TOOLS) as s:  # type: ignore[arg-type]
        first = s.get_final_completion()
    calls = first.choices[0].message.tool_calls
    assert first.choices[0].finish_reason == "tool_calls"
    assert calls is not None and len(calls) == 1
    assert calls[0].function.name == "get_weather" and json.loads(calls[0].function.arguments) == {"city": "Paris"}
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": calls[0].id, "content": "18C and sunny"})
    second = oai.chat.completions.create(model=model, messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    answer = second.choices[0].message.content or ""
    assert second.choices[0].finish_reason == "stop"
    assert "18C and sunny" in answer  # the emulators answer from the tool result they were sent


@pytest.mark.parametrize("backend", BACKENDS)
def test_parallel_tool_calls(oai: openai.OpenAI, backend: str) -> None:
    model, _, _ = BACKENDS[backend]
    completion = oai.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What's the weather in both cities?"}],
        tools=TOOLS,  # type: ignore[arg-type]
    )
    calls = completion.choices[0].message.tool_calls or []
    assert len(calls) == 2 and len({c.id for c in calls}) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_provider_rate_limit_is_the_sdks_rate_limit_error(oai: openai.OpenAI, backend: str) -> None:
    _, limited, _ = BACKENDS[backend]
    with pytest.raises(openai.RateLimitError) as exc:
        oai.chat.completions.create(model=limited, messages=[{"role": "user", "content": "x"}])
    # the provider said 7 s; an earlier test's 429 may have cooled the deployment down already, and then the
    # gateway answers itself with what is left of those 7 s
    assert 1 <= int(exc.value.response.headers["retry-after"]) <= 7


@pytest.mark.parametrize("backend", BACKENDS)
def test_anthropic_sdk_against_every_backend(claude: anthropic.Anthropic, backend: str) -> None:
    model, limited, name = BACKENDS[backend]
    msg = claude.messages.create(model=model, max_tokens=64, messages=[{"role": "user", "content": "hi claude"}])
    assert msg.content[0].text == f"Emulated {name} reply to: hi claude"  # type: ignore[union-attr]
    assert msg.stop_reason == "end_turn" and msg.usage.output_tokens > 0
    with claude.messages.stream(
        model=model, max_tokens=64, messages=[{"role": "user", "content": "stream claude"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == f"Emulated {name} reply to: stream claude" and final.usage.output_tokens > 0
    with pytest.raises(anthropic.RateLimitError):
        claude.messages.create(model=limited, max_tokens=8, messages=[{"role": "user", "content": "x"}])
