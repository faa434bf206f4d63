"""Responses on their way back through the guard: scanned with the output policy (streams incrementally,
with a bounded hold-back window) and with this request's redacted values restored where asked."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from services.guard.core import block_error
from services.guard.policy import Decision, Guardrails, Policy, build_policy, decision_findings
from services.guard.redaction import Vault
from services.guard.stream import StreamScanner
from shared.errors import ErrorInfo
from shared.guard_config import PolicyConfig
from shared.schemas.chat import GuardFinding, GuardSummary

JsonObj = dict[str, object]
_JSON = msgspec.json.Encoder()
_NO_SCAN = build_policy("none", PolicyConfig())


def needs_output_pass(summary: GuardSummary | None) -> bool:
    return bool(summary and (summary.output_policy or summary.restore))


def _findings(decisions: Sequence[Decision]) -> list[GuardFinding]:
    return decision_findings(decisions, direction="output", location="choices[0].message.content")


def _blocked(policy: str, decisions: Sequence[Decision]) -> ErrorInfo:
    return block_error(decisions, policy, response=True)


class OutputFilter:
    """One response under one policy; feed it chunks, or the whole completion."""

    def __init__(self, rails: Guardrails, summary: GuardSummary) -> None:
        self.policy: Policy = rails.policy(summary.output_policy) if summary.output_policy else _NO_SCAN
        self.vault = Vault.from_mapping(dict(summary.restore)) if summary.restore else None
        self.findings: list[GuardFinding] = []
        self.error: ErrorInfo | None = None
        self._stream = StreamScanner(self.policy, restore=self.vault, holdback=rails.stream_holdback_chars)
        self._last: JsonObj | None = None  # the shape of the last content chunk, to carry held-back text
        self._decisions: list[Decision] = []

    # ---- non-stream -------------------------------------------------------------------------
    def completion(self, body: bytes) -> bytes:
        """The completion with each choice's content scanned and restored; sets `error` on a block."""
        obj = msgspec.json.decode(body)
        if not isinstance(obj, dict):
            return body
        for choice in obj.get("choices") or []:
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                continue
            result = self.policy.scan(message["content"])
            self._decisions.extend(result.decisions)
            self.findings.extend(_findings(result.decisions))
            if result.action == "block":
                self.error = _blocked(self.policy.name, list(result.decisions))
                return body
            text = result.text
            message["content"] = self.vault.restore(text) if self.vault else text
        return _JSON.encode(obj)

    # ---- stream -----------------------------------------------------------------------------
    def chunk(self, data: bytes) -> bytes | None:
        """The chunk to send on (content replaced by what is safe to release), or None to hold it."""
        if self.error is not None:
            return None
        obj = msgspec.json.decode(data)
        choices = obj.get("choices") if isinstance(obj, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return data  # e.g. the usage chunk
        choice = choices[0]
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return data
        content = delta.get("content")
        finishing = bool(choice.get("finish_reason"))
        text = ""
        if isinstance(content, str) and content:
            step = self._stream.feed(content)
            self._note(list(step.decisions))
            if step.blocked:
                self.error = _blocked(self.policy.name, list(step.decisions))
                return None
            text = step.text
            self._last = obj
        if finishing:
            tail = self._stream.flush()
            self._note(list(tail.decisions))
            if tail.blocked:
                self.error = _blocked(self.policy.name, list(tail.decisions))
                return None
            text += tail.text
        if isinstance(content, str) or text:
            delta["content"] = text
        if not text and not finishing and set(delta) <= {"content"}:
            return None  # nothing to release yet
        return _JSON.encode(obj)

    def end(self) -> bytes | None:
        """Text still held back when the stream ended without a finish chunk, as one more chunk."""
        if self.error is not None:
            return None
        tail = self._stream.flush()
        self._note(list(tail.decisions))
        if tail.blocked:
            self.error = _blocked(self.policy.name, list(tail.decisions))
            return None
        if not tail.text or self._last is None:
            return None
        obj = dict(self._last)
        obj["choices"] = [{"index": 0, "delta": {"content": tail.text}, "finish_reason": None}]
        return _JSON.encode(obj)

    def _note(self, decisions: list[Decision]) -> None:
        self._decisions.extend(decisions)
        self.findings.extend(_findings(decisions))
