"""OpenAI and every OpenAI-compatible server (vLLM, Ollama, Groq, Together, DeepSeek, …): a near pass-through.

The body goes upstream as the client sent it (deployment params under it, model id replaced), and the
answer comes back as bytes untouched, so nothing the provider added is lost in translation.
"""

from __future__ import annotations

import msgspec

from services.router.providers.base import (
    ChatStream,
    JsonObj,
    SseEvent,
    Target,
    Translator,
    UpstreamRequest,
    merge_params,
    openai_usage,
)
from shared.errors import UpstreamError

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

    def chat_request(self, body: JsonObj, target: Target, *, stream: bool) -> UpstreamRequest:
        payload = merge_params(body, target)
        if stream:
            payload["stream"] = True
            opts = payload.get("stream_options")
            # usage is always requested so every streamed request is accounted; ingress drops the
            # usage chunk again when the client did not ask for it
            payload["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
        return UpstreamRequest(
            "POST", f"{target.api_base.rstrip('/')}/chat/completions", _headers(target), _ENC.encode(payload)
        )

    def parse_chat(self, data: bytes, target: Target, response_id: str, created: int) -> JsonObj | bytes:
        return data

    def open_stream(self, target: Target, response_id: str, created: int) -> ChatStream:
        return OpenAIStream(target, response_id, created)

    def embeddings_request(self, body: JsonObj, target: Target) -> UpstreamRequest:
        return UpstreamRequest(
            "POST",
            f"{target.api_base.rstrip('/')}/embeddings",
            _headers(target),
            _ENC.encode(merge_params(body, target)),
        )

    def parse_embeddings(self, data: bytes, target: Target) -> JsonObj | bytes:
        return data
