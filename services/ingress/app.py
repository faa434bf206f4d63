"""ingress: HTTP (OpenAI-compatible) → `<p>.guard.chat` with reply inbox `<p>.inbox.<id>.<request>`;
Chunk…/Result from the inbox → HTTP response or SSE; one RequestEvent per request → `<p>.events.request`.

The only HTTP surface and the only writer of HTTP errors. Authenticates the key, validates the body,
publishes the request, relays the reply, and records every request, failed ones included. Runs the
before_guard and after_response plugin hooks (services/ingress/hooks.py). A Responses request with `mcp`
tools runs as a loop of model turns (each a request of its own) and MCP tool calls
(services/ingress/mcp/responses_loop.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from typing import TypeVar

import msgspec
from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError, ConnectionDrainingError, OutboundBufferLimitError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from services.ingress import apis, hooks
from services.ingress.admin import AdminApi
from services.ingress.anthropic_batches import AnthropicBatches
from services.ingress.batches import BatchEndpoints
from services.ingress.body import read_body
from services.ingress.fastpath import FastPaths
from services.ingress.fleet import Fleet, gather, merge
from services.ingress.mcp.admin import McpAdmin
from services.ingress.mcp.approvals import Approvals
from services.ingress.mcp.calls import CallContext, ToolCalls
from services.ingress.mcp.catalog import CatalogCache
from services.ingress.mcp.endpoint import McpEndpoint
from services.ingress.mcp.responses_loop import ResponsesMcp
from services.ingress.mcp.runs import RUN_HEADER, BadRunId, RunLimitError, Runs, run_id_of
from services.ingress.mcp.sessions import Sessions
from services.ingress.routing import client_deadline, route_choice
from services.ingress.surfaces.responses_mcp import has_mcp
from services.ingress.tags import MCP_RESPONSE_TAG, client_tags
from services.ingress.telemetry import MetricsEndpoint, finish_request, start_request, traceparent
from shared import metrics
from shared.admission import Admitted, Estimate, Governor
from shared.auth import Authenticator
from shared.bus import REQUEST_ID, TRACEPARENT, ensure_events_stream
from shared.config import GatehouseConfig
from shared.counters import Counters, ensure_counter_streams, ensure_run_stream
from shared.directory import Directory, Entitlement
from shared.errors import (
    CLIENT_CLOSED,
    BudgetExceededError,
    ErrorInfo,
    GatewayError,
    GatewayTimeoutError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    RunLimitExceeded,
    ServiceUnavailableError,
    UnknownEndpointError,
    error_body,
)
from shared.event_publisher import EventPublisher
from shared.files import FileStore
from shared.governance import RunLimits
from shared.inbox import Inbox, NoResponders, next_reply
from shared.keystore import KeyStore
from shared.natsconn import NatsLink, nats_broker, nats_problem
from shared.plugins import INGRESS_POINTS, build_runner
from shared.records import RecordPublisher, RequestRecord, new_request_id
from shared.route_pricing import pricing_index
from shared.schemas.admin import RequestLookup, RequestsQuery, RequestStory, SqlResult, UsageQuery
from shared.schemas.chat import (
    BodyPart,
    Cancel,
    ChatRequest,
    Chunk,
    ChunkBatch,
    NativeEvents,
    Reply,
    Result,
    Verdict,
)
from shared.schemas.mcp import Catalog, CatalogQuery
from shared.schemas.openai import ChatCompletionRequest
from shared.subjects import Service, Subjects
from shared.telemetry import Telemetry
from shared.tokens import embeddings_tokens, estimate_prompt_tokens
from shared.tracing import TRACER
from shared.usage_policy import apply_params, max_output, with_max_output

log = logging.getLogger("gatehouse.ingress")
Q = TypeVar("Q")
R = TypeVar("R")

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
# how long a request whose client left waits for the router's final word (its usage so far)
CANCEL_GRACE_S = 2.0
# the longest `user` a request may name for its record
MAX_USER_CHARS = 128
# chunks a stream may run past the output its budget reservation covers before it is cut (chunks and
# tokens do not map one to one; the provider's own max_tokens normally ends it first)
STREAM_SLACK_CHUNKS = 16


def error_headers(info: ErrorInfo, request_id: str = "") -> dict[str, str]:
    """x-request-id, and Retry-After (whole seconds, rounded up) when the error carries one."""
    headers = {"x-request-id": request_id} if request_id else {}
    if info.retry_after is not None:
        headers["retry-after"] = str(max(math.ceil(info.retry_after), 0))
    return headers


def error_response(info: ErrorInfo, request_id: str = "") -> JSONResponse:
    return JSONResponse(error_body(info), status_code=info.status, headers=error_headers(info, request_id))


class Gateway:
    """The request path of one ingress process."""

    def __init__(
        self,
        config: GatehouseConfig,
        broker: NatsBroker,
        subjects: Subjects,
        events: EventPublisher,
        nats_timeout_s: float = 5.0,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.config = config
        self.telemetry = telemetry
        self.nats_timeout_s = nats_timeout_s
        self.broker = broker
        self.subjects = subjects
        self.directory = Directory.with_static(config.key_hashes())
        self.auth = Authenticator(self.directory)
        self.keystore: KeyStore | None = None
        self.governor: Governor | None = None
        self.pricing = pricing_index(config)
        self.models = config.model_index()
        self.native_protocols = {m.name: config.native_protocols(m) for m in config.models}
        self.inbox = Inbox(subjects)
        self.records = RecordPublisher(subjects, events)
        self.limit = config.server.max_body_bytes
        self.timeout = config.server.request_timeout_s
        self.first_timeout = min(config.server.first_reply_timeout_s, self.timeout)
        self.silence = config.server.heartbeat_timeout_s
        self._ready_at = -10.0
        self._ready_reason = "starting"
        self._tasks: set[asyncio.Task[None]] = set()
        # MCP (services/ingress/mcp/): sessions of this replica, the catalog, and the tool call path
        self.counters: Counters | None = None
        self._mcp_sub: Subscription | None = None
        self.runs: Runs | None = None
        self.approvals: Approvals | None = None
        self.mcp_catalog = CatalogCache(self.catalog)
        self.tool_calls = ToolCalls(
            config.mcp,
            subjects,
            lambda: self.broker.connection,
            lambda: self.counters,
            events,
            lambda: self.approvals,
            lambda: self.runs,
            reservation_grace_s=config.governance.reservation_grace_s,
            offers=self.mcp_catalog.offers,
        )
        self.mcp = McpEndpoint(
            self.auth,
            self.tool_calls,
            self.mcp_catalog,
            Sessions(config.mcp.session_idle_s, config.mcp.max_sessions),
            config.server.max_body_bytes,
            config.mcp.list_page_size,
        )
        # the Responses API's `mcp` tool: a loop of model turns and tool calls over the two paths above
        self.responses_mcp = ResponsesMcp(config.mcp, self.mcp_catalog, self.tool_calls, config.server.max_body_bytes)
        # plugin hooks of this stage (shared/plugins.py); with none configured the request path skips them
        self.hooks = build_runner(config.plugins, INGRESS_POINTS)

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        await self.broker.start()
        nc = self.broker.connection
        js = self.broker.config.connection_state.stream
        await ensure_events_stream(js, self.subjects)
        await ensure_counter_streams(nc, self.subjects)
        await ensure_run_stream(nc, self.subjects, self.config.mcp.run_ttl_s)
        gov = self.config.governance
        self.counters = Counters(nc, self.nats_timeout_s)
        self.runs = Runs(self.counters, self.subjects, RunLimits(**self.config.mcp.runs.model_dump()))
        self.approvals = Approvals(
            js, self.subjects.mcp_approvals_bucket, self.config.mcp.max_pending_approvals_per_key
        )
        changed = self.subjects.mcp_changed

        async def on_changed(msg: Msg) -> None:
            with contextlib.suppress(msgspec.MsgspecError):
                self.mcp.changed(changed.decode(msg.data))

        self._mcp_sub = await nc.subscribe(changed.name, cb=on_changed)
        self.governor = Governor(
            self.counters,
            self.subjects,
            quotas_fail_open=gov.quotas_when_unavailable == "open",
            reservation_grace_s=gov.reservation_grace_s,
            leases=gov.leases,
            note=self.records.note,
        )
        self.keystore = KeyStore(js, self.subjects.directory_bucket, self.directory)
        self.keystore.start()
        await self.records.start(nc)
        await self.inbox.start(nc)
        if self.telemetry is not None:
            await self.telemetry.start(nc)
            metrics.in_flight(lambda: len(self.inbox))
            metrics.event_publisher("events", self.records.events)

    async def stop(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=CANCEL_GRACE_S + 1)
        await self.inbox.stop()
        if self._mcp_sub is not None:
            await self._mcp_sub.unsubscribe()
        if self.keystore is not None:
            await self.keystore.stop()
        if self.governor is not None:
            await self.governor.drain()
        if self.telemetry is not None:
            await self.telemetry.stop()
        await self.records.drain()
        await self.broker.stop()

    async def ready(self) -> str:
        """'' when requests can be served end to end, else what is missing (cached for a second)."""
        now = time.monotonic()
        if now - self._ready_at < 1.0:
            return self._ready_reason
        reason = ""
        if not self.broker.connection.is_connected:
            reason = "not connected to NATS"
        else:
            stages = ("guard", "router", "mcp") if self.config.mcp.servers else ("guard", "router")
            for stage in stages:
                try:
                    await self.broker.connection.request(self.subjects.ping(stage), b"", timeout=0.5)
                except Exception:
                    reason = f"no {stage} replica answers"
                    break
        self._ready_at, self._ready_reason = now, reason
        return reason

    # ---- endpoints -------------------------------------------------------------------------
    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, apis.CHAT)

    async def embeddings(self, request: Request) -> Response:
        return await self._serve(request, apis.EMBEDDINGS)

    async def messages(self, request: Request) -> Response:
        return await self._serve(request, apis.MESSAGES)

    async def responses(self, request: Request) -> Response:
        return await self._serve(request, apis.RESPONSES)

    async def list_models(self, request: Request) -> Response:
        rid = new_request_id()
        try:
            ent = self.auth.authenticate(request.headers.get("authorization"), request.headers.get("x-api-key"))
        except GatewayError as exc:
            return error_response(exc.info(), rid)
        data = [
            {"id": m.name, "object": "model", "created": 0, "owned_by": m.owned_by}
            for m in self.config.models
            if ent.allows(m.name, m.name)
        ]
        return JSONResponse({"object": "list", "data": data}, headers={"x-request-id": rid})

    async def retrieve_model(self, request: Request) -> Response:
        rid = new_request_id()
        name = request.path_params["model"]
        try:
            ent = self.auth.authenticate(request.headers.get("authorization"), request.headers.get("x-api-key"))
            model = self.models.get(name)
            if model is None or not ent.allows(name, model.name):
                raise NotFoundError(
                    f"The model `{name}` does not exist or you do not have access to it.", param="model"
                )
        except GatewayError as exc:
            return error_response(exc.info(), rid)
        return JSONResponse(
            {"id": name, "object": "model", "created": 0, "owned_by": model.owned_by}, headers={"x-request-id": rid}
        )

    async def _ask(self, subject: Service[Q, R], query: Q, timeout: float, unavailable: str) -> R:
        """One request/reply on the bus for the admin API; no answer is a 503 saying `unavailable`."""
        try:
            msg = await self.broker.connection.request(subject.name, subject.encode(query), timeout=timeout)
        except Exception as exc:
            raise ServiceUnavailableError(unavailable) from exc
        return subject.decode_reply(msg.data)

    async def _table(self, subject: Service[Q, SqlResult], query: Q, what: str) -> dict[str, object]:
        """A table from accounting; a query it refused is the client's 400."""
        result = await self._ask(subject, query, 30, f"Accounting did not answer the {what}; try again shortly.")
        if result.error:
            raise InvalidRequestError(result.error)
        return {"columns": result.columns, "rows": result.rows, "truncated": result.truncated}

    async def catalog(self, query: CatalogQuery, replica: str = "") -> Catalog:
        """Every upstream MCP server's lists and health, from an mcp stage replica (`replica`, when named)."""
        if not self.config.mcp.servers:
            return Catalog()  # no server configured, so no mcp stage runs: nothing to list
        subject = self.subjects.mcp_catalog_at(replica) if replica else self.subjects.mcp_catalog
        unavailable = (
            f"The mcp stage replica {replica[:100]!r} did not answer."
            if replica
            else "No mcp stage replica answered; try again shortly."
        )
        return await self._ask(subject, query, self.nats_timeout_s, unavailable)

    async def usage(self, query: UsageQuery) -> dict[str, object]:
        """A usage summary from accounting (the admin API's `/usage`)."""
        return await self._table(self.subjects.accounting_usage, query, "usage query")

    async def deployments(self) -> Fleet:
        """Deployment health from every router replica (the admin API's `/deployments`)."""
        statuses = await gather(self.broker.connection, self.subjects)
        if not statuses:
            raise ServiceUnavailableError("No router replica answered; try again shortly.")
        return merge(statuses)

    async def requests(self, query: RequestsQuery) -> dict[str, object]:
        """The request explorer's list from accounting (the admin API's `/requests`)."""
        return await self._table(self.subjects.accounting_requests, query, "requests query")

    async def request_story(self, lookup: RequestLookup) -> RequestStory:
        """One request's story from accounting (the admin API's `/requests/{id}`)."""
        unavailable = "Accounting did not answer the request lookup; try again shortly."
        story = await self._ask(self.subjects.accounting_request, lookup, 30, unavailable)
        if story.error and not story.found:
            raise InvalidRequestError(story.error)
        return story

    # ---- the request path ------------------------------------------------------------------
    async def _serve(self, request: Request, api: apis.Api, turn: bytes | None = None, turn_of: str = "") -> Response:
        """One request through the pipeline; `turn`: the body of a model turn of the Responses `mcp` tool loop,
        served for the client's `request` (its own record, quotas, budget and guard, as any request), tagged
        `mcp_response` with the id the client was given (`turn_of`)."""
        record = RequestRecord(
            request_id=new_request_id(),
            api=api.name,
            received_at=time.time(),
            started=time.monotonic(),
        )
        start_request(request, record)
        try:
            ent = self.auth.authenticate(request.headers.get("authorization"), request.headers.get("x-api-key"))
            record.caller = ent.caller
            raw = await read_body(request, self.limit) if turn is None else turn
            record.request_bytes = len(raw)
            parsed = api.parse(raw, request.headers)
            record.model, record.stream = parsed.model, parsed.stream
            target = self.models.get(parsed.model)
            if target is None or not ent.allows(parsed.model, target.name):
                raise NotFoundError(
                    f"The model `{parsed.model}` does not exist or you do not have access to it.", param="model"
                )
            headers: Mapping[str, str] = request.headers
            own = {MCP_RESPONSE_TAG: turn_of} if turn_of else {}
            record.tags = {**ent.tags, **client_tags(headers), **own}
            if turn is None and api is apis.RESPONSES and has_mcp(parsed.original):
                return await self._mcp_loop(request, ent, record, parsed)
            if self.hooks.has("before_guard"):
                rewritten, plugin_tags = await hooks.before_guard(self.hooks, record, headers)
                if rewritten is not headers:  # rewritten headers may carry other tags
                    headers = rewritten
                    record.tags = {**ent.tags, **client_tags(headers), **own}
                record.tags.update(plugin_tags)
            native = parsed.native
            if native and not native.untranslatable and native.protocol not in self.native_protocols[target.name]:
                native = None  # no deployment takes the client's own body: only its translation travels
            route, chat = route_choice(headers, parsed.chat, ent.route_override)
            if chat is not None and not ent.caller.user and (chat.user or chat.safety_identifier):
                # a key without an owner: the request's own `user` attributes it in the records
                who = (chat.user or chat.safety_identifier or "")[:MAX_USER_CHARS]
                record.caller = msgspec.structs.replace(ent.caller, user=who)
            if chat is not None:
                policed = apply_params(chat, ent.params)
                if policed is not chat and native is not None and not native.untranslatable:
                    native = None  # the client's own body still says what the policy changed
                chat = policed
            deadline = client_deadline(headers, record.received_at, self.timeout)
            await self._run_admit(ent, record, headers.get(RUN_HEADER))
            admitted = await self._admit(ent, record, parsed, chat, target.name, deadline)
            if admitted.max_tokens is not None and chat is not None:
                chat = with_max_output(chat, admitted.max_tokens)
                if native is not None and not native.untranslatable:
                    native = None  # lowered to what the budget covers: only the translation says so
            req = ChatRequest(
                request_id=record.request_id,
                api=api.bus_api,
                model=parsed.model,
                caller=record.caller,
                chat=chat,
                embeddings=parsed.embeddings,
                native=native,
                stream=parsed.stream,
                include_usage=parsed.include_usage,
                received_at=record.received_at,
                deadline=deadline,
                trace_id=record.trace_id,
                tags=record.tags,
                route=route,
            )
            return await self._dispatch(req, record, api, parsed, headers)
        except GatewayError as exc:
            return self._fail(api, record, exc.info(), exc.headers)
        except Exception:
            # a bug must still give the client an OpenAI error and leave the request's record
            log.exception("request %s failed unexpectedly", record.request_id)
            return self._fail(api, record, GatewayError("The gateway hit an internal error.").info())

    async def _mcp_loop(
        self, request: Request, ent: Entitlement, record: RequestRecord, parsed: apis.Parsed
    ) -> Response:
        """A Responses request with `mcp` tools: checked here (a refusal is this request's record), then served as
        model turns (each a request with its own record) and tool calls (each with its MCP record)."""
        try:
            run_id = run_id_of(request.headers.get(RUN_HEADER))
        except BadRunId as exc:
            raise InvalidRequestError(str(exc)) from None
        tags = {**record.tags, MCP_RESPONSE_TAG: record.request_id}
        ctx = CallContext(ent=ent, run_id=run_id, traceparent=traceparent(record), tags=tags)
        plan = await self.responses_mcp.plan(parsed.original or {}, ctx)
        if record.span is not None:
            record.span.end()  # the turns and calls carry the records and spans from here

        async def model_turn(body: bytes) -> Response:
            return await self._serve(request, apis.RESPONSES, turn=body, turn_of=record.request_id)

        return await self.responses_mcp.serve(plan, model_turn, record.request_id)

    async def _run_admit(self, ent: Entitlement, record: RequestRecord, header: str | None) -> None:
        """Count a model call of the client's agent run (x-gatehouse-run-id), within the run's limits."""
        try:
            run_id = run_id_of(header)
        except BadRunId as exc:
            raise InvalidRequestError(str(exc)) from None
        if not run_id or self.runs is None:
            return
        try:
            await self.runs.model_call(ent, run_id)
        except RunLimitError as exc:
            raise RunLimitExceeded(str(exc)) from None
        record.tags = {**record.tags, "run_id": run_id}
        record.run = (ent, run_id)

    async def _admit(
        self,
        ent: Entitlement,
        record: RequestRecord,
        parsed: apis.Parsed,
        chat: ChatCompletionRequest | None,
        model: str,
        deadline: float,
    ) -> Admitted:
        """Count the request against the key's quotas and reserve its worst case on its budgets."""
        if self.governor is None or not ent.governed:
            return Admitted()
        pricing = self.pricing[model]
        choices = 1
        if chat is not None:
            input_tokens = estimate_prompt_tokens(chat, conservative=True)
            output_tokens = min(max_output(chat) or pricing.max_output, pricing.max_output)  # per choice
            choices = chat.n or 1
        else:
            input_tokens, output_tokens = (embeddings_tokens(parsed.embeddings) if parsed.embeddings else 1), 0
        if any(b.hard for s in ent.scopes for b in s.limits.budgets) and not pricing.known:
            raise InvalidRequestError(
                f"No price is known for a deployment of `{model}`, so its budget cannot be enforced; "
                "set `price` on its deployments in the config.",
                param="model",
            )
        span = TRACER.start("ingress.admit", record.span.context if record.span else None, request_id=record.request_id)
        try:
            admitted = await self.governor.admit(
                ent, record.request_id, Estimate(input_tokens, output_tokens, pricing, choices), deadline
            )
        finally:
            span.end()
        record.admitted = admitted
        reservation = admitted.reservation
        if reservation is not None:
            if not reservation.lease_id or reservation.concurrency:
                # a request drawn from a budget lease needs no live note of its own (unless it holds concurrency
                # slots): the lease's stands for it until its record is out (shared/leases.py)
                self.records.hold(reservation)
            if chat is not None and admitted.max_tokens is None and max_output(chat) is None:
                # the reservation covers this much output: the provider is told so, and cannot exceed it
                admitted.max_tokens = output_tokens
        return admitted

    def _finish(self, record: RequestRecord) -> None:
        """The request is over: give back what it held, and store its record (once)."""
        admitted = record.admitted
        if admitted is not None and self.governor is not None:
            usage = record.outcome.usage if record.outcome else None
            tokens = (usage.input_tokens + usage.output_tokens) if usage else 0
            self._spawn(self.governor.finish(admitted, tokens))
        if record.run is not None and self.runs is not None and record.outcome is not None and record.outcome.usage:
            usage = record.outcome.usage
            pricing = self.pricing.get(record.model)
            if pricing is not None:
                cost = pricing.worst_case(usage.input_tokens, usage.output_tokens)
                self._spawn(self.runs.spent(record.run[0], record.run[1], cost))
        finished = time.monotonic()
        self.records.submit(record, finished)
        finish_request(record, self.models, finished)

    @staticmethod
    def _headers(record: RequestRecord) -> dict[str, str]:
        """x-request-id, and the rate-limit headers OpenAI sends, where the key has quotas."""
        headers = {"x-request-id": record.request_id}
        if record.admitted is not None:
            headers.update(record.admitted.headers)
        return headers

    def _fail(
        self, api: apis.Api, record: RequestRecord, info: ErrorInfo, extra: dict[str, str] | None = None
    ) -> Response:
        record.fail(info)
        self._finish(record)
        headers = error_headers(info, record.request_id)
        if record.admitted is not None:
            headers.update(record.admitted.headers)
        headers.update(extra or {})
        return api.error(info, headers)

    async def _next(self, queue: asyncio.Queue[Reply | NoResponders], record: RequestRecord, stage: str) -> Reply:
        """The next reply that is not the guard's verdict (which is noted on the record)."""
        while True:
            item = await next_reply(queue, self.first_timeout, stage, self.silence)
            if isinstance(item, Verdict):
                record.guard = item.summary
                continue
            return item

    async def _dispatch(
        self,
        req: ChatRequest,
        record: RequestRecord,
        api: apis.Api,
        parsed: apis.Parsed,
        client_headers: Mapping[str, str],
    ) -> Response:
        inbox, queue = self.inbox.open(req.request_id, record.note_verdict)
        headers = {REQUEST_ID: req.request_id, TRACEPARENT: traceparent(record)}
        handed_over = False
        try:
            try:
                await self.broker.connection.publish(
                    self.subjects.guard_chat.name, self.subjects.guard_chat.encode(req), reply=inbox, headers=headers
                )
            except (OutboundBufferLimitError, ConnectionClosedError, ConnectionDrainingError) as exc:
                # NATS is away and what the client buffers for the reconnect is full (or the connection is
                # closing): the request cannot go out now, which the client may retry; not an internal error
                raise ServiceUnavailableError("The gateway's message bus is unavailable; try again shortly.") from exc
            try:
                first = await self._next(queue, record, "guard")
                parts: list[bytes] = []
                while isinstance(first, BodyPart):
                    parts.append(first.data)
                    first = await self._next(queue, record, "router")
            except TimeoutError:
                raise GatewayTimeoutError(
                    f"No answer from the gateway pipeline within {self.first_timeout:g}s."
                ) from None
            if isinstance(first, Result):
                record.outcome = first.outcome
                record.guard = first.guard or record.guard
                record.first_byte_ms = (time.monotonic() - record.started) * 1000
                if first.error is not None:
                    return self._fail(api, record, first.error)
                body = b"".join(parts) + first.body if parts else first.body
                if not first.native:
                    body = api.completion(body, parsed)
                record.response_bytes = len(body)
                added = {}
                if self.hooks.has("after_response"):
                    added = await hooks.after_response(self.hooks, record, client_headers)
                self._finish(record)
                headers = added | self._headers(record) | _routed(first.outcome.deployment, first.outcome.model)
                return Response(body, media_type="application/json", headers=headers)
            handed_over = True
            routed = (
                _routed(first.deployment, first.model) if isinstance(first, Chunk | ChunkBatch | NativeEvents) else {}
            )
            return StreamingResponse(
                self._relay(first, queue, record, api.writer(parsed), client_headers),
                media_type="text/event-stream",
                headers={**_SSE_HEADERS, **self._headers(record), **routed},
            )
        except asyncio.CancelledError:
            # the client left while the answer was awaited (a turn of the Responses mcp loop, run inside a
            # stream the server cancels on disconnect): stop the upstream call, give back what the request
            # holds and record it, as a stream whose client left
            handed_over = True
            self._spawn(self._abandon(record, queue, CLIENT_CLOSED))
            raise
        finally:
            if not handed_over:
                self.inbox.close(req.request_id)

    async def _relay(
        self,
        first: Reply,
        queue: asyncio.Queue[Reply | NoResponders],
        record: RequestRecord,
        writer: apis.StreamWriter,
        client_headers: Mapping[str, str],
    ) -> AsyncIterator[bytes]:
        """The stream in the client's API; ends properly, or with an error event if it broke."""
        record.first_byte_ms = (time.monotonic() - record.started) * 1000
        sent = 0
        relayed = 0  # events relayed in the client's own protocol (a pass-through stream)
        chunks = 0  # an upper bound of the output tokens so far: a chunk carries at least one
        covered = record.admitted.covered_output if record.admitted is not None else None
        finished = False
        cut: ErrorInfo | None = None
        try:
            item: Reply = first
            while True:
                if isinstance(item, Chunk | ChunkBatch | NativeEvents):
                    out, count = _stream_bytes(item, writer)
                    chunks += count
                    relayed += count if isinstance(item, NativeEvents) else 0
                elif isinstance(item, Result):
                    record.outcome = item.outcome
                    record.guard = item.guard or record.guard
                    if item.error is not None:
                        record.fail(item.error)
                        # a native Result with an error: the provider's own error event was relayed already
                        out = b"" if item.native else _failure(writer, item.error, relayed)
                    else:
                        out = b"" if item.native else writer.end()
                    sent += len(out)
                    finished = True
                    yield out
                    return
                else:  # a late verdict or a body part has no place in a stream
                    out = b""
                if out:
                    sent += len(out)
                    yield out
                if covered is not None and chunks > covered + STREAM_SLACK_CHUNKS:
                    # past what the budget reservation covers (a provider ignoring max_tokens): end it
                    cut = BudgetExceededError(
                        "The stream was ended: its cost would cross the key's hard budget."
                    ).info()
                    yield writer.fail_native(cut, relayed) if relayed else writer.fail(cut)
                    return
                try:
                    item = await self._next(queue, record, "router")
                except (TimeoutError, GatewayError) as exc:
                    info = (
                        exc.info()
                        if isinstance(exc, GatewayError)
                        else GatewayTimeoutError(f"The stream stalled for more than {self.timeout:g}s.").info()
                    )
                    record.fail(info)
                    finished = True
                    yield writer.fail_native(info, relayed) if relayed else writer.fail(info, finished=False)
                    return
        finally:
            record.response_bytes = sent
            if finished:
                self.inbox.close(record.request_id)
                await self._stream_ended(record, client_headers)
            else:
                # the client went away mid-stream (or the budget cut it): stop the upstream call, and
                # record what it cost so far
                self._spawn(self._abandon(record, queue, cut or CLIENT_CLOSED))

    async def _stream_ended(self, record: RequestRecord, client_headers: Mapping[str, str]) -> None:
        if self.hooks.has("after_response") and record.error is None:
            # the stream is out: its tags still reach the record; a failure can only be logged
            with contextlib.suppress(GatewayError):
                await hooks.after_response(self.hooks, record, client_headers)
        self._finish(record)

    async def _abandon(
        self, record: RequestRecord, queue: asyncio.Queue[Reply | NoResponders], why: ErrorInfo = CLIENT_CLOSED
    ) -> None:
        """Cancel a request whose client left (or whose stream the gateway cut), wait briefly for the
        router's last word (the usage seen so far), then record it: 499, or `why`."""
        try:
            cancel = self.subjects.router_cancel
            await self.broker.connection.publish(cancel.name, cancel.encode(Cancel(request_id=record.request_id)))
            async with asyncio.timeout(CANCEL_GRACE_S):
                while True:
                    item = await queue.get()
                    if isinstance(item, Result):
                        record.outcome = item.outcome
                        record.guard = item.guard or record.guard
                        break
        except (TimeoutError, Exception):
            log.debug("request %s: no final word from the router after the client left", record.request_id)
        finally:
            record.fail(why)
            self.inbox.close(record.request_id)
            self._finish(record)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _stream_bytes(item: Chunk | ChunkBatch | NativeEvents, writer: apis.StreamWriter) -> tuple[bytes, int]:
    """What a stream reply writes to the client, and how many chunks (or native events) it carried."""
    if isinstance(item, Chunk):
        return writer.feed(item.data), 1
    if isinstance(item, ChunkBatch):
        return b"".join(writer.feed(data) for data in item.items), len(item.items)
    return b"".join(item.items), len(item.items)


