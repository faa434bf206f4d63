"""Cohere v2 (`/v2/chat`, `/v2/embed`): OpenAI chat ⇄ Cohere's messages, tool calls, and named stream events.

Requests: roles map one to one (developer → system); an assistant turn that calls tools sends its text
as `tool_plan` (Cohere's reasoning before tool calls) and the calls as `tool_calls`; `tool_choice`
required/none → REQUIRED/NONE (a named function: REQUIRED with only that tool offered); `top_p` → `p`
(clamped to Cohere's 0.01 to 0.99), `stop` → `stop_sequences`, JSON mode and structured outputs →
`response_format: {type: json_object[, json_schema]}`, `reasoning_effort` → `thinking`.
Answers: text content → `content`, `tool_plan` → `content` of a tool-calling turn (so it round-trips),
thinking → `reasoning_content`; COMPLETE/STOP_SEQUENCE/MAX_TOKENS/TOOL_CALL → stop/length/tool_calls,
ERROR and TIMEOUT → errors; usage from `billed_units` (what Cohere charges), `tokens` when absent.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from services.router.providers.base import (
    ChatStream,
    JsonObj,
    Target,
    Translator,
    UpstreamRequest,
    retry_after_seconds,
    with_params,
)
from services.router.providers.chat_shapes import (
    ChunkMaker,
    choice,
    completion,
    embedding_inputs,
    embeddings_list,
    function_of,
    max_tokens_of,
    messages_of,
    stop_list,
    text_of,
    tool_call_id,
    tool_choice_of,
    tools_of,
    usage,
)
from services.router.sse import SseEvent
from shared.errors import (
    AuthenticationError,
    ContextLengthExceeded,
    GatewayError,
    GatewayTimeoutError,
    InvalidRequestError,
    UpstreamError,
    error_for_status,
)
from shared.schemas.chat import Usage
from shared.schemas.openai import (
    ChatCompletionRequest,
    ContentPart,
    EmbeddingsRequest,
    FunctionDef,
    Message,
    ResponseFormat,
)

_ENC = msgspec.json.Encoder()
# fields a client may send through the OpenAI SDK's extra_body (or a deployment's params), and Cohere's name
_PASSTHROUGH = {
    "top_k": "k",
    "k": "k",
    "documents": "documents",
    "citation_options": "citation_options",
    "safety_mode": "safety_mode",
    "priority": "priority",
    "thinking": "thinking",
}
_FINISH = {"COMPLETE": "stop", "STOP_SEQUENCE": "stop", "MAX_TOKENS": "length", "TOOL_CALL": "tool_calls"}
_THINKING: dict[str, JsonObj] = {
    "none": {"type": "disabled"},
    "minimal": {"type": "enabled", "token_budget": 512},
    "low": {"type": "enabled", "token_budget": 1024},
    "medium": {"type": "enabled", "token_budget": 8192},
    "high": {"type": "enabled"},
}


def _headers(target: Target, stream: bool) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": "text/event-stream" if stream else "application/json"}
    if target.api_key:
        headers["authorization"] = f"Bearer {target.api_key}"
    headers.update(target.headers)
    return headers


def _user_content(content: str | list[ContentPart] | None, i: int) -> str | list[JsonObj]:
    if content is None or isinstance(content, str):
        return content or ""
    blocks: list[JsonObj] = []
    for j, part in enumerate(content):
        if part.type == "text":
            blocks.append({"type": "text", "text": part.text or ""})
        elif part.type == "image_url" and part.image_url is not None:
            image: JsonObj = {"url": part.image_url.url}
            if part.image_url.detail:
                image["detail"] = part.image_url.detail
            blocks.append({"type": "image_url", "image_url": image})
        else:
            where = f"messages[{i}].content[{j}]"
            raise InvalidRequestError(f"{where}: content part {part.type!r} is not supported by Cohere.", param=where)
    return blocks


def _message(message: Message, i: int) -> JsonObj | None:
    role = message.role
    if role in {"system", "developer"}:
        return {"role": "system", "content": text_of(message.content)}
    if role == "user":
        return {"role": "user", "content": _user_content(message.content, i)}
    if role == "assistant":
        text = text_of(message.content)
        if message.tool_calls:
            calls: list[JsonObj] = []
            for j, c in enumerate(message.tool_calls):
                fn = function_of(c, f"messages[{i}].tool_calls[{j}]")
                calls.append(
                    {"id": c.id, "type": "function", "function": {"name": fn.name, "arguments": fn.arguments or ""}}
                )
            out: JsonObj = {"role": "assistant", "tool_calls": calls}
            if text:
                out["tool_plan"] = text
            return out
        return {"role": "assistant", "content": text} if text else None
    if role == "tool":
        if not message.tool_call_id:
            raise InvalidRequestError("A tool message needs 'tool_call_id'.", param=f"messages[{i}].tool_call_id")
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": text_of(message.content)}
    raise InvalidRequestError(f"Unsupported role {role!r}.", param=f"messages[{i}].role")


def _tool(fn: FunctionDef) -> JsonObj:
    spec: JsonObj = {"name": fn.name, "parameters": fn.parameters or {"type": "object", "properties": {}}}
    if fn.description:
        spec["description"] = fn.description
    return {"type": "function", "function": spec}


def _response_format(fmt: ResponseFormat | None) -> JsonObj | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    spec = fmt.json_schema
    if fmt.type == "json_schema" and spec is not None and spec.schema is not None:
        return {"type": "json_object", "json_schema": spec.schema}
    raise InvalidRequestError("Unsupported 'response_format' for Cohere.", param="response_format")


def build_request(req: ChatCompletionRequest, model: str, *, stream: bool) -> JsonObj:
    """The Cohere v2 chat body for an OpenAI chat request (deployment params already merged)."""
    if req.n is not None and req.n > 1:
        raise InvalidRequestError("Cohere returns one choice per request; 'n' must be 1.", param="n")
    messages = [m for i, msg in enumerate(messages_of(req)) if (m := _message(msg, i)) is not None]
    body: JsonObj = {"model": model, "messages": messages, "stream": stream}
    for key, value in (
        ("temperature", req.temperature),
        ("seed", req.seed),
        ("frequency_penalty", req.frequency_penalty),
        ("presence_penalty", req.presence_penalty),
        *((dst, req.extra.get(src)) for src, dst in _PASSTHROUGH.items()),
    ):
        if value is not None:
            body[key] = value
    if req.top_p is not None:
        body["p"] = min(max(float(req.top_p), 0.01), 0.99)
    max_tokens = max_tokens_of(req)
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    stop = stop_list(req)
    if stop:
        body["stop_sequences"] = stop
    tools = tools_of(req)
    mode, allowed = tool_choice_of(req)
    if tools:
        if allowed:  # Cohere cannot name a function: offer only the allowed ones
            tools = [t for t in tools if t.name in allowed]
        body["tools"] = [_tool(t) for t in tools]
        if any(t.strict for t in tools):
            body["strict_tools"] = True
        if mode != "auto":
            body["tool_choice"] = "REQUIRED" if mode == "required" else "NONE"
    fmt = _response_format(req.response_format)
    if fmt is not None:
        body["response_format"] = fmt
    if req.reasoning_effort is not None and req.reasoning_effort in _THINKING and "thinking" not in body:
        body["thinking"] = _THINKING[req.reasoning_effort]
    return body


# --- responses -------------------------------------------------------------------------------------


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(msgspec.Struct):
    id: str | None = None
    function: _Function | None = None


class _Content(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    thinking: str | None = None


class _Message(msgspec.Struct):
    content: list[_Content] | _Content | None = None
    tool_plan: str | None = None
    tool_calls: list[_ToolCall] | _ToolCall | None = None


class _Tokens(msgspec.Struct):
    input_tokens: float | None = None
    output_tokens: float | None = None


class _Usage(msgspec.Struct):
    billed_units: _Tokens | None = None
    tokens: _Tokens | None = None
    cached_tokens: float | None = None


class _Response(msgspec.Struct):
    finish_reason: str | None = None
    message: _Message | None = None
    usage: _Usage | None = None


class _Delta(msgspec.Struct):
    message: _Message | None = None
    finish_reason: str | None = None
    usage: _Usage | None = None
    error: str | None = None


class _Event(msgspec.Struct):
    type: str = ""
    index: int = 0
    delta: _Delta | None = None


_RESPONSE = msgspec.json.Decoder(_Response)
_EVENT = msgspec.json.Decoder(_Event)


def _finish(reason: str | None, has_calls: bool, error: str | None = None) -> str:
    if reason == "ERROR" or error:
        raise UpstreamError(f"Cohere stopped with an error: {error or 'generation failed'}")
    if reason == "TIMEOUT":
        raise GatewayTimeoutError("Cohere timed out while generating.")
    return _FINISH.get(reason or "", "tool_calls" if has_calls else "stop")


def _usage_of(u: _Usage) -> tuple[JsonObj, Usage]:
    billed, tokens = u.billed_units or _Tokens(), u.tokens or _Tokens()
    prompt = int(billed.input_tokens if billed.input_tokens is not None else tokens.input_tokens or 0)
    output = int(billed.output_tokens if billed.output_tokens is not None else tokens.output_tokens or 0)
    cached = int(u.cached_tokens or 0)
    return usage(prompt, output, cached=cached), Usage(input_tokens=prompt, output_tokens=output, cached_tokens=cached)


def _as_list(value: list[_Content] | _Content | None) -> list[_Content]:
    return value if isinstance(value, list) else [value] if value is not None else []


class CohereStream(ChatStream):
    """Cohere's named events (message-start, content-*, tool-plan-delta, tool-call-*, message-end)."""

    def __init__(self, target: Target, response_id: str, created: int) -> None:
        super().__init__(target, response_id, created)
        self._chunks = ChunkMaker(response_id, created, target.model)
        self._started = False
        self._done = False
        self._calls: dict[int, int] = {}  # Cohere's tool-call index → OpenAI's

    def feed(self, event: SseEvent) -> list[JsonObj | bytes]:
        if not event.data or event.data == b"[DONE]":
            return []
        try:
            ev = _EVENT.decode(event.data)
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"Cohere sent an unreadable stream event: {exc}") from exc
        kind = ev.type or event.event
        out: list[JsonObj | bytes] = []
        if not self._started and kind not in {"", "debug"}:
            self._started = True
            out.append(self._chunks.delta({"role": "assistant", "content": ""}))
        msg = ev.delta.message if ev.delta is not None else None
        if kind == "content-delta" and msg is not None:
            for block in _as_list(msg.content):
                if block.thinking:
                    out.append(self._chunks.delta({"reasoning_content": block.thinking}))
                if block.text:
                    out.append(self._chunks.delta({"content": block.text}))
        elif kind == "tool-plan-delta" and msg is not None and msg.tool_plan:
            out.append(self._chunks.delta({"content": msg.tool_plan}))
        elif kind in {"tool-call-start", "tool-call-delta"} and msg is not None:
            out.extend(self._tool_call(kind, ev.index, msg))
        elif kind == "message-end":
            delta = ev.delta or _Delta()
            self.finish_reason = _finish(delta.finish_reason, bool(self._calls), delta.error)
            self._done = True
            out.append(self._chunks.delta({}, 0, self.finish_reason))
            if delta.usage is not None:
                obj, self.usage = _usage_of(delta.usage)
                out.append(self._chunks.usage(obj))
        return out

    def _tool_call(self, kind: str, index: int, msg: _Message) -> list[JsonObj | bytes]:
        calls = msg.tool_calls
        call = calls[0] if isinstance(calls, list) and calls else calls if isinstance(calls, _ToolCall) else None
        if call is None:
            return []
        fn = call.function or _Function()
        if kind == "tool-call-start":
            self._calls[index] = len(self._calls)
            delta: JsonObj = {
                "index": self._calls[index],
                "id": call.id or tool_call_id(self.response_id, len(self._calls) - 1),
                "type": "function",
                "function": {"name": fn.name or "", "arguments": fn.arguments or ""},
            }
        elif fn.arguments:
            delta = {"index": self._calls.get(index, len(self._calls) - 1), "function": {"arguments": fn.arguments}}
        else:
            return []
        return [self._chunks.delta({"tool_calls": [delta]})]

    def finish(self) -> list[JsonObj | bytes]:
        if not self._done:
            raise UpstreamError("Cohere's stream ended before message-end.")
        return []

    def done(self) -> bool:
        return self._done


