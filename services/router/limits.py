"""Size limits on provider answers, and the bounded Content-Encoding decoder that enforces them (pure).

The router asks providers for `gzip, deflate` only and inflates itself, in steps of at most `STEP`
decoded bytes (zlib's `max_length`), counting as it goes: a compression bomb costs at most the limit
in memory, and reading stops as soon as a limit is passed. Past the first MiB, decoded output may be
at most `max_inflate_ratio` times the compressed input (Envoy's decompressor caps the ratio the same
way), which stops a bomb long before the byte limit. Brotli and zstd are not advertised: their Python
decoders cannot bound the output of one call. A body the router buffers is capped at
`max_body_bytes`; a stream is relayed as it comes, so only its events are capped (see `sse.py`).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from shared.config import ProviderConfig
from shared.errors import UpstreamError, UpstreamResponseTooLarge

ACCEPT_ENCODING = "gzip, deflate"
STEP = 64 * 1024  # the most decoded bytes produced from one step of inflating
RATIO_GRACE = 1024 * 1024  # decoded bytes before the inflate ratio is enforced (small bodies are noisy)
ERROR_BODY_BYTES = 64 * 1024  # an error body is only read for its message: the rest is cut off


@dataclass(frozen=True, slots=True)
class ResponseLimits:
    max_body_bytes: int = 32 * 1024 * 1024
    max_event_bytes: int = 1024 * 1024
    max_inflate_ratio: int = 100

    @classmethod
    def of(cls, provider: ProviderConfig) -> ResponseLimits:
        return cls(provider.max_response_bytes, provider.max_sse_event_bytes, provider.max_inflate_ratio)


class BoundedDecoder:
    """Raw body bytes in, decoded pieces of at most STEP bytes out; raises once a limit is passed.

    `limit` caps the decoded total (None: no cap, for streams); `truncate` stops quietly at the limit
    instead (for error bodies, read only for their message).
    """

    __slots__ = ("_coding", "_decoded", "_limit", "_ratio", "_raw", "_truncate", "_zlib", "done")

    def __init__(self, content_encoding: str, limit: int | None, ratio: int, *, truncate: bool = False) -> None:
        self._limit = limit
        self._ratio = ratio
        self._truncate = truncate
        self._raw = 0
        self._decoded = 0
        self.done = False  # True once a truncating decoder reached its limit
        self._coding = _coding(content_encoding)
        self._zlib: zlib._Decompress | None = None

    def feed(self, raw: bytes) -> Iterator[bytes]:
        self._raw += len(raw)
        if not self._coding:
            yield from self._count(raw)
            return
        if self._zlib is None:
            self._zlib = _decompressor(self._coding, raw)
        data = raw
        while data and not self.done:
            try:
                out = self._zlib.decompress(data, STEP)
            except zlib.error as exc:
                raise UpstreamError("The upstream provider sent a body that does not decompress.") from exc
            data = self._zlib.unconsumed_tail
            if not out:
                break  # the compressed stream ended; trailing bytes are ignored, as httpx does
            yield from self._count(out)
            consumed = self._raw - len(data)  # compressed bytes inflated so far
            if self._decoded > RATIO_GRACE and self._decoded > self._ratio * consumed:
                raise UpstreamResponseTooLarge(
                    f"The upstream response inflates more than {self._ratio}x its compressed size; reading stopped."
                )

    def _count(self, piece: bytes) -> Iterator[bytes]:
        self._decoded += len(piece)
        if self._limit is None or self._decoded <= self._limit:
            yield piece
            return
        if not self._truncate:
            raise UpstreamResponseTooLarge(f"The upstream response exceeds the limit of {self._limit} bytes.")
        keep = len(piece) - (self._decoded - self._limit)
        self.done = True
        if keep > 0:
            yield piece[:keep]


def _coding(content_encoding: str) -> str:
    """The one coding to undo ('' for none); anything but gzip or deflate is refused."""
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return ""
    if len(codings) > 1:
        raise UpstreamError("The upstream provider sent a body with stacked content encodings.")
    if codings[0] in ("gzip", "x-gzip", "deflate"):
        return codings[0]
    raise UpstreamError(f"The upstream provider sent an unsupported content encoding {codings[0][:32]!r}.")


def _decompressor(coding: str, first: bytes) -> zlib._Decompress:
    if coding != "deflate":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    # RFC 9110's deflate is zlib-wrapped, but some servers send raw deflate (as httpx, accept both)
    zlib_header = len(first) < 2 or ((first[0] & 0x0F) == 8 and ((first[0] << 8) | first[1]) % 31 == 0)
    return zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
