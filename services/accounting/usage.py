"""Usage summaries (pure): a UsageQuery → one SELECT over the requests table, built from fixed parts.

The admin API and `gatehouse usage` ask these; values are quoted literals, dimensions come from a fixed
list, so nothing a caller sends becomes SQL. The query still runs through the analytics gate like any.
Cost is `cost_usd`, the current price of each request (`gatehouse reprice` may have changed it since the
budget was settled at `settled_cost_usd`).
"""

from __future__ import annotations

from services.accounting.core import sql_string_list
from shared.schemas.admin import USAGE_DIMENSIONS, UsageQuery

_EXPRESSIONS = {
    "day": "toDate(received_at)",
    "hour": "toStartOfHour(received_at)",
    "week": "toMonday(received_at)",
    "month": "toStartOfMonth(received_at)",
    "status": "toString(status)",
    "model": "requested_model",
}
MAX_ROWS = 10_000
TIME_BUCKETS = ("hour", "day", "week", "month")


class BadUsageQuery(ValueError):
    """A dimension gatehouse does not group or filter by, or a period that ends before it starts."""


def _column(name: str) -> str:
    if name not in USAGE_DIMENSIONS:
        raise BadUsageQuery(f"unknown dimension {name!r} (known: {', '.join(USAGE_DIMENSIONS)})")
    return _EXPRESSIONS.get(name, f"`{name}`")


def usage_sql(query: UsageQuery, now: float) -> str:
    until = query.until or now
    if query.since and until < query.since:
        raise BadUsageQuery("the period ends before it starts")
    where = [f"received_at >= toDateTime64({float(query.since):.3f}, 3, 'UTC')"]
    where.append(f"received_at < toDateTime64({float(until):.3f}, 3, 'UTC')")
    for name, value in sorted(query.filters.items()):
        where.append(f"{_column(name)} = {sql_string_list([value])}")
    groups = [_column(g) for g in query.group_by]
    select = [f"{expr} AS `{name}`" for name, expr in zip(query.group_by, groups, strict=True)]
    select += [
        "count() AS requests",
        "countIf(status >= 400) AS errors",
        "sum(input_tokens) AS input_tokens",
        "sum(output_tokens) AS output_tokens",
        "sum(cached_tokens) AS cached_tokens",
        "round(sum(ifNull(cost_usd, 0)), 6) AS cost_usd",
    ]
    sql = f"SELECT {', '.join(select)} FROM requests WHERE {' AND '.join(where)}"  # noqa: S608 (fixed parts)
    if groups:
        # time buckets read in time order; other groups by spend
        buckets = [f"`{g}`" for g in query.group_by if g in TIME_BUCKETS]
        order = [*buckets, "cost_usd DESC", "requests DESC"]
        sql += f" GROUP BY {', '.join(groups)} ORDER BY {', '.join(order)}"
    return sql + f" LIMIT {max(1, min(query.limit, MAX_ROWS))}"
