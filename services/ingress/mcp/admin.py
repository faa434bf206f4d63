"""The admin API's MCP part (admin key only): upstream servers with their health and list sizes, and the tool
calls waiting for approval, to approve or deny.

GET  /admin/v1/mcp/servers
GET  /admin/v1/mcp/approvals              pending approvals, oldest first
GET  /admin/v1/mcp/approvals/{id}
POST /admin/v1/mcp/approvals/{id}/approve
POST /admin/v1/mcp/approvals/{id}/deny    optional body {"reason": "…"}

Every decision is an audit event (`mcp_approval.approve|deny`, the `audit_log` table) with the call as it was put
up: its arguments as the guard left them (redacted where the policy redacts), never the raw ones.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.ingress.mcp.approvals import ApprovalConflict, Approvals
from shared.errors import ConflictError, InvalidRequestError, NotFoundError, ServiceUnavailableError
from shared.schemas.events import AuditEvent
from shared.schemas.mcp import Approval, Catalog, CatalogQuery

Handler = Callable[[Request], Awaitable[Response]]
Wrap = Callable[[Handler], Handler]

MAX_REASON_BODY = 4096


_CALL_ID = re.compile(r"[0-9a-f]{32}")


def _call_id(request: Request) -> str:
    """The approval id of the path (a call id: 32 hex digits); anything else names no approval."""
    call_id = str(request.path_params["id"])
    if not _CALL_ID.fullmatch(call_id):
        raise NotFoundError(f"No approval '{call_id[:64]}'.")
    return call_id


class _Decision(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: str = ""


def _approval(a: Approval) -> dict[str, object]:
    return msgspec.to_builtins(a)  # type: ignore[no-any-return]  # a Struct of plain fields


def server_rows(catalog: Catalog) -> list[dict[str, object]]:
    """One row per server: health and how many tools, resources and prompts it offers."""
    return [
        {
            "name": s.name,
            "transport": s.transport,
            "healthy": s.healthy,
            "error": s.error,
            "restarts": s.restarts,
            "connected_at": s.connected_at,
            # a summary names how many items each list has (a large list is left out of it, to be paged)
            "tools": s.counts.get("tools", 0),
            "resources": s.counts.get("resources", 0),
            "resource_templates": s.counts.get("resource_templates", 0),
            "prompts": s.counts.get("prompts", 0),
        }
        for s in catalog.servers
    ]


class McpAdmin:
    def __init__(
        self,
        admin_only: Wrap,
        approvals: Callable[[], Approvals | None],
        catalog: Callable[[CatalogQuery], Awaitable[Catalog]],
        audit: Callable[[AuditEvent], None] | None = None,
    ) -> None:
        self._wrap = admin_only
        self._approvals = approvals
        self._catalog = catalog
        self._audit = audit

    def routes(self) -> list[Route]:
        r = "/admin/v1/mcp"
        return [
            Route(f"{r}/servers", self._wrap(self.servers), methods=["GET"]),
            Route(f"{r}/approvals", self._wrap(self.pending), methods=["GET"]),
            Route(f"{r}/approvals/{{id}}", self._wrap(self.show), methods=["GET"]),
            Route(f"{r}/approvals/{{id}}/approve", self._wrap(self.approve), methods=["POST"]),
            Route(f"{r}/approvals/{{id}}/deny", self._wrap(self.deny), methods=["POST"]),
        ]

    def _store(self) -> Approvals:
        store = self._approvals()
        if store is None:
            raise ServiceUnavailableError("The approval store is not connected yet; try again shortly.")
        return store

    async def servers(self, request: Request) -> Response:
        catalog = await self._catalog(CatalogQuery())
        if catalog.error:
            raise ServiceUnavailableError(f"The mcp stage could not answer: {catalog.error}")
        return JSONResponse({"replica": catalog.replica, "data": server_rows(catalog)})

    async def pending(self, request: Request) -> Response:
        return JSONResponse({"data": [_approval(a) for a in await self._store().pending()]})

    async def show(self, request: Request) -> Response:
        call_id = _call_id(request)
        try:
            return JSONResponse(_approval(await self._store().get(call_id)))
        except KeyError:
            raise NotFoundError(f"No approval '{call_id[:64]}'.") from None

    async def approve(self, request: Request) -> Response:
        return await self._decide(request, "approved")

    async def deny(self, request: Request) -> Response:
        return await self._decide(request, "denied")

    async def _decide(self, request: Request, state: str) -> Response:
        call_id = _call_id(request)
        raw = await request.body()
        if len(raw) > MAX_REASON_BODY:
            raise InvalidRequestError(f"The body exceeds {MAX_REASON_BODY} bytes.")
        try:
            decision = msgspec.json.decode(raw or b"{}", type=_Decision)
        except msgspec.MsgspecError as exc:
            raise InvalidRequestError(f"Invalid body: {exc}") from None
        try:
            decided = await self._store().decide(call_id, state, "admin", decision.reason)  # type: ignore[arg-type]
        except KeyError:
            raise NotFoundError(f"No approval '{call_id[:64]}'.") from None
        except ApprovalConflict:
            raise ConflictError(f"Approval '{call_id[:64]}' was decided already or has expired.") from None
        if self._audit is not None:
            self._audit(
                AuditEvent(
                    event_id=uuid.uuid4().hex,
                    at=time.time(),
                    actor="admin",
                    action=f"mcp_approval.{'approve' if state == 'approved' else 'deny'}",
                    target_kind="mcp_approval",
                    target_id=call_id,
                    after=msgspec.json.encode(decided).decode(),  # the guard's version of the call only
                    request_id=request.headers.get("x-request-id", ""),
                    source_ip=request.client.host if request.client else "",
                )
            )
        return JSONResponse(_approval(decided))
