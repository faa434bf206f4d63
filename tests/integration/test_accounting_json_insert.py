"""Rows go into ClickHouse as JSON (msgspec-encoded, parsed by ClickHouse): every column of every table reads
back exactly as clickhouse-connect's own (native) insert stores it, including arrays, maps, nulls, unicode,
the extremes of each integer type and millisecond times."""

from __future__ import annotations

import asyncio
from pathlib import Path

import clickhouse_connect
import pytest

from services.accounting import migrations
from services.accounting.core import (
    AUDIT_LOG,
    BUDGET_ALERTS,
    COLUMNS,
    GUARD_VERDICTS,
    REQUEST_CONTENT,
    REQUESTS,
    alert_row,
    audit_row,
    content_row,
    guard_row,
    request_row,
)
from services.accounting.sink import ClickHouseSink
from shared.errors import ErrorInfo
from shared.pricing import when
from shared.schemas.chat import Attempt, Caller, GuardFinding, Reservation, Usage
from shared.schemas.events import AuditEvent, BudgetAlert, ContentEvent, ContentText, GuardEvent
from tests.integration.accounting_support import make_event

pytestmark = pytest.mark.timeout(120)

TIME_COLUMNS = frozenset({"received_at", "finished_at", "at", "created_at", "updated_at", "expires_at"})


def rows() -> dict[str, list[list[object]]]:
    rich = make_event(
        "rich",
        caller=Caller(key_id="k", team='té\'am "q"', project="p\\x", user="ü", org="o"),
        error=ErrorInfo(status=502, type="api_error", code="upstream", message="line1\nline2\t✓"),
        usage=Usage(input_tokens=2**32 + 5, output_tokens=7, cached_tokens=3, reasoning_tokens=1),
        attempts=[
            Attempt(
                provider="a", deployment="a/b", status=70000, latency_ms=1.25, error_code="x", error_message="émoji 🚀"
            )
        ],
        guard_findings=[GuardFinding(scanner="pii", rule="email", action="redact", start=-(2**40), end=2**40)],
        tags={"k": "v", "": "empty key", "ü": "ñ"},
        received_at=1_780_000_000.1239,
        finished_at=1_780_000_000.9871,
        latency_ms=12.5,
        reservation=Reservation(request_id="rich", amount_usd=0.125, holds=[]),
        provider_kind="openai",
        provider_model="gpt-4o-mini",
    )
    plain = make_event("plain", usage=None)
    return {
        REQUESTS: [request_row(rich, "openai"), request_row(plain, "mock")],
        GUARD_VERDICTS: [
            guard_row(
                GuardEvent(
                    event_id="g",
                    request_id="rich",
                    policy="p",
                    action="block",
                    at=1.5,
                    findings=[GuardFinding(scanner="s", rule="r", action="block")],
                )
            )
        ],
        AUDIT_LOG: [
            audit_row(
                AuditEvent(
                    event_id="a",
                    at=2.0,
                    actor="admin",
                    action="x",
                    target_kind="key",
                    target_id="k",
                    before="{}",
                    after='{"a": 1}',
                )
            )
        ],
        BUDGET_ALERTS: [
            alert_row(
                BudgetAlert(
                    event_id="b",
                    at=3.0,
                    scope="team.ml",
                    period="monthly",
                    period_key="2026-05",
                    threshold_pct=80,
                    amount_usd=1.0,
                    spent_usd=0.8,
                )
            )
        ],
        REQUEST_CONTENT: [
            content_row(
                ContentEvent(
                    event_id="c",
                    request_id="rich",
                    at=1_780_000_000.5,
                    caller=Caller(key_id="k"),
                    retention_days=3650,
                    texts=[ContentText(location="l", text="t\u0000x")],
                )
            )
        ],
    }


def test_json_rows_read_back_as_native_inserts_store_them(tmp_path: Path) -> None:
    data = rows()

    async def store_json() -> None:
        sink = ClickHouseSink(f"chdb://{tmp_path / 'json'}")
        await sink.migrate(migrations.load())
        inserted = await sink.insert_new(data)
        assert inserted == {table: len(r) for table, r in data.items()}
        await sink.close()

    asyncio.run(store_json())
    native = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / 'native'}")
    for m in [migrations.LEDGER_DDL]:
        native.command(m)
    for migration in migrations.load():
        for statement in migration.statements:
            native.command(statement)
    for table, table_rows in data.items():
        # the native encoder takes times as datetimes; the rows carry unix seconds, the JSON path's input
        times = [i for i, column in enumerate(COLUMNS[table]) if column in TIME_COLUMNS]
        as_datetimes = [[when(v) if i in times else v for i, v in enumerate(row)] for row in table_rows]  # type: ignore[arg-type]
        native.insert(table, as_datetimes, column_names=list(COLUMNS[table]))
    native.close()
    for table in data:
        columns = ", ".join(f"`{c}`" for c in COLUMNS[table])
        query = f"SELECT {columns} FROM {table} ORDER BY event_id"
        results = []
        for name in ("json", "native"):
            client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / name}")
            results.append(client.query(query).result_rows)
            client.close()
        assert results[0] == results[1], table
        assert len(results[0]) == len(data[table])


def test_a_batch_larger_than_one_lookup_is_checked_in_chunks(tmp_path: Path) -> None:
    from services.accounting.sink import LOOKUP_CHUNK

    events = [request_row(make_event(f"e{n:05d}")) for n in range(2 * LOOKUP_CHUNK + 500)]

    async def run() -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        sink = ClickHouseSink(f"chdb://{tmp_path / 'ch'}")
        await sink.migrate(migrations.load())
        first = await sink.insert_new({REQUESTS: events}, verify=set())  # fresh: nothing looked up
        again = await sink.insert_new({REQUESTS: events})  # every id looked up, over several queries
        some = await sink.insert_new({REQUESTS: events[:10]}, verify={str(events[0][0])})
        await sink.close()
        return first, again, some

    first, again, some = asyncio.run(run())
    assert first == {REQUESTS: len(events)} and again == {REQUESTS: 0}
    assert some == {REQUESTS: 9}  # only the one it was told to check is found; the caller vouched for the rest
