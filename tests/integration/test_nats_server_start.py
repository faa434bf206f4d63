"""Starting a local nats-server: the server returned is the one started, listening; a port taken by another
process is an error at once, never a handle on whoever holds the port."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import nats
import pytest

from gatehouse.natsserver import restart_nats, start_nats

pytestmark = pytest.mark.timeout(60)


def test_a_port_held_by_another_listener_fails_the_start_instead_of_reaching_that_listener(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        with pytest.raises(OSError, match="exited with code"):
            start_nats(tmp_path / "js", port=taken, log_file=tmp_path / "nats.log")
    assert "address already in use" in (tmp_path / "nats.log").read_text()


def test_a_server_without_a_port_listens_on_the_one_it_chose_and_comes_back_there(tmp_path: Path) -> None:
    server = start_nats(tmp_path / "js", log_file=tmp_path / "nats.log")
    try:
        assert server.port > 0 and server.process.poll() is None
        asyncio.run(_round_trip(server.url))
        server.stop()
        server = restart_nats(server)
        asyncio.run(_round_trip(server.url))
    finally:
        server.stop()


async def _round_trip(url: str) -> None:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        sub = await nc.subscribe("start.check")
        await nc.publish("start.check", b"here")
        assert (await sub.next_msg(timeout=10)).data == b"here"
    finally:
        await nc.close()
