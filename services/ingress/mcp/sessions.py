"""MCP client sessions of one ingress replica (`Mcp-Session-Id`): which key opened each, the protocol version it
negotiated, and the queues of its GET streams (server notifications). A session is bound to its key: another
key presenting its id gets 404, as an unknown id does. Idle sessions expire; the oldest goes when full."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field

# notifications a GET stream may fall behind by before the oldest is dropped (they only say "list again")
STREAM_BACKLOG = 64


@dataclass
class Session:
    id: str
    key_id: str
    protocol_version: str
    created_at: float
    last_seen: float
    streams: set[asyncio.Queue[bytes]] = field(default_factory=set)

    def notify(self, message: bytes) -> None:
        for queue in self.streams:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(message)


class Sessions:
    def __init__(self, idle_s: float, max_sessions: int, max_per_key: int = 100) -> None:
        self._idle_s = idle_s
        self._max = max_sessions
        # one key's sessions past this push out its own oldest, never another key's
        self._max_per_key = max_per_key
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, key_id: str, protocol_version: str, now: float | None = None) -> Session:
        now = time.monotonic() if now is None else now
        self.expire(now)
        own = [s for s in self._sessions.values() if s.key_id == key_id]
        while len(own) >= self._max_per_key:
            oldest = min(own, key=lambda s: s.last_seen)
            own.remove(oldest)
            self.close(oldest.id)
        while len(self._sessions) >= self._max:
            oldest = min(self._sessions.values(), key=lambda s: s.last_seen)
            self.close(oldest.id)
        session = Session(secrets.token_urlsafe(24), key_id, protocol_version, now, now)
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str, key_id: str, now: float | None = None) -> Session | None:
        session = self._sessions.get(session_id)
        if session is None or session.key_id != key_id:
            return None
        now = time.monotonic() if now is None else now
        if now - session.last_seen > self._idle_s and not session.streams:
            self.close(session_id)
            return None
        session.last_seen = now
        return session

    def close(self, session_id: str) -> bool:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        session.notify(b"")  # the end of every stream it has
        return True

    def expire(self, now: float) -> None:
        stale = [s.id for s in self._sessions.values() if now - s.last_seen > self._idle_s and not s.streams]
        for session_id in stale:
            self.close(session_id)

    def broadcast(self, message: bytes) -> None:
        for session in self._sessions.values():
            session.notify(message)

    def stream(self, session: Session) -> asyncio.Queue[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(STREAM_BACKLOG)
        session.streams.add(queue)
        return queue

    def unstream(self, session: Session, queue: asyncio.Queue[bytes]) -> None:
        session.streams.discard(queue)
