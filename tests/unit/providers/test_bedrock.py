"""The Bedrock Converse translator and the AWS event stream parser (pure)."""

from __future__ import annotations

import json
import struct
import zlib

import msgspec
import pytest

from services.router.providers.base import Target
from services.router.providers.bedrock import BedrockTranslator, build_request
from services.router.providers.eventstream import EventStreamParser, headers_of
from services.router.sse import SseEvent
from shared.errors import (
    ContextLengthExceeded,
    InvalidRequestError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
)
from tests.unit.providers.roundtrip import canonical

MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
TARGET = Target(provider="aws", kind="bedrock", model=MODEL, api_base="https://bedrock-runtime.us-east-1.amazonaws.com")
T = BedrockTranslator()


def message(headers: bytes, payload: bytes) -> bytes:
    """A message built by hand from the framing's definition (independently of the emulator's encoder)."""
    total = 12 + len(headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + headers + payload
    return body + struct.pack(">I", zlib.crc32(body))


def string_header(name: str, value: str) -> bytes:
    return bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(value)) + value.encode()


def test_event_stream_messages_split_anywhere_are_reassembled() -> None:
    first = message(string_header(":event-type", "messageStart") + string_header(":message-type", "event"), b'{"a":1}')
    second = message(
        string_header(":message-type", "exception") + string_header(":exception-type", "throttlingException"),
        b'{"message":"slow"}',
    )
    stream = first + second
    for cut in range(1, len(stream)):
        parser = EventStreamParser()
        events = parser.feed(stream[:cut]) + parser.feed(stream[cut:])
        assert events == [
            SseEvent("messageStart", b'{"a":1}'),
            SseEvent("exception:throttlingException", b'{"message":"slow"}'),
        ]
        assert parser.close() == []


def test_event_stream_typed_headers_and_corruption() -> None:
    typed = (
        bytes([1]) + b"t" + b"\x00" + bytes([1]) + b"f" + b"\x01" + bytes([1]) + b"i" + b"\x04" + struct.pack(">i", -5)
        + bytes([1]) + b"b" + b"\x06" + struct.pack(">H", 2) + b"\x00\xff"
    )  # fmt: skip
    assert headers_of(typed) == {"t": True, "f": False, "i": -5, "b": b"\x00\xff"}
    good = message(string_header(":event-type", "metadata"), b"{}")
    bad_payload = bytearray(good)
    bad_payload[-6] ^= 0xFF
    with pytest.raises(UpstreamError, match="message checksum"):
        EventStreamParser().feed(bytes(bad_payload))
    bad_prelude = bytearray(good)
    bad_prelude[2] ^= 0x01
    with pytest.raises(UpstreamError, match="prelude checksum"):
        EventStreamParser().feed(bytes(bad_prelude))
    parser = EventStreamParser()
    parser.feed(good[:-3])
    with pytest.raises(UpstreamError, match="inside a message"):
        parser.close()


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}


def test_converse_request_shape() -> None:
    req = canonical(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "weather?"}, IMAGE]},
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "user", "content": "thanks"},
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
            "max_tokens": 100,
            "temperature": 0.2,
            "stop": "END",
        }
    )  # fmt: skip
    body = build_request(req)
    assert body["system"] == [{"text": "Be brief."}]
    msgs = body["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]  # the tool result and "thanks" merged
    assert msgs[0]["content"][1] == {"image": {"format": "png", "source": {"bytes": "iVBO"}}}
    assert msgs[1]["content"] == [
        {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}}
    ]
    assert msgs[2]["content"][0]["toolResult"]["toolUseId"] == "call_1" and msgs[2]["content"][1] == {"text": "thanks"}
    assert body["inferenceConfig"] == {"maxTokens": 100, "temperature": 0.2, "stopSequences": ["END"]}
    assert body["toolConfig"]["toolChoice"] == {"any": {}}
    assert body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"] == {"json": {"type": "object"}}
    ureq = T.chat_request(req, TARGET, stream=True)
    assert ureq.url.endswith("/model/anthropic.claude-3-5-sonnet-20240620-v1:0/converse-stream")
    assert ureq.sign == "aws" and "authorization" not in ureq.headers
    keyed = T.chat_request(req, _keyed(), stream=False)
    assert keyed.headers["authorization"] == "Bearer bk" and not keyed.sign
    with pytest.raises(InvalidRequestError, match="inline"):
        build_request(canonical({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}))  # fmt: skip


