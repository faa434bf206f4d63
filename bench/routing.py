"""Routing benchmarks (issue 8): what routing decides costs, what one failover adds, and what an upstream
outage costs clients with and without the shared circuit breaker.

1. `decisions`: the routing decision of one request (order the deployments by the strategy, build the plan,
   pick the first attempt) for a model of 3 deployments, per strategy, in µs (in process, no I/O).
2. `failover`: the latency of a request whose first deployment answers 503 at once and whose second answers,
   against a request the same deployment answers directly; through the dispatcher and the production
   upstream transport, against the fault-injecting upstream in its own process (breaker off, so every
   request fails over). Interleaved, so machine noise hits both alike.
3. `outage`: the whole stack (`gatehouse up` code: ingress, guard, two router replicas, accounting) in front
   of three upstreams (own processes); clients keep `--concurrency` requests going with a 1 s deadline
   (`x-gatehouse-timeout`); after 2 s one upstream starts to hang. Client-visible error rate during the
   outage, and when the last error came, for: the breaker shared through NATS (the default), the breaker per
   replica only (`breaker.shared: false`), and no breaker.

    python bench/routing.py [decisions|failover|outage|all] [--requests 500] [--seconds 10]

Loopback only; everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gatehouse.launcher import Stack  # noqa: E402
from gatehouse.natsserver import free_port  # noqa: E402
from services.router import plan  # noqa: E402
from services.router.core import build_routes  # noqa: E402
from services.router.dispatch import Dispatcher  # noqa: E402
from services.router.health import HealthBoard  # noqa: E402
from services.router.providers.openai import OpenAITranslator  # noqa: E402
from services.router.upstream import Upstream  # noqa: E402
from shared.config import GatehouseConfig, hash_key  # noqa: E402
from shared.routing_config import STRATEGIES  # noqa: E402
from shared.schemas.chat import Caller, ChatRequest, Reply  # noqa: E402
from shared.schemas.openai import chat_from_builtins  # noqa: E402
from tests.emulators import faults  # noqa: E402

KEY = "sk-bench-routing"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def request(model: str) -> ChatRequest:
    chat = chat_from_builtins({"model": model, "messages": [{"role": "user", "content": "bench"}], "max_tokens": 16})
    return ChatRequest(request_id="b", api="chat", model=model, chat=chat, caller=Caller(key_id="k"))


# ---- 1. decisions ------------------------------------------------------------------------------------------
def decisions(n: int = 20_000) -> None:
    def dep(provider: str, model: str, rates: tuple[float, float], weight: int = 1) -> dict[str, object]:
        price = {"input_per_mtok": rates[0], "output_per_mtok": rates[1]}
        return {"provider": provider, "model": model, "weight": weight, "price": price}

    deployments = [dep("a", "gpt-4o-mini", (0.15, 0.6), 2), dep("b", "gpt-4o", (2.5, 10)), dep("c", "gpt-4.1", (2, 8))]
    cfg = GatehouseConfig.model_validate(
        {
            "providers": {"a": {"kind": "mock"}, "b": {"kind": "mock"}, "c": {"kind": "mock"}},
            "models": [{"name": "m", "deployments": deployments}],
        }
    )
    routes = build_routes(cfg, {})
    dispatcher = Dispatcher(routes, Upstream(), {"mock": OpenAITranslator()}, rng=random.Random(1))
    board = dispatcher.board
    for i, dep in enumerate(routes["m"].deployments):  # some history, as a running replica has
        board.success(dep.id, time.time(), 100.0 + 50 * i, 40.0 + 10 * i)
    req = request("m")
    route = routes["m"]
    print(f"routing decision for a model of 3 deployments ({n} decisions per strategy)")
    print("| strategy | µs per decision (median of 5) |")
    print("|---|---|")
    for strategy in STRATEGIES:
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                now = time.time()
                order = dispatcher._order(req, strategy)
                candidates = plan.candidates(route, routes, order)
                plan.pick(candidates, {}, lambda d, now=now: board.availability(d, now), lambda d: board.blocked(d)[:2],
                          lambda d: True)  # fmt: skip
            samples.append((time.perf_counter() - t0) / n * 1e6)
        print(f"| {strategy} | {statistics.median(samples):.1f} |")


# ---- 2. failover -------------------------------------------------------------------------------------------
def upstream_process(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "tests.emulators.faults:create_app", "--port", str(port),
         "--log-level", "error", "--no-access-log"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.post(f"http://127.0.0.1:{port}/_faults/warmup", json={"faults": []}, timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the upstream did not start")


async def failover(n: int) -> None:
    port = free_port()
    proc = upstream_process(port)
    try:
        async with httpx.AsyncClient() as http:
            await http.post(f"http://127.0.0.1:{port}/_faults/bad", json={"faults": [], "default": "fail:503"})
        provider = {"kind": "openai", "api_base": f"http://127.0.0.1:{port}/v1", "api_key_env": "K"}
        cfg = GatehouseConfig.model_validate(
            {
                "providers": {"p": provider},
                "models": [
                    {"name": "direct", "deployments": [{"provider": "p", "model": "good"}]},
                    {
                        "name": "failover",
                        "deployments": [{"provider": "p", "model": "bad"}, {"provider": "p", "model": "good"}],
                    },
                ],
                "routing": {"breaker": {"enabled": False}},
            }
        )  # fmt: skip
        upstream = Upstream()
        routes = build_routes(cfg, {"K": faults.API_KEY})
        dispatcher = Dispatcher(routes, upstream, {"openai": OpenAITranslator()}, board=HealthBoard(cfg.routing, "b"))
        times: dict[str, list[float]] = {"direct": [], "failover": []}

        async def send(_: Reply) -> None:
            return None

        for i in range(n + 50):
            for model in ("direct", "failover"):
                t0 = time.perf_counter()
                await dispatcher.serve(request(model), send)
                if i >= 50:  # warm-up: connections opened, code paths hot
                    times[model].append((time.perf_counter() - t0) * 1000)
        await upstream.aclose()
    finally:
        proc.terminate()
        proc.wait(10)
    d, f = times["direct"], times["failover"]
    print(f"one failover (503 at once, then success) vs direct success, {n} requests each, interleaved")
    print("| | p50 ms | p99 ms |")
    print("|---|---|---|")
    print(f"| direct | {statistics.median(d):.2f} | {pct(d, 0.99):.2f} |")
    print(f"| with one failover | {statistics.median(f):.2f} | {pct(f, 0.99):.2f} |")
    print(f"| **added by the failover** | **{statistics.median(f) - statistics.median(d):.2f}** | "
          f"{pct(f, 0.99) - pct(d, 0.99):.2f} |")  # fmt: skip


# ---- 3. outage ---------------------------------------------------------------------------------------------
def outage_config(ports: list[int], breaker: dict[str, object]) -> str:
    providers = "".join(
        f"  u{i}: {{kind: openai, api_base: 'http://127.0.0.1:{p}/v1', api_key_env: BENCH_FAULTS_KEY, timeout_s: 2, "
        "passthrough: false}\n"
        for i, p in enumerate(ports)
    )
    deployments = ", ".join(f"{{provider: u{i}, model: ok}}" for i in range(len(ports)))
    flags = ", ".join(f"{k}: {str(v).lower()}" for k, v in breaker.items())
    return f"""
