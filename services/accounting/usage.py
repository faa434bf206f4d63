"""Usage summaries (pure): a UsageQuery → one SELECT over the requests and the MCP calls, built from fixed parts.

The admin API and `gatehouse usage` ask these; values are quoted literals, dimensions come from a fixed
list, so nothing a caller sends becomes SQL. The query still runs through the analytics gate like any.
Cost is `cost_usd`, the current price of each request (`gatehouse reprice` may have changed it since the
budget was settled at `settled_cost_usd`), plus the price of each MCP call charged (`mcp_calls.cost_usd`,
what its budget reservation settled to). A tool call counts in `tool_calls` (not `requests`) under
`api` = `mcp`, with its namespaced tool as the model and its server as the provider and deployment.
"""

from __future__ import annotations

from services.accounting.core import sql_string_list
from shared.schemas.admin import USAGE_DIMENSIONS, UsageQuery

_EXPRESSIONS = {
    "day": "toDate(received_at)",
    "hour": "toStartOfHour(received_at)",
    "week": "toMonday(received_at)",
    "month": "toStartOfMonth(received_at)",
    "status": "toString(usage_rows.status)",  # qualified: the alias `status` must not shadow the column
    "model": "requested_model",
}
_GROUP_BY = {"status": "usage_rows.status"}
MAX_ROWS = 10_000
TIME_BUCKETS = ("hour", "day", "week", "month")


class BadUsageQuery(ValueError):
    """A dimension gatehouse does not group or filter by, or a period that ends before it starts."""


def _column(name: str) -> str:
    if name not in USAGE_DIMENSIONS:
        raise BadUsageQuery(f"unknown dimension {name!r} (known: {', '.join(USAGE_DIMENSIONS)})")
    return _EXPRESSIONS.get(name, f"`{name}`")


# dimensions the hourly rollup carries: a usage query grouped and filtered by these alone reads it for the whole
# hours of its period, and the request rows only for the partial hours at either end
ROLLUP_DIMENSIONS = frozenset({"team", "project", "key_id", "requested_model", "model", "provider", *TIME_BUCKETS})
_HOUR = 3600


def _at(value: float) -> str:
    return f"toDateTime64({float(value):.3f}, 3, 'UTC')"


# an MCP call's status as the HTTP status a request refused or failed the same way would have
_MCP_STATUS = (
    "toUInt16(multiIf(mcp_calls.status IN ('ok', 'tool_error'), 200, mcp_calls.status = 'invalid', 400, "
    "mcp_calls.status IN ('rate_limited', 'budget', 'run_limit'), 429, mcp_calls.status = 'timeout', 504, "
    "mcp_calls.status IN ('unavailable', 'upstream_error'), 502, mcp_calls.status = 'busy', 503, 403))"
)


def _mcp_between(since: float, until: float) -> str:
    # finished_at (the table's order and partition key) is never before received_at: the lower bound prunes
    return f"finished_at >= {_at(since)} AND received_at >= {_at(since)} AND received_at < {_at(until)}"


