"""The must-have: SIGKILL accounting in the middle of traffic, restart it, and every published event is in
ClickHouse exactly once (nothing lost, nothing visible twice, without FINAL)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import nats
import pytest

from gatehouse.natsserver import NatsServer
from shared.bus import ensure_events_stream, publish_event
from shared.subjects import Subjects
from tests.integration.accounting_support import AccountingProcess, first_int, make_event, sql, wait_count

pytestmark = pytest.mark.timeout(120)
TOTAL = 2000


async def test_sigkill_mid_traffic_loses_and_duplicates_nothing(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    url = nats_server.url
    # a short ack wait, so what the killed process had fetched but not acked comes back within the test
    accounting = AccountingProcess(url, subjects, tmp_path, GATEHOUSE_ACCOUNTING_ACK_WAIT_S="2")
    nc = await nats.connect(url)
    js = nc.jetstream()
    await ensure_events_stream(js, subjects)
    accounting.start()
    try:
        # wait until it is storing, so the kills land mid-batch rather than during startup
        warmup = uuid.uuid4().hex
        await publish_event(js, subjects.events_request.name, make_event(warmup), warmup, timeout_s=5.0)
        assert await wait_count(url, subjects, "SELECT count() FROM requests", 1) == 1

        ids: list[str] = []
        kills = 0

        async def publish_until_both_kills_happened() -> None:
            # continuous traffic (~400 events/s) for at least TOTAL events, and on until the second
            # kill, so both kills land mid-traffic however slowly the machine restarts the process
            while len(ids) < TOTAL or kills < 2:
                event_id = uuid.uuid4().hex
                await publish_event(js, subjects.events_request.name, make_event(event_id), event_id, timeout_s=5.0)
                ids.append(event_id)
                if len(ids) % 20 == 0:
                    await asyncio.sleep(0.05)

        started = time.monotonic()
        publisher = asyncio.create_task(publish_until_both_kills_happened())
        before = 1
        for _ in range(2):
            # kill once this process is storing traffic: it holds a fetched, unacked batch most of the time
            await wait_count(url, subjects, "SELECT count() FROM requests", before + 300, timeout=30)
            accounting.kill()
            kills += 1
            assert accounting.proc is not None and accounting.proc.returncode == -9
            accounting.start()  # at once: the new process must take the chDB lock the dead one held
            before = first_int(await sql(url, subjects, "SELECT count() FROM requests"))
        await publisher
        assert len(ids) >= TOTAL and time.monotonic() - started < 60

        expected = len(ids) + 1
        count = await wait_count(url, subjects, "SELECT count() FROM requests", expected, timeout=60)
        # JetStream holds nothing back (everything was acked after being stored), so nothing can be
        # redelivered any more: the counts below are final
        deadline = time.monotonic() + 30
        while True:
            info = await js.consumer_info(subjects.events_stream, "accounting")
            if info.num_pending == 0 and info.num_ack_pending == 0:
                break
            assert time.monotonic() < deadline, f"JetStream still holds events: {info}"
            await asyncio.sleep(0.1)
        rows = await sql(url, subjects, "SELECT count(), uniqExact(event_id) FROM requests")
        assert count == expected
        assert rows == [[expected, expected]], "every published event exactly once"
        stored = {r[0] for r in await sql(url, subjects, "SELECT event_id FROM requests", timeout=30)}
        assert stored == {*ids, warmup}
    finally:
        await nc.close()
        accounting.stop()
