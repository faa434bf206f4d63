"""Client metadata tags: `x-gatehouse-tag-<name>: <value>` request headers, bounded, for the records."""

from __future__ import annotations

from collections.abc import Mapping

MAX_TAGS = 16
# the tag the records of a Responses `mcp` loop's turns and tool calls carry: the id the client was given
MCP_RESPONSE_TAG = "mcp_response"
# tags only gatehouse sets (a client's own would attach its rows to another response's or run's lookups)
RESERVED_TAGS = frozenset({MCP_RESPONSE_TAG, "run_id"})


def client_tags(headers: Mapping[str, str]) -> dict[str, str]:
    """At most 16 tags, names cut to 64 characters and values to 256; gatehouse's own names are not taken."""
    tags: dict[str, str] = {}
    for name, value in headers.items():
        if name.startswith("x-gatehouse-tag-") and len(tags) < MAX_TAGS:
            tag = name[16:][:64]
            if tag not in RESERVED_TAGS:
                tags[tag] = value[:256]
    return tags
