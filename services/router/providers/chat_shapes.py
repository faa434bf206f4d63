"""The OpenAI chat shapes the non-OpenAI translators read (request messages, tools) and write (completions, chunks).

Requests are converted into typed msgspec Structs once, so a malformed message becomes a clear 400 here
rather than a provider error later; answers are built as plain dicts the router encodes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import msgspec

from services.router.providers.base import JsonObj
from shared.errors import InvalidRequestError

_JSON = msgspec.json.Encoder()
_DECODE = msgspec.json.Decoder()


class ImageUrl(msgspec.Struct):
    url: str
    detail: str | None = None


class InputAudio(msgspec.Struct):
    data: str
    format: str = "wav"


class FileRef(msgspec.Struct):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class ContentPart(msgspec.Struct, kw_only=True):
    type: str
    text: str | None = None
    image_url: ImageUrl | None = None
    input_audio: InputAudio | None = None
    file: FileRef | None = None
    refusal: str | None = None


class FunctionCall(msgspec.Struct):
    name: str
    arguments: str = ""


class ToolCall(msgspec.Struct, kw_only=True):
    id: str
    function: FunctionCall
    type: str = "function"
    # Google's OpenAI convention for carrying a Gemini thought signature on a tool call
    extra_content: dict[str, object] | None = None


class Message(msgspec.Struct, kw_only=True):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    prefix: bool | None = None


class FunctionDef(msgspec.Struct, kw_only=True):
    name: str
    description: str | None = None
    parameters: dict[str, object] | None = None
    strict: bool | None = None


class Tool(msgspec.Struct, kw_only=True):
    type: str = "function"
    function: FunctionDef | None = None


def messages_of(body: Mapping[str, object]) -> list[Message]:
    """The request's messages as Structs; a malformed message is the client's 400."""
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise InvalidRequestError("'messages' must be a non-empty array.", param="messages")
    try:
        messages = msgspec.convert(raw, list[Message])
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(f"Invalid 'messages': {exc}", param="messages") from exc
    for i, m in enumerate(messages):
        if m.role == "function":
            raise InvalidRequestError(
                "Legacy 'function' messages are not supported for this provider; use 'tools' and 'tool' messages.",
                param=f"messages[{i}].role",
            )
    return messages


def tools_of(body: Mapping[str, object]) -> list[FunctionDef]:
    """The function tools offered; other tool types have no equivalent at these providers."""
    if body.get("functions") is not None:
        raise InvalidRequestError(
            "Legacy 'functions' are not supported for this provider; use 'tools'.", param="functions"
        )
    raw = body.get("tools")
    if raw is None:
        return []
    try:
        tools = msgspec.convert(raw, list[Tool])
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(f"Invalid 'tools': {exc}", param="tools") from exc
    out: list[FunctionDef] = []
    for i, tool in enumerate(tools):
        if tool.type != "function" or tool.function is None:
            raise InvalidRequestError(
                f"Tool type {tool.type!r} is not supported for this provider; only 'function' tools are.",
                param=f"tools[{i}].type",
            )
        out.append(tool.function)
    return out


def tool_choice_of(body: Mapping[str, object]) -> tuple[str, list[str]]:
    """(mode, function names): mode is auto | none | required; names restrict which functions may be called."""
    choice = body.get("tool_choice")
    if choice is None:
        return "auto", []
    if isinstance(choice, str):
        if choice not in {"auto", "none", "required"}:
            raise InvalidRequestError(f"Invalid 'tool_choice': {choice!r}.", param="tool_choice")
        return choice, []
    if isinstance(choice, dict):
        kind = choice.get("type")
        fn = choice.get("function")
        if kind == "function" and isinstance(fn, dict) and isinstance(fn.get("name"), str):
            return "required", [fn["name"]]
        allowed = choice.get("allowed_tools")
        if kind == "allowed_tools" and isinstance(allowed, dict):
            names = [
                t["function"]["name"]
                for t in allowed.get("tools") or []
                if isinstance(t, dict) and isinstance(t.get("function"), dict) and "name" in t["function"]
            ]
            return ("required" if allowed.get("mode") == "required" else "auto"), names
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


def stop_list(body: Mapping[str, object]) -> list[str] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return [str(s) for s in stop]
    raise InvalidRequestError("'stop' must be a string or an array of strings.", param="stop")


def max_tokens_of(body: Mapping[str, object]) -> int | None:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidRequestError("'max_tokens' must be a positive integer.", param="max_tokens")
    return value


def json_arguments(arguments: str, where: str) -> dict[str, object]:
    """A tool call's `arguments` string as the JSON object providers want."""
    if not arguments.strip():
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


def embedding_inputs(body: Mapping[str, object]) -> list[str]:
    """`input` as a list of strings; token-id inputs have no equivalent at these providers."""
    raw = body.get("input")
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        return [str(x) for x in raw]
    if isinstance(raw, list) and raw:
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
