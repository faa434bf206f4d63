"""Accounting ingest rate (issue 9): events per second from the JetStream event stream into chDB, through the
real `EventConsumer` (fetch, decode, price, dedupe, insert, ack) with the default batch size.

    python bench/accounting_ingest.py                  # 200,000 events, three runs
    python bench/accounting_ingest.py --events 50000 --runs 1
    python bench/accounting_ingest.py --events 100000 --runs 1 --profile drain.txt   # py-spy, drain only

The stream is filled first (publishing is not what is measured), then one consumer drains it; the rate is
events stored and acked per second of wall clock, from the first fetch to the last ack. Events are priced
at list price (gpt-4o-mini, openai): the pricing cost per event is part of what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import nats
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gatehouse.natsserver import free_port, start_nats
from services.accounting import migrations
from services.accounting.consumer import GEN0_THRESHOLD, EventConsumer
from services.accounting.sink import ClickHouseSink
from shared.bus import MSG_ID, ensure_events_stream
from shared.config import AccountingConfig
from shared.runtime import tune_gc
from shared.schemas.chat import Attempt, Caller, Usage
from shared.schemas.events import RequestEvent
from shared.subjects import Subjects

TEAMS = ("search", "ml", "support", "growth")
MODELS = (("gpt-4o-mini", "openai"), ("gpt-4o", "openai"), ("claude-sonnet-4-5", "anthropic"))


def event(i: int, now: float) -> RequestEvent:
    model, kind = MODELS[i % len(MODELS)]
    team = TEAMS[i % len(TEAMS)]
    return RequestEvent(
        event_id=uuid.uuid4().hex,
        request_id=uuid.uuid4().hex,
        trace_id=uuid.uuid4().hex,
        api="chat",
        caller=Caller(key_id=f"key-{i % 50}", team=team, project=f"{team}-p{i % 3}", org="default"),
        requested_model=model,
        provider=kind,
        provider_kind=kind,
        deployment=f"{kind}/{model}",
        provider_model=model,
        status=200 if i % 40 else 503,
        usage=Usage(input_tokens=400 + i % 700, output_tokens=120 + i % 300, cached_tokens=i % 5 * 64),
        attempts=[Attempt(provider=kind, deployment=f"{kind}/{model}", status=200, latency_ms=480.0)],
        # a live request: it ended just now (its record is published as it ends), after half a second or so
        received_at=now - 0.5 - (i % 100) / 100,
        finished_at=now,
        latency_ms=500.0,
        tags={"env": "prod"},
    )


async def fill(url: str, subjects: Subjects, count: int) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await ensure_events_stream(js, subjects)
    subject = subjects.events_request
    window = 2000  # publishes in flight
    for start in range(0, count, window):
        now = time.time()
        futures = []
        for i in range(start, min(start + window, count)):
            e = event(i, now)
            futures.append(js.publish(subject.name, subject.encode(e), headers={MSG_ID: e.event_id}, timeout=30))
        await asyncio.gather(*futures)
    await nc.close()


class GcClock:
    """Time spent in the cyclic garbage collector (any thread) while attached."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]  # by generation
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections[info["generation"]] += 1


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) another process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads_cpu_s() -> dict[str, float]:
    """CPU seconds used so far by this process's threads, by OS thread name (Python's own threads are all
    named after the executable; chDB names its threads: merges, pipeline executors, …)."""
    tick = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        used[name] = used.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return used


def start_profiler(out: Path) -> subprocess.Popen[bytes]:
    """py-spy attached to this process (raw collapsed stacks, native frames), from now until `stop_profiler`."""
    command = ["py-spy", "record", "--pid", str(os.getpid()), "-f", "raw", "--native", "-r", "250", "-o", str(out)]
    profiler = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches before the drain starts (the loop waits: the consumer too)
    return profiler


def stop_profiler(profiler: subprocess.Popen[bytes]) -> None:
    profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    profiler.wait(timeout=60)


