"""JSON-RPC error codes of the MCP endpoint: the protocol's own, and gatehouse's in the server-error range.

An MCP error crosses the bus as data (shared.schemas.mcp.McpError) and only ingress writes it to a client,
as the `error` of a JSON-RPC response; `status` names the outcome in the call's record.
"""

from __future__ import annotations

from shared.schemas.mcp import McpError

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

# gatehouse (-32000 … -32099 is the implementation-defined server-error range)
UNAUTHORIZED = -32001
TOOL_DENIED = -32010  # an argument rule denies the call (a name the key may not use is an unknown name)
GUARD_BLOCKED = -32011  # the guard blocked the arguments or the result
RATE_LIMITED = -32012  # calls per minute
BUDGET_EXCEEDED = -32013
RUN_LIMIT = -32014  # an agent run's limit (calls, spend, a loop)
APPROVAL_DENIED = -32015
APPROVAL_TIMEOUT = -32016
UPSTREAM_TIMEOUT = -32030
UPSTREAM_UNAVAILABLE = -32031
GATEWAY_UNAVAILABLE = -32032  # a stage behind ingress did not answer
SERVER_BUSY = -32033  # every slot of the upstream server is taken and its waiting line is full (or did not move)
CLIENT_CLOSED = -32034  # the client left mid-call: recorded, never sent


def internal() -> McpError:
    return McpError(code=INTERNAL_ERROR, message="The gateway hit an internal error.", status="error")


def client_closed() -> McpError:
    """A call whose client went away before it ended (nobody is left to answer): only its record says so."""
    return McpError(code=CLIENT_CLOSED, message="The client closed the connection.", status="client_closed")


def gateway_unavailable(stage: str) -> McpError:
    return McpError(
        code=GATEWAY_UNAVAILABLE, message=f"The {stage} did not answer; try again shortly.", status="unavailable"
    )


def too_large(what: str, size: int, limit: int) -> McpError:
    return McpError(
        code=INTERNAL_ERROR, message=f"{what} is {size} bytes; the gateway passes at most {limit}.", status="too_large"
    )


def changed_since_approval() -> McpError:
    """An approved call whose arguments the guard's policy would now change: it does not run, since what would run
    is not what the approver was shown."""
    return McpError(
        code=GUARD_BLOCKED,
        message="The approved call was not run: the guardrail policy would now change its arguments, so it is not "
        "the call the approver was shown; call it again.",
        status="blocked",
    )


def not_found(message: str) -> McpError:
    return McpError(code=METHOD_NOT_FOUND, message=message, status="invalid")


def denied(message: str) -> McpError:
    return McpError(code=TOOL_DENIED, message=message, status="denied")


_WHAT = {"tools/call": "tool", "resources/read": "resource", "prompts/get": "prompt"}


def unknown_name(method: str, name: str) -> McpError:
    """The one answer to a name the caller cannot use: no such server, a server or name the key may not use, or
    (tools and prompts) a name its server does not offer. One code and one message, carrying only the name the
    client sent, so that a key cannot tell what exists among what it may not use."""
    return McpError(
        code=INVALID_PARAMS, message=f"Unknown {_WHAT.get(method, 'name')} '{name[:200]}'.", status="invalid"
    )


def invalid(message: str) -> McpError:
    return McpError(code=INVALID_PARAMS, message=message, status="invalid")


def upstream_timeout(server: str, seconds: float) -> McpError:
    return McpError(
        code=UPSTREAM_TIMEOUT, message=f"MCP server '{server}' did not answer within {seconds:g}s.", status="timeout"
    )


def upstream_unavailable(server: str, why: str = "") -> McpError:
    detail = f" ({why})" if why else ""
    return McpError(
        code=UPSTREAM_UNAVAILABLE,
        message=f"MCP server '{server}' is unavailable{detail}; try again shortly.",
        status="unavailable",
    )


def server_busy(server: str) -> McpError:
    return McpError(
        code=SERVER_BUSY,
        message=f"MCP server '{server}' is busy (every call slot is taken); try again shortly.",
        status="busy",
    )
