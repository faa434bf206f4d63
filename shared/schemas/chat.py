"""The interactive request path: ingress → guard → router, and the router's replies to the ingress inbox."""

from __future__ import annotations

import msgspec

from shared.errors import ErrorInfo


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Token usage as the provider reported it."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0


class GuardFinding(msgspec.Struct, frozen=True, kw_only=True):
    """One scanner hit: where and what, never the matched value itself."""

    scanner: str
    rule: str
    action: str
    severity: str = "medium"
    start: int = -1
    end: int = -1
    direction: str = "input"
    # path of the text inside the request, e.g. "messages[2].content"
    location: str = ""


class GuardSummary(msgspec.Struct, frozen=True, kw_only=True):
    """The guard's verdict on a request, carried forward to the router and back into the request record."""

    policy: str
    action: str  # allow | flag | redact | block
    findings: list[GuardFinding] = []
    scan_us: int = 0
    # placeholder → original, kept only in flight so a response can be restored; never stored
    restore: dict[str, str] = {}
    output_policy: str = ""


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling, as ingress authenticated it."""

    key_id: str
    team: str = ""
    project: str = ""
    user: str = ""
    policy: str = ""


class ChatRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A client request in gatehouse's canonical form (an OpenAI request body), published by ingress."""

    request_id: str
    api: str  # chat | embeddings
    model: str
    body: bytes  # the request JSON in OpenAI form
    caller: Caller
    stream: bool = False
    # the client asked for usage on the final stream chunk (stream_options.include_usage)
    include_usage: bool = False
    received_at: float = 0.0
    deadline_s: float = 600.0
    trace_id: str = ""
    tags: dict[str, str] = {}
    guard: GuardSummary | None = None


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """One try of one provider deployment."""

    provider: str
    deployment: str
    status: int
    latency_ms: float
    error_code: str = ""
    # what went wrong, for operators (e.g. a provider's reason for rejecting the gateway's key); ≤ 300 chars
    error_message: str = ""


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What the router learned while serving a request."""

    provider: str = ""
    deployment: str = ""
    provider_model: str = ""
    usage: Usage | None = None
    finish_reason: str = ""
    attempts: list[Attempt] = []
    upstream_ms: float = 0.0
    ttft_ms: float = 0.0


class Chunk(msgspec.Struct, frozen=True, tag="c"):
    """One stream chunk: the JSON of an OpenAI `chat.completion.chunk`."""

    data: bytes


class ChunkBatch(msgspec.Struct, frozen=True, tag="b"):
    """Several stream chunks that arrived from the provider together, relayed in one message."""

    items: list[bytes]


class Result(msgspec.Struct, frozen=True, kw_only=True, tag="r"):
    """The last reply for a request: the whole body (non-stream), or the end of a stream, or an error."""

    outcome: Outcome
    body: bytes = b""
    error: ErrorInfo | None = None
    guard: GuardSummary | None = None


class Heartbeat(msgspec.Struct, frozen=True, tag="h"):
    """Sent by the router every few seconds while it works on a request, so ingress can tell a slow
    provider from a router that died."""


Reply = Chunk | ChunkBatch | Result | Heartbeat
