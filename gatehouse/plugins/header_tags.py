"""Tag requests from their headers: each configured header a request carries becomes a tag on its record
(the `tags` column of its `requests` row in ClickHouse).

    plugins:
      - name: header-tags
        path: gatehouse.plugins.header_tags:create
        hooks: [before_guard]
        headers: [x-team-name, x-cost-center]        # the headers the plugin may read
        options:
          names: {x-cost-center: cost_center}        # tag name per header (default: the header's name)
          max_chars: 128                             # longer values are cut (default 256)
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.plugins import MAX_TAG_CHARS, HookResult, RequestView


class HeaderTags:
    def __init__(self, names: Mapping[str, str], max_chars: int) -> None:
        self._names = {h.lower(): t for h, t in names.items()}
        self._max = max_chars

    async def before_guard(self, view: RequestView) -> HookResult | None:
        tags = {self._names.get(h, h): v[: self._max] for h, v in view.headers.items() if v}
        return HookResult(tags=tags) if tags else None


def create(options: Mapping[str, object]) -> HeaderTags:
    names = options.get("names", {})
    max_chars = options.get("max_chars", MAX_TAG_CHARS)
    if not isinstance(names, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in names.items()):
        raise ValueError("header_tags: `names` maps header names to tag names")
    if not isinstance(max_chars, int) or not 0 < max_chars <= MAX_TAG_CHARS:
        raise ValueError(f"header_tags: `max_chars` is a whole number from 1 to {MAX_TAG_CHARS}")
    return HeaderTags(names, max_chars)
