"""Spans from a process's telemetry through their own JetStream stream into the `spans` table (real
nats-server and chDB, in process): stored in one insert per flush, a batch that can never be stored is
dropped without blocking the others, and a ClickHouse outage hands batches back instead of losing them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from gatehouse.natsserver import NatsServer
from services.accounting import migrations
from services.accounting.sink import ClickHouseSink
from services.accounting.spans import SpanStore
from shared import metrics
from shared.subjects import Subjects
from shared.telemetry import Telemetry, TelemetryConfig, ensure_spans_stream
from shared.tracing import CLIENT, TRACER, TraceContext, new_trace_id

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    conn = await nats.connect(nats_server.url)
    yield conn
    await conn.close()


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[ClickHouseSink]:
    sink = ClickHouseSink(f"chdb://{tmp_path / 'clickhouse'}", readable=migrations.tables(migrations.load()))
    await sink.migrate(migrations.load())
    yield sink
    await sink.close()


async def _count(sink: ClickHouseSink, trace: str, want: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        rows = (await sink.query(f"SELECT count() FROM spans WHERE trace_id = '{trace}'", 10)).rows
        got = int(str(rows[0][0]))
        if got >= want or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.2)


async def test_spans_reach_clickhouse_through_their_own_stream(
    nc: Client, sink: ClickHouseSink, subjects: Subjects, tmp_path: Path
) -> None:
    telemetry = Telemetry(
        TelemetryConfig(service="router", metrics=False, spool_dir=tmp_path / "spool" / "router-spans"), subjects
    )
    store = SpanStore(nc.jetstream(), subjects, sink, flush_s=0.3)
    task = asyncio.create_task(store.run())
    trace = new_trace_id()
    try:
        await telemetry.start(nc)
        parent = TraceContext(trace, "b7ad6b7169203331")
        for i in range(50):
            dispatch = TRACER.start("router.dispatch", parent, request_id=f"r{i}")
            attempt = TRACER.start("router.attempt", dispatch.context, kind=CLIENT, request_id=f"r{i}")
            attempt.end(lambda status: {"http.response.status_code": status}, 200)
            dispatch.end()
        # a batch that can never be stored, on the same subject: dropped, the rest stored
        await nc.jetstream().publish(subjects.spans.name, b"\xc1 not msgpack")
        assert await _count(sink, trace, 100) == 100
    finally:
        await telemetry.stop()
        store.stop()
        await task
        metrics.configure("", enabled=False)
    rows = (
        await sink.query(
            f"SELECT service, name, attributes['http.response.status_code'] FROM spans "
            f"WHERE trace_id = '{trace}' AND name = 'router.attempt' LIMIT 1",
            10,
        )
    ).rows
    assert rows == [["router", "router.attempt", "200"]]
    assert store.stored == 100
    info = await nc.jetstream().stream_info(subjects.spans_stream)
    assert info.state.messages == 0  # all acked (work queue) or terminated


async def test_an_outage_hands_spans_back_and_they_are_stored_later(
    nc: Client, sink: ClickHouseSink, subjects: Subjects, tmp_path: Path
) -> None:
    js = nc.jetstream()
    await ensure_spans_stream(js, subjects)
    telemetry = Telemetry(
        TelemetryConfig(service="guard", metrics=False, spool_dir=tmp_path / "spool" / "guard-spans"), subjects
    )
    await sink.command("RENAME TABLE spans TO spans_away")  # ClickHouse "down" for spans
    store = SpanStore(js, subjects, sink, flush_s=0.3)
    task = asyncio.create_task(store.run())
    trace = new_trace_id()
    try:
        await telemetry.start(nc)
        TRACER.start("guard.check", TraceContext(trace, "b7ad6b7169203331")).end()
        telemetry.flush()
        deadline = time.monotonic() + 15
        while store.failed_inserts == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert store.failed_inserts >= 1 and store.stored == 0
        await sink.command("RENAME TABLE spans_away TO spans")
        assert await _count(sink, trace, 1) == 1
    finally:
        await telemetry.stop()
        store.stop()
        await task
        metrics.configure("", enabled=False)


async def test_a_spool_that_cannot_be_opened_costs_the_spans_not_the_process(
    nc: Client, subjects: Subjects, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    telemetry = Telemetry(TelemetryConfig(service="router", metrics=False, spool_dir=blocked / "spans"), subjects)
    try:
        await telemetry.start(nc)
        assert telemetry.publisher is None and not TRACER.enabled
        assert any("spans will not be stored" in r.getMessage() for r in caplog.records)
    finally:
        await telemetry.stop()
        metrics.configure("", enabled=False)
