"""Amazon Bedrock behind gatehouse, through the official openai and anthropic SDKs: plain, streamed and tool
calls, signed with SigV4 from the router's AWS environment and streamed in the AWS event stream framing
(the emulator recomputes each signature and sends real binary frames)."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from tests.e2e.conftest import BEDROCK_MODEL, TOOLS, RunningStack

pytestmark = pytest.mark.e2e


def test_openai_sdk_plain_and_streamed(oai: openai.OpenAI, running_stack: RunningStack) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello bedrock"}]
    raw = oai.chat.completions.with_raw_response.create(model="bedrock-chat", messages=messages)  # type: ignore[arg-type]
    completion = raw.parse()
    assert completion.choices[0].message.content == "Emulated Bedrock reply to: hello bedrock"
    assert completion.model == BEDROCK_MODEL and completion.usage is not None and completion.usage.prompt_tokens > 0
    assert raw.headers["x-gatehouse-deployment"] == f"emu-bedrock/{BEDROCK_MODEL}"
    seen = running_stack.emulators["bedrock"].state.requests[-1]
    assert seen["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIAGATEHOUSEEMU0001/")
    chunks = list(
        oai.chat.completions.create(
            model="bedrock-chat",
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == "Emulated Bedrock reply to: hello bedrock"
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert running_stack.emulators["bedrock"].state.requests[-1]["path"].endswith("/converse-stream")
    rid = raw.headers["x-request-id"]
    row = running_stack.wait_rows(
        f"SELECT provider_kind, input_tokens, attempts.status FROM requests WHERE request_id = '{rid}'", 1
    ).rows[0]
    assert row[0] == "bedrock" and row[1] > 0 and row[2] == [200]


def test_openai_sdk_streamed_tool_call_round_trip(oai: openai.OpenAI) -> None:
    messages: list[dict[str, object]] = [{"role": "user", "content": "What's the weather in Paris?"}]
    with oai.chat.completions.stream(model="bedrock-chat", messages=messages, tools=TOOLS) as s:  # type: ignore[arg-type]
        first = s.get_final_completion()
    calls = first.choices[0].message.tool_calls
    assert first.choices[0].finish_reason == "tool_calls" and calls is not None and len(calls) == 1
    assert calls[0].function.name == "get_weather" and json.loads(calls[0].function.arguments) == {"city": "Paris"}
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": calls[0].id, "content": "18C and sunny"})
    second = oai.chat.completions.create(model="bedrock-chat", messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    assert second.choices[0].finish_reason == "stop" and "18C and sunny" in (second.choices[0].message.content or "")


def test_anthropic_sdk_plain_streamed_and_tools(claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(
        model="bedrock-chat", max_tokens=64, messages=[{"role": "user", "content": "hi claude"}]
    )
    assert msg.content[0].text == "Emulated Bedrock reply to: hi claude"  # type: ignore[union-attr]
    assert msg.stop_reason == "end_turn" and msg.usage.output_tokens > 0
    with claude.messages.stream(
        model="bedrock-chat", max_tokens=64, messages=[{"role": "user", "content": "stream claude"}]
    ) as stream:
        text = "".join(stream.text_stream)
    assert text == "Emulated Bedrock reply to: stream claude"
    tool = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    asked = [{"role": "user", "content": "weather in both cities?"}]
    used = claude.messages.create(model="bedrock-chat", max_tokens=64, messages=asked, tools=[tool])  # type: ignore[list-item]
    uses = [b for b in used.content if b.type == "tool_use"]
    assert used.stop_reason == "tool_use" and [u.input for u in uses] == [{"city": "Paris"}, {"city": "Tokyo"}]
    results = [{"type": "tool_result", "tool_use_id": u.id, "content": f"sunny in {u.input['city']}"} for u in uses]  # type: ignore[index]
    answer = claude.messages.create(
        model="bedrock-chat",
        max_tokens=64,
        tools=[tool],  # type: ignore[list-item]
        messages=[*asked, {"role": "assistant", "content": used.content}, {"role": "user", "content": results}],  # type: ignore[list-item]
    )
    assert "sunny in Paris" in answer.content[0].text and "sunny in Tokyo" in answer.content[0].text  # type: ignore[union-attr]


def test_bedrock_throttling_is_a_rate_limit_error(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(model="bedrock-429", messages=[{"role": "user", "content": "x"}])
