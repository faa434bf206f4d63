"""Accounting telemetry: a span per request record stored (joining the request's trace through the
`traceparent` header its event carries), cost counters, batch metrics, and the event stream's backlog."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.accounting.settings import AccountingSettings
from shared import metrics
from shared.bus import TRACEPARENT
from shared.schemas.events import RequestEvent
from shared.subjects import Subjects
from shared.telemetry import Telemetry, TelemetryConfig
from shared.tracing import CONSUMER, TRACER, parse_traceparent

log = logging.getLogger("gatehouse.accounting.telemetry")


def batch_stored(
    size: int, stored: Sequence[tuple[Msg, RequestEvent, object]], started_ns: int, table: str = "requests"
) -> None:
    """A batch of `size` events was handled; `stored`: its request records (message, event, settled cost)
    now in ClickHouse, the batch having been taken in hand at `started_ns`."""
    metrics.accounting_batch(size)
    costs: dict[tuple[str, str, str], float] = {}  # one counter update per label set, not per event
    for _, event, cost in stored if metrics.enabled() else ():
        if event.deployment and isinstance(cost, float) and cost > 0:
            key = (event.requested_model, event.provider, event.deployment)
            costs[key] = costs.get(key, 0.0) + cost
    for (model, provider, deployment), usd in costs.items():
        metrics.cost(model, provider, deployment, usd)
    if not TRACER.enabled:
        return
    for msg, event, _ in stored:
        parent = parse_traceparent(msg.headers.get(TRACEPARENT) if msg.headers else None)
        if parent is None:
            continue  # a record from before tracing (or from a tool): no trace to join
        span = TRACER.start("accounting.store", parent, kind=CONSUMER, request_id=event.request_id, start_ns=started_ns)
        span.end(
            attributes=lambda: {
                "db.system.name": "clickhouse",
                "db.collection.name": table,
                "gatehouse.batch_size": size,
            }
        )


def _store_attributes(table: str, size: int) -> dict[str, str | int]:
    return {"db.system.name": "clickhouse", "db.collection.name": table, "gatehouse.batch_size": size}


async def watch_pending(js: JetStreamContext, stream: str, durable: str, every_s: float) -> None:
    """Keep `gatehouse_accounting_pending_events` up to date: the events JetStream holds for accounting."""
    while True:
        try:
            info = await js.consumer_info(stream, durable)
        except Exception as exc:  # the consumer is not there yet, or NATS is away: try again next time
            log.debug("consumer info of %s failed: %r", durable, exc)
        else:
            metrics.accounting_pending(info.num_pending or 0, info.num_ack_pending or 0)
        await asyncio.sleep(every_s)


def accounting_telemetry(settings: AccountingSettings, subjects: Subjects) -> Telemetry:
    """The process's telemetry, its metrics port serving already."""
    config = TelemetryConfig.of(settings, "accounting", settings.otlp_headers.get_secret_value())
    telemetry = Telemetry(config, subjects)
    telemetry.serve_metrics()
    return telemetry


async def start_telemetry(
    telemetry: Telemetry, settings: AccountingSettings, nc: Client, subjects: Subjects
) -> list[asyncio.Task[None]]:
    """Ship spans through `nc`, and watch the event stream's backlog; the background tasks started."""
    await telemetry.start(nc)
    if not settings.metrics_enabled:
        return []
    watch = watch_pending(nc.jetstream(), subjects.events_stream, settings.durable, settings.metrics_poll_s)
    return [asyncio.create_task(watch, name="accounting-backlog")]
