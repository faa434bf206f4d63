"""What a team admin may grant (pure): limits inside the team's own, never beyond them.

Every level's quotas and budgets are enforced anyway (a key cannot spend past its team's budget), so
these checks are about what a team admin may *write*: a key or project may not claim a larger quota,
budget or parameter cap than its team has, a model the team is not allowed, or another guardrail
policy where the team locks its own.
"""

from __future__ import annotations

import fnmatch

from shared.governance import Limits


def _pattern_within(pattern: str, allowed: list[str]) -> bool:
    """A child's model pattern is within the parent's list if the parent allows every name it matches
    (approximated: equal, or matched by a parent glob)."""
    return any(pattern == p or fnmatch.fnmatchcase(pattern, p) for p in allowed)


def beyond(child: Limits, parent: Limits) -> list[str]:
    """Where `child` asks for more than `parent` has (empty: it stays within)."""
    problems: list[str] = []
    if parent.models:
        if not child.models:
            problems.append("models: the team allows only some models; name them")
        problems += [
            f"models: {m!r} is not allowed for the team" for m in child.models if not _pattern_within(m, parent.models)
        ]
    if parent.lock_policy and child.policy and child.policy != parent.policy:
        problems.append(f"policy: the team's guardrail policy {parent.policy!r} is locked")
    for name in ("rpm", "tpm", "max_concurrency"):
        mine, theirs = getattr(child.quotas, name), getattr(parent.quotas, name)
        if mine is not None and theirs is not None and mine > theirs:
            problems.append(f"quotas.{name}: {mine} is above the team's {theirs}")
    for budget in child.budgets:
        same = [b for b in parent.budgets if b.period == budget.period]
        if same and budget.amount_usd > min(b.amount_usd for b in same):
            problems.append(f"budgets: {budget.period} ${budget.amount_usd:g} is above the team's")
    for name, cap in child.params.max.items():
        theirs_cap = parent.params.max.get(name)
        if theirs_cap is not None and cap > theirs_cap:
            problems.append(f"params.max.{name}: {cap:g} is above the team's {theirs_cap:g}")
    return problems
