"""Batch jobs: items/s through the batch path, and interactive latency with and without a batch running.

Starts the stack (`gatehouse up` code: five services, full pipeline with the default guard policy, accounting
into chDB) on the built-in mock provider, then per run:
1. throughput: one job of `--items` items through the queue subject (BatchClient, the batch producer role),
   from submission to `completed`: items/s;
2. interactive idle: `--rps` chat requests per second (open loop) for `--seconds`: p50 / p99;
3. interactive with a batch: the same load while a `--batch-items` job runs (started first, cancelled
   after): p50 / p99, and the items/s the batch still made meanwhile.

    python bench/batch.py --items 5000 --batch-items 10000 --rps 100 --seconds 20 --runs 3

Prints each run, the medians over runs and the load average around them. Everything it starts, it stops.
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

from gatehouse.batch import BatchClient  # noqa: E402
from gatehouse.launcher import Stack  # noqa: E402
from gatehouse.natsserver import free_port  # noqa: E402
from shared.config import hash_key  # noqa: E402

KEY = "sk-bench-batch-0001"
CONFIG = f"""
server: {{host: 127.0.0.1, port: 0}}
keys:
  - {{id: bench, sha256: {hash_key(KEY)}, team: bench}}
providers: {{mock: {{kind: mock}}}}
models:
  - name: bench
    deployments: [{{provider: mock, model: bench}}]
"""
BODY = {"model": "bench", "messages": [{"role": "user", "content": "hello from the benchmark"}], "max_tokens": 16}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def bodies(n: int) -> list[dict[str, object]]:
    return [
        {"messages": [{"role": "user", "content": f"batch item {i} of the benchmark"}], "max_tokens": 16}
        for i in range(n)
    ]


async def interactive(url: str, rps: float, seconds: float) -> list[float]:
    """Open-loop chat requests at `rps` for `seconds`; latencies in ms (a failed request fails the run)."""
    out: list[float] = []
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=30, limits=limits, headers={"authorization": f"Bearer {KEY}"}) as http:

        async def one() -> None:
            t0 = time.perf_counter()
            r = await http.post(f"{url}/v1/chat/completions", json=BODY)
            r.raise_for_status()
            out.append((time.perf_counter() - t0) * 1000)

        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        n = int(rps * seconds)
        for i in range(n):
            delay = start + i / rps - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return out


async def done_of(gh: BatchClient, job_id: str) -> tuple[int, str]:
    job = await gh.get(KEY, job_id)
    return job.request_counts.completed + job.request_counts.failed, job.status


async def one_run(stack: Stack, args: argparse.Namespace) -> dict[str, float]:
    assert stack.nats is not None
    seed = str(stack.credentials["batch_producer"].seed_file)
    gh = await BatchClient.connect(stack.nats.url, seed_file=seed, prefix=stack.prefix, timeout_s=120)
    await gh.ready()
    result: dict[str, float] = {}
    try:
        # 1. throughput of the batch path alone
        t0 = time.perf_counter()
        job = await gh.submit(bodies(args.items), key=KEY, model="bench", concurrency=args.concurrency)
        job = await gh.wait(KEY, job.id, poll_s=0.2, timeout_s=1800)
        elapsed = time.perf_counter() - t0
        assert job.status == "completed" and job.request_counts.completed == args.items, job
        result["items_per_s"] = args.items / elapsed
        # 2. interactive, no batch
        await interactive(stack.ingress_url, args.rps, 2)  # warm-up
        idle = await interactive(stack.ingress_url, args.rps, args.seconds)
        result["idle_p50"], result["idle_p99"] = pct(idle, 0.5), pct(idle, 0.99)
        # 3. interactive while a batch runs (started first; still running at the end, or the run says so)
        job = await gh.submit(bodies(args.batch_items), key=KEY, model="bench", concurrency=args.concurrency)
        deadline = time.monotonic() + 60
        while (await done_of(gh, job.id))[0] < 100:
            assert time.monotonic() < deadline, "the batch did not start"
            await asyncio.sleep(0.1)
        before, _ = await done_of(gh, job.id)
        t1 = time.perf_counter()
        busy = await interactive(stack.ingress_url, args.rps, args.seconds)
        span = time.perf_counter() - t1
        after, status = await done_of(gh, job.id)
        result["busy_p50"], result["busy_p99"] = pct(busy, 0.5), pct(busy, 0.99)
        result["items_per_s_under_load"] = (after - before) / span
        result["batch_overlapped"] = 1.0 if status == "in_progress" else 0.0
        if status == "in_progress":
            await gh.cancel(KEY, job.id)
        await gh.wait(KEY, job.id, poll_s=0.2, timeout_s=600)
    finally:
        await gh.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--batch-items", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=0, help="items in flight per job (0: config default)")
    parser.add_argument("--rps", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="gh-bench-batch-") as tmp:
        config = Path(tmp) / "gatehouse.yaml"
        config.write_text(CONFIG)
        stack = Stack(
            config=config, data_dir=Path(tmp) / "data", host="127.0.0.1", port=free_port(), prefix="bb",
            nats_port=free_port(),
        )  # fmt: skip
        stack.start()
        try:
            if not stack.wait_ready(90):
                sys.exit("the stack did not become ready")
            for n in range(args.runs):
                load = os.getloadavg()
                result = asyncio.run(one_run(stack, args))
                result["load_1m_before"], result["load_1m_after"] = load[0], os.getloadavg()[0]
                runs.append(result)
                print(f"run {n + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()), flush=True)
        finally:
            stack.stop()
    print("\nmedians over runs:")
    for name in runs[0]:
        print(f"  {name:24s} {statistics.median(r[name] for r in runs):9.2f}")


if __name__ == "__main__":
    main()
