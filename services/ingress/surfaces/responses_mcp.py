"""The Responses API's `mcp` tool, served by gatehouse's own MCP servers: the request's `mcp` tools read and
checked, the model's view of them (function tools named `<server>__<tool>`), the body of each model turn, the
`mcp_list_tools` / `mcp_call` / `mcp_approval_request` output items, and their SSE events.

A `server_label` must name an MCP server registered in gatehouse's config (and usable by the key); gatehouse
never connects to a `server_url`, `connector_id` or `tunnel_id` a request names (it is no open proxy), and it
holds each server's credentials itself (no `headers` or `authorization` from the request). A `server_url` equal
to the registered server's own URL is accepted, so a client written for OpenAI's form works unchanged.
Pure: no I/O (services/ingress/mcp/responses_loop.py runs the loop).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.ingress.surfaces.chat_view import JsonObj, obj, text_of
from services.ingress.surfaces.sse import sse
from shared.errors import InvalidRequestError
from shared.mcp_config import SEPARATOR, namespaced

# what every provider takes as a function name (OpenAI's rule, the strictest): ^[a-zA-Z0-9_-]{1,64}$
MAX_FUNCTION_NAME = 64
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")
# tool calls one response may make when the request does not say (`max_tool_calls`)
DEFAULT_MAX_TOOL_CALLS = 20
_NOT_A_PROXY = "is not supported by this gateway: it serves only its registered MCP servers, named by 'server_label'."
_NO_CREDENTIALS = (
    "is not accepted: this gateway holds the credentials of its registered MCP servers and sends none from a request."
)
# an `mcp` tool's field asking for what gatehouse will not do for a client (another target, forwarded
# credentials) → why it is refused; checked in this order
_REFUSED = {
    "connector_id": _NOT_A_PROXY,
    "tunnel_id": _NOT_A_PROXY,
    "headers": _NO_CREDENTIALS,
    "authorization": _NO_CREDENTIALS,
}


def _invalid(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def _names(raw: object, param: str) -> frozenset[str] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
        raise _invalid(param, f"Invalid '{param}': expected an array of tool names.")
    return frozenset(raw)


@dataclass(frozen=True, slots=True)
class _Filter:
    """Tool names and/or read-only tools (OpenAI's `McpToolFilter`); an empty filter matches nothing."""

    names: frozenset[str] | None = None
    read_only: bool | None = None

    @classmethod
    def of(cls, raw: object, param: str) -> _Filter:
        spec = obj(raw)
        if not isinstance(raw, dict):
            raise _invalid(param, f"Invalid '{param}': expected an object.")
        read_only = spec.get("read_only")
        if read_only is not None and not isinstance(read_only, bool):
            raise _invalid(f"{param}.read_only", f"Invalid '{param}.read_only': expected a boolean.")
        return cls(_names(spec.get("tool_names"), f"{param}.tool_names"), read_only)

    def matches(self, name: str, read_only: bool) -> bool:
        if self.names is None and self.read_only is None:
            return False
        if self.names is not None and name not in self.names:
            return False
        return self.read_only is None or self.read_only == read_only


@dataclass(frozen=True, slots=True)
class McpTool:
    """One `{"type": "mcp"}` tool of a request: which registered server, which of its tools, which need the
    client's approval (OpenAI's default: every one)."""

    label: str
    allowed: _Filter | None = None  # None: every tool the key may use
    approval: str = "always"  # always | never | filter
    always: _Filter | None = None
    never: _Filter | None = None

    def allows(self, name: str, read_only: bool) -> bool:
        if self.allowed is None:
            return True
        a = self.allowed
        if a.names is None and a.read_only is None:  # `allowed_tools: {}`: an empty filter matches nothing
            return False
        return (a.names is None or name in a.names) and (a.read_only is not True or read_only)

    def needs_approval(self, name: str, read_only: bool) -> bool:
        if self.approval != "filter":
            return self.approval == "always"
        if self.never is not None and self.never.matches(name, read_only):
            return False
        if self.always is not None and self.always.matches(name, read_only):
            return True
        return True  # a tool neither filter names needs an approval, as OpenAI's default


def has_mcp(body: object) -> bool:
    """Whether a Responses request carries an `mcp` tool (so gatehouse runs the tool loop)."""
    tools = obj(body).get("tools")
    return isinstance(tools, list) and any(obj(t).get("type") == "mcp" for t in tools)


def mcp_labels(body: JsonObj) -> list[tuple[int, str]]:
    """(index in `tools`, server_label) of each of the request's `mcp` tools, before anything else of them is
    read: which labels the key may see is decided first (services/ingress/mcp/responses_loop.py), so no other
    field of a tool tells a label the key may not use from one that does not exist."""
    out: list[tuple[int, str]] = []
    tools = body.get("tools")
    for j, value in enumerate(tools if isinstance(tools, list) else []):
        spec = obj(value)
        if spec.get("type") != "mcp":
            continue
        at = f"tools[{j}]"
        label = spec.get("server_label")
        if not isinstance(label, str) or not label:
            raise InvalidRequestError(
                f"Missing required parameter: '{at}.server_label'.",
                param=f"{at}.server_label",
                code="missing_required_parameter",
            )
        out.append((j, label))
    return out


def unknown_label(j: int, label: str) -> InvalidRequestError:
    """The one answer for a label the key may not see: unknown, forbidden, down or empty alike."""
    return _invalid(
        f"tools[{j}].server_label",
        f"No MCP server labelled '{label[:100]}' is registered with this gateway. The 'mcp' tool serves "
        "only the gateway's registered MCP servers, named by 'server_label'.",
    )


def mcp_tools(body: JsonObj, registered: Mapping[str, str | None]) -> list[McpTool]:
    """The request's `mcp` tools, checked: each names a registered server (`registered`: label → its URL) once,
    and nothing gatehouse will not do for a client (connect to another URL, pass on credentials)."""
    out: list[McpTool] = []
    tools = obj(body).get("tools")
    for j, label in mcp_labels(body):
        spec, at = obj(tools[j] if isinstance(tools, list) else None), f"tools[{j}]"
        if label not in registered:
            raise unknown_label(j, label)
        url = spec.get("server_url")
        if url is not None and (not isinstance(url, str) or url != registered[label]):
            raise _invalid(
                f"{at}.server_url",
                "This gateway does not connect to MCP servers a request names by 'server_url': it serves only the "
                f"MCP servers registered in its configuration and is not a proxy to arbitrary URLs. Name the "
                f"registered server by 'server_label' alone ('{label[:100]}').",
            )
        for key, why in _REFUSED.items():
            if spec.get(key) is not None:
                raise _invalid(f"{at}.{key}", f"'{key}' {why}")
        if any(t.label == label for t in out):
            raise _invalid(f"{at}.server_label", f"The MCP server '{label[:100]}' is given twice in 'tools'.")
        out.append(_tool(label, spec, at))
    return out


def _tool(label: str, spec: JsonObj, at: str) -> McpTool:
    allowed_raw = spec.get("allowed_tools")
    allowed: _Filter | None = None
    if isinstance(allowed_raw, list):
        allowed = _Filter(_names(allowed_raw, f"{at}.allowed_tools"))
    elif allowed_raw is not None:
        allowed = _Filter.of(allowed_raw, f"{at}.allowed_tools")
    approval = spec.get("require_approval")
    if approval is None or approval in ("always", "never"):
        return McpTool(label, allowed, approval or "always")
    if not isinstance(approval, dict):
        raise _invalid(
            f"{at}.require_approval", "Invalid 'require_approval': expected 'always', 'never' or a filter object."
        )
    always = _Filter.of(approval["always"], f"{at}.require_approval.always") if "always" in approval else None
    never = _Filter.of(approval["never"], f"{at}.require_approval.never") if "never" in approval else None
    return McpTool(label, allowed, "filter", always, never)


def max_tool_calls(body: JsonObj, ceiling: int) -> int:
    """The calls the response may make: the request's `max_tool_calls` (or the default), never past the gateway's
    `ceiling` (mcp.responses_max_tool_calls)."""
    value = body.get("max_tool_calls")
    if value is None:
        return min(DEFAULT_MAX_TOOL_CALLS, ceiling)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid("max_tool_calls", "Invalid 'max_tool_calls': expected an integer of at least 1.")
    return min(value, ceiling)


# ---------------------------------------------------------------- the model's view of the tools


@dataclass(frozen=True, slots=True)
class ServerTool:
    """A tool of a registered server as the model sees it (`function`: `<server>__<tool>`)."""

    label: str
    name: str  # the server's own name for it
    description: str | None
    input_schema: JsonObj
    annotations: JsonObj | None

    @property
    def function(self) -> str:
        return function_name(self.label, self.name)

    @property
    def read_only(self) -> bool:
        return (self.annotations or {}).get("readOnlyHint") is True


def function_name(label: str, name: str) -> str:
    """The function name the model is given for a server's tool: `<server>__<tool>` when every provider takes it;
    else made so (an MCP tool name may hold `.` or `/` and run to 128 characters, and one such name would fail
    every turn upstream): characters outside the set become `_`, cut to fit, with a hash of the whole name after,
    so two tools do not share one. The loop maps it back by its table of the request's tools (`Plan.functions`)."""
    full = namespaced(label, name)
    if len(full) <= MAX_FUNCTION_NAME and not _UNSAFE.search(full):
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:16]
    return f"{_UNSAFE.sub('_', full)[: MAX_FUNCTION_NAME - len(digest) - 1]}_{digest}"


