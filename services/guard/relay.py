"""The response path through the guard, for requests whose policy scans responses or restores values:
the router answers the guard, which filters each reply and passes it on to the ingress inbox in order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import msgspec

from services.guard.content import ResponseCapture
from services.guard.output import OutputFilter
from services.guard.policy import Policy
from services.guard.redaction import Vault
from shared.bus import split_result
from shared.schemas.chat import (
    BodyPart,
    Chunk,
    ChunkBatch,
    GuardFinding,
    GuardSummary,
    NativeEvents,
    Outcome,
    Reply,
    Result,
)
from shared.schemas.events import ContentEvent
from shared.subjects import Subject

Publish = Callable[[str, bytes], Awaitable[None]]
Record = Callable[[str, GuardSummary, list[GuardFinding], str, int], None]
LogContent = Callable[[ContentEvent], None]
_RANK = ("allow", "flag", "redact", "block")


class _Pending:
    __slots__ = ("capture", "created", "filter", "parts", "reply_to", "summary")

    def __init__(
        self, reply_to: str, summary: GuardSummary, out: OutputFilter, capture: ResponseCapture | None
    ) -> None:
        self.reply_to = reply_to
        self.summary = summary
        self.filter = out
        self.capture = capture  # the content log's copy of the response, for callers that log content
        self.created = time.monotonic()
        self.parts: list[bytes] = []  # a large completion arriving in pieces, scanned once whole


class ResponseRelay:
    """State of the responses in flight through one guard replica (replies arrive on one subscription)."""

    def __init__(
        self,
        replies: Subject[Reply],
        holdback: int,
        publish: Publish,
        record: Record,
        ttl_s: float = 900.0,
        log_content: LogContent | None = None,
    ) -> None:
        self._log_content = log_content
        self._replies = replies
        self._holdback = holdback
        self._publish = publish
        self._record = record
        self._ttl = ttl_s
        self._pending: dict[str, _Pending] = {}

    def track(
        self,
        request_id: str,
        reply_to: str,
        summary: GuardSummary,
        output: Policy | None,
        vault: Vault | None,
        capture: ResponseCapture | None = None,
    ) -> None:
        """Relay this request's response: scan it with `output`, restore `vault`'s values (which never
        leave this replica), and copy it into `capture` for the content log."""
        out = OutputFilter(output, vault, self._holdback)
        self._pending[request_id] = _Pending(reply_to, summary, out, capture)

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
        capture = state.capture
        if capture is not None:
            _copy(capture, reply, state.parts)
        if not isinstance(reply, Chunk | ChunkBatch | Result):
            await self._publish(state.reply_to, data)  # heartbeats, native stream events: on as they are
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
        if capture is not None and self._log_content is not None:
            self._log_content(capture.event(action))

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


def _copy(capture: ResponseCapture, reply: Reply, parts: list[bytes]) -> None:
    """The response as the model produced it (before restores), into the content log's capture."""
    if isinstance(reply, Chunk):
        capture.chunk(reply.data)
    elif isinstance(reply, ChunkBatch):
        for item in reply.items:
            capture.chunk(item)
    elif isinstance(reply, NativeEvents):
        for item in reply.items:
            capture.native(item)
    elif isinstance(reply, Result) and (reply.body or parts):
        body = b"".join([*parts, reply.body])
        if reply.native:
            capture.native(body)
        else:
            capture.completion(body)
