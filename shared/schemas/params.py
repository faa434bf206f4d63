"""A deployment's default request params (`params:` in the config) merged under a client's canonical request.

The client's values win. A documented field the client left unset takes the param, converted to the
field's type; an undocumented param joins `extra` unless the client sent the same key. `max_tokens` and
`max_completion_tokens` are one parameter under two names: a client's limit under either keeps the
deployment's default under the other out (otherwise a translator that prefers one name would let the
default beat the client). A param that does not fit its field is a `ValueError` naming it, raised by
`check_params` when the config is loaded and again by `with_defaults` for a target built any other way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import msgspec

from shared.schemas.openai import CHAT_FIELDS, EMBEDDINGS_FIELDS, ChatCompletionRequest, EmbeddingsRequest

Request = TypeVar("Request", ChatCompletionRequest, EmbeddingsRequest)

_SAME = {"max_tokens": "max_completion_tokens", "max_completion_tokens": "max_tokens"}
# what each request itself says (the router sets `stream` from how the client asked): never a default
_RESERVED = frozenset({"model", "messages", "input", "stream", "extra"})


def _optional_fields(cls: type[msgspec.Struct], required: frozenset[str]) -> type[msgspec.Struct]:
    """A Struct with the request's optional fields, all defaulting to None: the type params are checked with."""
    fields = [(f.name, f.type, None) for f in msgspec.structs.fields(cls) if f.name not in required | {"extra"}]
    return msgspec.defstruct(f"{cls.__name__}Params", fields, kw_only=True)


_CHAT_PARAMS = _optional_fields(ChatCompletionRequest, frozenset({"model", "messages"}))
_EMBEDDINGS_PARAMS = _optional_fields(EmbeddingsRequest, frozenset({"model", "input"}))


def _typed(params: Mapping[str, object], known: frozenset[str], cls: type[msgspec.Struct]) -> msgspec.Struct:
    reserved = sorted(_RESERVED.intersection(params))
    if reserved:
        raise ValueError(f"{reserved[0]!r} cannot be a default param: the request itself sets it")
    try:
        return msgspec.convert({k: v for k, v in params.items() if k in known}, cls)
    except msgspec.ValidationError as exc:  # the message names the param: "... - at `$.temperature`"
        raise ValueError(f"a default param does not fit its field: {exc}") from None


def check_params(params: Mapping[str, object]) -> None:
    """Raise ValueError for a param that cannot be a default of a chat or an embeddings request."""
    _typed(params, CHAT_FIELDS, _CHAT_PARAMS)
    _typed(params, EMBEDDINGS_FIELDS, _EMBEDDINGS_PARAMS)


def with_defaults(req: Request, params: Mapping[str, object]) -> Request:
    """A copy of `req` with `params` filled in under the client's values (`req` itself when there are none).

    Raises ValueError for a param that does not fit its field.
    """
    if not params:
        return req
    known = CHAT_FIELDS if isinstance(req, ChatCompletionRequest) else EMBEDDINGS_FIELDS
    typed = _typed(params, known, _CHAT_PARAMS if isinstance(req, ChatCompletionRequest) else _EMBEDDINGS_PARAMS)
    fills: dict[str, object] = {}
    for name in params:
        if name in known:
            if getattr(req, name) is None and getattr(req, _SAME.get(name, name)) is None:
                fills[name] = getattr(typed, name)
    extra = {k: v for k, v in params.items() if k not in known and k not in req.extra}
    if extra:
        fills["extra"] = {**req.extra, **extra}
    return msgspec.structs.replace(req, **fills) if fills else req
