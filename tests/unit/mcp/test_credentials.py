"""Upstream credentials held by the mcp stage: headers and child env from the environment, and OAuth
client-credentials tokens fetched, reused, renewed when they expire or a server answers 401."""

from __future__ import annotations

import urllib.parse

import httpx2
import pytest

from services.mcp import credentials
from services.mcp.credentials import ClientCredentials, CredentialError, child_env, static_headers
from shared.mcp_config import McpServerConfig, OAuthClientCredentials

OAUTH = OAuthClientCredentials(
    token_url="https://auth.test/token", client_id="gh", client_secret_env="SECRET", scope="s"
)


class Upstream:
    """A token endpoint and an MCP endpoint that accepts only the newest token (revoking the others)."""

    def __init__(self) -> None:
        self.issued = 0
        self.valid = ""
        self.forms: list[dict[str, str]] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/token":
            self.forms.append(dict(urllib.parse.parse_qsl(request.content.decode())))
            self.issued += 1
            self.valid = f"token-{self.issued}"
            return httpx2.Response(200, json={"access_token": self.valid, "expires_in": 3600})
        if request.headers.get("authorization") != f"Bearer {self.valid}":
            return httpx2.Response(401)
        return httpx2.Response(200, json={"ok": True})


async def test_a_token_is_fetched_once_reused_and_renewed_on_401() -> None:
    upstream = Upstream()
    auth = ClientCredentials(OAUTH, {"SECRET": "s3cret"})
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(upstream), auth=auth) as http:
        for _ in range(3):
            assert (await http.post("https://mcp.test/mcp", json={})).status_code == 200
        assert upstream.issued == 1
        assert upstream.forms[0] == {
            "grant_type": "client_credentials",
            "client_id": "gh",
            "client_secret": "s3cret",
            "scope": "s",
        }
        upstream.valid = "revoked"  # the server no longer takes the token: one new token, the call retried
        assert (await http.post("https://mcp.test/mcp", json={})).status_code == 200
        assert upstream.issued == 2


async def test_an_expired_token_is_renewed_before_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    upstream = Upstream()
    auth = ClientCredentials(OAUTH, {"SECRET": "s3cret"})
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(upstream), auth=auth) as http:
        await http.post("https://mcp.test/mcp", json={})
        now = credentials.time.monotonic()
        monkeypatch.setattr(credentials.time, "monotonic", lambda: now + 3600)
        await http.post("https://mcp.test/mcp", json={})
    assert upstream.issued == 2


async def test_a_refused_token_request_is_a_credential_error() -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(400, json={"error": "invalid_client"})

    auth = ClientCredentials(OAUTH, {"SECRET": "wrong"})
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(refuse), auth=auth) as http:
        with pytest.raises(CredentialError, match="answered 400"):
            await http.post("https://mcp.test/mcp", json={})


def test_missing_variables_are_named_and_values_never_shown() -> None:
    with pytest.raises(CredentialError, match="SECRET"):
        ClientCredentials(OAUTH, {})
    cfg = McpServerConfig(transport="http", url="https://x.test/mcp", headers_from_env={"X-Key": "CRM_KEY"})
    assert static_headers(cfg, {"CRM_KEY": "v"}) == {"X-Key": "v"}
    with pytest.raises(CredentialError, match="CRM_KEY"):
        static_headers(cfg, {})
    stdio = McpServerConfig(transport="stdio", command=["srv"], env_from={"TOKEN": "FILES_TOKEN"})
    assert child_env(stdio, {"FILES_TOKEN": "t", "OTHER": "x"}) == {"TOKEN": "t"}
