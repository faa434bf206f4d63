"""Precision and recall of the guard's secrets and PII scanners on the offline labelled set.

    python bench/guard_eval.py            # summary per scanner and per type
    python bench/guard_eval.py -v         # also every miss and every false positive

A label counts as found when a finding of its scanner (for PII: of its entity) overlaps the labelled
value; a finding is a true positive when it overlaps such a label, else a false positive. The text is
scanned the way a policy does it (original text, plus the de-obfuscated copy when it hides characters).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.guard.policy import build_policy  # noqa: E402
from shared.guard_config import PiiConfig, PolicyConfig, SecretsConfig  # noqa: E402

DATASET = ROOT / "tests" / "guard_eval" / "dataset.jsonl"
SCANNERS = ("secrets", "pii")


@dataclass
class Tally:
    labels: int = 0
    found: int = 0
    findings: int = 0
    true_findings: int = 0
    by_type: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    fp_by_rule: Counter[str] = field(default_factory=Counter)

    @property
    def recall(self) -> float:
        return self.found / self.labels if self.labels else 1.0

    @property
    def precision(self) -> float:
        return self.true_findings / self.findings if self.findings else 1.0


def load(path: Path = DATASET) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def evaluate(items: list[dict[str, object]], verbose: bool = False) -> dict[str, Tally]:
    policy = build_policy(
        "eval",
        PolicyConfig(secrets=SecretsConfig(action="block"), pii=PiiConfig(action="redact", phone_regions=["US"])),
    )
    tallies = {name: Tally() for name in SCANNERS}
    negatives_hit = Counter[str]()
    negatives = Counter[str]()
    for item in items:
        text = str(item["text"])
        labels = [(str(lb["scanner"]), str(lb["type"]), str(lb["value"])) for lb in item["labels"]]  # type: ignore[attr-defined]
        spans = [(s, t, text.index(v), text.index(v) + len(v)) for s, t, v in labels]
        decisions = [d for d in policy.decide(text) if d.finding.scanner in SCANNERS]
        if not labels:
            category = str(item["category"]).split("/")[0]
            negatives[category] += 1
            if decisions:
                negatives_hit[category] += 1
        for scanner, typ, start, end in spans:
            tally = tallies[scanner]
            tally.labels += 1
            tally.by_type[typ][0] += 1
            hit = any(
                d.finding.scanner == scanner
                and (scanner != "pii" or d.finding.rule == typ)
                and d.finding.start < end
                and start < d.finding.end
                for d in decisions
            )
            if hit:
                tally.found += 1
                tally.by_type[typ][1] += 1
            elif verbose:
                print(f"MISS {item['id']} {scanner}/{typ}: {text[start:end]!r}\n     in {text[:160]!r}")
        for d in decisions:
            f = d.finding
            tally = tallies[f.scanner]
            tally.findings += 1
            ok = any(
                s == f.scanner and (s != "pii" or t == f.rule) and f.start < end and start < f.end
                for s, t, start, end in spans
            )
            if ok:
                tally.true_findings += 1
            else:
                tally.fp_by_rule[f.rule] += 1
                if verbose:
                    print(f"FP   {item['id']} {f.scanner}/{f.rule}: {text[f.start : f.end]!r}\n     in {text[:160]!r}")
    print(f"items: {len(items)}  (negatives: {sum(negatives.values())})")
    for category, n in sorted(negatives.items()):
        print(f"  negative items with any secrets/PII finding, {category}: {negatives_hit[category]}/{n}")
    return tallies


def report(tallies: dict[str, Tally]) -> None:
    print(f"\n{'scanner':<10} {'labels':>6} {'found':>6} {'recall':>7} {'findings':>8} {'precision':>9}")
    for name, t in tallies.items():
        print(f"{name:<10} {t.labels:>6} {t.found:>6} {t.recall:>7.3f} {t.findings:>8} {t.precision:>9.3f}")
    for name, t in tallies.items():
        print(f"\n{name} recall by type:")
        for typ, (n, found) in sorted(t.by_type.items()):
            print(f"  {typ:<22} {found:>3}/{n:<3} {found / n:.3f}")
        if t.fp_by_rule:
            print(f"{name} false positives by rule: {dict(t.fp_by_rule)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="print every miss and false positive")
    parser.add_argument("--dataset", type=Path, default=DATASET)
    args = parser.parse_args()
    report(evaluate(load(args.dataset), args.verbose))


if __name__ == "__main__":
    main()
