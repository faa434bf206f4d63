"""Budget reservations, settled and released: the accounting side of ingress's worst-case reservations.

Ingress reserves a request's worst-case cost on each hard budget's spend counter before dispatch and
notes the reservation as `live` on `<p>.resv.<request_id>` (shared/admission.py). Here:

- **settle**, from the request's record: each budget's spend counter moves from the reservation to the
  actual cost (`+actual - reserved`), the settled counter gains `actual`, and the reservation becomes
  `settled`. Every increment carries a Nats-Msg-Id derived from the request, so a record delivered
  twice (accounting killed between settling and acking) settles once; the `settled` state guards beyond
  the counters' duplicate window.
- **release**, when a `live` reservation outlives its expiry (its ingress replica died before the record
  was written): the reservation and the concurrency slots it held are given back, and it becomes
  `released`; a record that still arrives later is then settled at its full actual cost.
- **leases**: an ingress replica may lease a block of a budget and draw requests' worst cases from it
  (shared/leases.py); the lease is noted `live` like a reservation (`lease=True`, expiring after the latest
  deadline it covers), every request drawn from it names it (`lease_id`) and holds its own worst case as
  usual, and needs no live note of its own while the lease's stands for it. The replica gives back the
  undrawn part itself once the last request drawn from it has ended, and notes the lease `settled`; when a
  live lease expires instead (the replica died), its holds minus the worst cases of the requests known to be
  drawn from it (records settled, or live notes of requests holding concurrency slots) are released, and
  those requests are noted on the `released` lease (`drawn`). A request drawn from it that only shows up
  later was given back with the lease: its own release gives back nothing more, and its settlement adds its
  full cost.
- **alert**: when a budget's settled spend crosses one of its thresholds, a BudgetAlert is published
  once (the settled counter only grows, and its increments are deduplicated), and POSTed to the
  configured webhook in the JSON shape Slack-compatible incoming webhooks take.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Coroutine, Sequence

import httpx
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from shared.bus import MSG_ID
from shared.counters import Count, CounterError, Counters, Op
from shared.schemas.chat import Hold, Reservation
from shared.schemas.events import BudgetAlert, RequestEvent, ReservationState
from shared.schemas.mcp import McpCallEvent
from shared.subjects import Subjects

log = logging.getLogger("gatehouse.accounting.settlement")

MICRO = 1_000_000
REAP_EVERY_S = 1.0
WEBHOOK_ATTEMPTS = 3


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
        self._encode = msgspec.msgpack.Encoder().encode
        self._tasks: set[asyncio.Task[None]] = set()
        self.released = 0
        self.settled = 0
        # a settlement and a release decide from the states what was given back already, then act: one at a time,
        # or a record of a lease being released could be settled against the worst case the release gives back
        self._deciding = asyncio.Lock()

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
            return
        rid = state.reservation.request_id
        known = self.states.get(rid)
        # a final state is never replaced by an older `live` one that arrives late
        if known is None or known.state == "live":
            self.states[rid] = state
        if msg.metadata.num_pending == 0:
            self.caught_up.set()

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self._timeout)

    async def _note(self, reservation: Reservation, state: str) -> None:
        final = ReservationState(state=state, reservation=reservation, at=time.time())
        subject = self._subjects.reservation(reservation.request_id)
        await self._js.publish(
            subject.name,
            self._encode(final),
            timeout=self._timeout,
            headers={MSG_ID: f"resv-{state}-{reservation.request_id}"},
        )
        self.states[reservation.request_id] = final

    # ---- settlement ----------------------------------------------------------------------------------
    async def settle(self, event: RequestEvent | McpCallEvent, cost_usd: float | None) -> None:
        """Settle the reservation one record carries (see settle_many)."""
        await self.settle_many([(event, cost_usd)])

    async def settle_many(self, records: Sequence[tuple[RequestEvent | McpCallEvent, float | None]]) -> None:
        """Settle the reservations these records carry (a model request's, or a priced tool call's) to their
        actual costs, every counter increment of
        the batch in one go; raises CounterError when one cannot be made (the caller retries the batch:
        every increment is idempotent, and the states note which are done)."""
        async with self._deciding:
            await self._settle_many(records)

    async def _settle_many(self, records: Sequence[tuple[RequestEvent | McpCallEvent, float | None]]) -> None:
        todo: list[tuple[Reservation, int, bool]] = []
        for event, cost_usd in records:
            reservation = event.reservation
            if reservation is None or not reservation.holds:
                continue
            known = self.states.get(reservation.request_id)
            if known is not None and known.state == "settled":
                continue
            # unknown price (a soft budget on an unpriced model): count nothing rather than guess
            actual = math.ceil((cost_usd or 0.0) * MICRO)
            released = (known is not None and known.state == "released") or self._outside_lease(reservation)
            todo.append((reservation, actual, released))
        ops: list[Op] = []
        alerts: list[tuple[int, Hold, int]] = []  # (index of the settled-counter op, hold, actual)
        for reservation, actual, released in todo:
            rid = reservation.request_id
            # budgets of one level and period (a hard one and a soft one, say) share their counters: the cost is
            # counted once per counter, against everything the reservation held on it
            held: dict[str, int] = {}
            for hold in reservation.holds:
                held[hold.subject] = held.get(hold.subject, 0) + hold.micro_usd
            for i, (subject, micro) in enumerate(held.items()):
                ops.append(Op(subject, actual if released else actual - micro, f"settle.{rid}.{i}"))
            settled_at: dict[str, int] = {}
            for i, hold in enumerate(reservation.holds):
                if hold.scope and hold.period_key:
                    settled = self._subjects.settled_counter(hold.scope, hold.period_key)
                    if settled not in settled_at:
                        settled_at[settled] = len(ops)
                        ops.append(Op(settled, actual, f"settled.{rid}.{i}"))
                    alerts.append((settled_at[settled], hold, actual))
        results = await self._counters.add_many(ops)
        failed = next((r for r in results if isinstance(r, CounterError)), None)
        if failed is not None:
            raise failed
        for index, hold, actual in alerts:
            total = results[index]
            assert isinstance(total, Count)
            if not total.duplicate:
                await self._alert(hold, total.value - actual, total.value)
        await asyncio.gather(*(self._note(reservation, "settled") for reservation, _, _ in todo))
        self.settled += len(todo)

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

    def _outside_lease(self, reservation: Reservation) -> bool:
        """A request drawn from a lease that was released without counting it: its worst case went back with
        the lease already."""
        if not reservation.lease_id:
            return False
        lease = self.states.get(reservation.lease_id)
        return lease is not None and lease.state == "released" and reservation.request_id not in lease.reservation.drawn

    # ---- release of reservations whose request never reported ------------------------------------
    async def reap(self, now: float | None = None) -> int:
        """Release every live reservation past its expiry; how many were released."""
        async with self._deciding:
            return await self._reap(now)

    async def _reap(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        expired = [s.reservation for s in self.states.values() if s.state == "live" and s.reservation.expires_at < now]
        leases = {r.request_id for r in expired if r.lease}
        drawn: dict[str, list[Reservation]] = {lid: [] for lid in leases}
        if leases:
            for state in self.states.values():
                if state.reservation.lease_id in drawn:
                    drawn[state.reservation.lease_id].append(state.reservation)
        for reservation in expired:
            rid = reservation.request_id
            if reservation.lease:
                await self._release_lease(reservation, drawn[rid])
                continue
            for i, hold in enumerate(reservation.holds):
                if hold.micro_usd and not self._outside_lease(reservation):
                    await self._counters.add(hold.subject, -hold.micro_usd, msg_id=f"release.{rid}.{i}")
            for i, subject in enumerate(reservation.concurrency):
                await self._counters.add(subject, -1, msg_id=f"release-conc.{rid}.{i}")
            await self._note(reservation, "released")
            self.released += 1
            log.warning("released the reservation of request %s: its record never came", rid)
        return len(expired)

    async def _release_lease(self, lease: Reservation, drawn: list[Reservation]) -> None:
        """A lease whose replica died: release what the requests known to be drawn from it did not take."""
        for i, hold in enumerate(lease.holds):
            taken = sum(h.micro_usd for r in drawn for h in r.holds if h.subject == hold.subject)
            if hold.micro_usd - taken > 0:
                await self._counters.add(hold.subject, taken - hold.micro_usd, msg_id=f"release.{lease.request_id}.{i}")
        await self._note(msgspec.structs.replace(lease, drawn=sorted(r.request_id for r in drawn)), "released")
        self.released += 1
        log.warning(
            "released the budget lease %s (%d requests drawn from it): its ingress replica never gave it back",
            lease.request_id,
            len(drawn),
        )

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
