"""Two router replicas of one running stack share what they learn about deployments: a provider's 429 with
Retry-After, met by whichever replica served it, is respected by both within a second (no request of
either reaches the deployment afterwards), and both report it in `GET /admin/v1/deployments`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from gatehouse.launcher import Stack
from gatehouse.natsserver import free_port
from shared.config import hash_key
from tests.emulators import faults
from tests.servers import serve_in_thread

pytestmark = pytest.mark.e2e
KEY = "sk-e2e-replicas-routing"


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Stack, Starlette]]:
    app = faults.create_app()
    monkeypatch.setenv("E2E_FAULTS_KEY", faults.API_KEY)
    with serve_in_thread(app) as url:
        config = tmp_path / "gatehouse.yaml"
        config.write_text(
            f"""
server: {{host: 127.0.0.1, port: 0, request_timeout_s: 30}}
keys: [{{id: k, sha256: {hash_key(KEY)}}}]
providers:
  faults: {{kind: openai, api_base: {url}/v1, api_key_env: E2E_FAULTS_KEY, passthrough: false}}
models:
  - name: m
    deployments: [{{provider: faults, model: dead}}, {{provider: faults, model: alive}}]
"""
        )
        s = Stack(config=config, data_dir=tmp_path / "data", host="127.0.0.1", port=free_port(), prefix="rrep",
                  nats_port=0, replicas={"router": 2})  # fmt: skip
        s.start()
        try:
            assert s.wait_ready(90), "stack did not become ready"
            yield s, app
        finally:
            s.stop()


def fleet(s: Stack, http: httpx.Client) -> dict[str, object]:
    admin = s.admin_key_file.read_text().strip()
    r = http.get(f"{s.ingress_url}/admin/v1/deployments", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_a_cooldown_learnt_by_one_router_replica_is_respected_by_the_other(stack: tuple[Stack, Starlette]) -> None:
    s, app = stack
    faults.script(app, "dead", ["429:30"], default="fail:500")
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=30) as http:
        deadline = time.monotonic() + 30
        while len(fleet(s, http)["replicas"]) < 2:  # type: ignore[arg-type]
            assert time.monotonic() < deadline, "the second router replica never answered"
            time.sleep(0.2)
        first = http.post(f"{s.ingress_url}/v1/chat/completions", headers=auth, json=body)
        learnt = time.monotonic()
        assert first.status_code == 200 and first.headers["x-gatehouse-deployment"] == "faults/alive"
        while True:
            rows = {d["deployment"]: d for d in fleet(s, http)["deployments"]}  # type: ignore[union-attr]
            states = rows["faults/dead"]["replicas"]
            if list(states.values()) == ["cooldown", "cooldown"]:
                break
            assert time.monotonic() - learnt < 1.0, f"not shared within a second: {states}"
            time.sleep(0.02)
        served = len(app.state.served["dead"])
        answers = [http.post(f"{s.ingress_url}/v1/chat/completions", headers=auth, json=body) for _ in range(30)]
        assert [a.status_code for a in answers] == [200] * 30
        assert {a.headers["x-gatehouse-deployment"] for a in answers} == {"faults/alive"}
    assert len(app.state.served["dead"]) == served  # neither replica called it again
