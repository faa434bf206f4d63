"""guard: `<p>.guard.chat` (ChatRequest) → `<p>.router.chat` (same reply inbox) | Result(error) to the inbox;
every verdict → `<p>.events.guard` (JetStream).

Scans each request with the policy attached to its key (or model), then forwards it, redacted where
the policy says so, or answers the ingress inbox directly with a block.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from faststream import FastStream
from faststream.nats import NatsBroker
from nats.aio.msg import Msg

from services.guard.core import Guard
from services.guard.settings import GuardSettings
from shared.bus import QueueWorker, ensure_events_stream, publish_event
from shared.config import load_config
from shared.schemas.chat import Outcome, Result
from shared.schemas.events import GuardEvent
from shared.subjects import Subjects, encode

log = logging.getLogger("gatehouse.guard")


def create_app(settings: GuardSettings) -> FastStream:
    config = load_config(settings.config)
    subjects = Subjects(settings.subject_prefix)
    broker = NatsBroker(settings.nats_servers, log_level=logging.DEBUG, name="gatehouse-guard")
    guard = Guard(config)
    chat_in, chat_out, events = subjects.guard_chat, subjects.router_chat, subjects.events_guard
    pending: set[asyncio.Task[None]] = set()

    async def emit(event: GuardEvent) -> None:
        for delay in (0.0, 0.2, 1.0, 3.0):
            await asyncio.sleep(delay)
            try:
                await publish_event(broker.config.connection_state.stream, events.name, event, event.event_id)
                return
            except Exception as exc:  # JetStream briefly unavailable: retry, then give up loudly
                last = exc
        log.error("guard event %s for request %s not stored: %r", event.event_id, event.request_id, last)

    async def on_request(msg: Msg) -> None:
        reply_to = msg.reply
        if not reply_to:
            log.warning("request without reply inbox dropped")
            return
        req = chat_in.decode(msg.data)
        verdict = guard.check(req)
        nc = broker.connection
        if verdict.error is not None:
            await nc.publish(reply_to, encode(Result(outcome=Outcome(), error=verdict.error, guard=verdict.summary)))
        else:
            await nc.publish(chat_out.name, encode(verdict.request), reply=reply_to, headers=msg.headers or None)
        if not verdict.summary.findings and verdict.error is None:
            # a clean pass is recorded on the request's own row (guard_action, guard_policy); a separate
            # event per clean request would double the JetStream traffic for nothing
            return
        event = GuardEvent(
            event_id=uuid.uuid4().hex,
            request_id=req.request_id,
            policy=verdict.summary.policy,
            action=verdict.summary.action,
            findings=verdict.summary.findings,
            scan_us=verdict.summary.scan_us,
            at=time.time(),
        )
        task = asyncio.create_task(emit(event))
        pending.add(task)
        task.add_done_callback(pending.discard)

    worker = QueueWorker(chat_in.name, chat_in.queue, on_request, settings.guard_max_concurrency)
    app = FastStream(broker, logger=log)

    @app.after_startup
    async def _start() -> None:
        await ensure_events_stream(broker.config.connection_state.stream, subjects)
        await worker.start(broker.connection)

    @app.on_shutdown
    async def _drain() -> None:
        await worker.stop()
        if pending:
            await asyncio.wait(pending, timeout=5)

    return app
