"""Anthropic Messages pass-through (pure): a `/v1/messages` client's own request for an Anthropic deployment,
and what the request record needs from the answer, read without changing it.

Request: the client's body with only `model` replaced (deployment params that Anthropic documents fill
keys the client left out); the client's `anthropic-version` wins over the deployment's, and its
`anthropic-beta` values are sent together with any the deployment configures.

Answer: usage in gatehouse's (OpenAI) convention — Anthropic's `input_tokens` excludes the cache, so
input = input_tokens + cache_read_input_tokens + cache_creation_input_tokens, with the reads as
`cached_tokens` and the writes as `cache_write_tokens` (those with a one-hour lifetime, priced higher,
also as `cache_write_1h_tokens`), web searches from `server_tool_use` — and `stop_reason` as a
finish reason. A stream
reports input usage in `message_start` and cumulative counts in `message_delta`; only those events (and
`error`) are decoded, the text deltas are not.
"""

from __future__ import annotations

import msgspec

from services.router.providers.anthropic import API_VERSION, AnthropicTranslator
from services.router.providers.base import Target, UpstreamRequest
from services.router.providers.native_body import Summary, merge_header_lists, params_for, with_model
from services.router.sse import SseEvent
from shared.errors import UpstreamError
from shared.schemas.chat import NativeRequest, Usage

PROTOCOL = "anthropic-messages"
# top-level request parameters of the Messages API (GA and beta) a deployment's params may default
PARAMS = frozenset(
    {
        "max_tokens", "system", "metadata", "stop_sequences", "temperature", "top_p", "top_k", "thinking",
        "tool_choice", "tools", "service_tier", "output_config", "container", "context_management",
        "mcp_servers", "inference_geo", "speed", "cache_control",
    }
)  # fmt: skip
FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_ERRORS = AnthropicTranslator()  # stateless: reads Anthropic error objects into the taxonomy


class _CacheCreation(msgspec.Struct):
    ephemeral_1h_input_tokens: int | None = None


class _ServerToolUse(msgspec.Struct):
    web_search_requests: int | None = None


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation: _CacheCreation | None = None
    server_tool_use: _ServerToolUse | None = None


class _Message(msgspec.Struct):
    stop_reason: str | None = None
    usage: _Usage | None = None


class _Delta(msgspec.Struct):
    stop_reason: str | None = None


class _Event(msgspec.Struct):
    type: str = ""
    message: _Message | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None


_MESSAGE = msgspec.json.Decoder(_Message)
_EVENT = msgspec.json.Decoder(_Event)
_READ = frozenset({"message_start", "message_delta", "message_stop", "error"})


def request(native: NativeRequest, target: Target, *, stream: bool) -> UpstreamRequest:
    """The upstream request for a client's own Messages body (`stream` is the body's own flag)."""
    base = target.api_base.rstrip("/")
    url = f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"
    headers = {"content-type": "application/json", "anthropic-version": target.api_version or API_VERSION}
    if target.api_key:
        headers["x-api-key"] = target.api_key
    headers.update({k.lower(): v for k, v in target.headers.items()})
    if native.headers.get("anthropic-version"):
        headers["anthropic-version"] = native.headers["anthropic-version"]
    betas = merge_header_lists(native.headers.get("anthropic-beta"), headers.get("anthropic-beta"))
    if betas:
        headers["anthropic-beta"] = betas
    body = with_model(native.body, target.model, params_for(target.params, PARAMS))
    return UpstreamRequest("POST", url, headers, body)


class _Counts:
    __slots__ = ("cache_creation", "cache_creation_1h", "cache_read", "input", "output", "web_searches")

    def __init__(self) -> None:
        self.input = self.output = self.cache_read = self.cache_creation = 0
        self.cache_creation_1h = self.web_searches = 0

    def update(self, u: _Usage) -> None:
        # message_delta counts are cumulative; absent (null) fields keep what message_start said
        if u.input_tokens is not None:
            self.input = u.input_tokens
        if u.output_tokens is not None:
            self.output = u.output_tokens
        if u.cache_read_input_tokens is not None:
            self.cache_read = u.cache_read_input_tokens
        if u.cache_creation_input_tokens is not None:
            self.cache_creation = u.cache_creation_input_tokens
        if u.cache_creation is not None and u.cache_creation.ephemeral_1h_input_tokens is not None:
            self.cache_creation_1h = u.cache_creation.ephemeral_1h_input_tokens
        if u.server_tool_use is not None and u.server_tool_use.web_search_requests is not None:
            self.web_searches = u.server_tool_use.web_search_requests

    def usage(self) -> Usage:
        return Usage(
            input_tokens=self.input + self.cache_read + self.cache_creation,
            output_tokens=self.output,
            cached_tokens=self.cache_read,
            cache_write_tokens=self.cache_creation,
            cache_write_1h_tokens=min(self.cache_creation_1h, self.cache_creation),
            web_search_requests=self.web_searches,
        )


def summary(body: bytes) -> Summary:
    """Usage and finish reason of a non-stream `message` (empty if the body cannot be read: the client
    still gets it as it is)."""
    try:
        msg = _MESSAGE.decode(body)
    except msgspec.DecodeError:
        return Summary()
    counts = _Counts()
    if msg.usage is not None:
        counts.update(msg.usage)
    return Summary(counts.usage() if msg.usage is not None else None, FINISH.get(msg.stop_reason or "", ""))


class StreamReader:
    """Follows a Messages event stream: usage, finish reason, its end, and an `error` event.

    `feed` every event in order; it raises the taxonomy error for an `error` event (which the client has
    been sent as it is: the caller relays before it feeds).
    """

    def __init__(self) -> None:
        self._counts = _Counts()
        self._seen_usage = False
        self.finish_reason = ""
        self.done = False

    @property
    def usage(self) -> Usage | None:
        return self._counts.usage() if self._seen_usage else None

    def feed(self, event: SseEvent) -> None:
        if event.event and event.event not in _READ:
            return  # ping, content blocks and their deltas: nothing the record needs
        try:
            ev = _EVENT.decode(event.data)
        except msgspec.DecodeError:
            return  # relayed as it came; the client may read what the record cannot
        if ev.type == "message_start" and ev.message is not None and ev.message.usage is not None:
            self._counts.update(ev.message.usage)
            self._seen_usage = True
        elif ev.type == "message_delta":
            if ev.usage is not None:
                self._counts.update(ev.usage)
                self._seen_usage = True
            if ev.delta is not None and ev.delta.stop_reason:
                self.finish_reason = FINISH.get(ev.delta.stop_reason, "stop")
        elif ev.type == "message_stop":
            self.done = True
        elif ev.type == "error":
            raise _ERRORS.parse_error(0, event.data, {})

    def finish(self) -> None:
        """The upstream stream ended: it must have ended the message."""
        if not self.done:
            raise UpstreamError("Anthropic's stream ended before message_stop.")
