"""Interactive first: batch items (`<p>.router.batch`) are dispatched only as far as interactive traffic
leaves room, so a running batch job adds at most a small, measured delay to interactive requests.

While interactive requests are in flight, or were within the last `yield_s`, at most `busy` batch items run
at once in this replica, and at most `busy_rate` start per second (so batch items take a bounded share of
the CPU and of the providers; one already running finishes); when interactive traffic has been quiet that
long, up to `idle` run at once, unpaced. Interactive requests never wait here; a waiting batch item keeps
its heartbeats going.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from shared import metrics


class Withdrawn(Exception):
    """A batch item was withdrawn (its job cancelled) while it waited at the gate."""


class PriorityGate:
    def __init__(
        self,
        *,
        idle: int,
        busy: int,
        yield_s: float,
        busy_rate: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle = idle
        self.busy = busy
        self.yield_s = yield_s
        self.busy_rate = busy_rate  # batch items started per second while busy (0: unpaced)
        self._next_busy = -1e9  # while busy, the next batch item starts no earlier than this
        self._clock = clock
        self.interactive = 0  # interactive requests in flight
        self.batch = 0  # batch items dispatched and not finished
        self.waiting = 0  # batch items parked at the gate
        self.yields = 0  # batch items that had to wait (interactive traffic had the room, or the pace)
        self._last = -1e9  # when interactive traffic was last seen (started or finished)
        self._changed = asyncio.Condition()

    def quiet_in(self, now: float) -> float:
        """Seconds until interactive traffic counts as quiet (0: it is)."""
        if self.interactive > 0:
            return self.yield_s
        return max(self._last + self.yield_s - now, 0.0)

    def cap(self, now: float) -> int:
        return self.idle if self.quiet_in(now) == 0 else self.busy

    def room(self, now: float) -> int:
        return self.cap(now) - self.batch

    def wait_for_pace(self, now: float) -> float:
        """Seconds until the next batch item may start under the busy pace (0: it may now)."""
        if self.busy_rate <= 0 or self.quiet_in(now) == 0:
            return 0.0
        return max(self._next_busy - now, 0.0)

    # ---- interactive requests -------------------------------------------------------------------------
    def interactive_started(self) -> None:
        self.interactive += 1
        self._last = self._clock()

    def interactive_finished(self) -> None:
        self.interactive -= 1
        self._last = self._clock()

    # ---- batch items -------------------------------------------------------------------------------------
    async def wake(self) -> None:
        """Have waiting batch items look again (one of them was withdrawn)."""
        async with self._changed:
            self._changed.notify_all()

    @asynccontextmanager
    async def batch_slot(self, withdrawn: Callable[[], bool] | None = None) -> AsyncIterator[None]:
        """Wait until a batch item may run, and hold its place while it does; Withdrawn if `withdrawn()` says
        so while it waits (checked on every `wake`: a task is never cancelled inside the condition's wait, which
        can leave its lock held for good on Python 3.11)."""
        self.waiting += 1
        waited = False
        try:
            async with self._changed:
                while True:
                    if withdrawn is not None and withdrawn():
                        raise Withdrawn
                    now = self._clock()
                    pace = self.wait_for_pace(now)
                    if self.room(now) > 0 and pace == 0:
                        break
                    if not waited:  # counted once per item that yields
                        waited = True
                        self.yields += 1
                        metrics.batch_lane_yield()
                    # busy: look again when the pace allows, or when traffic may be quiet
                    wait = pace or self.quiet_in(now) or None
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), wait)
                if self.busy_rate > 0 and self.quiet_in(now) > 0:
                    self._next_busy = now + 1.0 / self.busy_rate
                self.batch += 1
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self.batch -= 1
            async with self._changed:
                self._changed.notify_all()
