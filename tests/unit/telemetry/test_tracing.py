"""W3C trace context parsing and the span recorder."""

from __future__ import annotations

import asyncio

import pytest

from shared.tracing import CURRENT, SERVER, Span, TraceContext, Tracer, current_context, parse_traceparent

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


def test_a_valid_traceparent_is_continued() -> None:
    ctx = parse_traceparent(f"00-{TRACE}-{PARENT}-01")
    assert ctx == TraceContext(TRACE, PARENT, sampled=True)
    assert ctx.traceparent() == f"00-{TRACE}-{PARENT}-01"
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-00") == TraceContext(TRACE, PARENT, sampled=False)
    # a later version may carry more fields; the flags' other bits are not ours to read
    assert parse_traceparent(f"01-{TRACE}-{PARENT}-03-extra") == TraceContext(TRACE, PARENT, sampled=True)
    assert parse_traceparent(f"  00-{TRACE}-{PARENT}-01 ") is not None


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        f"00-{TRACE}-{PARENT}",
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has exactly four fields
        f"ff-{TRACE}-{PARENT}-01",  # version ff is invalid
        f"00-{TRACE.upper()}-{PARENT}-01",  # uppercase hex is invalid
        f"00-{'0' * 32}-{PARENT}-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"00-{TRACE}-{PARENT}-zz",
        f"00-{TRACE[:-1]}g-{PARENT}-01",
        f"01-{TRACE}-{PARENT}-01x",
    ],
)
def test_an_invalid_traceparent_starts_a_new_trace(value: str | None) -> None:
    assert parse_traceparent(value) is None


def test_spans_continue_their_parent_and_end_once() -> None:
    ended: list[Span] = []
    tracer = Tracer()
    tracer.configure(ended.append)
    parent = TraceContext(TRACE, PARENT, sampled=True)
    span = tracer.start("ingress.request", parent, kind=SERVER, request_id="r1")
    span.set("http.route", "/v1/chat/completions")
    child = tracer.start("guard.check", span.context)
    child.fail("content_policy_violation")
    child.end()
    span.end(lambda code, stream: {"http.response.status_code": code, "gatehouse.stream": stream}, 500, False)
    span.end()  # a second end records nothing
    assert [s.name for s in ended] == ["guard.check", "ingress.request"]
    guard, ingress = (s.record() for s in ended)
    assert ingress.trace_id == guard.trace_id == TRACE
    assert ingress.parent_span_id == PARENT and guard.parent_span_id == ingress.span_id
    assert len(ingress.span_id) == 16 and ingress.span_id != PARENT
    assert ingress.attributes == {
        "http.route": "/v1/chat/completions",
        "http.response.status_code": 500,
        "gatehouse.stream": False,
    }
    assert (ingress.kind, ingress.status, ingress.request_id) == ("server", "ok", "r1")
    assert (guard.status, guard.status_message) == ("error", "content_policy_violation")
    assert ingress.end_ns >= ingress.start_ns


def test_a_new_trace_gets_real_ids_and_unsampled_spans_are_not_recorded() -> None:
    ended: list[Span] = []
    tracer = Tracer()
    tracer.configure(ended.append, sample_ratio=0.0)
    root = tracer.start("ingress.request", None)
    assert len(root.trace_id) == 32 and int(root.trace_id, 16) and root.parent_id == ""
    assert not root.sampled and not root.recording
    assert root.context.traceparent().endswith("-00")  # the decision travels on
    root.end()
    # a client's sampled trace is recorded whatever the ratio for new ones (parent-based)
    tracer.start("ingress.request", TraceContext(TRACE, PARENT, sampled=True)).end()
    # and a client's unsampled one is not
    tracer.start("ingress.request", TraceContext(TRACE, PARENT, sampled=False)).end()
    assert [s.trace_id for s in ended] == [TRACE]


def test_the_sample_ratio_samples_about_that_share_of_new_traces() -> None:
    tracer = Tracer()
    tracer.configure(lambda _: None, sample_ratio=0.25)
    sampled = sum(tracer.start("x", None).sampled for _ in range(4000))
    assert 800 < sampled < 1200


def test_tracing_off_records_nothing_but_keeps_ids() -> None:
    tracer = Tracer()
    span = tracer.start("ingress.request", TraceContext(TRACE, PARENT))
    assert not tracer.enabled and not span.recording
    assert span.trace_id == TRACE and span.context.traceparent().startswith(f"00-{TRACE}-")
    span.set("k", "v")
    assert span.attributes == {}


async def test_the_current_span_belongs_to_the_task_that_set_it() -> None:
    tracer = Tracer()
    seen: dict[str, str | None] = {}

    async def serve(name: str) -> None:
        span = tracer.start(name, None)
        CURRENT.set(span)
        await asyncio.sleep(0)
        ctx = current_context()
        seen[name] = ctx.span_id if ctx else None
        assert ctx is not None and ctx.span_id == span.span_id

    await asyncio.gather(serve("a"), serve("b"))
    assert current_context() is None and seen["a"] != seen["b"]
