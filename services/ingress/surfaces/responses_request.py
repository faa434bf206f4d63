"""OpenAI Responses request → canonical chat body.

`translate` also lists what the chat form cannot express — stored state (`previous_response_id`,
`conversation`, `item_reference`, `prompt` templates), built-in tools (web_search, file_search, mcp, …)
and their items, file ids, `truncation: auto`, `max_tool_calls`, `top_logprobs`, other `include`s —
which only an OpenAI deployment can serve (the request goes there unchanged); the text a model reads in
those parts still goes into the chat body, for the guard's scan. `to_chat` refuses such a request
instead. `background` is refused either way: gatehouse serves no `GET /v1/responses/{id}` to poll.
A request with an `mcp` tool never gets here whole: ingress serves it with its own MCP servers
(surfaces/responses_mcp.py), and each model turn it sends carries those tools as function tools.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.ingress.surfaces.chat_view import JsonObj, obj, text_of
from services.ingress.surfaces.readable import Untranslatable, readable_text
from shared.errors import InvalidRequestError

_UNTRANSLATABLE_PARAMS = {
    "previous_response_id": "A stored response ('previous_response_id')",
    "conversation": "A stored conversation ('conversation')",
    "prompt": "A stored prompt template ('prompt')",
    "max_tool_calls": "The 'max_tool_calls' parameter",
    "top_logprobs": "Log probabilities ('top_logprobs')",
}
_INCLUDABLE = frozenset({"reasoning.encrypted_content"})  # asked by default by agents; nothing to include


@dataclass(frozen=True, slots=True)
class Translation:
    """The chat body, and where the request uses what it cannot express (`path: what`)."""

    chat: JsonObj
    untranslatable: list[str]


def _missing(param: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def _invalid(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def to_chat(body: object) -> JsonObj:
    """A Responses request → the OpenAI chat body gatehouse routes (stream asks for usage); a 400 naming
    the first part the chat form cannot express."""
    gaps = Untranslatable()
    chat = _translate(body, gaps)
    if gaps.found:
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in gaps.first_path).lstrip(".")
        raise _invalid(
            path, f"{gaps.first_what} is not supported by this gateway unless an OpenAI deployment serves it."
        )
    return chat


def translate(body: object) -> Translation:
    """A Responses request → its chat body, and what only an OpenAI deployment can serve."""
    gaps = Untranslatable()
    chat = _translate(body, gaps)
    return Translation(chat, gaps.found)


def _translate(body: object, gaps: Untranslatable) -> JsonObj:
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _missing("model") if model is None else _invalid("model", "Invalid 'model': expected a string.")
    _stored_state(body, gaps)
    messages: list[JsonObj] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    elif instructions is not None and not isinstance(instructions, str):
        raise _invalid("instructions", "Invalid 'instructions': expected a string.")
    prompt = readable_text(obj(body.get("prompt")).get("variables"))
    if prompt:  # a stored template's variables are text the model reads
        messages.append({"role": "user", "content": prompt})
    messages.extend(_input(body.get("input"), gaps))
    out: JsonObj = {"model": model, "messages": messages}

    max_out = body.get("max_output_tokens")
    if max_out is not None:
        if isinstance(max_out, bool) or not isinstance(max_out, int) or max_out < 1:
            raise _invalid("max_output_tokens", "Invalid 'max_output_tokens': expected an integer of at least 1.")
        out["max_completion_tokens"] = max_out
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _invalid(key, f"Invalid '{key}': expected a number.")
            out[key] = value
    for key in ("user", "safety_identifier", "prompt_cache_key", "service_tier"):
        if isinstance(body.get(key), str):
            out[key] = body[key]
    if isinstance(body.get("parallel_tool_calls"), bool):
        out["parallel_tool_calls"] = body["parallel_tool_calls"]
    effort = obj(body.get("reasoning")).get("effort")
    if isinstance(effort, str):
        out["reasoning_effort"] = effort
    _text_config(obj(body.get("text")), out)
    tools = _tools(body.get("tools"), gaps)
    if tools:
        out["tools"] = tools
    if body.get("tool_choice") is not None:
        choice = _tool_choice(body["tool_choice"], gaps)
        if choice is not None:
            out["tool_choice"] = choice
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid("stream", "Invalid 'stream': expected a boolean.")
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _stored_state(body: JsonObj, gaps: Untranslatable) -> None:
    """Parameters that need state kept by OpenAI, or that chat has no form for."""
    if body.get("background") not in (None, False):
        raise _invalid("background", "Background responses are not supported by this gateway.")
    for param, what in _UNTRANSLATABLE_PARAMS.items():
        if body.get(param) not in (None, False):
            gaps.add([param], what)
    if body.get("truncation") not in (None, "disabled"):
        gaps.add(["truncation"], f"'truncation: {body.get('truncation')}'")
    include = body.get("include")
    for n, item in enumerate(include if isinstance(include, list) else []):
        if item not in _INCLUDABLE:
            gaps.add(["include", n], f"Including {item!r}")


@dataclass(slots=True)
class _Builder:
    """Chat messages from input items: consecutive calls join one assistant turn; images a tool
    returned wait until the run of tool messages ends (chat allows only tool messages there)."""

    messages: list[JsonObj] = field(default_factory=list)
    tool_images: list[JsonObj] = field(default_factory=list)

    def add(self, message: JsonObj) -> None:
        if message["role"] != "tool":
            self.flush()
        self.messages.append(message)

    def call(self, call: JsonObj) -> None:
        last = self.messages[-1] if self.messages and not self.tool_images else None
        if last is not None and last["role"] == "assistant":
            calls = last.setdefault("tool_calls", [])
            if isinstance(calls, list):
                calls.append(call)
                return
        self.add({"role": "assistant", "content": None, "tool_calls": [call]})

    def flush(self) -> None:
        if self.tool_images:
            self.messages.append({"role": "user", "content": self.tool_images})
            self.tool_images = []


def _input(raw: object, gaps: Untranslatable) -> list[JsonObj]:
    if raw is None:
        raise _missing("input")
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise _invalid("input", "Invalid 'input': expected a string or an array of input items.")
    if not raw:
        raise _invalid("input", "Invalid 'input': empty array. Expected at least one input item.")
    out = _Builder()
    for i, value in enumerate(raw):
        item = obj(value)
        where = f"input[{i}]"
        at: list[str | int] = ["input", i]
        kind = item.get("type") or "message"
        if kind == "message":
            out.add(_message(item, where, gaps, at))
        elif kind == "function_call":
            call_id, name = item.get("call_id"), item.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise _missing(f"{where}.call_id" if not isinstance(call_id, str) else f"{where}.name")
            args = item.get("arguments")
            fn = {"name": name, "arguments": args if isinstance(args, str) else "{}"}
            out.call({"id": call_id, "type": "function", "function": fn})
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise _missing(f"{where}.call_id")
            text, images = _tool_output(item.get("output"), f"{where}.output", gaps, [*at, "output"])
            out.add({"role": "tool", "tool_call_id": call_id, "content": text})
            out.tool_images.extend(images)
        elif kind == "reasoning":
            continue  # prior reasoning has no chat form; the turn stands without it
        else:
            # built-in tool calls and their outputs, references to stored items, …
            gaps.add([*at, "type"], f"Input item type {kind!r}")
            text = readable_text(item)
            if text:
                out.add({"role": "user", "content": text})
    out.flush()
    return out.messages


def _message(item: JsonObj, where: str, gaps: Untranslatable, at: list[str | int]) -> JsonObj:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise _invalid(
            f"{where}.role",
            f"Invalid value: {role!r}. Supported values are: 'user', 'assistant', 'system' and 'developer'.",
        )
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise _missing(f"{where}.content") if content is None else _invalid(f"{where}.content", "Expected a list.")
    parts = [_part(obj(p), f"{where}.content[{j}]", gaps, [*at, "content", j]) for j, p in enumerate(content)]
    if role != "user":
        for j, part in enumerate(parts):
            if part["type"] != "text":
                raise _invalid(f"{where}.content[{j}]", f"{role} messages may hold text only.")
        texts = [text_of(p.get("text")) for p in parts]
        return {"role": role, "content": texts[0] if len(texts) == 1 else parts}
    return {"role": role, "content": parts}


def _part(part: JsonObj, where: str, gaps: Untranslatable, at: list[str | int]) -> JsonObj:
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": text_of(part.get("text"))}
    if kind == "refusal":
        return {"type": "text", "text": text_of(part.get("refusal"))}
    if kind == "input_image":
        url = part.get("image_url")
        if isinstance(part.get("file_id"), str) and not url:
            gaps.add([*at, "file_id"], "An image given by file id")
            return {"type": "text", "text": ""}
        if not isinstance(url, str) or not url:
            raise _invalid(f"{where}.image_url", "Only images given by URL or data URL are supported (no file ids).")
        image: JsonObj = {"url": url}
        if isinstance(part.get("detail"), str):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        data = part.get("file_data")
        if not isinstance(data, str) or not data:
            if isinstance(part.get("file_id"), str) or isinstance(part.get("file_url"), str):
                gaps.add([*at, "file_id" if part.get("file_id") else "file_url"], "A file given by id or URL")
                return {"type": "text", "text": ""}
            raise _invalid(f"{where}.file_data", "Only files given inline as 'file_data' are supported.")
        return {"type": "file", "file": {"filename": text_of(part.get("filename")) or "file", "file_data": data}}
    gaps.add([*at, "type"], f"Content part type {kind!r}")
    return {"type": "text", "text": readable_text(part)}


def _tool_output(raw: object, where: str, gaps: Untranslatable, at: list[str | int]) -> tuple[str, list[JsonObj]]:
    if isinstance(raw, str):
        return raw, []
    if not isinstance(raw, list):
        raise _missing(where) if raw is None else _invalid(where, "Expected a string or a list of content parts.")
    texts: list[str] = []
    images: list[JsonObj] = []
    for j, value in enumerate(raw):
        part = _part(obj(value), f"{where}[{j}]", gaps, [*at, j])
        if part["type"] == "text":
            texts.append(text_of(part.get("text")))
        else:
            images.append(part)
    return "\n".join(texts), images


def _tools(raw: object, gaps: Untranslatable) -> list[JsonObj]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _invalid("tools", "Invalid 'tools': expected an array.")
    tools: list[JsonObj] = []
    for j, value in enumerate(raw):
        tool = obj(value)
        kind = tool.get("type")
        if kind != "function":
            gaps.add(["tools", j, "type"], f"Tool type {kind!r}")
            continue
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise _missing(f"tools[{j}].name")
        fn: JsonObj = {"name": name}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                fn[key] = tool[key]
        tools.append({"type": "function", "function": fn})
    return tools


def _tool_choice(raw: object, gaps: Untranslatable) -> object:
    if raw in ("auto", "none", "required"):
        return raw
    choice = obj(raw)
    kind = choice.get("type")
    if kind == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    if kind == "allowed_tools":
        names: list[JsonObj] = []
        allowed = choice.get("tools")
        for j, value in enumerate(allowed if isinstance(allowed, list) else []):
            tool = obj(value)
            if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
                gaps.add(["tool_choice", "tools", j], f"Allowing tool type {tool.get('type')!r}")
                continue
            names.append({"type": "function", "function": {"name": tool["name"]}})
        mode = choice.get("mode") if choice.get("mode") in ("auto", "required") else "auto"
        return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": names}}
    if isinstance(kind, str) and kind:  # a built-in tool (web_search_preview, file_search, mcp, …)
        gaps.add(["tool_choice"], f"Tool choice {kind!r}")
        return None
    raise _invalid("tool_choice", f"Tool choice {raw!r} is not supported by this gateway.")


def _text_config(text: JsonObj, out: JsonObj) -> None:
    fmt = obj(text.get("format"))
    kind = fmt.get("type")
    if kind == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        name, schema = fmt.get("name"), fmt.get("schema")
        if not isinstance(name, str) or not isinstance(schema, dict):
            raise _missing("text.format.name" if not isinstance(name, str) else "text.format.schema")
        spec: JsonObj = {"name": name, "schema": schema}
        for key in ("description", "strict"):
            if fmt.get(key) is not None:
                spec[key] = fmt[key]
        out["response_format"] = {"type": "json_schema", "json_schema": spec}
    elif kind not in (None, "text"):
        raise _invalid("text.format.type", f"Text format {kind!r} is not supported.")
    if isinstance(text.get("verbosity"), str):
        out["verbosity"] = text["verbosity"]
