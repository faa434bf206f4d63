"""router: `<p>.router.chat` (ChatRequest) → provider HTTP → Chunk…/Result on the request's reply inbox.

Resolves the model to its deployments, calls them in order with failover on retryable errors, and
streams translated chunks straight to the ingress inbox that the request carried as reply_to.
"""

from __future__ import annotations

import asyncio
import logging
import os

from faststream import FastStream
from nats.aio.msg import Msg

from services.router.core import build_routes
from services.router.dispatch import Dispatcher
from services.router.providers.registry import translators
from services.router.settings import RouterSettings
from services.router.upstream import Upstream
from shared.bus import QueueWorker, answer_pings
from shared.config import load_config
from shared.natsconn import nats_broker
from shared.schemas.chat import Heartbeat, Reply
from shared.subjects import Subjects, encode

log = logging.getLogger("gatehouse.router")
_HEARTBEAT = encode(Heartbeat())


def create_app(settings: RouterSettings) -> FastStream:
    config = load_config(settings.config)
    subjects = Subjects(settings.subject_prefix)
    # per-message log lines are emitted at DEBUG so they cost nothing at the default level
    broker = nats_broker(settings.nats_link("router"))
    upstream = Upstream(max_connections=settings.router_max_connections)
    dispatcher = Dispatcher(build_routes(config, os.environ), upstream, translators())
    chat = subjects.router_chat

    async def on_request(msg: Msg) -> None:
        reply_to = msg.reply
        if not reply_to:
            log.warning("request without reply inbox dropped")
            return
        publish = broker.connection.publish

        async def send(reply: Reply) -> None:
            await publish(reply_to, encode(reply))

        async def beat() -> None:
            while True:
                await asyncio.sleep(settings.router_heartbeat_s)
                await publish(reply_to, _HEARTBEAT)

        heartbeat = asyncio.create_task(beat())
        try:
            await dispatcher.serve(chat.decode(msg.data), send)
        finally:
            heartbeat.cancel()

    worker = QueueWorker(chat.name, chat.queue, on_request, settings.router_max_concurrency)
    app = FastStream(broker, logger=log)

    @app.after_startup
    async def _subscribe() -> None:
        await worker.start(broker.connection)
        # answered only once the worker listens, so ingress readiness means requests can be served
        await answer_pings(broker.connection, subjects.ping("router"), chat.queue)

    @app.on_shutdown
    async def _drain() -> None:
        await worker.stop()

    @app.after_shutdown
    async def _close() -> None:
        await upstream.aclose()

    return app