def _keyed() -> Target:
    return Target(provider="aws", kind="bedrock", model=MODEL, api_base=TARGET.api_base, api_key="bk")


def test_converse_answer_and_stream_become_openai_shapes() -> None:
    answer = {
        "output": {"message": {"role": "assistant", "content": [
            {"text": "Hi"}, {"toolUse": {"toolUseId": "t1", "name": "f", "input": {"x": 1}}}]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 10, "outputTokens": 4, "cacheReadInputTokens": 5, "totalTokens": 19},
    }  # fmt: skip
    done = T.parse_chat(json.dumps(answer).encode(), TARGET, "chatcmpl-1", 1)
    done = done if isinstance(done, dict) else msgspec.json.decode(done)
    choice = done["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Hi"
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {"x": 1}
    assert done["usage"]["prompt_tokens"] == 15 and done["usage"]["prompt_tokens_details"]["cached_tokens"] == 5
    stream = T.open_stream(TARGET, "chatcmpl-1", 1)
    events = [
        SseEvent("messageStart", b'{"role":"assistant","p":"ab"}'),
        SseEvent("contentBlockDelta", b'{"delta":{"text":"Hel"},"contentBlockIndex":0}'),
        SseEvent("contentBlockStart", b'{"start":{"toolUse":{"toolUseId":"t1","name":"f"}},"contentBlockIndex":1}'),
        SseEvent("contentBlockDelta", b'{"delta":{"toolUse":{"input":"{\\"x\\""}},"contentBlockIndex":1}'),
        SseEvent("contentBlockStop", b'{"contentBlockIndex":1}'),
        SseEvent("messageStop", b'{"stopReason":"tool_use"}'),
        SseEvent("metadata", b'{"usage":{"inputTokens":3,"outputTokens":2,"totalTokens":5}}'),
    ]
    chunks = [c for e in events for c in stream.feed(e)]
    deltas = [c["choices"][0]["delta"] for c in chunks if isinstance(c, dict) and c["choices"]]
    assert deltas[1] == {"content": "Hel"}
    assert deltas[2]["tool_calls"][0]["id"] == "t1" and deltas[3]["tool_calls"][0]["function"]["arguments"] == '{"x"'
    assert stream.finish_reason == "tool_calls" and stream.done()
    assert stream.usage is not None and (stream.usage.input_tokens, stream.usage.output_tokens) == (3, 2)
    with pytest.raises(RateLimitError):
        T.open_stream(TARGET, "c", 1).feed(SseEvent("exception:throttlingException", b'{"message":"slow"}'))


def test_bedrock_errors_map_to_the_taxonomy() -> None:
    def err(status: int, kind: str, message: str) -> object:
        return T.parse_error(
            status, json.dumps({"message": message}).encode(), {"x-amzn-errortype": f"{kind}:http://x"}
        )

    assert isinstance(err(429, "ThrottlingException", "slow"), RateLimitError)
    assert isinstance(err(400, "ValidationException", "Input is too long for requested model."), ContextLengthExceeded)
    assert isinstance(err(403, "InvalidSignatureException", "no"), PermissionDeniedError)
    assert type(err(400, "ValidationException", "bad")) is InvalidRequestError
    assert isinstance(err(503, "ServiceUnavailableException", "later"), ServiceUnavailableError)
    assert isinstance(err(424, "ModelErrorException", "model failed"), UpstreamError)
