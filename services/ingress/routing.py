"""What a client may say about routing (pure): a strategy for this request, and its own deadline.

- `x-gatehouse-route: <strategy>` (or `"gatehouse_route": "<strategy>"` in a chat completions body) picks
  the routing strategy of this request, where the key's policy allows it (`route_override` on a config
  key, or in the limits of a virtual key or a level above it); otherwise 403.
- `x-gatehouse-timeout: <seconds>` (or the `x-stainless-timeout` the OpenAI and Anthropic SDKs send)
  shortens the request's deadline: the router dispatches nothing after it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import msgspec

from shared.errors import InvalidRequestError, PermissionDeniedError
from shared.routing_config import STRATEGIES
from shared.schemas.openai import ChatCompletionRequest

ROUTE_HEADER = "x-gatehouse-route"
ROUTE_FIELD = "gatehouse_route"
TIMEOUT_HEADERS = ("x-gatehouse-timeout", "x-stainless-timeout")


def route_choice(
    headers: Mapping[str, str], chat: ChatCompletionRequest | None, allowed: bool
) -> tuple[str, ChatCompletionRequest | None]:
    """(the strategy the client chose or '', the chat body without the gatehouse field)."""
    chosen = headers.get(ROUTE_HEADER, "").strip()
    if chat is not None and ROUTE_FIELD in chat.extra:
        value = chat.extra[ROUTE_FIELD]
        chat = msgspec.structs.replace(chat, extra={k: v for k, v in chat.extra.items() if k != ROUTE_FIELD})
        chosen = chosen or (value if isinstance(value, str) else "")
    if not chosen:
        return "", chat
    if chosen not in STRATEGIES:
        raise InvalidRequestError(
            f"Unknown routing strategy {chosen[:40]!r}; use one of {', '.join(STRATEGIES)}.", param=ROUTE_FIELD
        )
    if not allowed:
        raise PermissionDeniedError("This key may not choose a routing strategy (route_override is not allowed).")
    return chosen, chat


def client_deadline(headers: Mapping[str, str], received_at: float, server_timeout_s: float) -> float:
    """The request's deadline: the server's timeout, or sooner if the client says it waits less."""
    deadline = received_at + server_timeout_s
    for name in TIMEOUT_HEADERS:
        raw = headers.get(name)
        if not raw:
            continue
        try:
            seconds = float(raw)
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds > 0:
            deadline = min(deadline, received_at + seconds)
    return deadline
