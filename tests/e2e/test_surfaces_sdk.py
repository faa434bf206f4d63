"""The official anthropic SDK (/v1/messages) and the openai SDK's Responses API against the running stack,
with any backend model behind them."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest

from tests.e2e.conftest import API_KEY, RunningStack

pytestmark = pytest.mark.e2e

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def claude(running_stack: RunningStack) -> Iterator[anthropic.Anthropic]:
    base = running_stack.base_url.removesuffix("/v1")
    with anthropic.Anthropic(base_url=base, api_key=API_KEY, max_retries=0, timeout=20) as c:
        yield c


@pytest.fixture(scope="module")
def oai(running_stack: RunningStack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=running_stack.base_url, api_key=API_KEY, max_retries=0, timeout=20) as c:
        yield c


@pytest.mark.parametrize("model", ["mock-1", "gpt-emu"])
def test_anthropic_sdk_messages_non_stream(claude: anthropic.Anthropic, model: str) -> None:
    msg = claude.messages.create(
        model=model, max_tokens=64, system="Be brief.", messages=[{"role": "user", "content": "hello from claude"}]
    )
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.content[0].type == "text" and "hello from claude" in msg.content[0].text
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0


@pytest.mark.parametrize("model", ["mock-1", "gpt-emu"])
def test_anthropic_sdk_messages_stream(claude: anthropic.Anthropic, model: str) -> None:
    with claude.messages.stream(
        model=model, max_tokens=64, messages=[{"role": "user", "content": "stream to claude"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "stream to claude" in text
    assert final.content[0].text == text  # type: ignore[union-attr]
    assert final.usage.output_tokens > 0


def test_anthropic_sdk_tool_use_round_trip(claude: anthropic.Anthropic, running_stack: RunningStack) -> None:
    first = claude.messages.create(
        model="gpt-emu",
        max_tokens=64,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "What's the weather in Paris?"}],
    )
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.input == {"city": "Paris"}
    second = claude.messages.create(
        model="gpt-emu",
        max_tokens=64,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        messages=[
            {"role": "user", "content": "What's the weather in Paris?"},
            {"role": "assistant", "content": first.content},  # type: ignore[typeddict-item]
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18C, sunny"}]},
        ],
    )
    assert second.stop_reason == "end_turn"
    # the tool call and its result reached the upstream in OpenAI form
    sent = running_stack.emulators["openai"].state.requests[-1]["body"]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == use.id
    assert sent[2] == {"role": "tool", "tool_call_id": use.id, "content": "18C, sunny"}


def test_anthropic_sdk_errors_are_its_own_exception_classes(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.RateLimitError):
        claude.messages.create(model="emu-429", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="mock-1", max_tokens=8, messages=[])
    base = str(claude.base_url)
    with (
        anthropic.Anthropic(base_url=base, api_key="sk-wrong", max_retries=0) as bad,
        pytest.raises(anthropic.AuthenticationError),
    ):
        bad.messages.create(model="mock-1", max_tokens=8, messages=[{"role": "user", "content": "x"}])


@pytest.mark.parametrize("model", ["mock-1", "gpt-emu"])
def test_responses_api_text_stream_and_non_stream(oai: openai.OpenAI, model: str) -> None:
    resp = oai.responses.create(model=model, input="hello responses", instructions="Be brief.")
    assert resp.status == "completed" and "hello responses" in resp.output_text
    assert resp.usage is not None and resp.usage.output_tokens > 0
    with oai.responses.stream(model=model, input="stream responses") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text and "stream responses" in final.output_text


def test_responses_api_function_call(oai: openai.OpenAI) -> None:
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER_TOOL["input_schema"]}
    resp = oai.responses.create(model="gpt-emu", input="What's the weather in Paris?", tools=[tool])  # type: ignore[list-item]
    calls = [item for item in resp.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].arguments == '{"city": "Paris"}'