def server_tools(tool: McpTool, listed: list[dict[str, Any]]) -> list[ServerTool]:
    """The catalog's (namespaced, key-filtered) tools of `tool`'s server that the request allows."""
    out: list[ServerTool] = []
    prefix = tool.label + SEPARATOR
    for item in listed:
        full = text_of(item.get("name"))
        if not full.startswith(prefix):
            continue
        annotations = item.get("annotations")
        st = ServerTool(
            label=tool.label,
            name=full.removeprefix(prefix),
            description=item.get("description") if isinstance(item.get("description"), str) else None,
            input_schema=obj(item.get("inputSchema")) or {"type": "object", "properties": {}},
            annotations=annotations if isinstance(annotations, dict) else None,
        )
        if tool.allows(st.name, st.read_only):
            out.append(st)
    return out


def function_tool(st: ServerTool) -> JsonObj:
    out: JsonObj = {"type": "function", "name": st.function, "parameters": st.input_schema}
    if st.description:
        out["description"] = st.description
    return out


def list_item(label: str, tools: list[ServerTool], error: str | None = None) -> JsonObj:
    return {
        "id": f"mcpl_{uuid.uuid4().hex}",
        "type": "mcp_list_tools",
        "server_label": label,
        "tools": [
            {"name": t.name, "description": t.description, "input_schema": t.input_schema, "annotations": t.annotations}
            for t in tools
        ],
        "error": error,
    }


