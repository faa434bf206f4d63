"""The router's only I/O: HTTP to providers over one pooled httpx client (aiohttp transport)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

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
    """An open streaming response; iterate `chunks()` for raw bytes as they arrive."""

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
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise _convert(exc) from exc


def _convert(exc: httpx.HTTPError) -> UpstreamError | GatewayTimeoutError:
    if isinstance(exc, httpx.TimeoutException):
        return GatewayTimeoutError("The upstream provider did not answer in time.")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamError("The upstream provider could not be reached.")
    return UpstreamError(f"The upstream provider connection failed: {type(exc).__name__}.")


class Upstream:
    def __init__(self, max_connections: int = 512) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        # no client-wide timeout: every request passes the timeout of its deployment
        self._client = httpx.AsyncClient(transport=AiohttpTransport(limits=limits), timeout=None)  # noqa: S113

    @staticmethod
    def _timeout(timeout_s: float, connect_s: float) -> httpx.Timeout:
        return httpx.Timeout(timeout_s, connect=connect_s)

    async def send(self, req: UpstreamRequest, timeout_s: float, connect_s: float) -> UpstreamResponse:
        try:
            resp = await self._client.request(
                req.method, req.url, headers=req.headers, content=req.body, timeout=self._timeout(timeout_s, connect_s)
            )
        except httpx.HTTPError as exc:
            raise _convert(exc) from exc
        return UpstreamResponse(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.content)

    @asynccontextmanager
    async def stream(self, req: UpstreamRequest, timeout_s: float, connect_s: float) -> AsyncIterator[UpstreamStream]:
        request = self._client.build_request(
            req.method, req.url, headers=req.headers, content=req.body, timeout=self._timeout(timeout_s, connect_s)
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _convert(exc) from exc
        try:
            yield UpstreamStream(response)
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()
