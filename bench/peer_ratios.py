"""gatehouse against each peer, as ratios within each harness run, and their medians over runs.

    python bench/peer_ratios.py /tmp/bench-results/gatehouse-20261202-012232-{1,2,3}

Reads each run's summary.json (written by the shared harness, ../shared/bench/lib/report.py) and prints,
per run and as the median over runs: added p50 at 100 rps (target - direct, same run), max throughput
(wrk), CPU ms/request at 300 rps (whole process tree), peak RSS, and the machine's load while gatehouse
ran; then gatehouse ÷ peer for each figure. A ratio is taken within one run before any median, so
machine noise that hits every target of a run alike cancels.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

GATEHOUSE = "gatehouse-target"
# (label, getter, note); a getter returns None where the figure does not exist (e.g. a saturated test)
FIGURES = {
    "added p50 @100 (ms)": lambda t, d: None if _sat(t, "fixed-100") else t["fixed-100"]["p50"] - d["fixed-100"]["p50"],
    "added p50 @25 (ms)": lambda t, d: None if _sat(t, "fixed-25") else t["fixed-25"]["p50"] - d["fixed-25"]["p50"],
    "added p50 @300 (ms)": lambda t, d: None if _sat(t, "fixed-300") else t["fixed-300"]["p50"] - d["fixed-300"]["p50"],
    "max req/s (wrk)": lambda t, d: t["max"]["rps"],
    "CPU ms/req @300": lambda t, d: t["fixed-300"]["cpu_ms_per_req"],
    "CPU ms/req @max": lambda t, d: t["max"]["cpu_ms_per_req"],
    "peak RSS (MB)": lambda t, d: t["peak_rss_mb"],
}
RATIOS = ("added p50 @100 (ms)", "max req/s (wrk)", "CPU ms/req @300", "peak RSS (MB)")


def _sat(target: dict[str, object], test: str) -> bool:
    entry = target.get(test)
    return not isinstance(entry, dict) or bool(entry.get("saturated"))


def fmt(value: float | None) -> str:
    if value is None:
        return "sat."
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3f}"


def med(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def main() -> None:
    runs = [json.loads((Path(p) / "summary.json").read_text()) for p in sys.argv[1:]]
    if not runs:
        sys.exit(__doc__)
    names = [n for n in runs[0]["targets"] if n != "direct"]
    header = "| figure | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " | **median** |"
    rule = "|---" * (len(runs) + 2) + "|"
    values: dict[str, dict[str, list[float | None]]] = {}
    for name in names:
        print(f"\n### {name} ({runs[0]['targets'][name]['version']})\n\n{header}\n{rule}")
        values[name] = {}
        for label, get in FIGURES.items():
            row = [get(r["targets"][name], r["targets"]["direct"]) for r in runs]
            values[name][label] = row
            print(f"| {label} | " + " | ".join(fmt(v) for v in row) + f" | **{fmt(med(row))}** |")
        loads = [r["targets"][name]["fixed-100"]["window"]["loadavg"] for r in runs]
        others = [r["targets"][name]["fixed-100"]["window"].get("other_cores") for r in runs]
        print("| load average during @100 | " + " | ".join(f"{a:.1f}→{b:.1f}" for a, b in loads) + " | |")
        print("| other processes' cores @100 | " + " | ".join(fmt(o) for o in others) + " | |")
    for peer in (n for n in names if n != GATEHOUSE):
        print(f"\n### gatehouse ÷ {peer}, per run\n\n{header}\n{rule}")
        for label in RATIOS:
            row = []
            for g, p in zip(values[GATEHOUSE][label], values[peer][label], strict=True):
                row.append(None if g is None or p is None or p == 0 else g / p)
            print(f"| {label} | " + " | ".join(fmt(v) for v in row) + f" | **{fmt(med(row))}** |")


if __name__ == "__main__":
    main()
