"""Typed reading of canonical chat output: a `chat.completion`, and a chunk stream as flat content deltas.

Both surfaces read the router's OpenAI-form replies the same way, decoded with the shared
`ChatCompletion` / `ChatCompletionChunk` Structs: text, refusal, tool calls (whose id and name come
first and whose arguments arrive in pieces, possibly for several calls), the finish reason and the
usage that may come on a final chunk with no choices. Only choice 0 is read: the surfaces never ask
for `n > 1`. A completion that does not fit the OpenAI shape is the upstream's error (502); a chunk
that does not fit reads empty, as one that is not JSON does, so a stream is not cut for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from shared.errors import UpstreamError
from shared.schemas.openai import (
    CHUNK,
    COMPLETION,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    CompletionUsage,
    FunctionCallDelta,
    ToolCallDelta,
)

JsonObj = dict[str, object]


def obj(value: object) -> JsonObj:
    """`value` if it is a JSON object, else an empty one (absent and null read the same)."""
    return value if isinstance(value, dict) else {}


def text_of(value: object) -> str:
    return value if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """OpenAI usage: `prompt` includes `cached` (cache reads) and `cache_write`, `completion` includes
    `reasoning`."""

    prompt: int = 0
    completion: int = 0
    cached: int = 0
    reasoning: int = 0
    cache_write: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def read_usage(usage: CompletionUsage | None) -> TokenUsage | None:
    if usage is None:
        return None
    prompt, completion = usage.prompt_tokens_details, usage.completion_tokens_details
    return TokenUsage(
        prompt=usage.prompt_tokens or 0,
        completion=usage.completion_tokens or 0,
        cached=(prompt.cached_tokens or 0) if prompt is not None else 0,
        cache_write=(prompt.cache_write_tokens or 0) if prompt is not None else 0,
        reasoning=(completion.reasoning_tokens or 0) if completion is not None else 0,
    )


def matched_stop(choice: Choice | ChunkChoice) -> str | None:
    """The stop sequence that ended generation, where the provider says (vLLM `stop_reason`, SGLang
    `matched_stop`, or a translator's `stop_sequence`); plain OpenAI never does."""
    for value in (choice.stop_sequence, choice.matched_stop, choice.stop_reason):
        if isinstance(value, str) and value:  # an int is a stop token id, not a sequence
            return value
    return None


@dataclass(frozen=True, slots=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class CompletionView:
    id: str
    created: int
    text: str
    refusal: str
    tool_calls: list[ToolCall]
    finish_reason: str
    stop_sequence: str | None
    usage: TokenUsage | None


def completion_of(completion: bytes | JsonObj) -> ChatCompletion:
    """The router's completion (JSON bytes, or already decoded) as the shared Struct."""
    try:
        if isinstance(completion, bytes):
            return COMPLETION.decode(completion)
        return msgspec.convert(completion, ChatCompletion)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise UpstreamError(f"The provider's answer is not a chat completion: {exc}") from exc


def read_completion(completion: bytes | JsonObj) -> CompletionView:
    comp = completion_of(completion)
    choice = comp.choices[0] if comp.choices else Choice()
    message = choice.message
    content = message.content
    if isinstance(content, list):  # some servers answer with content parts
        content = "".join(part.text or "" for part in content)
    calls: list[ToolCall] = []
    for n, call in enumerate(message.tool_calls or []):
        fn = call.function or FunctionCallDelta()
        calls.append(ToolCall(call.id or f"call_{n}", fn.name or "", _args(fn)))
    legacy = message.function_call
    if legacy is not None and not calls and _named_or_args(legacy):
        calls.append(ToolCall("call_0", legacy.name or "", _args(legacy)))
    return CompletionView(
        id=comp.id,
        created=comp.created,
        text=content or "",
        refusal=message.refusal or "",
        tool_calls=calls,
        finish_reason=choice.finish_reason or "",
        stop_sequence=matched_stop(choice),
        usage=read_usage(comp.usage),
    )


def _args(fn: FunctionCallDelta) -> str:
    args = fn.arguments
    if isinstance(args, str):
        return args
    # a few servers send the arguments already parsed
    return msgspec.json.encode(args).decode() if args is not None else ""


def _named_or_args(fn: FunctionCallDelta) -> bool:
    """Whether a legacy `function_call` says anything (`{}` is read as absent)."""
    return fn.name is not None or fn.arguments is not None


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class RefusalDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolStart:
    """A new tool call: `slot` is its 0-based position among this stream's tool calls."""

    slot: int
    call_id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolArgs:
    slot: int
    arguments: str


Delta = TextDelta | RefusalDelta | ToolStart | ToolArgs


@dataclass(slots=True)
class _Pending:
    call_id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)
    slot: int = -1


@dataclass(slots=True)
class ChunkReader:
    """Turns `chat.completion.chunk` objects into deltas; remembers id, finish reason and usage."""

    id: str = ""
    created: int = 0
    finish_reason: str = ""
    stop_sequence: str | None = None
    usage: TokenUsage | None = None
    chunks: int = 0
    _calls: dict[int, _Pending] = field(default_factory=dict)
    _started: int = 0

    def read(self, chunk: ChatCompletionChunk) -> list[Delta]:
        self.chunks += 1
        self.id = self.id or chunk.id
        self.created = self.created or chunk.created
        usage = read_usage(chunk.usage)
        if usage is not None:
            self.usage = usage
        out: list[Delta] = []
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            delta = choice.delta
            if delta.content:
                out.append(TextDelta(delta.content))
            if delta.refusal:
                out.append(RefusalDelta(delta.refusal))
            for position, call in enumerate(delta.tool_calls or []):
                self._tool_delta(call, position, out)
            legacy = delta.function_call
            if legacy is not None and _named_or_args(legacy):
                self._tool_delta(ToolCallDelta(index=0, function=legacy), 0, out)
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
                self.stop_sequence = matched_stop(choice)
        return out

    def flush(self) -> list[Delta]:
        """Tool calls still waiting for a name at the end of the stream, started as they are."""
        out: list[Delta] = []
        for index, pending in sorted(self._calls.items()):
            if pending.slot < 0:
                self._start(index, pending, out)
        return out

    def _tool_delta(self, call: ToolCallDelta, position: int, out: list[Delta]) -> None:
        key = call.index if call.index is not None else position
        pending = self._calls.setdefault(key, _Pending())
        fn = call.function or FunctionCallDelta()
        pending.call_id = pending.call_id or call.id or ""
        pending.name = pending.name or fn.name or ""
        args = _args(fn)
        if pending.slot >= 0:
            if args:
                out.append(ToolArgs(pending.slot, args))
            return
        if args:
            pending.arguments.append(args)
        if pending.name:  # a call is announced once its name is known; its arguments may have come first
            self._start(key, pending, out)

    def _start(self, key: int, pending: _Pending, out: list[Delta]) -> None:
        pending.slot = self._started
        self._started += 1
        call_id = pending.call_id or f"call_{self.id or 'gh'}_{key}"
        out.append(ToolStart(pending.slot, call_id, pending.name))
        if pending.arguments:
            out.append(ToolArgs(pending.slot, "".join(pending.arguments)))
            pending.arguments.clear()


def decode_chunk(chunk: bytes | JsonObj) -> ChatCompletionChunk:
    """A chunk as the router relays it (JSON bytes) or already decoded; one that does not fit reads empty."""
    try:
        if isinstance(chunk, bytes):
            return CHUNK.decode(chunk)
        return msgspec.convert(chunk, ChatCompletionChunk)
    except msgspec.DecodeError:  # ValidationError included
        return ChatCompletionChunk()
