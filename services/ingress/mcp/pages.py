"""Cursor pagination of the gateway's own MCP lists (`tools/list`, `resources/list`, `resources/templates/list`,
`prompts/list`): a page of what the key may see, and an opaque `nextCursor` naming where the next page starts.

A cursor carries the list kind, the position in the catalog's whole list just past the page's last item, and a
short hash of that item's name (URI for resources): the next page starts right there while the list is unchanged,
right after that item when items came or went before it, and a cursor whose item is gone is refused (the client
lists again from the start, as it does on a list-changed notice). Positions count the whole list, not what the key
sees, so a page costs the items it scans, never the whole list again. The hash is of an item the key was shown,
and a cursor is followed only from an item the key may see: cursors tell nothing of the others, and a forged one
cannot ask whether they exist.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Sequence
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


def _start(items: Sequence[dict[str, Any]], allowed: Callable[[str], bool], field: str, cursor: str, kind: str) -> int:
    """Where the page after `cursor` starts in `items`. Its item must be one the key may see: a cursor forged on the
    name of one it may not is refused as one naming no item is (no oracle of what the key cannot see)."""
    position, anchor = _decode(cursor, kind)

    def placed(item: dict[str, Any]) -> bool:
        identity = str(item.get(field, ""))
        return _anchor(identity) == anchor and allowed(identity)

    if position <= len(items) and placed(items[position - 1]):
        return position
    # the list changed before the cursor's item: go on right after it, wherever it is now
    for i, item in enumerate(items):
        if placed(item):
            return i + 1
    raise BadCursor("Invalid cursor: the list changed since it was given; list again without a cursor.")


def page(
    items: Sequence[dict[str, Any]],
    allowed: Callable[[str], bool],
    field: str,
    kind: str,
    cursor: str | None,
    size: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """Up to `size` items the key may see (`allowed` on their `field`) from where `cursor` points (the start when
    None), and the cursor of the next page (None when no item the key may see is left)."""
    i = _start(items, allowed, field, cursor, kind) if cursor is not None else 0
    out: list[dict[str, Any]] = []
    last_position = 0
    while i < len(items):
        item = items[i]
        if allowed(str(item.get(field, ""))):
            if len(out) == size:  # one more is left: the page ends with the last one taken
                last = out[-1]
                return out, encode_cursor(kind, last_position, str(last.get(field, "")))
            out.append(item)
            last_position = i + 1
        i += 1
    return out, None
