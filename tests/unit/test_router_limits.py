"""Size limits on provider answers: bodies, SSE events and compression bombs end in a clean 502, quickly,
with bounded memory, and the connection is closed rather than drained.

The provider here is a raw HTTP/1.1 server on a loopback port (asyncio, same loop), so a test controls
exactly which bytes go out (Content-Length, chunking, Content-Encoding) and sees the gateway hang up.
"""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import msgspec
import pytest

from services.router.core import build_routes
from services.router.dispatch import Dispatcher
from services.router.limits import ACCEPT_ENCODING, STEP, BoundedDecoder, ResponseLimits
from services.router.providers.base import UpstreamRequest
from services.router.providers.openai import OpenAITranslator
from services.router.sse import SseEvent, SseParser
from services.router.upstream import Upstream
from shared.config import GatehouseConfig
from shared.errors import UpstreamError, UpstreamResponseTooLarge
from shared.schemas.chat import Caller, ChatRequest, Reply, Result
from tests.unit.providers.roundtrip import canonical

MiB = 1024 * 1024
BOMB_BYTES = 50_000_000  # decompressed size of the bombs below


def _compress(payload: bytes, total: int, wbits: int) -> bytes:
    """`payload` repeated up to `total` bytes, compressed piece by piece (never whole in memory)."""
    z = zlib.compressobj(9, zlib.DEFLATED, wbits)
    out = [z.compress(payload * (total // len(payload) // 50)) for _ in range(50)]
    out.append(z.flush())
    return b"".join(out)


GZIP_ZEROS = _compress(b"\0" * 1024, BOMB_BYTES, 16 + zlib.MAX_WBITS)
GZIP_NEWLINES = _compress(b"\n" * 1024, BOMB_BYTES, 16 + zlib.MAX_WBITS)


# ------------------------------------------------------------------ a provider that sends what it is told


Script = Callable[[asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawProvider:
    url: str
    requests: list[dict[str, str]] = field(default_factory=list)
    hung_up: asyncio.Event = field(default_factory=asyncio.Event)  # the gateway closed the connection
    sent: int = 0


@asynccontextmanager
async def raw_provider(script: Script) -> AsyncIterator[RawProvider]:
    provider = RawProvider(url="")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            await reader.readexactly(int(headers.get("content-length", "0")))
            provider.requests.append(headers)
            await script(writer)
            await reader.read()  # wait for the gateway to close the connection
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            provider.hung_up.set()
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    provider.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    try:
        yield provider
    finally:
        server.close()


def head(status: int = 200, **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def body(data: bytes, status: int = 200, **headers: str) -> Script:
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(head(status, content_length=str(len(data)), **headers) + data)
        await writer.drain()

    return script


def endless(piece: bytes, provider: list[RawProvider], **headers: str) -> Script:
    """A chunked body that never ends: only the gateway hanging up stops it."""

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(head(transfer_encoding="chunked", **headers))
        chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        while True:
            writer.write(chunk)
            await writer.drain()
            provider[0].sent += len(piece)

    return script


REQ = UpstreamRequest("POST", "", {"authorization": "Bearer k", "accept-encoding": "br"}, b"{}")
SMALL = ResponseLimits(max_body_bytes=4 * MiB, max_event_bytes=64 * 1024, max_inflate_ratio=100)


async def _send(provider: RawProvider, limits: ResponseLimits = SMALL) -> bytes:
    upstream = Upstream()
    try:
        req = UpstreamRequest(REQ.method, provider.url + "/chat/completions", REQ.headers, REQ.body)
        # a bound on the test itself: without the limits, an endless body would hang here
        return (await asyncio.wait_for(upstream.send(req, 10.0, 5.0, limits), 10)).body
    finally:
        await upstream.aclose()


# ------------------------------------------------------------------ the decoder on its own


def test_decoder_caps_identity_bodies_and_truncates_error_excerpts() -> None:
    capped = BoundedDecoder("", 10, 100)
    assert list(capped.feed(b"0123456789")) == [b"0123456789"]
    with pytest.raises(UpstreamResponseTooLarge, match="limit of 10 bytes"):
        list(capped.feed(b"!"))
    excerpt = BoundedDecoder("identity", 4, 100, truncate=True)
    assert b"".join(excerpt.feed(b"abcdef")) == b"abcd" and excerpt.done


def test_decoder_inflates_gzip_and_both_deflate_forms_in_bounded_steps() -> None:
    text = json.dumps({"x": "y" * 300_000}).encode()
    for wbits, coding in ((16 + zlib.MAX_WBITS, "gzip"), (zlib.MAX_WBITS, "deflate"), (-zlib.MAX_WBITS, "deflate")):
        z = zlib.compressobj(6, zlib.DEFLATED, wbits)
        packed = z.compress(text) + z.flush()
        pieces = list(BoundedDecoder(coding, MiB, 100_000).feed(packed))
        assert b"".join(pieces) == text
        assert max(map(len, pieces)) <= STEP  # one small input never becomes one huge output


def test_decoder_refuses_codings_it_cannot_bound() -> None:
    with pytest.raises(UpstreamError, match="unsupported content encoding 'br'"):
        BoundedDecoder("br", MiB, 100)
    with pytest.raises(UpstreamError, match="stacked"):
        BoundedDecoder("gzip, deflate", MiB, 100)
    with pytest.raises(UpstreamError, match="does not decompress"):
        list(BoundedDecoder("gzip", MiB, 100).feed(b"\x1f\x8bnot gzip at all"))


def test_decoder_stops_a_bomb_at_the_ratio_long_before_the_byte_limit() -> None:
    decoder = BoundedDecoder("gzip", 1024 * MiB, 100)
    decoded = 0
    with pytest.raises(UpstreamResponseTooLarge, match="inflates more than 100x"):
        for piece in decoder.feed(GZIP_ZEROS):
            decoded += len(piece)
    assert decoded < 2 * MiB


# ------------------------------------------------------------------ non-stream bodies over loopback


async def test_the_gateway_asks_for_codings_it_can_bound() -> None:
    async with raw_provider(body(b'{"ok": true}')) as provider:
        assert await _send(provider) == b'{"ok": true}'
    assert provider.requests[0]["accept-encoding"] == ACCEPT_ENCODING  # the translator's "br" is overridden
    assert provider.requests[0]["authorization"] == "Bearer k"


async def test_declared_oversized_body_is_refused_without_reading_it() -> None:
    started = time.monotonic()
    async with raw_provider(body(b"x" * (5 * MiB))) as provider:
        with pytest.raises(UpstreamResponseTooLarge, match=f"{5 * MiB} bytes; the limit is {4 * MiB}"):
            await _send(provider)
        await asyncio.wait_for(provider.hung_up.wait(), 5)
    assert time.monotonic() - started < 5


async def test_endless_body_stops_at_the_limit_and_the_connection_is_closed() -> None:
    holder: list[RawProvider] = []
    async with raw_provider(endless(b"x" * 65536, holder)) as provider:
        holder.append(provider)
        upstream = Upstream()
        try:
            req = UpstreamRequest("POST", provider.url + "/chat/completions", {}, b"{}")
            with pytest.raises(UpstreamResponseTooLarge) as exc:
                await asyncio.wait_for(upstream.send(req, 10.0, 5.0, SMALL), 10)
            # closed by the failed read itself, not returned to the pool for a later request to inherit
            await asyncio.wait_for(provider.hung_up.wait(), 5)
        finally:
            await upstream.aclose()
    info = exc.value.info()
    assert (info.status, info.code, info.retryable) == (502, "upstream_response_too_large", False)
    assert "xxxx" not in info.message  # nothing of the body itself
    # the gateway hung up instead of draining: what was sent is the limit plus what sat in socket buffers
    assert provider.sent < 4 * MiB + 8 * MiB


@pytest.mark.parametrize("ratio", [100, 100_000])
async def test_gzip_bomb_is_refused_with_bounded_memory(ratio: int) -> None:
    """50 MB of zeros in ~50 KB of gzip: the ratio cap stops it first; without it, the byte limit does."""
    limits = ResponseLimits(max_body_bytes=4 * MiB, max_event_bytes=MiB, max_inflate_ratio=ratio)
    async with raw_provider(body(GZIP_ZEROS, content_encoding="gzip")) as provider:
        tracemalloc.start()
        started = time.monotonic()
        try:
            with pytest.raises(UpstreamResponseTooLarge):
                await _send(provider, limits)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        elapsed = time.monotonic() - started
    assert len(GZIP_ZEROS) < 100_000
    assert peak < 8 * MiB  # measured ~1.5 MiB (ratio) and ~4.5 MiB (byte limit); decoding it all holds 50 MB
    assert elapsed < 5


async def test_error_bodies_are_read_as_a_bounded_excerpt() -> None:
    huge = json.dumps({"error": {"message": "m" * (4 * MiB)}}).encode()
    async with raw_provider(body(huge, status=500)) as provider:
        excerpt = await _send(provider)
    assert len(excerpt) == 64 * 1024 and excerpt.startswith(b'{"error"')


async def test_an_answer_keeps_its_headers_for_error_handling_names_lower_cased() -> None:
    upstream = Upstream()
    limited = body(b'{"error":{"message":"slow down"}}', status=429, Retry_After="7")
    try:
        async with raw_provider(limited) as provider:
            req = UpstreamRequest(REQ.method, provider.url + "/chat/completions", REQ.headers, REQ.body)
            resp = await asyncio.wait_for(upstream.send(req, 10.0, 5.0, SMALL), 10)
        assert resp.status == 429 and resp.headers["retry-after"] == "7" and "Retry-After" not in resp.headers
        async with raw_provider(limited) as provider:
            req = UpstreamRequest(REQ.method, provider.url + "/chat/completions", REQ.headers, REQ.body)
            async with upstream.stream(req, 10.0, 5.0, SMALL) as stream:
                assert stream.status == 429 and stream.headers["retry-after"] == "7"
    finally:
        await upstream.aclose()


# ------------------------------------------------------------------ SSE events


def test_sse_event_over_the_limit_is_refused_whether_one_line_or_many() -> None:
    with pytest.raises(UpstreamResponseTooLarge, match="larger than 1000 bytes"):
        SseParser(1000).feed(b"data: " + b"x" * 1001 + b"\n\n")
    many = SseParser(1000)
    with pytest.raises(UpstreamResponseTooLarge):
        for _ in range(20):
            many.feed(b"data: " + b"x" * 99 + b"\n")  # no blank line: one event that keeps growing
    unended = SseParser(1000)
    with pytest.raises(UpstreamResponseTooLarge):
        for _ in range(20):
            unended.feed(b"x" * 100)  # a line that never ends
    ok = SseParser(1000)
    for _ in range(100):  # many events of 900 bytes are fine: the limit is per event
        assert len(ok.feed(b"data: " + b"x" * 900 + b"\n\n")) == 1


def test_sse_crlf_split_across_reads_is_one_line_end() -> None:
    p = SseParser()
    assert p.feed(b"data: a\r") == []
    assert p.feed(b"\ndata: b\r\n\r\n") == [SseEvent("", b"a\nb")]


# ------------------------------------------------------------------ through the dispatcher


def _dispatcher(url: str, upstream: Upstream, **limits: int) -> Dispatcher:
    config = GatehouseConfig.model_validate(
        {
            "providers": {"p": {"kind": "openai", "api_base": url, "api_key_env": "P_KEY", **limits}},
            "models": [{"name": "m", "deployments": [{"provider": "p", "model": "gpt-x"}]}],
        }
    )
    return Dispatcher(build_routes(config, {"P_KEY": "k"}), upstream, {"openai": OpenAITranslator()})


async def _serve(url: str, *, stream: bool, **limits: int) -> list[Reply]:
    upstream = Upstream()
    replies: list[Reply] = []

    async def send(reply: Reply) -> None:
        replies.append(reply)

    body_ = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    req = ChatRequest(
        request_id="r1",
        api="chat",
        model="m",
        chat=canonical(body_),
        caller=Caller(key_id="k"),
        stream=stream,
    )
    try:
        await asyncio.wait_for(_dispatcher(url, upstream, **limits).serve(req, send), 10)
    finally:
        await upstream.aclose()
    return replies


def _chunk(text: str) -> bytes:
    obj = {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}
    return b"data: " + msgspec.json.encode(obj) + b"\n\n"


async def test_oversized_sse_event_ends_the_stream_with_a_clean_502() -> None:
    events = _chunk("hello") + b"data: " + b"x" * (2 * MiB) + b"\n\n" + b"data: [DONE]\n\n"
    async with raw_provider(body(events, content_type="text/event-stream")) as provider:
        replies = await _serve(provider.url, stream=True)
    result = replies[-1]
    assert isinstance(result, Result) and result.error is not None
    assert (result.error.status, result.error.code) == (502, "upstream_response_too_large")
    assert "xxxx" not in result.error.message
    assert [a.error_code for a in result.outcome.attempts] == ["upstream_response_too_large"]


async def test_gzip_bomb_of_blank_lines_in_a_stream_is_stopped_by_the_ratio() -> None:
    """No event ever completes, so only the inflate ratio can stop it."""
    async with raw_provider(body(GZIP_NEWLINES, content_encoding="gzip")) as provider:
        started = time.monotonic()
        replies = await _serve(provider.url, stream=True)
    result = replies[-1]
    assert isinstance(result, Result) and result.error is not None
    assert result.error.code == "upstream_response_too_large" and "inflates" in result.error.message
    assert time.monotonic() - started < 5


async def test_non_stream_limit_comes_from_the_provider_config() -> None:
    completion = json.dumps(
        {"id": "c", "object": "chat.completion", "choices": [{"index": 0, "message": {"content": "y" * 5000}}]}
    ).encode()
    async with raw_provider(body(completion)) as provider:
        replies = await _serve(provider.url, stream=False, max_response_bytes=4096, max_sse_event_bytes=1024)
    result = replies[-1]
    assert isinstance(result, Result) and result.error is not None
    assert (result.error.status, result.error.code) == (502, "upstream_response_too_large")
    assert "4096" in result.error.message


async def test_a_repeated_answer_header_reads_as_its_values_joined() -> None:
    upstream = Upstream()

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 2\r\nX-Note: a\r\nx-note: b\r\nretry-after: 3\r\n\r\n{}"
        )
        await writer.drain()

    try:
        async with raw_provider(script) as provider:
            req = UpstreamRequest(REQ.method, provider.url + "/chat/completions", REQ.headers, REQ.body)
            resp = await asyncio.wait_for(upstream.send(req, 10.0, 5.0, SMALL), 10)
    finally:
        await upstream.aclose()
    assert resp.headers["x-note"] == "a, b" and resp.headers.get("retry-after") == "3"
    assert dict(resp.headers) == {"content-length": "2", "x-note": "a, b", "retry-after": "3"}
    assert "X-Note" not in resp.headers and resp.headers.get("X-Note") is None


async def test_the_request_goes_with_its_headers_and_only_the_codings_the_router_can_bound() -> None:
    upstream = Upstream()
    try:
        async with raw_provider(body(b"{}")) as provider:
            req = UpstreamRequest(REQ.method, provider.url + "/chat/completions", REQ.headers, REQ.body)
            resp = await asyncio.wait_for(upstream.send(req, 10.0, 5.0, SMALL), 10)
    finally:
        await upstream.aclose()
    sent = provider.requests[0]
    assert resp.status == 200 and resp.body == b"{}"
    assert sent["authorization"] == "Bearer k" and sent["accept-encoding"] == "gzip, deflate"
    assert sent["content-length"] == "2"
