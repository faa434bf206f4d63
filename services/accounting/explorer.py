"""The request explorer's queries (pure): a RequestsQuery → one SELECT, a request id → the SELECTs of its story.

Built from fixed parts like `usage`: values are quoted literals and filter names come from a fixed list, so
nothing a caller sends becomes SQL; the queries still run through the analytics gate. Trace spans are read
from the `spans` table (migration 0010).
"""

from __future__ import annotations

import re

from services.accounting.core import sql_string_list
from shared.schemas.admin import REQUEST_FILTERS, RequestsQuery

MAX_LIST = 1000
_STATUS = re.compile(r"^(?:[1-5][0-9]{2}|[1-5]xx|error|ok)$")
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")

LIST_COLUMNS = (
    "received_at", "request_id", "team", "project", "key_id", "requested_model", "provider", "status",
    "error_type", "latency_ms", "input_tokens", "output_tokens", "cost_usd", "guard_action",
)  # fmt: skip

STORY_COLUMNS = (
    "request_id", "trace_id", "batch_id", "api", "org", "team", "project", "user", "key_id", "requested_model",
    "provider", "provider_kind", "deployment", "provider_model", "stream", "status", "error_type", "error_code",
    "error_message", "received_at", "finished_at", "latency_ms", "ttft_ms", "upstream_ms", "request_bytes",
    "response_bytes", "input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens",
    "reasoning_tokens", "web_search_requests", "usage_estimated", "finish_reason", "cost_usd", "price_version",
    "reserved_cost_usd", "settled_cost_usd", "guard_action", "guard_policy", "attempts.provider",
    "attempts.deployment", "attempts.status", "attempts.latency_ms", "attempts.error_code",
    "attempts.error_message", "guard_findings.scanner", "guard_findings.rule", "guard_findings.action",
    "guard_findings.severity", "guard_findings.start", "guard_findings.end", "guard_findings.direction", "tags",
)  # fmt: skip


class BadExplorerQuery(ValueError):
    """A filter the explorer does not know, a status it cannot read, or a malformed request id."""


def status_condition(status: str) -> str:
    """`503`, `5xx`, `4xx`, `error` (≥ 400) or `ok` (< 400) as a condition on the status column."""
    s = status.strip().lower()
    if not _STATUS.match(s):
        raise BadExplorerQuery(f"status {status!r}: use e.g. 503, 5xx, 4xx, error or ok")
    if s == "error":
        return "status >= 400"
    if s == "ok":
        return "status < 400"
    if s.endswith("xx"):
        low = int(s[0]) * 100
        return f"status >= {low} AND status < {low + 100}"
    return f"status = {int(s)}"


def _time(since: float, until: float, column: str = "received_at") -> list[str]:
    if until and since and until < since:
        raise BadExplorerQuery("the period ends before it starts")
    where = [f"{column} >= toDateTime64({float(since):.3f}, 3, 'UTC')"] if since else []
    if until:
        where.append(f"{column} < toDateTime64({float(until):.3f}, 3, 'UTC')")
    return where


def requests_sql(query: RequestsQuery) -> str:
    where = _time(query.since, query.until)
    for name, value in sorted(query.filters.items()):
        if name not in REQUEST_FILTERS:
            raise BadExplorerQuery(f"unknown filter {name!r} (known: {', '.join(REQUEST_FILTERS)})")
        where.append(f"`{name}` = {sql_string_list([value])}")
    if query.status:
        where.append(status_condition(query.status))
    cond = f" WHERE {' AND '.join(where)}" if where else ""
    columns = ", ".join(f"`{c}`" for c in LIST_COLUMNS)
    limit = max(1, min(query.limit, MAX_LIST))
    return f"SELECT {columns} FROM requests{cond} ORDER BY received_at DESC LIMIT {limit}"  # noqa: S608


def checked_id(request_id: str) -> str:
    if not _REQUEST_ID.fullmatch(request_id):
        raise BadExplorerQuery("a request id is letters, digits and _ . : - (up to 128)")
    return request_id


def request_sql(request_id: str) -> str:
    columns = ", ".join(f"`{c}`" for c in STORY_COLUMNS)
    quoted = sql_string_list([checked_id(request_id)])
    # the event id is the request id: a lookup on the table's key; the newest copy if a replay left two
    return f"SELECT {columns} FROM requests WHERE event_id = {quoted} ORDER BY inserted_at DESC LIMIT 1"  # noqa: S608


def verdicts_sql(request_id: str) -> str:
    quoted = sql_string_list([checked_id(request_id)])
    return (
        "SELECT at, direction, policy, action, scan_us, `findings.scanner`, `findings.rule`, `findings.action`, "  # noqa: S608
        "`findings.severity`, `findings.start`, `findings.end`, `findings.location` "
        f"FROM guard_verdicts WHERE request_id = {quoted} ORDER BY at LIMIT 100"
    )


def content_sql(request_id: str) -> str:
    quoted = sql_string_list([checked_id(request_id)])
    return (
        "SELECT direction, at, policy, guard_action, `texts.location`, `texts.text`, redactions, truncated, "  # noqa: S608
        f"retention_days FROM request_content WHERE request_id = {quoted} ORDER BY direction LIMIT 10"
    )


def spans_sql(trace_id: str) -> str:
    quoted = sql_string_list([checked_id(trace_id)])
    return (
        "SELECT span_id, parent_span_id, name, service, instance, start_time, end_time, duration_ms, status, "  # noqa: S608
        f"status_message, attributes FROM spans FINAL WHERE trace_id = {quoted} ORDER BY start_time LIMIT 500"
    )