def call_item(
    label: str,
    name: str,
    arguments: str,
    *,
    output: str | None = None,
    error: JsonObj | None = None,
    approval_request_id: str | None = None,
    item_id: str = "",
) -> JsonObj:
    return {
        "id": item_id or f"mcp_{uuid.uuid4().hex}",
        "type": "mcp_call",
        "server_label": label,
        "name": name,
        "arguments": arguments,
        "output": output,
        "error": error,
        "status": "failed" if error is not None else "completed",
        "approval_request_id": approval_request_id,
    }


def approval_item(label: str, name: str, arguments: str) -> JsonObj:
    return {
        "id": f"mcpr_{uuid.uuid4().hex}",
        "type": "mcp_approval_request",
        "server_label": label,
        "name": name,
        "arguments": arguments,
    }


def result_text(result: Mapping[str, Any]) -> str:
    """The text of an MCP `tools/call` result (text parts joined; other parts named, as the model reads them)."""
    parts: list[str] = []
    content = result.get("content")
    for part in content if isinstance(content, list) else []:
        p = obj(part)
        if p.get("type") == "text":
            parts.append(text_of(p.get("text")))
        else:
            parts.append(f"[{text_of(p.get('type')) or 'content'}]")
    return "\n".join(parts)


def call_output(item: JsonObj) -> str:
    """What the model is told an `mcp_call` gave: its output, or its error."""
    output = item.get("output")
    if isinstance(output, str) and item.get("error") is None:
        return output
    error = obj(item.get("error"))
    message = text_of(error.get("message")) or (output if isinstance(output, str) else "") or "the call failed"
    return f"Error: {message}"


# ---------------------------------------------------------------- the input a turn carries


@dataclass(slots=True)
class Conversation:
    """A request's input with its MCP items read: `input` (what the model sees, the MCP items as function calls
    and outputs), the approved calls still to run, the servers already listed."""

    input: list[object] = field(default_factory=list)
    # the mcp_approval_request items the client approved and no mcp_call of the input ran yet, each with its place
    # in `input` (where its call and output go)
    approved: list[tuple[int, JsonObj]] = field(default_factory=list)
    listed: set[str] = field(default_factory=set)


