"""Google Gemini API (generativelanguage `v1beta`): OpenAI chat ⇄ `generateContent`, embeddings ⇄ `embedContent`.

Requests: system messages → `systemInstruction`; user/assistant → `contents` with roles user/model
(consecutive turns of one role merged); images and files → `inlineData` (data URLs) or `fileData`;
assistant `tool_calls` → `functionCall` parts (thought signatures carried back, see below); `tool`
messages → `functionResponse` parts named after the call they answer; tools → `functionDeclarations`;
`tool_choice` → `toolConfig.functionCallingConfig`; sampling, JSON mode and structured outputs →
`generationConfig`; `reasoning_effort` → `thinkingConfig`.

Gemini 3 rejects a function-call history without the `thoughtSignature` it issued. Signatures travel on
OpenAI tool calls as `extra_content.google.thought_signature` (Google's own OpenAI-compatible
convention); a history without one (another model's, or a client that drops unknown fields) gets the
documented placeholder signature on the first call of each step.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import msgspec

from services.router.providers.base import (
    ChatStream,
    JsonObj,
    SseEvent,
    Target,
    Translator,
    UpstreamRequest,
    merge_params,
    retry_after_seconds,
)
from services.router.providers.chat_shapes import (
    ChunkMaker,
    ContentPart,
    FunctionDef,
    Message,
    ToolCall,
    choice,
    completion,
    data_url,
    dumps,
    embedding_inputs,
    embeddings_list,
    json_arguments,
    max_tokens_of,
    messages_of,
    stop_list,
    text_of,
    tool_call_id,
    tool_choice_of,
    tools_of,
    usage,
)
from services.router.providers.gemini_schema import Unrepresentable, has_properties, plain_json_schema, to_gemini
from shared.errors import (
    AuthenticationError,
    ContentPolicyViolation,
    ContextLengthExceeded,
    GatewayError,
    InvalidRequestError,
    UpstreamError,
    error_for_status,
)
from shared.schemas.chat import Usage

_ENC = msgspec.json.Encoder()
PLACEHOLDER_SIGNATURE = "skip_thought_signature_validator"
_FILTERED = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "LANGUAGE"}
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


# --- response shapes -------------------------------------------------------------------------------


class _FunctionCall(msgspec.Struct):
    name: str
    args: dict[str, object] | None = None
    id: str | None = None


class _Part(msgspec.Struct, rename="camel"):
    text: str | None = None
    thought: bool | None = None
    thought_signature: str | None = None
    function_call: _FunctionCall | None = None


class _Content(msgspec.Struct):
    parts: list[_Part] = []


class _Candidate(msgspec.Struct, rename="camel"):
    content: _Content | None = None
    finish_reason: str | None = None
    index: int = 0


class _UsageMetadata(msgspec.Struct, rename="camel"):
    prompt_token_count: int = 0
    candidates_token_count: int = 0
    total_token_count: int = 0
    cached_content_token_count: int = 0
    thoughts_token_count: int = 0
    tool_use_prompt_token_count: int = 0


class _PromptFeedback(msgspec.Struct, rename="camel"):
    block_reason: str | None = None


class _Response(msgspec.Struct, rename="camel"):
    candidates: list[_Candidate] = []
    usage_metadata: _UsageMetadata | None = None
    prompt_feedback: _PromptFeedback | None = None
    model_version: str | None = None
    error: dict[str, object] | None = None


_RESPONSE = msgspec.json.Decoder(_Response)


# --- requests --------------------------------------------------------------------------------------


def _model_path(target: Target) -> str:
    model = target.model if "/" in target.model else f"models/{target.model}"
    return f"{target.api_base.rstrip('/')}/{target.api_version or 'v1beta'}/{model}"


def _headers(target: Target) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if target.api_key:
        headers["x-goog-api-key"] = target.api_key
    headers.update(target.headers)
    return headers


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
            mime = f"audio/{part.input_audio.format}"
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
        names[call.id] = call.function.name
        part: JsonObj = {
            "functionCall": {
                "name": call.function.name,
                "args": json_arguments(call.function.arguments, f"messages[{i}].tool_calls[{j}].function.arguments"),
            }
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


def _response_format(payload: Mapping[str, object], gen: JsonObj) -> None:
    fmt = payload.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") in {None, "text"}:
        return
    gen["responseMimeType"] = "application/json"
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequestError("response_format.json_schema.schema is required.", param="response_format")
        try:
            gen["responseSchema"] = to_gemini(schema, where="response_format.json_schema.schema")
        except Unrepresentable:
            gen["responseJsonSchema"] = plain_json_schema(schema)
    elif fmt.get("type") != "json_object":
        raise InvalidRequestError(f"Unsupported response_format type {fmt.get('type')!r}.", param="response_format")


def _thinking(effort: object, model: str) -> JsonObj | None:
    if not isinstance(effort, str) or effort not in _BUDGETS:
        return None
    version = _VERSION.search(model)
    if version is not None and int(version.group(1)) >= 3:
        return {"thinkingLevel": _LEVELS[effort]}
    return {"thinkingBudget": _BUDGETS[effort]}


def _generation_config(payload: Mapping[str, object], model: str) -> JsonObj:
    gen: JsonObj = {}
    for src, dst in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("seed", "seed"),
    ):
        if payload.get(src) is not None:
            gen[dst] = payload[src]
    max_tokens = max_tokens_of(payload)
    if max_tokens is not None:
        gen["maxOutputTokens"] = max_tokens
    stop = stop_list(payload)
    if stop:
        gen["stopSequences"] = stop
    n = payload.get("n")
    if isinstance(n, int) and n > 1:
        gen["candidateCount"] = n
    _response_format(payload, gen)
    thinking = _thinking(payload.get("reasoning_effort"), model)
    if thinking is not None:
        gen["thinkingConfig"] = thinking
    return gen


def build_request(payload: Mapping[str, object], model: str) -> JsonObj:
    """The `GenerateContentRequest` body for an OpenAI chat body (deployment params already merged)."""
    system, contents = _contents(messages_of(payload))
    req: JsonObj = {"contents": contents}
    if system:
        req["systemInstruction"] = {"parts": system}
    tools = tools_of(payload)
    mode, names = tool_choice_of(payload)
    if tools:
        if mode == "auto" and names:  # "allowed_tools" in auto mode: offer only those functions
            tools = [t for t in tools if t.name in names]
        req["tools"] = [{"functionDeclarations": [_declaration(t, i) for i, t in enumerate(tools)]}]
        if mode != "auto":
            req["toolConfig"] = _tool_config(mode, names)
    gen = _generation_config(payload, model)
    if gen:
        req["generationConfig"] = gen
    for src, dst in (("safety_settings", "safetySettings"), ("cached_content", "cachedContent")):
        value = payload.get(src, payload.get(dst))
        if value is not None:
            req[dst] = value
    return req


# --- responses -------------------------------------------------------------------------------------


def _finish(reason: str | None, has_calls: bool) -> str:
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _FILTERED:
        return "content_filter"
    return "tool_calls" if has_calls else "stop"


def _usage(meta: _UsageMetadata) -> JsonObj:
    prompt = meta.prompt_token_count + meta.tool_use_prompt_token_count
    # Gemini bills thinking as output: OpenAI counts reasoning tokens inside completion_tokens too
    output = meta.candidates_token_count + meta.thoughts_token_count
    return usage(
        prompt,
        output,
        cached=meta.cached_content_token_count,
        reasoning=meta.thoughts_token_count,
        total=meta.total_token_count or None,
    )


def _tool_call(call: _FunctionCall, signature: str | None, call_id: str) -> JsonObj:
    out: JsonObj = {
        "id": call.id or call_id,
        "type": "function",
        "function": {"name": call.name, "arguments": dumps(call.args or {})},
    }
    if signature:
        out["extra_content"] = {"google": {"thought_signature": signature}}
    return out


def _raise_for(resp: _Response) -> None:
    if resp.error is not None:
        raise _error_from(resp.error, 0, {})
    if not resp.candidates and resp.prompt_feedback is not None and resp.prompt_feedback.block_reason:
        raise ContentPolicyViolation(f"Gemini blocked the prompt ({resp.prompt_feedback.block_reason}).")


def _decode(data: bytes) -> _Response:
    try:
        return _RESPONSE.decode(data)
    except msgspec.DecodeError as exc:
        raise UpstreamError(f"Gemini returned an unreadable response: {exc}") from exc


class GeminiStream(ChatStream):
    """`streamGenerateContent?alt=sse`: every event is a whole `GenerateContentResponse` with new parts."""

    def __init__(self, target: Target, response_id: str, created: int) -> None:
        super().__init__(target, response_id, created)
        self._chunks = ChunkMaker(response_id, created, target.model)
        self._calls: dict[int, int] = {}  # candidate index → tool calls so far
        self._finished: set[int] = set()
        self._usage: JsonObj | None = None
        self._calls_total = 0

    def feed(self, event: SseEvent) -> list[JsonObj | bytes]:
        if not event.data or event.data == b"[DONE]":
            return []
        resp = _decode(event.data)
        _raise_for(resp)
        out: list[JsonObj | bytes] = []
        for cand in resp.candidates:
            idx = cand.index
            if idx not in self._calls:
                self._calls[idx] = 0
                out.append(self._chunks.delta({"role": "assistant", "content": ""}, idx))
            for part in cand.content.parts if cand.content is not None else ():
                if part.function_call is not None:
                    n = self._calls[idx]
                    call = _tool_call(
                        part.function_call, part.thought_signature, tool_call_id(self.response_id, self._calls_total)
                    )
                    self._calls[idx] = n + 1
                    self._calls_total += 1
                    out.append(self._chunks.delta({"tool_calls": [{"index": n, **call}]}, idx))
                elif part.text:
                    key = "reasoning_content" if part.thought else "content"
                    out.append(self._chunks.delta({key: part.text}, idx))
            if cand.finish_reason:
                reason = _finish(cand.finish_reason, self._calls[idx] > 0)
                self.finish_reason = reason
                self._finished.add(idx)
                out.append(self._chunks.delta({}, idx, reason))
        if resp.usage_metadata is not None:
            meta = resp.usage_metadata
            self._usage = _usage(meta)
            self.usage = Usage(
                input_tokens=meta.prompt_token_count + meta.tool_use_prompt_token_count,
                output_tokens=meta.candidates_token_count + meta.thoughts_token_count,
                cached_tokens=meta.cached_content_token_count,
                reasoning_tokens=meta.thoughts_token_count,
            )
        return out

    def finish(self) -> list[JsonObj | bytes]:
        if not self._calls or not self._finished:
            raise UpstreamError("Gemini's stream ended before the model finished its answer.")
        return [self._chunks.usage(self._usage)] if self._usage is not None else []

    def done(self) -> bool:
        # the last event carries the finish reason and the final usage together
        return bool(self._calls) and len(self._finished) == len(self._calls)


class GeminiTranslator(Translator):
    kind = "gemini"
    supports_embeddings = True

    def chat_request(self, body: JsonObj, target: Target, *, stream: bool) -> UpstreamRequest:
        payload = merge_params(body, target)
        action = ":streamGenerateContent?alt=sse" if stream else ":generateContent"
        return UpstreamRequest(
            "POST",
            _model_path(target) + action,
            _headers(target),
            _ENC.encode(build_request(payload, target.model)),
        )

    def parse_chat(self, data: bytes, target: Target, response_id: str, created: int) -> JsonObj | bytes:
        resp = _decode(data)
        _raise_for(resp)
        if not resp.candidates:
            raise UpstreamError("Gemini returned no candidates.")
        choices: list[JsonObj] = []
        n = 0
        for cand in resp.candidates:
            texts: list[str] = []
            thoughts: list[str] = []
            calls: list[JsonObj] = []
            for part in cand.content.parts if cand.content is not None else ():
                if part.function_call is not None:
                    calls.append(_tool_call(part.function_call, part.thought_signature, tool_call_id(response_id, n)))
                    n += 1
                elif part.text:
                    (thoughts if part.thought else texts).append(part.text)
            reason = _finish(cand.finish_reason, bool(calls))
            choices.append(choice(cand.index, "".join(texts), calls, reason, "".join(thoughts)))
        meta = resp.usage_metadata
        return completion(response_id, created, target.model, choices, _usage(meta) if meta is not None else None)

    def open_stream(self, target: Target, response_id: str, created: int) -> ChatStream:
        return GeminiStream(target, response_id, created)

    def embeddings_request(self, body: JsonObj, target: Target) -> UpstreamRequest:
        payload = merge_params(body, target)
        inputs = embedding_inputs(payload)
        model = target.model if "/" in target.model else f"models/{target.model}"
        extra: JsonObj = {}
        if isinstance(payload.get("dimensions"), int):
            extra["outputDimensionality"] = payload["dimensions"]
        task = payload.get("task_type", payload.get("taskType"))
        if isinstance(task, str):
            extra["taskType"] = task
        if len(inputs) == 1:
            url = _model_path(target) + ":embedContent"
            req: JsonObj = {"content": {"parts": [{"text": inputs[0]}]}, **extra}
        else:
            url = _model_path(target) + ":batchEmbedContents"
            req = {"requests": [{"model": model, "content": {"parts": [{"text": t}]}, **extra} for t in inputs]}
        return UpstreamRequest("POST", url, _headers(target), _ENC.encode(req))

    def parse_embeddings(self, data: bytes, target: Target) -> JsonObj | bytes:
        try:
            payload = msgspec.json.decode(data, type=_EmbedResponse)
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"Gemini returned an unreadable embeddings response: {exc}") from exc
        found = [payload.embedding] if payload.embedding is not None else payload.embeddings
        tokens = payload.usage_metadata.prompt_token_count if payload.usage_metadata else 0
        return embeddings_list([e.values for e in found], target.model, tokens)

    def parse_error(self, status: int, data: bytes, headers: Mapping[str, str]) -> GatewayError:
        try:
            payload = msgspec.json.decode(data)
        except msgspec.DecodeError:
            payload = None
        if isinstance(payload, list) and payload:  # the non-SSE stream endpoint wraps errors in an array
            payload = payload[0]
        err = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(err, dict):
            return error_for_status(status)(f"Gemini returned HTTP {status}.", retry_after=retry_after_seconds(headers))
        return _error_from(err, status, headers)


class _Embedding(msgspec.Struct):
    values: list[float] = []


class _EmbedResponse(msgspec.Struct, rename="camel"):
    embedding: _Embedding | None = None
    embeddings: list[_Embedding] = []
    usage_metadata: _UsageMetadata | None = None


def _error_from(err: Mapping[str, object], status: int, headers: Mapping[str, str]) -> GatewayError:
    """A Google `{"error": {code, message, status, details}}` as the taxonomy error."""
    code = err.get("code")
    status = status or (code if isinstance(code, int) else 500)
    message = str(err.get("message") or f"Gemini returned HTTP {status}.")
    retry_after = retry_after_seconds(headers)
    reasons: set[str] = set()
    details = err.get("details")
    for detail in details if isinstance(details, list) else ():
        if not isinstance(detail, dict):
            continue
        if isinstance(detail.get("reason"), str):
            reasons.add(detail["reason"])
        delay = detail.get("retryDelay")
        if retry_after is None and isinstance(delay, str) and delay.endswith("s"):
            try:
                retry_after = float(delay[:-1])
            except ValueError:
                pass
    if "API_KEY_INVALID" in reasons or err.get("status") == "UNAUTHENTICATED":
        return AuthenticationError(message, retry_after=retry_after)
    if status == 400 and "token" in message and ("exceeds the maximum" in message or "too long" in message):
        return ContextLengthExceeded(message, param="messages")
    return error_for_status(status)(message, retry_after=retry_after)
