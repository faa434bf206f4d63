"""The router's only I/O: HTTP to providers through one pooled httpx transport (aiohttp underneath).

Requests go straight to the transport: the gateway needs none of httpx.AsyncClient's per-request
cookie jar, redirect and auth machinery, which measured ~20% of the router's CPU per request here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from services.router.providers.base import UpstreamRequest
from shared.errors import GatewayTimeoutError, UpstreamError


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class UpstreamStream:
    """An open streaming response; iterate `chunks()` for (decoded) bytes as they arrive."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.headers = {k.lower(): v for k, v in response.headers.items()}
        self._response = response

    async def read(self) -> bytes:
        try:
            return await self._response.aread()
        except httpx.HTTPError as exc:
            raise _convert(exc) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_bytes():
                yield chunk
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


class Upstream:
    """Sends provider requests; `mock://` URLs go to the in-process mock provider's transport."""

    def __init__(self, max_connections: int = 512, mock: httpx.AsyncBaseTransport | None = None) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._network = AiohttpTransport(limits=limits)
        self._mock = mock
        self._urls: dict[str, httpx.URL] = {}

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
        return httpx.Request(
            req.method,
            url,
            headers=req.headers,
            content=req.body,
            extensions={"timeout": {"connect": connect_s, "read": timeout_s, "write": timeout_s, "pool": connect_s}},
        )

    async def send(self, req: UpstreamRequest, timeout_s: float, connect_s: float) -> UpstreamResponse:
        try:
            request = self._request(req, timeout_s, connect_s)
            resp = await self._transport(request).handle_async_request(request)
            try:
                body = await resp.aread()
            finally:
                await resp.aclose()
        except httpx.HTTPError as exc:
            raise _convert(exc) from exc
        return UpstreamResponse(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, body)

    @asynccontextmanager
    async def stream(self, req: UpstreamRequest, timeout_s: float, connect_s: float) -> AsyncIterator[UpstreamStream]:
        try:
            request = self._request(req, timeout_s, connect_s)
            response = await self._transport(request).handle_async_request(request)
        except httpx.HTTPError as exc:
            raise _convert(exc) from exc
        try:
            yield UpstreamStream(response)
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._network.aclose()
        if self._mock is not None:
            await self._mock.aclose()
