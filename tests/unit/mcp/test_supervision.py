"""The supervisor of an upstream session: reconnects (relaunches a stdio child) with exponential backoff,
capped, and starts again from the first step once a connection stayed up."""

from __future__ import annotations

import asyncio

import pytest

from services.mcp import upstream as upstream_module
from services.mcp.upstream import Upstream
from shared.mcp_config import McpServerConfig
from shared.schemas.mcp import CatalogKind


async def _notify(server: str, kinds: list[CatalogKind]) -> None:
    raise AssertionError("a session that never connected announced a change")


async def test_failures_back_off_exponentially_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = McpServerConfig(transport="stdio", command=["x"], restart_backoff_s=0.5, restart_backoff_max_s=3)
    up = Upstream("s", cfg, {}, _notify, 1024)
    delays: list[float] = []
    clock = [0.0]

    async def failing_session() -> None:
        raise OSError("the child could not start")

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        clock[0] += seconds
        if len(delays) == 6:
            raise asyncio.CancelledError

    monkeypatch.setattr(up, "_session", failing_session)
    monkeypatch.setattr(upstream_module.asyncio, "sleep", sleep)
    monkeypatch.setattr(upstream_module.time, "monotonic", lambda: clock[0])
    with pytest.raises(asyncio.CancelledError):
        await up.run()
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert up.restarts == 5 and up.error == "OSError: the child could not start" and not up.healthy


async def test_a_connection_that_stayed_up_resets_the_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = McpServerConfig(transport="stdio", command=["x"], restart_backoff_s=0.5, restart_backoff_max_s=30)
    up = Upstream("s", cfg, {}, _notify, 1024)
    delays: list[float] = []
    clock = [0.0]
    lifetimes = iter([0.0, 0.0, 0.0, 60.0, 0.0])

    async def session() -> None:
        clock[0] += next(lifetimes)  # the 4th connection lives a minute before it breaks
        raise ConnectionError("broke")

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 5:
            raise asyncio.CancelledError

    monkeypatch.setattr(up, "_session", session)
    monkeypatch.setattr(upstream_module.asyncio, "sleep", sleep)
    monkeypatch.setattr(upstream_module.time, "monotonic", lambda: clock[0])
    with pytest.raises(asyncio.CancelledError):
        await up.run()
    assert delays == [0.5, 1.0, 2.0, 0.5, 1.0]
