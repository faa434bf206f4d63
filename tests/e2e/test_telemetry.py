"""Telemetry of the running stack: one request's trace read back from ClickHouse has a span per stage under
the client's trace id; every process's /metrics parses and moves with traffic; log lines of a request's work
carry its ids and never its prompt or key."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.tracing import new_span_id, new_trace_id
from tests.e2e.conftest import API_KEY, RunningStack

pytestmark = pytest.mark.e2e

STAGES = {"ingress.request", "guard.check", "router.dispatch", "router.attempt", "accounting.store"}
SPAN_SQL = (
    "SELECT name, service, span_id, parent_span_id, trace_id, request_id, status, status_message, attributes "
    "FROM spans WHERE trace_id = '{trace}' ORDER BY start_time"
)


@pytest.fixture(scope="module")
def client(running_stack: RunningStack) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=running_stack.base_url, api_key=API_KEY, max_retries=0, timeout=20)
    yield c
    c.close()


def _ask(client: openai.OpenAI, model: str, traceparent: str = "", content: str = "Hello") -> str:
    headers = {"traceparent": traceparent} if traceparent else {}
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], extra_headers=headers
    )
    raw.parse()
    return raw.headers["x-request-id"]


def _spans(stack: RunningStack, trace: str, count: int) -> list[dict[str, object]]:
    result = stack.wait_rows(SPAN_SQL.format(trace=trace), count)
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


def test_a_requests_trace_has_a_span_per_stage_under_the_clients_trace_id(
    running_stack: RunningStack, client: openai.OpenAI
) -> None:
    trace, client_span = new_trace_id(), new_span_id()
    request_id = _ask(client, "mock-1", f"00-{trace}-{client_span}-01")
    spans = _spans(running_stack, trace, len(STAGES))
    by_name = {str(s["name"]): s for s in spans}
    assert set(by_name) == STAGES, spans
    assert {s["service"] for s in spans} == {"ingress", "guard", "router", "accounting"}
    assert all(s["trace_id"] == trace and s["request_id"] == request_id and s["status"] == "ok" for s in spans)
    # each stage is the child of the one that handed it the request
    assert by_name["ingress.request"]["parent_span_id"] == client_span
    assert by_name["guard.check"]["parent_span_id"] == by_name["ingress.request"]["span_id"]
    assert by_name["router.dispatch"]["parent_span_id"] == by_name["guard.check"]["span_id"]
    assert by_name["router.attempt"]["parent_span_id"] == by_name["router.dispatch"]["span_id"]
    assert by_name["accounting.store"]["parent_span_id"] == by_name["ingress.request"]["span_id"]
    attempt = by_name["router.attempt"]["attributes"]
    assert isinstance(attempt, dict) and attempt["gen_ai.provider.name"] == "mock"
    # the request's record carries the same (real) trace id
    record = running_stack.wait_rows(f"SELECT trace_id FROM requests WHERE request_id = '{request_id}'", 1)
    assert record.rows == [[trace]]


def test_a_trace_starts_at_ingress_without_a_traceparent_and_failover_attempts_are_spans(
    running_stack: RunningStack, client: openai.OpenAI
) -> None:
    request_id = _ask(client, "failover")
    record = running_stack.wait_rows(f"SELECT trace_id FROM requests WHERE request_id = '{request_id}'", 1)
    trace = str(record.rows[0][0])
    assert len(trace) == 32 and int(trace, 16)
    spans = _spans(running_stack, trace, 7)
    root = next(s for s in spans if s["name"] == "ingress.request")
    assert root["parent_span_id"] == ""
    attempts = [s for s in spans if s["name"] == "router.attempt"]
    statuses = [(s["attributes"]["http.response.status_code"], s["status"]) for s in attempts]  # type: ignore[index]
    assert statuses == [("502", "error"), ("503", "error"), ("200", "ok")]
    assert attempts[0]["status_message"] == "upstream_auth_error"


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = httpx.get(url, timeout=10)
    assert resp.status_code == 200, url
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(resp.text):  # the Prometheus text parser: it must parse
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _sum(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def test_every_process_serves_metrics_that_move_with_traffic(
    running_stack: RunningStack, client: openai.OpenAI
) -> None:
    urls = {c.name: c.metrics_url for c in running_stack.stack.children}
    assert set(urls) == {"ingress-0", "guard-0", "router-0", "accounting-0", "batch-0"} and all(urls.values())
    before = {name: _scrape(url) for name, url in urls.items()}
    for _ in range(3):
        _ask(client, "mock-1")
    ok = {"model": "mock-1", "status": "200"}
    deadline = time.monotonic() + 30
    while True:
        after = {name: _scrape(url) for name, url in urls.items()}
        stored = _sum(after["accounting-0"], "gatehouse_accounting_rows_total", table="requests") - _sum(
            before["accounting-0"], "gatehouse_accounting_rows_total", table="requests"
        )
        backlog = ("gatehouse_accounting_pending_events", (("service", "accounting"),)) in after["accounting-0"]
        if (stored >= 3 and backlog) or time.monotonic() > deadline:  # the backlog is read every few seconds
            break
        time.sleep(0.3)
    assert stored >= 3
    for name, service in (("ingress-0", "ingress"), ("guard-0", "guard"), ("router-0", "router")):
        moved = _sum(after[name], "gatehouse_requests_total", service=service, **ok) - _sum(
            before[name], "gatehouse_requests_total", service=service, **ok
        )
        assert moved >= 3, name
        assert _sum(after[name], "gatehouse_requests_in_flight", service=service) >= 0
    ingress, router = after["ingress-0"], after["router-0"]
    duration = "gatehouse_request_duration_seconds_count"
    assert _sum(ingress, duration, model="mock-1", provider="mock") >= 3 + _sum(
        before["ingress-0"], duration, model="mock-1", provider="mock"
    )
    assert _sum(ingress, "gatehouse_tokens_total", model="mock-1", type="output") > _sum(
        before["ingress-0"], "gatehouse_tokens_total", model="mock-1", type="output"
    )
    assert _sum(router, "gatehouse_upstream_attempts_total", model="mock-1", status="200") >= 3
    assert _sum(after["guard-0"], "gatehouse_guard_verdicts_total", direction="input") >= 3
    accounting = after["accounting-0"]
    assert _sum(accounting, "gatehouse_accounting_batch_size_count") > 0
    assert _sum(accounting, "gatehouse_accounting_insert_duration_seconds_count") > 0
    assert backlog
    batch = after["batch-0"]
    assert ("gatehouse_requests_in_flight", (("service", "batch"),)) in batch
    assert any(n == "gatehouse_batch_jobs" for n, _ in batch)
    for name, samples in after.items():
        assert any(n == "gatehouse_events_published_total" for n, _ in samples), name  # the spans' publisher
        assert any(n == "gatehouse_nats_reconnects_total" for n, _ in samples), name
        assert any(n == "process_resident_memory_bytes" for n, _ in samples), name


def _service_logs(stack: RunningStack) -> dict[str, list[str]]:
    logs = Path(stack.stack.data_dir) / "logs"
    return {p.stem: p.read_text().splitlines() for p in logs.glob("*.log") if not p.name.startswith("nats")}


def test_a_requests_log_lines_carry_its_ids_and_never_its_prompt_or_key(
    running_stack: RunningStack, client: openai.OpenAI
) -> None:
    trace = new_trace_id()
    canary = f"telemetry-canary-{new_span_id()}"
    request_id = _ask(client, "failover", f"00-{trace}-{new_span_id()}-01", content=f"Hello {canary}")
    deadline = time.monotonic() + 20
    while True:  # the router writes a line per failed attempt (err-503 always fails; the rejected deployment
        # may already be skipped by a breaker that earlier tests opened)
        lines = [json.loads(line) for line in _service_logs(running_stack).get("router-0", []) if line.startswith("{")]
        mine = [line for line in lines if line.get("request_id") == request_id]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert any("attempt on emu-openai/err-503" in line["msg"] for line in mine)
    _spans(running_stack, trace, 7)  # the request has been recorded by now
    lines = [json.loads(line) for line in _service_logs(running_stack).get("router-0", []) if line.startswith("{")]
    mine = [line for line in lines if line.get("request_id") == request_id]
    assert mine and all(line["trace_id"] == trace for line in mine)
    for name, text in _service_logs(running_stack).items():
        for line in filter(None, text):
            assert canary not in line and API_KEY not in line, name
            entry = json.loads(line)  # every line of every service is one JSON object
            assert {"ts", "level", "service", "msg"} <= set(entry), line
    spans = running_stack.sql(SPAN_SQL.format(trace=trace))
    assert canary not in str(spans.rows) and API_KEY not in str(spans.rows)


def test_a_batch_items_trace_has_its_batch_guard_router_and_accounting_spans(
    running_stack: RunningStack, client: openai.OpenAI, tmp_path: Path
) -> None:
    canary = f"batch-canary-{new_span_id()}"
    line = {
        "custom_id": "traced-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "mock-1", "messages": [{"role": "user", "content": f"Hello {canary}"}]},
    }
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with path.open("rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 60
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch.status
        time.sleep(0.3)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed"
    record = running_stack.wait_rows(f"SELECT request_id, trace_id FROM requests WHERE batch_id = '{batch.id}'", 1)
    request_id, trace = (str(v) for v in record.rows[0])
    assert trace == request_id  # no producer's trace: the item's request id is its trace id
    names = {"batch.item", "guard.check", "router.dispatch", "router.attempt", "accounting.store"}
    spans = _spans(running_stack, trace, len(names))
    by_name = {str(s["name"]): s for s in spans}
    assert set(by_name) == names, spans
    assert {s["service"] for s in spans} == {"batch", "guard", "router", "accounting"}
    assert by_name["guard.check"]["parent_span_id"] == by_name["batch.item"]["span_id"]
    assert by_name["router.dispatch"]["parent_span_id"] == by_name["guard.check"]["span_id"]
    assert by_name["accounting.store"]["parent_span_id"] == by_name["batch.item"]["span_id"]
    assert all(s["request_id"] == request_id for s in spans)
    assert canary not in str(spans) and API_KEY not in str(spans)
    lines = [json.loads(x) for x in _service_logs(running_stack).get("batch-0", []) if x.startswith("{")]
    assert all(canary not in json.dumps(x) and API_KEY not in json.dumps(x) for x in lines)
