"""What the guard's unit tests build requests from: a chat request of key `k`, and a config redacting emails."""

from __future__ import annotations

from shared.config import parse_config
from shared.schemas.chat import Caller, ChatRequest, NativeRequest
from shared.schemas.openai import chat_from_builtins

# key `k` under policy `redact`: emails redacted, nothing else (the shipped default policy stays the default)
REDACT_EMAIL = parse_config(
    """
keys:
  - {id: k, env: K, policy: redact}
guardrails:
  policies:
    redact:
      pii: {action: redact, entities: [email]}
"""
)


def request(body: dict[str, object], policy: str = "", native: NativeRequest | None = None) -> ChatRequest:
    """A chat request of key `k` (model `m`) with `body`'s fields, under `policy` if given."""
    return ChatRequest(
        request_id="r1",
        api="chat",
        model="m",
        chat=chat_from_builtins({"model": "m", **body}),
        native=native,
        caller=Caller(key_id="k", policy=policy),
    )
