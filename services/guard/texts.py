"""Where the scannable text of a request lives, and how to put redacted text back (pure)."""

from __future__ import annotations

from dataclasses import dataclass

JsonObj = dict[str, object]


@dataclass(frozen=True, slots=True)
class TextSlot:
    """One string inside a request body: its path for reports, and how to reach it."""

    location: str
    container: JsonObj | list[object]
    key: str | int


def _get(slot: TextSlot) -> str:
    value = slot.container[slot.key]  # type: ignore[index]
    return value if isinstance(value, str) else ""


def text_slots(body: JsonObj, api: str) -> list[TextSlot]:
    """Every user-controlled string the guard scans: message contents (and text parts), tool results,
    tool-call arguments of earlier turns, and embeddings inputs."""
    slots: list[TextSlot] = []
    if api == "embeddings":
        raw = body.get("input")
        if isinstance(raw, str):
            slots.append(TextSlot("input", body, "input"))
        elif isinstance(raw, list):
            slots.extend(TextSlot(f"input[{i}]", raw, i) for i, v in enumerate(raw) if isinstance(v, str))
        return slots
    messages = body.get("messages")
    if not isinstance(messages, list):
        return slots
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            slots.append(TextSlot(f"messages[{i}].content", message, "content"))
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    slots.append(TextSlot(f"messages[{i}].content[{j}].text", part, "text"))
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            for j, call in enumerate(calls):
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    slots.append(TextSlot(f"messages[{i}].tool_calls[{j}].function.arguments", fn, "arguments"))
    return slots


def read(slots: list[TextSlot]) -> list[str]:
    return [_get(s) for s in slots]


def write(slots: list[TextSlot], texts: tuple[str, ...] | list[str]) -> None:
    """Put (redacted) texts back into the body the slots point into."""
    for slot, text in zip(slots, texts, strict=True):
        slot.container[slot.key] = text  # type: ignore[index]
