"""Anthropic Messages request → canonical chat body, validated the way Anthropic validates.

Error messages name the field Anthropic's way (`max_tokens: Field required`, `messages.0.role: …`);
`param` carries the same path OpenAI-style (`messages[0].role`) for the request record.

`translate` also lists what the chat form cannot express — `mcp_servers`, `container`, server tools,
server-tool and MCP blocks, file-id and URL sources, block types it does not know — which only an
Anthropic deployment can serve (the request goes there unchanged); the text a model reads in those
parts still goes into the chat body, for the guard's scan. `to_chat` refuses such a request instead.
Thinking blocks of earlier turns travel as the assistant message's `thinking_blocks` (gatehouse's
convention, which the Anthropic translator sends back with their signatures); search results and
document titles and contexts become text parts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from services.ingress.surfaces.chat_view import JsonObj, obj, text_of
from services.ingress.surfaces.readable import Untranslatable, readable_text
from shared.errors import InvalidRequestError

Path = Sequence[str | int]
_CUSTOM_TOOL = (None, "custom")


@dataclass(frozen=True, slots=True)
class Translation:
    """The chat body, and where the request uses what it cannot express (`path: what`)."""

    chat: JsonObj
    untranslatable: list[str]


def _bad(path: Path, problem: str) -> InvalidRequestError:
    dotted = ".".join(str(p) for p in path)
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return InvalidRequestError(f"{dotted}: {problem}" if dotted else problem, param=param or None)


def _number(body: JsonObj, key: str) -> float | int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad([key], "Input should be a valid number")
    return value


def to_chat(body: object) -> JsonObj:
    """An Anthropic Messages request → the OpenAI chat body gatehouse routes (stream asks for usage);
    a 400 naming the first part the chat form cannot express."""
    gaps = Untranslatable()
    chat = _translate(body, gaps)
    if gaps.found:
        raise _bad(
            gaps.first_path,
            f"{gaps.first_what} is not supported by this gateway unless an Anthropic deployment serves it",
        )
    return chat


def translate(body: object) -> Translation:
    """An Anthropic Messages request → its chat body, and what only an Anthropic deployment can serve."""
    gaps = Untranslatable()
    chat = _translate(body, gaps)
    return Translation(chat, gaps.found)


def _translate(body: object, gaps: Untranslatable) -> JsonObj:
    if not isinstance(body, dict):
        raise _bad([], "The request body must be a JSON object.")
    model = body.get("model")
    if model is None:
        raise _bad(["model"], "Field required")
    if not isinstance(model, str) or not model:
        raise _bad(["model"], "Input should be a non-empty string")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise _bad(["max_tokens"], "Field required")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _bad(["max_tokens"], "Input should be an integer greater than or equal to 1")
    raw_messages = body.get("messages")
    if raw_messages is None:
        raise _bad(["messages"], "Field required")
    if not isinstance(raw_messages, list):
        raise _bad(["messages"], "Input should be a valid list")
    if not raw_messages:
        raise _bad(["messages"], "at least one message is required")
    for key in ("mcp_servers", "container"):
        if body.get(key):
            gaps.add([key], f"The parameter '{key}'")

    messages = _system(body.get("system"))
    for i, raw in enumerate(raw_messages):
        messages.extend(_message(raw, i, gaps))
    if not messages:  # only blocks without text: the chat body is a scan view that must still be valid
        messages = [{"role": "user", "content": ""}]
    out: JsonObj = {"model": model, "messages": messages, "max_completion_tokens": max_tokens}

    for key in ("temperature", "top_p"):
        value = _number(body, key)
        if value is not None:
            out[key] = value
    _number(body, "top_k")  # validated, then dropped: OpenAI-form chat has no top_k
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _bad(["stop_sequences"], "Input should be a valid list of strings")
        if stops:
            out["stop"] = stops
    user = obj(body.get("metadata")).get("user_id")
    if isinstance(user, str) and user:
        out["user"] = user
    tools = _tools(body.get("tools"), gaps)
    if tools:
        out["tools"] = tools
    _tool_choice(body.get("tool_choice"), out)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad(["stream"], "Input should be a valid boolean")
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _system(system: object) -> list[JsonObj]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise _bad(["system"], "Input should be a valid string or a list of text blocks")
    parts: list[JsonObj] = []
    for j, raw in enumerate(system):
        block = obj(raw)
        if block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise _bad(["system", j], "Input should be a text block")
        parts.append({"type": "text", "text": block["text"]})
    return [{"role": "system", "content": _collapse(parts)}] if parts else []


def _collapse(parts: list[JsonObj]) -> str | list[JsonObj]:
    """A lone text part as a plain string (the form every OpenAI-compatible server accepts)."""
    if len(parts) == 1 and parts[0].get("type") == "text":
        return text_of(parts[0].get("text"))
    return parts


def _message(raw: object, i: int, gaps: Untranslatable) -> list[JsonObj]:
    if not isinstance(raw, dict):
        raise _bad(["messages", i], "Input should be a valid dictionary")
    role = raw.get("role")
    if role not in ("user", "assistant"):
        hint = " Use the top-level `system` parameter for a system prompt." if role == "system" else ""
        raise _bad(["messages", i, "role"], f"Input should be 'user' or 'assistant'.{hint}")
    content = raw.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise _bad(["messages", i, "content"], "Input should be a valid string or a list of content blocks")
    if role == "assistant":
        return [_assistant(content, i, gaps)]
    return _user(content, i, gaps)


def _untranslatable(block: JsonObj, where: list[str | int], gaps: Untranslatable, what: str) -> list[JsonObj]:
    """Note a block the chat form cannot express; its readable text, as a text part, for the guard."""
    gaps.add(where, what)
    text = readable_text(block)
    return [{"type": "text", "text": text}] if text else []


def _assistant(blocks: list[object], i: int, gaps: Untranslatable) -> JsonObj:
    parts: list[JsonObj] = []
    calls: list[JsonObj] = []
    thinking: list[JsonObj] = []
    for j, raw in enumerate(blocks):
        block = obj(raw)
        kind = block.get("type")
        where: list[str | int] = ["messages", i, "content", j]
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, where)})
        elif kind == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise _bad(where, "A tool_use block needs string `id` and `name`")
            arguments = msgspec.json.encode(block.get("input") or {}).decode()
            calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
        elif kind == "thinking":
            thinking.append(
                {
                    "type": "thinking",
                    "thinking": text_of(block.get("thinking")),
                    "signature": text_of(block.get("signature")),
                }
            )
        elif kind == "redacted_thinking":
            thinking.append({"type": "redacted_thinking", "data": text_of(block.get("data"))})
        else:
            parts += _untranslatable(block, [*where, "type"], gaps, f"Content block type {kind!r}")
    message: JsonObj = {"role": "assistant", "content": _collapse(parts) if parts else None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["thinking_blocks"] = thinking
    return message


def _user(blocks: list[object], i: int, gaps: Untranslatable) -> list[JsonObj]:
    """Tool results become `tool` messages, which chat wants straight after the assistant's calls; the
    rest of the turn (and any image a tool returned) follows as one user message."""
    tools: list[JsonObj] = []
    parts: list[JsonObj] = []
    for j, raw in enumerate(blocks):
        block = obj(raw)
        kind = block.get("type")
        where: list[str | int] = ["messages", i, "content", j]
        if kind == "tool_result":
            tool, images = _tool_result(block, where, gaps)
            tools.append(tool)
            parts.extend(images)
        else:
            parts.extend(_user_parts(block, where, gaps))
    out = list(tools)
    if parts:
        out.append({"role": "user", "content": parts})
    return out


def _tool_result(block: JsonObj, where: list[str | int], gaps: Untranslatable) -> tuple[JsonObj, list[JsonObj]]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad([*where, "tool_use_id"], "Field required")
    content = block.get("content")
    texts: list[str] = []
    images: list[JsonObj] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for k, raw in enumerate(content):
            for part in _user_parts(obj(raw), [*where, "content", k], gaps):
                if part["type"] == "text":
                    texts.append(text_of(part.get("text")))
                else:
                    images.append(part)
    elif content is not None:
        raise _bad([*where, "content"], "Input should be a valid string or a list of content blocks")
    text = "\n".join(texts)
    if block.get("is_error") is True:
        # chat has no error flag on a tool message; the model still has to learn the call failed
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _text(block: JsonObj, where: list[str | int]) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad([*where, "text"], "Field required")
    return text


def _user_parts(block: JsonObj, where: list[str | int], gaps: Untranslatable) -> list[JsonObj]:
    kind = block.get("type")
    if kind == "text":
        return [{"type": "text", "text": _text(block, where)}]
    if kind == "image":
        source = obj(block.get("source"))
        if source.get("type") not in ("base64", "url"):
            return _untranslatable(block, [*where, "source", "type"], gaps, f"Image source type {source.get('type')!r}")
        return [{"type": "image_url", "image_url": {"url": _image_url(source, where)}}]
    if kind == "document":
        return _document(block, where, gaps)
    if kind == "search_result":
        # a search result is text the model reads (and may cite): its title, source and content
        text = "\n".join(s for s in (text_of(block.get("title")), text_of(block.get("source"))) if s)
        body = readable_text(block.get("content"))
        return [{"type": "text", "text": f"{text}\n{body}" if text and body else text or body}]
    return _untranslatable(block, [*where, "type"], gaps, f"Content block type {kind!r}")


def _image_url(source: JsonObj, where: list[str | int]) -> str:
    if source.get("type") == "base64":
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise _bad([*where, "source"], "A base64 image needs `media_type` and `data`")
        return f"data:{media};base64,{data}"
    url = source.get("url")
    if not isinstance(url, str):
        raise _bad([*where, "source", "url"], "Field required")
    return url


def _document(block: JsonObj, where: list[str | int], gaps: Untranslatable) -> list[JsonObj]:
    source = obj(block.get("source"))
    kind = source.get("type")
    data = source.get("data")
    # the title and context are text the model reads along with the document
    about: list[JsonObj] = [
        {"type": "text", "text": t} for t in (text_of(block.get("title")), text_of(block.get("context"))) if t
    ]
    if kind == "text" and isinstance(data, str):
        return [*about, {"type": "text", "text": data}]
    if kind == "base64" and isinstance(data, str):
        media = text_of(source.get("media_type")) or "application/pdf"
        name = text_of(block.get("title")) or "document.pdf"
        return [*about, {"type": "file", "file": {"filename": name, "file_data": f"data:{media};base64,{data}"}}]
    inner = source.get("content")
    if kind == "content" and isinstance(inner, str):
        return [*about, {"type": "text", "text": inner}]
    if kind == "content" and isinstance(inner, list):
        for k, raw in enumerate(inner):
            about += _user_parts(obj(raw), [*where, "source", "content", k], gaps)
        return about
    return about + _untranslatable(block, [*where, "source", "type"], gaps, f"Document source type {kind!r}")


def _tools(raw: object, gaps: Untranslatable) -> list[JsonObj]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _bad(["tools"], "Input should be a valid list")
    tools: list[JsonObj] = []
    for j, item in enumerate(raw):
        tool = obj(item)
        kind = tool.get("type")
        if kind not in _CUSTOM_TOOL:
            gaps.add(["tools", j, "type"], f"Server tool {kind!r}")
            continue
        name, schema = tool.get("name"), tool.get("input_schema")
        if not isinstance(name, str) or not name:
            raise _bad(["tools", j, "name"], "Field required")
        if not isinstance(schema, dict):
            raise _bad(["tools", j, "input_schema"], "Field required")
        fn: JsonObj = {"name": name, "parameters": schema}
        if isinstance(tool.get("description"), str):
            fn["description"] = tool["description"]
        if isinstance(tool.get("strict"), bool):
            fn["strict"] = tool["strict"]
        tools.append({"type": "function", "function": fn})
    return tools


def _tool_choice(raw: object, out: JsonObj) -> None:
    if raw is None:
        return
    choice = obj(raw)
    kind = choice.get("type")
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(["tool_choice", "name"], "Field required")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise _bad(["tool_choice", "type"], "Input should be 'auto', 'any', 'tool' or 'none'")
    if choice.get("disable_parallel_tool_use") is True and "tools" in out:
        out["parallel_tool_calls"] = False
