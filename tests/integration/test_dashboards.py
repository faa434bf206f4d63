"""Every ClickHouse panel and variable query of the Grafana dashboards in deploy/grafana runs against chDB with a
day of traffic in it, with Grafana's ClickHouse macros expanded as the data source plugin expands them, through
the same analytics gate as `gatehouse sql` (so none reads a table the reader may not, or a system table), and
returns rows. The Prometheus panels use only the metric names the services export (see ASSUMED_METRICS)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from services.accounting import migrations
from services.accounting.app import answer
from services.accounting.sink import ClickHouseSink
from shared.schemas.admin import SqlQuery, SqlResult
from shared.subjects import Subjects
from tests.integration.analytics_seed import seed

pytestmark = pytest.mark.timeout(180)
REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
SQL = Subjects("dash").accounting_sql
NOW = time.time()
# the metric names the Prometheus panels are written for (issue 9's other half defines them)
ASSUMED_METRICS = {
    "gatehouse_requests_total",
    "gatehouse_request_duration_seconds_bucket",
    "gatehouse_accounting_pending_events",
    "gatehouse_nats_reconnects_total",
}


def expand(sql: str, variables: dict[str, list[str]], start: float, end: float, interval_s: int = 3600) -> str:
    """Grafana's ClickHouse data source macros and template variables, as the plugin expands them."""

    def conditional_all(match: re.Match[str]) -> str:
        condition, var = match.group(1), match.group(2).lstrip("$")
        return "1=1" if not variables.get(var) else condition

    sql = re.sub(r"\$__conditionalAll\((.+?),\s*(\$\w+)\)", conditional_all, sql)
    for name, values in variables.items():
        sql = sql.replace(f"${{{name}:singlequote}}", ",".join(f"'{v}'" for v in values))
    sql = re.sub(
        r"\$__timeFilter\(([^)]+)\)",
        lambda m: f"{m.group(1)} >= toDateTime({int(start)}) AND {m.group(1)} <= toDateTime({int(end)})",
        sql,
    )
    sql = re.sub(
        r"\$__timeInterval\(([^)]+)\)",
        lambda m: f"toStartOfInterval(toDateTime({m.group(1)}), INTERVAL {interval_s} second)",
        sql,
    )
    sql = sql.replace("$__fromTime", f"toDateTime({int(start)})").replace("$__toTime", f"toDateTime({int(end)})")
    sql = sql.replace("$__interval_s", str(interval_s))
    assert "$" not in sql, f"a macro or variable left unexpanded: {sql}"
    return sql


def panels(board: dict[str, object]) -> Iterator[dict[str, object]]:
    for panel in board["panels"]:  # type: ignore[attr-defined]
        yield panel
        yield from panel.get("panels", [])


def clickhouse_queries() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in panels(board):
            for target in panel.get("targets", []):  # type: ignore[attr-defined]
                if target["datasource"]["type"] == "grafana-clickhouse-datasource":
                    out.append((f"{path.stem}: {panel['title']}", target["rawSql"]))
        for var in board["templating"]["list"]:
            out.append((f"{path.stem}: variable {var['name']}", var["query"]))
    return out


QUERIES = clickhouse_queries()


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseSink]:
    path = tmp_path_factory.mktemp("dashboards") / "ch"
    seed(path, NOW)
    sink = ClickHouseSink(f"chdb://{path}", readable=migrations.tables(migrations.load()))
    yield sink
    asyncio.run(sink.close())


def ask(sink: ClickHouseSink, sql: str) -> SqlResult:
    return asyncio.run(answer(sink, SQL, SQL.encode(SqlQuery(sql=sql))))


def test_there_are_dashboards_with_clickhouse_queries() -> None:
    assert {p.stem for p in DASHBOARDS} >= {"gatehouse-spend", "gatehouse-errors", "gatehouse-health"}
    assert len(QUERIES) >= 20


@pytest.mark.parametrize(("where", "sql"), QUERIES, ids=[q[0] for q in QUERIES])
@pytest.mark.parametrize("selection", ["all", "one"])
def test_every_clickhouse_query_runs_and_returns_rows(
    sink: ClickHouseSink, where: str, sql: str, selection: str
) -> None:
    variables = {"team": [], "model": []} if selection == "all" else {"team": ["ml"], "model": ["gpt-4o-mini"]}
    result = ask(sink, expand(sql, variables, NOW - 86_400, NOW))
    assert result.error == "", f"{where}: {result.error}"
    assert result.rows, f"{where}: no rows"
    if "time" in result.columns:  # a time series: a time column and at least one number per row
        assert result.columns[0] == "time"


def test_a_team_filter_narrows_what_the_spend_panels_show(sink: ClickHouseSink) -> None:
    [(_, sql)] = [q for q in QUERIES if q[0] == "gatehouse-spend: Spend by team and project"]
    every = ask(sink, expand(sql, {"team": [], "model": []}, NOW - 86_400, NOW))
    ml = ask(sink, expand(sql, {"team": ["ml"], "model": []}, NOW - 86_400, NOW))
    assert {r[0] for r in every.rows} == {"ml", "support", "growth"} and {r[0] for r in ml.rows} == {"ml"}


def test_prometheus_panels_use_the_assumed_metric_names() -> None:
    board = json.loads((GRAFANA / "dashboards" / "gatehouse-health.json").read_text())
    used = set()
    for panel in panels(board):
        for target in panel.get("targets", []):  # type: ignore[attr-defined]
            assert target["datasource"]["uid"] == "gatehouse-prometheus"
            used |= set(re.findall(r"\bgatehouse_[a-z_]+\b", target["expr"]))
    assert used == ASSUMED_METRICS


def test_provisioning_points_at_the_dashboards_and_both_data_sources() -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "gatehouse.yaml").read_text())
    uids = {s["uid"]: s for s in sources["datasources"]}
    assert set(uids) == {"gatehouse-clickhouse", "gatehouse-prometheus"}
    assert uids["gatehouse-clickhouse"]["jsonData"]["username"] == "gatehouse_reader"  # read-only identity
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "gatehouse.yaml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())
    mounts = " ".join(compose["services"]["grafana"]["volumes"])
    assert "./grafana/dashboards:/var/lib/grafana/dashboards" in mounts and "./grafana/provisioning" in mounts
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in panels(board):
            for target in panel.get("targets", []):  # type: ignore[attr-defined]
                assert target["datasource"]["uid"] in uids, (path.stem, panel["title"])
