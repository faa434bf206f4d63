"""Where gatehouse's added latency goes: µs per hop (median) and CPU per process per request, at a fixed rate.

    python bench/hop_profile.py                       # 3 rounds of (direct 20 s, gatehouse 20 s) at 100 rps, traced
    python bench/hop_profile.py --no-trace            # the same without tracing (its overhead, by comparison)
    python bench/hop_profile.py --calls --rounds 0    # Python function calls per request, by library (cProfile)
    python bench/hop_profile.py --no-trace --repo /tmp/old   # an older commit's code (git archive), for an A/B

Starts the shared harness's nginx mock (../shared/bench/nginx, port 18080) and `gatehouse up` from this
checkout with bench/gatehouse.yaml (full pipeline: guard with the default policy, events to JetStream and
ClickHouse), then alternates open-loop phases straight at nginx ("direct") and through gatehouse, with the
same aiohttp client. With tracing, bench/hoptrace/ is put on the stack's PYTHONPATH and every service
process records CLOCK_MONOTONIC timestamps per request at each hop (see bench/hoptrace/hoptrace.py); the
client stamps the same clock, so a request's points line up across the five processes. CPU per process
comes from /proc before and after each gatehouse phase. Everything it starts is stopped when it ends;
it writes only under --out (default /tmp/gatehouse-hop-profile).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import aiohttp
import uvloop

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
BODY = json.dumps(  # the request the harness sends (its run.sh, write_body)
    {
        "model": "bench-model",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Write one sentence about latency benchmarks."},
        ],
        "max_tokens": 64,
        "temperature": 0,
    }
).encode()
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
DIRECT = "http://127.0.0.1:18080/v1/chat/completions"
GATEHOUSE = "http://127.0.0.1:15080/v1/chat/completions"

# (label, from point, to point): consecutive stages of one non-streaming request; "client.*" are the load
# generator's, "ingress.rx.inbox#2" is the second message on the request's inbox (the first is the verdict)
HOPS = [
    ("client → ingress socket read", "client.send", "ingress.http"),
    ("ingress: HTTP parse, routing → handler", "ingress.http", "ingress.start"),
    ("ingress: auth, body, decode, encode → publish", "ingress.start", "ingress.pub.guard"),
    ("bus ingress → guard", "ingress.pub.guard", "guard.rx.guard"),
    ("guard: subscription → handler", "guard.rx.guard", "guard.start"),
    ("guard: decode request", "guard.start", "guard.check0"),
    ("guard: policy scan", "guard.check0", "guard.check1"),
    ("guard: verdict encode + publish", "guard.check1", "guard.pub.inbox"),
    ("guard: encode + publish to router", "guard.pub.inbox", "guard.pub.router"),
    ("bus guard → router", "guard.pub.router", "router.rx.router"),
    ("router: subscription → handler", "router.rx.router", "router.start"),
    ("router: decode, route, translate", "router.start", "router.send"),
    ("upstream: request → status+headers", "router.send", "router.resp"),
    ("upstream: body read", "router.resp", "router.body"),
    ("router: result encode + publish", "router.body", "router.pub.inbox"),
    ("bus router → ingress", "router.pub.inbox", "ingress.rx.inbox#2"),
    ("ingress: inbox → request task", "ingress.rx.inbox#2", "ingress.next.Result"),
    ("ingress: record + response built", "ingress.next.Result", "ingress.write0"),
    ("ingress: response written", "ingress.write0", "ingress.write1"),
    ("ingress socket write → client has it", "ingress.write1", "client.done"),
]
SIDE = [
    ("guard verdict: publish → ingress socket read", "guard.pub.inbox", "ingress.rx.inbox#1"),
    ("guard verdict: ingress read → request task", "ingress.rx.inbox#1", "ingress.next.Verdict"),
    ("record to the event publisher (submit)", "ingress.submit0", "ingress.submit1"),
    ("response written → record published (JetStream)", "ingress.write1", "ingress.pub.events"),
    ("guard handler total", "guard.start", "guard.end"),
    ("router handler total", "router.start", "router.end"),
]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


USAGE = ("cpu ms", "sys ms", "read calls", "write calls", "ctx switches")


def usage(pid: int) -> dict[str, float]:
    """CPU (user+sys, and sys), read/write syscalls and context switches of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if "ctxt_switches:" in line:  # voluntary and involuntary
                switches += int(line.split()[1])
    return {
        "cpu ms": 1000 * (int(fields[11]) + int(fields[12])) / TICK,
        "sys ms": 1000 * int(fields[12]) / TICK,
        "read calls": int(io["syscr"]),
        "write calls": int(io["syscw"]),
        "ctx switches": switches,
    }


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def proc_name(pid: int) -> str:
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if b"-m" in args:
        return args[args.index(b"-m") + 1].decode().replace("services.", "").replace("gatehouse.cli", "launcher")
    return Path(args[0].decode()).name


