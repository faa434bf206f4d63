"""The spool's record format: framing, checksum and a reader that skips what a crash left half-written.

One record on disk::

    magic (4 bytes, b"\\xffGH1") | length (u32 LE) | crc32 of the payload (u32 LE) | payload (length bytes)

The payload is the msgpack encoding of a `SpooledEvent`. A record is written with one write(2), so a
file holds whole records followed, after a crash mid-write or a full disk, by at most one partial one.
The reader checks magic, length and checksum; on a mismatch it searches forward for the next magic, so
a damaged record costs that record only, never the ones after it.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator

import msgspec

log = logging.getLogger("gatehouse.spool")

MAGIC = b"\xffGH1"
HEADER = struct.Struct("<4sII")
# larger than any event the bus carries; a bigger length field is damage, not a record
MAX_PAYLOAD = 64 << 20
_CHUNK = 1 << 16


class SpooledEvent(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One event waiting for JetStream: where it goes, its Nats-Msg-Id, its encoded body, the W3C
    `traceparent` it carries as a header (records spooled before it existed read as ''), and whether it may
    only be the first message on its subject (`first`: a reservation's `live` note, which must never replace
    a later state however late it is replayed)."""

    subject: str
    event_id: str
    data: bytes
    traceparent: str = ""
    first: bool = False


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SpooledEvent)


def frame(event: SpooledEvent) -> bytes:
    """The bytes of one record."""
    payload = _encoder.encode(event)
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def read_records(
    fd: int, start: int, limit: int, name: str, max_records: int
) -> tuple[list[tuple[SpooledEvent, int]], int]:
    """Up to `max_records` whole records between byte `start` and `limit` of an open file, each with the
    offset just past it, and the offset where reading stopped. Damaged bytes are skipped with a warning."""
    out: list[tuple[SpooledEvent, int]] = []
    offset = start
    while offset < limit and len(out) < max_records:
        record, end = _record_at(fd, offset, limit, name)
        if record is not None:
            out.append((record, end))
        offset = end
    return out, offset


def _record_at(fd: int, offset: int, limit: int, name: str) -> tuple[SpooledEvent | None, int]:
    """The record at `offset` and the offset after it; (None, next candidate offset) if it is damaged."""
    header = os.pread(fd, HEADER.size, offset)
    if len(header) < HEADER.size:
        log.warning("spool %s: %d bytes of a truncated record at offset %d skipped", name, limit - offset, offset)
        return None, limit
    magic, length, crc = HEADER.unpack(header)
    end = offset + HEADER.size + length
    if magic != MAGIC or length > MAX_PAYLOAD:
        return None, _resync(fd, offset, limit, name, "no record header")
    if end > limit:
        # the tail of a crash mid-write; if the length field itself is damaged, a later record may follow
        return None, _resync(fd, offset, limit, name, "record runs past the end of the file")
    payload = os.pread(fd, length, offset + HEADER.size)
    if zlib.crc32(payload) != crc:
        return None, _resync(fd, offset, limit, name, "checksum mismatch")
    try:
        return _decoder.decode(payload), end
    except msgspec.DecodeError as exc:
        log.warning("spool %s: record at offset %d skipped: %s", name, offset, exc)
        return None, end


def _resync(fd: int, offset: int, limit: int, name: str, why: str) -> int:
    """The offset of the next magic after the damaged record at `offset` (or `limit`), logged."""
    found = _find_magic(fd, offset + 1, limit)
    log.warning("spool %s: %s at offset %d; %d bytes skipped", name, why, offset, found - offset)
    return found


def _find_magic(fd: int, start: int, limit: int) -> int:
    position = start
    while position < limit:
        chunk = os.pread(fd, min(_CHUNK, limit - position), position)
        if not chunk:
            break
        at = chunk.find(MAGIC)
        if at >= 0:
            return position + at
        if position + len(chunk) >= limit:
            break
        # a magic may straddle two chunks
        position += max(len(chunk) - (len(MAGIC) - 1), 1)
    return limit


def iter_file(fd: int, limit: int, name: str) -> Iterator[SpooledEvent]:
    """Every readable record of a file, in order (for tests and tools)."""
    offset = 0
    while offset < limit:
        records, offset = read_records(fd, offset, limit, name, 1024)
        for record, _ in records:
            yield record