def _failure(writer: apis.StreamWriter, error: ErrorInfo, relayed: int) -> bytes:
    """The end of a stream that broke: in the client's own protocol when it was relayed unchanged."""
    return writer.fail_native(error, relayed) if relayed else writer.fail(error)


def _routed(deployment: str, model: str) -> dict[str, str]:
    """Which deployment (and model group: the requested one, or a fallback) answered."""
    out = {"x-gatehouse-deployment": deployment} if deployment else {}
    if model:
        out["x-gatehouse-model"] = model
    return out


def create_app(
    config: GatehouseConfig,
    nats: NatsLink,
    subjects: Subjects,
    events: EventPublisher,
    *,
    nats_timeout_s: float = 5.0,
    admin_key: str | None = None,
    telemetry: Telemetry | None = None,
    metrics_endpoint: MetricsEndpoint | None = None,
) -> FastPaths:
    broker = nats_broker(nats, max_body_bytes=config.server.max_body_bytes)
    gw = Gateway(config, broker, subjects, events, nats_timeout_s, telemetry)
    admin = AdminApi(
        gw.directory,
        lambda: gw.keystore,
        admin_key,
        gw.records.audit,
        gw.usage,
        gw.deployments,
        explore=gw.requests,
        story=gw.request_story,
    )
    # the OpenAI Batch API (services/ingress/batches.py): files here, jobs in the batch service
    batches = BatchEndpoints(config, subjects, gw.auth, lambda: broker.connection)
    message_batches = AnthropicBatches(batches)  # Anthropic's Message Batches API

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await gw.start()
        retention_s = config.batch.retention_days * 86400
        batches.start(FileStore(broker.config.connection_state.stream, subjects.files_bucket, retention_s))
        try:
            yield
        finally:
            await gw.stop()

    async def healthz(_: Request) -> Response:
        if reason := nats_problem(broker):
            return JSONResponse({"status": "unhealthy", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        reason = await gw.ready()
        if not reason:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)

    def guarded(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def wrapper(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception:
                log.exception("unhandled error on %s", request.url.path)
                return error_response(GatewayError("The gateway hit an internal error.").info())

        return wrapper

    chat = guarded(gw.chat_completions)
    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/chat/completions", chat, methods=["POST"]),
        Route("/v1/embeddings", guarded(gw.embeddings), methods=["POST"]),
        Route("/v1/messages", guarded(gw.messages), methods=["POST"]),
        Route("/v1/responses", guarded(gw.responses), methods=["POST"]),
        Route("/v1/models", guarded(gw.list_models), methods=["GET"]),
        Route("/v1/models/{model:path}", guarded(gw.retrieve_model), methods=["GET"]),
        Route("/mcp", guarded(gw.mcp.handle), methods=["GET", "POST", "DELETE"]),
        *McpAdmin(admin.admin_only, lambda: gw.approvals, gw.catalog, gw.records.audit).routes(),
        *admin.routes(),
        *batches.routes(),
        *message_batches.routes(),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        *([Route("/metrics", metrics_endpoint.serve, methods=["GET"])] if metrics_endpoint is not None else []),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 404:
            info = UnknownEndpointError(f"Invalid URL ({request.method[:16]} {request.url.path[:200]}).").info()
        elif status == 405:
            info = MethodNotAllowedError(f"Method {request.method[:16]} is not allowed for this endpoint.").info()
        else:
            info = GatewayError("The gateway hit an internal error.").info()
        response = error_response(info)
        if isinstance(exc, HTTPException) and exc.headers and "Allow" in exc.headers:
            response.headers["allow"] = exc.headers["Allow"]
        return response

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error, 500: http_error})
    app.state.gateway = gw
    return FastPaths(app, {("POST", "/v1/chat/completions"): chat, ("POST", "/chat/completions"): chat})
