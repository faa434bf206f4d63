"""Pure accounting decisions: an event becomes a ClickHouse row (with its price), and which SQL is read-only."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from importlib.metadata import PackageNotFoundError, version

from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

from shared.schemas.events import GuardEvent, RequestEvent

REQUEST_COLUMNS = (
    "event_id", "request_id", "trace_id", "batch_id", "api", "key_id", "team", "project", "user",
    "requested_model", "provider", "deployment", "provider_model", "stream", "status",
    "error_type", "error_code", "error_message",
    "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "finish_reason",
    "attempts.provider", "attempts.deployment", "attempts.status", "attempts.latency_ms", "attempts.error_code",
    "guard_action", "guard_policy",
    "guard_findings.scanner", "guard_findings.rule", "guard_findings.action", "guard_findings.severity",
    "guard_findings.start", "guard_findings.end", "guard_findings.direction",
    "received_at", "finished_at", "latency_ms", "ttft_ms", "upstream_ms", "request_bytes", "response_bytes",
    "tags", "cost_usd", "price_version", "reserved_cost_usd", "settled_cost_usd",
)  # fmt: skip

GUARD_COLUMNS = (
    "event_id", "request_id", "policy", "action", "direction",
    "findings.scanner", "findings.rule", "findings.action", "findings.severity",
    "findings.start", "findings.end", "findings.location", "scan_us", "at",
)  # fmt: skip

# provider kinds whose names genai-prices knows under another id
_PRICE_PROVIDER = {"azure": "azure", "gemini": "google", "mock": ""}

try:
    PRICES_VERSION = f"genai-prices {version('genai-prices')}"
except PackageNotFoundError:  # pragma: no cover - the package is a dependency
    PRICES_VERSION = "genai-prices unknown"


@dataclass(frozen=True, slots=True)
class Price:
    cost_usd: float | None
    version: str


def price(event: RequestEvent, provider_kind: str = "") -> Price:
    """Cost of a request's usage at list price; None (with the reason in `version`) when it is unknown."""
    usage = event.usage
    if usage is None or not (usage.input_tokens or usage.output_tokens):
        return Price(0.0 if usage is not None else None, PRICES_VERSION)
    provider = _PRICE_PROVIDER.get(provider_kind, provider_kind) or None
    if provider_kind == "mock":
        return Price(0.0, "mock")
    model = event.provider_model or event.requested_model
    try:
        calc = calc_price(
            PriceUsage(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_tokens=usage.cached_tokens or None,
            ),
            model_ref=model,
            provider_id=provider,
        )
    except LookupError:
        return Price(None, f"{PRICES_VERSION}; unknown model {model}")
    return Price(float(Decimal(calc.total_price)), PRICES_VERSION)


def _ts(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, tz=UTC)


def request_row(event: RequestEvent, provider_kind: str = "") -> list[object]:
    u = event.usage
    err = event.error
    c = event.caller
    p = price(event, provider_kind)
    a = event.attempts
    g = event.guard_findings
    return [
        event.event_id, event.request_id, event.trace_id, event.batch_id, event.api,
        c.key_id, c.team, c.project, c.user,
        event.requested_model, event.provider, event.deployment, event.provider_model, event.stream, event.status,
        err.type if err else "", err.code if err else "", err.message if err else "",
        u.input_tokens if u else 0, u.output_tokens if u else 0, u.cached_tokens if u else 0,
        u.reasoning_tokens if u else 0, event.finish_reason,
        [x.provider for x in a], [x.deployment for x in a], [x.status for x in a],
        [x.latency_ms for x in a], [x.error_code for x in a],
        event.guard_action, event.guard_policy,
        [f.scanner for f in g], [f.rule for f in g], [f.action for f in g], [f.severity for f in g],
        [f.start for f in g], [f.end for f in g], [f.direction for f in g],
        _ts(event.received_at), _ts(event.finished_at), event.latency_ms, event.ttft_ms, event.upstream_ms,
        event.request_bytes, event.response_bytes, dict(event.tags),
        p.cost_usd, p.version, None, p.cost_usd,
    ]  # fmt: skip


def guard_row(event: GuardEvent) -> list[object]:
    f = event.findings
    return [
        event.event_id, event.request_id, event.policy, event.action, event.direction,
        [x.scanner for x in f], [x.rule for x in f], [x.action for x in f], [x.severity for x in f],
        [x.start for x in f], [x.end for x in f], [x.location for x in f], event.scan_us, _ts(event.at),
    ]  # fmt: skip


_READ_ONLY = re.compile(r"^\s*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXPLAIN|EXISTS)\b", re.IGNORECASE)
_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)


def check_read_only(sql: str) -> str | None:
    """None when `sql` is a single read-only statement, else the reason it is refused."""
    body = _COMMENT.sub(" ", sql).strip().rstrip(";").strip()
    if not body:
        return "empty query"
    if ";" in body:
        return "only one statement per query"
    if not _READ_ONLY.match(body):
        return "only read-only queries (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN) are allowed"
    return None


def sql_literal_list(values: list[str]) -> str:
    """A ClickHouse tuple of string literals, escaped."""
    return ", ".join("'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" for v in values)
