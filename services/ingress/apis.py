"""The client-facing API surfaces ingress serves, each as: parse → canonical chat body, and writers
that turn the router's OpenAI-shaped replies back into that surface's responses, streams and errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import msgspec
from starlette.responses import JSONResponse, Response

from services.ingress.surfaces import anthropic_messages, openai_responses
from shared.errors import ErrorInfo, InvalidRequestError, error_body
from shared.schemas.chat import NativeRequest
from shared.schemas.openai import ChatCompletionRequest, EmbeddingsRequest, chat_from_builtins
from shared.validate import chat_request, check_chat, embeddings_request, include_usage, invalid_body

_JSON = msgspec.json.Encoder()
# protocol headers a client sends that a deployment of the same protocol must see
ANTHROPIC_HEADERS = ("anthropic-beta", "anthropic-version")
OPENAI_HEADERS = ("openai-beta",)
_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class Parsed:
    """A request in canonical (OpenAI chat/embeddings) form, with what ingress needs to route it."""

    model: str
    stream: bool
    include_usage: bool
    chat: ChatCompletionRequest | None = None
    embeddings: EmbeddingsRequest | None = None
    native: NativeRequest | None = None  # the client's own body, for a deployment of the same protocol
    original: dict[str, object] | None = None  # the surface's own request, where its responses echo it


class StreamWriter:
    """OpenAI chat SSE: each chunk as `data:`, `[DONE]` at the end, an error object if the stream broke."""

    def feed(self, chunk: bytes) -> bytes:
        return b"data: " + chunk + b"\n\n"

    def end(self) -> bytes:
        return _DONE

    def fail(self, info: ErrorInfo, *, finished: bool = True) -> bytes:
        out = b"data: " + _JSON.encode(error_body(info)) + b"\n\n"
        return out + _DONE if finished else out

    def fail_native(self, info: ErrorInfo, relayed: int) -> bytes:
        """The error that ends a stream relayed unchanged in the client's own protocol, after `relayed`
        events (see NativeRequest)."""
        return self.fail(info)


class Api:
    """OpenAI Chat Completions, the canonical form: everything passes through unchanged."""

    name = "chat"
    bus_api = "chat"

    def parse(self, raw: bytes, headers: Mapping[str, str]) -> Parsed:
        req = chat_request(raw)
        return Parsed(model=req.model, stream=bool(req.stream), include_usage=include_usage(req), chat=req)

    def completion(self, body: bytes, parsed: Parsed) -> bytes:
        return body

    def writer(self, parsed: Parsed) -> StreamWriter:
        return StreamWriter()

    def error(self, info: ErrorInfo, headers: dict[str, str]) -> Response:
        return JSONResponse(error_body(info), status_code=info.status, headers=headers)


class EmbeddingsApi(Api):
    name = "embeddings"
    bus_api = "embeddings"

    def parse(self, raw: bytes, headers: Mapping[str, str]) -> Parsed:
        req = embeddings_request(raw)
        return Parsed(model=req.model, stream=False, include_usage=False, embeddings=req)


def _canonical(chat: dict[str, object]) -> ChatCompletionRequest:
    """A surface's translation into chat form → the canonical Struct (a translation bug is a 400, not a 500)."""
    try:
        req = chat_from_builtins(chat)
    except msgspec.ValidationError as exc:
        raise invalid_body(exc) from exc
    check_chat(req)
    return req


def _native(
    protocol: str, raw: bytes, headers: Mapping[str, str], names: tuple[str, ...], untranslatable: list[str]
) -> NativeRequest:
    kept = {name: headers[name] for name in names if name in headers}
    return NativeRequest(protocol=protocol, body=raw, headers=kept, untranslatable=untranslatable)


