"""A stdio MCP server slower to start than connect_timeout_s comes up all the same: each connect that timed out
gives the next one more time (a child killed at the same point on every attempt never came up)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from services.mcp.upstream import Upstream
from shared.mcp_config import McpServerConfig
from shared.schemas.mcp import CatalogKind

pytestmark = pytest.mark.timeout(150)
NOTES = Path(__file__).resolve().parents[1] / "mcp_servers" / "notes.py"


async def _notify(server: str, kinds: list[CatalogKind]) -> None:
    pass


async def test_a_stdio_server_slower_to_start_than_the_connect_timeout_comes_up() -> None:
    # 3 s before the server even starts (then a Python start importing the mcp SDK: seconds on a loaded machine),
    # against a 2 s connect timeout; connects get 2, 4, 8, then 16 s
    command = ["sh", "-c", f'sleep 3 && exec "{sys.executable}" "{NOTES}" stdio slow']
    cfg = McpServerConfig(transport="stdio", command=command, connect_timeout_s=2, restart_backoff_s=0.1)
    up = Upstream("slow", cfg, {}, _notify, 1 << 20)
    task = asyncio.create_task(up.run())
    try:
        deadline = time.monotonic() + 100
        while not up.healthy:
            assert not task.done() and time.monotonic() < deadline, f"never came up: {up.error}"
            await asyncio.sleep(0.1)
        assert up.restarts >= 1 and up.connect_timeout_s > 2  # the first connects timed out, and gave more time
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
