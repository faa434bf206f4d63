"""One upstream MCP server: its session (Streamable HTTP, legacy SSE, or a stdio child this stage launches),
kept alive by a supervisor that reconnects (relaunches) with exponential backoff, its lists, and its calls.

Each call holds one of the server's concurrency slots and has its own timeout; past the cap a bounded number of
calls wait a bounded time, and the rest are refused at once as busy, so a slow tool delays only calls to the same
server, never another server's or another session's (however many calls the slow one is sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
import warnings
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx2
import mcp_types as types
import msgspec
from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

from services.mcp.credentials import ClientCredentials, CredentialError, child_env, static_headers
from shared import mcp_errors
from shared.mcp_config import McpServerConfig
from shared.schemas.mcp import CatalogKind, McpError, ServerCatalog

log = logging.getLogger("gatehouse.mcp.upstream")
# the SDK warns that ping is gone from the newest revision; these sessions speak the handshake era, where it is
# the liveness check
warnings.filterwarnings("ignore", message="ping is removed", category=MCPDeprecationWarning)

# a connection that stayed up this long resets the restart backoff
STABLE_AFTER_S = 30.0
# each connect that timed out doubles the next one's time, up to this many times connect_timeout_s: a server slower
# to start than that (a stdio child's cold start on a loaded machine, a first `npx`/`uvx` download) was killed at
# the same point on every attempt and never came up
CONNECT_TIMEOUT_GROWTH = 8
# fields of the newest protocol revision that a handshake-era client has no use for
_MODERN_ONLY = ("resultType", "ttlMs", "cacheScope")
_JSON = msgspec.json.Encoder()
_ARGS = msgspec.json.Decoder(dict[str, Any])

ORDER: tuple[CatalogKind, ...] = ("tools", "resources", "resource_templates", "prompts")
KINDS: frozenset[CatalogKind] = frozenset(ORDER)
Notify = Callable[[str, list[CatalogKind]], Awaitable[None]]


def result_json(result: Any) -> bytes:
    """A result model as the JSON a handshake-era client reads (camelCase, no unset or modern-only fields)."""
    data = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    for name in _MODERN_ONLY:
        data.pop(name, None)
    return _JSON.encode(data)


def _dumped(item: Any) -> bytes:
    """One list item as the JSON a handshake-era client reads (a list is `[` + its items joined by `,` + `]`)."""
    return _JSON.encode(item.model_dump(by_alias=True, mode="json", exclude_none=True))


class Listed(msgspec.Struct, frozen=True):
    """One list of a server: its items' JSON, the whole list's size in bytes, and a digest naming this version.

    The whole list is not kept beside its items (it would hold every item twice): it is joined when a summary
    carries it inline, which only a list that fits in one bus message does."""

    items: list[bytes]
    size: int
    digest: str

    @classmethod
    def of(cls, items: list[bytes]) -> Listed:
        digest = hashlib.blake2b(digest_size=16)
        digest.update(b"[")
        for n, item in enumerate(items):
            digest.update(b"," + item if n else item)
        digest.update(b"]")
        size = 2 + sum(len(i) for i in items) + max(len(items) - 1, 0)  # brackets, items, commas
        return cls(items, size, digest.hexdigest())

    @property
    def whole(self) -> bytes:
        return b"[" + b",".join(self.items) + b"]"


EMPTY = Listed.of([])


class ListBoundError(Exception):
    """An upstream's list is past the bounds the config sets for it (pages, items, bytes), or its paging loops."""


