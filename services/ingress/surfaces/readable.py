"""The text a model reads inside a JSON value the canonical chat form cannot express (a server tool's result,
an MCP block, a stored-prompt's variables…), so that the guard's scan of `chat` still covers it."""

from __future__ import annotations

from dataclasses import dataclass, field

# keys whose string values are identifiers, signatures, encodings or opaque data, not words a model reads
_OPAQUE = frozenset(
    {
        "type", "id", "tool_use_id", "call_id", "signature", "encrypted_content", "encrypted_index",
        "media_type", "file_id", "status", "role", "detail", "format", "cache_control", "container_id",
    }
)  # fmt: skip
MAX_DEPTH = 32


def readable_strings(value: object, depth: int = 0) -> list[str]:
    """Every non-empty string in `value` except opaque ones; base64 `data` is skipped, text `data` kept."""
    if depth > MAX_DEPTH:
        return []
    if isinstance(value, str):
        return [value] if value else []
    out: list[str] = []
    if isinstance(value, list):
        for item in value:
            out += readable_strings(item, depth + 1)
    elif isinstance(value, dict):
        textual = value.get("type") == "text" or str(value.get("media_type", "")).startswith("text/")
        for key, item in value.items():
            if key in _OPAQUE or (key == "data" and not textual):
                continue
            out += readable_strings(item, depth + 1)
    return out


def readable_text(value: object) -> str:
    return "\n".join(readable_strings(value))


@dataclass(slots=True)
class Untranslatable:
    """Where a request uses what the canonical form cannot express, as `path: what` entries."""

    found: list[str] = field(default_factory=list)
    first_path: list[str | int] = field(default_factory=list)
    first_what: str = ""

    def add(self, path: list[str | int], what: str) -> None:
        if not self.found:
            self.first_path, self.first_what = list(path), what
        dotted = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
        self.found.append(f"{dotted}: {what}")
