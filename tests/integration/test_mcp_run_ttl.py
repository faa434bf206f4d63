"""Agent runs' counters have a bounded lifetime: the `<P>_RUNS` counter stream's max age is the run TTL, so a run's
counters are gone that long after its last call (and the run id starts from zero again), while budget counters,
in their own stream, stay."""

from __future__ import annotations

import asyncio
import json
import time

import nats
import nats.js.errors
import pytest

from gatehouse.natsserver import NatsServer
from services.ingress.mcp.runs import RunLimitError, Runs
from shared.counters import Counters, ensure_counter_streams, ensure_run_stream
from shared.directory import Entitlement, Scope
from shared.governance import Limits, RunLimits, VirtualKey
from shared.schemas.chat import Caller
from shared.subjects import Subjects

pytestmark = pytest.mark.timeout(60)


def _entitlement() -> Entitlement:
    key = VirtualKey(id="agent", team="lab", sha256="0" * 64)
    return Entitlement(key=key, caller=Caller(key_id="agent", team="lab"), scopes=(Scope("key", "agent", Limits()),))


async def _last(js: nats.js.JetStreamContext, stream: str, subject: str) -> int | None:
    try:
        msg = await js.get_last_msg(stream, subject)
    except nats.js.errors.NotFoundError:
        return None
    return int(json.loads(msg.data)["val"])


async def test_a_runs_counters_are_gone_after_the_run_ttl(nats_server: NatsServer, subjects: Subjects) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_counter_streams(nc, subjects)
        await ensure_run_stream(nc, subjects, ttl_s=1.0)
        info = await js.stream_info(subjects.runs_stream)
        assert info.config.max_age == pytest.approx(1.0)
        counters = Counters(nc)
        runs = Runs(counters, subjects, RunLimits(max_tool_calls=2, max_spend_usd=1.0, loop_threshold=5))
        ent = _entitlement()
        await runs.tool_call(ent, "r1", "files__read", b'{"path": "/a"}', 0.25)
        await runs.tool_call(ent, "r1", "files__read", b'{"path": "/b"}', 0.25)
        with pytest.raises(RunLimitError, match="2 tool calls"):
            await runs.tool_call(ent, "r1", "files__read", b'{"path": "/c"}', 0.25)
        tool = subjects.run_counter("agent", "r1", "tool")
        spend = subjects.run_counter("agent", "r1", "spend")
        assert await _last(js, subjects.runs_stream, tool) == 3
        assert await _last(js, subjects.runs_stream, spend) == 750_000
        budget = subjects.spend_counter("team.lab", "total")  # another stream: no max age
        assert (await counters.add(budget, 5)).value == 5
        deadline = time.monotonic() + 20
        while await _last(js, subjects.runs_stream, tool) is not None or (
            await _last(js, subjects.runs_stream, spend) is not None
        ):
            assert time.monotonic() < deadline, "the run's counters outlived the run TTL"
            await asyncio.sleep(0.1)
        state = await js.stream_info(subjects.runs_stream)
        assert state.state.messages == 0  # the loop counters went too
        # the run id starts again from zero; budgets are untouched
        await runs.tool_call(ent, "r1", "files__read", b'{"path": "/a"}', 0.25)
        assert await _last(js, subjects.runs_stream, tool) == 1
        assert await counters.read(budget) == 5
    finally:
        await nc.close()


async def test_an_existing_runs_stream_keeps_its_ttl_and_a_mismatch_is_told(
    nats_server: NatsServer, subjects: Subjects, caplog: pytest.LogCaptureFixture
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        assert await ensure_run_stream(nc, subjects, ttl_s=86_400)
        info = await js.stream_info(subjects.runs_stream)
        assert info.config.max_age == pytest.approx(86_400) and info.config.duplicate_window == pytest.approx(900)
        assert await ensure_run_stream(nc, subjects, ttl_s=86_400)  # the same again: nothing to say
        assert not caplog.records
        assert not await ensure_run_stream(nc, subjects, ttl_s=60)  # only the admin role changes streams
        assert "mcp.run_ttl_s=60s" in caplog.text and "--max-age 60s" in caplog.text
        assert (await js.stream_info(subjects.runs_stream)).config.max_age == pytest.approx(86_400)
    finally:
        await nc.close()
