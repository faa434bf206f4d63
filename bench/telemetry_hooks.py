"""The CPU the telemetry hooks cost one request, in process (no network, no other process): what each stage
runs on the request's path (ingress start/finish, guard check, router dispatch and one attempt), with
metrics and tracing off, metrics on, tracing on, both; and what runs later, off the request's path
(folding metrics into their series, making span records). CPU time, minimum of `--repeat` rounds, so it
moves little with machine load; the stack benchmark is bench/telemetry.py.

    python bench/telemetry_hooks.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from starlette.requests import Request  # noqa: E402

from services.guard import telemetry as guard  # noqa: E402
from services.ingress import telemetry as ingress  # noqa: E402
from services.router import telemetry as router  # noqa: E402
from shared import metrics  # noqa: E402
from shared.records import RequestRecord  # noqa: E402
from shared.schemas.chat import Caller, ChatRequest, GuardSummary, Outcome, Result, Usage  # noqa: E402
from shared.tracing import TRACER, Span, new_span_id, new_trace_id  # noqa: E402

MODELS = {"bench": object()}
SUMMARY = GuardSummary(policy="default", action="allow", scan_us=80)
DEPLOYMENT = SimpleNamespace(id="mock/bench", target=SimpleNamespace(provider="mock", kind="mock", model="bench"))
OUTCOME = Outcome(
    provider="mock", deployment="mock/bench", provider_model="bench", usage=Usage(input_tokens=5, output_tokens=9)
)


class Message:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


def one_request(i: int) -> None:
    """What the three stages' hooks do for one request (plus the scaffolding every variant pays alike)."""
    traceparent = f"00-{new_trace_id()}-{new_span_id()}-01".encode()
    request = Request({"type": "http", "path": "/v1/chat/completions", "headers": [(b"traceparent", traceparent)]})
    record = RequestRecord(request_id=f"r{i}", api="chat", received_at=time.time(), started=time.monotonic())
    ingress.start_request(request, record)
    record.model = "bench"
    chat = ChatRequest(request_id=record.request_id, api="chat", model="bench", caller=Caller(key_id="k"))
    msg = Message({"Gh-Request-Id": record.request_id, "traceparent": ingress.traceparent(record)})
    span = guard.start_check(msg, chat)  # type: ignore[arg-type]
    forwarded = guard.forward_headers(msg, span)  # type: ignore[arg-type]
    guard.finish_check(span, chat, SUMMARY, None)
    guard.verdict(SUMMARY, [], "input", 80)
    trace = router.start_dispatch(Message(forwarded), chat)  # type: ignore[arg-type]
    attempt = router.attempt_started(chat, DEPLOYMENT, time.monotonic())  # type: ignore[arg-type]
    attempt.end(200, None, 0.0)
    trace.result = Result(outcome=OUTCOME)
    trace.headers()
    router.finish_dispatch(trace)
    record.outcome = OUTCOME
    ingress.finish_request(record, MODELS, time.monotonic())  # type: ignore[arg-type]


def rounds(n: int, *, tracing: bool, metrics_on: bool, deferred: bool) -> float:
    """CPU µs per request; `deferred`: also the work done later (fold metrics, make span records)."""
    metrics.configure("bench", enabled=metrics_on)
    ended: list[Span] = []
    TRACER.configure(ended.append if tracing else None)
    start = time.process_time()
    for i in range(n):
        one_request(i)
        if len(ended) >= 250:  # the exporter ships every 0.25 s
            if deferred:
                for span in ended:
                    span.record()
            ended.clear()
        if deferred:
            if len(metrics._QUEUE) >= 250:
                metrics.fold()
        else:
            metrics._QUEUE.clear()
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    variants = {"off": (False, False), "metrics": (False, True), "tracing": (True, False), "both": (True, True)}
    for deferred in (False, True):
        best = {name: float("inf") for name in variants}
        for _ in range(args.repeat):
            for name, (tracing, metrics_on) in variants.items():
                cpu = rounds(args.requests, tracing=tracing, metrics_on=metrics_on, deferred=deferred)
                best[name] = min(best[name], cpu)
        label = "request path + later work" if deferred else "request path only     "
        print(
            f"{label}: CPU µs per request (3 stages) - off {best['off']:.1f} (scaffolding), added: metrics "
            f"{best['metrics'] - best['off']:+.1f}, tracing {best['tracing'] - best['off']:+.1f}, "
            f"both {best['both'] - best['off']:+.1f}"
        )
    TRACER.configure(None)
    metrics.configure("", enabled=False)


if __name__ == "__main__":
    main()
