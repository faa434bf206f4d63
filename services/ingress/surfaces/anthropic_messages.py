"""Anthropic Messages (`POST /v1/messages`) ↔ canonical chat: request, message, SSE stream and errors.

Request: `to_chat(body)` validates like Anthropic (messages name the field the Anthropic way, e.g.
`max_tokens: Field required`; `param` carries it OpenAI-style) and returns an OpenAI chat body.
Response: `from_chat(completion, model)` → a `message`; `MessagesStream` turns chunks into the
`message_start … message_stop` events; `error_body` / `error_event` write Anthropic's error shape.

Not carried: `thinking` (dropped: chat has no budget), `top_k`, `cache_control`, `service_tier`;
rejected with a 400: server tools, `mcp_servers`, `container`, file-id and URL documents.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import msgspec

from services.ingress.surfaces.chat_view import (
    ChunkReader,
    Delta,
    JsonObj,
    RefusalDelta,
    TextDelta,
    TokenUsage,
    ToolArgs,
    ToolStart,
    decode_chunk,
    obj,
    read_completion,
    text_of,
)
from services.ingress.surfaces.sse import sse
from shared.errors import ErrorInfo, InvalidRequestError

Path = Sequence[str | int]

PING_EVENT = sse("ping", {"type": "ping"})


def _bad(path: Path, problem: str) -> InvalidRequestError:
    dotted = ".".join(str(p) for p in path)
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return InvalidRequestError(f"{dotted}: {problem}" if dotted else problem, param=param or None)


def _number(body: JsonObj, key: str) -> float | int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad([key], "Input should be a valid number")
    return value


# ---------------------------------------------------------------- request


def to_chat(body: object) -> JsonObj:
    """An Anthropic Messages request → the OpenAI chat body gatehouse routes (stream asks for usage)."""
    if not isinstance(body, dict):
        raise _bad([], "The request body must be a JSON object.")
    model = body.get("model")
    if model is None:
        raise _bad(["model"], "Field required")
    if not isinstance(model, str) or not model:
        raise _bad(["model"], "Input should be a non-empty string")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise _bad(["max_tokens"], "Field required")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _bad(["max_tokens"], "Input should be an integer greater than or equal to 1")
    raw_messages = body.get("messages")
    if raw_messages is None:
        raise _bad(["messages"], "Field required")
    if not isinstance(raw_messages, list):
        raise _bad(["messages"], "Input should be a valid list")
    if not raw_messages:
        raise _bad(["messages"], "at least one message is required")
    for key in ("mcp_servers", "container"):
        if body.get(key):
            raise _bad([key], "This gateway does not support this parameter.")

    messages = _system(body.get("system"))
    for i, raw in enumerate(raw_messages):
        messages.extend(_message(raw, i))
    out: JsonObj = {"model": model, "messages": messages, "max_completion_tokens": max_tokens}

    for key in ("temperature", "top_p"):
        value = _number(body, key)
        if value is not None:
            out[key] = value
    _number(body, "top_k")  # validated, then dropped: OpenAI-form chat has no top_k
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _bad(["stop_sequences"], "Input should be a valid list of strings")
        if stops:
            out["stop"] = stops
    user = obj(body.get("metadata")).get("user_id")
    if isinstance(user, str) and user:
        out["user"] = user
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
    _tool_choice(body.get("tool_choice"), out)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad(["stream"], "Input should be a valid boolean")
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _system(system: object) -> list[JsonObj]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise _bad(["system"], "Input should be a valid string or a list of text blocks")
    parts: list[JsonObj] = []
    for j, raw in enumerate(system):
        block = obj(raw)
        if block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise _bad(["system", j], "Input should be a text block")
        parts.append({"type": "text", "text": block["text"]})
    return [{"role": "system", "content": _collapse(parts)}] if parts else []


def _collapse(parts: list[JsonObj]) -> str | list[JsonObj]:
    """A lone text part as a plain string (the form every OpenAI-compatible server accepts)."""
    if len(parts) == 1 and parts[0].get("type") == "text":
        return text_of(parts[0].get("text"))
    return parts


def _message(raw: object, i: int) -> list[JsonObj]:
    if not isinstance(raw, dict):
        raise _bad(["messages", i], "Input should be a valid dictionary")
    role = raw.get("role")
    if role not in ("user", "assistant"):
        hint = " Use the top-level `system` parameter for a system prompt." if role == "system" else ""
        raise _bad(["messages", i, "role"], f"Input should be 'user' or 'assistant'.{hint}")
    content = raw.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise _bad(["messages", i, "content"], "Input should be a valid string or a list of content blocks")
    if role == "assistant":
        return [_assistant(content, i)]
    return _user(content, i)


def _assistant(blocks: list[object], i: int) -> JsonObj:
    parts: list[JsonObj] = []
    calls: list[JsonObj] = []
    for j, raw in enumerate(blocks):
        block = obj(raw)
        kind = block.get("type")
        where: list[str | int] = ["messages", i, "content", j]
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, where)})
        elif kind == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise _bad(where, "A tool_use block needs string `id` and `name`")
            arguments = msgspec.json.encode(block.get("input") or {}).decode()
            calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # chat form has no place for prior reasoning; providers accept the turn without it
        else:
            raise _bad([*where, "type"], f"Content block type {kind!r} is not supported in assistant messages")
    message: JsonObj = {"role": "assistant", "content": _collapse(parts) if parts else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _user(blocks: list[object], i: int) -> list[JsonObj]:
    """Tool results become `tool` messages, which chat wants straight after the assistant's calls; the
    rest of the turn (and any image a tool returned) follows as one user message."""
    tools: list[JsonObj] = []
    parts: list[JsonObj] = []
    for j, raw in enumerate(blocks):
        block = obj(raw)
        kind = block.get("type")
        where: list[str | int] = ["messages", i, "content", j]
        if kind == "tool_result":
            tool, images = _tool_result(block, where)
            tools.append(tool)
            parts.extend(images)
        else:
            parts.append(_user_part(block, where))
    out = list(tools)
    if parts:
        out.append({"role": "user", "content": parts})
    return out


def _tool_result(block: JsonObj, where: list[str | int]) -> tuple[JsonObj, list[JsonObj]]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad([*where, "tool_use_id"], "Field required")
    content = block.get("content")
    texts: list[str] = []
    images: list[JsonObj] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for k, raw in enumerate(content):
            part = _user_part(obj(raw), [*where, "content", k])
            if part["type"] == "text":
                texts.append(text_of(part.get("text")))
            else:
                images.append(part)
    elif content is not None:
        raise _bad([*where, "content"], "Input should be a valid string or a list of content blocks")
    text = "\n".join(texts)
    if block.get("is_error") is True:
        # chat has no error flag on a tool message; the model still has to learn the call failed
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _text(block: JsonObj, where: list[str | int]) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad([*where, "text"], "Field required")
    return text


def _user_part(block: JsonObj, where: list[str | int]) -> JsonObj:
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": _text(block, where)}
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _image_url(obj(block.get("source")), where)}}
    if kind == "document":
        return _document(block, where)
    raise _bad([*where, "type"], f"Content block type {kind!r} is not supported by this gateway")


def _image_url(source: JsonObj, where: list[str | int]) -> str:
    kind = source.get("type")
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise _bad([*where, "source"], "A base64 image needs `media_type` and `data`")
        return f"data:{media};base64,{data}"
    if kind == "url" and isinstance(source.get("url"), str):
        return text_of(source.get("url"))
    raise _bad([*where, "source", "type"], f"Image source type {kind!r} is not supported by this gateway")


def _document(block: JsonObj, where: list[str | int]) -> JsonObj:
    source = obj(block.get("source"))
    kind = source.get("type")
    data = source.get("data")
    if kind == "text" and isinstance(data, str):
        return {"type": "text", "text": data}
    if kind == "base64" and isinstance(data, str):
        media = text_of(source.get("media_type")) or "application/pdf"
        name = text_of(block.get("title")) or "document.pdf"
        return {"type": "file", "file": {"filename": name, "file_data": f"data:{media};base64,{data}"}}
    raise _bad([*where, "source", "type"], f"Document source type {kind!r} is not supported by this gateway")


def _tools(raw: object) -> list[JsonObj]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _bad(["tools"], "Input should be a valid list")
    tools: list[JsonObj] = []
    for j, item in enumerate(raw):
        tool = obj(item)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise _bad(["tools", j, "type"], f"Server tool {kind!r} is not supported by this gateway")
        name, schema = tool.get("name"), tool.get("input_schema")
        if not isinstance(name, str) or not name:
            raise _bad(["tools", j, "name"], "Field required")
        if not isinstance(schema, dict):
            raise _bad(["tools", j, "input_schema"], "Field required")
        fn: JsonObj = {"name": name, "parameters": schema}
        if isinstance(tool.get("description"), str):
            fn["description"] = tool["description"]
        if isinstance(tool.get("strict"), bool):
            fn["strict"] = tool["strict"]
        tools.append({"type": "function", "function": fn})
    return tools


def _tool_choice(raw: object, out: JsonObj) -> None:
    if raw is None:
        return
    choice = obj(raw)
    kind = choice.get("type")
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(["tool_choice", "name"], "Field required")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise _bad(["tool_choice", "type"], "Input should be 'auto', 'any', 'tool' or 'none'")
    if choice.get("disable_parallel_tool_use") is True and "tools" in out:
        out["parallel_tool_calls"] = False


# ---------------------------------------------------------------- response


def message_id(completion_id: str) -> str:
    """`msg_…`, derived from the upstream id so logs correlate; random when there is none."""
    suffix = completion_id.removeprefix("chatcmpl-").removeprefix("chatcmpl_") or uuid.uuid4().hex
    return suffix if suffix.startswith("msg_") else f"msg_{suffix}"


def stop_reason(finish_reason: str, stop_sequence: str | None, used_tools: bool) -> tuple[str, str | None]:
    """OpenAI finish_reason → Anthropic (stop_reason, stop_sequence)."""
    if used_tools or finish_reason in ("tool_calls", "function_call"):
        return "tool_use", None
    if finish_reason == "length":
        return "max_tokens", None
    if finish_reason == "content_filter":
        return "refusal", None
    if stop_sequence:
        return "stop_sequence", stop_sequence
    return "end_turn", None


def usage_fields(usage: TokenUsage | None) -> JsonObj:
    """Anthropic counts cache reads apart from `input_tokens`; OpenAI's `prompt_tokens` includes them."""
    u = usage or TokenUsage()
    return {
        "input_tokens": max(u.prompt - u.cached, 0),
        "output_tokens": u.completion,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": u.cached,
    }


