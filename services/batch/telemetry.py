"""Batch telemetry: a span per item, continuing the trace a producer's item carries in its `traceparent` header
(else starting one), whose context goes with the item to the guard and the router and on its request record
to accounting, so an item's trace and story read like an HTTP request's; the batch metrics; the work queue's
backlog, read every few seconds."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.batch.lifecycle import CANCELLED, EXPIRED
from services.batch.store import consumer_name
from shared import metrics
from shared.bus import TRACEPARENT
from shared.logs import bind_batch, bind_request
from shared.schemas.batch import BatchJob, StoredResult
from shared.subjects import Subjects
from shared.tracing import CONSUMER, CURRENT, TRACER, Attributes, Span, parse_traceparent

log = logging.getLogger("gatehouse.batch.telemetry")
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
# consumers of running jobs read per backlog poll, at most (a poll costs one request per job)
MAX_JOBS_POLLED = 256


def start_item(msg: Msg, job_id: str, item_id: str, request_id: str) -> Span:
    """Open the span of running one item (the task's current span); its lines carry job, item, request and
    trace ids from here on."""
    headers = msg.headers
    span = TRACER.start(
        "batch.item",
        parse_traceparent(headers.get(TRACEPARENT) if headers else None),
        kind=CONSUMER,
        request_id=request_id,
        # without a producer's trace, the item's request id (32 hex digits) is its trace id: every try of it
        # (a lost one, a retry, a redelivery) is in the one trace its record names
        root_trace_id=request_id if _TRACE_ID.fullmatch(request_id) else "",
    )
    CURRENT.set(span)
    bind_request(request_id, span.trace_id)
    bind_batch(job_id, item_id)
    return span


def retried_item(span: Span, why: str) -> None:
    """This try of the item ends without a result (it runs again later): its span ends marked so."""
    if not span.recording:
        return
    span.fail(why)
    span.end(lambda: {"gatehouse.batch.result": "retry"})


def result_of(stored: StoredResult) -> str:
    """completed | failed | cancelled | expired: how an item ended."""
    if stored.ran and stored.status == 200:
        return "completed"
    code = stored.error.code if stored.error is not None else ""
    if not stored.ran and code == CANCELLED.code:
        return "cancelled"
    if not stored.ran and code == EXPIRED.code:
        return "expired"
    return "failed"


def finish_item(span: Span | None, stored: StoredResult) -> None:
    """The item's result is stored: its metrics and the end of its span (which has its model, set when known)."""
    result = result_of(stored)
    code = stored.error.code if stored.error is not None else ""
    metrics.batch_item_finished(result, code)
    if span is None or not span.recording:
        return
    if code:
        span.fail(code)
    span.end(_item_attributes, stored.job_id, stored.item_id or "", stored.status, result, stored.ran)


def _item_attributes(job_id: str, item_id: str, status: int, result: str, ran: bool) -> Attributes:
    out: dict[str, str | int | float | bool] = {
        "gatehouse.batch_id": job_id,
        "gatehouse.batch_item_id": item_id[:200],
        "gatehouse.batch.result": result,
        "gatehouse.batch.dispatched": ran,
    }
    if status:
        out["http.response.status_code"] = status
    return out


async def watch_queue(
    js: JetStreamContext, subjects: Subjects, running: Callable[[], Iterable[BatchJob]], every_s: float
) -> None:
    """Keep the queue's gauges current: items in the work queue, and those of running jobs not delivered
    yet or delivered and not acknowledged."""
    while True:
        try:
            info = await js.stream_info(subjects.batch_items_stream)
            metrics.batch_queue(info.state.messages)
            pending = ack_pending = 0
            for n, job in enumerate(running()):
                if n >= MAX_JOBS_POLLED:
                    break
                try:
                    consumer = await js.consumer_info(subjects.batch_items_stream, consumer_name(job.id))
                except Exception as exc:  # no consumer yet (no replica started the job)
                    log.debug("job %s: no consumer to read (%r)", job.id, exc)
                    continue
                pending += consumer.num_pending or 0
                ack_pending += consumer.num_ack_pending or 0
            metrics.batch_pending(pending, ack_pending)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # NATS away, or the stream not made yet: next time
            log.debug("batch queue backlog not read: %r", exc)
        await asyncio.sleep(every_s)
