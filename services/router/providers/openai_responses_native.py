"""OpenAI Responses pass-through (pure): a `/v1/responses` client's own request for an OpenAI deployment,
and what the request record needs from the answer, read without changing it.

Request: the client's body with only `model` replaced (deployment params that the Responses API
documents, e.g. `store: false`, fill keys the client left out), with the client's `OpenAI-Beta` header.

Answer: usage (`input_tokens` already includes `input_tokens_details.cached_tokens`; cache writes are
`cache_write_tokens`; `output_tokens` includes the reasoning tokens; `web_search_call` items are web
searches) and a finish reason from the
response's status. A stream is read from its terminal event (`response.completed`, `.incomplete` or
`.failed`), which carries the whole response; the events before it are not decoded.
"""

from __future__ import annotations

import msgspec

from services.router.providers.base import Target, UpstreamRequest
from services.router.providers.native_body import Summary, merge_header_lists, params_for, with_model
from services.router.sse import SseEvent
from shared.errors import (
    GatewayError,
    GatewayTimeoutError,
    InvalidRequestError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
)
from shared.schemas.chat import NativeRequest, Usage

PROTOCOL = "openai-responses"
# request parameters of the Responses API a deployment's params may default
PARAMS = frozenset(
    {
        "background", "context_management", "include", "instructions", "max_output_tokens", "max_tool_calls",
        "metadata", "parallel_tool_calls", "prompt_cache_key", "prompt_cache_retention", "reasoning",
        "safety_identifier", "service_tier", "store", "temperature", "text", "tool_choice", "tools",
        "top_logprobs", "top_p", "truncation", "user",
    }
)  # fmt: skip
_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_CALLS = frozenset({"function_call", "custom_tool_call"})  # items the client's own code must answer
_INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}
_ERRORS: dict[str, type[GatewayError]] = {
    "rate_limit_exceeded": RateLimitError,
    "server_error": UpstreamError,
    "server_is_overloaded": ServiceUnavailableError,
    "slow_down": ServiceUnavailableError,
    "invalid_prompt": InvalidRequestError,
    "vector_store_timeout": GatewayTimeoutError,
}


class _InputDetails(msgspec.Struct):
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None


class _OutputDetails(msgspec.Struct):
    reasoning_tokens: int | None = None


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    input_tokens_details: _InputDetails | None = None
    output_tokens_details: _OutputDetails | None = None


class _Item(msgspec.Struct):
    type: str = ""


class _Incomplete(msgspec.Struct):
    reason: str | None = None


class _Error(msgspec.Struct):
    code: str | None = None
    message: str | None = None


class _Response(msgspec.Struct):
    status: str | None = None
    incomplete_details: _Incomplete | None = None
    output: list[_Item] = []
    usage: _Usage | None = None
    error: _Error | None = None


class _Event(msgspec.Struct):
    type: str = ""
    response: _Response | None = None
    code: str | None = None
    message: str | None = None


_RESPONSE = msgspec.json.Decoder(_Response)
_EVENT = msgspec.json.Decoder(_Event)


def request(native: NativeRequest, target: Target, *, stream: bool) -> UpstreamRequest:
    """The upstream request for a client's own Responses body (`stream` is the body's own flag)."""
    headers = {"content-type": "application/json"}
    if target.api_key:
        headers["authorization"] = f"Bearer {target.api_key}"
    headers.update({k.lower(): v for k, v in target.headers.items()})
    betas = merge_header_lists(native.headers.get("openai-beta"), headers.get("openai-beta"))
    if betas:
        headers["openai-beta"] = betas
    body = with_model(native.body, target.model, params_for(target.params, PARAMS))
    return UpstreamRequest("POST", f"{target.api_base.rstrip('/')}/responses", headers, body)


def _usage(u: _Usage, output: list[_Item]) -> Usage:
    details = u.input_tokens_details
    return Usage(
        web_search_requests=sum(1 for item in output if item.type == "web_search_call"),
        input_tokens=u.input_tokens or 0,
        output_tokens=u.output_tokens or 0,
        cached_tokens=(details.cached_tokens or 0) if details else 0,
        cache_write_tokens=(details.cache_write_tokens or 0) if details else 0,
        reasoning_tokens=(u.output_tokens_details.reasoning_tokens or 0) if u.output_tokens_details else 0,
    )


def _finish(resp: _Response) -> str:
    if resp.status == "completed":
        return "tool_calls" if any(item.type in _CALLS for item in resp.output) else "stop"
    if resp.status == "incomplete":
        reason = resp.incomplete_details.reason if resp.incomplete_details else None
        return _INCOMPLETE.get(reason or "", "length")
    return ""


def _summary(resp: _Response) -> Summary:
    return Summary(_usage(resp.usage, resp.output) if resp.usage is not None else None, _finish(resp))


def summary(body: bytes) -> Summary:
    """Usage and finish reason of a non-stream `response` (empty if the body cannot be read: the client
    still gets it as it is)."""
    try:
        return _summary(_RESPONSE.decode(body))
    except msgspec.DecodeError:
        return Summary()


def _error(code: str | None, message: str | None) -> GatewayError:
    return _ERRORS.get(code or "", UpstreamError)(f"OpenAI: {message or code or 'the response failed'}")


class StreamReader:
    """Follows a Responses event stream: usage and finish reason from its terminal event, its end, and
    failures (`error`, `response.failed`).

    `feed` every event in order; it raises the taxonomy error for a failure (which the client has been
    sent as it is: the caller relays before it feeds).
    """

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.finish_reason = ""
        self.done = False

    def feed(self, event: SseEvent) -> None:
        if event.event and event.event not in _TERMINAL and event.event != "error":
            return
        try:
            ev = _EVENT.decode(event.data)
        except msgspec.DecodeError:
            return  # relayed as it came; the client may read what the record cannot
        if ev.type in _TERMINAL:
            self.done = True
            if ev.response is not None:
                result = _summary(ev.response)
                self.usage, self.finish_reason = result.usage or self.usage, result.finish_reason
                if ev.type == "response.failed":
                    err = ev.response.error or _Error()
                    raise _error(err.code, err.message)
        elif ev.type == "error":
            raise _error(ev.code, ev.message)

    def finish(self) -> None:
        """The upstream stream ended: it must have ended the response."""
        if not self.done:
            raise UpstreamError("OpenAI's Responses stream ended before its final event.")
