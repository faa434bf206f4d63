"""A bounded least-recently-used memory of one policy's decisions per text.

An agent sends the same tool definitions and a history that only grows on every turn: most texts of a request
were scanned, word for word, on the turn before. A policy's scan of one text depends on nothing but the text (and
whether it is read as a single word), so its decisions can be kept and reused. Bounded three ways so that no
caller can grow it: the number of entries, the characters they hold, and the size of a text worth keeping (a
longer one is scanned every time; its scan costs far more than a lookup anyway).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")

MAX_ENTRIES = 8_192
MAX_CHARS = 4_000_000  # characters held as keys, all entries together (a few MB at most)
MAX_TEXT_CHARS = 32_768  # a longer text is not kept


class ScanCache(Generic[V]):
    """(scope, text, whether it is read as one word) → a value, least recently used dropped first. Thread-safe.

    `scope` keeps callers apart: a hit is faster than a scan, so a cache shared by everyone would let one caller
    time whether another recently sent a text; each caller (its virtual key) reaches only its own entries."""

    def __init__(
        self, max_entries: int = MAX_ENTRIES, max_chars: int = MAX_CHARS, max_text_chars: int = MAX_TEXT_CHARS
    ) -> None:
        self.max_entries = max_entries
        self.max_chars = max_chars
        self.max_text_chars = min(max_text_chars, max_chars)
        self._entries: OrderedDict[tuple[str, str, bool], V] = OrderedDict()
        self._chars = 0
        # a Policy is shared and documented thread-safe: OrderedDict's reordering is not atomic
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def chars(self) -> int:
        return self._chars

    def get(self, text: str, token: bool, scope: str = "") -> V | None:
        if len(text) > self.max_text_chars:
            return None
        key = (scope, text, token)
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, text: str, token: bool, value: V, scope: str = "") -> None:
        if len(text) > self.max_text_chars or self.max_entries <= 0:
            return
        key = (scope, text, token)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self._entries[key] = value
                return
            self._entries[key] = value
            self._chars += len(text)
            while len(self._entries) > self.max_entries or self._chars > self.max_chars:
                (_, old, _), _ = self._entries.popitem(last=False)
                self._chars -= len(old)
