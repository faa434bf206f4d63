"""Identifier-like runs (snake_case, kebab-case, camelCase, dotted or slashed names) read as the words they join.

A JSON key, an enum-like value or a tool name is one unspaced run, and so is an instruction written as
`ignore_all_previous_instructions` inside a sentence. Scanners that read words (the injection rules and
classifier) see such a run as a single token and would pass it unread. `words_view` gives a text with every long
run replaced by its spaced words, and maps the view's offsets back, for those scanners to judge; a short run
("mimeType", "image/png", "max_tokens") is a protocol word and is left alone.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache

import re2

from services.guard.normalize import visible
from services.guard.textmap import MappedText, deobfuscate

# Measured by bench/identifier_eval.py on 72,000 real names (keys, enum values and tool names of the AWS and
# CloudFormation models, JSON Schema, the OpenAI / Anthropic / MCP SDK types), 21,000 one-run values (paths, URLs,
# ids, digests, base64) and 1,400 attacks written as one run:
# - the phrase rules fire on none of the 43,000 names of three words or more (on 2 until the override rule asked
#   for a model-directed object: "delete_file_system_policy") and catch three-word attacks
#   ("ignore_previous_instructions"): a run of `MIN_WORDS` words is read by the rules;
# - the classifier takes short spaced names for prompts (at its own threshold it flags 11-13 % of them; at 0.99
#   still 0.1 % of the two- and three-word names, while it catches no attack that short): it judges runs of
#   `CLASSIFIER_MIN_WORDS` words or more, and counts only at `CLASSIFIER_FLOOR` (6 of 17,000 such names).
# Together: 6 of 72,000 names and 1 of 21,000 values flagged; 413 of 1,414 attacks caught, against 79 before.
MIN_WORDS = 3
CLASSIFIER_MIN_WORDS = 4
CLASSIFIER_FLOOR = 0.99
# The view differs from the text only where a run was spaced: a second reading of the copied rest finds what the
# first found. It reads each spaced run with this much context either side (at least), more than the longest phrase
# rule spans (about a dozen words: a verb, four filler words, a qualifier, two more, an object); a "word" is a
# whitespace-separated chunk, which holds at least one of a rule's words however it is punctuated.
CONTEXT_WORDS = 48
CONTEXT_CHARS = 256
# A run is what lies between two spaces, its length unbounded (a padded or embedded run must not escape); only a
# run with a word boundary inside (a separator between two letters or digits, a camelCase or acronym boundary, as
# `words` splits) can hold words to space. One RE2 pass finds such runs whole, in time linear in the text (Python's
# `re` took 0.2 ms on a 700-character paragraph without any). Its classes are wider than `words`' where they
# differ (any non-ASCII character may start a camelCase boundary), never narrower; its spaces are exactly
# Python's `\s` (tests/unit/guard/test_identifiers.py checks both over every code point).
_SPACE = r"\t-\r\x1c-\x1f\x{85}\p{Z}"
_WORD = r"\pL\pN"
_BOUNDARY = (
    rf"[{_WORD}][^{_WORD}{_SPACE}]+[{_WORD}]"
    r"|(?:[\p{Ll}\p{Lm}\p{Lo}\p{Lt}\pN]|[^\x00-\x7f])[A-Z]"
    r"|[A-Z][A-Z](?:[\p{Ll}\p{Lm}\p{Lo}\p{Lt}\p{Nl}\p{No}]|[^\x00-\x7f])"
)
_RUN = re2.compile(rf"[^{_SPACE}]*(?:{_BOUNDARY})[^{_SPACE}]*")
# every run of characters that are neither letters nor digits separates two words ("_", "-", ".", "/", ":", …)
_SEPARATORS = re.compile(r"[\W_]+")
# camelCase and PascalCase: a lower-case letter or digit before an upper-case one ("maxTokens"), and the last
# capital of an acronym before a capitalised word ("HTTPServer" → "HTTP Server")
# the rest of a word, to the whitespace
_NONSPACE = re.compile(r"\S*")
_CAMEL = re.compile(r"(?<=[^\W_A-Z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][^\W_A-Z\d])")


def words(text: str) -> list[str]:
    """The words of an identifier-like run, in order."""
    return [w for part in _SEPARATORS.split(text) for w in _CAMEL.split(part) if w]


@dataclass(frozen=True, slots=True)
class WordsView:
    """A text with its long identifier-like runs spaced, and the map from its offsets back to the original's."""

    text: str
    _view: tuple[int, ...]  # segment starts in the view
    _start: tuple[int, ...]  # the same segments' starts in the de-obfuscated text
    _end: tuple[int, ...]  # and their ends there
    _copy: tuple[bool, ...]  # copied 1:1 (else: a run replaced by its spaced words)
    _cleaned: MappedText | None  # the de-obfuscation's own map, when it changed the text

    def windows(self, words: int = CONTEXT_WORDS, chars: int = CONTEXT_CHARS) -> list[tuple[int, int]]:
        """The spans of the view a second reading needs: each spaced run with at least `words` whitespace-separated
        words and `chars` characters of its context on either side, merged where they meet, each starting and
        ending with a whole word. The rest of the view is the text's own, copied: the text's first reading has seen
        it. Only the context is walked, not the whole view."""
        text = self.text
        bounds = (*self._view, len(text))
        if all(not copied or bounds[i + 1] - bounds[i] <= chars for i, copied in enumerate(self._copy)):
            return [(0, len(text))]  # no copied stretch longer than the context: the parts would make the whole
        out: list[tuple[int, int]] = []
        for i, copied in enumerate(self._copy):
            if copied:
                continue
            left = _part_start(text, bounds[i], words, chars)
            right = _part_end(text, bounds[i + 1], words, chars)
            if out and left <= out[-1][1]:
                out[-1] = (out[-1][0], max(right, out[-1][1]))
            else:
                out.append((left, right))
        return out

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        """A span of the view as a span of the original text; a span touching a spaced run covers the whole run."""
        first = bisect_right(self._view, start) - 1
        last = bisect_right(self._view, max(end - 1, start)) - 1
        a = self._start[first] + (start - self._view[first]) if self._copy[first] else self._start[first]
        b = self._start[last] + (max(end - 1, start) - self._view[last]) + 1 if self._copy[last] else self._end[last]
        return self._cleaned.to_original(a, b) if self._cleaned is not None else (a, b)


