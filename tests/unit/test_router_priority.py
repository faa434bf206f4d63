"""The router's batch lane yields to interactive traffic: few batch items run while interactive requests
are in flight or were just now, many once it has been quiet; interactive requests never wait."""

from __future__ import annotations

import asyncio
import itertools

from services.router.priority import PriorityGate
from shared import metrics


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_cap_follows_interactive_traffic() -> None:
    clock = Clock()
    gate = PriorityGate(idle=8, busy=1, yield_s=0.5, clock=clock)
    assert gate.cap(clock.now) == 8
    gate.interactive_started()
    assert gate.cap(clock.now) == 1
    clock.now += 10
    assert gate.cap(clock.now) == 1  # still in flight
    gate.interactive_finished()
    assert gate.cap(clock.now) == 1 and gate.quiet_in(clock.now) == 0.5
    clock.now += 0.49
    assert gate.cap(clock.now) == 1
    clock.now += 0.02
    assert gate.cap(clock.now) == 8


def test_while_busy_batch_items_start_at_a_pace() -> None:
    clock = Clock()
    gate = PriorityGate(idle=8, busy=4, yield_s=0.5, busy_rate=10, clock=clock)
    assert gate.wait_for_pace(clock.now) == 0  # quiet: unpaced
    gate.interactive_started()
    assert gate.wait_for_pace(clock.now) == 0  # the first may start


async def test_a_paced_gate_spaces_batch_items_while_interactive_traffic_runs() -> None:
    gate = PriorityGate(idle=8, busy=8, yield_s=5.0, busy_rate=20)
    gate.interactive_started()
    started: list[float] = []
    loop = asyncio.get_running_loop()

    async def item() -> None:
        async with gate.batch_slot():
            started.append(loop.time())

    await asyncio.wait_for(asyncio.gather(*[item() for _ in range(5)]), 5)
    gaps = [b - a for a, b in itertools.pairwise(started)]
    assert len(started) == 5 and min(gaps) >= 0.045  # 20 a second: 50 ms apart (timer slack aside)
    gate.interactive_finished()


async def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def test_batch_items_wait_while_interactive_traffic_runs_and_go_once_it_is_quiet() -> None:
    gate = PriorityGate(idle=4, busy=1, yield_s=0.2)
    release = asyncio.Event()
    running = 0
    peak = 0

    async def item() -> None:
        nonlocal running, peak
        async with gate.batch_slot():
            running += 1
            peak = max(peak, running)
            await release.wait()
            running -= 1

    gate.interactive_started()
    items = [asyncio.create_task(item()) for _ in range(6)]
    await wait_for(lambda: running == 1 and gate.waiting == 5)
    await asyncio.sleep(0.05)
    assert running == 1 and peak == 1  # one at a time while interactive traffic is in flight
    gate.interactive_finished()
    await wait_for(lambda: running == 4)  # quiet for yield_s: up to the idle cap
    assert gate.batch == 4 and gate.waiting == 2
    gate.interactive_started()  # traffic is back: running items finish, no new one starts
    release.set()
    await wait_for(lambda: sum(t.done() for t in items) >= 4)
    assert gate.batch <= 1
    gate.interactive_finished()
    await asyncio.wait_for(asyncio.gather(*items), 5)
    assert gate.batch == 0 and gate.waiting == 0 and peak == 4


async def test_each_batch_item_that_yields_is_counted_once() -> None:
    metrics.configure("router", enabled=True)
    try:
        gate = PriorityGate(idle=4, busy=1, yield_s=0.05)
        before = metrics.BATCH_YIELDS.labels("router")._value.get()  # the series' value
        release = asyncio.Event()

        async def item() -> None:
            async with gate.batch_slot():
                await release.wait()

        gate.interactive_started()
        items = [asyncio.create_task(item()) for _ in range(3)]
        await wait_for(lambda: gate.batch == 1 and gate.waiting == 2)
        await asyncio.sleep(0.1)  # the waiting items look again (and again) while traffic runs
        gate.interactive_finished()
        release.set()
        await asyncio.gather(*items)
        metrics.fold()
        assert gate.yields == 2  # the first had room; the other two waited, each counted once
        assert metrics.BATCH_YIELDS.labels("router")._value.get() - before == 2
    finally:
        metrics.configure("", enabled=False)
