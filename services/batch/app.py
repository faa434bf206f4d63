"""batch: `<p>.batch.items.<job>` and `<p>.batch.items.<team|key>.<id>.<job>` (JetStream work queue, a pull consumer
per job; a namespace's items run only in its own jobs) → `<p>.guard.chat` with reply
inbox `<p>.binbox.<id>.<attempt>` (the guard sends batch items to `<p>.router.batch`) → the result stored in
`<p>.batch.results.<job>.<item>` → the item acked; one RequestEvent per item → `<p>.events.request`, job
progress → `<p>.events.batch`; `<p>.batch.api` (JSON, queue group `batch`) → BatchReply.

Runs batch jobs through the same path and governance as interactive requests: the key's models, usage
policy and quotas per item, the guard, the router (at lower priority), a record per item; the job's
worst case reserved on the key's budgets when it is created.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from faststream import FastStream
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.batch.api import BatchApi
from services.batch.claims import Claims
from services.batch.jobs import JobControl
from services.batch.lifecycle import ACTIVE
from services.batch.pipeline import Pipeline
from services.batch.reserve import Reserver
from services.batch.runner import Runner
from services.batch.settings import BatchSettings
from services.batch.store import ItemQueue, JobStore, QueueLimits, Results
from services.batch.telemetry import watch_queue
from services.batch.worker import Env, ItemWorker
from shared import metrics
from shared.admission import Governor
from shared.auth import Authenticator
from shared.bus import QueueWorker, answer_pings, ensure_events_stream
from shared.config import GatehouseConfig, load_config
from shared.counters import Counters, ensure_counter_streams
from shared.directory import Directory
from shared.files import FileStore
from shared.keystore import KeyStore
from shared.natsconn import nats_broker
from shared.pricing import Rates
from shared.route_pricing import pricing_index
from shared.schemas.batch import BatchJob
from shared.subjects import Subjects
from shared.tasks import cancel_all_and_wait
from shared.telemetry import Telemetry, TelemetryConfig

log = logging.getLogger("gatehouse.batch")
API_CONCURRENCY = 16
DIRECTORY_SYNC_S = 10.0
RESULT_ENVELOPE_BYTES = 64 * 1024


def negotiated_rates(config: GatehouseConfig) -> dict[str, Rates]:
    """Deployment id → its negotiated price (as accounting prices it)."""
    return {
        dep.id: Rates(
            input=dep.price.input_per_mtok,
            output=dep.price.output_per_mtok,
            cached_input=dep.price.cached_input_per_mtok,
            cache_write=dep.price.cache_write_per_mtok,
            name=dep.id,
        )
        for model in config.models
        for dep in model.deployments
        if dep.price is not None
    }


class BatchService:
    """The pieces of one batch replica, started once connected and stopped in order."""

    def __init__(
        self, settings: BatchSettings, config: GatehouseConfig, subjects: Subjects, telemetry: Telemetry | None = None
    ) -> None:
        self.settings = settings
        self.config = config
        self.subjects = subjects
        self.telemetry = telemetry
        self.directory = Directory.with_static(config.key_hashes())
        self._tasks: list[asyncio.Task[None]] = []
        self._stops: list[Callable[[], Awaitable[None]]] = []

    async def start(self, nc: Client, js: JetStreamContext) -> None:
        settings, config, subjects = self.settings, self.config, self.subjects
        if self.telemetry is not None:
            await self.telemetry.start(nc)
        await ensure_events_stream(js, subjects)
        await ensure_counter_streams(nc, subjects)
        keystore = KeyStore(js, subjects.directory_bucket, self.directory)
        keystore.start()
        retention = config.batch.retention_days * 86400
        jobs = JobStore(js, subjects, retention)
        limits = QueueLimits(
            settings.batch_queue_max_bytes, settings.batch_queue_max_items, settings.batch_queue_max_items_per_job
        )
        queue = ItemQueue(js, subjects, retention, settings.nats_timeout_s, limits)
        results = Results(js, subjects, retention, settings.nats_timeout_s)
        files = FileStore(js, subjects.files_bucket, retention)
        # a claim lives as long as an unacknowledged message does, and is renewed with its keepalives
        claims = Claims(js, subjects.batch_claims_bucket, settings.batch_ack_wait_s, settings.nats_timeout_s)
        await claims.ensure()
        await queue.ensure()
        await results.ensure()
        await jobs.kv()
        await files.store()
        counters = Counters(nc, settings.nats_timeout_s)
        pipeline = Pipeline(
            subjects,
            first_timeout_s=config.server.first_reply_timeout_s,
            silence_s=config.server.heartbeat_timeout_s,
            total_timeout_s=config.server.request_timeout_s,
        )
        await pipeline.start(nc)
        self.worker = ItemWorker(self._env(nc, js, counters, results, jobs, pipeline, claims))
        control = JobControl(self.worker, queue, files, Reserver(counters, subjects))
        runner = Runner(
            jobs,
            queue,
            self.worker,
            max_inflight=settings.batch_max_inflight,
            key_concurrency=config.batch.key_concurrency,
            ack_wait_s=settings.batch_ack_wait_s,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(keystore.synced.wait(), DIRECTORY_SYNC_S)
        jobs.listen(runner.ensure)
        jobs.listen(self.worker.on_job)  # a cancel withdraws the job's items waiting in the router
        jobs.start()
        api = BatchApi(control, Authenticator(self.directory), subjects.batch_api, nc.max_payload // 2)

        async def on_call(msg: Msg) -> None:
            reply = await api.answer(msg.data)
            if msg.reply:
                await nc.publish(msg.reply, reply)

        calls = QueueWorker(subjects.batch_api.name, subjects.batch_api.queue, on_call, API_CONCURRENCY)
        await calls.start(nc)
        self._tasks.append(asyncio.create_task(self._sweep_forever(control, runner), name="batch-sweep"))
        self._metrics(js, jobs, runner)
        await answer_pings(nc, subjects.ping("batch"), subjects.batch_api.queue)
        # stopped in this order: no new calls, no new items (those in hand finish), then the rest
        self._stops = [calls.stop, runner.stop, control.stop, pipeline.stop, jobs.stop, keystore.stop]
        log.info("batch service ready (replica %s)", settings.replica)

    def _metrics(self, js: JetStreamContext, jobs: JobStore, runner: Runner) -> None:
        """The batch gauges read at scrape time, and the work queue's backlog polled."""
        if not self.settings.metrics_enabled:
            return
        metrics.in_flight(lambda: runner.inflight)
        metrics.batch_jobs(lambda: [job.status for job, _ in list(jobs.jobs.values()) if job.status in ACTIVE])

        def running() -> list[BatchJob]:
            return [job for job, _ in list(jobs.jobs.values()) if job.status in ("in_progress", "cancelling")]

        poll = watch_queue(js, self.subjects, running, self.settings.batch_metrics_poll_s)
        self._tasks.append(asyncio.create_task(poll, name="batch-queue-metrics"))

    def _env(
        self,
        nc: Client,
        js: JetStreamContext,
        counters: Counters,
        results: Results,
        jobs: JobStore,
        pipeline: Pipeline,
        claims: Claims,
    ) -> Env:
        config = self.config
        gov = config.governance
        return Env(
            nc=nc,
            js=js,
            subjects=self.subjects,
            config=config,
            directory=self.directory,
            governor=Governor(
                counters,
                self.subjects,
                quotas_fail_open=gov.quotas_when_unavailable == "open",
                reservation_grace_s=gov.reservation_grace_s,
                leases=gov.leases,  # items count against requests per minute only (budgets=False)
            ),
            counters=counters,
            results=results,
            jobs=jobs,
            pipeline=pipeline,
            claims=claims,
            pricing=pricing_index(config),
            models=config.model_index(),
            rates=negotiated_rates(config),
            timeout_s=self.settings.nats_timeout_s,
            max_item_bytes=config.batch.max_item_bytes or config.server.max_body_bytes,
            max_result_bytes=max_result_bytes(nc.max_payload),
            replica=self.settings.replica,
        )

    async def _sweep_forever(self, control: JobControl, runner: Runner) -> None:
        while True:
            try:
                await control.sweep(runner.ensure, self.settings.batch_progress_every_s)
            except Exception:
                log.exception("sweep failed")
            await asyncio.sleep(self.settings.batch_sweep_every_s)

    async def stop(self) -> None:
        # the sweep and the queue watch make NATS requests: a single cancel() can be swallowed (shared.tasks)
        await cancel_all_and_wait(self._tasks)
        for stop in self._stops:
            try:
                await stop()
            except Exception:
                log.exception("stopping failed")
        if self.telemetry is not None:
            await self.telemetry.stop()


def max_result_bytes(max_payload: int) -> int:
    """The largest response body an item's result holds: a results page of one line, and a result notice,
    must fit in one NATS message (half of max_payload, as the API's replies, less room for the envelope)."""
    return max(max_payload // 2 - RESULT_ENVELOPE_BYTES, 4096)


def create_app(settings: BatchSettings) -> FastStream:
    config = load_config(settings.config)
    subjects = Subjects(settings.subject_prefix)
    broker = nats_broker(settings.nats_link("batch"))
    telemetry = Telemetry(TelemetryConfig.of(settings, "batch", settings.otlp_headers.get_secret_value()), subjects)
    telemetry.serve_metrics()
    service = BatchService(settings, config, subjects, telemetry)
    app = FastStream(broker, logger=log)

    @app.after_startup
    async def _start() -> None:
        await service.start(broker.connection, broker.config.connection_state.stream)

    @app.on_shutdown
    async def _stop() -> None:
        await service.stop()

    app.state = service  # type: ignore[attr-defined]  # for tests
    return app
