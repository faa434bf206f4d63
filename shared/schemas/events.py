"""Events on the JetStream event stream; accounting turns each into ClickHouse rows."""

from __future__ import annotations

import msgspec

from shared.errors import ErrorInfo
from shared.schemas.chat import Attempt, Caller, GuardFinding, Usage


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
