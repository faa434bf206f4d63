"""Amazon Bedrock Runtime, Converse and ConverseStream (`POST /model/{modelId}/converse[-stream]`); pure.

Request: system/developer messages → `system` blocks; user parts → `text`, `image` (base64 bytes:
png, jpeg, gif, webp) and `document` (PDF) blocks; assistant `tool_calls` → `toolUse` blocks; `tool`
messages → `toolResult` blocks of a user turn; consecutive turns of one role merged (Converse wants
them alternating). `max_tokens`, `temperature`, `top_p`, `stop` → `inferenceConfig`; function tools →
`toolConfig.tools[].toolSpec` with `inputSchema.json`; `tool_choice` auto / required / a named function
→ `auto` / `any` / `tool`. Knobs of a model family (e.g. `top_k`) travel in the client's or the
deployment's `additionalModelRequestFields`.

Auth: a Bedrock API key (bearer) when the provider has `api_key_env` set, else AWS SigV4 — the request
is marked `sign=<provider>` and signed by services/router/signing.py just before it is sent (the
translator has no clock and no credentials).

Answer: `output.message.content` (text, toolUse, reasoningContent) → an OpenAI completion; `stopReason`
→ finish_reason; `usage` (input excludes cache reads and writes, which OpenAI's prompt_tokens include).
Streams arrive in the AWS event stream framing (providers/eventstream.py): messageStart,
contentBlockStart (a tool call's id and name), contentBlockDelta (text, toolUse input, reasoning),
contentBlockStop, messageStop (stopReason), metadata (usage) → OpenAI chunks; an exception event
(throttlingException, …) → the taxonomy error.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

import msgspec

from services.router.providers.base import (
    ChatStream,
    JsonObj,
    StreamParser,
    Target,
    Translator,
    UpstreamRequest,
    retry_after_seconds,
    with_params,
)
from services.router.providers.bedrock_request import build_request
from services.router.providers.chat_shapes import (
    ChunkMaker,
    choice,
    completion,
    dumps,
)
from services.router.providers.eventstream import EventStreamParser
from services.router.sse import SseEvent
from shared.errors import (
    ContextLengthExceeded,
    GatewayError,
    GatewayTimeoutError,
    InvalidRequestError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
    error_for_status,
)
from shared.schemas.chat import Usage
from shared.schemas.openai import ChatCompletionRequest

_ENC = msgspec.json.Encoder()
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif", "image/webp": "webp"}
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
# Bedrock's error types (x-amzn-ErrorType, or the exception event's type) → the taxonomy
ERROR_TYPES: dict[str, type[GatewayError]] = {
    "throttlingexception": RateLimitError,
    "servicequotaexceededexception": RateLimitError,
    "modelnotreadyexception": ServiceUnavailableError,
    "serviceunavailableexception": ServiceUnavailableError,
    "internalserverexception": UpstreamError,
    "modelstreamerrorexception": UpstreamError,
    "modelerrorexception": UpstreamError,
    "modeltimeoutexception": GatewayTimeoutError,
    "accessdeniedexception": PermissionDeniedError,
    "unrecognizedclientexception": PermissionDeniedError,
    "invalidsignatureexception": PermissionDeniedError,
    "expiredtokenexception": PermissionDeniedError,
    "validationexception": InvalidRequestError,
}
_TOO_LONG = ("input is too long", "too many input tokens", "prompt is too long", "exceeds the context window")


def api_base(region: str | None) -> str:
    return f"https://bedrock-runtime.{region or 'us-east-1'}.amazonaws.com"


# --- answers ------------------------------------------------------------------------------------------


class _Usage(msgspec.Struct):
    inputTokens: int = 0
    outputTokens: int = 0
    cacheReadInputTokens: int = 0
    cacheWriteInputTokens: int = 0


class _ToolUse(msgspec.Struct):
    toolUseId: str = ""
    name: str = ""
    input: object = None


class _Reasoning(msgspec.Struct):
    text: str = ""


class _ReasoningContent(msgspec.Struct):
    reasoningText: _Reasoning | None = None
    text: str = ""  # in stream deltas


class _Block(msgspec.Struct):
    text: str | None = None
    toolUse: _ToolUse | None = None
    reasoningContent: _ReasoningContent | None = None


class _Message(msgspec.Struct):
    content: list[_Block] = []


class _Output(msgspec.Struct):
    message: _Message | None = None


class _Response(msgspec.Struct):
    output: _Output | None = None
    stopReason: str = ""
    usage: _Usage | None = None


_RESPONSE = msgspec.json.Decoder(_Response)


def _openai_usage(u: _Usage) -> JsonObj:
    prompt = u.inputTokens + u.cacheReadInputTokens + u.cacheWriteInputTokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": u.outputTokens,
        "total_tokens": prompt + u.outputTokens,
        "prompt_tokens_details": {
            "cached_tokens": u.cacheReadInputTokens,
            "cache_write_tokens": u.cacheWriteInputTokens,
        },
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _gatehouse_usage(u: _Usage) -> Usage:
    prompt = u.inputTokens + u.cacheReadInputTokens + u.cacheWriteInputTokens
    return Usage(
        input_tokens=prompt,
        output_tokens=u.outputTokens,
        cached_tokens=u.cacheReadInputTokens,
        cache_write_tokens=u.cacheWriteInputTokens,
    )


def _finish(stop_reason: str, has_calls: bool) -> str:
    return STOP_REASONS.get(stop_reason, "tool_calls" if has_calls else "stop")


def _error(kind: str, message: str, status: int, headers: Mapping[str, str]) -> GatewayError:
    cls = ERROR_TYPES.get(kind.lower())
    if cls is None:
        cls = error_for_status(status) if status else UpstreamError
    if cls is InvalidRequestError and any(s in message.lower() for s in _TOO_LONG):
        cls = ContextLengthExceeded
    return cls(message or f"Bedrock returned HTTP {status}.", retry_after=retry_after_seconds(headers))


class _StreamEvent(msgspec.Struct):
    role: str = ""
    contentBlockIndex: int = 0
    start: _Block | None = None
    delta: _Block | None = None
    stopReason: str = ""
    usage: _Usage | None = None
    message: str = ""


_STREAM_EVENT = msgspec.json.Decoder(_StreamEvent)


class BedrockStream(ChatStream):
    def __init__(self, target: Target, response_id: str, created: int) -> None:
        super().__init__(target, response_id, created)
        self._chunks = ChunkMaker(response_id, created, target.model)
        self._tools: dict[int, int] = {}  # content block index → OpenAI tool-call index
        self._done = False

    def feed(self, event: SseEvent) -> list[JsonObj | bytes]:
        try:
            ev = _STREAM_EVENT.decode(event.data or b"{}")
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"Bedrock sent an unreadable stream event: {exc}") from exc
        kind = event.event
        c = self._chunks
        if kind.startswith(("exception:", "error:")):
            message = ev.message or (event.data.decode("utf-8", "replace") if kind.startswith("error:") else "")
            raise _error(kind.partition(":")[2], message, 0, {})
        if kind == "messageStart":
            return [c.delta({"role": "assistant", "content": ""})]
        if kind == "contentBlockStart" and ev.start is not None and ev.start.toolUse is not None:
            n = self._tools[ev.contentBlockIndex] = len(self._tools)
            tool = ev.start.toolUse
            call = {
                "index": n,
                "id": tool.toolUseId,
                "type": "function",
                "function": {"name": tool.name, "arguments": ""},
            }
            return [c.delta({"tool_calls": [call]})]
        if kind == "contentBlockDelta" and ev.delta is not None:
            d = ev.delta
            if d.text:
                return [c.delta({"content": d.text})]
            if d.toolUse is not None and isinstance(d.toolUse.input, str) and d.toolUse.input:
                at = self._tools.get(ev.contentBlockIndex)
                if at is None:
                    return []
                return [c.delta({"tool_calls": [{"index": at, "function": {"arguments": d.toolUse.input}}]})]
            if d.reasoningContent is not None and d.reasoningContent.text:
                return [c.delta({"reasoning_content": d.reasoningContent.text})]
            return []
        if kind == "messageStop":
            self.finish_reason = _finish(ev.stopReason, bool(self._tools))
            return [c.delta({}, finish_reason=self.finish_reason)]
        if kind == "metadata":
            self._done = True
            if ev.usage is not None:
                self.usage = _gatehouse_usage(ev.usage)
                return [c.usage(_openai_usage(ev.usage))]
            return []
        return []  # contentBlockStop, and event types added later

    def finish(self) -> list[JsonObj | bytes]:
        if not self.finish_reason:
            raise UpstreamError("Bedrock's stream ended before messageStop.")
        return []

    def done(self) -> bool:
        return self._done


class BedrockTranslator(Translator):
    kind = "bedrock"

    def chat_request(self, req: ChatCompletionRequest, target: Target, *, stream: bool) -> UpstreamRequest:
        body = build_request(with_params(req, target))
        action = "converse-stream" if stream else "converse"
        # ':' (in every versioned model id) stays literal: HTTP clients send it unescaped whatever they are given,
        # and the signature must cover the path as sent; '/' (in ARNs) is escaped
        url = f"{target.api_base.rstrip('/')}/model/{quote(target.model, safe=':')}/{action}"
        headers = {"content-type": "application/json"}
        headers["accept"] = "application/vnd.amazon.eventstream" if stream else "application/json"
        headers.update(target.headers)
        sign = ""
        if target.api_key:
            headers["authorization"] = f"Bearer {target.api_key}"
        else:
            sign = target.provider
        return UpstreamRequest("POST", url, headers, _ENC.encode(body), sign=sign)

    def parse_chat(self, data: bytes, target: Target, response_id: str, created: int) -> JsonObj | bytes:
        try:
            resp = _RESPONSE.decode(data)
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"Bedrock returned an unreadable answer: {exc}") from exc
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[JsonObj] = []
        for block in resp.output.message.content if resp.output and resp.output.message else []:
            if block.text:
                texts.append(block.text)
            elif block.toolUse is not None:
                tool = block.toolUse
                calls.append(
                    {"id": tool.toolUseId, "type": "function",
                     "function": {"name": tool.name, "arguments": dumps(tool.input or {})}}
                )  # fmt: skip
            elif block.reasoningContent is not None and block.reasoningContent.reasoningText is not None:
                thoughts.append(block.reasoningContent.reasoningText.text)
        out = choice(0, "".join(texts), calls, _finish(resp.stopReason, bool(calls)), "".join(thoughts))
        usage = _openai_usage(resp.usage) if resp.usage is not None else None
        return completion(response_id, created, target.model, [out], usage)

    def open_stream(self, target: Target, response_id: str, created: int) -> ChatStream:
        return BedrockStream(target, response_id, created)

    def stream_parser(self, max_event_bytes: int) -> StreamParser:
        return EventStreamParser(max_event_bytes)

    def parse_error(self, status: int, data: bytes, headers: Mapping[str, str]) -> GatewayError:
        kind = headers.get("x-amzn-errortype", "").split(":", 1)[0]
        message = ""
        try:
            payload = msgspec.json.decode(data)
        except msgspec.DecodeError:
            payload = None
        if isinstance(payload, dict):
            raw = payload.get("message", payload.get("Message", ""))
            message = raw if isinstance(raw, str) else ""
            kind = kind or str(payload.get("__type", "")).rsplit("#", 1)[-1]
        return _error(kind, message, status, headers)
