"""The Responses API's `mcp` tool loop: list the named servers' tools (the catalog, as the key sees it), give them
to the model as function tools, run each call the model makes through the MCP call path (`ToolCalls.call`: the
key's tool permissions, argument rules, admin approvals, run limits, quotas, budgets, guard, records), feed the
results back, and turn again until the model answers, a call needs the client's approval, or the calls run out.

Each model turn is a request of its own through ingress's whole request path (a `Turn`: authentication, quotas,
budget reservation, guard, router, its own record), non-streamed; each tool call leaves its own MCP record. A
streamed response is written item by item as the loop goes (a message's text as one delta, once its turn is done).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from starlette.responses import JSONResponse, Response, StreamingResponse

from services.ingress.mcp.calls import CallContext, CallFailed, ToolCalls
from services.ingress.mcp.catalog import CatalogCache, visible
from services.ingress.surfaces import responses_mcp as rm
from services.ingress.surfaces.chat_view import JsonObj, obj, text_of
from shared.errors import GatewayError, InvalidRequestError, PayloadTooLargeError, ServiceUnavailableError, error_body
from shared.mcp_config import McpConfig, namespaced

log = logging.getLogger("gatehouse.ingress.responses_mcp")

_JSON = msgspec.json.Encoder()
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}

# one model turn: a Responses body → ingress's answer to it (a JSON response, or an OpenAI error)
Turn = Callable[[bytes], Awaitable[Response]]


@dataclass
class Plan:
    """A request whose `mcp` tools are checked and whose servers' tools are listed."""

    body: JsonObj
    tools: dict[str, rm.McpTool]
    server_tools: dict[str, list[rm.ServerTool]]  # by label
    list_errors: dict[str, str]
    conversation: rm.Conversation
    max_calls: int
    ctx: CallContext

    @property
    def functions(self) -> dict[str, rm.ServerTool]:
        return {t.function: t for tools in self.server_tools.values() for t in tools}


@dataclass
class _State:
    output: list[JsonObj] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    final: JsonObj | None = None  # the last turn's response
    status: str = "completed"
    incomplete: JsonObj | None = None
    failure: Response | None = None  # a turn's error, as ingress answered it
    history: list[object] = field(default_factory=list)  # the input of the next turn
    calls: int = 0


