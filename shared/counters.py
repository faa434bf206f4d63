"""Atomic counters shared by every replica: JetStream counter streams (`Nats-Incr`, nats-server ≥ 2.12).

A counter is a subject of a stream created with `allow_msg_counter`; publishing to it with the header
`Nats-Incr: +n` (or `-n`) adds n and the server's ack carries the new total, atomically whichever
replica asked. With `Nats-Msg-Id` an increment is applied once however often it is retried (within
the stream's duplicate window), which makes settlements idempotent.

- `<P>_COUNTERS` (`<p>.ctr.>`): budget spend in micro-USD per scope and period, and concurrency per scope.
- `<P>_QUOTAS` (`<p>.quota.>`): requests and tokens per scope and UTC minute, kept a few minutes.
- `<P>_RESERVATIONS` (`<p>.resv.*`): the last state of each budget reservation (live/settled/released).
- `<P>_RUNS` (`<p>.run.>`): agent runs' counters (services/ingress/mcp/runs.py). Each counter keeps only its
  last message, and the stream's max age is the run TTL: a run's counters are gone that long after its last
  call, so runs do not pile up forever. (Counter streams refuse per-message TTLs, hence a stream of their own.)
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

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


@dataclass(frozen=True, slots=True)
class Op:
    """One increment: add `delta` to `subject` (0 reads it), once per `msg_id` when one is given."""

    subject: str
    delta: int
    msg_id: str = ""


class Counters:
    """Increment and read counters over one NATS connection.

    `add_many` sends a request's increments together and waits for all their answers on one reply
    subscription of its own: no task, timer or inbox per increment (the hot path pays a few µs each,
    not the ~50 µs of a plain NATS request)."""

    def __init__(self, nc: Client, timeout_s: float = 2.0) -> None:
        self._nc = nc
        self._timeout = timeout_s
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._inbox = ""
        self._sub: Subscription | None = None
        self._next = 0

    async def _reply_inbox(self) -> str:
        if self._sub is None:
            self._inbox = self._nc.new_inbox()
            self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)
        return self._inbox

    async def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject[len(self._inbox) + 1 :], None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def add(self, subject: str, delta: int, msg_id: str = "") -> Count:
        [result] = await self.add_many([Op(subject, delta, msg_id)])
        if isinstance(result, BaseException):
            raise result
        return result

    async def add_many(self, ops: Sequence[Op]) -> list[Count | CounterError]:
        """Send every increment at once; each answer (or the error that stands for it), in order."""
        if not ops:
            return []
        loop = asyncio.get_running_loop()
        try:
            inbox = await self._reply_inbox()
        except (NatsError, OSError) as exc:
            return [CounterError(f"counter {op.subject}: {type(exc).__name__}") for op in ops]
        futures: list[asyncio.Future[Msg]] = []
        tokens: list[str] = []
        errors: dict[int, CounterError] = {}
        for i, op in enumerate(ops):
            self._next += 1
            token = str(self._next)
            headers = {INCR: f"{op.delta:+d}"}
            if op.msg_id:
                headers[MSG_ID] = op.msg_id
            future: asyncio.Future[Msg] = loop.create_future()
            self._waiting[token] = future
            tokens.append(token)
            futures.append(future)
            try:
                await self._nc.publish(op.subject, b"", reply=f"{inbox}.{token}", headers=headers)
            except (NatsError, OSError) as exc:
                errors[i] = CounterError(f"counter {op.subject}: {type(exc).__name__}")
                future.cancel()
        try:
            async with asyncio.timeout(self._timeout):
                await asyncio.wait([f for f in futures if not f.done()] or futures)
        except TimeoutError:
            pass
        finally:
            for token in tokens:
                self._waiting.pop(token, None)
        out: list[Count | CounterError] = []
        for i, (op, future) in enumerate(zip(ops, futures, strict=True)):
            if i in errors:
                out.append(errors[i])
            elif not future.done() or future.cancelled():
                future.cancel()
                out.append(CounterError(f"counter {op.subject}: no answer within {self._timeout:g}s"))
            else:
                out.append(_count(op.subject, future.result()))
        return out

    async def read(self, subject: str) -> int:
        return (await self.add(subject, 0)).value


def _count(subject: str, msg: Msg) -> Count | CounterError:
    if not msg.data and msg.headers and msg.headers.get("Status") == "503":
        return CounterError(f"counter {subject}: no stream holds this counter")
    try:
        ack = _ACK.decode(msg.data)
    except msgspec.DecodeError:
        return CounterError(f"counter {subject}: unreadable answer")
    if ack.error is not None:
        return CounterError(f"counter {subject}: {ack.error.get('description', 'error')}")
    if ack.duplicate:
        return Count(0, duplicate=True)
    if ack.val is None:
        return CounterError(f"counter {subject}: no value in the answer")
    return Count(int(ack.val))


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
        if error:
            await _check_existing(nc, subjects, name, timeout_s)


async def _check_existing(nc: Client, subjects: Subjects, name: str, timeout_s: float) -> None:
    """An operator's stream of another config is kept, unless budgets could not be exact on it: the counters must
    deduplicate increment ids DUPLICATE_WINDOW_S (a lease's give-back and its release by accounting, and retried
    settlements, share ids that far apart; shared/config.py bounds request timeouts by it), and reservation states
    are read by direct get (shared/reservation_notes.py)."""
    if name not in (subjects.counters_stream, subjects.reservations_stream):
        return
    reply = await nc.request(f"$JS.API.STREAM.INFO.{name}", b"", timeout=timeout_s)
    config = json.loads(reply.data).get("config", {})
    if name == subjects.counters_stream:
        window_s = config.get("duplicate_window", 0) / 1e9
        if window_s < DUPLICATE_WINDOW_S:
            raise CounterError(
                f"stream {name} deduplicates increments for {window_s:g} s, less than the {DUPLICATE_WINDOW_S} s "
                f"budgets need to be counted once (an admin changes it with `nats stream edit {name} "
                f"--dupe-window {DUPLICATE_WINDOW_S}s`)"
            )
    elif not config.get("allow_direct"):
        raise CounterError(
            f"stream {name} does not allow direct gets, which settlement reads reservation states with (an admin "
            f"changes it with `nats stream edit {name} --allow-direct`)"
        )


async def ensure_run_stream(nc: Client, subjects: Subjects, ttl_s: float, timeout_s: float = 5.0) -> bool:
    """Create the agent runs' counter stream with `ttl_s` as its max age, if missing. An existing stream keeps its
    config (only the admin role manages streams): when its max age is not `ttl_s`, a warning says so and False is
    returned (an admin changes it with `nats stream edit <P>_RUNS --max-age`)."""
    ttl_ns = round(ttl_s * 1_000_000_000)
    name = subjects.runs_stream
    config = _stream(
        name,
        [subjects.runs_wildcard],
        allow_msg_counter=True,
        max_age=ttl_ns,
        duplicate_window=min(DUPLICATE_WINDOW_S * 1_000_000_000, ttl_ns),  # may not exceed max_age
    )
    reply = await nc.request(f"$JS.API.STREAM.CREATE.{name}", config, timeout=timeout_s)
    error = json.loads(reply.data).get("error")
    if error and error.get("err_code") != 10058:
        raise CounterError(f"cannot create stream {name}: {error.get('description')}")
    if not error:
        return True
    reply = await nc.request(f"$JS.API.STREAM.INFO.{name}", b"", timeout=timeout_s)
    existing = json.loads(reply.data).get("config", {}).get("max_age", 0)
    if existing != ttl_ns:
        log.warning(
            "stream %s keeps a max age of %gs, not mcp.run_ttl_s=%gs: agent runs' counters last that long "
            "(an admin changes it with `nats stream edit %s --max-age %ds`)",
            name,
            existing / 1e9,
            ttl_s,
            name,
            round(ttl_s),
        )
        return False
    return True
