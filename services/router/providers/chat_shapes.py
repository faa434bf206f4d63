"""Reading the canonical OpenAI chat request (for the non-OpenAI translators) and writing completions and chunks.

The request arrives typed (`shared.schemas.openai`, decoded once at ingress); the helpers here answer
what every translator asks of it (messages, function tools, tool choice, stop, output limit) and turn
what a provider cannot serve into a clear 400. Answers are built as plain dicts the router encodes.
"""

from __future__ import annotations

import hashlib

import msgspec

from services.router.providers.base import JsonObj
from shared.errors import InvalidRequestError
from shared.schemas.openai import (
    ChatCompletionRequest,
    ContentPart,
    EmbeddingsRequest,
    FunctionCall,
    FunctionDef,
    Message,
    ToolCall,
)

_JSON = msgspec.json.Encoder()
_DECODE = msgspec.json.Decoder()


class _Named(msgspec.Struct):
    name: str | None = None


class _ChoiceTool(msgspec.Struct):
    function: _Named | None = None


class _AllowedTools(msgspec.Struct):
    mode: str | None = None
    tools: list[_ChoiceTool] | None = None


class _ToolChoice(msgspec.Struct):
    """`tool_choice` in its object forms: a named function, or `allowed_tools`."""

    type: str | None = None
    function: _Named | None = None
    allowed_tools: _AllowedTools | None = None


def messages_of(req: ChatCompletionRequest) -> list[Message]:
    """The request's messages; none at all, or a legacy `function` message, is the client's 400."""
    if not req.messages:
        raise InvalidRequestError("'messages' must be a non-empty array.", param="messages")
    for i, m in enumerate(req.messages):
        if m.role == "function":
            raise InvalidRequestError(
                "Legacy 'function' messages are not supported for this provider; use 'tools' and 'tool' messages.",
                param=f"messages[{i}].role",
            )
    return req.messages


def function_of(call: ToolCall, where: str) -> FunctionCall:
    """The function a tool call calls; other (custom) tool calls have no equivalent at these providers."""
    if call.function is None:
        raise InvalidRequestError(
            f"{where}: only function tool calls are supported for this provider.", param=f"{where}.function"
        )
    return call.function


def tools_of(req: ChatCompletionRequest) -> list[FunctionDef]:
    """The function tools offered; other tool types have no equivalent at these providers."""
    if req.functions is not None:
        raise InvalidRequestError(
            "Legacy 'functions' are not supported for this provider; use 'tools'.", param="functions"
        )
    out: list[FunctionDef] = []
    for i, tool in enumerate(req.tools or []):
        if tool.type not in (None, "function") or tool.function is None:
            raise InvalidRequestError(
                f"Tool type {tool.type!r} is not supported for this provider; only 'function' tools are.",
                param=f"tools[{i}].type",
            )
        out.append(tool.function)
    return out


def tool_choice_of(req: ChatCompletionRequest) -> tuple[str, list[str]]:
    """(mode, function names): mode is auto | none | required; names restrict which functions may be called."""
    choice = req.tool_choice
    if choice is None:
        return "auto", []
    if isinstance(choice, str):
        if choice not in {"auto", "none", "required"}:
            raise InvalidRequestError(f"Invalid 'tool_choice': {choice!r}.", param="tool_choice")
        return choice, []
    try:
        typed = msgspec.convert(choice, _ToolChoice)
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(f"Invalid 'tool_choice': {exc}", param="tool_choice") from exc
    if typed.type == "function" and typed.function is not None and typed.function.name is not None:
        return "required", [typed.function.name]
    allowed = typed.allowed_tools
    if typed.type == "allowed_tools" and allowed is not None:
        names = [t.function.name for t in allowed.tools or [] if t.function is not None and t.function.name]
        return ("required" if allowed.mode == "required" else "auto"), names
    raise InvalidRequestError("Invalid 'tool_choice'.", param="tool_choice")


