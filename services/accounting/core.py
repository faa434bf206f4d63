"""Pure accounting decisions: an event on the bus becomes a ClickHouse row, priced at list price."""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal

import msgspec
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

from services.accounting.listprice import ListPrices
from shared.governance import MAX_LOG_RETENTION_DAYS
from shared.pricing import PRICE_PROVIDER, PRICES_VERSION, Price, Rates, Tokens, clamp_unix, cost, when
from shared.schemas.batch import BatchJobEvent
from shared.schemas.chat import Attempt, GuardFinding, Usage
from shared.schemas.events import AuditEvent, BudgetAlert, ContentEvent, GuardEvent, RequestEvent, WebhookDelivery
from shared.schemas.mcp import McpCallEvent
from shared.subjects import Subjects

REQUESTS = "requests"
GUARD_VERDICTS = "guard_verdicts"

REQUEST_COLUMNS = (
    "event_id", "request_id", "trace_id", "batch_id", "api", "key_id", "team", "project", "user",
    "requested_model", "provider", "deployment", "provider_model", "stream", "status",
    "error_type", "error_code", "error_message",
    "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "finish_reason",
    "attempts.provider", "attempts.deployment", "attempts.status", "attempts.latency_ms", "attempts.error_code",
    "attempts.error_message",
    "guard_action", "guard_policy",
    "guard_findings.scanner", "guard_findings.rule", "guard_findings.action", "guard_findings.severity",
    "guard_findings.start", "guard_findings.end", "guard_findings.direction",
    "received_at", "finished_at", "latency_ms", "ttft_ms", "upstream_ms", "request_bytes", "response_bytes",
    "tags", "cost_usd", "price_version", "reserved_cost_usd", "settled_cost_usd",
    "cache_write_tokens", "cache_write_1h_tokens", "web_search_requests",
    "org", "provider_kind", "usage_estimated",
    "guard_replica", "router_replica",
    "attempts.model", "attempts.route", "attempts.retry_delay_ms", "attempts.ttft_ms",
    "route_strategy", "answered_model",
    "batch_item_id",
)  # fmt: skip

AUDIT_LOG = "audit_log"
BUDGET_ALERTS = "budget_alerts"
AUDIT_COLUMNS = (
    "event_id", "at", "actor", "actor_team", "action", "target_kind", "target_id", "before", "after",
    "request_id", "source_ip",
)  # fmt: skip
ALERT_COLUMNS = (
    "event_id", "at", "scope", "period", "period_key", "threshold_pct", "amount_usd", "spent_usd", "hard",
)  # fmt: skip

GUARD_COLUMNS = (
    "event_id", "request_id", "policy", "action", "direction",
    "findings.scanner", "findings.rule", "findings.action", "findings.severity",
    "findings.start", "findings.end", "findings.location", "scan_us", "at",
)  # fmt: skip

REQUEST_CONTENT = "request_content"
CONTENT_COLUMNS = (
    "event_id", "request_id", "at", "org", "team", "project", "key_id", "model", "direction", "policy",
    "guard_action", "texts.location", "texts.text", "redactions", "truncated", "retention_days",
)  # fmt: skip

BATCH_JOBS = "batch_jobs"
BATCH_COLUMNS = (
    "event_id", "job_id", "status", "surface", "endpoint", "model", "key_id", "team", "project", "user", "org",
    "total", "completed", "failed", "cost_usd", "reserved_usd", "created_at", "updated_at", "expires_at",
    "finished_at",
)  # fmt: skip

MCP_CALLS = "mcp_calls"
MCP_COLUMNS = (
    "event_id", "call_id", "trace_id", "run_id", "session_id", "method", "server", "tool",
    "key_id", "team", "project", "user", "org", "status", "error_code", "error_message",
    "latency_ms", "upstream_ms", "request_bytes", "response_bytes", "guard_action", "guard_policy",
    "guard_findings.scanner", "guard_findings.rule", "guard_findings.action", "guard_findings.severity",
    "guard_findings.direction", "guard_findings.location",
    "approval", "cost_usd", "received_at", "finished_at", "mcp_replica", "guard_replica", "tags",
)  # fmt: skip

