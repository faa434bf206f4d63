"""Store span batches (`<p>.telemetry.spans`, their own JetStream stream) in the `spans` table, one insert
every `flush_s`, acked after it.

Apart from the request records' consumer on purpose: a chDB insert costs ~12 ms whatever its size, so
inserting spans with every batch of records would double the inserts (measured here: +0.2 ms p50 on the
request path of a busy 2-core machine); every few seconds it costs one. Rows go to ClickHouse as JSON that
it parses itself (msgspec encodes them in ~1 µs each; the driver's per-value encoding cost ~20). Spans are
diagnostics: a batch that can never be stored is dropped, and one whose insert fails is handed back and
tried again a few times. A span stored twice (accounting died between insert and ack) collapses on
(trace_id, span_id) in the ReplacingMergeTree: rows are not looked up before the insert, as records are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import msgspec
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext

from services.accounting.sink import ClickHouseSink
from shared import metrics
from shared.bus import bind_pull_consumer
from shared.schemas.events import SpanBatch
from shared.subjects import Subjects
from shared.telemetry import ensure_spans_stream

log = logging.getLogger("gatehouse.accounting.spans")

SPANS = "spans"
SPAN_COLUMNS = (
    "trace_id", "span_id", "parent_span_id", "name", "kind", "service", "instance", "start_time", "end_time",
    "duration_ms", "status", "status_message", "request_id", "attributes", "batch_id",
)  # fmt: skip
_JSON = msgspec.json.Encoder()
# span batches taken per insert (a batch holds up to 512 spans)
MAX_MESSAGES = 1000
MAX_DELIVER = 5


class SpanStore:
    """Drains the spans stream into ClickHouse until `stop()`."""

    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        sink: ClickHouseSink,
        *,
        durable: str = "accounting-spans",
        flush_s: float = 5.0,
        ready: asyncio.Event | None = None,
    ) -> None:
        self._js = js
        self._subjects = subjects
        self._sink = sink
        self._durable = durable
        self._flush_s = flush_s
        self._schema_ready = ready  # the spans table exists once the record consumer migrated the schema
        self._stopping = asyncio.Event()
        self.stored = 0
        self.failed_inserts = 0

    def stop(self) -> None:
        self._stopping.set()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        await ensure_spans_stream(self._js, self._subjects)
        stream = self._subjects.spans_stream
        return await bind_pull_consumer(
            self._js,
            stream,
            self._durable,
            subject=self._subjects.spans.name,
            ack_wait=max(60.0, self._flush_s * 4),
            max_deliver=MAX_DELIVER,
            max_ack_pending=MAX_MESSAGES * 4,
        )

    async def run(self) -> None:
        if self._schema_ready is not None:
            await self._schema_ready.wait()
        psub: JetStreamContext.PullSubscription | None = None
        while psub is None and not self._stopping.is_set():
            try:
                psub = await self._subscribe()
            except Exception as exc:
                log.warning("cannot attach to %s (%s); retrying", self._subjects.spans_stream, exc)
                await self._pause(self._flush_s)
        while psub is not None and not self._stopping.is_set():
            await self._pause(self._flush_s)
            try:
                msgs = await self._collect(psub)
                if msgs:
                    await self._store(msgs)
            except Exception:  # never end the loop: what was not acked comes back
                log.exception("storing spans failed; they will be redelivered")
        if psub is not None:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def _collect(self, psub: JetStreamContext.PullSubscription) -> list[Msg]:
        msgs: list[Msg] = []
        while len(msgs) < MAX_MESSAGES:
            want = MAX_MESSAGES - len(msgs)
            try:
                got = await psub.fetch(want, timeout=0.2)
            except (TimeoutError, NatsTimeoutError):
                break
            msgs += got
            if len(got) < want:
                break
        return msgs

    def _encode(self, msgs: list[Msg]) -> tuple[bytes, int, list[Msg], list[tuple[Msg, str]]]:
        """The JSON of every span of `msgs`, how many, the messages it holds, and those that can never be
        stored (runs in a worker thread)."""
        rows: list[dict[str, object]] = []
        good: list[Msg] = []
        bad: list[tuple[Msg, str]] = []
        for msg in msgs:
            try:
                rows += span_rows(self._subjects.spans.decode(msg.data))
            except (msgspec.MsgspecError, ValueError, TypeError, OverflowError) as exc:
                bad.append((msg, str(exc)))
                continue
            good.append(msg)
        return (_JSON.encode(rows) if rows else b""), len(rows), good, bad

    async def _store(self, msgs: list[Msg]) -> None:
        body, count, good, bad = await asyncio.to_thread(self._encode, msgs)
        for msg, reason in bad:
            log.error("dropping a span batch that cannot be stored: %s", reason)
            await msg.term()
        if count:
            started = time.perf_counter()
            try:
                await self._sink.insert_json(SPANS, SPAN_COLUMNS, body)
            except Exception as exc:
                self.failed_inserts += 1
                log.warning("inserting %d spans failed (%s); handing them back", count, exc)
                for msg in good:
                    await msg.nak(delay=self._flush_s)
                return
            metrics.accounting_insert({SPANS: count}, time.perf_counter() - started)
            self.stored += count
        for msg in good:
            await msg.ack()


def _time(unix_ns: int) -> str:
    """`<seconds>.<nanoseconds>`, which ClickHouse reads into a DateTime64 exactly."""
    return f"{unix_ns // 1_000_000_000}.{unix_ns % 1_000_000_000:09d}"


def span_rows(batch: SpanBatch) -> list[dict[str, object]]:
    """The `spans` rows of one batch, as JSON objects keyed by column (attribute values become strings in
    the Map column: numbers as written, booleans as true/false)."""
    return [
        {
            "trace_id": s.trace_id,
            "span_id": s.span_id,
            "parent_span_id": s.parent_span_id,
            "name": s.name,
            "kind": s.kind,
            "service": batch.service,
            "instance": batch.instance,
            "start_time": _time(s.start_ns),
            "end_time": _time(s.end_ns),
            "duration_ms": max(s.end_ns - s.start_ns, 0) / 1e6,
            "status": s.status,
            "status_message": s.status_message,
            "request_id": s.request_id,
            "attributes": s.attributes,
            "batch_id": batch.event_id,
        }
        for s in batch.spans
    ]
