"""OpenAI Responses (`POST /v1/responses`) ↔ canonical chat: request, Response object, SSE stream.

Request: `to_chat(body)` → an OpenAI chat body. Response: `from_chat(completion, model, request=body)`
→ a `response` object; `ResponsesStream` turns chunks into `response.created … response.completed`
events, each with its `sequence_number`. Errors outside a stream use the OpenAI envelope
(`shared.errors.error_body`); inside one, `ResponsesStream.error(info)`.

`translate(body)` also lists what the chat form cannot express (stored responses and conversations,
`item_reference`, `prompt` templates, built-in tools and their items, file ids, `truncation: auto`):
such a request is served only by an OpenAI deployment, which gets the client's body unchanged.
Dropped when another provider serves the request: `store`, `metadata`, `include`, `reasoning.summary`,
`context_management`, `prompt_cache_retention`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from services.ingress.surfaces.chat_view import (
    ChunkReader,
    CompletionView,
    Delta,
    JsonObj,
    RefusalDelta,
    TextDelta,
    TokenUsage,
    ToolArgs,
    ToolStart,
    decode_chunk,
    read_completion,
    text_of,
)
from services.ingress.surfaces.responses_request import Translation, to_chat, translate
from services.ingress.surfaces.sse import sse
from shared.errors import ErrorInfo

__all__ = ["ResponsesStream", "Translation", "error_event", "from_chat", "to_chat", "translate"]

# ---------------------------------------------------------------- response


def _base(completion_id: str) -> str:
    return completion_id.removeprefix("chatcmpl-").removeprefix("chatcmpl_") or uuid.uuid4().hex


def usage_fields(usage: TokenUsage | None) -> JsonObj | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.prompt,
        "input_tokens_details": {"cached_tokens": usage.cached, "cache_write_tokens": usage.cache_write},
        "output_tokens": usage.completion,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning},
        "total_tokens": usage.total,
    }


def _outcome(finish_reason: str) -> tuple[str, JsonObj | None]:
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def _echo(request: JsonObj) -> JsonObj:
    """The request settings a Response repeats back (the SDK requires tools, tool_choice and
    parallel_tool_calls)."""
    return {
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "metadata": request.get("metadata") or {},
        "parallel_tool_calls": request.get("parallel_tool_calls") is not False,
        "temperature": request.get("temperature"),
        "top_p": request.get("top_p"),
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": request.get("tools") or [],
        "text": request.get("text") or {"format": {"type": "text"}},
        "reasoning": request.get("reasoning"),
        "truncation": "disabled",
        "user": request.get("user"),
        "previous_response_id": None,
        "background": False,
        "store": False,
    }


def _response(
    rid: str,
    created: int,
    model: str,
    request: JsonObj,
    *,
    status: str,
    output: list[JsonObj],
    usage: JsonObj | None = None,
    incomplete: JsonObj | None = None,
    error: JsonObj | None = None,
) -> JsonObj:
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": error,
        "incomplete_details": incomplete,
        "model": model,
        "output": output,
        "usage": usage,
        **_echo(request),
    }


def _text_part(text: str) -> JsonObj:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, parts: list[JsonObj], status: str) -> JsonObj:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": parts}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> JsonObj:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def from_chat(completion: bytes | JsonObj, requested_model: str, *, request: JsonObj | None = None) -> JsonObj:
    """An OpenAI `chat.completion` → a `response` object; pass the Responses `request` to echo its settings."""
    view: CompletionView = read_completion(completion)
    base = _base(view.id)
    status, incomplete = _outcome(view.finish_reason)
    parts: list[JsonObj] = []
    if view.text:
        parts.append(_text_part(view.text))
    if view.refusal:
        parts.append({"type": "refusal", "refusal": view.refusal})
    output: list[JsonObj] = [_message_item(f"msg_{base}_0", parts, status)] if parts else []
    for call in view.tool_calls:
        output.append(_call_item(f"fc_{base}_{len(output)}", call.call_id, call.name, call.arguments, "completed"))
    return _response(
        f"resp_{base}",
        view.created,
        requested_model,
        request or {},
        status=status,
        output=output,
        usage=usage_fields(view.usage),
        incomplete=incomplete,
    )


def error_event(info: ErrorInfo, sequence_number: int) -> bytes:
    """The `error` event that ends a stream relayed unchanged from an OpenAI deployment, numbered after the
    `sequence_number` events relayed before it."""
    data = {
        "type": "error",
        "code": info.code,
        "message": info.message,
        "param": info.param,
        "sequence_number": sequence_number,
    }
    return sse("error", data)


# ---------------------------------------------------------------- stream


@dataclass(slots=True)
class _Item:
    """An output item being streamed: a message (text / refusal parts) or a function call."""

    index: int
    id: str
    kind: str  # message | function_call
    parts: list[JsonObj] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    arguments: str = ""
    status: str = "in_progress"


class ResponsesStream:
    """Feeds on `chat.completion.chunk`s and writes Responses SSE events, numbered from 0.

    `feed(chunk)` for every chunk, then `finish()` once the router's stream ended, or `error(info)`
    if it broke. The terminal event is `response.completed` (or `response.incomplete` when the
    output was cut by `max_output_tokens` or a content filter), carrying the whole response.
    """

    def __init__(self, requested_model: str, *, request: JsonObj | None = None) -> None:
        self.model = requested_model
        self.request = request or {}
        self.reader = ChunkReader()
        self.started = False
        self.done = False
        self._seq = 0
        self._rid = ""
        self._base = ""
        self._items: list[_Item] = []
        self._open: _Item | None = None
        self._calls: dict[int, _Item] = {}

    def feed(self, chunk: bytes | JsonObj) -> bytes:
        if self.done:
            return b""
        deltas = self.reader.read(decode_chunk(chunk))
        return self._start() + self._deltas(deltas)

    def finish(self) -> bytes:
        if self.done:
            return b""
        out = self._start() + self._deltas(self.reader.flush())
        status, incomplete = _outcome(self.reader.finish_reason)
        out += self._close(status)
        self.done = True
        response = self._snapshot(status, usage=usage_fields(self.reader.usage), incomplete=incomplete)
        return out + self._event(f"response.{status}", response=response)

    def error(self, info: ErrorInfo) -> bytes:
        """An `error` event and then `response.failed`, so SDK stream helpers see the lifecycle end."""
        if self.done:
            return b""
        out = self._start()
        self.done = True
        out += self._event("error", code=info.code, message=info.message, param=info.param)
        code = "rate_limit_exceeded" if info.status == 429 else "server_error"
        failed = self._snapshot("failed", error={"code": code, "message": info.message})
        return out + self._event("response.failed", response=failed)

    # -- events

    def _event(self, kind: str, **fields: object) -> bytes:
        data = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return sse(kind, data)

    def _snapshot(self, status: str, **extra: JsonObj | None) -> JsonObj:
        output = [self._item_json(item) for item in self._items]
        return _response(
            self._rid, self.reader.created, self.model, self.request, status=status, output=output, **extra
        )

    def _item_json(self, item: _Item) -> JsonObj:
        if item.kind == "message":
            return _message_item(item.id, [dict(p) for p in item.parts], item.status)
        return _call_item(item.id, item.call_id, item.name, item.arguments, item.status)

    def _start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        self._base = _base(self.reader.id)
        self._rid = f"resp_{self._base}"
        return self._event("response.created", response=self._snapshot("in_progress")) + self._event(
            "response.in_progress", response=self._snapshot("in_progress")
        )

    def _deltas(self, deltas: Iterable[Delta]) -> bytes:
        return b"".join(self._delta(d) for d in deltas)

    def _delta(self, d: Delta) -> bytes:
        if isinstance(d, TextDelta | RefusalDelta):
            kind = "output_text" if isinstance(d, TextDelta) else "refusal"
            out = b""
            if self._open is None or self._open.kind != "message":
                out += self._close("completed") + self._add_item("message")
            item = self._open
            assert item is not None
            if not item.parts or item.parts[-1]["type"] != kind:
                out += self._part_done(item) + self._add_part(item, kind)
            content_index = len(item.parts) - 1
            part = item.parts[-1]
            at = {"item_id": item.id, "output_index": item.index, "content_index": content_index}
            if kind == "output_text":
                part["text"] = text_of(part["text"]) + d.text
                return out + self._event("response.output_text.delta", **at, delta=d.text, logprobs=[])
            part["refusal"] = text_of(part["refusal"]) + d.text
            return out + self._event("response.refusal.delta", **at, delta=d.text)
        if isinstance(d, ToolStart):
            out = self._close("completed") + self._add_item("function_call", call_id=d.call_id, name=d.name)
            assert self._open is not None
            self._calls[d.slot] = self._open
            return out
        if isinstance(d, ToolArgs):
            item = self._calls[d.slot]
            item.arguments += d.arguments
            return self._event(
                "response.function_call_arguments.delta", item_id=item.id, output_index=item.index, delta=d.arguments
            )
        return b""

    def _add_item(self, kind: str, call_id: str = "", name: str = "") -> bytes:
        index = len(self._items)
        prefix = "msg" if kind == "message" else "fc"
        item = _Item(index=index, id=f"{prefix}_{self._base}_{index}", kind=kind, call_id=call_id, name=name)
        self._items.append(item)
        self._open = item
        return self._event("response.output_item.added", output_index=index, item=self._item_json(item))

    def _add_part(self, item: _Item, kind: str) -> bytes:
        part: JsonObj = _text_part("") if kind == "output_text" else {"type": "refusal", "refusal": ""}
        item.parts.append(part)
        at = {"item_id": item.id, "output_index": item.index, "content_index": len(item.parts) - 1}
        return self._event("response.content_part.added", **at, part=dict(part))

    def _part_done(self, item: _Item) -> bytes:
        if not item.parts:
            return b""
        part = item.parts[-1]
        at = {"item_id": item.id, "output_index": item.index, "content_index": len(item.parts) - 1}
        if part["type"] == "output_text":
            out = self._event("response.output_text.done", **at, text=part["text"], logprobs=[])
        else:
            out = self._event("response.refusal.done", **at, refusal=part["refusal"])
        return out + self._event("response.content_part.done", **at, part=dict(part))

    def _close(self, status: str) -> bytes:
        item, self._open = self._open, None
        if item is None:
            return b""
        # only the last item can be cut short; a call the model finished is complete either way
        item.status = status if item.kind == "message" else "completed"
        if item.kind == "message":
            out = self._part_done(item)
        else:
            out = self._event(
                "response.function_call_arguments.done",
                item_id=item.id,
                output_index=item.index,
                name=item.name,
                arguments=item.arguments,
            )
        return out + self._event("response.output_item.done", output_index=item.index, item=self._item_json(item))
