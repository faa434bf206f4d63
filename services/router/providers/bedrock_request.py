"""OpenAI chat request → Bedrock Converse request body (`POST /model/{modelId}/converse[-stream]`); pure.

System/developer messages → `system` blocks; user parts → `text`, `image` (base64 bytes: png, jpeg, gif,
webp) and `document` (PDF) blocks; assistant `tool_calls` → `toolUse` blocks; `tool` messages →
`toolResult` blocks leading a user turn; consecutive turns of one role merged (Converse wants them
alternating). `max_tokens`, `temperature`, `top_p`, `stop` → `inferenceConfig`; function tools →
`toolConfig.tools[].toolSpec` with `inputSchema.json`; `tool_choice` auto / required / a named function →
`auto` / `any` / `tool` (Converse has no "none": the tools are left out unless the conversation used them).
A model family's own knobs (e.g. `top_k`) travel in `additionalModelRequestFields` (client or deployment).
"""

from __future__ import annotations

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
from shared.errors import InvalidRequestError
from shared.schemas.openai import ChatCompletionRequest, ContentPart, Message

IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif", "image/webp": "webp"}


def _media(url: str, where: str) -> JsonObj:
    inline = data_url(url)
    if inline is None:
        raise InvalidRequestError(f"{where}: Bedrock takes inline (base64 data URL) media only.", param=where)
    mime, data = inline
    if mime == "application/pdf":
        return {
            "document": {"format": "pdf", "name": where.replace("[", "-").replace("]", ""), "source": {"bytes": data}}
        }
    fmt = IMAGE_FORMATS.get(mime)
    if fmt is None:
        raise InvalidRequestError(f"{where}: media type {mime!r} is not supported by Bedrock.", param=where)
    return {"image": {"format": fmt, "source": {"bytes": data}}}


def _blocks(content: str | list[ContentPart] | None, i: int, role: str) -> list[JsonObj]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    blocks: list[JsonObj] = []
    for j, part in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        if part.type == "text" or (part.type == "refusal" and role == "assistant"):
            text = part.text if part.type == "text" else part.refusal
            if text:
                blocks.append({"text": text})
        elif part.type == "image_url" and part.image_url is not None and role == "user":
            blocks.append(_media(part.image_url.url, where))
        elif part.type == "file" and part.file is not None and part.file.file_data and role == "user":
            blocks.append(_media(part.file.file_data, where))
        else:
            raise InvalidRequestError(
                f"{where}: content part {part.type!r} is not supported by Bedrock in a {role} message.", param=where
            )
    return blocks


def _turn(message: Message, i: int) -> tuple[str, list[JsonObj]]:
    if message.role == "tool":
        result = {"toolUseId": message.tool_call_id or "", "content": [{"text": text_of(message.content)}]}
        return "user", [{"toolResult": {**result, "status": "success"}}]
    if message.role == "assistant":
        blocks = _blocks(message.content, i, "assistant")
        for j, call in enumerate(message.tool_calls or []):
            where = f"messages[{i}].tool_calls[{j}]"
            fn = function_of(call, where)
            tool_use = {"toolUseId": call.id, "name": fn.name, "input": json_arguments(fn.arguments, where)}
            blocks.append({"toolUse": tool_use})
        return "assistant", blocks
    return "user", _blocks(message.content, i, "user")


def _conversation(req: ChatCompletionRequest) -> tuple[list[JsonObj], list[tuple[str, list[JsonObj]]]]:
    """(system blocks, alternating turns): tool results lead the user turn they are merged into."""
    system: list[JsonObj] = []
    turns: list[tuple[str, list[JsonObj]]] = []
    for i, message in enumerate(messages_of(req)):
        if message.role in ("system", "developer"):
            text = text_of(message.content)
            if text:
                system.append({"text": text})
            continue
        role, blocks = _turn(message, i)
        if not blocks:
            continue
        if turns and turns[-1][0] == role:
            previous = turns[-1][1]
            results = [b for b in blocks if "toolResult" in b]
            previous[:] = results + previous + [b for b in blocks if "toolResult" not in b]
        else:
            turns.append((role, blocks))
    return system, turns


def _tool_config(req: ChatCompletionRequest, history: bool) -> JsonObj | None:
    tools = tools_of(req)
    mode, names = tool_choice_of(req)
    # Converse has no "none": the tools are left out, unless the conversation already used them (then required)
    if not tools or (mode == "none" and not history):
        return None
    offered = [t for t in tools if not names or t.name in names] if mode == "required" else tools
    specs: list[JsonObj] = []
    for fn in offered:
        schema = fn.parameters or {"type": "object", "properties": {}}
        spec: JsonObj = {"name": fn.name, "inputSchema": {"json": schema}}
        if fn.description:
            spec["description"] = fn.description
        specs.append({"toolSpec": spec})
    config: JsonObj = {"tools": specs}
    if mode == "required":
        config["toolChoice"] = {"tool": {"name": names[0]}} if len(names) == 1 else {"any": {}}
    elif mode == "auto":
        config["toolChoice"] = {"auto": {}}
    return config


def build_request(req: ChatCompletionRequest) -> JsonObj:
    if req.response_format is not None and req.response_format.type not in (None, "text"):
        raise InvalidRequestError("Bedrock Converse has no JSON output mode here.", param="response_format")
    system, turns = _conversation(req)
    body: JsonObj = {"messages": [{"role": role, "content": blocks} for role, blocks in turns]}
    if system:
        body["system"] = system
    config: JsonObj = {}
    if (limit := max_tokens_of(req)) is not None:
        config["maxTokens"] = limit
    if req.temperature is not None:
        config["temperature"] = req.temperature
    if req.top_p is not None:
        config["topP"] = req.top_p
    if stops := stop_list(req):
        config["stopSequences"] = stops
    if config:
        body["inferenceConfig"] = config
    history = any("toolUse" in b or "toolResult" in b for _, blocks in turns for b in blocks)
    tool_config = _tool_config(req, history)
    if tool_config is not None:
        body["toolConfig"] = tool_config
    extra = req.extra.get("additionalModelRequestFields")
    if isinstance(extra, dict):
        body["additionalModelRequestFields"] = extra
    return body
