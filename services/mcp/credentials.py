"""Upstream credentials the gateway holds for MCP servers: static headers read from the environment, and OAuth
client-credentials tokens fetched and refreshed here. Neither ever reaches a client or the bus."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Mapping

import httpx2

from shared.mcp_config import McpServerConfig, OAuthClientCredentials

# a token is renewed this long before it expires, so no call goes out with one about to lapse
EXPIRY_MARGIN_S = 30.0


class CredentialError(Exception):
    """A credential the config names cannot be had (a variable unset, the token endpoint refused)."""


def static_headers(cfg: McpServerConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """The configured headers with their values from the environment (a missing variable is an error)."""
    headers: dict[str, str] = {}
    for header, env in cfg.headers_from_env.items():
        value = environ.get(env)
        if not value:
            raise CredentialError(f"environment variable {env} (header {header}) is not set")
        headers[header] = value
    return headers


def child_env(cfg: McpServerConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment variables a stdio server is given, each from the gateway's environment."""
    env: dict[str, str] = {}
    for name, source in cfg.env_from.items():
        value = environ.get(source)
        if value is None:
            raise CredentialError(f"environment variable {source} (for {name}) is not set")
        env[name] = value
    return env


class ClientCredentials(httpx2.Auth):
    """OAuth 2 client-credentials grant as an httpx2 auth flow: a token is fetched when there is none or it
    is about to expire, and once more when the server answers 401 (revoked early)."""

    requires_response_body = True

    def __init__(self, cfg: OAuthClientCredentials, environ: Mapping[str, str]) -> None:
        secret = environ.get(cfg.client_secret_env)
        if not secret:
            raise CredentialError(f"environment variable {cfg.client_secret_env} (OAuth client secret) is not set")
        self._cfg = cfg
        self._secret = secret
        self._token = ""
        self._expires_at = 0.0

    def _token_request(self) -> httpx2.Request:
        form = {"grant_type": "client_credentials", "client_id": self._cfg.client_id, "client_secret": self._secret}
        if self._cfg.scope:
            form["scope"] = self._cfg.scope
        if self._cfg.audience:
            form["audience"] = self._cfg.audience
        return httpx2.Request("POST", self._cfg.token_url, data=form, headers={"accept": "application/json"})

    def _store(self, response: httpx2.Response) -> None:
        if response.status_code != 200:
            raise CredentialError(f"the token endpoint answered {response.status_code}")
        try:
            body = response.json()
            token = str(body["access_token"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CredentialError("the token endpoint's answer has no access_token") from exc
        self._token = token
        self._expires_at = time.monotonic() + float(body.get("expires_in", 3600)) - EXPIRY_MARGIN_S

    async def async_auth_flow(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        if not self._token or time.monotonic() >= self._expires_at:
            response = yield self._token_request()
            await response.aread()  # a streaming request's flow gets its answers unread
            self._store(response)
        request.headers["authorization"] = f"Bearer {self._token}"
        response = yield request
        if response.status_code == 401:
            renewed = yield self._token_request()
            await renewed.aread()
            self._store(renewed)
            request.headers["authorization"] = f"Bearer {self._token}"
            yield request
