"""Prompt-injection and jailbreak scanner: phrase rules (one RE2 set) plus a linear classifier.

Both layers look at ``normalize.match_view`` text, so zero-width characters, look-alike letters,
leetspeak and spaced-out letters do not hide a phrase; base64 / hex / ROT13 / reversed text found in
the prompt is decoded and scanned the same way (its findings point at the encoded run).

Rule findings carry the rule's id and severity (``injection_rules.RULES``) and score 1.0. A classifier
finding has rule ``injection.classifier``, the model's probability as score, and fires at or above
``threshold`` (default: the one stored with the model, chosen on validation data for about 1 % false
positives there; expect more on prompts unlike the training data — see bench/injection_eval.py).
"""

from __future__ import annotations

from pathlib import Path

import re2

from services.guard.normalize import (
    Segment,
    canonical,
    collapse_spaced,
    decoded_segments,
    fold_leet,
    mapped_view,
    to_original,
)
from services.guard.scanners.base import Finding, Severity
from services.guard.scanners.injection_model import MODEL_PATH, LinearModel, token_spans
from services.guard.scanners.injection_rules import RULES, Rule

CLASSIFIER_RULE = "injection.classifier"


def _options() -> re2.Options:
    opts = re2.Options()
    opts.max_mem = 64 << 20
    return opts


class InjectionScanner:
    """Finds prompt injection and jailbreak attempts in one text (pure; safe to share across threads)."""

    name = "injection"

    def __init__(
        self,
        *,
        rules: bool = True,
        classifier: bool = True,
        threshold: float | None = None,
        classifier_severity: Severity = "medium",
        strong_threshold: float = 0.95,
        model: LinearModel | None = None,
        model_path: Path = MODEL_PATH,
        decode: bool = True,
        max_decode_depth: int = 2,
        extra_rules: tuple[Rule, ...] = (),
    ) -> None:
        """
        rules / classifier: switch either layer off (e.g. to measure one alone).
        threshold: classifier probability at which a prompt is flagged; None = the model's own.
        classifier_severity: severity of a classifier finding below ``strong_threshold``; at or above
            it the finding is "high".
        model / model_path: coefficients (loaded once, here).
        decode / max_decode_depth: also scan text found base64/hex/ROT13/reversed, nested this deep.
        extra_rules: more ``Rule``s (RE2, written against lower-cased match-view text).
        """
        self._rules: tuple[Rule, ...] = (RULES + extra_rules) if rules else extra_rules
        self._set: re2.Set | None = None
        self._compiled: list[re2._Regexp] = []  # the module ships no type hints: Any to mypy
        if self._rules:
            self._set = re2.Set.SearchSet(_options())
            for rule in self._rules:
                try:
                    self._compiled.append(re2.compile(rule.pattern, _options()))
                    self._set.Add(rule.pattern)
                except re2.error as exc:
                    raise ValueError(f"rule {rule.id}: invalid RE2 pattern {rule.pattern!r}: {exc}") from exc
            self._set.Compile()
        self._model: LinearModel | None = None
        if classifier:
            self._model = model or LinearModel.load(model_path)
        self.threshold = threshold if threshold is not None else (self._model.threshold if self._model else 1.0)
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        self._classifier_severity: Severity = classifier_severity
        self._strong = strong_threshold
        self._decode = decode
        self._depth = max_decode_depth

    def scan(self, text: str) -> list[Finding]:
        findings = self._scan(text, None, self._depth)
        findings.sort(key=lambda f: (f.start, f.rule))
        return findings

    def classifier_score(self, text: str) -> float:
        """The classifier's probability for ``text`` alone (no decoding); 0.0 when the layer is off."""
        if self._model is None:
            return 0.0
        return self._model.score(fold_leet(collapse_spaced(canonical(text)))).probability

    def _scan(self, text: str, segment: Segment | None, depth: int) -> list[Finding]:
        canon = canonical(text)
        view = fold_leet(collapse_spaced(canon))
        found: list[Finding] = []
        seen: set[str] = set()
        mapping: list[tuple[str, list[int]]] = []  # mapped_view(text), built on the first hit that needs it
        if self._set is not None:
            hits = set(self._set.Match(canon) or ())
            if view != canon:
                hits.update(self._set.Match(view) or ())
            for index in sorted(hits):
                rule = self._rules[index]
                if rule.id in seen:
                    continue
                seen.add(rule.id)
                start, end = self._span(text, view, index, segment, mapping)
                found.append(Finding(self.name, rule.id, rule.severity, start, end, 1.0))
        if self._model is not None:
            best = self._model.score(view)
            if best.probability >= self.threshold:
                severity: Severity = "high" if best.probability >= self._strong else self._classifier_severity
                if segment is not None:
                    start, end = segment.start, segment.end
                elif best.first_token == 0 and best.end_token >= best.token_count:
                    start, end = 0, len(text)
                else:
                    start, end = self._window_span(text, best.first_token, best.end_token, mapping)
                found.append(Finding(self.name, CLASSIFIER_RULE, severity, start, end, round(best.probability, 4)))
        if self._decode and depth > 0:
            for inner in decoded_segments(text):
                outer = segment or inner
                for f in self._scan(inner.text, outer, depth - 1):
                    if f.rule not in seen or f.rule == CLASSIFIER_RULE:
                        seen.add(f.rule)
                        found.append(f)
        return _dedupe(found)

    def _span(
        self, text: str, view: str, index: int, segment: Segment | None, mapping: list[tuple[str, list[int]]]
    ) -> tuple[int, int]:
        """Where rule ``index`` matched, in the original text (the encoded run for decoded text)."""
        if segment is not None:
            return segment.start, segment.end
        pattern = self._compiled[index]
        if len(view) == len(text) and text.isascii():
            m = pattern.search(view)  # ASCII folding is length-preserving: offsets are the original's
            if m is not None:
                return m.start(), m.end()
        mapped, origin = _mapped(text, mapping)
        m = pattern.search(mapped)
        if m is None:  # matched only in the canonical (un-collapsed) view: report the whole text
            return 0, len(text)
        return to_original(origin, m.start(), m.end(), len(text))

    def _window_span(self, text: str, first: int, end: int, mapping: list[tuple[str, list[int]]]) -> tuple[int, int]:
        mapped, origin = _mapped(text, mapping)
        spans = token_spans(mapped)
        if not spans or first >= len(spans):
            return 0, len(text)
        return to_original(origin, spans[first][0], spans[min(end, len(spans)) - 1][1], len(text))


def _mapped(text: str, memo: list[tuple[str, list[int]]]) -> tuple[str, list[int]]:
    if not memo:
        memo.append(mapped_view(text))
    return memo[0]


def _dedupe(findings: list[Finding]) -> list[Finding]:
    out: list[Finding] = []
    keys: set[tuple[str, int, int]] = set()
    for f in findings:
        key = (f.rule, f.start, f.end)
        if key not in keys:
            keys.add(key)
            out.append(f)
    return out
