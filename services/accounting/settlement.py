"""Budget reservations, settled and released: the accounting side of ingress's worst-case reservations.

Ingress reserves a request's worst-case cost on each hard budget's spend counter before dispatch and
notes the reservation as `live` on `<p>.resv.<request_id>` (shared/admission.py). Here:

- **one decision per reservation, across replicas**: the state on `<p>.resv.<request_id>` is the lock
  (shared/reservation_notes.py). A settlement or a release reads it (direct get) and moves it by
  compare-and-set on the sequence it read, *before* any counter increment; only the replica whose move is
  stored applies the increments, the other reads again and follows the new state. Ingress's `live` notes are
  stored only on an empty subject, so a late one (a spool replayed past the duplicate window) never replaces
  a final state.
- **settle**, from the request's record: the reservation becomes `settled`, then each budget's spend counter
  moves from the reservation to the actual cost (`+actual - reserved`, or `+actual` if it was released
  already) and the settled counter gains `actual`. The increments carry ids derived from the request.
  Increments that fail after the move are owed: sent again (the next batch, the next reap) only while their
  ids are still deduplicated (DUPLICATE_WINDOW_S less OWED_MARGIN_S), then given up with an error log. A move
  whose ack and read-back are both lost (it may be stored) is remembered with its increments until the mirror or
  a later read shows the very bytes it published: then they are owed too (at most UNKNOWN_MAX remembered). What
  is left: increments owed when the process dies, or given up, are lost; for a settlement of a live
  reservation that leaves its worst case counted instead of its actual cost (never an overspend), for a
  released one's settlement its actual cost uncounted.
- **release**, when a `live` reservation outlives its expiry (its ingress replica died before the record
  was written): it becomes `released`, then the reservation and the concurrency slots it held are given
  back (lost increments leave them counted: never an overspend); a record that still arrives later is
  settled at its full actual cost. While the event stream (a work queue only accounting consumes) holds an
  event stored before a reservation's expiry, its record may be waiting there (accounting or ClickHouse
  behind): the reservation is not released then, for at most BACKLOG_HOLD_MAX_S past its expiry (an event
  JetStream parked after its last delivery must not hold releases forever). Not covered: a record still in
  an ingress replica's spool (not in the stream yet) when its reservation expires.
- **leases**: an ingress replica may lease a block of a budget and draw requests' worst cases from it
  (shared/leases.py); the lease is noted `live` like a reservation (`lease=True`, expiring after the latest
  deadline it covers), every request drawn from it names it (`lease_id`) and holds its own worst case as
  usual, and needs no live note of its own while the lease's stands for it. The replica gives back the
  undrawn part itself once the last request drawn from it has ended, and notes the lease `settled`. A
  request drawn from a live lease that is settled or released here is first added to the lease's state
  (`drawn`, and per hold `drawn_micro`), by compare-and-set; when the live lease expires (the replica died)
  it is released by its holds minus `drawn_micro`. A request that only shows up after that release, and
  is not in its `drawn`, went back with the lease: its own release gives back nothing more, and its
  settlement adds its full cost.
- **alert**: when a budget's settled spend crosses one of its thresholds, a BudgetAlert is published
  once (the settled counter only grows, and its increments are deduplicated: each increment that counts is
  checked, in a batch that raises too, and owed ones when they are paid), and POSTed to the
  configured webhook in the JSON shape Slack-compatible incoming webhooks take.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Coroutine, Sequence
from datetime import datetime

import httpx
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from shared.bus import MSG_ID
from shared.counters import DUPLICATE_WINDOW_S, Count, CounterError, Counters, Op
from shared.reservation_notes import MoveUnknown, Notes
from shared.schemas.chat import Hold, Reservation
from shared.schemas.events import BudgetAlert, RequestEvent, ReservationState
from shared.schemas.mcp import McpCallEvent
from shared.subjects import Subjects

log = logging.getLogger("gatehouse.accounting.settlement")

MICRO = 1_000_000
REAP_EVERY_S = 1.0
# a state moved under a reservation this often in a row (only other settlements and releases move it): give up
CAS_ATTEMPTS = 8
# increments owed are sent again only this long before their ids leave the counters' duplicate window
OWED_MARGIN_S = 60.0
STREAM_NOT_FOUND = 10059
# how long past its expiry a reservation waits for an event backlog older than its expiry, at most
BACKLOG_HOLD_MAX_S = 3600.0
WEBHOOK_ATTEMPTS = 3
# moves of unknown outcome remembered at most (the oldest is forgotten first, with an error log)
UNKNOWN_MAX = 10_000

# the budget alerts a settlement's increments decide: (index of its settled-counter op among them, hold, actual)
Checks = list[tuple[int, Hold, int]]


def crossed(before: int, after: int, amount: int, thresholds: list[int]) -> list[int]:
    """The thresholds (percent of `amount`) that a total moving from `before` to `after` crossed."""
    return [t for t in sorted(thresholds) if amount > 0 and before < amount * t / 100 <= after]


class Reservations:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        subjects: Subjects,
        counters: Counters,
        *,
        webhook_url: str | None = None,
        timeout_s: float = 5.0,
        tell_webhooks: bool = False,
    ) -> None:
        self._nc = nc
        # alerts also go to the hooks stream, for the `budget_alert` webhooks (services/accounting/webhooks.py)
        self._tell_webhooks = tell_webhooks
        self._js = js
        self._subjects = subjects
        self._counters = counters
        self._webhook_url = webhook_url
        self._timeout = timeout_s
        self.states: dict[str, ReservationState] = {}
        self.caught_up = asyncio.Event()
        self._decode = msgspec.msgpack.Decoder(ReservationState).decode
        self._tasks: set[asyncio.Task[None]] = set()
        self.released = 0
        self.settled = 0
        # the state on a reservation's subject decides who settles or releases it (compare-and-set)
        self._notes = Notes(js, subjects, timeout_s, seen=self._recognise)
        # increments of reservations this replica moved (settled, released) not applied yet: request id ->
        # (increments, when it moved it, the alerts they decide); sent again while their ids are deduplicated
        self._owed: dict[str, tuple[list[Op], float, Checks]] = {}
        # moves whose ack was lost and could not be read back (MoveUnknown): request id -> (the bytes published, the
        # increments that move makes, when, the alerts they decide). Seen later on the subject (mirror or read),
        # the move was ours and the increments are owed; never seen within the duplicate window, it was not stored
        # and they are forgotten
        self._unknown: dict[str, tuple[bytes, list[Op], float, Checks]] = {}
        # the bytes of moves under way -> whether the mirror showed them already (it may, before their ack comes)
        self._moving: dict[bytes, bool] = {}

    # ---- the mirror of <p>.resv.* -------------------------------------------------------------------
    async def start(self) -> None:
        self._sub = await self._js.subscribe(
            self._subjects.reservations_wildcard,
            stream=self._subjects.reservations_stream,
            cb=self._on_state,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        info = await self._sub.consumer_info()
        if info.num_pending == 0:
            self.caught_up.set()

    async def _on_state(self, msg: Msg) -> None:
        try:
            state = self._decode(msg.data)
        except msgspec.MsgspecError:
            log.error("unreadable reservation state on %s ignored", msg.subject)
        else:
            rid = state.reservation.request_id
            self._recognise(rid, msg.data)
            known = self.states.get(rid)
            # a final state is never replaced by an older `live` one that arrives late (a lease's live state is, by
            # the requests drawn from it being added)
            if known is None or known.state == "live":
                self.states[rid] = state
        if msg.metadata.num_pending == 0:  # also when the last one was unreadable
            self.caught_up.set()

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self._timeout)

    async def _move(self, state: ReservationState, expected: int, ops: list[Op], checks: Checks) -> bool:
        """Notes.move; when its outcome is unknown, `ops` (the increments the move makes) are owed as soon as the
        state published is seen on the subject (_recognise), even if that was while it was under way."""
        data = self._notes.encode(state)
        self._moving[data] = False
        try:
            return await self._notes.move(state, expected, data)
        except MoveUnknown as exc:
            if self._moving.get(data):
                self._owed[exc.request_id] = (ops, time.monotonic(), checks)
            else:
                self._maybe_moved(exc, ops, checks)
            raise
        finally:
            self._moving.pop(data, None)

    def _maybe_moved(self, exc: MoveUnknown, ops: list[Op], checks: Checks) -> None:
        """A move that may be stored: remember what it published and the increments it makes (see _recognise)."""
        if len(self._unknown) >= UNKNOWN_MAX:
            rid, (_, lost, _, _) = next(iter(self._unknown.items()))
            del self._unknown[rid]
            log.error(
                "forgot a move of reservation %s of unknown outcome (%d remembered at most): %s",
                rid,
                UNKNOWN_MAX,
                ", ".join(f"{op.subject} {op.delta:+d}" for op in lost),
            )
        self._unknown[exc.request_id] = (exc.data, ops, time.monotonic(), checks)

    def _recognise(self, rid: str, data: bytes) -> None:
        """A state seen on a reservation's subject: if it is what a move of unknown outcome published, that move was
        stored (only this replica wrote those bytes), and its increments are owed (paid by _pay_owed)."""
        if data in self._moving:
            self._moving[data] = True
        unknown = self._unknown.get(rid)
        if unknown is not None and unknown[0] == data:
            del self._unknown[rid]
            self._owed[rid] = (unknown[1], time.monotonic(), unknown[3])
            log.warning("the move of reservation %s (its ack lost) was stored: its increments are owed", rid)

    def _known(self, state: ReservationState | None) -> None:
        """What this replica just read or wrote: its mirror follows (the stream is the truth; this only spares the
        reaper candidates that are gone already)."""
        if state is not None:
            self.states[state.reservation.request_id] = state

    # ---- settlement ----------------------------------------------------------------------------------
    async def settle(self, event: RequestEvent | McpCallEvent, cost_usd: float | None) -> None:
        """Settle the reservation one record carries (see settle_many)."""
        await self.settle_many([(event, cost_usd)])

    async def settle_many(self, records: Sequence[tuple[RequestEvent | McpCallEvent, float | None]]) -> None:
        """Settle the reservations these records carry (a model request's, or a priced tool call's) to their
        actual costs: each reservation's state is moved to `settled` first (compare-and-set: of two replicas
        settling or releasing it at once, one moves it), then the winners' counter increments of the whole batch
        go in one go; raises CounterError when one cannot be made (the caller retries the batch: the states say
        the records are settled, and the increments owed are sent again while their ids are still deduplicated)."""
        await self._pay_owed()
        todo: list[tuple[Reservation, int]] = []
        for event, cost_usd in records:
            reservation = event.reservation
            if reservation is None or not (reservation.holds or reservation.concurrency):
                continue
            # a reservation of concurrency slots only is settled too (with no increments: ingress gave its slots
            # back when the request ended), or the reaper would release it after its expiry and give them back twice
            # unknown price (a soft budget on an unpriced model): count nothing rather than guess
            todo.append((reservation, math.ceil((cost_usd or 0.0) * MICRO)))
        # the requests drawn from one lease are added to it in one move (a busy key's batch holds dozens of them:
        # one compare-and-set each would race each other on the lease's subject)
        by_lease: dict[str, list[Reservation]] = {}
        for reservation, _ in todo:
            if reservation.lease_id:
                by_lease.setdefault(reservation.lease_id, []).append(reservation)
        leases = await asyncio.gather(
            *(self._on_lease(lease_id, drawn) for lease_id, drawn in by_lease.items()), return_exceptions=True
        )
        counted: dict[str, bool | BaseException] = {}
        for drawn, outcome in zip(by_lease.values(), leases, strict=True):
            for reservation in drawn:
                rid = reservation.request_id
                counted[rid] = outcome if isinstance(outcome, BaseException) else outcome[rid]
        # every record's state is moved (or found settled) before anything is raised: one whose move is stored
        # must get its increments (below), even when another record's fails
        decided = await asyncio.gather(
            *(
                self._settle_one(reservation, actual, counted.get(reservation.request_id, True))
                for reservation, actual in todo
            ),
            return_exceptions=True,
        )
        error = next((d for d in decided if isinstance(d, BaseException)), None)
        ops: list[Op] = []
        alerts: Checks = []
        owed: list[str] = []
        for (reservation, actual), released in zip(todo, decided, strict=True):
            if released is None or isinstance(released, BaseException):
                continue  # settled already (by another replica, or an earlier delivery of this record), or not moved
            rid = reservation.request_id
            mine, checks = self._settle_ops(reservation, actual, released)
            alerts += [(len(ops) + index, hold, cost) for index, hold, cost in checks]
            ops += mine
            self._owed[rid] = (mine, time.monotonic(), checks)
            owed.append(rid)
        self.settled += len(owed)
        results = await self._counters.add_many(ops)
        # the alerts of every increment that counted now, also when another failed or a record's move did (the
        # batch is retried, but these moved records are settled then, and a repeated increment is a duplicate)
        await self._check(alerts, results)
        failed = next((r for r in results if isinstance(r, CounterError)), None)
        if failed is not None:
            raise failed
        for rid in owed:
            self._owed.pop(rid, None)
        if error is not None:
            raise error  # the batch is retried: the records moved here are settled, the others are tried again

    async def _check(self, alerts: Checks, results: Sequence[Count | CounterError]) -> None:
        """Publish the budget alerts that these increments' results cross (each once: a settled counter's
        increment counted before, or failed, is not looked at)."""
        for index, hold, actual in alerts:
            total = results[index]
            if isinstance(total, Count) and not total.duplicate:
                await self._alert(hold, total.value - actual, total.value)

    def _settle_ops(self, reservation: Reservation, actual: int, released: bool) -> tuple[list[Op], Checks]:
        """A settlement's increments, and the alerts they decide."""
        rid = reservation.request_id
        ops: list[Op] = []
        # budgets of one level and period (a hard one and a soft one, say) share their counters: the cost is counted
        # once per counter, against everything the reservation held on it
        held: dict[str, int] = {}
        for hold in reservation.holds:
            held[hold.subject] = held.get(hold.subject, 0) + hold.micro_usd
        for i, (subject, micro) in enumerate(held.items()):
            ops.append(Op(subject, actual if released else actual - micro, f"settle.{rid}.{i}"))
        alerts: Checks = []
        settled_at: dict[str, int] = {}
        for i, hold in enumerate(reservation.holds):
            if hold.scope and hold.period_key:
                settled = self._subjects.settled_counter(hold.scope, hold.period_key)
                if settled not in settled_at:
                    settled_at[settled] = len(ops)
                    ops.append(Op(settled, actual, f"settled.{rid}.{i}"))
                alerts.append((settled_at[settled], hold, actual))
        return ops, alerts

    async def _settle_one(self, reservation: Reservation, actual: int, counted: bool | BaseException) -> bool | None:
        """Move one reservation to `settled`: whether its worst case is no longer on the counters (it was released,
        or went back with its lease: `counted` False), so its settlement adds the full actual cost; None when it was
        settled already and nothing is to be done. `counted` is the lease's answer (_on_lease), or how it failed.
        A move of unknown outcome is remembered with its increments (_move) before it is raised."""
        if isinstance(counted, BaseException):
            raise counted
        for _ in range(CAS_ATTEMPTS):
            seq, known = await self._notes.read(reservation.request_id)
            if known is not None and known.state == "settled":
                self._known(known)
                return None
            released = (known is not None and known.state == "released") or not counted
            final = ReservationState(state="settled", reservation=reservation, at=time.time())
            if await self._move(final, seq, *self._settle_ops(reservation, actual, released)):
                self._known(final)
                return released
        raise CounterError(f"reservation {reservation.request_id}: its state kept changing")

    async def _on_lease(self, lease_id: str, drawn: list[Reservation]) -> dict[str, bool]:
        """Requests drawn from a lease end (settled, or released): for each, whether the lease's worst cases count
        it. While the lease is live the requests are added to it (one compare-and-set for all), so a release of the
        lease, on any replica, no longer gives their worst cases back; a released lease counts those its release
        did; a lease given back by its replica counted everything drawn from it. A lease with no state at all (its
        live note was lost) is noted settled with these requests, so it can never be released later without them."""
        for _ in range(CAS_ATTEMPTS):
            seq, known = await self._notes.read(lease_id)
            self._known(known)
            if known is not None and known.state != "live":
                released = known.state == "released"
                return {r.request_id: not released or r.request_id in known.reservation.drawn for r in drawn}
            if known is None:
                lease = Reservation(request_id=lease_id, lease=True)
                state = "settled"
            else:
                lease = known.reservation
                state = "live"
            added = [r for r in drawn if r.request_id not in lease.drawn]
            if added:
                micro = list(lease.drawn_micro) + [0] * (len(lease.holds) - len(lease.drawn_micro))
                for i, hold in enumerate(lease.holds):
                    micro[i] += sum(h.micro_usd for r in added for h in r.holds if h.subject == hold.subject)
                lease = msgspec.structs.replace(
                    lease, drawn=[*lease.drawn, *(r.request_id for r in added)], drawn_micro=micro
                )
                moved = ReservationState(state=state, reservation=lease, at=time.time())
                if not await self._notes.move(moved, seq):
                    continue
                self._known(moved)
            return {r.request_id: True for r in drawn}
        raise CounterError(f"lease {lease_id}: its state kept changing")

    async def _pay_owed(self) -> None:
        """Send again the increments of reservations this replica moved whose increments failed, while their ids
        are still deduplicated (so each counts once). Past that they are given up with an error: a settlement of a
        live reservation then leaves its worst case counted (never an overspend, only a budget that looks fuller
        than it is until its period ends); a released one's settlement misses its actual cost."""
        now = time.monotonic()
        for rid, (_, _, since, _) in list(self._unknown.items()):
            if now - since > DUPLICATE_WINDOW_S:  # its mirror would have shown it long ago: it was never stored
                del self._unknown[rid]
        if not self._owed:
            return
        for rid, (ops, since, _) in list(self._owed.items()):
            if now - since > DUPLICATE_WINDOW_S - OWED_MARGIN_S:
                del self._owed[rid]
                log.error(
                    "gave up the counter increments of reservation %s after %.0fs (beyond the duplicate window they "
                    "could count twice): %s",
                    rid,
                    now - since,
                    ", ".join(f"{op.subject} {op.delta:+d}" for op in ops),
                )
        pending = list(self._owed.items())
        results = await self._counters.add_many([op for _, (ops, _, _) in pending for op in ops])
        first = 0
        for _, (ops, _, checks) in pending:
            await self._check([(first + index, hold, actual) for index, hold, actual in checks], results)
            first += len(ops)
        failed = next((r for r in results if isinstance(r, CounterError)), None)
        if failed is not None:
            raise failed
        for rid, _ in pending:
            self._owed.pop(rid, None)

    async def _alert(self, hold: Hold, before: int, after: int) -> None:
        for pct in crossed(before, after, hold.amount_micro, hold.alerts):
            alert = BudgetAlert(
                # one per budget and threshold: two budgets of a level and period share a period key
                event_id=f"alert.{hold.scope}.{hold.period_key}.{hold.amount_micro}.{pct}",
                at=time.time(),
                scope=hold.scope,
                period=hold.period,
                period_key=hold.period_key,
                threshold_pct=pct,
                amount_usd=hold.amount_micro / MICRO,
                spent_usd=after / MICRO,
                hard=hold.hard,
            )
            subject = self._subjects.events_alert
            await self._js.publish(
                subject.name, subject.encode(alert), timeout=self._timeout, headers={MSG_ID: alert.event_id}
            )
            if self._tell_webhooks:
                hooks = self._subjects.hooks_alert
                await self._js.publish(
                    hooks.name, hooks.encode(alert), timeout=self._timeout, headers={MSG_ID: alert.event_id}
                )
            log.warning(
                "budget alert: %s spent $%.4f of $%g (%d%%) in %s",
                alert.scope,
                alert.spent_usd,
                alert.amount_usd,
                pct,
                alert.period_key,
            )
            if self._webhook_url:
                self._spawn(self._post(alert))

    async def _post(self, alert: BudgetAlert) -> None:
        text = (
            f"gatehouse budget alert: {alert.scope} has spent ${alert.spent_usd:.2f} of its {alert.period} "
            f"budget of ${alert.amount_usd:g} ({alert.threshold_pct}%, {alert.period_key})."
        )
        body = {"text": text, "alert": msgspec.to_builtins(alert)}
        assert self._webhook_url is not None
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            for attempt in range(WEBHOOK_ATTEMPTS):
                try:
                    resp = await client.post(self._webhook_url, json=body)
                    if resp.status_code < 300:
                        return
                    log.warning("budget alert webhook answered %d (attempt %d)", resp.status_code, attempt + 1)
                except httpx.HTTPError as exc:
                    log.warning("budget alert webhook failed: %s (attempt %d)", type(exc).__name__, attempt + 1)
                await asyncio.sleep(2**attempt)
        log.error("budget alert %s not delivered to the webhook after %d attempts", alert.event_id, WEBHOOK_ATTEMPTS)

    # ---- release of reservations whose request never reported ------------------------------------
    async def reap(self, now: float | None = None) -> int:
        """Release every live reservation past its expiry; how many this replica released. Candidates come from
        the mirror; each is read again and moved to `released` by compare-and-set before anything is given back,
        so a reservation is released at most once whichever replicas reap or settle it at the same time.
        Requests go before leases: one drawn from a live lease is added to it, which its release then counts."""
        await self._pay_owed()
        now = time.time() if now is None else now
        expired = [s.reservation for s in self.states.values() if s.state == "live" and s.reservation.expires_at < now]
        if not expired:
            return 0
        # a record may be late rather than missing: while the event stream holds an event stored before a
        # reservation expired, that reservation waits (releasing it would let new requests spend what its request
        # spent already, until its record is settled at full cost). At most BACKLOG_HOLD_MAX_S: an event JetStream
        # parked after its last delivery stays in the stream until recovered by hand, and must not hold every
        # release forever
        oldest = await self._oldest_unsettled_event()
        held = [r for r in expired if r.expires_at >= oldest and now - r.expires_at < BACKLOG_HOLD_MAX_S]
        if held:
            if oldest > -math.inf:  # (unknown: said already)
                log.warning(
                    "%d expired reservations wait for the event backlog (oldest event stored %.0fs ago)",
                    len(held),
                    time.time() - oldest,
                )
            expired = [r for r in expired if r not in held]
        released = 0
        for reservation in sorted(expired, key=lambda r: r.lease):
            if await self._release(reservation.request_id, now):
                released += 1
        return released

    async def _oldest_unsettled_event(self) -> float:
        """When the oldest event accounting has not acknowledged yet was stored (unix time); infinity when there is
        none. The event stream is a work queue consumed by accounting only, so its first message is that event.
        An answer that cannot be had counts as a backlog as old as any (-inf: nothing is released this round)."""
        name = self._subjects.events_stream
        try:
            reply = await self._nc.request(f"$JS.API.STREAM.INFO.{name}", b"", timeout=self._timeout)
            info = json.loads(reply.data)
        except Exception as exc:  # the stream's info unknown: release nothing this round (-inf holds every one)
            log.warning("event backlog unknown (%s): no reservation released this round", type(exc).__name__)
            return -math.inf
        error = info.get("error")
        if error:
            if error.get("err_code") == STREAM_NOT_FOUND:
                return math.inf  # no event stream (yet): no record can be waiting in it
            log.warning("event backlog unknown (%s): no reservation released this round", error.get("description"))
            return -math.inf
        state = info.get("state", {})
        if not state.get("messages"):
            return math.inf
        return datetime.fromisoformat(state["first_ts"]).timestamp()

    async def _release(self, rid: str, now: float) -> bool:
        for _ in range(CAS_ATTEMPTS):
            seq, known = await self._notes.read(rid)
            self._known(known)
            if known is None or known.state != "live" or known.reservation.expires_at >= now:
                return False  # settled or released meanwhile (here or elsewhere), or extended
            moved = await self._release_state(seq, known.reservation)
            if moved is not None:
                return await self._released(*moved)
            # moved under us (settled, released, or a request drawn from the lease added to it): read it again
        raise CounterError(f"reservation {rid}: its state kept changing")

    async def _release_state(self, seq: int, reservation: Reservation) -> tuple[ReservationState, list[Op]] | None:
        """Move a live reservation read at `seq` to `released`: the new state and the increments that give back what
        it held; None if its state moved first."""
        rid = reservation.request_id
        final = ReservationState(state="released", reservation=reservation, at=time.time())
        ops: list[Op] = []
        if reservation.lease:
            # what the requests known to be drawn from it did not take
            for i, hold in enumerate(reservation.holds):
                taken = reservation.drawn_micro[i] if i < len(reservation.drawn_micro) else 0
                if hold.micro_usd - taken > 0:
                    ops.append(Op(hold.subject, taken - hold.micro_usd, f"release.{rid}.{i}"))
        else:
            # a request drawn from a lease that was released without it: its worst case went back with the lease
            counted = (await self._on_lease(reservation.lease_id, [reservation]))[rid] if reservation.lease_id else True
            for i, hold in enumerate(reservation.holds):
                if hold.micro_usd and counted:
                    ops.append(Op(hold.subject, -hold.micro_usd, f"release.{rid}.{i}"))
            ops += [Op(subject, -1, f"release-conc.{rid}.{i}") for i, subject in enumerate(reservation.concurrency)]
        if not await self._move(final, seq, ops, []):
            return None
        return final, ops

    async def _released(self, final: ReservationState, ops: list[Op]) -> bool:
        reservation = final.reservation
        rid = reservation.request_id
        self._known(final)
        # released: only this replica gives it back. Should that fail (or this process die right now), the worst
        # case stays counted, which never overspends; the increments are sent again with the next reap while
        # their ids are deduplicated
        self._owed[rid] = (ops, time.monotonic(), [])
        results = await self._counters.add_many(ops)
        if not any(isinstance(r, CounterError) for r in results):
            self._owed.pop(rid, None)
        self.released += 1
        if reservation.lease:
            log.warning(
                "released the budget lease %s (%d requests drawn from it): its ingress replica never gave it back",
                rid,
                len(reservation.drawn),
            )
        else:
            log.warning("released the reservation of request %s: its record never came", rid)
        return True

    async def reap_forever(self, every_s: float = REAP_EVERY_S) -> None:
        await self.caught_up.wait()
        while True:
            try:
                await self.reap()
            except Exception as exc:  # counters away: try again next round (releases are idempotent)
                log.warning("releasing expired reservations failed: %s", type(exc).__name__)
            await asyncio.sleep(every_s)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def new_event_id() -> str:
    return uuid.uuid4().hex
