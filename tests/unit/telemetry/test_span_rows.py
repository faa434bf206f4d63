"""A span batch on the event stream becomes one `spans` row per span."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from services.accounting.core import SPAN_COLUMNS, SPANS, UNCHECKED, BadEvent, event_rows
from shared.schemas.events import SpanBatch, SpanRecord
from shared.subjects import Subjects

S = Subjects("gh")


def _span(span_id: str, parent: str = "") -> SpanRecord:
    return SpanRecord(
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id=span_id,
        parent_span_id=parent,
        name="router.attempt",
        kind="client",
        start_ns=1_700_000_000_000_000_000,
        end_ns=1_700_000_000_002_500_000,
        status="error",
        status_message="rate_limit_exceeded",
        request_id="r1",
        attributes={"gatehouse.deployment": "mock/m"},
    )


def test_each_span_is_a_row() -> None:
    batch = SpanBatch(
        event_id="b1", service="router", instance="h:1", spans=[_span("a" * 16), _span("b" * 16, "a" * 16)]
    )
    rows = event_rows(S, S.events_span.name, S.events_span.encode(batch), {})
    assert [table for table, _, _ in rows] == [SPANS, SPANS] and SPANS in UNCHECKED
    row = dict(zip(SPAN_COLUMNS, rows[1][1], strict=True))
    assert row["span_id"] == "b" * 16 and row["parent_span_id"] == "a" * 16
    assert (row["service"], row["instance"], row["batch_id"]) == ("router", "h:1", "b1")
    assert row["duration_ms"] == pytest.approx(2.5)
    start, end = row["start_time"], row["end_time"]
    assert isinstance(start, datetime) and isinstance(end, datetime)
    assert end - start == timedelta(microseconds=2500)
    assert row["attributes"] == {"gatehouse.deployment": "mock/m"}
    assert (row["status"], row["status_message"], row["request_id"]) == ("error", "rate_limit_exceeded", "r1")


def test_an_empty_or_broken_batch_is_refused() -> None:
    with pytest.raises(BadEvent):
        event_rows(S, S.events_span.name, S.events_span.encode(SpanBatch(event_id="b", service="x")), {})
    with pytest.raises(BadEvent):
        event_rows(S, S.events_span.name, b"\x01garbage", {})
