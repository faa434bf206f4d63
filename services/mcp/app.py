"""mcp: `<p>.mcp.call` (ToolCall, from the guard) → the upstream MCP server's session → ToolOutcome to the reply
inbox; `<p>.mcp.catalog` (CatalogQuery) → every server's lists and health, and `<p>.mcp.catalog.at.<replica>` → the
pages of a list this replica's summary named; a server's list-changed notification → `<p>.mcp.changed` (every
ingress replica).

Holds one session per configured upstream server (Streamable HTTP, legacy SSE, or a stdio child it launches
and relaunches with backoff), so the MCP stage scales on its own: each replica holds its own sessions, and
calls are shared among replicas by the queue group.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable

import msgspec
from faststream import FastStream
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.mcp.settings import McpSettings
from services.mcp.telemetry import finish_call, start_call
from services.mcp.upstream import KINDS, Upstream
from shared import mcp_errors, metrics
from shared.bus import TRACEPARENT, QueueWorker, answer_pings
from shared.config import load_config
from shared.mcp_config import McpConfig, namespaced
from shared.natsconn import nats_broker
from shared.schemas.mcp import Catalog, CatalogChanged, CatalogKind, CatalogPage, ToolOutcome
from shared.subjects import Subjects
from shared.tasks import cancel_all_and_wait
from shared.telemetry import Telemetry, TelemetryConfig

log = logging.getLogger("gatehouse.mcp")

DEFAULT_MAX_PAYLOAD = 1024 * 1024  # nats-server's default
ANSWER_MARGIN = 4096  # the reply's headers and subject
PAGE_OVERHEAD = 512  # a page answer's fields besides its items (msgpack)
CATALOG_CONCURRENCY = 16  # catalog queries a replica answers at once, on each of its two subjects


class McpStage:
    """The upstream sessions of one replica, and its answers to calls and catalog queries."""

    def __init__(self, config: McpConfig, subjects: Subjects, replica: str, max_result_bytes: int) -> None:
        self.config = config
        # a result travels back over the bus (and then to the client): no larger than the body limit it is sized for
        self.max_result_bytes = max_result_bytes
        self.subjects = subjects
        self.replica = replica
        self.publish: Callable[[str, bytes], Awaitable[None]] | None = None
        self.upstreams = {
            name: Upstream(name, cfg, os.environ, self._changed, max_result_bytes)
            for name, cfg in config.servers.items()
        }
        self._tasks: list[asyncio.Task[None]] = []
        self.max_payload = DEFAULT_MAX_PAYLOAD  # the bus's (set when connected)
        # a catalog answer's bound once encoded: the bus's max_payload less a margin (set when connected)
        self.message_bytes = DEFAULT_MAX_PAYLOAD - ANSWER_MARGIN
        self._summary: tuple[object, bytes] | None = None  # the last summary encoded, and the state it shows

    async def _changed(self, server: str, kinds: list[CatalogKind]) -> None:
        metrics.mcp_upstream_up(server, self.upstreams[server].healthy)
        if self.publish is not None:
            changed = self.subjects.mcp_changed
            await self.publish(changed.name, changed.encode(CatalogChanged(server=server, kinds=kinds)))

    def start(self) -> None:
        for upstream in self.upstreams.values():
            metrics.mcp_upstream_up(upstream.name, False)
            self._tasks.append(asyncio.create_task(upstream.run(), name=f"mcp-{upstream.name}"))

    async def stop(self) -> None:
        # an stdio server's shutdown (the SDK waits about 2 s for the child, then kills it) runs uninterrupted
        await cancel_all_and_wait(self._tasks, timeout=10, recancel_s=5)

    async def call(self, data: bytes, traceparent: str | None = None) -> ToolOutcome:
        subject = self.subjects.mcp_call
        try:
            call = subject.decode(data)
        except msgspec.MsgspecError:
            return ToolOutcome(call_id="", error=mcp_errors.invalid("Malformed tool call."), mcp_replica=self.replica)
        upstream = self.upstreams.get(call.server)
        if upstream is None:
            unknown = mcp_errors.unknown_name(call.method, namespaced(call.server, call.name))
            return ToolOutcome(call_id=call.call_id, error=unknown, mcp_replica=self.replica)
        span = start_call(call, traceparent)
        started = time.perf_counter()
        result, error = await upstream.call(call.method, call.name, call.arguments, call.timeout_s)
        seconds = time.perf_counter() - started
        if len(result) > self.max_result_bytes:
            error = mcp_errors.too_large(f"The result of '{call.name}'", len(result), self.max_result_bytes)
            result = b""
        finish_call(span, call, error, seconds)
        return ToolOutcome(
            call_id=call.call_id, result=result, error=error, upstream_ms=seconds * 1000, mcp_replica=self.replica
        )

    def catalog_workers(self) -> list[QueueWorker]:
        """The catalog's subscriptions: `<p>.mcp.catalog`, which any replica answers (summaries), and this replica's
        own, where ingress asks for the pages of a list that this replica's summary named (another replica, with
        its own session, may hold another version of it: a stdio child ordering its list its own way, a list
        scoped per session, a refresh not yet done)."""
        shared, own = self.subjects.mcp_catalog, self.subjects.mcp_catalog_at(self.replica)
        return [
            QueueWorker(shared.name, shared.queue, self.on_catalog, CATALOG_CONCURRENCY),
            QueueWorker(own.name, own.queue, self.on_catalog, CATALOG_CONCURRENCY),
        ]

    async def on_catalog(self, msg: Msg) -> None:
        if not msg.reply:
            return
        encode = self.subjects.mcp_catalog.encode_reply
        try:
            answer = self.answer(msg.data)
        except Exception:  # a bug still answers: ingress must not wait out its timeout
            log.exception("catalog query failed in the mcp stage")
            answer = encode(Catalog(replica=self.replica, error="internal error"))
        if len(answer) > self.max_payload:  # never by construction; never silently either
            log.error("a catalog answer of %d bytes is larger than the bus carries", len(answer))
            answer = encode(Catalog(replica=self.replica, error="the catalog answer is larger than the bus carries"))
        await msg.respond(answer)

    def answer(self, data: bytes) -> bytes:
        """The encoded answer to a catalog query, never larger than `message_bytes`. A summary is encoded once per
        state of the servers it covers: every ingress replica asks for one every few seconds (and after every
        change notice), mostly of a catalog that did not change."""
        encode = self.subjects.mcp_catalog.encode_reply
        try:
            query = self.subjects.mcp_catalog.decode(data)
        except msgspec.MsgspecError:
            return encode(Catalog(replica=self.replica, error="Malformed catalog query."))
        if query.kind is not None:
            return encode(self._page(query.servers[0] if len(query.servers) == 1 else "", query.kind, query.offset))
        state = (tuple(query.servers), self.message_bytes, tuple(u.state for u in self.upstreams.values()))
        if self._summary is None or self._summary[0] != state:
            self._summary = (state, encode(self.summary(query.servers)))
        return self._summary[1]

    def summary(self, servers: list[str]) -> Catalog:
        """Health, counts and lists of `servers` (all when empty) in one answer no larger than `message_bytes`: the
        smaller lists whole, the others named as paged (read with page queries); a page holds as many items as fit
        (at least one: an item is never larger than a result, which fits by construction)."""
        wanted = set(servers)
        upstreams = [u for u in self.upstreams.values() if not wanted or u.name in wanted]
        # the answer with every list paged, then the smaller lists inline while they fit: a list inline adds at
        # most its bytes and a msgpack bin header (5) and drops its digest from `paged`, so the sum is an upper
        # bound and the answer is encoded once, not once per list left out
        room = self.message_bytes - len(
            self.subjects.mcp_catalog.encode_reply(
                Catalog(servers=[u.catalog(frozenset()) for u in upstreams], replica=self.replica)
            )
        )
        inline: set[tuple[str, CatalogKind]] = set()
        for size, name, kind in sorted((u.listed(k).size + 5, u.name, k) for u in upstreams for k in KINDS):
            if size > room:
                break
            room -= size
            inline.add((name, kind))
        return Catalog(
            servers=[u.catalog(frozenset(k for k in KINDS if (u.name, k) in inline)) for u in upstreams],
            replica=self.replica,
        )

    def _page(self, server: str, kind: CatalogKind, offset: int) -> Catalog:
        upstream = self.upstreams.get(server)
        if upstream is None:
            return Catalog(replica=self.replica, error=f"No MCP server '{server[:100]}' in this catalog.")
        listed = upstream.listed(kind)
        total = len(listed.items)
        start = min(max(offset, 0), total)
        room = self.message_bytes - PAGE_OVERHEAD - len(server) - len(listed.digest)
        end, size = start, 0
        while end < total and (end == start or size + len(listed.items[end]) + 1 <= room):
            size += len(listed.items[end]) + 1
            end += 1
        page = CatalogPage(
            server=server,
            kind=kind,
            offset=start,
            next=end,
            total=total,
            digest=listed.digest,
            items=b",".join(listed.items[start:end]),
        )
        return Catalog(replica=self.replica, page=page)


def create_app(settings: McpSettings) -> FastStream:
    config = load_config(settings.config)
    subjects = Subjects(settings.subject_prefix)
    broker = nats_broker(settings.nats_link("mcp"))
    stage = McpStage(config.mcp, subjects, settings.replica, config.server.max_body_bytes)
    telemetry = Telemetry(TelemetryConfig.of(settings, "mcp", settings.otlp_headers.get_secret_value()), subjects)
    telemetry.serve_metrics()

    async def on_call(msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            outcome = await stage.call(msg.data, msg.headers.get(TRACEPARENT) if msg.headers else None)
        except Exception:  # a bug still answers: the guard (and the client) must not wait out the timeout
            log.exception("tool call failed in the mcp stage")
            outcome = ToolOutcome(call_id="", error=mcp_errors.internal(), mcp_replica=settings.replica)
        await msg.respond(subjects.mcp_call.encode_reply(outcome))

    call = subjects.mcp_call
    worker = QueueWorker(call.name, call.queue, on_call, settings.mcp_max_concurrency)
    listers = stage.catalog_workers()
    app = FastStream(broker, logger=log)
    subs: list[Subscription] = []

    @app.after_startup
    async def _start() -> None:
        nc = broker.connection
        stage.publish = nc.publish
        stage.max_payload = nc.max_payload
        stage.message_bytes = nc.max_payload - ANSWER_MARGIN
        await telemetry.start(nc)
        metrics.in_flight(lambda: worker.in_flight)
        stage.start()
        await worker.start(nc)
        for lister in listers:
            await lister.start(nc)
        subs.append(await answer_pings(nc, subjects.ping("mcp"), call.queue))

    @app.on_shutdown
    async def _drain() -> None:
        await worker.stop()
        for lister in listers:
            await lister.stop()
        for sub in subs:
            await sub.unsubscribe()
        await stage.stop()
        await telemetry.stop()

    return app
