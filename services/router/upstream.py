"""The router's only I/O: HTTP to providers through one pooled aiohttp session.

Requests go straight to aiohttp's client: the gateway needs no cookie jar, redirects or auth helpers, nor
an httpx API layer over the aiohttp transport (httpx's request and response models were ~240 of the
router's Python calls per request). `mock://` URLs go to the in-process mock provider, an httpx transport,
through the same limits and decoder. Bodies are read raw and decoded by `limits.BoundedDecoder` (not by
the client), so every size limit applies to decoded bytes as they arrive; a body over a limit stops the
read and closes the connection.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from contextlib import aclosing, asynccontextmanager, suppress
from typing import Protocol, cast

import aiohttp
import httpx
from multidict import CIMultiDictProxy
from yarl import URL

from services.router.limits import ACCEPT_ENCODING, ERROR_BODY_BYTES, BoundedDecoder, ResponseLimits
from services.router.providers.base import UpstreamRequest
from shared.errors import GatewayTimeoutError, ServiceUnavailableError, UpstreamError, UpstreamResponseTooLarge

# how long an idle pooled connection is kept (httpx's default, which the router used before)
KEEPALIVE_S = 5.0
READ_SIZE = 64 * 1024


class _Headers(Mapping[str, str]):
    """A provider answer's headers under lower-cased names; a repeated header reads as its values joined
    with ", " (as HTTP folds them). Lookups go straight to the client's own (case-insensitive) header map
    instead of copying it for every answer."""

    __slots__ = ("_raw",)

    def __init__(self, raw: CIMultiDictProxy[str]) -> None:
        self._raw = raw

    def __getitem__(self, name: str) -> str:
        if name.lower() != name:
            raise KeyError(name)
        values = self._raw.getall(name)
        return values[0] if len(values) == 1 else ", ".join(values)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() == name and name in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(k.lower() for k in self._raw))

    def __len__(self) -> int:
        return len(set(k.lower() for k in self._raw))


def _lowered(headers: httpx.Headers) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


class _Answer(Protocol):
    """An open provider answer, whatever client carried it."""

    status: int

    @property
    def headers(self) -> Mapping[str, str]: ...

    def raw(self) -> AsyncGenerator[bytes, None]: ...

    async def close(self) -> None: ...


class _NetworkAnswer:
    __slots__ = ("_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: Mapping[str, str] = _Headers(response.headers)

    async def raw(self) -> AsyncGenerator[bytes, None]:
        content = self._response.content
        try:
            while True:
                data = await content.readany()
                if not data:
                    return
                yield data
        except aiohttp.ClientError as exc:
            raise _convert(exc) from exc

    async def close(self) -> None:
        """Release the connection; one whose body was not read to the end is closed, not pooled."""
        self._response.release()
        with suppress(aiohttp.ClientError):
            await self._response.wait_for_close()


class _MockAnswer:
    __slots__ = ("_headers", "_response", "status")

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self._headers: dict[str, str] | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        if self._headers is None:
            self._headers = _lowered(self._response.headers)
        return self._headers

    async def raw(self) -> AsyncGenerator[bytes, None]:
        # httpx annotates aiter_raw as an AsyncIterator; it is an async generator
        async with aclosing(cast(AsyncGenerator[bytes, None], self._response.aiter_raw())) as raws:
            async for piece in raws:
                yield piece

    async def close(self) -> None:
        with suppress(httpx.HTTPError):
            await self._response.aclose()


class UpstreamResponse:
    """A whole provider answer; `headers` are looked up case-insensitively."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.body = body
        self.headers = headers


async def _read(answer: _Answer, limits: ResponseLimits) -> bytes:
    """The whole decoded body, at most max_body_bytes (more: UpstreamResponseTooLarge, and reading stops).

    An error body is only wanted for its message: it is cut to an excerpt, and one that cannot be decoded
    reads as empty, so the status still tells what went wrong.
    """
    coding = answer.headers.get("content-encoding", "")
    if answer.status >= 400:
        try:
            excerpt = BoundedDecoder(coding, ERROR_BODY_BYTES, limits.max_inflate_ratio, truncate=True)
            return await _drain(answer, excerpt)
        except UpstreamError:
            return b""
    declared = answer.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_body_bytes and coding.strip().lower() in ("", "identity"):
        raise UpstreamResponseTooLarge(
            f"The upstream response is {declared} bytes; the limit is {limits.max_body_bytes} bytes."
        )
    return await _drain(answer, BoundedDecoder(coding, limits.max_body_bytes, limits.max_inflate_ratio))


async def _drain(answer: _Answer, decoder: BoundedDecoder) -> bytes:
    pieces: list[bytes] = []
    try:
        async with aclosing(answer.raw()) as raws:
            async for raw in raws:
                pieces.extend(decoder.feed(raw))
                if decoder.done:
                    break
    except httpx.HTTPError as exc:
        raise _convert_httpx(exc) from exc
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


class UpstreamStream:
    """An open streaming response; iterate `chunks()` for decoded bytes as they arrive."""

    def __init__(self, answer: _Answer, limits: ResponseLimits) -> None:
        self.status = answer.status
        self.headers = answer.headers
        self._answer = answer
        self._limits = limits

    async def read(self) -> bytes:
        return await _read(self._answer, self._limits)

    async def chunks(self) -> AsyncIterator[bytes]:
        """Decoded pieces; no cap on the total (the stream is relayed, not kept), the inflate ratio holds."""
        coding = self.headers.get("content-encoding", "")
        decoder = BoundedDecoder(coding, None, self._limits.max_inflate_ratio)
        try:
            async with aclosing(self._answer.raw()) as raws:
                async for raw in raws:
                    for piece in decoder.feed(raw):
                        yield piece
        except httpx.HTTPError as exc:
            raise _convert_httpx(exc) from exc


