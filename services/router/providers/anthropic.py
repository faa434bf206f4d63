"""Anthropic Messages API: OpenAI chat ⇄ `POST /v1/messages` (answers, SSE streams and errors).

The request side lives in `anthropic_request`. Answers: text blocks → `content`; `tool_use` blocks →
`tool_calls` (arguments as a JSON string; the forced `RESPONSE_TOOL` call of a `response_format`
request becomes the message content instead); thinking blocks → `reasoning_content`, and (non-stream)
the blocks themselves with their signatures as `thinking_blocks`, so a client can send them back.
`stop_reason` → `finish_reason`: end_turn / stop_sequence / pause_turn → stop, max_tokens /
model_context_window_exceeded → length, tool_use → tool_calls, refusal → content_filter.

Usage: Anthropic counts cache reads and cache writes apart from `input_tokens`; OpenAI's
`prompt_tokens` includes cached tokens, so prompt = input + cache_read + cache_creation, with the cache
reads as `cached_tokens` and the writes as `prompt_tokens_details.cache_write_tokens` (OpenAI's name).
Streams take input usage from `message_start` and the final (cumulative) counts from `message_delta`.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from services.router.providers.anthropic_request import RESPONSE_TOOL, build_request
from services.router.providers.base import (
    ChatStream,
    JsonObj,
    Target,
    Translator,
    UpstreamRequest,
    retry_after_seconds,
    with_params,
)
from services.router.providers.chat_shapes import choice, completion, dumps
from services.router.sse import SseEvent
from shared.errors import (
    AuthenticationError,
    ContextLengthExceeded,
    GatewayError,
    GatewayTimeoutError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
    error_for_status,
)
from shared.schemas.chat import Usage
from shared.schemas.openai import ChatCompletionRequest

API_VERSION = "2023-06-01"
_ENC = msgspec.json.Encoder()
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_ERRORS: dict[str, type[GatewayError]] = {
    "invalid_request_error": InvalidRequestError,
    "authentication_error": AuthenticationError,
    "permission_error": PermissionDeniedError,
    "billing_error": PermissionDeniedError,
    "not_found_error": NotFoundError,
    "request_too_large": PayloadTooLargeError,
    "rate_limit_error": RateLimitError,
    "api_error": UpstreamError,
    "overloaded_error": ServiceUnavailableError,
    "timeout_error": GatewayTimeoutError,
}


# --- wire shapes -----------------------------------------------------------------------------------


class _Block(msgspec.Struct):
    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: dict[str, object] | None = None
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class _Message(msgspec.Struct):
    id: str = ""
    model: str = ""
    content: list[_Block] = []
    stop_reason: str | None = None
    usage: _Usage | None = None


class _Delta(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    stop_reason: str | None = None


class _Error(msgspec.Struct):
    type: str = "api_error"
    message: str = ""


class _Event(msgspec.Struct):
    type: str
    index: int = 0
    message: _Message | None = None
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None
    error: _Error | None = None


_MESSAGE = msgspec.json.Decoder(_Message)
_EVENT = msgspec.json.Decoder(_Event)


class _Counts:
    """Token counts of one answer, merged from the events that report them."""

    __slots__ = ("cache_creation", "cache_read", "input", "output")

    def __init__(self) -> None:
        self.input = self.output = self.cache_read = self.cache_creation = 0

    def update(self, u: _Usage) -> None:
        # message_delta counts are cumulative; absent (null) fields keep what message_start said
        if u.input_tokens is not None:
            self.input = u.input_tokens
        if u.output_tokens is not None:
            self.output = u.output_tokens
        if u.cache_read_input_tokens is not None:
            self.cache_read = u.cache_read_input_tokens
        if u.cache_creation_input_tokens is not None:
            self.cache_creation = u.cache_creation_input_tokens

    def openai(self) -> JsonObj:
        prompt = self.input + self.cache_read + self.cache_creation
        return {
            "prompt_tokens": prompt,
            "completion_tokens": self.output,
            "total_tokens": prompt + self.output,
            "prompt_tokens_details": {"cached_tokens": self.cache_read, "cache_write_tokens": self.cache_creation},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }

    def gatehouse(self) -> Usage:
        return Usage(
            input_tokens=self.input + self.cache_read + self.cache_creation,
            output_tokens=self.output,
            cached_tokens=self.cache_read,
            cache_write_tokens=self.cache_creation,
        )


def _finish(stop_reason: str | None, has_calls: bool) -> str:
    reason = _FINISH.get(stop_reason or "", "stop")
    # a forced RESPONSE_TOOL call ends in tool_use, but the client asked for a plain JSON answer
    return "stop" if reason == "tool_calls" and not has_calls else reason


def _error(err: _Error | Mapping[str, object], status: int, headers: Mapping[str, str]) -> GatewayError:
    """An Anthropic error object as the taxonomy error; `status` 0 means it arrived inside a stream."""
    etype = err.type if isinstance(err, _Error) else str(err.get("type") or "")
    message = (err.message if isinstance(err, _Error) else str(err.get("message") or "")) or f"HTTP {status}"
    message = f"Anthropic: {message}"
    retry_after = retry_after_seconds(headers)
    if etype == "invalid_request_error" and ("prompt is too long" in message or "exceed context limit" in message):
        return ContextLengthExceeded(message, param="messages", retry_after=retry_after)
    if status == 0:
        cls = _ERRORS.get(etype, UpstreamError)
    elif status == 529:  # overloaded: Anthropic's own status code, retryable like a 503
        cls = ServiceUnavailableError
    elif status == 402 or etype == "billing_error":  # the gateway's account, not the client: fail over
        cls = PermissionDeniedError
    else:
        cls = error_for_status(status)
    return cls(message, retry_after=retry_after, code="billing_error" if etype == "billing_error" else None)


# --- streams ---------------------------------------------------------------------------------------


class _Frames:
    """Pre-encoded chunk envelope of one response: only the delta is encoded per chunk."""

    __slots__ = ("_head", "_usage_head")

    def __init__(self, response_id: str, created: int, model: str) -> None:
        head = _ENC.encode({"id": response_id, "object": "chat.completion.chunk", "created": created, "model": model})
        self._head = head[:-1] + b',"choices":[{"index":0,"delta":'
        self._usage_head = head[:-1] + b',"choices":[],"usage":'

    def delta(self, delta: bytes, finish: str | None = None) -> bytes:
        tail = b'"' + finish.encode() + b'"' if finish else b"null"
        return self._head + delta + b',"logprobs":null,"finish_reason":' + tail + b"}]}"

    def usage(self, usage: JsonObj) -> bytes:
        return self._usage_head + _ENC.encode(usage) + b"}"


class AnthropicStream(ChatStream):
    """Anthropic SSE events → OpenAI chunks: role first, text / reasoning / tool-call deltas, finish, usage."""

    def __init__(self, target: Target, response_id: str, created: int) -> None:
        super().__init__(target, response_id, created)
        self._frames = _Frames(response_id, created, target.model)
        self._tools: dict[int, int] = {}  # content block index → OpenAI tool-call index
        self._json_block = -1  # content block index of the RESPONSE_TOOL call, if any
        self._counts = _Counts()
        self._stopped = False

    def feed(self, event: SseEvent) -> list[JsonObj | bytes]:
        if not event.data:
            return []
        try:
            ev = _EVENT.decode(event.data)
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"Anthropic sent an unreadable stream event: {exc}") from exc
        kind = ev.type
        f = self._frames
        if kind == "content_block_delta" and ev.delta is not None:
            d = ev.delta
            if d.type == "text_delta" and d.text:
                return [f.delta(b'{"content":' + _ENC.encode(d.text) + b"}")]
            if d.type == "input_json_delta" and d.partial_json:
                if ev.index == self._json_block:
                    return [f.delta(b'{"content":' + _ENC.encode(d.partial_json) + b"}")]
                n = self._tools.get(ev.index)
                if n is None:
                    return []
                args = _ENC.encode(d.partial_json)
                return [f.delta(b'{"tool_calls":[{"index":%d,"function":{"arguments":%s}}]}' % (n, args))]
            if d.type == "thinking_delta" and d.thinking:
                return [f.delta(b'{"reasoning_content":' + _ENC.encode(d.thinking) + b"}")]
            return []  # signature_delta, citations_delta: nothing OpenAI-shaped to say
        if kind == "content_block_start" and ev.content_block is not None:
            block = ev.content_block
            if block.type == "tool_use":
                if block.name == RESPONSE_TOOL:
                    self._json_block = ev.index
                    return []
                n = self._tools[ev.index] = len(self._tools)
                call = {
                    "index": n,
                    "id": block.id,
                    "type": "function",
                    "function": {"name": block.name, "arguments": ""},
                }
                return [f.delta(_ENC.encode({"tool_calls": [call]}))]
            if block.type == "text" and block.text:
                return [f.delta(b'{"content":' + _ENC.encode(block.text) + b"}")]
            return []
        if kind == "message_start":
            if ev.message is not None:
                if ev.message.usage is not None:
                    self._counts.update(ev.message.usage)
                if ev.message.model:  # the dated snapshot that answered, as a non-stream answer reports it
                    f = self._frames = _Frames(self.response_id, self.created, ev.message.model)
            return [f.delta(b'{"role":"assistant","content":""}')]
        if kind == "message_delta":
            if ev.usage is not None:
                self._counts.update(ev.usage)
            if ev.delta is not None and ev.delta.stop_reason:
                self.finish_reason = _finish(ev.delta.stop_reason, bool(self._tools))
                return [f.delta(b"{}", self.finish_reason)]
            return []
        if kind == "message_stop":
            self._stopped = True
            self.usage = self._counts.gatehouse()
            return [f.usage(self._counts.openai())]
        if kind == "error":
            raise _error(ev.error or _Error(), 0, {})
        return []  # ping, content_block_stop, and event types added later

    def finish(self) -> list[JsonObj | bytes]:
        if not self._stopped:
            raise UpstreamError("Anthropic's stream ended before message_stop.")
        return []

    def done(self) -> bool:
        return self._stopped


# --- the translator --------------------------------------------------------------------------------


def _url(target: Target) -> str:
    base = target.api_base.rstrip("/")
    return f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"


def _headers(target: Target) -> dict[str, str]:
    headers = {"content-type": "application/json", "anthropic-version": target.api_version or API_VERSION}
    # x-api-key is accepted under every API version (the 2026 SDKs send the same key as a bearer token)
    if target.api_key:
        headers["x-api-key"] = target.api_key
    headers.update(target.headers)
    return headers


class AnthropicTranslator(Translator):
    kind = "anthropic"

    def chat_request(self, req: ChatCompletionRequest, target: Target, *, stream: bool) -> UpstreamRequest:
        version = target.api_version or API_VERSION
        payload = build_request(with_params(req, target), target.model, stream=stream, api_version=version)
        return UpstreamRequest("POST", _url(target), _headers(target), _ENC.encode(payload))

    def parse_chat(self, data: bytes, target: Target, response_id: str, created: int) -> JsonObj | bytes:
        try:
            msg = _MESSAGE.decode(data)
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"Anthropic returned an unreadable message: {exc}") from exc
        texts: list[str] = []
        thoughts: list[str] = []
        thinking_blocks: list[JsonObj] = []
        calls: list[JsonObj] = []
        answer: str | None = None
        for block in msg.content:
            if block.type == "text" and block.text:
                texts.append(block.text)
            elif block.type == "tool_use" and block.name == RESPONSE_TOOL:
                answer = dumps(block.input or {})
            elif block.type == "tool_use":
                calls.append(
                    {
                        "id": block.id,
                        "type": "function",
                        "function": {"name": block.name, "arguments": dumps(block.input or {})},
                    }
                )
            elif block.type == "thinking":
                thoughts.append(block.thinking or "")
                thinking_blocks.append({"type": "thinking", "thinking": block.thinking, "signature": block.signature})
            elif block.type == "redacted_thinking":
                thinking_blocks.append({"type": "redacted_thinking", "data": block.data})
        # the JSON answer stands alone: any words around the forced call would make it unparseable
        text = answer if answer is not None else "".join(texts)
        out = choice(0, text, calls, _finish(msg.stop_reason, bool(calls)), "".join(thoughts))
        if thinking_blocks:
            message = out["message"]
            assert isinstance(message, dict)
            message["thinking_blocks"] = thinking_blocks
        counts = _Counts()
        if msg.usage is not None:
            counts.update(msg.usage)
        return completion(response_id, created, msg.model or target.model, [out], counts.openai())

    def open_stream(self, target: Target, response_id: str, created: int) -> ChatStream:
        return AnthropicStream(target, response_id, created)

    def parse_error(self, status: int, data: bytes, headers: Mapping[str, str]) -> GatewayError:
        try:
            payload = msgspec.json.decode(data)
        except msgspec.DecodeError:
            payload = None
        err = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(err, dict):
            message = f"Anthropic returned HTTP {status}."
            if status == 529:
                return ServiceUnavailableError(message, retry_after=retry_after_seconds(headers))
            return error_for_status(status)(message, retry_after=retry_after_seconds(headers))
        return _error(err, status, headers)
