"""`publish_windowed`: at most a window of publishes in the air, and a failure ends the run cleanly (the first one
raised, the rest withdrawn, none of their errors left to be logged as never retrieved)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest

from shared.bus import publish_windowed


async def test_no_more_than_the_window_is_in_the_air_and_every_publish_runs() -> None:
    in_air = most = done = 0

    async def publish() -> None:
        nonlocal in_air, most, done
        in_air += 1
        most = max(most, in_air)
        for _ in range(3):  # an ack takes a few turns of the loop
            await asyncio.sleep(0)
        in_air -= 1
        done += 1

    assert await publish_windowed((publish() for _ in range(1000)), window=16) == 1000
    assert (most, done) == (16, 1000)


async def test_a_failure_raises_withdraws_the_rest_and_leaves_no_error_unretrieved() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    never = asyncio.Event()
    withdrawn = 0

    async def waiting() -> None:
        nonlocal withdrawn
        try:
            await never.wait()
        except asyncio.CancelledError:
            withdrawn += 1
            raise

    async def failing(why: str) -> None:
        raise RuntimeError(why)

    def publishes() -> Iterator[Coroutine[Any, Any, None]]:
        # two fail in the same turn of the loop: one is raised, the other must still count as read
        yield waiting()
        yield failing("first")
        yield failing("second")
        yield waiting()
        yield waiting()  # the window is full before this one is drawn: never made

    try:
        with pytest.raises(RuntimeError, match=r"first|second"):
            await publish_windowed(publishes(), window=4)
        await asyncio.sleep(0)  # one turn: the withdrawn publishes see their cancel
        assert withdrawn == 2
        gc.collect()  # an exception never retrieved is reported when its task is collected
        await asyncio.sleep(0)
        assert reported == []
    finally:
        loop.set_exception_handler(None)
