"""The event publisher against a real nats-server that goes away: every event reaches the stream exactly
once and in publish order, through the spool, and a spool left by a dead process is replayed by the next."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig

from gatehouse.natsserver import NatsServer, free_port, start_nats
from shared.bus import ensure_events_stream
from shared.event_publisher import EventPublisher
from shared.schemas.events import GuardEvent
from shared.spool import Spool, SpoolConfig
from shared.spool_format import SpooledEvent, frame
from shared.subjects import Subjects, encode

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]


def verdict(event_id: str) -> GuardEvent:
    return GuardEvent(event_id=event_id, request_id=event_id, policy="p", action="flag", at=time.time())


async def until(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Server:
    """A nats-server this test may kill and start again on the same port and store."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.port = free_port()
        self.proc: NatsServer | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = start_nats(self.store, port=self.port, log_file=self.store.parent / "nats.log")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.process.send_signal(signal.SIGKILL)
        self.proc.process.wait(10)

    def pause(self, resume: bool = False) -> None:
        """SIGSTOP: connections stay open, nothing is read or answered (SIGCONT with resume=True)."""
        assert self.proc is not None
        self.proc.process.send_signal(signal.SIGCONT if resume else signal.SIGSTOP)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.process.send_signal(signal.SIGCONT)
            self.proc.stop()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = Server(tmp_path / "js")
    srv.start()
    yield srv
    srv.stop()


async def connect(url: str) -> Client:
    return await nats.connect(url, reconnect_time_wait=0.1, max_reconnect_attempts=-1, connect_timeout=1)


