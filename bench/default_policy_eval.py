"""The shipped default guard policy on hard negatives and attacks: how often it blocks or flags each.

    python bench/default_policy_eval.py [--show 10]

Benign (every block or flag is a false positive): the override hard negatives
(bench/data/injection_override_negatives.txt, from bench/override_negatives.py) and the hand-written hard
negatives (bench/data/injection_benign_prompts.txt). Attacks: the injections of the committed 400-row test
sample (bench/data/injection_test_sample.jsonl), where a block is a catch. The policy is the one gatehouse
ships (shared.guard_config.shipped_default_policy: secrets and the injection phrase rules, classifier off),
then the same policy with the injection classifier opted in (`injection: {classifier: true}`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from injection_data import DATA_DIR, read_benign

from services.guard.policy import Guardrails, Policy
from shared.guard_config import GuardrailsConfig, InjectionConfig, shipped_default_policy


def rates(policy: Policy, name: str, texts: list[str], show: int) -> None:
    actions = [policy.scan(t).action for t in texts]
    blocked = [t for t, a in zip(texts, actions, strict=True) if a == "block"]
    flagged = [t for t, a in zip(texts, actions, strict=True) if a == "flag"]
    n = len(texts)
    print(f"  {name} ({n}): blocked {len(blocked)} ({len(blocked) / n:.3f}), ", end="")
    print(f"flagged {len(flagged)} ({len(flagged) / n:.3f})")
    for t in (blocked + flagged)[:show]:
        print(f"      - {t[:110]!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--show", type=int, default=0, help="print this many blocked or flagged texts per set")
    args = ap.parse_args()
    shipped = shipped_default_policy()
    classifier = InjectionConfig(action="block", min_severity="high", classifier=True)
    opted_in = shipped.model_copy(update={"injection": classifier})
    negatives = read_benign(DATA_DIR / "injection_override_negatives.txt")
    rows = [json.loads(line) for line in (DATA_DIR / "injection_test_sample.jsonl").read_text().splitlines()]
    for title, config in (("shipped default policy", shipped), ("the same with the classifier opted in", opted_in)):
        policy = Guardrails(GuardrailsConfig(policies={"default": config})).default
        print(f"\n{title}: scanners {', '.join(policy.scanners)}")
        print(" benign (every block or flag is a false positive)")
        rates(policy, "override hard negatives", negatives, args.show)
        rates(policy, "hand-written hard negatives", read_benign(), args.show)
        print(" test sample (committed 400 rows)")
        rates(policy, "attacks (a block is a catch)", [r["text"] for r in rows if r["label"]], 0)
        rates(policy, "benign rows", [r["text"] for r in rows if not r["label"]], args.show)


if __name__ == "__main__":
    main()
