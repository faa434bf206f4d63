"""Stages scale on their own: two router and two guard replicas share the load through their queue
groups (each request's record names the replicas that handled it, and both of each stage did), and losing
one replica does not stop the service: the survivor serves everything after."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gatehouse.launcher import Stack
from gatehouse.natsserver import free_port
from gatehouse.query import run_sql

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
GUARDS, ROUTERS = {"guard-0", "guard-1"}, {"router-0", "router-1"}  # the launcher's names for its replicas


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


def chat(client: httpx.Client, stack: Stack) -> str:
    """The request id of a successful chat request."""
    r = client.post(
        f"{stack.ingress_url}/v1/chat/completions",
        headers={"Authorization": "Bearer sk-gatehouse-dev"},
        json={"model": "mock-1", "messages": [{"role": "user", "content": "replicas"}]},
    )
    assert r.status_code == 200, r.text
    return r.headers["x-request-id"]


def served_by(stack: Stack, ids: list[str], timeout: float = 60.0) -> Counter[tuple[str, str]]:
    """(guard replica, router replica) → requests, from the records of `ids` (polled until all are in)."""
    assert stack.nats is not None
    listed = ", ".join(f"'{i}'" for i in ids)
    query = f"SELECT guard_replica, router_replica FROM requests WHERE request_id IN ({listed})"
    deadline = time.monotonic() + timeout
    while True:
        result = asyncio.run(run_sql(stack.nats.url, stack.prefix, query, 10, str(stack.admin_seed_file)))
        assert not result.error, result.error
        if len(result.rows) >= len(ids) or time.monotonic() > deadline:
            assert len(result.rows) == len(ids), result.rows
            return Counter((str(g), str(r)) for g, r in result.rows)
        time.sleep(0.3)


def children(stack: Stack) -> str:
    """Each replica's state and last log lines, for a failure message."""
    return "\n".join(
        f"--- {c.name} (exit {c.process.poll() if c.process else None}):\n{c.log_path.read_text()[-1500:]}"
        for c in stack.children
        if c.service in ("guard", "router")
    )


def test_two_replicas_per_stage_and_one_lost(replicated: Stack) -> None:
    routers = [c for c in replicated.children if c.service == "router"]
    guards = [c for c in replicated.children if c.service == "guard"]
    assert len(routers) == 2 and len(guards) == 2
    with httpx.Client(timeout=20) as client:
        # readiness needs one replica per stage; the second may still be starting on a busy machine, so
        # requests go in rounds until the records show every replica served (each round of 20 misses a
        # running replica with a chance of 2 in 2**20)
        before: Counter[tuple[str, str]] = Counter()
        deadline = time.monotonic() + 60
        while {g for g, _ in before} != GUARDS or {r for _, r in before} != ROUTERS:
            assert time.monotonic() < deadline, f"not every replica served: {before}\n{children(replicated)}"
            before += served_by(replicated, [chat(client, replicated) for _ in range(20)])
        assert set(before) <= {(g, r) for g in GUARDS for r in ROUTERS}, before
        # one replica of each stage dies; the queue groups carry on with the other
        for child in (routers[0], guards[0]):
            assert child.process is not None
            child.process.send_signal(signal.SIGKILL)
            child.process.wait(10)
        after = served_by(replicated, [chat(client, replicated) for _ in range(20)])
        assert after == Counter({("guard-1", "router-1"): 20}), f"{after}\n{children(replicated)}"
