"""No record is ever dropped: requests answered while NATS is down leave their records in the ingress
spool; the ingress process is killed with them still there; the next ingress process replays them once
NATS is back, and every one of them reaches ClickHouse exactly once."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from gatehouse.launcher import Stack
from gatehouse.natsserver import free_port, restart_nats
from gatehouse.query import run_sql
from shared.config import hash_key

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
KEY = "sk-e2e-spool"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    config = tmp_path / "gatehouse.yaml"
    config.write_text(
        f"""
server: {{host: 127.0.0.1, port: 0, first_reply_timeout_s: 2}}
keys: [{{id: k, sha256: {hash_key(KEY)}}}]
providers: {{mock: {{kind: mock}}}}
models: [{{name: mock-1, deployments: [{{provider: mock, model: mock-1}}]}}]
"""
    )
    running = Stack(
        config=config, data_dir=tmp_path / "data", host="127.0.0.1", port=free_port(), prefix="spool", nats_port=0
    )
    running.start()
    try:
        assert running.wait_ready(90), "stack did not become ready"
        yield running
    finally:
        running.stop()


def post(stack: Stack) -> httpx.Response:
    return httpx.post(
        f"{stack.ingress_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "mock-1", "messages": [{"role": "user", "content": "hello"}]},
        timeout=30,
    )


def rows(stack: Stack, ids: list[str]) -> list[list[object]]:
    assert stack.nats is not None
    listed = ", ".join(f"'{i}'" for i in ids)
    query = f"SELECT request_id, status FROM requests WHERE request_id IN ({listed}) ORDER BY request_id"
    try:
        result = asyncio.run(
            run_sql(stack.nats.url, stack.prefix, query, timeout=5, seed_file=str(stack.admin_seed_file))
        )
    except Exception:
        return []  # accounting is still reconnecting
    return result.rows if not result.error else []


def wait_rows(stack: Stack, ids: list[str], timeout: float = 90.0) -> list[list[object]]:
    deadline = time.monotonic() + timeout
    while True:
        found = rows(stack, ids)
        if len(found) >= len(ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def spooled_bytes(stack: Stack) -> int:
    return sum(p.stat().st_size for p in (stack.data_dir / "spool" / "ingress").glob("*/*.seg"))


def test_records_of_requests_served_while_nats_is_down_survive_an_ingress_kill(stack: Stack) -> None:
    ok = post(stack)
    assert ok.status_code == 200, ok.text
    assert wait_rows(stack, [ok.headers["x-request-id"]]) == [[ok.headers["x-request-id"], 200]]

    assert stack.nats is not None
    stack.nats.process.send_signal(signal.SIGKILL)
    stack.nats.process.wait(10)
    with ThreadPoolExecutor(5) as pool:
        answered = list(pool.map(lambda _: post(stack), range(5)))
    assert [r.status_code for r in answered] == [504] * 5, "answered, with an error, while NATS is down"
    ids = sorted(r.headers["x-request-id"] for r in answered)
    assert spooled_bytes(stack) > 0, "their records are in the ingress spool"

    ingress = next(c for c in stack.children if c.service == "ingress")
    assert ingress.process is not None
    ingress.process.send_signal(signal.SIGKILL)
    ingress.process.wait(10)

    stack.nats = restart_nats(stack.nats)  # same port, data dir and config (roles and permissions)
    ingress.start()  # a new process: it adopts the dead one's spool and replays it
    assert stack.wait_ready(90)
    assert wait_rows(stack, ids) == [[i, 504] for i in ids], "every record once"
    assert spooled_bytes(stack) == 0
