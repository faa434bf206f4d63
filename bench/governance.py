"""What governance costs on the hot path: a budgeted, rate-limited key against a plain key, in the same run.

Starts the stack (`gatehouse up` code, full pipeline: guard, router, accounting, chDB) with two ingress
replicas and a priced mock model, creates through the admin API
- a plain virtual key (no limits: authentication only, no counters), and
- a governed key: by default a hard monthly budget and a requests-per-minute quota (`--limits all` adds
  tokens per minute and concurrency; `--team-limits` puts the same on its team, doubling the counters),
then measures, interleaved so that machine noise hits both alike:
1. latency: sequential requests alternating plain/governed, `--requests` of each; medians and p99;
2. throughput: `--concurrency` clients for `--seconds` on each key across both replicas (budget
   reservations per second across replicas).

    python bench/governance.py --requests 1000 --concurrency 32 --seconds 10 --runs 3
    python bench/governance.py ... --leases off    # every request counted exactly (no leased blocks)

Prints a table per run and the medians over runs. Loopback only; everything it starts, it stops.
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

CONFIG = """
server: {host: 127.0.0.1, port: 0}
providers: {mock: {kind: mock}}
models:
  - name: bench
    max_output_tokens: 64
    deployments: [{provider: mock, model: bench, price: {input_per_mtok: 0.15, output_per_mtok: 0.6}}]
guardrails: {default_policy: none, policies: {none: {}}}
"""
# what the governed key carries: a budget and a rate limit (the "budgeted, rate-limited key"), every
# quota, or one of them alone (to see what each costs)
LIMITS: dict[str, dict[str, object]] = {
    "budget+rpm": {"quotas": {"rpm": 10_000_000}, "budgets": [{"amount_usd": 1_000_000, "period": "monthly"}]},
    "all": {
        "quotas": {"rpm": 10_000_000, "tpm": 1_000_000_000, "max_concurrency": 100_000},
        "budgets": [{"amount_usd": 1_000_000, "period": "monthly"}],
    },
    "rpm": {"quotas": {"rpm": 10_000_000}},
    "budget": {"budgets": [{"amount_usd": 1_000_000, "period": "monthly"}]},
}
BODY = {"model": "bench", "messages": [{"role": "user", "content": "hello from the benchmark"}], "max_tokens": 16}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


async def latency(urls: list[str], keys: dict[str, str], n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in keys}
    async with httpx.AsyncClient(timeout=30) as client:
        for i in range(n):
            for name, secret in keys.items():
                url = urls[i % len(urls)]
                t0 = time.perf_counter()
                r = await client.post(
                    f"{url}/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {secret}"}
                )
                out[name].append((time.perf_counter() - t0) * 1000)
                if r.status_code != 200:
                    raise SystemExit(f"{name}: {r.status_code} {r.text}")
    return out


async def throughput(urls: list[str], secret: str, clients: int, seconds: float) -> tuple[float, int]:
    done = errors = 0
    stop = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def worker(i: int) -> None:
            nonlocal done, errors
            while time.monotonic() < stop:
                r = await client.post(
                    f"{urls[i % len(urls)]}/v1/chat/completions",
                    json=BODY,
                    headers={"authorization": f"Bearer {secret}"},
                )
                done += r.status_code == 200
                errors += r.status_code != 200

        start = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        return done / (time.monotonic() - start), errors


def run_once(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    config = tmp / "gatehouse.yaml"
    leases = "true" if args.leases == "on" else "false"
    config.write_text(CONFIG + f"governance: {{leases: {leases}}}\n")
    port = free_port()
    stack = Stack(config=config, data_dir=tmp / "data", host="127.0.0.1", port=port, prefix="govbench",
                  nats_port=free_port(), replicas={"ingress": 2})  # fmt: skip
    stack.start()
    try:
        assert stack.wait_ready(120), "stack did not start"
        admin = {"authorization": f"Bearer {stack.admin_key_file.read_text().strip()}"}
        base = f"{stack.ingress_url}/admin/v1"
        limits = LIMITS[args.limits]
        team_limits = limits if args.team_limits else {}
        httpx.post(f"{base}/teams", json={"id": "plain"}, headers=admin).raise_for_status()
        httpx.post(f"{base}/teams", json={"id": "gov", "limits": team_limits}, headers=admin).raise_for_status()
        plain = httpx.post(f"{base}/keys", json={"team": "plain"}, headers=admin).json()["secret"]
        governed = httpx.post(f"{base}/keys", json={"team": "gov", "limits": limits}, headers=admin).json()["secret"]
        urls = stack.ingress_urls
        for secret in (plain, governed):  # both replicas know both keys
            for url in urls:
                deadline = time.monotonic() + 10
                while httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {secret}"}).status_code != 200:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
        asyncio.run(latency(urls, {"plain": plain, "governed": governed}, 100))  # warm-up
        lat = asyncio.run(latency(urls, {"plain": plain, "governed": governed}, args.requests))
        tput_plain, err_p = asyncio.run(throughput(urls, plain, args.concurrency, args.seconds))
        tput_gov, err_g = asyncio.run(throughput(urls, governed, args.concurrency, args.seconds))
        return {
            "plain p50 ms": statistics.median(lat["plain"]),
            "governed p50 ms": statistics.median(lat["governed"]),
            "added p50 ms": statistics.median(lat["governed"]) - statistics.median(lat["plain"]),
            "plain p99 ms": pct(lat["plain"], 0.99),
            "governed p99 ms": pct(lat["governed"], 0.99),
            "plain req/s": tput_plain,
            "governed req/s (reservations/s)": tput_gov,
            "errors": float(err_p + err_g),
        }
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--limits", choices=sorted(LIMITS), default="budget+rpm", help="what the governed key carries")
    parser.add_argument(
        "--team-limits", action="store_true", help="the same limits on its team too (twice the counters)"
    )
    parser.add_argument(
        "--leases",
        choices=["on", "off"],
        default="on",
        help="governance.leases: admit from leased counter blocks (on) or count every request exactly (off)",
    )
    args = parser.parse_args()
    results: list[dict[str, float]] = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            result = run_once(args, Path(tmp))
        results.append(result)
        load = os.getloadavg()[0]
        print(f"run {run + 1} (load average {load:.1f}): " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()))
    print("\nmedian over runs:")
    for name in results[0]:
        values = [r[name] for r in results]
        print(f"  {name:34s} {statistics.median(values):9.3f}   (runs: {', '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
