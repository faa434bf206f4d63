"""Reversible redaction: values become numbered placeholders (`<EMAIL_1>`), restorable within one request.

A `Vault` lives for one request: the same value always gets the same placeholder, numbering is per
label, and a placeholder that already occurs literally in the request is skipped so restoring can
never rewrite the client's own text. The vault is the only place the originals are kept; it must
not be logged or stored.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*_[0-9]+>")


class Vault:
    """Placeholder ↔ original value, for one request."""

    __slots__ = ("_by_value", "_counts", "_prefix", "mapping")

    def __init__(self, prefix: str = "") -> None:
        self.mapping: dict[str, str] = {}  # placeholder → original
        self._by_value: dict[str, str] = {}
        self._counts: Counter[str] = Counter()
        self._prefix = prefix

    @classmethod
    def from_mapping(cls, mapping: dict[str, str]) -> Vault:
        """Rebuild a vault from its placeholder map (e.g. `GuardSummary.restore` after a bus hop)."""
        vault = cls()
        for token, value in mapping.items():
            vault.mapping[token] = value
            vault._by_value.setdefault(value, token)
            label, _, number = token.strip("<>").rpartition("_")
            if number.isdigit():
                vault._counts[label] = max(vault._counts[label], int(number))
        return vault

    def __len__(self) -> int:
        return len(self.mapping)

    def placeholder(self, label: str, value: str, avoid: str = "") -> str:
        """The placeholder for `value` (minted on first sight); never one that occurs in `avoid`."""
        known = self._by_value.get(value)
        if known is not None:
            return known
        while True:
            self._counts[label] += 1
            token = f"<{self._prefix}{label}_{self._counts[label]}>"
            if token not in avoid:
                break
        self.mapping[token] = value
        self._by_value[value] = token
        return token

    def restore(self, text: str) -> str:
        """Put the originals back wherever their placeholders appear (unknown placeholders stay)."""
        if not self.mapping or "<" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: self.mapping.get(m.group(), m.group()), text)


@dataclass(frozen=True, slots=True)
class Span:
    start: int
    end: int
    label: str


def merge_spans(spans: Sequence[Span]) -> list[Span]:
    """Overlapping or touching-inside spans become one (the label of the longest part wins)."""
    merged: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -(s.end - s.start))):
        if merged and span.start < merged[-1].end:
            last = merged[-1]
            if span.end > last.end:
                label = last.label if last.end - last.start >= span.end - span.start else span.label
                merged[-1] = Span(last.start, span.end, label)
            continue
        merged.append(span)
    return merged


def redact(text: str, spans: Sequence[Span], vault: Vault, avoid: str | None = None) -> str:
    """`text` with every span replaced by its value's placeholder."""
    if not spans:
        return text
    pieces: list[str] = []
    pos = 0
    for span in merge_spans(spans):
        pieces.append(text[pos : span.start])
        pieces.append(vault.placeholder(span.label, text[span.start : span.end], text if avoid is None else avoid))
        pos = span.end
    pieces.append(text[pos:])
    return "".join(pieces)
