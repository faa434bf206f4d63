"""The path of one MCP call through ingress: the key may use the tool → the argument rules allow it → the agent
run has room → the calls-per-minute quota → (where a rule asks for an approval: the guard scans the arguments, then
an admin approves them as the guard left them) → the price is reserved on the budgets → the guard (arguments
scanned) → the mcp stage (the upstream call) → the guard (result scanned) → the client.
Every call, refused ones included, leaves one record (`<p>.events.mcp` → the `mcp_calls` table).

A call put to an approver is the guard's version of it: what the approvals bucket keeps, what the approver is
shown and what runs once approved are the arguments as the guard's policy let them through (redacted where it
redacts); the raw arguments are dropped once the guard answered, and the guard refuses to run an approved call
whose arguments its policy would now change.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError

from services.ingress.mcp.approvals import ApprovalRefused, Approvals, check_shown
from services.ingress.mcp.rules import decide
from services.ingress.mcp.runs import RunLimitError, Runs
from services.ingress.mcp.telemetry import finish_call, start_call
from shared import mcp_errors
from shared.admission import reserve_price
from shared.bus import REQUEST_ID, TRACEPARENT
from shared.counters import CounterError, Counters, Op
from shared.directory import Entitlement
from shared.errors import BudgetExceededError, ServiceUnavailableError
from shared.event_publisher import EventPublisher
from shared.mcp_config import McpConfig, split_name
from shared.periods import window, window_reset
from shared.records import RecordPublisher
from shared.schemas.chat import GuardFinding, GuardSummary, Reservation
from shared.schemas.mcp import Approval, ArgumentsScan, McpCallEvent, McpError, McpMethod, ToolCall, ToolOutcome
from shared.subjects import Subjects
from shared.tracing import Span

log = logging.getLogger("gatehouse.ingress.mcp")

MICRO = 1_000_000
# ingress waits for the guard this much longer than the call's own timeout (the stages behind enforce it)
HOP_MARGIN_S = 5.0
# the guard's scan of a call's arguments alone (before an approval): no upstream behind it
SCAN_TIMEOUT_S = 10.0
_OBJECT = msgspec.json.Decoder(dict[str, Any])
_JSON = msgspec.json.Encoder()


# (server, list kind, namespaced name) → whether the server's catalog lists the name (None: cannot tell)
Offers = Callable[[str, str, str], Awaitable[bool | None]]


class CallFailed(Exception):
    """The call ends with this JSON-RPC error (the record names its status)."""

    def __init__(self, error: McpError, recorded: McpError | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        # what the call's record says when it differs from what the client is told (an access refusal the
        # client sees as an unknown name)
        self.recorded = recorded or error


@dataclass
class CallContext:
    """Who calls, and what the request carried beside the JSON-RPC message."""

    ent: Entitlement
    session_id: str = ""
    run_id: str = ""
    trace_id: str = ""
    traceparent: str = ""
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class _Record:
    call_id: str
    method: str
    received_at: float
    started: float
    server: str = ""
    tool: str = ""
    request_bytes: int = 0
    response_bytes: int = 0
    outcome: ToolOutcome | None = None
    error: McpError | None = None
    approval: str = ""
    cost_usd: float = 0.0
    reservation: Reservation | None = None
    is_tool_error: bool = False
    span: Span | None = None
    # the guard's verdict on the arguments when it scanned them before an approval
    guard_input: GuardSummary | None = None


def target(method: McpMethod, params: dict[str, Any]) -> tuple[str, str, bytes]:
    """(namespaced name, upstream name, arguments JSON) of a call's params; CallFailed when they are wrong."""
    if method == "resources/read":
        name = params.get("uri")
        arguments: Any = None
    else:
        name = params.get("name")
        arguments = params.get("arguments")
    what = "uri" if method == "resources/read" else "name"
    if not isinstance(name, str) or not name:
        raise CallFailed(mcp_errors.invalid(f"`params.{what}` must be a non-empty string."))
    if arguments is not None and not isinstance(arguments, dict):
        raise CallFailed(mcp_errors.invalid("`params.arguments` must be an object."))
    split = split_name(name)
    if split is None:
        raise CallFailed(mcp_errors.invalid(f"Unknown {what} '{name[:200]}': names look like <server>__<name>."))
    return name, split[1], _JSON.encode(arguments) if arguments else b""


def _refused(exc: ApprovalRefused) -> McpError:
    if exc.kind == "too_large":
        return McpError(code=mcp_errors.INVALID_PARAMS, message=str(exc), status="too_large")
    return McpError(code=mcp_errors.RATE_LIMITED, message=str(exc), status="rate_limited")


def _refuse_unshowable(arguments: bytes) -> None:
    """CallFailed when a call that needs an approval has arguments too long to show an approver whole."""
    try:
        check_shown(arguments.decode() if arguments else "{}")
    except ApprovalRefused as exc:
        raise CallFailed(_refused(exc)) from None


