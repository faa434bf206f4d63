"""Accounting's pure parts: event → row, pricing, the read-only SQL gate, migrations."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.accounting import migrations
from services.accounting.core import (
    GUARD_COLUMNS,
    REQUEST_COLUMNS,
    check_read_only,
    guard_row,
    price,
    request_row,
    sql_literal_list,
)
from shared.errors import RateLimitError
from shared.schemas.chat import Attempt, Caller, GuardFinding, Usage
from shared.schemas.events import GuardEvent, RequestEvent


def event(**kw: object) -> RequestEvent:
    base: dict[str, object] = {
        "event_id": "e1",
        "request_id": "e1",
        "api": "chat",
        "caller": Caller(key_id="k", team="t"),
        "requested_model": "gpt-4o-mini",
        "provider": "openai",
        "provider_model": "gpt-4o-mini",
        "status": 200,
        "usage": Usage(input_tokens=1000, output_tokens=100),
        "received_at": 1_700_000_000.0,
        "finished_at": 1_700_000_001.5,
        "latency_ms": 1500.0,
    }
    base.update(kw)
    return RequestEvent(**base)  # type: ignore[arg-type]


def test_request_row_lines_up_with_the_columns() -> None:
    e = event(
        attempts=[Attempt(provider="a", deployment="a/m", status=429, latency_ms=3, error_code="rate_limit_exceeded"),
                  Attempt(provider="b", deployment="b/m", status=200, latency_ms=9)],
        guard_findings=[GuardFinding(scanner="secrets", rule="openai-key", action="redact", start=3, end=40)],
        error=None,
        tags={"feature": "search"},
    )
    row = dict(zip(REQUEST_COLUMNS, request_row(e, "openai"), strict=True))
    assert row["key_id"] == "k" and row["team"] == "t"
    assert row["attempts.status"] == [429, 200]
    assert row["guard_findings.rule"] == ["openai-key"]
    assert row["tags"] == {"feature": "search"}
    assert row["received_at"].timestamp() == 1_700_000_000.0  # type: ignore[attr-defined]
    # gpt-4o-mini: $0.15 / MTok in, $0.60 / MTok out
    assert row["cost_usd"] == pytest.approx(1000 * 0.15e-6 + 100 * 0.6e-6)
    assert str(row["price_version"]).startswith("genai-prices")


def test_errors_and_unknown_models_are_priced_honestly() -> None:
    failed = event(status=429, usage=None, error=RateLimitError("slow").info())
    row = dict(zip(REQUEST_COLUMNS, request_row(failed, "openai"), strict=True))
    assert row["error_code"] == "rate_limit_exceeded" and row["cost_usd"] is None
    unknown = price(event(provider_model="no-such-model-xyz", requested_model="x"), "openai")
    assert unknown.cost_usd is None and "unknown model" in unknown.version
    assert price(event(), "mock").cost_usd == 0.0


def test_guard_row_lines_up() -> None:
    g = GuardEvent(event_id="g", request_id="r", policy="p", action="block", at=1.0,
                   findings=[GuardFinding(scanner="s", rule="r1", action="block", start=1, end=2)])
    row = dict(zip(GUARD_COLUMNS, guard_row(g), strict=True))
    assert row["findings.rule"] == ["r1"] and row["action"] == "block"


@pytest.mark.parametrize(
    "sql",
    ["SELECT 1", "  with x as (select 1) select * from x", "SHOW TABLES", "DESCRIBE requests",
     "SELECT 1; -- trailing comment"],
)
def test_read_only_queries_pass(sql: str) -> None:
    assert check_read_only(sql) is None


@pytest.mark.parametrize(
    "sql", ["DROP TABLE requests", "INSERT INTO requests VALUES (1)", "SELECT 1; DROP TABLE requests",
            "/* hi */ ALTER TABLE requests DELETE WHERE 1", ""],
)
def test_writes_and_multiple_statements_are_refused(sql: str) -> None:
    assert check_read_only(sql) is not None


def test_literal_list_escapes() -> None:
    assert sql_literal_list(["a", "b'c", "d\\e"]) == "'a', 'b\\'c', 'd\\\\e'"


def test_shipped_migrations_are_ordered_and_split(tmp_path: Path) -> None:
    found = migrations.load()
    assert [m.version for m in found] == sorted(m.version for m in found)
    assert found[0].name == "requests"
    rollup = next(m for m in found if m.name == "rollup_minute")
    assert len(rollup.statements) == 2  # the target table and its materialized view
    assert migrations.pending(found, {1}) == found[1:]
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "1_b.sql").write_text("SELECT 2;")
    with pytest.raises(ValueError, match="NNNN_name"):
        migrations.load(tmp_path)