def processes(root: int) -> dict[str, int]:
    """name → pid for the launcher, nats-server and the four services (one replica each here)."""
    return {proc_name(p): p for p in [root, *children(root)]}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def open_loop(url: str, rate: float, duration: float) -> list[tuple[int, int, str, int]]:
    """Requests sent at start + i/rate whether or not earlier ones finished; (sent ns, done ns, request id, status)."""
    out: list[tuple[int, int, str, int]] = []
    connector = aiohttp.TCPConnector(limit=256, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            t0 = time.monotonic_ns()
            async with session.post(url, data=BODY, headers=HEADERS) as resp:
                await resp.read()
                out.append((t0, time.monotonic_ns(), resp.headers.get("x-request-id", ""), resp.status))

        # a few requests first so every pooled connection is open before the clock starts
        await asyncio.gather(*(one() for _ in range(8)))
        out.clear()
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05
        tasks = []
        for i in range(int(rate * duration)):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return out


def latency_ms(rows: list[tuple[int, int, str, int]]) -> list[float]:
    return [(done - sent) / 1e6 for sent, done, _, status in rows if status == 200]


class Stack:
    """nginx (the harness's mock) and `gatehouse up` from this checkout; stops both on exit."""

    def __init__(self, out: Path, trace: bool, repo: Path = REPO, calls: bool = False) -> None:
        self.out = out
        self.repo = repo
        self.trace_dir = out / "trace" if trace else None
        self.calls_dir = out / "calls" if calls else None
        self.nginx: subprocess.Popen[bytes] | None = None
        self.gatehouse: subprocess.Popen[bytes] | None = None

    def start(self, harness: Path) -> None:
        for port in (18080, 15080):
            if not port_free(port):
                sys.exit(f"port {port} is in use (a benchmark running?)")
        prefix = self.out / "nginx"
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        conf = harness / "nginx" / "mock-upstream.conf"
        self.nginx = subprocess.Popen(
            ["nginx", "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        env = dict(os.environ)
        paths = [str(self.repo)] + ([str(REPO / "bench" / "hoptrace")] if self.trace_dir or self.calls_dir else [])
        env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        if self.trace_dir:
            env["GATEHOUSE_HOPTRACE"] = str(self.trace_dir)
        if self.calls_dir:
            env["GATEHOUSE_CPROFILE"] = str(self.calls_dir)
        log = (self.out / "gatehouse.log").open("wb")
        cmd = [sys.executable, "-m", "gatehouse.cli", "up", "--config", str(self.repo / "bench" / "gatehouse.yaml")]
        cmd += ["--data-dir", str(self.out / "data"), "--port", "15080", "--nats-port", "0", "--prefix", "hop"]
        self.gatehouse = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.out)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                request = urllib.request.Request(GATEHOUSE, data=BODY, headers=HEADERS)
                with urllib.request.urlopen(request, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
            if self.gatehouse.poll() is not None:
                break
        self.stop()
        sys.exit(f"gatehouse did not serve a request; see {self.out / 'gatehouse.log'}")

    def stop(self) -> None:
        if self.gatehouse and self.gatehouse.poll() is None:
            self.gatehouse.send_signal(signal.SIGINT)
            try:
                self.gatehouse.wait(60)
            except subprocess.TimeoutExpired:
                self.gatehouse.kill()
        if self.nginx and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)
            self.nginx.wait(10)


Stamp = tuple[int, int]  # (CLOCK_MONOTONIC ns, the thread's CPU time ns; -1 for the client)
Traces = dict[str, dict[str, list[Stamp]]]


def read_traces(trace_dir: Path) -> Traces:
    points: Traces = defaultdict(lambda: defaultdict(list))
    for path in trace_dir.glob("*.tsv"):
        for line in path.read_text().splitlines():
            t, cpu, point, rid = line.split("\t")
            if rid:
                points[rid][point].append((int(t), int(cpu)))
    return points


def point_at(p: dict[str, list[Stamp]], name: str) -> Stamp | None:
    name, _, nth = name.partition("#")
    values = sorted(p.get(name, []))
    i = int(nth) - 1 if nth else 0
    return values[i] if len(values) > i else None


def hop_table(rows: list[tuple[int, int, str, int]], traces: Traces) -> list[str]:
    """Wall time per hop (median, p90) and, for a hop inside one process, the CPU that process spent on it."""
    spans: dict[str, list[float]] = defaultdict(list)
    cpus: dict[str, list[float]] = defaultdict(list)
    covered = 0
    for sent, done, rid, status in rows:
        p = traces.get(rid)
        if status != 200 or p is None:
            continue
        p = {**p, "client.send": [(sent, -1)], "client.done": [(done, -1)]}
        covered += 1
        for label, a, b in HOPS + SIDE:
            sa, sb = point_at(p, a), point_at(p, b)
            if sa is None or sb is None:
                continue
            spans[label].append((sb[0] - sa[0]) / 1000)
            if a.split(".", 1)[0] == b.split(".", 1)[0] and sa[1] >= 0:  # one process: its thread's CPU
                cpus[label].append((sb[1] - sa[1]) / 1000)
    lines = [f"{covered} traced requests", ""]
    for title, hops in (("hop", HOPS), ("alongside", SIDE)):
        lines += [f"| {title} | median µs | p90 µs | CPU µs (median) |", "|---|---|---|---|"]
        wall = cpu = 0.0
        for label, _, _ in hops:
            values = spans.get(label, [])
            med = statistics.median(values) if values else float("nan")
            work = statistics.median(cpus[label]) if cpus.get(label) else None
            wall += med
            cpu += work or 0.0
            lines.append(f"| {label} | {med:.0f} | {pct(values, 0.9):.0f} | {'-' if work is None else f'{work:.0f}'} |")
        if title == "hop":
            lines += [f"| **sum of medians** | **{wall:.0f}** | | **{cpu:.0f}** |", ""]
    return lines


def write_table(traces: Traces, windows: list[tuple[int, int]], requests: int) -> list[str]:
    """Socket writes per process (traced as request id "-") during the measured phases: how many per
    request, and how long each write call took (wall and CPU)."""
    points = traces.get("-", {})
    lines = ["", "| socket writes | per request | median µs | p90 µs | CPU µs (median) |", "|---|---|---|---|---|"]
    for start in sorted(p for p in points if p.endswith("write0")):
        pairs = zip(sorted(points[start]), sorted(points.get(start[:-1] + "1", [])), strict=False)
        inside = [(b, e) for b, e in pairs if any(lo <= b[0] <= hi for lo, hi in windows)]
        durations = [(e[0] - b[0]) / 1000 for b, e in inside]
        work = [(e[1] - b[1]) / 1000 for b, e in inside]
        label = start[:-1].replace("natswrite", "flush to NATS").replace("httpwrite", "upstream request write")
        lines.append(
            f"| {label} | {len(inside) / max(requests, 1):.2f} | {statistics.median(durations):.0f} "
            f"| {pct(durations, 0.9):.0f} | {statistics.median(work):.0f} |"
        )
    return lines


def max_phase(stack: Stack, harness: Path, seconds: int, procs: dict[str, int]) -> list[str]:
    """Closed-loop maximum (the harness's wrk shape: 2 threads, 64 connections) and the CPU it took."""
    body = stack.out / "body.json"
    body.write_bytes(BODY)
    summary = stack.out / "wrk.json"
    env = {**os.environ, "BENCH_BODY_FILE": str(body), "BENCH_WRK_JSON": str(summary)}
    env["BENCH_HEADERS"] = "Authorization: Bearer sk-bench"
    time.sleep(2)
    before = {n: usage(p)["cpu ms"] for n, p in procs.items()}
    script = str(harness / "lib" / "post.lua")
    cmd = ["wrk", "-t2", "-c64", f"-d{seconds}s", "--timeout", "10s", "-s", script, GATEHOUSE]
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
    time.sleep(1.5)
    cpu = sum(usage(p)["cpu ms"] - before[n] for n, p in procs.items())
    result = json.loads(summary.read_text())
    errors = sum(result["errors"].values())
    return [
        "",
        f"max (wrk -t2 -c64 {seconds} s): {result['rps']:.0f} req/s, p50 {result['latency_ms']['p50']:.1f} ms, "
        f"errors {errors}, CPU {cpu / result['requests']:.3f} ms/request (whole tree); load average {loadavg()}",
    ]


def calls_phase(stack: Stack, args: argparse.Namespace, procs: dict[str, int]) -> list[str]:
    """One more gatehouse phase under cProfile in each service (bench/hoptrace/callcount.py): Python function
    calls per request, exact whatever the machine's load, and where the profiled time went."""
    assert stack.calls_dir is not None
    services = {n: p for n, p in procs.items() if n in ("ingress", "guard", "router", "accounting")}
    for pid in services.values():
        os.kill(pid, signal.SIGUSR1)
    time.sleep(0.5)
    rows = uvloop.run(open_loop(GATEHOUSE, args.rate, args.duration))
    time.sleep(1.5)  # accounting stores the phase's events
    for pid in services.values():
        os.kill(pid, signal.SIGUSR2)
    files = {n: stack.calls_dir / f"{n}-{p}.prof" for n, p in services.items()}
    deadline = time.monotonic() + 10
    while not all(f.exists() for f in files.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    n = len(rows)
    lines = ["", f"cProfile at {args.rate:g} rps ({n} requests): Python function calls per request", ""]
    lines += ["| process | calls/request | by library (calls/request) |", "|---|---|---|"]
    for name, path in files.items():
        if not path.exists():
            lines.append(f"| {name} | no profile | |")
            continue
        stats = pstats.Stats(str(path))
        by_lib = calls_by_library(stats.stats)  # type: ignore[attr-defined]
        top = sorted(by_lib.items(), key=lambda kv: -kv[1])[:7]
        where = ", ".join(f"{lib} {count / n:.0f}" for lib, count in top)
        lines.append(f"| {name} | {stats.total_calls / n:.0f} | {where} |")  # type: ignore[attr-defined]
    return lines


def _library(path: str) -> str:
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/services/" in path or "/shared/" in path:
        return "gatehouse"
    if "/asyncio/" in path:
        return "asyncio"
    return "stdlib"


def calls_by_library(entries: dict[tuple[str, int, str], tuple]) -> dict[str, float]:  # type: ignore[type-arg]
    """Calls per library; a builtin's calls count for the library of the function that made them."""
    out: dict[str, float] = defaultdict(float)
    for (path, _, _), (_, calls, _, _, callers) in entries.items():
        if path != "~":
            out[_library(path)] += calls
            continue
        for (caller_path, _, _), caller in callers.items():
            out[_library(caller_path) if caller_path != "~" else "stdlib"] += caller[1]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-trace", dest="trace", action="store_false")
    parser.add_argument("--max-seconds", type=int, default=0, help="then wrk -t2 -c64 for this long: max req/s")
    parser.add_argument("--calls", action="store_true", help="then a phase under cProfile: function calls/request")
    parser.add_argument("--harness", type=Path, default=None, help="the shared harness (for its nginx mock)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/gatehouse-hop-profile"))
    parser.add_argument(
        "--repo", type=Path, default=REPO, help="run another checkout's code (e.g. `git archive` of an older commit)"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `kill` still stops what this started
    harness = args.harness or next(
        (p for p in (REPO.parent / "shared" / "bench", REPO.parents[1] / "shared" / "bench") if p.is_dir()), None
    )
    if harness is None:
        sys.exit("the shared harness was not found; pass --harness")
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    stack = Stack(args.out, args.trace, args.repo.resolve(), args.calls)
    stack.start(harness)
    mode = "traced" if args.trace else "untraced"
    report = [
        f"gatehouse hop profile, {mode}, {args.rate:g} rps, {args.rounds} rounds of {args.duration:g} s; "
        f"load average at start {loadavg()}; code {args.repo}"
    ]
    try:
        assert stack.gatehouse is not None
        uvloop.run(open_loop(GATEHOUSE, 200, 5))  # warm-up, discarded
        time.sleep(2)
        procs = processes(stack.gatehouse.pid)
        cpu: dict[str, dict[str, float]] = {n: defaultdict(float) for n in procs}
        direct_p50, gate_p50, gate_rows, sent = [], [], [], 0
        windows: list[tuple[int, int]] = []
        for r in range(args.rounds):
            d = latency_ms(uvloop.run(open_loop(DIRECT, args.rate, args.duration)))
            time.sleep(1)
            before = {n: usage(p) for n, p in procs.items()}
            begun = time.monotonic_ns()
            rows = uvloop.run(open_loop(GATEHOUSE, args.rate, args.duration))
            windows.append((begun, time.monotonic_ns()))
            time.sleep(1.5)  # accounting stores the phase's events (batched) before the CPU is read
            for n, p in procs.items():
                after = usage(p)
                for k in USAGE:
                    cpu[n][k] += after[k] - before[n][k]
            g = latency_ms(rows)
            sent += len(rows)
            gate_rows += rows
            direct_p50.append(statistics.median(d))
            gate_p50.append(statistics.median(g))
            report.append(
                f"round {r + 1}: direct p50 {direct_p50[-1]:.3f} ms, gatehouse p50 {gate_p50[-1]:.3f} ms "
                f"(p99 {pct(g, 0.99):.2f}), added {gate_p50[-1] - direct_p50[-1]:.3f} ms, "
                f"errors {sum(1 for *_, s in rows if s != 200)}; load average {loadavg()}"
            )
            time.sleep(1)
        if sent:
            added = [g - d for g, d in zip(gate_p50, direct_p50, strict=True)]
            report.append(f"median added p50: {statistics.median(added):.3f} ms")
            report += ["", "Per request, by process (over all gatehouse phases):", ""]
            report += ["| per request | " + " | ".join(procs) + " | total |", "|---" * (len(procs) + 2) + "|"]
            for k in USAGE:
                row = [cpu[n][k] / sent for n in procs]
                report.append(f"| {k} | " + " | ".join(f"{v:.3f}" for v in row) + f" | {sum(row):.3f} |")
        if args.calls:
            report += calls_phase(stack, args, procs)
        if args.max_seconds:
            report += max_phase(stack, harness, args.max_seconds, procs)
    finally:
        stack.stop()
    if args.trace and stack.trace_dir:
        traces = read_traces(stack.trace_dir)
        report += ["", *hop_table(gate_rows, traces), *write_table(traces, windows, sent)]
    text = "\n".join(report)
    (args.out / "report.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
