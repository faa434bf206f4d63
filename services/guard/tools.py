"""Pure guard decisions on MCP calls: the strings of a call's arguments on the way in, and of its result on the
way out (tool output is untrusted text: secrets are redacted, PII per policy, and injection hidden in it, the
indirect-injection path, is blocked or flagged), each scanned with the policy that applies.

Only string values are scanned, each as one text of the call, named by its JSON path; a redaction replaces the
string in place, so the JSON keeps its shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from services.guard.policy import Guardrails, Policy, PolicyResult, guard_findings
from shared import mcp_errors
from shared.mcp_config import McpConfig
from shared.schemas.chat import GuardSummary
from shared.schemas.mcp import McpError, ToolCall

_JSON = msgspec.json.Encoder()
_DECODE = msgspec.json.Decoder(dict[str, Any])
# `_meta` key of a result whose output the guard flagged (rules, never the matched text)
FLAG_META = "io.gatehouse/guard"
# the protocol's own fields of a result (content types, MIME types, URIs, roles): not text anyone wrote, and
# too short for a classifier to judge ("text" alone can read as an injection to it)
STRUCTURAL = frozenset({"type", "mimeType", "uri", "role", "_meta", "annotations"})


@dataclass(frozen=True, slots=True)
class Scanned:
    """A JSON object after its scan: the (possibly redacted) bytes, the verdict, or the error that blocks it."""

    data: bytes
    summary: GuardSummary | None
    error: McpError | None = None


def _leaves(value: Any, path: str, out: list[tuple[str, str]], skip: frozenset[str]) -> None:
    """Every string in `value` with its JSON path (depth-first, in order), but under the keys in `skip`."""
    if isinstance(value, str):
        out.append((path, value))
    elif isinstance(value, dict):
        for k, v in value.items():
            if k not in skip:
                _leaves(v, f"{path}.{k}" if path else str(k), out, skip)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _leaves(v, f"{path}[{i}]", out, skip)


def _replace(value: Any, texts: list[str], at: list[int], skip: frozenset[str]) -> Any:
    """`value` with its strings replaced, in the order `_leaves` found them."""
    if isinstance(value, str):
        text = texts[at[0]]
        at[0] += 1
        return text
    if isinstance(value, dict):
        return {k: v if k in skip else _replace(v, texts, at, skip) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, texts, at, skip) for v in value]
    return value


class ToolGuard:
    def __init__(self, rails: Guardrails, config: McpConfig) -> None:
        self.rails = rails
        self.config = config

    def input_policy(self, call: ToolCall) -> Policy:
        name = self.config.input_policy or call.caller.policy
        return self.rails.policy(name) if name else self.rails.default

    def output_policy(self, call: ToolCall) -> Policy:
        """The config's output policy, else the input policy's, else the input policy itself."""
        if self.config.output_policy:
            return self.rails.policy(self.config.output_policy)
        policy = self.input_policy(call)
        return self.rails.output_policy(policy) or policy

    def scan_arguments(self, call: ToolCall) -> Scanned:
        if not call.arguments:
            return Scanned(call.arguments, None)
        try:
            args = _DECODE.decode(call.arguments)
        except msgspec.DecodeError:
            return Scanned(b"", None, mcp_errors.invalid("The arguments are not a JSON object."))
        return self._scan(args, call.arguments, self.input_policy(call), "input", "arguments")

    def scan_result(self, call: ToolCall, result: bytes) -> Scanned:
        try:
            data = _DECODE.decode(result)
        except msgspec.DecodeError:
            return Scanned(b"", None, mcp_errors.upstream_unavailable(call.server, "a result that is not JSON"))
        return self._scan(data, result, self.output_policy(call), "output", "result")

    def _scan(self, value: dict[str, Any], raw: bytes, policy: Policy, direction: str, root: str) -> Scanned:
        found: list[tuple[str, str]] = []
        skip = STRUCTURAL if direction == "output" else frozenset()
        _leaves(value, root, found, skip)
        if not found:
            return Scanned(raw, GuardSummary(policy=policy.name, action="allow"))
        result = policy.scan_texts([text for _, text in found])
        summary = GuardSummary(
            policy=policy.name,
            action=result.action,
            findings=guard_findings(result, direction=direction, locations=[path for path, _ in found]),
        )
        if result.action == "block":
            return Scanned(b"", summary, _blocked(result, direction))
        if result.action == "redact":
            value = _replace(value, list(result.texts), [0], skip)
            return Scanned(_JSON.encode(_flagged(value, result) if direction == "output" else value), summary)
        if result.action == "flag" and direction == "output":
            return Scanned(_JSON.encode(_flagged(value, result)), summary)
        return Scanned(raw, summary)


def _rules(result: PolicyResult, action: str | None = None) -> list[str]:
    return sorted({f"{d.finding.scanner}.{d.finding.rule}" for d in result.decisions if action in (None, d.action)})


def _blocked(result: PolicyResult, direction: str) -> McpError:
    what = "tool call's arguments" if direction == "input" else "tool's result"
    return McpError(
        code=mcp_errors.GUARD_BLOCKED,
        message=f"The {what} was blocked by guardrail policy '{result.policy}' "
        f"(rules: {', '.join(_rules(result, 'block'))}).",
        status="blocked",
    )


def _flagged(value: dict[str, Any], result: PolicyResult) -> dict[str, Any]:
    """The result with the guard's verdict in its `_meta`: a client (or its model) can tell the output was
    flagged, e.g. as a possible injection, and by which rules."""
    meta = dict(value.get("_meta") or {})
    meta[FLAG_META] = {"policy": result.policy, "action": result.action, "rules": _rules(result)}
    return {**value, "_meta": meta}
