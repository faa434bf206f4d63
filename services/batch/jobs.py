"""Jobs from start to end: created (read, priced and reserved up front, or refused), their items queued,
their progress counted and published, cancelled, and finished (output and error files written, the unused
reservation given back), by whichever batch replica gets there first (job records change by
compare-and-set, and every step may be done again).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine

import msgspec

from services.batch.input import ENDPOINTS, Line, check_endpoint, read_lines
from services.batch.lifecycle import ACTIVE, CANCELLABLE, FINAL, Progress, cancelling, finished, progress_of
from services.batch.lines import files
from services.batch.plan import (
    MICRO,
    check_job_id,
    check_metadata,
    check_result_subject,
    declared_worst,
    estimate,
    item_token,
    micro,
    new_job_id,
    output_file_id,
    window_seconds,
)
from services.batch.reserve import Reserver, job_reservation
from services.batch.store import ItemQueue, JobConflict
from services.batch.worker import ItemWorker, key_entitlement
from shared import metrics
from shared.bus import MSG_ID
from shared.config import hash_key
from shared.counters import DUPLICATE_WINDOW_S
from shared.directory import Entitlement
from shared.errors import (
    BudgetExceededError,
    ConflictError,
    ErrorInfo,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
)
from shared.files import FileStore, StoredFile
from shared.logs import bind_batch, unbind_batch
from shared.records import RequestRecord
from shared.reservation_notes import Notes
from shared.schemas.batch import BatchItem, BatchJob, BatchJobEvent, CreateJob, LineError, StoredResult
from shared.schemas.events import ReservationState
from shared.subjects import encode
from shared.usage_policy import apply_params

log = logging.getLogger("gatehouse.batch.jobs")

SURFACES = frozenset({"openai", "anthropic"})
VALIDATING_STALE_S = 30.0  # a job still being queued this long after its last change is taken over
FINALIZING_STALE_S = 60.0
# a job's reservation state moved under it this often in a row (by the sweep of another replica): give up this round
NOTE_ATTEMPTS = 8
# an interrupted give-back (its job's reservation left `settling`) is done again only this long after it began:
# its increments' ids are deduplicated for DUPLICATE_WINDOW_S, and it may have counted before it was interrupted
GIVE_BACK_REDO_S = DUPLICATE_WINDOW_S - 60.0
RESERVATION_SLACK_S = 3600.0  # a job's reservation outlives its window this long before accounting may free it


class JobControl:
    def __init__(self, worker: ItemWorker, queue: ItemQueue, file_store: FileStore, reserver: Reserver) -> None:
        self.worker = worker
        self.env = worker.env
        self.queue = queue
        self.files = file_store
        self.reserver = reserver
        self.notes = Notes(self.env.js, self.env.subjects, self.env.timeout_s)
        self._enqueueing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._published: dict[str, tuple[str, int, int]] = {}  # job → (status, done, cost) last published
        self._last_tick = 0.0

    # ---- create ----------------------------------------------------------------------------------
    async def create(self, call: CreateJob, ent: Entitlement) -> BatchJob:
        cfg = self.env.config.batch
        check_endpoint(call.endpoint)
        if call.surface not in SURFACES:
            raise InvalidRequestError(f"Unknown surface {call.surface[:40]!r}.", param="surface")
        window = window_seconds(call.completion_window, cfg.max_completion_window_s)
        if call.concurrency < 0:
            raise InvalidRequestError("concurrency must be positive.", param="concurrency")
        concurrency = min(call.concurrency or cfg.job_concurrency, cfg.job_concurrency)
        check_result_subject(self.env.subjects, call.result_subject, ent.caller)
        now = time.time()
        base = BatchJob(
            id=new_job_id(),
            status="validating",
            surface=call.surface,
            endpoint=call.endpoint,
            completion_window=call.completion_window,
            caller=ent.caller,
            key_tags=ent.tags,
            metadata=check_metadata(call.metadata),
            result_subject=call.result_subject,
            partial=call.partial,
            concurrency=concurrency,
            created_at=now,
            expires_at=now + window,
            item_token=secrets.token_urlsafe(24),
            key_sha256=hash_key(call.key),
        )
        try:
            if call.input_file_id:
                job, lines = await self._file_job(base, call, ent)
            else:
                job, lines = await self._declared_job(base, call, ent), None
        except BudgetExceededError:
            metrics.batch_reservation("refused")
            raise
        metrics.batch_reservation(
            "unbudgeted" if not job.reserved_micro else "partial" if job.not_affordable else "reserved"
        )
        try:
            await self.env.jobs.create(job)
        except JobConflict:
            await self.reserver.release(job.id, job.holds, job.reserved_micro)
            raise
        if job.reserved_micro:
            await self._note(job, job.reserved_micro)
        if job.status == "validating":
            self._spawn(self._enqueue(job, lines))
        await self.publish_progress(job, Progress(), force=True)
        log.info("job %s created: %d items, $%.6f reserved", job.id, job.total, job.reserved_micro / MICRO)
        return job

    async def _file_job(self, base: BatchJob, call: CreateJob, ent: Entitlement) -> tuple[BatchJob, list[Line]]:
        info = await self.files.info(call.input_file_id)
        if info is None or info.key_id != ent.key.id:
            raise NotFoundError(f"No such File object: {call.input_file_id[:100]}", param="input_file_id")
        if info.purpose != "batch":
            raise InvalidRequestError("The input file's purpose must be `batch`.", param="input_file_id")
        lines = self._lines(await self.files.read(call.input_file_id), call.endpoint, ent)
        valid = [line for line in lines if line.request is not None]
        shares = [self._line_share(line, ent) for line in valid]
        self._priced(ent, {line.request.model for line in valid if line.request is not None})
        reserved = await self.reserver.reserve(ent, shares, call.partial, base.created_at)
        models = {line.request.model for line in valid if line.request is not None}
        job = msgspec.structs.replace(
            base,
            model=models.pop() if len(models) == 1 else "",
            input_file_id=call.input_file_id,
            input_file_name=info.filename,
            total=len(lines),
            invalid=len(lines) - len(valid),
            not_affordable=len(valid) - reserved.runnable,
            holds=reserved.holds,
            reserved_micro=reserved.micro,
        )
        return job, lines

    def _lines(self, data: bytes, endpoint: str, ent: Entitlement) -> list[Line]:
        cfg = self.env.config.batch
        return read_lines(
            data,
            endpoint,
            self.env.models,
            ent.allows,
            max_item_bytes=self.env.max_item_bytes,
            max_items=cfg.max_items,
        )

    def _line_share(self, line: Line, ent: Entitlement) -> int:
        request = line.request
        assert request is not None
        if request.chat is not None:
            try:
                policed = apply_params(request.chat, ent.params)
            except GatewayError:
                policed = request.chat  # refused when it runs; priced as it is
            request = type(request)(model=request.model, canonical=request.canonical, chat=policed)
        return micro(estimate(request, self.env.pricing[request.model]).cost())

    def _priced(self, ent: Entitlement, models: set[str]) -> None:
        """A key with hard budgets may only run models whose price is known (as for interactive requests)."""
        if not any(b.hard for s in ent.scopes for b in s.limits.budgets):
            return
        for model in sorted(models):
            if not self.env.pricing[model].known:
                raise InvalidRequestError(
                    f"No price is known for a deployment of `{model}`, so its budget cannot be enforced; "
                    "set `price` on its deployments in the config.",
                    param="model",
                )

    async def _declared_job(self, base: BatchJob, call: CreateJob, ent: Entitlement) -> BatchJob:
        cfg = self.env.config.batch
        if call.job_id:
            job_id = check_job_id(call.job_id)
            existing = await self.env.jobs.read(job_id)
            if existing is not None:
                if existing[0].caller.key_id != ent.key.id:
                    raise ConflictError(f"A job with id {job_id} exists.", param="job_id")
                raise JobExists(existing[0])
            base = msgspec.structs.replace(base, id=job_id)
        if not call.model:
            raise InvalidRequestError("A job without an input file declares its `model`.", param="model")
        if not 0 < call.items <= cfg.max_items:
            raise InvalidRequestError(f"`items` must be between 1 and {cfg.max_items}.", param="items")
        if call.input_tokens < 0 or (call.max_tokens is not None and call.max_tokens <= 0):
            raise InvalidRequestError("input_tokens and max_tokens must be positive.", param="input_tokens")
        target = self.env.models.get(call.model)
        if target is None or not ent.allows(call.model, target.name):
            raise NotFoundError(
                f"The model `{call.model}` does not exist or you do not have access to it.", param="model"
            )
        if (target.kind == "embeddings") != (ENDPOINTS[call.endpoint] == "embeddings"):
            raise InvalidRequestError(f"The model `{call.model}` does not serve {call.endpoint}.", param="model")
        self._priced(ent, {call.model})
        pricing = self.env.pricing[call.model]
        cap = min(call.max_tokens or pricing.max_output, pricing.max_output)
        key_cap = ent.params.max.get("max_tokens")
        if key_cap is not None:
            cap = min(cap, int(key_cap))
        output = cap if ENDPOINTS[call.endpoint] == "chat" else 0
        per_item = declared_worst(pricing, 1, max(call.input_tokens // call.items, 1), output)
        # plus a micro-USD per item: each item's share is rounded up on its own
        worst = declared_worst(pricing, call.items, call.input_tokens, output) + call.items
        # the worst case in item-sized parts, so a partial job knows how many items it covers
        shares = [per_item] * (call.items - 1) + [max(worst - per_item * (call.items - 1), 0)]
        reserved = await self.reserver.reserve(ent, shares, call.partial, base.created_at)
        return msgspec.structs.replace(
            base,
            status="in_progress",
            in_progress_at=base.created_at,
            model=call.model,
            total=call.items,
            not_affordable=call.items - reserved.runnable,
            holds=reserved.holds,
            reserved_micro=reserved.micro,
            max_tokens=cap if output else None,
        )

    # ---- queue a file job's items -------------------------------------------------------------------
    async def _enqueue(self, job: BatchJob, lines: list[Line] | None) -> None:
        if job.id in self._enqueueing:
            return
        self._enqueueing.add(job.id)
        bind_batch(job.id)  # this task's lines (it queues this job's items only)
        try:
            await self._enqueue_once(job, lines)
        except Exception:
            log.exception("job %s: queueing its items failed; another try follows", job.id)
        finally:
            self._enqueueing.discard(job.id)

    async def _enqueue_once(self, job: BatchJob, lines: list[Line] | None) -> None:
        now = time.time()
        if lines is None:
            ent = key_entitlement(self.env.directory, job, now)
            if ent is None:
                await self._fail(job, "invalid_api_key", "The job's API key was deleted or disabled before it ran.")
                return
            lines = self._lines(await self.files.read(job.input_file_id), job.endpoint, ent)
        valid = [line for line in lines if line.request is not None]
        runnable = len(valid) - job.not_affordable
        items: list[BatchItem] = []
        refused: list[tuple[Line, ErrorInfo]] = [(line, line.error) for line in lines if line.error is not None]
        for n, line in enumerate(valid):
            if n >= runnable:
                why = BudgetExceededError(
                    "The key's budget could not cover this request when the batch was created.",
                    code="budget_exceeded",
                ).info()
                refused.append((line, why))
                continue
            assert line.custom_id is not None
            items.append(
                BatchItem(
                    job_id=job.id,
                    item_id=line.custom_id,
                    body=msgspec.Raw(line.body),
                    index=line.index,
                    token=job.item_token,
                )
            )
        for line, why in refused:
            await self.worker.conclude(job.id, *self._refusal(job, line, why, now))
        await self.queue.enqueue(job.id, items)
        while True:
            got = await self.env.jobs.read(job.id)
            if got is None or got[0].status != "validating":
                return
            try:
                await self.env.jobs.update(
                    msgspec.structs.replace(got[0], status="in_progress", in_progress_at=time.time()), got[1]
                )
                return
            except JobConflict:
                continue

    async def _fail(self, job: BatchJob, code: str, message: str) -> None:
        """End a job that cannot run at all (`failed`, OpenAI's `errors`), giving its reservation back."""
        got = await self.env.jobs.read(job.id)
        if got is None or got[0].status != "validating":
            return
        now = time.time()
        failed = msgspec.structs.replace(
            got[0], status="failed", failed_at=now, failed=got[0].total, errors=[LineError(code=code, message=message)]
        )
        try:
            await self.env.jobs.update(failed, got[1])
        except JobConflict:
            return
        await self._release(failed, failed.reserved_micro)
        await self.publish_progress(failed, Progress(failed=failed.total), force=True)

    def _refusal(self, job: BatchJob, line: Line, why: ErrorInfo, now: float) -> tuple[StoredResult, str]:
        """A line that never runs: its result (an `error` line) and its request record (a refused request)."""
        token = item_token(job.id, line.custom_id if line.error is None and line.custom_id else f"#line{line.index}")
        record = RequestRecord(request_id=token, api=ENDPOINTS[job.endpoint], received_at=now, started=time.monotonic())
        record.caller = job.caller
        record.model = line.request.model if line.request else requested_model(line.body)
        record.request_bytes = len(line.body)
        record.tags = dict(job.key_tags)
        record.fail(why)
        event = msgspec.structs.replace(
            record.event(time.monotonic()), batch_id=job.id, batch_item_id=line.custom_id or f"#line{line.number}"
        )
        stored = StoredResult(
            job_id=job.id,
            item_id=line.custom_id,
            index=line.index,
            request_id=token,
            status=0,
            error=why,
            ran=False,
            record=encode(event),
            result_subject=job.result_subject,
            finished_at=now,
        )
        return stored, token

    # ---- progress ---------------------------------------------------------------------------------
    async def progress(self, job: BatchJob) -> Progress:
        """A running job's counts, from its counters (a finished job's are on its record)."""
        if job.status not in ACTIVE:
            return Progress(job.completed, job.failed, job.cancelled_items, micro(job.cost_usd), 0)
        names = ("completed", "failed", "cancelled", "cost", "shares")
        counters = self.env.counters
        values = await asyncio.gather(
            *[counters.read(self.env.subjects.batch_counter(job.id, n)) for n in names], return_exceptions=True
        )
        got = [v if isinstance(v, int) else 0 for v in values]
        return Progress(got[0], got[1], got[2], got[3], got[4])

    async def publish_progress(self, job: BatchJob, progress: Progress, *, force: bool = False) -> None:
        """The job's progress to the event stream (the `batch_jobs` table), when it changed."""
        key = (job.status, progress.done, progress.cost_micro)
        if not force and self._published.get(job.id) == key:
            return
        now = time.time()
        event = BatchJobEvent(
            event_id=f"{job.id}:{job.status}:{progress.done}:{int(now * 1000)}",
            job_id=job.id,
            status=job.status,
            surface=job.surface,
            endpoint=job.endpoint,
            model=job.model,
            caller=job.caller,
            total=job.total,
            completed=progress.completed,
            failed=progress.failed,
            cost_usd=progress.cost_micro / MICRO,
            reserved_usd=job.reserved_micro / MICRO,
            created_at=job.created_at,
            updated_at=now,
            expires_at=job.expires_at,
            finished_at=job.completed_at or job.cancelled_at or job.expired_at or job.failed_at or 0.0,
        )
        subject = self.env.subjects.events_batch
        try:
            await self.env.js.publish(
                subject.name, subject.encode(event), timeout=self.env.timeout_s, headers={MSG_ID: event.event_id}
            )
        except Exception as exc:  # the next tick publishes again
            log.warning("job %s: progress not published (%s)", job.id, type(exc).__name__)
            return
        self._published[job.id] = key
        if job.status in FINAL:
            self._published.pop(job.id, None)

    # ---- cancel ------------------------------------------------------------------------------------
    async def cancel(self, job_id: str, key_id: str) -> BatchJob:
        while True:
            got = await self.env.jobs.read(job_id)
            if got is None or got[0].caller.key_id != key_id:
                raise NotFoundError(f"No batch found with id '{job_id[:100]}'.", param="batch_id")
            job, revision = got
            if job.status in ("cancelling", "cancelled"):
                return job
            if job.status not in CANCELLABLE:
                raise InvalidRequestError(f"Cannot cancel a batch with status '{job.status}'.")
            try:
                await self.env.jobs.update(cancelling(job, time.time()), revision)
            except JobConflict:
                continue
            log.info("job %s: cancelling", job_id)
            return cancelling(job, time.time())

    # ---- the end -----------------------------------------------------------------------------------
    async def finish(self, job_id: str) -> None:
        """Write the output and error files, give back the unused reservation and close the job (again,
        harmlessly, if another replica got there too)."""
        got = await self.env.jobs.read(job_id)
        if got is None or got[0].status in FINAL:
            return
        job, revision = got
        now = time.time()
        if job.status == "finalizing" and now - (job.finalizing_at or 0.0) <= FINALIZING_STALE_S:
            return  # another replica is finishing it
        # claimed by compare-and-set: one replica finishes it (or takes over from one that died doing so)
        claim = msgspec.structs.replace(job, status="finalizing", finalizing_at=now)
        try:
            revision = await self.env.jobs.update(claim, revision)
        except JobConflict:
            return
        job = claim
        results = await self.env.results.all(job_id)
        progress = progress_of(results)
        output, errors = files(results)
        out_id = await self._write(job, "o", output)
        err_id = await self._write(job, "e", errors)
        await self._release(job, max(job.reserved_micro - progress.shares_micro, 0))
        final = finished(job, progress, time.time(), out_id, err_id)
        try:
            await self.env.jobs.update(final, revision)
        except JobConflict:
            return
        await self.publish_progress(final, progress, force=True)
        log.info(
            "job %s %s: %d completed, %d failed, $%.6f",
            job_id,
            final.status,
            final.completed,
            final.failed,
            final.cost_usd,
        )

    async def _write(self, job: BatchJob, which: str, data: bytes) -> str:
        if not data:
            return ""
        file_id = output_file_id(job.id, which)
        name = f"{job.id}_{'output' if which == 'o' else 'error'}.jsonl"
        record = StoredFile(
            id=file_id, bytes=len(data), created_at=time.time(), filename=name, purpose="batch_output",
            key_id=job.caller.key_id,
        )  # fmt: skip
        await self.files.put(record, data)
        return file_id

    async def _release(self, job: BatchJob, left: int) -> None:
        """Give back what no item took. The job's reservation moves to `settling` (with what is given back) first, by
        compare-and-set: if accounting's reaper released it meanwhile (this service was away past the job's window)
        that stands and nothing is given back here; once moved, the reaper never releases it, however much later
        (its release and this one share increment ids, but they may be days apart, far beyond the counters'
        duplicate window). Then the give-back, then `settled`. A give-back that fails, or a process that stops
        before `settled`, leaves it `settling`: the replica that takes the job's finalizing over gives the same
        amount back with the same ids (so it counts once) while they are still deduplicated; past that the rest
        stays counted (never an overspend) and it is noted settled with an error log."""
        if not job.reserved_micro:
            return
        for _ in range(NOTE_ATTEMPTS):
            seq, known = await self.notes.read(job.id)
            if known is not None and known.state == "settling":
                reservation, at = known.reservation, known.at  # a give-back interrupted: done again
                break
            if known is not None and known.state != "live":
                return  # released by accounting's reaper, or given back already
            reservation = job_reservation(job.id, job.holds, left, job.expires_at + RESERVATION_SLACK_S)
            at = time.time()
            if await self.notes.move(ReservationState(state="settling", reservation=reservation, at=at), seq):
                break
        else:
            raise JobConflict(f"job {job.id}: its reservation's state kept changing")
        back = next((h.micro_usd for h in reservation.holds if h.hard), 0)
        if time.time() - at <= GIVE_BACK_REDO_S:
            await self.reserver.release(job.id, job.holds, back)
            metrics.batch_reservation("released")
        else:
            log.error(
                "job %s: its give-back of %d micro-USD was interrupted %.0fs ago (beyond the duplicate window it could "
                "count twice): left counted",
                job.id,
                back,
                time.time() - at,
            )
        for _ in range(NOTE_ATTEMPTS):
            seq, known = await self.notes.read(job.id)
            if known is None or known.state != "settling":
                return  # settled by another replica's takeover
            if await self.notes.move(ReservationState(state="settled", reservation=reservation, at=time.time()), seq):
                return
        raise JobConflict(f"job {job.id}: its reservation's state kept changing")

    async def _note(self, job: BatchJob, left: int) -> None:
        """The job's reservation for accounting's reaper: `live` with what no item has taken yet (freed if this
        service is gone past the job's window). Only a live state (or none) is replaced: one the reaper released,
        or this service settled, stays so."""
        reservation = job_reservation(job.id, job.holds, left, job.expires_at + RESERVATION_SLACK_S)
        for _ in range(NOTE_ATTEMPTS):
            seq, known = await self.notes.read(job.id)
            if known is not None and known.state != "live":
                return
            if await self.notes.move(ReservationState(state="live", reservation=reservation, at=time.time()), seq):
                return

    # ---- the sweep (every second, on every replica) --------------------------------------------------
    async def sweep(self, ensure_running: Callable[[BatchJob], None], progress_every_s: float) -> None:
        now = time.time()
        tick = now - self._last_tick >= progress_every_s
        if tick:
            self._last_tick = now
        for job in [j for j, _ in list(self.env.jobs.jobs.values())]:
            bound = bind_batch(job.id)
            try:
                await self._sweep_one(job, now, tick, ensure_running)
            except Exception as exc:
                log.warning("job %s: sweep failed (%s)", job.id, type(exc).__name__)
            finally:
                unbind_batch(bound)

    async def _sweep_one(
        self, job: BatchJob, now: float, tick: bool, ensure_running: Callable[[BatchJob], None]
    ) -> None:
        if job.status == "validating":
            if job.id not in self._enqueueing and now - job.created_at > VALIDATING_STALE_S:
                self._spawn(self._enqueue(job, None))
            return
        if job.status == "finalizing":
            await self.finish(job.id)  # taken over only if the replica finishing it has gone quiet
            return
        if job.status not in ("in_progress", "cancelling"):
            return
        ensure_running(job)
        if now >= job.expires_at:  # expired (no record change tells of it): its items waiting in the router go
            await self.worker.withdraw(job.id)
        progress = await self.progress(job) if tick or job.status == "cancelling" or now >= job.expires_at else None
        if progress is not None and tick:
            await self.publish_progress(job, progress)
            if job.reserved_micro and job.status == "in_progress":
                await self._note(job, max(job.reserved_micro - progress.shares_micro, 0))
        ending = job.status == "cancelling" or now >= job.expires_at
        if not ending:
            if progress is None:
                progress = await self.progress(job)
            if progress.done < job.total:
                return
        if await self.queue.idle(job.id):
            await self.finish(job.id)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=10)


class _Named(msgspec.Struct):
    model: str = ""


_NAMED = msgspec.json.Decoder(_Named)


def requested_model(body: bytes) -> str:
    """The model a refused line's body names ('' when it names none), for its record: an unknown model is
    still the model that was asked for."""
    try:
        return _NAMED.decode(body).model[:256] if body else ""
    except (msgspec.MsgspecError, RecursionError):  # not an object, a model that is not a string, too deep
        return ""


class JobExists(Exception):
    """A declared job with this id exists (for the same key): creating it again returns it."""

    def __init__(self, job: BatchJob) -> None:
        super().__init__(job.id)
        self.job = job