class ResponsesMcp:
    def __init__(self, config: McpConfig, catalog: CatalogCache, calls: ToolCalls, max_body_bytes: int) -> None:
        self.config = config
        self.catalog = catalog
        self.calls = calls
        self.max_body = max_body_bytes

    async def plan(self, body: JsonObj, ctx: CallContext) -> Plan:
        """The request's `mcp` tools checked and their servers' tools listed; a 400 for what gatehouse will not
        serve (a URL it does not manage, credentials, a server the key may not use)."""
        labels = rm.mcp_labels(body)
        try:
            servers = await self.catalog.servers()
        except Exception as exc:
            log.warning("mcp catalog unavailable for a response: %s", type(exc).__name__)
            raise ServiceUnavailableError("The gateway's MCP catalog is unavailable; try again shortly.") from None
        # first whether the key may see each label, so that every label it may not (unknown, forbidden, down,
        # without tools) gets the same answer whatever else its tool says (server_url, headers, a duplicate)
        mine: dict[str, list[dict[str, Any]]] = {}
        for j, label in labels:
            lists = servers.get(label) if label in self.config.servers else None
            mine[label] = visible(lists.tools, ctx.ent) if lists is not None and lists.healthy else []
            if not mine[label] and not (label in self.config.servers and _whole_server(ctx, label)):
                raise rm.unknown_label(j, label)
        registered = {name: server.url for name, server in self.config.servers.items()}
        tools = {t.label: t for t in rm.mcp_tools(body, registered)}
        cap = rm.max_tool_calls(body, self.config.responses_max_tool_calls)
        convo = rm.conversation(body, tools)
        if len(convo.approved) > cap:  # an approved call counts as any other
            raise InvalidRequestError(
                f"The input approves {len(convo.approved)} tool calls still to run, more than the {cap} this "
                "response may make ('max_tool_calls', at most the gateway's limit).",
                param="input",
            )
        listed: dict[str, list[rm.ServerTool]] = {}
        errors: dict[str, str] = {}
        taken: set[str] = set()
        for label, tool in tools.items():
            lists = servers.get(label)
            if lists is None or not lists.healthy:
                listed[label] = []
                errors[label] = f"The MCP server '{label}' is unavailable right now."
                continue
            listed[label] = []
            for st in rm.server_tools(tool, mine[label]):
                if st.function in taken:  # two tools made the same function name: the first keeps it
                    log.warning(
                        "mcp tool %r of %r is left out of a response: its function name is taken", st.name, label
                    )
                    continue
                taken.add(st.function)
                listed[label].append(st)
        for _, request in convo.approved:  # an approval runs only a call the request's tools allow
            label, name = text_of(request.get("server_label")), text_of(request.get("name"))
            if label in errors:  # its server is down: the call may run once it is back
                raise ServiceUnavailableError(
                    f"The MCP server '{label[:100]}' of the approved call is unavailable right now; try again shortly."
                )
            if name not in {t.name for t in listed.get(label, [])}:
                raise InvalidRequestError(
                    f"The approved call names '{name[:100]}', which is not among the tools of '{label[:100]}' "
                    "this request allows.",
                    param="input",
                )
        return Plan(body, tools, listed, errors, convo, cap, ctx)

    async def serve(self, plan: Plan, turn: Turn, request_id: str) -> Response:
        state = _State()
        rid = f"resp_{uuid.uuid4().hex}"
        created = int(time.time())
        headers = {"x-request-id": request_id}
        if plan.body.get("stream") is True:
            return StreamingResponse(
                self._stream(plan, turn, state, rid, created),
                media_type="text/event-stream",
                headers={**_SSE_HEADERS, **headers},
            )
        async for _ in self._steps(plan, turn, state):
            pass
        if state.failure is not None:
            return state.failure
        return JSONResponse(self._response(plan, state, rid, created), headers=headers)

    # ---- the loop ----------------------------------------------------------------------------------
    async def _steps(self, plan: Plan, turn: Turn, state: _State) -> AsyncIterator[tuple[str, int, JsonObj]]:
        """("item" | "call_started" | "call_done", output index, item) as the response grows; `state` holds the
        rest (the last turn, the usage, a failure)."""
        for label in plan.tools:
            if label not in plan.conversation.listed:
                item = rm.list_item(label, plan.server_tools[label], plan.list_errors.get(label))
                yield "item", self._add(state, item), item
        state.history = list(plan.conversation.input)
        shift = 0  # the calls and outputs inserted so far before the next approval's place
        for at, request in plan.conversation.approved:
            label, name = text_of(request.get("server_label")), text_of(request.get("name"))
            args = text_of(request.get("arguments")) or "{}"
            pending = rm.call_item(label, name, args, approval_request_id=text_of(request.get("id")))
            # where the approval is in the conversation, not after its latest message
            state.history.insert(at + shift, _function_call(pending))
            async for step in self._run(plan, state, pending, at + shift + 1):
                yield step
            shift += 2
        functions = plan.functions
        tool_defs = [rm.function_tool(t) for t in functions.values()]
        while True:
            data = await self._turn(plan, turn, state, tool_defs)
            if data is None:
                return
            output = data.get("output")
            items = [obj(i) for i in (output if isinstance(output, list) else [])]
            mcp_calls = [i for i in items if i.get("type") == "function_call" and i.get("name") in functions]
            client_calls = any(i.get("type") == "function_call" and i.get("name") not in functions for i in items)
            for item in items:
                if item not in mcp_calls:
                    yield "item", self._add(state, item), item
            if not mcp_calls:
                state.status = text_of(data.get("status")) or "completed"
                state.incomplete = obj(data.get("incomplete_details")) or None
                return
            state.history += [i for i in items if i.get("type") in ("message", "function_call")]
            waiting = False
            for call in mcp_calls:
                st = functions[text_of(call.get("name"))]
                args = text_of(call.get("arguments")) or "{}"
                if plan.tools[st.label].needs_approval(st.name, st.read_only):
                    request = rm.approval_item(st.label, st.name, args)
                    waiting = True
                    yield "item", self._add(state, request), request
                    continue
                if state.calls >= plan.max_calls:
                    state.status, state.incomplete = "incomplete", {"reason": "max_tool_calls"}
                    return
                pending = rm.call_item(st.label, st.name, args, item_id=text_of(call.get("call_id")))
                async for step in self._run(plan, state, pending):
                    yield step
            if waiting or client_calls:
                return

    async def _turn(self, plan: Plan, turn: Turn, state: _State, tool_defs: list[JsonObj]) -> JsonObj | None:
        """One model turn's response; None when it failed (`state.failure` says how)."""
        raw = _JSON.encode(rm.turn_body(plan.body, tool_defs, state.history, called=state.calls > 0))
        if len(raw) > self.max_body:
            state.failure = _error(
                PayloadTooLargeError(
                    f"The conversation with its tool results reached {len(raw)} bytes, past the gateway's "
                    f"limit of {self.max_body} bytes."
                )
            )
            return None
        answer = await turn(raw)
        if answer.status_code != 200:
            state.failure = answer
            return None
        data = obj(json.loads(bytes(answer.body)))
        state.final = data
        _add_usage(state.usage, obj(data.get("usage")))
        return data

    async def _run(
        self, plan: Plan, state: _State, pending: JsonObj, at: int | None = None
    ) -> AsyncIterator[tuple[str, int, JsonObj]]:
        """One tool call: its item in progress, then as it ended; its output joins the conversation (at `at`, or
        at its end)."""
        index = self._add(state, pending)
        yield "call_started", index, pending
        done = await self._call(plan, pending)
        state.output[index] = done
        output = {"type": "function_call_output", "call_id": done["id"], "output": rm.call_output(done)}
        state.history.insert(len(state.history) if at is None else at, output)
        state.calls += 1
        yield "call_done", index, done

    @staticmethod
    def _add(state: _State, item: JsonObj) -> int:
        state.output.append(item)
        return len(state.output) - 1

    async def _call(self, plan: Plan, pending: JsonObj) -> JsonObj:
        """One tool call through the MCP call path; the `mcp_call` item it ends as."""
        label, name, args = str(pending["server_label"]), str(pending["name"]), str(pending["arguments"])
        item_id = str(pending["id"])
        approval = pending.get("approval_request_id")
        base: dict[str, Any] = {
            "item_id": item_id,
            "approval_request_id": approval if isinstance(approval, str) else None,
        }
        try:
            arguments: Any = json.loads(args) if args.strip() else {}
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            error = {"type": "mcp_protocol_error", "code": -32602, "message": "The arguments are not a JSON object."}
            return rm.call_item(label, name, args, error=error, **base)
        try:
            result = await self.calls.call(
                plan.ctx, "tools/call", {"name": namespaced(label, name), "arguments": arguments}
            )
        except CallFailed as exc:
            error = {"type": "mcp_protocol_error", "code": exc.error.code, "message": exc.error.message}
            return rm.call_item(label, name, args, error=error, **base)
        text = rm.result_text(result)
        if result.get("isError"):
            failed = {"type": "mcp_tool_execution_error", "content": result.get("content") or []}
            return rm.call_item(label, name, args, output=text, error=failed, **base)
        return rm.call_item(label, name, args, output=text, **base)

    # ---- the answer ---------------------------------------------------------------------------------
    def _response(self, plan: Plan, state: _State, rid: str, created: int, status: str | None = None) -> JsonObj:
        final = state.final or {}
        out = {
            **final,
            "id": rid,
            "object": "response",
            "created_at": created,
            "status": status or state.status,
            "error": None,
            "incomplete_details": state.incomplete,
            "model": final.get("model") or plan.body.get("model"),
            "output": list(state.output),
            "usage": _usage_json(state.usage) if state.usage else None,
            # the request's own tools, not the function tools the model was given
            "tools": plan.body.get("tools") or [],
            "tool_choice": plan.body.get("tool_choice") or "auto",
            "max_tool_calls": plan.body.get("max_tool_calls"),
        }
        return out

    async def _stream(self, plan: Plan, turn: Turn, state: _State, rid: str, created: int) -> AsyncIterator[bytes]:
        events = rm.McpStream()
        yield events.started(self._response(plan, state, rid, created, "in_progress"))
        try:
            async for step, index, item in self._steps(plan, turn, state):
                if step == "call_started":
                    yield events.call_started(index, item)
                elif step == "call_done":
                    yield events.call_done(index, item)
                else:
                    yield events.item(index, item)
        except Exception:
            # the stream has begun: a bug still ends it with the failure events, not a cut connection
            log.exception("a streamed response with mcp tools failed")
            state.failure = _error(GatewayError("The gateway hit an internal error."))
        if state.failure is not None:
            error = obj(obj(json.loads(bytes(state.failure.body))).get("error"))
            message = text_of(error.get("message")) or "The response failed."
            code = text_of(error.get("code")) or text_of(error.get("type")) or "server_error"
            failed = self._response(plan, state, rid, created, "failed")
            failed["error"] = {"code": code, "message": message}
            param = error.get("param")
            yield events.failed(failed, code, message, param if isinstance(param, str) else None)
            return
        yield events.finished(self._response(plan, state, rid, created))