def tool_input(arguments: str) -> JsonObj:
    if not arguments.strip():
        return {}
    try:
        value = msgspec.json.decode(arguments)
    except msgspec.DecodeError:
        value = None
    # `input` must be an object; keep what the model wrote rather than drop it
    return value if isinstance(value, dict) else {"_raw_arguments": arguments}


def from_chat(completion: JsonObj, requested_model: str) -> JsonObj:
    """An OpenAI `chat.completion` → an Anthropic `message` named after the model the client asked for."""
    view = read_completion(completion)
    content: list[JsonObj] = []
    text = view.text or view.refusal
    if text:
        content.append({"type": "text", "text": text})
    for call in view.tool_calls:
        content.append({"type": "tool_use", "id": call.call_id, "name": call.name, "input": tool_input(call.arguments)})
    reason, sequence = stop_reason(view.finish_reason, view.stop_sequence, bool(view.tool_calls))
    return {
        "id": message_id(view.id),
        "type": "message",
        "role": "assistant",
        "model": requested_model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage_fields(view.usage),
    }


# ---------------------------------------------------------------- errors

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_body(info: ErrorInfo) -> JsonObj:
    """Anthropic's error envelope for `info`; send it with HTTP status `info.status`."""
    kind = _ERROR_TYPES.get(info.status) or ("invalid_request_error" if info.status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": info.message}}


def error_event(info: ErrorInfo) -> bytes:
    """The `error` event that ends a stream which broke after it started."""
    return sse("error", error_body(info))


# ---------------------------------------------------------------- stream


class MessagesStream:
    """Feeds on `chat.completion.chunk`s and writes Anthropic SSE events.

    `feed(chunk)` for every chunk, then `finish()` once the router's stream ended, or `error(info)`
    if it broke. Text and tool calls each get their own content block, in the order they arrive.
    """

    def __init__(self, requested_model: str) -> None:
        self.model = requested_model
        self.reader = ChunkReader()
        self.started = False
        self.done = False
        self._next = 0
        self._open: int | None = None
        self._open_text = False
        self._tool_blocks: dict[int, int] = {}

    def feed(self, chunk: bytes | JsonObj) -> bytes:
        if self.done:
            return b""
        deltas = self.reader.read(decode_chunk(chunk))
        return self._start() + b"".join(self._delta(d) for d in deltas)

    def finish(self) -> bytes:
        """Close the open block and the message; the final usage goes in `message_delta`."""
        if self.done:
            return b""
        out = self._start() + b"".join(self._delta(d) for d in self.reader.flush()) + self._close()
        self.done = True
        reason, sequence = stop_reason(self.reader.finish_reason, self.reader.stop_sequence, bool(self._tool_blocks))
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": usage_fields(self.reader.usage),
        }
        return out + sse("message_delta", delta) + sse("message_stop", {"type": "message_stop"})

    def error(self, info: ErrorInfo) -> bytes:
        self.done = True
        return error_event(info)

    def _start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        usage = usage_fields(self.reader.usage)  # usually not known yet: zeros, final counts come at the end
        usage["output_tokens"] = 0
        message: JsonObj = {
            "id": message_id(self.reader.id),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        return sse("message_start", {"type": "message_start", "message": message})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        index, self._open = self._open, None
        return sse("content_block_stop", {"type": "content_block_stop", "index": index})

    def _open_block(self, block: JsonObj) -> bytes:
        out = self._close()
        self._open, self._next = self._next, self._next + 1
        self._open_text = block["type"] == "text"
        return out + sse(
            "content_block_start", {"type": "content_block_start", "index": self._open, "content_block": block}
        )

    def _delta(self, d: Delta) -> bytes:
        if isinstance(d, TextDelta | RefusalDelta):
            out = b"" if self._open is not None and self._open_text else self._open_block({"type": "text", "text": ""})
            body = {"type": "content_block_delta", "index": self._open, "delta": {"type": "text_delta", "text": d.text}}
            return out + sse("content_block_delta", body)
        if isinstance(d, ToolStart):
            out = self._open_block({"type": "tool_use", "id": d.call_id, "name": d.name, "input": {}})
            self._tool_blocks[d.slot] = self._next - 1
            return out
        if isinstance(d, ToolArgs):
            delta = {"type": "input_json_delta", "partial_json": d.arguments}
            index = self._tool_blocks[d.slot]  # the call's own block, even if a provider interleaves calls
            return sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
        return b""
