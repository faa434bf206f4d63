"""De-obfuscation for matching: fold a prompt to a canonical form and decode text hidden inside it.

The folded text is for matching only (rules, classifier); it is never forwarded. Steps, in order:

- ``canonical``: per character, compatibility decomposition (NFKD, so full-width and mathematical
  letters become ASCII), invisible characters dropped (zero-width, bidi controls, soft hyphen,
  variation selectors, combining marks used for "zalgo" text, ASCII control characters), Unicode tag
  characters decoded to the ASCII they smuggle, Cyrillic/Greek/IPA look-alikes folded to Latin, then
  lower-cased. One ``str.translate`` over a lazily filled per-character table.
- ``collapse_spaced``: "i g n o r e" / "i.g.n.o.r.e" → "ignore" (runs of four or more single characters).
- ``fold_leet``: inside tokens that mix letters with digits or ``@$``, "1gn0r3" → "ignore".
- ``decoded_segments``: base64 and hex runs that decode to readable text, and the whole text under
  ROT13 or reversed when the prompt mentions that encoding; their decoded text is scanned too.

``match_view`` is canonical → collapse → leet. ``mapped_view`` builds the same text with, for each
character, the offset of the original character it came from; it costs more and is only built after
a hit, to report spans in the original text.
"""

# ruff: noqa: RUF001  (the look-alike table is made of ambiguous characters on purpose)

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

import re2

SegmentKind = Literal["base64", "hex", "rot13", "reversed"]

# Look-alikes that NFKD leaves alone: Cyrillic, Greek, Armenian and IPA letters drawn like Latin ones.
_HOMOGLYPHS: dict[str, str] = {
    # Cyrillic lower case
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o",
    "п": "n", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ь": "b", "ѕ": "s", "і": "i", "ї": "i",
    "ј": "j", "һ": "h", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ӏ": "l", "ɡ": "g", "ԍ": "g", "ү": "y", "ѵ": "v",
    # Cyrillic upper case
    "А": "a", "В": "b", "Е": "e", "Ё": "e", "К": "k", "М": "m", "Н": "h", "О": "o", "Р": "p",
    "С": "c", "Т": "t", "У": "y", "Х": "x", "Ѕ": "s", "І": "i", "Ї": "i", "Ј": "j", "Һ": "h", "Ԁ": "d",
    "Ԛ": "q", "Ԝ": "w", "Ӏ": "l", "Ү": "y",
    # Greek
    "α": "a", "β": "b", "γ": "y", "ε": "e", "ζ": "z", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o",
    "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ϲ": "c", "ϳ": "j",
    "Α": "a", "Β": "b", "Ε": "e", "Ζ": "z", "Η": "h", "Ι": "i", "Κ": "k", "Μ": "m", "Ν": "n", "Ο": "o",
    "Ρ": "p", "Τ": "t", "Υ": "y", "Χ": "x", "Ϲ": "c",
    # Armenian, IPA and other Latin-like letters
    "օ": "o", "ս": "u", "ց": "g", "հ": "h", "ո": "n", "ɑ": "a", "ı": "i", "ɩ": "i", "ȷ": "j", "ʀ": "r",
    "ɴ": "n", "ʏ": "y", "ᴀ": "a", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ᴊ": "j", "ᴋ": "k", "ᴍ": "m", "ᴏ": "o",
    "ᴘ": "p", "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ᴢ": "z", "ꜱ": "s", "ɢ": "g", "ʜ": "h", "ɪ": "i",
    "ʟ": "l", "ƒ": "f", "ß": "ss", "ø": "o", "đ": "d", "ħ": "h", "ł": "l", "ŧ": "t",
}  # fmt: skip

# Letters that render as blank space (Hangul fillers, Khmer inherent vowels); other invisibles are
# found by category: format (Cf), control (Cc) and combining marks (Mn, Me, after NFKD).
_BLANK_LETTERS = frozenset("\u115f\u1160\u17b4\u17b5\u3164\uffa0")
_DROPPED_CATEGORIES = frozenset({"Cf", "Cc", "Mn", "Me"})
_KEPT_CONTROLS = frozenset("\t\n\r")
_TABLE_LIMIT = 65_536  # distinct characters remembered; an alphabet soup must not grow memory without bound


def _dropped(ch: str) -> bool:
    return ch in _BLANK_LETTERS or (unicodedata.category(ch) in _DROPPED_CATEGORIES and ch not in _KEPT_CONTROLS)


def _fold_char(ch: str) -> str:
    cp = ord(ch)
    if 0xE0020 <= cp <= 0xE007E:  # tag characters: invisible copies of printable ASCII
        return chr(cp - 0xE0000).lower()
    out: list[str] = []
    for part in unicodedata.normalize("NFKD", ch):
        if _dropped(part):
            continue
        out.extend(c for c in _HOMOGLYPHS.get(part, part).lower() if not _dropped(c))
    return "".join(out)


