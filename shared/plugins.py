"""The plugin interface: Python hooks at fixed points of the pipeline, each with a timeout and a failure policy.

A plugin is declared in the config (`plugins:`) by an import path `package.module:factory` or an entry point
of the group `gatehouse.plugins`. The factory is called once per process with the plugin's `options` and
returns an object whose `async def <point>(view)` methods are the hooks it implements:

    point            runs in    sees                                   may return
    before_guard     ingress    model, caller, declared headers, tags  tags, headers (request), block
    after_guard      guard      model, caller, tags, guard verdict     block
    before_dispatch  router     model, caller, tags                    block
    after_response   ingress    + status, tokens, deployment, latency  tags, headers (response)
    on_event         accounting the stored request record, with cost  nothing (observe only)

A hook gets a `RequestView` (frozen; no prompt, no key, no secret header) and returns None or a `HookResult`.
A hook that raises, times out or returns what its point does not allow has failed: under `fail: closed` the
client gets 503 `plugin_error` naming the plugin (on_event: the event is redelivered later), under
`fail: open` the request goes on and the failure is logged and counted. With no plugin at a point the
stage does not build a view at all (`HookRunner.has`).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import time
from collections.abc import Callable, Coroutine, Generator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TypedDict

import msgspec

from shared import metrics
from shared.config import HookPoint, PluginConfig
from shared.errors import ErrorInfo, GatewayError, PluginError
from shared.schemas.chat import Caller, ChatRequest

log = logging.getLogger("gatehouse.plugins")

ENTRY_POINT_GROUP = "gatehouse.plugins"

# what a hook at each point may change (block: end the request with the plugin's error)
ALLOWED: dict[HookPoint, frozenset[str]] = {
    "before_guard": frozenset({"tags", "headers", "block"}),
    "after_guard": frozenset({"block"}),
    "before_dispatch": frozenset({"block"}),
    "after_response": frozenset({"tags", "headers"}),
    "on_event": frozenset(),
}
# the points each stage runs
INGRESS_POINTS = frozenset({"before_guard", "after_response"})
GUARD_POINTS = frozenset({"after_guard"})
ROUTER_POINTS = frozenset({"before_dispatch"})
EVENT_POINTS = frozenset({"on_event"})
# request headers a plugin never sees, whatever it declares (credentials, cookies)
SECRET_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "cookie", "proxy-authorization"})
# headers a plugin may not set: framing and credentials belong to the gateway
PROTECTED_HEADERS = SECRET_HEADERS | frozenset(
    {"content-length", "content-type", "transfer-encoding", "connection", "host", "set-cookie", "x-request-id"}
)
MAX_TAGS = 32
MAX_TAG_CHARS = 256
MAX_HEADER_CHARS = 1024


class RequestView(msgspec.Struct, frozen=True, kw_only=True):
    """What a hook may know about one request: never the prompt, the key or a credential header."""

    point: str
    request_id: str
    api: str = ""
    model: str = ""
    stream: bool = False
    key_id: str = ""
    team: str = ""
    project: str = ""
    org: str = ""
    user: str = ""
    headers: dict[str, str] = {}  # only the names the plugins declared (lower-cased), never a credential
    tags: dict[str, str] = {}
    guard_action: str = ""
    # known after the answer (after_response, on_event)
    status: int = 0
    error_type: str = ""
    error_code: str = ""
    provider: str = ""
    deployment: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0


class Block(msgspec.Struct, frozen=True, kw_only=True):
    """End the request with an OpenAI-style error (a 4xx the plugin chooses)."""

    message: str
    status: int = 403
    type: str = "permission_error"
    code: str = "blocked_by_plugin"


class HookResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a hook asks for; each field only where its point allows it (see ALLOWED)."""

    tags: dict[str, str] = {}
    headers: dict[str, str] = {}
    block: Block | None = None


@dataclass(frozen=True)
class Applied:
    """The merged effect of every hook at one point: later plugins win on the same tag or header."""

    tags: dict[str, str]
    headers: dict[str, str]


NOTHING = Applied({}, {})


class PluginBlocked(GatewayError):
    """A plugin refused the request; status, type and code are the plugin's own."""

    def __init__(self, plugin: str, block: Block) -> None:
        super().__init__(block.message[:500], code=block.code[:64] or "blocked_by_plugin")
        self.plugin = plugin
        self.block = block

    def info(self) -> ErrorInfo:
        return ErrorInfo(
            status=self.block.status, type=self.block.type[:64], code=self.code_override or "", message=self.message
        )


