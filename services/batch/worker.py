"""One item, start to end, exactly once in effect: a result stored before the item is acknowledged, and an
item that comes back (its replica died, its ack was lost) answered from its stored result without running.

Per item: its stored result, if any → else its job's state (cancelled or expired: answered without running)
→ the key (still usable) → the body (valid, a model the key may call) → the key's usage policy → its share
of the job's reservation (an item past a declared job's size is refused) → the key's quotas (a refusal
pauses the key's items, it does not fail them) → the pipeline (guard → router, lower priority) → the
result stored → its request record (`batch_id`, `batch_item_id`, its share to settle) → the job's progress
counters → the producer's result subject → ack. A try the pipeline lost (a stage restarting) or a
retryable error runs again later; the item fails only after its tries are spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.batch.input import ENDPOINTS, Request, parse_body
from services.batch.lifecycle import CANCELLED, EXPIRED, stopped
from services.batch.lines import result_line
from services.batch.pipeline import Lost, Pipeline
from services.batch.plan import MICRO, estimate, item_token, micro
from services.batch.store import JobStore, Results
from shared.admission import Admitted, Estimate, Governor
from shared.auth import Authenticator
from shared.bus import MSG_ID
from shared.config import GatehouseConfig, ModelConfig
from shared.counters import Counters
from shared.directory import Directory, Entitlement
from shared.errors import (
    AuthenticationError,
    BudgetExceededError,
    ErrorInfo,
    GatewayError,
    InvalidRequestError,
    RateLimitError,
    ServiceUnavailableError,
    error_body,
)
from shared.pricing import Rates, Tokens, cost
from shared.records import RequestRecord
from shared.route_pricing import RoutePricing
from shared.schemas.batch import BatchItem, BatchJob, StoredResult
from shared.schemas.chat import ChatRequest, Outcome, Reservation
from shared.schemas.events import ReservationState
from shared.subjects import Subjects, encode
from shared.usage_policy import apply_params, max_output, with_max_output

log = logging.getLogger("gatehouse.batch.worker")

MAX_TAGS = 16
# deliveries of an item whose tries the pipeline lost (a guard or router replica restarting) before it fails
LOST_TRIES = 30
BACKOFF_MAX_S = 30.0


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
    pricing: Mapping[str, RoutePricing]
    models: Mapping[str, ModelConfig]
    rates: Mapping[str, Rates]  # negotiated prices by deployment id
    timeout_s: float
    max_item_bytes: int


def key_entitlement(directory: Directory, key_id: str, now: float) -> Entitlement | None:
    """The entitlement of a key by id, if it is still usable (not deleted, disabled or expired)."""
    key = directory.keys.get(key_id) or directory.static.get(key_id)
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
        self.dispatched = 0  # items sent through the pipeline by this replica (tests, metrics)

    # ---- an item from the queue ---------------------------------------------------------------------
    async def handle(self, msg: Msg, job_id: str, ack_wait_s: float) -> Retry | None:
        """Process one delivered item: acked once its result is stored; nak'ed with a delay to run again
        (the Retry is returned so the caller can pause the key); terminated if it can never be read."""
        try:
            item = self._decode_item(msg.data)
        except msgspec.MsgspecError as exc:
            log.error("unreadable item on %s terminated: %s", msg.subject, exc)
            await msg.term()
            return None
        token = item_token(job_id, item.item_id)
        stored = await self.env.results.get(job_id, token)
        if stored is None:
            keepalive = asyncio.create_task(_keep_alive(msg, ack_wait_s / 3))
            try:
                stored = await self._result(job_id, item, token, msg.metadata.num_delivered)
            except Retry as retry:
                await msg.nak(delay=retry.delay)
                return retry
            finally:
                keepalive.cancel()
            await self.env.results.put(stored, token)
        job = self.env.jobs.cached(job_id)
        await self.settle(job_id, stored, token, job.result_subject if job else "")
        await msg.ack()
        return None

    # ---- after the result is stored (also for lines that never reach the queue) ------------------------
    async def conclude(self, job_id: str, stored: StoredResult, token: str) -> None:
        if await self.env.results.get(job_id, token) is None:
            await self.env.results.put(stored, token)
        await self.settle(job_id, stored, token)

    async def settle(self, job_id: str, stored: StoredResult, token: str, default_subject: str = "") -> None:
        """The item's record, progress counters and result notice; every step is idempotent."""
        env = self.env
        if stored.record:
            await env.js.publish(
                env.subjects.events_request.name, stored.record, timeout=env.timeout_s, headers={MSG_ID: token}
            )
        ok = stored.ran and stored.status == 200
        kind = "completed" if ok else "failed"
        ops = [env.counters.add(env.subjects.batch_counter(job_id, kind), 1, msg_id=f"{kind}.{job_id}.{token}")]
        if stored.cost_usd > 0:
            subject = env.subjects.batch_counter(job_id, "cost")
            ops.append(env.counters.add(subject, micro(stored.cost_usd), msg_id=f"cost.{job_id}.{token}"))
        if not stored.ran and stored.error is not None and stored.error.code in (CANCELLED.code, EXPIRED.code):
            subject = env.subjects.batch_counter(job_id, "cancelled")
            ops.append(env.counters.add(subject, 1, msg_id=f"cancelled.{job_id}.{token}"))
        await asyncio.gather(*ops)
        target = stored.result_subject or default_subject
        if target.startswith(env.subjects.batch_out_wildcard[:-1]):  # a producer names only its own result subject
            line = result_line(stored, batch_id=job_id)
            with contextlib.suppress(Exception):  # a notice; the stored result is what counts
                await env.nc.publish(target, msgspec.json.encode(line))

    # ---- running one item ---------------------------------------------------------------------------
    async def _result(self, job_id: str, item: BatchItem, token: str, delivered: int) -> StoredResult:
        env = self.env
        now = time.time()
        job = env.jobs.cached(job_id)
        if job is None:
            raise Retry(1.0, "the job's record has not arrived yet")
        base = StoredResult(
            job_id=job_id,
            item_id=item.item_id,
            index=item.index,
            request_id=token,
            status=0,
            result_subject=item.result_subject or job.result_subject,
            finished_at=now,
        )
        why = stopped(job, now)
        if why is not None:
            return msgspec.structs.replace(base, ran=False, error=why)
        api = ENDPOINTS[job.endpoint]
        body = bytes(item.body)
        record = RequestRecord(request_id=token, api=api, received_at=now, started=time.monotonic())
        record.caller = job.caller
        record.request_bytes = len(body)
        try:
            ent = key_entitlement(env.directory, job.caller.key_id, now)
            if ent is None:
                raise AuthenticationError("The job's API key is no longer valid (deleted, disabled or expired).")
            if item.key and self.auth.authenticate(f"Bearer {item.key}").key.id != ent.key.id:
                raise AuthenticationError("The item names another API key than its job's.")
            record.tags = item_tags(ent.tags, item.metadata)
            request = parse_body(body, job.endpoint, env.models, ent.allows, env.max_item_bytes)
            record.model = request.model
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
        (a declared job's items bigger than declared, or a partial job's unaffordable rest)."""
        if job.reserved_micro <= 0:
            return 0
        counters, subject = self.env.counters, self.env.subjects.batch_counter(job.id, "shares")
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
        admitted: Admitted | None = None
        if env.governor is not None and ent.governed:
            try:
                admitted = await env.governor.admit(ent, token, est, deadline, budgets=False)
            except RateLimitError as exc:
                raise Retry(exc.retry_after or 1.0, exc.message, pause_key=True) from exc
            except ServiceUnavailableError as exc:
                raise Retry(1.0, exc.message) from exc
            if admitted.reservation is not None:
                await self._note_live(admitted.reservation)
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
        self.dispatched += 1
        try:
            answer = await env.pipeline.run(req)
        except Lost as lost:
            if admitted is not None and env.governor is not None:
                await env.governor.finish(admitted, 0)
            if delivered < LOST_TRIES:
                raise Retry(backoff(delivered), lost.why.message) from lost
            return self._failed(base, record, lost.why, job, share)
        result = answer.result
        usage = result.outcome.usage
        if admitted is not None and env.governor is not None:
            await env.governor.finish(admitted, (usage.input_tokens + usage.output_tokens) if usage else 0)
        error = result.error
        if error is not None and error.retryable and delivered < env.config.batch.item_attempts:
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


async def _keep_alive(msg: Msg, every_s: float) -> None:
    """Tell JetStream the item is still in hand (a long provider call must not be redelivered meanwhile)."""
    while True:
        await asyncio.sleep(every_s)
        with contextlib.suppress(Exception):
            await msg.in_progress()
