"""Every example query of docs/analytics.md runs through the analytics gate (as `gatehouse sql` would) against
chDB with a day of traffic in it, and returns rows."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.accounting import migrations
from services.accounting.app import answer
from services.accounting.sink import ClickHouseSink
from shared.schemas.admin import SqlQuery
from shared.subjects import Subjects
from tests.integration.analytics_seed import seed

pytestmark = pytest.mark.timeout(120)
DOC = Path(__file__).resolve().parents[2] / "docs" / "analytics.md"
QUERIES = re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
SQL = Subjects("docs").accounting_sql


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseSink]:
    path = tmp_path_factory.mktemp("docs") / "ch"
    seed(path, time.time())
    sink = ClickHouseSink(f"chdb://{path}", readable=migrations.tables(migrations.load()))
    yield sink
    asyncio.run(sink.close())


def test_the_page_has_examples() -> None:
    assert len(QUERIES) >= 12


@pytest.mark.parametrize("sql", QUERIES, ids=[f"example-{i + 1}" for i in range(len(QUERIES))])
def test_each_example_runs_and_returns_rows(sink: ClickHouseSink, sql: str) -> None:
    result = asyncio.run(answer(sink, SQL, SQL.encode(SqlQuery(sql=sql))))
    assert result.error == "", f"{result.error}\n{sql}"
    assert result.rows, f"no rows:\n{sql}"
