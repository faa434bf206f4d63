"""MCP: the latency a tool call gains through gatehouse, against the same call made directly to the upstream.

Starts an upstream MCP server written with the official SDK (tests/mcp_servers/notes.py, Streamable HTTP, in
its own process) and the stack (`gatehouse up` code: every service, the default guard policy scanning the
arguments and the result, the record of every call into chDB), then per run: `--calls` sequential `echo` calls
over one SDK session direct to the upstream, and as many over one SDK session through gatehouse's `/mcp`
(the two interleaved in blocks of 50, so drift on the machine falls on both). Per run: p50 and p99 of each,
the added p50 (gatehouse - direct) and the ratio of p50s; then the medians over runs.

    python bench/mcp.py --calls 500 --runs 3

Everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# run as a script, this file's folder comes first on the path, and this file would shadow the `mcp` SDK
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))

from mcp import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared._httpx_utils import create_mcp_http_client  # noqa: E402

from gatehouse.launcher import Stack  # noqa: E402
from gatehouse.natsserver import free_port  # noqa: E402
from shared.config import hash_key  # noqa: E402
from tests.e2e.mcp_support import _wait_port  # noqa: E402

KEY = "sk-bench-mcp-0001"
NOTES = REPO / "tests" / "mcp_servers" / "notes.py"
BLOCK = 50


def config(upstream: str) -> str:
    return f"""
server: {{host: 127.0.0.1, port: 0}}
keys:
  - {{id: bench, sha256: {hash_key(KEY)}, team: bench}}
providers: {{mock: {{kind: mock}}}}
models:
  - name: bench
    deployments: [{{provider: mock, model: bench}}]
mcp:
  servers:
    up: {{transport: http, url: "{upstream}"}}
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


@asynccontextmanager
async def session(url: str, headers: dict[str, str]) -> AsyncIterator[Client]:
    http = create_mcp_http_client(headers=headers)
    async with http, Client(streamable_http_client(url, http_client=http), mode="legacy", cache=None) as client:  # type: ignore[arg-type]
        yield client


async def timed(client: Client, tool: str, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        result = await client.call_tool(tool, {"text": f"call {i}"})
        out.append((time.perf_counter() - t0) * 1000)
        assert not result.is_error, result
    return out


async def one_run(direct_url: str, gateway_url: str, calls: int) -> dict[str, float]:
    direct: list[float] = []
    gated: list[float] = []
    async with session(direct_url, {}) as up, session(gateway_url, {"authorization": f"Bearer {KEY}"}) as gh:
        await timed(up, "echo", 20)  # warm-up: connections, caches
        await timed(gh, "up__echo", 20)
        for _ in range(max(calls // BLOCK, 1)):
            direct += await timed(up, "echo", BLOCK)
            gated += await timed(gh, "up__echo", BLOCK)
    d50, g50 = pct(direct, 0.5), pct(gated, 0.5)
    return {
        "direct_p50_ms": d50,
        "direct_p99_ms": pct(direct, 0.99),
        "gatehouse_p50_ms": g50,
        "gatehouse_p99_ms": pct(gated, 0.99),
        "added_p50_ms": g50 - d50,
        "ratio_p50": g50 / d50,
    }


async def wait_upstream(gateway_url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with session(gateway_url, {"authorization": f"Bearer {KEY}"}) as gh:
                if any(t.name == "up__echo" for t in (await gh.list_tools()).tools):
                    return
        except Exception:  # not up yet
            pass
        if time.monotonic() > deadline:
            sys.exit("gatehouse never listed the upstream's tools")
        await asyncio.sleep(0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=500, help="calls per side per run")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(NOTES), "http", "up", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    runs: list[dict[str, float]] = []
    try:
        _wait_port(port)
        direct_url = f"http://127.0.0.1:{port}/mcp"
        with tempfile.TemporaryDirectory(prefix="gh-bench-mcp-") as tmp:
            cfg = Path(tmp) / "gatehouse.yaml"
            cfg.write_text(config(direct_url))
            stack = Stack(
                config=cfg, data_dir=Path(tmp) / "data", host="127.0.0.1", port=free_port(), prefix="bm",
                nats_port=free_port(),
            )  # fmt: skip
            stack.start()
            try:
                if not stack.wait_ready(90):
                    sys.exit("the stack did not become ready")
                gateway_url = f"{stack.ingress_url}/mcp"
                asyncio.run(wait_upstream(gateway_url))
                for n in range(args.runs):
                    load = os.getloadavg()[0]
                    result = asyncio.run(one_run(direct_url, gateway_url, args.calls))
                    result["load_1m_before"], result["load_1m_after"] = load, os.getloadavg()[0]
                    runs.append(result)
                    print(f"run {n + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()), flush=True)
            finally:
                stack.stop()
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)
    print("\nmedians over runs:")
    for name in runs[0]:
        print(f"  {name:18s} {statistics.median(r[name] for r in runs):9.3f}")


if __name__ == "__main__":
    main()
