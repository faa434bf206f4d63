"""Cursor pagination of the gateway's own MCP lists (`tools/list`, `resources/list`, `resources/templates/list`,
`prompts/list`): a page of what the key may see, and an opaque `nextCursor` naming where the next page starts.

A cursor carries the list kind, the position in the catalog's whole list just past the page's last item, and a
short hash of that item's name (URI for resources): the next page starts right there while the list is unchanged,
right after that item when items came or went before it, and a cursor whose item is gone is refused (the client
lists again from the start, as it does on a list-changed notice). Positions count the whole list, not what the key
sees; what a key sees of a list version is worked out once per set of tool globs, so a page costs the page, never
the whole list again. The hash is of an item the key was shown, and a cursor is followed only from an item the key
may see: cursors tell nothing of the others, and a forged one cannot ask whether they exist. A cursor is found
through an index of the list's anchors, so a forged one costs no more than a real one (it once cost a scan of the
whole list: ~250 ms of the event loop for 40,000 tools, measured here under load).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import msgspec

_CURSOR = msgspec.json.Decoder(tuple[str, int, str])
_JSON = msgspec.json.Encoder()
MAX_CURSOR = 512  # far longer than any cursor given out: a longer one is not ours


class BadCursor(Exception):
    """The cursor is not one this list gave out, or its place in the list is gone."""


def _anchor(identity: str) -> str:
    return hashlib.blake2b(identity.encode(), digest_size=8).hexdigest()


def encode_cursor(kind: str, position: int, identity: str) -> str:
    return base64.urlsafe_b64encode(_JSON.encode((kind, position, _anchor(identity)))).decode().rstrip("=")


def _decode(cursor: str, kind: str) -> tuple[int, str]:
    if len(cursor) > MAX_CURSOR:
        raise BadCursor("Invalid cursor.")
    try:
        cursor_kind, position, anchor = _CURSOR.decode(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise BadCursor("Invalid cursor.") from None
    if cursor_kind != kind or position < 1:
        raise BadCursor("Invalid cursor: it was not given out by this list.")
    return position, anchor


# views (the positions of what one set of tool globs lets a key see) kept per list version; a key whose globs
# have no view yet builds one, once, by checking every item
MAX_VIEWS = 64


class Listing:
    """One kind's whole list of one catalog version, with what makes any page cost the page, not the list: where
    each cursor anchor sits (so a cursor is found in O(1), whether or not it is one this list gave), and, per set of
    tool globs, the positions of the items a key with those globs may see."""

    def __init__(self, items: Sequence[dict[str, Any]], field: str, kind: str) -> None:
        self.items = items
        self.field = field
        self.kind = kind
        self._at: dict[str, int] = {}
        for i, item in enumerate(items):
            self._at.setdefault(_anchor(self._identity(item)), i)
        self._views: OrderedDict[Hashable, Sequence[int]] = OrderedDict()

    def _identity(self, item: dict[str, Any]) -> str:
        return str(item.get(self.field, ""))

    def view(self, globs: Hashable, allowed: Callable[[str], bool]) -> Sequence[int]:
        """The positions (ascending) of the items `allowed` lets through; `globs` names `allowed` (the same globs,
        the same answer), None for a key that may see every item."""
        if globs is None:
            return range(len(self.items))
        seen = self._views.get(globs)
        if seen is None:
            seen = array("q", (i for i, item in enumerate(self.items) if allowed(self._identity(item))))
            self._views[globs] = seen
            if len(self._views) > MAX_VIEWS:
                self._views.popitem(last=False)
        else:
            self._views.move_to_end(globs)
        return seen

    def _start(self, allowed: Callable[[str], bool], cursor: str) -> int:
        """Where the page after `cursor` starts. Its item must be one the key may see: a cursor forged on the name
        of one it may not is refused as one naming no item is (no oracle of what the key cannot see)."""
        position, anchor = _decode(cursor, self.kind)
        if position <= len(self.items):
            identity = self._identity(self.items[position - 1])
            if _anchor(identity) == anchor and allowed(identity):
                return position
        # the list changed before the cursor's item: go on right after it, wherever it is now
        i = self._at.get(anchor)
        if i is not None and allowed(self._identity(self.items[i])):
            return i + 1
        raise BadCursor("Invalid cursor: the list changed since it was given; list again without a cursor.")

    def page(
        self, globs: Hashable, allowed: Callable[[str], bool], cursor: str | None, size: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to `size` items the key may see (`allowed` on their field; `globs` names it, as for `view`) from where
        `cursor` points (the start when None), and the cursor of the next page (None when no item the key may see
        is left)."""
        start = self._start(allowed, cursor) if cursor is not None else 0
        seen = self.view(globs, allowed)
        first = bisect.bisect_left(seen, start)
        taken = seen[first : first + size]
        out = [self.items[i] for i in taken]
        if first + size >= len(seen):
            return out, None
        last = taken[-1]  # a page with one more left is full: `size` is at least one
        return out, encode_cursor(self.kind, last + 1, self._identity(self.items[last]))


def page(
    items: Sequence[dict[str, Any]],
    allowed: Callable[[str], bool],
    field: str,
    kind: str,
    cursor: str | None,
    size: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of `items` (as Listing.page) without a listing kept: every call checks every item."""
    return Listing(items, field, kind).page(object(), allowed, cursor, size)
