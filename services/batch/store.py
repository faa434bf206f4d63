"""The batch service's state in JetStream (the only I/O besides the pipeline): the job records (a KV bucket
mirrored in memory by a watch), the work queue of items (one durable pull consumer per job, so each job
has its own pace and a cancel drains only its items), and the results (one message per item subject).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    Header,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.errors import NotFoundError as JsNotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from services.batch.claims import WRONG_LAST_SEQUENCE
from shared.bus import MSG_ID, bind_pull_consumer, publish_windowed
from shared.schemas.batch import DUPLICATE_WINDOW_S, BatchItem, BatchJob, StoredResult, item_message_id
from shared.subjects import Subjects
from shared.tasks import cancel_and_wait

log = logging.getLogger("gatehouse.batch.store")

RETRY_S = 1.0
CONSUMER_IDLE_S = 3600.0  # a job's consumer outlives its last fetch this long (then the server removes it)
READ_WAIT_S = 5.0

_JOB = msgspec.msgpack.Decoder(BatchJob)
_ENCODE = msgspec.msgpack.Encoder().encode


class JobConflict(Exception):
    """The job record changed since it was read (another replica wrote it first), or exists already."""


def consumer_name(job_id: str) -> str:
    return f"job_{job_id}"


class JobStore:
    """Job records: written with compare-and-set, read from an in-memory mirror kept current by a KV watch."""

    def __init__(self, js: JetStreamContext, subjects: Subjects, retention_s: float) -> None:
        self._js = js
        self._bucket = subjects.batch_jobs_bucket
        self._retention_s = retention_s
        self._kv: KeyValue | None = None
        self.jobs: dict[str, tuple[BatchJob, int]] = {}
        self.synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[BatchJob], None]] = []

    def listen(self, callback: Callable[[BatchJob], None]) -> None:
        """Call `callback` with every job as its record arrives (created, changed, replayed at start)."""
        self._listeners.append(callback)

    async def kv(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self._js.key_value(self._bucket)
            except BucketNotFoundError:
                try:
                    self._kv = await self._js.create_key_value(
                        KeyValueConfig(bucket=self._bucket, history=1, ttl=self._retention_s, storage=StorageType.FILE)
                    )
                except BadRequestError:  # another replica created it meanwhile
                    self._kv = await self._js.key_value(self._bucket)
        return self._kv

    def start(self) -> None:
        self._task = asyncio.create_task(self._mirror(), name="batch-jobs-watch")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _mirror(self) -> None:
        while True:
            try:
                kv = await self.kv()
                watcher = await kv.watchall()
                async for entry in watcher:
                    if entry is None:
                        self.synced.set()
                        continue
                    self._apply(entry.key, entry.value, entry.operation, entry.revision or 0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._kv = None
                log.warning("job watch lost (%s); retrying", type(exc).__name__)
                await asyncio.sleep(RETRY_S)

    def _apply(self, key: str, value: bytes | None, operation: str | None, revision: int) -> None:
        if operation in (KV_DEL, KV_PURGE) or not value:
            self.jobs.pop(key, None)
            return
        try:
            job = _JOB.decode(value)
        except msgspec.MsgspecError:
            log.error("job record %s is unreadable; ignored", key)
            return
        known = self.jobs.get(key)
        if known is not None and known[1] > revision:
            return  # an older record than the one this replica wrote itself
        self.jobs[key] = (job, revision)
        for callback in self._listeners:
            callback(job)

    def cached(self, job_id: str) -> BatchJob | None:
        known = self.jobs.get(job_id)
        return known[0] if known else None

    async def read(self, job_id: str) -> tuple[BatchJob, int] | None:
        """The job's current record and revision, from KV (the mirror may be a moment behind)."""
        kv = await self.kv()
        try:
            entry = await kv.get(job_id)
        except (KeyNotFoundError, JsNotFoundError):
            return None
        if not entry.value:
            return None
        return _JOB.decode(entry.value), entry.revision or 0

    async def create(self, job: BatchJob) -> int:
        kv = await self.kv()
        try:
            revision = await kv.create(job.id, _ENCODE(job))
        except KeyWrongLastSequenceError as exc:
            raise JobConflict(f"job {job.id} exists") from exc
        self._apply(job.id, _ENCODE(job), None, revision)
        return revision

    async def update(self, job: BatchJob, revision: int) -> int:
        kv = await self.kv()
        try:
            new = await kv.update(job.id, _ENCODE(job), last=revision)
        except KeyWrongLastSequenceError as exc:
            raise JobConflict(f"job {job.id} changed meanwhile") from exc
        self._apply(job.id, _ENCODE(job), None, new)
        return new


