"""Bench only: timestamps of each request at each hop of a gatehouse service process (see bench/hop_profile.py).

`install(dir)` wraps, in this process only, the few functions a request passes through and appends
(CLOCK_MONOTONIC ns, the thread's CPU time ns, point, request id) to a list that a daemon thread writes to
`<dir>/<service>-<pid>.tsv` every second. CLOCK_MONOTONIC is one clock for every process on the machine, so
the points of one request in ingress, guard and router (and the load generator) line up; the CPU time
tells, between two points of one process, the work done from the time spent waiting (for a CPU, a wake-up).
Each point costs about a microsecond (two clock reads); hop_profile.py --no-trace measures the stack without
them. Nothing here changes what a function does.

Points (`<process>.<what>`; rx/pub are NATS messages read from the socket / handed to nats-py):
  ingress   http (socket read that began the request), start (handler), pub.guard, rx.inbox (verdict, then
            result), next (the request task has the reply), submit0/1 (record to the event publisher),
            write0/1 (response handed to the transport), pub.events (record published to JetStream)
  guard     rx.guard, cb (subscription callback), start, check0/1 (policy scan), pub.inbox (verdict),
            pub.router, end
  router    rx.router, cb, start, send (upstream request), resp (upstream status and headers), body (read),
            pub.inbox (Result), end
Socket writes, per process and not per request (request id "-"): natswrite0/1 around nats-py's flush to the
NATS socket, httpwrite0/1 around aiohttp's writes of the upstream request (router).
"""

from __future__ import annotations

import atexit
import contextvars
import functools
import os
import threading
import time
from pathlib import Path
from typing import Any

_now = time.monotonic_ns
_cpu = time.thread_time_ns
_events: list[tuple[int, int, str, str]] = []
_rid: contextvars.ContextVar[str] = contextvars.ContextVar("hoptrace_rid", default="")
_lock = threading.Lock()


def _flusher(path: Path) -> None:
    def flush() -> None:
        global _events
        with _lock:
            batch, _events = _events, []
        if batch:
            with path.open("a") as out:
                out.writelines(f"{t}\t{cpu}\t{point}\t{rid}\n" for t, cpu, point, rid in batch)

    def loop() -> None:
        while True:
            time.sleep(1.0)
            flush()

    threading.Thread(target=loop, daemon=True, name="hoptrace").start()
    atexit.register(flush)


def _kind(subject: str) -> str:
    if subject.startswith("_INBOX."):
        return "ack"
    parts = subject.split(".", 2)
    return parts[1] if len(parts) > 1 else subject


def _header_rid(raw: bytes | None) -> str:
    if not raw:
        return ""
    at = raw.find(b"Gh-Request-Id: ")
    if at < 0:
        return ""
    end = raw.find(b"\r\n", at)
    return raw[at + 15 : end].decode()


