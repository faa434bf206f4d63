"""Reservation states on `<p>.resv.<id>`, read as they are now and moved by compare-and-set.

The state on a reservation's subject is the lock across accounting replicas (and ingress): a settlement or a
release moves it from the state it read to the next one with `Nats-Expected-Last-Subject-Sequence` set to the
sequence it read, so of two replicas deciding at once exactly one moves it, and only that one applies the
counter operations; the other reads the state again and follows it.
"""

from __future__ import annotations

import contextlib

import msgspec
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from shared.bus import EXPECTED_LAST_SUBJECT_SEQ
from shared.jetstream_acks import WRONG_LAST_SEQUENCE
from shared.schemas.events import ReservationState
from shared.subjects import Subjects


class Notes:
    def __init__(self, js: JetStreamContext, subjects: Subjects, timeout_s: float) -> None:
        self._js = js
        self._subjects = subjects
        self._timeout = timeout_s
        self._decode = msgspec.msgpack.Decoder(ReservationState).decode
        self._encode = msgspec.msgpack.Encoder().encode

    async def read(self, request_id: str) -> tuple[int, ReservationState | None]:
        """The reservation's state now, with its sequence on the stream; (0, None) when it has none. An unreadable
        state reads as none of the three (its sequence still guards the next move)."""
        subject = self._subjects.reservation(request_id).name
        try:
            msg = await self._js.get_last_msg(self._subjects.reservations_stream, subject, direct=True)
        except NotFoundError:
            return 0, None
        try:
            return msg.seq or 0, self._decode(msg.data or b"")
        except msgspec.MsgspecError:
            return msg.seq or 0, None

    async def move(self, state: ReservationState, expected: int) -> bool:
        """Publish `state` if the subject's last sequence is still `expected` (0: it has none): whether it moved.
        An ack lost on the way is settled by reading the subject back (its last message is ours, or not)."""
        request_id = state.reservation.request_id
        data = self._encode(state)
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
            raise
        return True