Hook = Callable[[RequestView], Coroutine[object, object, HookResult | None]]
# (plugin, point, outcome: ok | error | timeout | invalid, seconds)
Observer = Callable[[str, str, str, float], None]


@dataclass(frozen=True)
class BoundHook:
    plugin: str
    hook: Hook
    timeout_s: float
    fail_closed: bool


def load_factory(path: str, entry_point: str) -> Callable[..., object]:
    """`package.module:factory`, or the entry point of that name in the `gatehouse.plugins` group."""
    if entry_point:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == entry_point]
        if not found:
            raise ValueError(f"no entry point {entry_point!r} in group {ENTRY_POINT_GROUP!r} is installed")
        obj = found[0].load()
    else:
        module_name, sep, attr = path.partition(":")
        if not sep or not module_name or not attr:
            raise ValueError(f"plugin path {path!r} must look like package.module:factory")
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"plugin factory {path or entry_point!r} is not callable")
    return obj  # type: ignore[no-any-return]  # checked callable above


def unloadable(plugins: Sequence[PluginConfig], formats: Sequence[str] = ()) -> list[str]:
    """What cannot be imported, one line each: `gatehouse up` says so before it starts anything (a service
    would fail the same way at startup, over and over)."""
    problems: list[str] = []
    for i, spec in enumerate(plugins):
        try:
            load_factory(spec.path, spec.entry_point)
        except Exception as exc:
            problems.append(f"plugins[{i}] ({spec.name}): cannot load {spec.path or spec.entry_point!r}: {exc}")
    for fmt in formats:
        try:
            load_factory(fmt, "")
        except Exception as exc:
            problems.append(f"webhook format {fmt!r} cannot be loaded: {exc}")
    return problems


def request_view(point: str, req: ChatRequest, guard_action: str = "") -> RequestView:
    """The view of a request as the guard and the router hold it (no headers: they never receive them)."""
    return RequestView(point=point, request_id=req.request_id, api=req.api, model=req.model, stream=req.stream,
                       tags=dict(req.tags), guard_action=guard_action, **caller_fields(req.caller))  # fmt: skip


class CallerFields(TypedDict):
    key_id: str
    team: str
    project: str
    org: str
    user: str


def caller_fields(caller: Caller) -> CallerFields:
    """The caller's part of a RequestView."""
    return {"key_id": caller.key_id, "team": caller.team, "project": caller.project, "org": caller.org,
            "user": caller.user}  # fmt: skip


