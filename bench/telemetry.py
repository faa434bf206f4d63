"""What metrics and tracing cost on the hot path: the same stack with telemetry on and off, in the same run.

Starts two stacks (`gatehouse up` code, full pipeline: guard with its default policy, router on the mock
provider, accounting on chDB), identical but for
- on:  metrics recorded and served on every process (a metrics port each, /metrics on ingress), every
       request traced (sample ratio 1: five spans, shipped to ClickHouse through the event stream), and
       the client sending a `traceparent` as an instrumented app would;
- off: GATEHOUSE_METRICS_ENABLED=false and GATEHOUSE_TRACING_ENABLED=false (ids still propagate),
plus a second "off" stack ("off2", the noise floor: two identical stacks differ this much), then sends
sequential requests rotating among them (so machine noise hits all alike), while scraping every /metrics
of the "on" stack every `--scrape-s` seconds as Prometheus would. Reports p50, p99 and mean per stack, the
difference on - (off + off2) / 2, and off2 - off, per run and the median over runs; and the CPU each process used per
request.

    python bench/telemetry.py --requests 2000 --runs 3

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
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gatehouse.launcher import Stack  # noqa: E402
from gatehouse.natsserver import free_port  # noqa: E402
from shared.config import hash_key  # noqa: E402
from shared.tracing import new_span_id, new_trace_id  # noqa: E402

KEY = "sk-telemetry-bench"
CONFIG = f"""
server: {{host: 127.0.0.1, port: 0}}
keys: [{{id: bench, sha256: {hash_key(KEY)}}}]
providers: {{mock: {{kind: mock}}}}
models:
  - name: bench
    deployments: [{{provider: mock, model: bench}}]
"""
BODY = {"model": "bench", "messages": [{"role": "user", "content": "hello from the benchmark"}], "max_tokens": 16}
OFF = {"GATEHOUSE_METRICS_ENABLED": "false", "GATEHOUSE_TRACING_ENABLED": "false"}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu(stack: Stack) -> dict[str, float]:
    assert stack.nats is not None
    cpu = {c.service: _cpu_s(c.process.pid) for c in stack.children if c.process is not None}
    cpu["nats"] = _cpu_s(stack.nats.process.pid)
    return cpu


def start(tmp: Path, name: str, telemetry: bool, extra: dict[str, str]) -> Stack:
    config = tmp / "gatehouse.yaml"
    config.write_text(CONFIG)
    env = ({} if telemetry else OFF) | extra
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the launcher hands GATEHOUSE_* settings to every child
    try:
        stack = Stack(config=config, data_dir=tmp / name, host="127.0.0.1", port=free_port(), prefix=f"tb{name}",
                      nats_port=free_port(), metrics_port=None if telemetry else 0)  # fmt: skip
        stack.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return stack


async def latency(urls: dict[str, str], n: int, metrics_urls: list[str], scrape_s: float) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in urls}
    auth = {"authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(timeout=30) as client:

        async def scrape() -> None:
            while True:
                await asyncio.sleep(scrape_s)
                for url in metrics_urls:
                    (await client.get(url)).raise_for_status()

        scraper = asyncio.create_task(scrape()) if scrape_s > 0 else None
        try:
            for i in range(n):
                names = list(urls.items())
                order = names[i % len(names) :] + names[: i % len(names)]
                for name, url in order:
                    # the on stack's client sends its trace context as an instrumented app would (continuing
                    # a trace is the dearer path); the off stack starts its own ids
                    parent = f"00-{new_trace_id()}-{new_span_id()}-01"
                    headers = {**auth, "traceparent": parent} if name == "on" else auth
                    t0 = time.perf_counter()
                    r = await client.post(f"{url}/v1/chat/completions", json=BODY, headers=headers)
                    out[name].append((time.perf_counter() - t0) * 1000)
                    if r.status_code != 200:
                        raise SystemExit(f"{name}: {r.status_code} {r.text}")
        finally:
            if scraper is not None:
                scraper.cancel()
    return out


def run_once(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    extra = dict(item.split("=", 1) for item in args.on_env)
    stacks = {
        "on": start(tmp, "on", not args.control, extra),
        "off": start(tmp, "off", False, {}),
        "off2": start(tmp, "off2", False, {}),
    }
    try:
        for name, stack in stacks.items():
            assert stack.wait_ready(120), f"stack {name} did not start"
        urls = {name: stack.ingress_url for name, stack in stacks.items()}
        scraped = [c.metrics_url for c in stacks["on"].children if c.metrics_url]
        assert not [c for c in stacks["off"].children if c.metrics_url and "/metrics" not in c.metrics_url]
        asyncio.run(latency(urls, 200, scraped, 0))  # warm-up
        cpu_before = {name: _cpu(stack) for name, stack in stacks.items()}
        lat = asyncio.run(latency(urls, args.requests, scraped, args.scrape_s))
        cpu_after = {name: _cpu(stack) for name, stack in stacks.items()}
        for name in stacks:
            used = {k: (v - cpu_before[name][k]) / args.requests * 1e6 for k, v in cpu_after[name].items()}
            print(f"  {name}: CPU µs per request " + ", ".join(f"{k} {v:.0f}" for k, v in used.items()), flush=True)
        p50 = {name: statistics.median(values) for name, values in lat.items()}
        p99 = {name: pct(values, 0.99) for name, values in lat.items()}
        mean = {name: statistics.mean(values) for name, values in lat.items()}
        return {
            "off p50 ms": (p50["off"] + p50["off2"]) / 2,
            "on p50 ms": p50["on"],
            "added p50 ms": p50["on"] - (p50["off"] + p50["off2"]) / 2,
            "noise p50 ms": p50["off2"] - p50["off"],
            "off p99 ms": (p99["off"] + p99["off2"]) / 2,
            "on p99 ms": p99["on"],
            "added p99 ms": p99["on"] - (p99["off"] + p99["off2"]) / 2,
            "noise p99 ms": p99["off2"] - p99["off"],
            "added mean ms": mean["on"] - (mean["off"] + mean["off2"]) / 2,
        }
    finally:
        for stack in stacks.values():
            stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per stack per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scrape-s", type=float, default=15.0, help="scrape every /metrics this often (0: never)")
    parser.add_argument(
        "--on-env", action="append", default=[], help="K=V for the on stack, e.g. GATEHOUSE_TRACE_STORE=false"
    )
    parser.add_argument("--control", action="store_true", help="telemetry off in both stacks (the noise floor)")
    args = parser.parse_args()
    results: list[dict[str, float]] = []
    for run in range(args.runs):
        load_before = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as tmp:
            result = run_once(args, Path(tmp))
        results.append(result)
        load = os.getloadavg()[0]
        print(
            f"run {run + 1} (load average {load_before:.1f} before, {load:.1f} after): "
            + ", ".join(f"{k} {v:.3f}" for k, v in result.items()),
            flush=True,
        )
    print("\nmedian over runs:")
    for name in results[0]:
        values = [r[name] for r in results]
        print(f"  {name:16s} {statistics.median(values):8.3f}   (runs: {', '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
