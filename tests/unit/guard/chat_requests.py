"""What the guard's unit tests build requests from: a chat request of key `k`, and configs putting `k` under one
policy (REDACT_EMAIL: emails redacted)."""

from __future__ import annotations

import msgspec

from shared.config import GatehouseConfig, parse_config
from shared.schemas.chat import Caller, ChatRequest, NativeRequest
from shared.schemas.openai import chat_from_builtins


def policy_config(name: str, *rules: str) -> GatehouseConfig:
    """Key `k` under policy `name`, whose `rules` are one YAML line each (nothing else: the shipped default policy
    stays the default)."""
    lines = "".join(f"      {rule}\n" for rule in rules)
    return parse_config(f"keys:\n  - {{id: k, env: K, policy: {name}}}\nguardrails:\n  policies:\n    {name}:\n{lines}")


REDACT_EMAIL = policy_config("redact", "pii: {action: redact, entities: [email]}")


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


def translated(
    protocol: str, body: dict[str, object], chat: dict[str, object], gaps: list[str], policy: str = ""
) -> ChatRequest:
    """A request of another protocol as ingress hands it on: `body` as sent, `chat` its translation (model `m`),
    `gaps` what did not translate."""
    native = NativeRequest(protocol=protocol, body=msgspec.json.encode(body), untranslatable=gaps)
    return request({**chat, "model": "m"}, policy, native)
