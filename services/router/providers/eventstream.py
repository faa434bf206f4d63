"""The AWS event stream framing (`application/vnd.amazon.eventstream`, Bedrock's ConverseStream), pure.

Each message: a 12-byte prelude (total length u32, headers length u32, CRC32 of those 8 bytes), the
headers, the payload, and a CRC32 of everything before it; integers big-endian. A header is a name
(u8 length + bytes), a type byte and a value: 0 true, 1 false, 2 byte, 3 int16, 4 int32, 5 int64,
6 bytes (u16 length), 7 string (u16 length), 8 timestamp (int64 ms), 9 UUID (16 bytes).

`EventStreamParser` takes bytes as they arrive and gives one `SseEvent` per message, so the providers'
stream translators see the same shape as for server-sent events: the `:event-type` header as the event
name and the payload as data. An exception message (`:message-type: exception`) becomes the event
`exception:<:exception-type>`; an error message (`:message-type: error`) the event
`error:<:error-code>` with `:error-message` as data. A frame that fails its CRC, or claims a size
beyond the limit, ends the stream with an UpstreamError.
"""

from __future__ import annotations

import struct
import zlib

from services.router.sse import SseEvent
from shared.errors import UpstreamError, UpstreamResponseTooLarge

PRELUDE = 12
MIN_MESSAGE = PRELUDE + 4
_FIXED = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}


def headers_of(data: bytes) -> dict[str, str | bytes | int | bool]:
    """The headers block of one message, decoded by type."""
    out: dict[str, str | bytes | int | bool] = {}
    i = 0
    try:
        while i < len(data):
            n = data[i]
            name = data[i + 1 : i + 1 + n].decode()
            i += 1 + n
            kind = data[i]
            i += 1
            if kind in (6, 7):
                (size,) = struct.unpack_from(">H", data, i)
                raw = data[i + 2 : i + 2 + size]
                i += 2 + size
                out[name] = raw.decode() if kind == 7 else raw
            elif kind in _FIXED:
                size = _FIXED[kind]
                raw = data[i : i + size]
                i += size
                if kind in (0, 1):
                    out[name] = kind == 0
                elif kind == 9:
                    out[name] = raw
                else:
                    out[name] = int.from_bytes(raw, "big", signed=True)
            else:
                raise UpstreamError(f"The upstream event stream has a header of unknown type {kind}.")
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise UpstreamError("The upstream event stream has malformed headers.") from exc
    return out


class EventStreamParser:
    """Feed raw bytes as they arrive; get one event per complete message (a StreamParser)."""

    __slots__ = ("_buf", "_max")

    def __init__(self, max_message_bytes: int = 1024 * 1024) -> None:
        self._buf = bytearray()
        self._max = max_message_bytes

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buf += chunk
        events: list[SseEvent] = []
        while len(self._buf) >= PRELUDE:
            total, header_len, prelude_crc = struct.unpack_from(">III", self._buf, 0)
            if zlib.crc32(self._buf[:8]) != prelude_crc:
                raise UpstreamError("The upstream event stream failed its prelude checksum.")
            if total > self._max + MIN_MESSAGE:
                raise UpstreamResponseTooLarge(f"The upstream stream sent a message larger than {self._max} bytes.")
            if total < MIN_MESSAGE or header_len > total - MIN_MESSAGE:
                raise UpstreamError("The upstream event stream has an impossible message length.")
            if len(self._buf) < total:
                break
            message = bytes(self._buf[:total])
            del self._buf[:total]
            (message_crc,) = struct.unpack_from(">I", message, total - 4)
            if zlib.crc32(message[:-4]) != message_crc:
                raise UpstreamError("The upstream event stream failed its message checksum.")
            headers = headers_of(message[PRELUDE : PRELUDE + header_len])
            payload = message[PRELUDE + header_len : -4]
            events.append(_event(headers, payload))
        return events

    def close(self) -> list[SseEvent]:
        if self._buf:
            self._buf.clear()
            raise UpstreamError("The upstream event stream ended inside a message.")
        return []


def _text(headers: dict[str, str | bytes | int | bool], name: str) -> str:
    value = headers.get(name, "")
    return value if isinstance(value, str) else ""


def _event(headers: dict[str, str | bytes | int | bool], payload: bytes) -> SseEvent:
    kind = _text(headers, ":message-type") or "event"
    if kind == "exception":
        return SseEvent(f"exception:{_text(headers, ':exception-type')}", payload)
    if kind == "error":
        message = _text(headers, ":error-message")
        return SseEvent(f"error:{_text(headers, ':error-code')}", message.encode() if message else payload)
    return SseEvent(_text(headers, ":event-type"), payload)
