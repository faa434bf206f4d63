"""Drain the JetStream event stream into ClickHouse in batches; ack only after the insert succeeded.

A raw nats-py pull subscription on one durable consumer (shared by every replica) rather than a
FastStream subscriber, because a batch needs per-message control that a handler's return value cannot
express: ack the stored ones, terminate the few that can never be stored, keep the rest in hand
(`in_progress`) while ClickHouse is down instead of letting them be redelivered, and nak on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import time
from collections.abc import AsyncIterator, Mapping

import msgspec
from clickhouse_connect.driver.exceptions import DataError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from services.accounting import migrations
from services.accounting.core import COST_HEADER, REQUEST_COLUMNS, BadEvent, cost_header, event_row, event_time
from services.accounting.puller import Puller
from services.accounting.settlement import Reservations
from services.accounting.sink import ClickHouseSink
from services.accounting.telemetry import batch_stored
from shared import metrics
from shared.bus import (
    MSG_ID,
    PUBLISH_TIMEOUT_S,
    bind_pull_consumer,
    ensure_events_stream,
    events_stream_config,
    publish_windowed,
)
from shared.pricing import Rates
from shared.schemas.events import BudgetAlert, RequestEvent
from shared.schemas.mcp import McpCallEvent
from shared.subjects import Subjects
from shared.tasks import cancel_and_wait

log = logging.getLogger("gatehouse.accounting.consumer")

# raised while encoding rows on this side: the same rows fail the same way on every retry
DATA_ERRORS: tuple[type[Exception], ...] = (DataError, ValueError, TypeError, OverflowError, struct.error)
STATS_EVERY_S = 60.0
# consecutive failed fetches (not timeouts) before the consumer is set up again
RESUBSCRIBE_AFTER = 10


# young objects between collections in accounting (shared/runtime.tune_gc): a batch in hand keeps ~40 objects per
# event alive until it is acked, so each young collection walks everything allocated since the last one and frees
# nothing: the fewer, the cheaper. At 200,000 (a few batches' worth) the collector costs ~3.6 µs per event, against
# ~7 µs at 50,000 (bench/README.md).
GEN0_THRESHOLD = 200_000


class Item(msgspec.Struct, frozen=True, eq=False):  # identity: the same event twice is two items
    """One event of a batch in hand (a Struct: built per event, it costs a tenth of a frozen dataclass)."""

    msg: Msg
    table: str
    row: list[object]
    event: RequestEvent | BudgetAlert | McpCallEvent | None = None
    # whether ClickHouse may hold this event already, so the insert must look (see `may_be_stored`)
    verify: bool = True


# an event this much older than its message (or younger: clocks apart) is checked against ClickHouse
FRESH_S = 120.0


def may_be_stored(msg: Msg, event_time: float, duplicate_window_s: float) -> bool:
    """Whether an event may already be in ClickHouse, so that its insert must look first (pure).

    Every publisher sends an event with its event id as `Nats-Msg-Id`, and JetStream drops a second message
    with the same id within the stream's duplicate window. So a copy can be stored already only if this
    message is a redelivery (a process died between insert and ack), or if it entered the stream more than
    the window after an earlier copy, hence more than the window after the event itself (a spool replayed
    late, a publisher retrying past the window). A first delivery entering the stream within FRESH_S of its
    event is neither; everything else is checked. Looking up every event instead would read the whole
    event-id column of the table for every batch (random ids hit every granule): 0.6 s per 5,000 events
    at 10 million rows. Clocks further apart than the window less FRESH_S would defeat this.
    """
    try:
        tokens = (msg.reply or "").split(".")
        if (
            len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK"
        ):  # $JS.ACK.<stream>.<consumer>.<n>.<s>.<c>.<ns>.<p>
            delivered, stream_time = int(tokens[4]), int(tokens[7]) / 1e9
        else:  # the other layouts (domains, accounts): nats-py's own parse
            meta = msg.metadata
            delivered, stream_time = meta.num_delivered, meta.timestamp.timestamp()
    except Exception:
        return True
    if delivered > 1:
        return True
    age = stream_time - event_time
    return not (-FRESH_S < age < min(FRESH_S, duplicate_window_s / 2))


_SETTLED_COST = REQUEST_COLUMNS.index("settled_cost_usd")


class EventConsumer:
    """Applies the schema, then stores batches from the event stream until `stop()`."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        subjects: Subjects,
        sink: ClickHouseSink,
        schema: list[migrations.Migration],
        provider_kinds: Mapping[str, str],
        *,
        durable: str,
        batch_size: int,
        flush_interval_s: float,
        ack_wait_s: float,
        max_deliver: int,
        retry_s: float,
        retry_max_s: float,
        rates: Mapping[str, Rates] | None = None,
        reservations: Reservations | None = None,
        crash_after_settle_file: str = "",
        forward_requests: bool = False,
    ) -> None:
        self._nc = nc
        # stored request records also go to the hooks stream, for on_event plugins (services/accounting/webhooks.py)
        self._forward = forward_requests
        self._crash_after_settle = crash_after_settle_file
        self._rates = dict(rates or {})
        self._reservations = reservations
        self._js = js
        self._subjects = subjects
        self._sink = sink
        self._schema = schema
        self._kinds = dict(provider_kinds)
        self._durable = durable
        self._batch = batch_size
        self._interval = flush_interval_s
        self._ack_wait = ack_wait_s
        self._max_deliver = max_deliver
        self._retry = (retry_s, retry_max_s)
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self.stored: dict[str, int] = {}
        self.dropped = 0
        self.skipped = 0
        self._fetch_failures = 0
        # when the next pull is due, and whether the last one found a full batch (then more is waiting: no pause)
        self._next_fetch = 0.0
        self._more_waiting = True
        # batches fetched but not yet being stored (prepared, or waiting for the store before them), by identity,
        # with when they were fetched: kept alive by `_keep_waiting_alive` if that takes long (ClickHouse down)
        self._waiting: dict[int, tuple[float, list[Msg]]] = {}
        self._window: dict[str, int] = {}
        self._window_start = time.monotonic()

    def stop(self) -> None:
        """Finish the batch in hand (store and ack it, or nak it if ClickHouse is down), then return from run()."""
        self._stopping.set()

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up at once when asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # ---- setup -------------------------------------------------------------------------------
    async def _migrate(self) -> bool:
        delay = self._retry[0]
        while not self._stopping.is_set():
            try:
                applied = await self._sink.migrate(self._schema)
            except Exception as exc:
                log.error("ClickHouse schema not applied (%s); retrying in %.1fs", _first_line(exc), delay)
                await self._pause(delay)
                delay = min(delay * 2, self._retry[1])
                continue
            log.info("schema up to date%s", f" (applied {', '.join(applied)})" if applied else "")
            return True
        return False

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        stream = self._subjects.events_stream
        return await bind_pull_consumer(
            self._js,
            stream,
            self._durable,
            subject=self._subjects.events_wildcard,
            ack_wait=self._ack_wait,
            max_deliver=self._max_deliver,
            max_ack_pending=max(self._batch * 4, 20_000),
        )

    async def _resubscribe(self, psub: JetStreamContext.PullSubscription) -> JetStreamContext.PullSubscription:
        """Fetches keep failing: the consumer (or the stream) may have been deleted; set them up again."""
        self._fetch_failures = 0
        try:
            await ensure_events_stream(self._js, self._subjects)
            fresh = await self._subscribe()
        except Exception as exc:
            log.error("cannot re-attach to the event stream: %s", _first_line(exc))
            return psub
        with contextlib.suppress(Exception):
            await psub.unsubscribe()
        log.warning("re-attached to the event stream after repeated fetch failures")
        return fresh

    async def _on_max_deliveries(self, msg: Msg) -> None:
        # JetStream gave up redelivering an event: it stays in the stream (work-queue retention) to be
        # recovered by hand; this is the only place it becomes visible, so say so loudly
        try:
            advisory = msgspec.json.decode(msg.data, type=dict[str, object])
        except msgspec.DecodeError:
            advisory = {}
        log.error(
            "event at stream sequence %s was delivered %s times without being stored; JetStream parked it "
            "in %s (recover it with `nats stream get`)",
            advisory.get("stream_seq"),
            advisory.get("deliveries"),
            self._subjects.events_stream,
        )

    # ---- the loop ----------------------------------------------------------------------------
    async def _attach(self) -> tuple[Subscription | None, JetStreamContext.PullSubscription | None]:
        """The max-deliveries advisory subscription and the consumer, retried until they work or stop()."""
        advisory: Subscription | None = None
        psub: JetStreamContext.PullSubscription | None = None
        delay = self._retry[0]
        while psub is None and not self._stopping.is_set():
            try:
                advisory = advisory or await self._nc.subscribe(
                    f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self._subjects.events_stream}.{self._durable}",
                    cb=self._on_max_deliveries,
                )
                psub = await self._subscribe()
            except Exception as exc:
                log.error("cannot attach to the event stream (%s); retrying in %.1fs", _first_line(exc), delay)
                await self._pause(delay)
                delay = min(delay * 2, self._retry[1])
        return advisory, psub

    async def run(self) -> None:
        if not await self._migrate():
            return
        advisory, psub = await self._attach()
        if psub is None:
            return
        self.ready.set()
        log.info(
            "storing events from %s (consumer %s, batches of up to %d every %.2fs)",
            self._subjects.events_stream,
            self._durable,
            self._batch,
            self._interval,
        )
        puller = Puller(self._nc, self._subjects.events_stream, self._durable)
        await puller.start()
        waiting_alive = asyncio.create_task(self._keep_waiting_alive())
        # three batches overlap: one is stored (chDB, C++ on its own threads) while the next is prepared (a worker
        # thread) and the one after it streams in (nats-server's work, and its parsing on this loop)
        storing: asyncio.Task[None] | None = None
        fetching: asyncio.Task[list[Msg]] | None = None
        try:
            while True:
                if fetching is None:
                    if self._stopping.is_set():
                        break
                    fetching = asyncio.create_task(self._collect(puller))
                try:
                    fetched, fetching = fetching, None
                    msgs = await fetched
                    if not self._stopping.is_set():  # once stopping, the batch in hand is the last one
                        fetching = asyncio.create_task(self._collect(puller))
                    storing = await self._advance(msgs, storing)
                except Exception:  # e.g. the connection dropped while acking: never end the loop over it
                    log.exception("handling a batch failed; its unacked events will be redelivered")
                    await self._pause(self._retry[0])
                if self._fetch_failures >= RESUBSCRIBE_AFTER:
                    psub = await self._resubscribe(psub)
                self._log_stats()
        finally:
            await cancel_and_wait(waiting_alive)
            # cancelled: what it fetched is redelivered after ack_wait
            await cancel_and_wait(fetching)
            if storing is not None:  # the batch in hand is stored and acked (or handed back) first
                with contextlib.suppress(Exception):
                    await storing
            await _detach(puller, psub, advisory)
            self._log_stats(force=True)

    async def _advance(self, msgs: list[Msg], storing: asyncio.Task[None] | None) -> asyncio.Task[None] | None:
        """Prepare `msgs`, let the batch being stored finish, then store these: the task now storing."""
        try:
            prepared = await asyncio.to_thread(self._prepare, msgs) if msgs else None
            if storing is not None:
                try:
                    await storing
                except Exception:  # that batch only: the one in hand is still stored below
                    log.exception("storing a batch failed; its unacked events will be redelivered")
            return asyncio.create_task(self._handle(prepared)) if prepared is not None else None  # keeps them alive
        finally:
            self._waiting.pop(id(msgs), None)

    async def _collect(self, puller: Puller) -> list[Msg]:
        """Up to batch_size events: those the stream holds once flush_interval_s has passed since the last pull
        (at once when that one was full, so a backlog drains at full speed).

        Fewer, larger inserts: chDB pays ~20 ms per insert whatever its size, and a ClickHouse server
        wants thousands of rows per insert. The events gather in the stream and come in one pull request
        (`no_wait`, see `puller`) rather than one delivery at a time: the service and nats-server wake once
        per batch, not once per event. Asked to stop meanwhile, it pulls what is there at once (stored
        before it exits).
        """
        if not self._more_waiting:
            await self._pause(self._next_fetch - time.monotonic())
        self._next_fetch = time.monotonic() + self._interval
        try:
            msgs = await puller.fetch(self._batch)
        except Exception as exc:  # connection trouble (the client reconnects by itself), or the consumer is gone
            self._more_waiting = False
            if not self._stopping.is_set():
                self._fetch_failures += 1
                log.warning("fetch from %s failed: %s", self._subjects.events_stream, _first_line(exc))
                await self._pause(self._retry[0])
            return []
        self._fetch_failures = 0
        self._more_waiting = len(msgs) >= self._batch
        if msgs:
            self._waiting[id(msgs)] = (time.monotonic(), msgs)
        return msgs

    async def _handle(self, prepared: tuple[list[Item], list[tuple[Msg, str]]]) -> None:
        started_ns = time.time_ns()
        items, bad = prepared
        for msg, reason in bad:
            log.error("dropping event (stream sequence %s): %s", _seq(msg), reason)
            await msg.term()
            self.dropped += 1
        if not items:
            return
        async with self._holding([i.msg for i in items]):
            settled = await self._settle(items)
            self._failpoint(items)
            stored = await self._store(items) if settled else None
        if stored is None:  # stopping while ClickHouse is down: hand them back for a replica or a restart
            for item in items:
                await item.msg.nak()
            log.warning("stopped with %d events unstored; they were handed back to the stream", len(items))
        elif self._forward and not await self._forwarded(stored):
            for item in stored:  # stored, but on_event plugins were not told: again later (stored once all the same)
                await item.msg.nak(delay=self._retry[0])
        else:
            for item in stored:
                await item.msg.ack()
            records = [(i.msg, i.event, i.row[_SETTLED_COST]) for i in stored if isinstance(i.event, RequestEvent)]
            batch_stored(len(items) + len(bad), records, started_ns)
        # acks are fire-and-forget publishes; push them out now (a lost ack only means a harmless redelivery)
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=5)

    async def _forwarded(self, items: list[Item]) -> bool:
        """Hand the stored request records to the hooks stream (Nats-Msg-Id: the event id), each with the price
        stored for it (COST_HEADER), a window of publishes at a time (a batch holds thousands); False on failure."""
        subject = self._subjects.hooks_request.name
        try:
            await publish_windowed(
                self._js.publish(
                    subject,
                    i.msg.data,
                    timeout=PUBLISH_TIMEOUT_S,
                    headers={MSG_ID: i.event.event_id, COST_HEADER: cost_header(i.row)},
                )
                for i in items
                if isinstance(i.event, RequestEvent)
            )
        except Exception as exc:
            log.error("telling on_event plugins about %d records failed (%s)", len(items), _first_line(exc))
            return False
        return True

    def _prepare(self, msgs: list[Msg]) -> tuple[list[Item], list[tuple[Msg, str]]]:
        """Decode, map and price a batch (runs in a worker thread: pricing is ~80 µs per event)."""
        items: list[Item] = []
        bad: list[tuple[Msg, str]] = []
        window = events_stream_config(self._subjects).duplicate_window or 0.0
        for msg in msgs:
            try:
                table, row, event = event_row(self._subjects, msg.subject, msg.data, self._kinds, self._rates)
            except BadEvent as exc:
                bad.append((msg, str(exc)))
                continue
            verify = may_be_stored(msg, event_time(table, row), window)
            items.append(Item(msg, table, row, event, verify))
        return items, bad

    def _failpoint(self, items: list[Item]) -> None:
        """The test failpoint `crash_after_settle_file` (see AccountingSettings): die once, settled but unacked."""
        path = self._crash_after_settle
        if not path or os.path.exists(path):
            return
        if any(isinstance(i.event, RequestEvent | McpCallEvent) and i.event.reservation is not None for i in items):
            with open(path, "w") as marker:
                marker.write(f"{len(items)}\n")
            log.warning("failpoint: exiting after settling %d events, before storing them", len(items))
            os._exit(70)

    async def _settle(self, items: list[Item]) -> bool:
        """Settle the budget reservations of the batch's requests before they are stored and acked,
        retrying while the counters are away; False if asked to stop first (nothing is acked then)."""
        if self._reservations is None:
            return True
        records: list[tuple[RequestEvent | McpCallEvent, float | None]] = [
            (i.event, cost if isinstance(cost := i.row[_SETTLED_COST], float) else None)
            for i in items
            if isinstance(i.event, RequestEvent) and i.event.reservation is not None
        ]
        # a priced tool call settles to its price (0 when it failed before its tool answered)
        records += [
            (i.event, i.event.cost_usd)
            for i in items
            if isinstance(i.event, McpCallEvent) and i.event.reservation is not None
        ]
        if not records:
            return True
        with contextlib.suppress(TimeoutError):
            # the mirror of settled/released states first, so a redelivered record is never settled twice
            await asyncio.wait_for(self._reservations.caught_up.wait(), self._retry[1])
        delay = self._retry[0]
        while True:
            try:
                await self._reservations.settle_many(records)
                return True
            except Exception as exc:
                log.error("settling %d requests failed (%s); retrying", len(records), _first_line(exc))
                if self._stopping.is_set():
                    return False
                await self._pause(delay)
                delay = min(delay * 2, self._retry[1])

    async def _store(self, items: list[Item]) -> list[Item] | None:
        """Store `items`, retrying while ClickHouse fails; the stored ones, or None if asked to stop first.

        While ClickHouse is down the batch stays in hand, so an outage of any length costs no delivery
        attempts (max_deliver only counts crashes and shutdowns). Rows this side cannot encode are
        isolated by bisection and terminated, so one bad event never blocks the stream.
        """
        delay = self._retry[0]
        poisoned: list[Item] = []
        failures = 0
        while True:
            todo = [i for i in items if i not in poisoned]
            try:
                # after a failure part of the batch may be stored (one table of several): look every event up
                await self._insert_isolating(todo, poisoned, verify_all=failures > 0)
            except Exception as exc:
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    log.error(
                        "storing %d events failed (%s); holding them and retrying (attempt %d)",
                        len(todo),
                        _first_line(exc),
                        failures,
                    )
                if self._stopping.is_set():
                    return None
                await self._pause(delay)
                delay = min(delay * 2, self._retry[1])
                continue
            stored = [i for i in todo if i not in poisoned]
            if failures:
                log.info("ClickHouse is back: stored %d events after %d failed attempts", len(stored), failures)
            return stored

    async def _insert_isolating(self, items: list[Item], poisoned: list[Item], *, verify_all: bool = False) -> None:
        if not items:
            return
        batches: dict[str, list[list[object]]] = {}
        for item in items:
            batches.setdefault(item.table, []).append(item.row)
        started = time.perf_counter()
        verify = None if verify_all else {str(item.row[0]) for item in items if item.verify}
        try:
            inserted = await self._sink.insert_new(batches, verify)
        except DATA_ERRORS as exc:
            if len(items) == 1:
                log.error("event %s can never be stored (%s); dropping it", items[0].row[0], _first_line(exc))
                await items[0].msg.term()
                poisoned.append(items[0])
                self.dropped += 1
                return
            half = len(items) // 2  # another table of the batch may have been stored: look every event up
            await self._insert_isolating(items[:half], poisoned, verify_all=True)
            await self._insert_isolating(items[half:], poisoned, verify_all=True)
            return
        metrics.accounting_insert(inserted, time.perf_counter() - started)
        for table, count in inserted.items():
            self.stored[table] = self.stored.get(table, 0) + count
            self._window[table] = self._window.get(table, 0) + count
        skipped = len(items) - sum(inserted.values())
        if skipped:
            # redelivered after a crash between insert and ack, or republished under a new Nats-Msg-Id
            log.info("skipped %d events already stored", skipped)
            self.skipped += skipped

    async def _keep_waiting_alive(self) -> None:
        """Batches waiting their turn (while the one before them is stored, e.g. for as long as ClickHouse is
        down) are kept from redelivery like the batch being stored; in a healthy pipeline none waits that long,
        so this sends nothing."""
        # checked every sixth of ack_wait and told once it has waited that long: the first keepalive of a batch
        # comes at most a third of ack_wait after it began to wait (two thirds of slack against a loaded loop)
        period = self._ack_wait / 6
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for since, msgs in list(self._waiting.values()):
                if now - since < period:
                    continue
                for m in msgs:
                    with contextlib.suppress(Exception):
                        await m.in_progress()

    @contextlib.asynccontextmanager
    async def _holding(self, msgs: list[Msg]) -> AsyncIterator[None]:
        """While a batch is in hand, keep telling JetStream we are working on it (no redelivery meanwhile)."""

        async def keepalive() -> None:
            while True:
                await asyncio.sleep(self._ack_wait / 3)
                for m in msgs:
                    with contextlib.suppress(Exception):
                        await m.in_progress()

        task = asyncio.create_task(keepalive())
        try:
            yield
        finally:
            await cancel_and_wait(task)

    def _log_stats(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._window_start < STATS_EVERY_S:
            return
        if self._window:
            counts = ", ".join(f"{n} {table}" for table, n in sorted(self._window.items()))
            elapsed = now - self._window_start
            log.info("stored %s in the last %.0fs (%d dropped in total)", counts, elapsed, self.dropped)
        self._window = {}
        self._window_start = now


async def _detach(puller: Puller, psub: JetStreamContext.PullSubscription, advisory: Subscription | None) -> None:
    await puller.stop()
    with contextlib.suppress(Exception):
        await psub.unsubscribe()
    if advisory is not None:
        with contextlib.suppress(Exception):
            await advisory.unsubscribe()


def _seq(msg: Msg) -> object:
    try:
        return msg.metadata.sequence.stream
    except Exception:
        return "?"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"
