"""MCP end to end: the official `mcp` SDK as the client of gatehouse's `/mcp`, gatehouse aggregating two upstream
servers written with the same SDK (`local` over stdio, launched and supervised by the mcp stage; `remote` over
Streamable HTTP): lists, calls, key policy, the guard on results, quotas, records in ClickHouse, list-changed
notifications, a stdio server killed mid-session and restarted, argument rules, approvals and agent runs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from shared import mcp_errors
from shared.periods import period_key, window_reset
from shared.subjects import Subjects
from tests.e2e.mcp_support import (
    APPROVAL_TIMEOUT_S,
    APPROVE_KEY,
    LEGACY_SECRET,
    MAIN_KEY,
    QUOTA_KEY,
    REMOTE_KEY,
    RUN_KEY,
    STRICT_KEY,
    McpStack,
    logs,
    mcp_stack,
)
from tests.mcp_servers.notes import SECRET

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def gh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpStack]:
    tmp: Path = tmp_path_factory.mktemp("mcp")
    with mcp_stack(tmp, "e2emcp") as stack:
        try:
            yield stack
        except BaseException:
            print(logs(tmp))
            raise


def text_of(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def wait_tools(gh: McpStack, want: set[str], key: str = MAIN_KEY, timeout: float = 60.0) -> set[str]:
    """The key's tool names once they include `want` (upstream sessions connect after the stack is ready)."""
    deadline = time.monotonic() + timeout
    names: set[str] = set()
    while time.monotonic() < deadline:
        try:
            async with gh.client(key) as client:
                names = {t.name for t in (await client.list_tools()).tools}
        except Exception:  # a key the ingress mirror has not learnt yet: 401
            names = set()
        if want <= names:
            return names
        await asyncio.sleep(0.3)
    raise AssertionError(f"tools never included {want - names}; saw {sorted(names)}")


async def rows(gh: McpStack, query: str, count: int, timeout: float = 30.0) -> list[list[Any]]:
    deadline = time.monotonic() + timeout
    while True:
        result = await gh.sql(query)
        assert not result.error, result.error
        if len(result.rows) >= count or time.monotonic() > deadline:
            return result.rows
        await asyncio.sleep(0.3)


async def test_tools_of_both_servers_are_listed_namespaced_and_called(gh: McpStack) -> None:
    names = await wait_tools(gh, {"local__echo", "remote__echo"})
    assert "local__write_file" not in names  # denied to this key: not even listed
    assert {"remote__write_file", "local__pid", "remote__leak"} <= names
    async with gh.client() as client:
        local = await client.call_tool("local__echo", {"text": "hi"})
        remote = await client.call_tool("remote__echo", {"text": "there"})
        assert (text_of(local), text_of(remote)) == ("local: hi", "remote: there")
        assert not local.is_error
        resources = (await client.list_resources()).resources
        assert {str(r.uri) for r in resources} >= {"local__local://readme", "remote__remote://readme"}
        read = await client.read_resource("remote__remote://readme")
        assert read.contents[0].text == "the remote readme"  # type: ignore[union-attr]
        prompts = {p.name for p in (await client.list_prompts()).prompts}
        assert {"local__greet", "remote__greet"} <= prompts
        prompt = await client.get_prompt("local__greet", {"who": "Ada"})
        assert "Ada" in prompt.messages[0].content.text  # type: ignore[union-attr]


async def test_a_tool_the_key_may_not_use_is_refused(gh: McpStack) -> None:
    await wait_tools(gh, {"local__echo"})
    async with gh.client() as client:
        with pytest.raises(MCPError) as denied:
            await client.call_tool("local__write_file", {"path": "/srv/shared/a", "text": "x"})
        # refused exactly as a name that does not exist (below): the key learns nothing of what it may not use
        assert denied.value.error.code == mcp_errors.INVALID_PARAMS
        assert denied.value.error.message == "Unknown tool 'local__write_file'."
    async with gh.client(STRICT_KEY) as client:  # allow globs: remote__* and local__echo only
        names = {t.name for t in (await client.list_tools()).tools}
        assert "local__echo" in names and "local__pid" not in names and "remote__pid" in names
        with pytest.raises(MCPError) as denied:
            await client.call_tool("local__pid", {})
        assert denied.value.error.code == mcp_errors.INVALID_PARAMS
    # the record still tells the admins it was a refusal of access
    found = await rows(
        gh, "SELECT status, error_message FROM mcp_calls WHERE tool = 'local__write_file' AND status = 'denied'", 1
    )
    assert found and "may not use" in found[0][1], found


