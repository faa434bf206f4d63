"""The services' NATS connection helper against a real (development, unauthenticated) nats-server: it
connects without credentials, refuses to serve ingress on a server whose max_payload is too small, and
hands over to the supervisor when its connection is closed for good or its credential is refused on
reconnect, but not when it stops on purpose."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gatehouse.credentials import ensure_credentials
from gatehouse.natsconf import render_config
from gatehouse.natsserver import NatsServer, restart_nats, start_nats
from shared.natsconn import BusPayloadTooSmallError, NatsLink, nats_broker, nats_problem, required_max_payload
from shared.subjects import Subjects

pytestmark = pytest.mark.timeout(30)
MIB = 1024 * 1024


def link(server: NatsServer, subjects: Subjects) -> NatsLink:
    return NatsLink((server.url,), "ingress", subjects.prefix)


async def test_connects_without_credentials_to_a_dev_server_with_its_role_inbox(
    nats_server: NatsServer, subjects: Subjects
) -> None:
    broker = nats_broker(link(nats_server, subjects), max_body_bytes=512 * 1024, on_closed=lambda: None)
    assert nats_problem(broker) == "not connected to NATS yet"
    await broker.start()
    try:
        assert nats_problem(broker) == ""
        assert broker.connection.new_inbox().startswith(f"{subjects.role_inbox('ingress')}.")
    finally:
        await broker.stop()


async def test_ingress_refuses_a_server_whose_max_payload_cannot_carry_its_body_limit(
    nats_server: NatsServer, subjects: Subjects
) -> None:
    broker = nats_broker(link(nats_server, subjects), max_body_bytes=4 * MIB, on_closed=lambda: None)
    with pytest.raises(BusPayloadTooSmallError, match="max_payload"):
        await broker.start()  # the bare test server has nats-server's default 1 MiB
    await broker.stop()
    assert required_max_payload(4 * MIB) > 1 * MIB


async def test_a_closed_connection_hands_over_to_the_supervisor_and_a_stop_does_not(
    nats_server: NatsServer, subjects: Subjects
) -> None:
    closed = asyncio.Event()
    broker = nats_broker(link(nats_server, subjects), on_closed=closed.set)
    await broker.start()
    await broker.connection.close()  # closed for good, not by the broker's own stop
    await asyncio.wait_for(closed.wait(), 10)
    await broker.stop()

    calls: list[int] = []
    stopped = nats_broker(link(nats_server, subjects), on_closed=lambda: calls.append(1))
    await stopped.start()
    nc = stopped.connection
    await stopped.stop()
    assert nc.is_closed
    assert calls == []


async def test_a_credential_refused_on_reconnect_hands_over_to_the_supervisor(tmp_path: Path) -> None:
    keys = ensure_credentials(tmp_path / "creds", ("router", "admin"))
    subjects = Subjects("rekey")
    conf = tmp_path / "nats.conf"
    conf.write_text(render_config(subjects, {r: k.public_key for r, k in keys.items()}))
    server = start_nats(tmp_path / "js", log_file=tmp_path / "nats.log", config_file=conf)
    refused = asyncio.Event()
    broker = nats_broker(
        NatsLink((server.url,), "router", subjects.prefix, str(keys["router"].seed_file)), on_closed=refused.set
    )
    try:
        await broker.start()
        server.stop()
        # the router's key is revoked while it is away
        conf.write_text(render_config(subjects, {"admin": keys["admin"].public_key}))
        server = restart_nats(server)
        await asyncio.wait_for(refused.wait(), 15)
        # FastStream re-raises the refusal in nats-py's reconnect task, which ends there (why the process must
        # exit); take its exception so it is not reported at garbage collection
        task = broker.connection._reconnection_task
        assert task is not None
        await asyncio.wait({task}, timeout=5)
        assert "authorization violation" in str(task.exception()).lower()
    finally:
        await broker.stop()
        server.stop()
