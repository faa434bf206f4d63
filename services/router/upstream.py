"""The router's only I/O: HTTP to providers through one pooled httpx transport (aiohttp underneath).

Requests go straight to the transport: the gateway needs none of httpx.AsyncClient's per-request
cookie jar, redirect and auth machinery, which measured ~20% of the router's CPU per request here.
Bodies are read raw and decoded by `limits.BoundedDecoder` (not by httpx), so every size limit applies
to decoded bytes as they arrive; a body over a limit stops the read and closes the connection.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager, suppress
from typing import Protocol, cast

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from services.router.limits import ACCEPT_ENCODING, ERROR_BODY_BYTES, BoundedDecoder, ResponseLimits
from services.router.providers.base import UpstreamRequest
from shared.errors import GatewayTimeoutError, ServiceUnavailableError, UpstreamError, UpstreamResponseTooLarge


def _lowered(headers: httpx.Headers) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


class UpstreamResponse:
    """A whole provider answer. Its headers are only read to explain an error, so their dict is built on
    first use: building it for every answer cost ~30 of the router's ~850 Python calls per request."""

    __slots__ = ("_headers", "_source", "body", "status")

    def __init__(self, status: int, headers: httpx.Headers, body: bytes) -> None:
        self.status = status
        self.body = body
        self._source = headers
        self._headers: dict[str, str] | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The response headers, names lower-cased."""
        if self._headers is None:
            self._headers = _lowered(self._source)
        return self._headers


async def _read(response: httpx.Response, limits: ResponseLimits) -> bytes:
    """The whole decoded body, at most max_body_bytes (more: UpstreamResponseTooLarge, and reading stops).

    An error body is only wanted for its message: it is cut to an excerpt, and one that cannot be decoded
    reads as empty, so the status still tells what went wrong.
    """
    coding = response.headers.get("content-encoding", "")
    if response.status_code >= 400:
        try:
            excerpt = BoundedDecoder(coding, ERROR_BODY_BYTES, limits.max_inflate_ratio, truncate=True)
            return await _drain(response, excerpt)
        except UpstreamError:
            return b""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_body_bytes and coding.strip().lower() in ("", "identity"):
        raise UpstreamResponseTooLarge(
            f"The upstream response is {declared} bytes; the limit is {limits.max_body_bytes} bytes."
        )
    return await _drain(response, BoundedDecoder(coding, limits.max_body_bytes, limits.max_inflate_ratio))


def _raw(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    # httpx annotates aiter_raw as an AsyncIterator; it is an async generator, closed early via aclosing
    return cast(AsyncGenerator[bytes, None], response.aiter_raw())


async def _drain(response: httpx.Response, decoder: BoundedDecoder) -> bytes:
    pieces: list[bytes] = []
    try:
        async with aclosing(_raw(response)) as raws:
            async for raw in raws:
                pieces.extend(decoder.feed(raw))
                if decoder.done:
                    break
    except httpx.HTTPError as exc:
        raise _convert(exc) from exc
    return b"".join(pieces)


class UpstreamStream:
    """An open streaming response; iterate `chunks()` for decoded bytes as they arrive."""

    def __init__(self, response: httpx.Response, limits: ResponseLimits) -> None:
        self.status = response.status_code
        self._response = response
        self._limits = limits
        self._headers: dict[str, str] | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The response headers, names lower-cased (built on first use, as for UpstreamResponse)."""
        if self._headers is None:
            self._headers = _lowered(self._response.headers)
        return self._headers

    async def read(self) -> bytes:
        return await _read(self._response, self._limits)

    async def chunks(self) -> AsyncIterator[bytes]:
        """Decoded pieces; no cap on the total (the stream is relayed, not kept), the inflate ratio holds."""
        coding = self._response.headers.get("content-encoding", "")
        decoder = BoundedDecoder(coding, None, self._limits.max_inflate_ratio)
        try:
            async with aclosing(_raw(self._response)) as raws:
                async for raw in raws:
                    for piece in decoder.feed(raw):
                        yield piece
        except httpx.HTTPError as exc:
            raise _convert(exc) from exc


