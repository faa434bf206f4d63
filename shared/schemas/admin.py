"""Control-plane messages: analytics queries answered by accounting."""

from __future__ import annotations

import msgspec


class SqlQuery(msgspec.Struct, frozen=True, kw_only=True):
    sql: str
    max_rows: int = 10_000


class SqlResult(msgspec.Struct, frozen=True, kw_only=True):
    columns: list[str] = []
    # values are JSON-like: str, int, float, bool, None, and lists/maps of them (ClickHouse arrays, maps)
    rows: list[list[object]] = []
    error: str = ""
    # the result had more rows than the reply carries (max_rows, the service's cap or the reply size)
    truncated: bool = False


class ScanRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Scan one text with a named guard policy (any stage may ask, e.g. for tool arguments/results)."""

    text: str
    policy: str = ""
    direction: str = "input"  # input | output
    request_id: str = ""


class ScanFinding(msgspec.Struct, frozen=True, kw_only=True):
    scanner: str
    rule: str
    severity: str
    action: str
    start: int
    end: int


class ScanResult(msgspec.Struct, frozen=True, kw_only=True):
    policy: str
    action: str  # allow | flag | redact | block
    findings: list[ScanFinding] = []
    text: str = ""  # the text after redaction (equal to the input unless action is redact)
    scan_us: int = 0
    error: str = ""


class UsageQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Spend, tokens and requests over a period, grouped and filtered by fixed dimensions (no free SQL:
    ingress may ask this of accounting for the admin API, which may not run analytics queries)."""

    group_by: list[str] = []  # of USAGE_DIMENSIONS, e.g. ["team", "requested_model"]
    filters: dict[str, str] = {}  # dimension → value, e.g. {"team": "ml"}
    since: float = 0.0  # unix seconds
    until: float = 0.0  # unix seconds; 0: now
    limit: int = 1000


# what usage may be grouped and filtered by: column names of the requests table, and time buckets
USAGE_DIMENSIONS = (
    "org", "team", "project", "user", "key_id", "requested_model", "provider", "provider_model", "api",
    "status", "day", "hour", "deployment", "provider_kind", "week", "month", "model",
)  # fmt: skip


class RequestsQuery(msgspec.Struct, frozen=True, kw_only=True):
    """The request explorer's list: the newest requests matching fixed filters (no free SQL)."""

    filters: dict[str, str] = {}  # of REQUEST_FILTERS → value, e.g. {"team": "ml"}
    status: str = ""  # "503", "5xx", "4xx", "error" (≥ 400) or "ok" (< 400)
    since: float = 0.0
    until: float = 0.0  # 0: now
    limit: int = 50


# what the request explorer filters by
REQUEST_FILTERS = (
    "org", "team", "project", "user", "key_id", "requested_model", "provider", "deployment", "api",
    "error_type", "guard_action", "trace_id", "batch_id",
)  # fmt: skip


class RequestLookup(msgspec.Struct, frozen=True, kw_only=True):
    """One request's full story; `team`: only if the request is this team's (a team admin asking)."""

    request_id: str
    team: str = ""


class RequestStory(msgspec.Struct, frozen=True, kw_only=True):
    """A request's record, the guard's verdicts on it, its logged content and its trace spans (where stored)."""

    found: bool = False
    request: dict[str, object] = {}
    verdicts: list[dict[str, object]] = []
    content: list[dict[str, object]] = []
    spans: list[dict[str, object]] = []
    error: str = ""


class RepriceRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Price the stored usage of a time range again with the prices in force now (config overrides, else
    genai-prices); `models` / `deployments` narrow it (requested model names, deployment ids)."""

    since: float
    until: float
    models: list[str] = []
    deployments: list[str] = []
    dry_run: bool = False


class RepriceResult(msgspec.Struct, frozen=True, kw_only=True):
    rows: int = 0  # rows in the range (and filters)
    changed: int = 0  # rows whose cost or price version changed
    cost_before_usd: float = 0.0  # of the changed rows
    cost_after_usd: float = 0.0
    versions: dict[str, int] = {}  # new price version → rows changed to it
    dry_run: bool = False
    error: str = ""
