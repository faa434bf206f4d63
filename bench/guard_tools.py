"""The guard's cost on an agent-style request: many tools with described parameters and a long history.

    flock /tmp/bench.lock python bench/guard_tools.py [--tools 20] [--properties 10] [--turns 20] [--repeat 30]

The request carries `--tools` function tools of `--properties` string parameters each (every one with a
description) and a system prompt plus `--turns` conversation turns, under the default policy. Printed, in ms:
- without tools: the same request with no `tools`, called repeatedly (median);
- first call: a fresh guard's first check of the request (after one unrelated warm-up request, so that one-time
  start-up costs are not counted), median over fresh guards;
- repeated call: the same request checked again (median), as an agent resends its tools every turn;
- next turn: the request with one more message each time (median over the turns), as an agent's history grows;
wall and CPU time, each with the per-policy scan cache (`services.guard.scancache`) and without it, and the verdict
of each, which must not differ. The load average is printed before and after: figures taken on a busy machine are
not comparable (CPU time less so than wall time).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.guard.core import Guard
from services.guard.policy import Guardrails
from shared.config import GatehouseConfig, parse_config
from shared.schemas.chat import Caller, ChatRequest
from shared.schemas.openai import chat_from_builtins

CONFIG = "keys:\n  - {id: k, env: K}\n"


def tools(count: int, properties: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": f"tool_number_{i}",
                "description": f"Does thing {i} with the given inputs and returns a JSON summary of the result.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        f"param_{j}": {"type": "string", "description": f"The {j}th parameter of the call"}
                        for j in range(properties)
                    },
                    "required": ["param_0"],
                },
            },
        }
        for i in range(count)
    ]


def messages(turns: int) -> list[dict[str, str]]:
    out = [{"role": "system", "content": "You are a helpful coding assistant. " * 20}]
    for k in range(turns):
        text = f"Turn {k}: please look at the file src/module_{k}.py and fix the failing test in it. " * 5
        out.append({"role": "user" if k % 2 == 0 else "assistant", "content": text})
    return out


def request(msgs: list[dict[str, str]], with_tools: list[dict[str, Any]] | None) -> ChatRequest:
    body: dict[str, Any] = {"model": "m", "messages": msgs}
    if with_tools:
        body["tools"] = with_tools
    return ChatRequest(request_id="r", api="chat", model="m", caller=Caller(key_id="k"), chat=chat_from_builtins(body))


def guard(config: GatehouseConfig, cache: bool) -> Guard:
    g = Guard(config)
    g.rails = Guardrails.from_config(config, cache=cache)
    g.check(request([{"role": "user", "content": "warm up the scanners once"}], None))
    return g


def timed(g: Guard, req: ChatRequest) -> tuple[float, float, str]:
    """Wall and CPU ms of one check, and its verdict (CPU time is the steadier figure on a shared machine)."""
    wall, cpu = time.perf_counter(), time.process_time()
    checked = g.check(req)
    return (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000, checked.summary.action


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tools", type=int, default=20)
    ap.add_argument("--properties", type=int, default=10)
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--fresh", type=int, default=5, help="fresh guards for the first-call figure")
    args = ap.parse_args()
    config = parse_config(CONFIG)
    defined = tools(args.tools, args.properties)
    history = messages(args.turns)
    full = request(history, defined)
    print(f"load average before: {load()}")
    print(f"{args.tools} tools x {args.properties} properties, {args.turns} turns; median wall ms, CPU ms (verdict)")
    verdicts: set[str] = set()
    for cache in (False, True):
        label = "with cache" if cache else "no cache"
        g = guard(config, cache)
        bare = [timed(g, request(history, None)) for _ in range(args.repeat)]
        firsts = [timed(guard(config, cache), full) for _ in range(args.fresh)]
        again = [timed(g, full) for _ in range(args.repeat)]
        g = guard(config, cache)
        timed(g, request(history[:2], defined))
        grown = [timed(g, request(history[: k + 1], defined)) for k in range(2, len(history))]
        for name, runs in (
            ("without tools", bare),
            ("first call", firsts),
            ("repeated call", again),
            ("next turn", grown),
        ):
            verdicts.update(v for _, _, v in runs)
            wall = statistics.median(t for t, _, _ in runs)
            cpu = statistics.median(c for _, c, _ in runs)
            print(f"  {label:10}  {name:14} {wall:8.2f} {cpu:8.2f}  ({runs[0][2]})")
    print(f"verdicts seen: {', '.join(sorted(verdicts))}")
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
