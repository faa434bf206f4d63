"""OpenAI chat request → Anthropic Messages request body (`POST /v1/messages`); pure.

Messages: system/developer messages → top-level `system` blocks (wherever they stood); user content
parts → text / image (base64 or url source) / document (PDF) blocks; assistant `tool_calls` →
`tool_use` blocks; `tool` messages → `tool_result` blocks in a user turn, placed before any text of that
turn (the API rejects text ahead of results); consecutive turns of one role merged. Legacy
`functions` / `function_call` / `function` messages are rewritten to their `tools` equivalents first.

`response_format` (json_object / json_schema) is served by a forced tool: a tool named
`RESPONSE_TOOL` whose `input_schema` is the requested schema, with `tool_choice` forcing it (or `any`
when the client offers tools of its own, so the model may still call those). The answer is the tool's
input, which the response side turns back into message content. This works on every Claude model with
tool use, unlike the newer native `output_config.format`, which only some models accept; a deployment
that wants the native form passes `output_config` itself.

Anthropic-only knobs travel untouched when the client (extra_body) or the deployment params carry them:
`top_k`, `thinking`, `output_config`, and `service_tier` when it is one of Anthropic's values. OpenAI's
`metadata` (stored-completion tags) is not Anthropic's and is not sent; `user` / `safety_identifier`
become `metadata.user_id`. Prompt caching: a `cache_control` object on an OpenAI content part or tool
is copied to the block or tool it becomes. Thinking blocks (with their signatures) that a previous
response returned as `message.thinking_blocks` are put back in front of that assistant turn, which the
API requires when thinking is on and tools are used.
"""

from __future__ import annotations

import re

import msgspec

from services.router.providers.base import JsonObj
from services.router.providers.chat_shapes import (
    data_url,
    function_of,
    json_arguments,
    max_tokens_of,
    messages_of,
    stop_list,
    tool_choice_of,
    tools_of,
)
from shared.errors import InvalidRequestError
from shared.schemas.openai import ChatCompletionRequest, ContentPart, FunctionDef, Message, Tool, ToolCall

RESPONSE_TOOL = "json_response"
DEFAULT_MAX_TOKENS = 4096
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_ID_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")
# Anthropic knobs a client (extra_body) or a deployment's params may carry
_PASSTHROUGH = ("top_k", "thinking", "output_config")


def _tool_id(call_id: str) -> str:
    """Anthropic tool ids must match ^[a-zA-Z0-9_-]+$; other providers' ids are made to fit, consistently."""
    return call_id if not _ID_UNSAFE.search(call_id) else _ID_UNSAFE.sub("_", call_id)


def _with_cache(block: JsonObj, part: ContentPart) -> JsonObj:
    if part.cache_control is not None:
        block["cache_control"] = part.cache_control
    return block


