"""`/mcp`: the Streamable HTTP transport of MCP (handshake-era revisions 2025-03-26, 2025-06-18, 2025-11-25).

- POST: one JSON-RPC message (or, in a 2025-03-26 session, a batch); requests are answered with JSON, or with
  an SSE stream when the client accepts only that; notifications and responses get 202.
- `initialize` opens a session (`Mcp-Session-Id`, bound to the key); every later message names it (400 when
  missing, 404 when unknown or another key's: the client starts a new session).
- GET: the session's server-to-client stream (SSE): list-changed notifications as upstream servers send them.
- DELETE: ends the session.
The lists (tools, resources, resource templates, prompts) are paged: `mcp.list_page_size` items a page, an opaque
`nextCursor` naming the next one (services/ingress/mcp/pages.py); a cursor the list did not give is -32602, and
past 30 of those a minute a key's requests with a cursor are refused as rate limited (-32012) until the next.
Every request authenticates with a gatehouse key (`Authorization: Bearer`); 401 otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from services.ingress.body import read_body
from services.ingress.mcp.calls import CallContext, CallFailed, ToolCalls
from services.ingress.mcp.catalog import CatalogCache, CursorsLimited
from services.ingress.mcp.pages import BadCursor
from services.ingress.mcp.runs import RUN_HEADER, BadRunId, run_id_of
from services.ingress.mcp.sessions import Session, Sessions
from services.ingress.tags import client_tags
from shared import mcp_errors
from shared.auth import Authenticator
from shared.directory import Entitlement
from shared.errors import GatewayError, InvalidRequestError, PayloadTooLargeError
from shared.mcp_config import DEFAULT_PAGE_SIZE
from shared.schemas.mcp import CatalogChanged, McpError

log = logging.getLogger("gatehouse.ingress.mcp")

SESSION_HEADER = "mcp-session-id"
VERSION_HEADER = "mcp-protocol-version"
VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")
BATCH_VERSIONS = frozenset({"2025-03-26"})  # JSON-RPC batching was removed in 2025-06-18
# the version a request without MCP-Protocol-Version is taken to speak (the spec's rule for HTTP)
ASSUMED_VERSION = "2025-03-26"
KEEPALIVE_S = 15.0
MAX_BATCH = 64
MAX_STREAMS = 4  # GET streams one session may hold open
SERVER_INFO = {"name": "gatehouse", "title": "gatehouse MCP gateway", "version": "0.1.0"}
CAPABILITIES = {
    "tools": {"listChanged": True},
    "resources": {"listChanged": True},
    "prompts": {"listChanged": True},
    "logging": {},
}
_JSON = msgspec.json.Encoder()
_ANY = msgspec.json.Decoder()
_LISTS = {
    "tools/list": ("tools", "tools"),
    "resources/list": ("resources", "resources"),
    "resources/templates/list": ("resource_templates", "resourceTemplates"),
    "prompts/list": ("prompts", "prompts"),
}
_CALLS = ("tools/call", "resources/read", "prompts/get")
_NOTICES = {
    "tools": "notifications/tools/list_changed",
    "resources": "notifications/resources/list_changed",
    "resource_templates": "notifications/resources/list_changed",
    "prompts": "notifications/prompts/list_changed",
}


def _error(id_: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "error": {"code": code, "message": message}}


def _reply(id_: Any, result: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "result": result}


def _http_error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(_error(None, code, message), status_code=status, headers=headers)


def _is_request(msg: Any) -> bool:
    return isinstance(msg, dict) and isinstance(msg.get("method"), str) and "id" in msg


def _valid(msg: Any) -> bool:
    """A JSON-RPC 2.0 request, notification or response."""
    if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
        return False
    if "method" in msg:
        return isinstance(msg["method"], str) and isinstance(msg.get("params", {}), dict)
    return "id" in msg and ("result" in msg or "error" in msg)


def notice(changed: CatalogChanged) -> list[bytes]:
    """The SSE events telling a session that a server's lists changed (one per list kind)."""
    methods = sorted({_NOTICES[k] for k in changed.kinds})
    return [b"event: message\ndata: " + _JSON.encode({"jsonrpc": "2.0", "method": m}) + b"\n\n" for m in methods]


