"""accounting: `<p>.events.>` (JetStream, one durable pull consumer) → ClickHouse rows, acked after the insert;
`<p>.accounting.sql` (SqlQuery, queue group `accounting`) → SqlResult; `.usage` and `.requests` (fixed queries
for the admin API) → SqlResult; `.request` (one request's story) → RequestStory; `.reprice` → RepriceResult.
`<p>.hooks.event.>` and `<p>.hooks.delivery` (JetStream, two durable pull consumers) → webhook POSTs and on_event
plugin hooks → `<p>.events.webhook` (each delivery's end, stored in `webhook_deliveries`); see webhooks.py.

Owns the ClickHouse schema (migrations at startup), prices usage, and answers analytics queries for the
other processes (an embedded chDB path can be opened by one process only): parsed by ClickHouse, judged by
`sqlpolicy`, run on a read-only connection with time, row, byte and memory limits (`analytics`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import msgspec
from faststream import FastStream
from faststream.nats import NatsBroker

from services.accounting import migrations
from services.accounting.analytics import QueryLimits
from services.accounting.answers import answer, reprice_answer, requests_answer, story_answer
from services.accounting.consumer import EventConsumer
from services.accounting.settings import AccountingSettings
from services.accounting.settlement import Reservations
from services.accounting.sink import ClickHouseSink, redact_dsn
from services.accounting.spans import SpanStore
from services.accounting.telemetry import accounting_telemetry, start_telemetry
from services.accounting.usage import BadUsageQuery, usage_sql
from services.accounting.webhooks import WebhookDispatcher
from shared.bus import ensure_events_stream
from shared.config import GatehouseConfig, PriceConfig, load_config
from shared.counters import Counters, ensure_counter_streams
from shared.natsconn import nats_broker
from shared.plugins import EVENT_POINTS, build_runner
from shared.pricing import Rates
from shared.schemas.admin import SqlQuery, SqlResult
from shared.subjects import Subjects
from shared.tasks import cancel_all_and_wait, cancel_and_wait

log = logging.getLogger("gatehouse.accounting")


def register_queries(
    broker: NatsBroker,
    subjects: Subjects,
    sink: ClickHouseSink,
    settings: AccountingSettings,
    rates: dict[str, Rates],
    kinds: Mapping[str, str],
) -> None:
    """The read side: raw SQL, usage, the request explorer, one request's story and repricing."""
    sql = subjects.accounting_sql

    @broker.subscriber(sql.name, queue=sql.queue)
    async def on_sql(body: bytes) -> bytes:
        return sql.encode_reply(await answer(sink, sql, body, max_reply_bytes=settings.query_max_reply_bytes))

    usage = subjects.accounting_usage

    @broker.subscriber(usage.name, queue=usage.queue)
    async def on_usage(body: bytes) -> bytes:
        try:
            text = usage_sql(usage.decode(body), time.time())
        except (BadUsageQuery, msgspec.MsgspecError) as exc:
            return usage.encode_reply(SqlResult(error=f"bad usage query: {exc}"))
        return usage.encode_reply(
            await answer(sink, sql, sql.encode(SqlQuery(sql=text)), max_reply_bytes=settings.query_max_reply_bytes)
        )

    explore, lookup, repricing = subjects.accounting_requests, subjects.accounting_request, subjects.accounting_reprice
    reply_bytes = settings.query_max_reply_bytes

    @broker.subscriber(explore.name, queue=explore.queue)
    async def on_requests(body: bytes) -> bytes:
        return explore.encode_reply(await requests_answer(sink, sql, explore, body, reply_bytes))

    @broker.subscriber(lookup.name, queue=lookup.queue)
    async def on_request(body: bytes) -> bytes:
        return lookup.encode_reply(await story_answer(sink, lookup, body, reply_bytes))

    @broker.subscriber(repricing.name, queue=repricing.queue)
    async def on_reprice(body: bytes) -> bytes:
        return repricing.encode_reply(await reprice_answer(sink, repricing, body, rates, kinds))


