"""The Responses `mcp` tool loop's decisions, with scripted model turns (Responses JSON, as ingress answers a turn)
and a recording call path: the call cap, a call that needs the client's approval, a model turn that fails
mid-stream, a client function call ending the loop. The real call path and catalog are covered end to end
(tests/e2e/test_mcp_responses.py)."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.responses import JSONResponse, Response

from services.ingress.mcp.calls import CallContext
from services.ingress.mcp.responses_loop import Plan, ResponsesMcp
from services.ingress.surfaces import responses_mcp as rm
from shared.config import hash_key, parse_config
from shared.directory import Directory, Entitlement
from shared.errors import InvalidRequestError, ServiceUnavailableError
from shared.mcp_config import McpConfig

ECHO = rm.ServerTool("local", "echo", None, {"type": "object"}, None)


class Calls:
    def __init__(self) -> None:
        self.made: list[dict[str, Any]] = []

    async def call(self, ctx: CallContext, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.made.append(params)
        return {"content": [{"type": "text", "text": f"echoed {params['arguments']['text']}"}]}


def call_turn(n: int, name: str = "local__echo") -> dict[str, Any]:
    call = {"type": "function_call", "id": f"fc_{n}", "call_id": f"call_{n}", "name": name}
    return {"output": [{**call, "arguments": json.dumps({"text": str(n)})}], "usage": {"input_tokens": 3}}


ANSWER = {
    "status": "completed",
    "output": [{"type": "message", "id": "m", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]}],
    "usage": {"input_tokens": 2, "output_tokens": 1, "total_tokens": 3},
}


class Turns:
    """Answers each turn from a script; records the bodies it was sent."""

    def __init__(self, *answers: Response | dict[str, Any]) -> None:
        self.answers = list(answers)
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, raw: bytes) -> Response:
        self.bodies.append(json.loads(raw))
        answer = self.answers.pop(0)
        return answer if isinstance(answer, Response) else JSONResponse(answer)


def plan(approval: str = "never", max_calls: int = 20, stream: bool = False) -> Plan:
    tool = rm.McpTool("local", approval=approval)
    body: dict[str, Any] = {"model": "m", "input": "hi", "tools": [{"type": "mcp", "server_label": "local"}]}
    if stream:
        body["stream"] = True
    ctx = CallContext(ent=Entitlement.__new__(Entitlement))  # the recording call path never reads it
    return Plan(body, {"local": tool}, {"local": [ECHO]}, {}, rm.conversation(body, {"local": tool}), max_calls, ctx)


def loop(calls: Calls) -> ResponsesMcp:
    return ResponsesMcp(McpConfig(), None, calls, 1_000_000)  # type: ignore[arg-type]


def serve(p: Plan, turns: Turns, calls: Calls) -> Response:
    return asyncio.run(loop(calls).serve(p, turns, "req"))


def test_calls_run_and_the_answer_ends_the_loop() -> None:
    calls, turns = Calls(), Turns(call_turn(1), call_turn(2), ANSWER)
    response = json.loads(bytes(serve(plan(), turns, calls).body))
    assert [i["type"] for i in response["output"]] == ["mcp_list_tools", "mcp_call", "mcp_call", "message"]
    assert [c["arguments"] for c in calls.made] == [{"text": "1"}, {"text": "2"}]
    assert response["output"][2]["output"] == "echoed 2" and response["status"] == "completed"
    assert response["usage"]["input_tokens"] == 8  # every turn's usage
    # the last turn saw both calls and their outputs, with the mcp tool given as a function tool
    last = turns.bodies[-1]
    assert [i.get("type") for i in last["input"][1:]] == ["function_call", "function_call_output"] * 2
    assert last["tools"] == [{"type": "function", "name": "local__echo", "parameters": {"type": "object"}}]


def test_the_call_cap_makes_the_response_incomplete() -> None:
    calls, turns = Calls(), Turns(call_turn(1), call_turn(2), ANSWER)
    response = json.loads(bytes(serve(plan(max_calls=1), turns, calls).body))
    assert len(calls.made) == 1 and len(turns.bodies) == 2
    assert response["status"] == "incomplete" and response["incomplete_details"] == {"reason": "max_tool_calls"}


def test_a_call_needing_approval_ends_the_response_with_a_request() -> None:
    calls, turns = Calls(), Turns(call_turn(1))
    response = json.loads(bytes(serve(plan(approval="always"), turns, calls).body))
    assert calls.made == []
    assert [i["type"] for i in response["output"]] == ["mcp_list_tools", "mcp_approval_request"]
    assert response["output"][1]["arguments"] == '{"text": "1"}'


def test_a_client_function_call_is_handed_back() -> None:
    calls, turns = Calls(), Turns(call_turn(1, name="my_function"))
    response = json.loads(bytes(serve(plan(), turns, calls).body))
    assert calls.made == [] and response["output"][-1]["name"] == "my_function"


def test_a_failed_turn_is_the_answer_or_ends_the_stream() -> None:
    refused = JSONResponse({"error": {"message": "slow down", "type": "rate_limit_error", "code": None}}, 429)
    plain = serve(plan(), Turns(call_turn(1), refused), Calls())
    assert plain.status_code == 429

    async def streamed() -> list[dict[str, Any]]:
        refused_again = JSONResponse({"error": {"message": "slow down", "type": "rate_limit_error"}}, 429)
        response = await loop(Calls()).serve(plan(stream=True), Turns(call_turn(1), refused_again), "req")
        chunks = [c async for c in response.body_iterator]  # type: ignore[attr-defined]
        raw = b"".join(c if isinstance(c, bytes) else c.encode() for c in chunks).decode()
        return [json.loads(f.split("data: ", 1)[1]) for f in raw.split("\n\n") if f]

    events = asyncio.run(streamed())
    kinds = [e["type"] for e in events]
    assert kinds[-2:] == ["error", "response.failed"]
    assert "response.mcp_call.completed" in kinds
    assert events[-1]["response"]["error"] == {"code": "rate_limit_error", "message": "slow down"}


def test_a_conversation_past_the_body_limit_is_a_413_not_a_bus_failure() -> None:
    small = ResponsesMcp(McpConfig(), None, Calls(), 300)  # type: ignore[arg-type]
    turns = Turns(call_turn(1), ANSWER)
    response = asyncio.run(small.serve(plan(), turns, "req"))
    assert response.status_code == 413 and len(turns.bodies) == 1  # the second turn was never sent
    assert "past the gateway's limit of 300 bytes" in json.loads(bytes(response.body))["error"]["message"]


def test_an_approved_call_runs_once_and_where_its_approval_is() -> None:
    tool = rm.McpTool("local", approval="always")
    request = {"type": "mcp_approval_request", "id": "mcpr_1", "server_label": "local", "name": "echo"}
    request["arguments"] = '{"text": "1"}'
    approve = {"type": "mcp_approval_response", "approval_request_id": "mcpr_1", "approve": True}
    later = {"type": "message", "role": "user", "content": "and now?"}
    ran = {**request, "type": "mcp_call", "id": "mcp_x", "output": "echoed 1", "approval_request_id": "mcpr_1"}

    def served(items: list[dict[str, Any]]) -> tuple[Calls, Turns]:
        body: dict[str, Any] = {"model": "m", "tools": [{"type": "mcp", "server_label": "local"}], "input": items}
        p = Plan(body, {"local": tool}, {"local": [ECHO]}, {}, rm.conversation(body, {"local": tool}), 20, plan().ctx)
        calls, turns = Calls(), Turns(ANSWER)
        assert serve(p, turns, calls).status_code == 200
        return calls, turns

    # the approval answered (with a later message after it): the call runs once, its output where the approval is
    calls, turns = served([{"type": "message", "role": "user", "content": "hi"}, request, approve, later])
    assert calls.made == [{"name": "local__echo", "arguments": {"text": "1"}}]
    sent = turns.bodies[0]["input"]
    assert [i.get("type") for i in sent] == ["message", "function_call", "function_call_output", "message"]
    assert sent[-1] == {"type": "message", "role": "user", "content": "and now?"}
    # the whole conversation sent back, with the call that approval gave: nothing runs again
    calls, turns = served([{"role": "user", "content": "hi"}, request, approve, ran, later])
    assert calls.made == []


def test_a_forced_tool_choice_is_relaxed_after_a_call_so_the_loop_ends() -> None:
    p = plan()
    p.body["tool_choice"] = "required"
    calls, turns = Calls(), Turns(call_turn(1), ANSWER)
    response = json.loads(bytes(serve(p, turns, calls).body))
    assert [b["tool_choice"] for b in turns.bodies] == ["required", "auto"]
    assert response["status"] == "completed" and response["tool_choice"] == "required"  # the request's own


def test_approved_calls_count_against_the_cap_which_a_request_cannot_raise() -> None:
    tool = {"type": "mcp", "server_label": "local"}
    items: list[dict[str, Any]] = [{"type": "message", "role": "user", "content": "hi"}]
    for k in range(3):
        request = {"type": "mcp_approval_request", "id": f"r{k}", "server_label": "local", "name": "echo"}
        items += [{**request, "arguments": "{}"}, {"type": "mcp_approval_response", "approval_request_id": f"r{k}"}]
        items[-1]["approve"] = True
    config = McpConfig.model_validate(
        {"servers": {"local": {"transport": "http", "url": "http://127.0.0.1:9/mcp"}}, "responses_max_tool_calls": 2}
    )
    capped = ResponsesMcp(config, Catalog({"local": Lists(True, [{"name": "local__echo"}])}), Calls(), 1_000_000)  # type: ignore[arg-type]
    body = {"model": "m", "tools": [tool], "input": items, "max_tool_calls": 100_000}
    with pytest.raises(InvalidRequestError) as refused:
        asyncio.run(capped.plan(body, key_ctx("tools: ['local__*']")))
    assert refused.value.info().status == 400 and "more than the 2" in refused.value.message
    # within the cap they run, and count: a cap of 3 leaves no call for the model
    p = plan(max_calls=3)
    body["max_tool_calls"] = 3
    p = Plan(body, p.tools, p.server_tools, {}, rm.conversation(body, p.tools), 3, p.ctx)
    calls, turns = Calls(), Turns(call_turn(9), ANSWER)
    calls.call = _no_text(calls)  # type: ignore[method-assign]
    response = json.loads(bytes(serve(p, turns, calls).body))
    assert len(calls.made) == 3 and len(turns.bodies) == 1
    assert response["status"] == "incomplete" and response["incomplete_details"] == {"reason": "max_tool_calls"}


def _no_text(calls: Calls) -> Any:
    async def call(ctx: CallContext, method: str, params: dict[str, Any]) -> dict[str, Any]:
        calls.made.append(params)
        return {"content": [{"type": "text", "text": "done"}]}

    return call


@dataclass
class Lists:
    """What the loop reads of a server's catalog entry."""

    healthy: bool
    tools: list[dict[str, Any]]


