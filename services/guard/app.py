"""guard: `<p>.guard.chat` (ChatRequest) → `<p>.router.chat` | Result(block) to the ingress inbox;
router replies → `<p>.guardout.<id>.<request>` → scanned/restored → ingress inbox (only where a policy asks);
`<p>.guard.scan` (ScanRequest) → ScanResult; every verdict with findings → `<p>.events.guard` (JetStream).

Scans each request with the policy of its key (or model, or the default), then forwards it, redacted
where the policy says so, or answers the ingress inbox directly with a block. Responses come back
through the guard only when the policy scans responses or restores redacted values.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import msgspec
from faststream import FastStream
from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.guard.core import Guard
from services.guard.output import OutputFilter, needs_output_pass
from services.guard.settings import GuardSettings
from shared.bus import QueueWorker, answer_pings, ensure_events_stream, publish_event
from shared.config import load_config
from shared.schemas.admin import ScanFinding, ScanRequest, ScanResult
from shared.schemas.chat import Chunk, ChunkBatch, GuardFinding, GuardSummary, Outcome, Reply, Result
from shared.schemas.events import GuardEvent
from shared.subjects import Subjects, decode_reply, encode

log = logging.getLogger("gatehouse.guard")

# a response that has not ended this long after its request is forgotten (its client has long timed out)
OUTPUT_STATE_TTL_S = 900.0


class _Pending:
    __slots__ = ("created", "filter", "reply_to", "summary")

    def __init__(self, reply_to: str, summary: GuardSummary, out: OutputFilter) -> None:
        self.reply_to = reply_to
        self.summary = summary
        self.filter = out
        self.created = time.monotonic()


def create_app(settings: GuardSettings) -> FastStream:
    config = load_config(settings.config)
    subjects = Subjects(settings.subject_prefix)
    broker = NatsBroker(settings.nats_servers, log_level=logging.DEBUG, name="gatehouse-guard")
    guard = Guard(config)
    chat_in, chat_out, events, scan = (
        subjects.guard_chat,
        subjects.router_chat,
        subjects.events_guard,
        subjects.guard_scan,
    )
    out_prefix = subjects.guard_output(uuid.uuid4().hex[:12])
    pending: dict[str, _Pending] = {}
    tasks: set[asyncio.Task[None]] = set()

    async def store(event: GuardEvent) -> None:
        last: Exception | None = None
        for delay in (0.0, 0.2, 1.0, 3.0, 10.0):
            await asyncio.sleep(delay)
            try:
                await publish_event(broker.config.connection_state.stream, events.name, event, event.event_id)
                return
            except Exception as exc:  # JetStream briefly unavailable: retry, then give up loudly
                last = exc
        log.error("guard event %s for request %s not stored: %r", event.event_id, event.request_id, last)

    def emit(request_id: str, summary: GuardSummary, findings: list[GuardFinding], direction: str, us: int) -> None:
        if not findings and summary.action != "block":
            return  # a clean pass is recorded on the request's own row
        event = GuardEvent(
            event_id=uuid.uuid4().hex,
            request_id=request_id,
            policy=summary.policy,
            action=summary.action,
            direction=direction,
            findings=findings,
            scan_us=us,
            at=time.time(),
        )
        task = asyncio.create_task(store(event))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def on_request(msg: Msg) -> None:
        reply_to = msg.reply
        if not reply_to:
            log.warning("request without reply inbox dropped")
            return
        req = chat_in.decode(msg.data)
        started = time.perf_counter_ns()
        verdict = guard.check(req)
        us = (time.perf_counter_ns() - started) // 1000
        summary = msgspec.structs.replace(verdict.summary, scan_us=us)
        nc = broker.connection
        if verdict.error is not None:
            await nc.publish(reply_to, encode(Result(outcome=Outcome(), error=verdict.error, guard=summary)))
        elif needs_output_pass(summary):
            pending[req.request_id] = _Pending(reply_to, summary, OutputFilter(guard.rails, summary))
            forward = msgspec.structs.replace(verdict.request, guard=summary)
            await nc.publish(
                chat_out.name, encode(forward), reply=f"{out_prefix}.{req.request_id}", headers=msg.headers
            )
        else:
            forward = msgspec.structs.replace(verdict.request, guard=summary)
            await nc.publish(chat_out.name, encode(forward), reply=reply_to, headers=msg.headers)
        emit(req.request_id, summary, list(summary.findings), "input", us)

    async def on_response(msg: Msg) -> None:
        request_id = msg.subject[len(out_prefix) + 1 :]
        state = pending.get(request_id)
        if state is None:
            return
        nc = broker.connection
        out = state.filter
        reply: Reply = decode_reply(msg.data)
        sends: list[bytes] = []
        if isinstance(reply, Chunk | ChunkBatch):
            items = [reply.data] if isinstance(reply, Chunk) else reply.items
            sends = [c for c in (out.chunk(item) for item in items) if c is not None]
            if out.error is None:
                if sends:
                    await nc.publish(state.reply_to, encode(Chunk(sends[0]) if len(sends) == 1 else ChunkBatch(sends)))
                return
            final = Result(outcome=Outcome(), error=out.error)
        else:
            final = reply
            if reply.error is None and reply.body:
                body = out.completion(reply.body)
                final = (
                    msgspec.structs.replace(reply, body=body)
                    if out.error is None
                    else msgspec.structs.replace(reply, body=b"", error=out.error)
                )
            elif reply.error is None:
                tail = out.end()
                if tail is not None:
                    await nc.publish(state.reply_to, encode(Chunk(tail)))
                if out.error is not None:
                    final = msgspec.structs.replace(reply, error=out.error)
        del pending[request_id]
        action = "block" if out.error is not None else state.summary.action
        if out.findings and action == "allow":
            action = max((f.action for f in out.findings), key=("allow", "flag", "redact", "block").index)
        summary = msgspec.structs.replace(
            state.summary, action=action, findings=[*state.summary.findings, *out.findings], restore={}
        )
        await nc.publish(state.reply_to, encode(msgspec.structs.replace(final, guard=summary)))
        if out.findings:
            emit(request_id, msgspec.structs.replace(summary, findings=out.findings), out.findings, "output", 0)

    async def on_scan(msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            req: ScanRequest = scan.decode(msg.data)
            policy = guard.rails.policy(req.policy) if req.policy else guard.rails.default
        except (msgspec.DecodeError, KeyError) as exc:
            err = "malformed scan request" if isinstance(exc, msgspec.DecodeError) else f"unknown policy {exc}"
            await broker.connection.publish(msg.reply, encode(ScanResult(policy="", action="allow", error=err)))
            return
        started = time.perf_counter_ns()
        result = policy.scan(req.text)
        findings = [
            ScanFinding(
                scanner=d.finding.scanner,
                rule=d.finding.rule,
                severity=d.finding.severity,
                action=d.action,
                start=d.finding.start,
                end=d.finding.end,
            )
            for d in result.decisions
        ]
        answer = ScanResult(
            policy=policy.name,
            action=result.action,
            findings=findings,
            text=result.text if result.action == "redact" else req.text,
            scan_us=(time.perf_counter_ns() - started) // 1000,
        )
        await broker.connection.publish(msg.reply, encode(answer))

    async def sweep() -> None:
        while True:
            await asyncio.sleep(60)
            cutoff = time.monotonic() - OUTPUT_STATE_TTL_S
            for rid in [r for r, p in pending.items() if p.created < cutoff]:
                del pending[rid]

    worker = QueueWorker(chat_in.name, chat_in.queue, on_request, settings.guard_max_concurrency)
    scanner = QueueWorker(scan.name, scan.queue, on_scan, settings.guard_max_concurrency)
    app = FastStream(broker, logger=log)
    subs: list[Subscription] = []
    sweeper: list[asyncio.Task[None]] = []

    @app.after_startup
    async def _start() -> None:
        await ensure_events_stream(broker.config.connection_state.stream, subjects)
        # responses for this replica's requests arrive in order on one subscription
        subs.append(await broker.connection.subscribe(f"{out_prefix}.*", cb=on_response, pending_msgs_limit=1_000_000))
        await worker.start(broker.connection)
        await scanner.start(broker.connection)
        subs.append(await answer_pings(broker.connection, subjects.ping("guard"), chat_in.queue))
        sweeper.append(asyncio.create_task(sweep()))

    @app.on_shutdown
    async def _drain() -> None:
        await worker.stop()
        await scanner.stop()
        for sub in subs:
            await sub.unsubscribe()
        for task in sweeper:
            task.cancel()
        if tasks:
            await asyncio.wait(set(tasks), timeout=5)

    return app
