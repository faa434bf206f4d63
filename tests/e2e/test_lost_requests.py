"""No hangs: a slow provider keeps a request alive through router heartbeats, while a request whose
router replica dies gets a 502 after the heartbeat timeout instead of waiting for the full timeout."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from gatehouse.launcher import Stack
from gatehouse.natsserver import free_port
from shared.config import hash_key
from tests.emulators import openai as openai_emu
from tests.servers import serve_in_thread

pytestmark = pytest.mark.e2e
KEY = "sk-e2e-lost"


@pytest.fixture
def emulator() -> Iterator[tuple[Starlette, str]]:
    """An OpenAI emulator: the test sees a request reach it, i.e. the router has it in hand."""
    app = openai_emu.create_app()
    with serve_in_thread(app) as url:
        yield app, url


@pytest.fixture
def slow_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emulator: tuple[Starlette, str]) -> Iterator[Stack]:
    monkeypatch.setenv("GATEHOUSE_ROUTER_HEARTBEAT_S", "0.5")
    monkeypatch.setenv("E2E_LOST_EMU_KEY", openai_emu.API_KEY)
    config = tmp_path / "gatehouse.yaml"
    config.write_text(
        f"""
server: {{host: 127.0.0.1, port: 0, heartbeat_timeout_s: 2, first_reply_timeout_s: 120}}
keys: [{{id: k, sha256: {hash_key(KEY)}}}]
providers:
  slow: {{kind: mock, mock_latency_ms: 4000}}
  stuck: {{kind: openai, api_base: "{emulator[1]}/v1", api_key_env: E2E_LOST_EMU_KEY}}
models:
  - {{name: slow, deployments: [{{provider: slow, model: m, timeout_s: 90}}]}}
  - {{name: stuck, deployments: [{{provider: stuck, model: slow-60000, timeout_s: 90}}]}}
"""
    )
    stack = Stack(
        config=config, data_dir=tmp_path / "data", host="127.0.0.1", port=free_port(), prefix="lost", nats_port=0
    )
    stack.start()
    try:
        assert stack.wait_ready(90), "stack did not become ready"
        yield stack
    finally:
        stack.stop()


def post(stack: Stack, model: str) -> httpx.Response:
    return httpx.post(
        f"{stack.ingress_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": model, "messages": [{"role": "user", "content": "are you there"}]},
        timeout=60,
    )


def test_heartbeats_keep_a_slow_request_alive_and_a_lost_one_fails_fast(
    slow_stack: Stack, emulator: tuple[Starlette, str]
) -> None:
    started = time.monotonic()
    ok = post(slow_stack, "slow")
    assert ok.status_code == 200, ok.text  # 4 s of provider time, twice the 2 s heartbeat timeout
    assert time.monotonic() - started >= 4.0

    result: dict[str, httpx.Response] = {}
    waiting = threading.Thread(target=lambda: result.setdefault("r", post(slow_stack, "stuck")))
    waiting.start()
    deadline = time.monotonic() + 30
    while not emulator[0].state.requests:  # the provider has it: the request is in the router's hands now
        assert waiting.is_alive() and time.monotonic() < deadline, "the request never reached the provider"
        time.sleep(0.01)
    router = next(c for c in slow_stack.children if c.service == "router")
    assert router.process is not None
    killed_at = time.monotonic()
    router.process.send_signal(signal.SIGKILL)
    waiting.join(30)
    assert not waiting.is_alive()
    lost = result["r"]
    assert lost.status_code == 502
    assert lost.json()["error"]["message"].startswith("The gateway lost this request")
    assert time.monotonic() - killed_at < 10  # not the 120 s first-reply timeout
