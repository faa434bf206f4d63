"""OpenAI and every OpenAI-compatible server (vLLM, Ollama, Groq, Together, DeepSeek, …): a near pass-through.

The body goes upstream as the client sent it (deployment params under it, model id replaced), and the
answer comes back as bytes untouched, so nothing the provider added is lost in translation.
"""

from __future__ import annotations

import msgspec

from services.router.providers.base import (
    ChatStream,
    JsonObj,
    Target,
    Translator,
    UpstreamRequest,
    openai_usage,
    with_params,
)
from services.router.sse import SseEvent
from shared.errors import UpstreamError
from shared.schemas.openai import ChatCompletionRequest, EmbeddingsRequest, StreamOptions, to_json

_ENC = msgspec.json.Encoder()


def _headers(target: Target) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if target.api_key:
        headers["authorization"] = f"Bearer {target.api_key}"
    headers.update(target.headers)
    return headers


class OpenAIStream(ChatStream):
    """Chunks pass through as bytes; usage and finish reason are read on the way."""

    _done = False

    def feed(self, event: SseEvent) -> list[JsonObj | bytes]:
        data = event.data
        if data == b"[DONE]":
            self._done = True
            return []
        if not data:
            return []
        if b'"usage"' in data:
            usage = openai_usage(data)
            if usage is not None:
                self.usage = usage
        if b'"finish_reason":"' in data or b'"finish_reason": "' in data:
            try:
                obj = msgspec.json.decode(data)
            except msgspec.DecodeError:
                obj = None
            if isinstance(obj, dict):
                for choice in obj.get("choices") or []:
                    if isinstance(choice, dict) and choice.get("finish_reason"):
                        self.finish_reason = str(choice["finish_reason"])
        if data.startswith(b'{"error"'):
            err = msgspec.json.decode(data).get("error", {})
            raise UpstreamError(str(err.get("message", "upstream stream error")))
        return [data]

    def done(self) -> bool:
        return self._done


class OpenAITranslator(Translator):
    kind = "openai"
    supports_embeddings = True

    def chat_request(self, req: ChatCompletionRequest, target: Target, *, stream: bool) -> UpstreamRequest:
        out = msgspec.structs.replace(with_params(req, target), model=target.model)
        if stream:
            # usage is always requested so every streamed request is accounted; the router drops the
            # usage chunk again when the client did not ask for it
            opts = req.stream_options
            out.stream = True
            out.stream_options = StreamOptions(
                include_usage=True, include_obfuscation=opts.include_obfuscation if opts else None
            )
        return UpstreamRequest(
            "POST", f"{target.api_base.rstrip('/')}/chat/completions", _headers(target), to_json(out)
        )

    def parse_chat(self, data: bytes, target: Target, response_id: str, created: int) -> JsonObj | bytes:
        return data

    def open_stream(self, target: Target, response_id: str, created: int) -> ChatStream:
        return OpenAIStream(target, response_id, created)

    def embeddings_request(self, req: EmbeddingsRequest, target: Target) -> UpstreamRequest:
        out = msgspec.structs.replace(with_params(req, target), model=target.model)
        return UpstreamRequest("POST", f"{target.api_base.rstrip('/')}/embeddings", _headers(target), to_json(out))

    def parse_embeddings(self, data: bytes, target: Target) -> JsonObj | bytes:
        return data


class MockTranslator(OpenAITranslator):
    """The built-in mock provider speaks the OpenAI wire format (providers/mock.py serves it in process)."""

    kind = "mock"
