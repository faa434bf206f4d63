"""Prometheus metrics of every gatehouse process: one registry, the metric families, and the functions that
feed them (services call these; nothing else touches a metric).

Labels are bounded by the config, never by traffic: model names (as configured: names and aliases; any
other name is `unknown`), provider names, deployment ids, guard policies and rule ids, HTTP status codes,
and error types and codes of the taxonomy in shared/errors.py (anything else is `other`). No key, team,
user or request id is ever a label. Each process labels its series with its `service`; Prometheus adds
the instance.

Until `configure(service, enabled=True)` runs (shared/telemetry.py, at startup), every function here
returns at once, so a process with metrics off pays one attribute read per call.

A call on the request path only appends the observation to a queue (~0.2 µs; updating a labelled
prometheus_client series validates and locks, ~3 µs, and a request makes a dozen); the queue is folded into
the series before every scrape (the first collector of the registry) and every second by the process's
telemetry loop (`fold`), so a scrape always sees every observation made before it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from shared.errors import CLIENT_CLOSED, GatewayError
from shared.schemas.chat import GuardFinding, Usage

# no `*_created` series: a quarter of the exposition for what Prometheus infers from resets anyway
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated
REGISTRY = CollectorRegistry(auto_describe=True)
UNKNOWN = "unknown"
# observations not folded into their series yet: (metric number, label values, value); plain values only,
# so the cycle collector stops tracking them
_QUEUE: deque[tuple[int, tuple[str, ...], float]] = deque()
_METRICS: list[MetricWrapperBase] = []
_NUMBERS: dict[int, int] = {}  # id(metric) → its number
# past this many queued observations the caller folds them itself (a process nobody scrapes, no loop)
_QUEUE_FOLD_AT = 50_000
OTHER = "other"

# request latency: a mock answers in ~2 ms, a long completion takes minutes
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SCAN_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
INSERT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _error_codes() -> tuple[frozenset[str], frozenset[str]]:
    types: set[str] = set()
    codes: set[str] = {CLIENT_CLOSED.code}  # recorded for 499 (the client left), never sent
    todo: list[type[GatewayError]] = [GatewayError]
    while todo:
        cls = todo.pop()
        types.add(cls.type)
        codes.add(cls.code)
        todo.extend(cls.__subclasses__())
    types.add("client_closed")
    return frozenset(types), frozenset(codes)


ERROR_TYPES, ERROR_CODES = _error_codes()


def bounded(value: str, allowed: frozenset[str], fallback: str = OTHER) -> str:
    """`value` if it is one of `allowed`, else `fallback`: a label value never comes from traffic."""
    return value if value in allowed else fallback


def fold() -> None:
    """Apply the queued observations to their series (the loop's thread, or a scrape's: deque ops are atomic).

    Counter increments of one series are summed first: one locked update per series and fold."""
    queue = _QUEUE
    sums: dict[tuple[int, tuple[str, ...]], float] = {}
    while True:
        try:
            key = queue.popleft()
        except IndexError:
            break
        number, labels, value = key
        apply = _APPLY.get((number, labels))
        if apply is None:
            apply = _bind(number, labels)
        if apply is _summed:
            sums[number, labels] = sums.get((number, labels), 0.0) + value
        else:
            apply(value)
    for (number, labels), total in sums.items():
        child = _child(_METRICS[number], *labels)
        assert isinstance(child, Counter)
        child.inc(total)


def _summed(value: float) -> None:  # a marker: counter increments are summed, then applied
    raise AssertionError("never called")


# (metric number, labels) → what applies one observation: _summed for counters, observe or set
_APPLY: dict[tuple[int, tuple[str, ...]], Callable[[float], None]] = {}


def _bind(number: int, labels: tuple[str, ...]) -> Callable[[float], None]:
    child = _child(_METRICS[number], *labels)
    apply: Callable[[float], None]
    if isinstance(child, Counter):
        apply = _summed
    elif isinstance(child, Histogram):
        apply = child.observe
    else:
        assert isinstance(child, Gauge)
        apply = child.set
    _APPLY[number, labels] = apply
    return apply


class _Fold(Collector):
    """Registered first, so every scrape folds the queue before the series are read."""

    def collect(self) -> Iterable[CounterMetricFamily]:
        fold()
        return ()


# ---- the metric families -------------------------------------------------------------------------
_R = REGISTRY
_R.register(_Fold())
REQUESTS = Counter(
    "gatehouse_requests", "Requests a stage finished, by the status it answered.",
    ["service", "model", "provider", "status"], registry=_R,
)  # fmt: skip
ERRORS = Counter(
    "gatehouse_errors", "Requests a stage answered with an error, by error type and code.",
    ["service", "model", "provider", "type", "code"], registry=_R,
)  # fmt: skip
DURATION = Histogram(
    "gatehouse_request_duration_seconds", "Time a stage took to serve a request, to its last byte.",
    ["service", "model", "provider", "deployment"], buckets=LATENCY_BUCKETS, registry=_R,
)  # fmt: skip
TTFT = Histogram(
    "gatehouse_time_to_first_token_seconds", "Time to the first streamed byte, from the stage's start.",
    ["service", "model", "provider", "deployment"], buckets=TTFT_BUCKETS, registry=_R,
)  # fmt: skip
TOKENS = Counter(
    "gatehouse_tokens", "Tokens as providers reported them (input includes cached; output includes reasoning).",
    ["service", "model", "provider", "deployment", "type"], registry=_R,
)  # fmt: skip
COST = Counter(
    "gatehouse_cost_usd", "Cost of the requests stored, at the price accounting settled them to.",
    ["service", "model", "provider", "deployment"], registry=_R,
)  # fmt: skip
UPSTREAM = Counter(
    "gatehouse_upstream_attempts", "Provider calls, by HTTP status (499: the client left) and error code.",
    ["service", "model", "provider", "deployment", "status", "code"], registry=_R,
)  # fmt: skip
UPSTREAM_DURATION = Histogram(
    "gatehouse_upstream_duration_seconds", "Time of one provider call, to its last byte.",
    ["service", "model", "provider", "deployment"], buckets=LATENCY_BUCKETS, registry=_R,
)  # fmt: skip
UPSTREAM_TTFT = Histogram(
    "gatehouse_upstream_time_to_first_token_seconds", "Time from a streamed provider call's start to its first chunk.",
    ["service", "model", "provider", "deployment"], buckets=TTFT_BUCKETS, registry=_R,
)  # fmt: skip
RETRIES = Counter(
    "gatehouse_router_retries", "Attempts after a request's first (failover or retry), by the deployment tried.",
    ["service", "model", "deployment", "reason"], registry=_R,
)  # fmt: skip
BREAKER_STATE = Gauge(
    "gatehouse_circuit_breaker_state", "Circuit breaker of a deployment: 0 closed, 1 half-open, 2 open.",
    ["service", "deployment"], registry=_R,
)  # fmt: skip
BREAKER_TRANSITIONS = Counter(
    "gatehouse_circuit_breaker_transitions", "Circuit breaker state changes, by the state entered.",
    ["service", "deployment", "state"], registry=_R,
)  # fmt: skip
PLUGIN_CALLS = Counter(
    "gatehouse_plugin_calls", "Plugin hook calls, by plugin, hook point and outcome (ok, error, timeout, invalid).",
    ["service", "plugin", "point", "outcome"], registry=_R,
)  # fmt: skip
WEBHOOK_DELIVERIES = Counter(
    "gatehouse_webhook_deliveries", "Webhook deliveries finished, by webhook and outcome (delivered, dead).",
    ["service", "webhook", "outcome"], registry=_R,
)  # fmt: skip
GUARD_VERDICTS = Counter(
    "gatehouse_guard_verdicts", "Guard verdicts, by policy, action taken and direction (input/output).",
    ["service", "policy", "action", "direction"], registry=_R,
)  # fmt: skip
GUARD_FINDINGS = Counter(
    "gatehouse_guard_findings", "Guard findings, by policy, scanner, rule and the action it asked for.",
    ["service", "policy", "scanner", "rule", "action"], registry=_R,
)  # fmt: skip
GUARD_SCAN = Histogram(
    "gatehouse_guard_scan_duration_seconds", "Time to scan one request or response with a policy.",
    ["service", "policy", "direction"], buckets=SCAN_BUCKETS, registry=_R,
)  # fmt: skip
PENDING = Gauge(
    "gatehouse_accounting_pending_events", "Events in JetStream not stored yet (undelivered, or delivered unacked).",
    ["service"], registry=_R,
)  # fmt: skip
ACK_PENDING = Gauge(
    "gatehouse_accounting_ack_pending_events", "Events delivered to accounting and not acknowledged yet.",
    ["service"], registry=_R,
)  # fmt: skip
BATCH = Histogram(
    "gatehouse_accounting_batch_size", "Events per batch accounting handles (one ClickHouse insert per table).",
    ["service"], buckets=BATCH_BUCKETS, registry=_R,
)  # fmt: skip
INSERT = Histogram(
    "gatehouse_accounting_insert_duration_seconds", "Time of one ClickHouse insert call (all tables of a batch).",
    ["service"], buckets=INSERT_BUCKETS, registry=_R,
)  # fmt: skip
STORED = Counter(
    "gatehouse_accounting_rows", "Rows accounting stored, by table.", ["service", "table"], registry=_R,
)  # fmt: skip
RECONNECTS = Counter(
    "gatehouse_nats_reconnects", "Times this process reconnected to NATS.", ["service"], registry=_R,
)  # fmt: skip
DISCONNECTS = Counter(
    "gatehouse_nats_disconnects", "Times this process lost its NATS connection.", ["service"], registry=_R,
)  # fmt: skip
SPANS_DROPPED = Counter(
    "gatehouse_spans_dropped", "Finished spans dropped because the exporter's buffer was full.", ["service"],
    registry=_R,
)  # fmt: skip
MCP_CALLS = Counter(
    "gatehouse_mcp_calls", "MCP calls a stage finished, by upstream server and outcome status.",
    ["service", "server", "status"], registry=_R,
)  # fmt: skip
MCP_DURATION = Histogram(
    "gatehouse_mcp_call_duration_seconds", "Time a stage took to serve one MCP call.",
    ["service", "server"], buckets=LATENCY_BUCKETS, registry=_R,
)  # fmt: skip
MCP_UPSTREAM_UP = Gauge(
    "gatehouse_mcp_upstream_up", "Whether the mcp stage holds a live session with an upstream server (1) or not.",
    ["service", "server"], registry=_R,
)  # fmt: skip
MCP_CATALOG_STALE = Counter(
    "gatehouse_mcp_catalog_stale_reads",
    "Reads of the MCP catalog that failed while ingress kept serving the last catalog it read whole.", ["service"],
    registry=_R,
)  # fmt: skip
BATCH_ITEMS = Counter(
    "gatehouse_batch_items", "Batch items finished, by result (completed, failed, cancelled, expired) and error code.",
    ["service", "result", "code"], registry=_R,
)  # fmt: skip
BATCH_DISPATCHED = Counter(
    "gatehouse_batch_dispatched", "Batch items sent through the pipeline (guard, router), each try counted.",
    ["service", "model"], registry=_R,
)  # fmt: skip
BATCH_DISPATCH_DURATION = Histogram(
    "gatehouse_batch_dispatch_duration_seconds", "Time from a batch item's dispatch to its answer.",
    ["service", "model"], buckets=LATENCY_BUCKETS, registry=_R,
)  # fmt: skip
BATCH_RETRIES = Counter(
    "gatehouse_batch_item_retries", "Batch items put back to run later, by reason (lost, retryable, quota, waiting).",
    ["service", "reason"], registry=_R,
)  # fmt: skip
BATCH_REJECTED = Counter(
    "gatehouse_batch_items_rejected", "Queue messages dropped without running: unreadable, or not proven the job's.",
    ["service", "reason"], registry=_R,
)  # fmt: skip
BATCH_RESERVATIONS = Counter(
    "gatehouse_batch_reservations", "Jobs' up-front budget reservations, by outcome (reserved, partial, refused, "
    "unbudgeted, released).", ["service", "outcome"], registry=_R,
)  # fmt: skip
BATCH_QUEUE = Gauge(
    "gatehouse_batch_queue_items", "Items in the batch work queue (published, not acknowledged), all jobs.",
    ["service"], registry=_R,
)  # fmt: skip
BATCH_PENDING = Gauge(
    "gatehouse_batch_pending_items", "Items of running jobs not delivered yet (JetStream pending).", ["service"],
    registry=_R,
)  # fmt: skip
BATCH_ACK_PENDING = Gauge(
    "gatehouse_batch_ack_pending_items", "Items of running jobs delivered to a batch replica and not acknowledged.",
    ["service"], registry=_R,
)  # fmt: skip
BATCH_YIELDS = Counter(
    "gatehouse_router_batch_yields", "Batch items that waited at the router's priority gate for interactive traffic.",
    ["service"], registry=_R,
)  # fmt: skip


for _metric in (
    REQUESTS, ERRORS, DURATION, TTFT, TOKENS, COST, UPSTREAM, UPSTREAM_DURATION, UPSTREAM_TTFT, RETRIES,
    BREAKER_STATE, BREAKER_TRANSITIONS, GUARD_VERDICTS, GUARD_FINDINGS, GUARD_SCAN, PENDING, ACK_PENDING, BATCH,
    INSERT, STORED, RECONNECTS, DISCONNECTS, SPANS_DROPPED, PLUGIN_CALLS, WEBHOOK_DELIVERIES, MCP_CALLS,
    MCP_DURATION, MCP_UPSTREAM_UP, MCP_CATALOG_STALE,
    BATCH_ITEMS, BATCH_DISPATCHED, BATCH_DISPATCH_DURATION,
    BATCH_RETRIES, BATCH_REJECTED, BATCH_RESERVATIONS, BATCH_QUEUE, BATCH_PENDING, BATCH_ACK_PENDING, BATCH_YIELDS,
):  # fmt: skip
    _NUMBERS[id(_metric)] = len(_METRICS)
    _METRICS.append(_metric)


class _State:
    """Whether metrics are recorded, and the service label of this process."""

    __slots__ = ("enabled", "service")

    def __init__(self) -> None:
        self.enabled = False
        self.service = ""


_STATE = _State()
# label tuples → child series: `labels()` validates and locks on every call (~1 µs); a dict hit is ~50 ns
_CHILDREN: dict[tuple[object, ...], object] = {}


def _child(metric: MetricWrapperBase, *labels: str) -> object:
    key = (metric, *labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(_STATE.service, *labels)
    return child


def _record(metric: MetricWrapperBase, value: float, *labels: str) -> None:
    """Queue one observation: a counter's increment, a histogram's value, a gauge's new value."""
    _QUEUE.append((_NUMBERS[id(metric)], labels, value))
    if len(_QUEUE) > _QUEUE_FOLD_AT:
        fold()


