"""Serve one request: try each deployment of its route in order, translate, and reply chunk by chunk."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

import msgspec

from services.router import native
from services.router.core import Deployment, Route, attempt_error, attempt_message, resolve, should_fail_over
from services.router.providers.base import JsonObj, Translator, openai_usage
from services.router.sse import SseParser
from services.router.telemetry import attempt_started
from services.router.upstream import Upstream
from shared.bus import split_result
from shared.errors import ErrorInfo, GatewayError, GatewayTimeoutError, InvalidRequestError, ServiceUnavailableError
from shared.schemas.chat import Attempt, ChatRequest, Chunk, ChunkBatch, Outcome, Reply, Result, Usage
from shared.schemas.openai import COMPLETION, ChatCompletion
from shared.tokens import estimate_prompt_tokens

log = logging.getLogger(__name__)

Send = Callable[[Reply], Awaitable[None]]
_JSON = msgspec.json.Encoder()
# what the router answers a request whose client went away (ingress records it; nobody reads it)
CLIENT_CLOSED = ErrorInfo(
    status=499, type="client_closed", code="client_closed_request", message="The client closed the connection."
)


def _is_usage_only(chunk: JsonObj | bytes) -> bool:
    if isinstance(chunk, bytes):
        return b'"usage"' in chunk and (b'"choices":[]' in chunk or b'"choices": []' in chunk)
    return not chunk.get("choices") and "usage" in chunk


class _Progress:
    """What one attempt has learnt so far (shared with the stream loop)."""

    __slots__ = ("finish_reason", "native", "relayed_error", "sent", "ttft_ms", "usage")

    def __init__(self) -> None:
        self.sent = 0
        self.ttft_ms = 0.0
        self.usage: Usage | None = None
        self.finish_reason = ""
        self.native = False  # the answer is in the client's own protocol (services.router.native)
        self.relayed_error = False


class Dispatcher:
    def __init__(self, routes: Mapping[str, Route], upstream: Upstream, translators: Mapping[str, Translator]) -> None:
        self._routes = routes
        self._upstream = upstream
        self._translators = translators
        self._native = native.NativeCaller(upstream, translators)

    async def serve(self, req: ChatRequest, send: Send) -> None:
        started = time.monotonic()
        attempts: list[Attempt] = []
        try:
            route = resolve(self._routes, req.model, req.api)
            if (req.api == "embeddings" and req.embeddings is None) or (req.api != "embeddings" and req.chat is None):
                raise InvalidRequestError("The request has no body to route.")
            if req.deadline and time.time() >= req.deadline:
                raise GatewayTimeoutError("The request's deadline passed before it could be dispatched.")
        except GatewayError as exc:
            await send(Result(outcome=Outcome(), error=exc.info()))
            return
        last: GatewayError | None = None
        last_dep = route.deployments[0]
        progress = _Progress()
        try:
            for dep in route.deployments:
                if not native.may_serve(req.native, dep):
                    continue  # the request cannot be translated for this deployment's protocol
                last_dep = dep
                t0 = time.monotonic()
                progress = _Progress()
                attempt = attempt_started(req, dep, started)
                try:
                    # a hard stop per attempt (asyncio.timeout creates no extra task, unlike wait_for)
                    async with asyncio.timeout(dep.timeout_s + 1.0):
                        result = await self._attempt(req, dep, send, progress, started)
                except TimeoutError:
                    last = GatewayTimeoutError(f"Deployment {dep.id} did not finish within {dep.timeout_s:g}s.")
                except GatewayError as exc:
                    last = attempt_error(exc, dep.target)
                except Exception as exc:  # a translator bug must not leave the client hanging
                    log.exception("request %s: attempt on %s failed unexpectedly", req.request_id, dep.id)
                    last = GatewayError(f"Internal error while calling {dep.id}: {type(exc).__name__}")
                else:
                    attempts.append(_attempt_record(dep, 200, t0))
                    attempt.end(200, None, progress.ttft_ms)
                    outcome = self._outcome(dep, progress, attempts, started)
                    for piece in split_result(Result(outcome=outcome, body=result, native=progress.native)):
                        await send(piece)
                    return
                attempts.append(_attempt_record(dep, last.status, t0, last))
                attempt.end(last.status, last, progress.ttft_ms)
                if progress.sent or not should_fail_over(last):
                    break
                if req.deadline and time.time() >= req.deadline:
                    break
        except asyncio.CancelledError:
            # the client went away: the upstream call is closed by now; say what it cost so far
            attempts.append(_attempt_record(last_dep, CLIENT_CLOSED.status, started))
            outcome = self._outcome(last_dep, progress, attempts, started)
            if outcome.usage is None:
                outcome = msgspec.structs.replace(outcome, usage=_estimate(req, progress), usage_estimated=True)
            await send(Result(outcome=outcome, error=CLIENT_CLOSED))
            raise
        await send(self._failure(req, last, last_dep, progress, attempts, started))

    def _failure(
        self,
        req: ChatRequest,
        last: GatewayError | None,
        dep: Deployment,
        progress: _Progress,
        attempts: list[Attempt],
        started: float,
    ) -> Result:
        """The Result when no attempt succeeded (`native`: the provider's own error already reached the client)."""
        if not attempts and req.native is not None:
            return Result(outcome=Outcome(), error=native.unserved(req.native, req.model).info())
        error = last.info() if last else GatewayError("No deployment could serve the request.").info()
        outcome = self._outcome(dep, _Progress(), attempts, started)
        return Result(outcome=outcome, error=error, native=progress.relayed_error)

    def _outcome(self, dep: Deployment, progress: _Progress, attempts: list[Attempt], started: float) -> Outcome:
        return Outcome(
            provider=dep.target.provider,
            provider_kind=dep.target.kind,
            deployment=dep.id,
            provider_model=dep.target.model,
            usage=progress.usage,
            finish_reason=progress.finish_reason,
            attempts=attempts,
            upstream_ms=(time.monotonic() - started) * 1000,
            ttft_ms=progress.ttft_ms,
        )

    async def _attempt(
        self, req: ChatRequest, dep: Deployment, send: Send, progress: _Progress, started: float
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
            if resp.status >= 400:
                raise translator.parse_error(resp.status, resp.body, resp.headers)
            parsed = translator.parse_embeddings(resp.body, dep.target)
            progress.usage = openai_usage(parsed)
            return parsed if isinstance(parsed, bytes) else _JSON.encode(parsed)
        assert req.chat is not None
        if not req.stream:
            ureq = translator.chat_request(req.chat, dep.target, stream=False)
            resp = await self._upstream.send(ureq, dep.timeout_s, dep.connect_timeout_s, dep.limits)
            if resp.status >= 400:
                raise translator.parse_error(resp.status, resp.body, resp.headers)
            completion = translator.parse_chat(resp.body, dep.target, response_id, created)
            progress.usage = translator.usage_of(completion)
            progress.finish_reason = _finish_reason(completion)
            return completion if isinstance(completion, bytes) else _JSON.encode(completion)
        ureq = translator.chat_request(req.chat, dep.target, stream=True)
        async with self._upstream.stream(ureq, dep.timeout_s, dep.connect_timeout_s, dep.limits) as upstream:
            if upstream.status >= 400:
                raise translator.parse_error(upstream.status, await upstream.read(), upstream.headers)
            stream = translator.open_stream(dep.target, response_id, created)
            parser = SseParser(dep.limits.max_event_bytes)
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
        self, req: ChatRequest, chunks: list[JsonObj | bytes], send: Send, progress: _Progress, started: float
    ) -> None:
        out: list[bytes] = []
        for chunk in chunks:
            if _is_usage_only(chunk):
                progress.usage = openai_usage(chunk) or progress.usage
                if not req.include_usage:
                    continue
            out.append(chunk if isinstance(chunk, bytes) else _JSON.encode(chunk))
        if not out:
            return
        if not progress.sent:
            progress.ttft_ms = (time.monotonic() - started) * 1000
        progress.sent += len(out)
        await send(Chunk(out[0]) if len(out) == 1 else ChunkBatch(out))


def _attempt_record(dep: Deployment, status: int, t0: float, error: GatewayError | None = None) -> Attempt:
    return Attempt(
        provider=dep.target.provider,
        deployment=dep.id,
        status=status,
        latency_ms=(time.monotonic() - t0) * 1000,
        error_code=error.info().code if error else "",
        error_message=attempt_message(error) if error else "",
    )


def _estimate(req: ChatRequest, progress: _Progress) -> Usage:
    """Usage when the provider reported none (the stream was cut): the prompt estimated from its text,
    one output token per chunk relayed (what OpenAI-style streams send)."""
    prompt = estimate_prompt_tokens(req.chat) if req.chat is not None else 0
    return Usage(input_tokens=prompt, output_tokens=progress.sent)


def _finish_reason(completion: JsonObj | bytes) -> str:
    """The first finish reason of a completion: the provider's bytes, or a translator's dict."""
    try:
        if isinstance(completion, bytes):
            parsed = COMPLETION.decode(completion)
        else:
            parsed = msgspec.convert(completion, ChatCompletion)
    except msgspec.MsgspecError:
        return ""
    return next((c.finish_reason for c in parsed.choices if c.finish_reason), "")
