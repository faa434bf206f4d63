"""Rollup query latency at 10 million requests (issue 9): the usage report, the dashboards' spend, error and
latency panels and the analyst examples, over synthetic rows in embedded ClickHouse (chDB), through the same
path as `gatehouse sql` (parsed, judged by the analytics gate, run on the read-only connection).

    python bench/rollups.py                      # 10,000,000 rows over 30 days; p50 of 5 runs per query
    python bench/rollups.py --rows 1000000 --runs 3

The rows are generated inside ClickHouse (`INSERT … SELECT … FROM numbers(n)`), so the materialized rollups
fill exactly as they do from the consumer's inserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.accounting import migrations
from services.accounting.sink import ClickHouseSink
from services.accounting.usage import usage_sql
from shared.schemas.admin import UsageQuery

DAYS = 30
FILL = """
INSERT INTO requests (event_id, request_id, trace_id, api, org, key_id, team, project, user, requested_model,
    provider, provider_kind, deployment, provider_model, stream, status, error_type, input_tokens, output_tokens,
    cached_tokens, `attempts.provider`, `attempts.deployment`, `attempts.status`, `attempts.latency_ms`,
    `attempts.error_code`, `attempts.error_message`, guard_action, guard_policy, received_at, finished_at,
    latency_ms, ttft_ms, upstream_ms, cost_usd, price_version, settled_cost_usd)
SELECT
    lower(hex(toUInt128(number) + {offset})) AS event_id, event_id, event_id, 'chat', 'acme',
    concat('key-', toString(number % 500)), concat('team-', toString(number % 20)),
    concat('project-', toString(number % 60)), concat('user-', toString(number % 2000)),
    ['gpt-4o-mini', 'gpt-4o', 'claude-sonnet', 'gemini-flash', 'mistral-small'][number % 5 + 1],
    ['openai', 'openai', 'anthropic', 'gemini', 'mistral'][number % 5 + 1],
    ['openai', 'openai', 'anthropic', 'gemini', 'mistral'][number % 5 + 1],
    concat(['openai', 'openai', 'anthropic', 'gemini', 'mistral'][number % 5 + 1], '/m'), 'm', number % 3 = 0,
    if(number % 37 = 0, 502, if(number % 53 = 0, 429, 200)), if(number % 37 = 0, 'api_error', ''),
    100 + number % 3000, 20 + number % 800, (number % 4) * 64,
    [['openai', 'openai', 'anthropic', 'gemini', 'mistral'][number % 5 + 1]], ['d'], [if(number % 37 = 0, 502, 200)],
    [toFloat32(200 + number % 900)], [''], [''],
    if(number % 97 = 0, 'block', 'allow'), 'default',
    toDateTime64({start}, 3, 'UTC') + toIntervalMillisecond(intDiv(number * {span_ms}, {rows})) AS received,
    received + toIntervalMillisecond(300 + number % 900),
    toFloat32(300 + number % 900), toFloat32(100 + number % 300), toFloat32(250 + number % 850),
    (100 + number % 3000) * 0.00000015 + (20 + number % 800) * 0.0000006 AS cost, 'synthetic', cost
FROM numbers({rows})
"""


def queries(now: float) -> dict[str, str]:
    since = now - DAYS * 86_400
    # `gatehouse usage` reads whole hours from the hourly rollup and the partial hours at the ends from the rows;
    # a dimension the rollup lacks (status, user, org, …) reads every row of the period
    usage = {
        "usage by team (30 d, rollup + rows at the ends)": ["team"],
        "usage by team, model (30 d, rollup + rows at the ends)": ["team", "model"],
        "usage by provider, day (30 d, rollup + rows at the ends)": ["provider", "day"],
        "usage by team, status (30 d, every row)": ["team", "status"],
    }
    out = {name: usage_sql(UsageQuery(group_by=g, since=since), now) for name, g in usage.items()}
    out |= {
        "spend by team, project (30 d, hourly rollup)": (
            "SELECT team, project, sum(requests) AS requests, round(sum(cost_usd), 4) AS spend FROM requests_per_hour "
            f"WHERE hour >= toDateTime({int(since)}) GROUP BY team, project ORDER BY spend DESC"
        ),
        "spend per hour by team (7 d, minute rollup)": (
            "SELECT toStartOfHour(minute) AS time, team, sum(cost_usd) AS spend FROM requests_per_minute "
            f"WHERE minute >= toDateTime({int(now - 7 * 86_400)}) GROUP BY time, team ORDER BY time"
        ),
        "spend by key (30 d, settled rollup)": (
            "SELECT key_id, round(sum(cost_usd), 4) AS spend FROM spend_per_hour "
            f"WHERE hour >= toDateTime({int(since)}) GROUP BY key_id ORDER BY spend DESC LIMIT 50"
        ),
        "latency p50/p95/p99 per hour (1 d, raw rows)": (
            "SELECT toStartOfHour(received_at) AS time, quantile(0.5)(latency_ms), quantile(0.95)(latency_ms), "
            f"quantile(0.99)(latency_ms) FROM requests WHERE received_at >= toDateTime({int(now - 86_400)}) "
            "GROUP BY time ORDER BY time"
        ),
        "provider failure rate over attempts (1 d, raw rows)": (
            "SELECT p, count() AS attempts, countIf(s >= 400) / attempts FROM requests "
            "ARRAY JOIN `attempts.provider` AS p, `attempts.status` AS s "
            f"WHERE received_at >= toDateTime({int(now - 86_400)}) GROUP BY p ORDER BY 3 DESC"
        ),
        "errors by type per hour (30 d, raw rows)": (
            "SELECT toStartOfHour(received_at) AS time, error_type, count() FROM requests "
            f"WHERE received_at >= toDateTime({int(since)}) AND status >= 400 GROUP BY time, error_type ORDER BY time"
        ),
    }
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--data", type=Path, default=None, help="reuse a chDB directory filled before")
    args = parser.parse_args()
    data = args.data or Path(tempfile.mkdtemp(prefix="gh-bench-rollups-")) / "clickhouse"
    now = time.time()
    sink = ClickHouseSink(f"chdb://{data}", readable=migrations.tables(migrations.load()))
    await sink.migrate(migrations.load())
    stored = (await sink.query("SELECT count() FROM requests", 1)).rows[0][0]
    if stored < args.rows:
        started = time.perf_counter()
        step = 2_000_000
        start = int(now - DAYS * 86_400)
        for offset in range(int(stored), args.rows, step):  # type: ignore[call-overload]
            rows = min(step, args.rows - offset)
            # each slice covers its share of the 30 days, so the whole fills them evenly
            span = DAYS * 86_400 * 1000 * rows // args.rows
            slice_start = start + (offset * DAYS * 86_400) // args.rows
            await sink.command(FILL.format(offset=offset, start=slice_start, span_ms=span, rows=rows))
        print(f"filled {args.rows:,} rows in {time.perf_counter() - started:.0f}s ({data})")
    print(f"requests: {(await sink.query('SELECT count() FROM requests', 1)).rows[0][0]:,} rows; "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    for name, sql in queries(now).items():
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            answer = await sink.query(sql, 100_000)
            times.append((time.perf_counter() - started) * 1000)
        spread = f"({min(times):.1f} to {max(times):.1f})"
        print(f"{statistics.median(times):8.1f} ms p50 {spread:>18}  {len(answer.rows):5d} rows  {name}")
    await sink.close()


if __name__ == "__main__":
    asyncio.run(main())
