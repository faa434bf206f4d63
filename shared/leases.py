"""Leased blocks of counter units: one ingress replica takes many requests' worth of a counter in one increment,
then admits requests against it locally, without a round trip each (shared/admission.py).

- **Requests per minute.** `+L` on the window counter answers a total V: the replica owns the counts
  (V-L, V], of which those ≤ the limit are usable (the rest are given back at once). A request draws one.
- **Hard budgets.** `+L` micro-USD on each of the key's hard spend counters; a request draws its worst case W
  from the lease and still carries its own reservation holding W (accounting settles it `actual - W`, as for
  any request). The lease is noted as a live reservation of its own (`lease=True`; the requests drawn from it
  carry its id) that stands for them: they need no live note of their own, and it expires after the latest
  deadline it covers (only requests whose deadlines it covers draw from it). It is given back after the
  last request drawn from it has ended (whose record was handed to the same ordered publisher first); if the
  replica dies, accounting releases it by what the requests it counts as drawn from it did not take
  (services/accounting/settlement.py: each settled or released while the lease was live is added to its state
  first, so any accounting replica's release counts it). The give-back here and accounting's release share
  increment ids, so whichever comes first counts: they come at most request_timeout_s + grace + MAX_USE_S
  apart, which shared/config.py keeps inside the counters' duplicate window.

How much: L = a SHAREth of the headroom last seen, in whole units (W for money), at most MAX_BLOCK units.
When that is fewer than MIN_BLOCK units, requests are counted exactly, one increment each, as without leases:
near a limit every replica asks the counter, so a burst admits exactly the limit. A block is fetched ahead
(in the background) when the replica's holding falls under half of its last block, while blocks are at least
PREFETCH_MIN units; otherwise requests wait for one fetch together. The first request after IDLE_S without
one is counted exactly too: a key used now and then takes no leases (and so holds nothing it does not use);
a lease is taken when requests follow each other.

Giving back: a replica gives back what it holds undrawn after IDLE_S without a draw (a budget lease is drawn
from for at most MAX_USE_S, and given back once its last request has ended), and on shutdown. So

- nothing is ever over-admitted or overspent: a request only draws units the counter counted within the
  limit, before it was admitted;
- under-admission is bounded: a request refused while other replicas hold undrawn units sees the counter
  high by at most those units, at most two blocks per replica (the one in use and the one fetched ahead),
  each at most 1/SHARE of the headroom it was taken from and at most MAX_BLOCK units; they come back within
  IDLE_S of the replica going quiet (a requests-per-minute block of a crashed replica comes back with the
  next window, a budget lease when accounting releases it).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field

from shared.counters import Count, CounterError, Counters, Op
from shared.schemas.chat import Hold, Reservation

log = logging.getLogger("gatehouse.ingress.leases")

MICRO = 1_000_000
SHARE = 8
MAX_BLOCK = 64
MIN_BLOCK = 4
PREFETCH_MIN = 16
IDLE_S = 1.0
MAX_USE_S = 2.0
# a budget lease of a replica that died is released by accounting MAX_USE_S + max(grace, this) after it was taken
MIN_LEASE_GRACE_S = 5.0
SWEEP_S = 0.25
# how long past its expiry a lease left to accounting is remembered (so a late refusal never gives back again)
STALE_S = 60.0


def block_size(headroom: int, unit: int) -> int:
    """How much the next lease takes: a SHAREth of the headroom in whole units, at most MAX_BLOCK of them;
    0 (count each request exactly) when that is fewer than MIN_BLOCK units."""
    if unit <= 0 or headroom <= 0:
        return 0
    n = min(headroom // SHARE // unit, MAX_BLOCK)
    return n * unit if n >= MIN_BLOCK else 0


def usable(total: int, taken: int, limit: int) -> int:
    """Of a block of `taken` units whose increment answered `total`, those within `limit`:
    (total - taken, total] ∩ (-∞, limit]."""
    return max(0, min(taken, limit - (total - taken)))


@dataclass
class _Window:
    """One requests-per-minute window counter, as this replica holds it."""

    subject: str
    limit: int
    free: int = 0  # units held and not drawn, all within the limit
    total: int = 0  # the counter's total as last seen
    block: int = 0  # the last block's size: the next is fetched ahead when `free` falls under half of it
    used_at: float = 0.0  # the last request counted (monotonic); 0: none yet
    fetching: asyncio.Future[bool] | None = None


@dataclass
class _Lease:
    """A block of micro-USD on each of a key's hard spend counters."""

    lease_id: str
    subjects: tuple[str, ...]
    size: int
    note: Reservation
    drawn: int = 0
    started: float = field(default_factory=time.monotonic)
    used_at: float = field(default_factory=time.monotonic)
    covers: float = 0.0  # the latest request deadline (unix time) its note's expiry covers
    in_flight: int = 0  # requests drawn from it that have not ended
    closed: bool = False  # no more draws: given back once the last request drawn from it has ended
    done: bool = False  # given back


