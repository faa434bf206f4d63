"""The one publisher of events to JetStream (request records, guard verdicts): the caller never waits, and
no event is dropped while the disk lasts: what JetStream cannot take now is spooled and replayed in order.

Two modes. *Direct*: events queue in memory and go out in order, up to `window` of them awaiting their
ack. On a failure (no connection, no ack within the timeout, no stream, JetStream unavailable), or when
`max_in_memory` events are waiting, every unacknowledged event moves to the spool in order and the spool
becomes the only path (*spooling*): new events are appended behind them, and the same loop publishes
from the file, in order, acknowledging records as acks arrive and rewinding to the first unacknowledged
one after a failure. Once it has caught up, the spool is truncated and the direct path resumes.

Every event carries Nats-Msg-Id = its event id, so one stored but not acknowledged (the ack was lost)
and sent again is stored once: by JetStream within its duplicate window, by accounting's event-id check
after that. At startup, and every `adopt_every_s`, the spools of dead processes of the same service
are adopted (see shared/spool.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from pathlib import Path
from typing import TypeVar

from nats.aio.client import Client

from shared.bus import PUBLISH_TIMEOUT_S
from shared.jetstream_acks import JetStreamAcks, permanent
from shared.settings import ServiceSettings
from shared.spool import Position, Spool, SpoolConfig, fsync_all
from shared.spool_format import SpooledEvent
from shared.subjects import Subject
from shared.tasks import cancel_all_and_wait

log = logging.getLogger("gatehouse.events")

T = TypeVar("T")
_FIRST_RETRY_S = 0.05
# how often an unacknowledged window checks that the connection is still up
_CONNECTION_POLL_S = 0.1
_DROP_LOG_EVERY_S = 10.0


class _Sent:
    """One publish awaiting its ack; `position` is where it ends in the spool when it came from there."""

    __slots__ = ("abandoned", "deadline", "error", "event", "future", "position")

    def __init__(self, event: SpooledEvent, position: Position | None, deadline: float) -> None:
        self.event = event
        self.position = position
        self.deadline = deadline
        self.future: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        self.abandoned = False

    def abandon(self) -> None:
        self.abandoned = True
        if self.future is not None:
            self.future.cancel()


class EventPublisher:
    """Publishes events to JetStream in order, off the caller's path, through a spool when it must."""

    def __init__(
        self,
        spool: SpoolConfig,
        *,
        window: int = 256,
        max_in_memory: int = 10_000,
        timeout_s: float = PUBLISH_TIMEOUT_S,
        fsync_s: float = 1.0,
        retry_max_s: float = 2.0,
        adopt_every_s: float = 60.0,
    ) -> None:
        self.config = spool
        self._window = window
        self._max_in_memory = max(max_in_memory, window)
        self._timeout = timeout_s
        self._fsync_s = fsync_s
        self._retry_max = retry_max_s
        self._adopt_every = adopt_every_s
        self._queue: deque[SpooledEvent] = deque()
        self._inflight: deque[_Sent] = deque()
        self._spooling = False
        self._epoch = 0  # bumped whenever the window is abandoned
        self._delay = _FIRST_RETRY_S
        self._wake = asyncio.Event()
        self._dirty = asyncio.Event()
        self._stop = asyncio.Event()
        self._acks = JetStreamAcks()
        self._nc: Client | None = None
        self._spool: Spool | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._last_drop_log = -_DROP_LOG_EVERY_S
        # counters (for logs, metrics and tests)
        self.published = 0
        self.spooled = 0
        self.dropped = 0
        self.rejected = 0

    @classmethod
    def from_settings(cls, settings: ServiceSettings, service: str) -> EventPublisher:
        """The publisher of one `service` process, spooling under `<data_dir>/spool/<service>/`."""
        spool = SpoolConfig(root=Path(settings.data_dir) / "spool" / service, max_bytes=settings.spool_max_bytes)
        return cls(
            spool,
            max_in_memory=settings.events_max_in_memory,
            timeout_s=settings.nats_timeout_s,
            fsync_s=settings.spool_fsync_s,
        )

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self, nc: Client) -> None:
        """Open this process's spool, adopt what dead processes left, and start publishing."""
        self._nc = nc
        self._spool = Spool.open(self.config)
        await self._acks.start(nc)
        self._adopt()
        self._tasks = [
            asyncio.create_task(self._pump(), name="events-pump"),
            asyncio.create_task(self._sync_forever(), name="events-fsync"),
            asyncio.create_task(self._adopt_forever(), name="events-adopt"),
        ]

    async def drain(self, timeout: float = 10.0) -> None:
        """Publish what can be published within `timeout` (nothing is waited for while JetStream is away),
        spool the rest, fsync and close the spool."""
        if self._spool is None or self._closed:
            return
        self._stop.set()
        self._wake.set()
        pump, *others = self._tasks
        _, pending = await asyncio.wait({pump}, timeout=timeout)
        await cancel_all_and_wait([*pending, *others])
        if self._spooling:
            self._abandon_window()
        elif self._queue or self._inflight:
            self._enter_spooling("shutting down")
        await self._acks.stop()
        self._closed = True
        self._spool.close()
        if self.dropped:
            log.error("%d events were dropped because the spool was full or failed", self.dropped)

    @property
    def spooling(self) -> bool:
        return self._spooling

    @property
    def spooled_bytes(self) -> int:
        """Bytes the spool holds on disk (metrics; a plain read, safe from a scrape thread)."""
        return self._spool.size if self._spool is not None and not self._closed else 0

    @property
    def spool(self) -> Spool:
        assert self._spool is not None, "EventPublisher.start() first"
        return self._spool

    # ---- the caller's side: never waits ----------------------------------------------------
    def publish(
        self, subject: Subject[T], event: T, event_id: str, traceparent: str = "", *, first: bool = False
    ) -> None:
        """Hand an event over; it is published with Nats-Msg-Id = event_id (and the trace context of the
        work it records, when given), after every earlier one. A `first` event is stored only while its
        subject holds nothing (otherwise it is done: the subject has moved past it)."""
        item = SpooledEvent(
            subject=subject.name, event_id=event_id, data=subject.encode(event), traceparent=traceparent, first=first
        )
        if self._closed or self._nc is None:
            self._drop(item, "the publisher is not running")
            return
        if not self._spooling:
            if not self._nc.is_connected:
                self._enter_spooling("not connected to NATS")
            elif len(self._queue) + len(self._inflight) >= self._max_in_memory:
                self._enter_spooling(f"{self._max_in_memory} events waiting in memory")
            else:
                self._queue.append(item)
                self._wake.set()
                return
        self._to_spool(item)

    def _to_spool(self, item: SpooledEvent) -> None:
        if self.spool.append(item):
            self.spooled += 1
            self._dirty.set()
            self._wake.set()
        else:
            self._drop(item, f"the spool is full ({self.spool.size} bytes, cap {self.config.max_bytes})")

    def _drop(self, item: SpooledEvent, why: str) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_EVERY_S:
            self._last_drop_log = now
            log.error("event %s on %s LOST: %s (%d lost so far)", item.event_id, item.subject, why, self.dropped)

    def _enter_spooling(self, reason: str) -> None:
        """Move every event in memory to the spool, in order; from now on events go there."""
        if self._spooling:
            return
        self._spooling = True
        moved = [sent.event for sent in self._inflight] + list(self._queue)
        self._abandon_window()
        self._queue.clear()
        for item in moved:
            self._to_spool(item)
        log.warning("events go to the spool %s: %s", self.spool.directory, reason)

    def _abandon_window(self) -> None:
        self._epoch += 1
        for sent in self._inflight:
            sent.abandon()
        self._inflight.clear()

    # ---- the pump: one task, so order is kept ----------------------------------------------
    async def _pump(self) -> None:
        while True:
            try:
                if await self._step():
                    return
            except Exception:
                log.exception("event publisher failed; retrying")
                self._on_failure("internal error")
                await self._pause(self._retry_max)

    async def _step(self) -> bool:
        """One round: settle acks, move on, wait for something to happen; True when done draining."""
        assert self._nc is not None
        self._wake.clear()
        error = self._settle()
        connected = self._nc.is_connected
        if error is None and not connected:
            if self._inflight or self._queue:
                error = "not connected to NATS"
            elif self._spooling:
                if self._stop.is_set():
                    return True
                await self._pause(_CONNECTION_POLL_S)  # wait for the client to reconnect
                return False
        if error is not None:
            self._on_failure(error)
            if self._stop.is_set():
                return True  # nothing more is sent while JetStream is away: the rest stays spooled
            await self._pause(_FIRST_RETRY_S if not connected else self._backoff())
            return False
        if self._spooling and not self._inflight and not self.spool.unread_bytes():
            self.spool.ack_read()  # also passes damaged records the reader skipped
            if not self.spool.pending_bytes():
                self.spool.reset()
                self._spooling = False
                log.warning("spool replayed: events go straight to JetStream again")
        if self._stop.is_set() and not (self._inflight or self._queue or self._spooling):
            return True
        await self._fill()
        await self._wait()
        return False

    def _settle(self) -> BaseException | str | None:
        """Retire acknowledged publishes from the head of the window, in order; the first failure, if any."""
        now = time.monotonic()
        while self._inflight:
            head = self._inflight[0]
            error = head.error
            if error is None:
                future = head.future
                if future is None or not future.done():
                    if now < head.deadline:
                        return None
                    return f"no JetStream ack within {self._timeout:g}s"
                error = future.exception() if not future.cancelled() else RuntimeError("publish cancelled")
            if error is not None and not permanent(error):
                return error
            self._inflight.popleft()
            if error is not None:
                self._reject(head.event, error)
            else:
                self.published += 1
                self._delay = _FIRST_RETRY_S
            if head.position is not None:
                self.spool.ack(head.position)
        return None

    def _on_failure(self, error: BaseException | str) -> None:
        if self._spooling:
            self._abandon_window()
            self.spool.rewind()
            log.info("spool replay paused: %s", error)
        else:
            self._enter_spooling(f"JetStream publish failed: {error!r}")

    def _reject(self, item: SpooledEvent, error: BaseException) -> None:
        self.rejected += 1
        self.spool.reject(item)
        log.error(
            "event %s on %s refused by JetStream (%s); kept in %s, not retried",
            item.event_id,
            item.subject,
            error,
            self.config.root / "rejected.seg",
        )

    async def _fill(self) -> None:
        """Send from the spool or the memory queue until `window` publishes await their ack."""
        assert self._nc is not None
        epoch = self._epoch
        room = self._window - len(self._inflight)
        if room <= 0:
            return
        # each send checks the connection: one written while the client reconnects would wait in its
        # buffer and be stored after reconnecting, ahead of earlier events replayed from the spool
        if self._spooling:
            for item, position in self.spool.read(room):
                if not await self._send(item, position) or self._epoch != epoch:
                    return
        else:
            while self._queue and len(self._inflight) < self._window and self._nc.is_connected:
                if not await self._send(self._queue.popleft(), None) or self._epoch != epoch or self._spooling:
                    return

    async def _send(self, item: SpooledEvent, position: Position | None) -> bool:
        """Publish one event at the end of the window; False if it could not be sent (nothing after it is)."""
        assert self._nc is not None
        sent = _Sent(item, position, time.monotonic() + self._timeout)
        self._inflight.append(sent)  # before the await: a switch to spooling meanwhile must see it
        if not self._nc.is_connected:
            sent.error = ConnectionError("not connected to NATS")
            return False
        try:
            future = await self._acks.send(self._nc, item)
        except Exception as exc:
            sent.error = exc
            return False
        if sent.abandoned:
            future.cancel()
            return False
        sent.future = future
        future.add_done_callback(lambda _: self._wake.set())
        return True

    async def _wait(self) -> None:
        timeout = None
        if self._inflight:
            timeout = max(0.0, min(self._inflight[0].deadline - time.monotonic(), _CONNECTION_POLL_S))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    async def _pause(self, seconds: float) -> None:
        """Wait before trying again (cut short by drain)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    def _backoff(self) -> float:
        delay = self._delay
        self._delay = min(self._delay * 2, self._retry_max)
        return delay

    # ---- durability and orphans ------------------------------------------------------------
    async def _sync_forever(self) -> None:
        """fsync what was spooled, off the event loop, at most every `fsync_s`."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                fds = self.spool.take_dirty()
                if fds:
                    await asyncio.to_thread(fsync_all, fds)
            except OSError:
                log.exception("spool fsync failed; trying again in a second")
                self._dirty.set()
                await asyncio.sleep(1.0)
            if self._fsync_s:
                await asyncio.sleep(self._fsync_s)

    async def _adopt_forever(self) -> None:
        while True:
            await asyncio.sleep(self._adopt_every)
            try:
                self._adopt()
            except OSError:
                log.exception("adopting orphaned spools failed")

    def _adopt(self) -> None:
        """Take over the spools of dead processes of this service, so their events are published too."""
        orphans = self.spool.claim_orphans()
        if not orphans:
            return
        if any(o.size for o in orphans):
            self._enter_spooling("adopting the spool of a process that is gone")
        if self.spool.adopt(orphans):
            self._dirty.set()
            self._wake.set()
