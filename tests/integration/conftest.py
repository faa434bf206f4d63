"""Fixtures of the integration tests beyond the suite's own (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client

from gatehouse.natsserver import NatsServer
from shared.bus import ensure_events_stream, ensure_hooks_stream
from shared.counters import ensure_counter_streams
from shared.subjects import Subjects


@pytest.fixture
async def nc(nats_server: NatsServer, subjects: Subjects) -> AsyncIterator[Client]:
    """A connection to the suite's nats-server with the events and hooks streams in place (a module may define its
    own `nc` instead)."""
    conn = await nats.connect(nats_server.url)
    js = conn.jetstream()
    await ensure_events_stream(js, subjects)
    await ensure_hooks_stream(js, subjects)
    yield conn
    await conn.close()


@pytest.fixture
async def ncs(nats_server: NatsServer, subjects: Subjects) -> AsyncIterator[list[Client]]:
    """Three connections to the suite's nats-server with the counter streams in place: as many replicas' (two
    ingress or accounting replicas, and the test's own)."""
    conns = [await nats.connect(nats_server.url) for _ in range(3)]
    await ensure_counter_streams(conns[2], subjects)
    yield conns
    for conn in conns:
        await conn.close()
