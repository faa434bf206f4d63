"""Guard scan time per request: the shipped default policy (and a fuller one) on 2 KB to 50 KB prompts.

    python bench/guard_scan.py                 # default: 2000 runs at 2 KB, fewer at larger sizes
    python bench/guard_scan.py --runs 500

Prompts are a realistic mix of prose, code and log lines; "dirty" ones also carry an e-mail, a phone
number, a card number and a GitHub token. Reports median and p99 per request (µs) and µs per KB, so
linearity in size can be read off directly. One process, one core, after a warm-up.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.guard.policy import Guardrails, Policy, build_policy
from services.guard.scanners.registry import ScannerRegistry, ScannerUnavailable
from shared.guard_config import (
    GuardrailsConfig,
    InjectionConfig,
    KeywordListConfig,
    PiiConfig,
    PolicyConfig,
    SecretsConfig,
)

PROSE = (
    "Our quarterly review covers revenue, churn and the roadmap for the next two releases. The support "
    "team resolved most tickets within a day, and the new onboarding flow reduced drop-off noticeably. "
    "Please summarise the main risks and suggest three concrete actions for the platform group. "
)
CODE = (
    "def handler(event, context):\n    items = [normalize(x) for x in event['records'] if x.get('ok')]\n"
    "    total = sum(i.amount for i in items)\n    return {'count': len(items), 'total': total}\n"
)
LOG = "2024-05-02T10:11:12.345Z INFO worker-3 processed batch=1532 events in 0.82s (p99=41ms) ok\n"
DIRT = (
    " Contact jane.roe@example.net or +44 20 7946 0958, card 4111 1111 1111 1111,"
    " token ghp_aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5. "
)


def prompt(size: int, dirty: bool, seed: int) -> str:
    rng = random.Random(seed)
    parts: list[str] = []
    total = 0
    while total < size:
        piece = rng.choice([PROSE, PROSE, CODE, LOG])
        parts.append(piece)
        total += len(piece)
    text = "".join(parts)[:size]
    if dirty:
        middle = size // 2
        text = text[:middle] + DIRT + text[middle + len(DIRT) :]
    return text[:size]


def measure_fn(fn: Callable[[str], object], text: str, runs: int) -> float:
    return measure_samples(fn, text, runs)[0]


def measure(policy: Policy, text: str, runs: int) -> tuple[float, float]:
    return measure_samples(policy.scan, text, runs)


def measure_samples(fn: Callable[[str], object], text: str, runs: int) -> tuple[float, float]:
    for _ in range(min(50, runs)):
        fn(text)
    samples: list[int] = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn(text)
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    return statistics.median(samples) / 1000, samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="runs at 2 KB (larger sizes scale down)")
    args = parser.parse_args()
    guardrails = Guardrails(GuardrailsConfig())
    default = guardrails.default
    # the shipped default without the injection scanner: what the default costs while injection is absent
    secrets_only = build_policy("secrets", PolicyConfig(secrets=SecretsConfig()))
    full = build_policy(
        "full",
        PolicyConfig(
            secrets=SecretsConfig(),
            pii=PiiConfig(),
            keywords=[KeywordListConfig(name="codenames", words=["bluebird", "project falcon", "nightjar"])],
        ),
    )
    print(f"default policy scanners: {', '.join(default.scanners)}", end="")
    print(f"  (not installed: {', '.join(default.unavailable)})" if default.unavailable else "")
    print(f"full policy scanners:    {', '.join(full.scanners)}")
    print(f"\n{'policy':<8} {'size':>6} {'text':<6} {'runs':>5} {'p50 µs':>9} {'p99 µs':>9} {'p50 µs/KB':>10}")
    for policy in (default, secrets_only, full):
        for size in (2048, 10240, 51200):
            runs = max(100, args.runs * 2048 // size)
            for dirty in (False, True):
                text = prompt(size, dirty, seed=size)
                p50, p99 = measure(policy, text, runs)
                label = "dirty" if dirty else "clean"
                per_kb = p50 / (size / 1024)
                print(
                    f"{policy.name:<8} {size // 1024:>4}KB {label:<6} {runs:>5} {p50:>9.1f} {p99:>9.1f} {per_kb:>10.2f}"
                )
    print("\nper scanner alone, 2 KB clean / dirty (p50 µs):")
    registry = ScannerRegistry()
    cfg = PolicyConfig(
        secrets=SecretsConfig(),
        pii=PiiConfig(),
        injection=InjectionConfig(),
        keywords=[KeywordListConfig(name="codenames", words=["bluebird", "project falcon", "nightjar"])],
    )
    for name in ("secrets", "pii", "custom", "injection"):
        try:
            scanner = registry.create(name, cfg)
        except ScannerUnavailable:
            print(f"  {name:<10} not installed")
            continue
        cells = [
            f"{measure_fn(scanner.scan, prompt(2048, dirty, seed=2048), args.runs):8.1f}" for dirty in (False, True)
        ]
        print(f"  {name:<10} {' '.join(cells)}")


if __name__ == "__main__":
    main()
