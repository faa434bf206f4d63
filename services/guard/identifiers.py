"""Identifier-like runs (snake_case, kebab-case, camelCase, dotted or slashed names) read as the words they join.

A JSON key, an enum-like value or a tool name is one unspaced run. Scanners that read words (the injection
rules and classifier) see such a run as a single token, so an instruction written as
`ignore_all_previous_instructions` or `ignoreAllPreviousInstructions` would pass them unread. `spaced` gives the
words of a long run, for those scanners to judge as spaced text; a short run ("mimeType", "image/png",
"max_tokens") is a protocol word and is left alone.
"""

from __future__ import annotations

import re

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
# longer runs are not names but data (tokens, base64, hashes): they are scanned as they are
MAX_CHARS = 256
_RUN = re.compile(rf"\S{{1,{MAX_CHARS}}}")
# every run of characters that are neither letters nor digits separates two words ("_", "-", ".", "/", ":", …)
_SEPARATORS = re.compile(r"[\W_]+")
# camelCase and PascalCase: a lower-case letter or digit before an upper-case one ("maxTokens"), and the last
# capital of an acronym before a capitalised word ("HTTPServer" → "HTTP Server")
_CAMEL = re.compile(r"(?<=[^\W_A-Z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][^\W_A-Z\d])")


def words(text: str) -> list[str]:
    """The words of an identifier-like run, in order."""
    return [w for part in _SEPARATORS.split(text) for w in _CAMEL.split(part) if w]


def spaced(text: str) -> str | None:
    """`text` as spaced words when it is one unspaced run of at least `MIN_WORDS` words, else None."""
    if len(text) > MAX_CHARS or _RUN.fullmatch(text) is None:
        return None
    found = words(text)
    return " ".join(found) if len(found) >= MIN_WORDS else None


def classifier_stands(spaced_words: str, probability: float) -> bool:
    """Whether the classifier's finding on a run read as words counts: the run is long enough for the classifier to
    tell a name from a prompt, and the classifier is sure."""
    return spaced_words.count(" ") + 1 >= CLASSIFIER_MIN_WORDS and probability >= CLASSIFIER_FLOOR