WEBHOOK_DELIVERIES = "webhook_deliveries"
WEBHOOK_COLUMNS = (
    "event_id", "webhook", "event_type", "source_id", "outcome", "attempts", "http_status", "error", "signed",
    "event_at", "at", "body",
)  # fmt: skip

# every table the consumer writes, with its columns; column 0 is always the event id
COLUMNS: dict[str, tuple[str, ...]] = {
    REQUESTS: REQUEST_COLUMNS,
    GUARD_VERDICTS: GUARD_COLUMNS,
    AUDIT_LOG: AUDIT_COLUMNS,
    BUDGET_ALERTS: ALERT_COLUMNS,
    REQUEST_CONTENT: CONTENT_COLUMNS,
    BATCH_JOBS: BATCH_COLUMNS,
    MCP_CALLS: MCP_COLUMNS,
    WEBHOOK_DELIVERIES: WEBHOOK_COLUMNS,
}

# the column holding when each table's event happened (a request's record is published when it finishes)
_TIME_COLUMN = {REQUESTS: "finished_at", BATCH_JOBS: "updated_at", MCP_CALLS: "finished_at"}
EVENT_TIME_COLUMN = {table: columns.index(_TIME_COLUMN.get(table, "at")) for table, columns in COLUMNS.items()}


def event_time(table: str, row: list[object]) -> float:
    """Unix seconds of the event a row records."""
    return float(row[EVENT_TIME_COLUMN[table]])  # type: ignore[arg-type]  # a time column holds a float


_U16, _U32, _I32 = 2**16 - 1, 2**32 - 1, 2**31 - 1


_LIST_PRICES = ListPrices()


class BadEvent(ValueError):
    """An event that can never be stored (undecodable, or on a subject accounting does not know)."""


def price(event: RequestEvent, provider_kind: str = "", rates: Rates | None = None) -> Price:
    """List price of a request's usage at the time it was received; None (and why, in `version`) if unknown."""
    return price_usage(
        event.usage, event.provider_model or event.requested_model, provider_kind, event.received_at, rates
    )


def price_usage(usage: Usage | None, model: str, provider_kind: str, received_at: float, rates: Rates | None) -> Price:
    """The price of `usage` of `model` at `received_at`: the config's rates, else the list price.

    Token counts follow the OpenAI convention gatehouse normalises to: input includes the input read from
    the prompt cache and the input written to it (5-minute and 1-hour writes apart); each is priced at its
    own rate, and so are the provider's own web searches. Re-pricing stored rows calls this too.
    """
    if usage is not None and rates is not None:  # a negotiated price from the config
        tokens = Tokens(
            input=usage.input_tokens,
            output=usage.output_tokens,
            cached=usage.cached_tokens,
            cache_write=usage.cache_write_tokens,
        )
        return cost(tokens, model, provider_kind, received_at, rates)
    if provider_kind == "mock":
        return Price(0.0, "mock")
    if usage is None:
        return Price(None, "no usage reported")
    if usage.input_tokens <= 0 and usage.output_tokens <= 0:
        return Price(0.0, PRICES_VERSION)
    input_tokens = max(usage.input_tokens, 0)
    cache_read = min(max(usage.cached_tokens, 0), input_tokens)
    cache_write = min(max(usage.cache_write_tokens, 0), input_tokens - cache_read)
    counts = {
        "input_tokens": input_tokens,
        "output_tokens": max(usage.output_tokens, 0),
        "cache_read_tokens": cache_read,
        "cache_write_tokens": cache_write,
        "cache_write_1h_tokens": min(max(usage.cache_write_1h_tokens, 0), cache_write),
        "web_searches": max(usage.web_search_requests, 0),
    }
    provider_id = PRICE_PROVIDER.get(provider_kind)
    found = _LIST_PRICES.model(model, provider_id)
    if found is None:
        return Price(None, f"{PRICES_VERSION}: unknown model")
    provider, info = found
    total = _LIST_PRICES.plan_at(info, received_at).total(counts)
    if total is not None:
        return Price(float(total), f"{PRICES_VERSION}: {provider.id}/{info.id}")
    try:  # what the plan does not reproduce: genai-prices decides (and usually refuses)
        calc = calc_price(
            PriceUsage(
                input_tokens=input_tokens,
                output_tokens=counts["output_tokens"],
                cache_read_tokens=cache_read or None,
                cache_write_tokens=cache_write or None,
                cache_write_1h_tokens=counts["cache_write_1h_tokens"] or None,
                web_searches=counts["web_searches"] or None,
            ),
            model_ref=model,
            provider_id=provider_id,
            genai_request_timestamp=when(received_at),
        )
    except LookupError:
        return Price(None, f"{PRICES_VERSION}: unknown model")
    except (ValueError, ArithmeticError) as exc:  # a pricing rule that cannot apply to this usage
        return Price(None, f"{PRICES_VERSION}: {type(exc).__name__}")
    return Price(float(Decimal(calc.total_price)), f"{PRICES_VERSION}: {calc.provider.id}/{calc.model.id}")