_inc = _observe = _set = _record


def configure(service: str, *, enabled: bool = True) -> None:
    """Record metrics for `service` (or stop recording); called once at startup."""
    fold()
    _STATE.service = service
    _STATE.enabled = enabled
    _CHILDREN.clear()
    _APPLY.clear()
    if enabled:  # series that must read 0 before their first event, so rate() and alerts see them
        for counter in (RECONNECTS, DISCONNECTS, SPANS_DROPPED):
            _child(counter)


def enabled() -> bool:
    return _STATE.enabled


# ---- what the stages report -----------------------------------------------------------------------
def request_finished(
    model: str,
    provider: str,
    deployment: str,
    status: int,
    seconds: float,
    *,
    error_type: str = "",
    error_code: str = "",
    ttft_s: float = 0.0,
) -> None:
    """One request a stage finished."""
    if not _STATE.enabled:
        return
    _inc(REQUESTS, 1, model, provider, str(status))
    if status >= 400:
        _inc(ERRORS, 1, model, provider, bounded(error_type, ERROR_TYPES), bounded(error_code, ERROR_CODES))
    _observe(DURATION, seconds, model, provider, deployment)
    if ttft_s > 0:
        _observe(TTFT, ttft_s, model, provider, deployment)


def tokens(model: str, provider: str, deployment: str, usage: Usage) -> None:
    if not _STATE.enabled:
        return
    for kind, count in (
        ("input", usage.input_tokens),
        ("output", usage.output_tokens),
        ("cached", usage.cached_tokens),
        ("reasoning", usage.reasoning_tokens),
        ("cache_write", usage.cache_write_tokens),
    ):
        if count > 0:
            _inc(TOKENS, count, model, provider, deployment, kind)


