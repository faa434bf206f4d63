"""The Responses `mcp` tool's pure parts: which requests gatehouse serves (registered servers only, no URLs or
credentials of a request's own), the approval filters, the input's MCP items as the model reads them, a turn's
body, and the SSE events of the items."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from services.ingress.surfaces import responses_mcp as rm
from services.ingress.surfaces.chat_view import obj
from shared.errors import InvalidRequestError

REGISTERED = {"local": None, "remote": "http://127.0.0.1:9/mcp"}


def body(**tool: Any) -> dict[str, Any]:
    return {"model": "m", "input": "hi", "tools": [{"type": "mcp", "server_label": "local", **tool}]}


def refusal(b: dict[str, Any]) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        rm.mcp_tools(b, REGISTERED)
    return caught.value


def test_has_mcp() -> None:
    assert rm.has_mcp(body())
    assert not rm.has_mcp({"tools": [{"type": "function", "name": "f"}]})
    assert not rm.has_mcp({"tools": "mcp"}) and not rm.has_mcp([])


@pytest.mark.parametrize(
    ("tool", "param", "says"),
    [
        ({"server_url": "https://evil.example/mcp"}, "tools[0].server_url", "not a proxy to arbitrary URLs"),
        ({"server_label": "remote", "server_url": "http://127.0.0.1:9/other"}, "tools[0].server_url", "proxy"),
        ({"server_url": 5}, "tools[0].server_url", "proxy"),  # a stdio server has no URL to match
        ({"connector_id": "connector_gmail"}, "tools[0].connector_id", "registered MCP servers"),
        ({"tunnel_id": "t"}, "tools[0].tunnel_id", "registered MCP servers"),
        ({"headers": {"x-api-key": "k"}}, "tools[0].headers", "holds the credentials"),
        ({"authorization": "token"}, "tools[0].authorization", "holds the credentials"),
        ({"server_label": "nowhere"}, "tools[0].server_label", "No MCP server labelled 'nowhere'"),
        ({"server_label": ""}, "tools[0].server_label", "Missing required parameter"),
        ({"allowed_tools": "echo"}, "tools[0].allowed_tools", "expected an object"),
        ({"allowed_tools": [1]}, "tools[0].allowed_tools", "array of tool names"),
        ({"require_approval": "sometimes"}, "tools[0].require_approval", "'always', 'never'"),
        ({"require_approval": {"never": {"read_only": "yes"}}}, "tools[0].require_approval.never.read_only", "bool"),
    ],
)
def test_refused_tools(tool: dict[str, Any], param: str, says: str) -> None:
    exc = refusal(body(**tool))
    assert exc.info().status == 400 and exc.param == param and says in exc.message


def test_registered_url_and_duplicates() -> None:
    ok = body(server_label="remote", server_url="http://127.0.0.1:9/mcp")
    assert [t.label for t in rm.mcp_tools(ok, REGISTERED)] == ["remote"]
    twice = {"tools": [{"type": "mcp", "server_label": "local"}, {"type": "mcp", "server_label": "local"}]}
    assert "given twice" in refusal(twice).message


def tool_of(**spec: Any) -> rm.McpTool:
    return rm.mcp_tools(body(**spec), REGISTERED)[0]


def test_approval_filters() -> None:
    assert tool_of().needs_approval("echo", False)  # OpenAI's default: always
    assert not tool_of(require_approval="never").needs_approval("echo", False)
    t = tool_of(require_approval={"never": {"tool_names": ["echo"]}, "always": {"read_only": True}})
    assert not t.needs_approval("echo", True)  # never wins for the names it lists
    assert t.needs_approval("pid", True)
    assert t.needs_approval("send", False)  # named by neither filter: approval, as the default
    only_read = tool_of(require_approval={"never": {"read_only": True}})
    assert not only_read.needs_approval("pid", True) and only_read.needs_approval("send", False)


def test_allowed_tools_and_listing() -> None:
    listed = [
        {"name": "local__echo", "description": "Echo", "inputSchema": {"type": "object"}},
        {"name": "local__pid", "annotations": {"readOnlyHint": True}},
        {"name": "remote__echo"},
    ]
    assert [t.name for t in rm.server_tools(tool_of(), listed)] == ["echo", "pid"]
    assert [t.name for t in rm.server_tools(tool_of(allowed_tools=["pid"]), listed)] == ["pid"]
    read_only = tool_of(allowed_tools={"read_only": True})
    tools = rm.server_tools(read_only, listed)
    assert [t.function for t in tools] == ["local__pid"]
    # an empty filter (or list) matches nothing, as OpenAI's McpToolFilter: not every tool
    assert rm.server_tools(tool_of(allowed_tools={}), listed) == []
    assert rm.server_tools(tool_of(allowed_tools=[]), listed) == []
    assert rm.function_tool(rm.server_tools(tool_of(), listed)[0]) == {
        "type": "function",
        "name": "local__echo",
        "parameters": {"type": "object"},
        "description": "Echo",
    }


APPROVAL_REQUEST = {
    "type": "mcp_approval_request",
    "id": "mcpr_1",
    "server_label": "local",
    "name": "echo",
    "arguments": "{}",
}


def test_conversation_reads_mcp_items() -> None:
    tools = {"local": tool_of()}
    request = dict(APPROVAL_REQUEST)
    b = {
        "input": [
            {"role": "user", "content": "hi"},
            {"type": "mcp_list_tools", "id": "l", "server_label": "local", "tools": []},
            {"type": "mcp_call", "id": "c1", "server_label": "local", "name": "pid", "arguments": "{}", "output": "7"},
            {
                "type": "mcp_call",
                "id": "c2",
                "server_label": "local",
                "name": "pid",
                "arguments": "{}",
                "error": {"type": "mcp_protocol_error", "code": -1, "message": "down"},
            },
            request,
            {"type": "mcp_approval_response", "approval_request_id": "mcpr_1", "approve": True},
        ]
    }
    convo = rm.conversation(b, tools)
    assert convo.listed == {"local"}
    assert convo.approved == [(5, request)]  # its call goes where the approval is
    assert convo.input == [
        {"role": "user", "content": "hi"},
        {"type": "function_call", "call_id": "c1", "name": "local__pid", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "7"},
        {"type": "function_call", "call_id": "c2", "name": "local__pid", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c2", "output": "Error: down"},
    ]
    b["input"][-1] = {"type": "mcp_approval_response", "approval_request_id": "mcpr_1", "approve": False}
    denied = rm.conversation(b, tools)
    assert denied.approved == [] and "did not approve" in str(denied.input[-1])
    assert rm.conversation({"input": "hello"}, tools).input == [{"type": "message", "role": "user", "content": "hello"}]


def test_an_approval_already_carried_out_or_answered_twice() -> None:
    tools = {"local": tool_of()}
    request = dict(APPROVAL_REQUEST)
    approve = {"type": "mcp_approval_response", "approval_request_id": "mcpr_1", "approve": True}
    ran = {**request, "type": "mcp_call", "id": "mcp_9", "output": "done", "approval_request_id": "mcpr_1"}
    # the conversation sent back whole: the call the approval gave is in it, and is not run again
    replay = rm.conversation({"input": [{"role": "user", "content": "hi"}, request, approve, ran]}, tools)
    assert replay.approved == []
    assert [i.get("call_id") for i in map(obj, replay.input[1:])] == ["mcp_9", "mcp_9"]
    for second in (approve, {**approve, "approve": False}):
        with pytest.raises(InvalidRequestError) as caught:
            rm.conversation({"input": [request, approve, second]}, tools)
        assert "answered more than once" in caught.value.message
        assert caught.value.info().status == 400


@pytest.mark.parametrize(
    ("item", "says"),
    [
        ({"type": "mcp_approval_response", "approval_request_id": "mcpr_x", "approve": True}, "keeps no responses"),
        ({"type": "mcp_call", "server_label": "remote", "name": "echo", "arguments": "{}"}, "no 'mcp' tool"),
    ],
)
def test_conversation_refusals(item: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        rm.conversation({"input": [item]}, {"local": tool_of()})
    assert says in caught.value.message


def test_turn_body() -> None:
    b = {
        **body(),
        "stream": True,
        "max_tool_calls": 3,
        "tool_choice": {"type": "mcp", "server_label": "local", "name": "echo"},
    }
    b["tools"].append({"type": "function", "name": "mine"})
    turn = rm.turn_body(b, [{"type": "function", "name": "local__echo"}], ["x"])
    assert "stream" not in turn and "max_tool_calls" not in turn
    assert turn["tools"] == [{"type": "function", "name": "mine"}, {"type": "function", "name": "local__echo"}]
    assert turn["tool_choice"] == {"type": "function", "name": "local__echo"}
    assert turn["input"] == ["x"]
    assert b["stream"] is True  # the client's body is left as it was
    # once a tool was called, a forced choice is relaxed so the model can answer
    assert rm.turn_body(b, [], ["x"], called=True)["tool_choice"] == "auto"
    assert rm.turn_body({**b, "tool_choice": "required"}, [], [], called=True)["tool_choice"] == "auto"
    named = {"type": "function", "name": "mine"}
    assert rm.turn_body({**b, "tool_choice": named}, [], [], called=True)["tool_choice"] == "auto"
    allowed = {"type": "allowed_tools", "mode": "required", "tools": [named]}
    assert rm.turn_body({**b, "tool_choice": allowed}, [], [], called=True)["tool_choice"] == {
        **allowed,
        "mode": "auto",
    }
    assert rm.turn_body({**b, "tool_choice": "none"}, [], [], called=True)["tool_choice"] == "none"


def test_max_tool_calls() -> None:
    assert rm.max_tool_calls({}, 64) == rm.DEFAULT_MAX_TOOL_CALLS
    assert rm.max_tool_calls({"max_tool_calls": 2}, 64) == 2
    # the gateway's ceiling: a request cannot raise it
    assert rm.max_tool_calls({"max_tool_calls": 100_000}, 64) == 64
    assert rm.max_tool_calls({}, 5) == 5
    with pytest.raises(InvalidRequestError):
        rm.max_tool_calls({"max_tool_calls": 0}, 64)


def test_result_text_and_items() -> None:
    result = {
        "content": [{"type": "text", "text": "a"}, {"type": "image", "data": "..."}, {"type": "text", "text": "b"}]
    }
    assert rm.result_text(result) == "a\n[image]\nb"
    failed = rm.call_item("local", "echo", "{}", error={"type": "mcp_protocol_error", "code": 1, "message": "no"})
    assert failed["status"] == "failed" and rm.call_output(failed) == "Error: no"
    assert rm.call_item("local", "echo", "{}", output="ok")["status"] == "completed"


def frames(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for frame in raw.decode().split("\n\n"):
        if frame:
            name, data = frame.split("\n")
            parsed = json.loads(data.removeprefix("data: "))
            assert name == f"event: {parsed['type']}"
            out.append(parsed)
    return out


def test_stream_events_are_numbered_and_complete() -> None:
    s = rm.McpStream()
    call = rm.call_item("local", "echo", '{"text": "x"}', output="local: x")
    message = {
        "type": "message",
        "id": "m",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "hello", "annotations": []}],
    }
    raw = (
        s.started({"id": "r"})
        + s.item(0, rm.list_item("local", []))
        + s.call_started(1, call)
        + s.call_done(1, call)
        + s.item(2, message)
        + s.finished({"id": "r", "status": "completed"})
    )
    events = frames(raw)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.mcp_list_tools.in_progress",
        "response.mcp_list_tools.completed",
        "response.output_item.done",
        "response.output_item.added",
        "response.mcp_call.in_progress",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.mcp_call.completed",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[6]["item"]["status"] == "in_progress" and events[6]["item"]["output"] is None
    assert events[11]["item"]["output"] == "local: x"
    failed = frames(rm.McpStream().failed({"id": "r"}, "rate_limit_exceeded", "slow down", None))
    assert [e["type"] for e in failed] == ["error", "response.failed"]


def test_function_names_every_provider_takes() -> None:
    safe = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
    assert rm.function_name("local", "echo") == "local__echo"  # a safe name is kept as it is
    odd = ["docs.search", "docs/search", "docs search", "x" * 128, "y" * 128, "ü"]
    names = [rm.function_name("local", n) for n in odd]
    assert all(safe.match(n) for n in names), names
    assert len(set(names)) == len(odd)  # no two share one
    assert names[0] != rm.function_name("local", "docs_search") and names[0].startswith("local__docs_search_")
    assert rm.function_name("local", "docs.search") == names[0]  # the same on every turn
    assert safe.match(rm.function_name("a" * 60, "b"))
