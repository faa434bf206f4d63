"""OpenAI Responses request → canonical chat body; what needs stored responses or built-in tools is a 400."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.ingress.surfaces.chat_view import JsonObj, obj, text_of
from shared.errors import InvalidRequestError

_NO_STORE = "gatehouse does not store responses, so this parameter is not supported."
_UNSUPPORTED_PARAMS = {
    "previous_response_id": _NO_STORE,
    "conversation": _NO_STORE,
    "background": "Background responses are not supported by this gateway.",
    "prompt": "Prompt templates are not supported by this gateway.",
    "max_tool_calls": "The 'max_tool_calls' parameter is not supported by this gateway.",
    "top_logprobs": "Log probabilities are not supported on this endpoint by this gateway.",
}
_INCLUDABLE = frozenset({"reasoning.encrypted_content"})  # asked by default by agents; nothing to include


def _missing(param: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def _invalid(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def to_chat(body: object) -> JsonObj:
    """A Responses request → the OpenAI chat body gatehouse routes (stream asks for usage)."""
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _missing("model") if model is None else _invalid("model", "Invalid 'model': expected a string.")
    for param, why in _UNSUPPORTED_PARAMS.items():
        if body.get(param) not in (None, False):
            raise _invalid(param, why)
    if body.get("truncation") not in (None, "disabled"):
        raise _invalid("truncation", "Only 'truncation: disabled' is supported by this gateway.")
    include = body.get("include")
    for n, item in enumerate(include if isinstance(include, list) else []):
        if item not in _INCLUDABLE:
            raise _invalid(f"include[{n}]", f"Including {item!r} is not supported by this gateway.")

    messages: list[JsonObj] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    elif instructions is not None and not isinstance(instructions, str):
        raise _invalid("instructions", "Invalid 'instructions': expected a string.")
    messages.extend(_input(body.get("input")))
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
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
    if body.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(body["tool_choice"])
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid("stream", "Invalid 'stream': expected a boolean.")
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


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


def _input(raw: object) -> list[JsonObj]:
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
        kind = item.get("type") or "message"
        if kind == "message":
            out.add(_message(item, where))
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
            text, images = _tool_output(item.get("output"), f"{where}.output")
            out.add({"role": "tool", "tool_call_id": call_id, "content": text})
            out.tool_images.extend(images)
        elif kind == "reasoning":
            continue  # prior reasoning has no chat form; the turn stands without it
        elif kind == "item_reference":
            raise _invalid(f"{where}.type", f"Item references need stored items; {_NO_STORE}")
        else:
            raise _invalid(f"{where}.type", f"Input item type {kind!r} is not supported by this gateway.")
    out.flush()
    return out.messages


def _message(item: JsonObj, where: str) -> JsonObj:
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
    parts = [_part(obj(p), f"{where}.content[{j}]") for j, p in enumerate(content)]
    if role != "user":
        for j, part in enumerate(parts):
            if part["type"] != "text":
                raise _invalid(f"{where}.content[{j}]", f"{role} messages may hold text only.")
        texts = [text_of(p.get("text")) for p in parts]
        return {"role": role, "content": texts[0] if len(texts) == 1 else parts}
    return {"role": role, "content": parts}


def _part(part: JsonObj, where: str) -> JsonObj:
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": text_of(part.get("text"))}
    if kind == "refusal":
        return {"type": "text", "text": text_of(part.get("refusal"))}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise _invalid(f"{where}.image_url", "Only images given by URL or data URL are supported (no file ids).")
        image: JsonObj = {"url": url}
        if isinstance(part.get("detail"), str):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        data = part.get("file_data")
        if not isinstance(data, str) or not data:
            raise _invalid(f"{where}.file_data", "Only files given inline as 'file_data' are supported.")
        return {"type": "file", "file": {"filename": text_of(part.get("filename")) or "file", "file_data": data}}
    raise _invalid(f"{where}.type", f"Content part type {kind!r} is not supported by this gateway.")


def _tool_output(raw: object, where: str) -> tuple[str, list[JsonObj]]:
    if isinstance(raw, str):
        return raw, []
    if not isinstance(raw, list):
        raise _missing(where) if raw is None else _invalid(where, "Expected a string or a list of content parts.")
    texts: list[str] = []
    images: list[JsonObj] = []
    for j, value in enumerate(raw):
        part = _part(obj(value), f"{where}[{j}]")
        if part["type"] == "text":
            texts.append(text_of(part.get("text")))
        else:
            images.append(part)
    return "\n".join(texts), images


def _tools(raw: object) -> list[JsonObj]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _invalid("tools", "Invalid 'tools': expected an array.")
    tools: list[JsonObj] = []
    for j, value in enumerate(raw):
        tool = obj(value)
        kind = tool.get("type")
        if kind != "function":
            raise _invalid(
                f"tools[{j}].type", f"Tool type {kind!r} is not supported by this gateway (only 'function')."
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise _missing(f"tools[{j}].name")
        fn: JsonObj = {"name": name}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                fn[key] = tool[key]
        tools.append({"type": "function", "function": fn})
    return tools


def _tool_choice(raw: object) -> object:
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
                raise _invalid(f"tool_choice.tools[{j}]", "Only function tools may be allowed by this gateway.")
            names.append({"type": "function", "function": {"name": tool["name"]}})
        mode = choice.get("mode") if choice.get("mode") in ("auto", "required") else "auto"
        return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": names}}
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
