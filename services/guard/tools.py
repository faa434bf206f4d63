"""Pure guard decisions on MCP calls: the strings of a call's arguments on the way in, and of its result on the
way out (tool output is untrusted text: secrets are redacted, PII per policy, and injection hidden in it, the
indirect-injection path, is blocked or flagged), each scanned with the policy that applies.

Every string value and every object key is scanned, each as one text of the call, named by its JSON path (a key
with a finding is named `<key>`, never by its text); a redaction replaces the string, or the key, in place, so the
JSON keeps its shape. Nothing is skipped (`_meta`, `annotations`, `uri` are text a server controls like any
other); single words (keys, and a result's `type`, `mimeType`, `role`, `audience` values) are only spared the
injection classifier's reading of the whole word, which takes a lone protocol word for an injection. A long
identifier-like word (`ignore_all_previous_instructions`, `ignoreAllPreviousInstructions`) is still read by the
injection scanner, classifier included, as the words it joins (`identifiers.words_view`, in the policy's scan).
"""

from __future__ import annotations

import re
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
# the protocol's enum-like fields of a result (content types, MIME types, roles, audiences) and every key: a single
# word there is read by every scanner but the injection classifier, to which a lone word ("text", "user") can look
# like an injection (a long identifier-like word it still reads, split into its words); anything else under them
# (spaced text, objects) is scanned like the rest
ENUM_FIELDS = frozenset({"type", "mimeType", "role", "audience"})
_WORD = re.compile(r"\S{1,100}")


@dataclass(frozen=True, slots=True)
class Scanned:
    """A JSON object after its scan: the (possibly redacted) bytes, the verdict, or the error that blocks it."""

    data: bytes
    summary: GuardSummary | None
    error: McpError | None = None


@dataclass(slots=True)
class _Text:
    """One scanned text: a string value, or an object's key (`key`), at a path whose key segments are kept as
    indexes of their own `_Text` (a key that turns out to be a secret is not written into a location); `word`:
    a single word the injection classifier does not judge."""

    text: str
    path: tuple[str | int, ...]
    key: bool
    word: bool


def _texts(value: Any, path: tuple[str | int, ...], out: list[_Text], enums: bool, in_enum: bool = False) -> None:
    """Every string value and every key in `value`, depth-first in order (a key before its value)."""
    if isinstance(value, str):
        out.append(_Text(value, path, key=False, word=in_enum and _WORD.fullmatch(value) is not None))
    elif isinstance(value, dict):
        for k, v in value.items():
            out.append(_Text(k, path, key=True, word=_WORD.fullmatch(k) is not None))
            _texts(v, (*path, len(out) - 1), out, enums, enums and k in ENUM_FIELDS)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _texts(v, (*path, f"[{i}]"), out, enums, in_enum)


def _location(i: int, found: list[_Text], hidden: set[int]) -> str:
    """The JSON path of `found[i]`; a key with a finding reads `<key>` (its text may be the secret)."""
    t = found[i]
    out = ""
    for seg in t.path:
        if isinstance(seg, int):
            out += ".<key>" if seg in hidden else f".{found[seg].text}"
        else:
            out += seg
    if not t.key:
        return out
    return f"{out}.<key> (key)" if i in hidden else f"{out}.{t.text} (key)"


def _replace(value: Any, texts: list[str], at: list[int]) -> Any:
    """`value` with its keys and strings replaced, in the order `_texts` found them."""
    if isinstance(value, str):
        text = texts[at[0]]
        at[0] += 1
        return text
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for v in value.values():
            key = texts[at[0]]
            at[0] += 1
            while key in out:  # two keys redacted to the same text: both kept
                key += "_"
            out[key] = _replace(v, texts, at)
        return out
    if isinstance(value, list):
        return [_replace(v, texts, at) for v in value]
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
        found: list[_Text] = []
        _texts(value, (root,), found, enums=direction == "output")
        if not found:
            return Scanned(raw, GuardSummary(policy=policy.name, action="allow"))
        words = frozenset(i for i, t in enumerate(found) if t.word)
        result = policy.scan_texts([t.text for t in found], tokens=words)
        hidden = {d.part for d in result.decisions if found[d.part].key}
        summary = GuardSummary(
            policy=policy.name,
            action=result.action,
            findings=guard_findings(
                result, direction=direction, locations=[_location(i, found, hidden) for i in range(len(found))]
            ),
        )
        if result.action == "block":
            return Scanned(b"", summary, _blocked(result, direction))
        if result.action == "redact":
            value = _replace(value, list(result.texts), [0])
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