class _FoldTable(dict[int, str]):
    """``str.translate`` table filled on first sight of each character (bounded by the alphabet used)."""

    def __missing__(self, cp: int) -> str:
        folded = _fold_char(chr(cp))
        if len(self) < _TABLE_LIMIT:
            self[cp] = folded
        return folded


_FOLD = _FoldTable()
# Hot-path searches run on RE2 (linear, ~5 µs per 2 KB here against 40-90 µs for Python's re); the
# Python patterns with look-arounds only run after an RE2 pre-check has found a candidate.
_ASCII_CONTROL = re2.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ASCII_CONTROL_SUB = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NOT_PLAIN = re.compile(r"[^\t\n\r\x20-\x7e]")
_SPACED_HINT = re2.compile(r"(?:[a-z0-9@$][ ._*\-]){3,}[a-z0-9@$]")
_SPACED = re.compile(r"(?<![a-z0-9@$])(?:[a-z0-9@$][ ._*\-]){3,}[a-z0-9@$](?![a-z0-9@$])")
_SPACED_SEP = re.compile(r"[ ._*\-]")
# leftmost-first: a match starts at the first character of a token that mixes letters and digits
# runs of digits and @/$; a run touching a letter marks a token to fold. Python's `re` is linear on a single
# character class, and unlike RE2's Python wrapper it has little per-match overhead, which had made the
# fold the costliest step of a 2 KB scan.
_LEET_RUN = re.compile(r"[0-9@$]+")
_LEET_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789@$")
_LEET_TAIL = re.compile(r"[a-z0-9@$]*")
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "6": "g", "7": "t", "8": "b", "9": "g",
                       "@": "a", "$": "s"})  # fmt: skip
_BASE64 = re2.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
_HEX = re2.compile(r"(?:[0-9A-Fa-f]{2}[ :]?){10,}|(?:\\x[0-9A-Fa-f]{2}){6,}")
_ROT13_HINT = re2.compile(r"(?i)rot[\s_-]?13|caesar")
_REVERSE_HINT = re2.compile(r"(?i)revers|backwards")
_HINT_BEFORE, _HINT_AFTER = 1_000, 3_000  # characters around a ROT13/reverse mention that get decoded
# any of the four above: most texts hold none, and one search then replaces four (each a pass, with the RE2
# wrapper's own cost per call, on every text of a request)
_ANY_ENCODED = re2.compile("|".join(f"(?:{p.pattern})" for p in (_BASE64, _HEX, _ROT13_HINT, _REVERSE_HINT)))


def canonical(text: str) -> str:
    """Invisible characters dropped, look-alikes and compatibility forms folded, lower-cased."""
    if text.isascii():
        return _ASCII_CONTROL_SUB.sub("", text).lower() if _ASCII_CONTROL.search(text) else text.lower()
    return text.translate(_FOLD)


def visible(text: str) -> str:
    """``text`` without the characters ``canonical`` drops as invisible (format, control, combining marks, blank
    letters); unlike ``canonical`` it keeps case, letters and their offsets elsewhere untouched."""
    if text.isascii():
        return _ASCII_CONTROL_SUB.sub("", text) if _ASCII_CONTROL.search(text) else text
    return "".join(c for c in text if not _dropped(c))


def collapse_spaced(text: str) -> str:
    """Join runs of single characters separated by one space, dot, dash, underscore or asterisk."""
    if _SPACED_HINT.search(text) is None:
        return text
    return _SPACED.sub(lambda m: _SPACED_SEP.sub("", m.group()), text)


def fold_leet(text: str) -> str:
    """Read digits and ``@$`` as letters inside tokens that also contain letters (length-preserving)."""
    pieces: list[str] = []
    done = 0  # text before this offset is already in `pieces`
    n = len(text)
    for run in _LEET_RUN.finditer(text):
        i, j = run.span()
        if i < done:
            continue  # inside a token folded already
        # a token to fold: the digit run touches a letter on either side
        if not ((i > 0 and "a" <= text[i - 1] <= "z") or (j < n and "a" <= text[j] <= "z")):
            continue
        start = i
        while start > done and text[start - 1] in _LEET_CHARS:
            start -= 1
        tail = _LEET_TAIL.match(text, j)
        end = tail.end() if tail else j
        pieces.append(text[done:start])
        pieces.append(text[start:end].translate(_LEET))
        done = end
    if not pieces:
        return text
    pieces.append(text[done:])
    return "".join(pieces)


def match_view(text: str) -> str:
    """The text rules and the classifier see: canonical, spaced letters joined, leetspeak read as letters."""
    return fold_leet(collapse_spaced(canonical(text)))


