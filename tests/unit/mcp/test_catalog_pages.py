"""The catalog crosses the bus in answers no larger than one message: the mcp stage keeps a list too large for
the summary out of it (naming its digest) and serves it page by page; ingress puts the pages together, and reads
again when a page comes from another version of the list (it changed, or another replica sees another one)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import pytest

from services.ingress.mcp.catalog import CatalogUnavailable, Known, read_catalog
from services.mcp.app import McpStage
from services.mcp.upstream import Listed
from shared.mcp_config import McpConfig, McpServerConfig
from shared.schemas.mcp import Catalog, CatalogKind, CatalogQuery
from shared.subjects import Subjects

SUBJECTS = Subjects("unitcat")
LIMIT = 16_000


def _stage(tools: int, description: int = 300, replica: str = "r1") -> McpStage:
    servers = {n: McpServerConfig(transport="stdio", command=["true"]) for n in ("big", "small")}
    stage = McpStage(McpConfig(servers=servers), SUBJECTS, replica, 4096)
    stage.message_bytes = LIMIT
    for name, count in (("big", tools), ("small", 3)):
        upstream = stage.upstreams[name]
        upstream._client = object()  # type: ignore[assignment]  # connected, as far as the catalog goes
        items = [json.dumps({"name": f"t{i}", "description": "d" * description}).encode() for i in range(count)]
        upstream._lists["tools"] = Listed.of(items)
    return stage


def _asker(*stages: McpStage) -> tuple[list[int], Callable[[CatalogQuery], Awaitable[Catalog]]]:
    """A query answered by each stage in turn (replicas of a queue group), every answer through the bus's codec."""
    sizes: list[int] = []
    turn = [0]

    async def ask(query: CatalogQuery, replica: str) -> Catalog:
        stage = stages[turn[0] % len(stages)]
        turn[0] += 1
        if replica:  # one replica asked by name (the pages of the list its summary named)
            stage = next(s for s in stages if s.replica == replica)
        data = stage.answer(SUBJECTS.mcp_catalog.encode(query))
        sizes.append(len(data))
        return SUBJECTS.mcp_catalog.decode_reply(data)

    return sizes, ask


async def test_a_catalog_larger_than_one_message_is_paged_and_put_back_together() -> None:
    stage = _stage(400)  # ~130 kB of tools, eight times the limit
    sizes, ask = _asker(stage)
    catalog = await read_catalog(ask)
    by_name = {s.name: s for s in catalog.servers}
    assert by_name["big"].tools == stage.upstreams["big"].listed("tools").whole  # byte for byte, in order
    assert by_name["small"].tools == stage.upstreams["small"].listed("tools").whole
    assert all(not s.paged for s in catalog.servers)
    assert len(sizes) > 8 and max(sizes) <= LIMIT, sizes  # several answers, none over the limit
    summary = SUBJECTS.mcp_catalog.decode_reply(stage.answer(SUBJECTS.mcp_catalog.encode(CatalogQuery())))
    big = next(s for s in summary.servers if s.name == "big")
    assert "tools" in big.paged and big.tools == b"[]" and big.counts["tools"] == 400


async def test_a_small_catalog_is_one_answer() -> None:
    sizes, ask = _asker(_stage(10))
    catalog = await read_catalog(ask)
    assert len(sizes) == 1 and [len(json.loads(s.tools)) for s in catalog.servers] == [10, 3]


async def test_pages_from_another_version_of_a_list_are_never_mixed() -> None:
    one, other = _stage(400), _stage(401, replica="r2")  # replicas that disagree (one saw a change not yet seen)
    _, ask = _asker(one, other)
    for _ in range(4):  # summaries from each in turn: every page from the replica whose summary named it
        catalog = await read_catalog(ask)
        count = len(json.loads(next(s for s in catalog.servers if s.name == "big").tools))
        assert count == {"r1": 400, "r2": 401}[catalog.replica]
    page = one._page

    def changing(server: str, kind: CatalogKind, offset: int) -> Catalog:  # the list changes as it is paged
        answer = page(server, kind, offset)
        big = one.upstreams["big"]
        big._lists["tools"] = Listed.of([*big._lists["tools"].items, b'{"name":"more"}'])
        big.revision += 1
        return answer

    one._page = changing  # type: ignore[method-assign]
    _, ask = _asker(one)
    with pytest.raises(CatalogUnavailable, match="in 3 reads in a row: big's tools changed while it was read"):
        await read_catalog(ask)


async def test_a_page_query_for_an_unknown_server_is_a_clear_error() -> None:
    _, ask = _asker(_stage(1))
    answer = await ask(CatalogQuery(servers=["nope"], kind="tools"), "")
    assert answer.page is None and "No MCP server 'nope'" in answer.error


async def test_a_paged_list_already_held_is_not_read_again() -> None:
    stage = _stage(400)
    sizes, ask = _asker(stage)
    known: Known = {}
    first = await read_catalog(ask, known)
    pages = len(sizes)
    again = await read_catalog(ask, known)  # nothing changed: the summary alone
    assert len(sizes) == pages + 1 and again == first
    stage.upstreams["big"]._lists["tools"] = Listed.of([b'{"name":"t0","description":"' + b"e" * 5000 + b'"}'] * 4)
    stage.upstreams["big"].revision += 1
    changed = await read_catalog(ask, known)  # another version of the list: its pages are read
    assert len(sizes) > pages + 2
    assert next(s for s in changed.servers if s.name == "big").tools == stage.upstreams["big"].listed("tools").whole


def test_a_summary_is_encoded_once_per_state_of_the_servers() -> None:
    stage = _stage(400)
    query = SUBJECTS.mcp_catalog.encode(CatalogQuery())
    first = stage.answer(query)
    assert stage.answer(query) is first  # the same state: the same bytes, not encoded again
    stage.upstreams["small"]._lists["tools"] = Listed.of([b'{"name":"new"}'])
    stage.upstreams["small"].revision += 1  # what a list read again with another content does
    second = stage.answer(query)
    assert second != first and len(second) <= LIMIT
    small = next(s for s in SUBJECTS.mcp_catalog.decode_reply(second).servers if s.name == "small")
    assert small.tools == b'[{"name":"new"}]'
    stage.upstreams["small"]._broken.set()  # down: its lists leave the summary
    down = next(s for s in SUBJECTS.mcp_catalog.decode_reply(stage.answer(query)).servers if s.name == "small")
    assert not down.healthy and down.tools == b"[]"
