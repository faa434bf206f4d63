"""The response path through the guard, for requests whose policy scans responses or restores values:
the router answers the guard, which filters each reply and passes it on to the ingress inbox in order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import msgspec

from services.guard.output import OutputFilter
from services.guard.policy import Policy
from services.guard.redaction import Vault
from shared.bus import split_result
from shared.schemas.chat import BodyPart, Chunk, ChunkBatch, GuardFinding, GuardSummary, Outcome, Reply, Result
from shared.subjects import Subject

Publish = Callable[[str, bytes], Awaitable[None]]
Record = Callable[[str, GuardSummary, list[GuardFinding], str, int], None]
_RANK = ("allow", "flag", "redact", "block")


class _Pending:
    __slots__ = ("created", "filter", "parts", "reply_to", "summary")

    def __init__(self, reply_to: str, summary: GuardSummary, out: OutputFilter) -> None:
        self.reply_to = reply_to
        self.summary = summary
        self.filter = out
        self.created = time.monotonic()
        self.parts: list[bytes] = []  # a large completion arriving in pieces, scanned once whole


class ResponseRelay:
    """State of the responses in flight through one guard replica (replies arrive on one subscription)."""

    def __init__(
        self, replies: Subject[Reply], holdback: int, publish: Publish, record: Record, ttl_s: float = 900.0
    ) -> None:
        self._replies = replies
        self._holdback = holdback
        self._publish = publish
        self._record = record
        self._ttl = ttl_s
        self._pending: dict[str, _Pending] = {}

    def track(
        self, request_id: str, reply_to: str, summary: GuardSummary, output: Policy | None, vault: Vault | None
    ) -> None:
        """Relay this request's response: scan it with `output`, restore `vault`'s values (which never
        leave this replica)."""
        self._pending[request_id] = _Pending(reply_to, summary, OutputFilter(output, vault, self._holdback))

    def sweep(self) -> int:
        """Forget responses that never ended (their clients timed out long ago); returns how many."""
        cutoff = time.monotonic() - self._ttl
        stale = [r for r, p in self._pending.items() if p.created < cutoff]
        for rid in stale:
            del self._pending[rid]
        return len(stale)

    async def sweep_forever(self, every_s: float = 60.0) -> None:
        while True:
            await asyncio.sleep(every_s)
            self.sweep()

    async def on_reply(self, request_id: str, data: bytes) -> None:
        state = self._pending.get(request_id)
        if state is None:
            return
        out = state.filter
        reply = self._replies.decode(data)
        if isinstance(reply, BodyPart):
            state.parts.append(reply.data)
            return
        if not isinstance(reply, Chunk | ChunkBatch | Result):
            await self._publish(state.reply_to, data)  # heartbeats: on as they are
            return
        if isinstance(reply, Chunk | ChunkBatch):
            items = [reply.data] if isinstance(reply, Chunk) else reply.items
            sends = [c for c in (out.chunk(item) for item in items) if c is not None]
            if out.error is None:
                if sends:
                    reply_out = Chunk(sends[0]) if len(sends) == 1 else ChunkBatch(sends)
                    await self._publish(state.reply_to, self._replies.encode(reply_out))
                return
            final = Result(outcome=Outcome(), error=out.error)
        else:
            final = await self._final(state, reply)
        del self._pending[request_id]
        action = "block" if out.error is not None else state.summary.action
        if out.findings and action == "allow":
            action = max((f.action for f in out.findings), key=_RANK.index)
        findings = [*state.summary.findings, *out.findings]
        summary = msgspec.structs.replace(state.summary, action=action, findings=findings)
        for piece in split_result(msgspec.structs.replace(final, guard=summary)):
            await self._publish(state.reply_to, self._replies.encode(piece))
        if out.findings:
            self._record(request_id, msgspec.structs.replace(summary, findings=out.findings), out.findings, "output", 0)

    async def _final(self, state: _Pending, reply: Result) -> Result:
        out = state.filter
        if reply.error is not None:
            return reply
        if reply.body or state.parts:  # a whole completion
            body = out.completion(b"".join([*state.parts, reply.body]))
            state.parts.clear()
            if out.error is not None:
                return msgspec.structs.replace(reply, body=b"", error=out.error)
            return msgspec.structs.replace(reply, body=body)
        tail = out.end()  # the end of a stream: release what was held back
        if tail is not None:
            await self._publish(state.reply_to, self._replies.encode(Chunk(tail)))
        return reply if out.error is None else msgspec.structs.replace(reply, error=out.error)
