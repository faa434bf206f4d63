"""What an empty plugin hook costs: in-process per hook call, and through the whole pipeline per request.

1. in-process: `HookRunner.run` with one empty hook (an `async def` returning None) against the check a
   stage makes when no plugin is configured (`HookRunner.has`), and the RequestView a stage builds for it;
   µs per call, medians of `--runs` runs of `--calls` calls each.
2. pipeline: two stacks at once (the `gatehouse up` code: guard, router, accounting, chDB, the mock
   provider), one without plugins and one with an empty hook at each of the five points (before_guard,
   after_guard, before_dispatch, after_response, on_event); sequential requests alternate between them
   (`--requests` each per run, the order flipped every run) so machine noise hits both alike; `--rounds`
   fresh pairs, the one started first alternating; p50 and p99 per run, and the medians over runs.

    python bench/plugins.py --calls 200000 --requests 400 --runs 3 --rounds 2

Loopback only; everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gatehouse.launcher import Stack  # noqa: E402
from gatehouse.natsserver import free_port  # noqa: E402
from shared.config import hash_key  # noqa: E402
from shared.plugins import BoundHook, HookResult, HookRunner, RequestView  # noqa: E402

KEY = "sk-bench-plugins-0001"
POINTS = ("before_guard", "after_guard", "before_dispatch", "after_response", "on_event")
BODY = {"model": "bench", "messages": [{"role": "user", "content": "hello from the benchmark"}], "max_tokens": 16}


class EmptyPlugin:
    """One empty hook at every point."""

    def __init__(self, _options: Mapping[str, object]) -> None:
        pass

    async def before_guard(self, _view: RequestView) -> HookResult | None:
        return None

    async def after_guard(self, _view: RequestView) -> HookResult | None:
        return None

    async def before_dispatch(self, _view: RequestView) -> HookResult | None:
        return None

    async def after_response(self, _view: RequestView) -> HookResult | None:
        return None

    async def on_event(self, _view: RequestView) -> HookResult | None:
        return None


def config(with_plugins: bool) -> str:
    plugins = f"""plugins:
  - name: empty
    path: bench.plugins:EmptyPlugin
    hooks: [{", ".join(POINTS)}]
    headers: [x-team]
""" if with_plugins else ""  # fmt: skip
    return f"""
