"""Batch jobs on the bus: items on the work queue, calls to the batch service, results and job records.

Producers speak JSON (any language with a NATS client): an item is one `BatchItem` on
`<p>.batch.items.<job_id>`, a call to the batch service is one `BatchCall` on `<p>.batch.api` (tagged by
`op`), answered with a `BatchReply`. Results are OpenAI Batch output lines (`ResultLine`), also sent to an
item's `result_subject` when it names one. What the batch service keeps for itself (job records, stored
results) is msgpack.
"""

from __future__ import annotations

import hashlib
import hmac

import msgspec

from shared.errors import ErrorInfo
from shared.schemas.chat import Caller, Hold, Usage

# ---- the work queue (JSON) ---------------------------------------------------------------------------


class BatchItem(msgspec.Struct, frozen=True, kw_only=True):
    """One item of a job: a chat completions or embeddings request body and who it is for.

    Published to `<p>.batch.items.<job_id>` with header `Nats-Msg-Id` as `item_message_id` makes it (JetStream
    drops a repeat within its duplicate window; the batch service runs an item id once per job anyway).
    """

    job_id: str
    item_id: str  # the producer's id, unique within the job (OpenAI's `custom_id`)
    body: msgspec.Raw  # the request body, as for `POST /v1/chat/completions` or `/v1/embeddings`
    # what proves the item is the job's (one of them is required): `token`, the job's item token (given once,
    # in the reply that created the job), or `key`, the job's API key itself
    token: str = ""
    key: str = ""
    metadata: dict[str, str] = {}  # tags on the item's request record (bounded)
    result_subject: str = ""  # `<p>.batch.out.…`: where the item's result line is also published
    index: int = -1  # position in the input (a file's line number); -1: order of arrival is not kept


# the batch streams' JetStream duplicate window: a message id seen within it is acknowledged `duplicate` and dropped
DUPLICATE_WINDOW_S = 2 * 3600


def item_message_id(item: BatchItem, secret: bytes = b"") -> str:
    """The item's `Nats-Msg-Id`: `<job>/<item>/<digest>`, the same every time the item is published (a retry after a
    lost acknowledgement, a re-run pipeline, a second replica of it: JetStream drops the repeat), and one nobody
    else can publish first under (JetStream's duplicate window is the whole stream's, across namespaces, and
    would then drop the real item as a duplicate).

    The digest is of the item's proof (its job's item token or key), else an HMAC of `<job>/<item>` under the
    producer's own `secret` (`producer_id_secret`: from its credential's seed). Only with neither is the id the
    guessable `<job>/<item>`."""
    proof = item.token or item.key
    if proof:
        digest = hashlib.sha256(proof.encode()).hexdigest()[:16]
    elif secret:
        digest = hmac.new(secret, f"{item.job_id}/{item.item_id}".encode(), hashlib.sha256).hexdigest()[:16]
    else:
        return f"{item.job_id}/{item.item_id}"
    return f"{item.job_id}/{item.item_id}/{digest}"


def producer_id_secret(seed: bytes) -> bytes:
    """The key a producer signs its proof-less items' message ids with, derived from its credential's NKey seed:
    every process holding the credential derives the same one (so their repeats are dropped), and nobody without
    the seed can."""
    return hashlib.sha256(b"gatehouse batch item message ids\n" + seed.strip()).digest()


# ---- calls to the batch service (JSON, request/reply on <p>.batch.api) -------------------------------


class CreateJob(msgspec.Struct, frozen=True, kw_only=True, tag="create", tag_field="op"):
    """Create a job: from an uploaded JSONL file (`input_file_id`, the OpenAI Batch API), or declared for
    items the producer then publishes to the queue subject (`items`, `input_tokens`, `max_tokens`).

    A declared job's worst case is `input_tokens` of prompt (the estimate of shared/tokens.py: 4
    characters a token, 4 per message, 800 per image or audio part) plus `max_tokens` of output per item;
    an item that would take the job past its declaration fails with `declared_size_exceeded`.
    """

    key: str
    endpoint: str = "/v1/chat/completions"
    completion_window: str = "24h"
    input_file_id: str = ""
    model: str = ""  # declared jobs: the model every item calls
    items: int = 0  # declared jobs: how many items will be published
    input_tokens: int = 0  # declared jobs: the items' prompt tokens, all together
    max_tokens: int | None = None  # declared jobs: each item's most output tokens (default: the model's)
    metadata: dict[str, str] = {}
    result_subject: str = ""  # default `result_subject` of every item
    partial: bool = False  # run the affordable part when the key's budget cannot cover the whole job
    job_id: str = ""  # declared jobs may name their id ([A-Za-z0-9_-]{1,64}); creating it again is a no-op
    concurrency: int = 0  # items in flight at once (0: the configured default)
    surface: str = "openai"  # openai | anthropic: the API whose shape the results take


class GetJob(msgspec.Struct, frozen=True, kw_only=True, tag="get", tag_field="op"):
    key: str
    job_id: str


class ListJobs(msgspec.Struct, frozen=True, kw_only=True, tag="list", tag_field="op"):
    key: str
    after: str = ""
    limit: int = 20
    surface: str = ""  # only jobs of this surface ('' all)


class CancelJob(msgspec.Struct, frozen=True, kw_only=True, tag="cancel", tag_field="op"):
    key: str
    job_id: str


class JobResults(msgspec.Struct, frozen=True, kw_only=True, tag="results", tag_field="op"):
    """A page of a job's result lines, in input order (what a producer without file access reads)."""

    key: str
    job_id: str
    after: int = -1  # the `next` of the previous page
    limit: int = 500
    which: str = "all"  # all | output | error


