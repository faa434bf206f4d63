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
