"""What a key sees of the upstream servers: every server's lists from the mcp stage (cached, refreshed when a
server's lists change), namespaced `<server>__<name>` and filtered by the key's tool globs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from shared.directory import Entitlement
from shared.mcp_config import namespaced
from shared.schemas.mcp import Catalog, CatalogQuery, ServerCatalog

_LIST = msgspec.json.Decoder(list[dict[str, Any]])
# a catalog is asked for again after this long even without a change notice (a missed notice, a restart)
CATALOG_TTL_S = 5.0

Ask = Callable[[CatalogQuery], Awaitable[Catalog]]


def _named(items: list[dict[str, Any]], server: str, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{**item, **{f: namespaced(server, str(item[f])) for f in fields if f in item}} for item in items]


class ServerLists(msgspec.Struct, frozen=True, kw_only=True):
    """One server's lists, decoded and namespaced."""

    name: str
    healthy: bool
    error: str
    restarts: int
    tools: list[dict[str, Any]]
    resources: list[dict[str, Any]]
    resource_templates: list[dict[str, Any]]
    prompts: list[dict[str, Any]]

    @classmethod
    def of(cls, server: ServerCatalog) -> ServerLists:
        n = server.name
        return cls(
            name=n,
            healthy=server.healthy,
            error=server.error,
            restarts=server.restarts,
            tools=_named(_LIST.decode(server.tools), n, ("name",)),
            # a resource is read by its URI: the URI carries the namespace as the name does
            resources=_named(_LIST.decode(server.resources), n, ("name", "uri")),
            resource_templates=_named(_LIST.decode(server.resource_templates), n, ("name", "uriTemplate")),
            prompts=_named(_LIST.decode(server.prompts), n, ("name",)),
        )


def visible(items: list[dict[str, Any]], ent: Entitlement, field: str = "name") -> list[dict[str, Any]]:
    """The items the key may use (by their namespaced `field`)."""
    return [item for item in items if ent.allows_tool(str(item.get(field, "")))]


class CatalogUnavailable(Exception):
    """The catalog could not be read whole (the stage refused a query, or the lists kept changing)."""


# a catalog is read again from the start at most this many times when a list changed while being paged
READ_ATTEMPTS = 3


async def read_catalog(ask: Ask) -> Catalog:
    """Every server's lists, whole: the summary, then each list too large for it page by page (a catalog larger
    than one bus message crosses in several). Every page must come from the same version of its list (the
    digest the summary named; any mcp replica may answer each query), else the catalog is read again."""
    for _ in range(READ_ATTEMPTS):
        summary = await ask(CatalogQuery())
        if summary.error:
            raise CatalogUnavailable(f"the mcp stage refused the catalog query: {summary.error}")
        servers: list[ServerCatalog] = []
        try:
            for server in summary.servers:
                lists = {
                    kind: await _read_list(ask, server.name, kind, digest) for kind, digest in server.paged.items()
                }
                servers.append(msgspec.structs.replace(server, **lists, paged={}))
        except _Changed:
            continue
        return Catalog(servers=servers, replica=summary.replica)
    raise CatalogUnavailable(f"the MCP servers' lists changed during {READ_ATTEMPTS} reads in a row")


class _Changed(Exception):
    pass


async def _read_list(ask: Ask, server: str, kind: str, digest: str) -> bytes:
    parts: list[bytes] = []
    offset = 0
    while True:
        answer = await ask(CatalogQuery(servers=[server], kind=kind, offset=offset))  # type: ignore[arg-type]
        page = answer.page
        if answer.error or page is None:
            raise CatalogUnavailable(f"the mcp stage refused a page of {server}'s {kind}: {answer.error}")
        if page.digest != digest or page.offset != offset:
            raise _Changed  # another version of the list (it changed, or another replica sees another one)
        if page.items:
            parts.append(page.items)
        if page.next >= page.total:
            return b"[" + b",".join(parts) + b"]"
        if page.next <= offset:
            raise CatalogUnavailable(f"a page of {server}'s {kind} made no progress")
        offset = page.next


class CatalogCache:
    """The latest catalog this ingress replica learnt; one fetch at a time, shared by every waiting request."""

    def __init__(self, ask: Ask) -> None:
        self._ask = ask
        self._servers: dict[str, ServerLists] = {}
        self._at = -CATALOG_TTL_S
        self._lock = asyncio.Lock()
        self.replica = ""

    def invalidate(self) -> None:
        self._at = -CATALOG_TTL_S

    async def servers(self) -> dict[str, ServerLists]:
        if time.monotonic() - self._at < CATALOG_TTL_S:
            return self._servers
        async with self._lock:
            if time.monotonic() - self._at >= CATALOG_TTL_S:
                started = time.monotonic()
                catalog = await read_catalog(self._ask)
                self._servers = {s.name: ServerLists.of(s) for s in catalog.servers}
                self.replica = catalog.replica
                self._at = started
        return self._servers

    async def listing(self, kind: str, ent: Entitlement) -> list[dict[str, Any]]:
        """Every server's `kind` list (tools, resources, resource_templates, prompts) that the key may see."""
        # resources are read by URI and checked by it; a key's globs see `<server>__<uri>`
        field = {"resource_templates": "uriTemplate", "resources": "uri"}.get(kind, "name")
        out: list[dict[str, Any]] = []
        for server in (await self.servers()).values():
            out.extend(visible(getattr(server, kind), ent, field))
        return out

    async def offers(self, server: str, kind: str, name: str) -> bool | None:
        """Whether `server` lists the namespaced `name` among its `kind` (tools, prompts); None when the catalog
        cannot tell (the server is missing from it or down: its lists are empty until it is back)."""
        lists = (await self.servers()).get(server)
        if lists is None or not lists.healthy:
            return None
        return any(item.get("name") == name for item in getattr(lists, kind))
