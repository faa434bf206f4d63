"""What a key sees of the upstream servers: every server's lists from the mcp stage (cached, refreshed when a
server's lists change), namespaced `<server>__<name>` and filtered by the key's tool globs."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from services.ingress.mcp import pages
from shared import metrics
from shared.directory import Entitlement
from shared.mcp_config import namespaced
from shared.schemas.mcp import Catalog, CatalogQuery, ServerCatalog

log = logging.getLogger("gatehouse.ingress.mcp")
_LIST = msgspec.json.Decoder(list[dict[str, Any]])
# a catalog is asked for again after this long even without a change notice (a missed notice, a restart)
CATALOG_TTL_S = 5.0

# a catalog query, to the mcp replica named ("": any replica of the queue group)
Ask = Callable[[CatalogQuery, str], Awaitable[Catalog]]
# while reads fail, the last catalog read whole is served (stale) for at most this long after it was read
CATALOG_MAX_STALE_S = 300.0


def _named(items: list[dict[str, Any]], server: str, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{**item, **{f: namespaced(server, str(item[f])) for f in fields if f in item}} for item in items]


class ServerLists(msgspec.Struct, frozen=True, kw_only=True):
    """One server's lists, decoded and namespaced, with the names of its tools and prompts for a call's lookup."""

    name: str
    healthy: bool
    error: str
    restarts: int
    tools: list[dict[str, Any]]
    resources: list[dict[str, Any]]
    resource_templates: list[dict[str, Any]]
    prompts: list[dict[str, Any]]
    names: dict[str, frozenset[str]]  # tools, prompts → their namespaced names

    @classmethod
    def of(cls, server: ServerCatalog) -> ServerLists:
        n = server.name
        tools = _named(_LIST.decode(server.tools), n, ("name",))
        prompts = _named(_LIST.decode(server.prompts), n, ("name",))
        return cls(
            name=n,
            healthy=server.healthy,
            error=server.error,
            restarts=server.restarts,
            tools=tools,
            # a resource is read by its URI: the URI carries the namespace as the name does
            resources=_named(_LIST.decode(server.resources), n, ("name", "uri")),
            resource_templates=_named(_LIST.decode(server.resource_templates), n, ("name", "uriTemplate")),
            prompts=prompts,
            names={
                kind: frozenset(str(i.get("name")) for i in items)
                for kind, items in (("tools", tools), ("prompts", prompts))
            },
        )


def visible(items: list[dict[str, Any]], ent: Entitlement, field: str = "name") -> list[dict[str, Any]]:
    """The items the key may use (by their namespaced `field`)."""
    return [item for item in items if ent.allows_tool(str(item.get(field, "")))]


class CatalogUnavailable(Exception):
    """The catalog could not be read whole (the stage refused a query, or the lists kept changing)."""


# a catalog is read again from the start at most this many times when a list changed while being paged
READ_ATTEMPTS = 3


# (server, list kind) → (digest, the whole list) of lists read page by page: one whose digest a summary names again
# is not read again
Known = dict[tuple[str, str], tuple[str, bytes]]


async def read_catalog(ask: Ask, known: Known | None = None, prefer: str = "") -> Catalog:
    """Every server's lists, whole: the summary, then each list too large for it page by page (a catalog larger
    than one bus message crosses in several), unless `known` holds that version of it already (`known` is updated
    with the lists read). The pages are asked of the replica whose summary named them (each replica holds its own
    sessions, so its own version of each list), and every page must come from the version the summary named (the
    digest), else the catalog is read again, from a new summary. The summary is asked of replica `prefer` while it
    answers (the one the last read came from: replicas that order a list differently would otherwise have every
    refresh read and decode that list again), else of any."""
    held = known if known is not None else {}
    why = ""
    for _ in range(READ_ATTEMPTS):
        summary = await _summary(ask, prefer)
        if summary.error:
            raise CatalogUnavailable(f"the mcp stage refused the catalog query: {summary.error}")
        servers: list[ServerCatalog] = []
        try:
            for server in summary.servers:
                lists: dict[str, bytes] = {}
                for kind, digest in server.paged.items():
                    had = held.get((server.name, kind))
                    if had is None or had[0] != digest:
                        whole = await _read_list(ask, summary.replica, server.name, kind, digest)
                        had = held[(server.name, kind)] = (digest, whole)
                    lists[kind] = had[1]
                servers.append(msgspec.structs.replace(server, **lists, paged={}))
        except _Changed as exc:
            why = str(exc)
            continue
        return Catalog(servers=servers, replica=summary.replica)
    raise CatalogUnavailable(f"the catalog could not be read whole in {READ_ATTEMPTS} reads in a row: {why}")


async def _summary(ask: Ask, prefer: str) -> Catalog:
    if prefer:
        try:
            return await ask(CatalogQuery(), prefer)
        except Exception as exc:  # gone (a restart, scaled down): any replica
            log.info("mcp replica %r did not answer the catalog query (%s); asking any", prefer[:100], exc)
    return await ask(CatalogQuery(), "")


class _Changed(Exception):
    """The list a summary named is not the one its replica pages (it changed), or the replica is gone."""


async def _read_list(ask: Ask, replica: str, server: str, kind: str, digest: str) -> bytes:
    parts: list[bytes] = []
    offset = 0
    while True:
        query = CatalogQuery(servers=[server], kind=kind, offset=offset)  # type: ignore[arg-type]
        try:
            answer = await ask(query, replica)
        except Exception as exc:  # the replica went away since its summary (a restart): another summary is needed
            raise _Changed(f"the mcp replica {replica[:100]!r} did not answer a page: {type(exc).__name__}") from exc
        page = answer.page
        if answer.error or page is None:
            raise CatalogUnavailable(f"the mcp stage refused a page of {server}'s {kind}: {answer.error}")
        if page.digest != digest or page.offset != offset:
            raise _Changed(f"{server}'s {kind} changed while it was read")
        if page.items:
            parts.append(page.items)
        if page.next >= page.total:
            return b"[" + b",".join(parts) + b"]"
        if page.next <= offset:
            raise CatalogUnavailable(f"a page of {server}'s {kind} made no progress")
        offset = page.next


# invalid cursors one key may send a minute (per ingress replica) before its paged list requests are refused
BAD_CURSORS_PER_MINUTE = 30


class CursorsLimited(Exception):
    """The key sent too many invalid cursors this minute: each one is an error of the client, or a probe."""


def tool_globs(ent: Entitlement) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] | None:
    """What decides which tools the key may see (each level's tool globs and denials): keys with the same globs see
    the same items; None when no level sets any (the key sees every item)."""
    globs = tuple((tuple(s.limits.tools), tuple(s.limits.tools_deny)) for s in ent.scopes)
    return globs if any(allow or deny for allow, deny in globs) else None


# the field a key's globs see of each kind (resources are read by URI and checked by it: `<server>__<uri>`)
FIELDS = {"tools": "name", "resources": "uri", "resource_templates": "uriTemplate", "prompts": "name"}


class CatalogCache:
    """The latest catalog this ingress replica learnt. One read at a time, shared by every request waiting for it,
    its failure included: a failed read is tried again by the next request, not by each waiting one in turn. A
    change notice during a read leaves the catalog stale, so the next request reads it again."""

    def __init__(self, ask: Ask, ttl_s: float = CATALOG_TTL_S) -> None:
        self._ask = ask
        self._ttl = ttl_s
        self._servers: dict[str, ServerLists] = {}
        self._read_from: dict[str, ServerCatalog] = {}  # what each ServerLists was decoded from
        self._known: Known = {}  # the paged lists read, by digest
        # every server's list of each kind, in order, indexed for paging (rebuilt when a server's lists change)
        self._whole = {kind: pages.Listing([], field, kind) for kind, field in FIELDS.items()}
        # invalid cursors each key sent this minute (only keys that sent one: authenticated keys, so few)
        self._bad_cursors: dict[str, int] = {}
        self._bad_minute = 0
        self._fresh_until = -math.inf
        self._version = 0  # counts change notices: a read started before one is stale once done
        self._stored = -1  # the version of the read whose catalog is held
        self._read: asyncio.Task[dict[str, ServerLists]] | None = None
        self._read_version = -1
        self.replica = ""
        self._read_at = -math.inf  # when the catalog held was read (the start of its read)
        self.stale = False  # the catalog held is the last one read whole: a read since then failed

    def invalidate(self) -> None:
        self._version += 1
        self._fresh_until = -math.inf

    async def servers(self) -> dict[str, ServerLists]:
        if time.monotonic() < self._fresh_until:
            return self._servers
        if self._read is None or self._read_version != self._version:
            self._read_version = self._version
            self._read = asyncio.get_running_loop().create_task(self._fetch(self._version))
            self._read.add_done_callback(self._done)
        # a waiter that gives up (its client left) leaves the read to the others
        return await asyncio.shield(self._read)

    def _done(self, task: asyncio.Task[dict[str, ServerLists]]) -> None:
        if self._read is task:
            self._read = None
        if not task.cancelled():
            task.exception()  # retrieved here too: a read no request still waits for fails quietly

    async def _fetch(self, version: int) -> dict[str, ServerLists]:
        started = time.monotonic()
        try:
            catalog = await read_catalog(self._ask, self._known, self.replica)
        except Exception as exc:
            age = started - self._read_at
            if self._stored < 0 or age > CATALOG_MAX_STALE_S:
                raise
            # lists calls (and calls' name checks) go on with the catalog last read whole, not an error each; the
            # next request after the refresh interval tries again, and any read that succeeds replaces it
            self.stale = True
            metrics.mcp_catalog_stale()
            log.warning("mcp catalog read failed; serving the last one read, %.0f s old: %s", age, exc)
            if version == self._version:
                self._fresh_until = started + self._ttl
            return self._servers
        # a server whose lists did not change keeps its decoded lists (decoding is the read's costly part)
        servers = {
            s.name: self._servers[s.name] if self._read_from.get(s.name) == s else ServerLists.of(s)
            for s in catalog.servers
        }
        if version >= self._stored:  # a read started before a later one that finished first is not kept
            self._stored = version
            self._read_at = started
            self.stale = False
            if list(servers) != list(self._servers) or any(s is not self._servers[n] for n, s in servers.items()):
                self._whole = {
                    kind: pages.Listing([i for s in servers.values() for i in getattr(s, kind)], field, kind)
                    for kind, field in FIELDS.items()
                }
            self._servers = servers
            self._read_from = {s.name: s for s in catalog.servers}
            self.replica = catalog.replica
        if version == self._version:
            self._fresh_until = started + self._ttl
        return servers

    async def page(
        self, kind: str, ent: Entitlement, cursor: str | None, size: int, now: float | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of every server's `kind` list that the key may see, and the next page's cursor (None: the
        last page); BadCursor when `cursor` is not one this list gave out, or its place in the list is gone, and
        CursorsLimited once the key sent `BAD_CURSORS_PER_MINUTE` such cursors this minute (`now`: the clock)."""
        now = time.time() if now is None else now
        if int(now // 60) != self._bad_minute:  # a new minute: every key's count starts again
            self._bad_minute, self._bad_cursors = int(now // 60), {}
        if cursor is not None and self._bad_cursors.get(ent.key.id, 0) >= BAD_CURSORS_PER_MINUTE:
            raise CursorsLimited(
                f"Rate limit reached: {BAD_CURSORS_PER_MINUTE} invalid list cursors a minute; list again without a "
                f"cursor, or try again in {math.ceil(60 - now % 60)}s."
            )
        await self.servers()
        try:
            return self._whole[kind].page(tool_globs(ent), ent.allows_tool, cursor, size)
        except pages.BadCursor:
            self._bad_cursors[ent.key.id] = self._bad_cursors.get(ent.key.id, 0) + 1
            raise

    async def offers(self, server: str, kind: str, name: str) -> bool | None:
        """Whether `server` lists the namespaced `name` among its `kind` (tools, prompts); None when the catalog
        cannot tell (the server is missing from it or down: its lists are empty until it is back)."""
        lists = (await self.servers()).get(server)
        if lists is None or not lists.healthy:
            return None
        return name in lists.names[kind]
