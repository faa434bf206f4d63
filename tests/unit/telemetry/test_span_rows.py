"""A span batch becomes one `spans` row per span, as JSON objects ClickHouse parses itself."""

from __future__ import annotations

import msgspec

from services.accounting.spans import SPAN_COLUMNS, span_rows
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
        start_ns=1_700_000_000_000_000_001,
        end_ns=1_700_000_000_002_500_001,
        status="error",
        status_message="rate_limit_exceeded",
        request_id="r1",
        attributes={"gatehouse.deployment": "mock/m", "http.response.status_code": 429, "gatehouse.stream": False},
    )


def test_each_span_is_a_row() -> None:
    batch = SpanBatch(
        event_id="b1", service="router", instance="h:1", spans=[_span("a" * 16), _span("b" * 16, "a" * 16)]
    )
    rows = span_rows(S.spans.decode(S.spans.encode(batch)))
    assert len(rows) == 2 and all(set(row) == set(SPAN_COLUMNS) for row in rows)
    row = rows[1]
    assert row["span_id"] == "b" * 16 and row["parent_span_id"] == "a" * 16
    assert (row["service"], row["instance"], row["batch_id"]) == ("router", "h:1", "b1")
    assert row["duration_ms"] == 2.5
    # exact to the nanosecond as text (a float of unix seconds keeps about a quarter of a microsecond)
    assert (row["start_time"], row["end_time"]) == ("1700000000.000000001", "1700000000.002500001")
    assert (row["status"], row["status_message"], row["request_id"]) == ("error", "rate_limit_exceeded", "r1")
    assert msgspec.json.decode(msgspec.json.encode(row["attributes"])) == {
        "gatehouse.deployment": "mock/m",
        "http.response.status_code": 429,
        "gatehouse.stream": False,
    }


def test_spans_travel_apart_from_the_event_stream() -> None:
    # the event stream holds <p>.events.>; spans have a stream of their own, stored on their own cadence
    assert not S.spans.name.startswith(f"{S.prefix}.events.") and S.spans_stream != S.events_stream
    assert span_rows(SpanBatch(event_id="b", service="x")) == []
