"""A key's usage policy applied to a request before it goes on (pure): default parameters filled in, and
numeric parameters held under their caps — clamped, or refused where the policy says so.

A cap on `max_tokens` covers both of OpenAI's names for it, and is also applied when the request names
no limit at all: a capped key's answers are bounded, and so is the worst case its budget reserves.
"""

from __future__ import annotations

import msgspec

from shared.errors import InvalidRequestError
from shared.governance import ParamPolicy
from shared.schemas.openai import ChatCompletionRequest
from shared.schemas.params import with_defaults

_MAX_TOKENS = ("max_completion_tokens", "max_tokens")


def apply_params(req: ChatCompletionRequest, policy: ParamPolicy) -> ChatCompletionRequest:
    """`req` with the policy's defaults under it and its caps enforced (a copy when anything changes)."""
    if policy.defaults:
        try:
            req = with_defaults(req, policy.defaults)
        except ValueError as exc:  # a default an admin set that does not fit: the gateway's mistake
            raise InvalidRequestError(f"The key's default parameters are invalid: {exc}") from exc
    if not policy.max:
        return req
    changes: dict[str, object] = {}
    for name, cap in policy.max.items():
        if name == "max_tokens":
            _cap_max_tokens(req, int(cap), policy.on_exceed, changes)
            continue
        value = getattr(req, name, None) if name in req.__struct_fields__ else req.extra.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= cap:
            continue
        if policy.on_exceed == "refuse":
            raise InvalidRequestError(f"'{name}' may be at most {cap:g} for this key.", param=name)
        clamped = int(cap) if isinstance(value, int) and float(cap).is_integer() else cap
        if name in req.__struct_fields__:
            changes[name] = clamped
        else:
            changes["extra"] = {**req.extra, name: clamped}
    return msgspec.structs.replace(req, **changes) if changes else req


def _cap_max_tokens(req: ChatCompletionRequest, cap: int, on_exceed: str, changes: dict[str, object]) -> None:
    asked = [(name, getattr(req, name)) for name in _MAX_TOKENS if getattr(req, name) is not None]
    if not asked:
        changes["max_completion_tokens"] = cap
        return
    for name, value in asked:
        if value > cap:
            if on_exceed == "refuse":
                raise InvalidRequestError(f"'{name}' may be at most {cap} for this key.", param=name)
            changes[name] = cap


def max_output(req: ChatCompletionRequest) -> int | None:
    """The output limit the request names (either of OpenAI's names), if any."""
    return req.max_completion_tokens or req.max_tokens


def with_max_output(req: ChatCompletionRequest, tokens: int) -> ChatCompletionRequest:
    """The request limited to `tokens` of output, under whichever name it used (max_completion_tokens if none)."""
    if req.max_tokens is not None and req.max_completion_tokens is None:
        return msgspec.structs.replace(req, max_tokens=tokens)
    return msgspec.structs.replace(req, max_completion_tokens=tokens, max_tokens=None)