class CohereTranslator(Translator):
    kind = "cohere"
    supports_embeddings = True

    def chat_request(self, req: ChatCompletionRequest, target: Target, *, stream: bool) -> UpstreamRequest:
        return UpstreamRequest(
            "POST",
            f"{target.api_base.rstrip('/')}/v2/chat",
            _headers(target, stream),
            _ENC.encode(build_request(with_params(req, target), target.model, stream=stream)),
        )

    def parse_chat(self, data: bytes, target: Target, response_id: str, created: int) -> JsonObj | bytes:
        try:
            resp = _RESPONSE.decode(data)
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"Cohere returned an unreadable response: {exc}") from exc
        msg = resp.message or _Message()
        blocks = _as_list(msg.content)
        text = "".join(b.text or "" for b in blocks if b.type in {None, "text"})
        reasoning = "".join(b.thinking or "" for b in blocks if b.type == "thinking")
        raw_calls = msg.tool_calls if isinstance(msg.tool_calls, list) else [msg.tool_calls] if msg.tool_calls else []
        calls: list[JsonObj] = [
            {
                "id": c.id or tool_call_id(response_id, i),
                "type": "function",
                "function": {
                    "name": (c.function or _Function()).name or "",
                    "arguments": (c.function or _Function()).arguments or "{}",
                },
            }
            for i, c in enumerate(raw_calls)
        ]
        if calls and not text and msg.tool_plan:
            text = msg.tool_plan
        reason = _finish(resp.finish_reason, bool(calls))
        usage_obj = _usage_of(resp.usage)[0] if resp.usage is not None else None
        return completion(response_id, created, target.model, [choice(0, text, calls, reason, reasoning)], usage_obj)

    def open_stream(self, target: Target, response_id: str, created: int) -> ChatStream:
        return CohereStream(target, response_id, created)

    def embeddings_request(self, req: EmbeddingsRequest, target: Target) -> UpstreamRequest:
        req = with_params(req, target)
        out: JsonObj = {
            "model": target.model,
            "texts": embedding_inputs(req),
            # OpenAI has no input_type; documents are the common case, and a client can send its own
            "input_type": req.extra.get("input_type") or "search_document",
            "embedding_types": ["float"],
        }
        if req.dimensions is not None:
            out["output_dimension"] = req.dimensions
        truncate = req.extra.get("truncate")
        if truncate in {"NONE", "START", "END"}:
            out["truncate"] = truncate
        return UpstreamRequest(
            "POST", f"{target.api_base.rstrip('/')}/v2/embed", _headers(target, False), _ENC.encode(out)
        )

    def parse_embeddings(self, data: bytes, target: Target) -> JsonObj | bytes:
        try:
            resp = msgspec.json.decode(data, type=_EmbedResponse)
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"Cohere returned an unreadable embeddings response: {exc}") from exc
        meta = resp.meta or _EmbedMeta()
        tokens = (meta.billed_units or _Tokens()).input_tokens or (meta.tokens or _Tokens()).input_tokens or 0
        return embeddings_list(resp.embeddings.floats, target.model, int(tokens))

    def parse_error(self, status: int, data: bytes, headers: Mapping[str, str]) -> GatewayError:
        try:
            payload = msgspec.json.decode(data)
        except msgspec.DecodeError:
            payload = None
        message = f"Cohere returned HTTP {status}."
        if isinstance(payload, dict) and isinstance(payload.get("message"), str):
            message = payload["message"]
        retry_after = retry_after_seconds(headers)
        if status == 498:  # Cohere's "invalid token"
            return AuthenticationError(message)
        if status == 400 and "too many tokens" in message:
            return ContextLengthExceeded(message, param="messages")
        return error_for_status(status)(message, retry_after=retry_after)


class _Floats(msgspec.Struct):
    floats: list[list[float]] = msgspec.field(default_factory=list, name="float")


class _EmbedMeta(msgspec.Struct):
    billed_units: _Tokens | None = None
    tokens: _Tokens | None = None


class _EmbedResponse(msgspec.Struct):
    embeddings: _Floats = msgspec.field(default_factory=_Floats)
    meta: _EmbedMeta | None = None
