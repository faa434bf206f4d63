"""De-obfuscation with an offset map: scan a cleaned copy of a text, report spans in the original.

Removes invisible format characters (zero-width space/joiners, bidi controls, soft hyphen, BOM,
variation selectors), decodes Unicode tag characters (invisible ASCII), and folds full-width forms,
mathematical alphanumerics and enclosed alphanumerics to ASCII (their NFKC form). Pure ASCII text
and text without such characters cost one check and return None. Homoglyphs from other scripts
(Cyrillic U+0430 for Latin `a`) are not folded.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass

_INVISIBLE = (
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064"
    "\u2066-\u206f\ufe00-\ufe0f\ufeff"
)
_FOLDED = "\u2460-\u24ff\u3000\uff01-\uff5e\U0001d400-\U0001d7ff"
_TAGS = "\U000e0000-\U000e007f"
# one suspect character per match: each becomes its own segment of the offset map
_SUSPECT = re.compile(f"[{_INVISIBLE}{_FOLDED}{_TAGS}]")
_DROP = re.compile(f"[{_INVISIBLE}]")


def _replacement(ch: str) -> str:
    cp = ord(ch)
    if _DROP.match(ch):
        return ""
    if 0xE0000 <= cp <= 0xE007F:
        return chr(cp - 0xE0000) if 0x20 <= cp - 0xE0000 < 0x7F else ""
    return unicodedata.normalize("NFKC", ch)


@dataclass(frozen=True, slots=True)
class MappedText:
    """A cleaned text and the map from its offsets back to the original's."""

    text: str
    _norm: tuple[int, ...]  # segment starts in the cleaned text
    _orig: tuple[int, ...]  # the same segments' starts in the original
    _copy: tuple[bool, ...]  # copied 1:1 (else: one original character became 0..n characters)

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        return self._point(start), self._point(max(end - 1, start)) + 1

    def _point(self, pos: int) -> int:
        i = bisect_right(self._norm, pos) - 1
        if self._copy[i]:
            return self._orig[i] + (pos - self._norm[i])
        return self._orig[i]


def deobfuscate(text: str) -> MappedText | None:
    """The cleaned text with its offset map, or None when there is nothing to clean."""
    if text.isascii() or _SUSPECT.search(text) is None:
        return None
    pieces: list[str] = []
    norm: list[int] = []
    orig: list[int] = []
    copy: list[bool] = []
    pos = npos = 0
    for m in _SUSPECT.finditer(text):
        if m.start() > pos:
            norm.append(npos)
            orig.append(pos)
            copy.append(True)
            pieces.append(text[pos : m.start()])
            npos += m.start() - pos
        rep = _replacement(m.group())
        norm.append(npos)
        orig.append(m.start())
        copy.append(False)
        pieces.append(rep)
        npos += len(rep)
        pos = m.end()
    norm.append(npos)
    orig.append(pos)
    copy.append(True)
    pieces.append(text[pos:])
    return MappedText("".join(pieces), tuple(norm), tuple(orig), tuple(copy))