async def drain(
    url: str, server_pid: int, subjects: Subjects, data: Path, count: int, batch: int, profile: Path | None
) -> tuple[float, float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    sink = ClickHouseSink(f"chdb://{data}")
    consumer = EventConsumer(
        nc,
        js,
        subjects,
        sink,
        migrations.load(),
        {},
        durable="bench",
        batch_size=batch,
        flush_interval_s=0.5,
        ack_wait_s=30,
        max_deliver=5,
        retry_s=0.5,
        retry_max_s=5,
    )
    task = asyncio.create_task(consumer.run())
    await consumer.ready.wait()
    # after the schema is applied (startup imports are not the drain), before the first batch is in
    profiler = start_profiler(profile) if profile else None
    clock = GcClock()
    gc.callbacks.append(clock)
    started = time.perf_counter()
    cpu = time.process_time()
    server_cpu = process_cpu_s(server_pid)
    threads_before = threads_cpu_s()
    while consumer.stored.get("requests", 0) + consumer.skipped < count:
        if task.done():
            raise RuntimeError("the consumer stopped")
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    cpu_us = (time.process_time() - cpu) / count * 1e6
    server_us = (process_cpu_s(server_pid) - server_cpu) / count * 1e6
    threads = threads_cpu_s()  # threads that ended during the drain are missing: a lower bound per name
    python = Path(sys.executable).name[:15]
    by_name = {n: (t - threads_before.get(n, 0.0)) / count * 1e6 for n, t in threads.items()}
    own = by_name.pop(python, 0.0)
    others = ", ".join(f"{n} {us:.1f}" for n, us in sorted(by_name.items(), key=lambda x: -x[1]) if us >= 0.5)
    print(f"  threads, us/event: {python} (event loop, prepare thread, calls into chDB) {own:.1f}; {others}")
    print(
        f"  nats-server CPU {server_us:.1f} us/event; consumer + server {cpu_us + server_us:.1f} us/event, "
        f"{2e6 / (cpu_us + server_us):,.0f} events/s if two idle cores were all theirs"
    )
    gc.callbacks.remove(clock)
    young, middle, full = clock.collections
    print(f"  gc: {young}/{middle}/{full} collections (gen 0/1/2), {clock.seconds / count * 1e6:.1f} us per event")
    if profiler is not None:
        stop_profiler(profiler)
    consumer.stop()
    await task
    await nc.close()
    await sink.close()
    return count / elapsed, cpu_us


async def one_run(count: int, batch: int, data: Path | None, profile: Path | None) -> tuple[float, float]:
    tmp = Path(tempfile.mkdtemp(prefix="gh-bench-ingest-"))
    server = start_nats(tmp / "js", port=free_port())
    subjects = Subjects(f"b{uuid.uuid4().hex[:8]}")
    try:
        await fill(server.url, subjects, count)
        return await drain(server.url, server.process.pid, subjects, data or tmp / "clickhouse", count, batch, profile)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=AccountingConfig().batch_size, help="accounting.batch_size")
    parser.add_argument("--data", type=Path, default=None, help="store into this chDB directory (e.g. one that "
                        "bench/rollups.py filled with 10 M rows) instead of an empty one")  # fmt: skip
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy the drain phase only (raw collapsed stacks) into this file")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tune_gc(GEN0_THRESHOLD)  # as `python -m services.accounting` does
    if os.environ.get("BENCH_GC_THRESHOLD"):  # experiments: e.g. BENCH_GC_THRESHOLD=200000,20,20
        gc.set_threshold(*(int(n) for n in os.environ["BENCH_GC_THRESHOLD"].split(",")))
    rates, cpus = [], []
    for run in range(args.runs):
        load = os.getloadavg()[0]
        rate, cpu_us = uvloop.run(one_run(args.events, args.batch, args.data, args.profile))  # the service's loop
        rates.append(rate)
        cpus.append(cpu_us)
        print(
            f"run {run + 1}: {args.events:,} events at {rate:,.0f} events/s, consumer CPU {cpu_us:.1f} us/event "
            f"(all threads; load average {load:.2f} before, {os.getloadavg()[0]:.2f} after)"
        )
    print(
        f"median {statistics.median(rates):,.0f} events/s, {statistics.median(cpus):.1f} us/event CPU "
        f"over {args.runs} runs of {args.events:,} events"
    )


if __name__ == "__main__":
    main()