async def stored_ids(nc: Client, subjects: Subjects) -> list[str]:
    """Event ids in the stream, in stream order (decoding each payload)."""
    js = nc.jetstream()
    info = await js.stream_info(subjects.events_stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(subjects.events_stream, seq)
        assert msg.data is not None
        out.append(subjects.events_guard.decode(msg.data).event_id)
    return out


async def stream_count(nc: Client, subjects: Subjects) -> int:
    info = await nc.jetstream().stream_info(subjects.events_stream)
    return int(info.state.messages)


def spool_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.seg") if p.stat().st_size and p.name != "rejected.seg"]


async def test_events_published_while_the_server_is_down_arrive_once_in_order(
    server: Server, subjects: Subjects, tmp_path: Path
) -> None:
    nc = await connect(server.url)
    await ensure_events_stream(nc.jetstream(), subjects)
    publisher = EventPublisher(SpoolConfig(root=tmp_path / "spool"), timeout_s=2.0)
    await publisher.start(nc)
    try:
        publisher.publish(subjects.events_guard, verdict("before"), "before")
        await until(lambda: publisher.published == 1, what="the first event")
        server.kill()
        await until(lambda: not nc.is_connected, what="the client to notice")

        ids = [f"down-{i:04d}" for i in range(500)]
        for event_id in ids:
            publisher.publish(subjects.events_guard, verdict(event_id), event_id)
        assert publisher.spooling and publisher.spooled == 500 and publisher.published == 1
        assert sum(p.stat().st_size for p in spool_files(tmp_path / "spool")) > 500 * 40

        server.start()
        await until(lambda: publisher.published == 501 and not publisher.spooling, what="the replay")
        assert await stored_ids(nc, subjects) == ["before", *ids]
        assert spool_files(tmp_path / "spool") == [], "a replayed spool is truncated"
        assert publisher.dropped == 0
    finally:
        await publisher.drain(5)
        await nc.close()


async def test_a_restart_in_the_middle_of_steady_traffic_loses_and_duplicates_nothing(
    server: Server, subjects: Subjects, tmp_path: Path
) -> None:
    nc = await connect(server.url)
    await ensure_events_stream(nc.jetstream(), subjects)
    publisher = EventPublisher(SpoolConfig(root=tmp_path / "spool"), timeout_s=2.0)
    await publisher.start(nc)
    published: list[str] = []
    restarted = asyncio.Event()

    async def traffic() -> None:
        # steady traffic (~1000 events/s) for at least 1500 events, and on until the server is back
        while len(published) < 1500 or not restarted.is_set():
            for _ in range(10):
                event_id = uuid.uuid4().hex
                publisher.publish(subjects.events_guard, verdict(event_id), event_id)
                published.append(event_id)
            await asyncio.sleep(0.01)

    producer = asyncio.create_task(traffic())
    try:
        await until(lambda: publisher.published >= 300, what="traffic to flow")
        server.kill()  # mid-window: some publishes are in flight, some stored without an ack
        await until(lambda: publisher.spooled >= 200, what="events to be spooled")
        server.start()
        restarted.set()
        await producer
        await until(lambda: publisher.published == len(published) and not publisher.spooling, what="the replay")
        stored = await stored_ids(nc, subjects)
        assert len(stored) == len(set(stored)) == len(published), "count = distinct = published"
        assert stored == published, "in publish order"
        assert publisher.dropped == 0
    finally:
        producer.cancel()
        await publisher.drain(5)
        await nc.close()


async def test_events_stored_whose_acks_never_came_are_stored_once(
    server: Server, subjects: Subjects, tmp_path: Path
) -> None:
    """The server stops answering (publishes time out), then resumes and stores what it had buffered:
    the same events replayed from the spool are deduplicated on their Nats-Msg-Id."""
    nc = await connect(server.url)
    await ensure_events_stream(nc.jetstream(), subjects)
    publisher = EventPublisher(SpoolConfig(root=tmp_path / "spool"), timeout_s=1.0, retry_max_s=0.2)
    await publisher.start(nc)
    try:
        publisher.publish(subjects.events_guard, verdict("first"), "first")
        await until(lambda: publisher.published == 1, what="the first event")
        server.pause()
        ids = [f"stalled-{i:03d}" for i in range(200)]
        for event_id in ids:
            publisher.publish(subjects.events_guard, verdict(event_id), event_id)
        await until(lambda: publisher.spooling, what="the ack timeout")
        later = [f"later-{i:03d}" for i in range(100)]
        for event_id in later:
            publisher.publish(subjects.events_guard, verdict(event_id), event_id)
        server.pause(resume=True)
        await until(lambda: publisher.published == 301 and not publisher.spooling, what="the replay")
        assert await stored_ids(nc, subjects) == ["first", *ids, *later]
    finally:
        await publisher.drain(5)
        await nc.close()


async def test_events_in_flight_and_queued_when_the_server_dies_keep_their_order(
    server: Server, subjects: Subjects, tmp_path: Path
) -> None:
    """A full window in flight and more queued behind it when the server dies: they go to the spool in
    publish order, ahead of what comes next."""
    nc = await connect(server.url)
    await ensure_events_stream(nc.jetstream(), subjects)
    publisher = EventPublisher(SpoolConfig(root=tmp_path / "spool"), window=64, timeout_s=30.0)
    await publisher.start(nc)
    try:
        server.pause()
        ids = [f"inflight-{i:03d}" for i in range(150)]
        for event_id in ids:
            publisher.publish(subjects.events_guard, verdict(event_id), event_id)
        await until(lambda: len(publisher._inflight) == 64, what="a full window")
        server.kill()  # what it had not read from the socket is gone
        await until(lambda: publisher.spooling, what="the disconnect")
        after = [f"after-{i:03d}" for i in range(50)]
        for event_id in after:
            publisher.publish(subjects.events_guard, verdict(event_id), event_id)
        server.start()
        await until(lambda: publisher.published == 200 and not publisher.spooling, what="the replay")
        assert await stored_ids(nc, subjects) == [*ids, *after]
    finally:
        await publisher.drain(5)
        await nc.close()


async def test_a_full_spool_refuses_new_events_loudly_and_keeps_the_earlier_ones(
    server: Server, subjects: Subjects, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    nc = await connect(server.url)
    await ensure_events_stream(nc.jetstream(), subjects)
    size = SpooledEvent(subject=subjects.events_guard.name, event_id="x00", data=encode(verdict("x00")))
    one = len(frame(size))
    config = SpoolConfig(root=tmp_path / "spool", max_bytes=30 * one + one // 2)
    publisher = EventPublisher(config, timeout_s=2.0)
    await publisher.start(nc)
    try:
        server.kill()
        await until(lambda: not nc.is_connected, what="the client to notice")
        ids = [f"x{i:02d}" for i in range(40)]  # all records the same size
        with caplog.at_level(logging.ERROR, logger="gatehouse.events"):
            for event_id in ids:
                publisher.publish(subjects.events_guard, verdict(event_id), event_id)
        assert (publisher.spooled, publisher.dropped) == (30, 10)
        assert "x30 on" in caplog.text and "LOST: the spool is full" in caplog.text
        server.start()
        await until(lambda: publisher.published == 30 and not publisher.spooling, what="the replay")
        assert await stored_ids(nc, subjects) == ids[:30]
    finally:
        await publisher.drain(5)
        await nc.close()


async def test_a_missing_stream_spools_until_it_exists(server: Server, subjects: Subjects, tmp_path: Path) -> None:
    nc = await connect(server.url)
    publisher = EventPublisher(SpoolConfig(root=tmp_path / "spool"), timeout_s=2.0, retry_max_s=0.2)
    await publisher.start(nc)
    try:
        ids = [f"nostream-{i}" for i in range(50)]
        for event_id in ids:
            publisher.publish(subjects.events_guard, verdict(event_id), event_id)
        await until(lambda: publisher.spooling, what="no responders to turn spooling on")
        assert publisher.published == 0
        await ensure_events_stream(nc.jetstream(), subjects)
        await until(lambda: publisher.published == 50 and not publisher.spooling, what="the replay")
        assert await stored_ids(nc, subjects) == ids
    finally:
        await publisher.drain(5)
        await nc.close()


async def test_an_event_jetstream_refuses_is_set_aside_and_does_not_block_the_rest(
    server: Server, subjects: Subjects, tmp_path: Path
) -> None:
    nc = await connect(server.url)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(name=subjects.events_stream, subjects=[subjects.events_wildcard], max_msg_size=300)
    )
    publisher = EventPublisher(SpoolConfig(root=tmp_path / "spool"), timeout_s=2.0)
    await publisher.start(nc)
    try:
        big = GuardEvent(event_id="big", request_id="x" * 1000, policy="p", action="flag", at=0.0)
        publisher.publish(subjects.events_guard, verdict("a"), "a")
        publisher.publish(subjects.events_guard, big, "big")
        publisher.publish(subjects.events_guard, verdict("b"), "b")
        await until(lambda: publisher.published == 2 and publisher.rejected == 1, what="the rest to pass")
        assert await stored_ids(nc, subjects) == ["a", "b"]
        assert (tmp_path / "spool" / "rejected.seg").stat().st_size > 1000
    finally:
        await publisher.drain(5)
        await nc.close()


async def test_drain_while_jetstream_is_away_spools_and_the_next_process_replays(
    server: Server, subjects: Subjects, tmp_path: Path
) -> None:
    """SIGTERM with JetStream down: drain returns at once, the spool stays, the next process publishes it."""
    nc = await connect(server.url)
    await ensure_events_stream(nc.jetstream(), subjects)
    config = SpoolConfig(root=tmp_path / "spool")
    # acks would be waited for up to 120 s: a drain that waited for them could not end within the 30 s below
    first = EventPublisher(config, timeout_s=120.0)
    await first.start(nc)
    server.kill()
    await until(lambda: not nc.is_connected, what="the client to notice")
    ids = [f"term-{i}" for i in range(100)]
    for event_id in ids:
        first.publish(subjects.events_guard, verdict(event_id), event_id)
    await asyncio.wait_for(first.drain(120), 30)  # no waiting for a JetStream that is away
    assert spool_files(config.root)

    server.start()
    await until(lambda: nc.is_connected, what="reconnection")
    second = EventPublisher(config, timeout_s=2.0)
    await second.start(nc)
    try:
        await until(lambda: second.published == 100 and not second.spooling, what="the adopted spool to replay")
        assert await stored_ids(nc, subjects) == ids
        assert [p for p in config.root.iterdir() if p.is_dir()] == [second.spool.directory]
    finally:
        await second.drain(5)
        await nc.close()
    assert not [p for p in config.root.iterdir() if p.is_dir()], "a drained, empty spool is removed"


async def test_a_running_process_adopts_a_spool_orphaned_meanwhile(
    server: Server, subjects: Subjects, tmp_path: Path
) -> None:
    """A replica that died with a spool is picked up by a live one, not only by its own restart."""
    nc = await connect(server.url)
    await ensure_events_stream(nc.jetstream(), subjects)
    config = SpoolConfig(root=tmp_path / "spool")
    live = EventPublisher(config, adopt_every_s=0.2)
    await live.start(nc)
    try:
        dead = Spool.open(config)
        for i in range(20):
            event_id = f"orphan-{i}"
            dead.append(
                SpooledEvent(subject=subjects.events_guard.name, event_id=event_id, data=encode(verdict(event_id)))
            )
        for segment in dead._segments:  # what a SIGKILL leaves: the files, and the lock released
            os.close(segment.fd)
        os.close(dead._lock_fd)
        await until(lambda: live.published == 20 and not live.spooling, what="the adoption")
        assert await stored_ids(nc, subjects) == [f"orphan-{i}" for i in range(20)]
        assert not dead.directory.exists()
    finally:
        await live.drain(5)
        await nc.close()


_CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys, time
    from pathlib import Path
    import nats
    from shared.event_publisher import EventPublisher
    from shared.schemas.events import GuardEvent
    from shared.spool import SpoolConfig
    from shared.subjects import Subjects

    async def main():
        url, prefix, root, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
        subjects = Subjects(prefix)
        nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        publisher = EventPublisher(SpoolConfig(root=Path(root)))
        await publisher.start(nc)
        print("started", flush=True)
        sys.stdin.readline()  # the server is gone now
        deadline = time.monotonic() + 30
        while nc.is_connected:  # a poll with a deadline: the client notices the dead server on its own
            if time.monotonic() > deadline:
                print("still connected", flush=True)
                sys.exit(1)
            await asyncio.sleep(0.01)
        for i in range(n):
            event_id = f"child-{i:04d}"
            publisher.publish(subjects.events_guard, GuardEvent(event_id=event_id, request_id=event_id,
                              policy="p", action="flag", at=time.time()), event_id)
        print(publisher.spooled, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
    """
)


async def test_a_killed_process_spool_is_replayed_by_the_next_one(
    server: Server, subjects: Subjects, tmp_path: Path
) -> None:
    nc = await connect(server.url)
    await ensure_events_stream(nc.jetstream(), subjects)
    await nc.close()
    root = tmp_path / "spool"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, server.url, subjects.prefix, str(root), "300"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "started"
        server.kill()
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "300"
        assert await asyncio.to_thread(child.wait, 10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    server.start()
    nc = await connect(server.url)
    publisher = EventPublisher(SpoolConfig(root=root))
    await publisher.start(nc)
    try:
        await until(lambda: publisher.published == 300 and not publisher.spooling, what="the orphan's replay")
        assert await stored_ids(nc, subjects) == [f"child-{i:04d}" for i in range(300)]
    finally:
        await publisher.drain(5)
        await nc.close()