def _ts(unix: float) -> float:
    # a time column holds unix seconds, which ClickHouse reads into DateTime64(3) from a JSON number; a clock
    # outside 1970..2199 is a bug upstream, but the record is still kept
    return clamp_unix(unix)


def _clamp(value: int, high: int, low: int = 0) -> int:
    return min(max(value, low), high)


# one empty list shared by every row without attempts or findings: rows are only ever encoded, never changed
_EMPTY: list[object] = []
_NO_ATTEMPTS = (_EMPTY,) * 10
_NO_FINDINGS = (_EMPTY,) * 7


def _attempt_columns(a: list[Attempt]) -> tuple[list[object], ...]:
    """The attempts.* columns: the six of REQUEST_COLUMNS' first attempts block, then the four appended later."""
    if len(a) == 1:  # the usual case, without ten loops over one item
        x = a[0]
        return (
            [x.provider], [x.deployment], [_clamp(x.status, _U16)], [x.latency_ms], [x.error_code],
            [x.error_message], [x.model], [x.route], [x.retry_delay_ms], [x.ttft_ms],
        )  # fmt: skip
    return (
        [x.provider for x in a], [x.deployment for x in a], [_clamp(x.status, _U16) for x in a],
        [x.latency_ms for x in a], [x.error_code for x in a], [x.error_message for x in a],
        [x.model for x in a], [x.route for x in a], [x.retry_delay_ms for x in a], [x.ttft_ms for x in a],
    )  # fmt: skip


def _finding_columns(g: list[GuardFinding]) -> tuple[list[object], ...]:
    return (
        [f.scanner for f in g], [f.rule for f in g], [f.action for f in g], [f.severity for f in g],
        [_clamp(f.start, _I32, -_I32) for f in g], [_clamp(f.end, _I32, -_I32) for f in g],
        [f.direction for f in g],
    )  # fmt: skip


def request_row(event: RequestEvent, provider_kind: str = "", rates: Rates | None = None) -> list[object]:
    """The `requests` row of an event, in REQUEST_COLUMNS order; integers are clamped to their column types."""
    u = event.usage
    err = event.error
    c = event.caller
    p = price(event, provider_kind, rates)
    reserved = event.reservation.amount_usd if event.reservation and event.reservation.holds else None
    a = event.attempts
    g = event.guard_findings
    # most requests have one attempt and no finding: the nested columns of an empty list are empty lists
    attempts = _attempt_columns(a) if a else _NO_ATTEMPTS
    findings = _finding_columns(g) if g else _NO_FINDINGS
    return [
        event.event_id, event.request_id, event.trace_id, event.batch_id, event.api,
        c.key_id, c.team, c.project, c.user,
        event.requested_model, event.provider, event.deployment, event.provider_model, event.stream,
        _clamp(event.status, _U16),
        err.type if err else "", err.code if err else "", err.message if err else "",
        _clamp(u.input_tokens, _U32) if u else 0, _clamp(u.output_tokens, _U32) if u else 0,
        _clamp(u.cached_tokens, _U32) if u else 0, _clamp(u.reasoning_tokens, _U32) if u else 0,
        event.finish_reason,
        *attempts[:6],
        event.guard_action, event.guard_policy,
        *findings,
        _ts(event.received_at), _ts(event.finished_at), event.latency_ms, event.ttft_ms, event.upstream_ms,
        _clamp(event.request_bytes, _U32), _clamp(event.response_bytes, _U32), dict(event.tags),
        # the worst case reserved before dispatch, and the price it settles to
        p.cost_usd, p.version, reserved, p.cost_usd,
        _clamp(u.cache_write_tokens, _U32) if u else 0, _clamp(u.cache_write_1h_tokens, _U32) if u else 0,
        _clamp(u.web_search_requests, _U32) if u else 0,
        c.org, provider_kind, event.usage_estimated,
        event.guard_replica, event.router_replica,
        *attempts[6:],
        event.route_strategy, event.answered_model,
        event.batch_item_id,
    ]  # fmt: skip


