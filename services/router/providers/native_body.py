"""Pass-through framing shared by the same-protocol providers (pure): a client's body with only its model
replaced, and an upstream server-sent event written out again as it came."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from services.router.sse import SseEvent
from shared.schemas.chat import Usage

_TOP = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ENC = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Summary:
    """What the request record needs from a native answer: its usage and why it stopped (in the OpenAI
    `finish_reason` vocabulary, so records of every protocol group together)."""

    usage: Usage | None = None
    finish_reason: str = ""


def with_model(body: bytes, model: str, defaults: Mapping[str, object] | None = None) -> bytes:
    """`body` (a JSON object) with `model` set to the deployment's model id and `defaults` added where the
    client left a key out. Every other value goes out as the exact bytes the client sent (msgspec.Raw).

    Raises msgspec.DecodeError / ValidationError if the body is not a JSON object.
    """
    top = _TOP.decode(body)
    top["model"] = msgspec.Raw(_ENC.encode(model))
    for key, value in (defaults or {}).items():
        if key not in top:
            top[key] = msgspec.Raw(_ENC.encode(value))
    return _ENC.encode(top)


def params_for(params: Mapping[str, object], known: frozenset[str]) -> dict[str, object]:
    """The deployment's default params a protocol documents; the rest are named for another protocol (a
    deployment's params are written for the canonical chat form) and would be refused there."""
    return {k: v for k, v in params.items() if k in known}


def sse_frame(event: SseEvent) -> bytes:
    """The event as it goes on the wire again: its name and its data lines, then the blank line."""
    head = b"event: " + event.event.encode() + b"\n" if event.event else b""
    return head + b"".join(b"data: " + line + b"\n" for line in event.data.split(b"\n")) + b"\n"


def merge_header_lists(*values: str | None) -> str:
    """Comma-separated header values (e.g. `anthropic-beta` from the client and the deployment), each
    name once, in the order first seen."""
    seen: dict[str, None] = {}
    for value in values:
        for name in (value or "").split(","):
            if name.strip():
                seen.setdefault(name.strip(), None)
    return ",".join(seen)
