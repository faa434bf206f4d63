"""Gemini on Google Cloud Vertex AI (`…/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent`,
`:streamGenerateContent?alt=sse`); pure.

The request and answer bodies are the Gemini API's (providers/gemini.py does the translation); what
differs is where they go and how they are authorised: an OAuth 2 access token of a service account (or
any Application Default Credentials) as a bearer token, minted and refreshed by google-auth in
services/router/signing.py — the translator marks the request `sign=<provider>`. A provider with
`api_key_env` (Vertex AI express mode) sends its key as `x-goog-api-key` instead.
"""

from __future__ import annotations

import msgspec

from services.router.providers.base import Target, UpstreamRequest, with_params
from services.router.providers.gemini import GeminiTranslator
from services.router.providers.gemini_request import build_request
from shared.config import ConfigError
from shared.schemas.openai import ChatCompletionRequest

_ENC = msgspec.json.Encoder()


def api_base(project: str | None, location: str | None, host: str | None = None) -> str:
    """The publisher path of one project and location (`host` overrides the regional endpoint)."""
    if not project:
        raise ConfigError("kind vertex needs `project` (the Google Cloud project)")
    loc = location or "us-central1"
    root = host or (
        "https://aiplatform.googleapis.com" if loc == "global" else f"https://{loc}-aiplatform.googleapis.com"
    )
    return f"{root.rstrip('/')}/v1/projects/{project}/locations/{loc}/publishers/google"


class VertexTranslator(GeminiTranslator):
    kind = "vertex"
    supports_embeddings = False  # Vertex embeds through :predict, another shape

    def chat_request(self, req: ChatCompletionRequest, target: Target, *, stream: bool) -> UpstreamRequest:
        action = ":streamGenerateContent?alt=sse" if stream else ":generateContent"
        headers = {"content-type": "application/json", **target.headers}
        sign = ""
        if target.api_key:
            headers["x-goog-api-key"] = target.api_key
        else:
            sign = target.provider
        url = f"{target.api_base.rstrip('/')}/models/{target.model}{action}"
        body = _ENC.encode(build_request(with_params(req, target), target.model))
        return UpstreamRequest("POST", url, headers, body, sign=sign)
