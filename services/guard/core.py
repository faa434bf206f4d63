"""Pure guard decisions: which policy applies to a request, what it finds, and what goes on (or back)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from services.guard import texts
from services.guard.content import content_event, unscanned_event
from services.guard.policy import Decision, Guardrails, Policy, PolicyResult, guard_findings
from services.guard.redaction import Vault
from shared.config import GatehouseConfig
from shared.errors import ContentPolicyViolation, ErrorInfo, InvalidRequestError, PayloadTooLargeError
from shared.schemas.chat import ChatRequest, GuardSummary
from shared.schemas.events import ContentEvent

log = logging.getLogger("gatehouse.guard")


@dataclass(frozen=True, slots=True)
class Checked:
    """The guard's decision on one request: the verdict, what to forward, or the error that blocks it."""

    summary: GuardSummary
    request: ChatRequest  # what to forward (redacted in place where the policy redacts)
    error: ErrorInfo | None = None
    vault: Vault | None = None  # placeholders → originals, kept in this replica to restore the response
    output: Policy | None = None  # the policy that scans the response, if any
    rewritten: bool = False  # `request` differs from the one that arrived (redacted, or its native body left off)
    content: ContentEvent | None = None  # the redacted prompt, where the caller logs content
    logged_by: Policy | None = None  # the policy that redacts the logged response (output policy, else this one)
    policy: Policy | None = None  # the request's policy (it redacts the logged response too)


def block_error(decisions: Sequence[Decision], policy: str, *, response: bool = False) -> ErrorInfo:
    """The client-facing error for a block: it names the rules, never the text that matched."""
    blocking = [d for d in decisions if d.action == "block"]
    if not response and any(d.finding.scanner == "size" for d in blocking):
        return PayloadTooLargeError(
            f"The prompt exceeds the size allowed by guardrail policy '{policy}'.", param="messages"
        ).info()
    rules = sorted({_rule_name(d.finding.scanner, d.finding.rule) for d in blocking})
    what = "response" if response else "request"
    return ContentPolicyViolation(
        f"The {what} was blocked by guardrail policy '{policy}' (rules: {', '.join(rules)}).",
        param=None if response else "messages",
    ).info()


def _rule_name(scanner: str, rule: str) -> str:
    """`<scanner>.<rule>`, once: the injection scanner's rule ids already start with its name."""
    return rule if rule.startswith(f"{scanner}.") else f"{scanner}.{rule}"


class Guard:
    def __init__(self, config: GatehouseConfig) -> None:
        self.config = config
        self.rails = Guardrails.from_config(config)
        self._restore = {name: p.restore_response for name, p in config.guardrails.policies.items()}
        for name, missing in self.rails.unavailable.items():
            log.warning("policy %s names scanners that are not installed: %s", name, ", ".join(missing))

    def policy_for(self, req: ChatRequest) -> Policy:
        return self.rails.resolve(key_policy=req.caller.policy, model=req.model)

    def check(self, req: ChatRequest) -> Checked:
        policy = self.policy_for(req)
        output = self.rails.output_policy(policy)
        if req.chat is not None:
            slots = texts.chat_slots(req.chat)
        elif req.embeddings is not None:
            slots = texts.embeddings_slots(req.embeddings)
        else:
            error = InvalidRequestError("The request has no body to route.").info()
            return Checked(GuardSummary(policy=policy.name, action="block"), req, error)
        originals = texts.read(slots)
        result = policy.scan_texts(originals, tokens=texts.names(slots), scope=req.caller.key_id)
        findings = guard_findings(result, direction="input", locations=[s.location for s in slots])
        summary = GuardSummary(policy=policy.name, action=result.action, findings=findings)
        content = _logged(req, policy, result, slots, originals) if req.caller.log_content_days > 0 else None
        if result.action == "block":
            return Checked(summary, req, block_error(result.decisions, policy.name), content=content)
        vault = result.vault if result.action == "redact" and self._restore.get(policy.name) else None
        forward = req
        if result.action == "redact":
            texts.write(slots, result.texts)
        if req.native is not None and (result.action == "redact" or output is not None):
            # the client's own body still holds what was redacted, and a response in its protocol
            # cannot be scanned on the way back: such a request takes the canonical path, which loses
            # what only the client's protocol expresses (prompt caching, thinking, betas, …)
            if req.native.untranslatable:
                return Checked(summary, req, _untranslatable(policy.name, result.action, req.native.untranslatable))
            forward = msgspec.structs.replace(req, native=None)
        return Checked(
            summary,
            forward,
            vault=vault if vault and vault.mapping else None,
            output=output,
            rewritten=result.action == "redact" or forward is not req,
            content=content,
            logged_by=(output or policy) if content is not None else None,
            policy=policy,
        )


def _logged(
    req: ChatRequest, policy: Policy, result: PolicyResult, slots: list[texts.TextSlot], originals: list[str]
) -> ContentEvent:
    """The prompt for the content log, redacted for storage (only for callers that log content)."""
    common = {"request_id": req.request_id, "caller": req.caller, "model": req.model, "policy": policy}
    if any(d.finding.scanner == "size" for d in result.decisions):  # refused unscanned: store none of it
        return unscanned_event(**common, action=result.action)  # type: ignore[arg-type]
    return content_event(
        **common,  # type: ignore[arg-type]
        direction="input",
        action=result.action,
        locations=[s.location for s in slots],
        texts=originals,
        decisions=result.decisions,
    )


def _untranslatable(policy: str, action: str, where: list[str]) -> ErrorInfo:
    """A request only its own protocol can carry meets a policy that needs the canonical form."""
    why = "redacts this request" if action == "redact" else "scans responses"
    return InvalidRequestError(
        f"Guardrail policy '{policy}' {why}, which gatehouse does on its canonical form only, and this request "
        f"uses what that form cannot express ({where[0]}).",
        param=where[0].split(":", 1)[0] or None,
        code="guardrail_needs_canonical_form",
    ).info()