def _raw_session(gh: McpStack, key: str) -> tuple[httpx.Client, dict[str, str]]:
    http = httpx.Client(timeout=30)
    headers = {"authorization": f"Bearer {key}", "accept": "application/json, text/event-stream"}
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    opened = http.post(gh.url, json=init, headers=headers)
    assert opened.status_code == 200, opened.text
    headers = {**headers, "mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
    assert (
        http.post(gh.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers).status_code
        == 202
    )
    return http, headers


async def test_a_forbidden_server_or_name_is_answered_exactly_as_one_that_does_not_exist(gh: McpStack) -> None:
    """No existence oracle: for every call method, a server (or tool, prompt, resource) the key may not use gets
    the same HTTP status, headers that matter and JSON-RPC error as one that does not exist, apart from the name
    the client sent itself."""
    await wait_tools(gh, {"legacy__echo", "local__pid", "remote__echo"})  # every server is up: `legacy` exists
    await wait_tools(gh, {"remote__echo"}, key=STRICT_KEY)  # and this key's catalog is warm
    http, headers = _raw_session(gh, STRICT_KEY)  # may use remote__* and local__echo only

    def answer(method: str, params: dict[str, Any], name: str) -> tuple[int, str, str]:
        reply = http.post(gh.url, json={"jsonrpc": "2.0", "id": 7, "method": method, "params": params}, headers=headers)
        body = reply.text.replace(json.dumps(name)[1:-1], "<NAME>")
        return reply.status_code, reply.headers.get("content-type", ""), body

    try:
        cases = {
            "tools/call": [  # forbidden (existing) first, then names that do not exist
                "legacy__echo", "local__pid", "nosuch__echo", "remote__nosuch", "local__nosuch", "legacy__nosuch",
            ],
            "prompts/get": ["legacy__greet", "local__greet", "nosuch__greet", "remote__nosuch"],
            "resources/read": ["legacy__legacy://readme", "local__local://readme", "nosuch__nosuch://readme"],
        }  # fmt: skip
        for method, names in cases.items():
            answers = []
            for name in names:
                if method == "resources/read":
                    params: dict[str, Any] = {"uri": name}
                else:
                    params = {"name": name, "arguments": {"text": "x"} if method == "tools/call" else {"who": "x"}}
                answers.append(answer(method, params, name))
            assert len(set(answers)) == 1, (method, list(zip(names, answers, strict=True)))
            status, content_type, body = answers[0]
            assert status == 200 and content_type.startswith("application/json")
            error = json.loads(body)["error"]
            assert error["code"] == mcp_errors.INVALID_PARAMS and error["message"].endswith("'<NAME>'."), body
        # the allowed ones still work over the same session
        ok = answer("tools/call", {"name": "remote__echo", "arguments": {"text": "x"}}, "remote__echo")
        assert ok[0] == 200 and "result" in json.loads(ok[2])
    finally:
        http.close()


async def test_a_secret_in_a_tool_result_is_redacted(gh: McpStack) -> None:
    await wait_tools(gh, {"remote__leak"})
    async with gh.client() as client:
        result = await client.call_tool("remote__leak", {})
    text = text_of(result)
    assert SECRET not in text and SECRET not in json.dumps(result.model_dump(mode="json"))
    assert "the deploy token is" in text and "keep it safe" in text


async def test_an_injection_in_a_tool_result_is_flagged_or_blocked_per_policy(gh: McpStack) -> None:
    await wait_tools(gh, {"remote__fetch_page"})
    async with gh.client() as client:  # policy mcp-flag: the result comes back, marked
        flagged = await client.call_tool("remote__fetch_page", {"url": "https://example.org"})
        assert "Ignore all previous instructions" in text_of(flagged)
        verdict = (flagged.meta or {}).get("io.gatehouse/guard")
        assert verdict is not None and verdict["action"] == "flag"
        assert any(rule.startswith("injection.") for rule in verdict["rules"])
    async with gh.client(STRICT_KEY) as client:  # policy mcp-strict: blocked
        with pytest.raises(MCPError) as blocked:
            await client.call_tool("remote__fetch_page", {"url": "https://example.org"})
        assert blocked.value.error.code == mcp_errors.GUARD_BLOCKED
        assert "injection." in blocked.value.error.message


async def window_has_room(seconds: float) -> None:
    """Wait (by the clock: the window is the clock's) until the current UTC minute has `seconds` left."""
    while window_reset(time.time()) < seconds:
        await asyncio.sleep(0.2)


async def test_calls_past_the_keys_quota_are_refused(gh: McpStack) -> None:
    await wait_tools(gh, {"local__echo"}, key=QUOTA_KEY)
    # the quota counts per UTC minute: the five calls fall in one (a minute ending after the second or third call
    # split them 2 + 3 or 3 + 2, and all five were answered)
    await window_has_room(20)
    async with gh.client(QUOTA_KEY) as one, gh.client(QUOTA_KEY, replica=1) as other:
        answered, refused = 0, []
        for i in range(5):  # alternating between the two ingress replicas: one count
            try:
                await (one if i % 2 else other).call_tool("local__echo", {"text": str(i)})
                answered += 1
            except MCPError as exc:
                refused.append(exc.error)
    assert answered == 3 and len(refused) == 2, (answered, refused)
    assert refused[0].code == mcp_errors.RATE_LIMITED and "3 tool calls per minute" in refused[0].message


async def test_every_call_is_a_record_in_clickhouse(gh: McpStack) -> None:
    await wait_tools(gh, {"remote__echo"})
    async with gh.client(headers={"x-gatehouse-tag-ticket": "T-42"}) as client:
        await client.call_tool("remote__echo", {"text": "recorded"})
        await client.call_tool("remote__leak", {})
        with pytest.raises(MCPError):
            await client.call_tool("local__write_file", {"path": "/etc/passwd", "text": "x"})
    found = await rows(
        gh,
        "SELECT server, tool, key_id, team, project, status, request_bytes, response_bytes, latency_ms, "
        "guard_action, cost_usd, tags['ticket'], guard_findings.direction FROM mcp_calls "
        "WHERE tags['ticket'] = 'T-42' ORDER BY finished_at",
        3,
    )
    assert [(r[0], r[1], r[5]) for r in found] == [
        ("remote", "remote__echo", "ok"),
        ("remote", "remote__leak", "ok"),
        ("local", "local__write_file", "denied"),
    ]
    echo, leak, denied = found
    assert (echo[2], echo[3], echo[4]) == ("mcp-main", "qa", "agents")
    assert echo[6] > 0 and echo[7] > 0 and echo[8] > 0
    assert echo[10] == pytest.approx(0.01)  # remote's price per call
    assert leak[9] == "redact" and "output" in leak[12]
    assert denied[10] == 0
    # one trace across the stages: ingress's span, the guard's, the mcp stage's
    [[trace]] = await rows(
        gh, "SELECT trace_id FROM mcp_calls WHERE tags['ticket'] = 'T-42' AND tool = 'remote__echo'", 1
    )
    spans = await rows(gh, f"SELECT name, service FROM spans WHERE trace_id = '{trace}' ORDER BY start_time", 3)
    assert [tuple(s) for s in spans] == [("ingress.mcp", "ingress"), ("guard.mcp", "guard"), ("mcp.call", "mcp")]


async def test_a_killed_stdio_server_is_restarted_mid_session(gh: McpStack) -> None:
    await wait_tools(gh, {"local__pid"})
    async with gh.client() as client:
        first = int(text_of(await client.call_tool("local__pid", {})))
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 60
        second, errors = first, []
        while second == first and time.monotonic() < deadline:
            try:
                second = int(text_of(await client.call_tool("local__pid", {})))
            except MCPError as exc:  # while it is down: a clear JSON-RPC error, not a hang
                errors.append(exc.error.code)
                await asyncio.sleep(0.2)
        assert second != first, "the stdio server was not restarted"
        assert set(errors) <= {mcp_errors.UPSTREAM_UNAVAILABLE}, errors
        assert text_of(await client.call_tool("local__echo", {"text": "back"})) == "local: back"
    listed = gh.admin("GET", "/mcp/servers").json()["data"]
    local = next(s for s in listed if s["name"] == "local")
    assert local["healthy"] and local["restarts"] >= 1 and local["tools"] >= 9


async def test_a_slow_tool_times_out_without_holding_up_other_sessions(gh: McpStack) -> None:
    await wait_tools(gh, {"remote__slow"})
    async with gh.client() as slow_client, gh.client() as other:
        slow = asyncio.create_task(slow_client.call_tool("remote__slow", {"seconds": 5}))
        started = time.monotonic()
        quick = [await other.call_tool("remote__echo", {"text": str(i)}) for i in range(3)]
        assert [text_of(r) for r in quick] == ["remote: 0", "remote: 1", "remote: 2"]
        assert not slow.done(), "the slow call should still be running while the others were answered"
        with pytest.raises(MCPError) as timed_out:
            await slow
        assert timed_out.value.error.code == mcp_errors.UPSTREAM_TIMEOUT
        assert "within 2s" in timed_out.value.error.message
        assert time.monotonic() - started < 10


async def test_list_changed_notifications_pass_through(gh: McpStack) -> None:
    await wait_tools(gh, {"remote__grow"})
    seen: list[str] = []
    changed = asyncio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            seen.append(message.method)
            changed.set()

    async with gh.client(message_handler=on_message) as client:
        await asyncio.sleep(0.5)  # let the SDK open its GET stream
        assert (text_of(await client.call_tool("remote__grow", {}))) == "grown"
        await asyncio.wait_for(changed.wait(), 20)
        assert seen[0] == "notifications/tools/list_changed"
        names = {t.name for t in (await client.list_tools()).tools}
    assert "remote__extra" in names


async def test_a_result_larger_than_the_bus_carries_is_a_clear_error(gh: McpStack) -> None:
    await wait_tools(gh, {"remote__big"})
    async with gh.client() as client:
        # past the SDK's default 1 MiB SSE event, within the gateway's 4 MiB
        assert len(text_of(await client.call_tool("remote__big", {"size": 1536 * 1024}))) == 1536 * 1024
        with pytest.raises(MCPError) as big:
            await client.call_tool("remote__big", {"size": 4 * 1024 * 1024 + 1})
        assert big.value.error.code == mcp_errors.INTERNAL_ERROR and "at most" in big.value.error.message
        assert text_of(await client.call_tool("remote__echo", {"text": "after"})) == "remote: after"


async def test_argument_rules_allow_or_deny_a_call_by_its_arguments(gh: McpStack) -> None:
    await wait_tools(gh, {"remote__transfer"})
    async with gh.client() as client:
        assert text_of(await client.call_tool("remote__transfer", {"amount": 100})) == "moved 100.0"
        with pytest.raises(MCPError) as over:
            await client.call_tool("remote__transfer", {"amount": 100.5})
        assert over.value.error.code == mcp_errors.TOOL_DENIED
        assert "transfers above 100 need a human" in over.value.error.message
        ok = await client.call_tool("remote__write_file", {"path": "/srv/shared/notes.txt", "text": "hi"})
        assert "wrote 2 characters" in text_of(ok)
        for path in ("/etc/passwd", "/srv/shared/../../etc/passwd", "/srv/sharedfolder/x"):
            with pytest.raises(MCPError) as outside:
                await client.call_tool("remote__write_file", {"path": path, "text": "x"})
            assert outside.value.error.code == mcp_errors.TOOL_DENIED, path


async def _approval_for(gh: McpStack, tool: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = gh.admin("GET", "/mcp/approvals").json()["data"]
        mine = [a for a in pending if a["tool"] == tool]
        if mine:
            return mine[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no approval for {tool} appeared")


async def test_a_call_that_needs_approval_waits_for_an_admin(gh: McpStack) -> None:
    await wait_tools(gh, {"remote__send_email"})
    async with gh.client() as client:
        # inside the allowed domain: no approval needed
        assert text_of(await client.call_tool("remote__send_email", {"to": "a@example.com", "body": "x"}))
        # approved
        call = asyncio.create_task(client.call_tool("remote__send_email", {"to": "ceo@other.org", "body": "hi"}))
        approval = await _approval_for(gh, "remote__send_email")
        assert json.loads(approval["arguments"])["to"] == "ceo@other.org" and approval["key_id"] == "mcp-main"
        assert not call.done()
        assert gh.admin("POST", f"/mcp/approvals/{approval['call_id']}/approve").status_code == 200
        assert text_of(await asyncio.wait_for(call, 20)) == "sent to ceo@other.org: hi"
        assert gh.admin("POST", f"/mcp/approvals/{approval['call_id']}/deny").status_code == 409  # decided
        # denied
        call = asyncio.create_task(client.call_tool("remote__send_email", {"to": "x@evil.test", "body": "hi"}))
        approval = await _approval_for(gh, "remote__send_email")
        denied = gh.admin("POST", f"/mcp/approvals/{approval['call_id']}/deny", {"reason": "not this one"})
        assert denied.status_code == 200
        with pytest.raises(MCPError) as refused:
            await asyncio.wait_for(call, 20)
        assert refused.value.error.code == mcp_errors.APPROVAL_DENIED
        assert "not this one" in refused.value.error.message
        # nobody decides: the call ends when the approval times out
        started = time.monotonic()
        with pytest.raises(MCPError) as expired:
            await client.call_tool("remote__send_email", {"to": "y@evil.test", "body": "hi"})
        assert expired.value.error.code == mcp_errors.APPROVAL_TIMEOUT
        assert time.monotonic() - started >= APPROVAL_TIMEOUT_S - 0.5


CARD = "4111 1111 1111 1111"  # a card number (Luhn-valid test number) the mcp-args policy redacts


async def test_an_approver_sees_and_the_upstream_gets_the_arguments_as_the_guard_redacts_them(gh: McpStack) -> None:
    await wait_tools(gh, {"remote__send_email"}, key=APPROVE_KEY)
    raw = {"to": "cfo@other.org", "body": f"token {SECRET} card {CARD}"}
    async with gh.client(APPROVE_KEY) as client:
        call = asyncio.create_task(client.call_tool("remote__send_email", raw))
        approval = await _approval_for(gh, "remote__send_email")
        shown = json.loads(approval["arguments"])
        assert shown["to"] == "cfo@other.org" and approval["key_id"] == "mcp-approve"
        assert SECRET not in approval["arguments"] and "1111" not in approval["arguments"]
        assert shown["body"] == "token <SECRET_1> card <CREDIT_CARD_1>"
        assert approval["guard"]["action"] == "redact"
        assert {f["rule"] for f in approval["guard"]["findings"]} == {"github-token", "credit_card"}
        assert gh.admin("GET", f"/mcp/approvals/{approval['call_id']}").json()["arguments"] == approval["arguments"]
        # the approvals bucket itself holds nothing of the raw arguments
        stored = [e for e in await gh.approval_entries() if approval["call_id"].encode() in e]
        assert len(stored) == 1 and SECRET.encode() not in stored[0] and b"1111" not in stored[0]
        assert json.loads(stored[0])["arguments"] == approval["arguments"]
        assert gh.admin("POST", f"/mcp/approvals/{approval['call_id']}/approve").status_code == 200
        # what runs is what the approver saw (results of this key pass unscanned: this is what the upstream got)
        result = await asyncio.wait_for(call, 20)
        assert text_of(result) == "sent to cfo@other.org: token <SECRET_1> card <CREDIT_CARD_1>"
    decided = [e for e in await gh.approval_entries() if approval["call_id"].encode() in e]
    assert SECRET.encode() not in decided[0] and b"1111" not in decided[0]
    query = (
        "SELECT status, approval, guard_action, guard_findings.rule FROM mcp_calls "
        f"WHERE call_id = '{approval['call_id']}'"
    )
    [row] = await rows(gh, query, 1)
    assert row[:3] == ["ok", "approved", "redact"] and set(row[3]) == {"github-token", "credit_card"}
    # the decision is audited with the call as the approver saw it
    audit = f"SELECT action, after FROM audit_log WHERE target_id = '{approval['call_id']}'"
    [[action, after]] = await rows(gh, audit, 1)
    assert action == "mcp_approval.approve" and json.loads(after)["arguments"] == approval["arguments"]
    assert SECRET not in after and "1111" not in after
    for log_file in (gh.stack.data_dir / "logs").glob("*.log"):
        assert SECRET not in log_file.read_text(errors="replace"), log_file.name


async def test_a_call_the_guard_blocks_is_refused_without_ever_awaiting_an_approval(gh: McpStack) -> None:
    await wait_tools(gh, {"remote__send_email"}, key=APPROVE_KEY)
    async with gh.client(APPROVE_KEY) as client:
        with pytest.raises(MCPError) as blocked:
            # the rule asks for an approval (outside example.com), the policy blocks the body: no approval is
            # created, nobody is asked, the call is refused at once
            await client.call_tool("remote__send_email", {"to": "x@evil.test", "body": "a rifle and ammunition"})
    assert blocked.value.error.code == mcp_errors.GUARD_BLOCKED and "custom.weapons" in blocked.value.error.message
    assert not [a for a in gh.admin("GET", "/mcp/approvals").json()["data"] if a["key_id"] == "mcp-approve"]
    assert not [e for e in await gh.approval_entries() if b"ammunition" in e]
    query = "SELECT status, approval, guard_action FROM mcp_calls WHERE key_id = 'mcp-approve' AND status = 'blocked'"
    assert [r[:3] for r in await rows(gh, query, 1)] == [["blocked", "", "block"]]


async def test_the_approvals_api_is_for_the_admin_key_only(gh: McpStack) -> None:
    for key in (None, MAIN_KEY, "sk-nonsense"):
        headers = {"authorization": f"Bearer {key}"} if key else {}
        r = httpx.get(f"{gh.stack.ingress_url}/admin/v1/mcp/approvals", headers=headers, timeout=10)
        assert r.status_code in (401, 403), (key, r.status_code)
        r = httpx.post(f"{gh.stack.ingress_url}/admin/v1/mcp/approvals/x/approve", headers=headers, timeout=10)
        assert r.status_code in (401, 403), (key, r.status_code)
    assert gh.admin("POST", "/mcp/approvals/no-such-call/approve").status_code == 404
    for odd in ("*", ">", "a.b", "0" * 32):
        assert gh.admin("POST", f"/mcp/approvals/{odd}/approve").status_code == 404, odd
        assert gh.admin("GET", f"/mcp/approvals/{odd}").status_code == 404, odd


async def test_agent_runs_end_with_a_clear_error(gh: McpStack) -> None:
    await wait_tools(gh, {"local__echo"}, key=RUN_KEY)
    run = f"run-{time.monotonic_ns()}"
    tagged = {"x-gatehouse-run-id": run}
    async with gh.client(RUN_KEY, headers=tagged) as client, gh.client(RUN_KEY, headers=tagged, replica=1) as peer:
        await client.call_tool("local__echo", {"text": "a"})
        await peer.call_tool("local__echo", {"text": "a"})  # the same run through the other ingress replica
        with pytest.raises(MCPError) as loop:  # the third identical call: a loop
            await client.call_tool("local__echo", {"text": "a"})
        assert loop.value.error.code == mcp_errors.RUN_LIMIT and "same arguments 3 times" in loop.value.error.message
        with pytest.raises(MCPError) as many:  # the fourth call counted; the fifth is one too many
            await client.call_tool("local__echo", {"text": "b"})
            await client.call_tool("local__echo", {"text": "c"})
        assert many.value.error.code == mcp_errors.RUN_LIMIT and "4 tool calls" in many.value.error.message
    async with gh.client(RUN_KEY, headers={"x-gatehouse-run-id": f"{run}-other"}) as client:
        assert text_of(await client.call_tool("local__echo", {"text": "a"})) == "local: a"  # another run: fresh
    # model calls of the same run count too (the chat endpoints read the same header)
    body = {"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {RUN_KEY}", "x-gatehouse-run-id": run}
    urls = [f"{base}/v1/chat/completions" for base in gh.stack.ingress_urls]
    statuses = [httpx.post(urls[i % 2], json=body, headers=headers, timeout=30) for i in range(3)]
    url = urls[0]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert statuses[2].json()["error"]["code"] == "run_limit_exceeded"
    assert "2 model calls" in statuses[2].json()["error"]["message"]
    bad = httpx.post(url, json=body, headers={**headers, "x-gatehouse-run-id": "bad id!"}, timeout=30)
    assert bad.status_code == 400


async def test_bad_requests_get_clear_errors(gh: McpStack) -> None:
    url = gh.url
    auth = {"authorization": f"Bearer {MAIN_KEY}", "accept": "application/json, text/event-stream"}
    assert httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, timeout=10).status_code == 401
    r = httpx.post(url, content=b"{not json", headers=auth, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == mcp_errors.PARSE_ERROR
    r = httpx.post(url, content=b"[" * 100_000 + b"]" * 100_000, headers=auth, timeout=10)  # absurd nesting
    assert r.status_code == 400 and r.json()["error"]["code"] == mcp_errors.PARSE_ERROR
    r = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=auth, timeout=10)
    assert r.status_code == 400  # no session
    r = httpx.post(
        url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers={**auth, "mcp-session-id": "nope"}
    )
    assert r.status_code == 404
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-03-26",
            "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}  # fmt: skip
    r = httpx.post(url, json=init, headers=auth, timeout=10)
    assert r.status_code == 200 and r.json()["result"]["protocolVersion"] == "2025-03-26"
    session = {**auth, "mcp-session-id": r.headers["mcp-session-id"]}
    other = {**session, "authorization": f"Bearer {STRICT_KEY}"}
    assert httpx.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "ping"}, headers=other).status_code == 404
    batch = [
        {"jsonrpc": "2.0", "id": 2, "method": "ping"},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 3, "method": "no/such"},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "nope"}},
    ]
    r = httpx.post(url, json=batch, headers=session, timeout=10)  # 2025-03-26 has batches
    answers = {a["id"]: a for a in r.json()}
    assert answers[2]["result"] == {} and set(answers) == {2, 3, 4}
    assert answers[3]["error"]["code"] == mcp_errors.METHOD_NOT_FOUND
    assert answers[4]["error"]["code"] == mcp_errors.INVALID_PARAMS
    big = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
           "params": {"name": "remote__echo", "arguments": {"text": "x" * (5 * 1024 * 1024)}}}  # fmt: skip
    assert httpx.post(url, json=big, headers=session, timeout=30).status_code == 413
    # a session of a later revision takes no batches
    modern = httpx.post(url, json={**init, "params": {**init["params"], "protocolVersion": "2025-11-25"}}, headers=auth)
    assert modern.json()["result"]["protocolVersion"] == "2025-11-25"
    r = httpx.post(url, json=batch, headers={**auth, "mcp-session-id": modern.headers["mcp-session-id"]})
    assert r.status_code == 400 and r.json()["error"]["code"] == mcp_errors.INVALID_REQUEST
    # a GET stream needs a session and an Accept for it
    assert httpx.get(url, headers={"authorization": f"Bearer {MAIN_KEY}"}, timeout=10).status_code == 400
    assert httpx.get(url, headers={**session, "accept": "application/json"}, timeout=10).status_code == 406
    assert httpx.delete(url, headers=session, timeout=10).status_code == 200
    assert httpx.post(url, json={"jsonrpc": "2.0", "id": 6, "method": "ping"}, headers=session).status_code == 404


