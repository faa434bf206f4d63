"""Provider kind → translator instance."""

from __future__ import annotations

from services.router.providers.base import Translator
from services.router.providers.openai import OpenAITranslator


def translators() -> dict[str, Translator]:
    found: list[Translator] = [OpenAITranslator()]
    return {t.kind: t for t in found}
