"""Reservation states on `<p>.resv.<id>`, read as they are now and moved by compare-and-set.

The state on a reservation's subject is the lock across accounting replicas (and ingress): a settlement or a
release moves it from the state it read to the next one with `Nats-Expected-Last-Subject-Sequence` set to the
sequence it read, so of two replicas deciding at once exactly one moves it, and only that one applies the
counter operations; the other reads the state again and follows it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import msgspec
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from shared.bus import EXPECTED_LAST_SUBJECT_SEQ
from shared.jetstream_acks import WRONG_LAST_SEQUENCE
from shared.schemas.events import ReservationState
from shared.subjects import Subjects


class MoveUnknown(NatsTimeoutError):
    """A move neither acknowledged nor read back: it may be stored. `data` is what was published, which only this
    move can have written (its `at` differs from any other's)."""

    def __init__(self, request_id: str, data: bytes) -> None:
        super().__init__()
        self.request_id = request_id
        self.data = data

    def __str__(self) -> str:
        return f"nats: timeout (the move of reservation {self.request_id} may or may not be stored)"


class Notes:
    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        timeout_s: float,
        seen: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self._js = js
        # told the raw state of every subject read (request id, bytes), to recognise a move of unknown outcome
        self._seen = seen
        self._subjects = subjects
        self._timeout = timeout_s
        self._decode = msgspec.msgpack.Decoder(ReservationState).decode
        self._encode = msgspec.msgpack.Encoder().encode

    def encode(self, state: ReservationState) -> bytes:
        """The bytes `move` publishes for `state`."""
        return self._encode(state)

    async def read(self, request_id: str) -> tuple[int, ReservationState | None]:
        """The reservation's state now, with its sequence on the stream; (0, None) when it has none. An unreadable
        state reads as none of the three (its sequence still guards the next move)."""
        subject = self._subjects.reservation(request_id).name
        try:
            msg = await self._js.get_last_msg(self._subjects.reservations_stream, subject, direct=True)
        except NotFoundError:
            return 0, None
        if self._seen is not None:
            self._seen(request_id, msg.data or b"")
        try:
            return msg.seq or 0, self._decode(msg.data or b"")
        except msgspec.MsgspecError:
            return msg.seq or 0, None

    async def move(self, state: ReservationState, expected: int, data: bytes | None = None) -> bool:
        """Publish `state` (`data`, when the caller encoded it already) if the subject's last sequence is still
        `expected` (0: it has none): whether it moved. An ack lost on the way is settled by reading the subject back
        (its last message is ours: moved); when that does not tell (the read fails, or shows another state, which
        may have followed ours) MoveUnknown."""
        request_id = state.reservation.request_id
        data = self.encode(state) if data is None else data
        try:
            await self._js.publish(
                self._subjects.reservation(request_id).name,
                data,
                timeout=self._timeout,
                headers={EXPECTED_LAST_SUBJECT_SEQ: str(expected)},
            )
        except APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                return False
            raise
        except NatsTimeoutError:
            with contextlib.suppress(Exception):
                subject = self._subjects.reservation(request_id).name
                msg = await self._js.get_last_msg(self._subjects.reservations_stream, subject, direct=True)
                if msg.data == data:
                    return True
            raise MoveUnknown(request_id, data) from None
        return True
