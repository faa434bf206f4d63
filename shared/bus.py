"""Bus helpers every service uses: header names, the JetStream streams and durable consumers, queue workers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError, ServerError

from shared.schemas.chat import BodyPart, Reply, Result
from shared.subjects import Subjects, encode

log = logging.getLogger(__name__)

# NATS headers that travel through every hop
REQUEST_ID = "Gh-Request-Id"
TRACEPARENT = "traceparent"
MSG_ID = "Nats-Msg-Id"
# a compare-and-set on one subject of a stream: stored only if the subject's last message has this sequence (0: none)
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
PUBLISH_WINDOW = 256  # JetStream publishes awaiting their acks at once in publish_windowed


async def publish_windowed(publishes: Iterable[Coroutine[Any, Any, object]], window: int = PUBLISH_WINDOW) -> int:
    """Run JetStream publishes with at most `window` awaiting their acks at once (`publishes` is drawn lazily, so
    a long run of items never has more in the air); the first failure raises. How many were published."""
    pending: set[asyncio.Future[object]] = set()
    count = 0
    try:
        for publish in publishes:
            started = asyncio.ensure_future(publish)
            started.add_done_callback(_outcome_read)
            pending.add(started)
            count += 1
            if len(pending) >= window:  # room first, then the next is drawn (a failure leaves none unstarted)
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    fut.result()
        for next_done in asyncio.as_completed(pending):
            await next_done
    except BaseException:
        # a failure (or a cancel) ends the run: what is still in the air is withdrawn (the caller retries the
        # run, and Nats-Msg-Id drops whatever had arrived)
        for fut in pending:
            fut.cancel()
        raise
    return count


def _outcome_read(fut: asyncio.Future[object]) -> None:
    """Mark a publish's failure as seen: the run raises the first one, and the others (or those of publishes it
    withdrew) must not be logged as never retrieved, hundreds at a time when NATS is away."""
    if not fut.cancelled():
        fut.exception()


# JetStream publish: how long to wait for the server's ack by default (services pass nats_timeout_s)
PUBLISH_TIMEOUT_S = 5.0

# a response body larger than this crosses the bus in BodyPart pieces (well under any max_payload)
PART_BYTES = 512 * 1024


def split_result(result: Result, part_bytes: int = PART_BYTES) -> list[Reply]:
    """A Result whose body is too large for one message → BodyParts then the Result with the last piece."""
    body = result.body
    if len(body) <= part_bytes:
        return [result]
    cut = len(body) - (len(body) % part_bytes or part_bytes)
    parts: list[Reply] = [BodyPart(body[i : i + part_bytes]) for i in range(0, cut, part_bytes)]
    parts.append(msgspec.structs.replace(result, body=body[cut:]))
    return parts


def _work_queue(name: str, wildcard: str, max_age_s: float) -> StreamConfig:
    """Kept until consumed (work-queue), on disk, deduplicated on Nats-Msg-Id for 10 minutes."""
    return StreamConfig(
        name=name,
        subjects=[wildcard],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=max_age_s,
        duplicate_window=600.0,
    )


def events_stream_config(subjects: Subjects, *, max_age_s: float = 7 * 24 * 3600) -> StreamConfig:
    """Every event, until accounting has stored it."""
    return _work_queue(subjects.events_stream, subjects.events_wildcard, max_age_s)


def hooks_stream_config(subjects: Subjects, *, max_age_s: float = 7 * 24 * 3600) -> StreamConfig:
    """What webhooks and on_event plugins are told (`<p>.hooks.>`), until handled (a redelivered event fans
    out to the same delivery ids, which the duplicate window drops)."""
    return _work_queue(subjects.hooks_stream, subjects.hooks_wildcard, max_age_s)


async def _ensure(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:
        # exists with another config (e.g. a different max_age): keep the operator's version
        log.info("stream %s exists with a different config; leaving it", config.name)


async def ensure_events_stream(js: JetStreamContext, subjects: Subjects) -> None:
    """Create the event stream if missing (idempotent; every service may call it at startup)."""
    await _ensure(js, events_stream_config(subjects))


async def ensure_hooks_stream(js: JetStreamContext, subjects: Subjects) -> None:
    """Create the hooks stream if missing (idempotent; whoever publishes to it calls this at startup)."""
    await _ensure(js, hooks_stream_config(subjects))


async def bind_pull_consumer(
    js: JetStreamContext,
    stream: str,
    durable: str,
    *,
    subject: str | Sequence[str],
    ack_wait: float,
    max_deliver: int,
    max_ack_pending: int,
    inactive_threshold: float | None = None,
) -> JetStreamContext.PullSubscription:
    """The durable pull consumer `durable` of `stream` for `subject` (or several subjects), created or brought up
    to date (its filters too: nats-server ≥ 2.10 changes them in place), bound.

    Acks are explicit, never ALL: another replica may hold earlier messages it has not finished.
    """
    several = not isinstance(subject, str)
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        filter_subject=None if several else str(subject),
        filter_subjects=list(subject) if several else None,
        ack_wait=ack_wait,
        max_deliver=max_deliver,
        max_ack_pending=max_ack_pending,
        inactive_threshold=inactive_threshold,
    )
    try:
        # creates the consumer, or updates the editable fields (ack_wait, max_deliver, …) of an existing one
        await js.add_consumer(stream, config)
    except (BadRequestError, ServerError) as exc:
        # a field that cannot change (deliver or ack policy) differs: nats-server (2.15 here) refuses that
        # with a 500, not a 400; an existing consumer is used as it is, a missing one is a real failure
        try:
            await js.consumer_info(stream, durable)
        except NotFoundError:
            raise exc from None
        log.warning("consumer %s exists with a config that cannot be updated (%s); using it", durable, exc)
    return await js.pull_subscribe_bind(durable=durable, stream=stream)


async def publish_event(
    js: JetStreamContext, subject: str, event: object, event_id: str, *, timeout_s: float = PUBLISH_TIMEOUT_S
) -> None:
    """Publish one event to JetStream with Nats-Msg-Id and wait for the ack (tools and tests; services
    publish through shared/event_publisher.py, which spools while JetStream is away)."""
    await js.publish(subject, encode(event), timeout=timeout_s, headers={MSG_ID: event_id})


class QueueWorker:
    """Serve a queue-group subscription on a raw nats-py connection, each message in its own task.

    The interactive hop uses this instead of a FastStream subscriber: measured here, FastStream's
    per-message pipeline (context, dependency injection, middlewares) added ~0.4-0.9 ms per hop on a
    2-core machine, which is most of the gateway's latency budget. Lifecycle stays with the FastStream app.
    """

    def __init__(
        self,
        subject: str,
        queue: str,
        handler: Callable[[Msg], Awaitable[None]],
        max_concurrency: int,
        on_full: Callable[[Msg], Awaitable[None]] | None = None,
    ) -> None:
        self.subject = subject
        self.queue = queue
        self._handler = handler
        # with `on_full`, a message that finds every slot taken is answered by it at once (e.g. a 503)
        # instead of waiting in an unbounded queue
        self._on_full = on_full
        self.max_concurrency = max_concurrency
        self._slots = asyncio.Semaphore(max_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: Subscription | None = None

    @property
    def in_flight(self) -> int:
        """Messages being handled now (metrics)."""
        return len(self._tasks)

    async def start(self, nc: Client) -> None:
        self._sub = await nc.subscribe(
            self.subject, queue=self.queue, cb=self._on_msg, pending_msgs_limit=1_000_000, pending_bytes_limit=1 << 30
        )

    async def _on_msg(self, msg: Msg) -> None:
        if self._on_full is not None and self._slots.locked():
            await self._on_full(msg)
            return
        await self._slots.acquire()
        task = asyncio.create_task(self._run(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, msg: Msg) -> None:
        try:
            await self._handler(msg)
        except Exception:
            log.exception("handler for %s failed", self.subject)
        finally:
            self._slots.release()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop taking messages, then let in-flight ones finish."""
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


async def answer_pings(nc: Client, subject: str, queue: str) -> Subscription:
    """Reply to readiness probes on `subject` (see Subjects.ping)."""

    async def pong(msg: Msg) -> None:
        if msg.reply:
            await nc.publish(msg.reply, b"ok")

    return await nc.subscribe(subject, queue=queue, cb=pong)
