"""Small pure parts of the MCP path: sessions, the namespaced catalog and its filter, run digests, records."""

from __future__ import annotations

import msgspec
import pytest

from services.accounting.core import MCP_CALLS, MCP_COLUMNS, event_row
from services.ingress.mcp.calls import answered
from services.ingress.mcp.catalog import ServerLists, visible
from services.ingress.mcp.runs import BadRunId, call_digest, run_id_of
from services.ingress.mcp.sessions import Sessions
from shared.directory import Directory
from shared.governance import Limits, RunLimits, Team, VirtualKey
from shared.mcp_config import split_name
from shared.schemas.chat import Caller, GuardSummary, Hold, Reservation
from shared.schemas.mcp import McpCallEvent, McpError, ServerCatalog, ToolOutcome
from shared.subjects import Subjects


def test_sessions_belong_to_their_key_and_expire_when_idle() -> None:
    sessions = Sessions(idle_s=10, max_sessions=2)
    a = sessions.open("k1", "2025-11-25", now=0)
    assert sessions.get(a.id, "k1", now=5) is a
    assert sessions.get(a.id, "k2", now=5) is None  # another key: as if unknown
    assert sessions.get(a.id, "k1", now=16) is None  # idle past 10 s
    b = sessions.open("k1", "v", now=20)
    sessions.open("k1", "v", now=21)
    sessions.open("k1", "v", now=22)  # full: the least recently seen goes
    assert sessions.get(b.id, "k1", now=22) is None and len(sessions) == 2


def test_a_closed_session_ends_its_streams() -> None:
    sessions = Sessions(idle_s=10, max_sessions=5)
    s = sessions.open("k", "v", now=0)
    queue = sessions.stream(s)
    sessions.broadcast(b"event")
    assert sessions.close(s.id) and not sessions.close(s.id)
    assert queue.get_nowait() == b"event" and queue.get_nowait() == b""


def test_catalog_names_are_namespaced_and_filtered_by_the_keys_globs() -> None:
    lists = ServerLists.of(
        ServerCatalog(
            name="fs", transport="stdio", healthy=True,
            tools=b'[{"name":"read","inputSchema":{}},{"name":"write","inputSchema":{}}]',
            resources=b'[{"name":"readme","uri":"file:///readme"}]',
        )
    )  # fmt: skip
    assert [t["name"] for t in lists.tools] == ["fs__read", "fs__write"]
    assert lists.resources[0]["uri"] == "fs__file:///readme" and split_name("fs__file:///readme") == (
        "fs",
        "file:///readme",
    )
    directory = Directory()
    directory.put(Team(id="t", limits=Limits(tools=["fs__*"], tools_deny=["*__write"])))
    directory.put(VirtualKey(id="k", team="t", sha256="0" * 64, limits=Limits(tools=["fs__read", "fs__write"])))
    ent = directory.entitlement(directory.keys["k"])
    assert [t["name"] for t in visible(lists.tools, ent)] == ["fs__read"]
    assert ent.allows_tool("fs__read") and not ent.allows_tool("fs__write") and not ent.allows_tool("web__read")


def test_run_limits_take_the_tightest_level() -> None:
    directory = Directory()
    directory.put(Team(id="t", limits=Limits(runs=RunLimits(max_tool_calls=10, loop_threshold=5))))
    directory.put(VirtualKey(id="k", team="t", sha256="0" * 64, limits=Limits(runs=RunLimits(max_tool_calls=20))))
    limits = directory.entitlement(directory.keys["k"]).run_limits(RunLimits(max_tool_calls=50, max_spend_usd=2.0))
    assert (limits.max_tool_calls, limits.loop_threshold, limits.max_spend_usd) == (10, 5, 2.0)


def test_run_ids_and_call_digests() -> None:
    assert run_id_of(None) == "" and run_id_of("agent-7_a") == "agent-7_a"
    for bad in ("a.b", "a b", "-x", "x" * 65, "a>b"):
        with pytest.raises(BadRunId):
            run_id_of(bad)
    assert call_digest("t", b'{"a":1,"b":[1,2]}') == call_digest("t", b'{ "b": [1, 2], "a": 1 }')
    assert call_digest("t", b'{"a":1}') != call_digest("u", b'{"a":1}')
    assert call_digest("t", b'{"a":1}') != call_digest("t", b'{"a":2}')