def conversation(body: JsonObj, labels: Mapping[str, McpTool]) -> Conversation:
    raw = body.get("input")
    out = Conversation()
    if not isinstance(raw, list):
        out.input = [{"type": "message", "role": "user", "content": raw}] if isinstance(raw, str) else []
        return out
    requests: dict[str, JsonObj] = {}
    ran: set[str] = set()  # approvals an mcp_call of the input already carried out (a conversation sent back)
    for value in raw:
        item = obj(value)
        if item.get("type") == "mcp_approval_request" and isinstance(item.get("id"), str):
            requests[str(item["id"])] = item
        elif item.get("type") == "mcp_call" and isinstance(item.get("approval_request_id"), str):
            ran.add(str(item["approval_request_id"]))
    answered: set[str] = set()
    for i, value in enumerate(raw):
        item = obj(value)
        kind = item.get("type")
        where = f"input[{i}]"
        if kind == "mcp_list_tools":
            out.listed.add(text_of(item.get("server_label")))
        elif kind == "mcp_call":
            label, name = _known(item, labels, where)
            call_id = text_of(item.get("id")) or f"mcp_{i}"
            out.input.append(
                _function_call(call_id, function_name(label, name), text_of(item.get("arguments")) or "{}")
            )
            out.input.append({"type": "function_call_output", "call_id": call_id, "output": call_output(item)})
        elif kind == "mcp_approval_request":
            continue  # runs (or is refused) where its response is
        elif kind == "mcp_approval_response":
            rid = item.get("approval_request_id")
            request = requests.get(rid) if isinstance(rid, str) else None
            if request is None:
                raise _invalid(
                    f"{where}.approval_request_id",
                    "This 'mcp_approval_response' answers no 'mcp_approval_request' of the input. This gateway "
                    "keeps no responses: send the 'mcp_approval_request' item back in 'input' with its response.",
                )
            if rid in answered:
                raise _invalid(
                    f"{where}.approval_request_id",
                    f"The 'mcp_approval_request' '{str(rid)[:100]}' is answered more than once in 'input'.",
                )
            answered.add(str(rid))
            label, name = _known(request, labels, f"{where}.approval_request_id")
            if item.get("approve") is True:
                if rid not in ran:  # else its mcp_call stands for it, where it is in the input
                    out.approved.append((len(out.input), request))
            else:
                reason = text_of(item.get("reason"))
                call_id = text_of(request.get("id"))
                args = text_of(request.get("arguments")) or "{}"
                out.input.append(_function_call(call_id, function_name(label, name), args))
                refused = "The user did not approve this call." + (f" Reason: {reason}" if reason else "")
                out.input.append({"type": "function_call_output", "call_id": call_id, "output": refused})
        else:
            out.input.append(value)
    return out


def _known(item: JsonObj, labels: Mapping[str, McpTool], where: str) -> tuple[str, str]:
    label, name = text_of(item.get("server_label")), text_of(item.get("name"))
    if label not in labels:
        raise _invalid(
            f"{where}.server_label",
            f"The MCP item names server '{label[:100]}', which no 'mcp' tool of the request names.",
        )
    if not name:
        raise _invalid(f"{where}.name", "The MCP item has no tool 'name'.")
    return label, name


def _function_call(call_id: str, name: str, arguments: str) -> JsonObj:
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}


def turn_body(body: JsonObj, functions: list[JsonObj], history: list[object], called: bool = False) -> JsonObj:
    """The body of one model turn: the client's request with its `mcp` tools given as function tools, its MCP
    input items as function calls and outputs (`history`), and no stream (gatehouse reads the turn whole).
    Once a tool was `called`, a forced `tool_choice` is relaxed to `auto` (as the OpenAI Agents SDK's
    `reset_tool_choice` does): a model made to call a tool on every turn could never answer."""
    turn = {k: v for k, v in body.items() if k not in ("stream", "stream_options", "max_tool_calls")}
    tools = body.get("tools")
    turn["tools"] = [t for t in (tools if isinstance(tools, list) else []) if obj(t).get("type") != "mcp"] + functions
    raw = body.get("tool_choice")
    choice = obj(raw)
    if called and (raw == "required" or choice.get("type") in ("mcp", "function")):
        turn["tool_choice"] = "auto"
    elif called and choice.get("type") == "allowed_tools" and choice.get("mode") == "required":
        turn["tool_choice"] = {**choice, "mode": "auto"}
    elif choice.get("type") == "mcp":
        label, name = text_of(choice.get("server_label")), text_of(choice.get("name"))
        turn["tool_choice"] = {"type": "function", "name": function_name(label, name)} if name else "required"
    turn["input"] = history
    return turn


