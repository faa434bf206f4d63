"""Pure request validation: raw JSON body → the canonical request Struct, or an OpenAI-style 400."""

from __future__ import annotations

import re

import msgspec

from shared.errors import InvalidRequestError
from shared.schemas.openai import ChatCompletionRequest, EmbeddingsRequest, decode_chat, decode_embeddings

_PATH = re.compile(r"at `\$\.?([^`]*)`")
_ENUM = re.compile(r"Invalid enum value '([^']*)'")


# the most choices (`n`) a chat request may ask for, as OpenAI documents it
MAX_CHOICES = 128


def too_deep() -> InvalidRequestError:
    return InvalidRequestError("We could not parse the JSON body of your request: it is nested too deeply.")


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
    enum = _ENUM.search(message)
    if enum and param and param.endswith("role"):
        return InvalidRequestError(
            f"Invalid value: '{enum.group(1)}'. Supported values are: 'system', 'developer', 'user', 'assistant', "
            "'tool' and 'function'.",
            param=param,
        )
    where = f" at '{param}'" if param else ""
    return InvalidRequestError(f"Invalid request{where}: {message}.", param=param)


def chat_request(body: bytes) -> ChatCompletionRequest:
    """A chat body → the canonical request (decoded once, here), or the OpenAI-style 400 that names the field."""
    try:
        req = decode_chat(body)
    except msgspec.MsgspecError as exc:
        raise invalid_body(exc) from exc
    except RecursionError as exc:  # JSON nested past the decoder's depth (e.g. in `tools` or `response_format`)
        raise too_deep() from exc
    check_chat(req)
    return req


def check_chat(req: ChatCompletionRequest) -> None:
    """What the types alone do not say: a model name, at least one message, stream options with a stream,
    output limits and a number of choices in range."""
    if not req.model:
        raise InvalidRequestError("Missing required parameter: 'model'.", param="model")
    if not req.messages:
        raise InvalidRequestError("Invalid 'messages': empty array. Expected at least one message.", param="messages")
    if req.stream_options is not None and not req.stream:
        raise InvalidRequestError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
        )
    # the output limits and the number of choices size a budget reservation (shared/admission.py): a zero or
    # negative one would reserve nothing or less than nothing
    for name, value, low, high in (
        ("max_tokens", req.max_tokens, 1, None),
        ("max_completion_tokens", req.max_completion_tokens, 1, None),
        ("n", req.n, 1, MAX_CHOICES),
    ):
        if value is not None and value < low:
            raise InvalidRequestError(
                f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, but got {value} instead.",
                param=name,
            )
        if value is not None and high is not None and value > high:
            raise InvalidRequestError(
                f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, but got {value} instead.",
                param=name,
            )


def include_usage(req: ChatCompletionRequest) -> bool:
    return bool(req.stream and req.stream_options and req.stream_options.include_usage)


def embeddings_request(body: bytes) -> EmbeddingsRequest:
    try:
        req = decode_embeddings(body)
    except msgspec.MsgspecError as exc:
        raise invalid_body(exc) from exc
    except RecursionError as exc:
        raise too_deep() from exc
    if not req.model:
        raise InvalidRequestError("Missing required parameter: 'model'.", param="model")
    if (isinstance(req.input, list) and not req.input) or req.input == "":
        raise InvalidRequestError("'input' cannot be empty.", param="input")
    return req