server: {{host: 127.0.0.1, port: 0}}
keys: [{{id: bench, sha256: {hash_key(KEY)}}}]
providers: {{mock: {{kind: mock}}}}
models:
  - name: bench
    deployments: [{{provider: mock, model: bench}}]
{plugins}"""


# ---- 1. in-process ---------------------------------------------------------------------------------------
async def _empty(_view: RequestView) -> HookResult | None:
    return None


async def in_process(calls: int) -> dict[str, float]:
    """µs per call of: the no-plugin check, building a view, one empty hook through the runner."""
    none = HookRunner({})
    one = HookRunner({"before_guard": [BoundHook("empty", _empty, 0.1, False)]})
    headers = {"x-team": "ml", "authorization": "Bearer x", "content-type": "application/json"}
    one_headers = HookRunner({}, frozenset({"x-team"}))
    view = RequestView(point="before_guard", request_id="r", model="bench", key_id="k", team="t")

    out: dict[str, float] = {}
    start = time.perf_counter()
    for _ in range(calls):
        if none.has("before_guard"):
            raise AssertionError
    out["no plugin (has)"] = (time.perf_counter() - start) / calls * 1e6
    start = time.perf_counter()
    for _ in range(calls):
        RequestView(
            point="before_guard", request_id="r", model="bench", key_id="k", team="t", project="p",
            headers=one_headers.header_view(headers), tags={},
        )  # fmt: skip
    out["build the view"] = (time.perf_counter() - start) / calls * 1e6
    start = time.perf_counter()
    for _ in range(calls):
        await one.run("before_guard", view)
    out["one empty hook (run)"] = (time.perf_counter() - start) / calls * 1e6
    start = time.perf_counter()
    for _ in range(calls):
        await _empty(view)
    out["the bare coroutine"] = (time.perf_counter() - start) / calls * 1e6
    return out


# ---- 2. through the pipeline -------------------------------------------------------------------------------
def start_stack(tmp: Path, name: str, with_plugins: bool) -> Stack:
    (tmp / name).mkdir()
    path = tmp / name / "gatehouse.yaml"
    path.write_text(config(with_plugins))
    stack = Stack(
        config=path, data_dir=tmp / name / "data", host="127.0.0.1", port=free_port(), prefix=f"bp{name}",
        nats_port=free_port(), metrics_port=0,
    )  # fmt: skip
    stack.start()
    if not stack.wait_ready(120):
        stack.stop()
        raise SystemExit(f"stack {name} did not become ready (logs under {tmp / name / 'data' / 'logs'})")
    return stack


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(urls: dict[str, str], requests: int, flip: bool) -> dict[str, list[float]]:
    """Sequential requests alternating between the stacks; ms each."""
    names = list(urls)[::-1] if flip else list(urls)
    times: dict[str, list[float]] = {n: [] for n in names}
    async with httpx.AsyncClient(timeout=30, headers={"authorization": f"Bearer {KEY}", "x-team": "ml"}) as client:
        for name in names:  # warm-up
            for _ in range(20):
                (await client.post(f"{urls[name]}/v1/chat/completions", json=BODY)).raise_for_status()
        for _ in range(requests):
            for name in names:
                start = time.perf_counter()
                r = await client.post(f"{urls[name]}/v1/chat/completions", json=BODY)
                times[name].append((time.perf_counter() - start) * 1000)
                r.raise_for_status()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3, help="measurements per round")
    parser.add_argument("--rounds", type=int, default=2, help="fresh pairs of stacks, start order alternating")
    parser.add_argument("--skip-pipeline", action="store_true")
    args = parser.parse_args()
    os.chdir(REPO)  # the stacks' processes import the plugin as bench.plugins

    per_call: dict[str, list[float]] = {}
    for _ in range(args.runs):
        for name, us in asyncio.run(in_process(args.calls)).items():
            per_call.setdefault(name, []).append(us)
    print(f"in-process, µs per call (median of {args.runs} runs of {args.calls} calls; min-max)")
    for name, values in per_call.items():
        print(f"  {name:24s} {statistics.median(values):7.3f}   ({min(values):.3f}-{max(values):.3f})")
    if args.skip_pipeline:
        return

    rows: dict[str, dict[str, list[float]]] = {"p50": {}, "p99": {}}
    for round_ in range(args.rounds):
        # fresh stacks each round, the one started first alternating: a stack's start order must not decide
        order = [("none", False), ("hooks", True)][:: 1 if round_ % 2 == 0 else -1]
        with tempfile.TemporaryDirectory(prefix="gatehouse-bench-plugins-") as tmp:
            stacks: dict[str, Stack] = {}
            try:
                for name, with_plugins in order:
                    stacks[name] = start_stack(Path(tmp), name, with_plugins)
                urls = {name: stacks[name].ingress_url for name in ("none", "hooks")}
                for run in range(args.runs):
                    times = asyncio.run(measure(urls, args.requests, flip=run % 2 == 1))
                    line = []
                    for name in ("none", "hooks"):
                        p50, p99 = statistics.median(times[name]), pct(times[name], 0.99)
                        rows["p50"].setdefault(name, []).append(p50)
                        rows["p99"].setdefault(name, []).append(p99)
                        line.append(f"{name}: p50 {p50:.3f} ms p99 {p99:.3f} ms")
                    print(f"round {round_ + 1} ({order[0][0]} started first), run {run + 1}: " + "; ".join(line))
            finally:
                for stack in stacks.values():
                    stack.stop()
    none50, hooks50 = (statistics.median(rows["p50"][n]) for n in ("none", "hooks"))
    none99, hooks99 = (statistics.median(rows["p99"][n]) for n in ("none", "hooks"))
    added = [h - n for h, n in zip(rows["p50"]["hooks"], rows["p50"]["none"], strict=True)]
    runs = args.rounds * args.runs
    print(f"\npipeline, {args.requests} sequential requests per stack per run, medians of {runs} runs")
    print("                       p50 ms    p99 ms")
    print(f"  no plugins          {none50:7.3f}   {none99:7.3f}")
    print(f"  empty hook x5       {hooks50:7.3f}   {hooks99:7.3f}")
    each = ", ".join(f"{a * 1000:.0f}" for a in added)
    print(f"  added p50: median {statistics.median(added) * 1000:.0f} µs (runs: {each} µs)")


if __name__ == "__main__":
    main()