# ---------------------------------------------------------------- SSE


class McpStream:
    """The Responses SSE events of a response gatehouse assembles item by item, numbered from 0."""

    def __init__(self) -> None:
        self._seq = 0

    def event(self, kind: str, **fields: object) -> bytes:
        data = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return sse(kind, data)

    def started(self, response: JsonObj) -> bytes:
        return self.event("response.created", response=response) + self.event("response.in_progress", response=response)

    def call_started(self, index: int, item: JsonObj) -> bytes:
        """An `mcp_call` in progress (before the tool answers)."""
        pending = {**item, "status": "in_progress", "output": None, "error": None}
        at = {"item_id": item["id"], "output_index": index}
        return (
            self.event("response.output_item.added", output_index=index, item=pending)
            + self.event("response.mcp_call.in_progress", **at)
            + self.event("response.mcp_call_arguments.delta", **at, delta=item["arguments"])
            + self.event("response.mcp_call_arguments.done", **at, arguments=item["arguments"])
        )

    def call_done(self, index: int, item: JsonObj) -> bytes:
        at = {"item_id": item["id"], "output_index": index}
        kind = "response.mcp_call.failed" if item.get("error") is not None else "response.mcp_call.completed"
        return self.event(kind, **at) + self.event("response.output_item.done", output_index=index, item=item)

    def item(self, index: int, item: JsonObj) -> bytes:
        """A whole item's events (added … done); a message's text arrives as one delta."""
        kind = item.get("type")
        at = {"item_id": item.get("id"), "output_index": index}
        if kind == "mcp_list_tools":
            failed = item.get("error") is not None
            return (
                self.event("response.output_item.added", output_index=index, item={**item, "tools": []})
                + self.event("response.mcp_list_tools.in_progress", **at)
                + self.event(f"response.mcp_list_tools.{'failed' if failed else 'completed'}", **at)
                + self.event("response.output_item.done", output_index=index, item=item)
            )
        if kind == "message":
            return self._message(index, item)
        if kind == "function_call":
            args = text_of(item.get("arguments"))
            return (
                self.event("response.output_item.added", output_index=index, item={**item, "arguments": ""})
                + self.event("response.function_call_arguments.delta", **at, delta=args)
                + self.event("response.function_call_arguments.done", **at, name=item.get("name"), arguments=args)
                + self.event("response.output_item.done", output_index=index, item=item)
            )
        return self.event("response.output_item.added", output_index=index, item=item) + self.event(
            "response.output_item.done", output_index=index, item=item
        )

    def _message(self, index: int, item: JsonObj) -> bytes:
        out = self.event("response.output_item.added", output_index=index, item={**item, "content": []})
        content = item.get("content")
        for j, value in enumerate(content if isinstance(content, list) else []):
            part = obj(value)
            at = {"item_id": item.get("id"), "output_index": index, "content_index": j}
            empty = {**part, "text": ""} if part.get("type") == "output_text" else {**part, "refusal": ""}
            out += self.event("response.content_part.added", **at, part=empty)
            if part.get("type") == "output_text":
                text = text_of(part.get("text"))
                out += self.event("response.output_text.delta", **at, delta=text, logprobs=[])
                out += self.event("response.output_text.done", **at, text=text, logprobs=[])
            else:
                refusal = text_of(part.get("refusal"))
                out += self.event("response.refusal.delta", **at, delta=refusal)
                out += self.event("response.refusal.done", **at, refusal=refusal)
            out += self.event("response.content_part.done", **at, part=part)
        return out + self.event("response.output_item.done", output_index=index, item=item)

    def finished(self, response: JsonObj) -> bytes:
        status = response.get("status")
        kind = f"response.{status}" if status in ("completed", "incomplete", "failed") else "response.completed"
        return self.event(kind, response=response)

    def failed(self, response: JsonObj, code: str, message: str, param: str | None) -> bytes:
        return self.event("error", code=code, message=message, param=param) + self.event(
            "response.failed", response=response
        )