def cost(model: str, provider: str, deployment: str, usd: float) -> None:
    if _STATE.enabled and usd > 0:
        _inc(COST, usd, model, provider, deployment)


def upstream_attempt(
    model: str, provider: str, deployment: str, status: int, error_code: str, seconds: float, ttft_s: float = 0.0
) -> None:
    """One call of a provider deployment (the router), ended with `status` (499: the client left)."""
    if not _STATE.enabled:
        return
    _inc(UPSTREAM, 1, model, provider, deployment, str(status), bounded(error_code, ERROR_CODES) if error_code else "")
    _observe(UPSTREAM_DURATION, seconds, model, provider, deployment)
    if ttft_s > 0:
        _observe(UPSTREAM_TTFT, ttft_s, model, provider, deployment)


def mcp_call(server: str, status: str, seconds: float) -> None:
    """One MCP call a stage finished (ingress: end to end; mcp: the upstream call)."""
    if not _STATE.enabled:
        return
    _inc(MCP_CALLS, 1, server, status)
    _observe(MCP_DURATION, seconds, server)


def mcp_upstream_up(server: str, up: bool) -> None:
    if _STATE.enabled:
        _set(MCP_UPSTREAM_UP, 1.0 if up else 0.0, server)


def mcp_catalog_stale() -> None:
    """A catalog read failed; ingress serves the last catalog it read whole."""
    if _STATE.enabled:
        _inc(MCP_CATALOG_STALE, 1)