def test_an_mcp_call_event_becomes_an_mcp_calls_row() -> None:
    subjects = Subjects("t")
    event = McpCallEvent(
        event_id="e1", call_id="c1", method="tools/call", server="fs", tool="fs__read",
        caller=Caller(key_id="k", team="t", org="o"), status="ok", latency_ms=3.5, received_at=1e9,
        finished_at=1e9 + 1, cost_usd=0.25, tags={"a": "b"},
    )  # fmt: skip
    table, row, _ = event_row(subjects, subjects.events_mcp.name, msgspec.msgpack.encode(event), {})
    assert table == MCP_CALLS and len(row) == len(MCP_COLUMNS)
    named = dict(zip(MCP_COLUMNS, row, strict=True))
    assert (named["server"], named["key_id"], named["team"], named["cost_usd"]) == ("fs", "k", "t", 0.25)


def test_upstream_mcp_credentials_reach_the_mcp_stage_only() -> None:
    from gatehouse.childenv import SERVICES, service_env
    from shared.config import parse_config

    config = parse_config(
        "mcp:\n  servers:\n"
        "    crm: {transport: http, url: 'https://crm.test/mcp', headers_from_env: {X-Key: CRM_KEY},\n"
        "          oauth: {token_url: 'https://a.test/t', client_id: g, client_secret_env: CRM_SECRET}}\n"
        "    files: {transport: stdio, command: [srv], env_from: {TOKEN: FILES_TOKEN}}\n"
    )
    environ = {"CRM_KEY": "k", "CRM_SECRET": "s", "FILES_TOKEN": "t", "PATH": "/bin"}
    for service in SERVICES:
        env = service_env(service, environ, config, {})
        held = {name for name in ("CRM_KEY", "CRM_SECRET", "FILES_TOKEN") if name in env}
        assert held == ({"CRM_KEY", "CRM_SECRET", "FILES_TOKEN"} if service == "mcp" else set()), service


def test_one_key_cannot_push_out_another_keys_sessions() -> None:
    sessions = Sessions(idle_s=100, max_sessions=10, max_per_key=3)
    victim = sessions.open("victim", "v", now=0)
    for i in range(20):
        sessions.open("flood", "v", now=1 + i)
    assert sessions.get(victim.id, "victim", now=30) is victim
    assert len(sessions) == 4


def test_a_call_is_charged_only_when_its_tool_answered() -> None:
    def outcome(status: str | None, output: bool = False) -> ToolOutcome:
        error = McpError(code=-1, message="x", status=status) if status else None
        summary = GuardSummary(policy="p", action="block") if output else None
        return ToolOutcome(call_id="c", result=b"{}" if status is None else b"", error=error, guard_output=summary)

    assert answered(outcome(None))
    assert answered(outcome("upstream_error")) and answered(outcome("too_large"))
    assert answered(outcome("blocked", output=True))  # the result was blocked: the tool ran
    for status in ("blocked", "unavailable", "timeout", "error", "invalid"):
        assert not answered(outcome(status)), status


def test_an_mcp_call_record_carries_its_reservation_to_accounting() -> None:
    subjects = Subjects("t")
    hold = Hold(subject="t.ctr.spend.team.t.total", micro_usd=20_000, scope="team.t", period="total",
                period_key="total", amount_micro=1_000_000, alerts=[50], hard=True)  # fmt: skip
    reservation = Reservation(request_id="c1", amount_usd=0.02, holds=[hold], expires_at=1e9 + 60)
    event = McpCallEvent(
        event_id="e1", call_id="c1", method="tools/call", server="fs", tool="fs__read",
        caller=Caller(key_id="k", team="t"), status="ok", latency_ms=1.0, received_at=1e9, finished_at=1e9 + 1,
        cost_usd=0.02, reservation=reservation,
    )  # fmt: skip
    _, _, decoded = event_row(subjects, subjects.events_mcp.name, msgspec.msgpack.encode(event), {})
    assert isinstance(decoded, McpCallEvent) and decoded.reservation == reservation