class Upstream:
    """The session with one upstream server and what it offers; `run` keeps it connected."""

    def __init__(
        self, name: str, cfg: McpServerConfig, environ: Mapping[str, str], notify: Notify, max_result_bytes: int
    ) -> None:
        self.name = name
        self.max_result_bytes = max_result_bytes
        self.cfg = cfg
        self._environ = environ
        self._notify = notify
        self._client: Client | None = None
        self._slots = asyncio.Semaphore(cfg.max_concurrency)
        self._waiting = 0
        self._broken = asyncio.Event()
        self._noticed = asyncio.Event()  # a list-changed notice arrived (wakes a re-read waiting out its backoff)
        self._lists: dict[CatalogKind, Listed] = {}
        # lists a list-changed notice asked to read again, and the one task reading them (notices coalesce)
        self._stale: set[CatalogKind] = set()
        self._relisting: asyncio.Task[None] | None = None
        # why the server's lists are unknown while its session is up (a list read again after a change failed)
        self._unlisted = ""
        self._sessions_up = 0
        self.error = "connecting"
        self.connect_timeout_s = cfg.connect_timeout_s  # the next connect's (see CONNECT_TIMEOUT_GROWTH)
        self.restarts = 0
        self.connected_at = 0.0
        self.revision = 0

    # ---- the session -----------------------------------------------------------------------------
    def _target(self) -> Any:
        """What `mcp.Client` connects to: launch parameters for stdio, a transport for HTTP and SSE."""
        cfg = self.cfg
        if cfg.transport == "stdio":
            return StdioServerParameters(
                command=cfg.command[0], args=list(cfg.command[1:]), env=child_env(cfg, self._environ), cwd=cfg.cwd
            )
        assert cfg.url is not None
        headers = static_headers(cfg, self._environ)
        auth = ClientCredentials(cfg.oauth, self._environ) if cfg.oauth is not None else None
        if cfg.transport == "sse":
            return sse_client(cfg.url, headers=headers, timeout=cfg.connect_timeout_s, auth=auth)
        timeout = httpx2.Timeout(cfg.connect_timeout_s, read=300.0)
        return streamable_http_client(
            cfg.url,
            http_client=create_mcp_http_client(headers=headers, timeout=timeout, auth=auth),
            # the SDK's own cap (1 MiB) would break results the gateway passes (and a tool's text result comes
            # twice, as content and as structured content); past four times the gateway's limit the SDK refuses
            # the event itself, and the session is rebuilt
            max_sse_event_size=4 * self.max_result_bytes,
        )

    @property
    def healthy(self) -> bool:
        return self._client is not None and not self._broken.is_set() and not self._unlisted

    async def run(self) -> None:
        """Connect, serve, and reconnect forever (until cancelled), backing off exponentially while it fails."""
        backoff = self.cfg.restart_backoff_s
        while True:
            started = time.monotonic()
            ups = self._sessions_up
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except CredentialError as exc:
                self.error = redact_urls(f"credentials: {exc}")
            except ListBoundError as exc:
                self.error = f"listing: {exc}"
            except BaseException as exc:
                self.error = _describe(exc)
                if self._sessions_up == ups and _timed_out(exc):
                    self.connect_timeout_s = min(
                        self.connect_timeout_s * 2, self.cfg.connect_timeout_s * CONNECT_TIMEOUT_GROWTH
                    )
            self._client = None
            if self._sessions_up != ups:
                self.connect_timeout_s = self.cfg.connect_timeout_s
                # a session that was up ended: ingress stops offering the server's lists now, not at its next refresh
                await self._tell(list(ORDER))
            if time.monotonic() - started > STABLE_AFTER_S:
                backoff = self.cfg.restart_backoff_s  # it had been up a while: back quickly
            log.warning("mcp server %s is down (%s); reconnecting in %.1fs", self.name, self.error, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.cfg.restart_backoff_max_s)
            self.restarts += 1

    async def _session(self) -> None:
        client = Client(self._target(), mode="legacy", cache=None, message_handler=self._on_message)
        async with asyncio.timeout(self.connect_timeout_s):
            await client.__aenter__()
        try:
            self._broken.clear()
            self._unlisted = ""
            async with asyncio.timeout(self.connect_timeout_s):
                await self._refresh(client, ORDER)
            self._client = client
            self._sessions_up += 1
            self.error = ""
            self.connected_at = time.time()
            log.info("mcp server %s connected (%s)", self.name, self.cfg.transport)
            await self._notify(self.name, list(ORDER))
            await self._watch(client)
            self.error = "the connection broke"
        finally:
            self._client = None
            if self._relisting is not None:
                self._relisting.cancel()
            self._stale.clear()
            with contextlib.suppress(BaseException):
                await client.__aexit__(None, None, None)

    async def _tell(self, kinds: list[CatalogKind]) -> None:
        """Tell the stage (and so every ingress) that the server's `kinds` changed, or its health did."""
        try:
            await self._notify(self.name, kinds)
        except Exception as exc:  # the bus may be down; ingress's catalog refresh (a few seconds) catches up
            log.warning("mcp server %s: could not announce a change: %s", self.name, _describe(exc))

    async def _watch(self, client: Client) -> None:
        """Return when the session is broken: a call saw the transport fail, or a ping went unanswered."""
        interval = self.cfg.health_interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._broken.wait()
            if self._broken.is_set():
                return
            try:
                async with asyncio.timeout(interval):
                    await client.send_ping()
            except (TimeoutError, MCPError, Exception):
                return

    async def _refresh(self, client: Client, kinds: tuple[CatalogKind, ...]) -> list[CatalogKind]:
        """Read `kinds` again, each whole; the kinds whose content changed (a server may say a list changed when
        it did not: ingress then has nothing to read again)."""
        caps = client.server_capabilities
        lists: dict[CatalogKind, Listed] = {}
        for kind in kinds:
            offered = caps.tools if kind == "tools" else caps.prompts if kind == "prompts" else caps.resources
            lists[kind] = Listed.of(await self._list_all(client, kind) if offered else [])
        changed = [
            kind for kind, new in lists.items() if kind not in self._lists or new.digest != self._lists[kind].digest
        ]
        self._lists.update(lists)  # every list read whole, or none replaced
        if changed:
            self.revision += 1
        return changed

    async def _list_all(self, client: Client, kind: CatalogKind) -> list[bytes]:
        """Every item of one list as its JSON, following `nextCursor` page by page, within the server's bounds
        (`max_list_pages`, `max_list_items`, `max_list_bytes`, and `max_result_bytes` an item); ListBoundError past
        them, checked as each page arrives, or when the server repeats a cursor."""
        cfg = self.cfg
        items: list[bytes] = []
        size = 2  # the brackets of the whole list
        seen: set[str] = set()
        cursor: str | None = None
        page: list[Any]
        for _ in range(cfg.max_list_pages):
            if kind == "tools":
                tools = await client.list_tools(cursor=cursor)
                page, cursor = tools.tools, tools.next_cursor
            elif kind == "resources":
                resources = await client.list_resources(cursor=cursor)
                page, cursor = resources.resources, resources.next_cursor
            elif kind == "resource_templates":
                templates = await client.list_resource_templates(cursor=cursor)
                page, cursor = templates.resource_templates, templates.next_cursor
            else:
                prompts = await client.list_prompts(cursor=cursor)
                page, cursor = prompts.prompts, prompts.next_cursor
            if len(items) + len(page) > cfg.max_list_items:
                raise ListBoundError(f"its {kind} list has more than {cfg.max_list_items} items (max_list_items)")
            for item in page:
                data = _dumped(item)
                # one item must fit in one bus message of the catalog (the page it travels in): as a result does
                if len(data) > self.max_result_bytes:
                    raise ListBoundError(
                        f"an item of its {kind} list is {len(data)} bytes; the gateway passes at most "
                        f"{self.max_result_bytes}"
                    )
                size += len(data) + (1 if items else 0)
                # the list is held whole by this stage and decoded by every ingress replica: its bytes are bounded
                # as they come, not once an upstream has made the stage hold all it chose to send
                if size > cfg.max_list_bytes:
                    raise ListBoundError(f"its {kind} list is larger than {cfg.max_list_bytes} bytes (max_list_bytes)")
                items.append(data)
            if not cursor:
                return items
            if cursor in seen:
                raise ListBoundError(f"it repeated a cursor of its {kind} list (a paging loop)")
            seen.add(cursor)
        raise ListBoundError(f"its {kind} list has more than {cfg.max_list_pages} pages (max_list_pages)")

    async def _on_message(self, message: types.ServerNotification | Exception) -> None:
        """List-changed notifications: fetch the list again and tell every ingress replica."""
        kinds: tuple[CatalogKind, ...] = ()
        if isinstance(message, types.ToolListChangedNotification):
            kinds = ("tools",)
        elif isinstance(message, types.ResourceListChangedNotification):
            kinds = ("resources", "resource_templates")
        elif isinstance(message, types.PromptListChangedNotification):
            kinds = ("prompts",)
        client = self._client
        if not kinds or client is None:
            return
        self._stale.update(kinds)
        self._noticed.set()
        if self._relisting is None or self._relisting.done():
            # the session's reader waits on this handler: the new list is fetched beside it, not inside it; notices
            # that come while it is fetched are served by one more read when it is done, not one read each
            self._relisting = asyncio.get_running_loop().create_task(self._changed(client))

    async def _changed(self, client: Client) -> None:
        backoff = self.cfg.restart_backoff_s
        while self._stale and client is self._client:
            # a server whose lists are unknown has every list read again: whichever failed may be any of them
            kinds = ORDER if self._unlisted else tuple(kind for kind in ORDER if kind in self._stale)
            self._stale.clear()
            try:
                async with asyncio.timeout(self.cfg.connect_timeout_s):
                    changed = await self._refresh(client, kinds)
            except Exception as exc:
                # the server's lists are no longer known: serving the old ones would offer tools it may have
                # dropped and hide those it added, and another mcp replica (or this one after a restart) would
                # see the server down. It is down here too, as at connect, with the reason (admin API, log,
                # `gatehouse_mcp_upstream_up` 0); its session stays open, so calls under way finish, and every
                # list is read again with the restart backoff (a server that rarely changes its lists must not
                # stay down after one timeout) or at its next list-changed notice, whichever comes first
                told = not self._unlisted
                self._unlisted = f"listing: {exc}" if isinstance(exc, ListBoundError) else f"listing: {_describe(exc)}"
                self.error = self._unlisted
                if told:
                    log.warning(
                        "mcp server %s is down: reading its lists after a change failed (%s)", self.name, self.error
                    )
                    await self._tell(list(ORDER))
                await self._retry_after(backoff)
                backoff = min(backoff * 2, self.cfg.restart_backoff_max_s)
                continue
            if self._unlisted:  # every list read whole again: back
                self._unlisted = self.error = ""
                log.info("mcp server %s is back: its lists were read whole again", self.name)
                await self._tell(list(ORDER))
            elif changed:
                await self._tell(changed)

    async def _retry_after(self, seconds: float) -> None:
        """Mark every list stale once `seconds` have passed, or sooner if a notice marks one (or the session
        breaks)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while not self._stale and not self._broken.is_set():
                    await self._noticed.wait()
                    self._noticed.clear()
        self._stale.update(ORDER)

    @property
    def state(self) -> tuple[bool, str, int, float, int]:
        """What the server's catalog entry shows, as a value that changes whenever the entry does."""
        return (self.healthy, self.error, self.restarts, self.connected_at, self.revision)

    def listed(self, kind: CatalogKind) -> Listed:
        """One of the server's lists as it stands (empty while the server is down)."""
        return self._lists.get(kind, EMPTY) if self.healthy else EMPTY

    def catalog(self, inline: frozenset[CatalogKind] = KINDS) -> ServerCatalog:
        """The server's health, counts, and its lists: those in `inline` whole, the others named in `paged` (with
        their digests) to be read page by page."""
        lists = {kind: self.listed(kind) for kind in KINDS}
        return ServerCatalog(
            name=self.name,
            transport=self.cfg.transport,
            healthy=self.healthy,
            error=self.error,
            restarts=self.restarts,
            connected_at=self.connected_at,
            **{kind: lists[kind].whole for kind in inline},
            revision=self.revision,
            counts={kind: len(listed.items) for kind, listed in lists.items()},
            paged={kind: lists[kind].digest for kind in KINDS if kind not in inline},
        )

    # ---- calls -----------------------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        """Calls waiting for one of this server's slots now."""
        return self._waiting

    async def _acquire(self, wait_s: float) -> bool:
        """Take one of the server's slots, waiting at most `wait_s` and only while fewer than `max_queued` calls
        wait: a call that finds the line full, or that the line did not reach in time, gives up its stage worker
        at once instead of holding it for its whole timeout."""
        if not self._slots.locked():
            await self._slots.acquire()  # a free slot: taken without suspending
            return True
        if self._waiting >= self.cfg.max_queued:
            return False
        self._waiting += 1
        try:
            async with asyncio.timeout(wait_s):
                await self._slots.acquire()
            return True
        except TimeoutError:
            return False
        finally:
            self._waiting -= 1

    async def call(self, method: str, name: str, arguments: bytes, timeout_s: float) -> tuple[bytes, McpError | None]:
        """(result JSON, None) or (b"", the error that stands for it); never raises for the server's faults."""
        try:
            args = _ARGS.decode(arguments) if arguments else {}
        except msgspec.DecodeError:
            return b"", mcp_errors.invalid("The arguments are not a JSON object.")
        started = time.monotonic()
        if not await self._acquire(min(self.cfg.queue_wait_s, timeout_s)):
            return b"", mcp_errors.server_busy(self.name)
        try:
            async with asyncio.timeout(max(timeout_s - (time.monotonic() - started), 0.0)):
                try:
                    client = self._client
                    if client is None or self._broken.is_set() or self._unlisted:
                        # why it is down (`self.error`) is for the admin API and logs, not for clients
                        return b"", mcp_errors.upstream_unavailable(self.name)
                    if method == "tools/call":
                        result: Any = await client.call_tool(name, args)
                    elif method == "resources/read":
                        result = await client.read_resource(name)
                    elif method == "prompts/get":
                        result = await client.get_prompt(name, {k: str(v) for k, v in args.items()})
                    else:
                        return b"", McpError(
                            code=mcp_errors.METHOD_NOT_FOUND, message=f"Unknown method {method}.", status="invalid"
                        )
                finally:
                    self._slots.release()
        except TimeoutError:
            return b"", mcp_errors.upstream_timeout(self.name, timeout_s)
        except MCPError as exc:
            if exc.error.code == types.CONNECTION_CLOSED:  # the transport ended (a stdio child died): rebuild
                self._broken.set()
                self._noticed.set()
                return b"", mcp_errors.upstream_unavailable(self.name, "the connection closed")
            # the server's own JSON-RPC error (an unknown tool, bad params): the client gets it as it was
            return b"", McpError(code=exc.error.code, message=exc.error.message, status="upstream_error")
        except Exception as exc:
            self._broken.set()
            self._noticed.set()
            log.warning("mcp server %s: %s failed: %s", self.name, method, _describe(exc))
            return b"", mcp_errors.upstream_unavailable(self.name, _kind(exc))
        return result_json(result), None