def _object(raw: bytes) -> dict[str, object]:
    try:
        obj = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise invalid_body(exc) from exc
    if not isinstance(obj, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    return obj


_PROTOCOL_HEADERS = {"anthropic-messages": ANTHROPIC_HEADERS, "openai-responses": OPENAI_HEADERS}


def _surface(
    raw: bytes,
    headers: Mapping[str, str],
    original: dict[str, object],
    chat: dict[str, object],
    untranslatable: list[str],
    protocol: str,
) -> Parsed:
    """A non-chat surface's request: its chat translation (streams always ask for usage), and the client's
    own body for a deployment of the same protocol."""
    stream = bool(chat.get("stream"))
    if stream:
        chat["stream_options"] = {"include_usage": True}
    req = _canonical(chat)
    native = _native(protocol, raw, headers, _PROTOCOL_HEADERS[protocol], untranslatable)
    return Parsed(model=req.model, stream=stream, include_usage=stream, chat=req, native=native, original=original)


class _MessagesWriter(StreamWriter):
    def __init__(self, stream: anthropic_messages.MessagesStream) -> None:
        self._stream = stream

    def feed(self, chunk: bytes) -> bytes:
        return self._stream.feed(chunk)

    def end(self) -> bytes:
        return self._stream.finish()

    def fail(self, info: ErrorInfo, *, finished: bool = True) -> bytes:
        return self._stream.error(info)

    def fail_native(self, info: ErrorInfo, relayed: int) -> bytes:
        return anthropic_messages.error_event(info)


class _ResponsesWriter(StreamWriter):
    def __init__(self, stream: openai_responses.ResponsesStream) -> None:
        self._stream = stream

    def feed(self, chunk: bytes) -> bytes:
        return self._stream.feed(chunk)

    def end(self) -> bytes:
        return self._stream.finish()

    def fail(self, info: ErrorInfo, *, finished: bool = True) -> bytes:
        return self._stream.error(info)

    def fail_native(self, info: ErrorInfo, relayed: int) -> bytes:
        # every Responses event is numbered from 0: the error takes the next number
        return openai_responses.error_event(info, relayed)


class AnthropicMessagesApi(Api):
    """Anthropic `POST /v1/messages`, so the official anthropic SDK works with any backend model (and an
    Anthropic deployment gets the client's own body: services.router.native)."""

    name = "messages"

    def parse(self, raw: bytes, headers: Mapping[str, str]) -> Parsed:
        original = _object(raw)
        translation = anthropic_messages.translate(original)
        return _surface(raw, headers, original, translation.chat, translation.untranslatable, "anthropic-messages")

    def completion(self, body: bytes, parsed: Parsed) -> bytes:
        return _JSON.encode(anthropic_messages.from_chat(body, parsed.model))

    def writer(self, parsed: Parsed) -> StreamWriter:
        return _MessagesWriter(anthropic_messages.MessagesStream(parsed.model))

    def error(self, info: ErrorInfo, headers: dict[str, str]) -> Response:
        return JSONResponse(anthropic_messages.error_body(info), status_code=info.status, headers=headers)


class ResponsesApi(Api):
    """OpenAI Responses `POST /v1/responses`: the client's own body to an OpenAI deployment
    (services.router.native); text and function tools to any other, stream and non-stream."""

    name = "responses"

    def parse(self, raw: bytes, headers: Mapping[str, str]) -> Parsed:
        original = _object(raw)
        translation = openai_responses.translate(original)
        return _surface(raw, headers, original, translation.chat, translation.untranslatable, "openai-responses")

    def completion(self, body: bytes, parsed: Parsed) -> bytes:
        return _JSON.encode(openai_responses.from_chat(body, parsed.model, request=parsed.original))

    def writer(self, parsed: Parsed) -> StreamWriter:
        return _ResponsesWriter(openai_responses.ResponsesStream(parsed.model, request=parsed.original))


CHAT = Api()
EMBEDDINGS = EmbeddingsApi()
MESSAGES = AnthropicMessagesApi()
RESPONSES = ResponsesApi()
