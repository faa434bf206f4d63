"""Stopping background tasks for sure.

On Python 3.11 `asyncio.wait_for` returns the inner result instead of raising `CancelledError` when a cancellation
arrives in the same loop turn as that result (fixed in 3.12). nats-py waits that way in every request (stream info,
consumer creation, KV lookups), so a task cancelled while one of its requests is answered goes on as if nothing
happened, typically into a KV watch or a fetch loop that never ends: a single `cancel()` then `await task` hangs
forever. Measured on one nats-server: 10 of 400 cancels of a just-started KV watch were swallowed this way.
`cancel_and_wait` cancels again until the task has ended. A task still cleaning up after the first cancel (a
`finally` that closes a connection or a child process) is cut short by the next one, so the interval between
cancels is long enough for ordinary cleanup and callers whose tasks clean up for longer pass their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

# how long to wait for a cancelled task before cancelling it again (a swallowed cancel is the only reason to)
RECANCEL_S = 2.0


async def cancel_and_wait(task: asyncio.Task[Any] | None, recancel_s: float = RECANCEL_S) -> None:
    """Cancel `task` and return once it has ended, whatever it raised (it is being stopped)."""
    if task is not None:
        await cancel_all_and_wait([task], recancel_s=recancel_s)


async def cancel_all_and_wait(
    tasks: Iterable[asyncio.Task[Any]], timeout: float | None = None, recancel_s: float = RECANCEL_S
) -> bool:
    """Cancel every task and return once all have ended (True), or after `timeout` seconds with some still
    cleaning up (False); a task that swallowed the cancellation is cancelled again. Exceptions they ended with are
    retrieved (so asyncio does not log them as never retrieved) and dropped."""
    every = list(tasks)
    deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
    pending = {task for task in every if not task.done()}
    while pending:
        wait = recancel_s if deadline is None else min(recancel_s, deadline - asyncio.get_running_loop().time())
        if wait <= 0:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=wait)
    for task in every:
        if task.done() and not task.cancelled():
            task.exception()
    return not pending
