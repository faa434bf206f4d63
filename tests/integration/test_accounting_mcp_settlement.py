"""A priced MCP call's budget reservation, settled by accounting (a real process, nats-server and chDB) from the
call's record as a model request's is: the spend counters end at the prices charged (a redelivered record settles
once, a failed call gives its reservation back), the settled counters and a soft budget's alert follow tool spend,
and a hard budget refuses a price it cannot cover with nothing held."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import nats
import pytest

from gatehouse.natsserver import NatsServer
from shared.admission import reserve_price
from shared.bus import ensure_events_stream, publish_event
from shared.counters import Counters, ensure_counter_streams
from shared.directory import Entitlement, Scope
from shared.errors import BudgetExceededError
from shared.governance import Budget, Limits, VirtualKey
from shared.periods import period_key
from shared.schemas.chat import Caller, Reservation
from shared.schemas.mcp import McpCallEvent
from shared.subjects import Subjects
from tests.integration.accounting_support import AccountingProcess, sql, wait_count

pytestmark = pytest.mark.timeout(120)


def _call(call_id: str, reservation: Reservation | None, cost: float, status: str = "ok") -> McpCallEvent:
    now = time.time()
    return McpCallEvent(
        event_id=uuid.uuid4().hex,
        call_id=call_id,
        method="tools/call",
        server="crm",
        tool="crm__lookup",
        caller=Caller(key_id="agent", team="lab"),
        status=status,
        latency_ms=5.0,
        cost_usd=cost,
        received_at=now - 0.1,
        finished_at=now,
        reservation=reservation,
    )


async def test_priced_tool_calls_are_settled_alerted_and_released(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    nc = await nats.connect(nats_server.url)
    accounting = AccountingProcess(nats_server.url, subjects, tmp_path)
    try:
        js = nc.jetstream()
        await ensure_events_stream(js, subjects)
        await ensure_counter_streams(nc, subjects)
        counters = Counters(nc)
        budgets = [
            Budget(amount_usd=1.0, period="total"),
            Budget(amount_usd=0.04, period="monthly", hard=False, alerts=[50, 100]),
        ]
        key = VirtualKey(id="agent", team="lab", sha256="0" * 64)
        ent = Entitlement(
            key=key, caller=Caller(key_id="agent", team="lab"), scopes=(Scope("team", "lab", Limits(budgets=budgets)),)
        )
        month = period_key("monthly", time.time())
        spend, settled = subjects.spend_counter("team.lab", "total"), subjects.settled_counter("team.lab", "total")
        soft, soft_settled = subjects.spend_counter("team.lab", month), subjects.settled_counter("team.lab", month)
        later = time.time() + 600
        ok = await reserve_price(counters, subjects, ent, "call-ok", 0.02, later, "this tool call")
        failed = await reserve_price(counters, subjects, ent, "call-failed", 0.02, later, "this tool call")
        assert ok is not None and failed is not None
        assert [h.micro_usd for h in ok.holds] == [20_000, 0]  # the hard budget holds the price, the soft nothing
        assert await counters.read(spend) == 40_000 and await counters.read(soft) == 0
        with pytest.raises(BudgetExceededError, match="this tool call"):
            await reserve_price(counters, subjects, ent, "call-dear", 0.97, later, "this tool call")
        assert await counters.read(spend) == 40_000  # refused: nothing held
        subject = subjects.events_mcp.name
        for event in (_call("call-ok", ok, 0.02), _call("call-failed", failed, 0.0, "unavailable")):
            await publish_event(js, subject, event, event.event_id, timeout_s=5.0)
        again = _call("call-ok", ok, 0.02)  # the same call's record once more (another event id): settled once
        await publish_event(js, subject, again, again.event_id, timeout_s=5.0)
        accounting.start()
        assert await wait_count(nats_server.url, subjects, "SELECT count() FROM mcp_calls", 3) == 3
        deadline = time.monotonic() + 30
        want = {spend: 20_000, settled: 20_000, soft: 20_000, soft_settled: 20_000}
        while (got := {s: await counters.read(s) for s in want}) != want:
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.2)
        # the soft budget's 50% threshold ($0.02 of $0.04) crossed by tool spend alone, once
        query = "SELECT period, threshold_pct, hard FROM budget_alerts WHERE scope = 'team.lab' ORDER BY period"
        assert await wait_count(nats_server.url, subjects, "SELECT count() FROM budget_alerts", 1) == 1
        assert await sql(nats_server.url, subjects, query) == [["monthly", 50, False]]
        assert await counters.read(spend) == 20_000  # nothing moved since
    finally:
        accounting.stop()
        await nc.close()


async def test_a_hard_and_a_soft_budget_of_one_period_count_a_cost_once(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    """Both budgets name the same spend and settled counters; settling adds the cost to each counter once (not
    once per budget), and each budget still raises its own alerts from that one total."""
    nc = await nats.connect(nats_server.url)
    accounting = AccountingProcess(nats_server.url, subjects, tmp_path)
    try:
        js = nc.jetstream()
        await ensure_events_stream(js, subjects)
        await ensure_counter_streams(nc, subjects)
        counters = Counters(nc)
        budgets = [
            Budget(amount_usd=0.04, period="monthly", alerts=[50, 100]),
            Budget(amount_usd=0.02, period="monthly", hard=False, alerts=[100]),
        ]
        key = VirtualKey(id="agent", team="lab", sha256="0" * 64)
        ent = Entitlement(
            key=key, caller=Caller(key_id="agent", team="lab"), scopes=(Scope("team", "lab", Limits(budgets=budgets)),)
        )
        month = period_key("monthly", time.time())
        spend, settled = subjects.spend_counter("team.lab", month), subjects.settled_counter("team.lab", month)
        reservation = await reserve_price(counters, subjects, ent, "call-1", 0.02, time.time() + 600, "this call")
        assert reservation is not None and [h.subject for h in reservation.holds] == [spend, spend]
        event = _call("call-1", reservation, 0.02)
        await publish_event(js, subjects.events_mcp.name, event, event.event_id, timeout_s=5.0)
        accounting.start()
        query = "SELECT threshold_pct, hard FROM budget_alerts WHERE scope = 'team.lab' ORDER BY threshold_pct, hard"
        assert await wait_count(nats_server.url, subjects, "SELECT count() FROM budget_alerts", 2) == 2
        assert await sql(nats_server.url, subjects, query) == [[50, True], [100, False]]
        assert await counters.read(spend) == 20_000 and await counters.read(settled) == 20_000
        # a second call takes the soft budget past 100% again (no new alert) and the hard one to 100%
        second = await reserve_price(counters, subjects, ent, "call-2", 0.02, time.time() + 600, "this call")
        assert second is not None
        event = _call("call-2", second, 0.02)
        await publish_event(js, subjects.events_mcp.name, event, event.event_id, timeout_s=5.0)
        assert await wait_count(nats_server.url, subjects, "SELECT count() FROM budget_alerts", 3) == 3
        assert await sql(nats_server.url, subjects, query) == [[50, True], [100, False], [100, True]]
        assert await counters.read(spend) == 40_000 and await counters.read(settled) == 40_000
    finally:
        accounting.stop()
        await nc.close()
