"""How a gatehouse process connects to NATS: as its role (an NKey seed file), with its own reply inbox,
reconnecting forever, and exiting if the connection is closed for good so its supervisor restarts it.

Without a seed file a process connects unauthenticated, which only a development server accepts.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import nats
from faststream.exceptions import IncorrectState
from faststream.nats import NatsBroker
from faststream.nats.security import NatsNKey
from nats.aio.client import Client
from nats.errors import ConnectionClosedError, ConnectionReconnectingError

from shared import metrics
from shared.permissions import Role
from shared.subjects import Subjects

log = logging.getLogger("gatehouse.nats")

# seconds between reconnect attempts (per server); a restarted nats-server is back within about a second
RECONNECT_WAIT_S = 1
# a process whose connection closed asks itself to stop, and is killed if stopping takes longer than this
CLOSED_EXIT_GRACE_S = 10.0
EXIT_NATS_CLOSED = 75  # EX_TEMPFAIL: restart me

# bus payload limits (see `server_max_payload`)
MIB = 1024 * 1024
SERVER_PAYLOAD_CAP = 64 * MIB  # nats-server refuses a max_payload above its max_pending (64 MiB)
ENVELOPE_HEADROOM = 64 * 1024  # a request's fields besides the body, and its headers


@dataclass(frozen=True, slots=True)
class NatsLink:
    """Where and as whom one process connects."""

    servers: tuple[str, ...]
    role: Role
    prefix: str
    nkey_seed_file: str = ""

    @property
    def inbox_prefix(self) -> str:
        return Subjects(self.prefix).role_inbox(self.role)

    @property
    def name(self) -> str:
        return f"gatehouse-{self.role}"

    def check(self) -> None:
        """Fail at startup, naming the file, if the seed file is unusable; warn if others can read it."""
        if not self.nkey_seed_file:
            return
        path = Path(self.nkey_seed_file)
        try:
            mode = path.stat().st_mode
            path.read_bytes()
        except OSError as exc:
            raise ValueError(f"NATS NKey seed file {path} cannot be read: {exc.strerror}") from exc
        if mode & stat.S_IRWXO:  # group access is how Kubernetes secret volumes reach a non-root user
            log.warning("NATS NKey seed file %s is readable by anyone (mode %o); chmod 600 it", path, mode & 0o777)


def server_max_payload(max_body_bytes: int) -> int:
    """The nats-server `max_payload` for an HTTP body limit: twice the body plus 1 MiB, capped at 64 MiB."""
    return min(SERVER_PAYLOAD_CAP, 2 * max_body_bytes + MIB)


def required_max_payload(max_body_bytes: int) -> int:
    """The least `max_payload` on which every request ingress accepts can travel."""
    return max_body_bytes + ENVELOPE_HEADROOM


class BusPayloadTooSmallError(RuntimeError):
    """The NATS server's max_payload is below what the configured HTTP body limit needs."""


def check_max_payload(server_max: int, max_body_bytes: int) -> None:
    needed = required_max_payload(max_body_bytes)
    if server_max < needed:
        raise BusPayloadTooSmallError(
            f"the NATS server accepts messages up to {server_max} bytes (max_payload), but server.max_body_bytes "
            f"= {max_body_bytes} needs at least {needed}: raise max_payload in the nats-server config (at least "
            f"{server_max_payload(max_body_bytes)} recommended; `gatehouse up` sets it) or lower server.max_body_bytes"
        )


def terminate_process() -> None:
    """Stop this process gracefully (SIGTERM to itself), and for certain after a grace period."""
    timer = threading.Timer(CLOSED_EXIT_GRACE_S, os._exit, (EXIT_NATS_CLOSED,))
    timer.daemon = True
    timer.start()
    os.kill(os.getpid(), signal.SIGTERM)


