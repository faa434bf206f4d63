"""Tool calls that need an admin's approval: each waits as an `Approval` in a KV bucket (so any ingress replica's
admin API can decide it) until an admin approves or denies it, or its time runs out.

An approval holds the call as the guard left it (services/ingress/mcp/calls.py scans the arguments first): the
arguments redacted where the policy redacts, and the guard's verdict (rule ids and JSON paths, never text). A
decision counts only for the call that was put up: an entry whose call (tool, arguments, key, …) no longer matches
what this replica published is refused, never run.

Admin API (admin key only): `GET /admin/v1/mcp/approvals` (pending ones), `GET …/{id}`,
`POST …/{id}/approve`, `POST …/{id}/deny` (optional JSON body `{"reason": "…"}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Literal

import msgspec
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared.schemas.mcp import Approval

log = logging.getLogger("gatehouse.ingress.approvals")

_ENCODE = msgspec.json.Encoder()
_DECODE = msgspec.json.Decoder(Approval)
# the longest arguments (JSON text, characters) an approver is shown; a call with longer ones is refused rather
# than shown cut (an approver must see the whole call)
MAX_SHOWN_ARGUMENTS = 4096
# calls of one key waiting for an approval at once (per ingress replica), unless the config says otherwise
MAX_PENDING_PER_KEY = 8
# decided or expired approvals stay readable this long (the bucket's max age)
KEEP_S = 7 * 86400

Outcome = Literal["approved", "denied", "timeout"]


class ApprovalConflict(Exception):
    """The approval was decided already (or expired)."""


class ApprovalRefused(Exception):
    """The call cannot be put to an approver: its arguments are too long to show whole (`too_large`), or its
    key has too many calls waiting already (`too_many`)."""

    def __init__(self, kind: Literal["too_large", "too_many"], message: str) -> None:
        super().__init__(message)
        self.kind = kind


def check_shown(arguments: str) -> None:
    """ApprovalRefused when an approver could not be shown these arguments whole."""
    if len(arguments) > MAX_SHOWN_ARGUMENTS:
        raise ApprovalRefused(
            "too_large",
            f"The call's arguments are {len(arguments)} characters, too large to approve: an approver is shown "
            f"at most {MAX_SHOWN_ARGUMENTS}, and must see the whole call.",
        )


class Approvals:
    def __init__(self, js: JetStreamContext, bucket: str, max_pending_per_key: int = MAX_PENDING_PER_KEY) -> None:
        self._js = js
        self._bucket = bucket
        self._kv: KeyValue | None = None
        self.max_pending_per_key = max_pending_per_key
        self._waiting: dict[str, int] = {}  # key id → calls of this replica waiting for an approval

    async def kv(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self._js.key_value(self._bucket)
            except BucketNotFoundError:
                self._kv = await self._js.create_key_value(
                    KeyValueConfig(bucket=self._bucket, history=1, ttl=KEEP_S, storage=StorageType.FILE)
                )
        return self._kv

    async def wait(self, approval: Approval) -> tuple[Outcome, Approval]:
        """Publish the approval as pending and wait for an admin's decision until it expires; ApprovalRefused
        (before anything is published) when its arguments are too long to show whole or its key has
        `max_pending_per_key` calls waiting on this replica already."""
        check_shown(approval.arguments)
        key = approval.key_id
        if self._waiting.get(key, 0) >= self.max_pending_per_key:
            raise ApprovalRefused(
                "too_many",
                f"This key has {self.max_pending_per_key} calls waiting for an approval already; "
                "try again once some are decided.",
            )
        self._waiting[key] = self._waiting.get(key, 0) + 1  # counted before the first await: no race
        waiting = asyncio.ensure_future(self._wait(approval))
        try:
            # waited on apart: a cancel of the caller (its client left) reaches it at once, where nats-py's KV
            # watch let it wait on to the deadline (measured: a cancel 0.1 s in, the timeout 5 s later)
            await asyncio.wait({waiting})
            return waiting.result()
        except asyncio.CancelledError:
            # nobody waits for this call any more: the entry is withdrawn, so no admin approves a call that
            # would never run (and the wait, seeing it decided, ends)
            with contextlib.suppress(Exception):
                await self.decide(approval.call_id, "denied", "gatehouse", "the caller left")
            waiting.cancel()
            raise
        finally:
            left = self._waiting[key] - 1
            if left:
                self._waiting[key] = left
            else:
                del self._waiting[key]

    async def _wait(self, approval: Approval) -> tuple[Outcome, Approval]:
        kv = await self.kv()
        await kv.create(approval.call_id, _ENCODE.encode(approval))
        watcher = await kv.watch(approval.call_id)
        try:
            while True:
                left = approval.expires_at - time.time()
                if left <= 0:
                    break
                try:
                    entry = await watcher.updates(timeout=left)  # type: ignore[no-untyped-call]  # nats-py is untyped here
                except TimeoutError:
                    break
                if entry is None or not entry.value:  # the end of the initial values, or a deletion
                    continue
                current = _DECODE.decode(entry.value)
                if current.state != "pending":
                    return _as_published(approval, current)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py is untyped here
        # expired: a decision racing the deadline still wins if it got in first
        try:
            expired = await self.decide(approval.call_id, "denied", "gatehouse", "timed out")
        except KeyError:  # the entry was deleted while the call waited: nobody approved it
            return "timeout", approval
        except ApprovalConflict:
            try:
                entry = await kv.get(approval.call_id)
            except KeyNotFoundError:
                return "timeout", approval
            current = _DECODE.decode(entry.value or b"")
            if current.state == "approved":
                return _as_published(approval, current)
            return "denied", current
        return "timeout", expired

    async def decide(self, call_id: str, state: Literal["approved", "denied"], who: str, reason: str = "") -> Approval:
        kv = await self.kv()
        try:
            entry = await kv.get(call_id)
        except KeyNotFoundError as exc:
            raise KeyError(call_id) from exc
        current = _DECODE.decode(entry.value or b"")
        if current.state != "pending" or (time.time() > current.expires_at and who != "gatehouse"):
            raise ApprovalConflict(call_id)
        decided = msgspec.structs.replace(
            current, state=state, decided_by=who, decided_at=time.time(), reason=reason[:500]
        )
        try:
            await kv.update(call_id, _ENCODE.encode(decided), last=entry.revision)
        except KeyWrongLastSequenceError as exc:
            raise ApprovalConflict(call_id) from exc
        return decided

    async def get(self, call_id: str) -> Approval:
        kv = await self.kv()
        try:
            entry = await kv.get(call_id)
        except KeyNotFoundError as exc:
            raise KeyError(call_id) from exc
        return _DECODE.decode(entry.value or b"")

    async def pending(self) -> list[Approval]:
        kv = await self.kv()
        try:
            keys = await kv.keys()
        except Exception:
            return []
        out: list[Approval] = []
        for key in keys:
            with contextlib.suppress(KeyNotFoundError):
                entry = await kv.get(key)
                approval = _DECODE.decode(entry.value or b"")
                if approval.state == "pending" and approval.expires_at > time.time():
                    out.append(approval)
        return sorted(out, key=lambda a: a.created_at)


def _as_published(published: Approval, decided: Approval) -> tuple[Outcome, Approval]:
    """The decision on the call as it was published; a denial when the entry's call was changed since (only the
    decision's own fields may change), so an approval never runs a call other than the one the approver saw."""
    fields = {"state": decided.state, "decided_by": decided.decided_by, "decided_at": decided.decided_at}
    if msgspec.structs.replace(published, **fields, reason=decided.reason) == decided:
        return decided.state, decided  # type: ignore[return-value]  # not "pending": the caller checked
    log.warning("approval %s: the call in the approval store was changed; refused", published.call_id)
    return "denied", msgspec.structs.replace(decided, reason="the call was changed in the approval store")


def encode(approval: Approval) -> bytes:
    return _ENCODE.encode(approval)
