"""OpenAI chat body → Gemini `GenerateContentRequest` (the request half of the Gemini translator).

System messages → `systemInstruction`; user/assistant → `contents` with roles user/model (consecutive
turns of one role merged); images and files → `inlineData` (data URLs) or `fileData`; assistant
`tool_calls` → `functionCall` parts with their thought signatures; `tool` messages → `functionResponse`
parts named after the call they answer; tools → `functionDeclarations`; `tool_choice` →
`toolConfig.functionCallingConfig`; sampling, JSON mode and structured outputs → `generationConfig`;
`reasoning_effort` → `thinkingConfig`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import msgspec

from services.router.providers.base import JsonObj
from services.router.providers.chat_shapes import (
    data_url,
    function_of,
    json_arguments,
    max_tokens_of,
    messages_of,
    stop_list,
    text_of,
    tool_choice_of,
    tools_of,
)
from services.router.providers.gemini_schema import Unrepresentable, has_properties, plain_json_schema, to_gemini
from shared.errors import InvalidRequestError
from shared.schemas.openai import ChatCompletionRequest, ContentPart, FunctionDef, Message, ResponseFormat, ToolCall

# Google's documented placeholder for a function call whose signature was not kept
PLACEHOLDER_SIGNATURE = "skip_thought_signature_validator"
_MIME_BY_EXT = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "heic": "image/heic",
    "heif": "image/heif",
    "pdf": "application/pdf",
    "mp3": "audio/mp3",
    "wav": "audio/wav",
    "mp4": "video/mp4",
}
_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576}
_LEVELS = {"none": "minimal", "minimal": "minimal", "low": "low", "medium": "medium", "high": "high"}
_VERSION = re.compile(r"gemini-(\d+)")


def _media_part(url: str, where: str) -> JsonObj:
    inline = data_url(url)
    if inline is not None:
        return {"inlineData": {"mimeType": inline[0], "data": inline[1]}}
    if not url.startswith(("https://", "http://", "gs://")):
        raise InvalidRequestError(f"{where}: unsupported media URL (give a data URL or an http(s) URL).", param=where)
    ext = url.split("?", 1)[0].rsplit(".", 1)[-1].lower()
    file_data: JsonObj = {"fileUri": url}
    if ext in _MIME_BY_EXT:
        file_data["mimeType"] = _MIME_BY_EXT[ext]
    return {"fileData": file_data}


def _user_parts(content: str | list[ContentPart] | None, i: int) -> list[JsonObj]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[JsonObj] = []
    for j, part in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        if part.type == "text":
            if part.text:
                parts.append({"text": part.text})
        elif part.type == "image_url" and part.image_url is not None:
            parts.append(_media_part(part.image_url.url, where))
        elif part.type == "input_audio" and part.input_audio is not None:
            mime = f"audio/{part.input_audio.format or 'wav'}"
            parts.append({"inlineData": {"mimeType": mime, "data": part.input_audio.data}})
        elif part.type == "file" and part.file is not None and (part.file.file_data or part.file.file_id):
            parts.append(_media_part(part.file.file_data or part.file.file_id or "", where))
        else:
            raise InvalidRequestError(f"{where}: content part {part.type!r} is not supported by Gemini.", param=where)
    return parts


def _signature(call: ToolCall) -> str | None:
    google = (call.extra_content or {}).get("google")
    sig = google.get("thought_signature") if isinstance(google, dict) else None
    return sig if isinstance(sig, str) and sig else None


def _model_parts(message: Message, names: dict[str, str], i: int) -> list[JsonObj]:
    text = text_of(message.content)
    parts: list[JsonObj] = [{"text": text}] if text else []
    for j, call in enumerate(message.tool_calls or []):
        where = f"messages[{i}].tool_calls[{j}]"
        fn = function_of(call, where)
        names[call.id] = fn.name
        part: JsonObj = {
            "functionCall": {"name": fn.name, "args": json_arguments(fn.arguments, f"{where}.function.arguments")}
        }
        sig = _signature(call)
        if sig is not None:
            part["thoughtSignature"] = sig
        elif j == 0:
            part["thoughtSignature"] = PLACEHOLDER_SIGNATURE
        parts.append(part)
    return parts


def _function_response(message: Message, names: Mapping[str, str], i: int) -> JsonObj:
    name = names.get(message.tool_call_id or "") or message.name
    if not name:
        raise InvalidRequestError(
            f"messages[{i}]: tool message answers no earlier assistant tool call (tool_call_id "
            f"{message.tool_call_id!r}); Gemini needs the function's name.",
            param=f"messages[{i}].tool_call_id",
        )
    text = text_of(message.content)
    try:
        value: object = msgspec.json.decode(text) if text else ""
    except msgspec.DecodeError:
        value = text
    # Gemini's documented convention: the function's result under "output" unless it is an object
    response = value if isinstance(value, dict) else {"output": value}
    return {"functionResponse": {"name": name, "response": response}}


def _contents(messages: list[Message]) -> tuple[list[JsonObj], list[JsonObj]]:
    system: list[JsonObj] = []
    contents: list[JsonObj] = []
    names: dict[str, str] = {}
    for i, message in enumerate(messages):
        if message.role in {"system", "developer"}:
            text = text_of(message.content)
            if text:
                system.append({"text": text})
            continue
        if message.role == "user":
            role, parts = "user", _user_parts(message.content, i)
        elif message.role == "assistant":
            role, parts = "model", _model_parts(message, names, i)
        elif message.role == "tool":
            role, parts = "user", [_function_response(message, names, i)]
        else:
            raise InvalidRequestError(f"Unsupported role {message.role!r}.", param=f"messages[{i}].role")
        if not parts:
            continue
        last = contents[-1] if contents else None
        if last is not None and last["role"] == role and isinstance(last["parts"], list):
            last["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return system, contents


def _declaration(fn: FunctionDef, i: int) -> JsonObj:
    decl: JsonObj = {"name": fn.name}
    if fn.description:
        decl["description"] = fn.description
    if fn.parameters is not None and has_properties(fn.parameters):
        try:
            decl["parameters"] = to_gemini(fn.parameters, where=f"tools[{i}].function.parameters")
        except Unrepresentable:
            decl["parametersJsonSchema"] = plain_json_schema(fn.parameters)
    return decl


def _tool_config(mode: str, names: list[str]) -> JsonObj:
    if mode == "none":
        return {"functionCallingConfig": {"mode": "NONE"}}
    config: JsonObj = {"mode": "ANY"}
    if names:
        config["allowedFunctionNames"] = names
    return {"functionCallingConfig": config}


def _response_format(fmt: ResponseFormat | None, gen: JsonObj) -> None:
    if fmt is None or fmt.type == "text":
        return
    gen["responseMimeType"] = "application/json"
    if fmt.type == "json_schema":
        schema = fmt.json_schema.schema if fmt.json_schema is not None else None
        if schema is None:
            raise InvalidRequestError("response_format.json_schema.schema is required.", param="response_format")
        try:
            gen["responseSchema"] = to_gemini(schema, where="response_format.json_schema.schema")
        except Unrepresentable:
            gen["responseJsonSchema"] = plain_json_schema(schema)
    elif fmt.type != "json_object":
        raise InvalidRequestError(f"Unsupported response_format type {fmt.type!r}.", param="response_format")


def _thinking(effort: str | None, model: str) -> JsonObj | None:
    if effort is None or effort not in _BUDGETS:
        return None
    version = _VERSION.search(model)
    if version is not None and int(version.group(1)) >= 3:
        return {"thinkingLevel": _LEVELS[effort]}
    return {"thinkingBudget": _BUDGETS[effort]}


def _generation_config(req: ChatCompletionRequest, model: str) -> JsonObj:
    gen: JsonObj = {}
    for dst, value in (
        ("temperature", req.temperature),
        ("topP", req.top_p),
        ("topK", req.extra.get("top_k")),
        ("presencePenalty", req.presence_penalty),
        ("frequencyPenalty", req.frequency_penalty),
        ("seed", req.seed),
    ):
        if value is not None:
            gen[dst] = value
    max_tokens = max_tokens_of(req)
    if max_tokens is not None:
        gen["maxOutputTokens"] = max_tokens
    stop = stop_list(req)
    if stop:
        gen["stopSequences"] = stop
    if req.n is not None and req.n > 1:
        gen["candidateCount"] = req.n
    _response_format(req.response_format, gen)
    thinking = _thinking(req.reasoning_effort, model)
    if thinking is not None:
        gen["thinkingConfig"] = thinking
    return gen


def build_request(req: ChatCompletionRequest, model: str) -> JsonObj:
    """The `GenerateContentRequest` body for an OpenAI chat request (deployment params already merged)."""
    system, contents = _contents(messages_of(req))
    body: JsonObj = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    tools = tools_of(req)
    mode, names = tool_choice_of(req)
    if tools:
        if mode == "auto" and names:  # "allowed_tools" in auto mode: offer only those functions
            tools = [t for t in tools if t.name in names]
        body["tools"] = [{"functionDeclarations": [_declaration(t, i) for i, t in enumerate(tools)]}]
        if mode != "auto":
            body["toolConfig"] = _tool_config(mode, names)
    gen = _generation_config(req, model)
    if gen:
        body["generationConfig"] = gen
    # Gemini's own knobs, under the OpenAI-style or Gemini's name (extra_body or deployment params)
    for src, dst in (("safety_settings", "safetySettings"), ("cached_content", "cachedContent")):
        value = req.extra.get(src, req.extra.get(dst))
        if value is not None:
            body[dst] = value
    return body