def test_gatehouse_mcp_list_shows_servers_health_and_tool_counts(gh: McpStack) -> None:
    from typer.testing import CliRunner

    from gatehouse.cli import app

    runner = CliRunner()
    deadline = time.monotonic() + 60
    while True:
        out = runner.invoke(app, ["mcp", "list", "--json", "--data-dir", str(gh.stack.data_dir)])
        assert out.exit_code == 0, out.output
        servers = {row["server"]: row for row in json.loads(out.output)}
        if all(s["health"] == "up" for s in servers.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert set(servers) == {"local", "remote", "legacy"}
    assert servers["local"]["transport"] == "stdio" and servers["remote"]["transport"] == "http"
    assert servers["local"]["health"] == "up" and servers["local"]["tools"] >= 9
    assert servers["remote"]["resources"] == 1 and servers["remote"]["prompts"] == 1


async def test_a_legacy_sse_server_with_oauth_and_an_http_server_with_a_header_from_env(gh: McpStack) -> None:
    """Both demand credentials the gateway holds (an env header, an OAuth client-credentials token); the client
    never sends or sees them, and ingress's environment does not have them."""
    await wait_tools(gh, {"legacy__echo", "remote__echo"})
    async with gh.client() as client:
        assert text_of(await client.call_tool("legacy__echo", {"text": "old"})) == "legacy: old"
        assert text_of(await client.call_tool("remote__echo", {"text": "new"})) == "remote: new"
    ingress_env = next(c.env for c in gh.stack.children if c.service == "ingress")
    mcp_env = next(c.env for c in gh.stack.children if c.service == "mcp")
    assert "E2E_MCP_REMOTE_KEY" not in ingress_env and "E2E_MCP_LEGACY_SECRET" not in ingress_env
    assert mcp_env["E2E_MCP_REMOTE_KEY"] == REMOTE_KEY and mcp_env["E2E_MCP_LEGACY_SECRET"] == LEGACY_SECRET
    guard_env = next(c.env for c in gh.stack.children if c.service == "guard")
    assert "E2E_MCP_REMOTE_KEY" not in guard_env


async def test_a_tools_price_goes_into_the_keys_budget(gh: McpStack) -> None:
    """remote charges $0.01 a call; a team budget of $0.025 covers two calls, and the third is refused. The price
    is reserved like a model request's worst case and settled by accounting from the call's record: a call that
    timed out gives its reservation back, a soft budget's alerts fire on tool spend, the counters end at exactly
    the prices charged, and usage (the admin API, `gatehouse usage`) shows the spend under the team."""
    team = f"priced{time.monotonic_ns() % 10**9}"
    budgets = [
        {"amount_usd": 0.025, "period": "total"},
        {"amount_usd": 0.015, "period": "monthly", "hard": False, "alerts": [50, 100]},
    ]
    since = time.time() - 5
    assert gh.admin("POST", "/teams", {"id": team, "limits": {"budgets": budgets}}).status_code == 201
    created = gh.admin("POST", "/keys", {"team": team})
    assert created.status_code == 201, created.text
    key = created.json()["secret"]
    # the new key reached the ingress mirror, and both servers are up
    await wait_tools(gh, {"remote__echo", "remote__slow", "local__echo"}, key=key)
    subjects = Subjects(gh.stack.prefix)
    spend = subjects.spend_counter(f"team.{team}", "total")
    settled = subjects.settled_counter(f"team.{team}", "total")
    month = period_key("monthly", time.time())
    soft_spend = subjects.spend_counter(f"team.{team}", month)
    soft_settled = subjects.settled_counter(f"team.{team}", month)
    async with gh.client(key) as client:
        assert text_of(await client.call_tool("local__echo", {"text": "free"}))  # local has no price
        with pytest.raises(MCPError) as timed_out:  # reserved, then given back by the settlement: not charged
            await client.call_tool("remote__slow", {"seconds": 5})
        assert timed_out.value.error.code == mcp_errors.UPSTREAM_TIMEOUT
        await wait_counter(gh, spend, 0)
        for i in range(2):
            assert text_of(await client.call_tool("remote__echo", {"text": str(i)})) == f"remote: {i}"
        with pytest.raises(MCPError) as broke:
            await client.call_tool("remote__echo", {"text": "3"})
        assert broke.value.error.code == mcp_errors.BUDGET_EXCEEDED
        assert f"team '{team}'" in broke.value.error.message and "this tool call" in broke.value.error.message
        assert text_of(await client.call_tool("local__echo", {"text": "still free"}))
    # settled once each: the reservations moved to the price (no double count), the refused call held nothing
    for subject in (spend, settled, soft_spend, soft_settled):
        await wait_counter(gh, subject, 2 * 10_000)
    calls = await rows(gh, f"SELECT status, cost_usd FROM mcp_calls WHERE team = '{team}' AND server = 'remote'", 4)
    assert sorted(calls) == sorted([["budget", 0.0], ["timeout", 0.0], ["ok", 0.01], ["ok", 0.01]])
    # the soft budget's thresholds were crossed by tool spend alone: 50% and 100% of $0.015
    alerts = await rows(
        gh, f"SELECT threshold_pct, hard FROM budget_alerts WHERE scope = 'team.{team}' AND period = 'monthly'", 2
    )
    assert sorted(alerts) == [[50, False], [100, False]]
    hard_alerts = await rows(
        gh,
        f"SELECT threshold_pct FROM budget_alerts WHERE scope = 'team.{team}' "
        "AND period = 'total' ORDER BY threshold_pct",
        2,
    )
    assert hard_alerts == [[50], [80]]  # $0.02 of $0.025
    # usage by team: the tool spend and the calls, through the admin API and the CLI
    params = {"group_by": "team", "team": team, "since": str(since)}
    deadline = time.monotonic() + 30
    while True:
        usage = gh.admin("GET", "/usage", params=params)
        assert usage.status_code == 200, usage.text
        table = usage.json()
        got = [dict(zip(table["columns"], r, strict=True)) for r in table["rows"]]
        if (got and got[0]["tool_calls"] == 6) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    assert len(got) == 1 and got[0]["team"] == team, got
    assert got[0]["tool_calls"] == 6 and got[0]["requests"] == 0 and got[0]["cost_usd"] == pytest.approx(0.02)
    assert got[0]["errors"] == 2  # the timeout and the budget refusal
    by_api = gh.admin("GET", "/usage", params={**params, "group_by": "api"}).json()
    assert [r[0] for r in by_api["rows"]] == ["mcp"]
    from typer.testing import CliRunner

    from gatehouse.cli import app

    env = {"GATEHOUSE_ADMIN_KEY": gh.stack.admin_key_file.read_text().strip()}
    args = ["usage", "--by", "team", "--team", team, "--format", "json", "--url", gh.stack.ingress_url]
    out = CliRunner().invoke(app, args, env=env)
    assert out.exit_code == 0, out.output
    [row] = json.loads(out.output)
    assert row["team"] == team and row["cost_usd"] == pytest.approx(0.02) and row["tool_calls"] == 6


async def wait_counter(gh: McpStack, subject: str, want: int | None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := await gh.counter(subject)) != want:
        assert time.monotonic() < deadline, f"{subject} is {got}, not {want}"
        await asyncio.sleep(0.2)
