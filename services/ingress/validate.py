"""Pure request validation: raw JSON body → the fields ingress needs, or an OpenAI-style 400."""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgspec

from shared.errors import InvalidRequestError

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_PATH = re.compile(r"at `\$\.?([^`]*)`")


class _StreamOptions(msgspec.Struct):
    include_usage: bool | None = False


class _Message(msgspec.Struct):
    role: str


class _ChatBody(msgspec.Struct):
    model: str
    messages: list[_Message]
    stream: bool | None = False
    stream_options: _StreamOptions | None = None


class _EmbeddingsBody(msgspec.Struct):
    model: str
    input: str | list[str | int | list[int]]


@dataclass(frozen=True, slots=True)
class ChatFields:
    model: str
    stream: bool
    include_usage: bool


_CHAT = msgspec.json.Decoder(_ChatBody)
_EMBED = msgspec.json.Decoder(_EmbeddingsBody)


def invalid_body(exc: msgspec.MsgspecError) -> InvalidRequestError:
    """The 400 for a body msgspec refused: unparsable JSON, or the field that is missing or wrong."""
    text = str(exc)
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        return InvalidRequestError(
            f"We could not parse the JSON body of your request. The body must be valid JSON ({text.rstrip('.')})."
        )
    match = _PATH.search(text)
    param = match.group(1) if match else None
    message = _PATH.sub("", text).strip().rstrip(" -")
    missing = re.match(r"Object missing required field `([^`]+)`", message)
    if missing:
        field = f"{param}.{missing.group(1)}" if param else missing.group(1)
        return InvalidRequestError(
            f"Missing required parameter: '{field}'.", param=field, code="missing_required_parameter"
        )
    where = f" at '{param}'" if param else ""
    return InvalidRequestError(f"Invalid request{where}: {message}.", param=param)


def chat_fields(body: bytes) -> ChatFields:
    try:
        parsed = _CHAT.decode(body)
    except msgspec.MsgspecError as exc:
        raise invalid_body(exc) from exc
    if not parsed.model:
        raise InvalidRequestError("Missing required parameter: 'model'.", param="model")
    if not parsed.messages:
        raise InvalidRequestError("Invalid 'messages': empty array. Expected at least one message.", param="messages")
    for i, m in enumerate(parsed.messages):
        if m.role not in _ROLES:
            raise InvalidRequestError(
                f"Invalid value: '{m.role}'. Supported values are: 'system', 'developer', 'user', 'assistant', "
                "'tool' and 'function'.",
                param=f"messages[{i}].role",
            )
    stream = bool(parsed.stream)
    include = bool(stream and parsed.stream_options and parsed.stream_options.include_usage)
    if parsed.stream_options is not None and not stream:
        raise InvalidRequestError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
        )
    return ChatFields(model=parsed.model, stream=stream, include_usage=include)


def embeddings_model(body: bytes) -> str:
    try:
        parsed = _EMBED.decode(body)
    except msgspec.MsgspecError as exc:
        raise invalid_body(exc) from exc
    if not parsed.model:
        raise InvalidRequestError("Missing required parameter: 'model'.", param="model")
    if (isinstance(parsed.input, list) and not parsed.input) or parsed.input == "":
        raise InvalidRequestError("'input' cannot be empty.", param="input")
    return parsed.model
