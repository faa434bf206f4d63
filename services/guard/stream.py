"""Incremental output scanning for streamed responses (pure): release only text the policy has seen whole.

Each `feed(chunk)` rescans the unreleased text plus a little already-released context and returns
what is safe to release now, holding back:
- the last `holdback` characters (a secret or e-mail split across chunks is still seen whole),
- the current whitespace-free token (long tokens such as JWTs, up to `max_token` characters),
- any redacted finding that reaches the end of what has arrived (a PEM block still streaming).
`flush()` releases the rest at the end of the stream. A finding whose action is `block` stops the
stream: nothing more is released. Redacted values in a response are replaced by `<REDACTED_LABEL_n>`
and are not restorable; placeholders from the request's vault (`<EMAIL_1>`) are restored in the
released text, and never split across two releases.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.guard.policy import VERDICT_RANK, Decision, Policy, Verdict
from services.guard.redaction import PLACEHOLDER, Span, Vault, merge_spans

_WHITESPACE = (" ", "\n", "\t", "\r")


@dataclass(frozen=True, slots=True)
class StreamStep:
    text: str  # safe to send to the client now (may be empty)
    action: Verdict  # the worst action among this step's decisions
    decisions: tuple[Decision, ...]  # findings reported for the first time in this step
    blocked: bool = False  # stop the stream: the policy blocks what arrived


class StreamScanner:
    """One response stream under one policy. Not thread-safe; create one per stream."""

    def __init__(
        self,
        policy: Policy,
        *,
        restore: Vault | None = None,
        holdback: int = 256,
        context: int = 128,
        max_token: int = 16384,
    ) -> None:
        self.policy = policy
        self._restore = restore
        self._holdback = holdback
        self._context_chars = context
        self._max_token = max_token
        self._vault = Vault(prefix="REDACTED_")
        self._pending = ""
        self._context = ""
        self._released = 0  # absolute offset (in the original stream) of _pending[0]
        self._reported: set[tuple[str, str, int, int]] = set()
        self._blocked = False

    @property
    def blocked(self) -> bool:
        return self._blocked

    def feed(self, chunk: str) -> StreamStep:
        if self._blocked:
            return StreamStep("", "block", (), True)
        self._pending += chunk
        if len(self._pending) <= self._holdback:
            return StreamStep("", "allow", ())
        return self._step(final=False)

    def flush(self) -> StreamStep:
        if self._blocked:
            return StreamStep("", "block", (), True)
        if not self._pending:
            return StreamStep("", "allow", ())
        return self._step(final=True)

    def _step(self, *, final: bool) -> StreamStep:
        window = self._context + self._pending
        off = len(self._context)
        relevant = [d for d in self.policy.decide(window) if d.finding.end > off]
        blocking = [d for d in relevant if d.action == "block"]
        if blocking:
            self._blocked = True
            return StreamStep("", "block", self._new(blocking, off, len(window)), True)
        cut = len(self._pending) if final else self._cut(relevant, off, len(window))
        if cut <= 0:
            return StreamStep("", "allow", ())
        released = [d for d in relevant if d.finding.start - off < cut]
        spans = [
            Span(max(d.finding.start - off, 0), min(d.finding.end - off, cut), self.policy.label(d.finding))
            for d in released
            if d.action == "redact"
        ]
        text = self._render(self._pending[:cut], spans)
        new = self._new(released, off, len(window))
        action: Verdict = "allow"
        for d in new:
            if VERDICT_RANK[d.action] > VERDICT_RANK[action]:
                action = d.action
        self._context = (self._context + self._pending[:cut])[-self._context_chars :]
        self._pending = self._pending[cut:]
        self._released += cut
        return StreamStep(text, action, new)

    def _cut(self, relevant: list[Decision], off: int, window_len: int) -> int:
        pending = self._pending
        cut = len(pending) - self._holdback
        for d in relevant:  # a redacted value may still be arriving: hold from its start
            if d.action == "redact" and d.finding.end >= window_len:
                cut = min(cut, d.finding.start - off)
        if cut <= 0:
            return 0
        space = max(pending.rfind(ch, 0, cut) for ch in _WHITESPACE)
        if space >= 0:
            cut = space + 1
        elif len(pending) <= self._max_token:
            return 0  # one long token so far: wait for its end
        moved = True
        while moved:  # never cut through a finding or a placeholder
            moved = False
            for d in relevant:
                start, end = d.finding.start - off, d.finding.end - off
                if d.action == "redact" and start < cut < end:
                    cut, moved = max(start, 0), True
            for m in PLACEHOLDER.finditer(pending, max(cut - 64, 0), min(cut + 64, len(pending))):
                if m.start() < cut < m.end():
                    cut, moved = m.start(), True
        return cut

    def _render(self, text: str, spans: list[Span]) -> str:
        pieces: list[str] = []
        pos = 0
        for span in merge_spans(spans):
            pieces.append(self._restored(text[pos : span.start]))
            pieces.append(self._vault.placeholder(span.label, text[span.start : span.end]))
            pos = span.end
        pieces.append(self._restored(text[pos:]))
        return "".join(pieces)

    def _restored(self, text: str) -> str:
        return self._restore.restore(text) if self._restore is not None else text

    def _new(self, decisions: list[Decision], off: int, window_len: int) -> tuple[Decision, ...]:
        out: list[Decision] = []
        for d in decisions:
            f = d.finding
            if f.start <= 0 and f.end >= window_len:  # a whole-text finding (language): report once
                key = (f.scanner, f.rule, -1, -1)
            else:
                base = self._released - off
                key = (f.scanner, f.rule, base + f.start, base + f.end)
            if key not in self._reported:
                self._reported.add(key)
                out.append(d)
        return tuple(out)
