"""Webhooks and on_event plugins: `<p>.hooks.event.>` → one WebhookJob per matching webhook on
`<p>.hooks.delivery` (and on_event hooks for `hooks.event.request`); each job → signed HTTP POSTs until
delivered or dead → WebhookDelivery on `<p>.events.webhook` (stored in `webhook_deliveries`) → ack.

Both sides are durable pull consumers of the hooks stream (a work queue on disk), so a restart loses nothing:
a message is acked only after what it led to is itself in JetStream (the jobs it fanned out, or the outcome
of its delivery). One HTTP attempt per JetStream delivery: a failed attempt is nak'ed with a delay
(exponential backoff with jitter, bounded by `max_backoff_s`), so the attempt count and the wait survive a
restart too, and the last allowed attempt records a dead letter. An endpoint may see a delivery again if
the process dies between its 2xx and the record: the `webhook-id` header is the same on every attempt.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence

import httpx
import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.accounting.core import COST_HEADER, REQUEST_COLUMNS, BadEvent, carried_cost, event_row
from shared import metrics
from shared.bus import MSG_ID, bind_pull_consumer, ensure_hooks_stream
from shared.config import WebhookConfig
from shared.plugins import HookRunner, RequestView, caller_fields, load_factory
from shared.pricing import Rates
from shared.schemas.events import RequestEvent, WebhookDelivery, WebhookJob
from shared.subjects import Subjects
from shared.webhook_signing import ID_HEADER, signed_headers

log = logging.getLogger("gatehouse.accounting.webhooks")

FANOUT_DURABLE = "webhooks-fanout"
DELIVERY_DURABLE = "webhooks-delivery"
PUBLISH_TIMEOUT_S = 5.0
FETCH_BATCH = 32
MAX_ERROR_CHARS = 300
MAX_DEAD_BODY_BYTES = 64 * 1024
# an on_event hook that fails under `fail: closed` is tried again this many times, then given up (logged)
EVENT_HOOK_DELIVERIES = 5
_COST = REQUEST_COLUMNS.index("cost_usd")
_JSON = msgspec.json.Encoder()

Format = Callable[[dict[str, object]], object]


def backoff_s(attempt: int, base_s: float, cap_s: float, rand: Callable[[], float] = random.random) -> float:
    """The wait after failed attempt `attempt` (1-based): base·2^(attempt-1), capped, with the upper half
    jittered (so retries of many deliveries spread out, and none waits less than half its step)."""
    step = min(cap_s, base_s * float(2 ** min(attempt - 1, 30)))
    return step * (0.5 + rand() / 2)


def envelope(delivery_id: str, event_type: str, at: float, data: Mapping[str, object]) -> dict[str, object]:
    """The `json` body: what happened, when, and the event itself."""
    return {"id": delivery_id, "type": event_type, "created_at": at, "data": dict(data)}


def load_format(spec: str) -> Format | None:
    """None for `json`; else the function `package.module:function` (an envelope → the body to send)."""
    if spec == "json":
        return None
    return load_factory(spec, "")


def render(fmt: Format | None, body: dict[str, object]) -> bytes:
    return _JSON.encode(body if fmt is None else fmt(body))


class Webhook:
    """One configured webhook, resolved at startup (URL and secret from the environment where named)."""

    def __init__(self, config: WebhookConfig, environ: Mapping[str, str]) -> None:
        self.config = config
        self.name = config.name
        self.url = config.url or environ.get(config.url_env or "", "")
        self.secret = environ.get(config.secret_env, "") if config.secret_env else ""
        self.format = load_format(config.format)
        self.v1 = "v1" in config.signatures
        if not self.url:
            log.error("webhook %s: %s is not set; its deliveries will end dead", self.name, config.url_env)
        if self.secret and self.v1:
            log.warning(
                "webhook %s: also sends the deprecated v1= signature, which holds under any webhook-id (a receiver "
                "checking it accepts a replay under a new id); set `signatures: [v2]` once the receiver checks v2=",
                self.name,
            )

    def signed_headers(self, delivery_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
        """The signature headers of one attempt ({} when the webhook is unsigned)."""
        if not self.secret:
            return {}
        return signed_headers(self.secret, delivery_id, body, now, v1=self.v1)


def _source(subjects: Subjects, msg: Msg) -> tuple[str, str, float, dict[str, object]] | None:
    """(event type, source id, when, event as a dict) of a hooks-stream event, or None if it is not one."""
    subject = msg.subject
    if subject == subjects.hooks_alert.name:
        alert = subjects.hooks_alert.decode(msg.data)
        return "budget_alert", alert.event_id, alert.at, msgspec.to_builtins(alert)
    if subject == subjects.hooks_blocked.name:
        blocked = subjects.hooks_blocked.decode(msg.data)
        data = msgspec.to_builtins(blocked)
        # which rules blocked it, never the text (the event has none)
        return "request_blocked", blocked.event_id, blocked.at, data
    if subject == subjects.hooks_deployment.name:
        down = subjects.hooks_deployment.decode(msg.data)
        source_id = msg.headers.get(MSG_ID, "") if msg.headers else ""
        return (
            "deployment_down",
            source_id or f"down.{down.deployment}.{int(down.at)}",
            down.at,
            msgspec.to_builtins(down),
        )
    return None


class WebhookDispatcher:
    """The two durable consumers of the hooks stream, in the accounting process."""

    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        webhooks: Sequence[WebhookConfig],
        *,
        event_hooks: HookRunner | None = None,
        kinds: Mapping[str, str] | None = None,
        rates: Mapping[str, Rates] | None = None,
        environ: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._js = js
        self._subjects = subjects
        env = os.environ if environ is None else environ
        self._webhooks = {w.name: Webhook(w, env) for w in webhooks}
        self._by_event: dict[str, list[Webhook]] = {}
        for hook in self._webhooks.values():
            for event in hook.config.events:
                self._by_event.setdefault(event, []).append(hook)
        self._event_hooks = event_hooks
        self._kinds = dict(kinds or {})
        self._rates = dict(rates or {})
        self._client = httpx.AsyncClient(transport=transport, follow_redirects=False)
        self._stopping = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self.delivered = 0
        self.dead = 0

    @property
    def wanted(self) -> bool:
        return bool(self._webhooks) or (self._event_hooks is not None and self._event_hooks.has("on_event"))

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        await ensure_hooks_stream(self._js, self._subjects)
        longest = max((w.config.timeout_s for w in self._webhooks.values()), default=10.0)
        fanout = await self._consumer(FANOUT_DURABLE, self._subjects.hooks_events_wildcard, 30.0, -1)
        # an attempt is nak'ed when it fails, so ack_wait only matters for a process that died mid-attempt
        delivery = await self._consumer(DELIVERY_DURABLE, self._subjects.hooks_delivery.name, longest + 30, -1)
        log.info("webhooks: %s", ", ".join(self._webhooks) or "none (on_event plugins only)")
        try:
            await asyncio.gather(self._loop(fanout, self._fanout), self._loop(delivery, self._deliver))
        finally:
            if self._inflight:
                await asyncio.wait(set(self._inflight), timeout=5)
            await self._client.aclose()

    async def _consumer(
        self, durable: str, subject: str, ack_wait: float, max_deliver: int
    ) -> JetStreamContext.PullSubscription:
        return await bind_pull_consumer(
            self._js,
            self._subjects.hooks_stream,
            durable,
            subject=subject,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            max_ack_pending=1000,
        )

    async def _loop(self, psub: JetStreamContext.PullSubscription, handle: Callable[[Msg], object]) -> None:
        limit = asyncio.Semaphore(FETCH_BATCH)
        while not self._stopping.is_set():
            try:
                msgs = await psub.fetch(FETCH_BATCH, timeout=1.0)
            except TimeoutError:
                continue
            except Exception as exc:
                log.warning("hooks stream fetch failed (%s)", type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            for msg in msgs:
                await limit.acquire()
                task = asyncio.create_task(self._guarded(handle, msg, limit))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)

    async def _guarded(self, handle: Callable[[Msg], object], msg: Msg, limit: asyncio.Semaphore) -> None:
        try:
            await handle(msg)  # type: ignore[misc]  # the two handlers are coroutine functions
        except Exception:
            # not acked: JetStream redelivers it after ack_wait (e.g. NATS was away while recording)
            log.exception("hooks stream message on %s not handled; it will be redelivered", msg.subject)
        finally:
            limit.release()

    # ---- fan-out: one job per webhook that wants the event ----------------------------------------------
    async def _fanout(self, msg: Msg) -> None:
        if msg.subject == self._subjects.hooks_request.name:
            await self._on_event(msg)
            return
        try:
            source = _source(self._subjects, msg)
        except msgspec.MsgspecError:
            source = None
        if source is None:
            log.error("unreadable hooks event on %s dropped", msg.subject)
            await msg.term()
            return
        event_type, source_id, at, data = source
        jobs = []
        for hook in self._by_event.get(event_type, []):
            delivery_id = f"{event_type}.{source_id}.{hook.name}"
            try:
                body = render(hook.format, envelope(delivery_id, event_type, at, data))
            except Exception as exc:  # a format plugin's bug: recorded as a dead letter, not retried
                log.error("webhook %s: format failed on %s (%s)", hook.name, delivery_id, exc)
                await self._record(
                    WebhookJob(
                        delivery_id=delivery_id, webhook=hook.name, event_type=event_type,
                        source_id=source_id, at=at, body=_JSON.encode(data),
                    ),
                    "dead", 0, 0, f"format failed: {type(exc).__name__}",
                )  # fmt: skip
                continue
            jobs.append(
                WebhookJob(
                    delivery_id=delivery_id, webhook=hook.name, event_type=event_type,
                    source_id=source_id, at=at, body=body,
                )
            )  # fmt: skip
        subject = self._subjects.hooks_delivery
        await asyncio.gather(
            *(
                self._js.publish(
                    subject.name, subject.encode(job), timeout=PUBLISH_TIMEOUT_S, headers={MSG_ID: job.delivery_id}
                )
                for job in jobs
            )
        )
        await msg.ack()

    # ---- delivery: one attempt per JetStream delivery --------------------------------------------------
    async def _deliver(self, msg: Msg) -> None:
        try:
            job = self._subjects.hooks_delivery.decode(msg.data)
        except msgspec.MsgspecError:
            log.error("unreadable webhook job dropped")
            await msg.term()
            return
        attempt = msg.metadata.num_delivered
        hook = self._webhooks.get(job.webhook)
        if hook is None:
            await self._record(job, "dead", attempt, 0, "the webhook is no longer configured")
            await msg.ack()
            return
        status, error = await self._post(hook, job)
        if status and 200 <= status < 300:
            await self._record(job, "delivered", attempt, status, "", signed=bool(hook.secret))
            await msg.ack()
            self.delivered += 1
            metrics.webhook_delivery(hook.name, "delivered")
            return
        if attempt >= hook.config.max_attempts:
            await self._record(job, "dead", attempt, status, error, signed=bool(hook.secret))
            await msg.ack()
            self.dead += 1
            metrics.webhook_delivery(hook.name, "dead")
            log.error("webhook %s: %s is dead after %d attempts (%s)", hook.name, job.delivery_id, attempt, error)
            return
        wait = backoff_s(attempt, hook.config.backoff_s, hook.config.max_backoff_s)
        log.warning(
            "webhook %s: attempt %d of %s failed (%s); next in %.1fs", hook.name, attempt, job.delivery_id, error, wait
        )
        await msg.nak(delay=wait)

    async def _post(self, hook: Webhook, job: WebhookJob) -> tuple[int, str]:
        """(HTTP status or 0, what went wrong or '') of one attempt."""
        if not hook.url:
            return 0, "no URL (its environment variable is not set)"
        headers = {
            "content-type": "application/json",
            "user-agent": "gatehouse-webhooks",
            ID_HEADER: job.delivery_id,
            "x-gatehouse-event": job.event_type,
        }
        headers.update(hook.signed_headers(job.delivery_id, job.body))
        try:
            resp = await self._client.post(hook.url, content=job.body, headers=headers, timeout=hook.config.timeout_s)
        except httpx.HTTPError as exc:
            return 0, f"{type(exc).__name__}"[:MAX_ERROR_CHARS]
        if 200 <= resp.status_code < 300:
            return resp.status_code, ""
        return resp.status_code, f"HTTP {resp.status_code}"

    async def _record(
        self, job: WebhookJob, outcome: str, attempts: int, status: int, error: str, *, signed: bool = False
    ) -> None:
        """The delivery's end, in the event stream (stored once per delivery id) before its job is acked."""
        record = WebhookDelivery(
            event_id=job.delivery_id,
            webhook=job.webhook,
            event_type=job.event_type,
            source_id=job.source_id,
            outcome=outcome,
            attempts=attempts,
            http_status=status,
            error=error[:MAX_ERROR_CHARS],
            signed=signed,
            event_at=job.at,
            finished_at=time.time(),
            body=job.body[:MAX_DEAD_BODY_BYTES].decode("utf-8", "replace") if outcome == "dead" else "",
        )
        subject = self._subjects.events_webhook
        await self._js.publish(
            subject.name, subject.encode(record), timeout=PUBLISH_TIMEOUT_S, headers={MSG_ID: record.event_id}
        )

    # ---- on_event plugins ----------------------------------------------------------------------------
    async def _on_event(self, msg: Msg) -> None:
        hooks = self._event_hooks
        if hooks is None or not hooks.has("on_event"):
            await msg.ack()
            return
        try:
            event, cost = self._stored_record(msg)
        except BadEvent as exc:
            log.error("unreadable request record on the hooks stream dropped: %s", exc)
            await msg.term()
            return
        try:
            await hooks.run("on_event", event_view(event, cost))
        except Exception as exc:  # a failure under `fail: closed`: told again later, a few times
            if msg.metadata.num_delivered < EVENT_HOOK_DELIVERIES:
                await msg.nak(delay=backoff_s(msg.metadata.num_delivered, 1.0, 30.0))
                return
            log.error("on_event plugins gave up on request %s: %s", event.request_id, exc)
        await msg.ack()

    def _stored_record(self, msg: Msg) -> tuple[RequestEvent, float]:
        """The forwarded record and its cost: the price accounting stored, which travels with it (COST_HEADER).
        Only a record forwarded without one (by an accounting from before the header) is priced here."""
        carried = carried_cost(msg.headers.get(COST_HEADER) if msg.headers else None)
        if carried is not None:
            try:
                return self._subjects.hooks_request.decode(msg.data), carried
            except msgspec.MsgspecError as exc:
                raise BadEvent(f"undecodable request record: {exc}") from exc
        subject = self._subjects.events_request.name
        _, row, event = event_row(self._subjects, subject, msg.data, self._kinds, self._rates)
        assert isinstance(event, RequestEvent)
        cost = row[_COST]
        return event, cost if isinstance(cost, float) else 0.0


def event_view(event: RequestEvent, cost: float) -> RequestView:
    usage = event.usage
    return RequestView(
        point="on_event",
        request_id=event.request_id,
        api=event.api,
        model=event.requested_model,
        stream=event.stream,
        tags=dict(event.tags),
        guard_action=event.guard_action,
        status=event.status,
        error_type=event.error.type if event.error else "",
        error_code=event.error.code if event.error else "",
        provider=event.provider,
        deployment=event.deployment,
        input_tokens=usage.input_tokens if usage else 0,
        output_tokens=usage.output_tokens if usage else 0,
        cost_usd=cost,
        latency_ms=event.latency_ms,
        **caller_fields(event.caller),
    )
