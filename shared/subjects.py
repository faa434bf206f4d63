"""Every NATS subject gatehouse uses, each bound to its schema; no other module spells a subject.

A deployment (or a test) picks a prefix, so several gatehouse instances can share one NATS server.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Generic, TypeVar

import msgspec

from shared.schemas.admin import (
    RepriceRequest,
    RepriceResult,
    RequestLookup,
    RequestsQuery,
    RequestStory,
    ScanRequest,
    ScanResult,
    SqlQuery,
    SqlResult,
    UsageQuery,
)
from shared.schemas.batch import BatchCall, BatchItem, BatchJobEvent, BatchReply, ResultLine, StoredResult
from shared.schemas.chat import Cancel, ChatRequest, Reply
from shared.schemas.events import (
    AuditEvent,
    BudgetAlert,
    ContentEvent,
    GuardEvent,
    RequestEvent,
    ReservationState,
    SpanBatch,
    WebhookDelivery,
    WebhookJob,
)
from shared.schemas.mcp import (
    ArgumentsScan,
    Catalog,
    CatalogChanged,
    CatalogQuery,
    McpCallEvent,
    ToolCall,
    ToolOutcome,
)
from shared.schemas.routing import DeploymentHealth, RouterStatus, StatusQuery

T = TypeVar("T")
R = TypeVar("R")

# the first token of a producer namespace (shared/producers.py); the subjects below spell where namespaces go
NAMESPACE_KINDS: tuple[str, ...] = ("team", "key")
# the token every namespace's items and result subjects sit under (`<p>.batch.out.ns.team.ml.…`), so result
# subjects chosen before namespaces existed (`<p>.batch.out.team`, `<p>.batch.out.key.rotation.done`) stay outside
NAMESPACE_ROOT = "ns"
# a result subject is kept on the job and on every result, and each notice's PUB line must fit NATS' 4 KiB
# control line: a bound far inside it, and printable ASCII only (a NUL or a newline is no subject one can use)
MAX_RESULT_SUBJECT_CHARS = 256

_ENCODER = msgspec.msgpack.Encoder()
_JSON = msgspec.json.Encoder()


class Subject(Generic[T]):
    """A subject name bound to the schema of what travels on it (msgpack), both ways typed."""

    __slots__ = ("_decoder", "name", "queue", "schema")

    def __init__(self, name: str, schema: type[T], queue: str = "") -> None:
        self.name = name
        self.schema = schema
        self.queue = queue
        self._decoder: msgspec.msgpack.Decoder[T] = msgspec.msgpack.Decoder(schema)

    def encode(self, msg: T) -> bytes:
        return _ENCODER.encode(msg)

    def decode(self, data: bytes) -> T:
        return self._decoder.decode(data)

    def __repr__(self) -> str:
        return f"Subject({self.name!r}, {getattr(self.schema, '__name__', self.schema)})"


class Service(Subject[T], Generic[T, R]):
    """A request/reply subject: requests of schema T, each answered (to its reply inbox) with an R."""

    __slots__ = ("_reply_decoder", "reply_schema")

    def __init__(self, name: str, schema: type[T], reply: type[R], queue: str = "") -> None:
        super().__init__(name, schema, queue)
        self.reply_schema = reply
        self._reply_decoder: msgspec.msgpack.Decoder[R] = msgspec.msgpack.Decoder(reply)

    def encode_reply(self, msg: R) -> bytes:
        return _ENCODER.encode(msg)

    def decode_reply(self, data: bytes) -> R:
        return self._reply_decoder.decode(data)


class JsonSubject(Subject[T]):
    """A subject whose messages are JSON (what producers in any language publish), typed both ways."""

    __slots__ = ("_json_decoder",)

    def __init__(self, name: str, schema: type[T], queue: str = "") -> None:
        super().__init__(name, schema, queue)
        self._json_decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(schema)

    def encode(self, msg: T) -> bytes:
        return _JSON.encode(msg)

    def decode(self, data: bytes) -> T:
        return self._json_decoder.decode(data)


class JsonService(JsonSubject[T], Generic[T, R]):
    """A request/reply subject in JSON: requests of schema T, each answered with an R."""

    __slots__ = ("_reply_json", "reply_schema")

    def __init__(self, name: str, schema: type[T], reply: type[R], queue: str = "") -> None:
        super().__init__(name, schema, queue)
        self.reply_schema = reply
        self._reply_json: msgspec.json.Decoder[R] = msgspec.json.Decoder(reply)

    def encode_reply(self, msg: R) -> bytes:
        return _JSON.encode(msg)

    def decode_reply(self, data: bytes) -> R:
        return self._reply_json.decode(data)


def encode(msg: object) -> bytes:
    """msgpack encoding shared by every subject (for tests and tools that build raw messages)."""
    return _ENCODER.encode(msg)


@dataclass(frozen=True)
class Subjects:
    """The subject tree under one prefix (default ``gh``)."""

    prefix: str = "gh"

    @cached_property
    def guard_chat(self) -> Subject[ChatRequest]:
        """ingress → guard: a request to scan, then forward to the router (reply_to is the ingress inbox)."""
        return Subject(f"{self.prefix}.guard.chat", ChatRequest, queue="guard")

    @cached_property
    def router_chat(self) -> Subject[ChatRequest]:
        """guard → router: a request to dispatch; the router answers the carried reply_to."""
        return Subject(f"{self.prefix}.router.chat", ChatRequest, queue="router")

    @cached_property
    def router_cancel(self) -> Subject[Cancel]:
        """ingress → every router replica (no queue group): the client went away, stop the request."""
        return Subject(f"{self.prefix}.router.cancel", Cancel)

    @cached_property
    def router_status(self) -> Service[StatusQuery, RouterStatus]:
        """ingress (admin API) → every router replica (no queue group): each answers with its RouterStatus."""
        return Service(f"{self.prefix}.router.status", StatusQuery, RouterStatus)

    @property
    def routing_bucket(self) -> str:
        """KV bucket of deployment health shared by router replicas (shared.schemas.routing.DeploymentHealth)."""
        return f"{self._stream_base}_ROUTING"

    @cached_property
    def replies(self) -> Subject[Reply]:
        """router/guard → an ingress inbox (`inbox(...)`) or a guard's output relay (`guard_output(...)`):
        stream chunks, body parts, heartbeats, the guard's verdict, and the final Result."""
        return Subject(f"{self.prefix}.inbox.>", Reply)  # type: ignore[arg-type]  # a union, not a class

    @cached_property
    def events_request(self) -> Subject[RequestEvent]:
        """ingress → JetStream: the complete record of one request."""
        return Subject(f"{self.prefix}.events.request", RequestEvent)

    @cached_property
    def events_guard(self) -> Subject[GuardEvent]:
        """guard → JetStream: one verdict."""
        return Subject(f"{self.prefix}.events.guard", GuardEvent)

    @cached_property
    def accounting_sql(self) -> Service[SqlQuery, SqlResult]:
        """admin → accounting (request/reply): an analytics query, answered with SqlResult."""
        return Service(f"{self.prefix}.accounting.sql", SqlQuery, SqlResult, queue="accounting")

    @cached_property
    def accounting_usage(self) -> Service[UsageQuery, SqlResult]:
        """ingress (admin API) → accounting (request/reply): a usage summary, answered with SqlResult."""
        return Service(f"{self.prefix}.accounting.usage", UsageQuery, SqlResult, queue="accounting")

    @cached_property
    def guard_scan(self) -> Service[ScanRequest, ScanResult]:
        """admin → guard (request/reply): scan one text with a policy, answered with ScanResult."""
        return Service(f"{self.prefix}.guard.scan", ScanRequest, ScanResult, queue="guard")

    @cached_property
    def events_audit(self) -> Subject[AuditEvent]:
        """ingress (admin API) → JetStream: one admin action."""
        return Subject(f"{self.prefix}.events.audit", AuditEvent)

    @cached_property
    def events_alert(self) -> Subject[BudgetAlert]:
        """accounting → JetStream: a budget crossed an alert threshold."""
        return Subject(f"{self.prefix}.events.alert", BudgetAlert)

    @cached_property
    def events_webhook(self) -> Subject[WebhookDelivery]:
        """accounting (webhook dispatcher) → JetStream: how one webhook delivery ended."""
        return Subject(f"{self.prefix}.events.webhook", WebhookDelivery)

    @property
    def hooks_stream(self) -> str:
        """JetStream work-queue stream of what webhooks and on_event plugins are told (`<p>.hooks.>`)."""
        return f"{self._stream_base}_HOOKS"

    @property
    def hooks_wildcard(self) -> str:
        return f"{self.prefix}.hooks.>"

    @property
    def hooks_events_wildcard(self) -> str:
        """The events the webhook dispatcher fans out (one consumer), apart from the deliveries (another)."""
        return f"{self.prefix}.hooks.event.>"

    @cached_property
    def hooks_alert(self) -> Subject[BudgetAlert]:
        """accounting → the hooks stream: a budget crossed an alert threshold (webhooks want it)."""
        return Subject(f"{self.prefix}.hooks.event.budget_alert", BudgetAlert)

    @cached_property
    def hooks_blocked(self) -> Subject[GuardEvent]:
        """guard → the hooks stream: the guard blocked a request (webhooks want it)."""
        return Subject(f"{self.prefix}.hooks.event.request_blocked", GuardEvent)

    @cached_property
    def hooks_deployment(self) -> Subject[DeploymentHealth]:
        """router → the hooks stream: a deployment's circuit breaker opened (webhooks want it)."""
        return Subject(f"{self.prefix}.hooks.event.deployment_down", DeploymentHealth)

    @cached_property
    def hooks_request(self) -> Subject[RequestEvent]:
        """accounting → the hooks stream: a stored request record, for on_event plugins (only when some exist)."""
        return Subject(f"{self.prefix}.hooks.event.request", RequestEvent)

    @cached_property
    def hooks_delivery(self) -> Subject[WebhookJob]:
        """accounting → the hooks stream: one event for one webhook, attempted until delivered or dead."""
        return Subject(f"{self.prefix}.hooks.delivery", WebhookJob)

    @cached_property
    def spans(self) -> Subject[SpanBatch]:
        """every service → JetStream (`spans_stream`, not the event stream): the spans one process finished
        lately (shared/telemetry.py), stored by accounting on a slower cadence than request records."""
        return Subject(f"{self.prefix}.telemetry.spans", SpanBatch)

    @property
    def spans_stream(self) -> str:
        """JetStream stream of span batches: work-queue, capped in bytes and age (diagnostics, not records)."""
        return f"{self._stream_base}_SPANS"

    @cached_property
    def events_content(self) -> Subject[ContentEvent]:
        """guard → JetStream: the redacted prompt or response of a request whose caller logs content."""
        return Subject(f"{self.prefix}.events.content", ContentEvent)

    @cached_property
    def accounting_requests(self) -> Service[RequestsQuery, SqlResult]:
        """ingress (admin API) → accounting (request/reply): the request explorer's list."""
        return Service(f"{self.prefix}.accounting.requests", RequestsQuery, SqlResult, queue="accounting")

    @cached_property
    def accounting_request(self) -> Service[RequestLookup, RequestStory]:
        """ingress (admin API) → accounting (request/reply): one request's record, verdicts, content, spans."""
        return Service(f"{self.prefix}.accounting.request", RequestLookup, RequestStory, queue="accounting")

    @cached_property
    def accounting_reprice(self) -> Service[RepriceRequest, RepriceResult]:
        """admin → accounting (request/reply): price a time range's stored usage again."""
        return Service(f"{self.prefix}.accounting.reprice", RepriceRequest, RepriceResult, queue="accounting")

    def reservation(self, request_id: str) -> Subject[ReservationState]:
        """ingress / accounting → JetStream (`reservations_stream`): the state of one budget reservation."""
        return Subject(f"{self.prefix}.resv.{request_id}", ReservationState)

    @property
    def reservations_wildcard(self) -> str:
        return f"{self.prefix}.resv.*"

    def spend_counter(self, scope: str, period_key: str) -> str:
        """Budget counter (micro-USD reserved + settled) of one scope (`team.ml`) in one period."""
        return f"{self.prefix}.ctr.spend.{scope}.{period_key}"

    def settled_counter(self, scope: str, period_key: str) -> str:
        """Settled spend (micro-USD, no reservations) of one scope in one period: what alerts are about."""
        return f"{self.prefix}.ctr.settled.{scope}.{period_key}"

    def concurrency_counter(self, scope: str) -> str:
        return f"{self.prefix}.ctr.conc.{scope}"

    def quota_counter(self, kind: str, scope: str, window: int) -> str:
        """Requests (`rpm`) or tokens (`tpm`) of one scope in one UTC minute."""
        return f"{self.prefix}.quota.{kind}.{scope}.{window}"

    @property
    def _stream_base(self) -> str:
        return self.prefix.upper().replace(".", "_").replace("-", "_")

    @property
    def counters_stream(self) -> str:
        """JetStream counter stream (`Nats-Incr`) of budgets and concurrency: `<p>.ctr.>`."""
        return f"{self._stream_base}_COUNTERS"

    @property
    def quotas_stream(self) -> str:
        """JetStream counter stream of per-minute quota windows (`<p>.quota.>`), kept a few minutes."""
        return f"{self._stream_base}_QUOTAS"

    @property
    def reservations_stream(self) -> str:
        return f"{self._stream_base}_RESERVATIONS"

    @property
    def runs_stream(self) -> str:
        """JetStream counter stream of agent runs (`<p>.run.>`): a run's counters go `mcp.run_ttl_s` after its
        last call (the stream's max age; counter streams take no per-message TTL)."""
        return f"{self._stream_base}_RUNS"

    @property
    def runs_wildcard(self) -> str:
        return f"{self.prefix}.run.>"

    @property
    def directory_bucket(self) -> str:
        """KV bucket of orgs, teams, projects, users and virtual keys (shared/governance.py)."""
        return f"{self._stream_base}_DIRECTORY"

    @property
    def alerts_bucket(self) -> str:
        """KV bucket recording which budget alerts were sent (create-only keys: each is sent once)."""
        return f"{self._stream_base}_ALERTS"

    def ping(self, service: str) -> str:
        """`<p>.<service>.ping` (request/reply, empty body): answered by any replica that is serving."""
        return f"{self.prefix}.{service}.ping"

    def guard_output(self, instance: str) -> str:
        """Wildcard reply subject of one guard process that scans responses on their way back."""
        return f"{self.prefix}.guardout.{instance}"

    @property
    def events_wildcard(self) -> str:
        return f"{self.prefix}.events.>"

    @property
    def events_stream(self) -> str:
        """JetStream stream holding every event until accounting has stored it."""
        return f"{self.prefix.upper().replace('.', '_').replace('-', '_')}_EVENTS"

    def inbox(self, instance: str) -> str:
        """Wildcard reply subject of one ingress process; a request's inbox is ``<this>.<request_id>``."""
        return f"{self.prefix}.inbox.{instance}"

    @property
    def inbox_wildcard(self) -> str:
        """Every ingress reply inbox (see `inbox`): the router and the guard answer requests here."""
        return f"{self.prefix}.inbox.>"

    @property
    def guard_output_wildcard(self) -> str:
        """Every guard output relay (see `guard_output`): the router answers requests the guard relays."""
        return f"{self.prefix}.guardout.>"

    def role_inbox(self, role: str) -> str:
        """The nats-py inbox prefix of one role's connections (request/reply, JetStream acks and pulls).

        Each role has its own, and NATS lets it subscribe only there, so no role can read another's replies.
        """
        return f"_INBOX.{self.prefix}.{role}"

    # ---- batch jobs (services/batch) ----------------------------------------------------------------
    @cached_property
    def router_batch(self) -> Subject[ChatRequest]:
        """guard → router: a batch item, dispatched when interactive traffic leaves room (router/priority.py)."""
        return Subject(f"{self.prefix}.router.batch", ChatRequest, queue="router")

    def batch_items(self, job_id: str, namespace: str = "") -> JsonSubject[BatchItem]:
        """producers and the batch service → JetStream work queue: one item of a job. The default producer
        credential and the service itself use `<p>.batch.items.<job>`; a producer credential scoped to a team or
        key (`namespace`, e.g. `team.ml`: shared/producers.py) may publish only `<p>.batch.items.ns.<ns>.<job>`."""
        if namespace:
            return JsonSubject(f"{self.prefix}.batch.items.{NAMESPACE_ROOT}.{namespace}.{job_id}", BatchItem)
        return JsonSubject(f"{self.prefix}.batch.items.{job_id}", BatchItem)

    @property
    def batch_items_wildcard(self) -> str:
        return f"{self.prefix}.batch.items.>"

    def batch_items_of(self, job_id: str) -> list[str]:
        """What a job's consumer reads: its items from the default producer and the service (`<p>.batch.items.<job>`)
        and from every namespace (`<p>.batch.items.ns.*.*.<job>`; the service checks the namespace owns the job)."""
        return [f"{self.prefix}.batch.items.{job_id}", f"{self.prefix}.batch.items.{NAMESPACE_ROOT}.*.*.{job_id}"]

    def batch_items_namespace(self, subject: str) -> str | None:
        """The namespace tokens of an items subject (`team.ml` for `<p>.batch.items.ns.team.ml.<job>`), '' for
        `<p>.batch.items.<job>`, None if it is neither form."""
        base = f"{self.prefix}.batch.items."
        if not subject.startswith(base):
            return None
        tokens = subject[len(base) :].split(".")
        if len(tokens) == 1:
            return ""
        return ".".join(tokens[1:3]) if len(tokens) == 4 and tokens[0] == NAMESPACE_ROOT else None

    def batch_items_scoped(self, namespace: str) -> str:
        """Every items subject of one namespace (a scoped producer's publish permission)."""
        return f"{self.prefix}.batch.items.{NAMESPACE_ROOT}.{namespace}.*"

    def batch_out_scoped(self, namespace: str) -> str:
        """Every result subject of one namespace (a scoped producer's subscribe permission)."""
        return f"{self.prefix}.batch.out.{NAMESPACE_ROOT}.{namespace}.>"

    def batch_out_namespace(self, subject: str) -> str | None:
        """The namespace tokens of a result subject (`team.ml` for `<p>.batch.out.ns.team.ml.<name…>`), '' for a
        result subject outside every namespace, None if it is no subject one can publish a result to: not under
        `<p>.batch.out.`, longer than `MAX_RESULT_SUBJECT_CHARS`, an empty token, a wildcard (`*`, `>`) or a
        character that is not printable ASCII (white space, a control character) in it, or under
        `<p>.batch.out.ns.` without a namespace and a name (`result_subject_problem` says which)."""
        return None if self.result_subject_problem(subject) else self._out_namespace(subject)

    def result_subject_problem(self, subject: str) -> str:
        """Why `subject` cannot be a result subject ('' if it can), in words for a 400's message."""
        base = f"{self.prefix}.batch.out."
        if len(subject) > MAX_RESULT_SUBJECT_CHARS:
            return f"must have at most {MAX_RESULT_SUBJECT_CHARS} characters"
        if not subject.startswith(base) or len(subject) == len(base):
            return f"must be a subject under {base}"
        tokens = subject[len(base) :].split(".")
        if any(not t or t in ("*", ">") or not all("!" <= c <= "~" for c in t) for t in tokens):
            return (
                "must be a subject one can publish to: no empty tokens, no wildcards (* or >), "
                "printable ASCII only (no white space or control characters)"
            )
        if tokens[0] == NAMESPACE_ROOT and len(tokens) > 1 and (len(tokens) < 4 or tokens[1] not in NAMESPACE_KINDS):
            namespaced = f"{base}{NAMESPACE_ROOT}"
            return f"under {namespaced}. must be a namespace's result subject ({namespaced}.<team|key>.<id>.<name>)"
        return ""

    def _out_namespace(self, subject: str) -> str:
        tokens = subject[len(f"{self.prefix}.batch.out.") :].split(".")
        return ".".join(tokens[1:3]) if tokens[0] == NAMESPACE_ROOT and len(tokens) > 1 else ""

    @property
    def namespaced_wildcards(self) -> tuple[str, ...]:
        """The items and result subjects of every namespace: what the default producer credential may not use."""
        return tuple(f"{self.prefix}.batch.{part}.{NAMESPACE_ROOT}.>" for part in ("items", "out"))

    def producer_inbox(self, namespace: str) -> str:
        """The nats-py inbox prefix of a scoped producer (its replies and JetStream acks), its own alone."""
        return f"_INBOX.{self.prefix}.producer.{namespace}"

    @cached_property
    def batch_api(self) -> JsonService[BatchCall, BatchReply]:
        """producers and ingress → batch service (request/reply, JSON): create, get, list, cancel, results."""
        return JsonService(f"{self.prefix}.batch.api", BatchCall, BatchReply, queue="batch")  # type: ignore[arg-type]

    def batch_result(self, job_id: str, token: str) -> Subject[StoredResult]:
        """batch service → JetStream (`batch_results_stream`, one message per subject): an item's result."""
        return Subject(f"{self.prefix}.batch.results.{job_id}.{token}", StoredResult)

    def batch_results_of(self, job_id: str) -> str:
        return f"{self.prefix}.batch.results.{job_id}.*"

    @property
    def batch_results_wildcard(self) -> str:
        return f"{self.prefix}.batch.results.>"

    def batch_out(self, name: str, namespace: str = "") -> JsonSubject[ResultLine]:
        """batch service → a producer's result subject (`<p>.batch.out.<name>`, or `<p>.batch.out.ns.<ns>.<name>`
        for a scoped producer): an item's result line."""
        if namespace:
            return JsonSubject(f"{self.prefix}.batch.out.{NAMESPACE_ROOT}.{namespace}.{name}", ResultLine)
        return JsonSubject(f"{self.prefix}.batch.out.{name}", ResultLine)

    @property
    def batch_out_wildcard(self) -> str:
        return f"{self.prefix}.batch.out.>"

    def batch_inbox(self, instance: str) -> str:
        """Wildcard reply subject of one batch process; an item's inbox is ``<this>.<request_id>``."""
        return f"{self.prefix}.binbox.{instance}"

    @property
    def batch_inbox_wildcard(self) -> str:
        """Every batch reply inbox: the guard and the router answer batch items here."""
        return f"{self.prefix}.binbox.>"

    @cached_property
    def events_batch(self) -> Subject[BatchJobEvent]:
        """batch service → JetStream: a job's progress (the `batch_jobs` table)."""
        return Subject(f"{self.prefix}.events.batch", BatchJobEvent)

    def batch_counter(self, job_id: str, kind: str) -> str:
        """A running job's progress counter (`completed`, `failed`, `cost` in micro-USD, `shares` reserved)."""
        return f"{self.prefix}.ctr.batchjob.{job_id}.{kind}"

    @property
    def batch_items_stream(self) -> str:
        """JetStream work-queue stream of batch items (`<p>.batch.items.>`), one consumer per job."""
        return f"{self._stream_base}_BATCH_ITEMS"

    @property
    def batch_results_stream(self) -> str:
        """JetStream stream of item results (`<p>.batch.results.>`), one message per item."""
        return f"{self._stream_base}_BATCH_RESULTS"

    @property
    def batch_jobs_bucket(self) -> str:
        """KV bucket of batch job records (shared.schemas.batch.BatchJob)."""
        return f"{self._stream_base}_BATCH_JOBS"

    @property
    def batch_claims_bucket(self) -> str:
        """KV bucket of in-flight claims on batch items (`<job>.<item token>`, services/batch/claims.py)."""
        return f"{self._stream_base}_BATCH_CLAIMS"

    @property
    def files_bucket(self) -> str:
        """Object store of uploaded batch input files and the output and error files of jobs."""
        return f"{self._stream_base}_FILES"

    # ---- MCP (services/mcp) --------------------------------------------------------------------------
    @cached_property
    def guard_mcp(self) -> Service[ToolCall, ToolOutcome]:
        """ingress → guard (request/reply): a tool call to scan, forward to the mcp stage, and scan the result of."""
        return Service(f"{self.prefix}.guard.mcp", ToolCall, ToolOutcome, queue="guard")

    @cached_property
    def guard_mcp_scan(self) -> Service[ToolCall, ArgumentsScan]:
        """ingress → guard (request/reply): the input scan alone of a tool call that needs an approval, so that the
        approver is shown (and the approvals bucket keeps) the arguments as the guard lets them through."""
        return Service(f"{self.prefix}.guard.mcpscan", ToolCall, ArgumentsScan, queue="guard")

    @cached_property
    def mcp_call(self) -> Service[ToolCall, ToolOutcome]:
        """guard → mcp (request/reply): a scanned tool call, to the upstream server's session."""
        return Service(f"{self.prefix}.mcp.call", ToolCall, ToolOutcome, queue="mcp")

    @cached_property
    def mcp_catalog(self) -> Service[CatalogQuery, Catalog]:
        """ingress → mcp (request/reply): every upstream server's tools, resources and prompts, and its health."""
        return Service(f"{self.prefix}.mcp.catalog", CatalogQuery, Catalog, queue="mcp")

    def mcp_catalog_at(self, replica: str) -> Service[CatalogQuery, Catalog]:
        """ingress → one mcp replica (request/reply): the pages of a list too large for the summary, asked of the
        replica whose summary named it (each replica holds its own sessions, so its own version of each list). The
        token is a hash of the replica's name: any name makes one subject token."""
        token = hashlib.blake2b(replica.encode(), digest_size=8).hexdigest()
        return Service(f"{self.prefix}.mcp.catalog.at.{token}", CatalogQuery, Catalog, queue="mcp")

    @property
    def mcp_catalog_replicas(self) -> str:
        """Every mcp replica's own catalog subject (`mcp_catalog_at`)."""
        return f"{self.prefix}.mcp.catalog.at.*"

    @cached_property
    def mcp_changed(self) -> Subject[CatalogChanged]:
        """mcp → every ingress replica (no queue group): a server's list changed; sessions are told so."""
        return Subject(f"{self.prefix}.mcp.changed", CatalogChanged)

    @cached_property
    def events_mcp(self) -> Subject[McpCallEvent]:
        """ingress → JetStream: the record of one MCP call (the `mcp_calls` table)."""
        return Subject(f"{self.prefix}.events.mcp", McpCallEvent)

    @property
    def mcp_approvals_bucket(self) -> str:
        """KV bucket of tool calls waiting for an admin's approval (shared.schemas.mcp.Approval)."""
        return f"{self._stream_base}_MCP_APPROVALS"

    def tool_quota_counter(self, scope: str, window: int) -> str:
        """MCP calls of one scope in one UTC minute (`tool_calls_per_minute`)."""
        return f"{self.prefix}.quota.tcpm.{scope}.{window}"

    def run_counter(self, key_id: str, run_id: str, kind: str) -> str:
        """One agent run's counter: `model` and `tool` calls, `spend` in micro-USD, `loop.<digest>` repeats."""
        return f"{self.prefix}.run.{key_id}.{run_id}.{kind}"
