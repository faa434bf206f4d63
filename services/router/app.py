"""router: `<p>.router.chat` (ChatRequest) → provider HTTP → Chunk…/Result on the request's reply inbox.

`<p>.router.cancel` (Cancel, every replica) stops a request whose client went away (or one not started yet).
`<p>.router.status` (every replica) answers with this replica's view of each deployment.
`<p>.router.batch` (batch items, from the guard) is served the same way, as far as interactive traffic leaves
room (services/router/priority.py).
The `<P>_ROUTING` KV bucket carries deployment health (open, cooldown, probe) between replicas; a breaker that
opens on a healthy deployment (shared or per replica) also goes to `<p>.hooks.event.deployment_down` when a
webhook wants it, once per deployment and minute across replicas (services/router/down_notices.py).
before_dispatch plugin hooks run before the first deployment is tried (shared/plugins.py).

Resolves the model to its deployments, orders them by the model's routing strategy, calls them with
retries, failover and fallbacks on retryable errors (skipping deployments whose breaker is open or that
a provider's 429 cooled down), and streams translated chunks straight to the ingress inbox that the
request carried as reply_to. A replica with every slot taken answers 503 at once instead of queueing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import msgspec
from faststream import FastStream
from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.router.core import build_routes, mock_behaviours, require_translators
from services.router.dispatch import Dispatcher
from services.router.down_notices import DownNotices
from services.router.health import HealthBoard
from services.router.priority import PriorityGate, Withdrawn
from services.router.probes import HealthChecker
from services.router.providers.mock import MockTransport
from services.router.providers.registry import translators
from services.router.settings import RouterSettings
from services.router.shared_health import SharedHealth
from services.router.signing import request_signers
from services.router.telemetry import finish_dispatch, start_dispatch
from services.router.upstream import Upstream
from shared import metrics
from shared.bus import QueueWorker, answer_pings, ensure_hooks_stream
from shared.config import GatehouseConfig, load_config
from shared.errors import CLIENT_CLOSED, ServiceUnavailableError
from shared.natsconn import nats_broker
from shared.plugins import ROUTER_POINTS, HookRunner, build_runner, request_view
from shared.schemas.chat import ChatRequest, Heartbeat, Outcome, Reply, Result
from shared.schemas.routing import RouterStatus
from shared.subjects import Subjects, encode
from shared.telemetry import Telemetry, TelemetryConfig

log = logging.getLogger("gatehouse.router")
_HEARTBEAT = encode(Heartbeat())
# cancellations of requests this replica has not started (yet): remembered briefly, bounded
EARLY_CANCELS = 4096
EARLY_CANCEL_S = 60.0


class RouterHandlers:
    """The message handlers of one router replica: requests from the guard, cancellations from ingress."""

    def __init__(
        self,
        broker: NatsBroker,
        dispatcher: Dispatcher,
        subjects: Subjects,
        heartbeat_s: float,
        max_inflight: int = 0,
        gate: PriorityGate | None = None,
        hooks: HookRunner | None = None,
    ) -> None:
        self.max_inflight = max_inflight
        self.hooks = hooks or HookRunner({})
        self.broker = broker
        self.dispatcher = dispatcher
        self.subjects = subjects
        self.heartbeat_s = heartbeat_s
        self.gate = gate or PriorityGate(idle=64, busy=2, yield_s=0.25)
        self.working: dict[str, asyncio.Task[None]] = {}
        self.cancelled: set[str] = set()
        # batch items waiting at the priority gate (withdrawn by a cancel), and those past it: a batch item
        # whose provider call has begun finishes (its job was cancelled, not its client gone)
        self.gated: set[str] = set()
        self.withdrawn: set[str] = set()
        self.batch_running: set[str] = set()
        # a cancel may overtake its request (queued behind a busy replica): it must not be dispatched then
        self.early: OrderedDict[str, float] = OrderedDict()

    async def on_full(self, msg: Msg) -> None:
        """Every slot of this replica is taken: a clear 503 now, not a place in an unbounded queue."""
        if msg.reply:
            error = ServiceUnavailableError(
                "The gateway is at capacity (router replica saturated); try again shortly.", retry_after=1.0
            )
            await self.broker.connection.publish(
                msg.reply,
                self.subjects.replies.encode(
                    Result(outcome=Outcome(replica=self.dispatcher.replica), error=error.info())
                ),
            )

    async def on_request(self, msg: Msg) -> None:
        self.gate.interactive_started()
        try:
            await self._serve(msg, batch=False)
        finally:
            self.gate.interactive_finished()

    async def on_batch(self, msg: Msg) -> None:
        await self._serve(msg, batch=True)

    async def _serve(self, msg: Msg, *, batch: bool) -> None:
        reply_to = msg.reply
        if not reply_to:
            log.warning("request without reply inbox dropped")
            return
        try:
            req = self.subjects.router_chat.decode(msg.data)
        except msgspec.MsgspecError:
            log.warning("malformed request on %s dropped", msg.subject)
            return
        publish = self.broker.connection.publish
        replies = self.subjects.replies
        trace = start_dispatch(msg, req)

        async def send(reply: Reply) -> None:
            if isinstance(reply, Result):  # the last word carries the trace context back to ingress
                trace.result = reply
                await publish(reply_to, replies.encode(reply), headers=trace.headers())
            else:
                await publish(reply_to, replies.encode(reply))

        if self.early.pop(req.request_id, None) is not None:
            # its client left before it started
            await send(Result(outcome=Outcome(replica=self.dispatcher.replica), error=CLIENT_CLOSED))
            finish_dispatch(trace)
            return

        async def beat() -> None:
            while True:
                await asyncio.sleep(self.heartbeat_s)
                await publish(reply_to, _HEARTBEAT)

        heartbeat = asyncio.create_task(beat())
        task = asyncio.current_task()
        if task is not None:
            self.working[req.request_id] = task
        try:
            await self._dispatch(req, send, batch=batch)
        except Withdrawn:  # a batch item withdrawn before it reached a provider: the batch service hears it now
            await send(Result(outcome=Outcome(replica=self.dispatcher.replica), error=CLIENT_CLOSED))
        except asyncio.CancelledError:
            if task is None or req.request_id not in self.cancelled:
                raise
            task.uncancel()  # cancelled for its client, not for shutdown: the worker goes on
        finally:
            heartbeat.cancel()
            finish_dispatch(trace)
            self.working.pop(req.request_id, None)
            self.cancelled.discard(req.request_id)
            if batch:
                self._forget_batch(req.request_id)

    async def _dispatch(self, req: ChatRequest, send: Callable[[Reply], Awaitable[None]], *, batch: bool) -> None:
        """The before_dispatch hooks, then the request served (a batch item through the priority gate)."""
        if self.hooks.has("before_dispatch"):
            refused = await self.hooks.refusal("before_dispatch", request_view("before_dispatch", req))
            if refused is not None:
                await send(Result(outcome=Outcome(replica=self.dispatcher.replica), error=refused))
                return
        if batch:
            await self._serve_batch(req, send)
        else:
            await self.dispatcher.serve(req, send)

    def _forget_batch(self, request_id: str) -> None:
        self.gated.discard(request_id)
        self.withdrawn.discard(request_id)
        self.batch_running.discard(request_id)

    async def _serve_batch(self, req: ChatRequest, send: Callable[[Reply], Awaitable[None]]) -> None:
        self.gated.add(req.request_id)
        withdrawn = self.withdrawn.__contains__
        async with self.gate.batch_slot(lambda: withdrawn(req.request_id)):  # heartbeats go on while it waits
            self.gated.discard(req.request_id)
            self.batch_running.add(req.request_id)
            await self.dispatcher.serve(req, send)

    async def on_cancel(self, msg: Msg) -> None:
        try:
            request_id = self.subjects.router_cancel.decode(msg.data).request_id
        except msgspec.MsgspecError:
            return
        if request_id in self.batch_running:
            return  # a batch item at its provider finishes; only one still waiting is withdrawn
        if request_id in self.gated:  # told, not cancelled: see PriorityGate.batch_slot
            self.withdrawn.add(request_id)
            await self.gate.wake()
            return
        task = self.working.get(request_id)
        if task is not None:
            self.cancelled.add(request_id)
            task.cancel()
            return
        now = time.monotonic()
        self.early[request_id] = now
        while self.early and (
            len(self.early) > EARLY_CANCELS or next(iter(self.early.values())) < now - EARLY_CANCEL_S
        ):
            self.early.popitem(last=False)

    async def on_status(self, msg: Msg) -> None:
        if not msg.reply:
            return
        now = time.time()
        board = self.dispatcher.board
        status = RouterStatus(
            replica=board.replica,
            at=now,
            inflight=len(self.working),
            max_inflight=self.max_inflight,
            deployments=[board.view(dep, now) for dep in sorted(board.deployments())],
        )
        await self.broker.connection.publish(msg.reply, self.subjects.router_status.encode_reply(status))


def _watch(worker: QueueWorker, gate: PriorityGate) -> None:
    """The router's in-flight requests and its priority gate as metrics."""
    metrics.in_flight(lambda: worker.in_flight)
    metrics.gauge_of(
        "gatehouse_router_batch_waiting", "Batch items waiting at the priority gate.", lambda: gate.waiting
    )
    metrics.gauge_of("gatehouse_router_batch_running", "Batch items being dispatched.", lambda: gate.batch)


