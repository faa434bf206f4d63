"""Who is calling: a bearer key → its entitlement (keys are compared by SHA-256, never stored in clear).

Keys come from the directory mirror (virtual keys from KV, and the config file's static keys), so
authentication never waits on the bus. An unknown, disabled, expired or rotated-out key gets the same
401: a caller learns nothing about which keys exist.
"""

from __future__ import annotations

import time

from shared.config import hash_key
from shared.directory import Directory, Entitlement
from shared.errors import AuthenticationError


def bearer_token(authorization: str | None, x_api_key: str | None = None) -> str:
    """The key from `Authorization: Bearer …` or `x-api-key` (Anthropic's header); '' when neither."""
    token = ""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            token = value.strip()
    if not token and x_api_key:
        token = x_api_key.strip()
    return token


class Authenticator:
    def __init__(self, directory: Directory) -> None:
        self.directory = directory

    def authenticate(
        self, authorization: str | None, x_api_key: str | None = None, now: float | None = None
    ) -> Entitlement:
        """The entitlement of the key in the headers, else AuthenticationError."""
        token = bearer_token(authorization, x_api_key)
        if not token:
            raise AuthenticationError(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.", code="missing_api_key"
            )
        key = self.directory.key_for(hash_key(token), time.time() if now is None else now)
        if key is None:
            raise AuthenticationError(f"Incorrect API key provided: {_mask(token)}.")
        return self.directory.entitlement(key)


def _mask(token: str) -> str:
    return token[:3] + "*" * 4 + token[-4:] if len(token) > 10 else "****"