@dataclass
class _Spend:
    """The leases of one set of hard spend counters (a key's budgets in their current periods)."""

    subjects: tuple[str, ...]
    amounts: tuple[int, ...]
    totals: list[int]
    leases: list[_Lease] = field(default_factory=list)
    block: int = 0
    used_at: float = 0.0  # the last request counted (monotonic); 0: none yet
    fetching: asyncio.Future[bool] | None = None

    def free(self) -> int:
        return sum(lease.size - lease.drawn for lease in self.leases if not lease.closed)

    def headroom(self) -> int:
        return min(a - t for a, t in zip(self.amounts, self.totals, strict=True))


Note = Callable[[Reservation, str], None]


class Leases:
    """This replica's leases on the shared counters. `note(reservation, state)` publishes a budget lease's
    state (`live` when taken, `settled` when given back), as a request's reservation is noted."""

    def __init__(self, counters: Counters, *, reservation_grace_s: float, note: Note | None = None) -> None:
        self._counters = counters
        self._note = note
        self._grace = max(reservation_grace_s, MIN_LEASE_GRACE_S)
        self._replica = uuid.uuid4().hex[:12]
        self._n = 0
        self._windows: dict[str, _Window] = {}
        self._spend: dict[tuple[str, ...], _Spend] = {}
        # budget leases not given back yet (closing, or left to accounting's release when giving back failed)
        self._by_id: dict[str, _Lease] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    # ---- requests per minute ------------------------------------------------------------------------
    async def request(self, subject: str, limit: int) -> Count | None:
        """Draw one request from this window's lease: a total of at most `limit` (admitted; the limit minus it
        is what the headers call remaining), or None: count this request exactly (+1 on the counter)."""
        w = self._windows.get(subject)
        if w is None:
            w = self._windows[subject] = _Window(subject, limit)
        w.limit = limit
        while True:  # every fetch either adds units or ends in exact counting
            w = self._windows.setdefault(subject, w)  # swept while this request waited: hold it again
            self._start_sweeper()
            if w.free > 0:
                w.free -= 1
                w.used_at = time.monotonic()
                if w.free < w.block // 2 and w.fetching is None and block_size(limit - w.total, 1) >= PREFETCH_MIN:
                    self._fetch_window(w)
                return Count(min(w.total - w.free, limit))
            if w.fetching is None:
                now = time.monotonic()
                if not block_size(limit - w.total, 1) or now - w.used_at >= IDLE_S:
                    w.used_at = now  # near the limit, or the first request in a while: count it exactly
                    return None
                self._fetch_window(w)
            assert w.fetching is not None
            if not await asyncio.shield(w.fetching):
                return None

    def seen(self, subject: str, total: int) -> None:
        """A window's total, as an exact increment answered it."""
        w = self._windows.get(subject)
        if w is not None:
            w.total = total

    def _fetch_window(self, w: _Window) -> None:
        taken = block_size(w.limit - w.total, 1)
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        w.fetching = done

        async def run() -> None:
            ok = False
            try:
                [result] = await self._counters.add_many([Op(w.subject, taken)])
                if isinstance(result, Count):
                    got = usable(result.value, taken, w.limit)
                    w.free += got
                    w.block = taken
                    w.used_at = time.monotonic()
                    w.total = result.value - (taken - got)
                    if taken - got:  # beyond the limit: nobody may use these, so the counter shows the truth
                        self._send([Op(w.subject, got - taken)])
                    ok = got > 0
                else:
                    log.warning("requests lease not taken: %s", result)
            finally:
                w.fetching = None
                done.set_result(ok)

        self._spawn(run())

    # ---- hard budgets --------------------------------------------------------------------------------
    async def spend(
        self,
        subjects: list[str],
        amounts: list[int],
        worst: int,
        deadline: float,
        describe: Callable[[int], list[Hold]],
    ) -> tuple[str, list[Count]] | None:
        """Draw a request's worst case (micro-USD) from a lease on these hard spend counters (budgets of these
        amounts): the lease's id and, per counter, a total of at most its amount; or None: reserve this request
        exactly. `describe(micro)` makes the holds of a lease of `micro` on each counter. The request must end
        (`ended`) by `deadline`: the lease is given back after its last request has ended, and until then its
        live note stands for them all (a request drawn from a lease needs no live note of its own)."""
        key = tuple(subjects)
        if self._note is None or worst <= 0 or len(set(key)) != len(key):
            # no way to note a lease (accounting could not release it), or two hard budgets on one counter (each
            # request holds its worst case twice): reserve exactly
            return None
        pool = self._spend.get(key)
        if pool is None or pool.amounts != tuple(amounts):
            if pool is not None:
                self._retire(pool)
            pool = self._spend[key] = _Spend(key, tuple(amounts), [0] * len(key))
        while True:  # every fetch either adds units or ends in exact counting
            pool = self._spend.setdefault(key, pool)
            self._start_sweeper()
            now = time.monotonic()
            for lease in pool.leases:
                if (
                    not lease.closed
                    and lease.size - lease.drawn >= worst
                    and now - lease.started < MAX_USE_S
                    and deadline <= lease.covers
                ):
                    lease.drawn += worst
                    lease.in_flight += 1
                    lease.used_at = pool.used_at = now
                    free = pool.free()
                    if (
                        free < pool.block // 2
                        and pool.fetching is None
                        and block_size(pool.headroom(), worst) >= PREFETCH_MIN * worst
                    ):
                        self._fetch_spend(pool, worst, deadline, describe)
                    counts = [Count(min(t - free, a)) for t, a in zip(pool.totals, pool.amounts, strict=True)]
                    return lease.lease_id, counts
            if pool.fetching is None:
                if not block_size(pool.headroom(), worst) or now - pool.used_at >= IDLE_S:
                    pool.used_at = now  # near the limit, or the first request in a while: reserve it exactly
                    return None
                self._fetch_spend(pool, worst, deadline, describe)
            assert pool.fetching is not None
            if not await asyncio.shield(pool.fetching):
                return None

    def spend_seen(self, subjects: list[str], totals: list[int]) -> None:
        """The spend counters' totals, as an exact reservation answered them."""
        pool = self._spend.get(tuple(subjects))
        if pool is not None and len(totals) == len(pool.totals):
            pool.totals = list(totals)

    def undraw(self, lease_id: str, subjects: list[str], worst: int) -> None:
        """A request drawn from a lease was refused after all (another limit): its worst case goes back to the
        lease, or to the counters if the lease was given back meanwhile."""
        lease = self._by_id.get(lease_id)
        if lease is None:  # given back, with this worst case still counted as drawn: it goes back on its own
            self._send([Op(subject, -worst) for subject in subjects])
            return
        if lease.done:
            # being given back, or left to accounting, whose release counts this request as not drawn (it has no
            # record): its worst case goes back with the lease (at worst it stays counted: never given back twice)
            return
        lease.drawn -= worst
        self.ended(lease_id)

    def ended(self, lease_id: str) -> None:
        """A request drawn from this lease has ended (its record handed over): a closed lease whose last request
        this was is given back."""
        lease = self._by_id.get(lease_id)
        if lease is None:
            return
        lease.in_flight -= 1
        if lease.closed and lease.in_flight <= 0 and not lease.done:
            self._spawn(self._close(lease))

    def _fetch_spend(self, pool: _Spend, worst: int, deadline: float, describe: Callable[[int], list[Hold]]) -> None:
        taken = block_size(pool.headroom(), worst)
        self._n += 1
        lease_id = f"lease-{self._replica}-{self._n}"
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        pool.fetching = done

        async def run() -> None:
            ok = False
            try:
                results = await self._counters.add_many([Op(subject, taken) for subject in pool.subjects])
                counts = [r for r in results if isinstance(r, Count)]
                if len(counts) < len(results):
                    log.warning("budget lease not taken: %s", next(r for r in results if isinstance(r, CounterError)))
                    held = [s for s, r in zip(pool.subjects, results, strict=True) if isinstance(r, Count)]
                    self._send([Op(s, -taken) for s in held])
                    return
                # what fits every budget, in whole worst cases; the rest goes back at once
                fits = min(usable(c.value, taken, a) for c, a in zip(counts, pool.amounts, strict=True))
                keep = fits // worst * worst
                pool.totals = [c.value - (taken - keep) for c in counts]
                if taken - keep:
                    self._send([Op(subject, keep - taken) for subject in pool.subjects])
                if not keep:
                    return
                # it covers requests drawn within MAX_USE_S whose deadlines are as far off as this one's
                covers = deadline + MAX_USE_S
                note = Reservation(
                    request_id=lease_id,
                    amount_usd=keep / MICRO,
                    holds=describe(keep),
                    expires_at=covers + self._grace,
                    lease=True,
                )
                if self._note is not None:
                    self._note(note, "live")
                lease = _Lease(lease_id, pool.subjects, keep, note, covers=covers)
                pool.leases.append(lease)
                self._by_id[lease_id] = lease
                pool.block = keep
                ok = True
            finally:
                pool.fetching = None
                done.set_result(ok)

        self._spawn(run())

    async def _close(self, lease: _Lease) -> None:
        """Give back what the lease holds undrawn (with accounting's release ids: whichever comes first counts),
        and note it settled, after the records of the requests drawn from it (one ordered publisher); on failure
        it stays live, and accounting releases it when it expires."""
        if lease.done:
            return
        lease.done = True
        now = time.time()
        for stale in [k for k, v in self._by_id.items() if v.done and v.note.expires_at + STALE_S < now]:
            del self._by_id[stale]  # left to accounting long ago: no request of it can still be refused
        if now >= lease.note.expires_at:
            # past its expiry accounting releases it (a request that never ended): giving back too could count twice
            log.warning("budget lease %s expired before its last request ended; accounting releases it", lease.lease_id)
            return
        free = lease.size - lease.drawn
        if free:
            ops = [Op(subject, -free, f"release.{lease.lease_id}.{i}") for i, subject in enumerate(lease.subjects)]
            results = await self._counters.add_many(ops)
            if any(isinstance(r, CounterError) for r in results):
                log.warning("budget lease %s not given back; accounting releases it when it expires", lease.lease_id)
                return
        self._by_id.pop(lease.lease_id, None)
        if self._note is not None:
            self._note(lease.note, "settled")

    def _end(self, lease: _Lease, everything: bool = False) -> None:
        """No more draws from this lease; give it back now if no request drawn from it is still running."""
        lease.closed = True
        if everything or lease.in_flight <= 0:
            self._spawn(self._close(lease))

    def _retire(self, pool: _Spend) -> None:
        for lease in pool.leases:
            self._end(lease)
        pool.leases.clear()

    # ---- giving back --------------------------------------------------------------------------------
    def sweep(self, everything: bool = False) -> None:
        """Give back what has not been drawn for IDLE_S (a budget lease also after MAX_USE_S); all of it."""
        now = time.monotonic()
        for subject, w in list(self._windows.items()):
            if w.fetching is None and (everything or now - w.used_at >= IDLE_S):
                if w.free:
                    self._send([Op(subject, -w.free)])
                    w.free = 0
                del self._windows[subject]
        for key, pool in list(self._spend.items()):
            for lease in list(pool.leases):
                if everything or now - lease.used_at >= IDLE_S or now - lease.started >= MAX_USE_S:
                    pool.leases.remove(lease)
                    self._end(lease, everything)
            if not pool.leases and pool.fetching is None and (everything or now - pool.used_at >= IDLE_S):
                del self._spend[key]

    def _start_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while self._windows or self._spend:
            await asyncio.sleep(SWEEP_S)
            self.sweep()

    async def drain(self, timeout: float = 5.0) -> None:
        """Give everything back (shutdown; requests still running keep their worst cases on the counters)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.sweep(everything=True)
        for lease in list(self._by_id.values()):  # closed, waiting for their last requests
            self._spawn(self._close(lease))
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    def _send(self, ops: list[Op]) -> None:
        async def run() -> None:
            for result in await self._counters.add_many(ops):
                if isinstance(result, CounterError):
                    log.warning("counter update lost: %s", result)

        self._spawn(run())

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
