"""Provider kind → translator instance."""

from __future__ import annotations

from services.router.providers.anthropic import AnthropicTranslator
from services.router.providers.azure import AzureTranslator
from services.router.providers.base import Translator
from services.router.providers.bedrock import BedrockTranslator
from services.router.providers.cohere import CohereTranslator
from services.router.providers.gemini import GeminiTranslator
from services.router.providers.mistral import MistralTranslator
from services.router.providers.openai import MockTranslator, OpenAITranslator
from services.router.providers.vertex import VertexTranslator


def translators() -> dict[str, Translator]:
    found: list[Translator] = [
        OpenAITranslator(),
        MockTranslator(),
        AzureTranslator(),
        AnthropicTranslator(),
        GeminiTranslator(),
        MistralTranslator(),
        CohereTranslator(),
        BedrockTranslator(),
        VertexTranslator(),
    ]
    return {t.kind: t for t in found}
