"""The gateway's own MCP lists are paged (an opaque cursor, `list_page_size` items a page, of what the key may see),
and the catalog behind them is read once per refresh: every request waiting for a read shares it, and its failure;
a change notice during a read leaves the catalog stale; a call's name check is a set lookup."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from services.ingress.mcp import pages
from services.ingress.mcp.catalog import BAD_CURSORS_PER_MINUTE, CatalogCache, CatalogUnavailable, CursorsLimited
from services.ingress.mcp.pages import BadCursor, encode_cursor
from shared.directory import Directory, Entitlement
from shared.governance import Limits, Team, VirtualKey
from shared.schemas.mcp import Catalog, CatalogQuery, ServerCatalog


def _items(*names: str) -> list[dict[str, Any]]:
    return [{"name": n} for n in names]


def _all(name: str) -> bool:
    return True


def _walk(items: list[dict[str, Any]], size: int, allowed: Any = _all) -> list[list[str]]:
    """Every page a client following nextCursor gets."""
    out: list[list[str]] = []
    cursor: str | None = None
    while True:
        got, cursor = pages.page(items, allowed, "name", "tools", cursor, size)
        out.append([i["name"] for i in got])
        if cursor is None:
            return out


def test_pages_hold_every_item_once_in_order() -> None:
    names = [f"s__t{i}" for i in range(10)]
    assert _walk(_items(*names), 4) == [names[0:4], names[4:8], names[8:10]]
    assert _walk(_items(*names), 5) == [names[0:5], names[5:10]]  # no empty last page
    assert _walk(_items(*names), 100) == [names]
    assert _walk([], 3) == [[]]


def test_pages_hold_only_what_the_key_may_see() -> None:
    names = [f"s__{'ok' if i % 3 == 0 else 'no'}{i}" for i in range(20)]
    seen = _walk(_items(*names), 2, lambda n: "ok" in n)
    assert seen == [["s__ok0", "s__ok3"], ["s__ok6", "s__ok9"], ["s__ok12", "s__ok15"], ["s__ok18"]]
    # a list whose visible items end before its last item: the page that takes the last of them says no more
    assert _walk(_items("s__ok0", "s__no1", "s__no2"), 1, lambda n: "ok" in n) == [["s__ok0"]]


def test_a_cursor_survives_changes_before_its_place() -> None:
    items = _items("a", "b", "c", "d", "e")
    first, cursor = pages.page(items, _all, "name", "tools", None, 2)
    assert [i["name"] for i in first] == ["a", "b"] and cursor is not None
    changed = _items("new", "b", "c", "d", "e")  # "a" went, "new" came: "b" is still the place
    nxt, _ = pages.page(changed, _all, "name", "tools", cursor, 2)
    assert [i["name"] for i in nxt] == ["c", "d"]
    grown = _items("x", "y", "a", "b", "c")
    nxt, _ = pages.page(grown, _all, "name", "tools", cursor, 2)
    assert [i["name"] for i in nxt] == ["c"]


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not base64 !",
        base64.urlsafe_b64encode(b"[1,2]").decode(),
        base64.urlsafe_b64encode(b'["tools",0,"00"]').decode(),  # no position 0
        encode_cursor("prompts", 1, "a"),  # another list's
        encode_cursor("tools", 1, "gone"),  # its place is gone
        "A" * 600,
    ],
)
def test_a_cursor_the_list_did_not_give_is_refused(cursor: str) -> None:
    with pytest.raises(BadCursor):
        pages.page(_items("a", "b", "c"), _all, "name", "tools", cursor, 2)


def test_a_cursor_on_an_item_the_key_may_not_see_is_refused_as_a_made_up_one() -> None:
    items = _items("s__open", "s__hidden", "s__other")
    hidden = encode_cursor("tools", 2, "s__hidden")  # forged: the list never gave this key a cursor there
    made_up = encode_cursor("tools", 2, "s__nothing")
    for cursor in (hidden, made_up):
        with pytest.raises(BadCursor) as refused:
            pages.page(items, lambda n: n != "s__hidden", "name", "tools", cursor, 2)
        assert str(refused.value).startswith("Invalid cursor: the list changed")
    assert pages.page(items, _all, "name", "tools", hidden, 2)[0] == [{"name": "s__other"}]  # a key that sees it


def _server(name: str, tools: list[str], healthy: bool = True) -> ServerCatalog:
    return ServerCatalog(
        name=name,
        transport="stdio",
        healthy=healthy,
        tools=json.dumps([{"name": t, "inputSchema": {}} for t in tools]).encode(),
    )


def _ent() -> Entitlement:
    directory = Directory()
    directory.put(Team(id="t"))
    directory.put(VirtualKey(id="k", team="t", sha256="0" * 64, limits=Limits()))
    return directory.entitlement(directory.keys["k"])


class _Stage:
    """An mcp stage that answers summaries (and counts them), held at a gate or failing when told."""

    def __init__(self, *servers: ServerCatalog) -> None:
        self.servers = list(servers)
        self.asked = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()
        self.fail = False

    async def ask(self, query: CatalogQuery, replica: str = "") -> Catalog:
        self.asked += 1
        # the answer is what the stage held when asked (a change after it is the next read's)
        answer = Catalog(error="stage broken") if self.fail else Catalog(servers=list(self.servers), replica="r")
        self.entered.set()
        await self.gate.wait()
        return answer


async def test_waiting_requests_share_one_read_and_its_failure() -> None:
    stage = _Stage(_server("s", ["a"]))
    stage.fail = True
    stage.gate.clear()
    cache = CatalogCache(stage.ask)  # every waiting request sees the read fail
    waiting = [asyncio.ensure_future(cache.offers("s", "tools", "s__a")) for _ in range(8)]
    await stage.entered.wait()
    stage.gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, CatalogUnavailable) for r in results), results
    assert stage.asked == 1  # one read for the eight, not one more for each after the first failed
    stage.fail = False
    assert await cache.offers("s", "tools", "s__a") is True  # the next request reads again
    assert stage.asked == 2


async def test_a_change_notice_during_a_read_leaves_the_catalog_stale() -> None:
    stage = _Stage(_server("s", ["a"]))
    cache = CatalogCache(stage.ask)
    stage.gate.clear()
    first = asyncio.ensure_future(cache.offers("s", "tools", "s__b"))
    await stage.entered.wait()
    stage.servers = [_server("s", ["a", "b"])]  # the list changes after the stage answered the read…
    cache.invalidate()  # …and the notice comes while the read is still under way
    stage.gate.set()
    assert await first is False
    assert await cache.offers("s", "tools", "s__b") is True  # read again: the notice was not lost
    assert stage.asked == 2
    assert await cache.offers("s", "tools", "s__b") is True and stage.asked == 2  # fresh now: no read


async def test_a_name_check_knows_tools_and_prompts_of_healthy_servers_only() -> None:
    prompts = ServerCatalog(name="p", transport="stdio", healthy=True, prompts=b'[{"name":"greet"}]')
    stage = _Stage(_server("s", ["a", "b"]), _server("down", ["x"], healthy=False), prompts)
    cache = CatalogCache(stage.ask)
    assert await cache.offers("s", "tools", "s__b") is True
    assert await cache.offers("s", "tools", "s__c") is False
    assert await cache.offers("s", "tools", "b") is False  # names are namespaced
    assert await cache.offers("p", "prompts", "p__greet") is True
    assert await cache.offers("p", "tools", "p__greet") is False
    assert await cache.offers("down", "tools", "down__x") is None  # a server down cannot tell
    assert await cache.offers("nope", "tools", "nope__a") is None
    assert stage.asked == 1


async def test_a_refresh_decodes_only_the_servers_whose_lists_changed() -> None:
    stage = _Stage(_server("s", ["a"]), _server("t", ["b"]))
    cache = CatalogCache(stage.ask)
    before = await cache.servers()
    stage.servers = [_server("s", ["a"]), _server("t", ["b", "c"])]
    cache.invalidate()
    after = await cache.servers()
    assert after["s"] is before["s"] and after["t"] is not before["t"]
    assert [t["name"] for t in after["t"].tools] == ["t__b", "t__c"]


async def test_the_cache_pages_every_servers_list_for_the_key() -> None:
    stage = _Stage(_server("s", [f"a{i}" for i in range(3)]), _server("t", [f"b{i}" for i in range(3)]))
    cache = CatalogCache(stage.ask)
    ent = _ent()
    first, cursor = await cache.page("tools", ent, None, 4)
    assert [t["name"] for t in first] == ["s__a0", "s__a1", "s__a2", "t__b0"]
    rest, end = await cache.page("tools", ent, cursor, 4)
    assert [t["name"] for t in rest] == ["t__b1", "t__b2"] and end is None
    with pytest.raises(BadCursor):
        await cache.page("prompts", ent, cursor, 4)


def _restricted(*globs: str) -> Entitlement:
    directory = Directory()
    directory.put(Team(id="t"))
    directory.put(VirtualKey(id="r", team="t", sha256="1" * 64, limits=Limits(tools=list(globs))))
    return directory.entitlement(directory.keys["r"])


class _Counted:
    """How many items a page checked: anchors hashed and items put to the key's globs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.anchors = 0
        self.checks = 0
        anchor, allows = pages._anchor, Entitlement.allows_tool

        def counted_anchor(identity: str) -> str:
            self.anchors += 1
            return anchor(identity)

        def counted_allows(ent: Entitlement, name: str) -> bool:
            self.checks += 1
            return allows(ent, name)

        monkeypatch.setattr(pages, "_anchor", counted_anchor)
        monkeypatch.setattr(Entitlement, "allows_tool", counted_allows)

    def reset(self) -> None:
        self.anchors = self.checks = 0


