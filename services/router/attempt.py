"""One attempt on one deployment (the I/O of the request path): translate the request, send it, relay the
answer chunk by chunk to the ingress inbox, within the attempt's time limits; what it learnt is in `Progress`."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping

import msgspec

from services.router import native
from services.router.core import Deployment
from services.router.providers.base import JsonObj, Translator, openai_usage
from services.router.upstream import Upstream
from shared.errors import GatewayError, GatewayTimeoutError, ServiceUnavailableError, UpstreamError
from shared.schemas.chat import ChatRequest, Chunk, ChunkBatch, Reply, Usage
from shared.schemas.openai import COMPLETION, ChatCompletion

Send = Callable[[Reply], Awaitable[None]]
_JSON = msgspec.json.Encoder()


def _is_usage_only(chunk: JsonObj | bytes) -> bool:
    if isinstance(chunk, bytes):
        return b'"usage"' in chunk and (b'"choices":[]' in chunk or b'"choices": []' in chunk)
    return not chunk.get("choices") and "usage" in chunk


class Progress:
    """What one attempt has learnt so far (shared with the stream loop)."""

    __slots__ = (
        "attempt_ttft_ms",
        "deployment",
        "finish_reason",
        "headers",
        "model",
        "native",
        "on_first",
        "relayed_error",
        "sent",
        "t0",
        "ttft_ms",
        "usage",
    )

    def __init__(self, deployment: str = "", model: str = "") -> None:
        self.sent = 0
        self.ttft_ms = 0.0
        self.usage: Usage | None = None
        self.finish_reason = ""
        self.native = False  # the answer is in the client's own protocol (services.router.native)
        self.relayed_error = False
        self.headers: Mapping[str, str] = {}  # the provider's response headers (rate limits)
        self.deployment = deployment  # named on the first stream message (x-gatehouse-deployment)
        self.model = model
        self.on_first: Callable[[], None] | None = None  # the first byte is about to reach the client
        self.t0 = time.monotonic()
        self.attempt_ttft_ms = 0.0  # from this attempt's start

    def first(self) -> tuple[str, str]:
        """Before the first message of a stream goes out: (deployment, model) to name on it."""
        self.attempt_ttft_ms = (time.monotonic() - self.t0) * 1000
        if self.on_first is not None:
            self.on_first()
            self.on_first = None
        return self.deployment, self.model


class DeadlineReached(Exception):
    """The request's own deadline passed during an attempt."""