# nats-server's answer when JetStream has not the storage (or the reservation a stream's max_bytes asks for)
INSUFFICIENT_RESOURCES = 10047


class QueueUnavailable(Exception):
    """The work queue cannot be made as configured."""


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """The work queue's limits (GATEHOUSE_BATCH_QUEUE_*, services/batch/settings.py)."""

    max_bytes: int = 1024**3
    max_items: int = 2_000_000
    max_items_per_job: int = 1_000_000


def queue_limits(config: StreamConfig) -> tuple[object, ...]:
    """What bounds a work queue: its bytes, messages and messages per subject, and what happens past them."""
    return (
        config.max_bytes,
        config.max_msgs,
        config.max_msgs_per_subject,
        config.discard,
        config.discard_new_per_subject,
    )


class ItemQueue:
    """The work queue: items of every job on `<p>.batch.items.<job_id>` (and `<p>.batch.items.ns.<ns>.<job_id>` from
    scoped producers), one durable pull consumer per job."""

    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        retention_s: float,
        timeout_s: float,
        limits: QueueLimits | None = None,
    ) -> None:
        self._js = js
        self._subjects = subjects
        self._retention_s = retention_s
        self._timeout = timeout_s
        self._limits = limits or QueueLimits()

    def config(self) -> StreamConfig:
        limits = self._limits
        return StreamConfig(
            name=self._subjects.batch_items_stream,
            subjects=[self._subjects.batch_items_wildcard],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            max_age=self._retention_s,
            duplicate_window=DUPLICATE_WINDOW_S,
            # full is full: a publish past a limit is refused (a work queue never drops a queued item for a new one)
            max_bytes=limits.max_bytes,
            max_msgs=limits.max_items,
            max_msgs_per_subject=limits.max_items_per_job,
            discard=DiscardPolicy.NEW,
            discard_new_per_subject=True,
        )

    async def ensure(self) -> None:
        """The work queue, made if missing. One that exists is left as it is (only admins manage streams): if its
        limits are not the configured ones (a queue made by an earlier release, with none), the operator is told
        how to set them."""
        wanted = self.config()
        try:
            await self._js.add_stream(wanted)
            return
        except BadRequestError:
            pass
        except APIError as exc:
            if exc.err_code == INSUFFICIENT_RESOURCES:
                raise QueueUnavailable(
                    f"work queue {wanted.name}: JetStream cannot reserve its GATEHOUSE_BATCH_QUEUE_MAX_BYTES"
                    f" ({self._limits.max_bytes} bytes; {exc.description}): lower it or give JetStream more storage"
                ) from exc
            raise
        current = (await self._js.stream_info(self._subjects.batch_items_stream)).config
        if queue_limits(current) != queue_limits(wanted):
            log.warning(
                "work queue %s: its limits %s are not the configured %s; as a NATS admin: nats stream edit %s"
                " --max-bytes %d --max-msgs %d --max-msgs-per-subject %d --discard new --discard-per-subject",
                wanted.name,
                queue_limits(current),
                queue_limits(wanted),
                wanted.name,
                self._limits.max_bytes,
                self._limits.max_items,
                self._limits.max_items_per_job,
            )

    async def enqueue(self, job_id: str, items: Sequence[BatchItem]) -> None:
        """Publish items with the Nats-Msg-Id a producer gives them (`item_message_id`: the job, the item and a
        digest of the job's item token they carry): enqueueing the same items again adds nothing, and a message
        published first under `<job>/<item>` by someone without the token does not make JetStream drop them."""
        subject = self._subjects.batch_items(job_id)
        await publish_windowed(
            self._js.publish(
                subject.name, subject.encode(item), timeout=self._timeout, headers={MSG_ID: item_message_id(item)}
            )
            for item in items
        )

    async def consumer(self, job: BatchJob, ack_wait_s: float) -> JetStreamContext.PullSubscription:
        """The job's durable pull consumer, made if missing and otherwise brought up to date (its filters too: one
        made before namespaces, or before their subjects moved under `ns`, would never be delivered the job's other
        items); `max_ack_pending` caps the job's items in flight across every batch replica."""
        return await bind_pull_consumer(
            self._js,
            self._subjects.batch_items_stream,
            consumer_name(job.id),
            # the job's items from the default producer and the service, and from any namespace (the worker runs
            # a namespace's item only if the namespace owns the job)
            subject=self._subjects.batch_items_of(job.id),
            ack_wait=ack_wait_s,
            max_deliver=-1,  # the service counts an item's tries itself (num_delivered) and ends it
            max_ack_pending=max(job.concurrency, 1),
            inactive_threshold=CONSUMER_IDLE_S,
        )

    async def idle(self, job_id: str) -> bool:
        """No item of the job waits in the queue and none is in a replica's hands."""
        try:
            info = await self._js.consumer_info(self._subjects.batch_items_stream, consumer_name(job_id))
        except JsNotFoundError:
            return False  # the consumer is made when a replica starts the job; until then nothing is known
        return (info.num_pending or 0) == 0 and (info.num_ack_pending or 0) == 0


