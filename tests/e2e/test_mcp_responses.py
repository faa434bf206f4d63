"""The Responses API's `mcp` tool end to end: the official `openai` SDK calls `responses.create(tools=[{"type":
"mcp", ...}])` on gatehouse, which lists the registered server's tools, gives them to the model (the OpenAI
emulator, reached with the Responses body as it is or translated to chat), runs the model's call through its own
MCP call path (the upstream servers of tests/mcp_servers/notes.py) and turns again; plain, streamed, with the
client's approval, and refusing what it does not serve (another server URL, credentials, a server the key may not
use)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.mcp_support import MAIN_KEY, STRICT_KEY, McpStack, logs, mcp_stack
from tests.e2e.test_mcp import rows, wait_tools
from tests.emulators import openai as openai_emu
from tests.servers import serve_in_thread

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]

PROMPT = "What is the weather in Paris?"
ECHO_ONLY = {"type": "mcp", "server_label": "remote", "allowed_tools": ["echo"], "require_approval": "never"}


@pytest.fixture(scope="module")
def gh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpStack]:
    tmp: Path = tmp_path_factory.mktemp("mcpresp")
    with serve_in_thread(openai_emu.create_app()) as openai_url, mcp_stack(tmp, "e2emcpresp", openai_url) as stack:
        try:
            asyncio.run(wait_tools(stack, {"remote__echo", "legacy__echo"}))  # the HTTP upstreams
            yield stack
        except BaseException:
            print(logs(tmp))
            raise


def client(gh: McpStack, key: str = MAIN_KEY, headers: dict[str, str] | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gh.stack.ingress_url}/v1", api_key=key, max_retries=0, timeout=60, default_headers=headers
    )


@pytest.mark.parametrize("model", ["gpt-emu", "gpt-emu-chat"])
def test_sdk_mcp_tool_runs_through_the_gateway(gh: McpStack, model: str) -> None:
    ticket = f"R-{uuid.uuid4().hex[:8]}"
    with client(gh, headers={"x-gatehouse-tag-ticket": ticket}) as c:
        raw = c.responses.with_raw_response.create(model=model, input=PROMPT, tools=[ECHO_ONLY])  # type: ignore[list-item]
    response = raw.parse()
    request_id = raw.headers["x-request-id"]
    kinds = [item.type for item in response.output]
    assert kinds == ["mcp_list_tools", "mcp_call", "message"], kinds
    listed, call, message = response.output
    assert listed.type == "mcp_list_tools" and listed.server_label == "remote"
    assert [t.name for t in listed.tools] == ["echo"]  # allowed_tools kept the one tool
    assert call.type == "mcp_call" and call.server_label == "remote" and call.name == "echo"
    assert call.arguments == '{"text": "Paris"}'
    assert call.output == "remote: Paris" and call.error is None
    assert message.type == "message"
    assert "remote: Paris" in response.output_text  # the model answered from the tool's result
    assert response.status == "completed"
    assert response.tools[0].type == "mcp"  # the request's own tools echoed, not the function tools
    assert response.usage is not None and response.usage.input_tokens > 0
    # the call went through the MCP call path (its record), and each model turn is a request with its record
    calls = asyncio.run(rows(gh, f"SELECT tool, key_id, status FROM mcp_calls WHERE tags['ticket'] = '{ticket}'", 1))
    assert calls == [["remote__echo", "mcp-main", "ok"]]
    turns = asyncio.run(rows(gh, f"SELECT api, status FROM requests WHERE tags['ticket'] = '{ticket}'", 2))
    assert sorted(map(tuple, turns)) == [("responses", 200), ("responses", 200)]
    # the x-request-id the client got finds the turns and the call
    linked = f"tags['mcp_response'] = '{request_id}'"
    assert asyncio.run(rows(gh, f"SELECT count() FROM requests WHERE {linked}", 1)) == [[2]]
    assert asyncio.run(rows(gh, f"SELECT count() FROM mcp_calls WHERE {linked}", 1)) == [[1]]


def test_sdk_mcp_tool_streamed(gh: McpStack) -> None:
    with client(gh) as c:
        stream = c.responses.create(model="gpt-emu-chat", input=PROMPT, tools=[ECHO_ONLY], stream=True)  # type: ignore[call-overload]
        events: list[Any] = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for expected in (
        "response.mcp_list_tools.in_progress",
        "response.mcp_list_tools.completed",
        "response.mcp_call.in_progress",
        "response.mcp_call_arguments.done",
        "response.mcp_call.completed",
        "response.output_text.delta",
        "response.output_text.done",
    ):
        assert expected in kinds, (expected, kinds)
    assert kinds.index("response.mcp_call.completed") < kinds.index("response.output_text.delta")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert [i.type for i in final.output] == ["mcp_list_tools", "mcp_call", "message"]
    assert final.output[1].output == "remote: Paris"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert "remote: Paris" in text


def test_a_client_leaving_mid_turn_leaves_the_turn_recorded_as_closed(gh: McpStack) -> None:
    """The client closes a streamed response once the tool call is done, while the second model turn (3 s) is in
    flight: that turn is still recorded, as a client that left (499), like any request whose client left."""
    body = {"model": "gpt-emu-slow", "input": PROMPT, "tools": [ECHO_ONLY], "stream": True}
    headers = {"authorization": f"Bearer {MAIN_KEY}"}
    with httpx.Client(base_url=gh.stack.ingress_url, timeout=30) as http:
        with http.stream("POST", "/v1/responses", json=body, headers=headers) as resp:
            assert resp.status_code == 200
            request_id = resp.headers["x-request-id"]
            seen = []
            for line in resp.iter_lines():
                seen.append(line)
                if line == "event: response.mcp_call.completed":
                    break
    assert "event: response.mcp_call.completed" in seen, seen
    linked = f"tags['mcp_response'] = '{request_id}'"
    turns = asyncio.run(rows(gh, f"SELECT status, error_code FROM requests WHERE {linked} ORDER BY received_at", 2))
    assert turns == [[200, ""], [499, "client_closed_request"]], turns
    calls = asyncio.run(rows(gh, f"SELECT status FROM mcp_calls WHERE {linked}", 1))
    assert calls == [["ok"]]


def test_sdk_mcp_approval_round_trip(gh: McpStack) -> None:
    tool = {"type": "mcp", "server_label": "remote", "allowed_tools": {"tool_names": ["echo"]}}  # approval: always
    with client(gh) as c:
        first = c.responses.create(model="gpt-emu", input=PROMPT, tools=[tool])  # type: ignore[list-item]
        kinds = [i.type for i in first.output]
        assert kinds == ["mcp_list_tools", "mcp_approval_request"], kinds
        request = first.output[1]
        assert request.type == "mcp_approval_request" and request.name == "echo"
        assert request.arguments == '{"text": "Paris"}'
        # no stored responses: the request item goes back with its answer
        follow_up: list[Any] = [
            {"role": "user", "content": PROMPT},
            *[item.model_dump(exclude_none=True) for item in first.output],
            {"type": "mcp_approval_response", "approval_request_id": request.id, "approve": True},
        ]
        second = c.responses.create(model="gpt-emu", input=follow_up, tools=[tool])  # type: ignore[list-item]
        kinds = [i.type for i in second.output]
        assert kinds == ["mcp_call", "message"], kinds  # the servers were listed in the input already
        call = second.output[0]
        assert call.type == "mcp_call" and call.approval_request_id == request.id
        assert call.output == "remote: Paris"
        assert "remote: Paris" in second.output_text
        denied = [
            *follow_up[:-1],
            {"type": "mcp_approval_response", "approval_request_id": request.id, "approve": False},
        ]
        third = c.responses.create(model="gpt-emu", input=denied, tools=[tool])  # type: ignore[list-item]
        assert [i.type for i in third.output] == ["message"]
        assert "did not approve" in third.output_text


@pytest.mark.parametrize(
    ("extra", "param", "says"),
    [
        ({"server_url": "https://evil.example/mcp"}, "tools[0].server_url", "not a proxy to arbitrary URLs"),
        ({"headers": {"authorization": "Bearer x"}}, "tools[0].headers", "holds the credentials"),
        ({"connector_id": "connector_gmail"}, "tools[0].connector_id", "registered MCP servers"),
        ({"server_label": "nowhere"}, "tools[0].server_label", "No MCP server labelled 'nowhere'"),
    ],
)
def test_sdk_mcp_tool_refused(gh: McpStack, extra: dict[str, Any], param: str, says: str) -> None:
    with client(gh) as c, pytest.raises(openai.BadRequestError) as caught:
        c.responses.create(model="gpt-emu", input=PROMPT, tools=[{**ECHO_ONLY, **extra}])  # type: ignore[list-item]
    error = caught.value.body
    assert isinstance(error, dict)
    assert caught.value.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["param"] == param and says in error["message"]


def test_registered_url_is_accepted_and_key_policy_applies(gh: McpStack) -> None:
    with client(gh) as c:
        same = {**ECHO_ONLY, "server_url": gh.remote_url}
        response = c.responses.create(model="gpt-emu", input=PROMPT, tools=[same])  # type: ignore[list-item]
        assert response.output[1].type == "mcp_call" and response.output[1].output == "remote: Paris"
    # the strict key may use remote__* and local__echo only: the legacy server is not there for it
    with client(gh, STRICT_KEY) as c, pytest.raises(openai.BadRequestError) as caught:
        c.responses.create(model="gpt-emu", input=PROMPT, tools=[{**ECHO_ONLY, "server_label": "legacy"}])  # type: ignore[list-item]
    assert "No MCP server labelled 'legacy'" in str(caught.value)
