"""Azure OpenAI: the OpenAI wire format addressed by deployment, with Azure's key header and content filters.

Requests go to `{api_base}/openai/deployments/{deployment}/chat/completions?api-version=…` (the target's
`model` is the deployment name, `api_version` defaults to `DEFAULT_API_VERSION`), or to the version-less
v1 API (`{api_base}/openai/v1/chat/completions`, deployment in the body's `model`) when `api_version` is
"v1" or the base already ends in `/openai/v1`. The key travels as `api-key`; a deployment that uses
Entra ID sets an `authorization` header instead. API versions before 2024-09-01-preview do not know
`stream_options` or `max_completion_tokens`: the first is not sent to them and the second is renamed.

Answers are OpenAI-shaped and pass through as bytes. Azure's extras are tolerated: streams open with a
chunk that has empty `choices` and only `prompt_filter_results`, and the asynchronous content filter
adds annotation chunks whose choices carry no `delta`; neither means anything to an OpenAI client, so
both are dropped (an annotation that carries a finish reason is kept, with an empty delta). Errors with
code `content_filter` (prompt blocked) become ContentPolicyViolation, `context_length_exceeded`
ContextLengthExceeded.
"""

from __future__ import annotations

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
from services.router.providers.openai import OpenAIStream
from services.router.sse import SseEvent
from shared.errors import (
    ContentPolicyViolation,
    ContextLengthExceeded,
    GatewayError,
    NotFoundError,
    error_for_status,
)
from shared.schemas.openai import ChatCompletionRequest, EmbeddingsRequest, StreamOptions, to_json

DEFAULT_API_VERSION = "2024-10-21"
_STREAM_OPTIONS_SINCE = "2024-09-01"  # stream_options and max_completion_tokens arrived in 2024-09-01-preview
_ENC = msgspec.json.Encoder()


def _v1(target: Target) -> bool:
    return target.api_version == "v1" or target.api_base.rstrip("/").endswith("/openai/v1")


def _url(target: Target, operation: str) -> str:
    base = target.api_base.rstrip("/")
    if _v1(target):
        return f"{base}/{operation}" if base.endswith("/openai/v1") else f"{base}/openai/v1/{operation}"
    version = target.api_version or DEFAULT_API_VERSION
    return f"{base}/openai/deployments/{target.model}/{operation}?api-version={version}"


def _modern(target: Target) -> bool:
    """Whether the API version knows `stream_options` / `max_completion_tokens` (dated versions compare as dates)."""
    version = target.api_version or DEFAULT_API_VERSION
    return _v1(target) or not version[:4].isdigit() or version[:10] >= _STREAM_OPTIONS_SINCE


def _headers(target: Target) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if target.api_key:
        headers["api-key"] = target.api_key
    headers.update(target.headers)
    return headers


def _error(status: int, data: bytes, headers: Mapping[str, str]) -> GatewayError:
    try:
        payload = msgspec.json.decode(data)
    except msgspec.DecodeError:
        payload = None
    err = payload.get("error", payload) if isinstance(payload, dict) else None
    retry_after = retry_after_seconds(headers)
    if not isinstance(err, dict):
        return error_for_status(status or 502)(f"Azure OpenAI returned HTTP {status}.", retry_after=retry_after)
    code = str(err.get("code") or "")
    message = f"Azure OpenAI: {err.get('message') or f'HTTP {status}'}"
    param = err.get("param") if isinstance(err.get("param"), str) else None
    inner = err.get("innererror")
    inner_code = inner.get("code") if isinstance(inner, dict) else None
    if code == "content_filter" or inner_code == "ResponsibleAIPolicyViolation":
        return ContentPolicyViolation(message, param=param)
    if code == "context_length_exceeded":
        return ContextLengthExceeded(message, param=param or "messages")
    if code == "DeploymentNotFound":
        return NotFoundError(message, param="model")
    return error_for_status(status or 502)(message, param=param, retry_after=retry_after)


class AzureStream(OpenAIStream):
    """OpenAI chunks as bytes, minus Azure's filter-only chunks; errors in the stream keep their meaning."""

    def feed(self, event: SseEvent) -> list[JsonObj | bytes]:
        data = event.data
        if data.startswith(b'{"error"'):
            raise _error(0, data, {})
        if not data or data == b"[DONE]" or b'"delta"' in data:
            return super().feed(event)
        # no delta anywhere: the prompt-filter chunk, an async-filter annotation, or the usage chunk
        try:
            obj = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return super().feed(event)
        if not isinstance(obj, dict):
            return []
        if obj.get("usage"):
            return super().feed(event)
        kept: list[object] = []
        for choice in obj.get("choices") or []:
            if isinstance(choice, dict) and choice.get("finish_reason"):
                kept.append({**choice, "delta": {}})
        if not kept:
            return []
        obj["choices"] = kept
        return super().feed(SseEvent(event.event, _ENC.encode(obj)))


class AzureTranslator(Translator):
    kind = "azure"
    supports_embeddings = True

    def chat_request(self, req: ChatCompletionRequest, target: Target, *, stream: bool) -> UpstreamRequest:
        out = msgspec.structs.replace(with_params(req, target), model=target.model)
        modern = _modern(target)
        if not modern and out.max_completion_tokens is not None:
            if out.max_tokens is None:
                out.max_tokens = out.max_completion_tokens
            out.max_completion_tokens = None
        if stream:
            out.stream = True
            if modern:
                # usage is always requested so every stream is accounted; ingress drops it if unasked
                opts = out.stream_options
                out.stream_options = StreamOptions(
                    include_usage=True, include_obfuscation=opts.include_obfuscation if opts else None
                )
            else:
                out.stream_options = None
        return UpstreamRequest("POST", _url(target, "chat/completions"), _headers(target), to_json(out))

    def parse_chat(self, data: bytes, target: Target, response_id: str, created: int) -> JsonObj | bytes:
        return data

    def open_stream(self, target: Target, response_id: str, created: int) -> ChatStream:
        return AzureStream(target, response_id, created)

    def embeddings_request(self, req: EmbeddingsRequest, target: Target) -> UpstreamRequest:
        out = msgspec.structs.replace(with_params(req, target), model=target.model)
        return UpstreamRequest("POST", _url(target, "embeddings"), _headers(target), to_json(out))

    def parse_embeddings(self, data: bytes, target: Target) -> JsonObj | bytes:
        return data

    def parse_error(self, status: int, data: bytes, headers: Mapping[str, str]) -> GatewayError:
        return _error(status, data, headers)