async def _down_notices(
    js: JetStreamContext, subjects: Subjects, config: GatehouseConfig, board: HealthBoard
) -> DownNotices | None:
    """Tell the hooks stream when a breaker of this replica opens, if a webhook wants `deployment_down`."""
    if not any("deployment_down" in w.events for w in config.webhooks):
        return None
    await ensure_hooks_stream(js, subjects)
    notices = DownNotices(js, subjects.hooks_deployment)
    board.notify = notices.publish
    return notices


def heartbeat_interval(configured_s: float, silence_s: float) -> float:
    """How often a request in hand is told to ingress: the configured interval, but at least three heartbeats per
    `server.heartbeat_timeout_s` (ingress takes that much silence for a lost request and answers 502), so a
    config with a short timeout does not make every longer request look lost."""
    interval = min(configured_s, silence_s / 3)
    if interval < configured_s:
        log.info("router heartbeat every %.2fs (a third of server.heartbeat_timeout_s)", interval)
    return interval


def create_app(settings: RouterSettings) -> FastStream:
    # the router holds the provider keys: a key a model needs must be set, or the router does not start
    config = load_config(settings.config, environ=os.environ)
    registry = translators()
    require_translators(config, registry)
    subjects = Subjects(settings.subject_prefix)
    # per-message log lines are emitted at DEBUG so they cost nothing at the default level
    broker = nats_broker(settings.nats_link("router"))
    routes = build_routes(config, os.environ)
    upstream = Upstream(
        max_connections=settings.router_max_connections,
        mock=MockTransport(mock_behaviours(config)),
        signers=request_signers(config, os.environ),
    )
    # a replica's name in its shared health records and status reports (unique even when names are reused)
    board = HealthBoard(config.routing, f"{settings.replica}-{uuid.uuid4().hex[:6]}")
    dispatcher = Dispatcher(routes, upstream, registry, settings.replica, board=board)
    max_inflight = settings.router_max_concurrency
    gate = PriorityGate(
        idle=settings.router_batch_concurrency,
        busy=settings.router_batch_busy_concurrency,
        yield_s=settings.router_batch_yield_s,
        busy_rate=settings.router_batch_busy_rate,
    )
    hooks = build_runner(config.plugins, ROUTER_POINTS)
    handlers = RouterHandlers(
        broker,
        dispatcher,
        subjects,
        heartbeat_interval(settings.router_heartbeat_s, config.server.heartbeat_timeout_s),
        max_inflight,
        gate,
        hooks,
    )
    chat = subjects.router_chat
    worker = QueueWorker(chat.name, chat.queue, handlers.on_request, max_inflight, on_full=handlers.on_full)
    lane = subjects.router_batch
    batch_worker = QueueWorker(lane.name, lane.queue, handlers.on_batch, settings.router_batch_max_waiting)
    checker = HealthChecker(dispatcher, routes, config.routing.health_checks)
    shared: SharedHealth | None = None
    notices: DownNotices | None = None
    app = FastStream(broker, logger=log)
    telemetry = Telemetry(TelemetryConfig.of(settings, "router", settings.otlp_headers.get_secret_value()), subjects)
    telemetry.serve_metrics()

    @app.after_startup
    async def _subscribe() -> None:
        nonlocal shared, notices
        nc = broker.connection
        await telemetry.start(nc)
        _watch(worker, gate)
        notices = await _down_notices(broker.config.connection_state.stream, subjects, config, board)
        if config.routing.breaker.shared:
            shared = SharedHealth(broker.config.connection_state.stream, subjects.routing_bucket, board)
            dispatcher.attach(shared)
            shared.start()
        await nc.subscribe(subjects.router_cancel.name, cb=handlers.on_cancel)
        await nc.subscribe(subjects.router_status.name, cb=handlers.on_status)
        await worker.start(nc)
        await batch_worker.start(nc)
        checker.start()
        # answered only once the worker listens, so ingress readiness means requests can be served
        await answer_pings(nc, subjects.ping("router"), chat.queue)

    @app.on_shutdown
    async def _drain() -> None:
        await checker.stop()
        await worker.stop()
        await batch_worker.stop()
        if shared is not None:
            await shared.stop()
        if notices is not None:
            await notices.stop()
        await telemetry.stop()

    @app.after_shutdown
    async def _close() -> None:
        await upstream.aclose()

    return app
