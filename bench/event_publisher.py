"""Costs of the event publisher (issue 12): the caller's cost per event, direct and spooling; events held
only in memory at a steady rate (what a SIGKILL can lose); fsync; replay speed.

    python bench/event_publisher.py          # from the repository root; starts its own nats-server
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import nats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gatehouse.natsserver import free_port, start_nats
from shared.bus import ensure_events_stream
from shared.event_publisher import EventPublisher
from shared.schemas.chat import Caller, Usage
from shared.schemas.events import RequestEvent
from shared.spool import SpoolConfig
from shared.subjects import Subjects


def event(event_id: str) -> RequestEvent:
    now = time.time()
    return RequestEvent(
        event_id=event_id,
        request_id=event_id,
        api="chat",
        caller=Caller(key_id="k1", team="t1", project="p1"),
        requested_model="gpt-4o-mini",
        provider="openai",
        deployment="openai/gpt-4o-mini",
        provider_model="gpt-4o-mini",
        status=200,
        usage=Usage(input_tokens=50, output_tokens=120),
        received_at=now,
        finished_at=now + 0.5,
        latency_ms=500.0,
        tags={"team": "search", "env": "prod"},
    )


async def until(check: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.005)


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="gh-bench-events-"))
    port = free_port()
    server = start_nats(tmp / "js", port=port)
    subjects = Subjects(f"b{uuid.uuid4().hex[:8]}")
    nc = await nats.connect(server.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
    await ensure_events_stream(nc.jetstream(), subjects)
    subject = subjects.events_request
    publisher = EventPublisher(SpoolConfig(root=tmp / "spool"))
    await publisher.start(nc)
    events = [event(uuid.uuid4().hex) for _ in range(20_000)]
    print(f"event: {len(subject.encode(events[0]))} bytes msgpack")

    # 1. the caller's cost, direct: a burst of publish() calls (the I/O happens after)
    started = time.perf_counter()
    for e in events[:10_000]:
        publisher.publish(subject, e, e.event_id)
    call_us = (time.perf_counter() - started) / 10_000 * 1e6
    await until(lambda: publisher.published == 10_000)
    rate = 10_000 / (time.perf_counter() - started)
    print(f"direct: publish() {call_us:.1f} us/call; 10000 acked at {rate:,.0f} events/s")

    # 2. what a SIGKILL can lose: events handed over but not yet acknowledged (they live only in memory)
    lags = []
    for i in range(300):
        e = event(f"single-{i}")
        base = publisher.published
        t = time.perf_counter()
        publisher.publish(subject, e, e.event_id)
        while True:  # spin: the ack latency is a fraction of a millisecond
            if publisher.published != base:
                break
            await asyncio.sleep(0)
        lags.append((time.perf_counter() - t) * 1000)
    lags.sort()
    print(f"publish() to ack, one at a time: median {lags[150]:.2f} ms, p99 {lags[297]:.2f} ms")
    for per_s in (500, 2000, 5000):
        held: list[int] = []
        batch = per_s // 100
        begin = time.perf_counter()
        target = publisher.published
        while time.perf_counter() - begin < 3.0:
            for _ in range(batch):
                e = event(uuid.uuid4().hex)
                publisher.publish(subject, e, e.event_id)
                target += 1
            await asyncio.sleep(0.01)
            held.append(len(publisher._queue) + len(publisher._inflight))  # left of the burst 10 ms later
        final = target
        await until(lambda: publisher.published == final)  # noqa: B023
        print(f"steady {per_s}/s in bursts of {batch} every 10 ms: unacked 10 ms after a burst: max {max(held)}")

    # 3. the caller's cost while spooling (JetStream away): one write(2) per event
    server.process.kill()
    server.process.wait()
    await until(lambda: not nc.is_connected)
    base_published = publisher.published
    started = time.perf_counter()
    for e in events[10_000:20_000]:
        publisher.publish(subject, e, e.event_id)
    spool_us = (time.perf_counter() - started) / 10_000 * 1e6
    print(f"spooling: publish() {spool_us:.1f} us/call (write(2) per event); {publisher.spool.size:,} bytes spooled")

    # 4. fsync of the spool
    times = []
    for i in range(50):
        e = event(f"fsync-{i}")
        publisher.publish(subject, e, e.event_id)
        t = time.perf_counter()
        publisher.spool.sync()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    print(f"fsync after one append: median {times[25]:.2f} ms, p90 {times[45]:.2f} ms, max {times[-1]:.2f} ms")

    # 5. replay once JetStream is back
    server = start_nats(tmp / "js", port=port)
    started = time.perf_counter()
    await until(lambda: not publisher.spooling)
    replayed = publisher.published - base_published
    print(f"replay: {replayed} events in {time.perf_counter() - started:.2f}s (incl. reconnect)")
    await publisher.drain(5)
    await nc.close()
    server.stop()


if __name__ == "__main__":
    asyncio.run(main())
