"""A process's event spool: append-only segment files in a directory only it holds locked, read and
acknowledged in order, and the orphaned spools of dead processes adopted from the same root.

Layout under the root (``<data_dir>/spool/<service>``)::

    .lock                   held briefly while a directory is created, claimed or removed
    <pid>-<hex>/lock        flock'ed by the live process that owns the directory
    <pid>-<hex>/<seq>.seg   segments (spool_format records), replayed in seq order
    rejected.seg            events JetStream refused for good (never replayed; kept for an operator)

A directory whose lock can be taken belongs to a dead process: another process of the same service adopts
it by renaming its segments behind its own. The write path is one write(2) per record, so a record is in
the kernel once `append` returns (a SIGKILL cannot lose it); fsync runs off the event loop (`take_dirty`),
so a power loss can lose what was written since the last one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from shared.spool_format import SpooledEvent, frame, read_records

log = logging.getLogger("gatehouse.spool")

LOCK = "lock"
SUFFIX = ".seg"
REJECTED = "rejected.seg"


@dataclass(frozen=True, kw_only=True)
class SpoolConfig:
    """Where a service's processes spool, and how much each may hold."""

    root: Path
    # disk cap of one process's spool (segments not yet deleted); appends beyond it are refused
    max_bytes: int = 1 << 30
    # a segment is sealed past this size and deleted once all its records are acknowledged
    segment_bytes: int = 16 << 20


class Position(NamedTuple):
    """A place in the spool: a segment and a byte offset in it."""

    seq: int
    offset: int


class _Segment:
    __slots__ = ("dirty", "fd", "path", "seq", "size")

    def __init__(self, seq: int, path: Path, fd: int, size: int) -> None:
        self.seq = seq
        self.path = path
        self.fd = fd
        self.size = size
        self.dirty = False


@dataclass(frozen=True)
class Orphan:
    """The spool directory of a dead process, locked by this one until adopted."""

    directory: Path
    lock_fd: int
    size: int  # bytes in its segments


def segment_name(seq: int) -> str:
    return f"{seq:012d}{SUFFIX}"


