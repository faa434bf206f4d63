"""The interactive request path: ingress → guard → router, and the router's replies to the ingress inbox."""

from __future__ import annotations

import msgspec

from shared.errors import ErrorInfo
from shared.schemas.openai import ChatCompletionRequest, EmbeddingsRequest


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Token usage as the provider reported it, in the OpenAI convention: `input_tokens` includes the
    input read from the prompt cache (`cached_tokens`) and the input written to it (`cache_write_tokens`,
    of which `cache_write_1h_tokens` with a one-hour lifetime); `output_tokens` includes `reasoning_tokens`.
    `web_search_requests` counts searches a provider ran itself (priced per search)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    web_search_requests: int = 0


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
    """The guard's verdict on a request, as ingress records it. The map that restores redacted values
    never leaves the guard replica that made it."""

    policy: str
    action: str  # allow | flag | redact | block
    findings: list[GuardFinding] = []
    scan_us: int = 0
    replica: str = ""  # the guard replica that scanned the request (ServiceSettings.replica)


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling, as ingress authenticated it."""

    key_id: str
    team: str = ""
    project: str = ""
    user: str = ""
    policy: str = ""
    org: str = ""
    # days the guard keeps this caller's prompts and responses (redacted) in the content log; 0: not logged
    log_content_days: int = 0


class NativeRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The client's own request body, for a deployment that speaks the client's protocol.

    When a client calls `/v1/messages` and the deployment is Anthropic (or `/v1/responses` and the
    deployment is OpenAI), this body goes upstream unchanged, with the protocol headers the client
    sent, so fields and block types the canonical form cannot express (prompt caching, thinking,
    citations, server tools, betas) keep working. `chat` on the request is its canonical translation,
    which the guard scans and other providers are sent.
    """

    protocol: str  # anthropic-messages | openai-responses
    body: bytes  # the client's JSON, unchanged
    headers: dict[str, str] = {}  # protocol headers the client sent (anthropic-beta, anthropic-version, openai-beta)
    # where the body uses what `chat` cannot express (e.g. "tools[1]: server tool web_search_20250305"):
    # when set, `chat` only carries its text for the guard, and only a deployment of this protocol may serve it
    untranslatable: list[str] = []


class Hold(msgspec.Struct, frozen=True, kw_only=True):
    """One budget a request counts against: the spend counter the reservation increased (by `micro_usd`,
    its worst-case cost; 0 for a soft budget, which is never refused), and what accounting needs to
    settle it and to tell when the settled spend crosses an alert threshold."""

    subject: str  # <p>.ctr.spend.<scope>.<period_key>: reserved + settled micro-USD
    micro_usd: int
    scope: str = ""  # e.g. team.ml
    period: str = ""
    period_key: str = ""
    amount_micro: int = 0  # the budget
    alerts: list[int] = []  # percentages
    hard: bool = True


class Reservation(msgspec.Struct, frozen=True, kw_only=True):
    """What ingress reserved before dispatching a request: the worst-case cost on each budget counter,
    and the concurrency counters it holds. Accounting settles it from the request's record; if the
    record never comes (a crashed replica), it is released after `expires_at`."""

    request_id: str
    amount_usd: float = 0.0
    holds: list[Hold] = []
    concurrency: list[str] = []
    expires_at: float = 0.0
    # drawn from a budget lease of its ingress replica (shared/leases.py): the lease's request id
    lease_id: str = ""
    # this reservation is itself a lease: a block of money an ingress replica holds for the requests it draws
    lease: bool = False
    # a lease: the requests accounting counts as drawn from it (each settled or released while it was live, or
    # counted when it was released), and per hold their worst cases on that hold's counter (what its release
    # does not give back)
    drawn: list[str] = []
    drawn_micro: list[int] = []


class ChatRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A client request in gatehouse's canonical form, decoded once by ingress; guard and router read it."""

    request_id: str
    api: str  # chat | embeddings
    model: str
    caller: Caller
    chat: ChatCompletionRequest | None = None
    embeddings: EmbeddingsRequest | None = None
    native: NativeRequest | None = None
    stream: bool = False
    # the client asked for usage on the final stream chunk (stream_options.include_usage)
    include_usage: bool = False
    received_at: float = 0.0
    # unix time after which nobody waits for the answer: a router does not dispatch after it
    deadline: float = 0.0
    trace_id: str = ""
    tags: dict[str, str] = {}
    # routing strategy the client chose for this request (ingress sets it only where the key may choose)
    route: str = ""
    # a batch item (services/batch): the guard forwards it to the router's batch subject, which yields
    # to interactive traffic
    batch: bool = False


class Cancel(msgspec.Struct, frozen=True, kw_only=True):
    """ingress → every router replica: the client of this request went away; stop working on it."""

    request_id: str


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """One try of one provider deployment."""

    provider: str
    deployment: str
    status: int
    latency_ms: float
    error_code: str = ""
    # what went wrong, for operators (e.g. a provider's reason for rejecting the gateway's key); ≤ 300 chars
    error_message: str = ""
    # routing: the model group this attempt served (a fallback's name), why it was made (first, failover,
    # retry, probe, fallback, context_window_fallback, content_policy_fallback), how long the router waited
    # before it (backoff or Retry-After), and its time to first byte of a stream
    model: str = ""
    route: str = ""
    retry_delay_ms: float = 0.0
    ttft_ms: float = 0.0


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What the router learned while serving a request."""

    provider: str = ""
    provider_kind: str = ""
    deployment: str = ""
    provider_model: str = ""
    usage: Usage | None = None
    # usage was not reported by the provider (e.g. the client left mid-stream) and was estimated
    usage_estimated: bool = False
    finish_reason: str = ""
    attempts: list[Attempt] = []
    upstream_ms: float = 0.0
    ttft_ms: float = 0.0
    replica: str = ""  # the router replica that served the request (ServiceSettings.replica)
    # the model group that answered (the requested model, or a fallback) and the routing strategy used
    model: str = ""
    strategy: str = ""


# The first stream message of a request names the deployment (and model group) that answers it, so
# ingress can send `x-gatehouse-deployment` with the stream's headers; later ones leave them empty.
class Chunk(msgspec.Struct, frozen=True, tag="c", omit_defaults=True):
    """One stream chunk: the JSON of an OpenAI `chat.completion.chunk` (shared.schemas.openai), or, for
    a native stream, one server-sent event of the client's protocol as it goes on the wire."""

    data: bytes
    deployment: str = ""
    model: str = ""


class ChunkBatch(msgspec.Struct, frozen=True, tag="b", omit_defaults=True):
    """Several stream chunks that arrived from the provider together, relayed in one message."""

    items: list[bytes]
    deployment: str = ""
    model: str = ""


class NativeEvents(msgspec.Struct, frozen=True, tag="n", omit_defaults=True):
    """Stream events in the client's own protocol (see NativeRequest), each a complete server-sent
    event as it goes on the wire (`event: …\ndata: …\n\n`)."""

    items: list[bytes]
    deployment: str = ""
    model: str = ""


class Result(msgspec.Struct, frozen=True, kw_only=True, tag="r"):
    """The last reply for a request: the whole body (non-stream), or the end of a stream, or an error.

    `native` says the body (or the stream before it) is in the client's own protocol (see NativeRequest),
    not canonical chat. `guard` is set only by the guard (a block, or the verdict on the response)."""

    outcome: Outcome
    body: bytes = b""
    error: ErrorInfo | None = None
    guard: GuardSummary | None = None
    native: bool = False


class BodyPart(msgspec.Struct, frozen=True, tag="p"):
    """A piece of a response body too large for one NATS message; the Result that follows carries the
    rest (parts arrive in order: one publisher, one subscriber)."""

    data: bytes


class Verdict(msgspec.Struct, frozen=True, tag="g"):
    """guard → ingress inbox, before the request goes on: the guard's verdict on the request."""

    summary: GuardSummary


class Heartbeat(msgspec.Struct, frozen=True, tag="h"):
    """Sent by the router every few seconds while it works on a request, so ingress can tell a slow
    provider from a router that died."""


Reply = Chunk | ChunkBatch | NativeEvents | Result | Heartbeat | BodyPart | Verdict
