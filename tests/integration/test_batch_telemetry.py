"""Telemetry of the batch service: each item is a span (continuing a producer's `traceparent`) whose context
reaches the guard and the router with the item and accounting with its record, whose record carries the
trace id; its log lines carry job, item, request and trace ids and never the prompt or key; its metrics move
with the items and parse with the Prometheus text parser."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gatehouse.natsserver import NatsServer
from services.batch.plan import item_token
from shared import metrics
from shared.bus import TRACEPARENT
from shared.logs import JsonFormatter
from shared.schemas.batch import BatchItem, CreateJob
from shared.subjects import Subjects
from shared.tracing import TRACER, Span, new_span_id, new_trace_id, parse_traceparent
from tests.integration.batch_support import KEY, harness

pytestmark = pytest.mark.timeout(120)
CANARY = "batch-telemetry-canary-7f3a"


@pytest.fixture
def spans() -> Iterator[list[Span]]:
    ended: list[Span] = []
    metrics.configure("batch", enabled=True)
    TRACER.configure(ended.append)
    yield ended
    TRACER.configure(None)
    metrics.CALLBACKS.clear()
    metrics.configure("", enabled=False)


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("batch"))
    logger = logging.getLogger("gatehouse")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield out
    logger.removeHandler(handler)
    logger.setLevel(old)


def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.REGISTRY).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


async def test_an_items_trace_reaches_the_pipeline_and_its_record(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path, spans: list[Span], log_lines: io.StringIO
) -> None:
    async with harness(nats_server.url, subjects, tmp_path) as h:
        await h.start_service()
        job = await h.client.create(CreateJob(key=KEY, model="mock-1", items=3, input_tokens=30))
        trace, parent = new_trace_id(), new_span_id()
        body = json.dumps({"model": "mock-1", "messages": [{"role": "user", "content": CANARY}]}).encode()
        # the producer's trace goes on in item "traced"; item "lost" loses its first try (a log line of its own)
        h.stages.drop_first = {item_token(job.id, "lost")}
        subject = subjects.batch_items(job.id)
        token = h.client.item_tokens[job.id]
        traced = BatchItem(job_id=job.id, item_id="traced", body=msgspec.Raw(body), token=token)
        await h.js.publish(
            subject.name,
            subject.encode(traced),
            headers={"Nats-Msg-Id": f"{job.id}/traced", TRACEPARENT: f"00-{trace}-{parent}-01"},
        )
        await h.client.publish([BatchItem(job_id=job.id, item_id=i, body=msgspec.Raw(body)) for i in ("plain", "lost")])
        done = await h.wait(job.id)
        assert done.request_counts.completed == 3

        tries = [s for s in spans if s.name == "batch.item"]
        items = {s.request_id: s for s in tries if s.status != "error"}
        # the lost try is a span too, in the same trace as the try that completed
        lost_tries = [s for s in tries if s.request_id == item_token(job.id, "lost")]
        assert len(lost_tries) == 2 and len({s.trace_id for s in lost_tries}) == 1
        assert set(items) == {item_token(job.id, i) for i in ("traced", "plain", "lost")}
        mine = items[item_token(job.id, "traced")]
        assert mine.trace_id == trace and mine.parent_id == parent
        record = mine.record()
        assert record.attributes["gatehouse.batch_id"] == job.id
        assert record.attributes["gatehouse.batch_item_id"] == "traced"
        assert record.attributes["gatehouse.batch.result"] == "completed"
        assert record.attributes["gen_ai.request.model"] == "mock-1"  # set when the body was read
        # the item went to the guard with its span as the parent, and its record carries its trace id
        sent = parse_traceparent(h.stages.headers[item_token(job.id, "traced")].get(TRACEPARENT))
        assert sent is not None and (sent.trace_id, sent.span_id) == (trace, mine.span_id)
        records = {r.request_id: r for r in await h.records(job.id)}
        assert records[item_token(job.id, "traced")].trace_id == trace
        assert {rid: records[rid].trace_id for rid in items} == {rid: span.trace_id for rid, span in items.items()}
        # ... and reaches accounting's span through the record's header
        info = await h.js.stream_info(subjects.events_stream)
        headers = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await h.js.get_msg(subjects.events_stream, seq)
            if (
                msg.subject == subjects.events_request.name
                and (msg.headers or {}).get("Nats-Msg-Id") == mine.request_id
            ):
                headers.append(msg.headers or {})
        assert headers and parse_traceparent(headers[0].get(TRACEPARENT)) == mine.context

        lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
        lost = [line for line in lines if line.get("item_id") == "lost"]
        assert lost, lines
        span = items[item_token(job.id, "lost")]
        assert all(
            (line["job_id"], line["request_id"], line["trace_id"]) == (job.id, span.request_id, span.trace_id)
            for line in lost
        )
        text = log_lines.getvalue() + json.dumps([s.record().attributes for s in spans])
        assert CANARY not in text and KEY not in text and token not in text


async def test_batch_metrics_move_with_items_and_parse(
    nats_server: NatsServer, subjects: Subjects, tmp_path: Path, spans: list[Span]
) -> None:
    async with harness(nats_server.url, subjects, tmp_path) as h:
        before = scrape()
        service = await h.start_service()
        job = await h.client.submit(
            [{"messages": [{"role": "user", "content": f"n {i}"}]} for i in range(5)], key=KEY, model="mock-1"
        )
        await h.wait(job.id)
        cancelled = await h.client.create(CreateJob(key=KEY, model="mock-1", items=1, input_tokens=5))
        await h.client.cancel(KEY, cancelled.id)
        await h.client.publish(
            [BatchItem(job_id=cancelled.id, item_id="late", body=msgspec.Raw(b'{"model":"mock-1","messages":[]}'))]
        )
        await h.wait(cancelled.id)
        forged = subjects.batch_items(job.id)
        await h.js.publish(forged.name, forged.encode(BatchItem(job_id=job.id, item_id="x", body=msgspec.Raw(b"{}"))))
        after = scrape()
        moved = {
            labels: total(after, "gatehouse_batch_items_total", result=labels)
            - total(before, "gatehouse_batch_items_total", result=labels)
            for labels in ("completed", "cancelled")
        }
        assert moved == {"completed": 5, "cancelled": 1}
        assert (
            total(after, "gatehouse_batch_dispatched_total", model="mock-1")
            - total(before, "gatehouse_batch_dispatched_total", model="mock-1")
            == 5
        )
        assert total(after, "gatehouse_batch_dispatch_duration_seconds_count", model="mock-1") >= 5
        assert total(after, "gatehouse_requests_total", service="batch", model="mock-1", status="200") >= 5
        assert total(after, "gatehouse_batch_reservations_total", outcome="unbudgeted") >= 2
        assert ("gatehouse_requests_in_flight", (("service", "batch"),)) in after
        assert total(after, "gatehouse_batch_jobs", status="in_progress") >= 0
        assert service.worker.dispatched == 5
        # the queue's gauges are read by a poll: a forged message is rejected and the queue ends empty
        deadline = __import__("time").monotonic() + 20
        while True:
            now = scrape()
            rejected = total(now, "gatehouse_batch_items_rejected_total", reason="unauthenticated")
            queued = now.get(("gatehouse_batch_queue_items", (("service", "batch"),)))
            if (rejected >= 1 and queued == 0) or __import__("time").monotonic() > deadline:
                break
            await __import__("asyncio").sleep(0.2)
        assert rejected >= 1 and queued == 0