def router_retry(model: str, deployment: str, reason: str) -> None:
    """A request is tried again (on `deployment`) after an attempt failed with error code `reason`."""
    if _STATE.enabled:
        _inc(RETRIES, 1, model, deployment, bounded(reason, ERROR_CODES))


BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


def breaker_state(deployment: str, state: str) -> None:
    """A deployment's circuit breaker entered `state` (closed | half_open | open): for the router's breakers."""
    if not _STATE.enabled:
        return
    _set(BREAKER_STATE, BREAKER_STATES[state], deployment)
    _inc(BREAKER_TRANSITIONS, 1, deployment, state)


def plugin_call(plugin: str, point: str, outcome: str, _seconds: float) -> None:
    """One hook call finished (plugin names come from the config, so the labels stay bounded)."""
    if _STATE.enabled:
        _inc(PLUGIN_CALLS, 1, plugin, point, outcome)


def webhook_delivery(webhook: str, outcome: str) -> None:
    if _STATE.enabled:
        _inc(WEBHOOK_DELIVERIES, 1, webhook, outcome)


def guard_verdict(policy: str, action: str, direction: str, findings: Sequence[GuardFinding], seconds: float) -> None:
    if not _STATE.enabled:
        return
    _inc(GUARD_VERDICTS, 1, policy, action, direction)
    _observe(GUARD_SCAN, seconds, policy, direction)
    for f in findings:
        _inc(GUARD_FINDINGS, 1, policy, f.scanner, f.rule, f.action)