class AttemptRunner:
    """Runs attempts: the same-protocol pass-through (services.router.native) or a translation."""

    def __init__(self, upstream: Upstream, translators: Mapping[str, Translator]) -> None:
        self._upstream = upstream
        self._translators = translators
        self._native = native.NativeCaller(upstream, translators)

    async def timed(
        self,
        req: ChatRequest,
        dep: Deployment,
        send: Send,
        progress: Progress,
        started: float,
        *,
        probe: bool = False,
    ) -> bytes:
        """One attempt within its time limits: a stream's first token within the deployment's TTFT timeout
        (then only the request's deadline: long streams are not cut), a whole answer within its timeout.
        A probe of a deployment whose breaker was open gets at most half the time left, so that its request
        can still fail over when the deployment is still down."""
        loop = asyncio.get_running_loop()
        remaining = (req.deadline - time.time()) if req.deadline else math.inf
        first_limit = dep.ttft_timeout_s if req.stream else dep.timeout_s + 1.0
        if probe and remaining < 2 * first_limit:
            first_limit = remaining / 2
        limit = min(first_limit, remaining)
        deadline_first = remaining <= first_limit
        try:
            async with asyncio.timeout_at(loop.time() + limit) as cm:
                if req.stream:

                    def streaming() -> None:
                        nonlocal deadline_first
                        rest = (req.deadline - time.time()) if req.deadline else None
                        cm.reschedule(loop.time() + rest if rest is not None else None)
                        deadline_first = True

                    progress.on_first = streaming
                return await self._attempt(req, dep, send, progress, started)
        except TimeoutError:
            if deadline_first:
                raise DeadlineReached from None
            if req.stream:
                shown = limit if probe else dep.ttft_timeout_s
                raise GatewayTimeoutError(f"Deployment {dep.id} sent no first token within {shown:g}s.") from None
            shown = limit if probe else dep.timeout_s
            raise GatewayTimeoutError(f"Deployment {dep.id} did not finish within {shown:g}s.") from None

    async def _attempt(
        self, req: ChatRequest, dep: Deployment, send: Send, progress: Progress, started: float
    ) -> bytes:
        """Run one deployment; returns the whole body (non-stream) or b'' after streaming all chunks."""
        response_id = f"chatcmpl-{req.request_id}"
        created = int(time.time())
        translator = self._translators.get(dep.target.kind)
        if translator is None:
            raise GatewayError(f"Provider kind {dep.target.kind!r} is not available in this router.")
        key_env = dep.api_key_env
        if key_env and not dep.target.api_key:
            # an optional provider without its key: the gateway's gap, not the client's; fail over
            raise ServiceUnavailableError(
                f"Provider {dep.target.provider!r} has no API key configured ({key_env} is not set)."
            )
        if native.serves(req.native, dep):
            return await self._native.attempt(req, dep, send, progress, started)
        if req.embeddings is not None:
            ureq = translator.embeddings_request(req.embeddings, dep.target)
            resp = await self._upstream.send(ureq, dep.timeout_s, dep.connect_timeout_s, dep.limits)
            progress.headers = resp.headers
            if resp.status >= 400:
                raise translator.parse_error(resp.status, resp.body, resp.headers)
            parsed = translator.parse_embeddings(resp.body, dep.target)
            progress.usage = openai_usage(parsed)
            return parsed if isinstance(parsed, bytes) else _JSON.encode(parsed)
        assert req.chat is not None
        if not req.stream:
            ureq = translator.chat_request(req.chat, dep.target, stream=False)
            resp = await self._upstream.send(ureq, dep.timeout_s, dep.connect_timeout_s, dep.limits)
            progress.headers = resp.headers
            if resp.status >= 400:
                raise translator.parse_error(resp.status, resp.body, resp.headers)
            completion = translator.parse_chat(resp.body, dep.target, response_id, created)
            progress.usage = translator.usage_of(completion)
            progress.finish_reason = _finish_reason(completion)
            return completion if isinstance(completion, bytes) else _JSON.encode(completion)
        ureq = translator.chat_request(req.chat, dep.target, stream=True)
        async with self._upstream.stream(ureq, dep.timeout_s, dep.connect_timeout_s, dep.limits) as upstream:
            progress.headers = upstream.headers
            if upstream.status >= 400:
                raise translator.parse_error(upstream.status, await upstream.read(), upstream.headers)
            stream = translator.open_stream(dep.target, response_id, created)
            parser = translator.stream_parser(dep.limits.max_event_bytes)
            async for raw in upstream.chunks():
                # everything one network read carried goes to the client in one message
                await self._emit(req, [c for e in parser.feed(raw) for c in stream.feed(e)], send, progress, started)
                if stream.done():
                    break
            tail = [c for e in parser.close() for c in stream.feed(e)]
            await self._emit(req, tail + stream.finish(), send, progress, started)
            progress.usage = stream.usage or progress.usage
            progress.finish_reason = stream.finish_reason or progress.finish_reason
        return b""

    async def _emit(
        self, req: ChatRequest, chunks: list[JsonObj | bytes], send: Send, progress: Progress, started: float
    ) -> None:
        out: list[bytes] = []
        if chunks and not progress.sent:
            _check_first(chunks[0])
        for chunk in chunks:
            if _is_usage_only(chunk):
                progress.usage = openai_usage(chunk) or progress.usage
                if not req.include_usage:
                    continue
            out.append(chunk if isinstance(chunk, bytes) else _JSON.encode(chunk))
        if not out:
            return
        deployment = model = ""
        if not progress.sent:
            deployment, model = progress.first()
            progress.ttft_ms = (time.monotonic() - started) * 1000
        progress.sent += len(out)
        await send(Chunk(out[0], deployment, model) if len(out) == 1 else ChunkBatch(out, deployment, model))


def _finish_reason(completion: JsonObj | bytes) -> str:
    """The first finish reason of a completion: the provider's bytes, or a translator's dict. A body that is
    no chat completion at all (a proxy's HTML error page with status 200) is the upstream's failure."""
    try:
        if isinstance(completion, bytes):
            parsed = COMPLETION.decode(completion)
        else:
            parsed = msgspec.convert(completion, ChatCompletion)
    except msgspec.MsgspecError as exc:
        raise UpstreamError("The upstream provider sent an answer that is not a chat completion.") from exc
    return next((c.finish_reason for c in parsed.choices if c.finish_reason), "")


def _check_first(chunk: JsonObj | bytes) -> None:
    """The first chunk of a stream must be a JSON object, or the stream is the upstream's failure (and
    another deployment may still answer: nothing reached the client)."""
    if isinstance(chunk, bytes):
        try:
            decoded = msgspec.json.decode(chunk)
        except msgspec.DecodeError:
            decoded = None
        if not isinstance(decoded, dict):
            raise UpstreamError("The upstream provider sent a stream event that is not JSON.")
