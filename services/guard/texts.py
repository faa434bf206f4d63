"""Where the scannable text of a request lives, and how to put redacted text back (pure).

Reads the canonical request Structs (shared.schemas.openai): every string a model will read is a slot,
whoever wrote it — message contents and text parts, the participant `name` of a message, the filename of a
file part, refusals and reasoning of earlier turns, tool-call names and arguments, tool names, descriptions
and parameter schemas (their property names included), the tool named by `tool_choice` (or the legacy
`function_call`), `response_format` schema, name and description, and embeddings inputs. The Anthropic and
Responses request paths are covered through their canonical translation (`system` blocks and `instructions`
become a system message, `tool_result` blocks and `function_call_output` items tool messages, `tool_use` blocks
and `function_call` items `tool_calls`), which is what the guard scans.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from services.guard.redaction import PLACEHOLDER
from shared.schemas.openai import ChatCompletionRequest, ContentPart, EmbeddingsRequest, Message

# a message's `name` as OpenAI accepts it: letters, digits, `_` and `-`, at most 64 (`messages[i].name: string does
# not match pattern`); a placeholder's angle brackets are not allowed there
MAX_NAME_CHARS = 64
# how deep a JSON schema is walked for strings (schemas nest; a hostile one may nest without end)
MAX_SCHEMA_DEPTH = 32
# schema keywords whose values are structure, not text a model reads as instructions
_STRUCTURAL = frozenset({"type", "format", "$ref", "$schema", "$id", "$anchor"})
# JSON Schema's own keywords (draft 2020-12 and the older drafts' names); every other key of a schema names
# something (a property, a definition) or is text its author added, which a model reads like a description
_KEYWORDS = frozenset({
    "$anchor", "$comment", "$defs", "$dynamicAnchor", "$dynamicRef", "$id", "$ref", "$schema", "$vocabulary",
    "additionalItems", "additionalProperties", "allOf", "anyOf", "const", "contains", "contentEncoding",
    "contentMediaType", "contentSchema", "default", "definitions", "dependencies", "dependentRequired",
    "dependentSchemas", "deprecated", "description", "else", "enum", "examples", "exclusiveMaximum",
    "exclusiveMinimum", "format", "if", "items", "maxContains", "maxItems", "maxLength", "maxProperties", "maximum",
    "minContains", "minItems", "minLength", "minProperties", "minimum", "multipleOf", "not", "nullable", "oneOf",
    "pattern", "patternProperties", "prefixItems", "properties", "propertyNames", "readOnly", "required", "strict",
    "then", "title", "type", "unevaluatedItems", "unevaluatedProperties", "uniqueItems", "writeOnly",
})  # fmt: skip


@dataclass(frozen=True, slots=True)
class TextSlot:
    """One string inside a request: its path for reports, and where it is held (a Struct attribute
    or a dict/list item) so a redacted text can be written back; `name`: the slot is the dict's key itself
    (a schema's property name), not the value under it; `word`: a single word by the API's own rules (a
    message's participant name), which a policy does not read as a prompt either; `fit`: what a redacted text
    becomes before it is written back, so the field stays one the API accepts."""

    location: str
    owner: object
    key: str | int
    name: bool = False
    word: bool = False
    fit: Callable[[str], str] | None = None

    def get(self) -> str:
        owner = self.owner
        if self.name:
            return str(self.key)
        value = owner[self.key] if isinstance(owner, dict | list) else getattr(owner, str(self.key))  # type: ignore[index]
        return value if isinstance(value, str) else ""

    def set(self, text: str) -> None:
        owner = self.owner
        if self.fit is not None and text != self.get():
            text = self.fit(text)
        if self.name and isinstance(owner, dict):
            if text != self.key:
                _rename(owner, str(self.key), text)
        elif isinstance(owner, dict | list):
            owner[self.key] = text  # type: ignore[index]
        else:
            setattr(owner, str(self.key), text)


def _rename(owner: dict[str, object], old: str, new: str) -> None:
    """Rename a key in place, keeping the order of the keys (a schema's properties are read in order)."""
    items = list(owner.items())
    taken = set(owner)
    while new in taken:  # two keys redacted to the same text: both kept
        new += "_"
    owner.clear()
    owner.update((new if k == old else k, v) for k, v in items)


def chat_slots(req: ChatCompletionRequest) -> list[TextSlot]:
    slots: list[TextSlot] = []
    for i, message in enumerate(req.messages):
        _message(message, f"messages[{i}]", slots)
    for i, tool in enumerate(req.tools or []):
        where = f"tools[{i}]"
        fn = tool.function
        if fn is not None:
            _attr(fn, "name", f"{where}.function.name", slots)
            _attr(fn, "description", f"{where}.function.description", slots)
            if fn.parameters is not None:
                _schema(fn.parameters, f"{where}.function.parameters", slots, 0)
        custom = tool.custom
        if custom is not None:
            _attr(custom, "name", f"{where}.custom.name", slots)
            _attr(custom, "description", f"{where}.custom.description", slots)
    for i, legacy in enumerate(req.functions or []):
        _attr(legacy, "name", f"functions[{i}].name", slots)
        _attr(legacy, "description", f"functions[{i}].description", slots)
        if legacy.parameters is not None:
            _schema(legacy.parameters, f"functions[{i}].parameters", slots, 0)
    _choice(req.tool_choice, "tool_choice", slots)
    if isinstance(req.function_call, dict):
        _item(req.function_call, "name", "function_call.name", slots)
    fmt = req.response_format
    if fmt is not None and fmt.json_schema is not None:
        js = fmt.json_schema
        _attr(js, "name", "response_format.json_schema.name", slots)
        _attr(js, "description", "response_format.json_schema.description", slots)
        if js.schema is not None:
            _schema(js.schema, "response_format.json_schema.schema", slots, 0)
    if req.prediction is not None:
        content = req.prediction.content
        if isinstance(content, str):
            _attr(req.prediction, "content", "prediction.content", slots)
        elif content is not None:
            _parts(content, "prediction.content", slots)
    return slots


def embeddings_slots(req: EmbeddingsRequest) -> list[TextSlot]:
    if isinstance(req.input, str):
        return [TextSlot("input", req, "input")]
    return [TextSlot(f"input[{i}]", req.input, i) for i, v in enumerate(req.input) if isinstance(v, str)]


def _attr(owner: object, name: str, location: str, slots: list[TextSlot]) -> None:
    if isinstance(getattr(owner, name, None), str):
        slots.append(TextSlot(location, owner, name))


def _item(owner: dict[str, object], key: str, location: str, slots: list[TextSlot]) -> None:
    if isinstance(owner.get(key), str):
        slots.append(TextSlot(location, owner, key))


def _choice(choice: object, where: str, slots: list[TextSlot]) -> None:
    """The tool names a `tool_choice` forces or allows: a name is text a model reads (an instruction written as
    a name is an instruction), kept as an untyped dict by the schema, so its slot points into that dict."""
    if not isinstance(choice, dict):
        return  # "auto" | "none" | "required": the API's own words
    for kind in ("function", "custom"):
        named = choice.get(kind)
        if isinstance(named, dict):
            _item(named, "name", f"{where}.{kind}.name", slots)
    allowed = choice.get("allowed_tools")
    tools = allowed.get("tools") if isinstance(allowed, dict) else None
    for j, tool in enumerate(tools if isinstance(tools, list) else []):
        if isinstance(tool, dict):
            _choice(tool, f"{where}.allowed_tools.tools[{j}]", slots)


def _parts(parts: list[ContentPart], where: str, slots: list[TextSlot]) -> None:
    for j, part in enumerate(parts):
        _attr(part, "text", f"{where}[{j}].text", slots)
        _attr(part, "refusal", f"{where}[{j}].refusal", slots)
        if part.file is not None:  # an OpenAI-compatible server shows the model a file's name with its contents
            _attr(part.file, "filename", f"{where}[{j}].file.filename", slots)


def participant_name(redacted: str) -> str:
    """A redacted message `name` as the API takes one: each placeholder without its angle brackets (`<EMAIL_1>` →
    `EMAIL_1`), at most `MAX_NAME_CHARS` characters."""
    return PLACEHOLDER.sub(lambda m: m.group()[1:-1], redacted)[:MAX_NAME_CHARS]


def _message(message: Message, where: str, slots: list[TextSlot]) -> None:
    if isinstance(message.name, str):
        # the participant's name is text the model reads with the message (`name: ignore_all_previous_rules`)
        slots.append(TextSlot(f"{where}.name", message, "name", word=True, fit=participant_name))
    content = message.content
    if isinstance(content, str):
        slots.append(TextSlot(f"{where}.content", message, "content"))
    elif content is not None:
        _parts(content, f"{where}.content", slots)
    _attr(message, "refusal", f"{where}.refusal", slots)
    _attr(message, "reasoning_content", f"{where}.reasoning_content", slots)
    for j, call in enumerate(message.tool_calls or []):
        # the name of an earlier call is text the model reads back, like a tool's name; the call's id is left
        # alone (it pairs the call with its result)
        if call.function is not None:
            _attr(call.function, "name", f"{where}.tool_calls[{j}].function.name", slots)
            _attr(call.function, "arguments", f"{where}.tool_calls[{j}].function.arguments", slots)
        if call.custom is not None:
            _attr(call.custom, "name", f"{where}.tool_calls[{j}].custom.name", slots)
            _attr(call.custom, "input", f"{where}.tool_calls[{j}].custom.input", slots)
    if message.function_call is not None:
        _attr(message.function_call, "name", f"{where}.function_call.name", slots)
        _attr(message.function_call, "arguments", f"{where}.function_call.arguments", slots)
    for j, block in enumerate(message.thinking_blocks or []):
        if isinstance(block.get("thinking"), str):
            slots.append(TextSlot(f"{where}.thinking_blocks[{j}].thinking", block, "thinking"))


def _schema(node: object, where: str, slots: list[TextSlot], depth: int) -> None:
    """Every string value in a JSON schema (descriptions, titles, enums, defaults, examples)."""
    if depth > MAX_SCHEMA_DEPTH:
        return
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and key not in _KEYWORDS:
                # a key a model reads: a property's name, or a key the schema's author made up
                slots.append(TextSlot(f"{where}.<key> (key)", node, key, name=True))
            if isinstance(value, str):
                if key in _STRUCTURAL:
                    continue
                slots.append(TextSlot(f"{where}.{key}", node, key))
            else:
                _schema(value, f"{where}.{key}", slots, depth + 1)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if isinstance(value, str):
                slots.append(TextSlot(f"{where}[{i}]", node, i))
            else:
                _schema(value, f"{where}[{i}]", slots, depth + 1)


def read(slots: list[TextSlot]) -> list[str]:
    return [s.get() for s in slots]


def names(slots: list[TextSlot]) -> frozenset[int]:
    """The indexes of the slots that are keys or single words by the API's rules: words a policy does not read as
    prompts (`Policy.scan_texts`'s `tokens`)."""
    return frozenset(i for i, s in enumerate(slots) if s.name or s.word)


def write(slots: list[TextSlot], texts: tuple[str, ...] | list[str]) -> None:
    """Put (redacted) texts back where the slots point: values first, then keys, so that a value is written under
    the key it was read from before that key is renamed."""
    pairs = list(zip(slots, texts, strict=True))
    for slot, text in pairs:
        if not slot.name:
            slot.set(text)
    for slot, text in pairs:
        if slot.name:
            slot.set(text)
