"""Anthropic Messages (`POST /v1/messages`) ↔ canonical chat: request, message, SSE stream and errors.

Request: `to_chat(body)` validates like Anthropic (messages name the field the Anthropic way, e.g.
`max_tokens: Field required`; `param` carries it OpenAI-style) and returns an OpenAI chat body.
Response: `from_chat(completion, model)` → a `message`; `MessagesStream` turns chunks into the
`message_start … message_stop` events; `error_body` / `error_event` write Anthropic's error shape.

`translate(body)` also lists what the chat form cannot express (server tools, `mcp_servers`, `container`,
file-id and URL sources, server-tool and MCP blocks): such a request is served only by an Anthropic
deployment, which gets the client's body unchanged. Dropped when another provider serves the request:
`thinking`, `top_k`, `cache_control`, `service_tier`, `output_config`, `context_management`, citations.
"""

from __future__ import annotations

import uuid

import msgspec

from services.ingress.surfaces.anthropic_request import Translation, to_chat, translate
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
    read_completion,
)
from services.ingress.surfaces.sse import sse
from shared.errors import ErrorInfo

__all__ = [
    "PING_EVENT",
    "MessagesStream",
    "Translation",
    "error_body",
    "error_event",
    "from_chat",
    "to_chat",
    "translate",
]

PING_EVENT = sse("ping", {"type": "ping"})

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
    """Anthropic counts cache reads and writes apart from `input_tokens`; OpenAI's `prompt_tokens` includes them."""
    u = usage or TokenUsage()
    return {
        "input_tokens": max(u.prompt - u.cached - u.cache_write, 0),
        "output_tokens": u.completion,
        "cache_creation_input_tokens": u.cache_write,
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


def from_chat(completion: bytes | JsonObj, requested_model: str) -> JsonObj:
    """An OpenAI `chat.completion` (JSON bytes or decoded) → an Anthropic `message` named after the model
    the client asked for. Raises UpstreamError for an answer that is not a chat completion."""
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
        """The `error` event that ends a broken stream (nothing once the message was stopped)."""
        if self.done:
            return b""
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
