"""Same-protocol pass-through: a client's own request goes to a deployment that speaks its protocol unchanged
(only the model id replaced), and the answer comes back unchanged — a body with `Result(native=True)`, or
every server-sent event relayed as `NativeEvents` — while usage and the finish reason are read on the way.

Which deployments: `anthropic-messages` ↔ kind `anthropic`, `openai-responses` ↔ kind `openai`
(shared.config.NATIVE_PROTOCOL), unless the provider sets `passthrough: false`. A request whose body
uses what the canonical form cannot express (`NativeRequest.untranslatable`) may only be served this
way; other deployments are skipped. Ingress leaves `native` off a request that no deployment of its
model would take unchanged, so only its translation crosses the bus.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from services.router.core import Deployment
from services.router.providers import anthropic_native, openai_responses_native
from services.router.providers.base import Target, Translator, UpstreamRequest
from services.router.providers.native_body import Summary, sse_frame
from services.router.sse import SseEvent, SseParser
from services.router.upstream import Upstream
from shared.errors import GatewayError, InvalidRequestError
from shared.schemas.chat import ChatRequest, NativeEvents, NativeRequest, Reply, Usage

Send = Callable[[Reply], Awaitable[None]]


class StreamReader(Protocol):
    """Follows one native stream for the record (providers/<protocol>_native.StreamReader)."""

    @property
    def usage(self) -> Usage | None: ...

    @property
    def finish_reason(self) -> str: ...

    @property
    def done(self) -> bool: ...

    def feed(self, event: SseEvent) -> None: ...

    def finish(self) -> None: ...


class RequestBuilder(Protocol):
    def __call__(self, native: NativeRequest, target: Target, *, stream: bool) -> UpstreamRequest: ...


@dataclass(frozen=True, slots=True)
class NativeProtocol:
    """One client protocol a provider kind speaks natively, as its pure pass-through functions."""

    name: str  # for messages
    request: RequestBuilder
    summary: Callable[[bytes], Summary]
    reader: Callable[[], StreamReader]


PROTOCOLS: dict[str, NativeProtocol] = {
    anthropic_native.PROTOCOL: NativeProtocol(
        "Anthropic Messages",
        anthropic_native.request,
        anthropic_native.summary,
        anthropic_native.StreamReader,
    ),
    openai_responses_native.PROTOCOL: NativeProtocol(
        "OpenAI Responses",
        openai_responses_native.request,
        openai_responses_native.summary,
        openai_responses_native.StreamReader,
    ),
}


class Progress(Protocol):
    """What the dispatcher tracks of one attempt (services.router.attempt.Progress)."""

    sent: int
    ttft_ms: float
    usage: Usage | None
    finish_reason: str
    native: bool  # the answer is in the client's protocol
    relayed_error: bool  # the provider's own error event reached the client: nothing more to write
    headers: Mapping[str, str]  # the provider's response headers

    def first(self) -> tuple[str, str]:
        """Before the first event goes out: (deployment, model) to name on it."""
        ...


def serves(native: NativeRequest | None, dep: Deployment) -> bool:
    """The deployment speaks the client's protocol and takes its request unchanged."""
    return (
        native is not None and native.protocol in PROTOCOLS and dep.provider_config.native_protocol == native.protocol
    )


def may_serve(native: NativeRequest | None, dep: Deployment) -> bool:
    """False for a deployment of another protocol when the request cannot be translated for it."""
    return native is None or not native.untranslatable or serves(native, dep)


def unserved(native: NativeRequest, model: str) -> GatewayError:
    """The error for a request no deployment of `model` may serve (see `may_serve`)."""
    protocol = PROTOCOLS.get(native.protocol)
    name = protocol.name if protocol else native.protocol
    shown = "; ".join(native.untranslatable[:3]) + ("; …" if len(native.untranslatable) > 3 else "")
    return InvalidRequestError(
        f"This request uses what only a deployment speaking {name} can serve ({shown}), "
        f"and model `{model}` has no such deployment.",
        param=native.untranslatable[0].split(":", 1)[0] or None,
        code="unsupported_for_model",
    )


class NativeCaller:
    """Runs one pass-through attempt: the upstream call and the relay, with the record's reading on the way."""

    def __init__(self, upstream: Upstream, translators: Mapping[str, Translator]) -> None:
        self._upstream = upstream
        self._translators = translators

    async def attempt(self, req: ChatRequest, dep: Deployment, send: Send, progress: Progress, started: float) -> bytes:
        """The whole answer body (non-stream), or b'' after relaying every event of the stream."""
        native = req.native
        assert native is not None
        protocol = PROTOCOLS[native.protocol]
        translator = self._translators.get(dep.target.kind)
        if translator is None:
            raise GatewayError(f"Provider kind {dep.target.kind!r} is not available in this router.")
        ureq = protocol.request(native, dep.target, stream=req.stream)
        if not req.stream:
            resp = await self._upstream.send(ureq, dep.timeout_s, dep.connect_timeout_s, dep.limits)
            progress.headers = resp.headers
            if resp.status >= 400:
                raise translator.parse_error(resp.status, resp.body, resp.headers)
            result = protocol.summary(resp.body)
            progress.usage, progress.finish_reason = result.usage, result.finish_reason
            progress.native = True
            return resp.body
        async with self._upstream.stream(ureq, dep.timeout_s, dep.connect_timeout_s, dep.limits) as upstream:
            progress.headers = upstream.headers
            if upstream.status >= 400:
                raise translator.parse_error(upstream.status, await upstream.read(), upstream.headers)
            reader = protocol.reader()
            parser = SseParser(dep.limits.max_event_bytes)
            progress.native = True
            async for raw in upstream.chunks():
                # everything one network read carried goes to the client in one message
                await self._relay(parser.feed(raw), reader, send, progress, started)
                if reader.done:
                    break
            await self._relay(parser.close(), reader, send, progress, started)
            reader.finish()
        return b""

    async def _relay(
        self, events: list[SseEvent], reader: StreamReader, send: Send, progress: Progress, started: float
    ) -> None:
        if not events:
            return
        deployment = model = ""
        if not progress.sent:
            deployment, model = progress.first()
            progress.ttft_ms = (time.monotonic() - started) * 1000
        progress.sent += len(events)
        await send(NativeEvents([sse_frame(e) for e in events], deployment, model))
        try:
            for event in events:
                reader.feed(event)
        except GatewayError:
            progress.relayed_error = True
            raise
        finally:
            progress.usage = reader.usage or progress.usage
            progress.finish_reason = reader.finish_reason or progress.finish_reason