def _timed_out(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _timed_out(exc.exceptions[0])
    return isinstance(exc, TimeoutError)


def _describe(exc: BaseException) -> str:
    """A short account of a failure for logs and the admin API (exception type and first line of its message),
    with any URL's query string and userinfo removed (a server URL may carry a credential, `?api_key=...`)."""
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _describe(exc.exceptions[0])
    text = redact_urls(str(exc).splitlines()[0])[:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _kind(exc: BaseException) -> str:
    """What a client is told of a failure: the exception type only (its message may name the server's URL)."""
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _kind(exc.exceptions[0])
    return type(exc).__name__


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")


def _redact_url(match: re.Match[str]) -> str:
    url = match.group(0)
    scheme, rest = url.split("://", 1)
    # the authority ends at the first / ? or #; userinfo is what precedes its last @
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        authority = "[redacted]@" + authority.rsplit("@", 1)[1]
    cut = min((i for i in (tail.find("?"), tail.find("#")) if i >= 0), default=-1)
    if cut >= 0:
        tail = tail[:cut] + "?[redacted]"
    return f"{scheme}://{authority}{tail}"


def redact_urls(text: str) -> str:
    """`text` with every URL's userinfo and query string (and fragment) replaced by `[redacted]`."""
    return _URL.sub(_redact_url, text)
