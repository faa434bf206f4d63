"""Mistral (`/v1/chat/completions`, `/v1/embeddings`): OpenAI-like, with differences that break a pass-through.

Mistral's request schema forbids unknown fields (HTTP 422 "Extra inputs are not permitted") at every
level, so requests are rebuilt from the fields Mistral knows: `seed` → `random_seed`,
`max_completion_tokens` → `max_tokens`, `tool_choice: "required"` → `"any"`, OpenAI-only fields
(`user`, `logit_bias`, `stream_options`, `store`, ...) dropped, messages reduced to Mistral's keys.
Tool call ids must be exactly 9 characters [a-zA-Z0-9]: foreign ids are mapped to a stable 9-character
hash, identically in the assistant's `tool_calls` and the `tool` message answering it, while ids that
Mistral issued pass back unchanged. Answers are normalised to OpenAI's shape: content chunk lists
(reasoning models) flattened into `content` / `reasoning_content`, `model_length` → `length`, tool
call deltas given `type` and per-call `index`, the usage of the final chunk sent as a usage chunk.
"""

from __future__ import annotations

import re
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
    dumps,
    embedding_inputs,
    function_of,
    max_tokens_of,
    messages_of,
    short_hash,
    stop_list,
    text_of,
    tool_call_id,
    tool_choice_of,
    tools_of,
    usage,
)
from services.router.sse import SseEvent
from shared.errors import ContextLengthExceeded, GatewayError, InvalidRequestError, UpstreamError, error_for_status
from shared.schemas.chat import Usage
from shared.schemas.openai import (
    ChatCompletionRequest,
    ContentPart,
    EmbeddingsRequest,
    FunctionDef,
    Message,
    Prediction,
    ResponseFormat,
)

_ENC = msgspec.json.Encoder()
_MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")
# Mistral's own fields a client (extra_body) or a deployment's params may carry
_PASSTHROUGH = ("safe_prompt", "prompt_mode", "guardrails")
_EFFORT = {"none": "none", "minimal": "none", "low": "high", "medium": "high", "high": "high"}
_FINISH = {"stop": "stop", "length": "length", "model_length": "length", "tool_calls": "tool_calls"}


def mistral_id(call_id: str) -> str:
    """A tool call id Mistral accepts: its own ids unchanged, any other id hashed to 9 characters."""
    return call_id if _MISTRAL_ID.fullmatch(call_id) else short_hash(call_id)


def _headers(target: Target, stream: bool) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": "text/event-stream" if stream else "application/json"}
    if target.api_key:
        headers["authorization"] = f"Bearer {target.api_key}"
    headers.update(target.headers)
    return headers


def _user_content(content: str | list[ContentPart] | None, i: int) -> str | list[JsonObj]:
    if content is None or isinstance(content, str):
        return content or ""
    chunks: list[JsonObj] = []
    for j, part in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        if part.type == "text":
            chunks.append({"type": "text", "text": part.text or ""})
        elif part.type == "image_url" and part.image_url is not None:
            image: JsonObj = {"url": part.image_url.url}
            if part.image_url.detail:
                image["detail"] = part.image_url.detail
            chunks.append({"type": "image_url", "image_url": image})
        elif part.type == "input_audio" and part.input_audio is not None:
            chunks.append({"type": "input_audio", "input_audio": part.input_audio.data})
        elif part.type == "file" and part.file is not None and part.file.file_data:
            chunks.append({"type": "document_url", "document_url": part.file.file_data})
        else:
            raise InvalidRequestError(f"{where}: content part {part.type!r} is not supported by Mistral.", param=where)
    return chunks


def _message(message: Message, names: dict[str, str], i: int) -> JsonObj:
    role = message.role
    if role in {"system", "developer"}:
        return {"role": "system", "content": text_of(message.content)}
    if role == "user":
        return {"role": "user", "content": _user_content(message.content, i)}
    if role == "assistant":
        out: JsonObj = {"role": "assistant", "content": text_of(message.content) or None}
        if message.tool_calls:
            calls: list[JsonObj] = []
            for j, call in enumerate(message.tool_calls):
                function = function_of(call, f"messages[{i}].tool_calls[{j}]")
                names[call.id] = function.name
                fn = {"name": function.name, "arguments": function.arguments or "{}"}
                calls.append({"id": mistral_id(call.id), "type": "function", "function": fn})
            out["tool_calls"] = calls
        if message.prefix:
            out["prefix"] = True
        return out
    if role == "tool":
        out = {"role": "tool", "content": text_of(message.content)}
        if message.tool_call_id:
            out["tool_call_id"] = mistral_id(message.tool_call_id)
        name = names.get(message.tool_call_id or "") or message.name
        if name:
            out["name"] = name
        return out
    raise InvalidRequestError(f"Unsupported role {role!r}.", param=f"messages[{i}].role")


