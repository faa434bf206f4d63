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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Client error '401 Unauthorized' for url 'http://127.0.0.1:9/mcp?api_key=SECRET123'",
            "Client error '401 Unauthorized' for url 'http://127.0.0.1:9/mcp?[redacted]'",
        ),
        (
            "to https://user:SECRET123@host.example:8443/a/b?x=1#frag",
            "to https://[redacted]@host.example:8443/a/b?[redacted]",
        ),
        (
            "at wss://host?token=SECRET123 and http://h/p#SECRET123",
            "at wss://host?[redacted] and http://h/p?[redacted]",
        ),
        ("http://SECRET123@h", "http://[redacted]@h"),
        ("no url here: SECRET123 stays", "no url here: SECRET123 stays"),
        ("plain http://h:1/mcp stays", "plain http://h:1/mcp stays"),
    ],
)
def test_urls_lose_their_userinfo_and_query_string(text: str, expected: str) -> None:
    assert upstream_module.redact_urls(text) == expected


_LEAKY = "Client error '401 Unauthorized' for url 'http://127.0.0.1:9/mcp?api_key=SECRET123'"


async def test_a_failed_session_keeps_no_credential_from_its_url(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = McpServerConfig(transport="stdio", command=["x"], restart_backoff_s=0.5)
    up = Upstream("s", cfg, {}, _notify, 1024)

    async def failing_session() -> None:
        raise RuntimeError(_LEAKY)

    async def sleep(seconds: float) -> None:
        raise asyncio.CancelledError

    monkeypatch.setattr(up, "_session", failing_session)
    monkeypatch.setattr(upstream_module.asyncio, "sleep", sleep)
    with pytest.raises(asyncio.CancelledError):
        await up.run()
    # the admin API shows `error`: the detail stays, the credential goes
    assert "SECRET123" not in up.error and "127.0.0.1:9/mcp" in up.error and "401" in up.error
    # a client calling the server meanwhile learns only that it is unavailable
    _, error = await up.call("tools/call", "t", b"{}", 1.0)
    assert error is not None and "SECRET123" not in error.message and "127.0.0.1" not in error.message
    assert "'s' is unavailable" in error.message


class _FailingClient:
    async def call_tool(self, name: str, args: dict[str, object]) -> object:
        raise RuntimeError(_LEAKY)


async def test_a_failed_call_tells_the_client_no_url_and_logs_it_redacted(caplog: pytest.LogCaptureFixture) -> None:
    cfg = McpServerConfig(transport="stdio", command=["x"])
    up = Upstream("s", cfg, {}, _notify, 1024)
    up._client = _FailingClient()  # type: ignore[assignment]
    with caplog.at_level("WARNING", logger="gatehouse.mcp.upstream"):
        _, error = await up.call("tools/call", "t", b"{}", 1.0)
    assert error is not None and error.status == "unavailable"
    assert "SECRET123" not in error.message and "127.0.0.1" not in error.message and "RuntimeError" in error.message
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "127.0.0.1:9/mcp?[redacted]" in logged and "SECRET123" not in logged


async def test_each_connect_that_timed_out_gives_the_next_one_twice_the_time_up_to_a_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server slower to start than connect_timeout_s (a cold stdio child on a loaded machine) was killed at the
    same point on every attempt; the connect time grows until it fits, and is back to the setting once up."""
    cfg = McpServerConfig(transport="stdio", command=["x"], connect_timeout_s=1, restart_backoff_s=0.5)
    up = Upstream("s", cfg, {}, _notify, 1024)
    given: list[float] = []
    starts = iter([True] * 5 + [False, True])  # times out 5 times, stays up once, times out again

    async def session() -> None:
        given.append(up.connect_timeout_s)
        if next(starts):
            raise ExceptionGroup("the SDK's task group", [TimeoutError()])
        up._sessions_up += 1  # connected; then the session broke
        raise ConnectionError("broke")

    async def sleep(seconds: float) -> None:
        if len(given) == 7:
            raise asyncio.CancelledError

    async def tell(kinds: list[CatalogKind]) -> None:
        pass

    monkeypatch.setattr(up, "_session", session)
    monkeypatch.setattr(up, "_tell", tell)
    monkeypatch.setattr(upstream_module.asyncio, "sleep", sleep)
    with pytest.raises(asyncio.CancelledError):
        await up.run()
    assert given == [1, 2, 4, 8, 8, 8, 1]
    assert up.connect_timeout_s == 2  # the last connect timed out again
