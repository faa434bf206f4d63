"""mcp replicas that hold different versions of a list (each holds its own upstream sessions: a stdio child that
orders its list its own way, a list scoped per session, a refresh not yet done), on a real nats-server: ingress
reads a large list's pages from the replica whose summary named them, so the catalog is read whole however many
replicas disagree; and when a read still fails, ingress keeps serving the last catalog it read whole (marked stale)
instead of failing every list call."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
import pytest
from nats.aio.client import Client

from gatehouse.natsserver import NatsServer
from services.ingress.mcp import catalog as catalog_module
from services.ingress.mcp.catalog import CatalogCache, CatalogUnavailable, read_catalog
from services.mcp.app import McpStage
from services.mcp.upstream import Listed
from shared.bus import QueueWorker
from shared.directory import Directory, Entitlement
from shared.governance import Limits, Team, VirtualKey
from shared.mcp_config import McpConfig, McpServerConfig
from shared.schemas.mcp import Catalog, CatalogQuery
from shared.subjects import Subjects

LIMIT = 16_000
TOOLS = 400  # ~130 kB: eight pages or more of 16 kB


def _stage(subjects: Subjects, replica: str, order: list[int]) -> McpStage:
    """A replica whose server lists the same tools as the others, in its own order."""
    config = McpConfig(servers={"big": McpServerConfig(transport="stdio", command=["true"])})
    stage = McpStage(config, subjects, replica, 4096)
    stage.message_bytes = LIMIT
    upstream = stage.upstreams["big"]
    upstream._client = object()  # type: ignore[assignment]  # connected, as far as the catalog goes
    upstream._lists["tools"] = Listed.of(
        [json.dumps({"name": f"t{i}", "description": "d" * 300}).encode() for i in order]
    )
    return stage


def _entitlement() -> Entitlement:
    directory = Directory()
    directory.put(Team(id="t"))
    directory.put(VirtualKey(id="k", team="t", sha256="0" * 64, limits=Limits()))
    return directory.entitlement(directory.keys["k"])


@asynccontextmanager
async def _replicas(url: str, *stages: McpStage) -> AsyncIterator[tuple[Client, dict[str, list[QueueWorker]]]]:
    """The stages' catalog subscriptions on the bus (as the mcp app starts them, by replica), and a connection."""
    nc = await nats.connect(url)
    workers = {stage.replica: stage.catalog_workers() for stage in stages}
    try:
        for worker in (w for ws in workers.values() for w in ws):
            await worker.start(nc)
        yield nc, workers
    finally:
        for worker in (w for ws in workers.values() for w in ws):
            await worker.stop()
        await nc.close()


def _ask(nc: Client, subjects: Subjects, asked: list[str]) -> catalog_module.Ask:
    """What ingress asks the catalog with (services/ingress/app.py `catalog`): the queue group, or one replica."""

    async def ask(query: CatalogQuery, replica: str) -> Catalog:
        subject = subjects.mcp_catalog_at(replica) if replica else subjects.mcp_catalog
        answer = subject.decode_reply((await nc.request(subject.name, subject.encode(query), timeout=10)).data)
        asked.append(answer.replica)
        return answer

    return ask


async def test_a_list_is_read_whole_though_replicas_order_it_differently(
    nats_server: NatsServer, subjects: Subjects
) -> None:
    forward, backward = list(range(TOOLS)), list(reversed(range(TOOLS)))
    stages = [
        _stage(subjects, f"mcp-{n}", order) for n, order in enumerate([forward, backward, forward[::2] + forward[1::2]])
    ]
    async with _replicas(nats_server.url, *stages) as (nc, workers):
        asked: list[str] = []
        ask = _ask(nc, subjects, asked)
        for _ in range(6):  # each read: a summary from any replica, then eight pages or more
            del asked[:]
            catalog = await read_catalog(ask)
            assert len(asked) > 8 and set(asked) == {catalog.replica}, asked  # every page from the summary's replica
            stage = next(s for s in stages if s.replica == catalog.replica)
            assert catalog.servers[0].tools == stage.upstreams["big"].listed("tools").whole  # that replica's version
        # the cache's refreshes ask the replica its last read came from: its list is not paged and decoded again
        del asked[:]
        cache = CatalogCache(ask, ttl_s=0)  # every request reads again
        first = await cache.servers()
        paged = len(asked)
        for _ in range(6):
            assert (await cache.servers())["big"] is first["big"]  # not decoded again
        assert len(asked) == paged + 6 and set(asked) == {cache.replica}, asked  # a summary each, from one replica
        gone = cache.replica
        for worker in workers[gone]:  # that replica goes away (a restart): any other answers
            await worker.stop()
        moved = await cache.servers()
        assert cache.replica != gone and len(moved["big"].tools) == TOOLS
        # a replica answers on its own subject, whatever its name (a hostname-pid, or any text)
        odd = _stage(subjects, "host.with spaces*>", forward)
    async with _replicas(nats_server.url, odd) as (nc, _):
        answer = await _ask(nc, subjects, [])(CatalogQuery(servers=["big"], kind="tools"), "host.with spaces*>")
        assert answer.replica == "host.with spaces*>" and answer.page is not None and answer.page.total == TOOLS


async def test_a_failed_read_serves_the_last_catalog_read_whole(
    nats_server: NatsServer, subjects: Subjects, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = _stage(subjects, "mcp-0", list(range(TOOLS)))
    async with _replicas(nats_server.url, stage) as (nc, _):
        cache = CatalogCache(_ask(nc, subjects, []), ttl_s=0)  # every request reads again
        before = await cache.servers()
        assert len(before["big"].tools) == TOOLS
        # the list changes under every page from now on: no read can be whole
        page = stage._page

        def changing(server: str, kind: str, offset: int) -> Catalog:
            upstream = stage.upstreams["big"]
            answer = page(server, kind, offset)  # type: ignore[arg-type]
            upstream._lists["tools"] = Listed.of([*upstream._lists["tools"].items, b'{"name":"more"}'])
            upstream.revision += 1
            return answer

        monkeypatch.setattr(stage, "_page", changing)
        with pytest.raises(CatalogUnavailable):
            await read_catalog(_ask(nc, subjects, []))  # what the cache's read now meets
        with caplog.at_level(logging.WARNING, "gatehouse.ingress.mcp"):
            items, cursor = await cache.page("tools", _entitlement(), None, 5)
        assert [i["name"] for i in items] == [f"big__t{i}" for i in range(5)] and cursor is not None
        assert cache.stale and await cache.offers("big", "tools", "big__t399") is True
        assert any("serving the last one read" in r.getMessage() for r in caplog.records)
        monkeypatch.setattr(stage, "_page", page)  # the list holds still again: the next read is whole
        after = await cache.servers()
        assert not cache.stale and len(after["big"].tools) > TOOLS
        # a catalog too old is not served: the failure is the client's again
        monkeypatch.setattr(stage, "_page", changing)
        with pytest.raises(CatalogUnavailable):
            await read_catalog(_ask(nc, subjects, []))
        monkeypatch.setattr(catalog_module, "CATALOG_MAX_STALE_S", 0.0)
        with pytest.raises(CatalogUnavailable):
            await cache.servers()
