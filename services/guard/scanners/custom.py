"""Operator-defined rules: keyword lists, RE2 regexes, banned topics, language allow/deny, prompt size.

Keywords match case-insensitively on whole words (phrases match across any run of whitespace); the
policy also runs these rules on the de-obfuscated text (zero-width characters removed, full-width
forms folded), so `b\u200bomb` still matches `bomb`. Homoglyphs and leetspeak (`b0mb`) do not.
All patterns are RE2: user regexes run in linear time and an invalid one fails at config load.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import re2

from services.guard.language import detect_language
from services.guard.scanners.base import Finding, Severity
from services.guard.scanners.ruleset import Rule, RuleSet

_KEYWORD_PROGRAM = 2_000_000  # a keyword list is a literal alternation: large lists are fine for the DFA


@dataclass(frozen=True, slots=True)
class KeywordList:
    name: str
    words: tuple[str, ...]
    severity: Severity = "medium"


@dataclass(frozen=True, slots=True)
class RegexRule:
    name: str
    pattern: str
    severity: Severity = "medium"
    case_insensitive: bool = False


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    keywords: tuple[str, ...]
    min_hits: int = 1
    severity: Severity = "medium"


def _is_word_char(ch: str) -> bool:
    return ch.isascii() and (ch.isalnum() or ch == "_")


def keyword_pattern(words: Sequence[str]) -> str:
    """One case-insensitive alternation; ASCII word edges get `\\b`, inner whitespace matches any run."""
    parts = []
    for word in sorted({w.strip() for w in words if w.strip()}, key=len, reverse=True):
        body = r"\s+".join(re2.escape(piece) for piece in word.split())
        left = r"\b" if _is_word_char(word[0]) else ""
        right = r"\b" if _is_word_char(word[-1]) else ""
        parts.append(f"{left}{body}{right}")
    return "(?i)(?:" + "|".join(parts) + ")"


def _label(name: str) -> str:
    return re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_") or "CUSTOM"


class CustomScanner:
    """Keyword lists, regexes and topics of one policy, gated by one RE2 Set; rule ids are their names."""

    name = "custom"

    def __init__(
        self,
        keywords: Sequence[KeywordList] = (),
        regexes: Sequence[RegexRule] = (),
        topics: Sequence[Topic] = (),
    ) -> None:
        rules: list[Rule] = []
        for k in keywords:
            rules.append(
                Rule(k.name, keyword_pattern(k.words), k.severity, _label(k.name), max_program=_KEYWORD_PROGRAM)
            )
        for r in regexes:
            pattern = f"(?i:{r.pattern})" if r.case_insensitive else r.pattern
            rules.append(Rule(r.name, pattern, r.severity, _label(r.name)))
        self._topics = {t.name: t for t in topics}
        for t in topics:
            rules.append(
                Rule(t.name, keyword_pattern(t.keywords), t.severity, _label(t.name), max_program=_KEYWORD_PROGRAM)
            )
        self._rules = RuleSet(rules)
        self._labels = {r.id: r.label for r in rules}

    def label(self, rule: str) -> str:
        return self._labels.get(rule, "CUSTOM")

    def scan(self, text: str) -> list[Finding]:
        out: list[Finding] = []
        topic_hits: dict[str, list[tuple[int, int, str]]] = {}
        for m in self._rules.matches(text):
            if m.rule.id in self._topics:
                topic_hits.setdefault(m.rule.id, []).append((m.start, m.end, " ".join(m.value.casefold().split())))
                continue
            out.append(Finding(self.name, m.rule.id, m.rule.severity, m.start, m.end))
        for name, hits in topic_hits.items():
            topic = self._topics[name]
            distinct = {value for _, _, value in hits}
            if len(distinct) >= topic.min_hits:
                # the topic is the finding, not each word: one span from its first to its last keyword
                score = min(1.0, len(distinct) / max(topic.min_hits, 1))
                out.append(Finding(self.name, name, topic.severity, hits[0][0], hits[-1][1], score))
        return out


class LanguageScanner:
    """One finding (spanning the whole text) when the detected language is denied or not allowed."""

    name = "language"

    def __init__(
        self,
        allow: Sequence[str] = (),
        deny: Sequence[str] = (),
        severity: Severity = "medium",
        min_letters: int = 24,
    ) -> None:
        self._allow = frozenset(allow)
        self._deny = frozenset(deny)
        self._severity: Severity = severity
        self._min_letters = min_letters

    def scan(self, text: str) -> list[Finding]:
        code = detect_language(text, self._min_letters)
        if code == "und":
            return []
        if code in self._deny or (self._allow and code not in self._allow):
            return [Finding(self.name, f"language:{code}", self._severity, 0, len(text))]
        return []


def size_finding(chars: int, limit: int) -> Finding | None:
    """The max-prompt-size rule: a finding over the whole input when it is longer than `limit` (0: no limit)."""
    if limit and chars > limit:
        return Finding("size", "max_prompt_chars", "high", 0, chars)
    return None