def _tool(fn: FunctionDef) -> JsonObj:
    spec: JsonObj = {"name": fn.name, "parameters": fn.parameters or {"type": "object", "properties": {}}}
    if fn.description:
        spec["description"] = fn.description
    if fn.strict is not None:
        spec["strict"] = fn.strict
    return {"type": "function", "function": spec}


def _response_format(fmt: ResponseFormat | None) -> JsonObj | None:
    if fmt is None:
        return None
    if fmt.type in {"text", "json_object"}:
        return {"type": fmt.type}
    spec = fmt.json_schema
    if fmt.type == "json_schema" and spec is not None and spec.schema is not None:
        out: JsonObj = {"name": spec.name or "response", "schema": spec.schema}
        if spec.strict is not None:
            out["strict"] = spec.strict
        if spec.description is not None:
            out["description"] = spec.description
        return {"type": "json_schema", "json_schema": out}
    raise InvalidRequestError("Unsupported 'response_format' for Mistral.", param="response_format")


def _prediction(prediction: Prediction | None) -> JsonObj | None:
    if prediction is None or prediction.content is None:
        return None
    content = prediction.content
    text = content if isinstance(content, str) else "".join(p.text or "" for p in content)
    return {"type": "content", "content": text}


def build_request(req: ChatCompletionRequest, model: str, *, stream: bool) -> JsonObj:
    """The Mistral chat body for an OpenAI chat request (deployment params already merged)."""
    names: dict[str, str] = {}
    body: JsonObj = {"model": model, "messages": [_message(m, names, i) for i, m in enumerate(messages_of(req))]}
    for key, value in (
        ("temperature", req.temperature),
        ("top_p", req.top_p),
        ("presence_penalty", req.presence_penalty),
        ("frequency_penalty", req.frequency_penalty),
        ("n", req.n),
        ("parallel_tool_calls", req.parallel_tool_calls),
        *((k, req.extra.get(k)) for k in _PASSTHROUGH),
        ("prompt_cache_key", req.prompt_cache_key),
        ("metadata", req.metadata),
    ):
        if value is not None:
            body[key] = value
    max_tokens = max_tokens_of(req)
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    seed = req.extra.get("random_seed", req.seed)
    if seed is not None:
        body["random_seed"] = seed
    stop = stop_list(req)
    if stop:
        body["stop"] = stop
    tools = tools_of(req)
    mode, allowed = tool_choice_of(req)
    if tools:
        if mode == "auto" and allowed:
            tools = [t for t in tools if t.name in allowed]
        body["tools"] = [_tool(t) for t in tools]
        if mode == "required" and len(allowed) == 1:
            body["tool_choice"] = {"type": "function", "function": {"name": allowed[0]}}
        else:
            body["tool_choice"] = {"auto": "auto", "none": "none", "required": "any"}[mode]
    fmt = _response_format(req.response_format)
    if fmt is not None:
        body["response_format"] = fmt
    if req.reasoning_effort in _EFFORT:
        body["reasoning_effort"] = _EFFORT[req.reasoning_effort]
    prediction = _prediction(req.prediction)
    if prediction is not None:
        body["prediction"] = prediction
    if stream:
        body["stream"] = True
    return body


# --- responses -------------------------------------------------------------------------------------


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | dict[str, object] | None = None


class _ToolCall(msgspec.Struct):
    id: str | None = None
    function: _Function | None = None
    index: int | None = None


class _Message(msgspec.Struct):
    role: str | None = None
    content: str | list[dict[str, object]] | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    message: _Message | None = None
    delta: _Message | None = None
    finish_reason: str | None = None