@contextmanager
def _root_locked(root: Path) -> Iterator[None]:
    fd = os.open(root / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class Spool:
    """One process's spool. Not thread-safe: use it from the event loop (fsync goes through `take_dirty`)."""

    def __init__(self, config: SpoolConfig, directory: Path, lock_fd: int) -> None:
        self.config = config
        self.root = config.root
        self.directory = directory
        self._lock_fd = lock_fd
        self._segments: list[_Segment] = []
        self._bytes = 0
        self._dir_dirty = True
        self._closed = False
        self._new_segment(1)
        self._cursor = Position(1, 0)
        self._acked = Position(1, 0)

    @classmethod
    def open(cls, config: SpoolConfig) -> Spool:
        """A new, empty spool directory under the root, locked by this process."""
        config.root.mkdir(parents=True, exist_ok=True)
        with _root_locked(config.root):
            directory = config.root / f"{os.getpid()}-{secrets.token_hex(3)}"
            directory.mkdir()
            lock_fd = os.open(directory / LOCK, os.O_CREAT | os.O_RDWR, 0o600)
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return cls(config, directory, lock_fd)

    # ---- writing ---------------------------------------------------------------------------
    def append(self, event: SpooledEvent) -> bool:
        """Write one record (in the kernel when this returns); False if the spool is full or the disk failed."""
        record = frame(event)
        if self._bytes + len(record) > self.config.max_bytes:
            return False
        segment = self._segments[-1]
        if segment.size and segment.size + len(record) > self.config.segment_bytes:
            segment = self._new_segment(segment.seq + 1)
        try:
            view = memoryview(record)
            while view:
                view = view[os.write(segment.fd, view) :]
        except OSError as exc:
            log.error("spool %s: write failed (%s); event %s not spooled", segment.path, exc, event.event_id)
            try:
                os.ftruncate(segment.fd, segment.size)  # no partial record left behind
            except OSError:
                pass
            return False
        segment.size += len(record)
        segment.dirty = True
        self._bytes += len(record)
        return True

    def _new_segment(self, seq: int) -> _Segment:
        path = self.directory / segment_name(seq)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_APPEND, 0o600)
        segment = _Segment(seq, path, fd, 0)
        self._segments.append(segment)
        self._dir_dirty = True
        return segment

    # ---- reading and acknowledging, in order -----------------------------------------------
    def read(self, max_records: int) -> list[tuple[SpooledEvent, Position]]:
        """The next records after the read cursor, each with the position just past it."""
        out: list[tuple[SpooledEvent, Position]] = []
        while len(out) < max_records:
            index = self._index(self._cursor.seq)
            segment = self._segments[index]
            if self._cursor.offset >= segment.size:
                if index + 1 == len(self._segments):
                    break
                self._cursor = Position(self._segments[index + 1].seq, 0)
                continue
            records, offset = read_records(
                segment.fd, self._cursor.offset, segment.size, str(segment.path), max_records - len(out)
            )
            out.extend((event, Position(segment.seq, end)) for event, end in records)
            self._cursor = Position(segment.seq, offset)
        return out

    def rewind(self) -> None:
        """Read again from the first unacknowledged record (after a failed publish)."""
        self._cursor = self._acked

    def ack(self, position: Position) -> None:
        """Every record before `position` is stored; fully acknowledged sealed segments are deleted."""
        if position <= self._acked:
            return
        self._acked = position
        while True:
            index = self._index(self._acked.seq)
            if index + 1 < len(self._segments) and self._acked.offset >= self._segments[index].size:
                self._acked = Position(self._segments[index + 1].seq, 0)
            else:
                break
        while self._segments[0].seq < self._acked.seq:
            self._delete(self._segments.pop(0))
        self._cursor = max(self._cursor, self._acked)

    def ack_read(self) -> None:
        """Everything read so far is settled (used when nothing is in flight, to pass skipped damage)."""
        self.ack(self._cursor)

    def pending_bytes(self) -> int:
        """Bytes not yet acknowledged."""
        return self._bytes_after(self._acked)

    def unread_bytes(self) -> int:
        return self._bytes_after(self._cursor)

    @property
    def size(self) -> int:
        """Bytes on disk (what the cap counts)."""
        return self._bytes

    def reset(self) -> None:
        """Everything is acknowledged: truncate, and start the active segment over."""
        assert self.pending_bytes() == 0, "reset of a spool with unacknowledged records"
        while len(self._segments) > 1:
            self._delete(self._segments.pop(0))
        active = self._segments[0]
        os.ftruncate(active.fd, 0)
        active.size = 0
        self._bytes = 0
        self._cursor = self._acked = Position(active.seq, 0)

    def _index(self, seq: int) -> int:
        for i, segment in enumerate(self._segments):
            if segment.seq == seq:
                return i
        raise KeyError(seq)

    def _bytes_after(self, position: Position) -> int:
        index = self._index(position.seq)
        return self._segments[index].size - position.offset + sum(s.size for s in self._segments[index + 1 :])

    def _delete(self, segment: _Segment) -> None:
        os.close(segment.fd)
        segment.path.unlink(missing_ok=True)
        self._bytes -= segment.size
        self._dir_dirty = True

    # ---- durability --------------------------------------------------------------------------
    @property
    def dirty(self) -> bool:
        return self._dir_dirty or any(s.dirty for s in self._segments)

    def take_dirty(self) -> list[int]:
        """Duplicated descriptors of what needs an fsync, for `fsync_all` in a thread (they stay valid if a
        segment is deleted meanwhile)."""
        fds = [os.dup(s.fd) for s in self._segments if s.dirty]
        for segment in self._segments:
            segment.dirty = False
        if self._dir_dirty:
            fds.append(os.open(self.directory, os.O_RDONLY))
            self._dir_dirty = False
        return fds

    def sync(self) -> None:
        """fsync now, on this thread."""
        fsync_all(self.take_dirty())

    # ---- dead processes' spools ------------------------------------------------------------
    def claim_orphans(self) -> list[Orphan]:
        """Lock every other spool directory under the root whose owner is gone (its lock is free)."""
        claimed: list[Orphan] = []
        with _root_locked(self.root):
            for entry in sorted(self.root.iterdir()):
                if entry == self.directory or entry.name.startswith(".") or not entry.is_dir():
                    continue
                try:
                    fd = os.open(entry / LOCK, os.O_CREAT | os.O_RDWR, 0o600)
                except OSError as exc:
                    log.warning("spool: cannot check %s: %s", entry, exc)
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)  # its owner is alive
                    continue
                size = sum(p.stat().st_size for p in entry.glob(f"*{SUFFIX}"))
                claimed.append(Orphan(entry, fd, size))
        return claimed

    def adopt(self, orphans: list[Orphan]) -> int:
        """Move the orphans' segments behind this spool's own (each orphan's order kept), remove the
        orphans, and start a new active segment after them; returns the bytes adopted."""
        adopted = 0
        with _root_locked(self.root):
            for orphan in orphans:
                for path in sorted(orphan.directory.glob(f"*{SUFFIX}")):
                    size = path.stat().st_size
                    if size == 0:
                        path.unlink()
                        continue
                    seq = self._segments[-1].seq + 1
                    target = self.directory / segment_name(seq)
                    path.rename(target)
                    self._segments.append(_Segment(seq, target, os.open(target, os.O_RDWR | os.O_APPEND), size))
                    self._bytes += size
                    adopted += size
                    log.warning("spool: adopted %s (%d bytes) of a process that is gone", path, size)
                (orphan.directory / LOCK).unlink(missing_ok=True)
                try:
                    orphan.directory.rmdir()
                except OSError as exc:
                    log.warning("spool: could not remove %s: %s", orphan.directory, exc)
                os.close(orphan.lock_fd)
            if adopted:
                self._new_segment(self._segments[-1].seq + 1)
                self._dir_dirty = True
        if adopted and self._bytes > self.config.max_bytes:
            log.error(
                "spool %s holds %d bytes after adopting, over its cap of %d",
                self.directory,
                self._bytes,
                self.config.max_bytes,
            )
        return adopted

    # ---- events JetStream refuses for good -------------------------------------------------
    def reject(self, event: SpooledEvent) -> None:
        """Keep an event JetStream will never accept (e.g. over its size limit) out of the replay path."""
        fd = os.open(self.root / REJECTED, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        try:
            os.write(fd, frame(event))
        finally:
            os.close(fd)

    # ---- closing ---------------------------------------------------------------------------
    def close(self) -> None:
        """fsync and release the directory; it is removed when nothing in it awaits JetStream, else it
        stays for the next process of this service to adopt."""
        if self._closed:
            return
        self._closed = True
        self.sync()
        empty = self.pending_bytes() == 0
        for segment in self._segments:
            os.close(segment.fd)
        if empty:
            with _root_locked(self.root):
                for segment in self._segments:
                    segment.path.unlink(missing_ok=True)
                (self.directory / LOCK).unlink(missing_ok=True)
                try:
                    self.directory.rmdir()
                except OSError as exc:
                    log.warning("spool: could not remove %s: %s", self.directory, exc)
        else:
            log.warning("spool %s keeps %d bytes for the next process to replay", self.directory, self.pending_bytes())
        os.close(self._lock_fd)


def fsync_all(fds: list[int]) -> None:
    """fsync and close descriptors from `Spool.take_dirty` (blocking: run it in a thread)."""
    for fd in fds:
        try:
            os.fsync(fd)
        except OSError as exc:
            log.error("spool: fsync failed: %s", exc)
        finally:
            os.close(fd)
