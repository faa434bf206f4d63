"""Drain the JetStream event stream into ClickHouse in batches; ack only after the insert succeeded."""

from __future__ import annotations

import asyncio
import logging

import msgspec
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.accounting.core import GUARD_COLUMNS, REQUEST_COLUMNS, guard_row, request_row
from services.accounting.sink import ClickHouseSink
from shared.schemas.events import GuardEvent, RequestEvent
from shared.subjects import Subjects

log = logging.getLogger("gatehouse.accounting.consumer")


class EventConsumer:
    """One durable pull consumer shared by every accounting replica (each batch goes to one of them)."""

    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        sink: ClickHouseSink,
        provider_kinds: dict[str, str],
        *,
        durable: str,
        batch_size: int,
        flush_interval_s: float,
        ack_wait_s: float,
        retry_s: float,
        retry_max_s: float,
    ) -> None:
        self._js = js
        self._subjects = subjects
        self._sink = sink
        self._kinds = provider_kinds
        self._durable = durable
        self._batch = batch_size
        self._interval = flush_interval_s
        self._ack_wait = ack_wait_s
        self._retry = (retry_s, retry_max_s)
        self._stopping = asyncio.Event()
        self.stored = 0

    async def run(self) -> None:
        config = ConsumerConfig(
            durable_name=self._durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._ack_wait,
            # never give up on an event: while ClickHouse is down, events wait in the stream
            max_deliver=-1,
            max_ack_pending=max(self._batch * 4, 10_000),
        )
        psub = await self._js.pull_subscribe(
            self._subjects.events_wildcard, durable=self._durable, stream=self._subjects.events_stream, config=config
        )
        delay = self._retry[0]
        while not self._stopping.is_set():
            try:
                msgs = await self._collect(psub)
            except Exception as exc:  # connection trouble: the client reconnects; try again shortly
                log.warning("fetch failed: %r", exc)
                await asyncio.sleep(delay)
                continue
            if not msgs:
                continue
            try:
                await self._store(msgs)
            except Exception as exc:
                log.error("insert of %d events failed, will retry in %.1fs: %r", len(msgs), delay, exc)
                for m in msgs:
                    await m.nak(delay=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry[1])
                continue
            delay = self._retry[0]
            for m in msgs:
                await m.ack()

    async def _collect(self, psub: JetStreamContext.PullSubscription) -> list[Msg]:
        """One batch: up to batch_size events, or what arrived within flush_interval of the first one.

        A pull returns as soon as any message is there, so batches are gathered over several pulls;
        each ClickHouse insert has a fixed cost, and one insert per event would cost a core at low rates.
        """
        batch: list[Msg] = []
        loop = asyncio.get_running_loop()
        deadline = 0.0
        while len(batch) < self._batch and not self._stopping.is_set():
            wait = self._interval if not batch else deadline - loop.time()
            if batch and wait <= 0:
                break
            try:
                got = await psub.fetch(self._batch - len(batch), timeout=max(wait, 0.01))
            except (TimeoutError, NatsTimeoutError):
                if batch:
                    break
                continue
            if not batch:
                deadline = loop.time() + self._interval
            batch.extend(got)
        return batch

    async def _store(self, msgs: list[Msg]) -> None:
        requests: list[list[object]] = []
        verdicts: list[list[object]] = []
        req_subject = self._subjects.events_request
        guard_subject = self._subjects.events_guard
        for m in msgs:
            try:
                if m.subject == req_subject.name:
                    event: RequestEvent = req_subject.decode(m.data)
                    requests.append(request_row(event, self._kinds.get(event.provider, "")))
                elif m.subject == guard_subject.name:
                    verdict: GuardEvent = guard_subject.decode(m.data)
                    verdicts.append(guard_row(verdict))
                else:
                    log.warning("event on unknown subject %s dropped", m.subject)
                    await m.term()
            except msgspec.DecodeError as exc:
                # a malformed event can never be stored; terminate it instead of retrying forever
                log.error("undecodable event on %s dropped: %s", m.subject, exc)
                await m.term()
        redelivered = any(m.metadata.num_delivered > 1 for m in msgs)
        self.stored += await self._sink.insert_new("requests", REQUEST_COLUMNS, requests, redelivered=redelivered)
        self.stored += await self._sink.insert_new("guard_verdicts", GUARD_COLUMNS, verdicts, redelivered=redelivered)

    def stop(self) -> None:
        self._stopping.set()