def audit_row(event: AuditEvent) -> list[object]:
    return [
        event.event_id, _ts(event.at), event.actor, event.actor_team, event.action, event.target_kind,
        event.target_id, event.before, event.after, event.request_id, event.source_ip,
    ]  # fmt: skip


def alert_row(event: BudgetAlert) -> list[object]:
    return [
        event.event_id, _ts(event.at), event.scope, event.period, event.period_key,
        _clamp(event.threshold_pct, _U16), event.amount_usd, event.spent_usd, event.hard,
    ]  # fmt: skip


def content_row(event: ContentEvent) -> list[object]:
    """The `request_content` row of a (redacted) content event, in CONTENT_COLUMNS order."""
    c = event.caller
    return [
        event.event_id, event.request_id, _ts(event.at), c.org, c.team, c.project, c.key_id, event.model,
        event.direction, event.policy, event.guard_action, [t.location for t in event.texts],
        [t.text for t in event.texts], _clamp(event.redactions, _U32), event.truncated,
        _clamp(event.retention_days, MAX_LOG_RETENTION_DAYS, 1),  # a TTL past 2106 would wrap to the past
    ]  # fmt: skip


def batch_row(event: BatchJobEvent) -> list[object]:
    """The `batch_jobs` row of one progress snapshot of a job (the latest per job wins)."""
    c = event.caller
    return [
        event.event_id, event.job_id, event.status, event.surface, event.endpoint, event.model,
        c.key_id, c.team, c.project, c.user, c.org,
        _clamp(event.total, _U32), _clamp(event.completed, _U32), _clamp(event.failed, _U32),
        event.cost_usd, event.reserved_usd,
        _ts(event.created_at), _ts(event.updated_at), _ts(event.expires_at), _ts(event.finished_at),
    ]  # fmt: skip


def mcp_row(event: McpCallEvent) -> list[object]:
    """The `mcp_calls` row of one MCP call, in MCP_COLUMNS order (rule ids and paths, never the text)."""
    c, f = event.caller, event.guard_findings
    return [
        event.event_id, event.call_id, event.trace_id, event.run_id, event.session_id, event.method,
        event.server, event.tool, c.key_id, c.team, c.project, c.user, c.org, event.status,
        _clamp(event.error_code, _I32, -_I32), event.error_message, event.latency_ms, event.upstream_ms,
        _clamp(event.request_bytes, _U32), _clamp(event.response_bytes, _U32), event.guard_action,
        event.guard_policy, [x.scanner for x in f], [x.rule for x in f], [x.action for x in f],
        [x.severity for x in f], [x.direction for x in f], [x.location for x in f],
        event.approval, event.cost_usd, _ts(event.received_at), _ts(event.finished_at), event.mcp_replica,
        event.guard_replica, dict(event.tags),
    ]  # fmt: skip