class _Details(msgspec.Struct):
    cached_tokens: int | None = 0


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = 0
    completion_tokens: int | None = 0
    total_tokens: int | None = 0
    num_cached_tokens: int | None = None
    prompt_tokens_details: _Details | None = None
    prompt_token_details: _Details | None = None


class _Response(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _Usage | None = None
    message: object = None
    kind: str | None = msgspec.field(default=None, name="object")


_RESPONSE = msgspec.json.Decoder(_Response)


def _decode(data: bytes) -> _Response:
    try:
        resp = _RESPONSE.decode(data)
    except msgspec.DecodeError as exc:
        raise UpstreamError(f"Mistral returned an unreadable response: {exc}") from exc
    if resp.kind == "error":
        raise UpstreamError(f"Mistral reported an error: {_message_text(resp.message)}")
    return resp


def _texts(content: str | list[dict[str, object]] | None) -> tuple[str, str]:
    """(text, reasoning) of a message or delta content: a string, or chunks of text and thinking."""
    if content is None:
        return "", ""
    if isinstance(content, str):
        return content, ""
    text: list[str] = []
    thinking: list[str] = []
    for chunk in content:
        if chunk.get("type") == "text" and isinstance(chunk.get("text"), str):
            text.append(str(chunk["text"]))
        elif chunk.get("type") == "thinking":
            parts = chunk.get("thinking")
            for item in parts if isinstance(parts, list) else []:
                if isinstance(item, dict):
                    thinking.append(str(item.get("text", "")))
    return "".join(text), "".join(thinking)


def _usage_of(u: _Usage) -> tuple[JsonObj, Usage]:
    details = u.prompt_tokens_details or u.prompt_token_details
    cached = (details.cached_tokens if details else None) or u.num_cached_tokens or 0
    prompt, completion_tokens = u.prompt_tokens or 0, u.completion_tokens or 0
    obj = usage(prompt, completion_tokens, cached=cached, total=u.total_tokens or None)
    return obj, Usage(input_tokens=prompt, output_tokens=completion_tokens, cached_tokens=cached)


def _finish(reason: str | None) -> str | None:
    if reason is None:
        return None
    if reason == "error":
        raise UpstreamError("Mistral stopped generating with an error.")
    return _FINISH.get(reason, "stop")


def _arguments(fn: _Function) -> str:
    args = fn.arguments
    return dumps(args) if isinstance(args, dict) else args or ""


class MistralStream(ChatStream):
    """OpenAI-like chunks ending in `data: [DONE]`; the last content chunk carries usage."""

    def __init__(self, target: Target, response_id: str, created: int) -> None:
        super().__init__(target, response_id, created)
        self._chunks = ChunkMaker(response_id, created, target.model)
        self._done = False
        self._calls: dict[tuple[int, str], int] = {}
        self._last_call: dict[int, int] = {}
        self._count: dict[int, int] = {}
        self._started: set[int] = set()

    def _call_delta(self, idx: int, call: _ToolCall) -> JsonObj:
        # a call with an id is a new call (Mistral sends each call whole); one without continues the last
        fn: JsonObj = {"arguments": _arguments(call.function or _Function())}
        out: JsonObj = {}
        if call.id and call.id != "null":
            key = (idx, call.id)
            if key not in self._calls:
                self._calls[key] = self._count.get(idx, 0)
                self._count[idx] = self._calls[key] + 1
            self._last_call[idx] = self._calls[key]
            out = {"id": call.id, "type": "function"}
            fn = {"name": (call.function.name if call.function else None) or "", **fn}
        return {"index": self._last_call.get(idx, 0), **out, "function": fn}

    def feed(self, event: SseEvent) -> list[JsonObj | bytes]:
        data = event.data
        if data == b"[DONE]":
            self._done = True
            return []
        if not data:
            return []
        resp = _decode(data)
        out: list[JsonObj | bytes] = []
        for ch in resp.choices:
            idx = ch.index
            delta: JsonObj = {}
            if idx not in self._started:
                self._started.add(idx)
                delta["role"] = "assistant"
            src = ch.delta or ch.message or _Message()
            text, reasoning = _texts(src.content)
            if reasoning:
                delta["reasoning_content"] = reasoning
            if text or "role" in delta:
                delta["content"] = text
            if src.tool_calls:
                delta["tool_calls"] = [self._call_delta(idx, c) for c in src.tool_calls]
            finish = _finish(ch.finish_reason)
            if finish is not None:
                self.finish_reason = finish
            if delta or finish is not None:
                out.append(self._chunks.delta(delta, idx, finish))
        if resp.usage is not None:
            obj, self.usage = _usage_of(resp.usage)
            out.append(self._chunks.usage(obj))
        return out

    def finish(self) -> list[JsonObj | bytes]:
        if not self.finish_reason:
            raise UpstreamError("Mistral's stream ended before the model finished its answer.")
        return []

    def done(self) -> bool:
        return self._done


class MistralTranslator(Translator):
    kind = "mistral"
    supports_embeddings = True

    def chat_request(self, req: ChatCompletionRequest, target: Target, *, stream: bool) -> UpstreamRequest:
        return UpstreamRequest(
            "POST",
            f"{target.api_base.rstrip('/')}/v1/chat/completions",
            _headers(target, stream),
            _ENC.encode(build_request(with_params(req, target), target.model, stream=stream)),
        )

    def parse_chat(self, data: bytes, target: Target, response_id: str, created: int) -> JsonObj | bytes:
        resp = _decode(data)
        if not resp.choices:
            raise UpstreamError("Mistral returned no choices.")
        choices: list[JsonObj] = []
        n = 0
        for ch in resp.choices:
            msg = ch.message or _Message()
            text, reasoning = _texts(msg.content)
            calls: list[JsonObj] = []
            for call in msg.tool_calls or []:
                fn = call.function or _Function()
                call_id = call.id if call.id and call.id != "null" else tool_call_id(response_id, n)
                n += 1
                calls.append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": fn.name or "", "arguments": _arguments(fn)},
                    }
                )
            reason = _finish(ch.finish_reason) or ("tool_calls" if calls else "stop")
            choices.append(choice(ch.index, text, calls, reason, reasoning))
        usage_obj = _usage_of(resp.usage)[0] if resp.usage is not None else None
        return completion(response_id, created, target.model, choices, usage_obj)

    def open_stream(self, target: Target, response_id: str, created: int) -> ChatStream:
        return MistralStream(target, response_id, created)

    def embeddings_request(self, req: EmbeddingsRequest, target: Target) -> UpstreamRequest:
        req = with_params(req, target)
        inputs = embedding_inputs(req)
        out: JsonObj = {"model": target.model, "input": req.input if isinstance(req.input, str) else inputs}
        if req.dimensions is not None:
            out["output_dimension"] = req.dimensions
        if req.encoding_format in {"float", "base64"}:
            out["encoding_format"] = req.encoding_format
        output_dtype = req.extra.get("output_dtype")
        if isinstance(output_dtype, str):
            out["output_dtype"] = output_dtype
        return UpstreamRequest(
            "POST", f"{target.api_base.rstrip('/')}/v1/embeddings", _headers(target, False), _ENC.encode(out)
        )

    def parse_embeddings(self, data: bytes, target: Target) -> JsonObj | bytes:
        # already OpenAI's shape (data[].embedding, usage.prompt_tokens): pass the bytes through
        return data

    def parse_error(self, status: int, data: bytes, headers: Mapping[str, str]) -> GatewayError:
        try:
            payload = msgspec.json.decode(data)
        except msgspec.DecodeError:
            payload = None
        message = f"Mistral returned HTTP {status}."
        if isinstance(payload, dict):
            found = payload.get("message", payload.get("detail"))
            if found:
                message = _message_text(found)
        retry_after = retry_after_seconds(headers)
        if status == 400 and ("too large for model" in message or "context length" in message):
            return ContextLengthExceeded(message, param="messages")
        return error_for_status(status)(message, retry_after=retry_after)


def _message_text(found: object) -> str:
    """Mistral's `message`: a string, or a validation report `{"detail": [{"loc", "msg"}, ...]}`."""
    if isinstance(found, dict) and "detail" in found:
        found = found["detail"]
    if isinstance(found, list):
        parts = []
        for item in found:
            if isinstance(item, dict):
                loc = ".".join(str(x) for x in item.get("loc") or [] if x != "body")
                parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
        return "; ".join(parts) or "invalid request"
    return str(found)