class HookRunner:
    """The hooks of one process, by point, run in config order."""

    def __init__(self, hooks: Mapping[str, list[BoundHook]], headers: frozenset[str] = frozenset()) -> None:
        self._hooks: dict[str, tuple[BoundHook, ...]] = {p: tuple(h) for p, h in hooks.items() if h}
        self.headers = headers  # the request headers any before_guard plugin declared
        self.observe: Observer = metrics.plugin_call

    def has(self, point: HookPoint) -> bool:
        return point in self._hooks

    @property
    def empty(self) -> bool:
        return not self._hooks

    def header_view(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The declared request headers present in `headers`, bounded."""
        return {n: headers[n][:MAX_HEADER_CHARS] for n in self.headers if n in headers}

    async def run(self, point: HookPoint, view: RequestView) -> Applied:
        """Run every hook at `point`; raises PluginBlocked, or PluginError for a failure under fail: closed."""
        hooks = self._hooks.get(point)
        if not hooks:
            return NOTHING
        tags: dict[str, str] = {}
        headers: dict[str, str] = {}
        for bound in hooks:
            result = await self._one(point, bound, view)
            if result is None:
                continue
            if result.block is not None:
                raise PluginBlocked(bound.plugin, result.block)
            tags.update(result.tags)
            headers.update(result.headers)
        return Applied(tags, headers) if tags or headers else NOTHING

    async def refusal(self, point: HookPoint, view: RequestView) -> ErrorInfo | None:
        """Run the hooks of a point that may only block: the error to answer with (a block, or a failure under
        `fail: closed`), or None to go on."""
        try:
            await self.run(point, view)
        except GatewayError as exc:
            return exc.info()
        return None

    async def _one(self, point: HookPoint, bound: BoundHook, view: RequestView) -> HookResult | None:
        started = time.perf_counter()
        try:
            coro = bound.hook(view)
            try:
                # the first step runs here: a hook that never waits (most do not) ends in it, and needs no
                # timer; one that waits gets its timeout from there on
                first = coro.send(None)
            except StopIteration as done:
                result = done.value
            else:
                async with asyncio.timeout(bound.timeout_s):
                    result = await _Resumed(coro, first)
            result = _checked(point, result)
        except TimeoutError:
            self._failed(bound, point, "timeout", started, f"did not answer within {bound.timeout_s:g}s")
            return None
        except _Invalid as exc:
            self._failed(bound, point, "invalid", started, str(exc))
            return None
        except Exception as exc:
            self._failed(bound, point, "error", started, f"raised {type(exc).__name__}: {exc}"[:300])
            return None
        self.observe(bound.plugin, point, "ok", time.perf_counter() - started)
        return result

    def _failed(self, bound: BoundHook, point: str, outcome: str, started: float, why: str) -> None:
        self.observe(bound.plugin, point, outcome, time.perf_counter() - started)
        policy = "closed" if bound.fail_closed else "open"
        log.warning("plugin %s (%s) %s; failing %s", bound.plugin, point, why, policy)
        if bound.fail_closed:
            raise PluginError(f"The gateway plugin `{bound.plugin}` failed ({outcome}); the request was not served.")


class _Resumed:
    """Awaiting this goes on with a coroutine that already took its first step and yielded `first`: what the
    task would have got from it is handed to the task, and what the task sends or throws goes back in."""

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[object, object, HookResult | None], first: object) -> None:
        self._coro = coro
        self._first = first

    def __await__(self) -> Generator[object, object, object]:
        yielded = self._first
        while True:
            try:
                sent = yield yielded
            except BaseException as exc:  # the task's cancellation (a timeout): into the hook, as a task would
                try:
                    yielded = self._coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    yielded = self._coro.send(sent)
                except StopIteration as done:
                    return done.value


class _Invalid(Exception):
    """A hook returned what its point does not allow."""


def _checked(point: HookPoint, result: object) -> HookResult | None:
    if result is None:
        return None
    if not isinstance(result, HookResult):
        raise _Invalid(f"returned {type(result).__name__}, not HookResult or None")
    allowed = ALLOWED[point]
    for name in ("tags", "headers", "block"):
        if getattr(result, name) and name not in allowed:
            raise _Invalid(f"returned `{name}`, which {point} does not allow")
    if len(result.tags) > MAX_TAGS or any(
        not isinstance(k, str) or not isinstance(v, str) or len(k) > 64 or len(v) > MAX_TAG_CHARS
        for k, v in result.tags.items()
    ):
        raise _Invalid("returned tags beyond the limits (32 tags, names ≤ 64, values ≤ 256 characters)")
    for name, value in result.headers.items():
        if (
            not isinstance(name, str)
            or not isinstance(value, str)
            or not _token(name)
            or name.lower() in PROTECTED_HEADERS
            or len(value) > MAX_HEADER_CHARS
            or any(c in value for c in "\r\n\0")
        ):
            raise _Invalid(f"returned a header it may not set ({str(name)[:40]!r})")
    block = result.block
    if block is not None and not (
        isinstance(block, Block)
        and type(block.status) is int
        and 400 <= block.status < 500
        and all(isinstance(v, str) for v in (block.message, block.type, block.code))
    ):
        raise _Invalid("returned a block that is not a 4xx status with string message, type and code")
    return result


def _token(name: str) -> bool:
    return 0 < len(name) <= 64 and all(c.isalnum() or c in "-_" for c in name) and name.isascii()


def build_runner(specs: Sequence[PluginConfig], stage_points: frozenset[str]) -> HookRunner:
    """Instantiate the plugins that have a hook in this stage (others are not even imported)."""
    hooks: dict[str, list[BoundHook]] = {}
    headers: set[str] = set()
    for spec in specs:
        points = [p for p in spec.hooks if p in stage_points]
        if not points:
            continue
        factory = load_factory(spec.path, spec.entry_point)
        plugin = factory(dict(spec.options))
        for point in points:
            hook = getattr(plugin, point, None)
            if hook is None or not inspect.iscoroutinefunction(hook):
                raise ValueError(f"plugin {spec.name!r} declares hook {point!r} but has no `async def {point}`")
            bound = BoundHook(spec.name, hook, spec.timeout_ms / 1000, spec.fail == "closed")
            hooks.setdefault(point, []).append(bound)
        if "before_guard" in points or "after_response" in points:
            headers.update(h.lower() for h in spec.headers if h.lower() not in SECRET_HEADERS)
    return HookRunner(hooks, frozenset(headers))
