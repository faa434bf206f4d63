"""The metric families: names and labels as dashboards expect, bounded label values, the text format."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from shared import metrics
from shared.schemas.chat import GuardFinding, Usage


@pytest.fixture(autouse=True)
def _service() -> Iterator[None]:
    metrics.configure("router", enabled=True)
    yield
    metrics.CALLBACKS.clear()
    metrics.configure("", enabled=False)


def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.REGISTRY).decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            assert isinstance(s, Sample)
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(name: str, **labels: str) -> float:
    return samples().get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_errors_and_latency_move_with_each_request() -> None:
    labels = {"service": "router", "model": "gpt-x", "provider": "openai", "status": "502"}
    before = value("gatehouse_requests_total", **labels)
    errors_before = value(
        "gatehouse_errors_total",
        service="router",
        model="gpt-x",
        provider="openai",
        type="api_error",
        code="bad_gateway",
    )
    count_before = value(
        "gatehouse_request_duration_seconds_count", service="router", model="gpt-x", provider="openai", deployment="d1"
    )
    metrics.request_finished("gpt-x", "openai", "d1", 502, 0.3, error_type="api_error", error_code="bad_gateway")
    assert value("gatehouse_requests_total", **labels) == before + 1
    assert (
        value(
            "gatehouse_errors_total",
            service="router",
            model="gpt-x",
            provider="openai",
            type="api_error",
            code="bad_gateway",
        )
        == errors_before + 1
    )
    assert (
        value(
            "gatehouse_request_duration_seconds_count",
            service="router",
            model="gpt-x",
            provider="openai",
            deployment="d1",
        )
        == count_before + 1
    )


def test_error_labels_come_from_the_taxonomy_only() -> None:
    metrics.request_finished("m", "p", "d", 400, 0.1, error_type="a-provider's-own-type", error_code="sk-secret?")
    keys = [k for k in samples() if k[0] == "gatehouse_errors_total" and ("model", "m") in k[1]]
    assert keys and all(dict(k[1])["code"] == "other" and dict(k[1])["type"] == "other" for k in keys)
    assert metrics.bounded("rate_limit_exceeded", metrics.ERROR_CODES) == "rate_limit_exceeded"
    assert {"content_policy_violation", "upstream_auth_error", "client_closed_request"} <= metrics.ERROR_CODES


def test_tokens_upstream_retries_breakers_and_guard_verdicts() -> None:
    metrics.tokens("m", "p", "d", Usage(input_tokens=10, output_tokens=5, cached_tokens=2))
    metrics.upstream_attempt("m", "p", "d", 429, "rate_limit_exceeded", 0.2, ttft_s=0.0)
    metrics.router_retry("m", "d2", "rate_limit_exceeded")
    metrics.breaker_state("d", "open")
    finding = GuardFinding(scanner="secrets", rule="aws_access_key", action="block")
    metrics.guard_verdict("default", "block", "input", [finding], 0.0002)
    got = samples()
    base = (("deployment", "d"), ("model", "m"), ("provider", "p"), ("service", "router"))
    assert got[("gatehouse_tokens_total", tuple(sorted((*base, ("type", "input")))))] >= 10
    assert ("gatehouse_tokens_total", tuple(sorted((*base, ("type", "reasoning"))))) not in got  # zero: not made
    upstream = tuple(sorted((*base, ("status", "429"), ("code", "rate_limit_exceeded"))))
    assert got[("gatehouse_upstream_attempts_total", upstream)] >= 1
    assert (
        value(
            "gatehouse_router_retries_total", service="router", model="m", deployment="d2", reason="rate_limit_exceeded"
        )
        >= 1
    )
    assert value("gatehouse_circuit_breaker_state", service="router", deployment="d") == 2
    assert value("gatehouse_circuit_breaker_transitions_total", service="router", deployment="d", state="open") >= 1
    assert (
        value("gatehouse_guard_verdicts_total", service="router", policy="default", action="block", direction="input")
        >= 1
    )
    assert (
        value(
            "gatehouse_guard_findings_total",
            service="router",
            policy="default",
            scanner="secrets",
            rule="aws_access_key",
            action="block",
        )
        >= 1
    )


def test_off_records_nothing() -> None:
    metrics.configure("router", enabled=False)
    before = value("gatehouse_requests_total", service="router", model="off", provider="", status="200")
    metrics.request_finished("off", "", "", 200, 0.1)
    metrics.configure("router", enabled=True)
    assert value("gatehouse_requests_total", service="router", model="off", provider="", status="200") == before == 0


def test_scrape_time_values_in_flight_and_event_publishers() -> None:
    class Publisher:
        published, spooled, dropped, rejected = 7, 2, 0, 1
        spooled_bytes = 4096

    busy = [3]
    metrics.in_flight(lambda: busy[0])
    metrics.event_publisher("events", Publisher())
    assert value("gatehouse_requests_in_flight", service="router") == 3
    busy[0] = 1
    assert value("gatehouse_requests_in_flight", service="router") == 1
    assert value("gatehouse_events_published_total", service="router", stream="events") == 7
    assert value("gatehouse_events_rejected_total", service="router", stream="events") == 1
    assert value("gatehouse_events_spool_bytes", service="router", stream="events") == 4096


def test_accounting_and_nats_families() -> None:
    metrics.configure("accounting")
    metrics.accounting_pending(40, 2)
    metrics.accounting_batch(42)
    metrics.accounting_insert({"requests": 40, "spans": 200}, 0.012)
    metrics.cost("m", "p", "d", 0.25)
    metrics.nats_disconnected()
    metrics.nats_reconnected()
    assert value("gatehouse_accounting_pending_events", service="accounting") == 42
    assert value("gatehouse_accounting_ack_pending_events", service="accounting") == 2
    assert value("gatehouse_accounting_batch_size_count", service="accounting") >= 1
    assert value("gatehouse_accounting_insert_duration_seconds_count", service="accounting") >= 1
    assert value("gatehouse_accounting_rows_total", service="accounting", table="spans") >= 200
    assert value("gatehouse_cost_usd_total", service="accounting", model="m", provider="p", deployment="d") >= 0.25
    assert value("gatehouse_nats_reconnects_total", service="accounting") >= 1
    assert value("gatehouse_nats_disconnects_total", service="accounting") >= 1


def test_every_family_follows_the_naming_conventions() -> None:
    text = generate_latest(metrics.REGISTRY).decode()
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("gatehouse_"):
            continue
        if family.type == "counter":
            assert not family.name.endswith("_total")  # the parser strips it; the exposition adds it
        if family.type == "histogram":
            assert family.name.endswith(("_seconds", "_size")), family.name
        for s in family.samples:
            assert "request_id" not in s.labels and "key_id" not in s.labels and "team" not in s.labels
