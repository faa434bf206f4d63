"""Typed reading of canonical chat output: a `chat.completion`, and a chunk stream as flat content deltas.

Both surfaces read the router's OpenAI-form replies the same way: text, refusal, tool calls (whose id
and name come first and whose arguments arrive in pieces, possibly for several calls), the finish
reason and the usage that may come on a final chunk with no choices. Only choice 0 is read: the
surfaces never ask for `n > 1`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

JsonObj = dict[str, object]


def obj(value: object) -> JsonObj:
    """`value` if it is a JSON object, else an empty one (absent and null read the same)."""
    return value if isinstance(value, dict) else {}


def text_of(value: object) -> str:
    return value if isinstance(value, str) else ""


def int_of(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


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


def read_usage(value: object) -> TokenUsage | None:
    usage = obj(value)
    if not usage:
        return None
    return TokenUsage(
        prompt=int_of(usage.get("prompt_tokens")),
        completion=int_of(usage.get("completion_tokens")),
        cached=int_of(obj(usage.get("prompt_tokens_details")).get("cached_tokens")),
        cache_write=int_of(obj(usage.get("prompt_tokens_details")).get("cache_write_tokens")),
        reasoning=int_of(obj(usage.get("completion_tokens_details")).get("reasoning_tokens")),
    )


def matched_stop(choice: JsonObj) -> str | None:
    """The stop sequence that ended generation, where the provider says (vLLM `stop_reason`, SGLang
    `matched_stop`, or a translator's `stop_sequence`); plain OpenAI never does."""
    for key in ("stop_sequence", "matched_stop", "stop_reason"):
        value = choice.get(key)
        if isinstance(value, str) and value:
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


def read_completion(completion: JsonObj) -> CompletionView:
    choices = completion.get("choices")
    choice = obj(choices[0]) if isinstance(choices, list) and choices else {}
    message = obj(choice.get("message"))
    content = message.get("content")
    if isinstance(content, list):  # some servers answer with content parts
        content = "".join(text_of(obj(part).get("text")) for part in content)
    calls: list[ToolCall] = []
    raw_calls = message.get("tool_calls")
    for n, raw in enumerate(raw_calls if isinstance(raw_calls, list) else []):
        call = obj(raw)
        fn = obj(call.get("function"))
        calls.append(ToolCall(text_of(call.get("id")) or f"call_{n}", text_of(fn.get("name")), _args(fn)))
    legacy = obj(message.get("function_call"))
    if legacy and not calls:
        calls.append(ToolCall("call_0", text_of(legacy.get("name")), _args(legacy)))
    return CompletionView(
        id=text_of(completion.get("id")),
        created=int_of(completion.get("created")),
        text=text_of(content),
        refusal=text_of(message.get("refusal")),
        tool_calls=calls,
        finish_reason=text_of(choice.get("finish_reason")),
        stop_sequence=matched_stop(choice),
        usage=read_usage(completion.get("usage")),
    )


def _args(fn: JsonObj) -> str:
    args = fn.get("arguments")
    if isinstance(args, str):
        return args
    # a few servers send the arguments already parsed
    return msgspec.json.encode(args).decode() if isinstance(args, dict) else ""


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

    def read(self, chunk: JsonObj) -> list[Delta]:
        self.chunks += 1
        self.id = self.id or text_of(chunk.get("id"))
        self.created = self.created or int_of(chunk.get("created"))
        usage = read_usage(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        out: list[Delta] = []
        choices = chunk.get("choices")
        for raw in choices if isinstance(choices, list) else []:
            choice = obj(raw)
            if int_of(choice.get("index")) != 0:
                continue
            delta = obj(choice.get("delta"))
            content = text_of(delta.get("content"))
            if content:
                out.append(TextDelta(content))
            refusal = text_of(delta.get("refusal"))
            if refusal:
                out.append(RefusalDelta(refusal))
            calls = delta.get("tool_calls")
            for position, call in enumerate(calls if isinstance(calls, list) else []):
                self._tool_delta(obj(call), position, out)
            legacy = obj(delta.get("function_call"))
            if legacy:
                self._tool_delta({"index": 0, "function": legacy}, 0, out)
            reason = text_of(choice.get("finish_reason"))
            if reason:
                self.finish_reason = reason
                self.stop_sequence = matched_stop(choice)
        return out

    def flush(self) -> list[Delta]:
        """Tool calls still waiting for a name at the end of the stream, started as they are."""
        out: list[Delta] = []
        for index, pending in sorted(self._calls.items()):
            if pending.slot < 0:
                self._start(index, pending, out)
        return out

    def _tool_delta(self, call: JsonObj, position: int, out: list[Delta]) -> None:
        index = call.get("index")
        key = index if isinstance(index, int) else position
        pending = self._calls.setdefault(key, _Pending())
        fn = obj(call.get("function"))
        pending.call_id = pending.call_id or text_of(call.get("id"))
        pending.name = pending.name or text_of(fn.get("name"))
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


def decode_chunk(chunk: bytes | JsonObj) -> JsonObj:
    """A chunk as the router relays it (JSON bytes) or already decoded; anything but an object reads empty."""
    if isinstance(chunk, dict):
        return chunk
    try:
        return obj(msgspec.json.decode(chunk))
    except msgspec.DecodeError:
        return {}
