"""An upstream's lists are read whole: `nextCursor` is followed page by page (a real SDK server over stdio that pages
its tools and prompts), within the server's bounds (pages, items), and a server that repeats a cursor is an error of
that server with a clear reason, never a list cut short or a loop. A list read again after a list-changed notice
that is past the bounds takes the server down as at connect (never the old list served as if current), and a notice
for a list that did not change is not passed on."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest
from mcp import Client

from services.mcp.upstream import Notify, Upstream
from shared.mcp_config import McpServerConfig
from shared.schemas.mcp import CatalogKind, ServerCatalog

PAGED = Path(__file__).resolve().parents[2] / "mcp_servers" / "paged.py"
pytestmark = pytest.mark.timeout(120)


async def _notify(server: str, kinds: list[CatalogKind]) -> None:
    return None


def _upstream(*args: str, max_result_bytes: int = 1 << 20, notify: Notify = _notify, **cfg: int) -> Upstream:
    # a child Python that imports the MCP SDK can take well over the default 10 s to answer on a loaded machine
    config = McpServerConfig(
        transport="stdio",
        command=[sys.executable, str(PAGED), *args],
        restart_backoff_s=0.2,
        **{"connect_timeout_s": 40, **cfg},  # type: ignore[arg-type]
    )
    return Upstream("paged", config, {}, notify, max_result_bytes)


async def _until(upstream: Upstream, done: object, what: str) -> None:
    deadline = time.monotonic() + 60
    while not callable(done) or not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never happened (error: {upstream.error!r})")
        await asyncio.sleep(0.05)


async def _running(upstream: Upstream, done: object, what: str) -> ServerCatalog:
    """The upstream's catalog once `done` (while its session still runs)."""
    task = asyncio.create_task(upstream.run())
    try:
        await _until(upstream, done, what)
        return upstream.catalog()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_every_page_of_an_upstream_list_is_read() -> None:
    upstream = _upstream("250", "7")  # 36 pages of tools and of prompts
    catalog = await _running(upstream, lambda: upstream.healthy, "connecting")
    tools = [t["name"] for t in json.loads(catalog.tools)]
    prompts = [p["name"] for p in json.loads(catalog.prompts)]
    assert tools == [f"t{i:04d}" for i in range(250)]  # all of them, in order, none twice
    assert prompts == [f"p{i:04d}" for i in range(250)]