class McpEndpoint:
    def __init__(
        self,
        auth: Authenticator,
        calls: ToolCalls,
        catalog: CatalogCache,
        sessions: Sessions,
        max_body_bytes: int,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        self.auth = auth
        self.page_size = page_size
        self.calls = calls
        self.catalog = catalog
        self.sessions = sessions
        self.limit = max_body_bytes

    def changed(self, changed: CatalogChanged) -> None:
        """An upstream server's lists changed: list again next time, and tell every open stream."""
        self.catalog.invalidate()
        for event in notice(changed):
            self.sessions.broadcast(event)

    async def handle(self, request: Request) -> Response:
        try:
            ent = self.auth.authenticate(request.headers.get("authorization"), request.headers.get("x-api-key"))
        except GatewayError as exc:
            return _http_error(401, mcp_errors.UNAUTHORIZED, exc.info().message, {"www-authenticate": "Bearer"})
        version = request.headers.get(VERSION_HEADER)
        if version is not None and version not in VERSIONS:
            return _http_error(
                400, mcp_errors.INVALID_REQUEST, f"Unsupported MCP-Protocol-Version; supported: {', '.join(VERSIONS)}."
            )
        if request.method == "POST":
            return await self._post(request, ent)
        session = self._session(request, ent)
        if isinstance(session, Response):
            return session
        if request.method == "DELETE":
            self.sessions.close(session.id)
            return Response(status_code=200)
        if "text/event-stream" not in request.headers.get("accept", ""):
            return _http_error(406, mcp_errors.INVALID_REQUEST, "The GET stream needs `Accept: text/event-stream`.")
        if len(session.streams) >= MAX_STREAMS:
            return _http_error(409, mcp_errors.INVALID_REQUEST, f"A session has at most {MAX_STREAMS} GET streams.")
        return StreamingResponse(
            self._stream(session), media_type="text/event-stream", headers={"cache-control": "no-cache"}
        )

    def _session(self, request: Request, ent: Entitlement) -> Session | Response:
        session_id = request.headers.get(SESSION_HEADER)
        if not session_id:
            return _http_error(400, mcp_errors.INVALID_REQUEST, "The Mcp-Session-Id header is required.")
        session = self.sessions.get(session_id, ent.key.id)
        if session is None:
            return _http_error(404, mcp_errors.INVALID_REQUEST, "Unknown or expired session; initialize a new one.")
        return session

    async def _stream(self, session: Session) -> AsyncIterator[bytes]:
        queue = self.sessions.stream(session)
        try:
            yield b": stream open\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if not event:
                    return  # the session ended
                yield event
        finally:
            self.sessions.unstream(session, queue)

    async def _post(self, request: Request, ent: Entitlement) -> Response:
        try:
            body = await read_body(request, self.limit)
        except PayloadTooLargeError as exc:
            return _http_error(413, mcp_errors.INVALID_REQUEST, exc.info().message)
        except InvalidRequestError as exc:
            return _http_error(400, mcp_errors.INVALID_REQUEST, exc.info().message)
        try:
            message = _ANY.decode(body)
        except (msgspec.DecodeError, RecursionError):  # msgspec raises RecursionError on absurd nesting
            return _http_error(400, mcp_errors.PARSE_ERROR, "Parse error: the body is not JSON.")
        if isinstance(message, dict) and message.get("method") == "initialize" and _valid(message):
            return self._initialize(message, ent)
        if (
            isinstance(message, dict)
            and message.get("method") == "server/discover"
            and SESSION_HEADER not in request.headers
        ):
            # the newest revision's probe: this endpoint speaks the handshake era, so the client falls back
            return JSONResponse(
                _error(message.get("id"), mcp_errors.METHOD_NOT_FOUND, "Method not found: server/discover")
            )
        session = self._session(request, ent)
        if isinstance(session, Response):
            return session
        batch = isinstance(message, list)
        if batch and session.protocol_version not in BATCH_VERSIONS:
            return _http_error(
                400, mcp_errors.INVALID_REQUEST, "JSON-RPC batches are not part of this protocol version."
            )
        messages: list[Any] = message if batch else [message]
        if not messages or len(messages) > MAX_BATCH:
            return _http_error(400, mcp_errors.INVALID_REQUEST, f"A batch holds 1 to {MAX_BATCH} messages.")
        ctx = self._context(request, ent, session)
        if isinstance(ctx, Response):
            return ctx
        replies = await asyncio.gather(*(self._answer(m, ctx) for m in messages))
        answers = [r for r in replies if r is not None]
        if not answers:
            return Response(status_code=202)
        payload = _JSON.encode(answers if batch else answers[0])
        accept = request.headers.get("accept", "")
        if "text/event-stream" in accept and "application/json" not in accept:
            return Response(b"event: message\ndata: " + payload + b"\n\n", media_type="text/event-stream")
        return Response(payload, media_type="application/json")

    def _initialize(self, message: dict[str, Any], ent: Entitlement) -> Response:
        if "id" not in message:
            return _http_error(400, mcp_errors.INVALID_REQUEST, "initialize must be a request (with an id).")
        asked = message.get("params", {}).get("protocolVersion")
        version = asked if asked in VERSIONS else VERSIONS[0]
        session = self.sessions.open(ent.key.id, version)
        result = {"protocolVersion": version, "capabilities": CAPABILITIES, "serverInfo": SERVER_INFO}
        return JSONResponse(_reply(message["id"], result), headers={SESSION_HEADER: session.id})

    def _context(self, request: Request, ent: Entitlement, session: Session) -> CallContext | Response:
        try:
            run_id = run_id_of(request.headers.get(RUN_HEADER))
        except BadRunId as exc:
            return _http_error(400, mcp_errors.INVALID_REQUEST, str(exc))
        return CallContext(
            ent=ent,
            session_id=session.id,
            run_id=run_id,
            traceparent=request.headers.get("traceparent", "")[:128],
            tags=client_tags(request.headers),
        )

    async def _answer(self, message: Any, ctx: CallContext) -> dict[str, Any] | None:
        """The response to one message (None for notifications and responses, which get none)."""
        if not _valid(message):
            return _error(
                message.get("id") if isinstance(message, dict) else None, mcp_errors.INVALID_REQUEST, "Invalid Request"
            )
        if not _is_request(message):
            return None
        id_, method, params = message["id"], message["method"], message.get("params") or {}
        try:
            return _reply(id_, await self._method(method, params, ctx))
        except CallFailed as exc:
            return _error(id_, exc.error.code, exc.error.message)
        except GatewayError as exc:
            return _error(id_, mcp_errors.GATEWAY_UNAVAILABLE, exc.info().message)
        except Exception:
            log.exception("mcp method %s failed unexpectedly", method[:64])
            return _error(id_, mcp_errors.INTERNAL_ERROR, "The gateway hit an internal error.")

    async def _list(self, method: str, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """One page of a list the key may see; `nextCursor` names the next page while one is left."""
        kind, field = _LISTS[method]
        cursor = params.get("cursor")
        if cursor is not None and not isinstance(cursor, str):
            raise CallFailed(mcp_errors.invalid("`params.cursor` must be a string."))
        try:
            items, next_cursor = await self.catalog.page(kind, ctx.ent, cursor, self.page_size)
        except BadCursor as exc:
            raise CallFailed(mcp_errors.invalid(str(exc))) from None
        except CursorsLimited as exc:
            raise CallFailed(McpError(code=mcp_errors.RATE_LIMITED, message=str(exc), status="rate_limited")) from None
        except Exception as exc:
            log.warning("mcp catalog unavailable: %s: %s", type(exc).__name__, exc)
            raise CallFailed(mcp_errors.gateway_unavailable("MCP stage")) from None
        return {field: items, "nextCursor": next_cursor} if next_cursor is not None else {field: items}

    async def _method(self, method: str, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        if method in {"ping", "logging/setLevel"}:
            return {}
        if method in _LISTS:
            return await self._list(method, params, ctx)
        if method in _CALLS:
            return await self.calls.call(ctx, method, params)  # type: ignore[arg-type]  # one of _CALLS
        raise CallFailed(mcp_errors.not_found(f"Method not found: {method[:100]}"))
