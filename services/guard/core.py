"""Pure guard decisions: which policy applies to a request, what it finds, and what goes on (or back)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from services.guard import texts
from services.guard.policy import Decision, Guardrails, Policy, guard_findings
from shared.config import GatehouseConfig
from shared.errors import ContentPolicyViolation, ErrorInfo, InvalidRequestError, PayloadTooLargeError
from shared.schemas.chat import ChatRequest, GuardSummary

log = logging.getLogger("gatehouse.guard")
_JSON = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Verdict:
    summary: GuardSummary
    request: ChatRequest  # what to forward (possibly redacted)
    error: ErrorInfo | None = None


def block_error(decisions: Sequence[Decision], policy: str, *, response: bool = False) -> ErrorInfo:
    """The client-facing error for a block: it names the rules, never the text that matched."""
    blocking = [d for d in decisions if d.action == "block"]
    if not response and any(d.finding.scanner == "size" for d in blocking):
        return PayloadTooLargeError(
            f"The prompt exceeds the size allowed by guardrail policy '{policy}'.", param="messages"
        ).info()
    rules = sorted({f"{d.finding.scanner}.{d.finding.rule}" for d in blocking})
    what = "response" if response else "request"
    return ContentPolicyViolation(
        f"The {what} was blocked by guardrail policy '{policy}' (rules: {', '.join(rules)}).",
        param=None if response else "messages",
    ).info()


class Guard:
    def __init__(self, config: GatehouseConfig) -> None:
        self.rails = Guardrails.from_config(config)
        self._restore = {name: p.restore_response for name, p in config.guardrails.policies.items()}
        for name, missing in self.rails.unavailable.items():
            log.warning("policy %s names scanners that are not installed: %s", name, ", ".join(missing))

    def policy_for(self, req: ChatRequest) -> Policy:
        return self.rails.resolve(key_policy=req.caller.policy, model=req.model)

    def check(self, req: ChatRequest) -> Verdict:
        policy = self.policy_for(req)
        output = self.rails.output_policy(policy)
        try:
            body = msgspec.json.decode(req.body)
        except msgspec.DecodeError:
            error = InvalidRequestError("The request body is not valid JSON.").info()
            return Verdict(GuardSummary(policy=policy.name, action="block"), req, error)
        slots = texts.text_slots(body, req.api) if isinstance(body, dict) else []
        result = policy.scan_texts(texts.read(slots))
        findings = guard_findings(result, direction="input", locations=[s.location for s in slots])
        restore = result.placeholders if result.action == "redact" and self._restore.get(policy.name) else {}
        summary = GuardSummary(
            policy=policy.name,
            action=result.action,
            findings=findings,
            restore=dict(restore),
            output_policy=output.name if output else "",
        )
        if result.action == "block":
            return Verdict(summary, req, block_error(result.decisions, policy.name))
        forward = req
        if result.action == "redact":
            texts.write(slots, result.texts)
            forward = msgspec.structs.replace(req, body=_JSON.encode(body))
        return Verdict(summary, msgspec.structs.replace(forward, guard=summary))