def usage_sql(query: UsageQuery, now: float) -> str:
    until = query.until or now
    if query.since and until < query.since:
        raise BadUsageQuery("the period ends before it starts")
    names = [*query.group_by, *query.filters]
    for name in names:
        _column(name)
    first_hour = -(-int(query.since) // _HOUR) * _HOUR  # the first whole hour
    last_hour = int(until) // _HOUR * _HOUR
    if set(names) <= ROLLUP_DIMENSIONS and last_hour > first_hour:
        return _from_rollup(query, until, first_hour, last_hour)
    return _from_rows(query, until)


def _select(query: UsageQuery, time_column: str) -> tuple[list[str], list[str], list[str]]:
    """(select list, group expressions, where conditions) over a table whose time column is `time_column`."""
    expressions = {**_EXPRESSIONS, **{b: _EXPRESSIONS[b].replace("received_at", time_column) for b in TIME_BUCKETS}}
    # grouped by the number, shown as text: converting every row before grouping costs ten times more
    groups = [_GROUP_BY.get(g) or expressions.get(g, f"`{g}`") for g in query.group_by]
    select = [f"{expr} AS `{name}`" for name, expr in zip(query.group_by, groups, strict=True)]
    where = [f"{expressions.get(n, f'`{n}`')} = {sql_string_list([v])}" for n, v in sorted(query.filters.items())]
    return select, groups, where


def _tail(query: UsageQuery, sql: str, groups: list[str]) -> str:
    if groups:
        # time buckets read in time order; other groups by spend
        buckets = [f"`{g}`" for g in query.group_by if g in TIME_BUCKETS]
        order = [*buckets, "cost_usd DESC", "requests DESC"]
        sql += f" GROUP BY {', '.join(groups)} ORDER BY {', '.join(order)}"
    return sql + f" LIMIT {max(1, min(query.limit, MAX_ROWS))}"


def _from_rows(query: UsageQuery, until: float) -> str:
    select, groups, where = _select(query, "received_at")
    dims = "org, team, project, user, key_id, requested_model, provider, provider_model, api, status, deployment"
    model_rows = (
        f"SELECT received_at, {dims}, provider_kind, toUInt64(1) AS n_requests, toUInt64(0) AS n_tool_calls, "  # noqa: S608
        "toUInt64(status >= 400) AS n_errors, toUInt64(input_tokens) AS n_input, toUInt64(output_tokens) AS n_output, "
        "toUInt64(cached_tokens) AS n_cached, ifNull(cost_usd, 0) AS cost "
        f"FROM requests WHERE received_at >= {_at(query.since)} AND received_at < {_at(until)}"
    )
    tool_rows = (
        "SELECT received_at, org, team, project, user, key_id, tool, server, tool, 'mcp', "  # noqa: S608
        f"{_MCP_STATUS}, server, 'mcp', toUInt64(0), toUInt64(1), "
        "toUInt64(mcp_calls.status NOT IN ('ok', 'tool_error')), toUInt64(0), toUInt64(0), toUInt64(0), cost_usd "
        f"FROM mcp_calls WHERE {_mcp_between(query.since, until)}"
    )
    select += [
        "sum(n_requests) AS requests",
        "sum(n_tool_calls) AS tool_calls",
        "sum(n_errors) AS errors",
        "sum(n_input) AS input_tokens",
        "sum(n_output) AS output_tokens",
        "sum(n_cached) AS cached_tokens",
        "round(sum(cost), 6) AS cost_usd",
    ]
    cond = f" WHERE {' AND '.join(where)}" if where else ""
    sql = f"SELECT {', '.join(select)} FROM ({model_rows} UNION ALL {tool_rows}) AS usage_rows{cond}"  # noqa: S608
    return _tail(query, sql, groups)


def _from_rollup(query: UsageQuery, until: float, first_hour: int, last_hour: int) -> str:
    """The whole hours from requests_per_hour, the partial ones at the ends from the rows: the same sums. MCP
    calls (far fewer than requests) are read from their rows for the whole period."""
    keys = "team, project, key_id, requested_model, provider"
    hours = (
        f"SELECT toDateTime64(hour, 3, 'UTC') AS at, {keys}, requests, errors, input_tokens, output_tokens, "  # noqa: S608
        f"cached_tokens, cost_usd, toUInt64(0) AS tool_calls FROM requests_per_hour "
        f"WHERE hour >= toDateTime({first_hour}, 'UTC') AND hour < toDateTime({last_hour}, 'UTC')"
    )
    ends = (
        f"SELECT received_at AS at, {keys}, toUInt64(1), toUInt64(status >= 400), toUInt64(input_tokens), "  # noqa: S608
        "toUInt64(output_tokens), toUInt64(cached_tokens), ifNull(cost_usd, 0), toUInt64(0) FROM requests WHERE "
        f"(received_at >= {_at(query.since)} AND received_at < {_at(first_hour)}) OR "
        f"(received_at >= {_at(last_hour)} AND received_at < {_at(until)})"
    )
    tools = (
        "SELECT received_at AS at, team, project, key_id, tool, server, toUInt64(0), "  # noqa: S608
        "toUInt64(status NOT IN ('ok', 'tool_error')), toUInt64(0), toUInt64(0), toUInt64(0), cost_usd, toUInt64(1) "
        f"FROM mcp_calls WHERE {_mcp_between(query.since, until)}"
    )
    select, groups, where = _select(query, "at")
    select += [
        "sum(requests) AS requests",
        "sum(tool_calls) AS tool_calls",
        "sum(errors) AS errors",
        "sum(input_tokens) AS input_tokens",
        "sum(output_tokens) AS output_tokens",
        "sum(cached_tokens) AS cached_tokens",
        "round(sum(cost_usd), 6) AS cost_usd",
    ]
    cond = f" WHERE {' AND '.join(where)}" if where else ""
    sql = f"SELECT {', '.join(select)} FROM ({hours} UNION ALL {ends} UNION ALL {tools}){cond}"  # noqa: S608 (fixed parts)
    return _tail(query, sql, groups)
