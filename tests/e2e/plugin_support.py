"""Test plugins loaded by the stack's own service processes (by import path), and a webhook receiver that
answers as told: each plugin misbehaves only for requests that ask it to (a header or the tag it becomes),
so one stack serves every case."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.plugins import Block, HookResult, RequestView

MODE_HEADER = "x-test-mode"  # declared by the ingress plugins; `x-gatehouse-tag-mode` makes it a tag for the others
HANG_S = 30.0


class FaultyOpen:
    """before_guard, fail open: raises or hangs when the request asks it to."""

    async def before_guard(self, view: RequestView) -> HookResult | None:
        mode = view.headers.get(MODE_HEADER, "")
        if mode == "raise-open":
            raise RuntimeError("the plugin broke (secret detail that must not reach the client)")
        if mode == "hang-open":
            await asyncio.sleep(HANG_S)
        return None


class FaultyClosed:
    """after_guard, fail closed: raises or hangs when the request's `mode` tag asks it to."""

    async def after_guard(self, view: RequestView) -> HookResult | None:
        mode = view.tags.get("mode", "")
        if mode == "raise-closed":
            raise RuntimeError("the plugin broke (secret detail that must not reach the client)")
        if mode == "hang-closed":
            await asyncio.sleep(HANG_S)
        return None


class Rewriter:
    """before_guard rewrites a request header (a tag header here, so the record shows it); after_response
    adds a response header naming what it saw."""

    async def before_guard(self, view: RequestView) -> HookResult | None:
        if view.headers.get(MODE_HEADER) == "rewrite":
            return HookResult(headers={"x-gatehouse-tag-rewritten": "by-plugin", "x-gatehouse-tag-drop": ""})
        return None

    async def after_response(self, view: RequestView) -> HookResult | None:
        if view.headers.get(MODE_HEADER) == "rewrite":
            seen = f"{view.model}/{view.status}/{view.output_tokens}"
            return HookResult(headers={"x-plugin-seen": seen, "x-plugin-headers": ",".join(sorted(view.headers))})
        return None


class Gatekeeper:
    """before_dispatch, fail closed: blocks, hangs, or breaks its contract when the request's tag asks it to."""

    async def before_dispatch(self, view: RequestView) -> HookResult | None:
        mode = view.tags.get("mode", "")
        if mode == "block":
            return HookResult(block=Block(message="Refused by the gatekeeper plugin.", code="gatekeeper_refused"))
        if mode == "hang-dispatch":
            await asyncio.sleep(HANG_S)
        if mode == "forbidden-header":
            return HookResult(headers={"x-not-allowed-here": "1"})  # before_dispatch may only block
        return None


class Recorder:
    """on_event: appends each stored record's view to a file (JSON lines), so the test can read what it saw."""

    def __init__(self, path: str) -> None:
        self._path = path

    async def on_event(self, view: RequestView) -> HookResult | None:
        with open(self._path, "ab") as out:
            out.write(msgspec.json.encode(view) + b"\n")
        return None


def recorder(options: Mapping[str, object]) -> Recorder:
    return Recorder(str(options["path"]))


def faulty_open(_options: Mapping[str, object]) -> FaultyOpen:
    return FaultyOpen()


def faulty_closed(_options: Mapping[str, object]) -> FaultyClosed:
    return FaultyClosed()


def rewriter(_options: Mapping[str, object]) -> Rewriter:
    return Rewriter()


def gatekeeper(_options: Mapping[str, object]) -> Gatekeeper:
    return Gatekeeper()


def plugins_yaml(events_file: str) -> str:
    return (
        PLUGINS_YAML
        + f"""  - name: recorder
    path: tests.e2e.plugin_support:recorder
    hooks: [on_event]
    options: {{path: "{events_file}"}}
"""
    )


PLUGINS_YAML = f"""plugins:
  - name: faulty-open
    path: tests.e2e.plugin_support:faulty_open
    hooks: [before_guard]
    headers: [{MODE_HEADER}, authorization]
    timeout_ms: 300
    fail: open
  - name: faulty-closed
    path: tests.e2e.plugin_support:faulty_closed
    hooks: [after_guard]
    timeout_ms: 300
    fail: closed
  - name: rewriter
    path: tests.e2e.plugin_support:rewriter
    hooks: [before_guard, after_response]
    headers: [{MODE_HEADER}]
    fail: closed
  - name: gatekeeper
    path: tests.e2e.plugin_support:gatekeeper
    hooks: [before_dispatch]
    timeout_ms: 300
    fail: closed
  - name: header-tags
    path: gatehouse.plugins.header_tags:create
    hooks: [before_guard]
    headers: [x-team-name, x-cost-center]
    options: {{names: {{x-cost-center: cost_center}}}}
"""


@dataclass
class Receiver:
    """What one webhook endpoint was sent, and how it answers: `fail_first` failures, then 200 (or always
    `fail_status` while `failing` is set)."""

    fail_first: int = 0
    failing: bool = False
    fail_status: int = 500
    posts: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)  # (headers, body, answered)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            with self.lock:
                fail = self.failing or len(self.posts) < self.fail_first
                status = self.fail_status if fail else 200
                self.posts.append((dict(request.headers), body, status))
            return JSONResponse({"ok": not fail}, status_code=status)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    def answered(self, status: int) -> list[tuple[dict[str, str], bytes, int]]:
        with self.lock:
            return [p for p in self.posts if p[2] == status]
