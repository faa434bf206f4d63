"""router: `<p>.router.chat` (ChatRequest) → provider HTTP → Chunk…/Result on the request's reply inbox.

`<p>.router.cancel` (Cancel, every replica) stops a request whose client went away.

Resolves the model to its deployments, calls them in order with failover on retryable errors, and
streams translated chunks straight to the ingress inbox that the request carried as reply_to.
"""

from __future__ import annotations

import asyncio
import logging
import os

import msgspec
from faststream import FastStream
from faststream.nats import NatsBroker
from nats.aio.msg import Msg

from services.router.core import build_routes, mock_behaviours, require_translators
from services.router.dispatch import Dispatcher
from services.router.providers.mock import MockTransport
from services.router.providers.registry import translators
from services.router.settings import RouterSettings
from services.router.telemetry import finish_dispatch, start_dispatch
from services.router.upstream import Upstream
from shared import metrics
from shared.bus import QueueWorker, answer_pings
from shared.config import load_config
from shared.natsconn import nats_broker
from shared.schemas.chat import Heartbeat, Reply, Result
from shared.subjects import Subjects, encode
from shared.telemetry import Telemetry, TelemetryConfig

log = logging.getLogger("gatehouse.router")
_HEARTBEAT = encode(Heartbeat())


class RouterHandlers:
    """The message handlers of one router replica: requests from the guard, cancellations from ingress."""

    def __init__(self, broker: NatsBroker, dispatcher: Dispatcher, subjects: Subjects, heartbeat_s: float) -> None:
        self.broker = broker
        self.dispatcher = dispatcher
        self.subjects = subjects
        self.heartbeat_s = heartbeat_s
        self.working: dict[str, asyncio.Task[None]] = {}
        self.cancelled: set[str] = set()

    async def on_request(self, msg: Msg) -> None:
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

        async def beat() -> None:
            while True:
                await asyncio.sleep(self.heartbeat_s)
                await publish(reply_to, _HEARTBEAT)

        heartbeat = asyncio.create_task(beat())
        task = asyncio.current_task()
        if task is not None:
            self.working[req.request_id] = task
        try:
            await self.dispatcher.serve(req, send)
        except asyncio.CancelledError:
            if task is None or req.request_id not in self.cancelled:
                raise
            task.uncancel()  # cancelled for its client, not for shutdown: the worker goes on
        finally:
            heartbeat.cancel()
            finish_dispatch(trace)
            self.working.pop(req.request_id, None)
            self.cancelled.discard(req.request_id)

    async def on_cancel(self, msg: Msg) -> None:
        try:
            request_id = self.subjects.router_cancel.decode(msg.data).request_id
        except msgspec.MsgspecError:
            return
        task = self.working.get(request_id)
        if task is not None:
            self.cancelled.add(request_id)
            task.cancel()


def create_app(settings: RouterSettings) -> FastStream:
    # the router holds the provider keys: a key a model needs must be set, or the router does not start
    config = load_config(settings.config, environ=os.environ)
    registry = translators()
    require_translators(config, registry)
    subjects = Subjects(settings.subject_prefix)
    # per-message log lines are emitted at DEBUG so they cost nothing at the default level
    broker = nats_broker(settings.nats_link("router"))
    upstream = Upstream(max_connections=settings.router_max_connections, mock=MockTransport(mock_behaviours(config)))
    dispatcher = Dispatcher(build_routes(config, os.environ), upstream, registry)
    handlers = RouterHandlers(broker, dispatcher, subjects, settings.router_heartbeat_s)
    chat = subjects.router_chat
    worker = QueueWorker(chat.name, chat.queue, handlers.on_request, settings.router_max_concurrency)
    app = FastStream(broker, logger=log)
    telemetry = Telemetry(TelemetryConfig.of(settings, "router", settings.otlp_headers.get_secret_value()), subjects)
    telemetry.serve_metrics()

    @app.after_startup
    async def _subscribe() -> None:
        await telemetry.start(broker.connection)
        metrics.in_flight(lambda: worker.in_flight)
        await broker.connection.subscribe(subjects.router_cancel.name, cb=handlers.on_cancel)
        await worker.start(broker.connection)
        # answered only once the worker listens, so ingress readiness means requests can be served
        await answer_pings(broker.connection, subjects.ping("router"), chat.queue)

    @app.on_shutdown
    async def _drain() -> None:
        await worker.stop()
        await telemetry.stop()

    @app.after_shutdown
    async def _close() -> None:
        await upstream.aclose()

    return app
