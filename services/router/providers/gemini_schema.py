"""JSON Schema → the OpenAPI 3.0 subset Gemini accepts in `functionDeclarations.parameters` and `responseSchema`.

Gemini's `Schema` message rejects any key it does not know ("Unknown name ... Cannot find field"), so the
conversion keeps only its fields, inlines local `$ref`s, folds `["T", "null"]` types into `nullable`, turns
`const` and `oneOf` into `enum` and `anyOf`, and drops the rest (`additionalProperties`, `$schema`, ...).
A free-form object (no `properties`) has no form in that subset — Gemini rejects an OBJECT without
properties — so it raises `Unrepresentable` and the caller sends the JSON Schema as it is instead
(`parametersJsonSchema` / `responseJsonSchema`).
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.errors import InvalidRequestError

_TYPES = {"string", "number", "integer", "boolean", "array", "object", "null"}
_COPY = (
    "title",
    "description",
    "nullable",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
    "minimum",
    "maximum",
    "pattern",
    "example",
    "default",
    "propertyOrdering",
)
# the only formats Gemini documents per type; others are rejected or meaningless to it
_FORMATS = {"STRING": {"enum", "date-time"}, "NUMBER": {"float", "double"}, "INTEGER": {"int32", "int64"}}
_MAX_DEPTH = 32
_JSON_SCHEMA_ONLY = ("$schema", "$id", "$comment")


class Unrepresentable(Exception):
    """The schema needs JSON Schema features the OpenAPI subset lacks (a free-form object)."""


def to_gemini(schema: Mapping[str, object], *, where: str) -> dict[str, object]:
    """The Gemini `Schema` for a JSON Schema object; `where` names it in errors."""
    defs: dict[str, object] = {}
    for key in ("$defs", "definitions"):
        found = schema.get(key)
        if isinstance(found, dict):
            defs.update({f"#/{key}/{name}": value for name, value in found.items()})
    return _convert(schema, defs, where, 0)


def _convert(schema: Mapping[str, object], defs: Mapping[str, object], where: str, depth: int) -> dict[str, object]:
    if depth > _MAX_DEPTH:
        raise InvalidRequestError(f"{where}: schema nests too deeply (recursive $ref?).", param=where)
    if isinstance(schema.get("$ref"), str):
        merged = {**_resolve(schema, defs, where, depth), **{k: v for k, v in schema.items() if k != "$ref"}}
        return _convert(merged, defs, where, depth + 1)
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and all_of:
        return _convert(_merge_all_of(schema, all_of, defs, where, depth), defs, where, depth + 1)
    out: dict[str, object] = {}
    _type_into(schema, out, defs, where, depth)
    for key in _COPY:
        if key in schema:
            out[key] = schema[key]
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _FORMATS.get(str(out.get("type", "")), set()):
        out["format"] = fmt
    _enum_into(schema, out)
    _children_into(schema, out, defs, where, depth)
    return out


def _merge_all_of(
    schema: Mapping[str, object], all_of: list[object], defs: Mapping[str, object], where: str, depth: int
) -> dict[str, object]:
    merged: dict[str, object] = {k: v for k, v in schema.items() if k != "allOf"}
    for sub in all_of:
        if not isinstance(sub, dict):
            continue
        for key, value in _resolve(sub, defs, where, depth).items():
            if key == "properties" and isinstance(value, dict):
                props = merged.get("properties")
                merged["properties"] = {**(props if isinstance(props, dict) else {}), **value}
            elif key == "required" and isinstance(value, list):
                req = merged.get("required")
                merged["required"] = [*(req if isinstance(req, list) else []), *value]
            else:
                merged.setdefault(key, value)
    return merged


def _type_into(
    schema: Mapping[str, object], out: dict[str, object], defs: Mapping[str, object], where: str, depth: int
) -> None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if isinstance(k, str)]
        if "null" in kinds:
            out["nullable"] = True
        kinds = [k for k in kinds if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
        if len(kinds) > 1:
            # ["string", "number"] has no single Gemini type: express it as anyOf
            out["anyOf"] = [_convert({**_only_type(schema), "type": k}, defs, where, depth + 1) for k in kinds]
    if not isinstance(kind, str):
        return
    if kind not in _TYPES:
        raise InvalidRequestError(f"{where}: unsupported schema type {kind!r}.", param=where)
    if kind == "null":
        out["nullable"] = True
    else:
        out["type"] = kind.upper()


def _enum_into(schema: Mapping[str, object], out: dict[str, object]) -> None:
    if "const" in schema:
        out["enum"] = [_enum_value(schema["const"])]
    enum = schema.get("enum")
    if isinstance(enum, list):
        if None in enum:
            out["nullable"] = True
        out["enum"] = [_enum_value(v) for v in enum if v is not None]
    if "enum" in out:
        out.setdefault("type", "STRING")
        if out["type"] == "STRING":
            out["format"] = "enum"


def _children_into(
    schema: Mapping[str, object], out: dict[str, object], defs: Mapping[str, object], where: str, depth: int
) -> None:
    props = schema.get("properties")
    if out.get("type") == "OBJECT" and not (isinstance(props, dict) and props):
        raise Unrepresentable(where)
    if isinstance(props, dict):
        out["properties"] = {
            name: _convert(_as_schema(sub), defs, f"{where}.properties.{name}", depth + 1)
            for name, sub in props.items()
        }
        required = schema.get("required")
        if isinstance(required, list):
            out["required"] = [r for r in required if isinstance(r, str) and r in props]
    items = schema.get("items")
    if isinstance(items, list):  # tuple validation: Gemini has one item schema
        items = items[0] if items else {}
    if isinstance(items, dict):
        out["items"] = _convert(items, defs, f"{where}.items", depth + 1)
    for key in ("anyOf", "oneOf"):
        alts = schema.get(key)
        if not isinstance(alts, list):
            continue
        converted = []
        for i, alt in enumerate(alts):
            if isinstance(alt, dict) and alt.get("type") == "null":
                out["nullable"] = True
            elif isinstance(alt, dict):
                converted.append(_convert(alt, defs, f"{where}.{key}[{i}]", depth + 1))
        if len(converted) == 1 and "type" not in out:
            # `anyOf: [X, null]` is how JSON Schema spells an optional X
            out.update({k: v for k, v in converted[0].items() if k not in out or k == "nullable"})
        elif converted:
            out["anyOf"] = [*_list(out.get("anyOf")), *converted]


def _resolve(schema: Mapping[str, object], defs: Mapping[str, object], where: str, depth: int) -> dict[str, object]:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = defs.get(ref)
        if not isinstance(target, dict):
            raise InvalidRequestError(f"{where}: cannot resolve $ref {ref!r}.", param=where)
        if depth > _MAX_DEPTH:
            raise InvalidRequestError(f"{where}: schema nests too deeply (recursive $ref?).", param=where)
        return _resolve(target, defs, where, depth + 1)
    return dict(schema)


def _only_type(schema: Mapping[str, object]) -> dict[str, object]:
    return {k: v for k, v in schema.items() if k in {"items", "properties", "required", "enum", "format"}}


def _as_schema(value: object) -> Mapping[str, object]:
    # `true` / `{}` mean "anything"; Gemini needs some type, and a string is the least surprising
    return value if isinstance(value, dict) and value else {"type": "string"}


def _enum_value(value: object) -> str:
    return value if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def plain_json_schema(schema: Mapping[str, object]) -> dict[str, object]:
    """The schema for `parametersJsonSchema` / `responseJsonSchema` (meta keywords removed)."""
    return {k: v for k, v in schema.items() if k not in _JSON_SCHEMA_ONLY}


def has_properties(schema: Mapping[str, object] | None) -> bool:
    """Whether a function's parameters declare any property (Gemini rejects an OBJECT with none)."""
    if not schema:
        return False
    props = schema.get("properties")
    return isinstance(props, dict) and bool(props)