def create_app(settings: AccountingSettings) -> FastStream:
    config = load_config(settings.config)
    schema = migrations.load(Path(settings.migrations_dir) if settings.migrations_dir else migrations.MIGRATIONS_DIR)
    subjects = Subjects(settings.subject_prefix)
    # log_level is the level FastStream logs each message at: DEBUG keeps them out of an INFO log
    broker = nats_broker(settings.nats_link())
    limits = QueryLimits(
        timeout_s=settings.query_timeout_s,
        max_rows=settings.query_max_rows,
        max_result_bytes=settings.query_max_result_bytes,
        max_memory_bytes=settings.query_max_memory_bytes,
    )
    sink = ClickHouseSink(
        settings.clickhouse_dsn or config.accounting.clickhouse_dsn,
        query_dsn=settings.query_dsn.get_secret_value() if settings.query_dsn else None,
        limits=limits,
        readable=migrations.tables(schema),
    )
    kinds = {name: p.kind for name, p in config.providers.items()}
    rates = negotiated_rates(config)
    running: list[tuple[EventConsumer | SpanStore | WebhookDispatcher, asyncio.Task[None]]] = []
    # on_event plugins run in the webhook dispatcher, on the records this process stored (shared/plugins.py)
    event_hooks = build_runner(config.plugins, EVENT_POINTS)
    ledger: list[Reservations] = []
    background: list[asyncio.Task[None]] = []
    register_queries(broker, subjects, sink, settings, rates, kinds)

    app = FastStream(broker, logger=log)
    telemetry = accounting_telemetry(settings, subjects)

    @app.after_startup
    async def _start() -> None:
        state = broker.config.connection_state
        await ensure_events_stream(state.stream, subjects)
        background.extend(await start_telemetry(telemetry, settings, state.connection, subjects))
        await ensure_counter_streams(state.connection, subjects)
        reservations = Reservations(
            state.connection,
            state.stream,
            subjects,
            Counters(state.connection, settings.nats_timeout_s),
            webhook_url=config.governance.alert_webhook_url,
            timeout_s=settings.nats_timeout_s,
            tell_webhooks=any("budget_alert" in w.events for w in config.webhooks),
        )
        await reservations.start()
        ledger.append(reservations)
        background.append(asyncio.create_task(reservations.reap_forever(), name="accounting-reaper"))
        consumer = EventConsumer(
            state.connection,
            state.stream,
            subjects,
            sink,
            schema,
            kinds,
            durable=settings.durable,
            batch_size=config.accounting.batch_size,
            flush_interval_s=config.accounting.flush_interval_s,
            ack_wait_s=settings.ack_wait_s,
            max_deliver=settings.max_deliver,
            retry_s=settings.retry_s,
            retry_max_s=settings.retry_max_s,
            rates=rates,
            reservations=reservations,
            crash_after_settle_file=settings.crash_after_settle_file,
            forward_requests=event_hooks.has("on_event"),
        )
        running.append((consumer, asyncio.create_task(consumer.run(), name="accounting-consumer")))
        dispatcher = WebhookDispatcher(
            state.stream, subjects, config.webhooks, event_hooks=event_hooks, kinds=kinds, rates=rates
        )
        if dispatcher.wanted:
            running.append((dispatcher, asyncio.create_task(dispatcher.run(), name="accounting-webhooks")))
        spans = SpanStore(state.stream, subjects, sink, flush_s=settings.spans_flush_s, ready=consumer.ready)
        running.append((spans, asyncio.create_task(spans.run(), name="accounting-spans")))
        log.info("accounting writes to %s", redact_dsn(sink.dsn))
        if sink.query_dsn:
            log.info("analytics queries run as %s", redact_dsn(sink.query_dsn))
        elif not sink.embedded:
            log.warning(
                "analytics queries run as the write identity (readonly=2 per query): set "
                "GATEHOUSE_ACCOUNTING_QUERY_DSN to a gatehouse_reader DSN (deploy/clickhouse/users.d)"
            )

    @app.on_shutdown
    async def _stop() -> None:
        # the reaper and the backlog watch make NATS requests: a single cancel() can be swallowed (shared.tasks)
        await cancel_all_and_wait(background, timeout=settings.shutdown_timeout_s)
        for consumer, task in running:
            consumer.stop()  # the batch in hand is stored and acked (or handed back) first
            done, _ = await asyncio.wait({task}, timeout=settings.shutdown_timeout_s)
            if not done:
                log.warning("the in-flight batch did not finish in time; it will be redelivered")
                await cancel_and_wait(task)
        await telemetry.stop()  # the spans of the last batch go out before the connection closes

    @app.after_shutdown
    async def _close() -> None:
        for reservations in ledger:
            await reservations.stop()
        await sink.close()

    return app


def negotiated_rates(config: GatehouseConfig) -> dict[str, Rates]:
    """Deployment id → its negotiated price: `deployments[].price`, else the model's `models[].price`.

    The rates are part of the price version (`config: openai/gpt-4o in 2.5 cached 1.25 out 10 per Mtok`), so a
    row says which price it was charged at, and a changed rate is a changed version."""
    out: dict[str, Rates] = {}
    for model in config.models:
        for dep in model.deployments:
            price = dep.price or model.price
            if price is not None:
                out[dep.id] = Rates(
                    input=price.input_per_mtok,
                    output=price.output_per_mtok,
                    cached_input=price.cached_input_per_mtok,
                    cache_write=price.cache_write_per_mtok,
                    name=f"{dep.id} {rates_label(price)}",
                )
    return out


def rates_label(price: PriceConfig) -> str:
    parts = [f"in {price.input_per_mtok:g}"]
    if price.cached_input_per_mtok is not None:
        parts.append(f"cached {price.cached_input_per_mtok:g}")
    if price.cache_write_per_mtok is not None:
        parts.append(f"cache write {price.cache_write_per_mtok:g}")
    parts.append(f"out {price.output_per_mtok:g}")
    return " ".join(parts) + " per Mtok"
