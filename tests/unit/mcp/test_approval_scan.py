"""A call an argument rule puts to an approver, through ingress's call path and the guard's handlers on a real
nats-server and JetStream KV (a recording stand-in for the mcp stage behind the guard): the guard scans the call
before the approval exists, the approvals bucket and the approver see its redacted form only, what runs after the
approval is that form, a changed entry in the bucket or a policy that would now change the arguments stops the
call, and a call the guard blocks never becomes an approval."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gatehouse.natsserver import NatsServer
from services.guard.policy import Guardrails
from services.guard.tools import Scanned, ToolGuard
from services.ingress.mcp.calls import CallFailed, _Record
from shared import mcp_errors
from shared.config import hash_key, parse_config
from shared.schemas.chat import Caller, GuardFinding, GuardSummary
from shared.schemas.mcp import ToolCall, ToolOutcome
from tests.unit.mcp.guard_rig import Rig, guard_rig

SECRET = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
CARD = "4111 1111 1111 1111"
RAW = {"to": "cfo@other.org", "body": f"token {SECRET} card {CARD}"}
REDACTED = {"to": "cfo@other.org", "body": "token <SECRET_1> card <CREDIT_CARD_1>"}
CONFIG = f"""
keys:
  - {{id: k, sha256: {hash_key("sk-k")}, policy: args}}
guardrails:
  policies:
    args:
      output_policy: open
      secrets: {{action: redact}}
      pii: {{action: redact, entities: [credit_card]}}
      topics: [{{name: weapons, keywords: [rifle, ammunition], min_hits: 2, action: block}}]
    open: {{description: results pass}}
mcp:
  approval_timeout_s: 30
  servers:
    mail: {{transport: http, url: "http://127.0.0.1:9/mcp"}}
  rules:
    - {{tools: ["mail__send"], arg: to, domain_not_in: [example.com], action: approve}}
"""


def _echo(call: ToolCall) -> bytes:
    """The mcp stage's answer: the arguments it was given, as the result's text."""
    text = json.dumps(json.loads(call.arguments))
    return json.dumps({"content": [{"type": "text", "text": text}]}).encode()


@pytest.fixture
async def rig(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Rig]:
    async with guard_rig(nats_server.url, tmp_path, CONFIG, _echo) as built:
        yield built


def _call(rig: Rig, arguments: dict[str, Any]) -> asyncio.Task[dict[str, Any]]:
    return asyncio.create_task(rig.calls.call(rig.ctx, "tools/call", {"name": "mail__send", "arguments": arguments}))


def _ran_with(result: dict[str, Any]) -> dict[str, Any]:
    return json.loads(result["content"][0]["text"])  # type: ignore[no-any-return]


async def test_the_approver_sees_and_the_upstream_gets_the_redacted_arguments(rig: Rig) -> None:
    call = _call(rig, RAW)
    pending = await rig.pending()
    assert json.loads(pending.arguments) == REDACTED
    assert pending.guard is not None and pending.guard.action == "redact"
    assert {f.rule for f in pending.guard.findings} == {"github-token", "credit_card"}
    assert not rig.upstream  # nothing runs before the approval
    [stored] = await rig.entries()
    assert SECRET.encode() not in stored and b"1111" not in stored
    await rig.approvals.decide(pending.call_id, "approved", "admin")
    assert _ran_with(await asyncio.wait_for(call, 10)) == REDACTED
    [ran] = rig.upstream
    assert ran.approved and json.loads(ran.arguments) == REDACTED


async def test_an_entry_changed_in_the_bucket_is_never_run(rig: Rig) -> None:
    """Someone who may write the bucket puts other arguments (here: the raw ones) into the pending entry and marks
    it approved: the call is refused, and nothing reaches the upstream."""
    call = _call(rig, RAW)
    pending = await rig.pending()
    kv = await rig.approvals.kv()
    entry = await kv.get(pending.call_id)
    forged = msgspec.structs.replace(pending, arguments=json.dumps(RAW), state="approved", decided_by="admin")
    await kv.update(pending.call_id, msgspec.json.encode(forged), last=entry.revision)
    with pytest.raises(CallFailed) as refused:
        await asyncio.wait_for(call, 10)
    assert refused.value.error.code == mcp_errors.APPROVAL_DENIED
    assert "changed in the approval store" in refused.value.error.message
    assert not rig.upstream


async def test_a_call_the_guard_blocks_never_becomes_an_approval(rig: Rig) -> None:
    with pytest.raises(CallFailed) as blocked:
        await asyncio.wait_for(_call(rig, {"to": "x@evil.test", "body": "a rifle and ammunition"}), 10)
    assert blocked.value.error.code == mcp_errors.GUARD_BLOCKED and "custom.weapons" in blocked.value.error.message
    assert await rig.entries() == [] and not rig.upstream


async def test_the_guard_runs_an_approved_call_only_as_it_was_approved(rig: Rig) -> None:
    """The guard scans an approved call again: arguments its policy would change (a call approved under another
    policy, or not the ones the approver saw) are refused, never run; the approved form passes as it is."""
    subject = rig.calls.subjects.guard_mcp

    async def send(arguments: dict[str, Any]) -> ToolOutcome:
        call = ToolCall(
            call_id="c1", method="tools/call", server="mail", name="send", arguments=json.dumps(arguments).encode(),
            caller=Caller(key_id="k", policy="args"), timeout_s=5, received_at=0, approved=True,
        )  # fmt: skip
        reply = await rig.nc.request(subject.name, subject.encode(call), timeout=10)
        return subject.decode_reply(reply.data)

    changed = await send(RAW)
    assert changed.error is not None and changed.error.code == mcp_errors.GUARD_BLOCKED
    assert "not the call the approver was shown" in changed.error.message and not rig.upstream
    passed = await send(REDACTED)
    assert passed.error is None and [json.loads(c.arguments) for c in rig.upstream] == [REDACTED]


@pytest.mark.parametrize(
    "arguments",
    [
        RAW,
        {"body": "password=hunter2hunter2XyZ9 and api_key: 'sk_live_abcdefghijklmnopqrstuvwx'"},
        {"to": "ann@x.org, bob@y.org", "body": "call +1 415 555 2671, born 1990-01-02"},
        {"body": "lives at 221B Baker Street, London; card 4111111111111111; iban DE89370400440532013000"},
        {"body": f"bluebird ACME-12345 token {SECRET}", "secret=<SECRET_1>": "x", "<EMAIL_1>": "a@b.org"},
    ],
)
def test_the_guards_redaction_is_left_as_it_is_by_a_second_scan(arguments: dict[str, Any]) -> None:
    """An approved call is scanned again on its way to the upstream and runs only if that scan leaves it unchanged:
    the redacted form of a call must be a fixed point of the policy, or approved calls would be refused."""
    config = parse_config("""
