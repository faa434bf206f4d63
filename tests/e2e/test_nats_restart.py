"""nats-server dies under `gatehouse up`: the launcher restarts it on the same port, data dir and config,
the services reconnect (none is restarted), /healthz shows the outage meanwhile, and under load no request
hangs: each one completes or gets a clean 502/503 (large requests sent during the outage included), the stack
serves again afterwards, and ClickHouse holds exactly one row for each response the clients saw (by request
id: nothing lost, nothing duplicated)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats.errors
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gatehouse.launcher import Child, Stack
from gatehouse.natsserver import free_port
from gatehouse.query import run_sql
from shared.config import hash_key

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
KEY = "sk-e2e-restart"
RATE = 20  # requests per second
SECONDS = 10
KILL_AT_S = 4.0
# nats-server stays down this long before the supervisor may restart it: longer than the heartbeat timeout,
# so requests caught by the kill end (502) while NATS is still away and their records must take the spool
OUTAGE_S = 4.0
# every fifth request sent while nats-server is away carries a prompt this large: together more than a NATS
# client buffers for a reconnect (2 MiB), as a few large requests during an outage are
LARGE_PROMPT_BYTES = 512 * 1024
CLIENT_TIMEOUT_S = 30.0  # far above what any clean answer takes: hitting it means a request hung


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    config = tmp_path / "gatehouse.yaml"
    config.write_text(
        f"""
server: {{host: 127.0.0.1, port: 0, heartbeat_timeout_s: 3, request_timeout_s: 20}}
keys: [{{id: k, sha256: {hash_key(KEY)}}}]
providers:
  mock: {{kind: mock, mock_latency_ms: 50}}
models:
  - {{name: mock-1, deployments: [{{provider: mock, model: mock-1}}]}}
"""
    )
    stack = Stack(
        config=config, data_dir=tmp_path / "data", host="127.0.0.1", port=free_port(), prefix="restart", nats_port=0
    )
    stack.start()
    try:
        assert stack.wait_ready(90), "stack did not become ready"
        yield stack
    finally:
        stack.stop()


def poll(check: object, what: str, timeout: float = 30.0, describe: object = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}" + (
            f": {describe()}" if describe else ""  # type: ignore[operator]
        )
        time.sleep(0.1)


def health(stack: Stack) -> tuple[int, dict[str, str]]:
    r = httpx.get(f"{stack.ingress_url}/healthz", timeout=5)
    return r.status_code, r.json()


def chat(stack: Stack, phase: str) -> httpx.Response | None:
    try:
        return httpx.post(
            f"{stack.ingress_url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {KEY}", "x-gatehouse-tag-phase": phase},
            json={"model": "mock-1", "messages": [{"role": "user", "content": "still there?"}]},
            timeout=10,
        )
    except httpx.HTTPError:
        return None


def chat_ok(stack: Stack) -> bool:
    r = chat(stack, "probe")
    return r is not None and r.status_code == 200


def sql(stack: Stack, query: str) -> list[list[object]]:
    assert stack.nats is not None
    result = asyncio.run(run_sql(stack.nats.url, stack.prefix, query, 30, str(stack.admin_seed_file)))
    assert not result.error, result.error
    return result.rows


def kill_nats(stack: Stack) -> int:
    assert stack.nats is not None
    pid = stack.nats.process.pid
    stack.nats.process.send_signal(signal.SIGKILL)
    stack.nats.process.wait(10)
    return pid


async def load(stack: Stack, killed: threading.Event, release: threading.Event) -> list[tuple[int | str, str]]:
    """RATE requests a second for SECONDS (paced by the clock: the sleeps schedule the load, they wait for
    nothing); nats-server is SIGKILLed KILL_AT_S in and may be restarted OUTAGE_S later. Each entry: (status
    or the name of the client error, the response's x-request-id or '')."""

    async def one(client: httpx.AsyncClient, i: int) -> tuple[int | str, str]:
        await asyncio.sleep(i / RATE)
        prompt = f"request {i}"
        if killed.is_set() and not release.is_set() and i % 5 == 0:
            prompt += " padding" * (LARGE_PROMPT_BYTES // 8)
        try:
            r = await client.post(
                f"{stack.ingress_url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {KEY}", "x-gatehouse-tag-phase": "load"},
                json={"model": "mock-1", "messages": [{"role": "user", "content": prompt}]},
            )
        except httpx.HTTPError as exc:
            return type(exc).__name__, ""
        return r.status_code, r.headers.get("x-request-id", "")

    async def killer() -> None:
        await asyncio.sleep(KILL_AT_S)
        await asyncio.to_thread(kill_nats, stack)
        killed.set()
        await asyncio.sleep(OUTAGE_S)
        release.set()

    limits = httpx.Limits(max_connections=RATE * SECONDS, max_keepalive_connections=RATE * SECONDS)
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, limits=limits) as client:
        results = await asyncio.gather(killer(), *(one(client, i) for i in range(RATE * SECONDS)))
    return list(results[1:])


