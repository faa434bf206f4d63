"""A linear prompt-injection classifier scored in pure Python from coefficients shipped as JSON.

Features of a window of tokens (``normalize.match_view`` text, split into word and punctuation runs):

- word unigrams and bigrams, each block's counts divided by the square root of its size;
- character 3-5-grams inside each token padded with spaces (``" ignore "``), likewise normalised.

Character grams never cross a token, so a token's contribution is a constant that is computed once
and cached: scoring is a handful of dict look-ups per token (the cost of a Python char-gram loop over
every position would be about 1 ms per 2 KB). Long prompts are scored in overlapping windows and the
highest window wins, so an injection buried in a long benign document is not averaged away.

``doc_features`` is the exact feature map of one window; the training script (``bench/injection_train.py``)
uses it, so training and serving cannot drift apart.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from itertools import accumulate, pairwise
from pathlib import Path

MODEL_PATH = Path(__file__).with_name("injection_model.json")
FORMAT = "gatehouse.injection.linear/1"

# words, and runs of two or more symbols ("<|", "|>", "###", "```"): single punctuation marks are
# dropped because in the public training sets they mark the data set's style, not the attack
# (its benign questions rarely end with a full stop; its attacks often do)
_TOKEN = re.compile(r"\w+|[^\w\s]{2,}")
_MAX_TOKEN_CHARS = 32  # char grams of a 2 KB base64 blob say nothing more than its first 32 characters
_CACHE_LIMIT = 200_000


def tokens(view: str) -> list[str]:
    return _TOKEN.findall(view)


def token_spans(view: str) -> list[tuple[int, int]]:
    """Character spans of ``tokens(view)``, for reporting where the best window lies."""
    return [m.span() for m in _TOKEN.finditer(view)]


def char_grams(token: str, low: int, high: int) -> list[str]:
    padded = f" {token[:_MAX_TOKEN_CHARS]} "
    return [padded[i : i + n] for n in range(low, high + 1) for i in range(len(padded) - n + 1)]


def doc_features(toks: list[str], low: int = 3, high: int = 5) -> dict[tuple[str, str], float]:
    """Feature map of one window: ``(block, key) -> value``; blocks ``w`` words, ``b`` bigrams, ``c`` chars."""
    feats: dict[tuple[str, str], float] = {}
    if not toks:
        return feats
    bigrams = [f"{a} {b}" for a, b in pairwise(toks)]
    grams = [g for t in toks for g in char_grams(t, low, high)]
    for block, items in (("w", toks), ("b", bigrams), ("c", grams)):
        if not items:
            continue
        scale = 1.0 / math.sqrt(len(items))
        for item in items:
            key = (block, item)
            feats[key] = feats.get(key, 0.0) + scale
    return feats


@dataclass(frozen=True, slots=True)
class WindowScore:
    """The best window of a prompt: its token range and its probability of being an injection."""

    probability: float
    first_token: int
    end_token: int
    token_count: int


class LinearModel:
    """Coefficients loaded once; ``score`` is pure and thread-safe (the token cache only memoises)."""

    def __init__(self, data: dict[str, object]) -> None:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} model file (format={data.get('format')!r})")
        self.bias = float(data["bias"])  # type: ignore[arg-type]
        ngrams: list[int] = list(data["char_ngrams"])  # type: ignore[call-overload]
        self.low, self.high = int(ngrams[0]), int(ngrams[1])
        self.window = int(data["window"])  # type: ignore[call-overload]
        self.threshold = float(data["threshold"])  # type: ignore[arg-type]
        self.words: dict[str, float] = dict(data["words"])  # type: ignore[call-overload]
        self.bigrams: dict[str, float] = dict(data["bigrams"])  # type: ignore[call-overload]
        self.chars: dict[str, float] = dict(data["chars"])  # type: ignore[call-overload]
        self.meta: dict[str, object] = dict(data.get("meta", {}))  # type: ignore[call-overload]
        self._token_cache: dict[str, tuple[float, float, int]] = {}

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> LinearModel:
        with path.open(encoding="utf-8") as fh:
            return cls(json.load(fh))

    def _token(self, token: str) -> tuple[float, float, int]:
        """A token's word weight, the sum of its char-gram weights, and its number of char grams."""
        hit = self._token_cache.get(token)
        if hit is not None:
            return hit
        grams = char_grams(token, self.low, self.high)
        get = self.chars.get
        value = (self.words.get(token, 0.0), math.fsum(get(g, 0.0) for g in grams), len(grams))
        if len(self._token_cache) >= _CACHE_LIMIT:
            self._token_cache.clear()
        self._token_cache[token] = value
        return value

    def logit(self, toks: list[str]) -> float:
        """Decision value of one window (what training optimised)."""
        return self._logits(toks, [(0, len(toks))])[0]

    def score(self, view: str) -> WindowScore:
        """Highest-probability window of ``view`` (a ``match_view`` text)."""
        toks = tokens(view)
        n = len(toks)
        if n <= self.window:
            spans = [(0, n)]
        else:
            step = self.window // 2
            spans = [(i, min(i + self.window, n)) for i in range(0, n - step, step)]
        logits = self._logits(toks, spans)
        best = max(range(len(spans)), key=logits.__getitem__)
        return WindowScore(_sigmoid(logits[best]), spans[best][0], spans[best][1], n)

    def _logits(self, toks: list[str], spans: list[tuple[int, int]]) -> list[float]:
        per_token = [self._token(t) for t in toks]
        bget = self.bigrams.get
        # bigram k joins tokens k-1 and k; position 0 has none
        big_w = [0.0, *(bget(f"{a} {b}", 0.0) for a, b in pairwise(toks))]
        word_cum = [0.0, *accumulate(c[0] for c in per_token)]
        big_cum = [0.0, *accumulate(big_w)]
        char_cum = [0.0, *accumulate(c[1] for c in per_token)]
        count_cum = [0, *accumulate(c[2] for c in per_token)]
        out: list[float] = []
        for i, j in spans:
            value = self.bias
            if j > i:
                value += (word_cum[j] - word_cum[i]) / math.sqrt(j - i)
                grams = count_cum[j] - count_cum[i]
                if grams:
                    value += (char_cum[j] - char_cum[i]) / math.sqrt(grams)
            if j - i > 1:
                value += (big_cum[j] - big_cum[i + 1]) / math.sqrt(j - i - 1)
            out.append(value)
        return out


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)