async def test_a_forged_cursor_costs_what_a_real_one_does_not_a_scan_of_the_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cursor whose anchor is not at its position was looked for in the whole list (blake2b and the key's globs on
    every item: ~125 ms of the event loop for 40,000 tools); it is found in the list's anchor index instead."""
    stage = _Stage(_server("s", [f"t{i}" for i in range(40_000)]))
    cache = CatalogCache(stage.ask)
    ent = _restricted("s__t1*")  # 11,111 of the 40,000
    first, cursor = await cache.page("tools", ent, None, 100)  # the catalog read, its index and this key's view
    assert len(first) == 100 and cursor is not None
    counted = _Counted(monkeypatch)
    forged = [
        base64.urlsafe_b64encode(json.dumps(["tools", 5, "anything"]).encode()).decode(),
        encode_cursor("tools", 5, "s__t39999"),  # a real item the key may not see, at another position
        encode_cursor("tools", 39_999, "s__t1"),  # one it may see, at another position
    ]
    for cursor_ in forged[:2]:
        with pytest.raises(BadCursor):
            await cache.page("tools", ent, cursor_, 100)
    moved, _ = await cache.page("tools", ent, forged[2], 3)
    assert [t["name"] for t in moved] == ["s__t10", "s__t11", "s__t12"]  # right after s__t1, wherever it is
    nxt, _ = await cache.page("tools", ent, cursor, 100)  # a real cursor, the next page
    assert nxt[0]["name"] == "s__t189" and len(nxt) == 100  # after s__t1, s__t10…19 and s__t100…188
    # four pages, none of which checked more than its cursor's item: no scan of the list, nor of what the key sees
    assert counted.anchors <= 8 and counted.checks <= 8, (counted.anchors, counted.checks)


async def test_a_key_sending_invalid_cursors_is_rate_limited_until_the_next_minute() -> None:
    stage = _Stage(_server("s", ["a", "b", "c"]))
    cache = CatalogCache(stage.ask)
    ent, other = _restricted("s__*"), _ent()
    now = 1_000_040.0  # 20 s into a minute
    _, good = await cache.page("tools", ent, None, 1, now=now)
    assert good is not None
    for _ in range(BAD_CURSORS_PER_MINUTE):
        with pytest.raises(BadCursor):
            await cache.page("tools", ent, encode_cursor("tools", 1, "gone"), 1, now=now)
    with pytest.raises(CursorsLimited, match="try again in 40s"):
        await cache.page("tools", ent, good, 1, now=now)  # a good cursor too: the key is refused before any lookup
    assert (await cache.page("tools", ent, None, 1, now=now))[0] == [{"name": "s__a", "inputSchema": {}}]
    assert (await cache.page("tools", other, good, 1, now=now))[0] == [{"name": "s__b", "inputSchema": {}}]
    assert (await cache.page("tools", ent, good, 1, now=now + 40))[0] == [{"name": "s__b", "inputSchema": {}}]