def mapped_view(text: str) -> tuple[str, list[int]]:
    """``match_view(text)`` with, for every character, the offset of the original character it came from."""
    if text.isascii() and _ASCII_CONTROL.search(text) is None:
        view, origin = text.lower(), list(range(len(text)))  # lower() keeps ASCII offsets
    else:
        # printable ASCII runs keep their offsets; only the other characters go through the table
        pieces: list[str] = []
        origin = []
        pos = 0
        for m in _NOT_PLAIN.finditer(text):
            i = m.start()
            pieces.append(text[pos:i].lower())
            origin.extend(range(pos, i))
            folded = _FOLD[ord(text[i])]
            pieces.append(folded)
            origin.extend([i] * len(folded))
            pos = i + 1
        pieces.append(text[pos:].lower())
        origin.extend(range(pos, len(text)))
        view = "".join(pieces)
    if _SPACED_HINT.search(view) is not None and _SPACED.search(view) is not None:
        kept: list[str] = []
        kept_origin: list[int] = []
        pos = 0
        for m in _SPACED.finditer(view):
            kept.append(view[pos : m.start()])
            kept_origin.extend(origin[pos : m.start()])
            for j in range(m.start(), m.end()):
                if not _SPACED_SEP.match(view[j]):
                    kept.append(view[j])
                    kept_origin.append(origin[j])
            pos = m.end()
        kept.append(view[pos:])
        kept_origin.extend(origin[pos:])
        view, origin = "".join(kept), kept_origin
    return fold_leet(view), origin


def to_original(origin: list[int], start: int, end: int, text_len: int) -> tuple[int, int]:
    """Map a ``[start, end)`` span of a mapped view back to the original text."""
    if not origin or start >= len(origin):
        return 0, text_len
    return origin[start], origin[min(end, len(origin)) - 1] + 1


@dataclass(frozen=True, slots=True)
class Segment:
    """Text found encoded inside a prompt: how it was encoded and where the encoded form sits."""

    kind: SegmentKind
    start: int
    end: int
    text: str


def _readable(raw: bytes) -> str | None:
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    letters = sum(c.isalpha() for c in decoded)
    printable = sum(c.isprintable() or c in "\n\t" for c in decoded)
    if printable < 0.95 * len(decoded) or letters < 0.5 * len(decoded) or " " not in decoded.strip():
        return None
    return decoded


def _decode_base64(run: str) -> str | None:
    body = run.rstrip("=")
    if len(body) % 4 == 1:
        return None
    padded = body + "=" * (-len(body) % 4)
    alphabet = base64.urlsafe_b64decode if ("-" in body or "_" in body) else base64.b64decode
    try:
        raw = alphabet(padded)
    except (binascii.Error, ValueError):
        return None
    return _readable(raw)


def _decode_hex(run: str) -> str | None:
    digits = re.sub(r"\\x|[ :]", "", run)
    if len(digits) % 2:
        digits = digits[:-1]
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        return None
    return _readable(raw)


def decoded_segments(text: str) -> list[Segment]:
    """Readable text hidden in ``text`` as base64, hex, ROT13 or reversed (one level; callers recurse)."""
    if _ANY_ENCODED.search(text) is None:
        return []
    return encoded_segments(text)


def encoded_segments(text: str) -> list[Segment]:
    """``decoded_segments`` without its first check (each pattern searched on its own): tests compare the two."""
    found: list[Segment] = []
    for m in _BASE64.finditer(text):
        run = m.group()
        if not any(c.isdigit() or c.isupper() for c in run[1:]):
            continue  # a plain lower-case word or identifier, not an encoding
        decoded = _decode_base64(run)
        if decoded is not None:
            found.append(Segment("base64", m.start(), m.end(), decoded))
    for m in _HEX.finditer(text):
        decoded = _decode_hex(m.group())
        if decoded is not None:
            found.append(Segment("hex", m.start(), m.end(), decoded))
    # ROT13 and reversed text cannot be spotted, only guessed from a mention: decode the stretch
    # around the first mention (not the whole prompt, which would triple the cost of a long one)
    hint = _ROT13_HINT.search(text)
    if hint is not None:
        start, end = max(0, hint.start() - _HINT_BEFORE), min(len(text), hint.end() + _HINT_AFTER)
        found.append(Segment("rot13", start, end, codecs.encode(text[start:end], "rot13")))
    hint = _REVERSE_HINT.search(text)
    if hint is not None:
        start, end = max(0, hint.start() - _HINT_BEFORE), min(len(text), hint.end() + _HINT_AFTER)
        found.append(Segment("reversed", start, end, text[start:end][::-1]))
    return found
