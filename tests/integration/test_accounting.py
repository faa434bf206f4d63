"""Accounting as a process against a real nats-server and chDB: every event becomes one row, duplicates
never show, rollups follow, and the SQL subject answers read-only queries only."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext

from gatehouse.natsserver import NatsServer
from gatehouse.query import run_sql
from services.accounting import migrations as migrations_module
from shared.bus import MSG_ID, ensure_events_stream, publish_event
from shared.errors import RateLimitError
from shared.schemas.chat import Attempt, Caller, GuardFinding, Usage
from shared.schemas.events import GuardEvent
from shared.subjects import Subjects, encode
from tests.integration.accounting_support import AccountingProcess, make_event, sql, wait_count

pytestmark = pytest.mark.timeout(120)  # a start-up may take STARTUP_S (accounting_support) before the test proper


@pytest.fixture
async def js(nats_server: NatsServer, subjects: Subjects) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await ensure_events_stream(js, subjects)
    yield js
    await nc.close()


@pytest.fixture
def accounting(nats_server: NatsServer, subjects: Subjects, tmp_path: Path) -> AccountingProcess:
    return AccountingProcess(nats_server.url, subjects, tmp_path)


async def test_events_become_one_row_each_with_their_fields(
    nats_server: NatsServer, subjects: Subjects, js: JetStreamContext, accounting: AccountingProcess
) -> None:
    url = nats_server.url
    subject = subjects.events_request.name
    ids = [f"ev-{n:03d}-{uuid.uuid4().hex[:8]}" for n in range(50)]
    # published before accounting runs: the stream keeps them until they are stored
    for i in ids:
        await publish_event(js, subject, make_event(i), i, timeout_s=5.0)
    detailed = make_event(
        "ev-detailed",
        caller=Caller(key_id="k2", team="t2", project="p2", user="u2"),
        requested_model="gpt-4o-mini",
        provider="openai",
        deployment="openai/gpt-4o-mini",
        provider_model="gpt-4o-mini",
        status=429,
        error=RateLimitError("slow down").info(),
        usage=Usage(input_tokens=1000, output_tokens=100, cached_tokens=0, reasoning_tokens=3),
        attempts=[
            Attempt(provider="openai", deployment="openai/gpt-4o-mini", status=429, latency_ms=12.5,
                    error_code="rate_limit_exceeded", error_message="slow down"),
            Attempt(provider="backup", deployment="backup/m", status=200, latency_ms=30.0),
        ],
        guard_action="redact",
        guard_policy="default",
        guard_findings=[GuardFinding(scanner="pii", rule="email", action="redact", start=3, end=20)],
        stream=True,
        ttft_ms=42.0,
        tags={"feature": "search"},
        received_at=1_750_000_000.25,
        finished_at=1_750_000_001.5,
    )  # fmt: skip
    await publish_event(js, subject, detailed, "ev-detailed", timeout_s=5.0)
    accounting.start()
    try:
        assert await wait_count(url, subjects, "SELECT count() FROM requests", 51) == 51

        rows = await sql(url, subjects, "SELECT count(), uniqExact(event_id), sum(output_tokens) FROM requests")
        assert rows == [[51, 51, 50 * 7 + 100]]
        [row] = await sql(
            url,
            subjects,
            "SELECT key_id, team, project, user, requested_model, provider, status, error_type, error_code, "
            "input_tokens, reasoning_tokens, attempts.status, attempts.error_code, guard_findings.rule, stream, "
            "ttft_ms, tags['feature'], received_at, cost_usd, price_version, settled_cost_usd, reserved_cost_usd, "
            "attempts.error_message "
            "FROM requests WHERE event_id = 'ev-detailed'",
        )
        assert row[:17] == [
            "k2", "t2", "p2", "u2", "gpt-4o-mini", "openai", 429, "rate_limit_error", "rate_limit_exceeded",
            1000, 3, [429, 200], ["rate_limit_exceeded", ""], ["email"], True, 42.0, "search",
        ]  # fmt: skip
        assert str(row[17]).startswith("2025-06-15T15:06:40.250")
        assert row[18] == pytest.approx(1000 * 0.15e-6 + 100 * 0.6e-6)  # gpt-4o-mini list price
        assert str(row[19]).startswith("genai-prices") and row[20] == row[18] and row[21] is None
        assert row[22] == ["slow down", ""]  # migration 0005: why each attempt failed
        # the mock provider costs nothing, and says so
        assert await sql(
            url, subjects, f"SELECT cost_usd, price_version FROM requests WHERE event_id = '{ids[0]}'"
        ) == [[0.0, "mock"]]
        # rollups are materialized views: they saw every row exactly once
        assert await sql(url, subjects, "SELECT sum(requests), sum(errors) FROM requests_per_minute") == [[51, 1]]
        assert await sql(url, subjects, "SELECT sum(requests), sum(reasoning_tokens) FROM requests_per_hour") == [
            [51, 3]
        ]
        migrations = await sql(url, subjects, "SELECT version FROM schema_migrations ORDER BY version")
        shipped = migrations_module.load(migrations_module.MIGRATIONS_DIR)
        assert migrations == [[m.version] for m in shipped] and len(shipped) >= 6
    finally:
        assert accounting.stop() == 0


async def test_duplicates_never_show_and_migrations_run_once(
    nats_server: NatsServer, subjects: Subjects, js: JetStreamContext, accounting: AccountingProcess
) -> None:
    url = nats_server.url
    subject = subjects.events_request.name
    accounting.start()
    ids = [uuid.uuid4().hex for _ in range(40)]
    # the requests ended 15 minutes ago: a copy sent again past JetStream's 10-minute duplicate window (a
    # publisher retrying, a spool replayed late) necessarily enters the stream that long after its event
    ended = time.time() - 900

    def event(i: str) -> bytes:
        return encode(make_event(i, received_at=ended - 1, finished_at=ended))

    for i in ids:
        await js.publish(subject, event(i), headers={MSG_ID: i}, timeout=5)
    assert await wait_count(url, subjects, "SELECT count() FROM requests", 40) == 40

    # a retried publish (same Nats-Msg-Id): JetStream itself stores it once
    for i in ids[:10]:
        await js.publish(subject, event(i), headers={MSG_ID: i}, timeout=5)
    # past the duplicate window JetStream takes the copy (here: under another message id), and accounting must
    # skip it (a copy redelivered after a crash between insert and ack: test_accounting_crash.py)
    for i in ids[10:20]:
        await js.publish(subject, event(i), headers={MSG_ID: uuid.uuid4().hex}, timeout=5)
    # ... including twice inside one batch
    for _ in range(2):
        await js.publish(subject, event(ids[20]), headers={MSG_ID: uuid.uuid4().hex}, timeout=5)
    marker = uuid.uuid4().hex  # published last: once it is stored, everything before it has been handled
    await publish_event(js, subject, make_event(marker), marker, timeout_s=5.0)
    assert await wait_count(url, subjects, f"SELECT count() FROM requests WHERE event_id = '{marker}'", 1) == 1

    # not merged away later by ReplacingMergeTree: never inserted, so exact without FINAL, rollups included
    rows = await sql(url, subjects, "SELECT count(), uniqExact(event_id) FROM requests")
    assert rows == [[41, 41]]
    assert await sql(url, subjects, "SELECT sum(requests) FROM requests_per_minute") == [[41]]

    # a restart on the same data applies no migration twice
    assert accounting.stop() == 0
    accounting.start()
    assert await sql(url, subjects, "SELECT version, count() FROM schema_migrations GROUP BY version ORDER BY 1") == [
        [m.version, 1] for m in migrations_module.load(migrations_module.MIGRATIONS_DIR)
    ]
    assert accounting.stop() == 0


async def test_guard_verdicts_are_stored_without_the_matched_text(
    nats_server: NatsServer, subjects: Subjects, js: JetStreamContext, accounting: AccountingProcess
) -> None:
    accounting.start()
    finding = GuardFinding(scanner="secrets", rule="aws-access-key", action="block", start=4, end=24,
                           location="messages[0].content")  # fmt: skip
    verdict = GuardEvent(
        event_id="g1", request_id="r1", policy="default", action="block", findings=[finding], at=time.time()
    )
    await publish_event(js, subjects.events_guard.name, verdict, "g1", timeout_s=5.0)
    await publish_event(js, subjects.events_guard.name, verdict, "g1", timeout_s=5.0)
    url = nats_server.url
    assert await wait_count(url, subjects, "SELECT count() FROM guard_verdicts", 1) == 1
    rows = await sql(url, subjects, "SELECT request_id, action, findings.rule, findings.start, findings.location "
                                    "FROM guard_verdicts")  # fmt: skip
    assert rows == [["r1", "block", ["aws-access-key"], [4], ["messages[0].content"]]]
    assert accounting.stop() == 0


async def test_sql_subject_answers_reads_and_refuses_writes(
    nats_server: NatsServer, subjects: Subjects, js: JetStreamContext, accounting: AccountingProcess
) -> None:
    accounting.start()
    url, prefix = nats_server.url, subjects.prefix
    await publish_event(js, subjects.events_request.name, make_event("only"), "only", timeout_s=5.0)
    assert await wait_count(url, subjects, "SELECT count() FROM requests", 1) == 1

    ok = await run_sql(url, prefix, "SELECT event_id, received_at, toDecimal64(1.5, 2) AS d, tags FROM requests")
    assert ok.error == "" and ok.columns == ["event_id", "received_at", "d", "tags"]
    [[event_id, received_at, decimal, tags]] = ok.rows
    assert event_id == "only" and isinstance(received_at, str) and decimal == "1.50" and tags == {}
    assert (await run_sql(url, prefix, "SHOW TABLES")).error == ""
    limited = await run_sql(url, prefix, "SELECT number FROM numbers(1e15)")  # endless in practice, cut by max_rows
    assert limited.error == "" and len(limited.rows) == 10_000 and limited.truncated
    whole = await run_sql(url, prefix, "SELECT number FROM numbers(3)")
    assert whole.rows == [[0], [1], [2]] and not whole.truncated

    for statement in ("DROP TABLE requests", "SELECT 1; DROP TABLE requests", "INSERT INTO requests (event_id) "
                      "VALUES ('x')", "SELECT 1 INTO OUTFILE '/tmp/gatehouse-outfile.txt'", "SELECT * FROM "
                      "file('/etc/hostname', 'LineAsString')", "SELECT * FROM system.settings"):  # fmt: skip
        refused = await run_sql(url, prefix, statement)
        assert refused.error.startswith("query refused"), statement
    broken = await run_sql(url, prefix, "SELECT nope FROM requests")
    assert broken.error.startswith("query failed") and "nope" in broken.error
    # still serving, and nothing was dropped
    assert await sql(url, subjects, "SELECT count() FROM requests") == [[1]]
    assert accounting.stop() == 0
    # FastStream logs each message at the broker's log_level (DEBUG here), so none of these queries shows
    log = accounting.log.read_text()
    assert "Received" not in log and "Processed" not in log
    assert "schema up to date" in log


async def test_the_reproduced_holes_stay_closed_over_the_bus(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    """`gatehouse sql`'s path: the environment (provider keys) and INTO OUTFILE behind a comment trick are
    refused, and a result larger than a NATS message is cut instead of never answering."""
    canary = f"sk-canary-{uuid.uuid4().hex}"
    accounting = AccountingProcess(nats_server.url, subjects, tmp_path, OPENAI_API_KEY=canary)
    accounting.start()
    url, prefix = nats_server.url, subjects.prefix
    try:
        assert await sql(url, subjects, "SELECT count() FROM requests") == [[0]]
        environ = await run_sql(url, prefix, "SELECT file('/proc/self/environ')")
        assert environ.error.startswith("query refused: function file() is not allowed")
        assert canary.encode() not in encode(environ)
        out = tmp_path / "outfile.txt"
        outfile = await run_sql(url, prefix, f"SELECT 1 // '\nINTO OUTFILE '{out}' -- '")
        assert outfile.error.startswith("query refused: INTO OUTFILE is not allowed") and not out.exists()
        big = await run_sql(url, prefix, "SELECT repeat('x', 1000) FROM numbers(100000)", timeout=15)
        assert big.error == "" and big.truncated and 100 < len(big.rows) < 10_000
    finally:
        assert accounting.stop() == 0
