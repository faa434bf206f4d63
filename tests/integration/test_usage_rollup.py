"""A usage summary reads the hourly rollup for the whole hours of its period and the request rows for the partial
hours at its ends: the same numbers as reading every row, for every grouping the rollup can answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from services.accounting import migrations, usage
from services.accounting.app import answer
from services.accounting.sink import ClickHouseSink
from shared.schemas.admin import SqlQuery, UsageQuery
from shared.subjects import Subjects
from tests.integration.analytics_seed import seed

pytestmark = pytest.mark.timeout(120)
SQL = Subjects("usage").accounting_sql
NOW = time.time()


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseSink]:
    path = tmp_path_factory.mktemp("usage") / "ch"
    seed(path, NOW)
    sink = ClickHouseSink(f"chdb://{path}", readable=migrations.tables(migrations.load()))
    yield sink
    asyncio.run(sink.close())


def approx(value: object) -> object:
    return pytest.approx(value, abs=2e-6) if isinstance(value, float) else value


def rows(sink: ClickHouseSink, sql: str) -> list[list[object]]:
    result = asyncio.run(answer(sink, SQL, SQL.encode(SqlQuery(sql=sql))))
    assert result.error == "", result.error
    return sorted(result.rows, key=str)


@pytest.mark.parametrize(
    ("group_by", "filters"),
    [
        ([], {}),
        (["team"], {}),
        (["team", "model"], {}),
        (["provider", "day"], {}),
        (["hour"], {"team": "ml"}),
        (["key_id", "project"], {"provider": "openai"}),
        (["month", "week"], {}),
    ],
)
def test_the_rollup_path_gives_what_the_rows_give(
    sink: ClickHouseSink, group_by: list[str], filters: dict[str, str]
) -> None:
    query = UsageQuery(group_by=group_by, filters=filters, since=NOW - 20 * 3600 - 1234.5, until=NOW - 777.25)
    fast = usage.usage_sql(query, NOW)
    assert "requests_per_hour" in fast
    slow = usage._from_rows(query, query.until)
    assert "requests_per_hour" not in slow
    expected = rows(sink, slow)
    got = rows(sink, fast)
    assert expected and len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        # costs are float sums rounded to 6 places: adding per-hour sums instead of the rows may move the last place
        assert [approx(x) for x in a] == [approx(x) for x in b]


def test_dimensions_the_rollup_lacks_read_the_rows(sink: ClickHouseSink) -> None:
    for query in (UsageQuery(group_by=["status"], since=NOW - 86_400), UsageQuery(filters={"org": "acme"}, since=1)):
        assert "requests_per_hour" not in usage.usage_sql(query, NOW)
        assert rows(sink, usage.usage_sql(query, NOW))


def test_tool_calls_count_in_usage_beside_requests(sink: ClickHouseSink) -> None:
    """MCP calls are `api` = mcp rows: their price in cost_usd, counted in tool_calls (not requests), on both paths."""
    for path in ("rows", "rollup"):
        query = UsageQuery(group_by=["team"], since=NOW - 20 * 3600 - 1234.5, until=NOW - 777.25)
        sql = usage._from_rows(query, query.until) if path == "rows" else usage.usage_sql(query, NOW)
        by_team = {r[0]: r for r in rows(sink, sql)}
        columns = ["team", "requests", "tool_calls", "errors", "input_tokens", "output_tokens", "cached_tokens"]
        period = (
            f"received_at >= toDateTime64({query.since}, 3, 'UTC') "
            f"AND received_at < toDateTime64({query.until}, 3, 'UTC') GROUP BY team"
        )
        calls = rows(sink, f"SELECT team, count(), sum(cost_usd) FROM mcp_calls WHERE {period}")
        models = rows(sink, f"SELECT team, sum(ifNull(cost_usd, 0)) FROM requests WHERE {period}")
        model_cost = {r[0]: r[1] for r in models}
        assert calls and any(float(c[2]) > 0 for c in calls)  # the seed has priced calls in the period
        for team, count, cost in calls:
            row = by_team[team]
            assert row[columns.index("tool_calls")] == count, path
            assert row[-1] == pytest.approx(float(model_cost[team]) + float(cost), abs=2e-6), path
    mcp_only = rows(
        sink, usage.usage_sql(UsageQuery(group_by=["api", "provider"], filters={"api": "mcp"}, since=1), NOW)
    )
    assert {r[1] for r in mcp_only} == {"crm", "files"} and all(r[2] == 0 for r in mcp_only)  # no requests
    assert sum(float(r[-1]) for r in mcp_only) > 0