server: {{host: 127.0.0.1, port: 0}}
keys: [{{id: bench, sha256: {hash_key(KEY)}}}]
providers:
{providers}models:
  - name: m
    routing: {{strategy: weighted}}
    deployments: [{deployments}]
guardrails: {{default_policy: none, policies: {{none: {{}}}}}}
routing:
  breaker: {{{flags}}}
"""


async def load(url: str, concurrency: int, seconds: float, outage_at: float, ports: list[int]) -> dict[str, float]:
    results: list[tuple[float, bool]] = []
    start = time.monotonic()
    headers = {"Authorization": f"Bearer {KEY}", "x-gatehouse-timeout": "1"}
    body = {"model": "m", "messages": [{"role": "user", "content": "outage"}]}
    broke = asyncio.Event()

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() - start < seconds:
            t = time.monotonic()
            try:
                ok = (await http.post(f"{url}/v1/chat/completions", headers=headers, json=body)).status_code == 200
            except httpx.HTTPError:
                ok = False
            results.append((t - start, ok))

    async def breaker() -> None:
        await asyncio.sleep(outage_at)
        async with httpx.AsyncClient() as http:
            await http.post(f"http://127.0.0.1:{ports[1]}/_faults/ok", json={"faults": [], "default": "hang"})
        broke.set()

    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=concurrency)) as http:
        await asyncio.gather(breaker(), *(client(http) for _ in range(concurrency)))
    during = [ok for t, ok in results if t >= outage_at]
    failed = [t for t, ok in results if t >= outage_at and not ok]
    return {
        "requests": len(during),
        "error_rate": 1 - sum(during) / len(during) if during else 0.0,
        "errors": len(failed),
        "last_error_s": (max(failed) - outage_at) if failed else 0.0,
        "before": sum(1 for t, ok in results if t < outage_at and not ok),
    }


def outage(seconds: float, concurrency: int) -> None:
    variants = {
        "shared breaker (NATS KV)": {"enabled": True, "shared": True},
        "breaker per replica": {"enabled": True, "shared": False},
        "no breaker": {"enabled": False},
    }
    print(f"upstream outage (1 of 3 hangs after 2 s), {concurrency} clients, {seconds:g} s, 1 s client deadline, "
          "2 router replicas, weighted strategy")  # fmt: skip
    print("| breaker | requests during outage | client-visible errors | error rate | last error after |")
    print("|---|---|---|---|---|")
    for name, breaker in variants.items():
        ports = [free_port() for _ in range(3)]
        procs = [upstream_process(p) for p in ports]
        os.environ["BENCH_FAULTS_KEY"] = faults.API_KEY
        try:
            with tempfile.TemporaryDirectory() as tmp:
                config = Path(tmp) / "gatehouse.yaml"
                config.write_text(outage_config(ports, breaker))
                stack = Stack(config=config, data_dir=Path(tmp) / "data", host="127.0.0.1", port=free_port(),
                              prefix="benchrt", nats_port=0, replicas={"router": 2})  # fmt: skip
                stack.start()
                try:
                    if not stack.wait_ready(90):
                        raise SystemExit("the stack did not become ready")
                    time.sleep(1.0)  # the second router replica
                    r = asyncio.run(load(stack.ingress_url, concurrency, seconds, 2.0, ports))
                finally:
                    stack.stop()
        finally:
            for p in procs:
                p.kill()
                p.wait(10)
        print(f"| {name} | {r['requests']:.0f} | {r['errors']:.0f} | {r['error_rate']:.1%} | "
              f"{r['last_error_s']:.2f} s |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", nargs="?", default="all", choices=["decisions", "failover", "outage", "all"])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    if args.what in ("decisions", "all"):
        decisions()
    if args.what in ("failover", "all"):
        asyncio.run(failover(args.requests))
    if args.what in ("outage", "all"):
        outage(args.seconds, args.concurrency)
    print(f"load average after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
