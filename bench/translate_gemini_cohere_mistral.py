"""Translation cost of the Gemini, Mistral and Cohere translators: per request and per stream chunk, in µs.

    python bench/translate_gemini_cohere_mistral.py [--rounds 200]

Every figure is the median, over `rounds` batches of 100 calls, of the mean time per call (the OpenAI
pass-through is measured alongside as the floor). "chunk" is one upstream text-delta event through
`ChatStream.feed` plus the JSON encoding the router does before relaying it.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable

import msgspec

from services.router.providers.base import Target, Translator
from services.router.providers.cohere import CohereTranslator
from services.router.providers.gemini import GeminiTranslator
from services.router.providers.mistral import MistralTranslator
from services.router.providers.openai import OpenAITranslator
from services.router.sse import SseEvent
from shared.schemas.openai import decode_chat

BATCH = 100
ENC = msgspec.json.Encoder()
WORDS = " ".join(f"word{i}" for i in range(100))

BODY: dict[str, object] = {
    "model": "bench",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly and cite sources."},
        {"role": "user", "content": "What is the weather in Paris today, and should I take an umbrella?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc123",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc123", "content": '{"temp_c": 14, "rain_mm": 3.5, "wind_kmh": 20}'},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string", "description": "City name"},
                        "unit": {"type": ["string", "null"], "enum": ["c", "f"]},
                    },
                    "required": ["city"],
                    "additionalProperties": False,
                },
            },
        }
    ],
    "temperature": 0.3,
    "max_tokens": 300,
}
# decoded once, as ingress does: the timed loops measure translation only
REQUEST = decode_chat(json.dumps(BODY).encode())

RESPONSES = {
    "gemini": {
        "candidates": [{"content": {"role": "model", "parts": [{"text": WORDS}]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 120, "candidatesTokenCount": 100, "totalTokenCount": 220},
        "modelVersion": "gemini-2.5-flash",
    },
    "mistral": {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "mistral-small-latest",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": WORDS}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 100, "total_tokens": 220},
    },
    "cohere": {
        "id": "x",
        "finish_reason": "COMPLETE",
        "message": {"role": "assistant", "content": [{"type": "text", "text": WORDS}]},
        "usage": {
            "billed_units": {"input_tokens": 120, "output_tokens": 100},
            "tokens": {"input_tokens": 180, "output_tokens": 100},
        },
    },
    "openai": {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": WORDS}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 100, "total_tokens": 220},
    },
}

CHUNKS = {
    "gemini": SseEvent(
        "",
        json.dumps(
            {
                "candidates": [{"content": {"role": "model", "parts": [{"text": " the quick brown"}]}, "index": 0}],
                "usageMetadata": {"promptTokenCount": 120, "totalTokenCount": 120},
                "modelVersion": "gemini-2.5-flash",
            }
        ).encode(),
    ),
    "mistral": SseEvent(
        "",
        json.dumps(
            {
                "id": "x",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "mistral-small-latest",
                "choices": [{"index": 0, "delta": {"content": " the quick brown"}, "finish_reason": None}],
            }
        ).encode(),
    ),
    "cohere": SseEvent(
        "content-delta",
        json.dumps(
            {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": " the quick brown"}}}}
        ).encode(),
    ),
    "openai": SseEvent(
        "",
        json.dumps(
            {
                "id": "x",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "gpt",
                "choices": [{"index": 0, "delta": {"content": " the quick brown"}, "finish_reason": None}],
            }
        ).encode(),
    ),
}


def measure(fn: Callable[[], object], rounds: int) -> float:
    """Median over `rounds` batches of the mean µs per call."""
    for _ in range(BATCH * 5):  # warm up
        fn()
    samples = []
    gc.disable()
    try:
        for _ in range(rounds):
            start = time.perf_counter_ns()
            for _ in range(BATCH):
                fn()
            samples.append((time.perf_counter_ns() - start) / BATCH / 1000)
    finally:
        gc.enable()
    return statistics.median(samples)


def bench(name: str, translator: Translator, rounds: int) -> dict[str, float]:
    target = Target(provider=name, kind=name, model="bench-model", api_base="http://upstream", api_key="k")
    response = json.dumps(RESPONSES[name]).encode()
    event = CHUNKS[name]
    stream = translator.open_stream(target, "chatcmpl-bench", 1)
    stream.feed(event)  # the role chunk comes first; measure the steady state

    def feed_and_encode() -> None:
        for chunk in stream.feed(event):
            if not isinstance(chunk, bytes):
                ENC.encode(chunk)

    return {
        "request": measure(lambda: translator.chat_request(REQUEST, target, stream=False), rounds),
        "stream request": measure(lambda: translator.chat_request(REQUEST, target, stream=True), rounds),
        "response": measure(lambda: ENC.encode(translator.parse_chat(response, target, "chatcmpl-bench", 1)), rounds),
        "chunk": measure(feed_and_encode, rounds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    translators: list[tuple[str, Translator]] = [
        ("gemini", GeminiTranslator()),
        ("mistral", MistralTranslator()),
        ("cohere", CohereTranslator()),
        ("openai", OpenAITranslator()),
    ]
    columns = ["request", "stream request", "response", "chunk"]
    print(f"{'provider':<10}" + "".join(f"{c + ' µs':>18}" for c in columns))
    for name, translator in translators:
        row = bench(name, translator, args.rounds)
        print(f"{name:<10}" + "".join(f"{row[c]:>18.2f}" for c in columns))
    note = f"median of {args.rounds} batches x {BATCH} calls; python {sys.version.split()[0]}"
    print(f"({note}; openai = the pass-through floor)")


if __name__ == "__main__":
    main()