def _convert(exc: aiohttp.ClientError) -> UpstreamError | GatewayTimeoutError:
    """aiohttp's errors as the gateway's (the same classes and messages as when httpx carried them)."""
    if isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(exc, aiohttp.ServerTimeoutError):
        return UpstreamError("The upstream provider could not be reached.")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamError("The upstream provider connection failed: ReadError.")
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return UpstreamError("The upstream provider connection failed: UnsupportedProtocol.")
    if isinstance(exc, aiohttp.ClientConnectionError):
        # timeouts, and a connection the server dropped before answering
        return GatewayTimeoutError("The upstream provider did not answer in time.")
    return UpstreamError(f"The upstream provider connection failed: {type(exc).__name__}.")


def _convert_httpx(exc: httpx.HTTPError) -> UpstreamError | GatewayTimeoutError:
    """The mock transport's errors (it raises httpx's)."""
    if isinstance(exc, httpx.TimeoutException):
        return GatewayTimeoutError("The upstream provider did not answer in time.")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamError("The upstream provider could not be reached.")
    return UpstreamError(f"The upstream provider connection failed: {type(exc).__name__}.")


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
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._max_connections = max_connections
        # httpx's CA bundle and environment (SSL_CERT_FILE / SSL_CERT_DIR), as before
        self._ssl = ssl_context if ssl_context is not None else httpx.create_ssl_context()
        self._session: aiohttp.ClientSession | None = None
        self._mock = mock
        self._signers = dict(signers or {})
        self._urls: dict[str, URL] = {}
        self._timeouts: dict[tuple[float, float], aiohttp.ClientTimeout] = {}

    def _client(self) -> aiohttp.ClientSession:
        # made on first use: a session belongs to the running event loop
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=KEEPALIVE_S, ssl=self._ssl)
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,  # BoundedDecoder inflates, within limits
                trust_env=False,
            )
        return self._session

    async def _signed(self, req: UpstreamRequest) -> UpstreamRequest:
        if not req.sign:
            return req
        signer = self._signers.get(req.sign)
        if signer is None:
            raise ServiceUnavailableError(f"Provider {req.sign!r} has no AWS credentials in this router.")
        headers = await signer.sign(req.method, req.url, req.headers, req.body)
        return UpstreamRequest(req.method, req.url, headers, req.body)

    def _timeout(self, timeout_s: float, connect_s: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get((timeout_s, connect_s))
        if timeout is None:
            # per read and per connect, as before; `connect` includes waiting for a pooled connection
            timeout = aiohttp.ClientTimeout(total=None, connect=connect_s, sock_connect=connect_s, sock_read=timeout_s)
            if len(self._timeouts) < 1024:
                self._timeouts[(timeout_s, connect_s)] = timeout
        return timeout

    def _url(self, raw: str) -> URL:
        url = self._urls.get(raw)
        if url is None:
            url = URL(raw)
            if len(self._urls) < 4096:  # deployments are few; URLs with per-request parts are not cached
                self._urls[raw] = url
        return url

    async def _open(self, req: UpstreamRequest, timeout_s: float, connect_s: float) -> _Answer:
        req = await self._signed(req)
        if self._mock is not None and req.url.startswith("mock:"):
            return await self._open_mock(self._mock, req, timeout_s, connect_s)
        # the router decodes bodies itself, within limits: only codings whose output can be bounded
        headers = {k: v for k, v in req.headers.items() if k.lower() != "accept-encoding"}
        headers["accept-encoding"] = ACCEPT_ENCODING
        try:
            response = await self._client().request(
                req.method,
                self._url(req.url),
                headers=headers,
                data=req.body or None,
                allow_redirects=False,
                compress=False,
                timeout=self._timeout(timeout_s, connect_s),
            )
        except aiohttp.ClientError as exc:
            raise _convert(exc) from exc
        return _NetworkAnswer(response)

    @staticmethod
    async def _open_mock(
        mock: httpx.AsyncBaseTransport, req: UpstreamRequest, timeout_s: float, connect_s: float
    ) -> _Answer:
        headers = httpx.Headers(req.headers)
        headers["accept-encoding"] = ACCEPT_ENCODING
        request = httpx.Request(
            req.method,
            req.url,
            headers=headers,
            content=req.body,
            extensions={"timeout": {"connect": connect_s, "read": timeout_s, "write": timeout_s, "pool": connect_s}},
        )
        try:
            return _MockAnswer(await mock.handle_async_request(request))
        except httpx.HTTPError as exc:
            raise _convert_httpx(exc) from exc

    async def send(
        self, req: UpstreamRequest, timeout_s: float, connect_s: float, limits: ResponseLimits
    ) -> UpstreamResponse:
        answer = await self._open(req, timeout_s, connect_s)
        try:
            body = await _read(answer, limits)
        finally:
            await answer.close()
        return UpstreamResponse(answer.status, answer.headers, body)

    @asynccontextmanager
    async def stream(
        self, req: UpstreamRequest, timeout_s: float, connect_s: float, limits: ResponseLimits
    ) -> AsyncIterator[UpstreamStream]:
        answer = await self._open(req, timeout_s, connect_s)
        try:
            yield UpstreamStream(answer, limits)
        finally:
            await answer.close()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._mock is not None:
            await self._mock.aclose()