class DeleteFile(msgspec.Struct, frozen=True, kw_only=True, tag="delete_file", tag_field="op"):
    key: str
    file_id: str


BatchCall = CreateJob | GetJob | ListJobs | CancelJob | JobResults | DeleteFile


class RequestCounts(msgspec.Struct, frozen=True, kw_only=True):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchExtension(msgspec.Struct, frozen=True, kw_only=True):
    """What gatehouse adds to OpenAI's batch object (under `gatehouse`)."""

    cost_usd: float = 0.0  # actual cost of the items so far, at the price accounting records
    reserved_usd: float = 0.0  # the worst case reserved on the key's budgets when the job was created
    not_affordable: int = 0  # items refused at creation because the budget could not cover them (partial jobs)
    cancelled: int = 0  # items never run because the job was cancelled or expired (counted as failed)
    key_id: str = ""
    surface: str = "openai"
    model: str = ""


class BatchErrorData(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(msgspec.Struct, frozen=True, kw_only=True):
    """Why a batch failed as a whole (OpenAI's `errors`: a list object)."""

    object: str = "list"
    data: list[BatchErrorData] = []


class BatchObject(msgspec.Struct, frozen=True, kw_only=True):
    """OpenAI's batch object (`GET /v1/batches/{id}`), field for field."""

    id: str
    object: str = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    metadata: dict[str, str] | None = None
    gatehouse: BatchExtension


class LineResponse(msgspec.Struct, frozen=True, kw_only=True):
    status_code: int
    request_id: str
    body: msgspec.Raw


class LineError(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    message: str


class ResultLine(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One line of an OpenAI Batch output or error file (and of a result notice, which adds `batch_id`):
    `response` for a request that ran (its status and body), `error` for one that never ran."""

    id: str
    custom_id: str | None
    response: LineResponse | None
    error: LineError | None
    batch_id: str = ""


class BatchReply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The batch service's answer: `error`, or what the call asked for."""

    error: ErrorInfo | None = None
    job: BatchObject | None = None
    jobs: list[BatchObject] = []
    has_more: bool = False
    results: list[ResultLine] = []
    next: int = -1  # JobResults: the `after` of the next page (-1: no more)
    # CreateJob: the job's item token, which each item published to the queue subject carries (`token`)
    item_token: str = ""


# ---- what the batch service keeps (msgpack) ------------------------------------------------------------


class BatchJob(msgspec.Struct, frozen=True, kw_only=True):
    """One job's record (KV `<P>_BATCH_JOBS`, key = job id); counts of a running job live in counters."""

    id: str
    status: str  # validating | in_progress | finalizing | completed | failed | expired | cancelling | cancelled
    surface: str = "openai"
    endpoint: str
    model: str = ""
    completion_window: str = "24h"
    caller: Caller
    key_tags: dict[str, str] = {}
    input_file_id: str = ""
    input_file_name: str = ""
    metadata: dict[str, str] = {}
    result_subject: str = ""
    partial: bool = False
    concurrency: int = 0
    total: int = 0
    not_affordable: int = 0
    invalid: int = 0  # lines refused when the file was read (their result lines are stored)
    # the up-front reservation: its holds (hard budgets: the job's worst case; soft: 0) and its total
    holds: list[Hold] = []
    reserved_micro: int = 0
    max_tokens: int | None = None  # declared jobs: each item's output cap
    created_at: float
    in_progress_at: float | None = None
    expires_at: float
    finalizing_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    expired_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None
    # final counts (set when the job ends; while it runs, counters hold them)
    completed: int = 0
    failed: int = 0
    cancelled_items: int = 0
    cost_usd: float = 0.0
    output_file_id: str = ""
    error_file_id: str = ""
    errors: list[LineError] = []  # why a job failed as a whole
    # a random secret of the job: items carrying it are the job's (a producer cannot add items to a job whose
    # creation reply it did not get); the batch service's own items (from a file) carry it too
    item_token: str = ""
    # the hash of the secret the job was created with: the job runs while that secret still authenticates its
    # key (a key disabled, deleted, expired or rotated past its grace stops its jobs)
    key_sha256: str = ""


class StoredResult(msgspec.Struct, frozen=True, kw_only=True):
    """An item's result (`<p>.batch.results.<job_id>.<token>`, one per item): stored before its item is
    acknowledged, so a redelivered item finds it and is not run again."""

    job_id: str
    item_id: str | None
    index: int
    request_id: str
    status: int  # the response's status; 0: the item never ran (see `error`)
    body: bytes = b""  # the response body (JSON), or the error body of a failed response
    error: ErrorInfo | None = None
    ran: bool = True  # False: never dispatched (invalid, not affordable, cancelled, expired)
    usage: Usage | None = None
    cost_usd: float = 0.0
    share_micro: int = 0  # the part of the job's reservation the item's record settles
    record: bytes = b""  # the item's RequestEvent (msgpack), published again if the item comes back
    result_subject: str = ""
    finished_at: float = 0.0
    traceparent: str = ""  # the item's span: its record joins the item's trace when it is published again


class BatchJobEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A job's progress, published on each change of state and every few seconds while it runs
    (`<p>.events.batch` → the `batch_jobs` table, the latest row per job wins)."""

    event_id: str
    job_id: str
    status: str
    surface: str = ""
    endpoint: str = ""
    model: str = ""
    caller: Caller
    total: int = 0
    completed: int = 0
    failed: int = 0
    cost_usd: float = 0.0
    reserved_usd: float = 0.0
    created_at: float
    updated_at: float
    expires_at: float = 0.0
    finished_at: float = 0.0
