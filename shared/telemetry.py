"""A process's telemetry: its Prometheus metrics port, and where its finished spans go.

Spans (shared/tracing.py) are buffered as they end and shipped every `trace_flush_s` (or sooner, once
`MAX_BATCH` are waiting), off the request path:
- to ClickHouse: one SpanBatch on `<p>.telemetry.spans`, in a JetStream stream of their own (capped in bytes
  and age), through an event publisher of their own (its own spool, `<data_dir>/spool/<service>-spans/`,
  with its own cap), so spans never take room from request records; accounting stores them in the `spans`
  table every few seconds (services/accounting/spans.py): one chDB insert costs ~12 ms whatever its size,
  so spans are not inserted with every batch of records;
- over OTLP/HTTP when `otlp_endpoint` is set: converted to OpenTelemetry SDK spans and exported by the
  SDK's BatchSpanProcessor and OTLPSpanExporter (its own thread, its own queue and retries).
A buffer that cannot be shipped fast enough drops spans past `MAX_BUFFER` and counts them
(`gatehouse_spans_dropped_total`); spans are diagnostics, request records are never dropped for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from threading import Thread
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from prometheus_client import start_http_server

from shared import metrics
from shared.event_publisher import EventPublisher
from shared.schemas.events import SpanBatch, SpanRecord
from shared.spool import SpoolConfig
from shared.subjects import Subjects
from shared.tasks import cancel_and_wait
from shared.tracing import TRACER, Span

log = logging.getLogger("gatehouse.telemetry")

FLUSH_S = 1.0
MAX_BATCH = 512
# spans made into records per turn of the event loop while shipping (a few µs each)
SHIP_CHUNK = 64
MAX_BUFFER = 20_000


class TelemetrySettings(Protocol):
    """The settings fields telemetry reads (shared.settings.ServiceSettings, AccountingSettings)."""

    @property
    def metrics_enabled(self) -> bool: ...
    @property
    def metrics_host(self) -> str: ...
    @property
    def metrics_port(self) -> int: ...
    @property
    def tracing_enabled(self) -> bool: ...
    @property
    def trace_sample_ratio(self) -> float: ...
    @property
    def trace_store(self) -> bool: ...
    @property
    def otlp_endpoint(self) -> str: ...
    @property
    def trace_spool_max_bytes(self) -> int: ...
    @property
    def nats_timeout_s(self) -> float: ...
    @property
    def trace_flush_s(self) -> float: ...
    @property
    def data_dir(self) -> str: ...


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    service: str
    metrics: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # 0: no metrics port (ingress serves /metrics on its own port)
    tracing: bool = True
    sample_ratio: float = 1.0
    store_spans: bool = True
    otlp_endpoint: str = ""
    otlp_headers: tuple[tuple[str, str], ...] = ()
    spool_dir: Path = Path(".gatehouse/spool")
    spool_max_bytes: int = 256 << 20
    nats_timeout_s: float = 5.0
    flush_s: float = FLUSH_S

    @classmethod
    def of(cls, settings: TelemetrySettings, service: str, otlp_headers: str = "") -> TelemetryConfig:
        return cls(
            service=service,
            metrics=settings.metrics_enabled,
            metrics_host=settings.metrics_host,
            metrics_port=settings.metrics_port,
            tracing=settings.tracing_enabled,
            sample_ratio=settings.trace_sample_ratio,
            store_spans=settings.trace_store,
            otlp_endpoint=settings.otlp_endpoint,
            otlp_headers=parse_headers(otlp_headers),
            spool_dir=Path(settings.data_dir) / "spool" / f"{service}-spans",
            spool_max_bytes=settings.trace_spool_max_bytes,
            nats_timeout_s=settings.nats_timeout_s,
            flush_s=settings.trace_flush_s,
        )


SPANS_MAX_BYTES = 1 << 30
SPANS_MAX_AGE_S = 24 * 3600.0


def spans_stream_config(subjects: Subjects) -> StreamConfig:
    """Span batches until accounting stored them (work-queue), on disk; past 1 GiB or a day the oldest go."""
    return StreamConfig(
        name=subjects.spans_stream,
        subjects=[subjects.spans.name],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_bytes=SPANS_MAX_BYTES,
        max_age=SPANS_MAX_AGE_S,
        duplicate_window=120.0,
    )


async def ensure_spans_stream(js: JetStreamContext, subjects: Subjects) -> None:
    """Create the spans stream if missing (idempotent; every process that ships spans calls it)."""
    try:
        await js.add_stream(spans_stream_config(subjects))
    except BadRequestError:
        log.info("stream %s exists with a different config; leaving it", subjects.spans_stream)


def parse_headers(text: str) -> tuple[tuple[str, str], ...]:
    """`k=v,k2=v2` (the OTEL_EXPORTER_OTLP_HEADERS form) → pairs; blanks skipped."""
    pairs = []
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if sep and name.strip():
            pairs.append((name.strip(), value.strip()))
    return tuple(pairs)


class Telemetry:
    """Metrics and span export of one process: `serve_metrics()` at startup, `start(nc)` once NATS is
    connected, `stop()` at shutdown (ships what is buffered)."""

    def __init__(self, config: TelemetryConfig, subjects: Subjects) -> None:
        self.config = config
        self._subjects = subjects
        self._subject = subjects.spans
        self._instance = f"{socket.gethostname()}:{os.getpid()}"
        self._buffer: list[Span] = []
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._server: WSGIServer | None = None
        self._thread: Thread | None = None
        self.publisher: EventPublisher | None = None
        self._otlp: OtlpExport | None = None
        metrics.configure(config.service, enabled=config.metrics)

    # ---- metrics --------------------------------------------------------------------------------
    def serve_metrics(self) -> int:
        """Serve /metrics on the metrics port, in a thread (no-op without a port); the port bound."""
        if not self.config.metrics or not self.config.metrics_port:
            return 0
        self._server, self._thread = start_http_server(
            self.config.metrics_port, addr=self.config.metrics_host, registry=metrics.REGISTRY
        )
        port = int(self._server.server_port)
        log.info("metrics on http://%s:%d/metrics", self.config.metrics_host, port)
        return port

    # ---- spans ------------------------------------------------------------------------------------
    async def start(self, nc: Client | None) -> None:
        """Record spans (when tracing is on) and ship them: to ClickHouse through `nc`, and over OTLP."""
        cfg = self.config
        if not cfg.tracing:
            TRACER.configure(None)
            self._run_loop()
            return
        if cfg.store_spans and nc is not None and await self._spans_stream(nc):
            publisher = EventPublisher(
                SpoolConfig(root=cfg.spool_dir, max_bytes=cfg.spool_max_bytes),
                timeout_s=cfg.nats_timeout_s,
                max_in_memory=1_000,  # batches, not spans
            )
            try:
                await publisher.start(nc)
            except OSError as exc:  # e.g. no writable data dir: spans are not worth refusing to serve for
                log.error(
                    "spans will not be stored in ClickHouse: their spool %s cannot be opened (%s)", cfg.spool_dir, exc
                )
            else:
                self.publisher = publisher
                metrics.event_publisher("spans", publisher)
        if cfg.otlp_endpoint:
            self._otlp = OtlpExport(cfg.service, cfg.otlp_endpoint, dict(cfg.otlp_headers))
        if self.publisher is None and self._otlp is None:
            TRACER.configure(None)  # nowhere to send spans: ids still propagate, nothing is recorded
        else:
            TRACER.configure(self._on_end, cfg.sample_ratio)
        self._run_loop()

    async def _spans_stream(self, nc: Client) -> bool:
        """The spans stream exists (made if missing); telemetry never keeps a process from serving."""
        try:
            await ensure_spans_stream(nc.jetstream(timeout=self.config.nats_timeout_s), self._subjects)
        except Exception as exc:  # e.g. a NATS authorization older than the spans subject
            log.error(
                "spans will not be stored in ClickHouse: the stream %s cannot be set up (%r); regenerate the "
                "NATS permissions (gatehouse nats-config)",
                self._subjects.spans_stream,
                exc,
            )
            return False
        return True

    def _run_loop(self) -> None:
        if self.config.metrics or TRACER.enabled:
            self._task = asyncio.create_task(self._ship_forever(), name="telemetry")

    def _on_end(self, span: Span) -> None:
        buffer = self._buffer
        if len(buffer) >= MAX_BUFFER:
            metrics.spans_dropped(1)
            return
        buffer.append(span)
        if len(buffer) >= MAX_BATCH:
            self._full.set()

    async def _ship_forever(self) -> None:
        """Every `flush_s`: fold the metrics' queue, and ship the spans, a chunk per turn of the event loop."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.flush_s):
                    await self._full.wait()
            self._full.clear()
            try:
                metrics.fold()
                while self._buffer:
                    spans, self._buffer = self._buffer[:MAX_BATCH], self._buffer[MAX_BATCH:]
                    batch: list[SpanRecord] = []
                    for at in range(0, len(spans), SHIP_CHUNK):
                        if at:
                            await asyncio.sleep(0)  # let requests through between chunks
                        batch += _records(spans[at : at + SHIP_CHUNK])
                    self._ship(batch)
            except Exception:
                log.exception("shipping spans failed; they are dropped")

    def flush(self) -> None:
        """Hand every buffered span to the exporters now (at shutdown)."""
        metrics.fold()
        while self._buffer:
            spans, self._buffer = self._buffer[:MAX_BATCH], self._buffer[MAX_BATCH:]
            self._ship(_records(spans))

    def _ship(self, batch: list[SpanRecord]) -> None:
        if batch:
            if self.publisher is not None:
                event = SpanBatch(
                    event_id=uuid.uuid4().hex, service=self.config.service, instance=self._instance, spans=batch
                )
                self.publisher.publish(self._subject, event, event.event_id)
            if self._otlp is not None:
                self._otlp.export(batch)

    async def stop(self) -> None:
        TRACER.configure(None)
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        with contextlib.suppress(Exception):
            self.flush()
        if self.publisher is not None:
            await self.publisher.drain(5.0)
        if self._otlp is not None:
            await asyncio.to_thread(self._otlp.shutdown)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _records(spans: list[Span]) -> list[SpanRecord]:
    out: list[SpanRecord] = []
    for span in spans:
        try:
            out.append(span.record())
        except Exception:  # a bug in one span's attributes must not lose the others
            log.exception("span %s could not be recorded", span.name)
    return out


