"""Client metadata tags: `x-gatehouse-tag-<name>: <value>` request headers, bounded, for the records."""

from __future__ import annotations

from collections.abc import Mapping

MAX_TAGS = 16


def client_tags(headers: Mapping[str, str]) -> dict[str, str]:
    """At most 16 tags, names cut to 64 characters and values to 256."""
    tags: dict[str, str] = {}
    for name, value in headers.items():
        if name.startswith("x-gatehouse-tag-") and len(tags) < MAX_TAGS:
            tags[name[16:][:64]] = value[:256]
    return tags
