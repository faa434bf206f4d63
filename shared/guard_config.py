"""Guardrail policy configuration (the `guardrails:` section of the config file)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicyConfig(_Strict):
    """One named policy: which scanners run and what they do on a hit."""

    description: str = ""
    max_prompt_chars: int = Field(default=0, ge=0, description="0 means no limit beyond the server's body limit")


class GuardrailsConfig(_Strict):
    default_policy: str = "default"
    policies: dict[str, PolicyConfig] = Field(default_factory=lambda: {"default": PolicyConfig()})
