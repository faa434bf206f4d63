"""The canonical OpenAI shapes gatehouse routes: the chat and embeddings requests, the chat completion
and the stream chunk, as msgspec Structs.

Ingress decodes a client's body into `ChatCompletionRequest` once; the guard and the router read the
same Struct. Every parameter the OpenAI Chat Completions API documents is a typed field; top-level
fields it does not document (vendor extensions of OpenAI-compatible servers such as vLLM's `top_k` or
`guided_json`, or a provider knob passed through `extra_body`) are kept in `extra` and sent upstream
unchanged, so OpenAI-compatible pass-through loses nothing.

The request Structs are mutable on purpose: the guard writes redacted text back in place. Responses
travel the bus as the provider's JSON bytes (relayed without a copy); every reader decodes them with
`ChatCompletion` / `ChatCompletionChunk`.

Free-form JSON values (JSON schemas, `logit_bias`, vendor extras) are typed `object`: msgspec decodes
them to plain JSON values (dict, list, str, int, float, bool, None).
"""

from __future__ import annotations

from typing import Literal

import msgspec

# numbers keep the form the client wrote (1 stays 1, 0.5 stays 0.5)
Number = int | float
Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class _Body(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base of request parts: absent optional fields stay absent when encoded again. So that what a
    client sent is what goes upstream, optional fields default to None (or empty), never to a value."""


# ---- request: content parts -------------------------------------------------------------------
class ImageUrl(_Body):
    url: str
    detail: str | None = None


class InputAudio(_Body):
    data: str
    format: str | None = None


class FileRef(_Body):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class ContentPart(_Body):
    """One part of a message's content. One Struct for every part type (`text`, `image_url`,
    `input_audio`, `file`, `refusal`, …) so a part type added by a provider still travels."""

    type: str
    text: str | None = None
    image_url: ImageUrl | None = None
    input_audio: InputAudio | None = None
    file: FileRef | None = None
    refusal: str | None = None
    # prompt caching marker understood by Anthropic-backed and some OpenAI-compatible servers
    cache_control: dict[str, object] | None = None


# ---- request: messages ------------------------------------------------------------------------
class FunctionCall(_Body):
    name: str
    arguments: str | None = None


class CustomCall(_Body):
    name: str
    input: str | None = None


class ToolCall(_Body):
    id: str
    type: str | None = None
    function: FunctionCall | None = None
    custom: CustomCall | None = None
    # Google's OpenAI convention for carrying a Gemini thought signature on a tool call
    extra_content: dict[str, object] | None = None


class AudioRef(_Body):
    id: str


class Message(_Body):
    """A chat message of any role; which fields apply depends on the role, as in the OpenAI API."""

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    audio: AudioRef | None = None
    function_call: FunctionCall | None = None
    # reasoning text some OpenAI-compatible servers return and accept back (DeepSeek, vLLM)
    reasoning_content: str | None = None
    # Anthropic thinking blocks (with signatures) a previous answer returned, sent back on this turn
    thinking_blocks: list[dict[str, object]] | None = None
    # Mistral: this assistant message is a prefix the answer continues
    prefix: bool | None = None
    cache_control: dict[str, object] | None = None


# ---- request: tools and options ---------------------------------------------------------------
class FunctionDef(_Body):
    name: str
    description: str | None = None
    parameters: dict[str, object] | None = None
    strict: bool | None = None


class CustomToolDef(_Body):
    name: str
    description: str | None = None
    format: dict[str, object] | None = None


class Tool(_Body):
    type: str | None = None
    function: FunctionDef | None = None
    custom: CustomToolDef | None = None
    cache_control: dict[str, object] | None = None


class JsonSchemaFormat(_Body):
    name: str
    description: str | None = None
    schema: dict[str, object] | None = None
    strict: bool | None = None


class ResponseFormat(_Body):
    type: str  # text | json_object | json_schema
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Body):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class Prediction(_Body):
    type: str | None = None
    content: str | list[ContentPart] | None = None


class AudioOutput(_Body):
    voice: str
    format: str


class ChatCompletionRequest(_Body):
    """`POST /v1/chat/completions`: every documented parameter, plus the undocumented ones in `extra`."""

    model: str
    messages: list[Message]
    audio: AudioOutput | None = None
    frequency_penalty: Number | None = None
    function_call: str | dict[str, object] | None = None
    functions: list[FunctionDef] | None = None
    logit_bias: dict[str, Number] | None = None
    logprobs: bool | None = None
    max_completion_tokens: int | None = None
    max_tokens: int | None = None
    metadata: dict[str, str] | None = None
    modalities: list[str] | None = None
    n: int | None = None
    parallel_tool_calls: bool | None = None
    prediction: Prediction | None = None
    presence_penalty: Number | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    reasoning_effort: str | None = None
    response_format: ResponseFormat | None = None
    safety_identifier: str | None = None
    seed: int | None = None
    service_tier: str | None = None
    stop: str | list[str] | None = None
    store: bool | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: Number | None = None
    tool_choice: str | dict[str, object] | None = None
    tools: list[Tool] | None = None
    top_logprobs: int | None = None
    top_p: Number | None = None
    user: str | None = None
    verbosity: str | None = None
    web_search_options: dict[str, object] | None = None
    # top-level fields the API does not document, exactly as the client sent them
    extra: dict[str, object] = {}


class EmbeddingsRequest(_Body):
    """`POST /v1/embeddings`."""

    model: str
    # a string, or an array of strings, of token ids, or of token-id arrays
    input: str | list[str | int | list[int]]
    dimensions: int | None = None
    encoding_format: str | None = None
    user: str | None = None
    extra: dict[str, object] = {}


# ---- responses --------------------------------------------------------------------------------
class PromptTokensDetails(msgspec.Struct, kw_only=True):
    cached_tokens: int | None = None
    audio_tokens: int | None = None
    # prompt tokens written to a provider's cache (gatehouse's Anthropic translation reports them here)
    cache_write_tokens: int | None = None


class CompletionTokensDetails(msgspec.Struct, kw_only=True):
    reasoning_tokens: int | None = None
    audio_tokens: int | None = None
    accepted_prediction_tokens: int | None = None
    rejected_prediction_tokens: int | None = None


class CompletionUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int | None = 0
    completion_tokens: int | None = 0
    total_tokens: int | None = None
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


class ToolCallDelta(msgspec.Struct, kw_only=True):
    index: int | None = None
    id: str | None = None
    type: str | None = None
    function: FunctionCallDelta | None = None


class FunctionCallDelta(msgspec.Struct, kw_only=True):
    name: str | None = None
    arguments: str | dict[str, object] | None = None


class ResponseMessage(msgspec.Struct, kw_only=True):
    role: str = "assistant"
    content: str | list[ContentPart] | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    function_call: FunctionCallDelta | None = None
    reasoning_content: str | None = None
    annotations: list[dict[str, object]] | None = None
    thinking_blocks: list[dict[str, object]] | None = None


class Choice(msgspec.Struct, kw_only=True):
    index: int = 0
    message: ResponseMessage = msgspec.field(default_factory=ResponseMessage)
    finish_reason: str | None = None
    # where a server says which stop sequence ended the answer (vLLM, SGLang, gatehouse's translators)
    stop_reason: str | int | None = None
    matched_stop: str | int | None = None
    stop_sequence: str | None = None


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str = ""
    object: str = "chat.completion"
    created: int = 0
    model: str = ""
    choices: list[Choice] = []
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None
    service_tier: str | None = None


class Delta(msgspec.Struct, kw_only=True):
    role: str | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    function_call: FunctionCallDelta | None = None
    reasoning_content: str | None = None


class ChunkChoice(msgspec.Struct, kw_only=True):
    index: int = 0
    delta: Delta = msgspec.field(default_factory=Delta)
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    matched_stop: str | int | None = None
    stop_sequence: str | None = None


class ChatCompletionChunk(msgspec.Struct, kw_only=True):
    id: str = ""
    object: str = "chat.completion.chunk"
    created: int = 0
    model: str = ""
    choices: list[ChunkChoice] = []
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None


# ---- decoding and encoding --------------------------------------------------------------------
def _known(cls: type[msgspec.Struct]) -> frozenset[str]:
    return frozenset(f for f in cls.__struct_fields__ if f != "extra")


CHAT_FIELDS = _known(ChatCompletionRequest)
EMBEDDINGS_FIELDS = _known(EmbeddingsRequest)

_CHAT = msgspec.json.Decoder(ChatCompletionRequest)
_EMBEDDINGS = msgspec.json.Decoder(EmbeddingsRequest)
_TOP = msgspec.json.Decoder(dict[str, msgspec.Raw])
_VALUE = msgspec.json.Decoder()
_JSON = msgspec.json.Encoder()
COMPLETION = msgspec.json.Decoder(ChatCompletion)
CHUNK = msgspec.json.Decoder(ChatCompletionChunk)


def _extras(raw: bytes, known: frozenset[str]) -> dict[str, object]:
    top = _TOP.decode(raw)
    return {k: _VALUE.decode(v) for k, v in top.items() if k not in known}


def decode_chat(raw: bytes) -> ChatCompletionRequest:
    """A chat request body → its Struct, undocumented top-level fields kept in `extra`.

    Raises msgspec.DecodeError / ValidationError (with the JSON path) for a body that does not fit.
    """
    req = _CHAT.decode(raw)
    extra = _extras(raw, CHAT_FIELDS)
    if extra:
        req.extra = extra
    return req


def decode_embeddings(raw: bytes) -> EmbeddingsRequest:
    req = _EMBEDDINGS.decode(raw)
    extra = _extras(raw, EMBEDDINGS_FIELDS)
    if extra:
        req.extra = extra
    return req


def chat_from_builtins(body: dict[str, object]) -> ChatCompletionRequest:
    """A chat request built as plain JSON values (by a surface translator) → its Struct."""
    known = {k: v for k, v in body.items() if k in CHAT_FIELDS}
    req = msgspec.convert(known, ChatCompletionRequest)
    extra = {k: v for k, v in body.items() if k not in CHAT_FIELDS}
    if extra:
        req.extra = extra
    return req


def to_json(req: ChatCompletionRequest | EmbeddingsRequest) -> bytes:
    """The request as the JSON body an OpenAI-compatible server takes: documented fields, then `extra`.
    Absent fields stay absent."""
    if not req.extra:
        return _JSON.encode(req)  # `extra` is empty, so omitted
    known = CHAT_FIELDS if isinstance(req, ChatCompletionRequest) else EMBEDDINGS_FIELDS
    extra = {k: v for k, v in req.extra.items() if k not in known}
    body = _JSON.encode(msgspec.structs.replace(req, extra={}))
    if not extra:
        return body
    # the documented fields' object, continued with the extras' members (`model` is required: never `{}`)
    return body[:-1] + b"," + _JSON.encode(extra)[1:]
