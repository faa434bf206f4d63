"""Responses on their way back through the guard: every text a model returns is scanned with the output
policy — each choice's content, refusal and reasoning, and tool-call arguments — and the request's
redacted values are restored where asked (streams incrementally, with a bounded hold-back window).

A response is rewritten losslessly, so it is read as JSON values (fields this module does not know
travel on untouched); the typed schema (shared.schemas.openai) names what is read.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from services.guard.core import block_error
from services.guard.policy import Decision, Policy, build_policy, decision_findings
from services.guard.redaction import Vault
from services.guard.stream import StreamScanner, StreamStep
from shared.errors import ErrorInfo
from shared.guard_config import PolicyConfig
from shared.schemas.chat import GuardFinding

JsonObj = dict[str, object]
_JSON = msgspec.json.Encoder()
_NO_SCAN = build_policy("none", PolicyConfig())
# the text fields of a message (or a stream delta) that carry model output
TEXT_FIELDS = ("content", "refusal", "reasoning_content")
# a field of one choice: ("content", -1), or ("tool", n) for the arguments of tool call n
FieldKey = tuple[int, str, int]


def _dict(value: object) -> JsonObj | None:
    return value if isinstance(value, dict) else None


def _location(key: FieldKey) -> str:
    choice, field, call = key
    if field == "tool":
        return f"choices[{choice}].message.tool_calls[{call}].function.arguments"
    return f"choices[{choice}].message.{field}"


class OutputFilter:
    """One response under one policy; feed it chunks, or the whole completion."""

    def __init__(self, policy: Policy | None, vault: Vault | None, holdback: int) -> None:
        self.policy: Policy = policy or _NO_SCAN
        self.vault = vault
        self.findings: list[GuardFinding] = []
        self.error: ErrorInfo | None = None
        self._holdback = holdback
        self._fields: dict[FieldKey, StreamScanner] = {}
        self._finished: set[int] = set()
        self._last: JsonObj | None = None  # the envelope of the last chunk, to carry text still held back

    # ---- non-stream -------------------------------------------------------------------------
    def completion(self, body: bytes) -> bytes:
        """The completion with every choice's texts scanned and restored; sets `error` on a block."""
        obj = msgspec.json.decode(body)
        choices = obj.get("choices") if isinstance(obj, dict) else None
        if not isinstance(choices, list):
            return body
        for n, raw in enumerate(choices):
            choice = _dict(raw)
            message = _dict(choice.get("message")) if choice else None
            if choice is None or message is None:
                continue
            index = choice.get("index")
            idx = index if isinstance(index, int) else n
            for field in TEXT_FIELDS:
                self._whole(message, field, (idx, field, -1))
                parts = message.get("content")
                if field == "content" and isinstance(parts, list):
                    for part in parts:
                        if isinstance(part, dict):
                            self._whole(part, "text", (idx, "content", -1))
            calls = message.get("tool_calls")
            for k, call in enumerate(calls if isinstance(calls, list) else []):
                fn = _dict(call.get("function")) if isinstance(call, dict) else None
                if fn is not None:
                    self._whole(fn, "arguments", (idx, "tool", k))
            legacy = _dict(message.get("function_call"))
            if legacy is not None:
                self._whole(legacy, "arguments", (idx, "tool", 0))
            if self.error is not None:
                return body
        return _JSON.encode(obj)

    def _whole(self, owner: JsonObj, key: str, where: FieldKey) -> None:
        text = owner.get(key)
        if not isinstance(text, str) or not text or self.error is not None:
            return
        result = self.policy.scan(text)
        self._note(result.decisions, where)
        if result.action == "block":
            self.error = block_error(list(result.decisions), self.policy.name, response=True)
            return
        owner[key] = self.vault.restore(result.text) if self.vault else result.text

    # ---- stream -----------------------------------------------------------------------------
    def chunk(self, data: bytes) -> bytes | None:
        """The chunk to send on (texts replaced by what is safe to release), or None to hold it."""
        if self.error is not None:
            return None
        obj = msgspec.json.decode(data)
        choices = obj.get("choices") if isinstance(obj, dict) else None
        if not isinstance(choices, list) or not choices:
            return data  # e.g. the usage chunk
        self._last = {k: v for k, v in obj.items() if k not in ("choices", "usage")}
        kept: list[object] = []
        for raw in choices:
            choice = _dict(raw)
            delta = _dict(choice.get("delta")) if choice else None
            if choice is None or delta is None:
                kept.append(raw)
                continue
            index = choice.get("index")
            idx = index if isinstance(index, int) else 0
            if not self._delta(idx, delta):
                return None
            if choice.get("finish_reason"):
                if not self._finish(idx, delta):
                    return None
            elif _empty(delta):
                continue  # nothing of this choice to release yet
            kept.append(choice)
        if not kept and "usage" not in obj:
            return None
        obj["choices"] = kept
        return _JSON.encode(obj)

    def _delta(self, idx: int, delta: JsonObj) -> bool:
        """Scan one delta in place; False when the policy blocks the stream."""
        for field in TEXT_FIELDS:
            text = delta.get(field)
            if isinstance(text, str) and text:
                step = self._feed((idx, field, -1), text)
                if step is None:
                    return False
                delta[field] = step.text
        calls = delta.get("tool_calls")
        for n, call in enumerate(calls if isinstance(calls, list) else []):
            fn = _dict(call.get("function")) if isinstance(call, dict) else None
            args = fn.get("arguments") if fn else None
            if fn is not None and isinstance(args, str) and args:
                slot = call.get("index")
                step = self._feed((idx, "tool", slot if isinstance(slot, int) else n), args)
                if step is None:
                    return False
                fn["arguments"] = step.text
        return True

    def _finish(self, idx: int, delta: JsonObj) -> bool:
        """A choice finished: release every text of it still held back, into this delta."""
        self._finished.add(idx)
        for key in sorted(k for k in self._fields if k[0] == idx):
            step = self._flush(key)
            if step is None:
                return False
            if step.text:
                _append(delta, key, step.text)
        return True

    def end(self) -> bytes | None:
        """Text still held back when the stream ended without finish chunks, as one more chunk."""
        if self.error is not None:
            return None
        choices: list[JsonObj] = []
        for idx in sorted({k[0] for k in self._fields} - self._finished):
            delta: JsonObj = {}
            if not self._finish(idx, delta):
                return None
            if delta:
                choices.append({"index": idx, "delta": delta, "finish_reason": None})
        if not choices or self._last is None:
            return None
        return _JSON.encode({**self._last, "choices": choices})

    def _scanner(self, key: FieldKey) -> StreamScanner:
        scanner = self._fields.get(key)
        if scanner is None:
            scanner = StreamScanner(self.policy, restore=self.vault, holdback=self._holdback)
            self._fields[key] = scanner
        return scanner

    def _feed(self, key: FieldKey, text: str) -> StreamStep | None:
        return self._stepped(key, self._scanner(key).feed(text))

    def _flush(self, key: FieldKey) -> StreamStep | None:
        return self._stepped(key, self._scanner(key).flush())

    def _stepped(self, key: FieldKey, step: StreamStep) -> StreamStep | None:
        self._note(step.decisions, key)
        if step.blocked:
            self.error = block_error(list(step.decisions), self.policy.name, response=True)
            return None
        return step

    def _note(self, decisions: Sequence[Decision], key: FieldKey) -> None:
        if decisions:
            self.findings.extend(decision_findings(decisions, direction="output", location=_location(key)))


def _empty(delta: JsonObj) -> bool:
    """A delta with nothing for the client: only text fields, all of them held back (empty)."""
    return all(k in TEXT_FIELDS and v == "" for k, v in delta.items())


def _append(delta: JsonObj, key: FieldKey, text: str) -> None:
    _, field, call = key
    if field != "tool":
        before = delta.get(field)
        delta[field] = (before if isinstance(before, str) else "") + text
        return
    calls = delta.get("tool_calls")
    if not isinstance(calls, list):
        calls = []
        delta["tool_calls"] = calls
    for entry in calls:
        if isinstance(entry, dict) and entry.get("index") == call:
            fn = _dict(entry.get("function"))
            if fn is None:
                fn = {}
                entry["function"] = fn
            before = fn.get("arguments")
            fn["arguments"] = (before if isinstance(before, str) else "") + text
            return
    calls.append({"index": call, "function": {"arguments": text}})
