"""A cheap language guess: Unicode script counts, then stopword votes for Latin and Cyrillic text.

Looks at the first 2,000 characters only, so its cost is bounded whatever the prompt size. Limits,
honestly: it knows ~30 languages; texts under a few dozen letters, mostly code, or mixing languages
come back as "und" (undetermined) or as the majority language; closely related languages
(Danish/Norwegian, Czech/Slovak, Serbian/Croatian, Malay/Indonesian) are easily confused; Chinese
vs Japanese relies on the presence of kana. Use it for coarse allow/deny lists, not for accuracy.
"""

# ruff: noqa: RUF001  (the stopword lists are Cyrillic on purpose)
from __future__ import annotations

import re
from collections import Counter

SAMPLE_CHARS = 2000

# script → (letters regex, language when the script alone decides it)
_SCRIPTS: dict[str, tuple[re.Pattern[str], str]] = {
    "latin": (re.compile(r"[A-Za-z\u00c0-\u024f]"), ""),
    "cyrillic": (re.compile(r"[\u0400-\u04ff]"), ""),
    "greek": (re.compile(r"[\u0370-\u03ff]"), "el"),
    "arabic": (re.compile(r"[\u0600-\u06ff\u0750-\u077f]"), ""),
    "hebrew": (re.compile(r"[\u0590-\u05ff]"), "he"),
    "devanagari": (re.compile(r"[\u0900-\u097f]"), "hi"),
    "bengali": (re.compile(r"[\u0980-\u09ff]"), "bn"),
    "tamil": (re.compile(r"[\u0b80-\u0bff]"), "ta"),
    "thai": (re.compile(r"[\u0e00-\u0e7f]"), "th"),
    "georgian": (re.compile(r"[\u10a0-\u10ff]"), "ka"),
    "armenian": (re.compile(r"[\u0530-\u058f]"), "hy"),
    "hangul": (re.compile(r"[\uac00-\ud7af\u1100-\u11ff]"), "ko"),
    "kana": (re.compile(r"[\u3040-\u30ff]"), "ja"),
    "han": (re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf]"), "zh"),
}
_PERSIAN = re.compile(r"[\u067e\u0686\u0698\u06af\u06cc]")
_URDU = re.compile(r"[\u0679\u0688\u0691\u06ba\u06be\u06d2]")
_UKRAINIAN = re.compile(r"[\u0456\u0457\u0454\u0491]")
_WORD = re.compile(r"[^\W\d_]+")

_STOPWORDS: dict[str, frozenset[str]] = {
    code: frozenset(words.split())
    for code, words in {
        "en": "the and is are was were of to in that it for with this you not have be on at by from or which "
        "what how but they we can will would there their an has had been do does",
        "de": "der die das und ist nicht ein eine ich sie es mit zu auf für dem den des von sich auch wir "
        "ist sind war wie aber oder wenn noch nur bei",
        "fr": "le la les et est un une des du que qui dans pour pas sur au avec ce il elle nous vous sont "
        "mais ou par plus cette je ne",
        "es": "el la los las y es un una que de en por para con no se del al lo como más pero sus le ya "
        "está son muy también fue",
        "it": "il lo la gli le e è un una che di in per con non si del della sono ma come anche più al alla questo nel",
        "pt": "o a os as e é um uma que de em para com não se do da dos das no na por mais mas como foi "
        "são também você",
        "nl": "de het een en is van in dat op te zijn niet met voor die er aan ook als maar bij om nog wat dit wordt",
        "sv": "och att det som en är på för med av till den inte har jag om ett var men så de från kan",
        "da": "og at det som en er på for med af til den ikke har jeg om et var men så de fra kan hvad mig "
        "efter også nu",
        "no": "og at det som en er på for med av til den ikke har jeg om et var men så de fra kan hva meg "
        "etter også nå ikkje",
        "pl": "i w nie na się z że do to jest jak o co po ale od za tak są czy przez jego",
        "cs": "a v se na je že to s z do o jako ale za by jsou které který také pro jsem",
        "tr": "ve bir bu da de için ile çok ne var daha gibi ama olarak en sonra kadar ben sen",
        "id": "dan yang di ini itu dengan untuk tidak dari dalam akan pada juga ke ada saya adalah",
        "ro": "și în nu la cu se o pe un că este din care mai sunt pentru ce ca",
        "hu": "a az és hogy nem is egy van ez de meg csak már volt mint el ki",
        "fi": "ja on ei se että oli ovat mutta kun niin tai myös hän joka tämä",
        "vi": "và của là có không được cho những trong một với người này các để",
        "ru": "и в не на что я с он как а то это по но из у за от так же все она был",
        "uk": "і в не на що я з він як а то це по але із у за від так же все вона був",
        "bg": "и в не на че се с за да от по как това са но той тя бил",
    }.items()
}
_CYRILLIC_LANGS = ("ru", "uk", "bg")


def detect_language(text: str, min_letters: int = 24) -> str:
    """ISO 639-1 code of the text's language, or "und" when unsure."""
    sample = text[:SAMPLE_CHARS]
    if sample.isascii():
        counts = Counter({"latin": sum(c.isalpha() for c in sample)})
    else:
        counts = Counter({name: len(rx.findall(sample)) for name, (rx, _) in _SCRIPTS.items()})
        # Japanese mixes kanji with kana: any real share of kana decides it
        if counts["kana"] and counts["kana"] * 5 >= counts["han"]:
            counts["kana"] += counts.pop("han")
    script, letters = counts.most_common(1)[0] if counts else ("latin", 0)
    if letters < min_letters:
        return "und"
    fixed = _SCRIPTS[script][1]
    if fixed:
        return fixed
    if script == "arabic":
        if _URDU.search(sample):
            return "ur"
        return "fa" if _PERSIAN.search(sample) else "ar"
    words = _WORD.findall(sample.lower())
    if script == "cyrillic":
        if _UKRAINIAN.search(sample):
            return "uk"
        return _vote(words, _CYRILLIC_LANGS) or "ru"
    return _vote(words, tuple(c for c in _STOPWORDS if c not in _CYRILLIC_LANGS)) or "und"


def _vote(words: list[str], languages: tuple[str, ...]) -> str:
    scores = Counter({code: sum(w in _STOPWORDS[code] for w in words) for code in languages})
    ranked = scores.most_common(2)
    if not ranked or ranked[0][1] < 2:
        return ""
    best, score = ranked[0]
    runner = ranked[1][1] if len(ranked) > 1 else 0
    return best if score >= 1.25 * runner + 1 else ""
