"""Google Gemini API (generativelanguage `v1beta`): OpenAI chat ⇄ `generateContent`, embeddings ⇄ `embedContent`.

Requests are built in `gemini_request`. Answers: text parts → `content`, thought parts →
`reasoning_content`, `functionCall` parts → `tool_calls` (ids generated unless Gemini gave one);
STOP → stop (tool_calls when calls were made), MAX_TOKENS → length, SAFETY and the other filter
reasons → content_filter, a blocked prompt → content_policy_violation; `usageMetadata` → usage with
cached (`cachedContentTokenCount`) and reasoning (`thoughtsTokenCount`, counted in completion tokens).

Gemini 3 rejects a function-call history without the `thoughtSignature` it issued. Signatures travel on
OpenAI tool calls as `extra_content.google.thought_signature` (Google's own OpenAI-compatible
convention); a history without one (another model's, or a client that drops unknown fields) gets the
documented placeholder signature on the first call of each step.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from services.router.providers.base import (
    ChatStream,
    JsonObj,
    Target,
    Translator,
    UpstreamRequest,
    retry_after_seconds,
    with_params,
)
from services.router.providers.chat_shapes import (
    ChunkMaker,
    choice,
    completion,
    dumps,
    embedding_inputs,
    embeddings_list,
    tool_call_id,
    usage,
)
from services.router.providers.gemini_request import build_request
from services.router.sse import SseEvent
from shared.errors import (
    AuthenticationError,
    ContentPolicyViolation,
    ContextLengthExceeded,
    GatewayError,
    UpstreamError,
    error_for_status,
)
from shared.schemas.chat import Usage
from shared.schemas.openai import ChatCompletionRequest, EmbeddingsRequest

_ENC = msgspec.json.Encoder()
_FILTERED = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "LANGUAGE"}


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

    def chat_request(self, req: ChatCompletionRequest, target: Target, *, stream: bool) -> UpstreamRequest:
        action = ":streamGenerateContent?alt=sse" if stream else ":generateContent"
        return UpstreamRequest(
            "POST",
            _model_path(target) + action,
            _headers(target),
            _ENC.encode(build_request(with_params(req, target), target.model)),
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

    def embeddings_request(self, req: EmbeddingsRequest, target: Target) -> UpstreamRequest:
        req = with_params(req, target)
        inputs = embedding_inputs(req)
        model = target.model if "/" in target.model else f"models/{target.model}"
        extra: JsonObj = {}
        if req.dimensions is not None:
            extra["outputDimensionality"] = req.dimensions
        task = req.extra.get("task_type", req.extra.get("taskType"))
        if isinstance(task, str):
            extra["taskType"] = task
        if len(inputs) == 1:
            url = _model_path(target) + ":embedContent"
            out: JsonObj = {"content": {"parts": [{"text": inputs[0]}]}, **extra}
        else:
            url = _model_path(target) + ":batchEmbedContents"
            out = {"requests": [{"model": model, "content": {"parts": [{"text": t}]}, **extra} for t in inputs]}
        return UpstreamRequest("POST", url, _headers(target), _ENC.encode(out))

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
