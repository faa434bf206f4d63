"""Who is calling: bearer key → caller (keys are compared by SHA-256, never stored in clear)."""

from __future__ import annotations

from collections.abc import Mapping

from shared.config import KeyConfig, hash_key
from shared.errors import AuthenticationError
from shared.schemas.chat import Caller


class KeyRing:
    def __init__(self, keys: Mapping[str, KeyConfig]) -> None:
        self._keys = dict(keys)
        self._callers = {
            digest: Caller(key_id=k.id, team=k.team, project=k.project, user=k.user, policy=k.policy)
            for digest, k in keys.items()
        }

    def authenticate(self, authorization: str | None, x_api_key: str | None = None) -> tuple[Caller, KeyConfig]:
        """The caller for an `Authorization: Bearer …` (or `x-api-key`) header, else AuthenticationError."""
        token = ""
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer":
                token = value.strip()
        if not token and x_api_key:
            token = x_api_key.strip()
        if not token:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.", code="missing_api_key"
            )
        digest = hash_key(token)
        caller = self._callers.get(digest)
        if caller is None:
            raise AuthenticationError(f"Incorrect API key provided: {_mask(token)}.")
        return caller, self._keys[digest]


def _mask(token: str) -> str:
    return token[:3] + "*" * 4 + token[-4:] if len(token) > 10 else "****"


def allows(key: KeyConfig, model: str, canonical: str) -> bool:
    return not key.models or model in key.models or canonical in key.models
