"""Atomic counters shared by every replica: JetStream counter streams (`Nats-Incr`, nats-server ≥ 2.12).

A counter is a subject of a stream created with `allow_msg_counter`; publishing to it with the header
`Nats-Incr: +n` (or `-n`) adds n and the server's ack carries the new total, atomically whichever
replica asked. With `Nats-Msg-Id` an increment is applied once however often it is retried (within
the stream's duplicate window), which makes settlements idempotent.

- `<P>_COUNTERS` (`<p>.ctr.>`): budget spend in micro-USD per scope and period, and concurrency per scope.
- `<P>_QUOTAS` (`<p>.quota.>`): requests and tokens per scope and UTC minute, kept a few minutes.
- `<P>_RESERVATIONS` (`<p>.resv.*`): the last state of each budget reservation (live/settled/released).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError

from shared.subjects import Subjects

log = logging.getLogger(__name__)

INCR = "Nats-Incr"
MSG_ID = "Nats-Msg-Id"
DUPLICATE_WINDOW_S = 15 * 60
QUOTA_MAX_AGE_S = 5 * 60
RESERVATIONS_MAX_AGE_S = 3 * 24 * 3600


class CounterError(Exception):
    """The counter could not be updated (server unreachable, stream missing, timeout)."""


class _Ack(msgspec.Struct):
    val: str | None = None
    duplicate: bool = False
    error: dict[str, object] | None = None


_ACK = msgspec.json.Decoder(_Ack)


@dataclass(frozen=True, slots=True)
class Count:
    value: int
    duplicate: bool = False  # the increment had been applied before (same Nats-Msg-Id)


class Counters:
    """Increment and read counters over one NATS connection."""

    def __init__(self, nc: Client, timeout_s: float = 2.0) -> None:
        self._nc = nc
        self._timeout = timeout_s

    async def add(self, subject: str, delta: int, msg_id: str = "") -> Count:
        headers = {INCR: f"{delta:+d}"}
        if msg_id:
            headers[MSG_ID] = msg_id
        try:
            msg = await self._nc.request(subject, b"", timeout=self._timeout, headers=headers)
        except (NatsError, NatsTimeoutError, TimeoutError, OSError) as exc:
            raise CounterError(f"counter {subject}: {type(exc).__name__}") from exc
        try:
            ack = _ACK.decode(msg.data)
        except msgspec.DecodeError as exc:
            raise CounterError(f"counter {subject}: unreadable answer") from exc
        if ack.error is not None:
            raise CounterError(f"counter {subject}: {ack.error.get('description', 'error')}")
        if ack.duplicate:
            return Count(0, duplicate=True)
        if ack.val is None:
            raise CounterError(f"counter {subject}: no value in the answer")
        return Count(int(ack.val))

    async def read(self, subject: str) -> int:
        return (await self.add(subject, 0)).value


def _stream(name: str, subjects: list[str], **extra: object) -> bytes:
    config: dict[str, object] = {
        "name": name,
        "subjects": subjects,
        "storage": "file",
        "retention": "limits",
        "discard": "old",
        "max_msgs_per_subject": 1,
        "duplicate_window": DUPLICATE_WINDOW_S * 1_000_000_000,
        **extra,
    }
    return json.dumps(config).encode()


async def ensure_counter_streams(nc: Client, subjects: Subjects, timeout_s: float = 5.0) -> None:
    """Create the counter and reservation streams if missing (idempotent; a different existing config is kept)."""
    streams = {
        subjects.counters_stream: _stream(
            subjects.counters_stream, [f"{subjects.prefix}.ctr.>"], allow_msg_counter=True
        ),
        subjects.quotas_stream: _stream(
            subjects.quotas_stream,
            [f"{subjects.prefix}.quota.>"],
            allow_msg_counter=True,
            max_age=QUOTA_MAX_AGE_S * 1_000_000_000,
            duplicate_window=QUOTA_MAX_AGE_S * 1_000_000_000,  # may not exceed max_age
        ),
        subjects.reservations_stream: _stream(
            subjects.reservations_stream,
            [subjects.reservations_wildcard],
            max_age=RESERVATIONS_MAX_AGE_S * 1_000_000_000,
            allow_direct=True,
        ),
    }
    for name, config in streams.items():
        reply = await nc.request(f"$JS.API.STREAM.CREATE.{name}", config, timeout=timeout_s)
        answer = json.loads(reply.data)
        error = answer.get("error")
        if error and error.get("err_code") != 10058:  # 10058: exists with another config: keep the operator's
            raise CounterError(f"cannot create stream {name}: {error.get('description')}")