class Catalog:
    def __init__(self, servers: dict[str, Lists]) -> None:
        self._servers = servers

    async def servers(self) -> dict[str, Lists]:
        return self._servers


def key_ctx(limits: str) -> CallContext:
    config = parse_config(f"keys:\n  - {{id: k, sha256: {hash_key('sk-k')}, {limits}}}\n")
    directory = Directory.with_static({k.id: k for k in config.keys})
    return CallContext(ent=directory.entitlement(directory.static["k"]))


def test_a_label_the_key_may_not_see_always_gets_the_unknown_label_answer() -> None:
    """A key that may use `local` only: `secret` (forbidden to it, down, or without tools) is answered exactly as a
    label that does not exist, whatever else its tool says; `local` down or empty is shown as such."""
    config = McpConfig.model_validate(
        {
            "servers": {
                "local": {"transport": "http", "url": "http://127.0.0.1:9/mcp"},
                "secret": {"transport": "http", "url": "https://secret.internal/mcp"},
            }
        }
    )
    ctx = key_ctx("tools: ['local__*']")

    def answer(label: str, secret: Lists, local: Lists | None = None, **extra: Any) -> str:
        catalog = Catalog({"secret": secret, "local": local or Lists(True, [{"name": "local__echo"}])})
        body = {"model": "m", "input": "hi", "tools": [{"type": "mcp", "server_label": label, **extra}]}
        try:
            asyncio.run(ResponsesMcp(config, catalog, Calls(), 10**6).plan(body, ctx))  # type: ignore[arg-type]
        except InvalidRequestError as exc:
            info = exc.info()
            return f"{info.status} {info.param} {info.message.replace(label, '<label>')}"
        return "planned"

    up = Lists(True, [{"name": "secret__x"}])
    unknown = answer("nosuch", up)
    assert unknown.startswith("400 tools[0].server_label No MCP server labelled '<label>'")
    for secret in (up, Lists(False, []), Lists(True, [])):
        assert answer("secret", secret) == unknown
        assert answer("secret", secret, server_url="https://x") == unknown
        assert answer("secret", secret, server_url="https://secret.internal/mcp") == unknown
        assert answer("secret", secret, headers={"a": "b"}) == unknown
        assert answer("nosuch", secret, server_url="https://x") == unknown
    # the key's own server, down or without tools, is no secret to it
    assert answer("local", up, local=Lists(False, [])) == "planned"
    assert answer("local", up, local=Lists(True, [])) == "planned"
    assert "server_url" in answer("local", up, server_url="https://x")


