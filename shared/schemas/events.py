"""Events on the JetStream event stream; accounting turns each into ClickHouse rows."""

from __future__ import annotations

import msgspec

from shared.errors import ErrorInfo
from shared.schemas.chat import Attempt, Caller, GuardFinding, Reservation, Usage


class RequestEvent(msgspec.Struct, frozen=True, kw_only=True):
    """The one complete record of a request, published by ingress when the request ends."""

    event_id: str
    request_id: str
    trace_id: str = ""
    batch_id: str = ""
    api: str
    caller: Caller
    requested_model: str
    provider: str = ""
    deployment: str = ""
    provider_model: str = ""
    stream: bool = False
    status: int
    error: ErrorInfo | None = None
    usage: Usage | None = None
    finish_reason: str = ""
    attempts: list[Attempt] = []
    guard_action: str = ""
    guard_policy: str = ""
    guard_findings: list[GuardFinding] = []
    received_at: float  # unix seconds
    finished_at: float
    latency_ms: float
    ttft_ms: float = 0.0
    upstream_ms: float = 0.0
    request_bytes: int = 0
    response_bytes: int = 0
    tags: dict[str, str] = {}
    # the wire format of the provider that answered (prices need it; accounting reads no routing config)
    provider_kind: str = ""
    # the usage was estimated (the client left before the provider reported it)
    usage_estimated: bool = False
    # the budget reservation made before dispatch, which accounting settles to the actual cost
    reservation: Reservation | None = None
    # the guard and router replicas that handled the request ('' where a stage never saw it)
    guard_replica: str = ""
    router_replica: str = ""
    # routing: the strategy that ordered the deployments, and the model group that answered (a fallback's name)
    route_strategy: str = ""
    answered_model: str = ""
    # the producer's id of the batch item this request ran (`batch_id` names its job)
    batch_item_id: str = ""


class GuardEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One guard verdict (a scan of one text), published by the guard service."""

    event_id: str
    request_id: str
    policy: str
    action: str
    direction: str = "input"
    findings: list[GuardFinding] = []
    scan_us: int = 0
    at: float


class ReservationState(msgspec.Struct, frozen=True, kw_only=True):
    """The last word on a reservation (`<p>.resv.<request_id>`, one message per subject): live while the
    request runs, then settled (from its record) or released (expired: its replica died)."""

    state: str  # live | settled | released (| settling: a batch job's give-back under way, services/batch/jobs.py)
    reservation: Reservation
    at: float


class AuditEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One admin action: who did what to which record, with the record before and after (never a secret)."""

    event_id: str
    at: float
    actor: str  # "admin" or "key:<id>" (a team admin)
    actor_team: str = ""
    action: str  # e.g. key.create, key.rotate, team.update
    target_kind: str
    target_id: str
    before: str = ""  # JSON of the record, secrets never included (keys store only hashes)
    after: str = ""
    request_id: str = ""
    source_ip: str = ""


class BudgetAlert(msgspec.Struct, frozen=True, kw_only=True):
    """A budget crossed one of its alert thresholds (once per period and threshold)."""

    event_id: str
    at: float
    scope: str  # e.g. team.ml
    period: str
    period_key: str
    threshold_pct: int
    amount_usd: float
    spent_usd: float
    hard: bool = True


class SpanRecord(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One finished span (shared/tracing.py): ids in W3C hex, times in unix nanoseconds, attributes (never
    a prompt, a key or a secret; stored as strings)."""

    trace_id: str
    span_id: str
    parent_span_id: str = ""
    name: str
    kind: str = "internal"  # server | client | consumer | producer | internal
    start_ns: int
    end_ns: int
    status: str = "ok"  # ok | error
    status_message: str = ""
    request_id: str = ""
    attributes: dict[str, str | int | float | bool] = {}


class SpanBatch(msgspec.Struct, frozen=True, kw_only=True):
    """The spans one process finished in the last moments, stored by accounting in the `spans` table."""

    event_id: str
    service: str
    instance: str = ""  # host:pid of the process
    spans: list[SpanRecord] = []


class ContentText(msgspec.Struct, frozen=True, kw_only=True):
    """One text of a request or a response: where it was (e.g. `messages[1].content`) and what it said."""

    location: str
    text: str


class ContentEvent(msgspec.Struct, frozen=True, kw_only=True):
    """The prompt (direction `input`) or the response (`output`) of one request whose key, project or team opted
    in to content logging, as the guard redacted it for storage: every finding of the policy with a position in
    the text is replaced by its placeholder (`<EMAIL_1>`), whatever the policy did with the request itself.
    Published by the guard only; no unredacted text reaches the bus or ClickHouse."""

    event_id: str  # <request_id>.<direction>
    request_id: str
    at: float
    caller: Caller
    model: str = ""
    direction: str = "input"
    policy: str = ""
    guard_action: str = ""
    texts: list[ContentText] = []
    redactions: int = 0
    truncated: bool = False  # the texts were cut to the logging limit
    retention_days: int = 30


class WebhookJob(msgspec.Struct, frozen=True, kw_only=True):
    """One event to deliver to one webhook (`<p>.hooks.delivery`): the body is rendered once, when the event
    is fanned out, so every attempt sends the same bytes (and the same signature input)."""

    delivery_id: str  # <event type>.<source event id>.<webhook>: the id receivers see in `webhook-id`
    webhook: str
    event_type: str  # budget_alert | request_blocked | deployment_down
    source_id: str
    at: float  # when the event happened
    body: bytes


class WebhookDelivery(msgspec.Struct, frozen=True, kw_only=True):
    """How one webhook delivery ended (the `webhook_deliveries` table): delivered, or dead after its last
    attempt (a dead letter keeping the body, so an operator can see and replay what was not delivered)."""

    event_id: str  # the delivery id: stored once
    webhook: str
    event_type: str
    source_id: str
    outcome: str  # delivered | dead
    attempts: int
    http_status: int = 0  # of the last attempt (0: no answer)
    error: str = ""  # of the last failed attempt ('' when delivered at once)
    signed: bool = False
    event_at: float
    finished_at: float
    body: str = ""  # kept for dead letters only
