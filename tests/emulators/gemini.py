"""A Gemini API (generativelanguage v1beta) emulator, written from Google's public API reference.

Endpoints: `models/{model}:generateContent`, `:streamGenerateContent` (`alt=sse` → SSE events, otherwise
a JSON array, as the real API does), `:embedContent`, `:batchEmbedContents`. It validates what the real
API validates that a translator can get wrong: the `x-goog-api-key` header (or `?key=`), unknown JSON
fields anywhere in the request ("Cannot find field"), roles user/model, empty parts and empty text,
one data field per part, the `Schema` subset in function declarations (and no OBJECT without
properties), function-call turn order, function responses matching the calls of the turn before in
count and name, `toolConfig` modes, generationConfig ranges, and for `gemini-3*` models the thought
signature on the first function call of every step of the current turn. Errors use Google's
`{"error": {code, message, status, details}}` shape.

Answers are deterministic: an echo of the last user text; function calls when tools are offered and
the prompt mentions the weather (two parallel calls when it says "both"), or always in mode ANY; a
summary after function responses; JSON under `responseMimeType: application/json`. Model names
simulate the rest: `err-<status>` (429 with Retry-After and RetryInfo), `slow-<ms>`, `err-stream` (fails
mid-stream), `blocked` (prompt blocked), `safety` (answer filtered), `*think*` (thought tokens).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

API_KEY = "gemini-emulator-key"
SIGNATURE = base64.b64encode(b"emulated-thought-signature").decode()
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_REQUEST_KEYS = {"contents", "tools", "toolConfig", "safetySettings", "systemInstruction", "generationConfig"}
_REQUEST_KEYS |= {"cachedContent", "model"}
_CONTENT_KEYS = {"role", "parts"}
_DATA_KEYS = {"text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode"}
_DATA_KEYS |= {"codeExecutionResult"}
_PART_KEYS = _DATA_KEYS | {"thought", "thoughtSignature", "videoMetadata", "partMetadata"}
_TOOL_KEYS = {"functionDeclarations", "googleSearch", "googleSearchRetrieval", "codeExecution", "urlContext"}
_DECL_KEYS = {"name", "description", "parameters", "parametersJsonSchema", "response", "responseJsonSchema"}
_DECL_KEYS |= {"behavior"}
_SCHEMA_KEYS = {"type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties"}
_SCHEMA_KEYS |= {"required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example"}
_SCHEMA_KEYS |= {"anyOf", "propertyOrdering", "default", "items", "minimum", "maximum"}
_TYPES = {"STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"}
_GEN_KEYS = {"stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema", "responseModalities"}
_GEN_KEYS |= {"candidateCount", "maxOutputTokens", "temperature", "topP", "topK", "seed", "presencePenalty"}
_GEN_KEYS |= {"frequencyPenalty", "responseLogprobs", "logprobs", "thinkingConfig", "mediaResolution"}
_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}$")


class _Bad(Exception):
    def __init__(self, code: int, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


def _error(code: int, message: str, details: list[dict[str, Any]] | None = None, headers: Any = None) -> JSONResponse:
    err: dict[str, Any] = {"code": code, "message": message, "status": _STATUS.get(code, "UNKNOWN")}
    if details:
        err["details"] = details
    return JSONResponse({"error": err}, status_code=code, headers=headers)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _fields(obj: Any, allowed: set[str], where: str) -> dict[str, Any]:
    """The object with snake_case names read as camelCase (as Google's JSON parser does); unknown → 400."""
    if not isinstance(obj, dict):
        raise _Bad(400, f"Invalid JSON payload received. Expected an object at '{where}'.")
    out = {}
    for key, value in obj.items():
        name = _camel(key)
        if name not in allowed:
            at = f" at '{where}'" if where else ""
            raise _Bad(400, f'Invalid JSON payload received. Unknown name "{key}"{at}: Cannot find field.')
        out[name] = value
    return out


def _b64(value: Any, where: str) -> None:
    try:
        if not isinstance(value, str):
            raise binascii.Error
        base64.b64decode(value.replace("-", "+").replace("_", "/") + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _Bad(400, f"Invalid value at '{where}' (TYPE_BYTES), Base64 decoding failed.") from None


def _schema(obj: Any, where: str) -> None:
    s = _fields(obj, _SCHEMA_KEYS, where)
    kind = s.get("type")
    if kind is not None and (not isinstance(kind, str) or kind.upper() not in _TYPES):
        raise _Bad(400, f"Invalid value at '{where}.type' ({kind!r}).")
    if isinstance(kind, str) and kind.upper() == "OBJECT" and not s.get("properties"):
        raise _Bad(400, f"* GenerateContentRequest.{where}.properties: should be non-empty for OBJECT type\n")
    for name, sub in (s.get("properties") or {}).items():
        _schema(sub, f"{where}.properties[{name}]")
    if "items" in s:
        _schema(s["items"], f"{where}.items")
    for i, sub in enumerate(s.get("anyOf") or []):
        _schema(sub, f"{where}.any_of[{i}]")
    enum = s.get("enum")
    if enum is not None and not all(isinstance(v, str) for v in enum):
        raise _Bad(400, f"Invalid value at '{where}.enum': enum values must be strings.")


def _part(obj: Any, role: str, where: str) -> dict[str, Any]:
    p = _fields(obj, _PART_KEYS, where)
    data = [k for k in p if k in _DATA_KEYS]
    if len(data) != 1:
        raise _Bad(
            400, f"* GenerateContentRequest.{where}.data: required oneof field 'data' must have one initialized field\n"
        )
    if "text" in p and (not isinstance(p["text"], str) or not p["text"]):
        raise _Bad(
            400,
            "Unable to submit request because it has an empty text parameter. Add a value to the parameter and try "
            "again.",
        )
    if "inlineData" in p:
        blob = _fields(p["inlineData"], {"mimeType", "data"}, f"{where}.inline_data")
        if not blob.get("mimeType"):
            raise _Bad(400, f"* GenerateContentRequest.{where}.inline_data.mime_type: required field is not set\n")
        _b64(blob.get("data"), f"{where}.inline_data.data")
    if "fileData" in p:
        ref = _fields(p["fileData"], {"mimeType", "fileUri"}, f"{where}.file_data")
        if not ref.get("fileUri"):
            raise _Bad(400, f"* GenerateContentRequest.{where}.file_data.file_uri: required field is not set\n")
    if "thoughtSignature" in p:
        _b64(p["thoughtSignature"], f"{where}.thought_signature")
    if "functionCall" in p:
        call = _fields(p["functionCall"], {"id", "name", "args"}, f"{where}.function_call")
        if role != "model":
            raise _Bad(400, "Please ensure that function call parts are only in model turns.")
        if not call.get("name"):
            raise _Bad(400, f"* GenerateContentRequest.{where}.function_call.name: Name cannot be empty.\n")
        if "args" in call and not isinstance(call["args"], dict):
            raise _Bad(
                400, f"Invalid value at '{where}.function_call.args' (type.googleapis.com/google.protobuf.Struct)."
            )
    if "functionResponse" in p:
        keys = {"id", "name", "response", "parts", "willContinue", "scheduling"}
        resp = _fields(p["functionResponse"], keys, f"{where}.function_response")
        if role != "user":
            raise _Bad(400, "Please ensure that function response parts are only in user turns.")
        if not resp.get("name"):
            raise _Bad(400, f"* GenerateContentRequest.{where}.function_response.name: Name cannot be empty.\n")
        if not isinstance(resp.get("response"), dict):
            raise _Bad(
                400,
                f"Invalid value at '{where}.function_response.response' (type.googleapis.com/google.protobuf.Struct).",
            )
    return p


def _contents(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise _Bad(400, "* GenerateContentRequest.contents: contents is not specified\n")
    contents: list[dict[str, Any]] = []
    for i, c in enumerate(raw):
        content = _fields(c, _CONTENT_KEYS, f"contents[{i}]")
        role = content.get("role") or "user"
        if role not in {"user", "model"}:
            raise _Bad(400, "Please use a valid role: user, model.")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise _Bad(400, f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n")
        contents.append(
            {"role": role, "parts": [_part(p, role, f"contents[{i}].parts[{j}]") for j, p in enumerate(parts)]}
        )
    # function calling turn order, as the API checks it
    for i, content in enumerate(contents):
        calls = [p["functionCall"] for p in content["parts"] if "functionCall" in p]
        responses = [p["functionResponse"] for p in content["parts"] if "functionResponse" in p]
        prev = contents[i - 1] if i else None
        if calls and (prev is None or prev["role"] != "user"):
            raise _Bad(
                400,
                "Please ensure that function call turn comes immediately after a user turn or after a function "
                "response turn.",
            )
        if responses:
            prev_calls = [p["functionCall"] for p in prev["parts"] if "functionCall" in p] if prev else []
            if len(prev_calls) != len(responses):
                raise _Bad(
                    400,
                    "Please ensure that the number of function response parts is equal to the number of function "
                    "call parts of the function call turn.",
                )
            if sorted(c["name"] for c in prev_calls) != sorted(r["name"] for r in responses):
                raise _Bad(
                    400,
                    "Please ensure that function response names match the function call names of the function call "
                    "turn.",
                )
    return contents


def _check_signatures(contents: list[dict[str, Any]]) -> None:
    """Gemini 3: the first functionCall of every step in the current turn carries its thought signature."""
    start = 0
    for i, content in enumerate(contents):
        if content["role"] == "user" and any("functionResponse" not in p for p in content["parts"]):
            start = i
    for content in contents[start:]:
        calls = [p for p in content["parts"] if "functionCall" in p]
        if content["role"] == "model" and calls and "thoughtSignature" not in calls[0]:
            name = calls[0]["functionCall"]["name"]
            raise _Bad(
                400,
                "Function call is missing a thought_signature in functionCall parts. This is required for tools to "
                f"work correctly, and missing thought_signature may lead to degraded model performance. Additional "
                f"data, function call `{name}` , position 1. Please refer to "
                "https://ai.google.dev/gemini-api/docs/thought-signatures for more details.",
            )


def _tools(raw: Any) -> list[dict[str, Any]]:
    decls: list[dict[str, Any]] = []
    for i, tool in enumerate(raw or []):
        t = _fields(tool, _TOOL_KEYS, f"tools[{i}]")
        for j, d in enumerate(t.get("functionDeclarations") or []):
            where = f"tools[{i}].function_declarations[{j}]"
            decl = _fields(d, _DECL_KEYS, where)
            if not isinstance(decl.get("name"), str) or not _NAME.match(decl["name"]):
                raise _Bad(
                    400,
                    f"* GenerateContentRequest.{where}.name: Invalid function name. Must start with a letter or an "
                    "underscore. Must be a-z, A-Z, 0-9, or contain underscores, dots, colons and dashes, with a "
                    "maximum length of 64.\n",
                )
            if "parameters" in decl and "parametersJsonSchema" in decl:
                raise _Bad(
                    400,
                    f"* GenerateContentRequest.{where}: parameters and parameters_json_schema are mutually exclusive\n",
                )
            if "parameters" in decl:
                _schema(decl["parameters"], f"{where}.parameters")
            if "parametersJsonSchema" in decl and not isinstance(decl["parametersJsonSchema"], dict):
                raise _Bad(400, f"Invalid value at '{where}.parameters_json_schema'.")
            decls.append(decl)
    return decls


def _tool_config(raw: Any, decls: list[dict[str, Any]]) -> tuple[str, list[str]]:
    if raw is None:
        return "AUTO", []
    cfg = _fields(raw, {"functionCallingConfig", "retrievalConfig"}, "tool_config")
    fcc = _fields(
        cfg.get("functionCallingConfig") or {}, {"mode", "allowedFunctionNames"}, "tool_config.function_calling_config"
    )
    mode = fcc.get("mode", "AUTO")
    if mode not in {"AUTO", "ANY", "NONE", "VALIDATED", "MODE_UNSPECIFIED"}:
        raise _Bad(400, f"Invalid value at 'tool_config.function_calling_config.mode' ({mode!r}).")
    names = fcc.get("allowedFunctionNames") or []
    if names and mode not in {"ANY", "VALIDATED"}:
        raise _Bad(
            400,
            "* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: "
            "allowed_function_names may only be set when mode is ANY or VALIDATED.\n",
        )
    declared = {d["name"] for d in decls}
    for name in names:
        if name not in declared:
            raise _Bad(
                400,
                "* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: function "
                f"{name} is not declared.\n",
            )
    if mode != "NONE" and (mode != "AUTO" or names) and not decls:
        raise _Bad(
            400,
            "* GenerateContentRequest.tool_config.function_calling_config.mode: function calling config is set "
            "without function_declarations.\n",
        )
    return mode, names


def _generation_config(raw: Any) -> dict[str, Any]:
    gen = _fields(raw or {}, _GEN_KEYS, "generation_config")
    temp = gen.get("temperature")
    if temp is not None and not 0 <= temp <= 2:
        raise _Bad(
            400,
            "* GenerateContentRequest.generation_config.temperature: temperature must be between 0 and 2, got "
            f"{temp}\n",
        )
    top_p = gen.get("topP")
    if top_p is not None and not 0 <= top_p <= 1:
        raise _Bad(400, "* GenerateContentRequest.generation_config.top_p: top_p must be in the range [0.0, 1.0]\n")
    count = gen.get("candidateCount", 1)
    if not isinstance(count, int) or not 1 <= count <= 8:
        raise _Bad(400, "* GenerateContentRequest.generation_config.candidate_count: must be in the range [1, 8]\n")
    if len(gen.get("stopSequences") or []) > 5:
        raise _Bad(400, "* GenerateContentRequest.generation_config.stop_sequences: at most 5 stop sequences allowed\n")
    max_out = gen.get("maxOutputTokens")
    if max_out is not None and (not isinstance(max_out, int) or max_out < 1):
        raise _Bad(400, "* GenerateContentRequest.generation_config.max_output_tokens: must be positive\n")
    if "responseSchema" in gen:
        if "responseJsonSchema" in gen:
            raise _Bad(
                400,
                "* GenerateContentRequest.generation_config: response_schema and response_json_schema are mutually "
                "exclusive\n",
            )
        if gen.get("responseMimeType") != "application/json":
            raise _Bad(
                400,
                "* GenerateContentRequest.generation_config.response_mime_type: response_mime_type must be "
                "application/json when response_schema is set\n",
            )
        _schema(gen["responseSchema"], "generation_config.response_schema")
    thinking = _fields(
        gen.get("thinkingConfig") or {},
        {"includeThoughts", "thinkingBudget", "thinkingLevel"},
        "generation_config.thinking_config",
    )
    if "thinkingBudget" in thinking and "thinkingLevel" in thinking:
        raise _Bad(400, "thinking_budget and thinking_level are not supported together.")
    gen["thinkingConfig"] = thinking
    return gen


def _words(text: str) -> int:
    return len(text.split())


def _prompt_tokens(req: dict[str, Any], contents: list[dict[str, Any]]) -> int:
    texts = [p.get("text", "") for c in contents for p in c["parts"]]
    system = req.get("systemInstruction") or req.get("system_instruction") or {}
    texts += [p.get("text", "") for p in system.get("parts", []) if isinstance(p, dict)]
    return max(sum(_words(t) for t in texts), 1)


def _sample(schema: dict[str, Any]) -> Any:
    kind = str(schema.get("type", "STRING")).upper()
    if schema.get("enum"):
        return schema["enum"][0]
    if kind == "OBJECT":
        return {k: _sample(v) for k, v in (schema.get("properties") or {}).items()}
    if kind == "ARRAY":
        return [_sample(schema.get("items") or {})]
    return {"INTEGER": 1, "NUMBER": 1.5, "BOOLEAN": True}.get(kind, "emulated")


def _answer(
    model: str,
    req: dict[str, Any],
    contents: list[dict[str, Any]],
    decls: list[dict[str, Any]],
    mode: str,
    names: list[str],
    gen: dict[str, Any],
) -> tuple[list[dict[str, Any]], str, int]:
    """(parts, finishReason, thought tokens) of candidate 0."""
    last = contents[-1]
    responses = [p["functionResponse"] for p in last["parts"] if "functionResponse" in p]
    prompt = " ".join(p["text"] for p in last["parts"] if "text" in p)
    thoughts = 5 if "think" in model else 0
    parts: list[dict[str, Any]] = []
    if thoughts and gen["thinkingConfig"].get("includeThoughts"):
        parts.append({"text": "Thinking about the request.", "thought": True})
    if decls and mode != "NONE" and not responses and ("weather" in prompt.lower() or mode in {"ANY", "VALIDATED"}):
        name = names[0] if names else decls[0]["name"]
        cities = ["Paris", "Tokyo"] if "both" in prompt.lower() else ["Paris"]
        for k, city in enumerate(cities):
            call: dict[str, Any] = {"functionCall": {"name": name, "args": {"city": city}}}
            if k == 0:
                call["thoughtSignature"] = SIGNATURE
            parts.append(call)
        return parts, "STOP", thoughts
    if responses:
        text = "Emulated Gemini summary: " + "; ".join(
            f"{r['name']} returned {json.dumps(r['response'], sort_keys=True)}" for r in responses
        )
    else:
        text = "Emulated Gemini reply to: " + " ".join(prompt.split()[:20])
    if gen.get("responseMimeType") == "application/json":
        schema = gen.get("responseSchema") or gen.get("responseJsonSchema")
        text = json.dumps(_sample(schema) if schema else {"reply": text})
    finish = "STOP"
    max_out = gen.get("maxOutputTokens")
    if isinstance(max_out, int) and _words(text) > max_out:
        text, finish = " ".join(text.split()[:max_out]), "MAX_TOKENS"
    parts.append({"text": text})
    return parts, finish, thoughts


def _usage(prompt: int, parts: list[dict[str, Any]], thoughts: int, cached: bool, count: int = 1) -> dict[str, Any]:
    out_tokens = sum(_words(p.get("text", "")) for p in parts if not p.get("thought"))
    out_tokens += sum(3 for p in parts if "functionCall" in p)
    out_tokens *= count
    meta: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": out_tokens,
        "totalTokenCount": prompt + out_tokens + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    if thoughts:
        meta["thoughtsTokenCount"] = thoughts
    if cached:
        meta["cachedContentTokenCount"] = min(prompt, 4)
    return meta


def _vector(text: str, dims: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round((digest[i % 32] - 128) / 128, 6) for i in range(dims)]


def _check_key(request: Request) -> JSONResponse | None:
    key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
    if not key:
        return _error(
            403,
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key "
            "or other form of API consumer identity to call this API.",
        )
    if key != API_KEY:
        details = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ]
        return _error(400, "API key not valid. Please pass a valid API key.", details)
    return None


def _simulated(model: str) -> JSONResponse | None:
    if not model.startswith("err-") or model == "err-stream":
        return None
    code = int(model[4:])
    if code == 429:
        details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]
        return _error(
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            details,
            {"retry-after": "7"},
        )
    messages = {
        500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
        503: "The model is overloaded. Please try again later.",
        401: "Request had invalid authentication credentials.",
        404: f"models/{model} is not found for API version v1beta, or is not supported for generateContent.",
    }
    return _error(code, messages.get(code, f"emulated error {code}"))


def create_app() -> Starlette:
    counter = {"n": 0}

    async def handle(request: Request) -> Response:
        denied = _check_key(request)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "Invalid JSON payload received. Unexpected token.")
        request.app.state.requests.append(
            {"path": request.url.path, "query": str(request.url.query), "headers": dict(request.headers), "body": body}
        )
        if denied is not None:
            return denied
        model, _, action = request.path_params["target"].partition(":")
        if request.path_params["version"] not in {"v1beta", "v1"} or not action:
            return _error(404, "Not found.")
        simulated = _simulated(model)
        if simulated is not None:
            return simulated
        if model.startswith("slow-"):
            await asyncio.sleep(int(model[5:]) / 1000)
        try:
            if action == "embedContent":
                return _embed(body, model)
            if action == "batchEmbedContents":
                return _batch_embed(body, model)
            if action not in {"generateContent", "streamGenerateContent"}:
                return _error(404, f"Method {action} not found.")
            return _generate(request, body, model, action == "streamGenerateContent", counter)
        except _Bad as bad:
            return _error(bad.code, bad.message, bad.details)

    app = Starlette(routes=[Route("/{version}/models/{target:path}", handle, methods=["POST"])])
    app.state.requests = []
    return app


def _generate(request: Request, body: Any, model: str, stream: bool, counter: dict[str, int]) -> Response:
    req = _fields(body, _REQUEST_KEYS, "")
    contents = _contents(req.get("contents"))
    if "systemInstruction" in req:
        system = _fields(req["systemInstruction"], _CONTENT_KEYS, "system_instruction")
        for j, p in enumerate(system.get("parts") or []):
            if "text" not in _part(p, "user", f"system_instruction.parts[{j}]"):
                raise _Bad(400, "* GenerateContentRequest.system_instruction: only text parts are supported.\n")
    decls = _tools(req.get("tools"))
    mode, names = _tool_config(req.get("toolConfig"), decls)
    gen = _generation_config(req.get("generationConfig"))
    if model.startswith("gemini-3"):
        _check_signatures(contents)
    counter["n"] += 1
    response_id = f"emu-gemini-{counter['n']}"
    prompt = _prompt_tokens(req, contents)
    if model == "blocked":
        feedback = {"blockReason": "SAFETY", "safetyRatings": []}
        return JSONResponse(
            {
                "promptFeedback": feedback,
                "usageMetadata": {"promptTokenCount": prompt, "totalTokenCount": prompt},
                "modelVersion": model,
                "responseId": response_id,
            }
        )
    parts, finish, thoughts = _answer(model, req, contents, decls, mode, names, gen)
    if model == "safety":
        parts, finish = [], "SAFETY"
    count = gen.get("candidateCount", 1)
    cached = "cachedContent" in req
    if not stream:
        candidates = [
            {"content": {"parts": parts, "role": "model"}, "finishReason": finish, "index": i} for i in range(count)
        ]
        if not parts:
            candidates = [
                {
                    "finishReason": finish,
                    "index": 0,
                    "safetyRatings": [
                        {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}
                    ],
                }
            ]
        return JSONResponse(
            {
                "candidates": candidates,
                "usageMetadata": _usage(prompt, parts, thoughts, cached, count),
                "modelVersion": model,
                "responseId": response_id,
            }
        )
    events = _stream_events(model, parts, finish, prompt, thoughts, cached, response_id)
    if request.query_params.get("alt") == "sse":

        async def sse() -> AsyncIterator[bytes]:
            for event in events:
                yield b"data: " + json.dumps(event).encode() + b"\r\n\r\n"

        return StreamingResponse(sse(), media_type="text/event-stream")

    async def array() -> AsyncIterator[bytes]:
        for i, event in enumerate(events):
            yield (b"[" if i == 0 else b",\r\n") + json.dumps(event).encode()
        yield b"]"

    return StreamingResponse(array(), media_type="application/json")


def _stream_events(
    model: str, parts: list[dict[str, Any]], finish: str, prompt: int, thoughts: int, cached: bool, response_id: str
) -> list[dict[str, Any]]:
    pieces: list[dict[str, Any]] = []
    for part in parts:
        if "text" in part:
            words = part["text"].split(" ")
            for i in range(0, len(words), 3):
                text = " ".join(words[i : i + 3]) + (" " if i + 3 < len(words) else "")
                pieces.append({**part, "text": text})
        else:
            pieces.append(part)
    calls = [p for p in pieces if "functionCall" in p]
    # function calls arrive whole, together, in the last event
    groups = [[p] for p in pieces if "functionCall" not in p] + ([calls] if calls else [])
    if not groups:
        groups = [[]]
    running = {"promptTokenCount": prompt, "totalTokenCount": prompt}
    events = []
    for i, group in enumerate(groups):
        cand: dict[str, Any] = {"index": 0}
        if group:
            cand["content"] = {"parts": group, "role": "model"}
        last = i == len(groups) - 1
        if last:
            cand["finishReason"] = finish
        events.append(
            {
                "candidates": [cand],
                "usageMetadata": _usage(prompt, parts, thoughts, cached) if last else running,
                "modelVersion": model,
                "responseId": response_id,
            }
        )
        if model == "err-stream" and i == 0:
            events.append({"error": {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}})
            break
    return events


def _embed_content(raw: Any, where: str) -> tuple[str, int]:
    req = _fields(raw, {"model", "content", "taskType", "title", "outputDimensionality"}, where)
    content = _fields(req.get("content"), _CONTENT_KEYS, f"{where}content")
    texts = [
        _part(p, "user", f"{where}content.parts[{j}]").get("text", "") for j, p in enumerate(content.get("parts") or [])
    ]
    if not texts:
        raise _Bad(400, f"* EmbedContentRequest.{where}content.parts: contents.parts must not be empty.\n")
    dims = req.get("outputDimensionality") or 8
    return " ".join(texts), dims


def _embed(body: Any, model: str) -> Response:
    text, dims = _embed_content(body, "")
    return JSONResponse({"embedding": {"values": _vector(text, dims)}})


def _batch_embed(body: Any, model: str) -> Response:
    req = _fields(body, {"requests"}, "")
    out = []
    for i, item in enumerate(req.get("requests") or []):
        if not isinstance(item, dict) or item.get("model") != f"models/{model}":
            raise _Bad(
                400,
                f"* BatchEmbedContentsRequest.requests[{i}].model: Model names should match the parent model: "
                f"models/{model}\n",
            )
        text, dims = _embed_content(item, f"requests[{i}].")
        out.append({"values": _vector(text, dims)})
    if not out:
        raise _Bad(400, "* BatchEmbedContentsRequest.requests: requests must not be empty\n")
    return JSONResponse({"embeddings": out})