class OtlpExport:
    """Finished spans → OpenTelemetry SDK spans → BatchSpanProcessor → OTLP/HTTP (protobuf)."""

    def __init__(self, service: str, endpoint: str, headers: dict[str, str]) -> None:
        # imported here: a process without an OTLP endpoint never loads protobuf and the exporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        self._resource = Resource.create({"service.name": f"gatehouse-{service}", "service.namespace": "gatehouse"})
        self._processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, headers=headers or None))

    def export(self, spans: list[SpanRecord]) -> None:
        for span in spans:
            self._processor.on_end(sdk_span(span, self._resource))

    def shutdown(self) -> None:
        self._processor.force_flush(5_000)
        self._processor.shutdown()  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated


_KINDS = {
    "server": SpanKind.SERVER,
    "client": SpanKind.CLIENT,
    "consumer": SpanKind.CONSUMER,
    "producer": SpanKind.PRODUCER,
    "internal": SpanKind.INTERNAL,
}
_SCOPE = InstrumentationScope("gatehouse")


def sdk_span(span: SpanRecord, resource: Resource) -> ReadableSpan:
    """The OpenTelemetry SDK's ReadableSpan of a finished span."""
    flags = TraceFlags(TraceFlags.SAMPLED)
    trace_id = int(span.trace_id, 16)
    context = SpanContext(trace_id, int(span.span_id, 16), is_remote=False, trace_flags=flags)
    parent = (
        SpanContext(trace_id, int(span.parent_span_id, 16), is_remote=True, trace_flags=flags)
        if span.parent_span_id
        else None
    )
    status = Status(StatusCode.ERROR, span.status_message) if span.status == "error" else Status(StatusCode.OK)
    attributes: dict[str, str | int | float | bool] = dict(span.attributes)
    if span.request_id:
        attributes["gatehouse.request_id"] = span.request_id
    return ReadableSpan(
        name=span.name,
        context=context,
        parent=parent,
        resource=resource,
        attributes=attributes,
        kind=_KINDS.get(span.kind, SpanKind.INTERNAL),
        status=status,
        start_time=span.start_ns,
        end_time=span.end_ns,
        instrumentation_scope=_SCOPE,
    )
