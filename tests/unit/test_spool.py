"""The spool: record format, reading back in order, damaged records, rotation, the size cap and the locks."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shared.spool import REJECTED, Position, Spool, SpoolConfig
from shared.spool_format import HEADER, SpooledEvent, frame, iter_file

REPO = Path(__file__).resolve().parents[2]


def ev(i: int, size: int = 40) -> SpooledEvent:
    return SpooledEvent(subject="t.events.request", event_id=f"e{i:05d}", data=bytes([i % 251]) * size)


def ids(records: list[tuple[SpooledEvent, Position]]) -> list[str]:
    return [r.event_id for r, _ in records]


def read_all(spool: Spool) -> list[tuple[SpooledEvent, Position]]:
    out = spool.read(1_000_000)
    return out


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def crash(spool: Spool) -> None:
    """What a SIGKILL leaves: the files as written, the descriptors (and so the lock) released."""
    for segment in spool._segments:
        os.close(segment.fd)
    os.close(spool._lock_fd)
    spool._closed = True


def test_records_read_back_in_order_across_segments(tmp_path: Path) -> None:
    spool = Spool.open(SpoolConfig(root=tmp_path, segment_bytes=1000))
    for i in range(100):
        assert spool.append(ev(i))
    assert len(segments(spool.directory)) > 5, "small segments roll over"
    first = spool.read(30)
    rest = spool.read(1000)
    assert ids(first) + ids(rest) == [f"e{i:05d}" for i in range(100)]
    assert [r.data for r, _ in first[:2]] == [bytes([0]) * 40, bytes([1]) * 40]
    assert spool.unread_bytes() == 0
    assert spool.pending_bytes() == spool.size


def test_rewind_reads_again_from_the_first_unacknowledged(tmp_path: Path) -> None:
    spool = Spool.open(SpoolConfig(root=tmp_path, segment_bytes=500))
    for i in range(20):
        spool.append(ev(i))
    records = spool.read(10)
    spool.ack(records[3][1])  # 0..3 stored; 4..9 were in flight when JetStream went away
    spool.rewind()
    assert ids(read_all(spool)) == [f"e{i:05d}" for i in range(4, 20)]


def test_acknowledged_segments_are_deleted_and_a_drained_spool_truncated(tmp_path: Path) -> None:
    spool = Spool.open(SpoolConfig(root=tmp_path, segment_bytes=1000))
    for i in range(100):
        spool.append(ev(i))
    before = len(segments(spool.directory))
    records = read_all(spool)
    spool.ack(records[49][1])
    after = segments(spool.directory)
    assert 1 < len(after) < before, "segments wholly before the acked position are gone"
    assert spool.size == sum(p.stat().st_size for p in after)
    spool.ack(records[-1][1])
    assert spool.pending_bytes() == 0
    spool.reset()
    (only,) = segments(spool.directory)
    assert only.stat().st_size == 0 and spool.size == 0
    spool.append(ev(7))
    assert ids(read_all(spool)) == ["e00007"]


def test_the_cap_refuses_appends_and_acks_make_room(tmp_path: Path) -> None:
    one = len(frame(ev(0)))
    spool = Spool.open(SpoolConfig(root=tmp_path, max_bytes=10 * one, segment_bytes=3 * one))
    assert all(spool.append(ev(i)) for i in range(10))
    assert not spool.append(ev(10))
    records = spool.read(4)
    spool.ack(records[-1][1])  # the first segment (3 records) is deleted
    assert spool.append(ev(10))


def test_close_removes_a_drained_spool_and_keeps_a_pending_one(tmp_path: Path) -> None:
    drained = Spool.open(SpoolConfig(root=tmp_path))
    drained.append(ev(1))
    drained.ack(read_all(drained)[-1][1])
    drained.close()
    assert not drained.directory.exists()

    pending = Spool.open(SpoolConfig(root=tmp_path))
    pending.append(ev(2))
    pending.close()
    assert [p.name for p in segments(pending.directory)] and pending.directory.exists()
    heir = Spool.open(SpoolConfig(root=tmp_path))
    orphans = heir.claim_orphans()
    assert [o.directory for o in orphans] == [pending.directory]
    heir.adopt(orphans)
    assert ids(read_all(heir)) == ["e00002"]
    assert not pending.directory.exists()


def test_truncated_tail_is_skipped_with_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dead = Spool.open(SpoolConfig(root=tmp_path))
    for i in range(5):
        dead.append(ev(i))
    crash(dead)
    (segment,) = segments(dead.directory)
    with open(segment, "ab") as f:
        f.write(frame(ev(5))[:-7])  # the process died in the middle of this write

    heir = Spool.open(SpoolConfig(root=tmp_path))
    heir.adopt(heir.claim_orphans())
    with caplog.at_level(logging.WARNING, logger="gatehouse.spool"):
        assert ids(read_all(heir)) == [f"e{i:05d}" for i in range(5)]
    assert "record runs past the end of the file" in caplog.text
    heir.ack_read()
    assert heir.pending_bytes() == 0, "the damaged tail does not hold the spool open"


def test_a_torn_header_at_the_tail_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dead = Spool.open(SpoolConfig(root=tmp_path))
    dead.append(ev(0))
    crash(dead)
    (segment,) = segments(dead.directory)
    with open(segment, "ab") as f:
        f.write(frame(ev(1))[: HEADER.size - 3])
    heir = Spool.open(SpoolConfig(root=tmp_path))
    heir.adopt(heir.claim_orphans())
    with caplog.at_level(logging.WARNING, logger="gatehouse.spool"):
        assert ids(read_all(heir)) == ["e00000"]
    assert "truncated record" in caplog.text


def test_a_damaged_record_costs_only_itself(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dead = Spool.open(SpoolConfig(root=tmp_path))
    for i in range(10):
        dead.append(ev(i))
    crash(dead)
    (segment,) = segments(dead.directory)
    data = bytearray(segment.read_bytes())
    one = len(frame(ev(0)))
    data[3 * one + HEADER.size + 5] ^= 0xFF  # a flipped bit in the payload of record 3
    data[6 * one + 6] ^= 0xFF  # and in the length field of record 6
    segment.write_bytes(bytes(data[: 8 * one]) + b"garbage between records" + bytes(data[8 * one :]))

    heir = Spool.open(SpoolConfig(root=tmp_path))
    heir.adopt(heir.claim_orphans())
    with caplog.at_level(logging.WARNING, logger="gatehouse.spool"):
        got = ids(read_all(heir))
    assert got == [f"e{i:05d}" for i in (0, 1, 2, 4, 5, 7, 8, 9)]
    assert "checksum mismatch" in caplog.text
    assert "no record header" in caplog.text


def test_a_live_process_keeps_its_spool_and_a_claimed_orphan_is_claimed_once(tmp_path: Path) -> None:
    config = SpoolConfig(root=tmp_path)
    alive = Spool.open(config)
    alive.append(ev(1))
    dead = Spool.open(config)
    dead.append(ev(2))
    crash(dead)

    first, second = Spool.open(config), Spool.open(config)
    claimed = first.claim_orphans()
    assert [o.directory for o in claimed] == [dead.directory], "the live spool's lock is held"
    assert second.claim_orphans() == [], "the orphan is locked by the process adopting it"
    first.adopt(claimed)
    assert ids(read_all(first)) == ["e00002"]
    assert second.claim_orphans() == []
    assert alive.directory.exists() and ids(read_all(alive)) == ["e00001"]


def test_adopted_segments_come_after_this_spools_own_records(tmp_path: Path) -> None:
    config = SpoolConfig(root=tmp_path, segment_bytes=300)
    dead = Spool.open(config)
    for i in range(10):
        dead.append(ev(i))
    crash(dead)
    heir = Spool.open(config)
    heir.append(ev(100))
    heir.adopt(heir.claim_orphans())
    heir.append(ev(101))
    assert ids(read_all(heir)) == ["e00100", *(f"e{i:05d}" for i in range(10)), "e00101"]


def test_a_sigkilled_process_leaves_a_spool_another_adopts(tmp_path: Path) -> None:
    """The lock is a real flock: the child holds it while alive, the kernel releases it at SIGKILL."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        from shared.spool import Spool, SpoolConfig
        from shared.spool_format import SpooledEvent
        spool = Spool.open(SpoolConfig(root=Path({str(tmp_path)!r})))
        for i in range(50):
            spool.append(SpooledEvent(subject="s", event_id=f"k{{i}}", data=b"x"))
        print(spool.directory, flush=True)
        sys.stdin.readline()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdin is not None
    directory = Path(child.stdout.readline().strip())
    heir = Spool.open(SpoolConfig(root=tmp_path))
    assert heir.claim_orphans() == [], "a live process's spool is not adopted"
    child.stdin.write("die\n")
    child.stdin.flush()
    assert child.wait(10) == -9
    heir.adopt(heir.claim_orphans())
    assert ids(read_all(heir)) == [f"k{i}" for i in range(50)]
    assert not directory.exists()


def test_rejected_events_are_kept_apart(tmp_path: Path) -> None:
    spool = Spool.open(SpoolConfig(root=tmp_path))
    spool.reject(ev(1))
    spool.reject(ev(2))
    fd = os.open(tmp_path / REJECTED, os.O_RDONLY)
    try:
        assert [e.event_id for e in iter_file(fd, os.fstat(fd).st_size, "rejected")] == ["e00001", "e00002"]
    finally:
        os.close(fd)
    assert spool.claim_orphans() == []