def _whole_server(ctx: CallContext, label: str) -> bool:
    """Whether the key's tool globs allow every tool of the server (a name no real tool has stands for any):
    only such a key is shown a server that is down or lists no tools, which for any other key looks unknown."""
    return ctx.ent.allows_tool(namespaced(label, "\0"))


def _function_call(item: JsonObj) -> JsonObj:
    """An `mcp_call` as the model reads it: a call of the function `<server>__<tool>`."""
    name = rm.function_name(str(item["server_label"]), str(item["name"]))
    return {"type": "function_call", "call_id": item["id"], "name": name, "arguments": item["arguments"]}


def _error(exc: GatewayError) -> Response:
    info = exc.info()
    return JSONResponse(error_body(info), status_code=info.status)


def _add_usage(total: dict[str, int], usage: JsonObj) -> None:
    for key in ("input_tokens", "output_tokens", "total_tokens"):
        value = usage.get(key)
        total[key] = total.get(key, 0) + (value if isinstance(value, int) else 0)
    cached = obj(usage.get("input_tokens_details")).get("cached_tokens")
    reasoning = obj(usage.get("output_tokens_details")).get("reasoning_tokens")
    total["cached"] = total.get("cached", 0) + (cached if isinstance(cached, int) else 0)
    total["reasoning"] = total.get("reasoning", 0) + (reasoning if isinstance(reasoning, int) else 0)


def _usage_json(total: dict[str, int]) -> JsonObj:
    return {
        "input_tokens": total.get("input_tokens", 0),
        "input_tokens_details": {"cached_tokens": total.get("cached", 0)},
        "output_tokens": total.get("output_tokens", 0),
        "output_tokens_details": {"reasoning_tokens": total.get("reasoning", 0)},
        "total_tokens": total.get("total_tokens", 0),
    }