@lru_cache(maxsize=8)
def _words_back(words: int) -> re.Pattern[str]:
    """Up to `words` whitespace-separated words, and the whitespace before them, from where a match starts."""
    return re.compile(rf"\s*(?:\S+\s+){{0,{max(words - 1, 0)}}}\S*")


def _part_start(text: str, a: int, words: int, chars: int) -> int:
    """Where a part that reads the run starting at `a` starts: at least `words` words and `chars` characters before
    it, never inside a word; 0 if the text holds less. Reads a stretch before `a` (reversed, so that one C-level match
    walks back over the words) that doubles until it holds the start."""
    span = chars + 16 * (words + 1)
    while True:
        lo = max(a - span, 0)
        back = text[lo:a][::-1]
        end = _words_back(words).match(back).end()  # type: ignore[union-attr]  # every text matches
        enough = len(back[:end].split()) >= words and end < len(back)
        bound = min(a - end, a - chars)
        if bound <= 0:
            return 0
        if enough and bound > lo:
            if text[bound].isspace() or text[bound - 1].isspace():
                return bound
            j = _NONSPACE.match(back, a - bound).end()  # type: ignore[union-attr]  # back to the word's start
            if j < len(back):
                return a - j
        if lo == 0:
            return 0
        span *= 2


def _part_end(text: str, b: int, words: int, chars: int) -> int:
    """Where a part that reads the run ending at `b` ends: at least `words` words and `chars` characters after it,
    never inside a word; the text's end if it holds less."""
    span = chars + 16 * (words + 1)
    size = len(text)
    while True:
        hi = min(b + span, size)
        end = _words_back(words).match(text, b, hi).end()  # type: ignore[union-attr]  # every text matches
        enough = len(text[b:end].split()) >= words and end < hi
        bound = max(end, b + chars)
        if bound >= size:
            return size
        if enough and bound < hi:
            if text[bound].isspace() or text[bound - 1].isspace():
                return bound
            e = _NONSPACE.match(text, bound, hi).end()  # type: ignore[union-attr]  # on to the word's end
            if e < hi:
                return e
        if hi == size:
            return size
        span *= 2


def words_view(text: str) -> WordsView | None:
    """`text` de-obfuscated (zero-width and other invisible characters out, as the policy's rescan does) with every
    run of at least `MIN_WORDS` words replaced by those words spaced; None when no run was replaced. Its cost grows
    linearly with the text's length."""
    cleaned = deobfuscate(text)
    base = cleaned.text if cleaned is not None else text
    pieces: list[str] = []
    view: list[int] = []
    starts: list[int] = []
    ends: list[int] = []
    copy: list[bool] = []
    pos = vpos = 0
    split: dict[str, list[str]] = {}  # a run met again (a path named on every line) is split once
    for m in _RUN.finditer(base):
        start, end = m.span()
        run = base[start:end]
        found = split.get(run)
        if found is None:
            found = split[run] = words(visible(run))
        if len(found) < MIN_WORDS:
            continue
        if start > pos:
            view.append(vpos)
            starts.append(pos)
            ends.append(start)
            copy.append(True)
            pieces.append(base[pos:start])
            vpos += start - pos
        spaced = " ".join(found)
        view.append(vpos)
        starts.append(start)
        ends.append(end)
        copy.append(False)
        pieces.append(spaced)
        vpos += len(spaced)
        pos = end
    if not pieces:
        return None
    view.append(vpos)
    starts.append(pos)
    ends.append(len(base))
    copy.append(True)
    pieces.append(base[pos:])
    return WordsView("".join(pieces), tuple(view), tuple(starts), tuple(ends), tuple(copy), cleaned)


def classifier_stands(spaced_words: str, probability: float) -> bool:
    """Whether the classifier's finding on a run read as words counts: the run is long enough for the classifier to
    tell a name from a prompt, and the classifier is sure."""
    return spaced_words.count(" ") + 1 >= CLASSIFIER_MIN_WORDS and probability >= CLASSIFIER_FLOOR