def accounting_pending(pending: int, ack_pending: int) -> None:
    if _STATE.enabled:
        _set(PENDING, pending + ack_pending)
        _set(ACK_PENDING, ack_pending)


def accounting_batch(events: int) -> None:
    if _STATE.enabled:
        _observe(BATCH, events)


def accounting_insert(rows: dict[str, int], seconds: float) -> None:
    if not _STATE.enabled:
        return
    _observe(INSERT, seconds)
    for table, count in rows.items():
        if count:
            _inc(STORED, count, table)


def nats_disconnected() -> None:
    if _STATE.enabled:
        _inc(DISCONNECTS, 1)


def nats_reconnected() -> None:
    if _STATE.enabled:
        _inc(RECONNECTS, 1)


def spans_dropped(count: int) -> None:
    if _STATE.enabled:
        _inc(SPANS_DROPPED, count)


# ---- batch jobs (services/batch, and the router's batch lane) ----------------------------------------
BATCH_RESULTS = frozenset({"completed", "failed", "cancelled", "expired"})
BATCH_CODES = frozenset({"batch_cancelled", "batch_expired", "declared_size_exceeded"}) | ERROR_CODES
BATCH_RETRY_REASONS = frozenset({"lost", "retryable", "quota", "waiting", "claimed"})
BATCH_REJECT_REASONS = frozenset({"unreadable", "unauthenticated", "wrong_namespace", "invalid_item_id", "gave_up"})
BATCH_RESERVATION_OUTCOMES = frozenset({"reserved", "partial", "refused", "unbudgeted", "released"})


def batch_item_finished(result: str, code: str = "") -> None:
    """A batch item ended: `result` completed | failed | cancelled | expired, with its error code if any."""
    if _STATE.enabled:
        _inc(BATCH_ITEMS, 1, bounded(result, BATCH_RESULTS), bounded(code, BATCH_CODES) if code else "")


def batch_dispatched(model: str) -> None:
    if _STATE.enabled:
        _inc(BATCH_DISPATCHED, 1, model)


def batch_dispatch_duration(model: str, seconds: float) -> None:
    if _STATE.enabled:
        _observe(BATCH_DISPATCH_DURATION, seconds, model)


