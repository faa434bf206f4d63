"""MCP on the bus: a tool call (or resource read, prompt get) from ingress through the guard to the mcp stage,
its outcome back, the catalog of upstream servers, list-changed notices, and the record of every call.

MCP payloads (arguments, results, tool lists) are JSON objects of any shape: they travel as the JSON bytes
they are, decoded only where something reads them (the guard's scan, the mcp stage's upstream call).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from shared.schemas.chat import Caller, GuardFinding, GuardSummary, Reservation

McpMethod = Literal["tools/call", "resources/read", "prompts/get"]
CatalogKind = Literal["tools", "resources", "resource_templates", "prompts"]


class McpError(msgspec.Struct, frozen=True, kw_only=True):
    """A JSON-RPC error as the client will get it (`status` is what the call's record says)."""

    code: int
    message: str
    status: str = "error"  # denied | blocked | rate_limited | timeout | upstream_error | unavailable | …


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """ingress → guard → mcp: one call to one upstream server, by the server's own name of the tool
    (prompt, or resource URI)."""

    call_id: str
    method: McpMethod
    server: str
    name: str
    arguments: bytes = b""  # a JSON object ('' for a resource read)
    caller: Caller
    timeout_s: float
    received_at: float
    trace_id: str = ""
    run_id: str = ""
    # the arguments are those an approver was shown (the guard's own scan of them, before the approval): the
    # guard runs the call only if its scan lets them through unchanged, never a version the approver did not see
    approved: bool = False


class ArgumentsScan(msgspec.Struct, frozen=True, kw_only=True):
    """guard → ingress: a tool call's arguments after the guard's input scan, before the call is put to an approver:
    redacted where the policy redacts (the raw ones stay with ingress, which drops them), or the error that blocks
    them."""

    call_id: str
    arguments: bytes = b""
    error: McpError | None = None
    guard_input: GuardSummary | None = None


class ToolOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """mcp → guard → ingress: the upstream's result (a JSON object) or the error that stands for it, with the
    guard's verdicts on the arguments (input) and on the result (output)."""

    call_id: str
    result: bytes = b""
    error: McpError | None = None
    upstream_ms: float = 0.0
    guard_input: GuardSummary | None = None
    guard_output: GuardSummary | None = None
    mcp_replica: str = ""


class CatalogQuery(msgspec.Struct, frozen=True, kw_only=True):
    """ingress → mcp: every server's catalog (any replica answers; each holds every server).

    Without `kind`: the summary (health, counts, and every list that fits in the one answer). With `kind` (and
    one name in `servers`): one page of that server's list from item `offset` on, as many items as fit in one
    bus message. A catalog larger than NATS max_payload is so read in several answers (services/ingress/mcp/
    catalog.read_catalog)."""

    servers: list[str] = []  # empty: all
    kind: CatalogKind | None = None
    offset: int = 0


class ServerCatalog(msgspec.Struct, frozen=True, kw_only=True):
    """What one upstream server offers, as one mcp replica sees it (lists are JSON arrays, names unprefixed).

    A list too large to travel in the summary is empty here and named in `paged` with the digest of the whole
    list; it is read page by page (CatalogQuery.kind), every page carrying the same digest while it is unchanged."""

    name: str
    transport: str
    healthy: bool
    error: str = ""
    restarts: int = 0
    connected_at: float = 0.0
    tools: bytes = b"[]"
    resources: bytes = b"[]"
    resource_templates: bytes = b"[]"
    prompts: bytes = b"[]"
    revision: int = 0
    counts: dict[str, int] = {}  # items of each list (paged or not)
    paged: dict[str, str] = {}  # list kind → digest of the list, for lists left out of this answer


class CatalogPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of one server's list: items `offset` … `next - 1` of `total`, as JSON items joined by commas
    (no brackets); `digest` names the whole list the page was cut from."""

    server: str
    kind: CatalogKind
    offset: int
    next: int
    total: int
    digest: str
    items: bytes = b""


class Catalog(msgspec.Struct, frozen=True, kw_only=True):
    servers: list[ServerCatalog] = []
    replica: str = ""
    page: CatalogPage | None = None  # the answer to a page query
    error: str = ""  # the query could not be answered (an unknown server or list, an answer too large to send)


class CatalogChanged(msgspec.Struct, frozen=True, kw_only=True):
    """mcp → every ingress: a server's list changed (a list-changed notification, or a reconnect)."""

    server: str
    kinds: list[CatalogKind] = []


class McpCallEvent(msgspec.Struct, frozen=True, kw_only=True):
    """The record of one MCP call (the `mcp_calls` table), published by ingress when the call ends."""

    event_id: str
    call_id: str
    trace_id: str = ""
    run_id: str = ""
    session_id: str = ""
    method: str
    server: str
    tool: str
    caller: Caller
    status: str  # ok | tool_error | denied | blocked | rate_limited | budget_exceeded | run_limit | …
    error_code: int = 0
    error_message: str = ""
    latency_ms: float
    upstream_ms: float = 0.0
    request_bytes: int = 0
    response_bytes: int = 0
    guard_action: str = ""
    guard_policy: str = ""
    guard_findings: list[GuardFinding] = []
    approval: str = ""  # '' | approved | denied | timeout
    cost_usd: float = 0.0
    received_at: float
    finished_at: float
    mcp_replica: str = ""
    guard_replica: str = ""
    tags: dict[str, str] = {}
    # what the call's price holds on the key's budgets; accounting settles it to `cost_usd` from this record
    reservation: Reservation | None = None


class Approval(msgspec.Struct, frozen=True, kw_only=True):
    """A tool call waiting for an admin (`<p>.mcp.approvals` KV, one entry per call)."""

    call_id: str
    server: str
    tool: str
    arguments: str  # the JSON text, as the guard left it (redacted where the policy redacts): what runs if approved
    key_id: str
    team: str = ""
    project: str = ""
    rule: str = ""
    created_at: float
    expires_at: float
    state: Literal["pending", "approved", "denied"] = "pending"
    decided_by: str = ""
    decided_at: float = 0.0
    reason: str = ""
    # the guard's verdict on the arguments (policy, action, rule ids and JSON paths; never the matched text)
    guard: GuardSummary | None = None
