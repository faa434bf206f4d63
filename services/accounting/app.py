"""accounting: `<p>.events.>` (JetStream, durable pull consumer) → ClickHouse rows, acked after the insert;
`<p>.accounting.sql` (SqlQuery) → SqlResult.

Owns the ClickHouse schema (migrations at startup), prices usage, and answers analytics queries for
the other processes (an embedded chDB path can be opened by one process only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from faststream import FastStream
from faststream.nats import NatsBroker

from services.accounting.consumer import EventConsumer
from services.accounting.core import check_read_only
from services.accounting.settings import AccountingSettings
from services.accounting.sink import ClickHouseSink
from shared.bus import ensure_events_stream
from shared.config import load_config
from shared.schemas.admin import SqlQuery, SqlResult
from shared.subjects import Subjects, encode

log = logging.getLogger("gatehouse.accounting")


def create_app(settings: AccountingSettings) -> FastStream:
    config = load_config(settings.config)
    subjects = Subjects(settings.subject_prefix)
    broker = NatsBroker(settings.nats_servers, log_level=logging.DEBUG, name="gatehouse-accounting")
    sink = ClickHouseSink(settings.accounting_clickhouse_dsn or config.accounting.clickhouse_dsn)
    kinds: dict[str, str] = {name: p.kind for name, p in config.providers.items()}
    state: dict[str, object] = {}
    sql = subjects.accounting_sql

    @broker.subscriber(sql.name, queue=sql.queue)
    async def on_sql(body: bytes) -> bytes:
        try:
            query: SqlQuery = sql.decode(body)
        except Exception:
            return encode(SqlResult(error="malformed query message"))
        refused = check_read_only(query.sql)
        if refused:
            return encode(SqlResult(error=f"query refused: {refused}"))
        try:
            columns, rows = await sink.query(query.sql, query.max_rows)
        except Exception as exc:
            return encode(SqlResult(error=f"query failed: {str(exc).strip().splitlines()[0][:500]}"))
        return encode(SqlResult(columns=columns, rows=rows))

    app = FastStream(broker, logger=log)

    @app.after_startup
    async def _start() -> None:
        applied = await sink.migrate()
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        js = broker.config.connection_state.stream
        await ensure_events_stream(js, subjects)
        consumer = EventConsumer(
            js,
            subjects,
            sink,
            kinds,
            durable=settings.accounting_durable,
            batch_size=config.accounting.batch_size,
            flush_interval_s=config.accounting.flush_interval_s,
            ack_wait_s=settings.accounting_ack_wait_s,
            retry_s=settings.accounting_retry_s,
            retry_max_s=settings.accounting_retry_max_s,
        )
        state["consumer"] = consumer
        state["task"] = asyncio.create_task(consumer.run())
        log.info("storing events from %s into %s", subjects.events_stream, sink.dsn.split("@")[-1])

    @app.on_shutdown
    async def _stop() -> None:
        consumer = state.get("consumer")
        task = state.get("task")
        if isinstance(consumer, EventConsumer) and isinstance(task, asyncio.Task):
            consumer.stop()  # the current batch finishes (insert + ack) before the loop ends
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, timeout=15)

    @app.after_shutdown
    async def _close() -> None:
        await sink.close()

    return app
