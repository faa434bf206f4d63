"""One item, start to end, exactly once in effect: a result stored before the item is acknowledged, and an
item that comes back (its replica died, its ack was lost) answered from its stored result without running.

Per item: its stored result, if any → else its claim (services/batch/claims.py: while another copy of the item
is in flight on any replica, this one waits for that one's result) → its job's state (cancelled or expired:
answered without running) → the key (still usable) → the body (valid, a model the key may call) → the key's
usage policy → its share of the job's reservation (an item past a declared job's size is refused) → the key's
quotas (a refusal pauses the key's items, it does not fail them) → the pipeline (guard → router, lower
priority) → the result stored (create-only: the first one stored is the item's) → its request record
(`batch_id`, `batch_item_id`, its share to settle) → the job's progress counters → the producer's result
subject → ack. A try the pipeline lost (a stage restarting) or a retryable error runs again later; the item
fails only after its tries are spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.batch.claims import Claims, Held
from services.batch.input import ENDPOINTS, MAX_ITEM_ID, Request, parse_body
from services.batch.lifecycle import CANCELLED, EXPIRED, stopped
from services.batch.lines import result_line
from services.batch.pipeline import Answer, Lost, Pipeline
from services.batch.plan import MICRO, estimate, item_token, micro
from services.batch.store import JobStore, Results
from services.batch.telemetry import finish_item, retried_item, start_item
from shared import metrics
from shared.admission import Admitted, Estimate, Governor
from shared.auth import Authenticator
from shared.bus import MSG_ID, TRACEPARENT
from shared.config import GatehouseConfig, ModelConfig
from shared.counters import Counters
from shared.directory import Directory, Entitlement
from shared.errors import (
    CLIENT_CLOSED,
    AuthenticationError,
    BudgetExceededError,
    ErrorInfo,
    GatewayError,
    InvalidRequestError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamResponseTooLarge,
    error_body,
)
from shared.pricing import Rates, Tokens, cost
from shared.producers import may_notify, owner_of
from shared.records import RequestRecord
from shared.route_pricing import RoutePricing
from shared.schemas.batch import BatchItem, BatchJob, StoredResult
from shared.schemas.chat import Cancel, ChatRequest, Outcome, Reservation
from shared.schemas.events import ReservationState
from shared.subjects import Subjects, encode
from shared.tracing import Span
from shared.usage_policy import apply_params, max_output, with_max_output

log = logging.getLogger("gatehouse.batch.worker")

MAX_TAGS = 16
# deliveries of an item whose tries the pipeline lost (a guard or router replica restarting) before it fails
LOST_TRIES = 30
BACKOFF_MAX_S = 30.0
WRONG_NAMESPACE = "the namespace of its subject"  # how a refusal on a namespace's subject starts (its metric)


class Retry(Exception):
    """Run the item again after `delay` seconds (not a failure); `pause_key`: the key's quotas are spent."""

    def __init__(self, delay: float, why: str, *, pause_key: bool = False) -> None:
        super().__init__(why)
        self.delay = delay
        self.pause_key = pause_key


@dataclass(frozen=True, slots=True)
class Env:
    """What the worker reads and writes (set up once by the app)."""

    nc: Client
    js: JetStreamContext
    subjects: Subjects
    config: GatehouseConfig
    directory: Directory
    governor: Governor | None
    counters: Counters
    results: Results
    jobs: JobStore
    pipeline: Pipeline
    claims: Claims
    pricing: Mapping[str, RoutePricing]
    models: Mapping[str, ModelConfig]
    rates: Mapping[str, Rates]  # negotiated prices by deployment id
    timeout_s: float
    max_item_bytes: int
    max_result_bytes: int = 4 << 20  # the largest response body a stored result holds (below NATS max_payload)
    replica: str = ""  # this replica's name (GATEHOUSE_REPLICA)


