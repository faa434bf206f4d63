"""Pure guard decisions: which policy applies to a request, and what it says about it."""

from __future__ import annotations

import time
from dataclasses import dataclass

import msgspec

from shared.config import GatehouseConfig
from shared.errors import ErrorInfo, PayloadTooLargeError
from shared.schemas.chat import ChatRequest, GuardSummary


@dataclass(frozen=True, slots=True)
class Verdict:
    summary: GuardSummary
    request: ChatRequest  # what to forward (possibly redacted)
    error: ErrorInfo | None = None


class Guard:
    def __init__(self, config: GatehouseConfig) -> None:
        self._config = config
        self._policies = config.guardrails.policies
        self._default = config.guardrails.default_policy

    def policy_name(self, req: ChatRequest) -> str:
        return req.caller.policy or self._default

    def check(self, req: ChatRequest) -> Verdict:
        started = time.perf_counter_ns()
        name = self.policy_name(req)
        policy = self._policies.get(name)
        limit = policy.max_prompt_chars if policy else 0
        error: ErrorInfo | None = None
        action = "allow"
        if limit and len(req.body) > limit:
            action = "block"
            error = PayloadTooLargeError(
                f"The prompt is {len(req.body)} characters; policy {name!r} allows at most {limit}.",
                param="messages",
            ).info()
        summary = GuardSummary(policy=name, action=action, scan_us=(time.perf_counter_ns() - started) // 1000)
        return Verdict(summary=summary, request=msgspec.structs.replace(req, guard=summary), error=error)