def _patch_nats(svc: str) -> None:
    import asyncio

    from nats.aio.client import Client

    # nats-py flushes through an asyncio StreamWriter; nothing else in these processes uses one
    _around_sync(asyncio.StreamWriter, "writelines", f"{svc}.natswrite0", f"{svc}.natswrite1", rid="-")

    publish, process_msg = Client.publish, Client._process_msg

    async def traced_publish(
        self: Any, subject: str, payload: bytes = b"", reply: str = "", headers: Any = None
    ) -> None:
        kind = _kind(subject)
        rid = (headers or {}).get("Gh-Request-Id") or (headers or {}).get("Nats-Msg-Id") or ""
        if not rid and kind in ("inbox", "guardout"):
            rid = subject.rsplit(".", 1)[1]
        _events.append((_now(), _cpu(), f"{svc}.pub.{kind}", rid))
        await publish(self, subject, payload, reply, headers)

    async def traced_process_msg(
        self: Any, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        t, cpu = _now(), _cpu()
        text = subject.decode()
        kind = _kind(text)
        if kind != "ack":
            rid = text.rsplit(".", 1)[1] if kind in ("inbox", "guardout") else _header_rid(headers)
            _events.append((t, cpu, f"{svc}.rx.{kind}", rid))
        await process_msg(self, sid, subject, reply, data, headers)

    Client.publish = traced_publish  # type: ignore[method-assign]
    Client._process_msg = traced_process_msg  # type: ignore[method-assign]


def _around(owner: Any, name: str, before: str, after: str = "", rid_from: Any = None) -> None:
    """Wrap an async method: point `before` on entry (setting the request id from `rid_from(args)`), `after`
    when it returns."""
    original = getattr(owner, name)

    @functools.wraps(original)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if rid_from is not None:
            _rid.set(rid_from(args))
        _events.append((_now(), _cpu(), before, _rid.get()))
        try:
            return await original(*args, **kwargs)
        finally:
            if after:
                _events.append((_now(), _cpu(), after, _rid.get()))

    setattr(owner, name, wrapper)


def _around_sync(owner: Any, name: str, before: str, after: str, rid: str = "") -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _events.append((_now(), _cpu(), before, rid or _rid.get()))
        try:
            return original(*args, **kwargs)
        finally:
            _events.append((_now(), _cpu(), after, rid or _rid.get()))

    setattr(owner, name, wrapper)


def _msg_rid(args: tuple[Any, ...]) -> str:
    headers = args[1].headers or {}
    return str(headers.get("Gh-Request-Id", ""))


def _patch_ingress() -> None:
    from starlette.responses import Response
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    import services.ingress.app as app
    import shared.records as records

    data_received, message_begin = HttpToolsProtocol.data_received, HttpToolsProtocol.on_message_begin

    def traced_data_received(self: Any, data: bytes) -> None:
        self._hoptrace_t = (_now(), _cpu())
        data_received(self, data)

    def traced_message_begin(self: Any) -> None:
        message_begin(self)
        self.scope["hoptrace_t"] = getattr(self, "_hoptrace_t", (0, 0))

    HttpToolsProtocol.data_received = traced_data_received  # type: ignore[method-assign]
    HttpToolsProtocol.on_message_begin = traced_message_begin  # type: ignore[method-assign]

    serve, new_id = app.Gateway._serve, app.new_request_id
    http_t: contextvars.ContextVar[tuple[int, int]] = contextvars.ContextVar("hoptrace_http", default=(0, 0))

    async def traced_serve(self: Any, request: Any, api: Any) -> Any:
        http_t.set(request.scope.get("hoptrace_t", (0, 0)))
        return await serve(self, request, api)

    def traced_new_id() -> str:
        t, cpu = _now(), _cpu()
        rid = new_id()
        _rid.set(rid)
        _events.append((*http_t.get(), "ingress.http", rid))
        _events.append((t, cpu, "ingress.start", rid))
        return rid

    app.Gateway._serve = traced_serve  # type: ignore[method-assign]
    app.new_request_id = traced_new_id
    next_reply = app.next_reply

    async def traced_next(*args: Any, **kwargs: Any) -> Any:
        item = await next_reply(*args, **kwargs)
        _events.append((_now(), _cpu(), f"ingress.next.{type(item).__name__}", _rid.get()))
        return item

    app.next_reply = traced_next
    _around_sync(records.RecordPublisher, "submit", "ingress.submit0", "ingress.submit1")
    _around(Response, "__call__", "ingress.write0", "ingress.write1")


def _patch_guard() -> None:
    import services.guard.app as app
    import services.guard.core as core
    from shared.bus import QueueWorker

    _around(QueueWorker, "_on_msg", "guard.cb", rid_from=_msg_rid)
    _around(app.GuardHandlers, "on_request", "guard.start", "guard.end", rid_from=_msg_rid)
    _around_sync(core.Guard, "check", "guard.check0", "guard.check1")


def _patch_router() -> None:
    import services.router.app as app
    import services.router.upstream as upstream
    from shared.bus import QueueWorker

    _around(QueueWorker, "_on_msg", "router.cb", rid_from=_msg_rid)
    _around(app.RouterHandlers, "on_request", "router.start", "router.end", rid_from=_msg_rid)
    _around(upstream.Upstream, "send", "router.send")
    _around(upstream, "_read", "router.resp", "router.body")
    from aiohttp.http_writer import StreamWriter

    _around_sync(StreamWriter, "_write", "router.httpwrite0", "router.httpwrite1", rid="-")
    _around_sync(StreamWriter, "_writelines", "router.httpwrite0", "router.httpwrite1", rid="-")


def install(directory: str, svc: str) -> None:
    patch = {"ingress": _patch_ingress, "guard": _patch_guard, "router": _patch_router}.get(svc)
    if patch is None:
        return
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    _patch_nats(svc)
    patch()
    _flusher(out / f"{svc}-{os.getpid()}.tsv")
