"""Incremental server-sent-events parser (bytes in, `SseEvent`s out), per the WHATWG event-stream format."""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import UpstreamResponseTooLarge

DEFAULT_MAX_EVENT_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One server-sent event: `event:` name ('' when absent) and the joined `data:` lines."""

    event: str
    data: bytes


class SseParser:
    """Feed raw bytes as they arrive; get complete events back. Handles CRLF, LF and split lines.

    One event (its data lines, or a line not yet ended) may hold at most `max_event_bytes`: past that
    the stream is refused with UpstreamResponseTooLarge, so a provider cannot make the router buffer
    without bound.
    """

    __slots__ = ("_buf", "_data", "_event", "_max", "_size")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[bytes] = []
        self._size = 0  # bytes of data lines in the event so far
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> list[SseEvent]:
        buf = self._buf + chunk if self._buf else chunk
        held = b""
        if b"\r" in buf:
            if buf.endswith(b"\r"):
                buf, held = buf[:-1], b"\r"  # a CRLF split across reads must stay one line end
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events: list[SseEvent] = []
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = buf[start:nl]
            start = nl + 1
            if not line:
                if self._data or self._event:
                    events.append(SseEvent(self._event, b"\n".join(self._data)))
                self._event = ""
                self._data = []
                self._size = 0
            elif line.startswith(b"data:"):
                value = line[5:]
                value = value[1:] if value.startswith(b" ") else value
                self._size += len(value) + 1
                if self._size > self._max:
                    self._too_large()
                self._data.append(value)
            elif line.startswith(b"event:"):
                self._event = line[6:].strip().decode("utf-8", "replace")
            # comments (":"), id: and retry: lines carry nothing a translator needs
        self._buf = buf[start:] + held
        if len(self._buf) + self._size > self._max:
            self._too_large()
        return events

    def _too_large(self) -> None:
        self._buf, self._data, self._size = b"", [], 0
        raise UpstreamResponseTooLarge(f"The upstream stream sent an event larger than {self._max} bytes.")

    def close(self) -> list[SseEvent]:
        """Flush an event left unterminated when the connection ended."""
        events = self.feed(b"\n\n") if self._buf else []
        if not events and self._data:
            events.append(SseEvent(self._event, b"\n".join(self._data)))
            self._data = []
        return events
