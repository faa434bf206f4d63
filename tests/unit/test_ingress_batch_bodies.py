"""The batch endpoints that take a JSON body (`POST /v1/batches`, `POST /v1/messages/batches`) stop reading it
at their limit: a client streaming an endless body gets 413 instead of growing ingress's memory."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from starlette.requests import Request
from starlette.responses import Response

from services.ingress.anthropic_batches import AnthropicBatches
from services.ingress.batches import BatchEndpoints
from shared.auth import Authenticator
from shared.config import hash_key, parse_config
from shared.directory import Directory
from shared.subjects import Subjects

KEY = "sk-unit-batch-bodies"
CONFIG = parse_config(
    f"""
keys:
  - {{id: k, sha256: {hash_key(KEY)}}}
providers:
  mock: {{kind: mock}}
models:
  - name: mock-1
    deployments: [{{provider: mock, model: mock-1}}]
batch: {{max_file_bytes: 65536}}
"""
)
CHUNK = b"x" * 4096


def endless(path: str) -> tuple[Request, list[int]]:
    """A request whose body never ends (no content-length), and how many chunks ingress read of it."""
    read = [0]

    async def receive() -> dict[str, object]:
        read[0] += 1
        assert read[0] < 10_000, "the body was read far past any limit"
        return {"type": "http.request", "body": CHUNK, "more_body": True}

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"authorization", f"Bearer {KEY}".encode()), (b"content-type", b"application/json")],
        "query_string": b"",
    }
    return Request(scope, receive), read


def endpoints() -> BatchEndpoints:
    auth = Authenticator(Directory.with_static(CONFIG.key_hashes()))

    def no_bus() -> object:
        raise AssertionError("nothing reaches the batch service")

    return BatchEndpoints(CONFIG, Subjects("unit"), auth, no_bus)  # type: ignore[arg-type]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("surface", ["openai", "anthropic"])
async def test_an_endless_body_is_refused_at_the_limit(surface: str) -> None:
    batches = endpoints()
    handler: Callable[[Request], Awaitable[Response]]
    if surface == "openai":
        path, limit = "/v1/batches", 64 * 1024
        handler = next(r for r in batches.routes() if r.path == path and "POST" in (r.methods or ())).endpoint
    else:
        path, limit = "/v1/messages/batches", CONFIG.batch.max_file_bytes
        handler = next(r for r in AnthropicBatches(batches).routes() if r.path == path and "POST" in (r.methods or ()))
        handler = handler.endpoint
    request, read = endless(path)
    response = await handler(request)
    assert response.status_code == 413
    assert read[0] * len(CHUNK) <= limit + 2 * len(CHUNK)