def _media(url: str, where: str) -> JsonObj:
    inline = data_url(url)
    if inline is not None:
        mime, data = inline
        if mime == "application/pdf":
            return {"type": "document", "source": {"type": "base64", "media_type": mime, "data": data}}
        if mime not in IMAGE_TYPES:
            raise InvalidRequestError(
                f"{where}: media type {mime!r} is not supported by Anthropic (jpeg, png, gif, webp, pdf).", param=where
            )
        return {"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}}
    if not url.startswith(("https://", "http://")):
        raise InvalidRequestError(f"{where}: unsupported media URL (give a data URL or an http(s) URL).", param=where)
    kind = "document" if url.split("?", 1)[0].lower().endswith(".pdf") else "image"
    return {"type": kind, "source": {"type": "url", "url": url}}


def _blocks(content: str | list[ContentPart] | None, i: int, role: str) -> list[JsonObj]:
    """Content parts → Anthropic blocks; empty text is dropped (the API refuses empty text blocks)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[JsonObj] = []
    for j, part in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        if part.type == "text" or (part.type == "refusal" and role == "assistant"):
            text = part.text if part.type == "text" else part.refusal
            if text:
                blocks.append(_with_cache({"type": "text", "text": text}, part))
        elif part.type == "image_url" and part.image_url is not None and role != "assistant":
            blocks.append(_with_cache(_media(part.image_url.url, where), part))
        elif part.type == "file" and part.file is not None and part.file.file_data and role != "assistant":
            blocks.append(_with_cache(_media(part.file.file_data, where), part))
        else:
            raise InvalidRequestError(
                f"{where}: content part {part.type!r} is not supported by Anthropic in a {role} message.", param=where
            )
    return blocks


def _assistant(message: Message, i: int) -> list[JsonObj]:
    # thinking blocks a previous answer returned go back first, as they came (with their signatures)
    blocks = [dict(b) for b in message.thinking_blocks or [] if b.get("type") in {"thinking", "redacted_thinking"}]
    blocks += _blocks(message.content, i, "assistant")
    for j, call in enumerate(message.tool_calls or []):
        where = f"messages[{i}].tool_calls[{j}]"
        fn = function_of(call, where)
        blocks.append(
            {
                "type": "tool_use",
                "id": _tool_id(call.id),
                "name": fn.name,
                "input": json_arguments(fn.arguments, f"{where}.function.arguments"),
            }
        )
    return blocks


def _tool_result(message: Message, i: int) -> JsonObj:
    if not message.tool_call_id:
        raise InvalidRequestError(f"messages[{i}]: a tool message needs 'tool_call_id'.", param=f"messages[{i}]")
    block: JsonObj = {"type": "tool_result", "tool_use_id": _tool_id(message.tool_call_id)}
    content = message.content
    if isinstance(content, str):
        if content:
            block["content"] = content
    elif content:
        inner = _blocks(content, i, "tool")
        if inner:
            block["content"] = inner
    return block


def _turns(messages: list[Message]) -> tuple[list[JsonObj], list[JsonObj]]:
    system: list[JsonObj] = []
    turns: list[JsonObj] = []
    for i, message in enumerate(messages):
        role: str = message.role
        if role in {"system", "developer"}:
            system += _blocks(message.content, i, "system")
            continue
        if role == "user":
            blocks, results = _blocks(message.content, i, "user"), False
        elif role == "assistant":
            blocks, results = _assistant(message, i), False
        elif role == "tool":
            role, blocks, results = "user", [_tool_result(message, i)], True
        else:
            raise InvalidRequestError(f"Unsupported role {role!r}.", param=f"messages[{i}].role")
        if not blocks:
            continue
        last = turns[-1] if turns else None
        if last is None or last["role"] != role:
            turns.append({"role": role, "content": blocks})
            continue
        content = last["content"]
        assert isinstance(content, list)
        if results:
            # results go ahead of any text already in this user turn, after earlier results
            at = 0
            while at < len(content) and isinstance(content[at], dict) and content[at].get("type") == "tool_result":
                at += 1
            content[at:at] = blocks
        else:
            content.extend(blocks)
    if turns and turns[-1]["role"] == "assistant":
        _trim_prefill(turns)
    return system, turns


def _trim_prefill(turns: list[JsonObj]) -> None:
    """A final assistant turn is a prefill, and the API refuses one that ends in whitespace."""
    content = turns[-1]["content"]
    assert isinstance(content, list)
    last = content[-1]
    if isinstance(last, dict) and last.get("type") == "text":
        text = str(last.get("text", "")).rstrip()
        if text:
            last["text"] = text
        else:
            content.pop()
            if not content:
                turns.pop()


def _legacy(req: ChatCompletionRequest) -> ChatCompletionRequest:
    """Rewrite the deprecated `functions` API (request fields and history) to its `tools` form."""
    legacy_msgs = any(m.role == "function" or m.function_call is not None for m in req.messages)
    if req.functions is None and req.function_call is None and not legacy_msgs:
        return req
    tools = [*(req.tools or []), *(Tool(type="function", function=f) for f in req.functions or [])]
    choice = req.tool_choice
    call = req.function_call
    if isinstance(call, str):
        choice = call
    elif isinstance(call, dict) and "name" in call:
        choice = {"type": "function", "function": {"name": call["name"]}}
    messages: list[Message] = []
    last_id = ""
    for i, m in enumerate(req.messages):
        if m.function_call is not None:
            last_id = f"call_legacy_{i}"
            legacy_call = ToolCall(id=last_id, type="function", function=m.function_call)
            messages.append(msgspec.structs.replace(m, function_call=None, tool_calls=[legacy_call]))
        elif m.role == "function":
            messages.append(Message(role="tool", tool_call_id=last_id, content=m.content))
        else:
            messages.append(m)
    return msgspec.structs.replace(
        req, functions=None, function_call=None, tools=tools or None, tool_choice=choice, messages=messages
    )


def _tools(fns: list[FunctionDef], offered: list[Tool], allowed: list[str]) -> list[JsonObj]:
    tools: list[JsonObj] = []
    for k, fn in enumerate(fns):
        if fn.name == RESPONSE_TOOL:
            raise InvalidRequestError(f"The tool name {RESPONSE_TOOL!r} is reserved by the gateway.", param="tools")
        if allowed and fn.name not in allowed:
            continue
        schema: JsonObj = dict(fn.parameters or {})
        schema.setdefault("type", "object")
        if schema["type"] == "object" and "properties" not in schema:
            schema["properties"] = {}
        tool: JsonObj = {"name": fn.name, "input_schema": schema}
        if fn.description:
            tool["description"] = fn.description
        cache = offered[k].cache_control if k < len(offered) else None
        if cache is not None:
            tool["cache_control"] = cache
        tools.append(tool)
    return tools


def _response_schema(req: ChatCompletionRequest) -> JsonObj | None:
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object", "additionalProperties": True}
    spec = fmt.json_schema
    if fmt.type != "json_schema" or spec is None:
        raise InvalidRequestError("Invalid 'response_format'.", param="response_format")
    schema = spec.schema
    if schema is None:
        return {"type": "object", "additionalProperties": True}
    if schema.get("type") != "object":
        raise InvalidRequestError(
            "Anthropic serves JSON schemas whose root is an object; wrap other roots in an object property.",
            param="response_format.json_schema.schema",
        )
    return dict(schema)


def _sampling(req: ChatCompletionRequest, thinking: bool, sampling: bool) -> JsonObj:
    out: JsonObj = {}
    if sampling and not thinking:  # extended thinking refuses temperature and top_k, and constrains top_p
        if req.temperature is not None:
            out["temperature"] = min(float(req.temperature), 1.0)  # OpenAI's range is 0..2, Anthropic's 0..1
        if req.top_p is not None:
            out["top_p"] = req.top_p
    stops = stop_list(req)
    if stops:
        out["stop_sequences"] = stops
    user = req.safety_identifier if req.safety_identifier is not None else req.user
    if user:
        out["metadata"] = {"user_id": user}
    # OpenAI's tiers (default, flex, priority) mean nothing here; Anthropic's own values pass
    if req.service_tier in ("auto", "standard_only"):
        out["service_tier"] = req.service_tier
    for key in _PASSTHROUGH:
        value = req.extra.get(key)
        if value is not None and not (key == "top_k" and (thinking or not sampling)):
            out[key] = value
    return out


def _refuse_unsupported(req: ChatCompletionRequest) -> None:
    """OpenAI parameters with no Anthropic equivalent that change what comes back: refused, not dropped."""
    for key, value, what in (
        ("logprobs", req.logprobs, "log probabilities"),
        ("top_logprobs", req.top_logprobs, "log probabilities"),
        ("audio", req.audio, "audio output"),
    ):
        if value:
            raise InvalidRequestError(f"Anthropic does not return {what} ({key!r}).", param=key)
    if req.n is not None and req.n > 1:
        raise InvalidRequestError("Anthropic returns one choice per request; 'n' must be 1.", param="n")


def build_request(
    req: ChatCompletionRequest,
    model: str,
    *,
    stream: bool,
    api_version: str = "2023-06-01",
) -> JsonObj:
    """The Messages request for an OpenAI chat request (deployment params already merged under it).

    API version 2026-10-21 refuses `temperature`, `top_p` and `top_k` outright; under it they are dropped.
    """
    _refuse_unsupported(req)
    req = _legacy(req)
    system, turns = _turns(messages_of(req))
    if not turns:
        raise InvalidRequestError("The request has no user or assistant message to answer.", param="messages")
    thinking_cfg = req.extra.get("thinking")
    thinking = isinstance(thinking_cfg, dict) and thinking_cfg.get("type") not in (None, "disabled")
    body: JsonObj = {
        "model": model,
        "max_tokens": max_tokens_of(req) or DEFAULT_MAX_TOKENS,
        "messages": turns,
    }
    if system:
        body["system"] = system
    mode, names = tool_choice_of(req)
    fns = tools_of(req)
    restrict = names if len(names) > 1 or (names and mode == "auto") else []
    tools = _tools(fns, req.tools or [], restrict)
    choice: JsonObj | None = None
    if tools:
        if mode == "none":
            choice = {"type": "none"}
        elif mode == "required":
            choice = {"type": "tool", "name": names[0]} if len(names) == 1 else {"type": "any"}
        else:
            choice = {"type": "auto"}
    schema = _response_schema(req)
    if schema is not None:
        description = "Give your complete answer by calling this tool; its input is the answer, as JSON."
        tools.append({"name": RESPONSE_TOOL, "description": description, "input_schema": schema})
        if thinking:  # forced tool use is refused with thinking: ask instead
            choice = {"type": "auto"}
            system.append({"type": "text", "text": f"Always answer by calling the {RESPONSE_TOOL} tool."})
            body["system"] = system
        elif choice is None or choice["type"] == "none":
            choice = {"type": "tool", "name": RESPONSE_TOOL}
        elif choice["type"] == "auto":
            choice = {"type": "any"}
    if tools:
        body["tools"] = tools
        assert choice is not None
        if req.parallel_tool_calls is False and choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
        body["tool_choice"] = choice
    body.update(_sampling(req, thinking, sampling=api_version < "2026-10-21"))
    if stream:
        body["stream"] = True
    return body