def text_of(content: str | list[ContentPart] | None) -> str:
    """The text of a message's content (text parts joined; other parts ignored)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text or "" for p in content if p.type == "text")


def data_url(url: str) -> tuple[str, str] | None:
    """(mime type, base64 data) of a `data:` URL, or None for any other URL."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        raise InvalidRequestError("Only base64 data URLs are supported for inline media.", param="messages")
    return head[: -len(";base64")] or "application/octet-stream", data


def stop_list(req: ChatCompletionRequest) -> list[str] | None:
    stop = req.stop
    return [stop] if isinstance(stop, str) else stop


def max_tokens_of(req: ChatCompletionRequest) -> int | None:
    """The client's output limit, under either name (`max_completion_tokens` first)."""
    value = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if value is not None and value < 1:
        raise InvalidRequestError("'max_tokens' must be a positive integer.", param="max_tokens")
    return value


def json_arguments(arguments: str | None, where: str) -> dict[str, object]:
    """A tool call's `arguments` string as the JSON object providers want."""
    if arguments is None or not arguments.strip():
        return {}
    try:
        value = _DECODE.decode(arguments)
    except msgspec.DecodeError as exc:
        raise InvalidRequestError(f"{where}: 'arguments' is not valid JSON.", param=where) from exc
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{where}: 'arguments' must be a JSON object.", param=where)
    return value


def dumps(value: object) -> str:
    return _JSON.encode(value).decode()


def tool_call_id(response_id: str, n: int) -> str:
    """An id for a tool call the provider did not name; unique per response."""
    return f"call_{response_id.removeprefix('chatcmpl-')[-20:]}_{n}"


def short_hash(text: str, size: int = 9) -> str:
    """`size` base-62 characters derived from `text` (the same text always gives the same id)."""
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    n = int.from_bytes(hashlib.sha256(text.encode()).digest()[:12], "big")
    out = []
    for _ in range(size):
        n, r = divmod(n, 62)
        out.append(alphabet[r])
    return "".join(out)


def usage(prompt: int, completion: int, *, cached: int = 0, reasoning: int = 0, total: int | None = None) -> JsonObj:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion if total is None else total,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def completion(
    response_id: str, created: int, model: str, choices: list[JsonObj], usage_obj: JsonObj | None
) -> JsonObj:
    out: JsonObj = {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage_obj is not None:
        out["usage"] = usage_obj
    return out


def choice(
    index: int,
    text: str,
    tool_calls: list[JsonObj],
    finish_reason: str,
    reasoning: str = "",
) -> JsonObj:
    message: JsonObj = {"role": "assistant", "content": text if text or not tool_calls else None, "refusal": None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}


class ChunkMaker:
    """Builds `chat.completion.chunk` dicts for one response (the fixed fields made once)."""

    __slots__ = ("created", "model", "response_id")

    def __init__(self, response_id: str, created: int, model: str) -> None:
        self.response_id = response_id
        self.created = created
        self.model = model

    def delta(self, delta: JsonObj, index: int = 0, finish_reason: str | None = None) -> JsonObj:
        return {
            "id": self.response_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }

    def usage(self, usage_obj: JsonObj) -> JsonObj:
        return {
            "id": self.response_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage_obj,
        }


def embedding_inputs(req: EmbeddingsRequest) -> list[str]:
    """`input` as a list of strings; token-id inputs have no equivalent at these providers."""
    raw = req.input
    if isinstance(raw, str):
        return [raw]
    texts = [x for x in raw if isinstance(x, str)]
    if raw and len(texts) == len(raw):
        return texts
    if raw:
        raise InvalidRequestError("This provider only embeds text; token-id inputs are not supported.", param="input")
    raise InvalidRequestError("'input' must be a non-empty string or array of strings.", param="input")


def embeddings_list(vectors: list[list[float]], model: str, prompt_tokens: int) -> JsonObj:
    """An OpenAI embeddings response (always float arrays: the OpenAI SDK accepts them whatever it asked for)."""
    data: list[JsonObj] = [{"object": "embedding", "index": i, "embedding": vec} for i, vec in enumerate(vectors)]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
