"""A tool call's path from ingress's call handling (ToolCalls) through the guard's handlers on a real nats-server
and JetStream KV, to a recording stand-in for the mcp stage that answers each call with what a test gives it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import nats
import nats.js.errors
from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.aio.msg import Msg

from services.guard.app import GuardHandlers
from services.guard.core import Guard
from services.ingress.mcp.approvals import Approvals
from services.ingress.mcp.calls import CallContext, ToolCalls
from shared.config import parse_config
from shared.directory import Directory
from shared.event_publisher import EventPublisher
from shared.schemas.mcp import Approval, ToolCall, ToolOutcome
from shared.spool import SpoolConfig
from shared.subjects import Subjects


class _Broker:
    """What the guard's handlers use of their broker: the connection."""

    def __init__(self, nc: Client) -> None:
        self.connection = nc


@dataclass
class Rig:
    nc: Client
    calls: ToolCalls
    approvals: Approvals
    ctx: CallContext
    upstream: list[ToolCall] = field(default_factory=list)  # what reached the mcp stage

    async def entries(self) -> list[bytes]:
        kv = await self.approvals.kv()
        try:
            keys = await kv.keys()
        except nats.js.errors.NoKeysError:
            return []
        return [(await kv.get(k)).value or b"" for k in keys]

    async def pending(self) -> Approval:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pending = await self.approvals.pending()
            if pending:
                return pending[0]
            await asyncio.sleep(0.02)
        raise AssertionError("no approval appeared")


@asynccontextmanager
async def guard_rig(
    nats_url: str, tmp_path: Path, config_text: str, result: Callable[[ToolCall], bytes], key: str = "k"
) -> AsyncIterator[Rig]:
    """The rig for `config_text`; calls are made as its key `key`, and the mcp stage answers `result(call)`."""
    config = parse_config(config_text)
    subjects = Subjects(f"gr{time.monotonic_ns()}")
    nc = await nats.connect(nats_url)
    events = EventPublisher(SpoolConfig(root=tmp_path / "guard"))
    guard = GuardHandlers(cast(NatsBroker, _Broker(nc)), Guard(config), subjects, events)
    upstream: list[ToolCall] = []

    async def mcp_stage(msg: Msg) -> None:
        call = subjects.mcp_call.decode(msg.data)
        upstream.append(call)
        outcome = ToolOutcome(call_id=call.call_id, result=result(call))
        await msg.respond(subjects.mcp_call.encode_reply(outcome))

    subs = [
        await nc.subscribe(subjects.guard_mcp.name, cb=guard.on_tool_call),
        await nc.subscribe(subjects.guard_mcp_scan.name, cb=guard.on_tool_scan),
        await nc.subscribe(subjects.mcp_call.name, cb=mcp_stage),
    ]
    approvals = Approvals(nc.jetstream(), subjects.mcp_approvals_bucket)
    calls = ToolCalls(
        config.mcp,
        subjects,
        lambda: nc,
        lambda: None,
        EventPublisher(SpoolConfig(root=tmp_path / "ingress")),
        lambda: approvals,
        lambda: None,
    )
    directory = Directory.with_static({k.id: k for k in config.keys})
    ctx = CallContext(ent=directory.entitlement(directory.static[key]))
    try:
        yield Rig(nc, calls, approvals, ctx, upstream)
    finally:
        for sub in subs:
            await sub.unsubscribe()
        await nc.close()
