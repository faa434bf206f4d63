"""The contract every provider translator follows; translators are pure (no I/O, no clock, no env).

A provider module `services/router/providers/<name>.py` exposes a `Translator` subclass. The router
resolves a deployment into a `Target`, asks the translator for an `UpstreamRequest`, sends it with
httpx, and feeds the answer back: a whole body to `parse_chat`, or SSE events one by one to the
`ChatStream` that `open_stream` returned. Everything handed back to the router is OpenAI-shaped:
`chat.completion` dicts, `chat.completion.chunk` dicts, `GatewayError`s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from services.router.sse import SseEvent, SseParser
from shared.errors import GatewayError, InvalidRequestError, error_for_status
from shared.schemas.chat import Usage
from shared.schemas.openai import ChatCompletionRequest, CompletionUsage, EmbeddingsRequest
from shared.schemas.params import Request, with_defaults

JsonObj = dict[str, object]


@dataclass(frozen=True, slots=True)
class Target:
    """A resolved deployment: everything a translator needs to address one provider model."""

    provider: str  # provider name from the config
    kind: str  # wire format: openai, azure, anthropic, gemini, mistral, cohere, mock
    model: str  # the provider's model id
    api_base: str
    api_key: str | None = field(default=None, repr=False)  # never in a repr, a log line or an error
    api_version: str | None = None
    region: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, object] = field(default_factory=dict)  # default request params (client wins)


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    method: str
    url: str
    headers: dict[str, str] = field(repr=False)  # they carry the provider key
    body: bytes = field(repr=False)
    # the provider whose request signer must sign it just before it is sent (AWS SigV4: services/router/signing.py)
    sign: str = ""


class StreamParser(Protocol):
    """Bytes of a streamed answer in, events out: server-sent events (services.router.sse), or another
    framing a provider uses (Bedrock's AWS event stream: providers/eventstream.py)."""

    def feed(self, chunk: bytes) -> list[SseEvent]: ...

    def close(self) -> list[SseEvent]: ...


class ChatStream:
    """Turns one provider stream into OpenAI `chat.completion.chunk` dicts; one instance per response."""

    def __init__(self, target: Target, response_id: str, created: int) -> None:
        self.target = target
        self.response_id = response_id
        self.created = created
        self.usage: Usage | None = None
        self.finish_reason: str = ""

    def feed(self, event: SseEvent) -> list[JsonObj | bytes]:
        """Chunks for one upstream event (often none or one); bytes are chunk JSON already encoded.

        Raises GatewayError for an error the provider reports inside the stream.
        """
        raise NotImplementedError

    def finish(self) -> list[JsonObj | bytes]:
        """Chunks still owed when the upstream stream ended (e.g. a final usage chunk)."""
        return []

    def done(self) -> bool:
        """True once the provider signalled the end of the stream (e.g. `[DONE]`, `message_stop`)."""
        return False


class Translator:
    """Stateless translator of one wire format. Subclasses override what their provider supports."""

    kind: str = ""
    supports_embeddings: bool = False

    def chat_request(self, req: ChatCompletionRequest, target: Target, *, stream: bool) -> UpstreamRequest:
        raise NotImplementedError

    def parse_chat(self, data: bytes, target: Target, response_id: str, created: int) -> JsonObj | bytes:
        """A successful non-stream body → an OpenAI `chat.completion` (a dict, or its JSON as bytes)."""
        raise NotImplementedError

    def open_stream(self, target: Target, response_id: str, created: int) -> ChatStream:
        raise NotImplementedError

    def stream_parser(self, max_event_bytes: int) -> StreamParser:
        """How this provider frames a stream: server-sent events unless it says otherwise."""
        return SseParser(max_event_bytes)

    def embeddings_request(self, req: EmbeddingsRequest, target: Target) -> UpstreamRequest:
        raise InvalidRequestError(f"provider kind {self.kind!r} does not serve embeddings", param="model")

    def usage_of(self, completion: JsonObj | bytes) -> Usage | None:
        """Usage of a parsed completion (OpenAI `usage` object)."""
        return openai_usage(completion)

    def parse_embeddings(self, data: bytes, target: Target) -> JsonObj | bytes:
        raise NotImplementedError

    def parse_error(self, status: int, data: bytes, headers: Mapping[str, str]) -> GatewayError:
        """A non-2xx answer → the taxonomy error with the same meaning, Retry-After carried through."""
        message = f"upstream returned HTTP {status}"
        try:
            payload = msgspec.json.decode(data)
        except msgspec.DecodeError:
            payload = None
        if isinstance(payload, dict):
            err = payload.get("error", payload)
            if isinstance(err, dict) and isinstance(err.get("message"), str):
                message = err["message"]
            elif isinstance(err, str):
                message = err
            elif isinstance(payload.get("message"), str):
                message = payload["message"]
        return error_for_status(status)(message, retry_after=retry_after_seconds(headers))


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """`Retry-After` (seconds form) or `retry-after-ms`, as seconds."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return float(value)
        except ValueError:
            return None
    return None


def with_params(req: Request, target: Target) -> Request:
    """The request with the deployment's default params under it (the client's values win); `req` is not
    changed, so the next deployment of a failover starts from the client's request again."""
    try:
        return with_defaults(req, target.params)
    except ValueError as exc:  # the config check should have caught it: a deployment's mistake, not the client's
        raise GatewayError(f"Deployment {target.provider}/{target.model}: {exc}") from exc


class _WithUsage(msgspec.Struct):
    """Any OpenAI answer that may carry `usage`: a completion, a chunk, an embeddings list."""

    usage: CompletionUsage | None = None


_USAGE_DECODER = msgspec.json.Decoder(_WithUsage)


def openai_usage(obj: JsonObj | bytes) -> Usage | None:
    """The `usage` of an OpenAI completion or chunk (dict or JSON bytes), in gatehouse's form."""
    if isinstance(obj, bytes):
        if b'"usage"' not in obj:
            return None
        try:
            u = _USAGE_DECODER.decode(obj).usage
        except msgspec.DecodeError:
            return None
    else:
        raw = obj.get("usage")
        if not isinstance(raw, dict):
            return None
        u = msgspec.convert(raw, CompletionUsage)
    if u is None:
        return None
    prompt = u.prompt_tokens_details
    return Usage(
        input_tokens=u.prompt_tokens or 0,
        output_tokens=u.completion_tokens or 0,
        cached_tokens=(prompt.cached_tokens or 0) if prompt else 0,
        reasoning_tokens=((u.completion_tokens_details.reasoning_tokens or 0) if u.completion_tokens_details else 0),
        cache_write_tokens=(prompt.cache_write_tokens or 0) if prompt else 0,
    )
