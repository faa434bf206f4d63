"""Shared fixtures: a real nats-server per test session, and a unique subject prefix per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatehouse.natsserver import NatsServer, start_nats
from shared.subjects import Subjects


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A real nats-server with JetStream on a free port, shared by the session's tests."""
    store: Path = tmp_path_factory.mktemp("nats")
    server = start_nats(store / "js", log_file=store / "nats.log")
    yield server
    server.stop()


@pytest.fixture
def subjects() -> Subjects:
    """A subject tree no other test uses."""
    return Subjects(prefix=f"t{uuid.uuid4().hex[:10]}")
