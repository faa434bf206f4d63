"""Accounting against a real nats-server and chDB: rows land once, SQL is read-only, and a SIGKILL
mid-traffic loses and duplicates nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from gatehouse.natsserver import NatsServer
from gatehouse.query import run_sql
from shared.bus import ensure_events_stream, publish_event
from shared.schemas.chat import Caller, GuardFinding, Usage
from shared.schemas.events import GuardEvent, RequestEvent
from shared.subjects import Subjects

REPO = Path(__file__).resolve().parents[2]


def make_event(event_id: str, **kw: object) -> RequestEvent:
    now = time.time()
    fields: dict[str, object] = {
        "event_id": event_id,
        "request_id": event_id,
        "api": "chat",
        "caller": Caller(key_id="k1", team="t1"),
        "requested_model": "mock-1",
        "provider": "mock",
        "deployment": "mock/mock-1",
        "provider_model": "mock-1",
        "status": 200,
        "usage": Usage(input_tokens=5, output_tokens=7),
        "received_at": now,
        "finished_at": now + 0.01,
        "latency_ms": 10.0,
    }
    fields.update(kw)
    return RequestEvent(**fields)  # type: ignore[arg-type]


class Accounting:
    """`python -m services.accounting` as a child process, as the launcher runs it."""

    def __init__(self, nats_url: str, subjects: Subjects, data: Path) -> None:
        self.env = {
            **os.environ,
            "GATEHOUSE_NATS_URL": nats_url,
            "GATEHOUSE_CONFIG": str(REPO / "deploy" / "gatehouse.yaml"),
            "GATEHOUSE_SUBJECT_PREFIX": subjects.prefix,
            "GATEHOUSE_ACCOUNTING_CLICKHOUSE_DSN": f"chdb://{data / 'clickhouse'}",
            "GATEHOUSE_ACCOUNTING_ACK_WAIT_S": "2",
        }
        self.log = data / "accounting.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.accounting"], env=self.env, cwd=REPO, stdout=out, stderr=out
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def accounting(nats_server: NatsServer, subjects: Subjects, tmp_path: Path) -> Iterator[Accounting]:
    acct = Accounting(nats_server.url, subjects, tmp_path)
    acct.start()
    yield acct
    acct.stop()


async def sql(url: str, subjects: Subjects, query: str, timeout: float = 30) -> list[list[object]]:
    """Run a query through the accounting service, waiting until it answers (it may be starting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = await run_sql(url, subjects.prefix, query, timeout=5)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)
            continue
        assert not result.error, result.error
        return result.rows  # type: ignore[return-value]


async def wait_count(url: str, subjects: Subjects, query: str, expected: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while True:
        count = int((await sql(url, subjects, query))[0][0])  # type: ignore[call-overload]
        if count >= expected or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.3)


async def test_events_become_rows_once_and_sql_is_read_only(
    nats_server: NatsServer, subjects: Subjects, accounting: Accounting
) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await ensure_events_stream(js, subjects)
    ids = [uuid.uuid4().hex for _ in range(50)]
    rollup_query = "SELECT sum(requests), sum(output_tokens) FROM requests_per_minute"
    for i in ids:
        await publish_event(js, subjects.events_request.name, make_event(i), i)
    # the same events again: JetStream drops these on Nats-Msg-Id
    for i in ids[:10]:
        await publish_event(js, subjects.events_request.name, make_event(i), i)
    finding = GuardFinding(scanner="secrets", rule="aws-access-key", action="block", start=4, end=24)
    verdict = GuardEvent(
        event_id="g1", request_id=ids[0], policy="default", action="block", findings=[finding], at=time.time()
    )
    await publish_event(js, subjects.events_guard.name, verdict, "g1")

    assert await wait_count(nats_server.url, subjects, "SELECT count() FROM requests", 50) == 50
    await asyncio.sleep(1.5)  # give the redelivered copies time to (not) arrive
    rows = await sql(nats_server.url, subjects, "SELECT count(), uniqExact(event_id), sum(output_tokens) FROM requests")
    assert rows == [[50, 50, 350]]
    rows = await sql(nats_server.url, subjects, "SELECT key_id, team, provider, status FROM requests LIMIT 1")
    assert rows == [["k1", "t1", "mock", 200]]
    assert await wait_count(nats_server.url, subjects, "SELECT count() FROM guard_verdicts", 1) == 1
    rows = await sql(nats_server.url, subjects, "SELECT findings.rule, action FROM guard_verdicts")
    assert rows == [[["aws-access-key"], "block"]]
    rollup = await sql(nats_server.url, subjects, rollup_query)
    assert rollup == [[50, 350]]
    # a publisher that retried past JetStream's duplicate window (new msg id, same event id): the table
    # collapses such copies on event_id (ReplacingMergeTree), so FINAL and uniqExact stay exact
    for i in ids[10:20]:
        await publish_event(js, subjects.events_request.name, make_event(i), uuid.uuid4().hex)
    await wait_count(nats_server.url, subjects, "SELECT count() FROM requests", 60, timeout=10)
    rows = await sql(nats_server.url, subjects, "SELECT count(), uniqExact(event_id) FROM requests FINAL")
    assert rows == [[50, 50]]
    await nc.close()
    applied = await sql(nats_server.url, subjects, "SELECT count() FROM schema_migrations")
    assert int(applied[0][0]) >= 3  # type: ignore[call-overload]

    refused = await run_sql(nats_server.url, subjects.prefix, "DROP TABLE requests")
    assert refused.error.startswith("query refused")
    broken = await run_sql(nats_server.url, subjects.prefix, "SELECT nope FROM nowhere")
    assert broken.error.startswith("query failed")


async def test_sigkill_mid_traffic_loses_and_duplicates_nothing(
    nats_server: NatsServer, subjects: Subjects, accounting: Accounting
) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await ensure_events_stream(js, subjects)
    total = 2000
    ids = [uuid.uuid4().hex for _ in range(total)]
    killed = restarted = False
    started = time.monotonic()
    for n, event_id in enumerate(ids):
        await publish_event(js, subjects.events_request.name, make_event(event_id), event_id)
        if n % 50 == 0:
            await asyncio.sleep(0.05)  # ~1000 events/s, a few seconds of traffic
        if not killed and n == total // 3:
            accounting.kill()
            killed = True
            killed_at = time.monotonic()
        if killed and not restarted and time.monotonic() - killed_at > 1.0:
            accounting.start()
            restarted = True
    if not restarted:
        accounting.start()
    await nc.close()
    assert killed and time.monotonic() - started < 60

    count = await wait_count(nats_server.url, subjects, "SELECT count() FROM requests", total, timeout=90)
    await asyncio.sleep(3)  # past the 2 s ack wait: any unacked batch would have been redelivered by now
    rows = await sql(nats_server.url, subjects, "SELECT count(), uniqExact(event_id) FROM requests")
    assert count == total
    assert rows == [[total, total]], "every published event exactly once"
    stored = {r[0] for r in await sql(nats_server.url, subjects, "SELECT event_id FROM requests")}
    assert stored == set(ids)