class GatehouseBroker(NatsBroker):
    """A NatsBroker that knows whether its own stop closed the connection, and checks the server's max_payload."""

    def __init__(
        self, link: NatsLink, *, max_body_bytes: int | None, on_closed: Callable[[], None], log_level: int
    ) -> None:
        link.check()
        self._serving = False
        self._stopping = False
        self._max_body_bytes = max_body_bytes
        self._on_closed = on_closed
        super().__init__(
            list(link.servers),
            name=link.name,
            security=NatsNKey.from_file(link.nkey_seed_file) if link.nkey_seed_file else None,
            inbox_prefix=link.inbox_prefix,
            max_reconnect_attempts=-1,  # never give up: the server comes back (a restart, a rolling upgrade)
            reconnect_time_wait=RECONNECT_WAIT_S,
            error_cb=self._error,
            disconnected_cb=_log_disconnected,
            reconnected_cb=_count_reconnected,
            closed_cb=self._closed,
            log_level=log_level,
        )

    async def start(self) -> None:
        await super().start()
        if self._max_body_bytes is not None:
            try:
                check_max_payload(self.connection.max_payload, self._max_body_bytes)
            except BusPayloadTooSmallError as exc:
                log.error("cannot serve: %s", exc)
                raise
        self._serving = True

    async def stop(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> None:
        self._stopping = True
        try:
            await super().stop(exc_type, exc_val, exc_tb)
        except (ConnectionClosedError, ConnectionReconnectingError):
            # closed for good before this stop (see _closed), or the server is away: nothing can be drained
            if self._connection is not None:
                await self._connection.close()
            self._connection = None
            self.config.disconnect()

    async def _closed(self) -> None:
        if self._stopping:
            return
        log.error("the NATS connection is closed for good; exiting so that this process is restarted")
        self._on_closed()

    async def _error(self, err: Exception) -> None:
        text = str(err).lower()
        if "permissions violation" in text:
            # a role doing what it may not: a misconfigured deployment (or a bug), never routine
            log.error("NATS refused: %s", err)
        elif "authorization violation" in text and self._serving and not self._stopping:
            # the server no longer accepts this credential (rotated or revoked): nats-py would stay stuck
            # reconnecting; a restarted process reads its credential again
            log.error("NATS refused this process's credential on reconnect; exiting so that it is restarted")
            self._on_closed()


async def _log_disconnected() -> None:
    log.warning("disconnected from NATS")
    metrics.nats_disconnected()


async def _count_reconnected() -> None:
    log.info("reconnected to NATS")
    metrics.nats_reconnected()


def nats_broker(
    link: NatsLink,
    *,
    max_body_bytes: int | None = None,
    on_closed: Callable[[], None] = terminate_process,
    log_level: int = logging.DEBUG,
) -> NatsBroker:
    """The FastStream broker of one service process. `max_body_bytes` (ingress): refuse to start on a server
    whose max_payload cannot carry the largest accepted request. `log_level` is the level FastStream logs
    each message at: DEBUG keeps them out of an INFO log."""
    return GatehouseBroker(link, max_body_bytes=max_body_bytes, on_closed=on_closed, log_level=log_level)


def nats_problem(broker: NatsBroker) -> str:
    """'' while the broker is connected, else why not (for health endpoints)."""
    try:
        nc = broker.connection
    except IncorrectState:
        return "not connected to NATS yet"
    if nc.is_closed:
        return "the NATS connection is closed"
    if nc.is_reconnecting:
        return "lost the NATS connection; reconnecting"
    if not nc.is_connected:
        return "not connected to NATS"
    return ""


async def connect(link: NatsLink, *, connect_timeout: float = 5.0, reconnect: bool = False) -> Client:
    """A plain nats-py connection as `link.role` (the CLI's, and tests'): fails at once unless `reconnect`."""
    link.check()
    return await nats.connect(
        list(link.servers),
        name=link.name,
        inbox_prefix=link.inbox_prefix,
        connect_timeout=int(connect_timeout) or 1,
        allow_reconnect=reconnect,
        max_reconnect_attempts=-1 if reconnect else 0,
        nkeys_seed=link.nkey_seed_file or None,
    )
