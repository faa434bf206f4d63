"""Translation cost of the Anthropic and Azure translators: µs per request and per stream chunk (median).

Run: python bench/translate_anthropic_azure.py [--repeat 31] [--inner 2000]

Each figure is the median over `repeat` batches of `inner` calls (cases interleaved), per call; the OpenAI
pass-through is measured the same way as the floor. Pure CPU, no I/O: what a translator adds to a
request on top of the network.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from services.router.providers.anthropic import AnthropicTranslator
from services.router.providers.azure import AzureTranslator
from services.router.providers.base import Target
from services.router.providers.openai import OpenAITranslator
from services.router.sse import SseEvent
from shared.schemas.openai import decode_chat

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TEXT = "The quick brown fox jumps over the lazy dog. " * 8
BODY: dict[str, object] = {
    "model": "chat",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {"role": "user", "content": TEXT},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
        {"role": "user", "content": "And tomorrow?"},
    ],
    "tools": [WEATHER],
    "temperature": 0.3,
    "max_tokens": 512,
}
# decoded once, as ingress does: the timed loops measure translation only
REQUEST = decode_chat(json.dumps(BODY).encode())
ANTHROPIC = Target("anthropic", "anthropic", "claude-sonnet-4-5", "https://api.anthropic.com", api_key="k")
AZURE = Target("azure", "azure", "gpt-4o", "https://res.openai.azure.com", api_key="k")
OPENAI = Target("openai", "openai", "gpt-4o", "https://api.openai.com/v1", api_key="k")

ANTHROPIC_MESSAGE = json.dumps(
    {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [
            {"type": "text", "text": TEXT},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 120, "output_tokens": 80, "cache_read_input_tokens": 0},
    }
).encode()
OPENAI_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 80, "total_tokens": 200},
    }
).encode()
TEXT_DELTA = SseEvent(
    "content_block_delta",
    b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" jumps over"}}',
)
JSON_DELTA = SseEvent(
    "content_block_delta",
    b'{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"city\\": \\"Pa"}}',
)
CHUNK = SseEvent(
    "",
    b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,'
    b'"delta":{"content":" jumps over"},"finish_reason":null,"content_filter_results":{"hate":{"filtered":false,'
    b'"severity":"safe"}}}]}',
)
FILTER_CHUNK = SseEvent(
    "",
    b'{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,'
    b'"content_filter_results":{}}]}',
)


def medians_us(cases: list[tuple[str, Callable[[], object]]], repeat: int, inner: int) -> list[float]:
    """Batches of all cases interleaved, so a noisy neighbour on a shared machine hits every case alike."""
    samples: list[list[float]] = [[] for _ in cases]
    for _ in range(repeat):
        for k, (_, fn) in enumerate(cases):
            t0 = time.perf_counter_ns()
            for _ in range(inner):
                fn()
            samples[k].append((time.perf_counter_ns() - t0) / inner / 1000)
    return [statistics.median(s) for s in samples]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=31)
    ap.add_argument("--inner", type=int, default=2000)
    args = ap.parse_args()
    a, z, o = AnthropicTranslator(), AzureTranslator(), OpenAITranslator()

    a_stream = a.open_stream(ANTHROPIC, "chatcmpl-x", 1)
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 5, "output_tokens": 1}}}
    a_stream.feed(SseEvent("message_start", json.dumps(start).encode()))
    tool = {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t", "name": "f"}}
    a_stream.feed(SseEvent("content_block_start", json.dumps(tool).encode()))
    z_stream = z.open_stream(AZURE, "chatcmpl-x", 1)
    o_stream = o.open_stream(OPENAI, "chatcmpl-x", 1)

    cases: list[tuple[str, Callable[[], object]]] = [
        ("openai   request (floor)", lambda: o.chat_request(REQUEST, OPENAI, stream=True)),
        ("anthropic request", lambda: a.chat_request(REQUEST, ANTHROPIC, stream=True)),
        ("azure    request", lambda: z.chat_request(REQUEST, AZURE, stream=True)),
        ("openai   response (floor)", lambda: o.parse_chat(OPENAI_COMPLETION, OPENAI, "chatcmpl-x", 1)),
        ("anthropic response", lambda: a.parse_chat(ANTHROPIC_MESSAGE, ANTHROPIC, "chatcmpl-x", 1)),
        ("azure    response", lambda: z.parse_chat(OPENAI_COMPLETION, AZURE, "chatcmpl-x", 1)),
        ("openai   chunk (floor)", lambda: o_stream.feed(CHUNK)),
        ("anthropic chunk text_delta", lambda: a_stream.feed(TEXT_DELTA)),
        ("anthropic chunk input_json_delta", lambda: a_stream.feed(JSON_DELTA)),
        ("azure    chunk content", lambda: z_stream.feed(CHUNK)),
        ("azure    chunk prompt-filter (dropped)", lambda: z_stream.feed(FILTER_CHUNK)),
    ]
    print(f"median of {args.repeat} batches of {args.inner} calls, µs per call")
    for (name, _), us in zip(cases, medians_us(cases, args.repeat, args.inner), strict=True):
        print(f"  {name:<40} {us:8.2f}")


if __name__ == "__main__":
    main()