def _convert(exc: httpx.HTTPError) -> UpstreamError | GatewayTimeoutError:
    # the aiohttp transport reports a refused connection as ConnectTimeout; the cause tells them apart
    if isinstance(exc.__cause__, aiohttp.ClientConnectorError) and not isinstance(
        exc.__cause__, aiohttp.ServerTimeoutError
    ):
        return UpstreamError("The upstream provider could not be reached.")
    if isinstance(exc, httpx.TimeoutException):
        return GatewayTimeoutError("The upstream provider did not answer in time.")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamError("The upstream provider could not be reached.")
    return UpstreamError(f"The upstream provider connection failed: {type(exc).__name__}.")


async def _close(response: httpx.Response) -> None:
    """Release the connection; one whose body was not read to the end is closed, not pooled (aiohttp)."""
    # the answer (or its error) is already in hand; a failing close changes nothing for it
    with suppress(httpx.HTTPError):
        await response.aclose()


class Signer(Protocol):
    async def sign(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> dict[str, str]: ...


class Upstream:
    """Sends provider requests; `mock://` URLs go to the in-process mock provider's transport; a request
    marked `sign` is signed by that provider's signer (AWS SigV4) just before it goes."""

    def __init__(
        self,
        max_connections: int = 512,
        mock: httpx.AsyncBaseTransport | None = None,
        signers: Mapping[str, Signer] | None = None,
    ) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._network = AiohttpTransport(limits=limits)
        self._mock = mock
        self._signers = dict(signers or {})
        self._urls: dict[str, httpx.URL] = {}

    async def _signed(self, req: UpstreamRequest) -> UpstreamRequest:
        if not req.sign:
            return req
        signer = self._signers.get(req.sign)
        if signer is None:
            raise ServiceUnavailableError(f"Provider {req.sign!r} has no AWS credentials in this router.")
        headers = await signer.sign(req.method, req.url, req.headers, req.body)
        return UpstreamRequest(req.method, req.url, headers, req.body)

    def _transport(self, request: httpx.Request) -> httpx.AsyncBaseTransport:
        if request.url.scheme == "mock" and self._mock is not None:
            return self._mock
        return self._network

    def _request(self, req: UpstreamRequest, timeout_s: float, connect_s: float) -> httpx.Request:
        url = self._urls.get(req.url)
        if url is None:
            url = httpx.URL(req.url)
            if len(self._urls) < 4096:  # deployments are few; URLs with per-request parts are not cached
                self._urls[req.url] = url
        headers = httpx.Headers(req.headers)
        # the router decodes bodies itself, within limits: only codings whose output can be bounded
        headers["accept-encoding"] = ACCEPT_ENCODING
        return httpx.Request(
            req.method,
            url,
            headers=headers,
            content=req.body,
            extensions={"timeout": {"connect": connect_s, "read": timeout_s, "write": timeout_s, "pool": connect_s}},
        )

    async def send(
        self, req: UpstreamRequest, timeout_s: float, connect_s: float, limits: ResponseLimits
    ) -> UpstreamResponse:
        req = await self._signed(req)
        try:
            request = self._request(req, timeout_s, connect_s)
            resp = await self._transport(request).handle_async_request(request)
        except httpx.HTTPError as exc:
            raise _convert(exc) from exc
        try:
            body = await _read(resp, limits)
        finally:
            await _close(resp)
        return UpstreamResponse(resp.status_code, resp.headers, body)

    @asynccontextmanager
    async def stream(
        self, req: UpstreamRequest, timeout_s: float, connect_s: float, limits: ResponseLimits
    ) -> AsyncIterator[UpstreamStream]:
        req = await self._signed(req)
        try:
            request = self._request(req, timeout_s, connect_s)
            response = await self._transport(request).handle_async_request(request)
        except httpx.HTTPError as exc:
            raise _convert(exc) from exc
        try:
            yield UpstreamStream(response, limits)
        finally:
            await _close(response)

    async def aclose(self) -> None:
        await self._network.aclose()
        if self._mock is not None:
            await self._mock.aclose()
