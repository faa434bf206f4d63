"""`shared.tasks`: a background task is stopped even when it swallows a cancellation, as nats-py's requests do on
Python 3.11 when the answer lands in the same loop turn as the cancel."""

from __future__ import annotations

import asyncio

import pytest

from shared.tasks import cancel_all_and_wait, cancel_and_wait


async def swallows(times: int, started: asyncio.Event) -> None:
    """Carry on after the first `times` cancellations (what 3.11's wait_for does when its result is ready),
    then wait for ever."""
    started.set()
    for _ in range(times):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass
    await asyncio.Event().wait()


async def test_a_task_that_swallowed_the_cancellation_is_cancelled_again_until_it_ends() -> None:
    started = asyncio.Event()
    task = asyncio.create_task(swallows(2, started))
    await started.wait()
    await cancel_and_wait(task, recancel_s=0.05)
    assert task.cancelled()


async def test_tasks_that_ended_or_failed_are_waited_without_complaint() -> None:
    async def fail() -> None:
        raise RuntimeError("broken")

    failed = asyncio.create_task(fail())
    ended = asyncio.create_task(asyncio.sleep(0))
    await asyncio.wait({failed, ended})
    started = asyncio.Event()
    running = asyncio.create_task(swallows(1, started))
    await started.wait()
    assert await cancel_all_and_wait([failed, ended, running], recancel_s=0.05)
    assert running.cancelled() and ended.done() and isinstance(failed.exception(), RuntimeError)
    await cancel_and_wait(None)


async def test_a_task_that_will_not_end_is_left_after_the_timeout() -> None:
    stubborn = True

    async def ignores_cancels() -> None:
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if not stubborn:
                    raise

    task = asyncio.create_task(ignores_cancels())
    await asyncio.sleep(0)
    assert not await cancel_all_and_wait([task], timeout=0.2)
    assert not task.done()
    stubborn = False
    assert await cancel_all_and_wait([task])
    assert task.cancelled()


@pytest.mark.parametrize("turns", [0, 1, 5])
async def test_a_plain_task_is_cancelled_at_once(turns: int) -> None:
    task = asyncio.create_task(asyncio.Event().wait())
    for _ in range(turns):
        await asyncio.sleep(0)
    assert await cancel_all_and_wait([task], timeout=5)
    assert task.cancelled()
