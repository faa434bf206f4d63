"""Evaluate the injection scanner: rules only, classifier only, and both, on held-out data.

    python bench/injection_eval.py [--sample] [--wheel PATH] [--show 10]

(a) The held-out test split of the public sets (see injection_data.py): precision, recall, F1 and
    false-positive rate. With ``--sample`` (or when the wheel cannot be had) the 400-row sample
    committed in bench/data/ is used instead.
(b) Benign text from other distributions, where every flag is a false positive:
    - bench/data/injection_benign_prompts.txt: hand-written hard negatives (everyday, coding and
      security-topic prompts), never trained on;
    - docstring paragraphs from the half of the standard library not used in training;
    - README paragraphs of the gateway's dependencies (installed package metadata), never trained on.
A classifier threshold sweep shows the trade-off between the two. "combined + words" also scans each text's
words view (identifiers.words_view), as a policy does.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from injection_data import DATA_DIR, Example, load_splits, read_benign, stdlib_paragraphs

from services.guard.identifiers import classifier_stands, words_view
from services.guard.scanners.injection import CLASSIFIER_RULE, InjectionScanner


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    def add(self, label: int, flagged: bool) -> None:
        if label:
            self.tp += flagged
            self.fn += not flagged
        else:
            self.fp += flagged
            self.tn += not flagged

    def row(self) -> str:
        p = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        r = self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        fpr = self.fp / (self.fp + self.tn) if self.fp + self.tn else 0.0
        return (
            f"P {p:.3f}  R {r:.3f}  F1 {f1:.3f}  FPR {fpr:.3f}  (tp {self.tp} fp {self.fp} tn {self.tn} fn {self.fn})"
        )


# README text of the gateway's own dependencies, as installed: prose nobody here wrote, never trained on
README_PACKAGES = (
    "pydantic", "httpx", "starlette", "uvicorn", "faststream", "nats-py", "msgspec", "typer", "rich",
    "PyYAML", "clickhouse-connect", "pytest", "mypy", "ruff", "aiohttp", "anyio", "pytest-asyncio",
)  # fmt: skip


def readme_paragraphs(count: int = 500, seed: int = 11) -> list[str]:
    """Prose paragraphs (60-600 chars, no code fences or tables) from installed packages' descriptions."""
    found: set[str] = set()
    for name in README_PACKAGES:
        try:
            body = importlib.metadata.distribution(name).metadata.get_payload()  # type: ignore[attr-defined]
        except importlib.metadata.PackageNotFoundError:
            continue
        in_code = False
        for raw in str(body or "").split("\n\n"):
            if raw.count("```") % 2:
                in_code = not in_code
                continue
            if in_code or "|" in raw or raw.lstrip().startswith(("    ", "<", "[!", "![", "$ ", ">>>")):
                continue
            para = " ".join(raw.split())
            if 60 <= len(para) <= 600:
                found.add(para)
    pool = sorted(found)
    return random.Random(seed).sample(pool, min(count, len(pool)))


def load_test(sample: bool, wheel: Path | None) -> tuple[str, list[Example]]:
    if not sample:
        try:
            return "test split (full)", load_splits(wheel)["test"]
        except (OSError, SystemExit, ImportError) as exc:
            print(f"(wheel unavailable: {exc}; using the committed sample)")
    rows = [json.loads(line) for line in (DATA_DIR / "injection_test_sample.jsonl").read_text().splitlines()]
    return "test split (committed 400-row sample)", [Example(r["text"], r["label"], r["source"], "test") for r in rows]


def read_as_words(scanner: InjectionScanner, text: str) -> bool:
    """Whether the scanner flags the text's words view, as a policy counts it (identifiers.words_view: runs such as
    `ignore_all_previous_instructions` spaced; the classifier only when it is sure)."""
    view = words_view(text)
    if view is None:
        return False
    return any(f.rule != CLASSIFIER_RULE or classifier_stands(view.text, f.score) for f in scanner.scan(view.text))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sample", action="store_true", help="use the committed test sample, not the wheel")
    ap.add_argument("--wheel", type=Path, default=None)
    ap.add_argument("--show", type=int, default=0, help="print this many flagged benign prompts per config")
    args = ap.parse_args()

    name, test = load_test(args.sample, args.wheel)
    benign_sets = {
        "hand-written hard negatives": read_benign(),
        "stdlib docstrings, held-out modules": stdlib_paragraphs("eval", 500),
        "dependency READMEs": readme_paragraphs(),
    }
    combined = InjectionScanner()
    configs: dict[str, Callable[[str], bool]] = {
        "rules only": lambda t: bool(rules.scan(t)),
        "classifier only": lambda t: bool(classifier.scan(t)),
        "combined": lambda t: bool(combined.scan(t)),
        "combined + words": lambda t: bool(combined.scan(t)) or read_as_words(combined, t),
    }
    rules = InjectionScanner(classifier=False)
    classifier = InjectionScanner(rules=False)
    print(f"classifier threshold {combined.threshold:.4f} (stored with the model)")
    print(f"\n(a) {name}: {len(test)} items, {sum(e.label for e in test)} attacks")
    for label, flag in configs.items():
        counts = Counts()
        by_source: dict[str, Counts] = {}
        for ex in test:
            hit = flag(ex.text)
            counts.add(ex.label, hit)
            by_source.setdefault(ex.source.split("/")[0], Counts()).add(ex.label, hit)
        print(f"  {label:16} {counts.row()}")
        for source, c in sorted(by_source.items()):
            print(f"      {source:22} {c.row()}")

    print("\n(b) benign text from other distributions (every flag is a false positive)")
    for set_name, texts in benign_sets.items():
        print(f"  {set_name} ({len(texts)} items)")
        for label, flag in configs.items():
            flagged = [t for t in texts if flag(t)]
            print(f"    {label:16} FPR {len(flagged) / len(texts):.3f}  ({len(flagged)} flagged)")
            for t in flagged[: args.show]:
                print(f"        - {t[:110]!r}")

    print("\n(c) classifier threshold sweep: test recall, test FPR  |  FPR on each set of (b), in order")
    test_scores = [(ex.label, classifier.classifier_score(ex.text)) for ex in test]
    benign_scores = {k: [classifier.classifier_score(t) for t in v] for k, v in benign_sets.items()}
    for thr in (combined.threshold, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99):
        pos = [s for y, s in test_scores if y]
        neg = [s for y, s in test_scores if not y]
        rec = sum(s >= thr for s in pos) / len(pos)
        fpr = sum(s >= thr for s in neg) / len(neg)
        other = "  ".join(f"{sum(s >= thr for s in v) / len(v):.3f}" for v in benign_scores.values())
        print(f"  threshold {thr:.4f}: recall {rec:.3f}  FPR {fpr:.3f}  |  {other}")

    print("\n(d) findings by rule on the test split's attacks (combined)")
    rule_hits: dict[str, int] = {}
    started = time.perf_counter()
    for ex in test:
        for rule in {f.rule for f in combined.scan(ex.text)}:
            if ex.label:
                rule_hits[rule] = rule_hits.get(rule, 0) + 1
    elapsed = time.perf_counter() - started
    for rule, n in sorted(rule_hits.items(), key=lambda kv: -kv[1]):
        print(f"  {rule:34} {n}{'  (classifier)' if rule == CLASSIFIER_RULE else ''}")
    print(f"\nscanned {len(test)} test items in {elapsed:.2f}s ({1e6 * elapsed / len(test):.0f} µs each, mean)")


if __name__ == "__main__":
    main()