def test_nats_server_dies_and_comes_back_under_load(stack: Stack) -> None:
    # accounting (off the chat path, so not part of readiness) is connected and serving before the first
    # outage: a loaded machine can start it late enough to connect only to the restarted server
    poll(lambda: answers_sql(stack), "accounting to answer a query", timeout=90)
    # 1. the outage is visible on /healthz, and the restart is the launcher's supervision
    old_pid = kill_nats(stack)
    poll(lambda: health(stack)[0] == 503, "healthz to report the lost NATS connection")
    _, body = health(stack)
    assert body["status"] == "unhealthy" and "NATS" in body["reason"], body
    notes = stack.supervise_once()
    assert any("nats-server exited" in note for note in notes), notes
    assert stack.nats is not None and stack.nats.process.pid != old_pid
    poll(lambda: health(stack) == (200, {"status": "ok"}), "services to reconnect to the restarted nats-server")
    poll(lambda: chat_ok(stack), "a request to succeed after the restart")
    # every process, not only those on the chat path (accounting is not), is back before the second outage: one
    # still reconnecting when it starts lives through both outages as one (and counts one reconnect)
    poll(lambda: not_reconnected(stack) == [], "every process to reconnect", describe=lambda: lagging(stack))
    before = {child.name: nats_counts(child) for child in stack.children}

    # 2. under load: SIGKILL in the middle, the supervisor loop (as in `gatehouse up`) restarts it
    killed, release, done = threading.Event(), threading.Event(), threading.Event()

    def supervise() -> None:
        while not done.is_set():
            if release.is_set() or not killed.is_set():
                stack.supervise_once()
            done.wait(0.2)

    supervisor = threading.Thread(target=supervise, daemon=True)
    supervisor.start()
    started = time.monotonic()
    try:
        results = asyncio.run(load(stack, killed, release))
    finally:
        done.set()
        supervisor.join(30)
    elapsed = time.monotonic() - started
    outcomes = Counter(status for status, _ in results)
    print(f"load outcomes over {elapsed:.1f}s: {dict(outcomes)}; nats restarts: {stack.nats_restarts}")
    assert killed.is_set()
    assert stack.nats_restarts == 2
    assert set(outcomes) <= {200, 502, 503}, outcomes  # no hang (client timeout), no 500, no reset
    assert outcomes[200] >= RATE * KILL_AT_S * 0.9  # everything before the kill was served
    assert elapsed < SECONDS + CLIENT_TIMEOUT_S
    assert all(child.restarts == 0 for child in stack.children), "services reconnect; none was restarted"

    # 3. the stack serves again; a request after the load is the sentinel: events reach JetStream in order
    # (one publisher per process), so once its row is in, every earlier record has had its chance
    poll(lambda: chat_ok(stack), "a request to succeed after the load")
    assert stack.wait_ready(30)
    sentinel = chat(stack, "sentinel")
    assert sentinel is not None and sentinel.status_code == 200
    seen = {rid for _, rid in results}
    assert "" not in seen and len(seen) == len(results), "every response carries its own x-request-id"
    query = "SELECT request_id FROM requests WHERE tags['phase'] = 'load'"
    sentinel_query = f"SELECT count() FROM requests WHERE request_id = '{sentinel.headers['x-request-id']}'"
    poll(lambda: sql(stack, sentinel_query) == [[1]], "the sentinel's record", timeout=60)
    deadline = time.monotonic() + 60
    while len(rows := sql(stack, query)) < len(results) and time.monotonic() < deadline:
        time.sleep(0.5)  # a poll with a deadline: the records arrive through JetStream and accounting

    # 4. one row per response, by request id: nothing lost, nothing duplicated, nothing the clients never saw
    recorded = [str(row[0]) for row in rows]
    print(f"recorded {len(recorded)} rows for {len(results)} responses {dict(outcomes)}")
    assert set(recorded) == seen, (
        f"lost: {sorted(seen - set(recorded))[:5]}, never answered: {sorted(set(recorded) - seen)[:5]}"
    )
    assert len(recorded) == len(set(recorded)), "a record was stored twice"
    statuses = Counter(row[0] for row in sql(stack, "SELECT status FROM requests WHERE tags['phase'] = 'load'"))
    assert statuses == outcomes, (statuses, outcomes)

    # every process lost its connection in the second outage and got it back (gatehouse_nats_*_total, on its
    # /metrics); those on the chat path and accounting (connected before it, see above) counted the first too
    for child in stack.children:
        disconnects, reconnects_ = nats_counts(child)
        assert disconnects >= before[child.name][0] + 1, (child.name, before, disconnects)
        assert reconnects_ >= before[child.name][1] + 1, (child.name, before, reconnects_)
        if child.service != "batch":
            assert before[child.name][1] >= 1, (child.name, before)


def metric_samples(url: str) -> dict[str, float]:
    text = httpx.get(url, timeout=10).text
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


def nats_counts(child: Child) -> tuple[float, float]:
    """(disconnects, reconnects) this process counted."""
    samples = metric_samples(child.metrics_url)
    return samples.get("gatehouse_nats_disconnects_total", 0.0), samples.get("gatehouse_nats_reconnects_total", 0.0)


def not_reconnected(stack: Stack) -> list[Child]:
    """The processes that lost their connection and have not got it back yet (one that connected only after
    the outage began, as a late start on a loaded machine can, has nothing to get back)."""
    return [child for child in stack.children if (counts := nats_counts(child))[1] < counts[0]]


def answers_sql(stack: Stack) -> bool:
    assert stack.nats is not None
    try:
        result = asyncio.run(run_sql(stack.nats.url, stack.prefix, "SELECT 1", 5, str(stack.admin_seed_file)))
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return False  # accounting has not subscribed yet, or is still busy starting
    return not result.error


def lagging(stack: Stack) -> str:
    """The processes not_reconnected names, each with its NATS counters, restarts and the tail of its log."""
    parts = []
    for child in not_reconnected(stack):
        samples = {k: v for k, v in metric_samples(child.metrics_url).items() if k.startswith("gatehouse_nats")}
        tail = child.log_path.read_text(errors="replace").splitlines()[-25:] if child.log_path.exists() else []
        parts.append(f"{child.name} (restarts {child.restarts}) {samples}\n" + "\n".join(tail))
    return "\n".join(parts)
