"""guard: `<p>.guard.chat` (ChatRequest) → `<p>.router.chat` (`<p>.router.batch` for batch items) | Result(block)
to the ingress (or batch) inbox;
router replies → `<p>.guardout.<id>.<request>` → scanned/restored → ingress inbox (only where a policy asks, or
the caller logs content); redacted prompts and responses of callers that log content → `<p>.events.content`;
`<p>.guard.scan` (ScanRequest) → ScanResult; every verdict with findings → `<p>.events.guard` (JetStream), and
each block → `<p>.hooks.event.request_blocked` when a webhook wants it; after_guard plugin hooks run on the
requests it lets through (shared/plugins.py);
`<p>.guard.mcp` (ToolCall) → arguments scanned → `<p>.mcp.call` → result scanned → ToolOutcome to ingress;
`<p>.guard.mcpscan` (ToolCall) → arguments scanned → ArgumentsScan to ingress (a call put to an approver first).

Scans each request with the policy of its key (or model, or the default), then forwards it, redacted
where the policy says so, or answers the ingress inbox directly with a block. Responses come back
through the guard only when the policy scans responses or restores redacted values.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
from faststream import FastStream
from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.guard.content import ResponseCapture
from services.guard.core import Guard
from services.guard.relay import ResponseRelay
from services.guard.settings import GuardSettings
from services.guard.telemetry import (
    finish_check,
    finish_tool_call,
    forward_headers,
    start_check,
    start_tool_call,
    start_tool_scan,
)
from services.guard.tools import Scanned, ToolGuard
from services.guard.verdicts import VerdictLog
from shared import mcp_errors, metrics
from shared.bus import QueueWorker, answer_pings, ensure_events_stream, ensure_hooks_stream
from shared.config import load_config
from shared.event_publisher import EventPublisher
from shared.natsconn import nats_broker
from shared.plugins import GUARD_POINTS, HookRunner, build_runner, request_view
from shared.schemas.admin import ScanFinding, ScanRequest, ScanResult
from shared.schemas.chat import Outcome, Result, Verdict
from shared.schemas.events import ContentEvent
from shared.schemas.mcp import ArgumentsScan, ToolCall, ToolOutcome
from shared.subjects import Service, Subjects
from shared.telemetry import Telemetry, TelemetryConfig
from shared.tracing import Span

log = logging.getLogger("gatehouse.guard")
# the guard waits for the mcp stage this much longer than the call's own timeout (which the stage enforces)
MCP_HOP_MARGIN_S = 2.0
# what the guard answers a tool call with: the call's outcome, or (before an approval) its scanned arguments
_Answer = TypeVar("_Answer", ToolOutcome, ArgumentsScan)


def scan_answer(guard: Guard, data: bytes, subject: Service[ScanRequest, ScanResult]) -> ScanResult:
    """The answer to a `guard.scan` request (errors come back as data, never raised)."""
    try:
        req = subject.decode(data)
        policy = guard.rails.policy(req.policy) if req.policy else guard.rails.default
    except msgspec.DecodeError:
        return ScanResult(policy="", action="allow", error="malformed scan request")
    except KeyError as exc:
        return ScanResult(policy="", action="allow", error=f"unknown policy {exc}")
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
    return ScanResult(
        policy=policy.name,
        action=result.action,
        findings=findings,
        text=result.text if result.action == "redact" else req.text,
        scan_us=(time.perf_counter_ns() - started) // 1000,
    )


class GuardHandlers:
    """The message handlers of one guard replica."""

    def __init__(
        self,
        broker: NatsBroker,
        guard: Guard,
        subjects: Subjects,
        events: EventPublisher,
        replica: str = "",
        hooks: HookRunner | None = None,
        tell_blocks: bool = False,
    ) -> None:
        self.broker = broker
        self.replica = replica  # named in every verdict, so a record says which guard replica scanned it
        self.guard = guard
        self.subjects = subjects
        self.out_prefix = subjects.guard_output(uuid.uuid4().hex[:12])
        self.verdicts = VerdictLog(subjects.events_guard, events, subjects.hooks_blocked if tell_blocks else None)
        self.replies = subjects.replies
        self.events = events
        self.tools = ToolGuard(guard.rails, guard.config.mcp)
        self.hooks = hooks or HookRunner({})
        self.relay = ResponseRelay(
            subjects.replies,
            guard.rails.stream_holdback_chars,
            self._publish,
            self.verdicts.record,
            log_content=self.log_content,
        )

    def log_content(self, event: ContentEvent) -> None:
        """A redacted prompt or response of a caller that logs content, to the event stream (never dropped
        while the spool has room; nothing unredacted is ever handed over)."""
        self.events.publish(self.subjects.events_content, event, event.event_id)

    async def _publish(self, subject: str, data: bytes) -> None:
        await self.broker.connection.publish(subject, data)

    async def on_request(self, msg: Msg) -> None:
        reply_to = msg.reply
        if not reply_to:
            log.warning("request without reply inbox dropped")
            return
        try:
            req = self.subjects.guard_chat.decode(msg.data)
        except msgspec.MsgspecError:
            log.warning("malformed request on %s dropped", msg.subject)
            return
        span = start_check(msg, req)
        started = time.perf_counter_ns()
        checked = self.guard.check(req)
        us = (time.perf_counter_ns() - started) // 1000
        summary = msgspec.structs.replace(checked.summary, scan_us=us, replica=self.replica)
        nc = self.broker.connection
        if checked.content is not None:
            self.log_content(checked.content)
        error = checked.error
        if error is None and self.hooks.has("after_guard"):
            error = await self.hooks.refusal("after_guard", request_view("after_guard", req, summary.action))
        if error is not None:
            await nc.publish(reply_to, self.replies.encode(Result(outcome=Outcome(), error=error, guard=summary)))
        else:
            # the verdict goes to ingress for the record; the router gets the request and nothing else
            await nc.publish(reply_to, self.replies.encode(Verdict(summary)))
            capture = None
            if checked.logged_by is not None:  # the response comes back this way, to be logged
                capture = ResponseCapture(req.request_id, req.caller, req.model, checked.logged_by, checked.policy)
            if checked.output is not None or checked.vault is not None or capture is not None:
                self.relay.track(req.request_id, reply_to, summary, checked.output, checked.vault, capture)
                reply_to = f"{self.out_prefix}.{req.request_id}"
            # batch items go to the router's batch lane, which yields to interactive traffic
            router = self.subjects.router_batch if req.batch else self.subjects.router_chat
            headers = forward_headers(msg, span)
            # a request the guard left as it was goes on in the bytes it came in (no second encode)
            data = router.encode(checked.request) if checked.rewritten else msg.data
            await nc.publish(router.name, data, reply=reply_to, headers=headers)
        finish_check(span, req, summary, error)
        self.verdicts.record(req.request_id, summary, list(summary.findings), "input", us)

    async def on_response(self, msg: Msg) -> None:
        await self.relay.on_reply(msg.subject[len(self.out_prefix) + 1 :], msg.data)

    async def on_tool_call(self, msg: Msg) -> None:
        """Scan a tool call's arguments, call the mcp stage, scan the result; answer ingress with the outcome."""
        await self._answer_tool_call(msg, self.subjects.guard_mcp, start_tool_call, self._tool_call, _call_failed)

    async def on_tool_scan(self, msg: Msg) -> None:
        """Scan a tool call's arguments only (a call that waits for an approval): answer ingress with them as the
        policy lets them through (redacted where it redacts), or with the error that blocks them."""
        await self._answer_tool_call(msg, self.subjects.guard_mcp_scan, start_tool_scan, self._arguments, _scan_failed)

    async def _answer_tool_call(
        self,
        msg: Msg,
        subject: Service[ToolCall, _Answer],
        start: Callable[[Msg, ToolCall], Span],
        work: Callable[[ToolCall, dict[str, str] | None], Awaitable[_Answer]],
        failed: Callable[[ToolCall], _Answer],
    ) -> None:
        """Decode a tool call, do `work` on it and answer the ingress inbox; a bug (or a policy the guard does not
        know) still answers, and fails closed."""
        if not msg.reply:
            return
        try:
            call = subject.decode(msg.data)
        except msgspec.MsgspecError:
            log.warning("malformed tool call on %s dropped", msg.subject)
            return
        span = start(msg, call)
        try:
            answer = await work(call, forward_headers(msg, span))
        except Exception:
            log.exception("tool call %s failed in the guard (%s)", call.call_id, msg.subject)
            answer = failed(call)
        await msg.respond(subject.encode_reply(answer))
        finish_tool_call(span, call, answer)

    async def _arguments(self, call: ToolCall, _headers: dict[str, str] | None) -> ArgumentsScan:
        scanned = self._scanned(call.call_id, "input", lambda: self.tools.scan_arguments(call))
        return ArgumentsScan(
            call_id=call.call_id, arguments=scanned.data, error=scanned.error, guard_input=scanned.summary
        )

    async def _tool_call(self, call: ToolCall, headers: dict[str, str] | None) -> ToolOutcome:
        scanned = self._scanned(call.call_id, "input", lambda: self.tools.scan_arguments(call))
        if scanned.error is not None:
            return ToolOutcome(call_id=call.call_id, error=scanned.error, guard_input=scanned.summary)
        if call.approved and scanned.data != call.arguments:
            # the approver saw these arguments as this scan would leave them; a scan that changes them now (the
            # policy changed meanwhile) would run a call nobody approved
            return ToolOutcome(
                call_id=call.call_id, error=mcp_errors.changed_since_approval(), guard_input=scanned.summary
            )
        if scanned.data is not call.arguments:
            call = msgspec.structs.replace(call, arguments=scanned.data)
        subject = self.subjects.mcp_call
        try:
            reply = await self.broker.connection.request(
                subject.name, subject.encode(call), timeout=call.timeout_s + MCP_HOP_MARGIN_S, headers=headers
            )
            outcome = subject.decode_reply(reply.data)
        except Exception as exc:
            log.warning("tool call %s: the mcp stage did not answer: %s", call.call_id, type(exc).__name__)
            error = mcp_errors.gateway_unavailable("MCP stage")
            return ToolOutcome(call_id=call.call_id, error=error, guard_input=scanned.summary)
        outcome = msgspec.structs.replace(outcome, guard_input=scanned.summary)
        if outcome.error is not None or not outcome.result:
            return outcome
        result = self._scanned(call.call_id, "output", lambda: self.tools.scan_result(call, outcome.result))
        return msgspec.structs.replace(outcome, result=result.data, error=result.error, guard_output=result.summary)

    def _scanned(self, call_id: str, direction: str, scan: Callable[[], Scanned]) -> Scanned:
        started = time.perf_counter_ns()
        scanned = scan()
        us = (time.perf_counter_ns() - started) // 1000
        if scanned.summary is not None:
            summary = msgspec.structs.replace(scanned.summary, scan_us=us, replica=self.replica)
            self.verdicts.record(call_id, summary, list(summary.findings), direction, us)
            scanned = Scanned(scanned.data, summary, scanned.error)
        return scanned

    async def on_scan(self, msg: Msg) -> None:
        if msg.reply:
            scan = self.subjects.guard_scan
            await self._publish(msg.reply, scan.encode_reply(scan_answer(self.guard, msg.data, scan)))


