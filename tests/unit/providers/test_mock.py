"""The built-in mock provider, reached as the router reaches it: the mock translator's request into the
in-process transport, the answer read raw or through the SSE parser and the OpenAI stream reader."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest

from services.router.providers.base import Target
from services.router.providers.mock import MockTransport
from services.router.providers.openai import MockTranslator
from services.router.sse import SseParser
from shared.schemas.openai import decode_chat

T = MockTranslator()
TARGET = Target(provider="mock", kind="mock", model="mock-1", api_base="mock://mock")
PROMPT = "count the choices please"


async def _send(body: dict[str, Any], *, stream: bool) -> httpx.Response:
    upstream = T.chat_request(decode_chat(msgspec.json.encode(body)), TARGET, stream=stream)
    request = httpx.Request(upstream.method, upstream.url, headers=upstream.headers, content=upstream.body)
    response = await MockTransport().handle_async_request(request)
    await response.aread()
    return response


def _chat(n: int | None = None, **extra: object) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "mock-1", "messages": [{"role": "user", "content": PROMPT}], **extra}
    if n is not None:
        body["n"] = n
    return body


async def _non_stream(body: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = msgspec.json.decode((await _send(body, stream=False)).content)
    return answer


async def _stream(body: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    """The chunks as the client gets them, and the usage the router's stream reader recorded."""
    response = await _send({**body, "stream": True}, stream=True)
    reader = T.open_stream(TARGET, "chatcmpl-test", 0)
    out: list[dict[str, Any]] = []
    for event in SseParser().feed(response.content):
        out.extend(msgspec.json.decode(data) for data in reader.feed(event) if isinstance(data, bytes))
    assert reader.done()
    return out, reader.usage


async def test_one_choice_when_n_is_absent() -> None:
    answer = await _non_stream(_chat())
    assert [c["index"] for c in answer["choices"]] == [0]
    text = answer["choices"][0]["message"]["content"]
    assert text.endswith(PROMPT)
    assert answer["usage"]["completion_tokens"] == len(text.split())


@pytest.mark.parametrize("n", [1, 3, 128])
async def test_non_stream_answers_n_choices_and_counts_all_of_them(n: int) -> None:
    answer = await _non_stream(_chat(n))
    choices = answer["choices"]
    assert [c["index"] for c in choices] == list(range(n))
    assert all(c["message"]["content"].endswith(PROMPT) for c in choices)
    assert all(c["finish_reason"] == "stop" for c in choices)
    usage = answer["usage"]
    assert usage["completion_tokens"] == sum(len(c["message"]["content"].split()) for c in choices)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_stream_carries_each_choices_index_and_reassembles_per_choice() -> None:
    expected = (await _non_stream(_chat(3)))["choices"]
    chunks, usage = await _stream(_chat(3, stream_options={"include_usage": True}))
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + (choice["delta"].get("content") or "")
            if choice["finish_reason"]:
                finishes[choice["index"]] = choice["finish_reason"]
    assert texts == {c["index"]: c["message"]["content"] for c in expected}
    assert finishes == {0: "stop", 1: "stop", 2: "stop"}
    # the choices interleave, as OpenAI's do: a client that ignores the index gets them mixed up
    content_indices = [c["choices"][0]["index"] for c in chunks if c["choices"] and c["choices"][0]["delta"]]
    assert content_indices[:6] == [0, 1, 2, 0, 1, 2]
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] == sum(len(t.split()) for t in texts.values())
    assert usage is not None and usage.output_tokens == last["usage"]["completion_tokens"]


async def test_stream_length_finish_applies_to_every_choice() -> None:
    chunks, usage = await _stream(_chat(2, max_tokens=3))
    finishes = {c["choices"][0]["index"]: c["choices"][0]["finish_reason"] for c in chunks if c["choices"]}
    assert finishes == {0: "length", 1: "length"}
    assert usage is not None and usage.output_tokens == 2 * 3
