"""Stages scale on their own: two router and two guard replicas share the load through their queue
groups, and losing one replica does not stop the service."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gatehouse.launcher import Stack
from gatehouse.natsserver import free_port

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(
        config=REPO / "deploy" / "gatehouse.yaml",
        data_dir=tmp_path / "data",
        host="127.0.0.1",
        port=free_port(),
        prefix="replicas",
        nats_port=0,
        replicas={"router": 2, "guard": 2},
    )
    stack.start()
    try:
        assert stack.wait_ready(90), "stack did not become ready"
        yield stack
    finally:
        stack.stop()


def chat(client: httpx.Client, stack: Stack) -> int:
    r = client.post(
        f"{stack.ingress_url}/v1/chat/completions",
        headers={"Authorization": "Bearer sk-gatehouse-dev"},
        json={"model": "mock-1", "messages": [{"role": "user", "content": "replicas"}]},
    )
    return r.status_code


def test_two_replicas_per_stage_and_one_lost(replicated: Stack) -> None:
    routers = [c for c in replicated.children if c.service == "router"]
    guards = [c for c in replicated.children if c.service == "guard"]
    assert len(routers) == 2 and len(guards) == 2
    with httpx.Client(timeout=20) as client:
        assert [chat(client, replicated) for _ in range(20)] == [200] * 20
        # one replica of each stage dies; the queue groups carry on with the other
        for child in (routers[0], guards[0]):
            assert child.process is not None
            child.process.send_signal(signal.SIGKILL)
            child.process.wait(10)
        assert [chat(client, replicated) for _ in range(20)] == [200] * 20
