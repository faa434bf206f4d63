"""De-obfuscation keeps a map back to the original offsets."""

# ruff: noqa: RUF001  (look-alike and full-width characters are the point of these tests)
from __future__ import annotations

from services.guard.textmap import deobfuscate


def test_ascii_and_clean_text_cost_nothing() -> None:
    assert deobfuscate("plain ascii") is None
    assert deobfuscate("Grüße aus Köln") is None


def test_invisible_characters_are_removed_and_spans_map_back() -> None:
    text = "mail b\u200bo\u200db@x.io now"
    mapped = deobfuscate(text)
    assert mapped is not None and mapped.text == "mail bob@x.io now"
    start = mapped.text.index("bob@x.io")
    s, e = mapped.to_original(start, start + len("bob@x.io"))
    assert text[s:e] == "b\u200bo\u200db@x.io"


def test_full_width_math_and_tag_characters_fold_to_ascii() -> None:
    for folded in ("ｂｏｍｂ", "𝐛𝐨𝐦𝐛"):
        m = deobfuscate(folded)
        assert m is not None and m.text == "bomb"
    hidden = "".join(chr(0xE0000 + ord(c)) for c in "secret")
    m = deobfuscate(f"hi{hidden}!")
    assert m is not None and m.text == "hisecret!"
    s, e = m.to_original(2, 8)
    assert (s, e) == (2, 2 + len(hidden))


def test_homoglyphs_are_not_folded() -> None:
    # Cyrillic U+0430 in place of Latin "a": out of scope here (the injection normaliser folds them)
    assert deobfuscate("p\u0430ssword") is None