def batch_retry(reason: str) -> None:
    if _STATE.enabled:
        _inc(BATCH_RETRIES, 1, bounded(reason, BATCH_RETRY_REASONS))


def batch_rejected(reason: str) -> None:
    if _STATE.enabled:
        _inc(BATCH_REJECTED, 1, bounded(reason, BATCH_REJECT_REASONS))


def batch_reservation(outcome: str) -> None:
    if _STATE.enabled:
        _inc(BATCH_RESERVATIONS, 1, bounded(outcome, BATCH_RESERVATION_OUTCOMES))


def batch_queue(items: int) -> None:
    if _STATE.enabled:
        _set(BATCH_QUEUE, items)


def batch_pending(pending: int, ack_pending: int) -> None:
    if _STATE.enabled:
        _set(BATCH_PENDING, pending)
        _set(BATCH_ACK_PENDING, ack_pending)


def batch_lane_yield() -> None:
    """A batch item waits at the router's priority gate (interactive traffic has the room)."""
    if _STATE.enabled:
        _inc(BATCH_YIELDS, 1)


# ---- values read at scrape time (no cost on the request path) ---------------------------------------
class CallbackCollector(Collector):
    """Families computed when Prometheus scrapes, from functions the process registers."""

    def __init__(self) -> None:
        self._sources: list[Callable[[], Iterable[CounterMetricFamily | GaugeMetricFamily]]] = []

    def add(self, source: Callable[[], Iterable[CounterMetricFamily | GaugeMetricFamily]]) -> None:
        self._sources.append(source)

    def clear(self) -> None:
        self._sources.clear()

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        for source in list(self._sources):
            yield from source()


CALLBACKS = CallbackCollector()
REGISTRY.register(CALLBACKS)
# process_* (CPU, memory, open files), python_gc_*, python_info, as the default registry has them
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)


def batch_jobs(statuses: Callable[[], Iterable[str]]) -> None:
    """`gatehouse_batch_jobs{service,status}`: the jobs a batch replica knows, by status, at each scrape."""

    def family() -> Iterable[GaugeMetricFamily]:
        counts = dict.fromkeys(("validating", "in_progress", "cancelling", "finalizing"), 0)
        for status in statuses():
            counts[status] = counts.get(status, 0) + 1
        gauge = GaugeMetricFamily("gatehouse_batch_jobs", "Batch jobs by status.", labels=["service", "status"])
        for status, count in sorted(counts.items()):
            gauge.add_metric([_STATE.service, status], count)
        yield gauge

    CALLBACKS.add(family)


def gauge_of(name: str, doc: str, value: Callable[[], int]) -> None:
    """`name{service}` read from `value` at each scrape."""

    def family() -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(name, doc, labels=["service"])
        gauge.add_metric([_STATE.service], value())
        yield gauge

    CALLBACKS.add(family)


def in_flight(count: Callable[[], int]) -> None:
    """`gatehouse_requests_in_flight{service}`: read from `count` at each scrape."""

    def family() -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("gatehouse_requests_in_flight", "Requests a stage is working on.", labels=["service"])
        gauge.add_metric([_STATE.service], count())
        yield gauge

    CALLBACKS.add(family)


class PublisherStats(Protocol):
    """What shared/event_publisher.EventPublisher counts (read at scrape time)."""

    published: int
    spooled: int
    dropped: int
    rejected: int

    @property
    def spooled_bytes(self) -> int: ...


def event_publisher(stream: str, publisher: PublisherStats) -> None:
    """`gatehouse_events_*{service,stream}` of one event publisher (`stream`: events | spans)."""

    def families() -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        labels = [_STATE.service, stream]
        for name, doc, value in (
            ("published", "Events JetStream acknowledged.", publisher.published),
            ("spooled", "Events written to the disk spool while JetStream was away.", publisher.spooled),
            ("dropped", "Events lost: the spool was full or failed.", publisher.dropped),
            ("rejected", "Events JetStream refused for good (kept aside in the spool).", publisher.rejected),
        ):
            counter = CounterMetricFamily(f"gatehouse_events_{name}", doc, labels=["service", "stream"])
            counter.add_metric(labels, value)
            yield counter
        gauge = GaugeMetricFamily(
            "gatehouse_events_spool_bytes", "Bytes waiting in the disk spool.", labels=["service", "stream"]
        )
        gauge.add_metric(labels, publisher.spooled_bytes)
        yield gauge

    CALLBACKS.add(families)