async def test_a_list_past_the_servers_bounds_is_a_clear_error_not_a_cut_list(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pages = _upstream("250", "7", max_list_pages=10)
    await _running(pages, lambda: "max_list_pages" in pages.error, "refusing a list of 36 pages")
    assert pages.error == "listing: its tools list has more than 10 pages (max_list_pages)"
    assert not pages.healthy and json.loads(pages.catalog().tools) == []
    assert any("max_list_pages" in r.getMessage() for r in caplog.records)  # logged as the server being down

    items = _upstream("250", "100", max_list_items=120)
    await _running(items, lambda: "max_list_items" in items.error, "refusing a list of 250 items")
    assert items.error == "listing: its tools list has more than 120 items (max_list_items)"


async def test_a_list_past_its_bytes_is_refused_as_its_pages_arrive(monkeypatch: pytest.MonkeyPatch) -> None:
    """A list's bytes are bounded (what the stage holds, what every ingress decodes): the reading stops at the
    page that passes the bound, not once the upstream has sent all it chose to."""
    pages: list[str | None] = []
    list_tools = Client.list_tools

    async def counted(self: Client, *args: object, **kwargs: object) -> object:
        result = await list_tools(self, *args, **kwargs)
        pages.append(result.next_cursor)
        return result

    monkeypatch.setattr(Client, "list_tools", counted)
    upstream = _upstream("250", "10", max_list_bytes=4000)  # 25 pages of ~75-byte tools: ~19 kB in all
    await _running(upstream, lambda: "max_list_bytes" in upstream.error, "refusing a list of ~19 kB")
    assert upstream.error == "listing: its tools list is larger than 4000 bytes (max_list_bytes)"
    assert not upstream.healthy and json.loads(upstream.catalog().tools) == []
    # every connect stops at the page that passes ~4 kB (the 6th): no page past it was ever asked for
    assert pages and max(int(c) for c in pages if c) <= 60, pages
    fits = _upstream("250", "10", max_list_bytes=40_000)
    catalog = await _running(fits, lambda: fits.healthy, "connecting")
    assert len(catalog.tools) <= 40_000 and len(json.loads(catalog.tools)) == 250


async def test_a_server_repeating_its_cursor_is_refused_not_followed_forever() -> None:
    upstream = _upstream("5", "2", "loop")  # every page says "again"
    await _running(upstream, lambda: "paging loop" in upstream.error, "seeing the loop")
    assert upstream.error == "listing: it repeated a cursor of its tools list (a paging loop)"
    assert not upstream.healthy


async def test_an_item_larger_than_the_gateway_passes_is_the_servers_error() -> None:
    """One item must fit in one bus message of the catalog, as a result does: a larger one is refused whole."""
    upstream = _upstream("3", "2", "fat", max_result_bytes=1000)  # descriptions of 2000 characters
    await _running(upstream, lambda: "at most 1000" in upstream.error, "refusing the fat tool")
    assert upstream.error.startswith("listing: an item of its tools list is ")
    assert not upstream.healthy


LIST_BOUND = "listing: its tools list has more than 8 items (max_list_items)"
ALL = ["tools", "resources", "resource_templates", "prompts"]


class _Notices:
    """What the stage is told of the upstream, with the upstream's state at that moment."""

    def __init__(self) -> None:
        self.upstream: Upstream | None = None
        self.seen: list[tuple[list[CatalogKind], bool, str, int]] = []

    async def __call__(self, server: str, kinds: list[CatalogKind]) -> None:
        up = self.upstream
        assert up is not None
        self.seen.append((kinds, up.healthy, up.error, len(up.listed("tools").items)))


async def test_a_list_past_its_bounds_after_a_change_takes_the_server_down() -> None:
    notices = _Notices()
    # no ping within the test: the session stays up unless the gateway ends it
    upstream = notices.upstream = _upstream("5", "100", max_list_items=8, health_interval_s=600, notify=notices)
    task = asyncio.create_task(upstream.run())
    try:
        await _until(upstream, lambda: upstream.healthy, "connecting")
        assert notices.seen == [(ALL, True, "", 5)]
        _, error = await upstream.call("tools/call", "resize", b'{"count": 20}', 10)  # 20 tools now, and a notice
        assert error is None  # the call under way finishes
        await _until(upstream, lambda: len(notices.seen) > 1, "the server going down")
        # ingress is told at once, and by then the server offers nothing: never its old five tools as if current
        assert notices.seen[1] == (ALL, False, LIST_BOUND, 0)
        assert json.loads(upstream.catalog().tools) == [] and upstream.catalog().error == LIST_BOUND
        _, refused = await upstream.call("tools/call", "t0000", b"{}", 10)
        assert refused is not None and refused.status == "unavailable"
        # the server's list comes back within bounds (and it says so): every list is read again, and it is back
        assert upstream._client is not None
        await upstream._client.call_tool("resize", {"count": 6})
        await _until(upstream, lambda: len(notices.seen) > 2, "the server coming back")
        assert notices.seen[2:] == [(ALL, True, "", 6)] and upstream.restarts == 0  # the same session all along
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_list_read_that_fails_once_after_a_change_is_read_again_without_another_notice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One timeout reading the lists after a notice takes the server down; it comes back by itself (a server that
    rarely changes its lists would otherwise stay down until its next notice)."""
    notices = _Notices()
    upstream = notices.upstream = _upstream("5", "100", health_interval_s=600, notify=notices)
    list_all = upstream._list_all
    failures: list[str] = []

    async def fails_once(client: Client, kind: CatalogKind) -> list[object]:
        if upstream.healthy and not failures and len(notices.seen) == 1:  # the first read after the notice
            failures.append(kind)
            raise TimeoutError
        return await list_all(client, kind)

    task = asyncio.create_task(upstream.run())
    try:
        await _until(upstream, lambda: upstream.healthy, "connecting")
        monkeypatch.setattr(upstream, "_list_all", fails_once)
        _, error = await upstream.call("tools/call", "resize", b'{"count": 6}', 10)  # one notice, then no more
        assert error is None
        await _until(upstream, lambda: len(notices.seen) > 2, "down, then back")
        assert failures == ["tools"]
        _, healthy, why, _ = notices.seen[1]
        assert not healthy and why.startswith("listing: ")
        assert notices.seen[2] == (ALL, True, "", 6) and upstream.restarts == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_notice_for_a_list_that_did_not_change_is_not_passed_on() -> None:
    notices = _Notices()
    upstream = notices.upstream = _upstream("5", "100", health_interval_s=600, notify=notices)
    task = asyncio.create_task(upstream.run())
    try:
        await _until(upstream, lambda: upstream.healthy, "connecting")
        connected = len(notices.seen)
        revision = upstream.revision
        for count in (b"5", b"5", b"6"):  # two notices of no change, then a change
            _, error = await upstream.call("tools/call", "resize", b'{"count": ' + count + b"}", 10)
            assert error is None
        await _until(upstream, lambda: len(upstream.listed("tools").items) == 6, "reading the changed list")
        await _until(upstream, lambda: len(notices.seen) > connected, "the change passed on")
        assert notices.seen[connected:] == [(["tools"], True, "", 6)]
        assert upstream.revision == revision + 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_session_outlives_its_health_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The liveness ping keeps a live session up (it once broke it under the test suite's warning filters)."""
    pings: list[object] = []
    send_ping = Client.send_ping

    async def counted(self: Client) -> object:
        result = await send_ping(self)
        pings.append(result)  # counted once answered
        return result

    monkeypatch.setattr(Client, "send_ping", counted)
    upstream = _upstream("5", "100", health_interval_s=0.2)
    catalog = await _running(upstream, lambda: len(pings) >= 3, "three health checks")
    assert catalog.healthy and catalog.restarts == 0
