"""Approvals on a real JetStream KV: a key cannot queue more than its share of calls for an approver, and an
approver is never shown arguments cut short (a call whose arguments are too long to show is refused)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.js import JetStreamContext

from gatehouse.natsserver import NatsServer
from services.ingress.mcp.approvals import MAX_SHOWN_ARGUMENTS, ApprovalConflict, ApprovalRefused, Approvals
from services.ingress.mcp.calls import CallFailed, _refuse_unshowable
from shared import mcp_errors
from shared.schemas.mcp import Approval
from shared.subjects import Subjects


@pytest.fixture
async def js(nats_server: NatsServer) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(nats_server.url)
    yield nc.jetstream()
    await nc.close()


def _approval(key: str, arguments: str = '{"to": "a@b.org"}', timeout_s: float = 60.0) -> Approval:
    now = time.time()
    return Approval(
        call_id=uuid.uuid4().hex,
        server="mail",
        tool="mail__send",
        arguments=arguments,
        key_id=key,
        created_at=now,
        expires_at=now + timeout_s,
    )


async def _pending_of(approvals: Approvals, key: str, count: int) -> list[Approval]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        mine = [a for a in await approvals.pending() if a.key_id == key]
        if len(mine) == count:
            return mine
        await asyncio.sleep(0.02)
    raise AssertionError(f"{count} pending approvals of {key} did not appear")


async def test_a_key_cannot_queue_more_than_its_pending_approvals(js: JetStreamContext, subjects: Subjects) -> None:
    approvals = Approvals(js, subjects.mcp_approvals_bucket, max_pending_per_key=2)
    waits = [asyncio.create_task(approvals.wait(_approval("k1"))) for _ in range(2)]
    pending = await _pending_of(approvals, "k1", 2)
    with pytest.raises(ApprovalRefused, match="2 calls waiting") as refused:
        await approvals.wait(_approval("k1"))
    assert refused.value.kind == "too_many"
    assert len(await _pending_of(approvals, "k1", 2)) == 2  # the refused one was never published
    # another key has its own share
    other = asyncio.create_task(approvals.wait(_approval("k2")))
    (theirs,) = await _pending_of(approvals, "k2", 1)
    # a decided call frees its place
    await approvals.decide(pending[0].call_id, "denied", "admin")
    await approvals.decide(theirs.call_id, "approved", "admin")
    assert (await other)[0] == "approved"
    done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    assert [t.result()[0] for t in done] == ["denied"]
    again = asyncio.create_task(approvals.wait(_approval("k1")))
    later = await _pending_of(approvals, "k1", 2)
    for a in later:
        await approvals.decide(a.call_id, "approved", "admin")
    assert {(await t)[0] for t in [*waits, again] if t not in done} == {"approved"}


async def test_arguments_too_long_to_show_are_refused_not_cut(js: JetStreamContext, subjects: Subjects) -> None:
    approvals = Approvals(js, subjects.mcp_approvals_bucket)
    long = '{"body": "' + "x" * MAX_SHOWN_ARGUMENTS + '"}'
    with pytest.raises(ApprovalRefused, match="too large to approve") as refused:
        await approvals.wait(_approval("k1", long))
    assert refused.value.kind == "too_large"
    assert await approvals.pending() == []
    # at the limit: shown whole
    whole = '{"b": "' + "y" * (MAX_SHOWN_ARGUMENTS - 9) + '"}'
    assert len(whole) == MAX_SHOWN_ARGUMENTS
    task = asyncio.create_task(approvals.wait(_approval("k1", whole)))
    (shown,) = await _pending_of(approvals, "k1", 1)
    assert shown.arguments == whole
    await approvals.decide(shown.call_id, "approved", "admin")
    assert (await task)[0] == "approved"


def test_a_call_whose_arguments_are_too_long_to_approve_gets_a_json_rpc_error() -> None:
    with pytest.raises(CallFailed) as failed:
        _refuse_unshowable(b'{"body": "' + b"x" * MAX_SHOWN_ARGUMENTS + b'"}')
    error = failed.value.error
    assert error.code == mcp_errors.INVALID_PARAMS and "too large to approve" in error.message
    _refuse_unshowable(b'{"to": "a@b.org"}')  # short enough: no error


async def test_an_entry_deleted_while_its_call_waits_ends_it_as_not_approved(
    js: JetStreamContext, subjects: Subjects
) -> None:
    approvals = Approvals(js, subjects.mcp_approvals_bucket)
    waiting = asyncio.create_task(approvals.wait(_approval("k-del", timeout_s=1.0)))
    (pending,) = await _pending_of(approvals, "k-del", 1)
    await (await approvals.kv()).delete(pending.call_id)
    state, _ = await asyncio.wait_for(waiting, 10)
    assert state == "timeout"


async def test_a_wait_whose_caller_is_cancelled_ends_at_once_and_withdraws_the_entry(
    js: JetStreamContext, subjects: Subjects
) -> None:
    """The client of a call waiting for an approval leaves: the wait ends then (not at its deadline), and the entry
    is decided denied, so no admin approves a call that would never run."""
    approvals = Approvals(js, subjects.mcp_approvals_bucket)
    waiting = asyncio.create_task(approvals.wait(_approval("k1", timeout_s=60)))
    (pending,) = await _pending_of(approvals, "k1", 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(waiting), 10)  # the 60 s deadline is far off
    assert await approvals.pending() == []
    kv = await approvals.kv()
    entry = await kv.get(pending.call_id)
    assert b'"state":"denied"' in (entry.value or b"") and b"the caller left" in (entry.value or b"")
    with pytest.raises(ApprovalConflict):
        await approvals.decide(pending.call_id, "approved", "admin")