def _call_failed(call: ToolCall) -> ToolOutcome:
    return ToolOutcome(call_id=call.call_id, error=mcp_errors.internal())


def _scan_failed(call: ToolCall) -> ArgumentsScan:
    return ArgumentsScan(call_id=call.call_id, error=mcp_errors.internal())


def create_app(settings: GuardSettings) -> FastStream:
    config = load_config(settings.config)
    subjects = Subjects(settings.subject_prefix)
    broker = nats_broker(settings.nats_link("guard"))
    events = EventPublisher.from_settings(settings, "guard")
    hooks = build_runner(config.plugins, GUARD_POINTS)
    tell_blocks = any("request_blocked" in w.events for w in config.webhooks)
    handlers = GuardHandlers(broker, Guard(config), subjects, events, settings.replica, hooks, tell_blocks)
    telemetry = Telemetry(TelemetryConfig.of(settings, "guard", settings.otlp_headers.get_secret_value()), subjects)
    telemetry.serve_metrics()
    chat_in, scan = subjects.guard_chat, subjects.guard_scan
    worker = QueueWorker(chat_in.name, chat_in.queue, handlers.on_request, settings.guard_max_concurrency)
    tools = subjects.guard_mcp
    # tool calls wait on their upstream: they have slots of their own, so a slow tool never holds up chat
    tool_worker = QueueWorker(tools.name, tools.queue, handlers.on_tool_call, settings.guard_mcp_max_concurrency)
    scanner = QueueWorker(scan.name, scan.queue, handlers.on_scan, settings.guard_max_concurrency)
    tool_scan = subjects.guard_mcp_scan
    tool_scanner = QueueWorker(tool_scan.name, tool_scan.queue, handlers.on_tool_scan, settings.guard_max_concurrency)
    app = FastStream(broker, logger=log)
    subs: list[Subscription] = []
    sweeper: list[asyncio.Task[None]] = []

    @app.after_startup
    async def _start() -> None:
        nc = broker.connection
        await ensure_events_stream(broker.config.connection_state.stream, subjects)
        if tell_blocks:
            await ensure_hooks_stream(broker.config.connection_state.stream, subjects)
        await handlers.verdicts.start(nc)
        await telemetry.start(nc)
        metrics.in_flight(lambda: worker.in_flight)
        metrics.event_publisher("events", events)
        # responses for this replica's requests arrive in order on one subscription
        subs.append(
            await nc.subscribe(f"{handlers.out_prefix}.*", cb=handlers.on_response, pending_msgs_limit=1_000_000)
        )
        await worker.start(nc)
        await scanner.start(nc)
        await tool_worker.start(nc)
        await tool_scanner.start(nc)
        subs.append(await answer_pings(nc, subjects.ping("guard"), chat_in.queue))
        sweeper.append(asyncio.create_task(handlers.relay.sweep_forever()))

    @app.on_shutdown
    async def _drain() -> None:
        await worker.stop()
        await scanner.stop()
        await tool_worker.stop()
        await tool_scanner.stop()
        for sub in subs:
            await sub.unsubscribe()
        for task in sweeper:
            task.cancel()
        await telemetry.stop()
        await handlers.verdicts.drain()

    return app
