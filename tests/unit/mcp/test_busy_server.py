"""A slow upstream server cannot starve the stage: past its slots and its bounded waiting line, calls to it are
refused at once as busy, so the stage's workers stay free for calls to every other server."""

from __future__ import annotations

import asyncio
from typing import Any

import mcp_types as types

from services.mcp.upstream import Upstream
from shared import mcp_errors
from shared.bus import QueueWorker
from shared.mcp_config import McpServerConfig
from shared.schemas.mcp import CatalogKind, McpError


async def _notify(server: str, kinds: list[CatalogKind]) -> None:
    return None


class _FakeClient:
    """Answers tool calls like an MCP client session; `release` holds every call until it is set."""

    def __init__(self, release: asyncio.Event | None = None) -> None:
        self.release = release
        self.running = 0

    async def call_tool(self, name: str, args: dict[str, Any]) -> types.CallToolResult:
        self.running += 1
        if self.release is not None:
            await self.release.wait()
        return types.CallToolResult(content=[types.TextContent(type="text", text=f"{name} done")])


def _upstream(name: str, client: _FakeClient, **cfg: Any) -> Upstream:
    up = Upstream(name, McpServerConfig(transport="stdio", command=["x"], **cfg), {}, _notify, 1 << 20)
    up._client = client  # type: ignore[assignment]
    return up


async def _until(check: Any, what: str) -> None:
    try:
        async with asyncio.timeout(10):
            while not check():
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"waited 10 s for {what}") from None


async def test_a_flood_to_a_slow_server_is_refused_as_busy_and_other_servers_keep_flowing() -> None:
    release = asyncio.Event()
    slow_client = _FakeClient(release)
    slow = _upstream("slow", slow_client, max_concurrency=2, max_queued=2, queue_wait_s=0.2)
    fast = _upstream("fast", _FakeClient())
    upstreams = {"slow": slow, "fast": fast}
    outcomes: dict[str, list[tuple[bytes, McpError | None]]] = {"slow": [], "fast": []}

    async def handle(msg: Any) -> None:  # what the stage does with one call message
        server = msg
        outcomes[server].append(await upstreams[server].call("tools/call", "t", b"{}", 60.0))

    # the stage's worker pool, as the mcp app builds it (no on_full: a message waits for a worker slot)
    worker = QueueWorker("calls", "mcp", handle, max_concurrency=8)
    try:
        async with asyncio.timeout(10):  # without the busy refusal the 9th message waits for a slot forever
            for _ in range(24):
                await worker._on_msg("slow")  # type: ignore[arg-type]
            await worker._on_msg("fast")  # type: ignore[arg-type]
            await _until(lambda: len(outcomes["fast"]) == 1, "the fast server's call")
        assert outcomes["fast"] == [(b'{"content":[{"type":"text","text":"t done"}],"isError":false}', None)]
        # the slow server runs its 2 slots' worth; every other call was refused as busy (the 2 that waited in
        # line after their queue_wait_s)
        await _until(lambda: len(outcomes["slow"]) == 22, "the refusals")
        assert slow_client.running == 2 and slow.waiting == 0
        for result, error in outcomes["slow"]:
            assert result == b"" and error is not None
            assert error.code == mcp_errors.SERVER_BUSY and error.status == "busy" and "'slow' is busy" in error.message
        # only the calls holding a server slot hold a worker (a finished call's task leaves the worker's set in its
        # done callback, a loop iteration after its outcome is noted)
        await _until(lambda: worker.in_flight == 2, "the refused calls' workers freed")
    finally:
        release.set()
        await worker.stop()
    assert [e for _, e in outcomes["slow"]].count(None) == 2  # the two running calls finish normally


async def test_a_call_waiting_in_line_gets_the_slot_a_finished_call_frees() -> None:
    release = asyncio.Event()
    client = _FakeClient(release)
    up = _upstream("s", client, max_concurrency=1, max_queued=1, queue_wait_s=30)
    first = asyncio.create_task(up.call("tools/call", "a", b"{}", 60.0))
    await _until(lambda: client.running == 1, "the first call")
    second = asyncio.create_task(up.call("tools/call", "b", b"{}", 60.0))
    await _until(lambda: up.waiting == 1, "the second call waiting")
    # the line (1) is full: a third is refused at once
    assert (await up.call("tools/call", "c", b"{}", 60.0))[1] == mcp_errors.server_busy("s")
    release.set()
    assert (await first)[1] is None and (await second)[1] is None
    assert up.waiting == 0 and not up._slots.locked()


async def test_no_waiting_line_means_busy_as_soon_as_the_slots_are_taken() -> None:
    release = asyncio.Event()
    client = _FakeClient(release)
    up = _upstream("s", client, max_concurrency=1, max_queued=0)
    first = asyncio.create_task(up.call("tools/call", "a", b"{}", 60.0))
    await _until(lambda: client.running == 1, "the first call")
    assert (await up.call("tools/call", "b", b"{}", 60.0))[1] == mcp_errors.server_busy("s")
    release.set()
    assert (await first)[1] is None