def test_a_tool_name_a_provider_refuses_is_given_a_safe_function_name_and_mapped_back() -> None:
    dotted = rm.ServerTool("local", "docs.search/v2", None, {"type": "object"}, None)
    p = plan()
    p = Plan(p.body, p.tools, {"local": [dotted]}, {}, p.conversation, 20, p.ctx)
    function = rm.function_name("local", "docs.search/v2")
    turns, calls = Turns(call_turn(1, name=function), ANSWER), Calls()
    response = json.loads(bytes(serve(p, turns, calls).body))
    assert [t["name"] for t in turns.bodies[0]["tools"]] == [function]
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", function)
    assert [c["name"] for c in calls.made] == ["local__docs.search/v2"]  # the call path gets the real name
    call = response["output"][1]
    assert (call["type"], call["name"]) == ("mcp_call", "docs.search/v2")
    assert turns.bodies[1]["input"][1]["name"] == function  # the history replays it under the same name


def test_an_approved_call_of_a_server_that_is_down_is_a_503_not_a_400() -> None:
    config = McpConfig.model_validate({"servers": {"local": {"transport": "http", "url": "http://127.0.0.1:9/mcp"}}})
    request = {"type": "mcp_approval_request", "id": "r", "server_label": "local", "name": "echo", "arguments": "{}"}
    items = [request, {"type": "mcp_approval_response", "approval_request_id": "r", "approve": True}]
    body = {"model": "m", "tools": [{"type": "mcp", "server_label": "local"}], "input": items}
    down = ResponsesMcp(config, Catalog({"local": Lists(False, [])}), Calls(), 10**6)  # type: ignore[arg-type]
    with pytest.raises(ServiceUnavailableError) as refused:
        asyncio.run(down.plan(body, key_ctx("tools: ['local__*']")))
    assert refused.value.info().status == 503 and "unavailable right now" in refused.value.message