class ToolCalls:
    def __init__(
        self,
        config: McpConfig,
        subjects: Subjects,
        connection: Callable[[], Client],
        counters: Callable[[], Counters | None],
        events: EventPublisher,
        approvals: Callable[[], Approvals | None],
        runs: Callable[[], Runs | None],
        replica: str = "",
        reservation_grace_s: float = 30.0,
        offers: Offers | None = None,
    ) -> None:
        self.config = config
        self._offers_name = offers
        self.subjects = subjects
        self._nc = connection
        self._counters = counters
        self._events = events
        self._records = RecordPublisher(subjects, events)  # notes a priced call's reservation live
        self._approvals = approvals
        self._runs = runs
        self.replica = replica
        self._grace = reservation_grace_s

    async def call(self, ctx: CallContext, method: McpMethod, params: dict[str, Any]) -> dict[str, Any]:
        """The call's result (a JSON-RPC result object); CallFailed with the error the client gets."""
        rec = _Record(uuid.uuid4().hex, method, time.time(), time.monotonic())
        rec.span = start_call(rec.call_id, ctx.traceparent)
        ctx = replace(ctx, trace_id=rec.span.trace_id, traceparent=rec.span.context.traceparent())
        try:
            name, upstream_name, arguments = target(method, params)
            rec.tool, rec.request_bytes = name, len(arguments)
            rec.server = (split_name(name) or ("", ""))[0]
            # a name the key may not use is answered exactly as one that does not exist (no existence oracle);
            # the record keeps the difference for the admins
            if rec.server not in self.config.servers:
                raise CallFailed(mcp_errors.unknown_name(method, name))
            if not ctx.ent.allows_tool(name):
                raise CallFailed(
                    mcp_errors.unknown_name(method, name), mcp_errors.denied(f"This key may not use '{name[:200]}'.")
                )
            if method != "resources/read" and await self._offers(rec.server, method, name) is False:
                raise CallFailed(mcp_errors.unknown_name(method, name))
            rule = decide(self.config.rules, name, _OBJECT.decode(arguments) if arguments else {})
            if rule.action == "deny":
                why = rule.message or f"argument rule {rule.rule} of the gateway's config"
                raise CallFailed(mcp_errors.denied(f"The call to '{name}' was denied: {why}."))
            if rule.action == "approve":
                _refuse_unshowable(arguments)  # before the run and the quota count the call
            price = self.config.servers[rec.server].price(upstream_name) if method == "tools/call" else 0.0
            await self._run(ctx, name, arguments, price)
            await self._quota(ctx.ent)
            approved = rule.action == "approve"
            if approved:
                # the approver is shown, and the approved call runs with, the arguments as the guard lets them
                # through: a call the guard blocks never reaches the approvals bucket, and the raw arguments are
                # dropped here (rebound to the guard's version)
                arguments = await self._scan(ctx, rec, method, upstream_name, arguments)
                rec.approval = await self._approval(ctx, rec, name, arguments, rule.rule)
            rec.reservation = await self._reserve(ctx, rec, price)
            # charged once the tool answered; a call that fails before (arguments blocked, upstream down, timeout,
            # gateway error) keeps cost 0, and accounting's settlement gives its reservation back
            outcome = await self._dispatch(ctx, rec, method, upstream_name, arguments, approved)
            rec.outcome = outcome
            if answered(outcome):
                rec.cost_usd = price
            if outcome.error is not None:
                raise CallFailed(outcome.error)
            result = _OBJECT.decode(outcome.result)
            rec.response_bytes = len(outcome.result)
            rec.is_tool_error = bool(result.get("isError"))
            return result
        except CallFailed as exc:
            rec.error = exc.recorded
            raise
        except asyncio.CancelledError:
            # the client left mid-call (a Responses mcp loop inside a cancelled stream): recorded as such, not ok
            rec.error = mcp_errors.client_closed()
            raise
        except msgspec.DecodeError:
            rec.error = mcp_errors.invalid("The arguments are not a JSON object.")
            raise CallFailed(rec.error) from None
        finally:
            self._record(ctx, rec)

    # ---- the steps ---------------------------------------------------------------------------------
    async def _offers(self, server: str, method: str, name: str) -> bool | None:
        """Whether the server's catalog lists the (namespaced) tool or prompt; None when the catalog cannot tell
        (the server is down, the catalog unavailable): the call goes on and the upstream answers."""
        if self._offers_name is None:
            return None
        try:
            return await self._offers_name(server, "tools" if method == "tools/call" else "prompts", name)
        except Exception as exc:
            log.warning("mcp catalog unavailable for a name check: %s", type(exc).__name__)
            return None

    async def _run(self, ctx: CallContext, name: str, arguments: bytes, price: float) -> None:
        runs = self._runs()
        if not ctx.run_id or runs is None:
            return
        try:
            await runs.tool_call(ctx.ent, ctx.run_id, name, arguments, price)
        except RunLimitError as exc:
            raise CallFailed(McpError(code=mcp_errors.RUN_LIMIT, message=str(exc), status="run_limit")) from None

    async def _quota(self, ent: Entitlement) -> None:
        counters = self._counters()
        limited = [(s, q) for s in ent.scopes if (q := s.limits.quotas.tool_calls_per_minute) is not None]
        if not limited or counters is None:
            return
        now = time.time()
        minute = window(now)
        results = await counters.add_many([Op(self.subjects.tool_quota_counter(s.name, minute), 1) for s, _ in limited])
        for (scope, limit), result in zip(limited, results, strict=True):
            if isinstance(result, CounterError):
                log.warning("tool quota counters unavailable: %s", result)
                continue
            if result.value > limit:
                raise CallFailed(
                    McpError(
                        code=mcp_errors.RATE_LIMITED,
                        message=f"Rate limit reached for {scope.level} '{scope.id}': {limit} tool calls per minute; "
                        f"try again in {math.ceil(window_reset(now))}s.",
                        status="rate_limited",
                    )
                )

    async def _scan(
        self, ctx: CallContext, rec: _Record, method: McpMethod, upstream_name: str, arguments: bytes
    ) -> bytes:
        """The call's arguments as the guard's input policy lets them through (redacted where it redacts), scanned
        exactly as the call itself is; CallFailed with the guard's error when it blocks them."""
        subject = self.subjects.guard_mcp_scan
        call = self._tool_call(ctx, rec, method, upstream_name, arguments)
        try:
            reply = await self._nc().request(
                subject.name, subject.encode(call), timeout=SCAN_TIMEOUT_S, headers=self._headers(ctx, rec)
            )
            scan: ArgumentsScan = subject.decode_reply(reply.data)
        except (NoRespondersError, TimeoutError, msgspec.DecodeError):
            raise CallFailed(mcp_errors.gateway_unavailable("guard")) from None
        rec.guard_input = scan.guard_input
        if scan.error is not None:
            raise CallFailed(scan.error)
        return scan.arguments

    async def _approval(self, ctx: CallContext, rec: _Record, name: str, arguments: bytes, rule: int) -> str:
        approvals = self._approvals()
        if approvals is None:
            raise CallFailed(mcp_errors.gateway_unavailable("approval store"))
        now = time.time()
        c = ctx.ent.caller
        pending = Approval(
            call_id=rec.call_id,
            server=rec.server,
            tool=name,
            arguments=arguments.decode() if arguments else "{}",
            key_id=c.key_id,
            team=c.team,
            project=c.project,
            rule=str(rule),
            created_at=now,
            expires_at=now + self.config.approval_timeout_s,
            guard=rec.guard_input,
        )
        try:
            state, decided = await approvals.wait(pending)
        except ApprovalRefused as exc:
            raise CallFailed(_refused(exc)) from None
        if state == "approved":
            return state
        if state == "timeout":
            raise CallFailed(
                McpError(
                    code=mcp_errors.APPROVAL_TIMEOUT,
                    message=f"The call to '{name}' needed an approval that did not come within "
                    f"{self.config.approval_timeout_s:g}s (approval id {rec.call_id}).",
                    status="approval_timeout",
                )
            )
        reason = f": {decided.reason}" if decided.reason else ""
        raise CallFailed(
            McpError(
                code=mcp_errors.APPROVAL_DENIED,
                message=f"The call to '{name}' was denied by an approver{reason}.",
                status="approval_denied",
            )
        )

    async def _reserve(self, ctx: CallContext, rec: _Record, price: float) -> Reservation | None:
        """Reserve the call's price on every budget of the key's levels, as a model request's worst case is
        (shared/admission.py): a hard budget it would cross refuses the call and nothing is held. The
        reservation is noted live (released if this replica dies before the record is stored) and travels
        on the call's record, from which accounting settles it to what the call cost."""
        counters = self._counters()
        if price <= 0 or counters is None:
            return None
        expires_at = time.time() + self.config.timeout_for(rec.server) + HOP_MARGIN_S + self._grace
        try:
            reservation = await reserve_price(
                counters, self.subjects, ctx.ent, rec.call_id, price, expires_at, "this tool call"
            )
        except BudgetExceededError as exc:
            raise CallFailed(McpError(code=mcp_errors.BUDGET_EXCEEDED, message=exc.message, status="budget")) from None
        except ServiceUnavailableError:
            raise CallFailed(mcp_errors.gateway_unavailable("budget counters")) from None
        if reservation is not None:
            self._records.hold(reservation)
        return reservation

    def _tool_call(
        self,
        ctx: CallContext,
        rec: _Record,
        method: McpMethod,
        upstream_name: str,
        arguments: bytes,
        approved: bool = False,
    ) -> ToolCall:
        return ToolCall(
            call_id=rec.call_id,
            method=method,
            server=rec.server,
            name=upstream_name,
            arguments=arguments,
            caller=ctx.ent.caller,
            timeout_s=self.config.timeout_for(rec.server),
            received_at=rec.received_at,
            trace_id=ctx.trace_id,
            run_id=ctx.run_id,
            approved=approved,
        )

    @staticmethod
    def _headers(ctx: CallContext, rec: _Record) -> dict[str, str]:
        headers = {REQUEST_ID: rec.call_id}
        if ctx.traceparent:
            headers[TRACEPARENT] = ctx.traceparent
        return headers

    async def _dispatch(
        self,
        ctx: CallContext,
        rec: _Record,
        method: McpMethod,
        upstream_name: str,
        arguments: bytes,
        approved: bool = False,
    ) -> ToolOutcome:
        call = self._tool_call(ctx, rec, method, upstream_name, arguments, approved)
        timeout = call.timeout_s
        subject = self.subjects.guard_mcp
        try:
            reply = await self._nc().request(
                subject.name, subject.encode(call), timeout=timeout + HOP_MARGIN_S, headers=self._headers(ctx, rec)
            )
        except NoRespondersError:
            raise CallFailed(mcp_errors.gateway_unavailable("guard")) from None
        except TimeoutError:
            raise CallFailed(mcp_errors.upstream_timeout(rec.server, timeout)) from None
        try:
            return subject.decode_reply(reply.data)
        except msgspec.DecodeError:
            raise CallFailed(mcp_errors.gateway_unavailable("guard")) from None

    # ---- the record ------------------------------------------------------------------------------------
    def _record(self, ctx: CallContext, rec: _Record) -> None:
        outcome = rec.outcome
        findings: list[GuardFinding] = []
        # the scan before an approval (if any) first: it saw the raw arguments, the call's own scan their guarded form
        scans = (rec.guard_input, outcome.guard_input, outcome.guard_output) if outcome else (rec.guard_input,)
        summaries = [s for s in scans if s is not None]
        for summary in summaries:
            findings.extend(summary.findings)
        # arguments the guard only flagged are the same text in both scans: a hit at one place is recorded once
        findings = list(dict.fromkeys(findings))
        worst = _worst(summaries)
        status = rec.error.status if rec.error is not None else ("tool_error" if rec.is_tool_error else "ok")
        finished = time.time()
        latency = (time.monotonic() - rec.started) * 1000
        event = McpCallEvent(
            event_id=uuid.uuid4().hex,
            call_id=rec.call_id,
            trace_id=ctx.trace_id,
            run_id=ctx.run_id,
            session_id=ctx.session_id,
            method=rec.method,
            server=rec.server,
            tool=rec.tool,
            caller=ctx.ent.caller,
            status=status,
            error_code=rec.error.code if rec.error is not None else 0,
            error_message=rec.error.message[:1000] if rec.error is not None else "",
            latency_ms=latency,
            upstream_ms=outcome.upstream_ms if outcome else 0.0,
            request_bytes=rec.request_bytes,
            response_bytes=rec.response_bytes,
            guard_action=worst.action if worst else "",
            guard_policy=worst.policy if worst else "",
            guard_findings=findings,
            approval=rec.approval
            or (rec.error.status if rec.error and rec.error.status.startswith("approval") else ""),
            cost_usd=rec.cost_usd,
            received_at=rec.received_at,
            finished_at=finished,
            mcp_replica=outcome.mcp_replica if outcome else "",
            guard_replica=summaries[0].replica if summaries else "",
            tags=ctx.tags,
            reservation=rec.reservation,
        )
        self._events.publish(self.subjects.events_mcp, event, event.event_id)
        if rec.span is not None:
            finish_call(rec.span, rec.server, rec.tool, status, latency / 1000)


def answered(outcome: ToolOutcome) -> bool:
    """Whether the tool answered, so the call is charged its price: a result (the guard may have blocked it on the
    way back, or it was too large to pass), or the upstream's own JSON-RPC error. Arguments the guard blocked, an
    upstream down or too slow, a gateway error: the tool never answered, and the call costs nothing."""
    error = outcome.error
    if error is None or error.status in ("upstream_error", "too_large"):
        return True
    return error.status == "blocked" and outcome.guard_output is not None


_RANK = {"allow": 0, "flag": 1, "redact": 2, "block": 3}


def _worst(summaries: list[GuardSummary]) -> GuardSummary | None:
    return max(summaries, key=lambda s: _RANK.get(s.action, 0), default=None)
