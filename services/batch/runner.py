"""The pace of items: one fetch loop per running job on each batch replica, taking from the job's consumer
only as many items as the job's, the key's and the replica's caps leave room for (a job's cap holds across
replicas too: its consumer's `max_ack_pending`). A cancelled or expired job's queued items are fetched in
bulk and answered without running. A key whose quotas are spent is paused, not failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError

from services.batch.lifecycle import stopped
from services.batch.store import ItemQueue, JobStore
from services.batch.worker import ItemWorker
from shared.schemas.batch import BatchJob
from shared.tasks import cancel_all_and_wait

log = logging.getLogger("gatehouse.batch.runner")

RUNNING = frozenset({"in_progress", "cancelling"})
DRAIN_BATCH = 128  # items of a stopped job answered at once
FETCH_WAIT_S = 1.0
ROOM_WAIT_S = 0.5
# deliveries of an item whose handling raised (a bug, or a result that cannot be stored) before it ends failed
# instead of coming back forever
GIVE_UP_DELIVERIES = 5


class Runner:
    def __init__(
        self,
        jobs: JobStore,
        queue: ItemQueue,
        worker: ItemWorker,
        *,
        max_inflight: int,
        key_concurrency: int,
        ack_wait_s: float,
    ) -> None:
        self._jobs = jobs
        self._queue = queue
        self._worker = worker
        self._max = max_inflight
        self._key_max = key_concurrency
        self._ack_wait = ack_wait_s
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_job: Counter[str] = Counter()
        self._by_key: Counter[str] = Counter()
        self._total = 0
        self._paused: dict[str, float] = {}  # key id → until (its quotas are spent)
        self._room = asyncio.Condition()
        self._stopping = False

    @property
    def inflight(self) -> int:
        return self._total

    def ensure(self, job: BatchJob) -> None:
        """Run the job's fetch loop here if the job is running and the loop is not."""
        if self._stopping or job.status not in RUNNING:
            return
        loop = self._loops.get(job.id)
        if loop is None or loop.done():
            self._loops[job.id] = asyncio.create_task(self._loop(job.id), name=f"batch-job-{job.id}")

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop fetching; items in hand finish (or go back to the queue at once if they cannot in time)."""
        self._stopping = True
        await cancel_all_and_wait(self._loops.values(), timeout=timeout)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2.0)

    # ---- one job ----------------------------------------------------------------------------------
    async def _loop(self, job_id: str) -> None:
        sub = None
        while sub is None:
            job = self._jobs.cached(job_id)
            if job is None or job.status not in RUNNING or self._stopping:
                return
            try:
                sub = await self._queue.consumer(job, self._ack_wait)
            except Exception as exc:
                log.warning("job %s: no consumer yet (%s); retrying", job_id, type(exc).__name__)
                await asyncio.sleep(1.0)
        try:
            while not self._stopping:
                job = self._jobs.cached(job_id)
                if job is None or job.status not in RUNNING:
                    return
                draining = stopped(job, time.time()) is not None
                # never ask for more than the consumer's max_ack_pending lets through, or the fetch waits it out
                want = await self._wait_drain_room(job) if draining else await self._wait_room(job)
                if want <= 0:
                    continue
                try:
                    msgs = await sub.fetch(want, timeout=FETCH_WAIT_S)
                except (NatsTimeoutError, TimeoutError):
                    continue
                except Exception as exc:
                    log.warning("job %s: fetch failed (%s)", job_id, type(exc).__name__)
                    await asyncio.sleep(1.0)
                    continue
                if draining:
                    # answered without running: no slot needed, just done quickly
                    await asyncio.gather(*[self._handle(job, msg) for msg in msgs])
                    continue
                for msg in msgs:
                    self._take(job)
                    task = asyncio.create_task(self._run(job, msg))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _free(self, job: BatchJob, now: float) -> int:
        key = job.caller.key_id
        if self._paused.get(key, 0.0) > now:
            return 0
        return min(
            max(job.concurrency, 1) - self._by_job[job.id],
            self._key_max - self._by_key[key],
            self._max - self._total,
        )

    async def _wait_room(self, job: BatchJob) -> int:
        async with self._room:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._room.wait_for(lambda: self._free(job, time.time()) > 0 or self._stopping), ROOM_WAIT_S
                )
            return self._free(job, time.time())

    async def _wait_drain_room(self, job: BatchJob) -> int:
        """A stopped job's items are answered without running, as many at once as its consumer lets out
        (items of it still running here count against that)."""

        def room() -> int:
            return min(DRAIN_BATCH, max(job.concurrency, 1) - self._by_job[job.id])

        async with self._room:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait_for(lambda: room() > 0 or self._stopping), ROOM_WAIT_S)
            return room()

    def _take(self, job: BatchJob) -> None:
        self._by_job[job.id] += 1
        self._by_key[job.caller.key_id] += 1
        self._total += 1

    async def _give(self, job: BatchJob) -> None:
        self._by_job[job.id] -= 1
        self._by_key[job.caller.key_id] -= 1
        self._total -= 1
        async with self._room:
            self._room.notify_all()

    async def _run(self, job: BatchJob, msg: Msg) -> None:
        try:
            await self._handle(job, msg)
        finally:
            await self._give(job)

    async def _handle(self, job: BatchJob, msg: Msg) -> None:
        try:
            retry = await self._worker.handle(msg, job.id, self._ack_wait)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await msg.nak()  # shutting down: let another replica (or the next start) take it now
            raise
        except Exception:
            delivered = msg.metadata.num_delivered or 1
            if delivered >= GIVE_UP_DELIVERIES:
                log.exception("job %s: item failed unexpectedly %d times; it ends failed", job.id, delivered)
                try:
                    await self._worker.give_up(msg, job)
                except Exception:
                    log.exception("job %s: an item that keeps failing could not be ended; it is dropped", job.id)
                    with contextlib.suppress(Exception):
                        await msg.term()
                return
            log.exception("job %s: item failed unexpectedly; it will run again", job.id)
            with contextlib.suppress(Exception):
                await msg.nak(delay=min(2.0**delivered, 30.0))
            return
        if retry is not None and retry.pause_key:
            self._paused[job.caller.key_id] = time.time() + retry.delay
