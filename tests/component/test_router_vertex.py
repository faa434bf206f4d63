"""Gemini on Vertex AI through the dispatcher and the production transport: a service account's key file found
through Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS), its JWT exchanged for an access
token by google-auth at the emulated token endpoint, and Vertex's generateContent over real HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette

from services.router.core import build_routes
from services.router.dispatch import Dispatcher
from services.router.providers.registry import translators
from services.router.signing import request_signers
from services.router.upstream import Upstream
from shared.config import ConfigError, GatehouseConfig
from shared.schemas.chat import Caller, ChatRequest, Chunk, ChunkBatch, Reply, Result
from tests.emulators import vertex
from tests.servers import serve_in_thread
from tests.unit.providers.roundtrip import canonical


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Starlette, str, Path]]:
    app = vertex.create_app()
    with serve_in_thread(app) as url:
        info, public = vertex.service_account(f"{url}/token")
        app.state.public_key = public
        key_file = tmp_path_factory.mktemp("gcp") / "sa.json"
        key_file.write_text(json.dumps(info))
        yield app, url, key_file


def config(url: str) -> GatehouseConfig:
    provider = {"kind": "vertex", "project": vertex.PROJECT, "region": vertex.LOCATION, "api_base": url}
    return GatehouseConfig.model_validate(
        {
            "providers": {"gcp": provider},
            "models": [{"name": "g", "deployments": [{"provider": "gcp", "model": "gemini-2.5-flash"}]}],
        }
    )


async def ask(url: str, upstream: Upstream, body: dict[str, object]) -> list[Reply]:
    dispatcher = Dispatcher(build_routes(config(url), {}), upstream, translators())
    replies: list[Reply] = []

    async def send(reply: Reply) -> None:
        replies.append(reply)

    stream = bool(body.get("stream"))
    req = ChatRequest(
        request_id="r", api="chat", model="g", chat=canonical({"model": "g", **body}), caller=Caller(key_id="k"),
        stream=stream, include_usage=stream, deadline=time.time() + 20,
    )  # fmt: skip
    await dispatcher.serve(req, send)
    return replies


async def test_service_account_token_then_generate_content_plain_and_streamed(
    emulator: tuple[Starlette, str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, url, key_file = emulator
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    upstream = Upstream(signers=request_signers(config(url), {}))
    try:
        hello = {"messages": [{"role": "user", "content": "hello vertex"}]}
        result = (await ask(url, upstream, hello))[-1]
        assert isinstance(result, Result) and result.error is None, result.outcome.attempts
        assert json.loads(result.body)["choices"][0]["message"]["content"] == "Emulated Gemini reply to: hello vertex"
        seen = app.state.requests[-1]
        path = f"/v1/projects/{vertex.PROJECT}/locations/{vertex.LOCATION}/publishers/google/models/gemini-2.5-flash"
        assert seen["path"] == f"{path}:generateContent"
        assert seen["headers"]["authorization"].startswith("Bearer ya29.emulated-")
        replies = await ask(url, upstream, {**hello, "stream": True})
        text = "".join(
            (json.loads(d)["choices"] or [{"delta": {}}])[0]["delta"].get("content") or ""
            for r in replies
            if isinstance(r, Chunk | ChunkBatch)
            for d in ([r.data] if isinstance(r, Chunk) else r.items)
        )
        assert text == "Emulated Gemini reply to: hello vertex"
        assert len(app.state.tokens) == 1  # the token is reused until it nears expiry
    finally:
        await upstream.aclose()


def test_vertex_needs_a_project_and_google_credentials(
    emulator: tuple[Starlette, str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, url, _ = emulator
    bad = GatehouseConfig.model_validate(
        {
            "providers": {"gcp": {"kind": "vertex"}},
            "models": [{"name": "g", "deployments": [{"provider": "gcp", "model": "m"}]}],
        }
    )
    with pytest.raises(ConfigError, match="provider 'gcp': kind vertex needs `project`"):
        build_routes(bad, {})
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="no Google credentials found"):
        request_signers(config(url), {})
