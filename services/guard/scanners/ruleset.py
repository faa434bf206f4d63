"""The matching engine under every regex scanner: one RE2 Set gates all rules, spans are located only on a hit.

RE2 runs in time linear in the input for any pattern, so neither shipped nor user-supplied rules can
cause catastrophic backtracking. Matching runs on the UTF-8 bytes of the text (encoded once per scan);
spans are turned back into character offsets so they index the original `str`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import re2

from services.guard.scanners.base import Severity

# RE2 gives each compiled program a memory budget; the Set's DFA over a few dozen secret rules
# needs more than the 8 MiB default on long inputs. A DFA that runs out of memory makes a Set match
# fail (which reads as "no rule matched"), so programs are kept small: counted repetitions of large
# classes (`[\pL]{0,63}`) blow up, and a rule bigger than MAX_PROGRAM_SIZE is refused at startup.
_SET_MAX_MEM = 256 << 20
_RULE_MAX_MEM = 32 << 20
MAX_PROGRAM_SIZE = 20_000


@dataclass(frozen=True, slots=True)
class Rule:
    """One pattern; the named group `s`, when present, is the span reported (e.g. the value, not its key).

    `validate(value, whole)` sees the reported span and the whole match (for checks that need the context).
    """

    id: str
    pattern: str
    severity: Severity
    label: str
    validate: Callable[[str, str], bool] | None = None
    # literal alternations (keyword lists) grow with the list but stay cheap for the DFA
    max_program: int = 0  # 0: MAX_PROGRAM_SIZE


@dataclass(frozen=True, slots=True)
class Match:
    rule: Rule
    start: int  # character offsets into the scanned str
    end: int
    value: str


def _options(max_mem: int) -> re2.Options:
    options = re2.Options()
    options.max_mem = max_mem
    return options


class RuleSet:
    """Compiled rules: `matches(text)` costs one Set pass when nothing hits."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self._gate = re2.Set.SearchSet(_options(_SET_MAX_MEM))
        self._compiled: list[tuple[re2._Regexp, int]] = []
        for rule in self.rules:
            try:
                regex = re2.compile(rule.pattern, _options(_RULE_MAX_MEM))
                self._gate.Add(rule.pattern)
            except re2.error as exc:
                raise ValueError(f"rule {rule.id!r}: invalid RE2 pattern: {exc}") from exc
            limit = rule.max_program or MAX_PROGRAM_SIZE
            if regex.programsize > limit:
                raise ValueError(
                    f"rule {rule.id!r}: pattern too complex ({regex.programsize} RE2 instructions, "
                    f"limit {limit}); avoid counted repetition of large classes such as [\\pL]{{0,60}}"
                )
            self._compiled.append((regex, regex.groupindex.get("s", 0)))
        if self.rules:
            self._gate.Compile()

    def hits(self, data: bytes) -> list[int]:
        """Indices of the rules that match somewhere in `data` (UTF-8)."""
        if not self.rules:
            return []
        found: list[int] = self._gate.Match(data) or []
        return found

    def matches(self, text: str, data: bytes | None = None) -> list[Match]:
        """Every validated match of every rule, in rule order then position order."""
        if data is None:
            data = text.encode("utf-8", "replace")  # a lone surrogate becomes one "?" byte
        hit = self.hits(data)
        if not hit:
            return []
        offsets = CharOffsets(text, data)
        out: list[Match] = []
        for index in sorted(hit):
            rule = self.rules[index]
            regex, group = self._compiled[index]
            for m in regex.finditer(data):
                start, end = m.span(group)
                if start < 0:
                    start, end = m.span(0)
                if start == end:
                    continue
                value = data[start:end].decode("utf-8", "replace")
                if rule.validate is not None and not rule.validate(value, m.group(0).decode("utf-8", "replace")):
                    continue
                out.append(Match(rule, offsets.char(start), offsets.char(end), value))
        return out


class CharOffsets:
    """UTF-8 byte offset → character offset; free for ASCII text, incremental otherwise."""

    __slots__ = ("_ascii", "_byte", "_char", "_data")

    def __init__(self, text: str, data: bytes) -> None:
        self._data = data
        self._ascii = len(data) == len(text)
        self._byte = 0
        self._char = 0

    def char(self, byte_offset: int) -> int:
        if self._ascii:
            return byte_offset
        if byte_offset >= self._byte:
            self._char += len(self._data[self._byte : byte_offset].decode("utf-8"))
        else:
            self._char = len(self._data[:byte_offset].decode("utf-8"))
        self._byte = byte_offset
        return self._char
