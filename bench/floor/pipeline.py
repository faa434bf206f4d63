"""The cost floor of gatehouse's shape in this stack: the same processes and libraries with none of the work.

    python bench/floor/pipeline.py --shape hops --port 15090 --upstream http://127.0.0.1:18080

Shapes (each answers `POST /v1/chat/completions` by forwarding the body to the upstream unchanged):
  proxy   one process: uvicorn (httptools, uvloop) → aiohttp → upstream; no bus
  hops    ingress → guard → router over core NATS request/reply (three messages on the critical path), the
          router calling the upstream with aiohttp and replying straight to the ingress inbox; no auth, no scan,
          no translation, no record
  events  hops, plus what a record costs on the bus: after the response is written the ingress publishes a 1 KB
          event to a JetStream work-queue stream (file storage) and awaits its ack (as gatehouse's ingress publishes
          the request's record), and a consumer process pulls the stream once a second and acks (stores nothing)

It measures what the architecture (separate processes linked by NATS, every event through JetStream) costs in
Python before any gateway logic runs, as a target of the shared benchmark (bench/floor/*.sh); it is not a
gateway. A body that is not a chat request is forwarded all the same.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from typing import Any

GUARD = "floor.guard"
ROUTER = "floor.router"
EVENTS = "floor.events.request"
_EVENT = b'{"event":"request","pad":"' + b"x" * 1000 + b'"}'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _answer(send: Any, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _upstream_url(base: str, body: bytes) -> str:
    stream = b'"stream":true' in body.replace(b" ", b"")
    return f"{base}/stream/v1/chat/completions" if stream else f"{base}/v1/chat/completions"


class Ingress:
    """ASGI app: GET → 200 (health); POST → the body to the next stage (or the upstream), its answer back."""

    def __init__(self, shape: str, nats_url: str, upstream: str) -> None:
        self.shape, self.nats_url, self.upstream = shape, nats_url, upstream
        self.nc: Any = None
        self.session: Any = None

    async def _start(self) -> None:
        if self.shape == "proxy":
            import aiohttp

            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
        else:
            import nats

            self.nc = await nats.connect(self.nats_url, pending_size=64 * 1024 * 1024)
            if self.shape == "events":
                await _ensure_stream(self.nc)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await self._start()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["method"] != "POST":
            await _answer(send, 200, b'{"status":"ok"}')
            return
        body = await _read_body(receive)
        stream = b'"stream":true' in body.replace(b" ", b"")
        kind = b"text/event-stream" if stream else b"application/json"
        if self.shape == "proxy":
            async with self.session.post(_upstream_url(self.upstream, body), data=body) as response:
                await _answer(send, response.status, await response.read(), kind)
            return
        reply = await self.nc.request(GUARD, body, timeout=30)
        await _answer(send, 200, reply.data, kind)
        if self.shape == "events":
            await self.nc.jetstream().publish(EVENTS, _EVENT, headers={"Nats-Msg-Id": uuid.uuid4().hex})


async def _guard(nats_url: str) -> None:
    import nats

    nc = await nats.connect(nats_url, pending_size=64 * 1024 * 1024)

    async def relay(msg: Any) -> None:
        await nc.publish(ROUTER, msg.data, reply=msg.reply)

    await nc.subscribe(GUARD, queue="guard", cb=relay)
    await asyncio.Event().wait()


async def _router(nats_url: str, upstream: str) -> None:
    import aiohttp
    import nats

    nc = await nats.connect(nats_url, pending_size=64 * 1024 * 1024)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

    async def dispatch(msg: Any) -> None:
        async with session.post(_upstream_url(upstream, msg.data), data=msg.data) as response:
            data = await response.read()
        await nc.publish(msg.reply, data)

    await nc.subscribe(ROUTER, queue="router", cb=dispatch)
    await asyncio.Event().wait()


async def _ensure_stream(nc: Any) -> None:
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig

    config = StreamConfig(
        name="FLOOR", subjects=["floor.events.>"], retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE
    )
    await nc.jetstream().add_stream(config)


async def _consumer(nats_url: str) -> None:
    import nats

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await _ensure_stream(nc)
    sub = await js.pull_subscribe(EVENTS, durable="floor")
    while True:
        await asyncio.sleep(1.0)  # one pull per interval, like accounting's flush
        with contextlib.suppress(nats.errors.TimeoutError):
            while True:
                msgs = await sub.fetch(1000, timeout=0.05)
                for m in msgs:
                    await m.ack()


def _stage(role: str, args: argparse.Namespace) -> None:
    import uvloop

    if role == "ingress":
        import uvicorn

        app = Ingress(args.shape, args.nats_url, args.upstream)
        uvicorn.run(
            app,
            host="127.0.0.1",
            port=args.port,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            access_log=False,
        )
    elif role == "guard":
        uvloop.run(_guard(args.nats_url))
    elif role == "router":
        uvloop.run(_router(args.nats_url, args.upstream))
    elif role == "consumer":
        uvloop.run(_consumer(args.nats_url))


def _launch(args: argparse.Namespace) -> None:
    """Start nats-server (JetStream) and each stage of the shape; stop them all on SIGINT/SIGTERM."""
    children: list[subprocess.Popen[bytes]] = []
    data_dir = tempfile.mkdtemp(prefix="floor-nats-")
    roles = ["ingress"]
    nats_url = ""
    if args.shape != "proxy":
        nats_port = _free_port()
        nats_url = f"nats://127.0.0.1:{nats_port}"
        server = os.path.join(sysconfig.get_path("scripts"), "nats-server")
        cmd = [server, "-a", "127.0.0.1", "-p", str(nats_port), "-js", "-sd", data_dir]
        children.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        roles = ["guard", "router", "ingress"] + (["consumer"] if args.shape == "events" else [])
        with socket.socket() as probe:  # wait until nats-server listens
            for _ in range(200):
                if probe.connect_ex(("127.0.0.1", nats_port)) == 0:
                    break
                time.sleep(0.05)
    base = [sys.executable, __file__, "--shape", args.shape, "--port", str(args.port), "--upstream", args.upstream]
    for role in roles:
        children.append(subprocess.Popen([*base, "--role", role, "--nats-url", nats_url]))

    def stop(*_: object) -> None:
        for child in reversed(children):  # the stages first, nats-server (the first child) last
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(10)
        shutil.rmtree(data_dir, ignore_errors=True)
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while True:
        signal.pause()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["proxy", "hops", "events"], default="hops")
    parser.add_argument("--port", type=int, default=15090)
    parser.add_argument("--upstream", default="http://127.0.0.1:18080")
    parser.add_argument("--role", choices=["ingress", "guard", "router", "consumer"])
    parser.add_argument("--nats-url", default="")
    args = parser.parse_args()
    if args.role:
        _stage(args.role, args)
    else:
        _launch(args)


if __name__ == "__main__":
    main()
