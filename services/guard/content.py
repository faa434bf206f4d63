"""The content log (pure): prompts and responses of callers that opted in, redacted for storage.

Only callers whose key, project, team or org turned `log_content` on get here (`Caller.log_content_days`);
for everyone else the guard does no work at all. What is stored is what the guard's policy finds, redacted:
every finding with a position (secrets, PII, custom rules, …) becomes its placeholder (`<EMAIL_1>`), whatever
the policy does with the request itself (flag, redact, or block), so a flagged secret is not kept either.
Findings without a position (a language, an injection verdict on a whole text) redact nothing. Responses are
captured before redacted values are restored (the model saw placeholders), then scanned the same way with
the output policy and the request's policy. Texts are cut at `MAX_TEXT_CHARS` each, `MAX_TOTAL_CHARS` in all.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import msgspec

from services.guard.policy import Decision, Policy
from services.guard.redaction import Span, Vault, redact
from shared.schemas.chat import Caller
from shared.schemas.events import ContentEvent, ContentText

MAX_TEXT_CHARS = 32_000
MAX_TOTAL_CHARS = 256_000
_TEXT_FIELDS = ("content", "refusal", "reasoning_content")
_NATIVE_TEXT_KEYS = ("text", "thinking", "delta", "partial_json", "output_text")


def redact_for_storage(
    policy: Policy, texts: Sequence[str], decisions: Sequence[Decision], also: Sequence[Policy] = ()
) -> tuple[list[str], int]:
    """The texts with every positioned finding replaced by its placeholder; how many spans were replaced.
    `also`: more policies whose findings are redacted too (a response: its output policy and the request's)."""
    labelled = [(d, policy.label(d.finding)) for d in decisions]
    for other in also:
        labelled += [(d, other.label(d.finding)) for i, t in enumerate(texts) for d in other.decide(t, i)]
    spans: dict[int, list[Span]] = {}
    for d, label in labelled:
        f = d.finding
        if d.part < len(texts) and 0 <= f.start < f.end <= len(texts[d.part]):
            spans.setdefault(d.part, []).append(Span(f.start, f.end, label))
    vault = Vault()
    out = [redact(text, spans.get(i, ()), vault) for i, text in enumerate(texts)]
    return out, sum(len(s) for s in spans.values())


def _bounded(locations: Sequence[str], texts: Sequence[str]) -> tuple[list[ContentText], bool]:
    out: list[ContentText] = []
    total = 0
    cut = False
    for location, whole in zip(locations, texts, strict=True):
        kept = whole[: min(MAX_TEXT_CHARS, max(MAX_TOTAL_CHARS - total, 0))]
        cut = cut or len(kept) < len(whole)
        if kept:
            out.append(ContentText(location=location, text=kept))
            total += len(kept)
    return out, cut


def content_event(
    *,
    request_id: str,
    caller: Caller,
    model: str,
    direction: str,
    policy: Policy,
    action: str,
    locations: Sequence[str],
    texts: Sequence[str],
    decisions: Sequence[Decision],
    also: Sequence[Policy] = (),
) -> ContentEvent:
    """The content event of one direction of a request: `texts` as the guard read them, `decisions` the
    policy's findings on them (positions index `texts`), `also` policies whose findings are redacted too."""
    redacted, count = redact_for_storage(policy, texts, decisions, also)
    stored, cut = _bounded(locations, redacted)
    return ContentEvent(
        event_id=f"{request_id}.{direction}",
        request_id=request_id,
        at=time.time(),
        caller=caller,
        model=model,
        direction=direction,
        policy=policy.name,
        guard_action=action,
        texts=stored,
        redactions=count,
        truncated=cut,
        retention_days=caller.log_content_days,
    )


def unscanned_event(*, request_id: str, caller: Caller, model: str, policy: Policy, action: str) -> ContentEvent:
    """A request refused before it was scanned (over the policy's size): nothing of it is stored."""
    return ContentEvent(
        event_id=f"{request_id}.input",
        request_id=request_id,
        at=time.time(),
        caller=caller,
        model=model,
        policy=policy.name,
        guard_action=action,
        truncated=True,
        retention_days=caller.log_content_days,
    )


class ResponseCapture:
    """The texts of one response as the model produced them (before any restore), chunk by chunk or whole."""

    def __init__(
        self, request_id: str, caller: Caller, model: str, policy: Policy, request_policy: Policy | None = None
    ) -> None:
        self.request_id = request_id
        self.caller = caller
        self.model = model
        self.policy = policy  # the output policy where there is one, else the request's
        # the request's policy redacts the stored response too (an output policy may scan for less)
        self.also = (request_policy,) if request_policy is not None and request_policy is not policy else ()
        self._texts: dict[str, list[str]] = {}
        self._size = 0

    def _add(self, location: str, text: object) -> None:
        if isinstance(text, str) and text and self._size < MAX_TOTAL_CHARS:
            self._texts.setdefault(location, []).append(text)
            self._size += len(text)

    def chunk(self, data: bytes) -> None:
        """One canonical stream chunk (`chat.completion.chunk` JSON)."""
        try:
            obj = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return
        for n, choice in enumerate(obj.get("choices") or [] if isinstance(obj, dict) else []):
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict):
                self._message(choice.get("index", n), delta)

    def completion(self, body: bytes) -> None:
        """A whole canonical completion."""
        try:
            obj = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return
        for n, choice in enumerate(obj.get("choices") or [] if isinstance(obj, dict) else []):
            message = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(message, dict):
                self._message(choice.get("index", n), message)

    def _message(self, index: object, message: dict[str, object]) -> None:
        for field in _TEXT_FIELDS:
            self._add(f"choices[{index}].message.{field}", message.get(field))
        calls = message.get("tool_calls")
        for k, call in enumerate(calls if isinstance(calls, list) else []):
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                slot = call.get("index", k)
                self._add(f"choices[{index}].message.tool_calls[{slot}].function.arguments", fn.get("arguments"))

    def native(self, data: bytes) -> None:
        """A response in the client's own protocol (a JSON body, or server-sent events): its text fields."""
        for raw in data.split(b"\n"):
            line = raw.strip()
            payload = line[5:].strip() if line.startswith(b"data:") else line
            if payload.startswith(b"{"):
                try:
                    self._walk("output", msgspec.json.decode(payload), 0)
                except msgspec.DecodeError:
                    continue

    def _walk(self, where: str, node: object, depth: int) -> None:
        if depth > 16:
            return
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _NATIVE_TEXT_KEYS and isinstance(value, str):
                    self._add(where, value)
                else:
                    self._walk(where, value, depth + 1)
        elif isinstance(node, list):
            for value in node:
                self._walk(where, value, depth + 1)

    def event(self, action: str) -> ContentEvent:
        locations = list(self._texts)
        texts = ["".join(self._texts[loc]) for loc in locations]
        # each text on its own: a response may be longer than the policy's prompt size limit, and must be scanned
        decisions = [d for i, text in enumerate(texts) for d in self.policy.decide(text, i)]
        return content_event(
            request_id=self.request_id,
            caller=self.caller,
            model=self.model,
            direction="output",
            policy=self.policy,
            action=action,
            locations=locations,
            texts=texts,
            decisions=decisions,
            also=self.also,
        )