def webhook_row(event: WebhookDelivery) -> list[object]:
    """The `webhook_deliveries` row of a finished delivery (`at`: when it finished)."""
    return [
        event.event_id, event.webhook, event.event_type, event.source_id, event.outcome,
        _clamp(event.attempts, _U16), _clamp(event.http_status, _U16), event.error, event.signed,
        _ts(event.event_at), _ts(event.finished_at), event.body,
    ]  # fmt: skip


def guard_row(event: GuardEvent) -> list[object]:
    """The `guard_verdicts` row of an event, in GUARD_COLUMNS order (rule ids and offsets, never the text)."""
    f = event.findings
    return [
        event.event_id, event.request_id, event.policy, event.action, event.direction,
        [x.scanner for x in f], [x.rule for x in f], [x.action for x in f], [x.severity for x in f],
        [_clamp(x.start, _I32, -_I32) for x in f], [_clamp(x.end, _I32, -_I32) for x in f],
        [x.location for x in f], _clamp(event.scan_us, _U32), _ts(event.at),
    ]  # fmt: skip


def event_row(
    subjects: Subjects,
    subject: str,
    data: bytes,
    provider_kinds: Mapping[str, str],
    rates: Mapping[str, Rates] | None = None,
) -> tuple[str, list[object], RequestEvent | BudgetAlert | McpCallEvent | None]:
    """(table, row, the event where it asks for more than a row) for one message of the event stream;
    BadEvent if it can never be stored. `rates`: negotiated prices by deployment id."""
    try:
        if subject == subjects.events_request.name:
            request = subjects.events_request.decode(data)
            kind = request.provider_kind or provider_kinds.get(request.provider, "")
            return REQUESTS, request_row(request, kind, (rates or {}).get(request.deployment)), request
        if subject == subjects.events_guard.name:
            return GUARD_VERDICTS, guard_row(subjects.events_guard.decode(data)), None
        if subject == subjects.events_audit.name:
            return AUDIT_LOG, audit_row(subjects.events_audit.decode(data)), None
        if subject == subjects.events_content.name:
            return REQUEST_CONTENT, content_row(subjects.events_content.decode(data)), None
        if subject == subjects.events_alert.name:
            alert = subjects.events_alert.decode(data)
            return BUDGET_ALERTS, alert_row(alert), alert
        if subject == subjects.events_batch.name:
            return BATCH_JOBS, batch_row(subjects.events_batch.decode(data)), None
        if subject == subjects.events_mcp.name:
            call = subjects.events_mcp.decode(data)
            # the call itself travels on: a priced call's reservation is settled from it
            return MCP_CALLS, mcp_row(call), call
        if subject == subjects.events_webhook.name:
            return WEBHOOK_DELIVERIES, webhook_row(subjects.events_webhook.decode(data)), None
    except msgspec.DecodeError as exc:
        raise BadEvent(f"undecodable event on {subject}: {exc}") from exc
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadEvent(f"event on {subject} cannot be mapped to a row: {exc!r}") from exc
    raise BadEvent(f"no table for events on {subject}")


# A stored request record handed to on_event plugins (services/accounting/webhooks.py) carries the price this side
# stored with it in this header: the record is not priced a second time to tell the plugins what it cost.
COST_HEADER = "Gh-Cost-Usd"
_UNPRICED = "none"
_COST_COLUMN = REQUEST_COLUMNS.index("cost_usd")


def cost_header(row: list[object]) -> str:
    """The value of COST_HEADER for a request row: its `cost_usd`, or `none` when no price is known."""
    cost = row[_COST_COLUMN]
    return repr(cost) if isinstance(cost, float) else _UNPRICED


def carried_cost(value: str | None) -> float | None:
    """The cost a forwarded record's COST_HEADER gives (0.0 when it was unpriced, as the plugin view shows it);
    None when it gives none (a record forwarded before the header existed), so the record is priced here."""
    if value is None:
        return None
    if value == _UNPRICED:
        return 0.0
    try:
        cost = float(value)
    except ValueError:
        return None
    return cost if math.isfinite(cost) else None


def sql_string_list(values: list[str]) -> str:
    """Comma-separated ClickHouse string literals, escaped."""
    return ", ".join("'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" for v in values)
