"""A tool call whose client leaves while the mcp stage runs it (a Responses `mcp` loop inside a stream the server
cancels on disconnect), through ingress's call path and the guard's handlers on a real nats-server: the call's
record says client_closed, not ok; one waiting for an admin's approval ends then, its entry withdrawn."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from gatehouse.natsserver import NatsServer
from shared import mcp_errors
from shared.config import hash_key
from shared.schemas.mcp import McpCallEvent, ToolCall
from tests.unit.mcp.guard_rig import guard_rig

CONFIG = f"""
keys:
  - {{id: k, sha256: {hash_key("sk-k")}}}
mcp:
  servers:
    docs: {{transport: http, url: "http://127.0.0.1:9/mcp", timeout_s: 60}}
  rules:
    - {{tools: ["docs__send"], action: approve}}
"""


def _never(call: ToolCall) -> bytes:
    raise RuntimeError("the stand-in mcp stage never answers: the call stays in flight")


def _recording(rig: Any) -> list[McpCallEvent]:
    """The call records the rig's calls publish, as they are published."""
    recorded: list[McpCallEvent] = []
    publish = rig.calls._events.publish

    def note(subject: Any, event: Any, key: str) -> None:
        recorded.append(event)
        publish(subject, event, key)

    rig.calls._events.publish = note
    return recorded


async def test_a_call_whose_client_left_is_recorded_as_client_closed(nats_server: NatsServer, tmp_path: Path) -> None:
    async with guard_rig(nats_server.url, tmp_path, CONFIG, _never) as rig:
        recorded = _recording(rig)
        call = asyncio.create_task(rig.calls.call(rig.ctx, "tools/call", {"name": "docs__search", "arguments": {}}))
        deadline = time.monotonic() + 10
        while not rig.upstream and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert rig.upstream, "the call never reached the mcp stage"
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        [event] = recorded
        assert (event.status, event.error_code, event.cost_usd) == ("client_closed", mcp_errors.CLIENT_CLOSED, 0.0)


async def test_a_call_waiting_for_its_approval_ends_when_its_client_leaves(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with guard_rig(nats_server.url, tmp_path, CONFIG, _never) as rig:
        recorded = _recording(rig)
        call = asyncio.create_task(rig.calls.call(rig.ctx, "tools/call", {"name": "docs__send", "arguments": {}}))
        await rig.pending()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(call), 10)  # not the 300 s approval timeout
        [event] = recorded
        assert (event.status, event.error_code) == ("client_closed", mcp_errors.CLIENT_CLOSED)
        assert await rig.approvals.pending() == [] and not rig.upstream  # withdrawn: nobody can approve it now
