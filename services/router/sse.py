"""Incremental server-sent-events parser (bytes in, `SseEvent`s out), per the WHATWG event-stream format."""

from __future__ import annotations

from services.router.providers.base import SseEvent


class SseParser:
    """Feed raw bytes as they arrive; get complete events back. Handles CRLF, LF and split lines."""

    __slots__ = ("_buf", "_data", "_event")

    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[SseEvent]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
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
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
            elif line.startswith(b"event:"):
                self._event = line[6:].strip().decode("utf-8", "replace")
            # comments (":"), id: and retry: lines carry nothing a translator needs
        self._buf = buf[start:]
        return events

    def close(self) -> list[SseEvent]:
        """Flush an event left unterminated when the connection ended."""
        events = self.feed(b"\n\n") if self._buf else []
        if not events and self._data:
            events.append(SseEvent(self._event, b"\n".join(self._data)))
            self._data = []
        return events