guardrails:
  policies:
    p:
      secrets: {action: redact}
      pii: {action: redact}
      keywords: [{name: proj, words: [bluebird], action: redact}]
      regexes: [{name: ticket, pattern: 'ACME-[0-9]{4,6}', action: redact}]
""")  # fmt: skip
    tools = ToolGuard(Guardrails.from_config(config), config.mcp)

    def scan(data: bytes) -> Scanned:
        return tools.scan_arguments(
            ToolCall(
                call_id="c", method="tools/call", server="s", name="t", arguments=data,
                caller=Caller(key_id="k", policy="p"), timeout_s=5, received_at=0,
            )
        )  # fmt: skip

    first = scan(json.dumps(arguments).encode())
    assert first.summary is not None and first.summary.action == "redact"
    again = scan(first.data)
    assert again.data == first.data and again.summary is not None and again.summary.action == "allow"


def test_a_flag_seen_by_both_scans_of_an_approved_call_is_recorded_once(rig: Rig) -> None:
    # arguments the guard only flags reach the call's own scan unchanged: the same hit at the same place, twice
    hit = GuardFinding(scanner="topics", rule="weapons", action="flag", start=3, end=8, location="arguments.body")
    other = GuardFinding(scanner="topics", rule="weapons", action="flag", start=20, end=25, location="arguments.body")
    rec = _Record(call_id="c1", method="tools/call", received_at=time.time(), started=time.monotonic())
    rec.guard_input = GuardSummary(policy="args", action="flag", findings=[hit])
    rec.outcome = ToolOutcome(
        call_id="c1", guard_input=GuardSummary(policy="args", action="flag", findings=[hit, other])
    )
    published: list[object] = []
    rig.calls._events.publish = lambda subject, event, msg_id, **_: published.append(event)  # type: ignore[method-assign]
    rig.calls._record(rig.ctx, rec)
    [event] = published
    assert event.guard_findings == [hit, other]  # type: ignore[attr-defined]