class Results:
    """Item results: `<p>.batch.results.<job_id>.<token>`, at most one message per subject (per item)."""

    def __init__(self, js: JetStreamContext, subjects: Subjects, retention_s: float, timeout_s: float) -> None:
        self._js = js
        self._subjects = subjects
        self._retention_s = retention_s
        self._timeout = timeout_s
        self._decode = msgspec.msgpack.Decoder(StoredResult).decode

    async def ensure(self) -> None:
        await _ensure(
            self._js,
            StreamConfig(
                name=self._subjects.batch_results_stream,
                subjects=[self._subjects.batch_results_wildcard],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                max_age=self._retention_s,
                max_msgs_per_subject=1,
                duplicate_window=DUPLICATE_WINDOW_S,
                allow_direct=True,
            ),
        )

    async def get(self, job_id: str, token: str) -> StoredResult | None:
        subject = self._subjects.batch_result(job_id, token)
        try:
            msg = await self._js.get_last_msg(self._subjects.batch_results_stream, subject.name, direct=True)
        except JsNotFoundError:
            return None
        return self._decode(msg.data or b"")

    async def put(self, result: StoredResult, token: str) -> StoredResult:
        """Store the item's result unless one is stored already; the result stored, which is the first one: two
        copies of an item that both got a result (their claims overlapped) settle the same one."""
        subject = self._subjects.batch_result(result.job_id, token)
        try:
            ack = await self._js.publish(
                subject.name,
                subject.encode(result),
                timeout=self._timeout,
                # create-only, past the duplicate window too (a later copy never replaces the result)
                headers={MSG_ID: f"result/{result.job_id}/{token}", Header.EXPECTED_LAST_SUBJECT_SEQUENCE: "0"},
            )
        except APIError as exc:
            if exc.err_code not in WRONG_LAST_SEQUENCE:
                raise
        else:
            if not ack.duplicate:
                return result
        # stored before (by another copy, or by this publish's earlier try whose answer was lost)
        return await self.get(result.job_id, token) or result

    async def page(self, job_id: str, after: int, limit: int) -> tuple[list[tuple[int, StoredResult]], int, bool]:
        """Up to `limit` results stored after stream sequence `after` (-1: from the start), in the order they
        were stored; the sequence to ask after next time, and whether more are stored already."""
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if after >= 0 else DeliverPolicy.ALL,
            opt_start_seq=after + 1 if after >= 0 else None,
        )
        sub = await self._js.subscribe(
            self._subjects.batch_results_of(job_id),
            stream=self._subjects.batch_results_stream,
            ordered_consumer=True,
            config=config,
        )
        out: list[tuple[int, StoredResult]] = []
        last = after
        more = True
        try:
            info = await sub.consumer_info()
            # nothing to read at all: none pending and none pushed to this subscription already
            if (info.num_pending or 0) == 0 and not (info.delivered and info.delivered.consumer_seq):
                return out, last, False
            while len(out) < limit:
                try:
                    msg = await sub.next_msg(timeout=READ_WAIT_S)
                except (NatsTimeoutError, TimeoutError):
                    break
                last = msg.metadata.sequence.stream
                out.append((last, self._decode(msg.data)))
                if msg.metadata.num_pending == 0:
                    more = False
                    break
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return out, last, more

    async def all(self, job_id: str) -> list[StoredResult]:
        """Every result of a job (one per item: a result stored again replaces the earlier one)."""
        found: dict[tuple[str | None, int], StoredResult] = {}
        after = -1
        while True:
            page, after, more = await self.page(job_id, after, 10_000)
            for _, r in page:
                found[(r.item_id, r.index)] = r
            if not more:
                return list(found.values())


async def _ensure(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:
        log.info("stream %s exists with a different config; leaving it", config.name)
