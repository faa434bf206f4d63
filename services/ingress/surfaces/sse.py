"""Server-sent event framing for the surfaces whose events carry a name (Anthropic, OpenAI Responses)."""

from __future__ import annotations

import msgspec

_ENC = msgspec.json.Encoder()


def sse(event: str, data: object) -> bytes:
    """One `event:`/`data:` frame; msgspec writes compact JSON, so the data never spans lines."""
    return b"event: " + event.encode() + b"\ndata: " + _ENC.encode(data) + b"\n\n"