def key_entitlement(directory: Directory, job: BatchJob, now: float) -> Entitlement | None:
    """The entitlement of the job's key while the secret the job was created with still authenticates it (the
    key not deleted, disabled or expired, and that secret not rotated out past its grace)."""
    if job.key_sha256:
        key = directory.key_for(job.key_sha256, now)
        if key is None or key.id != job.caller.key_id:
            return None
        return directory.entitlement(key)
    key = directory.keys.get(job.caller.key_id) or directory.static.get(job.caller.key_id)
    if key is None or key.disabled or (key.expires_at is not None and now >= key.expires_at):
        return None
    return directory.entitlement(key)


def backoff(delivered: int, retry_after: float | None = None) -> float:
    return min(max(retry_after or 0.0, 2.0 ** max(delivered - 1, 0)), BACKOFF_MAX_S)


def item_tags(ent_tags: Mapping[str, str], metadata: Mapping[str, str]) -> dict[str, str]:
    tags = dict(ent_tags)
    for name, value in list(metadata.items())[:MAX_TAGS]:
        tags[str(name)[:64]] = str(value)[:256]
    return tags


class ItemWorker:
    def __init__(self, env: Env) -> None:
        self.env = env
        self.auth = Authenticator(env.directory)
        self._decode_item = msgspec.json.Decoder(BatchItem).decode
        self._grace = env.config.governance.reservation_grace_s
        self.replica = env.replica or uuid.uuid4().hex[:12]  # who holds a claim (for an operator reading the bucket)
        self.dispatched = 0  # items sent through the pipeline by this replica (tests, metrics)
        self.waited = 0  # copies of items that found another copy's claim and were not run (tests)
        self._inflight: dict[str, set[str]] = {}  # job id → request ids of its items in the pipeline now
        self._withdrawn: set[str] = set()  # request ids whose withdrawal was sent
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- a stopped job's items still waiting in the router -------------------------------------------
    def on_job(self, job: BatchJob) -> None:
        """A job's record changed: once it is cancelled (or expired), withdraw its items that wait at the
        router's priority gate, so none of them reaches a provider after the cancel (items already at their
        provider finish)."""
        if job.id in self._inflight and stopped(job, time.time()) is not None:
            task = asyncio.create_task(self.withdraw(job.id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def withdraw(self, job_id: str) -> None:
        cancel = self.env.subjects.router_cancel
        for request_id in list(self._inflight.get(job_id, ())):
            if request_id in self._withdrawn:
                continue
            self._withdrawn.add(request_id)
            with contextlib.suppress(Exception):  # the item then ends as it would have (it may run)
                await self.env.nc.publish(cancel.name, cancel.encode(Cancel(request_id=request_id)))

    # ---- an item from the queue ---------------------------------------------------------------------
    async def handle(self, msg: Msg, job_id: str, ack_wait_s: float) -> Retry | None:
        """Process one delivered item: acked once its result is stored; nak'ed with a delay to run again
        (the Retry is returned so the caller can pause the key); terminated if it can never be read or is
        not proven to be its job's (such a message leaves no result, so it cannot stand in for a real item)."""
        try:
            item = self._decode_item(msg.data)
        except (msgspec.MsgspecError, RecursionError) as exc:
            log.error("unreadable item on %s terminated: %s", msg.subject, str(exc)[:200])
            metrics.batch_rejected("unreadable")
            await msg.term()
            return None
        job = self.env.jobs.cached(job_id)
        if job is None:
            metrics.batch_retry("waiting")
            await msg.nak(delay=1.0)
            return Retry(1.0, "the job's record has not arrived yet")
        refused = self.refusal(job, item, msg.subject)
        if refused is not None:
            log.warning("item of job %s terminated without running: %s", job_id, refused)
            metrics.batch_rejected(rejection(refused))
            await msg.term()
            return None
        token = item_token(job_id, item.item_id)
        stored = await self.env.results.get(job_id, token)
        if stored is None:
            ran = await self._claimed(msg, job_id, item, token, ack_wait_s)
            if isinstance(ran, Retry):
                return ran
            stored = ran
        await self.settle(job_id, stored, token, job.result_subject)
        await msg.ack()
        return None

    async def _claimed(
        self, msg: Msg, job_id: str, item: BatchItem, token: str, ack_wait_s: float
    ) -> StoredResult | Retry:
        """Run the item under its claim (services/batch/claims.py): its result as stored (this copy's, or the one
        another copy stored first), or the Retry the message was nak'ed with: another copy holds the claim (this
        one waits for its result), the claims cannot be reached, or the try is to run again later."""
        claims = self.env.claims
        holder = f"{self.replica}/{msg.metadata.sequence.stream if msg.metadata.sequence else 0}"
        try:
            held = await claims.take(job_id, token, holder)
        except Exception as exc:  # unknown whether another copy runs: this one must not
            log.warning("item of job %s not claimed (%s); it runs again", job_id, type(exc).__name__)
            retry = Retry(1.0, "the item's claim could not be taken")
        else:
            if held is not None:
                return await self._held(msg, held, holder, job_id, item, token, ack_wait_s)
            # another copy is with the pipeline: come back after its claim would have expired; by then its result
            # is stored (and this copy is answered from it), or it died and this copy claims the item
            metrics.batch_retry("claimed")
            self.waited += 1
            retry = Retry(claims.ttl_s, "another copy of the item is in flight")
        await msg.nak(delay=retry.delay)
        return retry

    async def _held(
        self, msg: Msg, held: Held, holder: str, job_id: str, item: BatchItem, token: str, ack_wait_s: float
    ) -> StoredResult | Retry:
        env = self.env
        stored = None
        try:
            # stored between the first look and the claim (by a copy whose claim has expired since)
            stored = await env.results.get(job_id, token)
            if stored is not None:
                return stored
            span = start_item(msg, job_id, item.item_id, token)
            keepalive = asyncio.create_task(self._keep_alive(msg, held, holder, ack_wait_s / 3))
            try:
                ran = await self._result(job_id, item, token, msg.metadata.num_delivered, span)
            except Retry as retry:
                retried_item(span, "retry")
                await self._release(held)  # the next try need not wait for the claim to expire
                await msg.nak(delay=retry.delay)
                return retry
            finally:
                keepalive.cancel()
            # the first result stored is the item's: a copy that overlapped this one (its claim lost) may have won
            stored = await env.results.put(self.fitted(ran), token)
            finish_item(span, stored)
            return stored
        finally:
            if stored is None:  # raised (or cancelled) before a result was stored; a Retry released it already
                await self._release(held)

    async def _release(self, held: Held) -> None:
        try:
            await self.env.claims.release(held)
        except Exception as exc:  # it then expires on its own
            log.warning("claim %s not released (%s)", held.key, type(exc).__name__)

    async def _keep_alive(self, msg: Msg, held: Held, holder: str, every_s: float) -> None:
        """Tell JetStream the item is still in hand (a long provider call must not be redelivered meanwhile), and
        renew the item's claim, which expires like the message's ack_wait."""
        while True:
            await asyncio.sleep(every_s)
            with contextlib.suppress(Exception):
                await msg.in_progress()
            try:
                if not await self.env.claims.renew(held, holder):
                    log.warning("claim %s expired while its item ran; the first result stored counts", held.key)
                    return
            except Exception as exc:  # tried again at the next keepalive, within the claim's TTL
                log.warning("claim %s not renewed (%s)", held.key, type(exc).__name__)

    def refusal(self, job: BatchJob, item: BatchItem, subject: str) -> str | None:
        """Why a queue message is not an item of `job` (None: it is).

        On a namespace's subject (`<p>.batch.items.ns.team.ml.<job>`, which only that namespace's producer credential
        and the trusted roles may publish to) the subject decides: the item is the job's if the namespace owns
        the job, whatever token or key it carries, and a file job takes none (its items are its file's lines).
        On the default subject a producer proves an item is the job's with the job's item token (given only to
        whoever created the job) or the job's API key itself; an id alone proves nothing (the default
        credential is shared, job ids may be chosen, and the budget is the key's)."""
        if not item.item_id or len(item.item_id) > MAX_ITEM_ID:
            return f"item id of {len(item.item_id)} characters (1 to {MAX_ITEM_ID})"
        owner = self.env.subjects.batch_items_namespace(subject)
        if owner is None:
            return "it is not on a queue subject"
        if owner:
            namespace = owner_of(owner)
            if namespace is None or not namespace.owns(job.caller):
                return f"{WRONG_NAMESPACE}: not its job's"
            return f"{WRONG_NAMESPACE}: a file job takes no item from a producer" if job.input_file_id else None
        if item.token and job.item_token and hmac.compare_digest(item.token.encode(), job.item_token.encode()):
            return None
        if item.key:
            try:
                key_id = self.auth.authenticate(f"Bearer {item.key}").key.id
            except AuthenticationError:
                return "its `key` is not a valid API key"
            return None if key_id == job.caller.key_id else "its `key` is another key than its job's"
        return "neither the job's item token nor its API key"

    def fitted(self, stored: StoredResult) -> StoredResult:
        """The result as stored: a response too large to store (and to hand back in a message) is replaced by
        an error, so the item ends instead of failing to store forever (and running again each time)."""
        if len(stored.body) <= self.env.max_result_bytes:
            return stored
        why = UpstreamResponseTooLarge(
            f"The response is {len(stored.body)} bytes; a batch result holds at most {self.env.max_result_bytes}."
        ).info()
        log.warning("result of %d bytes replaced by an error (limit %d)", len(stored.body), self.env.max_result_bytes)
        return msgspec.structs.replace(stored, status=why.status, body=msgspec.json.encode(error_body(why)), error=why)

    async def give_up(self, msg: Msg, job: BatchJob) -> None:
        """An item that failed unexpectedly on every try ends as failed (stored, recorded, acked) instead of
        being delivered forever."""
        try:
            item = self._decode_item(msg.data)
        except (msgspec.MsgspecError, RecursionError):
            await msg.term()
            return
        token = item_token(job.id, item.item_id)
        if await self.env.results.get(job.id, token) is None:
            message = "The batch service could not run this item."
            why = ErrorInfo(status=500, type="api_error", code="internal_error", message=message)
            now = time.time()
            record = RequestRecord(
                request_id=token, api=ENDPOINTS.get(job.endpoint, "chat"), received_at=now, started=time.monotonic()
            )
            record.caller = job.caller
            base = StoredResult(
                job_id=job.id, item_id=item.item_id, index=item.index, request_id=token, status=0, finished_at=now,
                result_subject=item.result_subject or job.result_subject,
            )  # fmt: skip
            stored = await self.env.results.put(self._failed(base, record, why, job, 0), token)
            metrics.batch_rejected("gave_up")
            finish_item(None, stored)
            await self.settle(job.id, stored, token, job.result_subject)
        await msg.ack()

    # ---- after the result is stored (also for lines that never reach the queue) ------------------------
    async def conclude(self, job_id: str, stored: StoredResult, token: str) -> None:
        known = await self.env.results.get(job_id, token)
        if known is None:
            known = await self.env.results.put(stored, token)
        await self.settle(job_id, known, token)

    async def settle(self, job_id: str, stored: StoredResult, token: str, default_subject: str = "") -> None:
        """The item's record, progress counters and result notice; every step is idempotent, and the notice is
        published by the copy that counted the item (a copy answered from a result another copy stored and
        counted publishes none, so a producer reads one line per item)."""
        env = self.env
        if stored.record:
            headers = {MSG_ID: token}
            if stored.traceparent:  # accounting's span joins the item's trace
                headers[TRACEPARENT] = stored.traceparent
            subject = env.subjects.events_request.name
            await env.js.publish(subject, stored.record, timeout=env.timeout_s, headers=headers)
        ok = stored.ran and stored.status == 200
        kind = "completed" if ok else "failed"
        ops = [env.counters.add(env.subjects.batch_counter(job_id, kind), 1, msg_id=f"{kind}.{job_id}.{token}")]
        if stored.cost_usd > 0:
            subject = env.subjects.batch_counter(job_id, "cost")
            ops.append(env.counters.add(subject, micro(stored.cost_usd), msg_id=f"cost.{job_id}.{token}"))
        if not stored.ran and stored.error is not None and stored.error.code in (CANCELLED.code, EXPIRED.code):
            subject = env.subjects.batch_counter(job_id, "cancelled")
            ops.append(env.counters.add(subject, 1, msg_id=f"cancelled.{job_id}.{token}"))
        counted, *_ = await asyncio.gather(*ops)
        target = stored.result_subject or default_subject
        if not counted.duplicate and self._may_notify(job_id, target):
            line = result_line(stored, batch_id=job_id)
            with contextlib.suppress(Exception):  # a notice; the stored result is what counts
                await env.nc.publish(target, msgspec.json.encode(line))

    def _may_notify(self, job_id: str, target: str) -> bool:
        """An item's own `result_subject` is checked here, as the job's was when it was created."""
        job = self.env.jobs.cached(job_id)
        return may_notify(self.env.subjects, target, job.caller if job is not None else None)

    # ---- running one item ---------------------------------------------------------------------------
    async def _result(self, job_id: str, item: BatchItem, token: str, delivered: int, span: Span) -> StoredResult:
        env = self.env
        now = time.time()
        job = env.jobs.cached(job_id)
        if job is None:
            raise Retry(1.0, "the job's record has not arrived yet")
        traceparent = span.context.traceparent()
        base = StoredResult(
            job_id=job_id,
            item_id=item.item_id,
            index=item.index,
            request_id=token,
            status=0,
            result_subject=item.result_subject or job.result_subject,
            finished_at=now,
            traceparent=traceparent,
        )
        why = stopped(job, now)
        if why is not None:
            return msgspec.structs.replace(base, ran=False, error=why)
        api = ENDPOINTS[job.endpoint]
        body = bytes(item.body)
        record = RequestRecord(request_id=token, api=api, received_at=now, started=time.monotonic())
        record.caller = job.caller
        record.request_bytes = len(body)
        record.trace_id = span.trace_id
        try:
            ent = key_entitlement(env.directory, job, now)
            if ent is None:
                raise AuthenticationError(
                    "The job's API key is no longer valid (deleted, disabled, expired or rotated)."
                )
            record.tags = item_tags(ent.tags, item.metadata)
            request = parse_body(body, job.endpoint, env.models, ent.allows, env.max_item_bytes)
            record.model = request.model
            span.set("gen_ai.request.model", request.model)  # the model the item's record names
            if job.model and env.models[job.model].name != request.canonical:
                raise InvalidRequestError(
                    f"The item calls `{request.model}`; its job was declared for `{job.model}`.", param="model"
                )
            request = self._policed(request, ent, job)
            user = request.chat.user if request.chat is not None else None
            if user and not ent.caller.user:  # a key without an owner: the request's `user` attributes it
                record.caller = msgspec.structs.replace(ent.caller, user=user[:128])
            est = estimate(request, env.pricing[request.model])
            share = await self._share(job, token, micro(est.cost()))
            return await self._run(job, item, token, request, est, share, record, base, ent, delivered)
        except GatewayError as exc:
            return self._failed(base, record, exc.info(), job, 0)

    def _policed(self, request: Request, ent: Entitlement, job: BatchJob) -> Request:
        """The key's usage policy applied; a declared job's output cap too."""
        chat = request.chat
        if chat is None:
            return request
        chat = apply_params(chat, ent.params)
        cap = job.max_tokens
        if cap is not None and (max_output(chat) is None or (max_output(chat) or 0) > cap):
            chat = with_max_output(chat, cap)
        return Request(model=request.model, canonical=request.canonical, chat=chat)

    async def _share(self, job: BatchJob, token: str, share: int) -> int:
        """Take the item's share of the job's reservation; refused when the job's reservation is used up
        (a declared job's items bigger than declared, or a partial job's unaffordable rest), and for a
        declared job past its declared number of items (whether or not a budget holds it)."""
        counters = self.env.counters
        if not job.input_file_id:
            seen = self.env.subjects.batch_counter(job.id, "items")
            taken = await counters.add(seen, 1, msg_id=f"item.{job.id}.{token}")
            if not taken.duplicate and taken.value > job.total:
                await counters.add(seen, -1, msg_id=f"unitem.{job.id}.{token}")
                raise BudgetExceededError(
                    f"The job was declared with {job.total} items; this one is beyond them.",
                    code="declared_size_exceeded",
                )
        if job.reserved_micro <= 0:
            return 0
        subject = self.env.subjects.batch_counter(job.id, "shares")
        taken = await counters.add(subject, share, msg_id=f"share.{job.id}.{token}")
        if not taken.duplicate and taken.value > job.reserved_micro:
            await counters.add(subject, -share, msg_id=f"unshare.{job.id}.{token}")
            raise BudgetExceededError(
                f"The item's worst case (${share / MICRO:.6g}) is beyond what its batch reserved "
                f"(${job.reserved_micro / MICRO:.6g}); declare the job's size, or give it a larger budget.",
                code="declared_size_exceeded",
            )
        return share

    async def _run(
        self,
        job: BatchJob,
        item: BatchItem,
        token: str,
        request: Request,
        est: Estimate,
        share: int,
        record: RequestRecord,
        base: StoredResult,
        ent: Entitlement,
        delivered: int,
    ) -> StoredResult:
        env = self.env
        deadline = record.received_at + env.config.server.request_timeout_s
        admitted = await self._admit(ent, token, est, deadline)
        latest = env.jobs.cached(job.id) or job
        why = stopped(latest, time.time())  # cancelled while it waited: not dispatched
        if why is not None:
            if admitted is not None and env.governor is not None:
                await env.governor.finish(admitted, 0)
            return msgspec.structs.replace(base, ran=False, error=why)
        req = ChatRequest(
            request_id=token,
            api=ENDPOINTS[job.endpoint],
            model=request.model,
            caller=record.caller,
            chat=request.chat,
            embeddings=request.embeddings,
            received_at=record.received_at,
            deadline=deadline,
            tags=record.tags,
            batch=True,
        )
        try:
            answer, seconds = await self._send(job.id, req, base.traceparent)
        except Lost as lost:
            if admitted is not None and env.governor is not None:
                await env.governor.finish(admitted, 0)
            if delivered < LOST_TRIES:
                metrics.batch_retry("lost")
                log.info("try %d lost (%s); it runs again", delivered, lost.why.code)
                raise Retry(backoff(delivered), lost.why.message) from lost
            return self._failed(base, record, lost.why, job, share)
        result = answer.result
        usage = result.outcome.usage
        if admitted is not None and env.governor is not None:
            await env.governor.finish(admitted, (usage.input_tokens + usage.output_tokens) if usage else 0)
        error = result.error
        outcome = result.outcome
        # the router answers an item withdrawn while it waited at its gate as it answers a client gone
        if error is not None and error.code == CLIENT_CLOSED.code:
            why = stopped(env.jobs.cached(job.id) or job, time.time())
            if why is not None:  # withdrawn at the router's gate: it never reached a provider
                return msgspec.structs.replace(base, ran=False, error=why)
        metrics.request_finished(
            request.model,
            outcome.provider,
            outcome.deployment,
            error.status if error is not None else 200,
            seconds,
            error_type=error.type if error is not None else "",
            error_code=error.code if error is not None else "",
        )
        if error is not None and error.retryable and delivered < env.config.batch.item_attempts:
            metrics.batch_retry("retryable")
            log.info("try %d failed with %s; it runs again", delivered, error.code)
            raise Retry(backoff(delivered, error.retry_after), error.message)
        record.outcome = result.outcome
        record.guard = answer.guard
        record.first_byte_ms = (time.monotonic() - record.started) * 1000
        if error is not None:
            return self._failed(base, record, error, job, share)
        record.response_bytes = len(answer.body)
        return msgspec.structs.replace(
            base,
            status=200,
            body=answer.body,
            usage=usage,
            cost_usd=self._cost(result.outcome, request.model, record.received_at),
            share_micro=share,
            record=self._event(record, job, item.item_id, share),
            finished_at=time.time(),
        )

    async def _admit(self, ent: Entitlement, token: str, est: Estimate, deadline: float) -> Admitted | None:
        """The key's quotas (its budgets are the job's reservation): a refusal runs the item again later."""
        env = self.env
        if env.governor is None or not ent.governed:
            return None
        try:
            admitted = await env.governor.admit(ent, token, est, deadline, budgets=False)
        except RateLimitError as exc:
            metrics.batch_retry("quota")
            raise Retry(exc.retry_after or 1.0, exc.message, pause_key=True) from exc
        except ServiceUnavailableError as exc:
            raise Retry(1.0, exc.message) from exc
        if admitted.reservation is not None:
            await self._note_live(admitted.reservation)
        return admitted

    async def _send(self, job_id: str, req: ChatRequest, traceparent: str) -> tuple[Answer, float]:
        """The item through the pipeline, known as in flight meanwhile (a cancel withdraws it): its answer and
        the seconds it took (timed once, for both the dispatch and the request metrics)."""
        self.dispatched += 1
        metrics.batch_dispatched(req.model)
        sent = time.monotonic()
        inflight = self._inflight.setdefault(job_id, set())
        inflight.add(req.request_id)
        try:
            answer = await self.env.pipeline.run(req, traceparent)
        finally:
            seconds = time.monotonic() - sent
            metrics.batch_dispatch_duration(req.model, seconds)
            inflight.discard(req.request_id)
            self._withdrawn.discard(req.request_id)
            if not inflight:
                self._inflight.pop(job_id, None)
        return answer, seconds

    def _failed(
        self, base: StoredResult, record: RequestRecord, error: ErrorInfo, job: BatchJob, share: int
    ) -> StoredResult:
        """A request that ran (or was refused like an HTTP request would be): its error as its response."""
        record.fail(error)
        outcome = record.outcome
        return msgspec.structs.replace(
            base,
            status=error.status,
            body=msgspec.json.encode(error_body(error)),
            error=error,
            usage=outcome.usage if outcome else None,
            cost_usd=self._cost(outcome, record.model, record.received_at) if outcome else 0.0,
            share_micro=share,
            record=self._event(record, job, base.item_id or "", share),
            finished_at=time.time(),
        )

    def _event(self, record: RequestRecord, job: BatchJob, item_id: str, share: int) -> bytes:
        """The item's request record: tagged with its job and item, carrying its share of the job's
        reservation (accounting settles the share to the item's actual cost)."""
        event = record.event(time.monotonic())
        reservation = None
        if job.holds:
            reservation = Reservation(
                request_id=record.request_id,
                amount_usd=share / MICRO,
                holds=[msgspec.structs.replace(h, micro_usd=share if h.hard else 0) for h in job.holds],
                expires_at=job.expires_at + self._grace,
            )
        event = msgspec.structs.replace(event, batch_id=job.id, batch_item_id=item_id, reservation=reservation)
        return encode(event)

    def _cost(self, outcome: Outcome | None, model: str, at: float) -> float:
        """The item's cost at the price accounting records (for the job's cost so far)."""
        if outcome is None or outcome.usage is None:
            return 0.0
        u = outcome.usage
        tokens = Tokens(
            input=u.input_tokens, output=u.output_tokens, cached=u.cached_tokens, cache_write=u.cache_write_tokens
        )
        price = cost(
            tokens, outcome.provider_model or model, outcome.provider_kind, at, self.env.rates.get(outcome.deployment)
        )
        return price.cost_usd or 0.0

    async def _note_live(self, reservation: Reservation) -> None:
        """Concurrency slots an item holds are noted live, so accounting frees them if this replica dies;
        its budget share is the job's (released with the job), so the note holds no money."""
        if not reservation.concurrency:
            return
        env = self.env
        note = Reservation(
            request_id=reservation.request_id, concurrency=reservation.concurrency, expires_at=reservation.expires_at
        )
        subject = env.subjects.reservation(reservation.request_id)
        state = ReservationState(state="live", reservation=note, at=time.time())
        await env.js.publish(
            subject.name,
            subject.encode(state),
            timeout=env.timeout_s,
            headers={MSG_ID: f"resv-live-{reservation.request_id}-{math.floor(time.time())}"},
        )


def rejection(refused: str) -> str:
    """The metrics reason of a refusal (`ItemWorker.refusal`)."""
    if refused.startswith("item id"):
        return "invalid_item_id"
    return "wrong_namespace" if refused.startswith(WRONG_NAMESPACE) else "unauthenticated"
